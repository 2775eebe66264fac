"""The operator on a real control plane: CRDs, queueing, commit Jobs, restarts, garbage collection.

These need the control-plane binaries (built and cached on first use by
``scripts/build-control-plane.sh``); run them alone with ``pytest -m k8s``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE
from icechunk_operator.k8s import names
from icechunk_operator.synthetic import ArchiveLayout
from tests.e2e.conftest import ClusterDriver, wait_until


def store_doc(name: str, store_url: str, archive: ArchiveLayout, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": {"name": name},
        "spec": {
            "storage": {"url": store_url},
            "virtualChunkContainers": [{"urlPrefix": archive.root.resolve().as_uri() + "/"}],
            **spec,
        },
    }


def batch_doc(name: str, store: str, archive: ArchiveLayout, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IngestBatch",
        "metadata": {"name": name},
        "spec": {
            "store": store,
            "source": {"prefix": archive.root.resolve().as_uri() + "/Projection-AIS/"},
            "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
            "virtualization": {"fixes": ["ismip6"]},
            "execution": {"workers": 2},
            "failures": {"maxFailedFiles": 100},
            **spec,
        },
    }


def wait_ready(cluster: ClusterDriver, namespace: str, store: str) -> None:
    cluster.kubectl_wait(namespace, f"icechunkstore/{store}", "Ready", 60)


def ready_store(cluster: ClusterDriver, namespace: str, archive: ArchiveLayout, tmp_path: Path) -> None:
    """The store "ismip6" in ``tmp_path/store``, applied and Ready."""
    cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), archive), namespace=namespace)
    wait_ready(cluster, namespace, "ismip6")


def test_api_server_refuses_bad_specs_naming_the_field(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    both_sources = batch_doc("both", "s", shared_archive)
    both_sources["spec"]["source"]["files"] = ["file:///x.nc"]
    escaping = batch_doc("escape", "s", shared_archive)
    escaping["spec"]["grouping"]["template"] = "../{model}"
    absolute = batch_doc("absolute", "s", shared_archive)
    absolute["spec"]["grouping"]["template"] = "/{model}"
    no_workers = batch_doc("zero", "s", shared_archive, execution={"workers": 0})
    concat = batch_doc("concat", "s", shared_archive)
    concat["spec"]["grouping"]["rules"] = [{"combine": "concat"}]
    bad_url = store_doc("badurl", "ftp://host/x", shared_archive)
    no_account = store_doc("noaccount", "az://stores/s", shared_archive)
    no_container_account = store_doc("nocontaineraccount", (tmp_path / "store").as_uri(), shared_archive)
    no_container_account["spec"]["virtualChunkContainers"].append({"urlPrefix": "az://archive/"})
    cases = [
        (both_sources, "exactly one of source.prefix, source.files, source.index must be set"),
        (escaping, "spec.grouping.template"),
        (absolute, "grouping.template must be relative"),
        (no_workers, "spec.execution.workers"),
        (concat, "combine 'concat' needs a dimension"),
        (bad_url, "spec.storage.url"),
        (no_account, "spec.storage: Invalid value: azureAccount is required for az:// URLs"),
        (
            no_container_account,
            "spec.virtualChunkContainers[1]: Invalid value: azureAccount is required",
        ),
    ]
    for document, expected in cases:
        result = cluster.apply(document, namespace=namespace)
        assert result.returncode != 0, document
        assert expected in result.stderr, result.stderr

    store = store_doc("s", (tmp_path / "store").as_uri(), shared_archive)
    assert cluster.apply(store, namespace=namespace).returncode == 0
    store["spec"]["storage"]["url"] = (tmp_path / "elsewhere").as_uri()
    moved = cluster.apply(store, namespace=namespace)
    assert moved.returncode != 0 and "spec.storage.url is immutable" in moved.stderr


def test_batch_runs_to_success_with_children_and_columns(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store_url = (tmp_path / "store").as_uri()
    assert cluster.apply(store_doc("ismip6", store_url, shared_archive), namespace=namespace).returncode == 0
    wait_ready(cluster, namespace, "ismip6")

    applied = time.monotonic()
    cluster.apply(batch_doc("first", "ismip6", shared_archive), namespace=namespace)
    job = wait_until(lambda: cluster.jobs(namespace), 30, "the commit Job")[0]
    latency = time.monotonic() - applied
    print(f"kubectl apply -> commit Job exists: {latency:.2f} s")

    owner = job.metadata.owner_references[0]
    batch = cluster.get(names.BATCHES, namespace, "first")
    assert (owner.kind, owner.name, owner.uid) == ("IngestBatch", "first", batch["metadata"]["uid"])
    assert job.metadata.labels[names.LABEL_STORE] == "ismip6"
    container = job.spec.template.spec.containers[0]
    assert container.command == ["icechunk-operator", "commit", "--batch", f"{namespace}/first"]
    assert job.spec.template.spec.security_context.run_as_non_root is True
    dask = wait_until(lambda: cluster.dask_clusters(namespace), 30, "the DaskCluster")[0]
    assert dask["metadata"]["ownerReferences"][0]["uid"] == batch["metadata"]["uid"]
    assert dask["spec"]["worker"]["replicas"] == 2
    apps = client.AppsV1Api(cluster.batch_api.api_client)
    wait_until(  # the Dask operator's controller turns the DaskCluster into a scheduler Deployment
        lambda: any(
            d.metadata.name == "first-dask-scheduler"
            for d in apps.list_namespaced_deployment(namespace).items
        ),
        30,
        "the Dask operator's scheduler Deployment",
    )

    cluster.kubectl_wait(namespace, "ingestbatch/first", "Succeeded")
    status = cluster.status(names.BATCHES, namespace, "first")
    total = len(shared_archive.files)
    assert status["phase"] == "Succeeded"
    assert status["files"]["total"] == total
    assert status["files"]["done"] + status["files"]["failed"] == total
    good = [f for f in shared_archive.files if f.defect == "none"]
    assert status["files"]["failed"] == total - len(good)
    assert status["progress"] == f"{status['files']['done']}/{total}"
    assert status["commits"] and status["failureLog"]
    assert status["completionTime"] >= status["startTime"]
    wait_until(lambda: not cluster.dask_clusters(namespace), 30, "the DaskCluster to be torn down")

    table = cluster.plane.kubectl("get", "ingestbatches", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "STORE", "STATUS", "DONE/TOTAL", "FAILED", "AGE"]
    assert row.split()[:5] == [
        "first",
        "ismip6",
        "Succeeded",
        status["progress"],
        str(status["files"]["failed"]),
    ]
    everything = cluster.plane.kubectl("get", "icechunk", "-n", namespace).stdout
    assert "icechunkstore.icechunkoperator.io/ismip6" in everything
    assert "ingestbatch.icechunkoperator.io/first" in everything

    def store_counts() -> bool:
        store_status = cluster.status(names.STORES, namespace, "ismip6")
        return bool(store_status.get("datasets") == len(good))  # one file per ISMIP6 group

    wait_until(store_counts, 30, "the store's dataset count")

    # Liveness (Kopf's endpoint, which the chart's probes use) and Prometheus metrics.
    with urllib.request.urlopen(cluster.operator.health_url, timeout=5) as response:
        assert response.status == 200

    # Prometheus metrics, from the operator's own endpoint.
    def metrics() -> str:
        with urllib.request.urlopen(cluster.operator.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    ns, store_label = f'namespace="{namespace}"', 'store="ismip6"'
    succeeded = f'icechunk_operator_batches{{{ns},phase="Succeeded",{store_label}}} 1.0'
    text = wait_until(lambda: succeeded in metrics() and metrics(), 30, "metrics")
    ingested = f'icechunk_operator_batch_files{{{ns},outcome="ingested",{store_label}}}'
    assert f"{ingested} {float(status['files']['done'])}" in text
    counts = [
        line.split()[-1]
        for line in text.splitlines()
        if line.startswith("icechunk_operator_commit_seconds_count")
    ]
    assert counts and float(counts[0]) >= 1

    # GitOps: applying the same manifests again changes nothing, and status never makes a diff.
    documents = [store_doc("ismip6", store_url, shared_archive), batch_doc("first", "ismip6", shared_archive)]
    again = cluster.apply(*documents, namespace=namespace)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2, again.stdout
    text = "\n---\n".join(json.dumps(d) for d in documents)
    diff = cluster.plane.kubectl("diff", "-n", namespace, "-f", "-", input=text, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    conditions = {
        c["type"]: c["status"] for c in cluster.status(names.BATCHES, namespace, "first")["conditions"]
    }
    assert (conditions["Ready"], conditions["Reconciling"], conditions["Stalled"]) == (
        "True",
        "False",
        "False",
    )

    def batch_events() -> set[str]:
        reasons = cluster.plane.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector=involvedObject.kind=IngestBatch,involvedObject.name=first",
            "-o",
            "jsonpath={.items[*].reason}",
        ).stdout
        return set(reasons.split())

    wait_until(
        lambda: {"Submitted", "Started", "Completed", "DaskClusterDeleted"} <= batch_events(), 30, "events"
    )


def test_one_writer_per_store_first_come_first_served(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    cluster.kubelet.hold(namespace)
    for store in ("left", "right"):
        cluster.apply(store_doc(store, (tmp_path / store).as_uri(), shared_archive), namespace=namespace)
        wait_ready(cluster, namespace, store)
    cluster.apply(batch_doc("a", "left", shared_archive), namespace=namespace)
    cluster.wait_phase(namespace, "a", "Running", 30)
    cluster.apply(batch_doc("b", "left", shared_archive), namespace=namespace)
    cluster.apply(batch_doc("c", "right", shared_archive), namespace=namespace)
    cluster.wait_phase(namespace, "c", "Running", 30)  # another store runs at once

    queued = cluster.wait_phase(namespace, "b", "Queued", 30)
    wait_until(
        lambda: cluster.status(names.BATCHES, namespace, "b").get("queuePosition") == 1, 30, "position"
    )
    cluster.wait_for_queue_passes(namespace, ["left"])  # b must still wait behind a
    assert cluster.phase(namespace, "b") == "Queued", queued
    assert sorted(j.metadata.name for j in cluster.jobs(namespace)) == ["a-commit", "c-commit"]

    cluster.kubelet.release(namespace)
    for batch in ("a", "b", "c"):
        cluster.wait_phase(namespace, batch, "Succeeded", 180)
    jobs = {j.metadata.name: j for j in cluster.jobs(namespace)}
    assert jobs["b-commit"].metadata.creation_timestamp >= jobs["a-commit"].status.completion_time
    b = cluster.status(names.BATCHES, namespace, "b")
    assert b["files"]["done"] == 0 and b["files"]["skipped"] == b["files"]["total"] - b["files"]["failed"]


def test_operator_killed_mid_batch_never_starts_a_second_writer(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    ready_store(cluster, namespace, shared_archive, tmp_path)
    cluster.kubelet.hold(namespace)
    cluster.apply(batch_doc("resumed", "ismip6", shared_archive), namespace=namespace)
    cluster.apply(batch_doc("next", "ismip6", shared_archive), namespace=namespace)
    # Killed mid-batch, not mid-start: the Job exists and the writer Lease that guarded its start
    # is released (a kill inside the start, whose Lease then has to expire, is a fault case of
    # tests/e2e/test_faults_control_plane.py).
    wait_until(
        lambda: cluster.jobs(namespace) and not cluster.leases(namespace), 30, "the commit Job, started"
    )

    cluster.operator.kill()
    cluster.operator.start()
    cluster.wait_phase(namespace, "next", "Queued", 30)  # the new operator lists everything again
    cluster.wait_for_queue_passes(namespace, ["ismip6"])  # and re-plans the queue
    assert [j.metadata.name for j in cluster.jobs(namespace)] == ["resumed-commit"]
    assert cluster.phase(namespace, "next") == "Queued"

    cluster.kubelet.release(namespace)
    cluster.wait_phase(namespace, "resumed", "Succeeded", 180)
    cluster.wait_phase(namespace, "next", "Succeeded", 180)
    runs = [r.pod for r in cluster.kubelet.commit_runs(namespace)]
    assert len(runs) == 2 and sum(r.startswith("resumed-commit") for r in runs) == 1


def test_batch_against_its_store_is_checked(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), shared_archive), namespace=namespace)
    outside = batch_doc("outside", "ismip6", shared_archive, source={"prefix": tmp_path.as_uri() + "/other/"})
    cluster.apply(outside, namespace=namespace)
    status = cluster.wait_phase(namespace, "outside", "Failed", 30)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "source" in failed["message"]
    assert not cluster.jobs(namespace)

    cluster.apply(batch_doc("early", "later", shared_archive), namespace=namespace)
    status = cluster.wait_phase(namespace, "early", "Queued", 30)
    queued = next(c for c in status["conditions"] if c["type"] == "Queued")
    assert queued["reason"] == "WaitingForStore"
    cluster.apply(store_doc("later", (tmp_path / "later").as_uri(), shared_archive), namespace=namespace)
    cluster.wait_phase(namespace, "early", "Succeeded", 180)


def test_deleted_batch_children_are_garbage_collected(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    ready_store(cluster, namespace, shared_archive, tmp_path)
    cluster.kubelet.hold(namespace)
    cluster.apply(batch_doc("doomed", "ismip6", shared_archive), namespace=namespace)
    wait_until(lambda: cluster.jobs(namespace) and cluster.dask_clusters(namespace), 30, "the children")
    cluster.plane.kubectl("delete", "-n", namespace, "ingestbatch/doomed", "--wait=false")
    wait_until(
        lambda: not cluster.jobs(namespace) and not cluster.dask_clusters(namespace),
        60,
        "garbage collection of the Job and the DaskCluster",
    )


def test_deletion_policy_decides_whether_the_data_goes_with_the_resource(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    kept, deleted = tmp_path / "kept", tmp_path / "deleted"
    cluster.apply(store_doc("kept", kept.as_uri(), shared_archive), namespace=namespace)
    cluster.apply(
        store_doc("deleted", deleted.as_uri(), shared_archive, deletionPolicy="Delete"), namespace=namespace
    )
    for name in ("kept", "deleted"):
        wait_ready(cluster, namespace, name)
    assert kept.is_dir() and deleted.is_dir()
    wait_until(
        lambda: (
            names.FINALIZER_DELETE_DATA
            in cluster.get(names.STORES, namespace, "deleted")["metadata"].get("finalizers", [])
        ),
        30,
        "the delete-data finalizer",
    )
    assert not cluster.get(names.STORES, namespace, "kept")["metadata"].get("finalizers")

    cluster.plane.kubectl(
        "delete", "-n", namespace, "icechunkstore/kept", "icechunkstore/deleted", "--timeout=60s"
    )
    assert kept.is_dir() and any(kept.iterdir())
    assert not deleted.exists()
