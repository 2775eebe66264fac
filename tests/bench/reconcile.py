"""Reconcile a 100,000-entry index against a store whose ledger holds 100,000 files.

Part of ``make bench``. The store's ledger is written directly as ledger pages (ingesting 100,000
files would take the ingest benchmark's time again); the index is a parquet file of the same
size in which 1,000 files changed, 1,000 are new and 1,000 of the store's are gone. The
reconciliation runs in a fresh process, so its peak RSS is its own; it prints the time and that
peak, and checks the counts it found.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRIES = 100_000
CHANGED = NEW = GONE = 1_000
CONTAINER = "s3://ismip6-bench/"


def _resources(root: Path) -> tuple[dict[str, object], dict[str, object]]:
    store = {
        "kind": "IcechunkStore",
        "metadata": {"name": "bench"},
        "spec": {
            "storage": {"url": (root / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": CONTAINER}],
        },
    }
    check = {
        "kind": "Reconciliation",
        "metadata": {"name": "bench"},
        "spec": {"store": "bench", "index": (root / "index.parquet").as_uri()},
    }
    return store, check


def url(number: int) -> str:
    return f"{CONTAINER}Projection-AIS/INST{number % 14:02d}/MODEL{number % 17:02d}/exp{number % 26:02d}/file{number:06d}.nc"


def prepare(root: Path) -> None:
    """The store (ledger pages of 2,000 entries, one commit) and the index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from icechunk_operator.api import IcechunkStore
    from icechunk_operator.engine.commits import initialize_repository
    from icechunk_operator.engine.ledger import encode_page, new_page_name, page_documents
    from icechunk_operator.engine.records import LedgerEntry
    from icechunk_operator.engine.storage import open_repository
    from icechunk_operator.engine.writer import GroupWriter

    store_doc, _ = _resources(root)
    store = IcechunkStore.model_validate(store_doc)
    repo = open_repository(store.spec, create=True)
    initialize_repository(repo, "main")
    entries = [
        LedgerEntry(
            url(n), 1000 + n % 97, f'"{n:08x}"', None, f"group{n // 3}", "bench", "2026-11-21T00:00:00Z"
        )
        for n in range(ENTRIES)
    ]
    documents: dict[str, bytes] = {}
    for start in range(0, ENTRIES, 2000):
        documents.update(page_documents(new_page_name(), encode_page(entries[start : start + 2000])))
    session = repo.writable_session("main")
    with asyncio.Runner() as runner:
        GroupWriter(runner).put_documents(session, documents)
    session.commit("bench ledger")

    kept = entries[GONE:]  # the first GONE files are gone from the source
    rows = [(e.url, e.size + (1 if i < CHANGED else 0), e.etag) for i, e in enumerate(kept)]
    rows += [(url(ENTRIES + n), 500, f'"new{n}"') for n in range(NEW)]
    table = pa.table(
        {
            "url": [r[0] for r in rows],
            "size": pa.array([r[1] for r in rows], pa.int64()),
            "etag": [r[2] for r in rows],
        }
    )
    pq.write_table(table, root / "index.parquet")


def reconcile_once(root: Path) -> dict[str, object]:
    from icechunk_operator.api import IcechunkStore, Reconciliation
    from icechunk_operator.engine.reconcile import run_reconciliation

    store_doc, check_doc = _resources(root)
    started = time.perf_counter()
    report = run_reconciliation(
        IcechunkStore.model_validate(store_doc), Reconciliation.model_validate(check_doc)
    )
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "counts": report.counts(),
        "listed": report.listed,
        "recorded": report.recorded,
    }


def main() -> None:
    from icechunk_operator.engine.storage import quiet_logs

    quiet_logs()
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(reconcile_once(Path(sys.argv[2]))))
        return
    with tempfile.TemporaryDirectory(prefix="icechunk-operator-reconcile-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        prepare(root)
        print(
            f"  store and index of {ENTRIES:,} entries prepared in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        result = subprocess.run(
            [sys.executable, "-m", "tests.bench.reconcile", "--child", str(root)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"missing": NEW, "stale": CHANGED, "orphaned": GONE}
    assert figures["counts"] == expected, figures
    print(f"\n== reconcile a {ENTRIES:,}-entry index against a {ENTRIES:,}-file store")
    print(f"time                {figures['seconds']:.2f} s (open, ledger, index, diff, report)")
    print(f"peak RSS            {figures['peak_rss_mb']:.0f} MB")
    print(f"found               {figures['counts']} (as planted)")
    print("target: under 5 s and 500 MB")


if __name__ == "__main__":
    main()
