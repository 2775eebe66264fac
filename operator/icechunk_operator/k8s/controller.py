"""One store at a time: observe, plan, apply.

Kopf handlers (``handlers.py``) call :meth:`Controller.sync_store` on any event that may change
what a store's queue should do (a batch, a writer Job or the store changed, or the timer fired).
The pass reads what it needs (``observe``), decides (``plan.plan_store``, pure and unit-tested)
and carries the decision out (``apply``). Passes of one store never overlap; passes of different
stores run side by side. Store status (``store_status``) and data deletion (``deletion``) have
modules of their own. Nothing here holds a secret longer than one child process's input, and no
status or log line carries one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.exiting import one_line_error
from icechunk_operator.k8s.apply import Applier, EventPoster
from icechunk_operator.k8s.clock import Clock, wall_clock
from icechunk_operator.k8s.deletion import DataDeleter
from icechunk_operator.k8s.kube import KubeApi
from icechunk_operator.k8s.metrics import OperatorMetrics
from icechunk_operator.k8s.observe import observe_store
from icechunk_operator.k8s.plan import Start, StartMaintenance, plan_store
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.store_probe import ProbeError, ProbeRefusedError, run_in_child_blocking
from icechunk_operator.k8s.store_status import StoreStatus, store_secret_env
from icechunk_operator.k8s.views import Admission, BatchView

#: Index files found fine, remembered so a queue does not re-read them on every pass.
INDEX_CHECKS_REMEMBERED = 10_000
#: Actions that start a store's next writer.
STARTS = (Start, StartMaintenance)


class Controller:
    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        post_event: EventPoster,
        metrics: OperatorMetrics | None = None,
        clock: Clock = wall_clock,
    ) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock  # cron's "now": store maintenance schedules
        self.applier = Applier(api, settings, post_event, metrics)
        self.store_status = StoreStatus(api, settings, post_event)
        self.deleter = DataDeleter(api, post_event)
        self.batch_index: Any = {}  # Kopf's batches_by_store index, once a handler has seen it
        self.schedule_index: Any = {}  # Kopf's schedules_by_name index, likewise
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._waiting: set[tuple[str, str]] = set()  # stores whose next pass has not started
        self._index_checks: set[tuple[str, int | None, int | None]] = set()

    @property
    def metrics(self) -> OperatorMetrics | None:
        return self.applier.metrics

    @metrics.setter
    def metrics(self, metrics: OperatorMetrics | None) -> None:
        self.applier.metrics = metrics

    async def sync_store(
        self, namespace: str, store: str, batches: Callable[[], Iterable[BatchView]]
    ) -> None:
        """One pass over a store's queue, unless one is already waiting to start.

        As in a controller's work queue, a store is queued at most once: a pass that has not
        started yet reads the batches (``batches()``, the live watch index) and the Jobs when it
        starts, so it covers every event that arrives before then. A burst of a thousand batch
        events costs a few passes, not a thousand.
        """
        key = (namespace, store)
        if key in self._waiting:
            return
        self._waiting.add(key)
        async with self._locks[key]:
            self._waiting.discard(key)
            observed, store_body = await asyncio.to_thread(
                observe_store,
                self.api,
                namespace,
                store,
                list(batches()),
                self.clock(),
                self._check_index,
            )
            actions = plan_store(observed)
            finished = await asyncio.to_thread(self.applier.apply, namespace, store_body, actions)
            if self.metrics is not None:
                self.metrics.queue_passes.labels(namespace, store).inc()
        # A batch ended: its store's status is probed now, unless the next writer starts in this
        # same pass (a probe, a process of its own, would read what that writer is about to
        # change): the probe after the queue's last batch, and the periodic one, report it.
        if finished and store_body is not None and not any(isinstance(a, STARTS) for a in actions):
            await self.store_status.refresh(store_body, force=True)

    async def store_changed(self, body: dict[str, Any]) -> bool:
        """Finalizer and status of a store; True when it is being deleted (nothing else to do)."""
        if await self.deleter.sync(body):
            return True
        await self.store_status.refresh(body)
        return False

    def _check_index(self, batch: IngestBatch, store: IcechunkStore) -> Admission | None:
        """The URLs inside a batch's index files, read in a child process. A pass is remembered
        per batch generation and store spec; a refusal is not (the index may be fixed in place
        and the batch retried), and a refused batch is not checked again until it is retried."""
        key = (
            batch.metadata.uid or batch.metadata.name,
            batch.metadata.generation,
            store.metadata.generation,
        )
        if key in self._index_checks:
            return None
        try:
            secrets = store_secret_env(self.api, store)
            run_in_child_blocking("check-index", store.spec, secrets, source=batch.spec.source)
        except ProbeRefusedError as error:
            return Admission(invalid=str(error))
        except Exception as error:  # unreadable now (a network error, a Secret missing): not yet
            message = str(error) if isinstance(error, ProbeError) else one_line_error(error)
            return Admission(waiting=f"spec.source: the index could not be read: {message}")
        if len(self._index_checks) >= INDEX_CHECKS_REMEMBERED:
            self._index_checks.clear()
        self._index_checks.add(key)
        return None
