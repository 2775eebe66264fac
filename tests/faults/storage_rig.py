"""The storage-fault rig: sources and a store on one object-storage server (moto S3 or Azurite),
each behind its own toxiproxy proxy, and faults aimed at one stage of a run.

Two proxies, not one, so that a fault lands where the case says: the listing and the workers'
reads go through ``sources``, the repository's reads and commits (and the failure log beside it)
through ``store``. A :class:`StageFault` puts its toxics on when ``run_batch`` reports the stage
it aims at (the progress callback runs on the writer's thread, just before that stage's first
request) and takes them off after a while, or never.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.runner import Progress, RunReport, run_batch
from icechunk_operator.synthetic import ArchiveLayout, SyntheticFile
from tests.conftest import ismip6_resources
from tests.faults.invariants import StoreCheck, branch_snapshots, check_store
from tests.servers import Toxiproxy

#: Request limits of the store in the stall cases: a stalled request is given up after 3 s and
#: tried 5 times, so a persistent stall fails a commit in about 15 s instead of never.
QUICK_LIMITS = {"requestTimeoutSeconds": 3, "maxTries": 5}


@dataclass(frozen=True)
class Toxic:
    kind: str
    attributes: dict[str, Any]
    stream: str = "upstream"  # upstream: the requests; downstream: the answers
    toxicity: float = 1.0


#: Every connection reset as the request goes out: nothing reaches the server.
RESET = Toxic("reset_peer", {"timeout": 0})
#: A server that takes the connection and never answers: requests are swallowed, nothing closes.
STALL = Toxic("timeout", {"timeout": 0})
#: Requests reach the server and are carried out, their answers are swallowed (lost acks).
LOST_ANSWERS = Toxic("timeout", {"timeout": 0}, stream="downstream")


@dataclass
class Rig:
    """An archive uploaded under ``root`` and a store at ``store_url``, reached through the two
    proxies; ``read`` fetches an object by URL straight from the server (no proxy)."""

    toxiproxy: Toxiproxy
    sources: str  # proxy names
    store: str
    layout: ArchiveLayout
    root: str
    store_url: str
    sources_location: dict[str, Any]
    store_location: dict[str, Any]
    read: Callable[[str], bytes]

    def url_of(self, item: SyntheticFile) -> str:
        return f"{self.root}{item.path.relative_to(self.layout.root).as_posix()}"

    def resources(
        self, *, batch_name: str = "ismip6", store_limits: dict[str, int] | None = None, **batch_extra: Any
    ) -> tuple[IcechunkStore, IngestBatch]:
        """One checkpoint at the end (so "during commit" is one commit), and store limits when
        given (else the defaults: 60 s, 10 tries)."""
        container = {"urlPrefix": self.root, **self.sources_location}
        return ismip6_resources(
            self.root,
            self.store_url,
            container_prefix=self.root,
            batch_name=batch_name,
            store_extra={
                "storage": {**self.store_location, **(store_limits or {})},
                "virtualChunkContainers": [container],
            },
            batch_extra={"commit": {"everyGroups": 1000}, "execution": {"filesPerTask": 3}} | batch_extra,
        )

    def add(self, proxy: str, toxic: Toxic, name: str) -> None:
        self.toxiproxy.add_toxic(
            proxy, toxic.kind, toxic.attributes, stream=toxic.stream, toxicity=toxic.toxicity, name=name
        )

    def clear(self) -> None:
        for proxy in (self.sources, self.store):
            for name in self.toxiproxy.toxics(proxy):
                self.toxiproxy.remove_toxic(proxy, name)

    def read_through_sources(self, item: SyntheticFile) -> bytes:
        """One archive file through the sources proxy, with the client the workers use."""
        import obstore

        from icechunk_operator.engine.objects import build_object_store

        store, _ = self.resources()
        object_store, path = build_object_store(self.url_of(item), store.spec.virtual_chunk_containers[0])
        return bytes(obstore.get(object_store, path).bytes())

    def good(self) -> list[SyntheticFile]:
        return [f for f in self.layout.files if f.defect == "none"]


@dataclass
class StageFault:
    """``toxics`` on ``proxy`` from the moment the run reaches ``stage`` until ``seconds`` later
    (``None``: until :meth:`stop`). ``on_at``/``off_at`` are when they went on and came off."""

    rig: Rig
    proxy: str
    stage: str
    toxics: list[Toxic]
    seconds: float | None
    on_at: float | None = None
    off_at: float | None = None
    _timer: threading.Timer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, progress: Progress) -> None:
        if progress.stage != self.stage or self.on_at is not None:
            return
        for number, toxic in enumerate(self.toxics):
            self.rig.add(self.proxy, toxic, f"fault-{number}")
        self.on_at = time.monotonic()
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self.stop)
            self._timer.start()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self.on_at is None or self.off_at is not None:
                return
            for number in range(len(self.toxics)):
                self.rig.toxiproxy.remove_toxic(self.proxy, f"fault-{number}")
            self.off_at = time.monotonic()


@dataclass
class Outcome:
    report: RunReport | None
    error: BaseException | None
    seconds: float


def run(store: IcechunkStore, batch: IngestBatch, scheduler: str, fault: StageFault | None = None) -> Outcome:
    """One batch in this process with ``fault`` armed; a raised error is an outcome too."""
    started = time.monotonic()
    try:
        report = run_batch(store, batch, scheduler=scheduler, on_progress=fault or (lambda _: None))
    except Exception as error:
        return Outcome(None, error, time.monotonic() - started)
    finally:
        if fault is not None and fault.seconds is not None:
            fault.stop()
    return Outcome(report, None, time.monotonic() - started)


#: The folder (under Projection-AIS/) that the first, clean batch ingests.
SEED_FOLDER = "INST00/MODEL00/exp00"


def seed(rig: Rig, scheduler: str) -> list[str]:
    """A first, clean batch of one model-experiment: the snapshots a fault must not lose."""
    store, batch = rig.resources(batch_name="seed", source={"glob": f"{SEED_FOLDER}/*.nc"})
    report = run_batch(store, batch, scheduler=scheduler)
    assert report.succeeded and report.done > 0, report.error
    return branch_snapshots(store)


def failure_log_urls(rig: Rig, report: RunReport) -> Counter[str]:
    """The URLs the run's failure log names, with how often."""
    assert report.failure_log, "the run wrote no failure log"
    log = json.loads(rig.read(report.failure_log))
    return Counter(str(record["url"]) for record in log["failures"])


def check_all(rig: Rig, store: IcechunkStore, report: RunReport, snapshots_before: list[str]) -> StoreCheck:
    """What every case ends with: every good file once in the ledger and read back equal, no
    snapshot of the branch lost, and the failure log naming each bad file once and nothing else."""
    good = rig.good()
    assert report.succeeded and report.failed == len(rig.layout.files) - len(good), (
        report.error,
        [f.message[:300] for f in report.failures],
    )
    checked = check_store(store, rig.layout, snapshots_before=snapshots_before, url_of=rig.url_of)
    logged = failure_log_urls(rig, report)
    assert set(logged.values()) == {1}, "a bad file was recorded twice in one log"
    assert set(logged) == {rig.url_of(f) for f in rig.layout.files if f.defect != "none"}
    return checked


def assert_branch_untouched(store: IcechunkStore, snapshots_before: list[str], rig: Rig) -> None:
    """Nothing half-written: the branch is exactly at its last good snapshot, and its ledger and
    groups are the seed's, each seeded file once."""
    assert branch_snapshots(store) == snapshots_before, "the failed run moved the branch"
    folder = rig.layout.root / "Projection-AIS" / SEED_FOLDER
    seeded_layout = ArchiveLayout(rig.layout.root, [f for f in rig.good() if f.path.parent == folder])
    assert seeded_layout.files
    check_store(store, seeded_layout, snapshots_before=snapshots_before, url_of=rig.url_of, read_every=1)
