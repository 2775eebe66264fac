"""Which batch of a store runs next: a pure function of the store's batches and writer Jobs.

At most one writer Job per store (a commit Job, or a maintenance Job that expires snapshots) may
be unfinished at any moment, whatever its batch: a Job whose batch was deleted still holds the
store until the garbage collector removes it. Due maintenance goes before waiting batches, so a
busy queue cannot starve it; batches run first come, first served (creation time, then name).
Reconcile Jobs only read, and hold nothing. The operator calls this on every event and on a
timer, so a restart decides again from what the API server holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

TERMINAL_PHASES = ("Succeeded", "Failed")
#: Job components that write to the repository; one of them at a time per store.
WRITER_COMPONENTS = ("commit", "maintenance")


class JobOutcome(StrEnum):
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


@dataclass(frozen=True)
class BatchView:
    name: str
    uid: str
    created: str  # RFC 3339; sorts in time order
    phase: str | None
    waiting_for_store: bool = False
    queue_position: int | None = None
    files_done: int = 0
    files_failed: int = 0
    files_skipped: int = 0

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class JobView:
    name: str
    batch: str
    owner_uid: str | None
    outcome: JobOutcome
    reason: str = ""
    message: str = ""
    component: str = "commit"

    @property
    def writes(self) -> bool:
        return self.component in WRITER_COMPONENTS


@dataclass
class QueueDecision:
    """What to do now. ``finish`` and ``adopt`` pair a batch with its Job; ``maintain`` starts
    the store's due maintenance run."""

    finish: list[tuple[BatchView, JobView]] = field(default_factory=list)
    adopt: list[tuple[BatchView, JobView]] = field(default_factory=list)
    lost: list[BatchView] = field(default_factory=list)
    start: BatchView | None = None
    maintain: bool = False
    positions: dict[str, int] = field(default_factory=dict)  # only the positions that changed
    blocked_by: str | None = None


def plan_queue(
    batches: list[BatchView], jobs: list[JobView], *, store_ready: bool, maintenance_due: bool = False
) -> QueueDecision:
    decision = QueueDecision()
    jobs = [job for job in jobs if job.writes]
    job_of = {job.batch: job for job in jobs if job.owner_uid is not None and job.component == "commit"}
    running_jobs = [job for job in jobs if job.outcome == JobOutcome.RUNNING]
    waiting: list[BatchView] = []
    for batch in sorted(batches, key=lambda b: (b.created, b.name)):
        if batch.terminal:
            continue
        job = job_of.get(batch.name)
        if job is not None and job.owner_uid != batch.uid:
            job = None  # a Job left by an earlier batch of the same name
        if job is None:
            if batch.phase == "Running":
                decision.lost.append(batch)
            else:
                waiting.append(batch)
        elif job.outcome == JobOutcome.RUNNING:
            if batch.phase != "Running":
                decision.adopt.append((batch, job))
        else:
            decision.finish.append((batch, job))
    if running_jobs:
        decision.blocked_by = running_jobs[0].batch or running_jobs[0].name
    elif maintenance_due and store_ready:
        decision.maintain = True
    elif waiting and store_ready:
        decision.start = waiting.pop(0)
    ahead = 1 if (running_jobs or decision.start or decision.maintain) else 0
    decision.positions = {
        batch.name: ahead + index
        for index, batch in enumerate(waiting)
        if batch.queue_position != ahead + index  # only what changed: no patch storm on long queues
    }
    return decision
