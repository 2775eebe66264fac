"""What one store needs now: a pure function from what was observed to a list of actions.

This is the whole of the operator's judgement about a store's batches and writer Jobs, in the
style of Kubernetes' sample-controller (observe, decide, act) with the deciding apart: the
operator observes the store, its batches and Jobs (``observe.py``), calls :func:`plan_store`, and
applies the actions it returns (``apply.py``), every one re-checked against the API server
and safe to repeat. Running the plan again on the same observation gives the same actions, so
an operator restarted at any point decides again from what the API server holds.

The rules:

- At most one writer Job (commit or maintenance) per store is unfinished at any moment, whatever
  its batch: a Job whose batch was deleted still holds the store until it ends. Due maintenance
  goes before waiting batches, so a busy queue cannot starve it; batches run first come, first
  served (creation time, then name).
- A batch's Job is the one named for its attempt and owned by its uid: a Job left by a deleted
  batch of the same name, or by an earlier attempt, is never this batch's.
- A Failed batch is re-queued when a retry is requested (the retry annotation carries a value
  not yet acted on) or its spec changed; it then runs with a new Job and resumes from the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.k8s.views import (
    RETRY_ANNOTATION,
    Admission,
    BatchView,
    JobOutcome,
    JobView,
    Reason,
    StoreView,
)


# Actions ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Queue:
    """Mark a batch Queued: admitted (``Submitted``), waiting for its store, or re-queued."""

    batch: BatchView
    reason: Reason
    message: str


@dataclass(frozen=True)
class Requeue:
    """Put a Failed batch back in the queue for its next attempt."""

    batch: BatchView
    why: str


@dataclass(frozen=True)
class Refuse:
    """End a batch that can never run as specified."""

    batch: BatchView
    message: str


@dataclass(frozen=True)
class Start:
    """Create the batch's DaskCluster and the commit Job of its attempt; mark it Running."""

    batch: BatchView


@dataclass(frozen=True)
class Adopt:
    """A Job of this batch runs, yet the batch is not marked Running (the operator stopped in
    between): mark it Running, start nothing."""

    batch: BatchView
    job: JobView


@dataclass(frozen=True)
class Finish:
    """The batch's Job ended: the batch ends with the outcome and the reason given here."""

    batch: BatchView
    job: JobView
    phase: BatchPhase
    reason: Reason
    message: str


@dataclass(frozen=True)
class Lost:
    """Running, yet no Job of its attempt exists: fail it (after one more look at the API)."""

    batch: BatchView


@dataclass(frozen=True)
class SetPosition:
    batch: BatchView
    position: int


@dataclass(frozen=True)
class StartMaintenance:
    run: str


@dataclass(frozen=True)
class MaintenanceFailed:
    job: str
    message: str


@dataclass(frozen=True)
class DeleteJob:
    """A finished Job that no batch owns any more and whose name a batch needs."""

    job: str
    uid: str  # deleted only if it is still this Job


Action = (
    Queue
    | Requeue
    | Refuse
    | Start
    | Adopt
    | Finish
    | Lost
    | SetPosition
    | StartMaintenance
    | MaintenanceFailed
    | DeleteJob
)


@dataclass(frozen=True)
class Observed:
    """One store's world: the store (None when it does not exist), its batches, its Jobs, and
    the admission checks of the batches that needed one (by uid)."""

    store: StoreView | None
    batches: tuple[BatchView, ...]
    jobs: tuple[JobView, ...]
    admissions: dict[str, Admission] = field(default_factory=dict)


# Messages ---------------------------------------------------------------------------------------
def retry_hint(batch: str) -> str:
    return (
        f"to retry, fix the cause and run: kubectl annotate ingestbatch {batch} "
        f'{RETRY_ANNOTATION}="$(date +%s)" --overwrite (it resumes from the last commit)'
    )


def counts(batch: BatchView) -> str:
    return f"{batch.files_done} ingested, {batch.files_skipped} skipped, {batch.files_failed} failed"


def job_end(batch: BatchView, job: JobView) -> tuple[BatchPhase, Reason, str]:
    """Phase, reason and message of a batch whose Job ended, from the way it ended."""
    if job.outcome == JobOutcome.COMPLETE:
        return BatchPhase.SUCCEEDED, Reason.COMPLETED, counts(batch)
    if job.exit_code == 1:
        reason, what = Reason.BEYOND_TOLERANCE, "more files failed than spec.failures allows"
    elif job.exit_code == 2:
        reason, what = Reason.REFUSED, "the commit pod refused the batch (see status.message)"
    elif job.reason == "BackoffLimitExceeded":
        reason = Reason.CRASHED
        what = (
            f"the commit pod crashed {job.failed_pods} times, more than spec.execution.podRetries "
            "allows (see status.message and the pods' logs)"
        )
    elif job.reason == "DeadlineExceeded":
        reason, what = Reason.DEADLINE_EXCEEDED, "the batch ran longer than spec.execution.deadlineSeconds"
    else:
        reason, what = Reason.JOB_FAILED, job.message or f"commit Job {job.name} failed"
    return BatchPhase.FAILED, reason, f"{what}; {counts(batch)}; {retry_hint(batch.name)}"


# The plan ---------------------------------------------------------------------------------------
def admission_candidates(batches: tuple[BatchView, ...] | list[BatchView]) -> list[BatchView]:
    """Batches whose spec must be checked against the store before the plan can place them:
    new, changed, waiting for the store, asking to be retried, and the head of the queue (the
    store may have changed since it was admitted)."""
    ordered = sorted(batches, key=lambda b: (b.created, b.name))
    wanted = [b for b in ordered if _needs_admission(b)]
    waiting = [b for b in ordered if b.phase in (None, BatchPhase.QUEUED) or b in wanted]
    head = waiting[0] if waiting else None
    return wanted + ([head] if head is not None and head not in wanted else [])


def _needs_admission(batch: BatchView) -> bool:
    if batch.phase is None:
        return True
    if batch.phase == BatchPhase.QUEUED:
        return batch.waiting_for_store or batch.spec_changed
    if batch.phase == BatchPhase.FAILED:
        return batch.retry_pending or batch.spec_changed
    return False


def plan_store(observed: Observed) -> list[Action]:
    """The actions that bring one store's queue to what its batches and Jobs call for."""
    store = observed.store
    ready = store is not None and store.ready
    writers = [job for job in observed.jobs if job.writes]
    jobs_by_name = {job.name: job for job in writers}
    actions: list[Action] = []
    waiting: list[BatchView] = []
    for batch in sorted(observed.batches, key=lambda b: (b.created, b.name)):
        job = jobs_by_name.get(batch.job_name)
        if job is not None and job.owner_uid != batch.uid:
            job = None  # a Job left by a deleted batch of the same name: never this batch's
            actions.extend(_free_name(jobs_by_name[batch.job_name], batch))
        admission = observed.admissions.get(batch.uid)
        if batch.phase == BatchPhase.SUCCEEDED:
            continue
        if batch.phase == BatchPhase.FAILED:
            if admission is None:
                continue  # not asked to retry, and the spec did not change
            why = "retry requested" if batch.retry_pending else "spec changed"
            if admission.invalid is not None:  # a retry of an unusable spec says why again
                actions.append(Refuse(batch, admission.invalid))
                continue
            actions.append(Requeue(batch, why))
            waiting.append(batch)
            continue
        if job is not None and job.outcome != JobOutcome.RUNNING:
            phase, reason, message = job_end(batch, job)
            actions.append(Finish(batch, job, phase, reason, message))
            continue
        if job is not None:
            if batch.phase != BatchPhase.RUNNING:
                actions.append(Adopt(batch, job))
            continue
        if batch.phase == BatchPhase.RUNNING:
            actions.append(Lost(batch))
            continue
        # Waiting: new or Queued, and no Job of its attempt.
        if admission is not None:
            if admission.invalid is not None:
                actions.append(Refuse(batch, admission.invalid))
                continue
            if admission.waiting is not None:
                if not batch.waiting_for_store or batch.phase is None or batch.spec_changed:
                    actions.append(Queue(batch, Reason.WAITING_FOR_STORE, admission.waiting))
                waiting.append(batch)
                continue
            if batch.phase is None or batch.waiting_for_store or batch.spec_changed:
                actions.append(Queue(batch, Reason.SUBMITTED, "waiting in queue"))
        waiting.append(batch)

    running = [job for job in writers if job.outcome == JobOutcome.RUNNING]
    started = None
    if running:
        pass  # the store is held; everything else waits
    elif store is not None and store.maintenance_due is not None and ready:
        actions.append(StartMaintenance(store.maintenance_due))
    elif ready and waiting:
        # First come, first served: only the oldest waiting batch may start, once it was checked
        # against the store just now (else the next pass checks it). A batch re-queued just now
        # starts on the next pass, from its new attempt's status.
        head = waiting[0]
        if head.phase != BatchPhase.FAILED and _admitted(head, observed.admissions):
            started = head
            actions.append(Start(started))
    if store is not None and store.maintenance_job is not None:
        job = jobs_by_name.get(store.maintenance_job)
        if job is not None and job.outcome == JobOutcome.FAILED:
            actions.append(MaintenanceFailed(job.name, job.message or job.reason or "the Job failed"))

    ahead = 1 if (running or started or any(isinstance(a, StartMaintenance) for a in actions)) else 0
    queue = [b for b in waiting if b is not started]
    for index, batch in enumerate(queue):
        if batch.queue_position != ahead + index:  # only what changed: no patch storm on long queues
            actions.append(SetPosition(batch, ahead + index))
    return actions


def _admitted(batch: BatchView, admissions: dict[str, Admission]) -> bool:
    """Runnable now: checked against the store just now and found fine."""
    admission = admissions.get(batch.uid)
    return admission is not None and admission.ok


def _free_name(job: JobView, batch: BatchView) -> list[Action]:
    """A finished Job of a predecessor with this batch's Job name: delete it so the name is free
    (a running one holds the store until it ends, and is left alone)."""
    return [DeleteJob(job.name, job.uid)] if job.outcome != JobOutcome.RUNNING else []
