"""Reconciliations in the cluster: when a run is due, its Job, and the history kept.

A run is due when the spec changed since the last run (its generation was not yet observed) or
when the cron ``schedule`` fired since the last run. Each run is one Job, named after what made
it due, so a run is started at most once however many events arrive; the pod it runs
(:mod:`icechunk_operator.k8s.reconcile_pod`) writes the counts. Only the newest ``historyLimit``
finished Jobs are kept. Deciding is pure (:func:`due_run`, :mod:`schedules`); the
:class:`ReconciliationRunner` does the API calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.common import first_problem
from icechunk_operator.api.reconciliation import Reconciliation, RunPhase
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.k8s import names
from icechunk_operator.k8s.children import run_job
from icechunk_operator.k8s.clock import Clock, wall_clock
from icechunk_operator.k8s.conditions import reconciliation_conditions
from icechunk_operator.k8s.kube import KubeApi, without_status
from icechunk_operator.k8s.schedules import (
    job_failure,
    jobs_to_prune,
    parse_time,
    schedule_time,
    scheduled_run,
)
from icechunk_operator.k8s.settings import OperatorSettings

COMPONENT = "reconcile"
LABEL_RECONCILIATION = f"{names.GROUP}/reconciliation"
log = logging.getLogger("icechunk_operator.reconciliations")


def due_run(body: dict[str, Any], now: datetime) -> str | None:
    """What makes a run due now (it names the Job), or None when none is."""
    meta, spec, status = body["metadata"], body.get("spec", {}), body.get("status") or {}
    generation = meta.get("generation", 1)
    if status.get("observedGeneration") != generation:
        return f"g{generation}"
    since = parse_time(status.get("lastScheduleTime")) or parse_time(meta.get("creationTimestamp")) or now
    return scheduled_run(spec.get("schedule"), since, now)


def run_job_name(reconciliation: str, run: str) -> str:
    return names.child_name(reconciliation, run)


def reconcile_job(
    reconciliation: Reconciliation, store: IcechunkStore, settings: OperatorSettings, run: str
) -> dict[str, Any]:
    """The Job of one run: ``icechunk-operator reconcile --resource NS/NAME`` with the store's
    credentials by reference, as the commit pod has them."""
    namespace = reconciliation.metadata.namespace or "default"
    name = reconciliation.metadata.name
    return run_job(
        reconciliation,
        run_job_name(name, run),
        COMPONENT,
        ["icechunk-operator", "reconcile", "--resource", f"{namespace}/{name}"],
        {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        store,
        settings,
        {LABEL_RECONCILIATION: name},
    )


EventPoster = Callable[[dict[str, Any], str, str, str], None]


class ReconciliationRunner:
    """Starts due runs, reports failed Jobs, prunes history. Idempotent: any event may repeat."""

    def __init__(
        self, api: KubeApi, settings: OperatorSettings, post_event: EventPoster, clock: Clock = wall_clock
    ) -> None:
        self.api, self.settings, self.post_event, self.clock = api, settings, post_event, clock

    async def sync(self, body: dict[str, Any], now: datetime | None = None) -> None:
        await asyncio.to_thread(self._sync, body, now or self.clock())

    async def job_changed(self, job: dict[str, Any]) -> None:
        await asyncio.to_thread(self._job_changed, job)

    def _sync(self, body: dict[str, Any], now: datetime) -> None:
        meta = body["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        generation = meta.get("generation")
        status = body.get("status") or {}
        run = due_run(body, now)
        if run is None:
            return
        job_name = run_job_name(name, run)
        if status.get("job") == job_name:
            return  # started already; its pod or its failure will report
        try:
            reconciliation = Reconciliation.model_validate(without_status(body))
        except ValidationError as error:
            self._fail(body, "Invalid", first_problem(error))
            return
        store_body = self.api.get(names.STORES, namespace, reconciliation.spec.store)
        if store_body is None:  # not observed: the next tick tries again
            missing = f"IcechunkStore {reconciliation.spec.store} does not exist"
            self._fail(body, "StoreNotFound", missing, observe=False)
            return
        store = IcechunkStore.model_validate(without_status(store_body))
        conditions = reconciliation_conditions(
            status.get("conditions", []), RunPhase.RUNNING, "Started", f"Job {job_name}", generation
        )
        started: dict[str, Any] = {"job": job_name, "conditions": conditions}
        if fired := schedule_time(run):
            started["lastScheduleTime"] = fired
        # Status first: a pod that finishes at once must find its run marked started, or this
        # patch would overwrite the counts and conditions it reported.
        self.api.patch_status(names.RECONCILIATIONS, namespace, name, started)
        try:
            self.api.create_job(reconcile_job(reconciliation, store, self.settings, run))
        except Exception as error:  # undo the mark, so that the next tick tries again
            undo = {"job": status.get("job"), "lastScheduleTime": status.get("lastScheduleTime")}
            self.api.patch_status(names.RECONCILIATIONS, namespace, name, undo)
            message = f"Job {job_name} could not be created: {type(error).__name__}: {error}"[:512]
            self._fail(body, "JobNotCreated", message, observe=False)
            return
        self.post_event(body, "Normal", "Started", f"Job {job_name}")
        jobs = self.api.labelled_jobs(namespace, {LABEL_RECONCILIATION: name})
        for old in jobs_to_prune(jobs, reconciliation.spec.history_limit):
            if old != job_name:
                self.api.delete_job(namespace, old)

    def _job_changed(self, job: dict[str, Any]) -> None:
        message = job_failure(job)
        if message is None:
            return
        meta = job["metadata"]
        owner = (meta.get("labels") or {}).get(LABEL_RECONCILIATION)
        body = self.api.get(names.RECONCILIATIONS, meta["namespace"], owner) if owner else None
        if body is None or (body.get("status") or {}).get("job") != meta["name"]:
            return
        conditions = (body.get("status") or {}).get("conditions", [])
        if any(c.get("type") == RunPhase.FAILED and c.get("status") == "True" for c in conditions):
            return  # the pod said why already (a refused spec)
        self._fail(body, "JobFailed", f"Job {meta['name']}: {message}")

    def _fail(self, body: dict[str, Any], reason: str, message: str, *, observe: bool = True) -> None:
        """Say why in a condition and an Event; ``observe`` marks the generation handled, so
        an unusable spec is not retried until it changes."""
        meta = body["metadata"]
        status = body.get("status") or {}
        generation = meta.get("generation")
        conditions = reconciliation_conditions(
            status.get("conditions", []), RunPhase.FAILED, reason, message, generation
        )
        patch: dict[str, Any] = {"conditions": conditions}
        if observe:
            patch["observedGeneration"] = generation
        self.api.patch_status(names.RECONCILIATIONS, meta.get("namespace", "default"), meta["name"], patch)
        self.post_event(body, "Warning", reason, message)
