"""``make bench-cloud``: the ingest on object storage with a latency, beside the seed's algorithm.

An ISMIP6-shaped archive (2,000 files by default over 85 institution/model/experiment batches,
about 23 files each as in ISMIP6; the full 191 x 191 grid, 10 time steps) is uploaded to a real
S3-compatible server, versitygw on tmpfs (a Go server: moto's several milliseconds of Python per
request would be the bottleneck at 0 ms and flatter every ratio); the store lives in the same
server. Every request of the ingest (the workers' reads, the writer's commits, the listing) goes
through toxiproxy, with a latency toxic of 0, 20 and 50 ms on each response. For each latency the benchmark prints files/s, seconds per
stage, requests per file (counted in the server's log, split into source reads and store
requests), commit seconds per 1,000 groups and the peak memory of the writer and of a worker.

The seed-style mode runs the seed's algorithm on the same server and latency: one batch per
(institution, model, experiment) in sequence, its files virtualized in parallel with VirtualiZarr's
own ``open_virtual_dataset``, then ``to_icechunk`` per dataset and one commit per batch, with
Icechunk's default repository settings. It runs on the first ``--seed-batches`` batches only (it
is slow: that is the point), into an empty store, which favours it: its commits grow with the
store, and the store stays small.

Each ingest runs in a fresh process, with its own Dask workers, so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from icechunk_operator.engine.execution import dask_client
from tests.bench.ingest import CACHE, bench_resources, build_archive
from tests.servers import S3_KEY, S3_SECRET, S3Server, Toxiproxy, count_requests, toxiproxy, versitygw_server

FILES = 2000
BATCHES = 85  # 17 models x 5 experiments: about 23.5 files per batch, the ISMIP6 ratio
TIMES = 10
SOURCE_BUCKET = "ismip6"
STORE_BUCKET = "stores"
PROXY = "s3"
LOCATION = {"region": "us-east-1", "allowHttp": True, "forcePathStyle": True}


def credentials_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def resources(endpoint: str, store_prefix: str, *, seed_style: bool = False) -> tuple[Any, Any]:
    # The seed ran with Icechunk's defaults: chunks above 512 bytes are objects of their own,
    # and a commit writes one manifest at a time.
    config = {"inlineThresholdBytes": 512, "commitConcurrency": 1} if seed_style else {}
    return bench_resources(
        f"s3://{SOURCE_BUCKET}/",
        f"s3://{STORE_BUCKET}/{store_prefix}",
        location={"endpoint": endpoint, **LOCATION},
        store_config=config,
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peak_mb(client: Any) -> float:
    return max(client.run(_peak_rss_mb).values())


def ingest_child(endpoint: str, store_prefix: str, workers: int, files_in_flight: int) -> dict[str, Any]:
    from icechunk_operator.engine.runner import run_batch
    from icechunk_operator.engine.storage import quiet_logs

    quiet_logs()
    store, batch = resources(endpoint, store_prefix)
    batch.spec.execution.files_in_flight = files_in_flight
    with dask_client(None, workers, 1) as client:
        started = time.perf_counter()
        report = run_batch(store, batch, scheduler=client.scheduler.address)
        wall = time.perf_counter() - started
        worker_peak = worker_peak_mb(client)
    stages = report.stage_seconds
    return {
        "files": report.total,
        "done": report.done,
        "failed": report.failed,
        "groups": report.groups_written,
        "commits": len(report.commits),
        "wall": wall,
        "list": stages.get("list", 0.0),
        "open": stages.get("open", 0.0),
        "write": stages.get("write", 0.0),
        "commit": stages.get("commit", 0.0),
        "ingest": stages.get("ingest (wall)", 0.0),
        "worker_seconds": stages.get("virtualize (worker CPU)", 0.0),
        "writer_peak_mb": _peak_rss_mb(),
        "worker_peak_mb": worker_peak,
    }


def _seed_virtualize(url: str, endpoint: str) -> tuple[str, Any]:
    """The seed's ``virtualize_file``: VirtualiZarr's own reader and loader, then the fixes."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import S3Store
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser, NetCDF3Parser

    from icechunk_operator.engine.fixes import resolve_fix
    from icechunk_operator.engine.virtualize import sniff_format

    store = S3Store(
        SOURCE_BUCKET,
        endpoint=endpoint,
        client_options={"allow_http": True},
        virtual_hosted_style_request=False,
    )
    registry = ObjectStoreRegistry({f"s3://{SOURCE_BUCKET}": store})
    try:
        path = url.removeprefix(f"s3://{SOURCE_BUCKET}/")
        head = bytes(store.get_range(path, start=0, length=8))
        parser = HDFParser() if sniff_format(head) == "hdf5" else NetCDF3Parser()
        coordinates = ["time", "x", "y", "lat", "lon"]
        with open_virtual_dataset(
            url, registry=registry, parser=parser, loadable_variables=coordinates
        ) as ds:
            return url, resolve_fix("ismip6")(ds)
    except Exception as error:  # the seed logs failures and carries on
        return url, f"{type(error).__name__}: {error}"


def seed_child(endpoint: str, store_prefix: str, workers: int, batches: int) -> dict[str, Any]:
    """One commit per (institution, model, experiment) batch, batches in sequence."""
    import re

    from distributed import wait

    from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE
    from icechunk_operator.engine.sources import list_sources
    from icechunk_operator.engine.storage import open_repository, quiet_logs

    quiet_logs()
    store, batch = resources(endpoint, store_prefix, seed_style=True)
    pattern = re.compile(ISMIP6_PATTERN)
    by_batch: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    started = time.perf_counter()
    for source in list_sources(batch.spec.source, store.spec):
        match = pattern.search(source.url)
        if match:
            key = (match["institution"], match["model"], match["experiment"])
            by_batch.setdefault(key, []).append((source.url, ISMIP6_TEMPLATE.format(**match.groupdict())))
    chosen = sorted(by_batch)[:batches]
    repo = open_repository(store.spec)
    files = done = 0
    commit_seconds = 0.0
    with dask_client(None, workers, 1) as client:
        for key in chosen:
            members = by_batch[key]
            futures = client.map(_seed_virtualize, [u for u, _ in members], endpoint=endpoint, pure=False)
            wait(futures)
            results = dict(f.result() for f in futures)
            session = repo.writable_session("main")
            written = []
            for url, group in members:
                files += 1
                ds = results[url]
                if isinstance(ds, str):
                    continue
                ds.vz.to_icechunk(session.store, group=group)
                written.append(group)
            if written:
                commit_started = time.perf_counter()
                session.commit(f"Added {len(written)} datasets: {', '.join(written[:5])}")
                commit_seconds += time.perf_counter() - commit_started
                done += len(written)
        worker_peak = worker_peak_mb(client)
    wall = time.perf_counter() - started
    return {
        "files": files,
        "done": done,
        "batches": len(chosen),
        "wall": wall,
        "commit": commit_seconds,
        "writer_peak_mb": _peak_rss_mb(),
        "worker_peak_mb": worker_peak,
    }


def upload(server: S3Server, archive: Path) -> int:
    client = server.client()
    client.create_bucket(Bucket=SOURCE_BUCKET)
    client.create_bucket(Bucket=STORE_BUCKET)
    paths = sorted(archive.rglob("*.nc"))

    def put(path: Path) -> None:
        client.upload_file(str(path), SOURCE_BUCKET, path.relative_to(archive).as_posix())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, paths))
    return len(paths)


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.bench.cloud", "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{result.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def requests_per_file(log: Path, since: int, files: int) -> tuple[dict[str, float], int]:
    """Requests the server saw since ``since``: to the sources' bucket and to the store's."""
    from tests.servers import request_paths

    paths, end = request_paths(log, since)
    source = sum(1 for _, path in paths if path.startswith(f"/{SOURCE_BUCKET}"))
    store = sum(1 for _, path in paths if path.startswith(f"/{STORE_BUCKET}"))
    return {"source": source / max(1, files), "store": store / max(1, files)}, end


def show_ingest(latency: int, figures: dict[str, Any], requests: dict[str, float], baseline: float) -> None:
    files = figures["files"]
    rate = files / figures["wall"]
    share = f" ({100 * rate / baseline:.0f}% of 0 ms)" if baseline else ""
    virtualize = figures["ingest"] - figures["write"] - figures["commit"]
    per_1000 = 1000 * figures["commit"] / max(1, figures["groups"])
    print(f"\n== {latency} ms per response: this tool")
    print(f"files               {files} ({figures['done']} ingested, {figures['failed']} failed)")
    print(f"end to end          {figures['wall']:.1f} s = {rate:.1f} files/s{share}")
    print(f"  open store        {figures['open']:8.2f} s")
    print(f"  list              {figures['list']:8.2f} s")
    print(
        f"  virtualize (wait) {virtualize:8.2f} s   (workers busy {figures['worker_seconds']:.1f} s in all)"
    )
    print(f"  write             {figures['write']:8.2f} s")
    print(f"  commit            {figures['commit']:8.2f} s   ({figures['commits']} commits)")
    print(
        f"requests per file   {requests['source']:.2f} to the sources, {requests['store']:.2f} to the store"
    )
    print(f"commit per 1,000 groups {per_1000:.2f} s")
    print(
        f"peak RSS            writer {figures['writer_peak_mb']:.0f} MB, worker {figures['worker_peak_mb']:.0f} MB"
    )
    print(
        f"S3 server + proxy   {figures['servers_cpu']:.1f} s of CPU on this machine's two cores "
        "(in the cloud: the provider's)"
    )


def show_seed(latency: int, figures: dict[str, Any], requests: dict[str, float], ours: float) -> None:
    rate = figures["files"] / figures["wall"]
    print(f"\n== {latency} ms per response: seed-style ({figures['batches']} batches in sequence)")
    print(f"files               {figures['files']} ({figures['done']} ingested)")
    print(f"end to end          {figures['wall']:.1f} s = {rate:.2f} files/s")
    print(f"  commit            {figures['commit']:8.2f} s   ({figures['batches']} commits)")
    print(
        f"requests per file   {requests['source']:.2f} to the sources, {requests['store']:.2f} to the store"
    )
    print(
        f"peak RSS            writer {figures['writer_peak_mb']:.0f} MB, worker {figures['worker_peak_mb']:.0f} MB"
    )
    print(f"this tool / seed-style: x{ours / rate:.1f} files/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latencies", default="0,20,50", help="milliseconds, comma-separated")
    parser.add_argument("--seed-latencies", default="20", help="latencies that also run the seed style")
    parser.add_argument("--seed-batches", type=int, default=12)
    parser.add_argument("--files-in-flight", type=int, default=16)
    args = parser.parse_args()
    if args.child:
        kind, endpoint, prefix, workers, extra = args.child
        if kind == "ingest":
            figures = ingest_child(endpoint, prefix, int(workers), int(extra))
        else:
            figures = seed_child(endpoint, prefix, int(workers), int(extra))
        print(json.dumps(figures))
        return

    work = CACHE / "bench-cloud"
    archive = build_archive(work / f"archive-{args.files}-t{TIMES}", args.files, BATCHES, times=TIMES)
    env = {**os.environ, **credentials_env()}
    # The server keeps its objects in memory where it can (tmpfs), as a cloud store's disks are
    # not this VM's: a commit's thousands of small writes otherwise measure the local disk.
    memory = Path("/dev/shm")
    with (
        tempfile.TemporaryDirectory(prefix="bench-cloud-", dir=memory if memory.is_dir() else work) as folder,
        versitygw_server(Path(folder)) as server,
        toxiproxy(Path(folder)) as proxy,
    ):
        started = time.perf_counter()
        count = upload(server, archive)
        print(f"  uploaded {count} files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        endpoint = proxy.proxy(PROXY, server.endpoint.removeprefix("http://"))
        run_latencies(args, proxy, server, endpoint, env)


def run_latencies(
    args: argparse.Namespace, proxy: Toxiproxy, server: S3Server, endpoint: str, env: dict[str, str]
) -> None:
    print(
        f"cloud ingest benchmark: {args.files} ISMIP6-shaped files (191 x 191 grid, {TIMES} time steps), "
        f"{args.workers} Dask worker processes, {args.files_in_flight} files in flight, "
        "every request through toxiproxy"
    )
    baseline = 0.0
    seed_latencies = {int(v) for v in args.seed_latencies.split(",") if v}
    for latency in (int(v) for v in args.latencies.split(",")):
        proxy.set_latency(PROXY, latency)
        _, since = count_requests(server.log)
        servers_cpu = _cpu_seconds(server.pid) + _cpu_seconds(proxy.pid)
        figures = run_child(
            ["ingest", endpoint, f"run-{latency}ms", str(args.workers), str(args.files_in_flight)], env
        )
        figures["servers_cpu"] = _cpu_seconds(server.pid) + _cpu_seconds(proxy.pid) - servers_cpu
        requests, since = requests_per_file(server.log, since, figures["files"])
        rate = figures["files"] / figures["wall"]
        show_ingest(latency, figures, requests, baseline)
        baseline = baseline or rate
        if latency in seed_latencies:
            seed = run_child(
                ["seed", endpoint, f"seed-{latency}ms", str(args.workers), str(args.seed_batches)], env
            )
            seed_requests, _ = requests_per_file(server.log, since, seed["files"])
            show_seed(latency, seed, seed_requests, rate)
    proxy.set_latency(PROXY, 0)
    print("\ntargets: at 20 ms >= 50% of the 0 ms files/s, at 50 ms >= 35%; at 20 ms >= 20x the seed style;")
    print("a commit of 2,000 new groups at 50 ms <= 3x its 0 ms time; a worker's peak RSS <= 1 GiB")


if __name__ == "__main__":
    main()
