"""Reconciliation: compare a store's ledger with its source (report), and fix it (repair).

A repair is an ordinary IngestBatch, built from ``batchTemplate`` (grouping, virtualization,
execution) with the files to ingest and to remove as its source, so it queues, runs and reports
like every other batch on the store.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from icechunk_operator.api.common import (
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    ResourceModel,
    cel,
    check_cron,
    conditions_field,
    immutable_field,
)


class RunPhase(StrEnum):
    """The phase conditions of a Reconciliation's latest run."""

    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


class ReconciliationMode(StrEnum):
    REPORT = "Report"
    REPAIR = "Repair"


class ReconciliationSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.index) != has(self.prefix)", "exactly one of index, prefix must be set"),
                cel(
                    "self.mode != 'Repair' || has(self.batchTemplate)",
                    "mode Repair needs batchTemplate: the IngestBatch whose settings repairs copy",
                ),
            ]
        }
    )

    store: str = immutable_field(
        "Name of the IcechunkStore (same namespace).", "spec.store", pattern=DNS_LABEL_PATTERN, max_length=63
    )
    index: str | None = Field(default=None, description="Parquet index (url, size, etag/mtime).")
    prefix: str | None = Field(default=None, description="Or list this source prefix afresh.")
    glob: str = Field(default="**/*.nc")
    check_references: bool = Field(default=False, description="Also sample-read references.")
    check_chunks: bool = Field(
        default=False,
        description="Also read every stored chunk of every array (the integrity check, like the CLI's "
        "fsck): status.undecodable counts the chunks that do not decode; the report names them.",
    )
    mode: ReconciliationMode = Field(default=ReconciliationMode.REPORT)
    batch_template: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="IngestBatch (same namespace) whose grouping, virtualization and execution a "
        "repair batch copies; required for mode Repair.",
    )
    remove_orphans: bool = Field(
        default=False,
        description="In Repair, drop orphaned files: their groups are rebuilt without them, or deleted.",
    )
    schedule: str | None = Field(default=None, description="Cron schedule to re-run.")
    history_limit: int = Field(
        default=3, ge=0, le=100, description="Finished Jobs kept besides the latest run's."
    )

    _schedule = field_validator("schedule")(check_cron)

    @model_validator(mode="after")
    def _one_source(self) -> ReconciliationSpec:
        if (self.index is None) == (self.prefix is None):
            raise ValueError("exactly one of index, prefix must be set")
        if self.mode == ReconciliationMode.REPAIR and self.batch_template is None:
            raise ValueError("batchTemplate: mode Repair needs the IngestBatch whose settings repairs copy")
        return self


class ReconciliationStatus(ApiModel):
    conditions: list[Condition] = conditions_field()
    missing: int | None = Field(default=None, description="In the source, not in the store.")
    stale: int | None = Field(default=None, description="Changed in the source since ingest.")
    orphaned: int | None = Field(default=None, description="In the store, gone from the source.")
    broken: int | None = Field(default=None, description="References that fail (checkReferences).")
    undecodable: int | None = Field(default=None, description="Chunks that do not decode (checkChunks).")
    report: str | None = Field(default=None, description="URL of the full JSON report.")
    repair_batch: str | None = Field(default=None, description="The IngestBatch the last repair created.")
    last_run_time: datetime | None = Field(default=None, description="When the last run finished.")
    last_schedule_time: datetime | None = Field(
        default=None, description="The cron time of the latest scheduled run."
    )
    job: str | None = Field(default=None, description="The Job of the latest run.")
    observed_generation: int | None = None


class Reconciliation(ResourceModel):
    kind_name: ClassVar[str] = "Reconciliation"
    plural: ClassVar[str] = "reconciliations"
    short_names: ClassVar[tuple[str, ...]] = ("icr",)
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Store", "type": "string", "jsonPath": ".spec.store"},
        {"name": "Missing", "type": "integer", "jsonPath": ".status.missing"},
        {"name": "Stale", "type": "integer", "jsonPath": ".status.stale"},
        {"name": "Orphaned", "type": "integer", "jsonPath": ".status.orphaned"},
        {"name": "Broken", "type": "integer", "jsonPath": ".status.broken"},
        {"name": "Repair", "type": "string", "jsonPath": ".status.repairBatch"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    )

    kind: Literal["Reconciliation"] = "Reconciliation"
    spec: ReconciliationSpec
    status: ReconciliationStatus | None = None
