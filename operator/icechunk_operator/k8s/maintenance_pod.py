"""The maintenance pod: expire a store's old snapshots, garbage-collect, and say what was freed.

It runs while the store's queue is held for it (``k8s.maintenance``), so no batch of this
operator commits meanwhile; Icechunk's garbage collection also keeps every object newer than the
cut-off, so even a writer from outside the operator cannot lose the objects of its next commit.
Exit codes follow the commit pod's: 0 done, 2 refused (the Job fails at once), anything else
(the object store unreachable, the pod killed) is retried by the Job, and a retry is safe:
expiring and collecting again finds less to do.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.store import IcechunkStore, MaintenanceResult
from icechunk_operator.exiting import ExitCode
from icechunk_operator.k8s import names
from icechunk_operator.k8s.kube import pod_connection, without_status

log = logging.getLogger("icechunk_operator.maintenance")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_maintenance_pod(reference: str) -> int:
    """Maintain the IcechunkStore ``NAMESPACE/NAME``; returns the process exit code."""
    from icechunk_operator.engine.lifecycle import expire_and_collect, parse_duration
    from icechunk_operator.engine.storage import open_repository
    from icechunk_operator.k8s.store_probe import recent_snapshots

    api, namespace, name, body = pod_connection(reference, names.STORES)
    if body is None:
        return ExitCode.REFUSED

    def report(result: MaintenanceResult, message: str, facts: dict[str, Any], **status: Any) -> None:
        finished = {"result": result.value, "message": message, "lastRunTime": _stamp(datetime.now(UTC))}
        api.patch_status(names.STORES, namespace, name, {"maintenance": {**finished, **facts}, **status})

    try:
        store = IcechunkStore.model_validate(without_status(body))
        policy = store.spec.maintenance
        if policy is None:
            raise ValueError("spec.maintenance is not set")
        older_than = parse_duration(policy.expire_older_than) if policy.expire_older_than else None
    except (ValidationError, ValueError) as error:
        message = str(error)[:1024]
        report(MaintenanceResult.FAILED, message, {})
        log.error("%s", message)
        return ExitCode.REFUSED

    repo = open_repository(store.spec, create=False)
    outcome = expire_and_collect(repo, store.spec.branch, older_than=older_than, keep=policy.keep_snapshots)
    summary = (
        f"expired {outcome.expired} snapshots written before {_stamp(outcome.cutoff)}; deleted "
        f"{outcome.snapshots_deleted} snapshots, {outcome.manifests_deleted} manifests, "
        f"{outcome.chunks_deleted} chunks ({outcome.bytes_deleted} bytes)"
    )
    freed = {
        "cutoff": _stamp(outcome.cutoff),
        "expiredSnapshots": outcome.expired,
        "deletedSnapshots": outcome.snapshots_deleted,
        "deletedManifests": outcome.manifests_deleted,
        "deletedChunks": outcome.chunks_deleted,
        "deletedBytes": outcome.bytes_deleted,
    }
    recent = recent_snapshots(repo, store.spec.branch)
    report(MaintenanceResult.SUCCEEDED, summary, freed, recentSnapshots=recent)
    log.info("store %s/%s: %s", namespace, name, summary)
    return 0
