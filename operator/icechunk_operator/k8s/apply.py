"""Carrying out the plan's actions against the API server, each one safe to repeat.

The plan was made from a watch cache and a list taken a moment ago; before it changes anything,
each action here re-reads the batch it is about and checks that it is still the same object (uid)
in the phase the plan saw, and a writer starts only under its store's writer Lease
(``writer_lock``). So a duplicated event, a second operator or a restart in between never starts a
second writer, finishes a batch twice or adopts another batch's Job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import BatchPhase, IngestBatch
from icechunk_operator.api.store import IcechunkStore, MaintenanceResult
from icechunk_operator.exiting import one_line_error
from icechunk_operator.failpoints import failpoint
from icechunk_operator.k8s import children, names
from icechunk_operator.k8s.conditions import batch_phase_conditions, now
from icechunk_operator.k8s.kube import ChildOwnedByAnother, KubeApi, without_status
from icechunk_operator.k8s.maintenance import COMPONENT as MAINTENANCE_COMPONENT
from icechunk_operator.k8s.maintenance import maintenance_job, started_status
from icechunk_operator.k8s.metrics import OperatorMetrics
from icechunk_operator.k8s.plan import (
    Action,
    Adopt,
    DeleteJob,
    Finish,
    Lost,
    MaintenanceFailed,
    Queue,
    Refuse,
    Requeue,
    SetPosition,
    Start,
    StartMaintenance,
    job_end,
    retry_hint,
)
from icechunk_operator.k8s.schedules import jobs_to_prune, schedule_time
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.views import (
    RETRY_ANNOTATION,
    BatchView,
    JobOutcome,
    Reason,
    batch_view,
    job_view,
)
from icechunk_operator.k8s.writer_lock import Hold, WriterLock

log = logging.getLogger("icechunk_operator.controller")

#: Posts a Kubernetes Event: (object body, type "Normal"/"Warning", reason, message).
EventPoster = Callable[[dict[str, Any], str, str, str], None]


class Applier:
    """Applies one store's actions; returns from :meth:`apply` whether a batch finished."""

    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        post_event: EventPoster,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api, self.settings, self.post_event, self.metrics = api, settings, post_event, metrics
        self.writer_lock = WriterLock(api)

    def apply(self, namespace: str, store_body: dict[str, Any] | None, actions: list[Action]) -> bool:
        """Apply each action; one that fails (the API server refusing a Job, a lost connection)
        is logged and said in an Event, and the others still run. The next pass tries again."""
        finished = False
        for action in actions:
            try:
                finished |= self._apply_one(namespace, store_body, action)
            except Exception as error:
                log.exception("namespace %s: %s failed", namespace, action)
                target = getattr(action, "batch", None)
                body = (
                    self.api.get(names.BATCHES, namespace, target.name) if target is not None else store_body
                )
                if body is not None:
                    message = (
                        f"{type(action).__name__} failed: {one_line_error(error)}; retried on the next pass"
                    )
                    self.post_event(body, "Warning", "ActionFailed", message)
        return finished

    def _apply_one(self, namespace: str, store_body: dict[str, Any] | None, action: Action) -> bool:
        """Whether a batch finished."""
        match action:
            case Finish():
                return self._finish(namespace, action)
            case Queue():
                self._queue(namespace, action)
            case Requeue():
                self._requeue(namespace, action)
            case Refuse():
                self._refuse(namespace, action)
            case Start():
                self._start(namespace, action.batch)
            case Adopt():
                self._adopt(namespace, action)
            case Lost():
                self._lost(namespace, action.batch)
            case SetPosition():
                self._set_position(namespace, action)
            case DeleteJob():
                self.api.delete_job(namespace, action.job, action.uid)
            case StartMaintenance() if store_body is not None:
                self._start_maintenance(store_body, action.run)
            case MaintenanceFailed() if store_body is not None:
                self._maintenance_failed(store_body, action.job, action.message)
        return False

    # Batches -------------------------------------------------------------------------------
    def _fresh(self, namespace: str, view: BatchView, *phases: BatchPhase | None) -> dict[str, Any] | None:
        """The batch as the API server has it now, if it is still this one (uid), at the attempt
        the plan saw, and in ``phases``."""
        body = self.api.get(names.BATCHES, namespace, view.name)
        if body is None or body["metadata"].get("uid") != view.uid:
            return None
        status = body.get("status") or {}
        if status.get("phase") not in phases or int(status.get("attempt") or 0) != view.attempt:
            return None
        return body

    def set_batch_phase(
        self, body: dict[str, Any], phase: BatchPhase, reason: Reason, why: str, **fields: Any
    ) -> bool:
        """Move a batch to ``phase`` (``why`` is its condition's message, ``fields`` other status
        fields); False, and nothing written, when it is there already."""
        status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        conditions = batch_phase_conditions(status.get("conditions") or [], phase, reason, why, generation)
        if (
            status.get("phase") == phase
            and conditions == (status.get("conditions") or [])
            and all(status.get(k) == v for k, v in fields.items())
        ):
            return False
        patch = {"phase": phase, "conditions": conditions, "observedGeneration": generation, **fields}
        if phase != BatchPhase.QUEUED:
            patch["queuePosition"] = None
        self.api.patch_status(names.BATCHES, body["metadata"]["namespace"], body["metadata"]["name"], patch)
        return True

    def _queue(self, namespace: str, action: Queue) -> None:
        body = self._fresh(namespace, action.batch, None, BatchPhase.QUEUED)
        if body is not None and self.set_batch_phase(body, BatchPhase.QUEUED, action.reason, action.message):
            failpoint("operator.queued")  # admitted to the store's queue, no Event yet
            self.post_event(body, "Normal", action.reason, action.message)

    def _refuse(self, namespace: str, action: Refuse) -> None:
        body = self._fresh(namespace, action.batch, None, BatchPhase.QUEUED, BatchPhase.FAILED)
        if body is None:
            return
        request = (body["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION)
        fields = {"lastRetryRequest": request} if request else {}
        if self.set_batch_phase(body, BatchPhase.FAILED, Reason.INVALID_SPEC, action.message, **fields):
            self.post_event(body, "Warning", Reason.INVALID_SPEC, action.message)

    def _requeue(self, namespace: str, action: Requeue) -> None:
        """The next attempt: a new Job name, the counts left for the pod to overwrite, and the
        retry request marked as acted on, so it re-queues once."""
        body = self._fresh(namespace, action.batch, BatchPhase.FAILED)
        if body is None or not ((fresh := batch_view(body)).retry_pending or fresh.spec_changed):
            return  # acted on already (the plan saw a stale view)
        status = body.get("status") or {}
        attempt = int(status.get("attempt") or 0) + 1
        request = (body["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION)
        message = f"attempt {attempt + 1} queued ({action.why}); it resumes from the last commit"
        self.set_batch_phase(
            body,
            BatchPhase.QUEUED,
            Reason.RETRY_REQUESTED,
            message,
            attempt=attempt,
            lastRetryRequest=request,
            completionTime=None,
            commitJob=None,
            message=None,
            stage=None,
            failureLog=None,
            meanCommitSeconds=None,
        )
        self.post_event(body, "Normal", Reason.RETRY_REQUESTED, message)
        log.info("batch %s/%s: %s", namespace, action.batch.name, message)

    def _start(self, namespace: str, view: BatchView) -> None:
        body = self._fresh(namespace, view, None, BatchPhase.QUEUED)
        if body is None:
            return
        batch = IngestBatch.model_validate(without_status(body))
        # Under the store's writer Lease, no other operator checks or creates between the two.
        with self.writer_lock.hold(namespace, batch.spec.store) as hold:
            if not hold.acquired or self._writer_running(namespace, view.name, body):
                return
            created = self._create_children(namespace, batch, body, hold)
        if created is None:
            return
        failpoint("operator.job-created")  # the Job exists, the batch is not Running yet
        job_name, cluster_name = created
        message = f"commit Job {job_name} started" + (
            f" with DaskCluster {cluster_name}" if cluster_name else ""
        )
        self.set_batch_phase(
            body,
            BatchPhase.RUNNING,
            Reason.STARTED,
            message,
            startTime=now(),
            commitJob=job_name,
            daskCluster=cluster_name,
        )
        failpoint("operator.started")  # Running, no Event yet
        self.post_event(body, "Normal", Reason.STARTED, message)
        log.info("batch %s/%s: %s", namespace, view.name, message)

    def _create_children(
        self, namespace: str, batch: IngestBatch, body: dict[str, Any], hold: Hold
    ) -> tuple[str, str | None] | None:
        """The batch's DaskCluster and commit Job: the Job's name and the cluster's, or None
        when the next pass must try again."""
        store_body = self.api.get(names.STORES, namespace, batch.spec.store)
        if store_body is None:
            return None
        store = IcechunkStore.model_validate(without_status(store_body))
        attempt = int((body.get("status") or {}).get("attempt") or 0)
        manifest = children.commit_job(batch, store, self.settings, attempt)
        # The workers first, then the Job: the Job's pod must never meet a namesake's scheduler.
        # Either may exist already (a pass that stopped half way); a deleted namesake's is
        # removed or waited for, and the next pass tries again.
        try:
            cluster_name = self._ensure_dask_cluster(batch, store)
            if hold.expiring():
                log.warning(
                    "batch %s/%s: the store's writer Lease ran late; retrying", namespace, batch.metadata.name
                )
                return None
            job = self.api.create_job(manifest)
        except ChildOwnedByAnother as error:  # the garbage collector removes it; the next pass retries
            log.info("batch %s/%s: waiting: %s", namespace, batch.metadata.name, error)
            return None
        return str(job["metadata"]["name"]), cluster_name

    def _ensure_dask_cluster(self, batch: IngestBatch, store: IcechunkStore) -> str | None:
        if not children.needs_dask_cluster(batch):
            return None
        cluster = children.dask_cluster(batch, store, self.settings)
        name = str(cluster["metadata"]["name"])
        try:
            self.api.create_dask_cluster(cluster)
        except ChildOwnedByAnother:
            # Left by a deleted batch of this name (orphaned, or not yet collected): no Job of
            # that batch runs, or this batch would not have started. Remove it; the next pass
            # creates this batch's own.
            self.api.delete_dask_cluster(batch.metadata.namespace or "default", name)
            raise
        return name

    def _writer_running(self, namespace: str, batch: str, body: dict[str, Any]) -> bool:
        """Whether a writer Job (other than this batch's) holds the store. The plan saw a list
        taken a moment ago; the API server has the final word before a new writer starts."""
        store = str((body.get("spec") or {}).get("store", ""))
        jobs = [job_view(j) for j in self.api.store_jobs(namespace, store)]
        uid = body["metadata"].get("uid")
        return any(
            j.outcome == JobOutcome.RUNNING and j.writes and not (j.batch == batch and j.owner_uid == uid)
            for j in jobs
        )

    def _adopt(self, namespace: str, action: Adopt) -> None:
        """Mark the batch Running, and make sure its workers exist (the operator may have stopped
        between creating the Job and the DaskCluster)."""
        body = self._fresh(namespace, action.batch, None, BatchPhase.QUEUED)
        if body is None:
            return
        batch = IngestBatch.model_validate(without_status(body))
        store_body = self.api.get(names.STORES, namespace, batch.spec.store)
        if store_body is not None:
            store = IcechunkStore.model_validate(without_status(store_body))
            try:
                self._ensure_dask_cluster(batch, store)
            except ChildOwnedByAnother as error:
                log.info("batch %s/%s: waiting: %s", namespace, action.batch.name, error)
                return
        self.set_batch_phase(
            body,
            BatchPhase.RUNNING,
            Reason.STARTED,
            f"commit Job {action.job.name} running",
            commitJob=action.job.name,
            startTime=now(),
        )
        log.info(
            "batch %s/%s: adopted its running commit Job %s", namespace, action.batch.name, action.job.name
        )

    def _lost(self, namespace: str, view: BatchView) -> None:
        """Running, yet no Job: confirm with the API server before calling it failed."""
        body = self._fresh(namespace, view, BatchPhase.RUNNING)
        if body is None:
            return
        store = str((body.get("spec") or {}).get("store", ""))
        attempt = int((body.get("status") or {}).get("attempt") or 0)
        jobs = [job_view(j) for j in self.api.store_jobs(namespace, store)]
        wanted = names.commit_job_name(view.name, attempt)
        if any(j.name == wanted and j.owner_uid == view.uid for j in jobs):
            return
        message = f"the commit Job disappeared before the batch finished; {retry_hint(view.name)}"
        self._teardown(namespace, body)  # first: once the batch is Failed, no pass looks at it again
        if self.set_batch_phase(
            body, BatchPhase.FAILED, Reason.COMMIT_JOB_LOST, message, completionTime=now()
        ):
            self.post_event(body, "Warning", Reason.COMMIT_JOB_LOST, message)

    def _finish(self, namespace: str, action: Finish) -> bool:
        body = self._fresh(namespace, action.batch, None, BatchPhase.QUEUED, BatchPhase.RUNNING)
        if body is None:
            return False
        # The counts as the pod last wrote them, not as the (maybe older) watch saw them.
        phase, reason, message = job_end(batch_view(body), action.job)
        failpoint("operator.job-finished")  # the Job ended, the batch does not say so yet
        self._teardown(namespace, body)  # first: once the batch has ended, no pass looks at it again
        completed = now()
        self.set_batch_phase(
            body, phase, reason, message, completionTime=completed, commitJob=action.job.name
        )
        failpoint("operator.finished")  # the final phase is patched, no Event or metric yet
        self._observe(body, completed)
        self.post_event(body, "Normal" if phase == BatchPhase.SUCCEEDED else "Warning", reason, message)
        log.info("batch %s/%s: %s (%s)", namespace, action.batch.name, phase, message)
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

    def _set_position(self, namespace: str, action: SetPosition) -> None:
        body = self._fresh(namespace, action.batch, None, BatchPhase.QUEUED)
        if body is None or (body.get("status") or {}).get("queuePosition") == action.position:
            return
        self.api.patch_status(names.BATCHES, namespace, action.batch.name, {"queuePosition": action.position})

    # Store maintenance -----------------------------------------------------------------------
    def _start_maintenance(self, store_body: dict[str, Any], run: str) -> None:
        """Start the due run's Job (the store's queue is held for it) and prune old runs."""
        metadata = store_body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            store = IcechunkStore.model_validate(without_status(store_body))
        except ValidationError:
            return  # the store's probe reports it, and a store that is not Ready holds no runs
        if store.spec.maintenance is None:
            return
        # Under the store's writer Lease, as a batch's start (see ``_start``).
        with self.writer_lock.hold(namespace, name) as hold:
            if not hold.acquired:
                return
            jobs = [job_view(j) for j in self.api.store_jobs(namespace, name)]
            if any(j.writes and j.outcome == JobOutcome.RUNNING for j in jobs) or hold.expiring():
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
                message = f"could not be created: {one_line_error(error)}"
                self._maintenance_failed(store_body, job_name, message)
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
