"""Deleting a store's data with the store, when its ``deletionPolicy`` is ``Delete``.

The operator keeps its finalizer on exactly the stores whose policy is ``Delete`` (a ``Retain``
store can be deleted while the operator is down). When such a store is deleted, its repository is
deleted in a child process, and only once that succeeded is the finalizer removed: a failed delete
(a read-only bucket, expired credentials) leaves the store in place, says why in an Event, and is
tried again with a growing delay until it succeeds or someone removes the finalizer by hand.
A writer Job of the store that still runs is waited for first: its next commit would bring data
back. (A store being deleted is not Ready, so no new batch or maintenance run starts on it.)
Kopf does not retry event handlers, so the retries are a task of their own, one per store.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import Any

from kubernetes.client.exceptions import ApiException

from icechunk_operator.api.store import DeletionPolicy, IcechunkStore
from icechunk_operator.exiting import one_line_error
from icechunk_operator.k8s import names
from icechunk_operator.k8s.apply import EventPoster
from icechunk_operator.k8s.kube import KubeApi, without_status
from icechunk_operator.k8s.store_probe import ProbeError, run_in_child
from icechunk_operator.k8s.store_status import store_secret_env
from icechunk_operator.k8s.views import JobOutcome, job_view

log = logging.getLogger("icechunk_operator.deletion")


class FinalizerStep(StrEnum):
    NONE = "none"
    ADD = "add"
    REMOVE = "remove"
    DELETE_DATA = "delete-data"  # then remove


def finalizer_step(body: dict[str, Any]) -> FinalizerStep:
    """What the store's finalizer needs now, from its policy and whether it is being deleted."""
    metadata = body["metadata"]
    has = names.FINALIZER_DELETE_DATA in (metadata.get("finalizers") or [])
    policy = (body.get("spec") or {}).get("deletionPolicy", DeletionPolicy.RETAIN.value)
    wanted = policy == DeletionPolicy.DELETE.value
    if metadata.get("deletionTimestamp") is not None:
        if not has:
            return FinalizerStep.NONE
        return FinalizerStep.DELETE_DATA if wanted else FinalizerStep.REMOVE
    if wanted != has:
        return FinalizerStep.ADD if wanted else FinalizerStep.REMOVE
    return FinalizerStep.NONE


def retry_delay(failures: int, first: float = 5.0, ceiling: float = 300.0) -> float:
    """Seconds before the next attempt after ``failures`` failed ones: 5, 10, 20 ... 300."""
    return float(min(ceiling, first * 2 ** max(0, failures - 1)))


class DataDeleter:
    def __init__(self, api: KubeApi, post_event: EventPoster, first_delay: float = 5.0) -> None:
        self.api, self.post_event, self.first_delay = api, post_event, first_delay
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def sync(self, body: dict[str, Any]) -> bool:
        """Bring the finalizer in line with the policy; True when the store is being deleted."""
        metadata = body["metadata"]
        step = finalizer_step(body)
        finalizers = list(metadata.get("finalizers") or [])
        if step == FinalizerStep.ADD:
            await asyncio.to_thread(
                self._set_finalizers, metadata, [*finalizers, names.FINALIZER_DELETE_DATA]
            )
        elif step == FinalizerStep.REMOVE:
            kept = [f for f in finalizers if f != names.FINALIZER_DELETE_DATA]
            await asyncio.to_thread(self._set_finalizers, metadata, kept)
        elif step == FinalizerStep.DELETE_DATA:
            key = (metadata["namespace"], metadata["name"])
            task = self._tasks.get(key)
            if task is None or task.done():
                self._tasks[key] = asyncio.create_task(self._delete_until_done(*key))
        return metadata.get("deletionTimestamp") is not None

    async def _delete_until_done(self, namespace: str, name: str) -> None:
        try:
            await self._delete_with_retries(namespace, name)
        finally:
            self._tasks.pop((namespace, name), None)

    async def _delete_with_retries(self, namespace: str, name: str) -> None:
        failures = 0
        while True:
            body = await asyncio.to_thread(self.api.get, names.STORES, namespace, name)
            if body is None or finalizer_step(body) != FinalizerStep.DELETE_DATA:
                return  # gone, or someone removed the finalizer by hand
            writer = await asyncio.to_thread(self._running_writer, namespace, name)
            if writer is not None:  # its next commit would bring data back: let it end first
                log.info("store %s/%s: deleting its data once Job %s has ended", namespace, name, writer)
                await asyncio.sleep(self.first_delay)
                continue
            try:
                deleted = await self._delete_data(body)
            except Exception as error:  # said in an Event and retried; never dropped
                failures += 1
                delay = retry_delay(failures, self.first_delay)
                message = str(error) if isinstance(error, ProbeError) else one_line_error(error)
                text = f"deleting the data failed ({message}); trying again in {delay:.0f} s"
                self.post_event(body, "Warning", "DataDeletionFailed", text)
                log.warning("store %s/%s: %s", namespace, name, text)
                await asyncio.sleep(delay)
                continue
            self.post_event(body, "Normal", "DataDeleted", f"deleted {deleted} objects of the repository")
            log.info("store %s/%s: deleted %d objects", namespace, name, deleted)
            kept = [f for f in body["metadata"]["finalizers"] if f != names.FINALIZER_DELETE_DATA]
            try:
                await asyncio.to_thread(self._set_finalizers, body["metadata"], kept)
            except ApiException as error:
                if error.status != 409:
                    raise
                continue  # changed meanwhile: read it again (deleting again finds nothing)
            return

    def _running_writer(self, namespace: str, store: str) -> str | None:
        jobs = [job_view(job) for job in self.api.store_jobs(namespace, store)]
        return next((j.name for j in jobs if j.writes and j.outcome == JobOutcome.RUNNING), None)

    async def _delete_data(self, body: dict[str, Any]) -> int:
        store = IcechunkStore.model_validate(without_status(body))
        secrets = await asyncio.to_thread(store_secret_env, self.api, store)
        result = await run_in_child("delete", store.spec, secrets)
        return int(result["deleted"])

    def _set_finalizers(self, metadata: dict[str, Any], finalizers: list[str]) -> None:
        """Replace the store's finalizers, if nobody changed the object since we read it (a
        conflict raises, and the next event or attempt reads again)."""
        try:
            self.api.patch_metadata(
                names.STORES,
                metadata["namespace"],
                metadata["name"],
                {"finalizers": finalizers, "resourceVersion": metadata["resourceVersion"]},
            )
        except ApiException as error:
            if error.status != 404:
                raise
