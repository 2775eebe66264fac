"""Real servers for tests and benchmarks: an S3-compatible server (moto in server mode) and
toxiproxy, the TCP proxy that puts latency and faults between clients and that server.

Both run as processes on free loopback ports, started and waited on here (never slept on), so
the pytest fixtures and ``make bench-cloud`` use the same code. moto logs one line per request;
:func:`count_requests` reads that log, which is how the benchmark counts requests per file.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
S3_KEY = "testing-key"
S3_SECRET = "testing-secret"
# moto colours some lines: '"\x1b[35m\x1b[1mGET /bucket/key HTTP/1.1\x1b[0m" 206 -'
_MOTO_LINE = re.compile(
    r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) (\S*) HTTP/1\.[01](?:\x1b\[[0-9;]*m)*" \d{3}'
)
# versitygw: '17:45:36 | vgw | 200 |    1.463109ms | 127.0.0.1 | PUT | /stores/repo | - | x-id=PutObject'
_VERSITYGW_LINE = re.compile(r"\| vgw \| \d{3} \|[^|]*\|[^|]*\| (GET|PUT|POST|HEAD|DELETE) \| (\S*) \|")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Ask a server to end, then end it: some keep waiting on idle connections."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def listening_or_ended(port: int, process: subprocess.Popen[Any]) -> bool:
    """The server accepts connections, or it has ended (then fail with its log, not a timeout)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return process.poll() is not None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@dataclass
class S3Server:
    endpoint: str
    log: Path
    pid: int

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )


@contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """moto in server mode in its own process; each request it serves is a line of its log."""
    port = free_port()
    log = folder / "moto.log"
    binary = Path(sys.executable).with_name("moto_server")
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint + "/moto-api/"), what="the S3 server")
        yield S3Server(endpoint, log, process.pid)
    finally:
        stop_process(process)


def request_paths(log: Path, since: int = 0) -> tuple[list[tuple[str, str]], int]:
    """(method, path) of each request in the server log from byte ``since`` on, and the log's
    new end (complete lines only: the server may be writing the next one)."""
    with log.open("rb") as file:
        file.seek(since)
        data = file.read()
    data = data[: data.rfind(b"\n") + 1]
    text = data.decode(errors="replace")
    lines = [*_MOTO_LINE.finditer(text), *_VERSITYGW_LINE.finditer(text)]
    return [(m.group(1), m.group(2)) for m in lines], since + len(data)


@contextmanager
def versitygw_server(folder: Path) -> Iterator[S3Server]:
    """Versity's S3 gateway over a local folder (each bucket a directory): a Go server, so it
    answers in about a millisecond where moto takes several, with S3's conditional writes.
    Keep-alive on, as cloud object stores do; one log line per request."""
    port = free_port()
    data = folder / "versitygw-data"
    data.mkdir()
    (folder / "versitygw-meta").mkdir()
    log = folder / "versitygw.log"
    command = [
        go_tool("versitygw"),
        *("--access", S3_KEY, "--secret", S3_SECRET, "--port", f"127.0.0.1:{port}", "--keep-alive"),
        *("posix", "--sidecar", str(folder / "versitygw-meta"), str(data)),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: listening_or_ended(port, process), what="versitygw")
        if process.poll() is not None:
            raise RuntimeError(f"versitygw ended at start: {log.read_text()[-2000:]}")
        yield S3Server(endpoint, log, process.pid)
    finally:
        stop_process(process)


def count_requests(log: Path, since: int = 0) -> tuple[Counter[str], int]:
    """Requests by method in the server log from byte ``since`` on, and the log's new end."""
    paths, end = request_paths(log, since)
    return Counter(method for method, _ in paths), end


def go_tool(name: str) -> str:
    """toxiproxy or versitygw, built from its Go module and cached by scripts/build-go-tool.sh."""
    script = REPO / "scripts" / "build-go-tool.sh"
    command = ["bash", str(script), name]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


class Toxiproxy:
    """A client of toxiproxy's HTTP API: proxies in front of upstream servers, toxics on them."""

    def __init__(self, api: str, pid: int) -> None:
        self.api = api
        self.pid = pid

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def proxy(self, name: str, upstream: str) -> str:
        """A proxy to ``upstream`` (host:port); returns the http:// endpoint that goes through it."""
        listen = f"127.0.0.1:{free_port()}"
        self._call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream})
        return f"http://{listen}"

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        attributes: dict[str, Any],
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        toxic_name = name or f"{kind}_{stream}"
        body = {
            "name": toxic_name,
            "type": kind,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        self._call("POST", f"/proxies/{proxy}/toxics", body)
        return toxic_name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[str]:
        return [toxic["name"] for toxic in self._call("GET", f"/proxies/{proxy}/toxics")]

    def delete_proxy(self, proxy: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}")

    def set_latency(self, proxy: str, milliseconds: int) -> None:
        """A latency toxic on every response (replacing any earlier one); 0 removes it."""
        if "latency" in self.toxics(proxy):
            self.remove_toxic(proxy, "latency")
        if milliseconds:
            self.add_toxic(proxy, "latency", {"latency": milliseconds, "jitter": 0}, name="latency")


@contextmanager
def toxiproxy(folder: Path) -> Iterator[Toxiproxy]:
    port = free_port()
    with (folder / "toxiproxy.log").open("w") as out:
        process = subprocess.Popen(
            [go_tool("toxiproxy"), "-host", "127.0.0.1", "-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(api + "/version"), what="toxiproxy")
        yield Toxiproxy(api, process.pid)
    finally:
        stop_process(process)
