"""Observing one store for the plan: the store, its Jobs and the batches that need a check.

Batches come from the operator's watch (Kopf's index), so a queue of a thousand batches costs no
list call; Jobs are listed from the API server at each pass, so the plan never starts a writer
from a stale cache. Batches that need an admission check (new, changed, retried, the head of the
queue) are read fresh and checked against the store here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from icechunk_operator.k8s import names
from icechunk_operator.k8s.admission import IndexChecker, check_batch
from icechunk_operator.k8s.kube import KubeApi
from icechunk_operator.k8s.maintenance import due_maintenance
from icechunk_operator.k8s.plan import Observed, admission_candidates
from icechunk_operator.k8s.views import BatchView, batch_view, job_view, store_view


def observe_store(
    api: KubeApi,
    namespace: str,
    store: str,
    batches: Iterable[BatchView],
    now: datetime,
    check_index: IndexChecker | None = None,
) -> tuple[Observed, dict[str, Any] | None]:
    """What the plan needs of ``store``, and the store's body (the actions that touch it use it)."""
    seen = {batch.uid: batch for batch in batches}
    store_body = api.get(names.STORES, namespace, store)
    jobs = tuple(job_view(job) for job in api.store_jobs(namespace, store))
    bodies: dict[str, dict[str, Any]] = {}
    for batch in admission_candidates(list(seen.values())):
        body = api.get(names.BATCHES, namespace, batch.name)
        if body is None or body["metadata"].get("uid") != batch.uid:
            continue  # deleted (or replaced) since the watch saw it
        bodies[batch.uid] = body
        seen[batch.uid] = batch_view(body)  # the watch may lag behind what a pass just wrote
    batches = tuple(seen.values())
    admissions = {  # only what still needs a check once the views are fresh
        batch.uid: check_batch(bodies[batch.uid], store_body, check_index)
        for batch in admission_candidates(batches)
        if batch.uid in bodies
    }
    store_seen = None if store_body is None else store_view(store_body, due_maintenance(store_body, now))
    return Observed(store_seen, batches, jobs, admissions), store_body
