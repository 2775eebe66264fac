"""One writer per store across operators: a Lease held while a writer Job is being started.

The plan starts a writer only when no writer Job of the store is unfinished, and the action asks
the API server once more just before it creates one. Two operators (standalone replicas, the old
and the new pod of a rollout, peers before peering pauses one) can both ask, both see no writer,
and each create one for a different batch of the same store: two writers on one branch. So the
check and the create happen while holding the store's Lease ``<store>-writer``
(coordination.k8s.io/v1), created to acquire and deleted to release: the API server's name
uniqueness lets one operator in at a time, and the next one in sees the Job the first created.

A holder that dies inside leaves its Lease behind. It counts as released once
``leaseDurationSeconds`` have passed since its ``renewTime`` (by the reader's clock: operators'
clocks must agree to within a fraction of a minute), and the next operator takes it over with a
replace that fails if another took it first. A holder that has been inside for more than half
that time creates nothing (:meth:`Hold.expiring`), so a Lease taken over never has two holders
at work.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from icechunk_operator.k8s import names
from icechunk_operator.k8s.kube import KubeApi

#: How long a Lease left by a holder that died keeps the store's writers from starting.
LEASE_SECONDS = 60

log = logging.getLogger("icechunk_operator.controller")


def lease_name(store: str) -> str:
    return names.child_name(store, "writer")


def holder_identity() -> str:
    """This operator process: its pod (the host name in a cluster) and its process id."""
    return f"{socket.gethostname()}/{os.getpid()}"


def expired(lease: dict[str, Any], now: datetime) -> bool:
    """Whether a Lease's holder has had it for longer than it asked for (it must have died)."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    until = datetime.fromisoformat(str(renewed)) + timedelta(
        seconds=int(spec.get("leaseDurationSeconds") or 0)
    )
    return until < now


@dataclass(frozen=True)
class Hold:
    """The outcome of one acquisition: ``acquired``, and since when (monotonic)."""

    acquired: bool
    seconds: int = LEASE_SECONDS
    since: float = field(default_factory=time.monotonic)

    def expiring(self) -> bool:
        """Inside for more than half the Lease's time: another operator may soon take it over."""
        return time.monotonic() - self.since > self.seconds / 2


class WriterLock:
    def __init__(self, api: KubeApi, holder: str | None = None, seconds: int = LEASE_SECONDS) -> None:
        self.api, self.holder, self.seconds = api, holder or holder_identity(), seconds

    @contextmanager
    def hold(self, namespace: str, store: str) -> Iterator[Hold]:
        """The store's Lease for the duration of the block, if no other operator holds it
        (``Hold.acquired``); released at the end. Not acquired: the next pass tries again."""
        since = time.monotonic()
        lease = self._acquire(namespace, store)
        try:
            yield Hold(lease is not None, self.seconds, since)
        finally:
            if lease is not None:
                self._release(namespace, lease)

    def _manifest(self, namespace: str, store: str, now: datetime) -> dict[str, Any]:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(store),
                "namespace": namespace,
                "labels": {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_STORE: store},
            },
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": self.seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
            },
        }

    def _acquire(self, namespace: str, store: str) -> dict[str, Any] | None:
        now = datetime.now(UTC)
        manifest = self._manifest(namespace, store, now)
        created = self.api.create_lease(namespace, manifest)
        if created is not None:
            return created
        existing = self.api.read_lease(namespace, lease_name(store))
        if existing is None or not expired(existing, now):
            return None  # held (or released just now: the next pass tries again)
        holder = (existing.get("spec") or {}).get("holderIdentity")
        log.warning(
            "store %s/%s: taking over the writer Lease %s left by %s",
            namespace,
            store,
            lease_name(store),
            holder,
        )
        manifest["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return self.api.replace_lease(namespace, manifest)

    def _release(self, namespace: str, lease: dict[str, Any]) -> None:
        metadata = lease["metadata"]
        try:
            self.api.delete_lease(namespace, metadata["name"], metadata["uid"], metadata["resourceVersion"])
        except Exception as error:  # it expires by itself; the next start waits for that
            log.warning(
                "namespace %s: could not release the writer Lease %s (%s); it expires in %d s",
                namespace,
                metadata["name"],
                error,
                self.seconds,
            )
