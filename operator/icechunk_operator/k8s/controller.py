"""The operator's actions: validate batches, run each store's queue, keep store status true.

Kopf handlers (``handlers.py``) call into one :class:`Controller`. Decisions come from pure
functions (``queue.plan_queue``, ``conditions``); this module reads what they need, and carries
them out through :class:`KubeApi`. Every action re-reads the object it changes and is safe to
repeat, so a restarted operator or a duplicated event never does anything twice. Nothing here
holds a secret longer than one store probe, and no status or log line carries one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.common import first_problem
from icechunk_operator.api.store import DeletionPolicy, IcechunkStore, MaintenanceResult
from icechunk_operator.k8s import children, names
from icechunk_operator.k8s.conditions import batch_phase_conditions, now, set_condition
from icechunk_operator.k8s.kube import KubeApi, map_patch
from icechunk_operator.k8s.maintenance import COMPONENT as MAINTENANCE_COMPONENT
from icechunk_operator.k8s.maintenance import (
    due_maintenance,
    failed_run,
    maintenance_job,
    started_status,
)
from icechunk_operator.k8s.metrics import OperatorMetrics
from icechunk_operator.k8s.queue import BatchView, JobOutcome, JobView, plan_queue
from icechunk_operator.k8s.schedules import jobs_to_prune, schedule_time
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.store_probe import ProbeError, run_in_child

log = logging.getLogger("icechunk_operator.controller")

#: Posts a Kubernetes Event: (object body, type "Normal"/"Warning", reason, message).
EventPoster = Callable[[dict[str, Any], str, str, str], None]


def job_view(job: dict[str, Any]) -> JobView:
    """What the queue needs of a Job: whose it is and whether it ended."""
    metadata = job.get("metadata", {})
    owners = [o for o in metadata.get("ownerReferences") or [] if o.get("kind") == "IngestBatch"]
    outcome, reason, message = JobOutcome.RUNNING, "", ""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            outcome, reason, message = JobOutcome.COMPLETE, condition.get("reason", ""), ""
        elif condition.get("type") == "Failed":
            outcome = JobOutcome.FAILED
            reason, message = condition.get("reason", ""), condition.get("message", "")
    labels = metadata.get("labels") or {}
    return JobView(
        name=metadata.get("name", ""),
        batch=labels.get(names.LABEL_BATCH, ""),
        owner_uid=owners[0]["uid"] if owners else None,
        outcome=outcome,
        reason=reason,
        message=message,
        component=labels.get(names.LABEL_COMPONENT, ""),
    )


def batch_view(body: dict[str, Any]) -> BatchView:
    metadata, status = body.get("metadata", {}), body.get("status") or {}
    queued: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Queued"), {}
    )
    return BatchView(
        name=metadata["name"],
        uid=metadata.get("uid", ""),
        created=metadata.get("creationTimestamp", ""),
        phase=status.get("phase"),
        waiting_for_store=queued.get("reason") == "WaitingForStore",
        queue_position=status.get("queuePosition"),
        files_done=int((status.get("files") or {}).get("done", 0)),
        files_failed=int((status.get("files") or {}).get("failed", 0)),
        files_skipped=int((status.get("files") or {}).get("skipped", 0)),
    )


@dataclass
class BatchCheck:
    """A batch read against its store: the models, or why it cannot run (now or ever)."""

    batch: IngestBatch | None = None
    store: IcechunkStore | None = None
    invalid: str | None = None  # never runnable: the batch ends Failed
    waiting: str | None = None  # not runnable yet: the batch stays Queued


class Controller:
    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        post_event: EventPoster,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.post_event = post_event
        self.metrics = metrics
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.batch_index: Any = {}  # Kopf's batches_by_store index, once a handler has seen it
        self._probe_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._probed: dict[tuple[str, str], tuple[float, int | None, bool]] = {}  # when, generation, ok

    # Batches -------------------------------------------------------------------------------
    def check_batch(self, body: dict[str, Any]) -> BatchCheck:
        """Validate a batch against its store, as the CLI and the commit pod would."""
        from icechunk_operator.engine.sources import check_sources
        from icechunk_operator.engine.templates import GroupPathError
        from icechunk_operator.engine.urls import SourceOutsideContainersError

        try:
            batch = IngestBatch.model_validate(_spec_only(body))
        except ValidationError as error:
            return BatchCheck(invalid=first_problem(error))
        namespace = batch.metadata.namespace or "default"
        store_body = self.api.get(names.STORES, namespace, batch.spec.store)
        if store_body is None:
            return BatchCheck(batch=batch, waiting=f"IcechunkStore {batch.spec.store} does not exist yet")
        try:
            store = IcechunkStore.model_validate(_spec_only(store_body))
        except ValidationError as error:
            problem = first_problem(error)
            return BatchCheck(batch=batch, waiting=f"IcechunkStore {batch.spec.store}: {problem}")
        try:
            check_sources(batch.spec.source, store.spec)
        except (SourceOutsideContainersError, GroupPathError, ValueError) as error:
            return BatchCheck(batch=batch, store=store, invalid=str(error))
        if not _is_ready(store_body):
            return BatchCheck(
                batch=batch, store=store, waiting=f"IcechunkStore {batch.spec.store} is not Ready"
            )
        return BatchCheck(batch=batch, store=store)

    def set_batch_phase(
        self, body: dict[str, Any], phase: str, reason: str, message: str, **fields: Any
    ) -> bool:
        """Move a batch to ``phase``; False (and nothing written) when it is already there."""
        status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        conditions = batch_phase_conditions(
            status.get("conditions") or [], phase, reason, message, generation
        )
        if (
            status.get("phase") == phase
            and conditions == (status.get("conditions") or [])
            and all(status.get(k) == v for k, v in fields.items())
        ):
            return False
        patch = {"phase": phase, "conditions": conditions, "observedGeneration": generation, **fields}
        if phase != "Queued":
            patch["queuePosition"] = None
        self.api.patch_status(names.BATCHES, body["metadata"]["namespace"], body["metadata"]["name"], patch)
        return True

    async def admit_batch(self, body: dict[str, Any]) -> str | None:
        """Check a new or changed batch; returns its store when it belongs in a queue."""
        status = body.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "Running"):
            return _store_of(body)
        view = batch_view(body)
        if (
            status.get("phase") == "Queued"
            and status.get("observedGeneration") == body["metadata"].get("generation")
            and not view.waiting_for_store
        ):
            return _store_of(body)  # admitted already; only its status moved (queue position)
        check = await asyncio.to_thread(self.check_batch, body)
        if check.invalid is not None:
            if await asyncio.to_thread(self.set_batch_phase, body, "Failed", "InvalidSpec", check.invalid):
                self.post_event(body, "Warning", "InvalidSpec", check.invalid)
            return None
        reason, message = (
            ("WaitingForStore", check.waiting) if check.waiting else ("Submitted", "Waiting in queue")
        )
        if await asyncio.to_thread(self.set_batch_phase, body, "Queued", reason, message or ""):
            self.post_event(body, "Normal", reason, message or "")
        return _store_of(body)

    # The queue of one store ------------------------------------------------------------------
    async def reconcile_queue(self, namespace: str, store: str, batches: Iterable[BatchView]) -> None:
        """Finish ended batches, adopt running ones, start the next batch or the store's due
        maintenance: one store at a time."""
        async with self._locks[(namespace, store)]:
            store_body = await asyncio.to_thread(self.api.get, names.STORES, namespace, store)
            store_jobs = await asyncio.to_thread(self.api.store_jobs, namespace, store)
            jobs = [job_view(j) for j in store_jobs]
            due = due_maintenance(store_body, datetime.now(UTC)) if store_body is not None else None
            decision = plan_queue(
                list(batches),
                jobs,
                store_ready=store_body is not None and _is_ready(store_body),
                maintenance_due=due is not None,
            )
            finished_any = False
            for batch, job in decision.finish:
                finished_any |= await asyncio.to_thread(self._finish, namespace, batch, job)
            for batch, job in decision.adopt:
                await asyncio.to_thread(self._adopt, namespace, batch, job)
            for batch in decision.lost:
                await asyncio.to_thread(self._lost, namespace, batch)
            if decision.start is not None:
                await asyncio.to_thread(self._start, namespace, decision.start)
            if decision.maintain and store_body is not None and due is not None:
                await asyncio.to_thread(self._start_maintenance, store_body, due)
            if store_body is not None and (failed := failed_run(store_body, store_jobs)):
                await asyncio.to_thread(self._maintenance_failed, store_body, *failed)
            for name, position in decision.positions.items():
                await asyncio.to_thread(self._set_position, namespace, name, position)
        if finished_any and store_body is not None:
            await self.refresh_store(store_body, force=True)

    def _fresh(self, namespace: str, view: BatchView) -> dict[str, Any] | None:
        body = self.api.get(names.BATCHES, namespace, view.name)
        if body is None or body["metadata"].get("uid") != view.uid:
            return None
        return body

    def _start(self, namespace: str, view: BatchView) -> None:
        body = self._fresh(namespace, view)
        if body is None or (body.get("status") or {}).get("phase") not in (None, "Queued"):
            return
        check = self.check_batch(body)
        if check.invalid is not None:
            if self.set_batch_phase(body, "Failed", "InvalidSpec", check.invalid):
                self.post_event(body, "Warning", "InvalidSpec", check.invalid)
            return
        if check.waiting is not None or check.batch is None or check.store is None:
            return
        if self._writer_running(namespace, check.batch.spec.store, but=view.name):
            return
        batch, store = check.batch, check.store
        cluster_name = None
        if children.needs_dask_cluster(batch):
            cluster = children.dask_cluster(batch, store, self.settings)
            self.api.create_dask_cluster(cluster)
            cluster_name = cluster["metadata"]["name"]
        job = self.api.create_job(children.commit_job(batch, store, self.settings))
        job_name = job["metadata"]["name"]
        message = f"commit Job {job_name} started" + (
            f" with DaskCluster {cluster_name}" if cluster_name else ""
        )
        self.set_batch_phase(
            body,
            "Running",
            "Started",
            message,
            startTime=now(),
            commitJob=job_name,
            daskCluster=cluster_name,
        )
        self.post_event(body, "Normal", "Started", message)
        log.info("batch %s/%s: %s", namespace, view.name, message)

    def _writer_running(self, namespace: str, store: str, but: str | None = None) -> bool:
        """Whether a writer Job (other than batch ``but``'s) holds the store. The queue was planned
        from watch caches; the API server has the final word before a new writer starts."""
        jobs = [job_view(j) for j in self.api.store_jobs(namespace, store)]
        return any(
            j.outcome == JobOutcome.RUNNING and j.writes and (but is None or j.batch != but) for j in jobs
        )

    def _adopt(self, namespace: str, view: BatchView, job: JobView) -> None:
        """A Job runs for a batch not marked Running (the operator stopped in between)."""
        body = self._fresh(namespace, view)
        if body is None or (body.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
            return
        self.set_batch_phase(
            body, "Running", "Started", f"commit Job {job.name} running", commitJob=job.name, startTime=now()
        )

    def _lost(self, namespace: str, view: BatchView) -> None:
        """Running, yet no Job: confirm with the API server before calling it failed."""
        body = self._fresh(namespace, view)
        if body is None or (body.get("status") or {}).get("phase") != "Running":
            return
        jobs = [job_view(j) for j in self.api.store_jobs(namespace, _store_of(body))]
        if any(j.batch == view.name and j.owner_uid == view.uid for j in jobs):
            return
        message = "the commit Job disappeared before the batch finished; re-apply the batch to resume"
        if self.set_batch_phase(body, "Failed", "CommitJobLost", message, completionTime=now()):
            self.post_event(body, "Warning", "CommitJobLost", message)
        self._teardown(namespace, body)

    def _finish(self, namespace: str, view: BatchView, job: JobView) -> bool:
        body = self._fresh(namespace, view)
        if body is None or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return False
        files = (body.get("status") or {}).get("files") or {}
        counts = (
            f"{files.get('done', 0)} ingested, {files.get('skipped', 0)} skipped, "
            f"{files.get('failed', 0)} failed of {files.get('total', 0)}"
        )
        if job.outcome == JobOutcome.COMPLETE:
            phase, reason, message = "Succeeded", "Completed", counts
        else:
            phase, reason = "Failed", job.reason or "JobFailed"
            message = f"{job.message or 'commit Job failed'}; {counts}"
        completed = now()
        self.set_batch_phase(body, phase, reason, message, completionTime=completed)
        self._observe(body, completed)
        self._teardown(namespace, body)
        self.post_event(body, "Normal" if phase == "Succeeded" else "Warning", reason, message)
        log.info("batch %s/%s: %s (%s)", namespace, view.name, phase, message)
        return True

    def _observe(self, body: dict[str, Any], completed: str) -> None:
        if self.metrics is None:
            return
        status = body.get("status") or {}
        if status.get("meanCommitSeconds") is not None:
            self.metrics.commit_seconds.observe(float(status["meanCommitSeconds"]))
        if status.get("startTime"):
            started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
            finished = datetime.fromisoformat(completed.replace("Z", "+00:00"))
            self.metrics.batch_seconds.observe((finished - started).total_seconds())

    def _teardown(self, namespace: str, body: dict[str, Any]) -> None:
        cluster = (body.get("status") or {}).get("daskCluster") or names.dask_cluster_name(
            body["metadata"]["name"]
        )
        if self.api.delete_dask_cluster(namespace, cluster):
            self.post_event(body, "Normal", "DaskClusterDeleted", f"DaskCluster {cluster} deleted")

    def _set_position(self, namespace: str, name: str, position: int) -> None:
        body = self.api.get(names.BATCHES, namespace, name)
        if body is None:
            return
        status = body.get("status") or {}
        if status.get("phase") not in (None, "Queued") or status.get("queuePosition") == position:
            return
        self.api.patch_status(names.BATCHES, namespace, name, {"queuePosition": position})

    # Store maintenance -----------------------------------------------------------------------
    def _start_maintenance(self, store_body: dict[str, Any], run: str) -> None:
        """Start the due run's Job (the store's queue is held for it) and prune old runs."""
        metadata = store_body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            store = IcechunkStore.model_validate(_spec_only(store_body))
        except ValidationError:
            return  # the store's probe reports it, and a store that is not Ready holds no runs
        if store.spec.maintenance is None or self._writer_running(namespace, name):
            return
        manifest = maintenance_job(store, self.settings, run)
        job_name = manifest["metadata"]["name"]
        # Status first: a pod that finishes at once must find its run marked started, or this
        # patch would overwrite what it reported.
        started = started_status(store_body, run, job_name, schedule_time(run))
        self.api.patch_status(names.STORES, namespace, name, {"maintenance": started})
        try:
            self.api.create_job(manifest)
        except Exception as error:  # the run is marked started: say why it never ran
            self._maintenance_failed(store_body, job_name, f"could not be created: {_safe_error(error)}")
            return
        self.post_event(store_body, "Normal", "MaintenanceStarted", f"Job {job_name}")
        log.info("store %s/%s: maintenance Job %s started", namespace, name, job_name)
        labels = {names.LABEL_COMPONENT: MAINTENANCE_COMPONENT, names.LABEL_STORE: name}
        history = self.api.labelled_jobs(namespace, labels)
        for old in jobs_to_prune(history, store.spec.maintenance.history_limit):
            if old != job_name:
                self.api.delete_job(namespace, old)

    def _maintenance_failed(self, store_body: dict[str, Any], job: str, message: str) -> None:
        metadata = store_body["metadata"]
        text = f"Job {job}: {message}"
        failed = {"result": MaintenanceResult.FAILED.value, "message": text}
        self.api.patch_status(names.STORES, metadata["namespace"], metadata["name"], {"maintenance": failed})
        self.post_event(store_body, "Warning", "MaintenanceFailed", text)

    # Stores --------------------------------------------------------------------------------
    def store_secret_env(self, store: IcechunkStore) -> dict[str, str]:
        namespace = store.metadata.namespace or "default"
        values: dict[str, str] = {}
        for secret in children.store_secrets(store):
            values.update(self.api.secret_values(namespace, secret))
        return values

    async def refresh_store(self, body: dict[str, Any], *, force: bool = False) -> None:
        """Open the store and write Ready, branches, last snapshot and counts into its status."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        async with self._probe_locks[key]:  # one probe per store at a time; later ones re-check
            generation = metadata.get("generation")
            probed_at, probed_generation, healthy = self._probed.get(key, (float("-inf"), None, False))
            interval = (
                self.settings.store_refresh_seconds
                if healthy
                else min(30.0, self.settings.store_refresh_seconds)
            )
            due = time.monotonic() - probed_at > interval
            if not (force or due or probed_generation != generation):
                return
            healthy = await self._probe_and_report(body)
            self._probed[key] = (time.monotonic(), generation, healthy)

    async def _probe_and_report(self, body: dict[str, Any]) -> bool:
        """Probe the store and write its status; False when the repository could not be opened."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        status = body.get("status") or {}
        generation = metadata.get("generation")
        conditions = status.get("conditions") or []
        try:
            store = IcechunkStore.model_validate(_spec_only(body))
            secrets = await asyncio.to_thread(self.store_secret_env, store)
            facts = await run_in_child("probe", store.spec, secrets)
        except Exception as error:  # any failure to open the store is reported, not raised
            if isinstance(error, ValidationError):
                message = f"invalid spec: {first_problem(error)}"
            else:
                message = str(error) if isinstance(error, ProbeError) else _safe_error(error)
            patch: dict[str, Any] = {
                "conditions": set_condition(
                    conditions, "Ready", False, "RepositoryError", message, generation
                ),
                "observedGeneration": generation,
            }
            await asyncio.to_thread(self.api.patch_status, names.STORES, key[0], key[1], patch)
            if _is_ready(body) or status.get("observedGeneration") != generation:
                self.post_event(body, "Warning", "RepositoryError", message)
            return False
        ready_message = f"{facts['datasets']} datasets from {facts['sources']} source files"
        patch = {
            "conditions": set_condition(
                conditions, "Ready", True, "RepositoryReady", ready_message, generation
            ),
            **facts,
            **{field: map_patch(status.get(field), facts[field]) for field in ("branches", "tags")},
            "observedGeneration": generation,
        }
        was_ready = _is_ready(body)
        await asyncio.to_thread(self.api.patch_status, names.STORES, key[0], key[1], patch)
        if not was_ready:
            self.post_event(body, "Normal", "RepositoryReady", ready_message)
        return True

    async def sync_store_finalizer(self, body: dict[str, Any]) -> bool:
        """Keep the delete-data finalizer exactly when the policy is Delete; True when deleted."""
        metadata = body["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        has = names.FINALIZER_DELETE_DATA in finalizers
        policy = (body.get("spec") or {}).get("deletionPolicy", DeletionPolicy.RETAIN.value)
        deleting = metadata.get("deletionTimestamp") is not None
        if deleting:
            if has:
                if policy == DeletionPolicy.DELETE.value:
                    store = IcechunkStore.model_validate(_spec_only(body))
                    secrets = await asyncio.to_thread(self.store_secret_env, store)
                    result = await run_in_child("delete", store.spec, secrets)
                    log.info(
                        "store %s/%s: deleted %d objects",
                        metadata["namespace"],
                        metadata["name"],
                        result["deleted"],
                    )
                finalizers.remove(names.FINALIZER_DELETE_DATA)
                await self._set_finalizers(metadata, finalizers)
            return True
        wanted = policy == DeletionPolicy.DELETE.value
        if wanted != has:
            finalizers = (
                [*finalizers, names.FINALIZER_DELETE_DATA]
                if wanted
                else [f for f in finalizers if f != names.FINALIZER_DELETE_DATA]
            )
            await self._set_finalizers(metadata, finalizers)
        return False

    async def _set_finalizers(self, metadata: dict[str, Any], finalizers: list[str]) -> None:
        """Replace the store's finalizers, if nobody changed the object since we read it."""
        await asyncio.to_thread(
            self.api.patch_metadata,
            names.STORES,
            metadata["namespace"],
            metadata["name"],
            {"finalizers": finalizers, "resourceVersion": metadata["resourceVersion"]},
        )


def _spec_only(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}


def _store_of(body: dict[str, Any]) -> str:
    return str((body.get("spec") or {}).get("store", ""))


def _is_ready(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _safe_error(error: BaseException) -> str:
    """An error message for status and events: its class and first line, nothing longer."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:512]
