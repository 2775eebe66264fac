"""Secret canaries on a real control plane: a Secret holds one random secret as the S3 secret key
of the store's server and the Azure account key of its sources' server; the store names it in
``credentials.secretRef``. A batch that crashes once and then succeeds (with defective files), a
batch that fails, a reconciliation, a maintenance run, and a second store whose Secret holds a
wrong secret; afterwards neither secret is in anything the cluster shows or the runs wrote.

Pods get the Secret by reference (``envFrom``), which the fake kubelet resolves as a kubelet
would; the Dask workers are processes of this test with the Secret's keys in their environment,
as worker pods would have them. The servers check the secret (see ``canary_world``), so the
runs that work used it for real.

Searched (rows of the fault tally, category "secrets"): every IcechunkStore, IngestBatch and
Reconciliation with its status, every Job, Pod, DaskCluster and ConfigMap of the namespace,
its Events, the operator's log, every commit, reconcile and maintenance pod's log, the
operator's metrics, every object the servers hold, the commit metadata, failure logs and
reconciliation reports, and the Dask workers' logs.
"""

from __future__ import annotations

import json
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from icechunk_operator.api import IcechunkStore
from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE
from icechunk_operator.engine.credentials import credentials_environment
from icechunk_operator.failpoints import ENV, ONCE_DIR_ENV
from icechunk_operator.k8s import names
from tests.cluster.kubelet import RUN_COMPONENTS
from tests.conftest import make_archive
from tests.e2e.conftest import ClusterDriver
from tests.e2e.test_maintenance import request_maintenance
from tests.e2e.test_operator import wait_ready
from tests.e2e.test_reconciliation import wait_run
from tests.faults.canary import Evidence, Secret, canary, describe
from tests.faults.canary_world import (
    Servers,
    canary_servers,
    collect_commits,
    collect_lines,
    collect_storage,
    credential_values,
    dask_cluster,
    environment_with,
    folder,
)
from tests.faults.tally import FaultTally

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.builds("versitygw", "Azurite")]

API_VERSION = f"{names.GROUP}/{names.VERSION}"
#: What ``kubectl get -o json`` lists, by the place the tally names.
LISTED = {
    "resource status": "icechunkstores,ingestbatches,reconciliations",
    "pod specs": "jobs,pods,daskclusters,configmaps",
    "Events": "events",
}


def test_cluster_runs_leave_the_secret_nowhere(
    cluster: ClusterDriver, namespace: str, tmp_path: Path, fault_tally: FaultTally
) -> None:
    key, key_secret = canary("canary")
    wrong, wrong_secret = canary("wrong canary")
    layout = make_archive(tmp_path / "archive", institutions=1, models=2)
    defective = sum(f.defect != "none" for f in layout.files)
    evidence = Evidence()

    with ExitStack() as stack:
        servers = stack.enter_context(canary_servers(tmp_path / "servers", key, layout, gcs=False))
        workers = environment_with(credential_values(key))  # what envFrom gives worker pods
        scheduler = stack.enter_context(dask_cluster(folder(tmp_path / "dask"), workers))
        once = folder(tmp_path / "once")
        cluster.kubelet.namespace_env[namespace] = {
            names.ENV_SCHEDULER: scheduler,  # the namespace's pods use this test's Dask workers
            ENV: "written=raise",  # the first commit pod crashes, printing an exception
            ONCE_DIR_ENV: str(once),
        }
        stack.callback(cluster.kubelet.namespace_env.pop, namespace, None)

        applied = cluster.apply(
            secret("store-credentials", key),
            secret("wrong-credentials", wrong),
            store(
                "ismip6", servers, "store-credentials", maintenance={"keepSnapshots": 1, "historyLimit": 1}
            ),
            store("locked-out", servers, "wrong-credentials"),
            namespace=namespace,
        )
        assert applied.returncode == 0, applied.stderr
        wait_ready(cluster, namespace, "ismip6")

        cluster.apply(batch("first", max_failed=100), namespace=namespace)
        # The DaskCluster lives only while its batch runs: its workers' Secret is checked now.
        dask_clusters = cluster.wait(
            namespace, lambda: cluster.dask_clusters(namespace), 60, "the batch's DaskCluster"
        )
        for item in dask_clusters:
            evidence.add("pod specs", f"DaskCluster {item['metadata']['name']}", json.dumps(item))
        first = cluster.wait_phase(namespace, "first", "Succeeded", 300)
        assert first["files"]["failed"] == defective and first["failureLog"].startswith("s3://stores/")
        exits = [run.process.returncode for run in cluster.kubelet.commit_runs(namespace)]
        assert exits == [3, 0], cluster.diagnostics(namespace)  # the crash, then the Job's retry
        cluster.apply(batch("strict", max_failed=0), namespace=namespace)
        strict = cluster.wait_phase(namespace, "strict", "Failed", 180)
        assert strict["files"]["failed"] == defective

        cluster.apply(reconciliation(), namespace=namespace)
        checked = wait_run(cluster, namespace, 1)
        assert (checked["missing"], checked["broken"]) == (defective, 0), checked
        freed = request_maintenance(cluster, namespace, "canary")
        assert freed["expiredSnapshots"] >= 1, freed
        locked_out = cluster.wait(
            namespace, lambda: repository_error(cluster, namespace), 60, "the locked-out store's Event"
        )
        assert "SignatureDoesNotMatch" in locked_out, locked_out

        children = collect_cluster(cluster, namespace, evidence)
        assert_secrets_by_reference([*dask_clusters, *children], key)
        stores = {"ismip6": IcechunkStore.model_validate(store("ismip6", servers, "store-credentials"))}
        with credentials_environment(credential_values(key)):
            collect_commits(evidence, stores)

    collect_storage(evidence, servers.root)
    collect_lines(evidence, "worker logs", sorted((tmp_path / "dask").glob("*.log")))
    logged = {document.name for document in evidence.places["failure logs"]}
    assert {url.rpartition("/")[2] for url in (first["failureLog"], strict["failureLog"])} <= logged
    assert evidence.count("reconciliation reports") == 1
    assert evidence.count("metrics") > 0
    crash = Secret("the crash's exception", (b"InjectedFault: test fault: failpoint written",))
    assert {place for place, _, _ in evidence.leaks([crash])} >= {"pod logs"}  # the pods' logs were read
    leaks = evidence.tally(fault_tally, [key_secret, wrong_secret])
    assert not leaks, describe(leaks)


def secret(name: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": credential_values(key),
    }


def store(name: str, servers: Servers, secret_name: str, **spec: Any) -> dict[str, Any]:
    """A store on versitygw with its sources on Azurite, both reached with ``secret_name``."""
    credentials = {"secretRef": {"name": secret_name}}
    return {
        "apiVersion": API_VERSION,
        "kind": "IcechunkStore",
        "metadata": {"name": name},
        "spec": {
            "storage": {"url": f"s3://stores/{name}", **servers.storage(), "credentials": credentials},
            "virtualChunkContainers": [servers.azure_container(credentials=credentials)],
            **spec,
        },
    }


def batch(name: str, max_failed: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "IngestBatch",
        "metadata": {"name": name},
        "spec": {
            "store": "ismip6",
            "source": {"prefix": "az://archive/Projection-AIS/", "glob": "**/*.nc"},
            "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
            "virtualization": {"fixes": ["ismip6"]},
            "execution": {"workers": 1, "podRetries": 2},
            "failures": {"maxFailedFiles": max_failed},
        },
    }


def reconciliation() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Reconciliation",
        "metadata": {"name": "check"},
        "spec": {"store": "ismip6", "prefix": "az://archive/Projection-AIS/", "checkReferences": True},
    }


def repository_error(cluster: ClusterDriver, namespace: str) -> str | None:
    """The message of the locked-out store's RepositoryError Event, once there is one."""
    listed = cluster.plane.kubectl(
        *("get", "events", "-n", namespace, "-o", "json"),
        "--field-selector=involvedObject.name=locked-out,reason=RepositoryError",
    )
    items = json.loads(listed.stdout)["items"]
    return str(items[0]["message"]) if items else None


def collect_cluster(cluster: ClusterDriver, namespace: str, evidence: Evidence) -> list[dict[str, Any]]:
    """Every object of the namespace but its Secrets, one document each; the operator's log, the
    pods' logs and the metrics, by line. Returns the Jobs, Pods and DaskClusters."""
    children: list[dict[str, Any]] = []
    for place, kinds in LISTED.items():
        listed = cluster.plane.kubectl("get", kinds, "-n", namespace, "-o", "json")
        for item in json.loads(listed.stdout)["items"]:
            name = f"{item['kind']} {item['metadata']['name']}"
            evidence.add(place, name, json.dumps(item))
            if item["kind"] in ("Job", "Pod", "DaskCluster"):
                children.append(item)
    evidence.add_lines("operator log", "operator", cluster.operator.log())
    for run in cluster.kubelet.commit_runs(namespace):
        evidence.add_lines("pod logs", run.pod, run.log.read_text(errors="replace"))
    with urllib.request.urlopen(cluster.operator.metrics_url, timeout=10) as response:
        evidence.add_lines("metrics", "operator", response.read().decode())
    return children


def assert_secrets_by_reference(children: list[dict[str, Any]], key: str) -> None:
    """Every container that needs credentials (commit, reconcile and maintenance Jobs and their
    pods, Dask workers) names the Secret; none carries a value."""
    containers: dict[str, list[dict[str, Any]]] = {"Job": [], "Pod": [], "DaskCluster": []}
    for item in children:
        if item["kind"] == "Job":
            containers["Job"] += item["spec"]["template"]["spec"]["containers"]
        elif (
            item["kind"] == "Pod" and item["metadata"]["labels"].get(names.LABEL_COMPONENT) in RUN_COMPONENTS
        ):
            containers["Pod"] += item["spec"]["containers"]
        elif item["kind"] == "DaskCluster":
            containers["DaskCluster"] += item["spec"]["worker"]["spec"]["containers"]
    # first, strict, the reconciliation's and maintenance's Jobs; first's two pods, one for each other
    counts = {kind: len(found) for kind, found in containers.items()}
    assert counts["Job"] == 4 and counts["Pod"] == 5 and counts["DaskCluster"] >= 1, counts
    for container in (c for found in containers.values() for c in found):
        assert container["envFrom"] == [{"secretRef": {"name": "store-credentials"}}], container
        assert all(variable.get("value") != key for variable in container.get("env", [])), container
