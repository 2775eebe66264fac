"""The reconcile pod: run one Reconciliation with the engine and write its counts to status.

The pod reads the Reconciliation and its store from the API, runs
:func:`engine.reconcile.run_reconciliation`, and merge-patches the counts, the report's URL and
conditions. In Repair mode it also creates the repair IngestBatch (owned by the Reconciliation),
which then queues on its store like any other batch: this pod never writes to the repository.
Exit codes follow the commit pod's: 0 done, 2 refused (the Job fails at once), anything else is
retried by the Job.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.reconciliation import Reconciliation, ReconciliationMode, RunPhase
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.engine.reconcile import ReconcileReport
from icechunk_operator.exiting import ExitCode
from icechunk_operator.k8s import names
from icechunk_operator.k8s.children import owner_reference
from icechunk_operator.k8s.conditions import reconciliation_conditions
from icechunk_operator.k8s.kube import pod_connection, without_status

log = logging.getLogger("icechunk_operator.reconcile")


def report_status(report: ReconcileReport, generation: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        **report.counts(),
        "report": report.report_url,
        "lastRunTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }
    if report.broken is None:
        status["broken"] = None  # not checked this time: no stale count from an earlier run
    if report.integrity is None:
        status["undecodable"] = None
    return status


def run_reconcile_pod(reference: str) -> int:
    """Run the Reconciliation ``NAMESPACE/NAME``; returns the process exit code."""
    from icechunk_operator.engine.errors import Refused
    from icechunk_operator.engine.reconcile import repair_batch, run_reconciliation

    api, namespace, name, body = pod_connection(reference, names.RECONCILIATIONS)
    if body is None:
        return ExitCode.REFUSED
    generation = body["metadata"].get("generation")
    conditions = list((body.get("status") or {}).get("conditions", []))

    def refuse(message: str) -> int:
        refused = reconciliation_conditions(conditions, RunPhase.FAILED, "Refused", message, generation)
        api.patch_status(names.RECONCILIATIONS, namespace, name, {"conditions": refused})
        log.error("%s", message)
        return ExitCode.REFUSED

    try:
        reconciliation = Reconciliation.model_validate(without_status(body))
        spec = reconciliation.spec
        store = api.load(IcechunkStore, namespace, spec.store, "spec.store")
        template = None
        if spec.mode == ReconciliationMode.REPAIR and spec.batch_template is not None:
            template = api.load(IngestBatch, namespace, spec.batch_template, "spec.batchTemplate")
    except (ValidationError, LookupError) as error:
        return refuse(str(error)[:1024])

    try:
        report = run_reconciliation(store, reconciliation)
    except (Refused, FileNotFoundError) as error:
        return refuse(str(error)[:1024])
    status = report_status(report, generation)
    summary = ", ".join(f"{category} {count}" for category, count in report.counts().items())
    if template is not None:
        try:
            repair = repair_batch(store, reconciliation, template, report)
        except ValueError as error:
            return refuse(str(error)[:1024])
        if repair is not None:
            manifest = repair.to_api()
            manifest["metadata"]["ownerReferences"] = [owner_reference(reconciliation)]
            api.create(names.BATCHES, manifest)
            status["repairBatch"] = repair.metadata.name
            summary += f"; repair: IngestBatch {repair.metadata.name}"
    status["conditions"] = reconciliation_conditions(
        conditions, RunPhase.COMPLETE, "Reported", summary, generation
    )
    api.patch_status(names.RECONCILIATIONS, namespace, name, status)
    log.info("reconciliation %s/%s: %s; report %s", namespace, name, summary, report.report_url)
    return 0
