"""The commit pod: run one IngestBatch with the engine and report its progress in the batch's status.

The pod is the only writer of its store (the operator starts at most one per store). It reads the
batch and its store from the API, runs :func:`engine.runner.run_batch` with the Dask scheduler the
operator set in its environment, merge-patches counts and stage as it goes (at most every
``PATCH_INTERVAL`` seconds), and exits 0, or 1 beyond the failure tolerance, or 2 for a spec the
engine refuses. Any other exit (a crash, an OOM kill) lets the Job restart the pod, which resumes
from the last commit because the engine skips every file its ledger already holds.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.engine.runner import Progress, RunReport
from icechunk_operator.k8s import names
from icechunk_operator.k8s.kube import KubeApi, pod_connection, without_status

PATCH_INTERVAL = 2.0
log = logging.getLogger("icechunk_operator.commit")


def progress_status(progress: Progress) -> dict[str, Any]:
    finished = progress.done + progress.skipped
    return {
        "stage": progress.stage,
        "files": {
            "total": progress.total,
            "done": progress.done,
            "failed": progress.failed,
            "skipped": progress.skipped,
        },
        "progress": f"{finished}/{progress.total}",
    }


def report_status(report: RunReport, earlier_commits: list[str]) -> dict[str, Any]:
    status: dict[str, Any] = {
        "stage": "done" if report.error is None else "error",
        "files": {
            "total": report.total,
            "done": report.done,
            "failed": report.failed,
            "skipped": report.skipped,
        },
        "progress": f"{report.done + report.skipped}/{report.total}",
        "commits": list(dict.fromkeys(earlier_commits + report.commits)),
    }
    if report.commits:
        status["meanCommitSeconds"] = round(report.stage_seconds.get("commit", 0.0) / len(report.commits), 3)
    if report.failure_log:
        status["failureLog"] = report.failure_log
    if report.error:  # a refused promotion of a staged batch says why here
        status["message"] = report.error[:1024]
    return status


class StatusReporter:
    """Throttled progress patches: often enough for ``kubectl get``, rare enough for the API."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self._api, self._namespace, self._name = api, namespace, name
        self._last_patch = 0.0
        self._last_stage = ""

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.stage == self._last_stage and now - self._last_patch < PATCH_INTERVAL:
            return
        self._last_patch, self._last_stage = now, progress.stage
        try:
            self._api.patch_status(names.BATCHES, self._namespace, self._name, progress_status(progress))
        except Exception as error:  # progress is best effort; the final patch is not
            log.warning("progress patch failed: %s", error)


def run_commit_pod(reference: str, *, scheduler: str | None = None) -> int:
    """Run the batch ``NAMESPACE/NAME``; returns the process exit code."""
    from icechunk_operator.engine.runner import run_batch
    from icechunk_operator.engine.templates import GroupPathError
    from icechunk_operator.engine.urls import SourceOutsideContainersError

    api, namespace, name, body = pod_connection(reference, names.BATCHES)
    if body is None:
        return names.EXIT_INVALID_SPEC
    try:
        batch = IngestBatch.model_validate(without_status(body))
        store = api.load(IcechunkStore, namespace, batch.spec.store, "spec.store")
    except (ValidationError, LookupError) as error:
        api.patch_status(names.BATCHES, namespace, name, {"stage": "refused", "message": str(error)[:1024]})
        log.error("%s", error)
        return names.EXIT_INVALID_SPEC

    earlier_commits = list((body.get("status") or {}).get("commits", []))
    reporter = StatusReporter(api, namespace, name)
    address = scheduler or os.environ.get(names.ENV_SCHEDULER) or None
    workers = int(os.environ.get(names.ENV_WORKERS, "0")) or None
    try:
        report = run_batch(store, batch, scheduler=address, workers=workers, on_progress=reporter)
    except (SourceOutsideContainersError, GroupPathError) as error:
        api.patch_status(names.BATCHES, namespace, name, {"stage": "refused", "message": str(error)[:1024]})
        log.error("%s", error)
        return names.EXIT_INVALID_SPEC
    api.patch_status(names.BATCHES, namespace, name, report_status(report, earlier_commits))
    log.info(
        "batch %s/%s: %d done, %d skipped, %d failed of %d; commits %s",
        namespace,
        name,
        report.done,
        report.skipped,
        report.failed,
        report.total,
        report.commits,
    )
    return 0 if report.succeeded else names.EXIT_BATCH_FAILED
