"""Keeping a store's status true: Ready, branches, tags, the last snapshots and counts.

The store is probed in a child process (``store_probe``), on a change of its spec, after a batch
finished (unless its next batch starts at once: see ``Controller.sync_store``), and every
``storeRefreshSeconds`` (every 30 s at most while it is not Ready, so a store whose bucket
appears later becomes Ready soon). One probe per store at a time; probes that queue behind it
re-check whether they are still due.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.common import first_problem
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.exiting import one_line_error
from icechunk_operator.k8s import children, names
from icechunk_operator.k8s.apply import EventPoster
from icechunk_operator.k8s.conditions import set_condition
from icechunk_operator.k8s.kube import KubeApi, map_patch, without_status
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.store_probe import ProbeError, run_in_child
from icechunk_operator.k8s.views import is_ready


def store_secret_env(api: KubeApi, store: IcechunkStore) -> dict[str, str]:
    """The values of the store's Secrets, for a child process's standard input only."""
    namespace = store.metadata.namespace or "default"
    values: dict[str, str] = {}
    for secret in children.store_secrets(store):
        values.update(api.secret_values(namespace, secret))
    return values


class StoreStatus:
    def __init__(self, api: KubeApi, settings: OperatorSettings, post_event: EventPoster) -> None:
        self.api, self.settings, self.post_event = api, settings, post_event
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._probed: dict[tuple[str, str], tuple[float, int | None, bool]] = {}  # when, generation, ok

    async def refresh(self, body: dict[str, Any], *, force: bool = False) -> None:
        """Probe the store when due (or ``force``) and write what was found into its status."""
        metadata = body["metadata"]
        if metadata.get("deletionTimestamp") is not None:
            return  # a probe would create the repository again while its data is being deleted
        key = (metadata["namespace"], metadata["name"])
        async with self._locks[key]:
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

    def forget(self, namespace: str, name: str) -> None:
        self._probed.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)

    async def _probe_and_report(self, body: dict[str, Any]) -> bool:
        """Probe the store and write its status; False when the repository could not be opened."""
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        status = body.get("status") or {}
        generation = metadata.get("generation")
        conditions = status.get("conditions") or []
        try:
            store = IcechunkStore.model_validate(without_status(body))
            secrets = await asyncio.to_thread(store_secret_env, self.api, store)
            facts = await run_in_child("probe", store.spec, secrets)
        except Exception as error:  # any failure to open the store is reported, not raised
            if isinstance(error, ValidationError):
                message = f"invalid spec: {first_problem(error)}"
            else:
                message = str(error) if isinstance(error, ProbeError) else one_line_error(error)
            patch: dict[str, Any] = {
                "conditions": set_condition(
                    conditions, "Ready", False, "RepositoryError", message, generation
                ),
                "observedGeneration": generation,
            }
            await asyncio.to_thread(self.api.patch_status, names.STORES, namespace, name, patch)
            if is_ready(body) or status.get("observedGeneration") != generation:
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
        was_ready = is_ready(body)
        await asyncio.to_thread(self.api.patch_status, names.STORES, namespace, name, patch)
        if not was_ready:
            self.post_event(body, "Normal", "RepositoryReady", ready_message)
        return True
