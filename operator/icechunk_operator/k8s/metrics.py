"""Prometheus metrics of the operator, computed from what it already watches.

Batches by phase and file counts are read from the batch index at scrape time (a custom
collector), so they are right after a restart without any state of their own; commit latency is
a histogram the controller feeds when a batch ends, from the commit pod's report in status.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.k8s.schedules import parse_time
from icechunk_operator.k8s.views import BatchView

PHASES = ("Pending", *BatchPhase)

#: Metrics of IngestSchedules (labels namespace, schedule, store): "no successful update in N
#: hours" is ``time() - LAST_SUCCESS > N * 3600``, the chart's PrometheusRule.
SCHEDULE_LAST_SUCCESS = "icechunk_operator_schedule_last_success_timestamp_seconds"
SCHEDULE_CONSECUTIVE_FAILURES = "icechunk_operator_schedule_consecutive_failures"
SCHEDULE_LAST_RUN_FILES_ADDED = "icechunk_operator_schedule_last_run_files_added"
SCHEDULE_LAST_RUN_SECONDS = "icechunk_operator_schedule_last_run_duration_seconds"
SCHEDULE_NEXT_RUN = "icechunk_operator_schedule_next_run_timestamp_seconds"
SCHEDULE_CHECKED = "icechunk_operator_schedule_checked_timestamp_seconds"
#: Per store (labels namespace, store): passes over its queue (events and timer ticks), each of
#: which re-plans it from what the API server holds; a queue that waits still counts passes.
QUEUE_PASSES = "icechunk_operator_queue_passes_total"
#: Per store (labels namespace, store): the newest completion of a Succeeded IngestBatch.
STORE_LAST_SUCCESS = "icechunk_operator_store_last_success_timestamp_seconds"

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
        last_success = GaugeMetricFamily(
            STORE_LAST_SUCCESS,
            "Completion time of the store's newest Succeeded IngestBatch (of those that exist).",
            labels=["namespace", "store"],
        )
        files = GaugeMetricFamily(
            "icechunk_operator_batch_files",
            "Files of the IngestBatches, by outcome, as their commit pods reported them.",
            labels=["namespace", "store", "outcome"],
        )
        for (namespace, store), views in self._batches():
            by_phase: collections.Counter[str] = collections.Counter()
            by_outcome: collections.Counter[str] = collections.Counter()
            completed: list[float] = []
            for view in views:
                by_phase[view.phase or "Pending"] += 1
                if view.phase == BatchPhase.SUCCEEDED and (done := _timestamp(view.completed)) is not None:
                    completed.append(done)
                by_outcome.update(
                    {"ingested": view.files_done, "failed": view.files_failed, "skipped": view.files_skipped}
                )
            for phase in PHASES:
                phases.add_metric([namespace, store, phase], by_phase[phase])
            for outcome in ("ingested", "failed", "skipped"):
                files.add_metric([namespace, store, outcome], by_outcome[outcome])
            if completed:
                last_success.add_metric([namespace, store], max(completed))
        yield phases
        yield files
        yield last_success


#: Every IngestSchedule's body, as the operator's index holds them (one collection per key).
ScheduleSource = Callable[[], Iterable[Iterable[dict[str, Any]]]]
#: (namespace, schedule) -> when the operator last checked it for a due run.
CheckedSource = Callable[[], Mapping[tuple[str, str], datetime]]


def _timestamp(text: str | None) -> float | None:
    moment = parse_time(text)
    return moment.timestamp() if moment else None


class ScheduleCollector(Collector):
    """Per schedule, from its status: when it last succeeded, how its last run went, what is next.

    Before its first success a schedule reports its creation time as the last success, so an
    alert on "no success for N hours" also fires for a schedule that never once succeeded; a
    suspended schedule reports none, since nobody expects it to update."""

    def __init__(self, schedules: ScheduleSource, checked: CheckedSource = dict) -> None:
        self._schedules, self._checked = schedules, checked

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace", "schedule", "store"]
        success = GaugeMetricFamily(
            SCHEDULE_LAST_SUCCESS,
            "Time of the last successful run (before the first: creation).",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            SCHEDULE_CONSECUTIVE_FAILURES, "Runs failed since the last success.", labels=labels
        )
        added = GaugeMetricFamily(
            SCHEDULE_LAST_RUN_FILES_ADDED, "Files the last ended run added.", labels=labels
        )
        seconds = GaugeMetricFamily(
            SCHEDULE_LAST_RUN_SECONDS, "Wall time of the last ended run.", labels=labels
        )
        upcoming = GaugeMetricFamily(
            SCHEDULE_NEXT_RUN, "Time of the next cron run (none when suspended).", labels=labels
        )
        checked_at = GaugeMetricFamily(
            SCHEDULE_CHECKED,
            "Clock time of the operator's last check for a due run (stands still if its timer stops).",
            labels=labels,
        )
        checked = self._checked()
        for bodies in self._schedules():
            for body in bodies:
                meta, status = body.get("metadata") or {}, body.get("status") or {}
                store = str(((body.get("spec") or {}).get("batch") or {}).get("store", ""))
                key = [str(meta.get("namespace", "default")), str(meta.get("name", "")), store]
                last_run = status.get("lastRun") or {}
                created = _timestamp(meta.get("creationTimestamp"))
                last_success = _timestamp(status.get("lastSuccessfulTime")) or created
                suspended = bool((body.get("spec") or {}).get("suspend"))
                if last_success is not None and not suspended:  # a suspended schedule is not late
                    success.add_metric(key, last_success)
                failures.add_metric(key, float(status.get("consecutiveFailures") or 0))
                if last_run:
                    added.add_metric(key, float(last_run.get("filesAdded") or 0))
                    started, ended = (
                        _timestamp(last_run.get("startTime")),
                        _timestamp(last_run.get("completionTime")),
                    )
                    if started is not None and ended is not None:
                        seconds.add_metric(key, ended - started)
                if (upcoming_time := _timestamp(status.get("nextRunTime"))) is not None:
                    upcoming.add_metric(key, upcoming_time)
                if (when := checked.get((key[0], key[1]))) is not None:
                    checked_at.add_metric(key, when.timestamp())
        yield from (success, failures, added, seconds, upcoming, checked_at)


class OperatorMetrics:
    def __init__(
        self, batches: BatchSource, schedules: ScheduleSource = lambda: (), checked: CheckedSource = dict
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(BatchCollector(batches))
        self.registry.register(ScheduleCollector(schedules, checked))
        self.commit_seconds = Histogram(
            "icechunk_operator_commit_seconds",
            "Mean time of one Icechunk commit in each finished batch (commit pod's report).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.queue_passes = Counter(
            QUEUE_PASSES.removesuffix("_total"),
            "Passes over the store's queue, each planned afresh from the API server.",
            ["namespace", "store"],
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
