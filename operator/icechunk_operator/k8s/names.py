"""Names, labels and API coordinates shared by the operator, the commit pod and the tests."""

from __future__ import annotations

import hashlib

from icechunk_operator.api.common import API_GROUP, API_VERSION

GROUP = API_GROUP
VERSION = API_VERSION
STORES = "icechunkstores"
BATCHES = "ingestbatches"
RECONCILIATIONS = "reconciliations"
SCHEDULES = "ingestschedules"

DASK_GROUP = "kubernetes.dask.org"
DASK_VERSION = "v1"
DASK_CLUSTERS = "daskclusters"

MANAGED_BY = "icechunk-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_STORE = f"{API_GROUP}/store"
LABEL_BATCH = f"{API_GROUP}/batch"
FINALIZER_DELETE_DATA = f"{API_GROUP}/delete-data"

#: Environment of the commit pod: where its Dask scheduler is and how many workers to expect.
ENV_SCHEDULER = "ICECHUNK_OPERATOR_DASK_SCHEDULER"
ENV_WORKERS = "ICECHUNK_OPERATOR_DASK_WORKERS"
ENV_SCHEDULER_WAIT = "ICECHUNK_OPERATOR_SCHEDULER_WAIT_SECONDS"
#: The uid of the batch a commit Job was made for: a pod never runs a newer batch of the same name.
ENV_BATCH_UID = "ICECHUNK_OPERATOR_BATCH_UID"


def child_name(owner: str, suffix: str, max_length: int = 63) -> str:
    """A DNS-label child name, ``<owner>-<suffix>``, hashed when too long to stay unique."""
    name = f"{owner}-{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"{owner[: max_length - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def commit_job_name(batch: str, attempt: int = 0) -> str:
    """The commit Job of a batch's ``attempt``: a retried batch gets a Job of its own, so that the
    Job of the failed attempt can never be mistaken for the new one."""
    return child_name(batch, "commit" if attempt == 0 else f"commit-r{attempt}")


def dask_cluster_name(batch: str) -> str:
    # The Dask operator names the scheduler service "<cluster>-scheduler"; keep room for it.
    return child_name(batch, "dask", max_length=50)


def scheduler_address(cluster: str, namespace: str) -> str:
    return f"tcp://{cluster}-scheduler.{namespace}.svc:8786"
