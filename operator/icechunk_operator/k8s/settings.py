"""Operator settings, read from the environment (the Helm chart sets them on the Deployment)."""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, Field

from icechunk_operator import __version__

ENV_PREFIX = "ICECHUNK_OPERATOR_"


class OperatorSettings(BaseModel):
    """What the operator puts into the pods it creates, and how often it looks again."""

    image: str = Field(
        default=f"icechunk-operator:{__version__}", description="Image of commit and worker pods."
    )
    image_pull_policy: str = "IfNotPresent"
    commit_service_account: str = Field(
        default="icechunk-commit",
        description="ServiceAccount of commit pods (reads batches, patches status).",
    )
    worker_service_account: str = Field(
        default="icechunk-worker", description="ServiceAccount of Dask pods (no API rights)."
    )
    worker_node_selector: dict[str, str] = Field(default_factory=dict)
    worker_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    queue_interval_seconds: float = Field(
        default=10.0, description="How often each store's queue is re-checked."
    )
    store_refresh_seconds: float = Field(default=300.0, description="How often store status is refreshed.")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        """Fields from ``ICECHUNK_OPERATOR_<FIELD>`` variables; JSON for maps and lists."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            annotation = str(field.annotation)
            values[name] = json.loads(raw) if ("dict" in annotation or "list" in annotation) else raw
        return cls.model_validate(values)
