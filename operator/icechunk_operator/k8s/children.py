"""The objects an IngestBatch owns: its commit Job and its DaskCluster (pure manifest builders).

Both carry an owner reference to the batch, so deleting the batch lets the garbage collector
remove them, and the labels the operator selects on. Pods run as non-root, with no privilege
escalation, a read-only root filesystem and every capability dropped; credentials reach them only
as references to Secrets (``envFrom``), never as values.
"""

from __future__ import annotations

from typing import Any

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.common import ResourceModel
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.exiting import ExitCode
from icechunk_operator.k8s import names
from icechunk_operator.k8s.settings import OperatorSettings

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}
SCRATCH_VOLUME = {"name": "scratch", "emptyDir": {}}
SCRATCH_MOUNT = {"name": "scratch", "mountPath": "/tmp"}
SCRATCH_ENV = [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]


def owner_reference(owner: ResourceModel) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(batch: IngestBatch, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "icechunk-operator",
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_COMPONENT: component,
        names.LABEL_STORE: batch.spec.store,
        names.LABEL_BATCH: batch.metadata.name,
    }


def secret_env(secret_names: list[str]) -> list[dict[str, Any]]:
    return [{"secretRef": {"name": name}} for name in dict.fromkeys(secret_names)]


def source_secrets(store: IcechunkStore) -> list[str]:
    """Secrets that grant read access to the store's source containers (workers need these)."""
    return [
        c.credentials.secret_ref.name for c in store.spec.virtual_chunk_containers if c.credentials.secret_ref
    ]


def store_secrets(store: IcechunkStore) -> list[str]:
    """Secrets for the repository itself and its sources (the commit pod needs both)."""
    own = (
        [store.spec.storage.credentials.secret_ref.name] if store.spec.storage.credentials.secret_ref else []
    )
    return own + source_secrets(store)


def commit_job(
    batch: IngestBatch, store: IcechunkStore, settings: OperatorSettings, attempt: int = 0
) -> dict[str, Any]:
    """The single writer of this batch's ``attempt``: ``icechunk-operator commit`` against the
    batch's Dask cluster. Exit 1 (beyond tolerance) and 2 (refused) fail the Job at once; a crash
    (any other exit) is retried ``podRetries`` times, each pod resuming from the last commit."""
    namespace = batch.metadata.namespace or "default"
    execution = batch.spec.execution
    container: dict[str, Any] = {
        "name": "commit",
        "command": ["icechunk-operator", "commit", "--batch", f"{namespace}/{batch.metadata.name}"],
        "env": [
            {"name": names.ENV_SCHEDULER, "value": _scheduler_for(batch, namespace)},
            {"name": names.ENV_WORKERS, "value": str(execution.workers)},
            {"name": names.ENV_SCHEDULER_WAIT, "value": str(settings.scheduler_wait_seconds)},
            {"name": names.ENV_BATCH_UID, "value": batch.metadata.uid or ""},
        ],
        "resources": {
            "requests": {"cpu": execution.commit_cpu, "memory": execution.commit_memory},
            "limits": {"memory": execution.commit_memory},
        },
    }
    job = program_job(
        batch,
        names.commit_job_name(batch.metadata.name, attempt),
        child_labels(batch, "commit"),
        container,
        store,
        settings,
        backoff_limit=execution.pod_retries,
        fail_on_exit=[ExitCode.BATCH_FAILED, ExitCode.REFUSED],
    )
    job["spec"]["activeDeadlineSeconds"] = execution.deadline_seconds
    return job


def program_job(
    owner: ResourceModel,
    name: str,
    labels: dict[str, str],
    container: dict[str, Any],
    store: IcechunkStore,
    settings: OperatorSettings,
    *,
    backoff_limit: int,
    fail_on_exit: list[int],
) -> dict[str, Any]:
    """A Job that runs one ``icechunk-operator`` command from the image, owned by ``owner``.

    It is what commit and reconcile pods share: the image, the store's Secrets by reference, a
    non-root pod with a scratch volume, the commit service account. An exit code in
    ``fail_on_exit`` fails the Job at once (retrying cannot help); any other failure is retried.
    """
    container = {
        **container,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": [*container.get("env", []), *SCRATCH_ENV],
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [SCRATCH_MOUNT],
    }
    if secrets := store_secrets(store):
        container["envFrom"] = secret_env(secrets)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.metadata.namespace or "default",
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": container["name"],
                            "operator": "In",
                            "values": [int(code) for code in fail_on_exit],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.commit_service_account,
                    "automountServiceAccountToken": True,
                    "securityContext": POD_SECURITY_CONTEXT,
                    "containers": [container],
                    "volumes": [SCRATCH_VOLUME],
                },
            },
        },
    }


def run_job(
    owner: ResourceModel,
    job_name: str,
    component: str,
    command: list[str],
    resources: dict[str, Any],
    store: IcechunkStore,
    settings: OperatorSettings,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Job of one reconcile or maintenance run: labelled with its store (so the queue sees
    it), retried twice, failed at once when the pod refuses the spec (exit 2)."""
    labels = {
        "app.kubernetes.io/name": "icechunk-operator",
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_COMPONENT: component,
        names.LABEL_STORE: store.metadata.name,
        **(extra_labels or {}),
    }
    container = {"name": component, "command": command, "resources": resources}
    return program_job(
        owner,
        job_name,
        labels,
        container,
        store,
        settings,
        backoff_limit=2,
        fail_on_exit=[ExitCode.REFUSED],
    )


def _scheduler_for(batch: IngestBatch, namespace: str) -> str:
    if batch.spec.execution.scheduler:
        return batch.spec.execution.scheduler
    return names.scheduler_address(names.dask_cluster_name(batch.metadata.name), namespace)


def needs_dask_cluster(batch: IngestBatch) -> bool:
    """A batch that names an existing scheduler brings its own workers."""
    return batch.spec.execution.scheduler is None


def dask_cluster(batch: IngestBatch, store: IcechunkStore, settings: OperatorSettings) -> dict[str, Any]:
    """The batch's Dask workers, as a DaskCluster resource for the Dask operator of dask-kubernetes.

    The layout is the one ``dask_kubernetes.operator.make_cluster_spec`` builds (a unit test keeps
    them the same); it is written out here so the operator process need not import Dask, whose
    modules would add a fifth to its memory.
    """
    execution = batch.spec.execution
    name = names.dask_cluster_name(batch.metadata.name)
    secrets = secret_env(source_secrets(store))

    def container(role: str, args: list[str], ports: list[dict[str, Any]], resources: dict[str, Any]) -> Any:
        spec: dict[str, Any] = {
            "name": role,
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "args": args,
            "env": list(SCRATCH_ENV),
            "resources": resources,
            "ports": ports,
            "securityContext": CONTAINER_SECURITY_CONTEXT,
            "volumeMounts": [SCRATCH_MOUNT],
        }
        if role == "worker" and secrets:
            spec["envFrom"] = secrets
        return spec

    def pod(containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "serviceAccountName": settings.worker_service_account,
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "volumes": [SCRATCH_VOLUME],
            "containers": containers,
            **extra,
        }

    # `dask worker` / `dask scheduler`: the locked distributed installs only the `dask` command, not
    # the dask-worker and dask-scheduler scripts that dask-kubernetes' own spec still names.
    worker = container(
        "worker",
        [
            *("dask", "worker", "--name", "$(DASK_WORKER_NAME)"),
            *("--dashboard", "--dashboard-address", "8788"),
            *("--nthreads", str(execution.threads_per_worker), "--memory-limit", execution.worker_memory),
        ],
        [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        {
            "requests": {"cpu": execution.worker_cpu, "memory": execution.worker_memory},
            "limits": {"memory": execution.worker_memory},
        },
    )
    scheduler = container(
        "scheduler",
        ["dask", "scheduler", "--host", "0.0.0.0"],
        [
            {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
        ],
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    )
    health = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    scheduler["readinessProbe"] = {
        **health,
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 300,
    }
    scheduler["livenessProbe"] = {**health, "initialDelaySeconds": 15, "periodSeconds": 20}
    return {
        "apiVersion": f"{names.DASK_GROUP}/{names.DASK_VERSION}",
        "kind": "DaskCluster",
        "metadata": {
            "name": name,
            "namespace": batch.metadata.namespace or "default",
            "labels": child_labels(batch, "dask"),
            "ownerReferences": [owner_reference(batch)],
        },
        "spec": {
            "idleTimeout": 0,
            "worker": {
                "replicas": execution.workers,
                "spec": pod(
                    [worker],
                    nodeSelector=settings.worker_node_selector,
                    tolerations=settings.worker_tolerations,
                ),
            },
            "scheduler": {
                "spec": pod([scheduler]),
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                        {
                            "name": "http-dashboard",
                            "protocol": "TCP",
                            "port": 8787,
                            "targetPort": "http-dashboard",
                        },
                    ],
                },
            },
        },
    }
