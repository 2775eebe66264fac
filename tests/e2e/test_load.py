"""Load: many IngestBatches over many stores, applied at once in one ``kubectl apply``.

CI runs 24 batches over 6 stores, enough to have every store queue batches behind its writer;
``make bench-operator`` runs 200 over 20 (``ICECHUNK_OPERATOR_LOAD=20x10``: stores x batches
per store) and prints the figures the README gives.

All of them succeed; no store ever has two writers at once (from the fake kubelet's runs of the
writer pods and the API server's Jobs); every store holds each of its good files exactly once,
values read back, and its batches' failure logs hold exactly the bad ones; the operator's memory
stays bounded. The figures (time to drain, peak operator RSS, most writers at once per store)
are printed and go into the fault tally under "load".
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from icechunk_operator.api import IcechunkStore
from icechunk_operator.k8s import names
from icechunk_operator.synthetic import ArchiveLayout
from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubelet import FakeKubelet
from tests.conftest import make_archive
from tests.e2e.conftest import ClusterDriver, OperatorStarter
from tests.e2e.test_operator import batch_doc, store_doc
from tests.e2e.writers import assert_jobs_match_runs, failure_log_urls, max_concurrent_writers, writer_runs
from tests.faults.invariants import check_store, local_url
from tests.faults.tally import FaultTally

pytestmark = [pytest.mark.load, pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(2400)]

FILES_PER_BATCH = 2


def load_size() -> tuple[int, int]:
    """(stores, batches per store): ``$ICECHUNK_OPERATOR_LOAD`` as ``STORESxBATCHES``, else 6x4."""
    stores, _, per_store = os.environ.get("ICECHUNK_OPERATOR_LOAD", "6x4").partition("x")
    return int(stores), int(per_store)


STORES, BATCHES_PER_STORE = load_size()
#: The operator's resident memory (about 120 MB at work) stays under this all through the load...
RSS_LIMIT_MB = 256
#: ... and grows by no more than this from the first half of the drain to the second: memory
#: that grew with every batch (a leak, a cache without a bound) would show here.
RSS_SECOND_HALF_GROWTH_MB = 32


class RssSampler:
    """The resident memory of one process, sampled twice a second on a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []  # (monotonic time, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def peak_mb(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        return max(rss for when, rss in self.samples if start <= when <= end) / 2**20

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic(), self.process.memory_info().rss))


def phases(cluster: ClusterDriver, namespace: str) -> Counter[str]:
    listed: dict[str, Any] = cluster.custom.list_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.BATCHES
    )
    return Counter(str((item.get("status") or {}).get("phase")) for item in listed["items"])


def test_batches_over_many_stores_applied_at_once_all_succeed_one_writer_per_store(
    own_operators: OperatorStarter,
    control_plane: ControlPlane,
    kubelet: FakeKubelet,
    kube: Any,
    dask_scheduler: str,
    namespace: str,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    # Two files per batch, 4 of them broken (20 files at 10 batches per store, 8 at 4); every
    # store gets all of them.
    archive: ArchiveLayout = make_archive(
        tmp_path / "archive", institutions=1, models=BATCHES_PER_STORE // 2, experiments=2, variables=2
    )
    assert len(archive.files) == BATCHES_PER_STORE * FILES_PER_BATCH
    operator = own_operators("loaded", [namespace])
    cluster = ClusterDriver(control_plane, operator, kubelet, kube)
    stores = {
        f"load{s:02d}": store_doc(f"load{s:02d}", (tmp_path / f"s{s:02d}" / "store").as_uri(), archive)
        for s in range(STORES)
    }
    parts = {
        f"b{b:02d}": archive.files[b * FILES_PER_BATCH : (b + 1) * FILES_PER_BATCH]
        for b in range(BATCHES_PER_STORE)
    }
    batches: dict[str, tuple[str, str]] = {}  # batch name -> (store, part)
    documents: list[dict[str, Any]] = list(stores.values())
    for store in stores:
        for part, files in parts.items():
            name = f"{store}-{part}"
            batches[name] = (store, part)
            document = batch_doc(name, store, archive, source={"files": [local_url(f) for f in files]})
            # The session's Dask cluster, named as an existing scheduler: the fake kubelet runs
            # no Dask pods, so a DaskCluster per batch would only add a Deployment, a Service
            # and pods per batch that never run (the operator's DaskClusters are tested elsewhere).
            document["spec"]["execution"] |= {"workers": 1, "scheduler": dask_scheduler}
            documents.append(document)
    assert operator.process is not None

    with RssSampler(operator.process.pid) as rss:
        applied = time.monotonic()
        result = cluster.apply(*documents, namespace=namespace)
        assert result.returncode == 0, result.stderr

        half: list[float] = []  # when half the batches had succeeded

        def drained() -> bool:
            counts = phases(cluster, namespace)
            assert counts["Failed"] == 0, counts
            if not half and counts["Succeeded"] >= len(batches) // 2:
                half.append(time.monotonic())
            return counts["Succeeded"] == len(batches)

        cluster.wait(namespace, drained, 1800, f"{len(batches)} batches to succeed")
        drain = time.monotonic() - applied

    runs = writer_runs(kubelet, namespace)
    assert_jobs_match_runs(cluster.jobs(namespace), runs)
    most = max_concurrent_writers(runs, time.monotonic())
    lost = duplicated = 0
    for store, body in stores.items():
        statuses = {
            b: cluster.status(names.BATCHES, namespace, b) for b, (s, _) in batches.items() if s == store
        }
        logged = sum((failure_log_urls(status) for status in statuses.values()), Counter[str]())
        assert set(logged.values()) == {1}, logged  # each bad file in one log, once
        assert set(logged) == {local_url(f) for f in archive.files if f.defect != "none"}
        reported = [snapshot for status in statuses.values() for snapshot in status.get("commits", [])]
        found = check_store(
            IcechunkStore.model_validate(body), archive, snapshots_before=reported, read_every=1
        )
        lost, duplicated = lost + found.lost, duplicated + found.duplicated
    peak, first, second = rss.peak_mb(), rss.peak_mb(end=half[0]), rss.peak_mb(start=half[0])
    figures = (
        f"{len(batches)} batches over {len(stores)} stores: drained in {drain:.0f} s, "
        f"peak operator RSS {peak:.0f} MB ({first:.0f} MB in the first half, {second:.0f} MB in the "
        f"second), most writers at once per store {max(most.values())}"
    )
    print(figures)
    fault_tally.add("load", figures, len(batches), lost=lost, duplicated=duplicated + max(most.values()) - 1)
    assert set(most) == set(stores) and max(most.values()) == 1, most
    assert peak < RSS_LIMIT_MB and second - first < RSS_SECOND_HALF_GROWTH_MB, figures
