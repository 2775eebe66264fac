"""Store history and maintenance on a real control plane: recent snapshots, tags and branches in
status (after a staged batch), and maintenance requested by annotation, run in its own pod.

The maintenance pod runs for real (as the FakeKubelet runs commit pods) with the service account
and Role of ``examples/kubernetes/namespace-setup.yaml``; it expires and collects in the store's
real repository, and the store's status then tells what was freed and which snapshots remain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.k8s import names
from icechunk_operator.k8s.maintenance import REQUEST_ANNOTATION
from icechunk_operator.synthetic import ArchiveLayout
from tests.e2e.conftest import ClusterDriver, wait_until
from tests.e2e.test_operator import batch_doc, store_doc, wait_ready


def request_maintenance(cluster: ClusterDriver, namespace: str, value: str) -> dict[str, Any]:
    """Annotate the store as a user would, and wait for the run's outcome in status."""
    annotation = f"{REQUEST_ANNOTATION}={value}"
    cluster.plane.kubectl("annotate", "-n", namespace, "icechunkstore/ismip6", annotation, "--overwrite")

    def finished() -> dict[str, Any] | None:
        maintenance = cluster.status(names.STORES, namespace, "ismip6").get("maintenance") or {}
        if maintenance.get("lastRequest") != value or maintenance.get("result") == "Running":
            return None
        if maintenance.get("result") != "Succeeded":
            raise AssertionError(f"{maintenance}\n{cluster.diagnostics(namespace)}")
        return dict(maintenance)

    return dict(cluster.wait(namespace, finished, 120, f"maintenance run {value}"))


def test_requested_maintenance_expires_collects_and_reports(
    cluster: ClusterDriver, namespace: str, archive: ArchiveLayout, tmp_path: Path
) -> None:
    policy = {"keepSnapshots": 1, "historyLimit": 1}
    store = store_doc("ismip6", (tmp_path / "store").as_uri(), archive, maintenance=policy)
    assert cluster.apply(store, namespace=namespace).returncode == 0
    wait_ready(cluster, namespace, "ismip6")
    good = [f for f in archive.files if f.defect == "none"]
    first_files = {"files": [f.path.resolve().as_uri() for f in good[:3]]}
    cluster.apply(batch_doc("first", "ismip6", archive, source=first_files, tag="v1"), namespace=namespace)
    cluster.wait_phase(namespace, "first", "Succeeded")
    second = batch_doc("second", "ismip6", archive, commit={"everyGroups": 5}, staging=True)
    cluster.apply(second, namespace=namespace)
    cluster.wait_phase(namespace, "second", "Succeeded", timeout=180)

    def history_shown() -> dict[str, Any] | None:
        status = cluster.status(names.STORES, namespace, "ismip6")
        recent = status.get("recentSnapshots") or []
        return status if recent and recent[0].get("batch") == "second" else None

    before = wait_until(history_shown, 30, "the second batch's snapshot in status")
    assert len(before["recentSnapshots"]) == 5  # the newest five of 7 or more
    assert before["recentSnapshots"][0]["id"] == before["lastSnapshot"]
    assert before["branches"] == {"main": before["lastSnapshot"]}  # the staging branch is gone
    tagged = before["tags"]["v1"]
    assert tagged not in [s["id"] for s in before["recentSnapshots"]]

    freed = request_maintenance(cluster, namespace, "first")
    assert freed["expiredSnapshots"] >= 5 and freed["deletedSnapshots"] >= 1, freed
    after = cluster.status(names.STORES, namespace, "ismip6")
    assert after["recentSnapshots"][0]["id"] == before["lastSnapshot"]  # the tip never expires
    assert len(after["recentSnapshots"]) < 5
    wide = cluster.plane.kubectl("get", "icechunkstores", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split()[4:6] == ["MAINTENANCE", "MAINTAINED"] and row.split()[4] == "Succeeded"

    spec = IcechunkStore.model_validate(
        cluster.get(names.STORES, namespace, "ismip6") | {"status": None}
    ).spec
    repo = open_repository(spec, create=False)
    for session in (repo.readonly_session(tag="v1"), repo.readonly_session(branch="main")):
        root = zarr.open_group(session.store, mode="r", zarr_format=3)
        assert any(True for _ in root.members(max_depth=None))  # tagged and current still read

    again = request_maintenance(cluster, namespace, "second")  # nothing left to expire: still clean
    assert again["expiredSnapshots"] == 0
    request_maintenance(cluster, namespace, "third")
    runs = [
        j for j in cluster.jobs(namespace) if j.metadata.labels.get(names.LABEL_COMPONENT) == "maintenance"
    ]
    # historyLimit 1: the latest run and one finished run before it; the first run is pruned.
    assert sorted(j.metadata.name for j in runs) == sorted(
        (cluster.status(names.STORES, namespace, "ismip6")["maintenance"]["job"], again["job"])
    )
    assert all(j.metadata.owner_references[0].kind == "IcechunkStore" for j in runs)


def test_a_schedule_the_api_server_cannot_check_makes_the_store_not_ready_naming_the_field(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    policy = {"schedule": "every sunday", "keepSnapshots": 3}
    store = store_doc("weekly", (tmp_path / "store").as_uri(), shared_archive, maintenance=policy)
    assert cluster.apply(store, namespace=namespace).returncode == 0  # cron is beyond the CRD schema

    def refused() -> str | None:
        conditions = cluster.status(names.STORES, namespace, "weekly").get("conditions") or []
        ready = next((c for c in conditions if c["type"] == "Ready"), None)
        return str(ready["message"]) if ready and ready["status"] == "False" else None

    message = wait_until(refused, 60, "the store's Ready condition")
    assert message.startswith(
        "invalid spec: spec.maintenance.schedule: 'every sunday' is not a cron expression"
    )
