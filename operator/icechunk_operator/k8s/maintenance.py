"""Store maintenance in the cluster: when a run is due, its Job, and what its outcome says.

Maintenance (expire old snapshots, then garbage-collect) rewrites the repository's history, so it
takes the store's turn like a batch does: a due run holds the store's queue, starts once no
commit Job of the store is running, and no batch starts while it runs (``plan.plan_store``). A
run is due when the cron ``schedule`` fired since the last scheduled run, or when the
``icechunkoperator.io/maintenance-requested`` annotation carries a value not yet acted on
(``kubectl annotate icechunkstore NAME icechunkoperator.io/maintenance-requested="$(date)"``).
Each run is one Job named after what made it due, so it starts at most once. The pod it runs
(:mod:`icechunk_operator.k8s.maintenance_pod`) writes what it freed into the store's status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from icechunk_operator.api.store import IcechunkStore, MaintenanceResult
from icechunk_operator.k8s import names
from icechunk_operator.k8s.children import run_job
from icechunk_operator.k8s.schedules import parse_time, requested_run, scheduled_run
from icechunk_operator.k8s.settings import OperatorSettings

COMPONENT = "maintenance"
REQUEST_ANNOTATION = f"{names.GROUP}/maintenance-requested"


def _maintenance_status(body: dict[str, Any]) -> dict[str, Any]:
    return dict((body.get("status") or {}).get("maintenance") or {})


def due_maintenance(body: dict[str, Any], now: datetime) -> str | None:
    """The run that is due for this store now (it names the Job), or None."""
    meta, spec = body["metadata"], body.get("spec") or {}
    policy = spec.get("maintenance")
    if not policy:
        return None
    status = _maintenance_status(body)
    requested = (meta.get("annotations") or {}).get(REQUEST_ANNOTATION)
    if requested and requested != status.get("lastRequest"):
        return requested_run(requested)
    since = parse_time(status.get("lastScheduleTime")) or parse_time(meta.get("creationTimestamp")) or now
    return scheduled_run(policy.get("schedule"), since, now)


def started_status(body: dict[str, Any], run: str, job: str, schedule_time: str | None) -> dict[str, Any]:
    """What ``status.maintenance`` says once the run's Job exists: the run is no longer due."""
    started: dict[str, Any] = {"job": job, "result": MaintenanceResult.RUNNING.value, "message": None}
    if schedule_time is not None:
        started["lastScheduleTime"] = schedule_time
    if run.startswith("r"):
        started["lastRequest"] = (body["metadata"].get("annotations") or {}).get(REQUEST_ANNOTATION)
    return started


def maintenance_job_name(store: str, run: str) -> str:
    return names.child_name(store, f"maint-{run}")


def maintenance_job(store: IcechunkStore, settings: OperatorSettings, run: str) -> dict[str, Any]:
    """The Job of one run: ``icechunk-operator maintain --store NS/NAME``, credentials by reference."""
    assert store.spec.maintenance is not None
    namespace, name = store.metadata.namespace or "default", store.metadata.name
    memory = store.spec.maintenance.memory
    job = run_job(
        store,
        maintenance_job_name(name, run),
        COMPONENT,
        ["icechunk-operator", "maintain", "--store", f"{namespace}/{name}"],
        {"requests": {"cpu": "500m", "memory": memory}, "limits": {"memory": memory}},
        store,
        settings,
    )
    job["spec"]["activeDeadlineSeconds"] = store.spec.maintenance.deadline_seconds
    return job
