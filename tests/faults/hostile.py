"""The harness for hostile input: any list of files (kind, path) through the real engine path
(run_batch on a Dask cluster, each file parsed in a worker's parser process), and an account of
what became of each one.

It knows nothing of file formats: NetCDF3/HDF5 mutations (tests/faults/corpus.py) go through
virtual ingest, the malformed RINEX files through materialized ingest (``materialize=``). Each file
is its own group, so one file's fate never depends on another's.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.ledger import read_pages
from icechunk_operator.engine.runner import RunReport, run_batch
from icechunk_operator.engine.storage import open_repository
from tests.faults.corpus import HostileFile

#: Each file's stem is its group: ``name.ext`` -> ``hostile/name``.
PATTERN = r"(?P<stem>[^/]+?)(?:\.[^./]*)?$"


@dataclass
class Memory:
    """The largest resident sizes seen while the batch ran (bytes)."""

    largest_process: int = 0
    largest_parser: int = 0
    largest_total: int = 0


@dataclass
class HostileRun:
    files: Sequence[HostileFile]
    report: RunReport
    ledger: Counter[str]  # url -> entries in the store's ledger
    failures: dict[str, list[dict[str, Any]]]  # url -> records in the failure log
    seconds: float
    workers_before: dict[str, int]  # worker address -> pid
    workers_after: dict[str, int]
    memory: Memory = field(default_factory=Memory)

    def outcome(self, item: HostileFile) -> str:
        """'ingested', the failure class, or what went wrong: 'lost', 'duplicated'."""
        url = url_of(item)
        records = self.failures.get(url, [])
        if self.ledger[url] + len(records) == 0:
            return "lost"
        if self.ledger[url] + len(records) > 1:
            return "duplicated"
        return "ingested" if self.ledger[url] else str(records[0]["error_class"])

    def table(self) -> dict[str, Counter[str]]:
        """Outcomes per kind."""
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for item in self.files:
            table[item.kind][self.outcome(item)] += 1
        return table


def url_of(item: HostileFile) -> str:
    return item.path.resolve().as_uri()


def hostile_resources(
    files: Sequence[HostileFile],
    store_url: str,
    execution: dict[str, Any],
    fixes: Sequence[str] = (),
    materialize: dict[str, Any] | None = None,
) -> tuple[IcechunkStore, IngestBatch]:
    root = Path(os.path.commonpath([str(f.path.resolve().parent) for f in files]))
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "hostile"},
            "spec": {
                "storage": {"url": store_url},
                "virtualChunkContainers": [{"urlPrefix": root.as_uri() + "/"}],
            },
        }
    )
    batch = IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": "hostile"},
            "spec": {
                "store": "hostile",
                "source": {"files": [url_of(f) for f in files]},
                "grouping": {"pattern": PATTERN, "template": "hostile/{stem}"},
                **(
                    {"materialize": materialize}
                    if materialize is not None
                    else {"virtualization": {"fixes": list(fixes)}}
                ),
                "execution": execution,
                "failures": {"maxFailedFraction": 1.0},
            },
        }
    )
    return store, batch


def run_hostile(
    files: Sequence[HostileFile],
    store_dir: Path,
    scheduler: str,
    *,
    file_timeout: int = 5,
    worker_memory: str = "1Gi",
    fixes: Sequence[str] = (),
    materialize: dict[str, Any] | None = None,
) -> HostileRun:
    """One batch of ``files`` on the cluster at ``scheduler``; the account of every file."""
    store, batch = hostile_resources(
        files,
        store_dir.resolve().as_uri(),
        {"workers": 2, "fileTimeoutSeconds": file_timeout, "workerMemory": worker_memory},
        fixes,
        materialize,
    )
    before = workers(scheduler)
    started = time.perf_counter()
    with watched_memory() as memory:
        report = run_batch(store, batch, scheduler=scheduler)
    seconds = time.perf_counter() - started
    failures: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if report.failure_log:
        log = json.loads(Path(report.failure_log.removeprefix("file://")).read_text())
        for record in log["failures"]:
            failures[record["url"]].append(record)
    return HostileRun(
        files, report, ledger_counts(store), failures, seconds, before, workers(scheduler), memory
    )


def ledger_counts(store: IcechunkStore) -> Counter[str]:
    """Entries per URL over every ledger page (a file recorded twice counts twice)."""
    repo = open_repository(store.spec, create=False)
    pages = asyncio.run(read_pages(repo.readonly_session(branch=store.spec.branch).store))
    return Counter(entry.url for entries in pages.values() for entry in entries if not entry.removed)


def workers(scheduler: str) -> dict[str, int]:
    """The scheduler's workers now: a worker that died and was restarted has a new address and pid."""
    from distributed import Client

    with Client(scheduler, timeout=30) as client:
        pids: dict[str, int] = client.run(os.getpid)
        return pids


@contextmanager
def watched_memory(interval: float = 0.1) -> Iterator[Memory]:
    """Sample the resident size of this process and all its descendants (the local cluster's
    nannies, workers and their parser processes) until the block ends."""
    import psutil

    memory = Memory()
    done = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                    parser = "parser_child" in " ".join(process.cmdline())
                except psutil.Error:  # ended between the listing and the look
                    continue
                total += rss
                memory.largest_process = max(memory.largest_process, rss)
                if parser:
                    memory.largest_parser = max(memory.largest_parser, rss)
            memory.largest_total = max(memory.largest_total, total)
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield memory
    finally:
        done.set()
        thread.join()
