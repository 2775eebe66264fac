"""When a Reconciliation run is due, what its Job looks like, and which Jobs are pruned (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from icechunk_operator.api import IcechunkStore, Reconciliation
from icechunk_operator.api.common import API_GROUP, API_VERSION, first_problem
from icechunk_operator.k8s.reconciliations import due_run, reconcile_job
from icechunk_operator.k8s.schedules import job_failure, jobs_to_prune, schedule_time
from icechunk_operator.k8s.settings import OperatorSettings

NOW = datetime(2026, 11, 21, 12, 7, tzinfo=UTC)
API = f"{API_GROUP}/{API_VERSION}"


def body(generation: int = 1, schedule: str | None = None, **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"store": "s", "prefix": "s3://b/x/"}
    if schedule:
        spec["schedule"] = schedule
    return {
        "metadata": {"name": "check", "generation": generation, "creationTimestamp": "2026-11-21T11:00:00Z"},
        "spec": spec,
        "status": status,
    }


def test_a_new_generation_is_due_once_observed_it_is_not() -> None:
    assert due_run(body(generation=3), NOW) == "g3"
    assert due_run(body(generation=3, observedGeneration=3), NOW) is None


def test_a_schedule_fires_after_its_last_scheduled_time() -> None:
    hourly = body(schedule="0 * * * *", observedGeneration=1, lastScheduleTime="2026-11-21T11:00:00Z")
    assert due_run(hourly, NOW) == "s202611211200"
    assert schedule_time("s202611211200") == "2026-11-21T12:00:00Z" and schedule_time("g3") is None
    done = body(schedule="0 * * * *", observedGeneration=1, lastScheduleTime="2026-11-21T12:00:00Z")
    assert due_run(done, NOW) is None  # the next one is at 13:00


def test_missed_schedules_collapse_into_one_run_for_the_latest() -> None:
    """A week without the operator is one catch-up run, not 168 in a row."""
    week_ago = body(schedule="0 * * * *", observedGeneration=1, lastScheduleTime="2026-11-14T12:00:00Z")
    assert due_run(week_ago, NOW) == "s202611211200"


def test_a_bad_schedule_is_refused_naming_the_field_and_never_fires() -> None:
    with pytest.raises(ValidationError) as refused:
        Reconciliation.model_validate(
            body(schedule="every hour") | {"apiVersion": API, "kind": "Reconciliation"}
        )
    assert first_problem(refused.value).startswith("spec.schedule: 'every hour' is not a cron expression")
    assert due_run(body(schedule="every hour", observedGeneration=1), NOW) is None


def job(name: str, created: str, state: str | None) -> dict[str, Any]:
    conditions = [{"type": state, "status": "True", "message": "boom"}] if state else []
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": {"conditions": conditions}}


def test_only_finished_jobs_beyond_the_history_limit_are_pruned() -> None:
    jobs = [
        job("a", "2026-11-21T10:00:00Z", "Complete"),
        job("b", "2026-11-21T11:00:00Z", "Failed"),
        job("c", "2026-11-21T12:00:00Z", "Complete"),
        job("d", "2026-11-21T09:00:00Z", None),  # still running: kept
    ]
    assert jobs_to_prune(jobs, 2) == ["a"]
    assert jobs_to_prune(jobs, 0) == ["c", "b", "a"]
    assert job_failure(jobs[1]) == "boom" and job_failure(jobs[0]) is None


def test_the_job_runs_the_reconcile_pod_with_secrets_by_reference_only() -> None:
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {
                "storage": {"url": "s3://store/s", "credentials": {"secretRef": {"name": "store-creds"}}},
                "virtualChunkContainers": [{"urlPrefix": "s3://b/"}],
            },
        }
    )
    check = Reconciliation.model_validate(
        {
            "kind": "Reconciliation",
            "metadata": {"name": "check", "namespace": "ns", "uid": "u-1"},
            "spec": {"store": "s", "prefix": "s3://b/x/"},
        }
    )
    manifest = reconcile_job(check, store, OperatorSettings(), "g1")
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert manifest["metadata"]["name"] == "check-g1"
    assert container["command"] == ["icechunk-operator", "reconcile", "--resource", "ns/check"]
    assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
