"""Prometheus metrics of the operator, computed from what it already watches.

Batches by phase and file counts are read from the batch index at scrape time (a custom
collector), so they are right after a restart without any state of their own; commit latency is
a histogram the controller feeds when a batch ends, from the commit pod's report in status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.k8s.views import BatchView

PHASES = ("Pending", *BatchPhase)

#: (namespace, store) -> the batches of that store, as the operator's index holds them.
BatchSource = Callable[[], Iterable[tuple[tuple[str, str], Iterable[BatchView]]]]


class BatchCollector(Collector):
    def __init__(self, batches: BatchSource) -> None:
        self._batches = batches

    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = GaugeMetricFamily(
            "icechunk_operator_batches",
            "IngestBatches by phase ('Pending': not admitted yet).",
            labels=["namespace", "store", "phase"],
        )
        files = GaugeMetricFamily(
            "icechunk_operator_batch_files",
            "Files of the IngestBatches, by outcome, as their commit pods reported them.",
            labels=["namespace", "store", "outcome"],
        )
        for (namespace, store), views in self._batches():
            by_phase: Counter[str] = Counter()
            by_outcome: Counter[str] = Counter()
            for view in views:
                by_phase[view.phase or "Pending"] += 1
                by_outcome.update(
                    {"ingested": view.files_done, "failed": view.files_failed, "skipped": view.files_skipped}
                )
            for phase in PHASES:
                phases.add_metric([namespace, store, phase], by_phase[phase])
            for outcome in ("ingested", "failed", "skipped"):
                files.add_metric([namespace, store, outcome], by_outcome[outcome])
        yield phases
        yield files


class OperatorMetrics:
    def __init__(self, batches: BatchSource) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(BatchCollector(batches))
        self.commit_seconds = Histogram(
            "icechunk_operator_commit_seconds",
            "Mean time of one Icechunk commit in each finished batch (commit pod's report).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "icechunk_operator_batch_seconds",
            "Wall time of finished batches, from start to completion.",
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
            registry=self.registry,
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
