"""Every ``ICECHUNK_OPERATOR_*`` setting, read here and nowhere else.

The Helm chart sets the operator's on its Deployment; the operator sets the commit pod's on the
Job it creates. Both are models, so a bad value fails at start with the variable named, rather
than as a ``ValueError`` deep in a handler. Variable names are the field names in upper case.
"""

from __future__ import annotations

import json
import os
from typing import Any, Self

from pydantic import BaseModel, Field, ValidationError

from icechunk_operator import __version__

ENV_PREFIX = "ICECHUNK_OPERATOR_"


class _FromEnv(BaseModel):
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        """Fields from ``ICECHUNK_OPERATOR_<FIELD>`` variables; JSON for maps and lists."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            annotation = str(field.annotation)
            values[name] = json.loads(raw) if ("dict" in annotation or "list" in annotation) else raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problem = error.errors()[0]
            variable = ENV_PREFIX + str(problem["loc"][0]).upper()
            raise ValueError(f"{variable}: {problem['msg']}") from None


class OperatorSettings(_FromEnv):
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
        default=10.0, gt=0, description="How often each store's queue is re-checked."
    )
    store_refresh_seconds: float = Field(
        default=300.0, gt=0, description="How often store status is refreshed."
    )
    scheduler_wait_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a commit pod waits for its Dask scheduler to accept connections.",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus metrics port; 0: none.")
    peering: str | None = Field(default=None, description="Kopf peering name; unset: standalone.")
    peering_priority: int | None = Field(default=None, description="Peering priority; unset: random.")
    peering_lifetime: int = Field(default=60, gt=0, description="Seconds a peer's keep-alive lasts.")
    test_clock_file: str | None = Field(
        default=None,
        description="Test tier only (the chart never sets it): seconds in this file move the cron "
        "schedules' clock forward (k8s/clock.py).",
    )


class PodSettings(_FromEnv):
    """What a commit pod is told by its Job: its Dask scheduler and how long to wait for it."""

    batch_uid: str | None = None
    dask_scheduler: str | None = None
    dask_workers: int | None = Field(default=None, ge=0)
    scheduler_wait_seconds: float = Field(default=600.0, gt=0)
    traceback: bool = Field(
        default=False, description="Print a crash's traceback on the CLI, not only its one-line message."
    )
