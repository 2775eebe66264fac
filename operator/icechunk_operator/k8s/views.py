"""What the operator observes, reduced to the facts its plan decides on (pure parsing).

The plan never sees a raw API object: a batch, a Job and a store each become a small frozen view
here, so that the plan's tests can build every situation in one line and the plan cannot call
the API by accident. Views are built from the same dictionaries the watch and the API return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.api.store import MaintenanceResult
from icechunk_operator.k8s import names

TERMINAL_PHASES = (BatchPhase.SUCCEEDED, BatchPhase.FAILED)
#: Job components that write to the repository; one of them at a time per store.
WRITER_COMPONENTS = ("commit", "maintenance")
#: ``kubectl annotate ingestbatch NAME icechunkoperator.io/retry-requested="$(date +%s)" --overwrite``:
#: any value not acted on yet re-queues a Failed batch, which resumes from the store's ledger.
RETRY_ANNOTATION = f"{names.GROUP}/retry-requested"


class Reason(StrEnum):
    """Reasons of batch conditions and Events; GitOps tools and ``kubectl wait`` read them."""

    SUBMITTED = "Submitted"
    WAITING_FOR_STORE = "WaitingForStore"
    INVALID_SPEC = "InvalidSpec"
    RETRY_REQUESTED = "RetryRequested"
    STARTED = "Started"
    COMPLETED = "Completed"
    COMMIT_JOB_LOST = "CommitJobLost"
    BEYOND_TOLERANCE = "BeyondFailureTolerance"
    REFUSED = "Refused"
    CRASHED = "Crashed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    JOB_FAILED = "JobFailed"


class JobOutcome(StrEnum):
    """How a Job stands; the two ends are the Job condition types of the same names."""

    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


@dataclass(frozen=True)
class BatchView:
    name: str
    uid: str
    created: str  # RFC 3339; sorts in time order
    phase: BatchPhase | None
    generation: int | None = None
    observed_generation: int | None = None
    waiting_for_store: bool = False
    queue_position: int | None = None
    attempt: int = 0  # retries requested and acted on; names the commit Job of this attempt
    retry_request: str | None = None  # the retry annotation's value
    last_retry: str | None = None  # the value last acted on
    files_done: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    completed: str | None = None  # status.completionTime (RFC 3339), for the metrics

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def retry_pending(self) -> bool:
        return bool(self.retry_request) and self.retry_request != self.last_retry

    @property
    def spec_changed(self) -> bool:
        """The spec changed since the operator last acted on it."""
        return self.observed_generation is not None and self.observed_generation != self.generation

    @property
    def job_name(self) -> str:
        return names.commit_job_name(self.name, self.attempt)


@dataclass(frozen=True)
class JobView:
    name: str
    batch: str
    owner_uid: str | None
    outcome: JobOutcome
    reason: str = ""
    message: str = ""
    component: str = "commit"
    exit_code: int | None = None  # the exit code a pod failure policy failed the Job on
    failed_pods: int = 0
    uid: str = ""

    @property
    def writes(self) -> bool:
        return self.component in WRITER_COMPONENTS


@dataclass(frozen=True)
class StoreView:
    name: str
    ready: bool
    maintenance_due: str | None = None  # the due run, which names its Job
    maintenance_job: str | None = None  # the run status says is running


@dataclass(frozen=True)
class Admission:
    """A batch checked against its store: runnable, never runnable, or not yet."""

    invalid: str | None = None  # never runnable as it is: the batch ends Failed
    waiting: str | None = None  # not runnable yet: the batch stays Queued

    @property
    def ok(self) -> bool:
        return self.invalid is None and self.waiting is None


_EXIT_CODE = re.compile(r"exit code (\d+)")


def job_view(job: dict[str, Any]) -> JobView:
    """What the plan needs of a Job: whose it is, whether and why it ended."""
    metadata = job.get("metadata", {})
    status = job.get("status") or {}
    owners = [o for o in metadata.get("ownerReferences") or [] if o.get("kind") == "IngestBatch"]
    outcome, reason, message = JobOutcome.RUNNING, "", ""
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == JobOutcome.COMPLETE:
            outcome, reason, message = JobOutcome.COMPLETE, condition.get("reason", ""), ""
        elif condition.get("type") == JobOutcome.FAILED:
            outcome = JobOutcome.FAILED
            reason, message = condition.get("reason", ""), condition.get("message", "")
    code = _EXIT_CODE.search(message) if reason == "PodFailurePolicy" else None
    labels = metadata.get("labels") or {}
    return JobView(
        name=metadata.get("name", ""),
        batch=labels.get(names.LABEL_BATCH, ""),
        owner_uid=owners[0]["uid"] if owners else None,
        outcome=outcome,
        reason=reason,
        message=message,
        component=labels.get(names.LABEL_COMPONENT, ""),
        exit_code=int(code.group(1)) if code else None,
        failed_pods=int(status.get("failed") or 0),
        uid=metadata.get("uid", ""),
    )


def _phase(value: Any) -> BatchPhase | None:
    return BatchPhase(value) if isinstance(value, str) and value in BatchPhase._value2member_map_ else None


def batch_view(body: dict[str, Any]) -> BatchView:
    metadata, status = body.get("metadata", {}), body.get("status") or {}
    queued: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == BatchPhase.QUEUED), {}
    )
    phase = status.get("phase")
    files = status.get("files") or {}
    return BatchView(
        name=metadata["name"],
        uid=metadata.get("uid", ""),
        created=metadata.get("creationTimestamp", ""),
        phase=_phase(phase),
        generation=metadata.get("generation"),
        observed_generation=status.get("observedGeneration"),
        waiting_for_store=queued.get("status") == "True" and queued.get("reason") == Reason.WAITING_FOR_STORE,
        queue_position=status.get("queuePosition"),
        attempt=int(status.get("attempt") or 0),
        retry_request=(metadata.get("annotations") or {}).get(RETRY_ANNOTATION),
        last_retry=status.get("lastRetryRequest"),
        files_done=int(files.get("done", 0)),
        files_failed=int(files.get("failed", 0)),
        files_skipped=int(files.get("skipped", 0)),
        completed=status.get("completionTime"),
    )


def is_ready(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def store_view(body: dict[str, Any], maintenance_due: str | None) -> StoreView:
    """A store being deleted is never ready: nothing new may write to data about to go."""
    maintenance = (body.get("status") or {}).get("maintenance") or {}
    running = maintenance.get("result") == MaintenanceResult.RUNNING.value
    return StoreView(
        name=body["metadata"]["name"],
        ready=is_ready(body) and body["metadata"].get("deletionTimestamp") is None,
        maintenance_due=maintenance_due,
        maintenance_job=maintenance.get("job") if running else None,
    )
