"""The IngestSchedule decision: CronJob semantics, recorded outcomes, history limits (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.api.schedule import IngestSchedule, IngestScheduleSpec
from icechunk_operator.k8s.schedule_plan import (
    LABEL_RUN_NUMBER,
    LABEL_SCHEDULE,
    REQUEST_ANNOTATION,
    NewRun,
    RunView,
    cron_times,
    decide,
    needs_sync,
    run_batch_body,
    run_view,
)

CREATED = "2026-11-30T00:00:00Z"
TEMPLATE = {"store": "gnss", "source": {"prefix": "file:///archive/"}}


def spec(**fields: Any) -> IngestScheduleSpec:
    return IngestScheduleSpec.model_validate({"schedule": "*/15 * * * *", "batch": TEMPLATE, **fields})


def meta(**annotations: str) -> dict[str, Any]:
    return {
        "name": "nightly",
        "uid": "u-1",
        "creationTimestamp": CREATED,
        "generation": 1,
        "annotations": annotations,
    }


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def run(number: int, phase: BatchPhase | None, **fields: Any) -> RunView:
    return RunView(name=f"nightly-r{number}", uid=f"b-{number}", number=number, phase=phase, **fields)


def test_missed_cron_times_collapse_into_one_run_for_the_latest() -> None:
    decision = decide(spec(), meta(), {}, [], at("2026-11-30T01:07:00"))
    assert decision.start == NewRun(
        "s202611300100", 1, "scheduled for 2026-11-30T01:00:00Z", at("2026-11-30T01:00")
    )
    assert decision.status["lastScheduleTime"] == "2026-11-30T01:00:00Z"
    assert decision.status["active"] == ["nightly-s202611300100"]
    assert decision.status["nextRunTime"] == "2026-11-30T01:15:00Z"
    again = decide(spec(), meta(), decision.status, [run(1, None)], at("2026-11-30T01:08:00"))
    assert again.start is None  # the same cron time starts once


def test_nothing_is_due_before_the_first_cron_time_after_creation() -> None:
    decision = decide(spec(), meta(), {}, [], at("2026-11-30T00:14:59"))
    assert decision.start is None and decision.status["nextRunTime"] == "2026-11-30T00:15:00Z"


def test_suspend_stops_scheduled_runs_but_not_a_requested_one() -> None:
    suspended = spec(suspend=True)
    assert decide(suspended, meta(), {}, [], at("2026-11-30T03:00:00")).start is None
    assert decide(suspended, meta(), {}, [], at("2026-11-30T03:00:00")).status["nextRunTime"] is None
    requested = decide(suspended, meta(**{REQUEST_ANNOTATION: "now"}), {}, [], at("2026-11-30T03:00:00"))
    assert requested.start is not None and requested.start.run.startswith("r")
    assert requested.status["lastRequest"] == "now"
    status = {**requested.status, "lastRequest": "now"}
    assert (
        decide(suspended, meta(**{REQUEST_ANNOTATION: "now"}), status, [], at("2026-11-30T03:01")).start
        is None
    )


def test_forbid_holds_a_due_run_until_the_previous_ended_and_the_deadline_skips_it() -> None:
    status = {"lastScheduleTime": "2026-11-30T00:15:00Z"}
    running = [run(1, BatchPhase.RUNNING)]
    held = decide(spec(), meta(), status, running, at("2026-11-30T00:31:00"))
    assert held.start is None and held.waiting and "Forbid" in held.waiting
    assert held.status["lastScheduleTime"] == "2026-11-30T00:15:00Z"  # still due
    allowed = decide(spec(concurrencyPolicy="Allow"), meta(), status, running, at("2026-11-30T00:31:00"))
    assert allowed.start is not None and allowed.start.number == 2
    late = decide(spec(startingDeadlineSeconds=60), meta(), status, running, at("2026-11-30T00:32:00"))
    assert late.start is None and late.missed == at("2026-11-30T00:30")
    assert late.status["missedRuns"] == 1 and late.status["lastScheduleTime"] == "2026-11-30T00:30:00Z"


def test_ended_runs_are_recorded_once_in_order_and_failures_counted_until_a_success() -> None:
    runs = [
        run(1, BatchPhase.FAILED, message="gate failed"),
        run(2, BatchPhase.FAILED, message="gate failed again"),
        run(3, BatchPhase.RUNNING),
        run(4, BatchPhase.SUCCEEDED),
    ]
    first = decide(spec(), meta(), {"lastScheduleTime": "2026-11-30T00:00:00Z"}, runs, at("2026-11-30T00:05"))
    assert [r.number for r in first.recorded] == [1, 2]  # not 4 before 3 ended
    assert first.status["consecutiveFailures"] == 2
    assert first.status["lastRun"]["name"] == "nightly-r2" and first.status["lastRun"]["outcome"] == "Failed"
    assert first.status["lastRun"]["message"] == "gate failed again"
    runs[2] = run(
        3, BatchPhase.SUCCEEDED, files_done=5, last_commit="SNAP", completion_time="2026-11-30T00:06:00Z"
    )
    second = decide(spec(), meta(), first.status, runs, at("2026-11-30T00:07"))
    assert [r.number for r in second.recorded] == [3, 4]
    assert second.status["consecutiveFailures"] == 0
    assert second.status["lastSuccessfulTime"] is not None
    assert decide(spec(), meta(), second.status, runs, at("2026-11-30T00:08")).recorded == []


def test_a_run_with_nothing_new_says_so_and_names_no_snapshot() -> None:
    quiet = run(1, BatchPhase.SUCCEEDED, files_skipped=12)
    decision = decide(spec(), meta(), {"lastScheduleTime": CREATED}, [quiet], at("2026-11-30T00:05"))
    last = decision.status["lastRun"]
    assert last["filesAdded"] == 0 and last["snapshot"] is None
    assert (
        last["message"].startswith("nothing new: 12 files listed") and "nothing committed" in last["message"]
    )


def test_history_limits_prune_only_recorded_runs_oldest_first() -> None:
    runs = [run(n, BatchPhase.SUCCEEDED) for n in range(1, 6)] + [
        run(6, BatchPhase.FAILED),
        run(7, BatchPhase.FAILED),
        run(8, BatchPhase.RUNNING),
    ]
    decision = decide(
        spec(successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1),
        meta(),
        {"lastScheduleTime": "2026-11-30T00:00:00Z"},
        runs,
        at("2026-11-30T00:05"),
    )
    assert [r.number for r in decision.prune] == [1, 2, 3, 6]


def test_a_run_created_before_its_status_was_written_is_not_created_twice() -> None:
    body_name = "nightly-s202611300015"
    existing = [RunView(name=body_name, uid="b", number=1, phase=BatchPhase.QUEUED)]
    decision = decide(spec(), meta(), {}, existing, at("2026-11-30T00:16"))
    assert decision.start is None and decision.status["lastScheduleTime"] == "2026-11-30T00:15:00Z"


def test_the_run_batch_is_the_template_owned_by_the_schedule() -> None:
    schedule = {"apiVersion": "icechunkoperator.io/v1alpha1", "metadata": meta()}
    body = run_batch_body(schedule, dict(TEMPLATE), NewRun("s202611300015", 3, "scheduled", None), "science")
    assert body["metadata"]["name"] == "nightly-s202611300015"
    assert body["metadata"]["labels"][LABEL_SCHEDULE] == "nightly"
    assert body["metadata"]["labels"][LABEL_RUN_NUMBER] == "3"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["spec"]["commit"]["message"] == "IngestSchedule nightly run s202611300015 (scheduled)"
    assert body["spec"]["source"] == TEMPLATE["source"]
    view = run_view(
        {**body, "status": {"phase": "Failed", "conditions": [{"type": "Failed", "message": "why"}]}}
    )
    assert view.number == 3 and view.phase == BatchPhase.FAILED and view.message == "why"


def test_cron_times_are_utc() -> None:
    assert cron_times("0 3 * * *", at("2026-11-30T04:00"), 2) == [
        at("2026-12-01T03:00"),
        at("2026-12-02T03:00"),
    ]


def test_a_schedule_refuses_a_bad_cron_and_a_gate_without_staging() -> None:
    with pytest.raises(ValidationError, match="not a cron expression"):
        spec(schedule="every day")
    gated = {**TEMPLATE, "validation": {"timeContinuity": {"dimension": "time", "maxGap": "1d"}}}
    with pytest.raises(ValidationError, match="spec.validation needs spec.staging"):
        spec(batch=gated)
    assert IngestSchedule.model_validate(
        {
            "kind": "IngestSchedule",
            "metadata": {"name": "n"},
            "spec": {"schedule": "@daily", "batch": {**gated, "staging": True}},
        }
    )


def test_a_schedule_refuses_a_tag_in_its_template() -> None:
    with pytest.raises(ValidationError, match="spec.batch.tag"):
        spec(batch={**TEMPLATE, "tag": "v1"})


def test_schedule_metrics_come_from_status_and_a_suspended_schedule_is_never_late() -> None:
    from icechunk_operator.k8s.metrics import (
        SCHEDULE_CONSECUTIVE_FAILURES,
        SCHEDULE_LAST_RUN_SECONDS,
        SCHEDULE_LAST_SUCCESS,
        OperatorMetrics,
    )

    def body(name: str, **spec_fields: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "science", "creationTimestamp": CREATED},
            "spec": {"schedule": "@daily", "batch": TEMPLATE, **spec_fields},
            "status": {
                "consecutiveFailures": 2,
                "lastRun": {"startTime": "2026-11-30T01:00:00Z", "completionTime": "2026-11-30T01:02:30Z"},
            },
        }

    metrics = OperatorMetrics(lambda: (), lambda: [[body("never-succeeded"), body("paused", suspend=True)]])
    labels = {"namespace": "science", "schedule": "never-succeeded", "store": "gnss"}
    assert (
        metrics.registry.get_sample_value(SCHEDULE_LAST_SUCCESS, labels) == at("2026-11-30T00:00").timestamp()
    )
    assert metrics.registry.get_sample_value(SCHEDULE_CONSECUTIVE_FAILURES, labels) == 2
    assert metrics.registry.get_sample_value(SCHEDULE_LAST_RUN_SECONDS, labels) == 150
    paused = {**labels, "schedule": "paused"}
    assert metrics.registry.get_sample_value(SCHEDULE_LAST_SUCCESS, paused) is None


def test_the_timer_syncs_only_when_a_run_is_due_or_the_spec_changed() -> None:
    body: dict[str, Any] = {
        "metadata": meta(),
        "spec": {"schedule": "*/15 * * * *", "batch": TEMPLATE},
        "status": {"observedGeneration": 1, "lastScheduleTime": "2026-11-30T00:15:00Z"},
    }
    assert not needs_sync(body, at("2026-11-30T00:29:59"))
    assert needs_sync(body, at("2026-11-30T00:30:01"))
    assert needs_sync({**body, "metadata": meta(**{REQUEST_ANNOTATION: "now"})}, at("2026-11-30T00:20"))
    assert needs_sync({**body, "metadata": {**meta(), "generation": 2}}, at("2026-11-30T00:20"))
    broken = {**body, "spec": {"schedule": "every day", "batch": TEMPLATE}}
    assert not needs_sync(broken, at("2026-11-30T00:30:00"))  # refused once, when it was observed
