"""Reconciliation: compare a store's ledger with a source index (report or repair).

The model is defined now so that the CLI and the CRDs share it; the engine behind it comes with
the reconciliation work.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from icechunk_operator.api.common import (
    ApiModel,
    Condition,
    ResourceModel,
    cel,
    conditions_field,
    immutable_field,
)


class ReconciliationMode(StrEnum):
    REPORT = "Report"
    REPAIR = "Repair"


class ReconciliationSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.index) != has(self.prefix)", "exactly one of index, prefix must be set")
            ]
        }
    )

    store: str = immutable_field("Name of the IcechunkStore (same namespace).", "spec.store")
    index: str | None = Field(default=None, description="Parquet index (url, size, etag/mtime).")
    prefix: str | None = Field(default=None, description="Or list this source prefix afresh.")
    glob: str = Field(default="**/*.nc")
    check_references: bool = Field(default=False, description="Also sample-read references.")
    mode: ReconciliationMode = Field(default=ReconciliationMode.REPORT)
    remove_orphans: bool = Field(default=False, description="In Repair, remove orphaned groups.")
    schedule: str | None = Field(default=None, description="Cron schedule to re-run.")
    history_limit: int = Field(default=3, ge=0, le=100)

    @model_validator(mode="after")
    def _one_source(self) -> ReconciliationSpec:
        if (self.index is None) == (self.prefix is None):
            raise ValueError("exactly one of index, prefix must be set")
        return self


class ReconciliationStatus(ApiModel):
    conditions: list[Condition] = conditions_field()
    missing: int | None = None
    stale: int | None = None
    orphaned: int | None = None
    broken: int | None = None
    report: str | None = None
    repair_batch: str | None = None
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
    )

    kind: Literal["Reconciliation"] = "Reconciliation"
    spec: ReconciliationSpec
    status: ReconciliationStatus | None = None
