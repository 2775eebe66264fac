"""Names, labels and API coordinates shared by the operator, the commit pod and the tests."""

from __future__ import annotations

import hashlib

from icechunk_operator.api.common import API_GROUP, API_VERSION

GROUP = API_GROUP
VERSION = API_VERSION
STORES = "icechunkstores"
BATCHES = "ingestbatches"
RECONCILIATIONS = "reconciliations"

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

#: Exit codes of the commit pod, which the Job's pod failure policy reads: a batch beyond its
#: failure tolerance (1) or refused as invalid (2) fails the Job at once; anything else (a crash,
#: an OOM kill) restarts the pod, which resumes from the last commit.
EXIT_BATCH_FAILED = 1
EXIT_INVALID_SPEC = 2


def child_name(owner: str, suffix: str, max_length: int = 63) -> str:
    """A DNS-label child name, ``<owner>-<suffix>``, hashed when too long to stay unique."""
    name = f"{owner}-{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"{owner[: max_length - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def commit_job_name(batch: str) -> str:
    return child_name(batch, "commit")


def dask_cluster_name(batch: str) -> str:
    # The Dask operator names the scheduler service "<cluster>-scheduler"; keep room for it.
    return child_name(batch, "dask", max_length=50)


def scheduler_address(cluster: str, namespace: str) -> str:
    return f"tcp://{cluster}-scheduler.{namespace}.svc:8786"
