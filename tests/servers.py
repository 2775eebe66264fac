"""Real servers for tests and benchmarks: an S3-compatible server (moto in server mode) and
toxiproxy, the TCP proxy that puts latency and faults between clients and that server.

Both run as processes on free loopback ports, started and waited on here (never slept on), so
the pytest fixtures and ``make bench-cloud`` use the same code. moto logs one line per request;
:func:`count_requests` reads that log, which is how the benchmark counts requests per file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
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
    secret: str = S3_SECRET  # the secret access key the server checks (access key: S3_KEY)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )


@contextmanager
def s3_server(folder: Path, host: str = "127.0.0.1") -> Iterator[S3Server]:
    """moto in server mode in its own process; each request it serves is a line of its log.
    ``host``: the address it listens on (a real node's bridge, for pods to reach it)."""
    port = free_port(host)
    log = folder / "moto.log"
    binary = Path(sys.executable).with_name("moto_server")
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(binary), "-H", host, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://{host}:{port}"
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
def versitygw_server(folder: Path, secret: str = S3_SECRET) -> Iterator[S3Server]:
    """Versity's S3 gateway over a local folder (each bucket a directory): a Go server, so it
    answers in about a millisecond where moto takes several, with S3's conditional writes.
    Keep-alive on, as cloud object stores do; one log line per request. Unlike moto it checks
    every request's signature against ``secret``."""
    port = free_port()
    data = folder / "versitygw-data"
    data.mkdir()
    (folder / "versitygw-meta").mkdir()
    log = folder / "versitygw.log"
    command = [
        go_tool("versitygw"),
        *("--access", S3_KEY, "--secret", secret, "--port", f"127.0.0.1:{port}", "--keep-alive"),
        *("posix", "--sidecar", str(folder / "versitygw-meta"), str(data)),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: listening_or_ended(port, process), what="versitygw")
        if process.poll() is not None:
            raise RuntimeError(f"versitygw ended at start: {log.read_text()[-2000:]}")
        yield S3Server(endpoint, log, process.pid, secret)
    finally:
        stop_process(process)


@contextmanager
def azurite_server(folder: Path, account: str, key: str) -> Iterator[str]:
    """Azurite's blob service (scripts/install-azurite.sh) with one storage account of our own
    instead of its published one (``AZURITE_ACCOUNTS``): every request's shared-key signature
    is checked against ``key``, a base64 string. Blobs are kept under ``folder/data``; yields
    the account's blob endpoint."""
    command = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-azurite.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    port = free_port()
    log = folder / "azurite.log"
    arguments = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder / "data")]
    environment = {**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [command, *arguments, "--skipApiVersionCheck", "--loose"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        wait_until(lambda: listening_or_ended(port, process), what="Azurite")
        if process.poll() is not None:
            raise RuntimeError(f"Azurite ended at start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/{account}"
    finally:
        stop_process(process)


def count_requests(log: Path, since: int = 0) -> tuple[Counter[str], int]:
    """Requests by method in the server log from byte ``since`` on, and the log's new end."""
    paths, end = request_paths(log, since)
    return Counter(method for method, _ in paths), end


# fake-gcs-server, with the quotes of its request line escaped:
# 'time=... level=INFO msg="127.0.0.1 - - [date] \\"PUT /bucket/a%2Fb HTTP/1.1\\" 400 135\\n"'
_GCS_LINE = re.compile(r'\\"(GET|PUT|POST|HEAD|DELETE|PATCH) (\S*) HTTP/1\.[01]\\" (\d{3}) ')


@dataclass
class GcsServer:
    """fake-gcs-server over plain http: ``endpoint`` is the base URL that object_store's GCS
    client (obstore, Icechunk) takes as ``base_url``. Objects are put through the JSON API's
    media upload, which the emulator serves; the XML API's ``PUT /bucket/object``, which
    object_store writes with, it refuses (docs/gcs-emulator.md)."""

    endpoint: str
    log: Path
    pid: int

    def _call(self, method: str, path: str, data: bytes, content_type: str) -> Any:
        request = urllib.request.Request(
            self.endpoint + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def create_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode(), "application/json")

    def upload(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
        """One object through the JSON API (``uploadType=media``); returns its JSON resource."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        path = f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}"
        resource: dict[str, Any] = self._call("POST", path, data, "application/octet-stream")
        return resource

    def requests(self, since: int = 0) -> tuple[list[tuple[str, str, int]], int]:
        """(method, path, status) of each request in the log from byte ``since`` on, and the
        log's new end (complete lines only)."""
        with self.log.open("rb") as file:
            file.seek(since)
            data = file.read()
        data = data[: data.rfind(b"\n") + 1]
        found = _GCS_LINE.finditer(data.decode(errors="replace"))
        return [(m.group(1), m.group(2), int(m.group(3))) for m in found], since + len(data)


@contextmanager
def gcs_server(folder: Path, backend: str = "filesystem") -> Iterator[GcsServer]:
    """fake-gcs-server (built from its Go module by scripts/build-go-tool.sh) on a free port,
    with objects in ``folder`` (or in memory); one log line per request, with its status."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = folder / "fake-gcs-server.log"
    command = [
        go_tool("fake-gcs-server"),
        *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", backend),
        *("-filesystem-root", str(folder / "fake-gcs-data"), "-log-level", "info"),
        # path-style requests to this address are the XML API's; URLs it returns point here
        *("-public-host", address, "-external-url", f"http://{address}"),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://{address}"
    try:
        wait_until(
            lambda: _answers(endpoint + "/_internal/healthcheck") or process.poll() is not None,
            what="fake-gcs-server",
        )
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server ended at start: {log.read_text()[-2000:]}")
        yield GcsServer(endpoint, log, process.pid)
    finally:
        stop_process(process)


def write_service_account_key(path: Path) -> Path:
    """A service-account key file of the shape Google issues, with a fresh RSA key. object_store
    signs its own JWT with the key (no token exchange, so no request leaves this machine) and the
    emulator accepts any bearer; without a key the client asks the instance metadata server."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "icechunk-operator-tests",
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": "ingest@icechunk-operator-tests.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",  # never called: the client signs its own token
    }
    path.write_text(json.dumps(document))
    return path


def go_tool(name: str) -> str:
    """toxiproxy, versitygw or fake-gcs-server, built from its Go module and cached by
    scripts/build-go-tool.sh."""
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
