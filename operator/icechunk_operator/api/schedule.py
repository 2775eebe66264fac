"""IngestSchedule: a batch template run on a cron schedule, so a store keeps up with its source.

A resource of its own, as a CronJob is to a Job, rather than a schedule on IngestBatch: a batch
is one run with an end (Succeeded, Failed, what ``kubectl wait`` waits for), a schedule never
ends. Each run is an ordinary IngestBatch stamped from ``batch``, owned by the schedule, so it
queues, retries, stages and reports like any other, and ``kubectl get ib -l
icechunkoperator.io/schedule=NAME`` lists the runs the history limits keep. A run re-lists the
source; the store's ledger makes it ingest only what is new or changed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from icechunk_operator.api.batch import IngestBatchSpec
from icechunk_operator.api.common import (
    API_GROUP,
    ApiModel,
    Condition,
    ResourceModel,
    cel,
    check_cron,
    conditions_field,
)

#: The label on every run's IngestBatch naming its IngestSchedule (``kubectl get ib -l ...``).
SCHEDULE_LABEL = f"{API_GROUP}/schedule"


class ConcurrencyPolicy(StrEnum):
    FORBID = "Forbid"  # a due run waits until the previous run ended (within the starting deadline)
    ALLOW = "Allow"  # a due run starts (queues on the store) even while an earlier one is unfinished


class IngestScheduleSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.batch.tag)",
                    "spec.batch.tag: every run after the first would be refused for it",
                )
            ]
        }
    )

    schedule: str = Field(description="Cron schedule, in UTC, e.g. '15 0 * * *' (daily at 00:15).")
    suspend: bool = Field(
        default=False, description="No scheduled runs while true (a requested run still starts)."
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="A run that could not start within this many seconds of its cron time is skipped "
        "(counted in status.missedRuns); default: never too late.",
    )
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID,
        description="Forbid: a due run waits for the previous one to end. Allow: it queues on the store.",
    )
    successful_runs_history_limit: int = Field(
        default=3, ge=0, le=100, description="Succeeded runs (IngestBatches) kept."
    )
    failed_runs_history_limit: int = Field(default=1, ge=0, le=100, description="Failed runs kept.")
    batch: IngestBatchSpec = Field(description="The IngestBatch spec every run is made from.")

    _schedule = field_validator("schedule")(check_cron)

    @field_validator("batch")
    @classmethod
    def _no_tag(cls, batch: IngestBatchSpec) -> IngestBatchSpec:
        if batch.tag is not None:
            raise ValueError(
                "spec.batch.tag: a tag names one snapshot, and every run after the first would be "
                "refused for it; tag a run's snapshot with the CLI's tag command instead"
            )
        return batch


class RunOutcome(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class LastRun(ApiModel):
    """The newest run that ended, as its IngestBatch reported it."""

    name: str = Field(description="The run's IngestBatch.")
    number: int = Field(default=0, description="Runs are numbered in the order they were made.")
    outcome: RunOutcome
    start_time: datetime | None = None
    completion_time: datetime | None = None
    files_added: int = Field(default=0, description="Files this run ingested.")
    files_failed: int = 0
    snapshot: str | None = Field(default=None, description="Its last commit; none when nothing was new.")
    message: str | None = Field(default=None, description="What the run said (why it failed).")


class IngestScheduleStatus(ApiModel):
    conditions: list[Condition] = conditions_field()
    active: list[str] = Field(default_factory=list, description="Runs (IngestBatches) not ended yet.")
    last_schedule_time: datetime | None = Field(
        default=None, description="The cron time of the latest run started or skipped."
    )
    last_request: str | None = Field(
        default=None, description="The value of the run-requested annotation last acted on."
    )
    last_run: LastRun | None = None
    last_successful_time: datetime | None = Field(default=None, description="When a run last succeeded.")
    next_run_time: datetime | None = Field(
        default=None, description="The next cron time (none if suspended)."
    )
    consecutive_failures: int = Field(default=0, description="Runs failed since the last success.")
    missed_runs: int = Field(default=0, description="Runs skipped: too late for startingDeadlineSeconds.")
    observed_generation: int | None = None


class IngestSchedule(ResourceModel):
    kind_name: ClassVar[str] = "IngestSchedule"
    plural: ClassVar[str] = "ingestschedules"
    short_names: ClassVar[tuple[str, ...]] = ("isch",)
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Store", "type": "string", "jsonPath": ".spec.batch.store"},
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
        {"name": "Last Run", "type": "string", "jsonPath": ".status.lastRun.outcome"},
        {"name": "Added", "type": "integer", "jsonPath": ".status.lastRun.filesAdded"},
        {"name": "Last Success", "type": "date", "jsonPath": ".status.lastSuccessfulTime"},
        {"name": "Next Run", "type": "string", "jsonPath": ".status.nextRunTime"},
        {"name": "Failures", "type": "integer", "jsonPath": ".status.consecutiveFailures"},
    )

    kind: Literal["IngestSchedule"] = "IngestSchedule"
    spec: IngestScheduleSpec
    status: IngestScheduleStatus | None = None
