"""When a store's maintenance is due, what its Job looks like, and when a failure is recorded (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from icechunk_operator.api import IcechunkStore
from icechunk_operator.k8s.maintenance import (
    REQUEST_ANNOTATION,
    due_maintenance,
    maintenance_job,
    started_status,
)
from icechunk_operator.k8s.schedules import schedule_time
from icechunk_operator.k8s.settings import OperatorSettings

NOW = datetime(2026, 11, 22, 3, 7, tzinfo=UTC)  # a Sunday
WEEKLY = {"schedule": "0 3 * * 0", "keepSnapshots": 10}


def store_body(
    policy: dict[str, Any] | None = WEEKLY, request: str | None = None, **maintenance: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "storage": {"url": "s3://stores/s", "credentials": {"secretRef": {"name": "store-creds"}}},
        "virtualChunkContainers": [{"urlPrefix": "s3://archive/"}],
    }
    if policy is not None:
        spec["maintenance"] = policy
    meta: dict[str, Any] = {
        "name": "s",
        "namespace": "ns",
        "uid": "u-s",
        "creationTimestamp": "2026-11-01T00:00:00Z",
    }
    if request is not None:
        meta["annotations"] = {REQUEST_ANNOTATION: request}
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": meta,
        "spec": spec,
        "status": {"maintenance": maintenance} if maintenance else {},
    }


def test_without_a_policy_nothing_is_ever_due() -> None:
    assert due_maintenance(store_body(policy=None, request="now"), NOW) is None


def test_the_schedule_fires_once_per_cron_time_and_missed_ones_collapse() -> None:
    assert due_maintenance(store_body(), NOW) == "s202611220300"  # first run since creation
    started = store_body(lastScheduleTime="2026-11-22T03:00:00Z")
    assert due_maintenance(started, NOW) is None  # next Sunday's is the next
    assert schedule_time("s202611220300") == "2026-11-22T03:00:00Z"


def test_a_new_request_value_is_due_once() -> None:
    run = due_maintenance(store_body(policy={"keepSnapshots": 2}, request="2026-11-22T10:00"), NOW)
    assert run is not None and run.startswith("r")
    body = store_body(policy={"keepSnapshots": 2}, request="2026-11-22T10:00")
    acted = started_status(body, run, "s-maint-" + run, None)
    assert acted["lastRequest"] == "2026-11-22T10:00" and acted["result"] == "Running"
    after = store_body(policy={"keepSnapshots": 2}, request="2026-11-22T10:00", **acted)
    assert due_maintenance(after, NOW) is None
    again = store_body(policy={"keepSnapshots": 2}, request="2026-11-23T10:00", **acted)
    assert due_maintenance(again, NOW) not in (None, run)


def test_the_job_runs_the_maintenance_pod_as_the_store_owned_child() -> None:
    store = IcechunkStore.model_validate({k: v for k, v in store_body().items() if k != "status"})
    manifest = maintenance_job(store, OperatorSettings(), "s202611220300")
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert manifest["metadata"]["name"] == "s-maint-s202611220300"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "maintenance"
    assert manifest["metadata"]["labels"]["icechunkoperator.io/store"] == "s"
    assert container["command"] == ["icechunk-operator", "maintain", "--store", "ns/s"]
    assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert manifest["spec"]["activeDeadlineSeconds"] == 21600  # a hung run cannot hold the queue forever
    owner = manifest["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("IcechunkStore", "u-s")
    assert manifest["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
