"""IngestSchedules in the cluster: the API calls around :func:`schedule_plan.decide`.

Every event of a schedule or of one of its runs leads to one ``sync``: list the schedule's runs,
decide, create the due run, write the status, post an Event per run started and ended, delete runs
beyond the history limits. A timer ``tick`` (so cron times fire without events) syncs only when a
run is due. Each step is safe to repeat; nothing but the time of each schedule's last check (for
the metrics) is kept in memory between syncs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.api.common import first_problem
from icechunk_operator.api.schedule import IngestSchedule
from icechunk_operator.k8s import names
from icechunk_operator.k8s.clock import Clock, wall_clock
from icechunk_operator.k8s.conditions import set_condition
from icechunk_operator.k8s.kube import KubeApi, without_status
from icechunk_operator.k8s.schedule_plan import (
    LABEL_SCHEDULE,
    Decision,
    RunView,
    decide,
    format_time,
    last_run_entry,
    needs_sync,
    run_batch_body,
    run_name,
    run_view,
)

log = logging.getLogger("icechunk_operator.schedules")
EventPoster = Callable[[dict[str, Any], str, str, str], None]


def run_event(run: RunView) -> tuple[str, str, str]:
    """(type, reason, message) of the Event for a run that ended."""
    last = last_run_entry(run)
    if run.phase == BatchPhase.SUCCEEDED:
        snapshot = f", snapshot {last['snapshot']}" if last.get("snapshot") else ""
        return "Normal", "RunSucceeded", f"{run.name}: {last.get('message')}{snapshot}"
    return "Warning", "RunFailed", f"{run.name}: {run.message or 'the run failed'}"[:1024]


class ScheduleRunner:
    """Starts due runs, records ended ones, prunes history. Idempotent: any event may repeat."""

    def __init__(self, api: KubeApi, post_event: EventPoster, clock: Clock = wall_clock) -> None:
        self.api, self.post_event, self.clock = api, post_event, clock
        #: (namespace, schedule) -> the clock time it was last checked for a due run: the
        #: metrics show it, so a timer that stopped shows as a time that no longer moves.
        self.checked: dict[tuple[str, str], datetime] = {}

    async def sync(self, body: dict[str, Any], now: datetime | None = None) -> None:
        now = now or self.clock()
        await asyncio.to_thread(self._sync, body, now)
        meta = body["metadata"]
        self.checked[meta.get("namespace", "default"), meta["name"]] = now

    async def tick(self, body: dict[str, Any]) -> None:
        """The timer: sync only when a run is due (a schedule between cron times costs nothing)."""
        now = self.clock()
        if needs_sync(body, now):
            await self.sync(body, now)
        else:
            meta = body["metadata"]
            self.checked[meta.get("namespace", "default"), meta["name"]] = now

    def forget(self, namespace: str, name: str) -> None:
        self.checked.pop((namespace, name), None)

    async def run_changed(self, run: dict[str, Any]) -> None:
        """A run's batch changed: sync its schedule (its end may be recorded now)."""
        meta = run["metadata"]
        owner = (meta.get("labels") or {}).get(LABEL_SCHEDULE)
        body = (
            await asyncio.to_thread(self.api.get, names.SCHEDULES, meta["namespace"], owner)
            if owner
            else None
        )
        if body is not None and body["metadata"].get("deletionTimestamp") is None:
            await self.sync(body)

    def _sync(self, body: dict[str, Any], now: datetime) -> None:
        meta = body["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        status = dict(body.get("status") or {})
        try:
            schedule = IngestSchedule.model_validate(without_status(body))
        except ValidationError as error:
            self._invalid(body, first_problem(error))
            return
        runs = [
            run_view(item)
            for item in self.api.labelled(names.BATCHES, namespace, {LABEL_SCHEDULE: name})
            if any(o.get("uid") == meta.get("uid") for o in item["metadata"].get("ownerReferences") or [])
        ]
        decision = decide(schedule.spec, meta, status, runs, now)
        if decision.start is not None and not self._create(body, schedule, decision, namespace):
            # not created: leave lastScheduleTime and lastRequest, so that the next sync tries again
            decision.status["lastScheduleTime"] = status.get("lastScheduleTime")
            decision.status["lastRequest"] = status.get("lastRequest")
            decision.status["active"] = [r.name for r in runs if not r.ended]
            decision.start = None
        decision.status["conditions"] = self._ready(status, schedule, decision, meta.get("generation"))
        if any(status.get(key) != value for key, value in decision.status.items()):
            self.api.patch_status(names.SCHEDULES, namespace, name, decision.status)
        self._announce(body, decision)
        for old in decision.prune:
            self.api.delete(names.BATCHES, namespace, old.name, old.uid)

    def _create(
        self, body: dict[str, Any], schedule: IngestSchedule, decision: Decision, namespace: str
    ) -> bool:
        assert decision.start is not None
        spec = (body.get("spec") or {}).get("batch") or {}
        manifest = run_batch_body(body, spec, decision.start, namespace)
        try:
            self.api.create(names.BATCHES, manifest)
        except Exception as error:
            message = f"{manifest['metadata']['name']} not created: {type(error).__name__}: {error}"[:1024]
            log.warning("IngestSchedule %s/%s: %s", namespace, schedule.metadata.name, message)
            self.post_event(body, "Warning", "RunNotCreated", message)
            return False
        return True

    def _ready(
        self, status: dict[str, Any], schedule: IngestSchedule, decision: Decision, generation: int | None
    ) -> list[dict[str, Any]]:
        if schedule.spec.suspend:
            reason, message = "Suspended", "suspended: no scheduled runs (a requested run still starts)"
        elif decision.waiting:
            reason, message = "Waiting", decision.waiting
        else:
            reason, message = "Scheduled", f"next run at {decision.status['nextRunTime']}"
        return set_condition(list(status.get("conditions") or []), "Ready", True, reason, message, generation)

    def _announce(self, body: dict[str, Any], decision: Decision) -> None:
        name = body["metadata"]["name"]
        for run in decision.recorded:
            self.post_event(body, *run_event(run))
        if decision.missed is not None:
            self.post_event(
                body,
                "Warning",
                "MissedSchedule",
                f"the run for {format_time(decision.missed)} could not start within startingDeadlineSeconds "
                "(an earlier run held it, or the operator was down): skipped",
            )
        if decision.start is not None:
            batch = run_name(name, decision.start.run)
            self.post_event(body, "Normal", "RunStarted", f"IngestBatch {batch}, {decision.start.reason}")

    def _invalid(self, body: dict[str, Any], message: str) -> None:
        """Say why once per generation, in the Ready condition and an Event."""
        meta, status = body["metadata"], body.get("status") or {}
        generation = meta.get("generation")
        if status.get("observedGeneration") == generation:
            return
        conditions = set_condition(
            list(status.get("conditions") or []), "Ready", False, "InvalidSpec", message, generation
        )
        patch = {"conditions": conditions, "observedGeneration": generation, "nextRunTime": None}
        self.api.patch_status(names.SCHEDULES, meta.get("namespace", "default"), meta["name"], patch)
        self.post_event(body, "Warning", "InvalidSpec", message)
