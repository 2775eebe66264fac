"""``make bench`` (GNSS): materialized ingest of RINEX files, the two targets of issue 13.

1. A day of one receiver (96 files, 15 minutes at 5 s) ingested end to end, beside the reader's
   own parse time for the same files on the same workers (the floor): a LocalCluster of 2 worker
   processes x 1 thread, started and warmed (one real file through the engine's read) before
   anything is timed. The floor maps ``Rnxv3Obs(fpath).to_ds()`` over the files, with its
   defaults as canVODpy's pipeline calls it, and with ``pad_global_sid=False`` as our reader
   does; the ingest is ``run_batch`` into a fresh local store. Target: within 1.3x the floor.
   Wall and CPU time are printed with the load average: the machine is shared, and CPU time
   is the steadier figure.
2. One 15-minute file (2025-031 00:00) appended to stores that hold 1, 10 and 30 days. Target:
   under 5 s end to end (``run_batch``: open, list, plan, read, write, commit), and a peak memory
   of the commit process and of the workers that does not grow with the store's length. Each
   append runs in a fresh process with its own 2 warmed workers, so its peaks are its own.

The day is made from the 24 real files (2025-001 00:00-06:00) by shifting their times (see
:mod:`tests.bench.gnss_files`). The 10- and 30-day stores are ingested for real, once, by 15
batches of two days (one window, one commit each), garbage-collected, and cached under
``~/.cache/icechunk-operator/bench/gnss-stores-30d-<key>``; the key changes with this
benchmark's build, Icechunk, Zarr, canvod-readers, the operator's version and the default
materialize spec. Cold cost: about 40 s to write 2,880 files (6.1 GB, kept: the whole-archive
append lists them), then about 40 s a day to ingest them on 2 quiet cores (2,207 s measured on
a busy machine); the stores take 1.4 GB. Warm, the benchmark takes 3.5 minutes on a quiet
machine (7 to 11 on a busy one). Each append works on a clone of a cached store (chunk files
hard-linked: Icechunk never rewrites one; everything else copied), so the cache stays as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from icechunk_operator.engine.execution import dask_client
from tests.bench.gnss_files import check_shift, day_folder, shifted_name, write_day
from tests.bench.ingest import CACHE
from tests.gnss import EPOCHS_PER_FILE, REFERENCE, STATION_PATTERN, gnss_store

WORKERS = 2
GROUP = "ROSR/observations"
TARGET_RATIO = 1.3
TARGET_APPEND_SECONDS = 5.0
BUILD = "1"  # bump when the cached stores are built differently
BENCH = CACHE / "bench"
FILES = BENCH / "gnss-files"  # 2025-ddd/ROSR01TUW_R_2025dddhhmm_15M_05S_AA.rnx
NEXT_FILE = "ROSR01TUW_R_20250020000_15M_05S_AA.rnx"  # 2025-002 00:00: into the shard of day 1
NO_SHARDING = {"innerChunks": {}}


def day_batch(name: str, source: dict[str, Any], materialize: dict[str, Any]) -> Any:
    from icechunk_operator.api import IngestBatch

    return IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": name},
            "spec": {
                "store": "rosalia",
                "source": source,
                "grouping": {"pattern": STATION_PATTERN, "template": "{station}/observations"},
                "materialize": {"reader": "rinex", **materialize},
            },
        }
    )


def folder_source(folder: Path, glob: str = "*.rnx") -> dict[str, Any]:
    return {"prefix": folder.resolve().as_uri() + "/", "glob": glob}


def size_on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def clone_store(source: Path, target: Path) -> None:
    """A copy to append to: chunk objects hard-linked (immutable in Icechunk), the rest copied."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("chunks"))
    (target / "chunks").mkdir()
    for chunk in (source / "chunks").iterdir():
        os.link(chunk, target / "chunks" / chunk.name)


# On the workers.
def warm_worker(path: str, limits: Any) -> float:
    """One real file through the engine's own read (its parser process included): a fresh
    worker's first file costs seconds more (the parser process starts, canvod-readers and xarray
    import lazily, importlib.metadata scans). Seconds taken; the parser stays in the pool."""
    from icechunk_operator.engine.materialize.tasks import read_file
    from icechunk_operator.engine.records import SourceFile

    started = time.perf_counter()
    source = SourceFile(Path(path).as_uri(), Path(path).stat().st_size)
    containers = json.dumps([{"urlPrefix": Path(path).parent.as_uri() + "/"}])
    parsed = read_file(source, GROUP, "rinex", {}, "epoch", containers, 0, limits=limits)
    assert parsed.failure is None, parsed.failure
    return time.perf_counter() - started


def warm(client: Any, batch: Any) -> float:
    from icechunk_operator.engine.runner import parse_limits

    return max(client.run(warm_worker, str(REFERENCE[0]), parse_limits(batch)).values())


def parse(path: str, pad: bool | None) -> int:
    from canvod.readers import Rnxv3Obs

    reader = Rnxv3Obs(fpath=Path(path))
    dataset = reader.to_ds() if pad is None else reader.to_ds(pad_global_sid=pad)
    return int(dataset.sizes["epoch"])


class PeakMemory:
    """The peak RSS of some processes, each with its children (a worker's parser processes),
    over a span, sampled every 20 ms on a thread. Not ``ru_maxrss``: Linux keeps it across fork
    and exec, so a child started by a large parent reports the parent's peak, and a worker's
    would include its warm-up."""

    def __init__(self, pids: Sequence[int], *, children: bool) -> None:
        import psutil

        self._children = children
        self._processes = [psutil.Process(pid) for pid in pids]
        self.before = [self._tree_mb(p) for p in self._processes]
        self.peak = list(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_mb(self, process: Any) -> float:
        import psutil

        total = 0
        for member in [process, *(process.children(recursive=True) if self._children else [])]:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for number, process in enumerate(self._processes):
                self.peak[number] = max(self.peak[number], self._tree_mb(process))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time so far of this process and of each process in ``pids`` with its live children
    (a worker's parser processes): on a shared machine, less noisy than wall time."""
    import psutil

    total = sum(os.times()[:2])
    for pid in pids:
        process = psutil.Process(pid)
        for member in [process, *process.children(recursive=True)]:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def measured(client: Any, figures: dict[str, Any], key: str, work: Any) -> None:
    """Run ``work``; record its wall time, the CPU time it took and the machine's load."""
    workers = list(client.run(os.getpid).values())
    cpu, load, started = cpu_seconds(workers), os.getloadavg()[0], time.perf_counter()
    result = work()
    figures[key] = {
        **(result or {}),
        "wall": time.perf_counter() - started,
        "cpu": cpu_seconds(workers) - cpu,
        "load": (load, os.getloadavg()[0]),
    }


# Target 1: a day.
def parse_floor(client: Any, files: Sequence[Path], pad: bool | None) -> None:
    epochs = client.gather(client.map(parse, [str(f) for f in files], pad=pad, pure=False))
    assert sum(epochs) == len(files) * EPOCHS_PER_FILE, f"parsed {sum(epochs)} epochs"


def ingest_day(client: Any, root: Path, store_path: Path, materialize: dict[str, Any]) -> dict[str, Any]:
    from icechunk_operator.engine.runner import run_batch

    shutil.rmtree(store_path, ignore_errors=True)
    os.sync()
    store = gnss_store(store_path, root)
    batch = day_batch("day-1", folder_source(day_folder(root, 1)), materialize)
    report = run_batch(store, batch, scheduler=client.scheduler.address)
    assert (report.done, report.failed, len(report.commits)) == (96, 0, 1), report
    return {"stages": report.stage_seconds}


def referenced_bytes(store: Any, group: str) -> int:
    """Bytes of the objects the branch's snapshot points to in ``group`` (the rest of the store's
    chunk files are earlier versions of objects, garbage until expiry)."""
    import zarr

    from icechunk_operator.engine.storage import open_repository

    session = open_repository(store.spec, create=False).readonly_session(branch="main")
    node = zarr.open_group(session.store, path=group, mode="r")

    async def total() -> int:
        count = 0
        for name, _ in node.arrays():
            async for key in session.store.list_prefix(f"{group}/{name}"):
                if not key.endswith("zarr.json"):
                    count += await session.store.getsize(key)
        return count

    with asyncio.Runner() as runner:
        return runner.run(total())


def read_back_day(root: Path, store_path: Path) -> float:
    from tests.integration.readback import open_group

    started = time.perf_counter()
    stored = open_group(gnss_store(store_path, root), GROUP)
    snr = stored["SNR"].isel(epoch=slice(0, 96 * EPOCHS_PER_FILE)).load()
    wall = time.perf_counter() - started
    assert snr.shape == (96 * EPOCHS_PER_FILE, stored.sizes["sid"]) and snr.notnull().any()
    return wall


def bench_day(root: Path, work: Path) -> dict[str, Any]:
    files = sorted(day_folder(root, 1).glob("*.rnx"))
    assert len(files) == 96, f"{len(files)} files in day 1"
    for path in files:  # the page cache, for both sides
        path.read_bytes()
    figures: dict[str, Any] = {"rinex_bytes": sum(p.stat().st_size for p in files)}
    sharded, unsharded = work / "day-sharded", work / "day-unsharded"
    with dask_client(None, WORKERS, 1) as client:
        figures["first_file"] = warm(client, day_batch("warm", folder_source(root), {}))
        # Each ingest right after its floor, so a change of the machine's load hits both alike.
        measured(client, figures, "floor", lambda: parse_floor(client, files, None))
        measured(client, figures, "sharded", lambda: ingest_day(client, root, sharded, {}))
        measured(client, figures, "floor_unpadded", lambda: parse_floor(client, files, False))
        measured(client, figures, "unsharded", lambda: ingest_day(client, root, unsharded, NO_SHARDING))
    for key, store_path in (("sharded", sharded), ("unsharded", unsharded)):
        figures[key]["bytes"] = size_on_disk(store_path)
        figures[key]["referenced"] = referenced_bytes(gnss_store(store_path, root), GROUP)
    figures["read_back"] = read_back_day(root, sharded)
    return figures


# Target 2: the cached long stores, and appends.
def store_key(long_days: int, mid_days: int) -> str:
    from importlib.metadata import version

    from icechunk_operator import __version__
    from icechunk_operator.api.batch import MaterializeSpec

    parts = [BUILD, str(long_days), str(mid_days), __version__, MaterializeSpec().model_dump_json()]
    parts += [version(name) for name in ("icechunk", "zarr", "canvod-readers")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def long_stores(root: Path, long_days: int, mid_days: int) -> dict[int, Path]:
    """{days: store}, ingested once by batches of two days and kept."""
    from icechunk_operator.engine.runner import run_batch

    folder = root.parent / f"gnss-stores-{long_days}d-{store_key(long_days, mid_days)}"
    stores = {mid_days: folder / f"{mid_days}-days", long_days: folder / f"{long_days}-days"}
    if (folder / ".complete").exists():
        return stores
    for old in root.parent.glob(f"gnss-stores-{long_days}d-*"):  # built for another format
        shutil.rmtree(old)
    building = folder / "building"
    store = gnss_store(building, root)
    print(f"building the {mid_days}- and {long_days}-day stores (once; cached)", file=sys.stderr)
    started = time.perf_counter()
    with dask_client(None, WORKERS, 1) as client:
        for first in range(1, long_days + 1, 2):
            days = [d for d in (first, first + 1) if d <= long_days]
            urls = [p.resolve().as_uri() for d in days for p in sorted(write_day(root, d).glob("*.rnx"))]
            batch = day_batch(f"days-{first:03d}", {"files": urls}, {})
            report = run_batch(store, batch, scheduler=client.scheduler.address)
            assert (report.done, report.failed) == (len(urls), 0), report
            print(f"  days {days} in, {time.perf_counter() - started:.0f} s", file=sys.stderr)
            if days[-1] == mid_days:
                clone_store(building, stores[mid_days])
    building.rename(stores[long_days])
    for path in stores.values():  # the shard versions earlier slabs wrote: no snapshot holds them
        collect_garbage(gnss_store(path, root))
    (folder / "build-seconds").write_text(f"{time.perf_counter() - started:.0f}\n")
    (folder / ".complete").touch()
    return stores


def collect_garbage(store: Any) -> None:
    from datetime import UTC, datetime

    from icechunk_operator.engine.storage import open_repository

    summary = open_repository(store.spec, create=False).garbage_collect(datetime.now(UTC))
    print(f"  collected {summary.bytes_deleted / 2**20:.0f} MB of unreferenced objects", file=sys.stderr)


def append_child(root: str, store_path: str, source_json: str, materialize_json: str) -> dict[str, Any]:
    """In a fresh process: 2 warmed workers, then one ``run_batch``, timed, and the peaks."""
    started = time.perf_counter()
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    from icechunk_operator.engine.runner import run_batch
    from icechunk_operator.engine.storage import quiet_logs

    imports = time.perf_counter() - started
    quiet_logs()
    store = gnss_store(Path(store_path), Path(root))
    batch = day_batch("append", json.loads(source_json), json.loads(materialize_json))
    with dask_client(None, WORKERS, 1) as client:
        first_file = warm(client, batch)
        workers = list(client.run(os.getpid).values())
        with (
            PeakMemory([os.getpid()], children=False) as commit,
            PeakMemory(workers, children=True) as worker,
        ):
            started = time.perf_counter()
            report = run_batch(store, batch, scheduler=client.scheduler.address)
            wall = time.perf_counter() - started
    assert (report.done, report.failed, len(report.commits)) == (1, 0, 1), report
    return {
        "wall": wall,
        "stages": report.stage_seconds,
        "listed": report.total,
        "skipped": report.skipped,
        "imports": imports,
        "first_file": first_file,
        "load": os.getloadavg()[0],
        "commit_before_mb": commit.before[0],
        "commit_peak_mb": commit.peak[0],
        "worker_before_mb": max(worker.before),
        "worker_peak_mb": max(worker.peak),
    }


def run_append(
    root: Path, store: Path, work: Path, source: dict[str, Any], materialize: dict[str, Any]
) -> dict[str, Any]:
    clone = work / "append"
    clone_store(store, clone)
    os.sync()
    command = [sys.executable, "-m", "tests.bench.gnss", "--append", str(root), str(clone)]
    command += [json.dumps(source), json.dumps(materialize)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"append into {store.name} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(clone)
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


# Output.
def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def stage(stages: dict[str, float], name: str) -> str:
    return f"{stages[name]:.2f}" if name in stages else "-"


def show_day(day: dict[str, Any]) -> bool:
    mb = 2**20
    floor = day["floor"]
    print("\n== a day of one receiver: 96 files x 180 epochs, 2 worker processes x 1 thread")
    print(f"RINEX files {day['rinex_bytes'] / mb:.0f} MB")
    rows = []
    for label, key in (
        ("parse alone: Rnxv3Obs.to_ds() (floor)", "floor"),
        ("ingest end to end (default: sharded)", "sharded"),
        ("parse alone: to_ds(pad_global_sid=False)", "floor_unpadded"),
        ("ingest, innerChunks {}", "unsharded"),
    ):
        run, stages = day[key], day[key].get("stages", {})
        rows.append(
            [label, f"{run['wall']:.1f}", f"{run['wall'] / floor['wall']:.2f}", f"{run['cpu']:.1f}",
             f"{run['cpu'] / floor['cpu']:.2f}", stage(stages, "read (worker CPU)"), stage(stages, "write"),
             stage(stages, "commit"), f"{run['load'][0]:.1f} -> {run['load'][1]:.1f}"]
        )  # fmt: skip
    headers = ["", "wall s", "x floor", "CPU s", "x floor", "read s", "write s", "commit s", "load avg"]
    table(headers, rows)
    print("(CPU: workers, their parser processes and this process; read s: the workers' time in the files)")
    for label, key in (("sharded", "sharded"), ("innerChunks {}", "unsharded")):
        run = day[key]
        garbage = run["bytes"] - run["referenced"]
        print(
            f"store, {label}: {run['bytes'] / mb:.0f} MB on disk, the snapshot's objects "
            f"{run['referenced'] / mb:.0f} MB"
            + (f"; {garbage / mb:.0f} MB are object versions an earlier slab wrote" if garbage > mb else "")
        )
    print(f"first file on a fresh worker (warm-up, not timed): {day['first_file']:.1f} s")
    print(
        f"reading the day's SNR back (open_zarr + load, 1 process): {day['read_back']:.2f} s, "
        f"{floor['wall'] / day['read_back']:.0f}x faster than parsing the files"
    )
    ratio = day["sharded"]["wall"] / floor["wall"]
    passed = ratio <= TARGET_RATIO
    unpadded = day["sharded"]["wall"] / day["floor_unpadded"]["wall"]
    print(f"the ingest against the unpadded parse (what the engine itself parses): {unpadded:.2f}x")
    print(
        f"{'PASS' if passed else 'FAIL'}: a day end to end {ratio:.2f}x the parse floor (target <= {TARGET_RATIO})"
    )
    return passed


def show_appends(rows: list[tuple[str, dict[str, Any]]], compared: tuple[str, str], build: str) -> bool:
    print("\n== one 15-minute file appended (fresh process, 2 warmed workers)")
    print("(MB: RSS, sampled every 20 ms over the run; a worker's includes its parser process)")
    body = [
        [label, f"{f['wall']:.2f}", f["listed"], stage(f["stages"], "open"), stage(f["stages"], "list"),
         stage(f["stages"], "read (worker CPU)"), stage(f["stages"], "write"), stage(f["stages"], "commit"),
         f"{f['commit_before_mb']:.0f}", f"{f['commit_peak_mb']:.0f}", f"{f['worker_before_mb']:.0f}",
         f"{f['worker_peak_mb']:.0f}", f"{f['load']:.1f}"]
        for label, f in rows
    ]  # fmt: skip
    table(
        ["store (days held)", "wall s", "listed", "open s", "list s", "read s", "write s", "commit s",
         "commit MB before", "commit MB peak", "worker MB before", "worker MB peak", "load avg"],
        body,
    )  # fmt: skip
    imports = max(f["imports"] for _, f in rows)
    first_file = max(f["first_file"] for _, f in rows)
    print("(wall: run_batch; read s: the worker's time in the file. Not in the wall time: the process's")
    print(f" imports, up to {imports:.1f} s, the cluster's start, and the workers' warm-up: a first")
    print(f" file through the reader on a fresh worker took up to {first_file:.1f} s)")
    print(f"the long stores were ingested once, in {build.strip()} s, and cached")
    by_label = dict(rows)
    sharded = [f for label, f in rows if label.startswith("sharded")]
    slowest = max(f["wall"] for f in sharded)
    fewest, most = by_label[compared[0]], by_label[compared[1]]
    growth = max(
        most["commit_peak_mb"] / fewest["commit_peak_mb"], most["worker_peak_mb"] / fewest["worker_peak_mb"]
    )
    fast, flat = slowest < TARGET_APPEND_SECONDS, growth <= 1.2
    print(
        f"{'PASS' if fast else 'FAIL'}: slowest sharded append {slowest:.2f} s (target < {TARGET_APPEND_SECONDS} s)"
    )
    print(
        f"{'PASS' if flat else 'FAIL'}: peak memory, {compared[1]!r} over {compared[0]!r}: x{growth:.2f} "
        "(target: independent of the store's length; <= x1.2)"
    )
    return fast and flat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--append", nargs=4, metavar=("FILES", "STORE", "SOURCE", "MATERIALIZE"))
    parser.add_argument("--long-days", type=int, default=30, help="days of the long store (even)")
    parser.add_argument("--mid-days", type=int, default=10, help="days of the middle store (even)")
    parser.add_argument("--files", type=Path, default=FILES, help="where the shifted files are cached")
    args = parser.parse_args()
    if args.append:
        print(json.dumps(append_child(*args.append)))
        return
    from icechunk_operator.engine.storage import quiet_logs

    quiet_logs()
    long_days, mid_days, root = args.long_days, args.mid_days, args.files
    assert long_days % 2 == 0 and mid_days % 2 == 0 and 2 <= mid_days < long_days, "even days, mid < long"
    print("GNSS benchmark (RINEX, materialized, local disk, 2 Dask worker processes)", file=sys.stderr)
    write_day(root, 1)
    check_shift(root)
    new_file = shifted_name(REFERENCE[0].name, timedelta(days=long_days))  # the first after the stores
    new_folder = write_day(root, long_days + 1, only=new_file)
    stores = long_stores(root, long_days, mid_days)
    build = (stores[long_days].parent / "build-seconds").read_text()
    with tempfile.TemporaryDirectory(prefix="gnss-bench-") as folder:
        work = Path(folder)
        day = bench_day(root, work)
        new, whole = folder_source(new_folder), folder_source(root, "**/*.rnx")
        next_file = folder_source(day_folder(root, 2), NEXT_FILE)
        sharded, unsharded = work / "day-sharded", work / "day-unsharded"
        cases = [
            ("sharded, 1 day", sharded, new, {}),
            (f"sharded, {mid_days} days", stores[mid_days], new, {}),
            (f"sharded, {long_days} days", stores[long_days], new, {}),
            (f"sharded, {long_days} days, whole archive listed", stores[long_days], whole, {}),
            ("sharded, 1 day, into day 1's shard", sharded, next_file, {}),
            ("innerChunks {}, 1 day", unsharded, new, NO_SHARDING),
            ("innerChunks {}, 1 day, into day 1's shard", unsharded, next_file, NO_SHARDING),
        ]
        appends = []
        for label, store, source, materialize in cases:
            print(f"  append: {label}", file=sys.stderr)
            appends.append((label, run_append(root, store, work, source, materialize)))
    day_passed = show_day(day)
    compared = ("sharded, 1 day", f"sharded, {long_days} days")
    appends_passed = show_appends(appends, compared, build)
    print(f"\nGNSS targets: {'all met' if day_passed and appends_passed else 'NOT all met'}")


if __name__ == "__main__":
    main()
