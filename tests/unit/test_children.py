"""The commit Job and the DaskCluster a batch owns: ownership, security, secrets by reference."""

from __future__ import annotations

import json
from typing import Any

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.exiting import ExitCode
from icechunk_operator.k8s import names
from icechunk_operator.k8s.children import commit_job, dask_cluster
from icechunk_operator.k8s.kube import map_patch
from icechunk_operator.k8s.settings import OperatorSettings


def resources(batch_name: str = "ismip6-ais") -> tuple[IngestBatch, IcechunkStore]:
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "ismip6", "namespace": "science"},
            "spec": {
                "storage": {
                    "url": "s3://stores/ismip6",
                    "credentials": {"secretRef": {"name": "store-keys"}},
                },
                "virtualChunkContainers": [
                    {"urlPrefix": "s3://ismip6/", "credentials": {"secretRef": {"name": "source-keys"}}}
                ],
            },
        }
    )
    batch = IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": batch_name, "namespace": "science", "uid": "uid-1"},
            "spec": {
                "store": "ismip6",
                "source": {"prefix": "s3://ismip6/AIS/"},
                "execution": {"workers": 4, "workerMemory": "3Gi", "commitMemory": "4Gi", "podRetries": 3},
            },
        }
    )
    return batch, store


def test_commit_job_is_owned_labelled_and_runs_the_commit_command() -> None:
    batch, store = resources()
    job = commit_job(batch, store, OperatorSettings(image="registry.example/ico:1"))
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "ismip6-ais-commit" and meta["namespace"] == "science"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "icechunkoperator.io/v1alpha1",
            "kind": "IngestBatch",
            "name": "ismip6-ais",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][names.LABEL_STORE] == "ismip6"
    assert spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 86400
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["icechunk-operator", "commit", "--batch", "science/ismip6-ais"]
    assert container["image"] == "registry.example/ico:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[names.ENV_SCHEDULER] == "tcp://ismip6-ais-dask-scheduler.science.svc:8786"
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert pod["restartPolicy"] == "Never"


def test_data_failures_fail_the_job_at_once_while_crashes_retry() -> None:
    batch, store = resources()
    rules = commit_job(batch, store, OperatorSettings())["spec"]["podFailurePolicy"]["rules"]
    fail_job = next(r for r in rules if r["action"] == "FailJob")
    assert fail_job["onExitCodes"]["values"] == [ExitCode.BATCH_FAILED, ExitCode.REFUSED] == [1, 2]
    assert ExitCode.CRASHED not in fail_job["onExitCodes"]["values"]  # an uncaught exception is retried
    assert (
        commit_job(batch, store, OperatorSettings())["spec"]["backoffLimit"]
        == batch.spec.execution.pod_retries
    )


def test_each_attempt_of_a_batch_has_a_job_of_its_own() -> None:
    batch, store = resources()
    first = commit_job(batch, store, OperatorSettings())["metadata"]["name"]
    second = commit_job(batch, store, OperatorSettings(), attempt=1)["metadata"]["name"]
    assert first == names.commit_job_name(batch.metadata.name) and second != first
    assert second == names.commit_job_name(batch.metadata.name, 1)


def test_pods_run_unprivileged_with_secrets_only_by_reference() -> None:
    batch, store = resources()
    settings = OperatorSettings()
    job_pod = commit_job(batch, store, settings)["spec"]["template"]["spec"]
    cluster = dask_cluster(batch, store, settings)
    pods = [job_pod, cluster["spec"]["worker"]["spec"], cluster["spec"]["scheduler"]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert all("valueFrom" not in e for e in container.get("env") or [])
    assert job_pod["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "store-keys"}},
        {"secretRef": {"name": "source-keys"}},
    ]
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert worker["envFrom"] == [{"secretRef": {"name": "source-keys"}}]  # workers never get store keys
    assert "envFrom" not in cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert "key" not in json.dumps(job_pod["containers"][0]["env"]).lower()


def test_dask_cluster_has_the_requested_workers_and_is_owned() -> None:
    batch, store = resources()
    cluster: dict[str, Any] = dask_cluster(batch, store, OperatorSettings())
    assert cluster["kind"] == "DaskCluster" and cluster["metadata"]["name"] == "ismip6-ais-dask"
    assert cluster["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] == 4
    container = worker["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "3Gi"
    assert container["args"][-4:] == ["--nthreads", "1", "--memory-limit", "3Gi"]
    assert worker["spec"]["automountServiceAccountToken"] is False


def test_long_batch_names_still_give_unique_dns_labels() -> None:
    first = names.commit_job_name("a" * 60 + "x")
    second = names.commit_job_name("a" * 60 + "y")
    assert first != second and len(first) <= 63 and first.endswith("-commit")
    cluster = names.dask_cluster_name("b" * 63)
    assert len(cluster + "-scheduler") <= 63


def test_settings_come_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "ICECHUNK_OPERATOR_IMAGE": "img:2",
            "ICECHUNK_OPERATOR_WORKER_NODE_SELECTOR": '{"pool": "dask"}',
            "ICECHUNK_OPERATOR_QUEUE_INTERVAL_SECONDS": "2",
        }
    )
    assert (settings.image, settings.worker_node_selector, settings.queue_interval_seconds) == (
        "img:2",
        {"pool": "dask"},
        2.0,
    )


def test_operator_timers_put_no_finalizer_on_stores_or_reconciliations() -> None:
    import kopf

    from icechunk_operator.k8s import handlers

    ours = (handlers.store_tick, handlers.reconciliation_tick)
    timers = [h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.fn in ours]
    assert len(timers) == 2 and all(timer.requires_finalizer is False for timer in timers)


def test_dask_cluster_keeps_the_layout_of_dask_kubernetes() -> None:
    """Our DaskCluster is make_cluster_spec's, plus security, secrets and worker options."""
    from dask_kubernetes.operator import make_cluster_spec

    batch, store = resources()
    ours = dask_cluster(batch, store, OperatorSettings(image="img:1"))
    theirs = make_cluster_spec(name=ours["metadata"]["name"], image="img:1", n_workers=4)

    def shape(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: shape(value) for key, value in node.items() if key not in ("resources", "env")}
        if isinstance(node, list):
            return [shape(item) for item in node]
        return node

    ours_shape, theirs_shape = shape(ours), shape(theirs)
    assert (
        ours_shape["apiVersion"] == theirs_shape["apiVersion"] and ours_shape["kind"] == theirs_shape["kind"]
    )
    assert ours_shape["spec"]["scheduler"]["service"] == theirs_shape["spec"]["scheduler"]["service"]
    for role in ("scheduler", "worker"):
        mine = ours_shape["spec"][role]["spec"]["containers"][0]
        base = theirs_shape["spec"][role]["spec"]["containers"][0]
        for key, value in base.items():
            if key == "args":
                # The same command through the `dask` CLI (dask-worker -> dask worker): the
                # locked distributed no longer installs the scripts make_cluster_spec names.
                command = [*value[0].split("-", 1), *value[1:]]
                assert mine["args"][: len(command)] == command
            else:
                assert mine[key] == value, (role, key)
    assert ours["spec"]["worker"]["replicas"] == theirs["spec"]["worker"]["replicas"] == 4
    assert ours["spec"]["idleTimeout"] == theirs["spec"]["idleTimeout"]


def test_a_status_map_patch_nulls_the_keys_that_are_gone() -> None:
    old = {"main": "A", "staging-first": "B"}
    assert map_patch(old, {"main": "C"}) == {"main": "C", "staging-first": None}
    assert map_patch(None, {"main": "C"}) == {"main": "C"}
