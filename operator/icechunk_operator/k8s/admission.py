"""Whether a batch can run against its store: the checks the CLI and the commit pod make too.

The plan asks this of new, changed and retried batches and of the head of the queue, before
anything is created for them. A refused batch costs no Job and no DaskCluster; the message names
the field. Everything here is pure except reading the URLs inside a parquet index, which needs
pyarrow and maybe the store's credentials, and so runs in the probe's child process (the
operator keeps those imports out of its own memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.common import first_problem
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.k8s.kube import without_status
from icechunk_operator.k8s.views import Admission, is_ready

#: Reads the URLs inside a batch's index files: None when they are fine, else an Admission that
#: refuses the batch (a URL outside the containers) or keeps it waiting (the index unreadable now).
IndexChecker = Callable[[IngestBatch, IcechunkStore], Admission | None]


def check_batch(
    body: dict[str, Any], store_body: dict[str, Any] | None, check_index: IndexChecker | None = None
) -> Admission:
    """Validate a batch against its store, as the CLI and the commit pod would."""
    from icechunk_operator.engine.sources import check_sources

    try:
        batch = IngestBatch.model_validate(without_status(body))
    except ValidationError as error:
        return Admission(invalid=first_problem(error))
    name = batch.spec.store
    if store_body is None:
        return Admission(waiting=f"IcechunkStore {name} does not exist yet")
    try:
        store = IcechunkStore.model_validate(without_status(store_body))
    except ValidationError as error:
        return Admission(waiting=f"IcechunkStore {name}: {first_problem(error)}")
    try:
        check_sources(batch.spec.source, store.spec)
    except ValueError as error:  # Refused, and the models' own checks of URLs
        return Admission(invalid=str(error))
    if store_body["metadata"].get("deletionTimestamp") is not None:
        return Admission(waiting=f"IcechunkStore {name} is being deleted")
    if not is_ready(store_body):
        return Admission(waiting=f"IcechunkStore {name} is not Ready")
    uses_index = batch.spec.source.index is not None or batch.spec.source.remove_index is not None
    if uses_index and check_index is not None and (problem := check_index(batch, store)) is not None:
        return problem
    return Admission()
