"""Kopf wiring: which events reach which :class:`Controller` action.

The operator is level-triggered: every handler here is an ``on.event``, a timer or an index, none
keeps state in the objects (no Kopf annotations, no Kopf finalizers), and each leads to the same
question, "what should this store's queue look like now?", answered from the API server. An
operator that restarts lists everything again and carries on from the children and status it
finds.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.k8s import names
from icechunk_operator.k8s.clock import schedule_clock
from icechunk_operator.k8s.controller import Controller
from icechunk_operator.k8s.ingest_schedules import ScheduleRunner
from icechunk_operator.k8s.kube import KubeApi, load_config
from icechunk_operator.k8s.reconciliations import COMPONENT as RECONCILE_COMPONENT
from icechunk_operator.k8s.reconciliations import ReconciliationRunner
from icechunk_operator.k8s.schedule_plan import LABEL_SCHEDULE
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.views import WRITER_COMPONENTS, BatchView, batch_view

SETTINGS = OperatorSettings.from_env()


def _writes(component: str | None, **_: Any) -> bool:
    return component in WRITER_COMPONENTS


#: Commit and maintenance Jobs: each holds its store's queue, which moves on when it ends.
JOB_LABELS: dict[str, Any] = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_COMPONENT: _writes}
RECONCILE_JOB_LABELS = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_COMPONENT: RECONCILE_COMPONENT}


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.persistence.finalizer = f"{names.GROUP}/kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # Peering itself is set up by kopf.run() (see cli._operator); only its timing is here.
    settings.peering.lifetime = SETTINGS.peering_lifetime
    load_config()
    clock = schedule_clock(SETTINGS.test_clock_file)
    controller = Controller(KubeApi(), SETTINGS, _post_event, clock=clock)
    schedules = ScheduleRunner(controller.api, _post_event, clock)
    if SETTINGS.metrics_port:
        from icechunk_operator.k8s.metrics import OperatorMetrics

        controller.metrics = OperatorMetrics(
            lambda: controller.batch_index.items(),
            lambda: controller.schedule_index.values(),
            lambda: schedules.checked,
        )
        controller.metrics.serve(SETTINGS.metrics_port)
    memo["controller"] = controller
    memo["reconciliations"] = ReconciliationRunner(controller.api, controller.settings, _post_event, clock)
    memo["schedules"] = schedules
    # Import now what the first batch needs, so its Job is not late by a second of imports.
    import icechunk_operator.engine.sources  # noqa: F401


BatchIndex = kopf.Index[tuple[str, str], BatchView]


@kopf.index(names.GROUP, names.VERSION, names.BATCHES)
def batches_by_store(
    namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], BatchView]:
    """Every batch, by (namespace, store): the queue is read from here, not from API lists."""
    return {(namespace or "default", str(spec.get("store", ""))): batch_view(dict(body))}


async def _sync(memo: Any, index: BatchIndex, namespace: str | None, store: str) -> None:
    controller: Controller = memo["controller"]
    controller.batch_index = index  # the same live mapping every time; kept for the metrics
    namespace = namespace or "default"  # every resource here is namespaced; Kopf types allow None
    await controller.sync_store(namespace, store, lambda: index.get((namespace, store), []))


@kopf.on.event(names.GROUP, names.VERSION, names.BATCHES)
async def batch_changed(namespace: str | None, spec: kopf.Spec, memo: Any, **kwargs: Any) -> None:
    await _sync(memo, kwargs["batches_by_store"], namespace, str(spec.get("store", "")))


@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)
async def job_changed(namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    await _sync(memo, kwargs["batches_by_store"], namespace, labels.get(names.LABEL_STORE, ""))


@kopf.on.event(names.GROUP, names.VERSION, names.STORES)
async def store_changed(
    event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    controller: Controller = memo["controller"]
    if event["type"] == "DELETED":
        controller.store_status.forget(namespace or "default", name)
    elif await controller.store_changed(dict(body)):
        return
    await _sync(memo, kwargs["batches_by_store"], namespace, name)


@kopf.timer(names.GROUP, names.VERSION, names.STORES, interval=SETTINGS.queue_interval_seconds, sharp=False)
async def store_tick(body: kopf.Body, name: str, namespace: str | None, memo: Any, **kwargs: Any) -> None:
    """The safety net: re-check every store's queue and status even when no event came."""
    if body.meta.get("deletionTimestamp") is not None:
        return
    controller: Controller = memo["controller"]
    await controller.store_status.refresh(dict(body))
    await _sync(memo, kwargs["batches_by_store"], namespace, name)


@kopf.on.event(names.GROUP, names.VERSION, names.RECONCILIATIONS)
async def reconciliation_changed(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    if event["type"] == "DELETED" or body.meta.get("deletionTimestamp") is not None:
        return  # its Jobs and repair batches are owned by it: the garbage collector has them
    runner: ReconciliationRunner = memo["reconciliations"]
    await runner.sync(dict(body))


@kopf.timer(
    names.GROUP, names.VERSION, names.RECONCILIATIONS, interval=SETTINGS.queue_interval_seconds, sharp=False
)
async def reconciliation_tick(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Schedules fire from here; a run whose store was missing is retried from here."""
    if body.meta.get("deletionTimestamp") is None:
        runner: ReconciliationRunner = memo["reconciliations"]
        await runner.sync(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels=RECONCILE_JOB_LABELS)
async def reconcile_job_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    runner: ReconciliationRunner = memo["reconciliations"]
    await runner.job_changed(dict(body))


@kopf.index(names.GROUP, names.VERSION, names.SCHEDULES)
def schedules_by_name(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every schedule, for the metrics (read at scrape time)."""
    return {(namespace or "default", name): dict(body)}


async def _sync_schedule(body: kopf.Body, memo: Any, index: Any, *, only_if_due: bool = False) -> None:
    controller: Controller = memo["controller"]
    controller.schedule_index = index  # the same live mapping every time; kept for the metrics
    if body.meta.get("deletionTimestamp") is not None:
        return
    runner: ScheduleRunner = memo["schedules"]
    await (runner.tick(dict(body)) if only_if_due else runner.sync(dict(body)))


@kopf.on.event(names.GROUP, names.VERSION, names.SCHEDULES)
async def schedule_changed(
    event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    if event["type"] == "DELETED":  # a deleted schedule's runs are owned by it: the GC has them
        runner: ScheduleRunner = memo["schedules"]
        runner.forget(namespace or "default", name)
    else:
        await _sync_schedule(body, memo, kwargs["schedules_by_name"])


@kopf.timer(
    names.GROUP, names.VERSION, names.SCHEDULES, interval=SETTINGS.queue_interval_seconds, sharp=False
)
async def schedule_tick(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Cron times fire from here: no event comes when a schedule's time arrives."""
    await _sync_schedule(body, memo, kwargs["schedules_by_name"], only_if_due=True)


@kopf.on.event(names.GROUP, names.VERSION, names.BATCHES, labels={LABEL_SCHEDULE: kopf.PRESENT})
async def schedule_run_changed(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A run ended or was deleted: its schedule's status follows at once. (Progress patches of a
    running run change nothing the schedule shows, so they cost no request.)"""
    ended = (body.get("status") or {}).get("phase") in (BatchPhase.SUCCEEDED, BatchPhase.FAILED)
    if event["type"] == "DELETED" or ended:
        runner: ScheduleRunner = memo["schedules"]
        await runner.run_changed(dict(body))


def _timers_without_finalizers() -> None:
    """Let our timers live without a finalizer on the objects they watch.

    Kopf puts a finalizer on every object that has a timer, so that it can stop the timer before
    the object goes; while the operator is down, such objects cannot be deleted. Our timer only
    re-checks a queue or a schedule and has nothing to stop, so a store must be deletable without the
    operator (the README promises no Kopf finalizers). Kopf has no option for it; the flag is
    set on the registered handlers, and a unit test fails if Kopf's registry changes shape.
    """
    import dataclasses

    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [
        dataclasses.replace(handler, requires_finalizer=False)
        if handler.fn in (store_tick, reconciliation_tick, schedule_tick)
        else handler
        for handler in spawning._handlers
    ]


_timers_without_finalizers()
