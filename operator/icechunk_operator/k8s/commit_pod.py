"""The commit pod: run one IngestBatch with the engine and report its progress in the batch's status.

The pod is the only writer of its store (the operator starts at most one per store). It reads the
batch and its store from the API, runs :func:`engine.runner.run_batch` with the Dask scheduler the
operator set in its environment (waiting for it up to ``schedulerWaitSeconds``: the scheduler
starts with the pod), merge-patches counts and stage as it goes (at most every
``PATCH_INTERVAL`` seconds), and exits 0, or 1 beyond the failure tolerance, or 2 for a spec the
engine refuses. Any other exit (an uncaught exception exits 3; an OOM kill, a signal) lets the
Job restart the pod, which resumes from the last commit because the engine skips every file its
ledger already holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.engine.runner import Progress, RunReport
from icechunk_operator.exiting import ExitCode, one_line_error
from icechunk_operator.k8s import names
from icechunk_operator.k8s.kube import KubeApi, pod_connection, without_status
from icechunk_operator.k8s.settings import PodSettings

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
    # A refused promotion of a staged batch says why here; a success clears an earlier crash's note.
    status["message"] = report.error[:1024] if report.error else None
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
    """Run the batch ``NAMESPACE/NAME``; returns the process exit code (see ``ExitCode``).

    A refused batch (its spec, its sources, its index, its tag) exits 2 with the reason in
    ``status.message``. Any other exception is a crash: its one-line message goes into
    ``status.message`` too, the traceback into the pod's log, and the pod exits 3, which the Job
    retries: the next pod resumes from the last commit.
    """
    from icechunk_operator.engine.errors import Refused
    from icechunk_operator.engine.execution import wait_for_scheduler
    from icechunk_operator.engine.runner import run_batch

    api, namespace, name, body = pod_connection(reference, names.BATCHES)
    settings = PodSettings.from_env()
    if body is None:
        return ExitCode.REFUSED
    if settings.batch_uid and body["metadata"].get("uid") != settings.batch_uid:
        # The batch this Job was made for was deleted and one of the same name applied: that
        # one has Jobs of its own. Touch nothing of it.
        log.error(
            "batch %s/%s is not the one this Job was made for (uid %s)", namespace, name, settings.batch_uid
        )
        return ExitCode.REFUSED

    def say(stage: str, message: str | None) -> None:
        patch = {"stage": stage, "message": message[:1024] if message else None}
        api.patch_status(names.BATCHES, namespace, name, patch)

    try:
        batch = IngestBatch.model_validate(without_status(body))
        store = api.load(IcechunkStore, namespace, batch.spec.store, "spec.store")
    except (ValidationError, LookupError) as error:
        say("refused", str(error))
        log.error("%s", error)
        return ExitCode.REFUSED

    earlier_commits = list((body.get("status") or {}).get("commits", []))
    reporter = StatusReporter(api, namespace, name)
    address = scheduler or settings.dask_scheduler
    try:
        if address:
            say("waiting for the Dask scheduler", None)
            wait_for_scheduler(address, settings.scheduler_wait_seconds)
        report = run_batch(
            store, batch, scheduler=address, workers=settings.dask_workers or None, on_progress=reporter
        )
    except Refused as error:
        say("refused", str(error))
        log.error("%s", error)
        return ExitCode.REFUSED
    except Exception as error:  # a crash: retried by the Job, resumed from the last commit
        log.exception("batch %s/%s crashed", namespace, name)
        with contextlib.suppress(Exception):  # the API may be what failed; the log has it all
            say(
                "crashed",
                f"crashed: {one_line_error(error)}; the Job retries the pod (spec.execution.podRetries)",
            )
        return ExitCode.CRASHED
    api.patch_status(names.BATCHES, namespace, name, report_status(report, earlier_commits))
    if report.refused:  # the files are in, but the tag or the promotion was refused: exit 2
        log.error("batch %s/%s refused: %s", namespace, name, report.error)
        return ExitCode.REFUSED
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
    return ExitCode.OK if report.succeeded else ExitCode.BATCH_FAILED
