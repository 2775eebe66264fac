"""What an IngestSchedule needs now: a pure function from the schedule and its runs to a decision.

Kept apart from the API calls (:mod:`~icechunk_operator.k8s.ingest_schedules`), like the store
plan: the same observation always gives the same decision, so any event may repeat it. The
rules, those of a Kubernetes CronJob where they apply:

- A run is due when the cron schedule fired since ``status.lastScheduleTime`` (missed times
  collapse into one run, for the latest of them) and the schedule is not suspended, or when the
  run-requested annotation carries a value not acted on yet (suspended or not).
- A run is named after what made it due (``<schedule>-s202611300315``, ``<schedule>-r<hash>``),
  so it is created at most once; creating it again finds it there.
- ``concurrencyPolicy: Forbid`` holds a due run while an earlier run has not ended; a scheduled
  run still waiting ``startingDeadlineSeconds`` after its cron time is skipped and counted.
- Ended runs are recorded in order of their run number, never past one still going, so
  ``consecutiveFailures`` and ``lastRun`` see each run once; only recorded runs are pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.api.common import expand_cron
from icechunk_operator.api.schedule import SCHEDULE_LABEL, ConcurrencyPolicy, IngestScheduleSpec, RunOutcome
from icechunk_operator.k8s import names
from icechunk_operator.k8s.schedules import parse_time, requested_run, schedule_time, scheduled_run

LABEL_SCHEDULE = SCHEDULE_LABEL
LABEL_RUN_NUMBER = f"{names.GROUP}/run-number"
#: ``kubectl annotate ingestschedule NAME icechunkoperator.io/run-requested="$(date +%s)" --overwrite``
REQUEST_ANNOTATION = f"{names.GROUP}/run-requested"
#: On each run: the cron time it stands for, or the request that made it.
RUN_REASON_ANNOTATION = f"{names.GROUP}/run-reason"


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cron_times(schedule: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` cron times strictly after ``after`` (UTC)."""
    from cronsim import CronSim

    times = CronSim(expand_cron(schedule), after.astimezone(UTC))
    return [next(times) for _ in range(count)]


@dataclass(frozen=True)
class RunView:
    """One run (an IngestBatch the schedule made), reduced to what the decision reads."""

    name: str
    uid: str
    number: int
    phase: BatchPhase | None
    start_time: str | None = None
    completion_time: str | None = None
    files_done: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    last_commit: str | None = None
    message: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in (BatchPhase.SUCCEEDED, BatchPhase.FAILED)


def run_view(body: dict[str, Any]) -> RunView:
    metadata, status = body.get("metadata", {}), body.get("status") or {}
    phase = status.get("phase")
    files = status.get("files") or {}
    ended: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == phase), {})
    try:
        number = int((metadata.get("labels") or {}).get(LABEL_RUN_NUMBER, "0"))
    except ValueError:
        number = 0
    return RunView(
        name=metadata["name"],
        uid=metadata.get("uid", ""),
        number=number,
        phase=BatchPhase(phase)
        if isinstance(phase, str) and phase in BatchPhase._value2member_map_
        else None,
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        files_done=int(files.get("done", 0)),
        files_failed=int(files.get("failed", 0)),
        files_skipped=int(files.get("skipped", 0)),
        last_commit=(status.get("commits") or [None])[-1],
        message=status.get("message") or ended.get("message"),
    )


@dataclass(frozen=True)
class NewRun:
    """Create this run's IngestBatch."""

    run: str  # s<cron time> or r<request hash>: names the batch
    number: int
    reason: str  # the cron time or the request, for the run's annotation and Events
    schedule_time: datetime | None  # the cron time a scheduled run stands for


@dataclass
class Decision:
    start: NewRun | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the status the schedule should have
    recorded: list[RunView] = field(default_factory=list)  # runs whose end is recorded now
    missed: datetime | None = None  # a cron time skipped for startingDeadlineSeconds
    prune: list[RunView] = field(default_factory=list)
    waiting: str | None = None  # why a due run does not start yet


def run_name(schedule: str, run: str) -> str:
    return names.child_name(schedule, run)


def _due(
    spec: IngestScheduleSpec, meta: dict[str, Any], status: dict[str, Any], now: datetime
) -> tuple[str, str, datetime | None] | None:
    """(run, reason, cron time) of the run due now, the request first; None when none is."""
    requested = (meta.get("annotations") or {}).get(REQUEST_ANNOTATION)
    if requested and requested != status.get("lastRequest"):
        return requested_run(requested), f"requested ({requested})", None
    if spec.suspend:
        return None
    since = parse_time(status.get("lastScheduleTime")) or parse_time(meta.get("creationTimestamp")) or now
    run = scheduled_run(spec.schedule, since, now)
    cron_time = parse_time(schedule_time(run)) if run else None
    if run is None or cron_time is None:
        return None
    return run, f"scheduled for {format_time(cron_time)}", cron_time


def needs_sync(body: dict[str, Any], now: datetime) -> bool:
    """Whether the timer must sync this schedule now: a run is due, or its spec changed since
    status was written. Ended runs are recorded by their own events; so a schedule between cron
    times costs its timer no API request."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return True
    try:
        spec = IngestScheduleSpec.model_validate(body.get("spec") or {})
    except ValueError:
        return False  # said once per generation, when it was observed
    return _due(spec, meta, status, now) is not None


def decide(
    spec: IngestScheduleSpec, meta: dict[str, Any], status: dict[str, Any], runs: list[RunView], now: datetime
) -> Decision:
    """The decision for one schedule: which run to start, what to record, what to prune."""
    decision = Decision()
    ordered = sorted(runs, key=lambda r: (r.number, r.name))
    last_run = dict(status.get("lastRun") or {})
    recorded_up_to = int(last_run.get("number") or 0)
    failures = int(status.get("consecutiveFailures") or 0)
    last_success = status.get("lastSuccessfulTime")
    for run in ordered:
        if run.number <= recorded_up_to:
            continue
        if not run.ended:
            break  # in order: a later run is recorded once this one ended
        decision.recorded.append(run)
        recorded_up_to = run.number
        if run.phase == BatchPhase.SUCCEEDED:
            failures, last_success = 0, run.completion_time or format_time(now)
        else:
            failures += 1
        last_run = last_run_entry(run)
    active = [r.name for r in ordered if not r.ended]
    new_status: dict[str, Any] = {
        "active": active,
        "consecutiveFailures": failures,
        "lastSuccessfulTime": last_success,
        "lastRun": last_run or None,
        "lastScheduleTime": status.get("lastScheduleTime"),
        "lastRequest": status.get("lastRequest"),
        "missedRuns": int(status.get("missedRuns") or 0),
    }

    due = _due(spec, meta, status, now)
    if due is not None:
        due_run, reason, cron_time = due
        existing = {r.name for r in runs}
        late = (
            cron_time is not None
            and spec.starting_deadline_seconds is not None
            and now - cron_time > timedelta(seconds=spec.starting_deadline_seconds)
        )
        if run_name(meta["name"], due_run) in existing:
            pass  # created already (the status patch after it was lost): only mark it started
        elif late:
            decision.missed = cron_time
            new_status["missedRuns"] += 1
        elif active and spec.concurrency_policy == ConcurrencyPolicy.FORBID:
            decision.waiting = f"run {due_run} waits for {active[-1]} (concurrencyPolicy Forbid)"
            due = None
        else:
            number = max([recorded_up_to, *(r.number for r in runs)]) + 1
            decision.start = NewRun(due_run, number, reason, cron_time)
            new_status["active"] = [*active, run_name(meta["name"], due_run)]
        if due is not None:
            if cron_time is not None:
                new_status["lastScheduleTime"] = format_time(cron_time)
            else:
                new_status["lastRequest"] = (meta.get("annotations") or {}).get(REQUEST_ANNOTATION)

    new_status["nextRunTime"] = None if spec.suspend else format_time(cron_times(spec.schedule, now, 1)[0])
    new_status["observedGeneration"] = meta.get("generation")
    decision.status = new_status
    decision.prune = _beyond_history(spec, [r for r in ordered if r.ended and r.number <= recorded_up_to])
    return decision


def nothing_new(listed: int) -> str:
    """What a run that found nothing to ingest says, in the status and on a laptop alike."""
    if not listed:
        return "nothing new: no files listed; nothing committed"
    return f"nothing new: {listed} files listed, all in the store already; nothing committed"


def last_run_entry(run: RunView) -> dict[str, Any]:
    succeeded = run.phase == BatchPhase.SUCCEEDED
    if succeeded and run.files_done == 0 and run.files_failed == 0:
        message = nothing_new(run.files_skipped)
    elif succeeded:
        message = f"{run.files_done} files added"
    else:
        message = run.message or "the run failed"
    return {
        "name": run.name,
        "number": run.number,
        "outcome": (RunOutcome.SUCCEEDED if succeeded else RunOutcome.FAILED).value,
        "startTime": run.start_time,
        "completionTime": run.completion_time,
        "filesAdded": run.files_done,
        "filesFailed": run.files_failed,
        "snapshot": run.last_commit if run.files_done or run.last_commit else None,
        "message": message[:1024],
    }


def _beyond_history(spec: IngestScheduleSpec, recorded: list[RunView]) -> list[RunView]:
    """Recorded runs beyond the history limits, oldest first (the newest are kept)."""
    succeeded = [r for r in recorded if r.phase == BatchPhase.SUCCEEDED]
    failed = [r for r in recorded if r.phase == BatchPhase.FAILED]
    keep_s, keep_f = spec.successful_runs_history_limit, spec.failed_runs_history_limit
    return succeeded[: max(0, len(succeeded) - keep_s)] + failed[: max(0, len(failed) - keep_f)]


def run_batch_body(
    schedule: dict[str, Any], spec: dict[str, Any], new_run: NewRun, namespace: str
) -> dict[str, Any]:
    """The IngestBatch of one run: the template, owned by the schedule, its commits named for it."""
    meta = schedule["metadata"]
    name = meta["name"]
    batch_spec = dict(spec)
    commit = dict(batch_spec.get("commit") or {})
    prefix = commit.get("message") or f"IngestSchedule {name}"
    commit["message"] = f"{prefix} run {new_run.run} ({new_run.reason})"[:512]
    batch_spec["commit"] = commit
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": "IngestBatch",
        "metadata": {
            "name": run_name(name, new_run.run),
            "namespace": namespace,
            "labels": {
                names.LABEL_MANAGED_BY: names.MANAGED_BY,
                LABEL_SCHEDULE: name,
                LABEL_RUN_NUMBER: str(new_run.number),
            },
            "annotations": {RUN_REASON_ANNOTATION: new_run.reason[:256]},
            "ownerReferences": [
                {
                    "apiVersion": schedule.get("apiVersion", f"{names.GROUP}/{names.VERSION}"),
                    "kind": "IngestSchedule",
                    "name": name,
                    "uid": meta.get("uid"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": batch_spec,
    }
