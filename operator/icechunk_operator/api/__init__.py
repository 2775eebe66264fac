"""The resource models: the single source of truth for CRDs, the CLI's input and status."""

from icechunk_operator.api.batch import IngestBatch, IngestBatchSpec, IngestBatchStatus
from icechunk_operator.api.common import API_GROUP, API_VERSION, GROUP_VERSION, Condition
from icechunk_operator.api.reconciliation import Reconciliation
from icechunk_operator.api.schedule import IngestSchedule
from icechunk_operator.api.store import IcechunkStore, IcechunkStoreSpec

RESOURCE_KINDS = (IcechunkStore, IngestBatch, Reconciliation, IngestSchedule)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "RESOURCE_KINDS",
    "Condition",
    "IcechunkStore",
    "IcechunkStoreSpec",
    "IngestBatch",
    "IngestBatchSpec",
    "IngestBatchStatus",
    "IngestSchedule",
    "Reconciliation",
]
