"""The Reconciliation resource on a real control plane: a report, then a repair, then clean.

The reconcile pod runs for real (as the FakeKubelet runs commit pods) with the service account
and Role that ``examples/kubernetes/namespace-setup.yaml`` gives it; the repair batch it creates
queues on the store and runs in a commit pod like any other batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from icechunk_operator.k8s import names
from icechunk_operator.synthetic import ArchiveLayout
from tests.e2e.conftest import ClusterDriver
from tests.e2e.test_operator import batch_doc, ready_store


def reconciliation_doc(archive: ArchiveLayout, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "Reconciliation",
        "metadata": {"name": "check"},
        "spec": {"store": "ismip6", "prefix": archive.root.resolve().as_uri() + "/Projection-AIS/", **spec},
    }


def wait_run(cluster: ClusterDriver, namespace: str, generation: int) -> dict[str, Any]:
    """The status once the run of ``generation`` has reported (or failed, which fails the test)."""

    def reported() -> dict[str, Any] | None:
        status = cluster.status(names.RECONCILIATIONS, namespace, "check")
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"]
        if failed:
            raise AssertionError(f"{failed}\n{cluster.diagnostics(namespace)}")
        return status if status.get("observedGeneration") == generation else None

    return dict(cluster.wait(namespace, reported, 120, f"run of generation {generation}"))


def test_report_then_repair_then_clean(
    cluster: ClusterDriver, namespace: str, archive: ArchiveLayout, tmp_path: Path
) -> None:
    ready_store(cluster, namespace, archive, tmp_path)
    cluster.apply(batch_doc("first", "ismip6", archive), namespace=namespace)
    cluster.wait_phase(namespace, "first", "Succeeded")
    defective = [f for f in archive.files if f.defect != "none"]
    good = [f for f in archive.files if f.defect == "none"]
    good[0].path.unlink()  # orphaned
    os.utime(good[1].path)  # stale

    assert cluster.apply(reconciliation_doc(archive), namespace=namespace).returncode == 0
    status = wait_run(cluster, namespace, 1)
    assert (status["missing"], status["stale"], status["orphaned"]) == (len(defective), 1, 1)
    assert status["report"].endswith(".json") and Path(status["report"].removeprefix("file://")).exists()
    cluster.kubectl_wait(namespace, "reconciliation/check", "Ready", 30)
    table = cluster.plane.kubectl("get", "reconciliations", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == [
        *("NAME", "STORE", "MISSING", "STALE", "ORPHANED", "BROKEN", "REPAIR", "READY", "AGE")
    ]
    # Broken and Repair are blank: references were not checked, and nothing was repaired.
    assert row.split()[:6] == ["check", "ismip6", str(len(defective)), "1", "1", "True"]

    repair = reconciliation_doc(archive, mode="Repair", batchTemplate="first", removeOrphans=True)
    assert cluster.apply(repair, namespace=namespace).returncode == 0
    status = wait_run(cluster, namespace, 2)
    repair_batch = status["repairBatch"]
    batch = cluster.get(names.BATCHES, namespace, repair_batch)
    assert batch["metadata"]["ownerReferences"][0]["kind"] == "Reconciliation"
    assert batch["spec"]["source"]["index"].endswith("-ingest.parquet")
    template = cluster.get(names.BATCHES, namespace, "first")["spec"]["grouping"]
    assert batch["spec"]["grouping"]["template"] == template["template"]  # settings of the template
    repaired = cluster.wait_phase(namespace, repair_batch, "Succeeded", timeout=180)
    assert repaired["files"]["failed"] == len(defective)  # they fail again: still missing

    assert (
        cluster.apply(reconciliation_doc(archive, checkReferences=True), namespace=namespace).returncode == 0
    )
    status = wait_run(cluster, namespace, 3)
    assert (status["missing"], status["stale"], status["orphaned"], status["broken"]) == (
        len(defective),
        0,
        0,
        0,
    )
    runs = [j for j in cluster.jobs(namespace) if j.metadata.labels.get(names.LABEL_COMPONENT) == "reconcile"]
    assert sorted(j.metadata.name for j in runs) == ["check-g1", "check-g2", "check-g3"]  # historyLimit 3
