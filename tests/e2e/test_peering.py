"""Two operator replicas with Kopf peering: one works, the other waits, and takes over when the
first dies (the chart's `replicas: 2`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.control_plane import ControlPlane
from tests.cluster.kubelet import FakeKubelet
from tests.e2e.conftest import ClusterDriver, ProcessHandle, wait_until
from tests.e2e.test_chart import render
from tests.e2e.test_operator import batch_doc, store_doc


def test_the_standby_replica_takes_over_when_the_active_one_dies(
    chart_tools: Path,
    control_plane: ControlPlane,
    operator_process: ProcessHandle,
    kubelet: FakeKubelet,
    kube: client.ApiClient,
    namespace: str,
    shared_archive: Any,
    tmp_path: Path,
) -> None:
    peering_crds = [
        d
        for d in render(chart_tools, "default", "--set", "replicas=2")
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"
    ]
    control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in peering_crds))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev")
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "e2e-peering"}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(peering))

    def replica(name: str, priority: int) -> ProcessHandle:
        env = {
            **operator_process.env,
            "ICECHUNK_OPERATOR_PEERING": "e2e-peering",
            "ICECHUNK_OPERATOR_PEERING_PRIORITY": str(priority),
            "ICECHUNK_OPERATOR_PEERING_LIFETIME": "10",
        }
        return ProcessHandle(name, [operator_process.args[0], "operator", "--all-namespaces"], env, tmp_path)

    operator_process.stop()
    active, standby = replica("active", 200).start(), replica("standby", 100).start()
    try:
        peers = client.CustomObjectsApi(kube)

        def keepalives() -> dict[str, Any]:
            body = peers.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "e2e-peering")
            return dict(body.get("status") or {})

        # Replicas that start in the same second may both work until they see each other's
        # keep-alive; the test starts its work once they have.
        wait_until(lambda: len(keepalives()) == 2, 30, "both replicas to report to the peering")
        assert sorted(p["priority"] for p in keepalives().values()) == [100, 200]

        # Kopf starts each replica paused and logs each change: the active one has resumed, and
        # the standby, if it resumed before it saw the active one, has paused again.
        def settled() -> bool:
            text = standby.log()
            resumed = text.count("Resuming operations after the pause")
            return "Resuming operations" in active.log() and resumed == text.count("Pausing operations")

        wait_until(settled, 30, "the active replica to work and the standby to wait")
        cluster = ClusterDriver(control_plane, active, kubelet, kube)
        cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), shared_archive), namespace=namespace)
        cluster.apply(batch_doc("before", "ismip6", shared_archive), namespace=namespace)
        cluster.wait_phase(namespace, "before", "Succeeded", 120)
        assert f"batch {namespace}/before" not in standby.log()
        assert f"batch {namespace}/before" in active.log()

        active.kill()
        cluster.operator = standby
        cluster.apply(batch_doc("after", "ismip6", shared_archive), namespace=namespace)
        cluster.wait_phase(namespace, "after", "Succeeded", 120)
        assert "Resuming operations" in standby.log()
        assert [j.metadata.name for j in cluster.jobs(namespace)] == ["after-commit", "before-commit"]
    finally:
        active.stop()
        standby.stop()
        operator_process.start()
