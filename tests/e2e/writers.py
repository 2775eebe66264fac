"""Who wrote to which store, and when: the check that no store ever had two writers at once.

The fake kubelet runs every writer pod (commit, maintenance) as a local process and notes when it
started and when it saw it exit, on one monotonic clock; the API server's Jobs say which store and
which Job each pod belongs to. Job times themselves (whole seconds) are too coarse to tell two
writers apart from one that follows another within the second, so the runs decide overlaps and
the Jobs check that every writer Job's pods are among the runs.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from icechunk_operator.k8s import names
from icechunk_operator.k8s.views import WRITER_COMPONENTS
from tests.cluster.kubelet import CommitRun, FakeKubelet

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods


def writer_runs(kubelet: FakeKubelet, namespace: str) -> list[CommitRun]:
    return [
        run
        for run in kubelet.commit_runs(namespace)
        if run.labels.get(names.LABEL_COMPONENT) in WRITER_COMPONENTS
    ]


def max_concurrent_writers(runs: list[CommitRun], end: float) -> dict[str, int]:
    """Per store, the most writer processes alive at one moment (a run still going ends at ``end``)."""
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for run in runs:
        store = run.labels.get(names.LABEL_STORE, "")
        events[store] += [(run.started, 1), (run.ended if run.ended is not None else end, -1)]
    most: dict[str, int] = {}
    for store, points in events.items():
        alive = peak = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at a tie
            alive += step
            peak = max(peak, alive)
        most[store] = peak
    return most


def assert_jobs_match_runs(jobs: list[Any], runs: list[CommitRun]) -> None:
    """Every writer pod that ran belongs to a writer Job the API server has, and each such Job
    ran as many pods as its status counts (none ran that the Job did not ask for)."""
    by_job = Counter(run.labels.get(JOB_NAME_LABEL, "") for run in runs)
    writers = {
        job.metadata.name: job
        for job in jobs
        if (job.metadata.labels or {}).get(names.LABEL_COMPONENT) in WRITER_COMPONENTS
    }
    assert set(by_job) <= set(writers), f"pods of unknown Jobs ran: {set(by_job) - set(writers)}"
    for name, job in writers.items():
        finished = int(job.status.succeeded or 0) + int(job.status.failed or 0)
        assert by_job[name] == finished, f"Job {name}: {finished} pods ended, {by_job[name]} ran"


def failure_log_urls(status: dict[str, Any]) -> Counter[str]:
    """The files a batch's failure log (``status.failureLog``, a file:// URL here) names."""
    url = status.get("failureLog")
    if not url:
        return Counter()
    log = json.loads(Path(str(url).removeprefix("file://")).read_text())
    return Counter(str(record["url"]) for record in log["failures"])
