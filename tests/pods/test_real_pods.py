"""The chart on a real node: the operator, the Dask operator, the commit pod and the Dask scheduler
and workers all run the project's image in containers, and an ingest from S3 succeeds.

Nothing here is simulated: pods are scheduled, started by containerd and runc, reach the API server
and each other through Services that kube-proxy routes and CoreDNS names, and the S3 server on
the node's bridge. Run this tier alone with ``make test-k8s`` (with the fake-kubelet tier) or
``pytest -m pods``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xarray as xr
from tests.conftest import make_archive
from tests.e2e.conftest import wait_until
from tests.integration.readback import ledger_urls, open_group
from tests.pods.conftest import RealCluster, readme_commands
from tests.servers import S3_KEY, S3_SECRET, S3Server

from icechunk_operator.api import IcechunkStore
from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE

pytestmark = pytest.mark.slow

NAMESPACE = "science"  # the README's
SYSTEM = "icechunk-system"
IMAGE = "docker.io/library/icechunk-operator:0.1.0"


def kubectl_json(cluster: RealCluster, *args: str) -> Any:
    return json.loads(cluster.sh("kubectl " + " ".join(args) + " -o json").stdout)


def wait(check: Any, timeout: float, what: str, cluster: RealCluster) -> Any:
    """``wait_until`` once a second (each check runs kubectl), failing with the cluster's state."""
    try:
        return wait_until(check, timeout, what, poll=1)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{cluster.diagnostics(NAMESPACE)}") from None


@pytest.fixture(scope="module")
def charted(real_cluster: RealCluster) -> Iterator[RealCluster]:
    """The chart installed with the README's own "Install with Helm" commands."""
    real_cluster.sh(readme_commands("### Install with Helm"), timeout=600)
    yield real_cluster
    real_cluster.sh(f"helm uninstall icechunk -n {SYSTEM}", check=False)


def test_the_charts_pods_run_the_image_as_the_chart_says(charted: RealCluster) -> None:
    pods = kubectl_json(charted, "get pods -n", SYSTEM)["items"]
    names = sorted(p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods)
    assert names == ["dask-operator", "icechunk-operator"]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
        assert pod["status"]["containerStatuses"][0]["image"] == IMAGE
        assert_confined(charted, SYSTEM, pod["metadata"]["name"])


def assert_confined(cluster: RealCluster, namespace: str, pod: str) -> None:
    """Inside the running container: not root, no capabilities, and a write to / refused."""
    probe = (
        "id -u; grep CapEff /proc/self/status; "
        "touch /written-by-test 2>&1 && echo WROTE || true; touch /tmp/scratch && echo TMP-OK"
    )
    result = cluster.sh(f"kubectl exec -n {namespace} {pod} -- sh -c '{probe}'")
    lines = result.stdout.splitlines()
    assert lines[0] == "10001", result.stdout
    assert lines[1].split() == ["CapEff:", "0000000000000000"], result.stdout
    assert "Read-only file system" in lines[2] and "WROTE" not in result.stdout, result.stdout
    assert lines[3] == "TMP-OK", result.stdout  # the emptyDir the image's HOME and TMPDIR use


def failure_records(server: S3Server, status: dict[str, Any]) -> str:
    """The batch's failure log (JSON in the bucket beside the store), for a failing assertion."""
    bucket, _, key = str(status.get("failureLog", "")).removeprefix("s3://").partition("/")
    if not key:
        return f"no failure log in the status: {status}"
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return f"failure log {status['failureLog']}:\n{body[-4000:]}"


def upload(server: S3Server, bucket: str, files: dict[str, bytes]) -> None:
    client = server.client()
    client.create_bucket(Bucket=bucket)
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def test_an_ingest_from_s3_on_real_pods_survives_a_worker_deleted_mid_batch(
    charted: RealCluster, bridge_s3: S3Server, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_archive(tmp_path / "archive", institutions=2, models=6, experiments=2, variables=3)
    upload(
        bridge_s3,
        "archive",
        {f.path.relative_to(layout.root).as_posix(): f.path.read_bytes() for f in layout.files},
    )
    bridge_s3.client().create_bucket(Bucket="stores")
    good = [f for f in layout.files if f.defect == "none"]
    location = {
        "endpoint": bridge_s3.endpoint,
        "region": "us-east-1",
        "allowHttp": True,
        "forcePathStyle": True,
    }
    secret = {"secretRef": {"name": "s3-keys"}}
    store = {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": {"name": "ismip6"},
        "spec": {
            "storage": {"url": "s3://stores/ismip6", **location, "credentials": secret},
            "virtualChunkContainers": [{"urlPrefix": "s3://archive/", **location, "credentials": secret}],
        },
    }
    batch = {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IngestBatch",
        "metadata": {"name": "projection-ais"},
        "spec": {
            "store": "ismip6",
            "source": {"prefix": "s3://archive/Projection-AIS/"},
            "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
            "virtualization": {"fixes": ["ismip6"]},
            "execution": {
                "workers": 2,
                "workerCpu": "250m",
                "workerMemory": "1Gi",
                "commitCpu": "250m",
                "commitMemory": "1Gi",
            },
            "failures": {"maxFailedFiles": 100},
            "commit": {"everyGroups": 4},
        },
    }
    charted.sh(
        f"kubectl create secret generic s3-keys -n {NAMESPACE} "
        f"--from-literal=AWS_ACCESS_KEY_ID={S3_KEY} --from-literal=AWS_SECRET_ACCESS_KEY={S3_SECRET}"
    )
    documents = "\n---\n".join(json.dumps(d) for d in (store, batch))
    charted.sh(f"kubectl apply -n {NAMESPACE} -f - <<'EOF'\n{documents}\nEOF")
    charted.sh(f"kubectl wait -n {NAMESPACE} --for=condition=Ready icechunkstore/ismip6 --timeout=120s")

    def worker_pods() -> list[dict[str, Any]]:
        items = kubectl_json(charted, "get pods -n", NAMESPACE, "-l dask.org/component=worker")["items"]
        return [
            p
            for p in items
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    workers = wait(
        lambda: len(worker_pods()) == 2 and worker_pods(), 300, "two running Dask workers", charted
    )
    assert {p["status"]["containerStatuses"][0]["image"] for p in workers} == {IMAGE}
    assert_confined(charted, NAMESPACE, workers[0]["metadata"]["name"])
    # The commit pod reaches its scheduler by the Service's DNS name (CoreDNS, kube-proxy).
    job = kubectl_json(charted, "get job projection-ais-commit -n", NAMESPACE)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        env["ICECHUNK_OPERATOR_DASK_SCHEDULER"] == f"tcp://projection-ais-dask-scheduler.{NAMESPACE}.svc:8786"
    )

    def files_done() -> int:
        status = kubectl_json(charted, "get ingestbatch projection-ais -n", NAMESPACE).get("status", {})
        return int((status.get("files") or {}).get("done") or 0)

    # A worker deleted once the batch has made progress, before it has finished.
    wait(lambda: files_done() > 0, 300, "the batch's first progress", charted)
    victim = worker_pods()[0]["metadata"]["name"]
    then = kubectl_json(charted, "get ingestbatch projection-ais -n", NAMESPACE)["status"]
    print(f"deleting {victim} at {then['files']} ({then['phase']})")
    charted.sh(f"kubectl delete pod -n {NAMESPACE} {victim} --wait=false")
    replaced = wait(
        lambda: [
            p
            for p in worker_pods()
            if p["metadata"]["name"] != victim
            and p["metadata"]["name"] not in {w["metadata"]["name"] for w in workers}
        ],
        180,
        "a replacement worker",
        charted,
    )
    assert replaced

    waited = charted.sh(
        f"kubectl wait -n {NAMESPACE} --for=condition=Succeeded ingestbatch/projection-ais --timeout=600s",
        check=False,
        timeout=660,
    )
    assert waited.returncode == 0, waited.stderr + charted.diagnostics(NAMESPACE)
    status = kubectl_json(charted, "get ingestbatch projection-ais -n", NAMESPACE)["status"]
    assert then["phase"] == "Running" and then["files"]["done"] < len(good)  # mid-batch
    assert (status["files"]["done"], status["files"]["failed"]) == (len(good), 4), failure_records(
        bridge_s3, status
    )

    # Read back on the host, through the same S3 server: every good file once, values equal.
    for name, value in (("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET)):
        monkeypatch.setenv(name, value)
    model = IcechunkStore.model_validate(store)
    ledger = ledger_urls(model)
    assert sorted(ledger) == sorted(
        f"s3://archive/{f.path.relative_to(layout.root).as_posix()}" for f in good
    )
    for item in good[:: max(1, len(good) // 6)]:
        ds = open_group(model, item.group)
        with xr.open_dataset(item.path, decode_times=False) as source:
            np.testing.assert_array_equal(ds[item.variable].values, source[item.variable].values)
