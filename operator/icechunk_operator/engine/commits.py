"""Checkpointed commits: groups accumulate in one session, which commits every N groups or T
seconds and at the end, together with the ledger page that records their source files.

A crash between checkpoints loses only the uncommitted session: the store stays at its last good
snapshot, the ledger agrees with it, and a re-run plans exactly the files that are missing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import icechunk

from icechunk_operator import __version__
from icechunk_operator.engine.documents import GroupPayload
from icechunk_operator.engine.file_errors import RefusedByStoreError
from icechunk_operator.engine.ledger import (
    COMPACT_AFTER_PAGES,
    compact_pages,
    encode_page,
    list_pages,
    new_page_name,
    page_documents,
    read_ledger,
)
from icechunk_operator.engine.planning import WriteMode
from icechunk_operator.engine.records import FailureRecord, LedgerEntry, now_iso
from icechunk_operator.engine.writer import GroupWriter
from icechunk_operator.failpoints import failpoint

MESSAGE_GROUPS_SHOWN = 5
FLUSH_GROUPS = 64
MAX_COMMIT_BACKOFF_SECONDS = 10.0


class CommitConflictError(RuntimeError):
    """Another writer changed the same groups; rebasing cannot reconcile the two."""


@dataclass(frozen=True)
class CheckpointPolicy:
    every_groups: int = 2000
    every_seconds: float = 300.0


@dataclass(frozen=True)
class CommitRetry:
    """How long a checkpoint keeps committing when the storage fails it: ``tries`` commits at
    most, none begun after ``budget_seconds``.

    Icechunk retries each request itself, but its S3 client (the AWS SDK) stops retrying at all
    once many requests at the same time have failed (its retry quota): a two-second outage
    during a commit of some thirty manifests failed the run at once. The session keeps its
    changes after a failed commit, so committing it again is safe."""

    tries: int = 10
    budget_seconds: float = 600.0


@dataclass
class CommitStats:
    commits: list[str] = field(default_factory=list)
    groups_written: int = 0
    groups_deleted: int = 0
    files_written: int = 0
    write_seconds: float = 0.0
    commit_seconds: float = 0.0


class CheckpointedWriter:
    """Owns the writable session of one batch run."""

    def __init__(
        self,
        repo: icechunk.Repository,
        branch: str,
        *,
        batch: str,
        spec_hash: str,
        policy: CheckpointPolicy,
        ledger: Mapping[str, LedgerEntry],
        message_prefix: str | None = None,
        retry: CommitRetry = CommitRetry(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._branch = branch
        self._batch = batch
        self._spec_hash = spec_hash
        self._policy = policy
        self._message_prefix = message_prefix or f"Ingest batch {batch}"
        self._retry = retry
        self._clock = clock
        self._runner = asyncio.Runner()
        self._writer = GroupWriter(self._runner)
        self._session = repo.writable_session(branch)
        self._ledger = dict(ledger)  # the whole current ledger, for a compacted page
        self._pages = len(self._runner.run(list_pages(self._session.store)))
        self._ledger_by_group: dict[str, set[str]] = {}
        for entry in ledger.values():
            if not entry.removed:
                self._ledger_by_group.setdefault(entry.group, set()).add(entry.url)
        self._buffer: list[GroupPayload] = []
        self._pending_entries: list[LedgerEntry] = []
        self._pending_groups: list[str] = []
        self._failed_since_commit = 0
        self._written_since_commit: list[GroupPayload] = []  # for a rebuilt session
        self._deleted_since_commit: list[str] = []
        self._refusals: list[FailureRecord] = []
        self._last_commit = clock()
        self.stats = CommitStats()

    def add(self, payload: GroupPayload) -> None:
        self._buffer.append(payload)
        if len(self._buffer) >= FLUSH_GROUPS:
            self.flush()
        if self._checkpoint_due():
            self.checkpoint()

    def delete_group(self, group: str) -> None:
        """Drop a group none of whose files remain; the ledger marks its files removed."""
        self._writer.delete_groups(self._session, [group])
        self._deleted_since_commit.append(group)
        stamp = now_iso()
        for url in sorted(self._ledger_by_group.pop(group, set())):
            self._pending_entries.append(LedgerEntry(url, 0, None, None, group, self._batch, stamp, True))
        self._pending_groups.append(group)
        self.stats.groups_deleted += 1

    def note_failures(self, count: int) -> None:
        self._failed_since_commit += count

    def take_refusals(self) -> list[FailureRecord]:
        """The files of groups the store refused at write time since the last call: each is a
        failure record, its group is not in the session, and the run goes on."""
        refusals, self._refusals = self._refusals, []
        return refusals

    def flush(self) -> None:
        if not self._buffer:
            return
        started = time.perf_counter()
        batch = self._buffer
        refused = self._writer.write(self._session, batch)
        while refused:
            batch = self._refuse(batch, refused)
            refused = self._rebuild_session(batch)
        failpoint("written")  # groups in the session, not yet committed
        stamp = now_iso()
        for payload in batch:
            self._record(payload, stamp)
        self._written_since_commit.extend(batch)
        self.stats.write_seconds += time.perf_counter() - started
        self._buffer = []

    def _refuse(self, batch: list[GroupPayload], refused: dict[str, Exception]) -> list[GroupPayload]:
        for payload in batch:
            error = refused.get(payload.group)
            if error is not None:
                message = f"the store refused group {payload.group!r}: {type(error).__name__}: {error}"
                self._refusals.extend(
                    FailureRecord(s.url, RefusedByStoreError.__name__, message[:2000], payload.group)
                    for s in payload.sources
                )
                self._failed_since_commit += len(payload.sources)
        return [p for p in batch if p.group not in refused]

    def _rebuild_session(self, batch: list[GroupPayload]) -> dict[str, Exception]:
        """A refused group may be half in the session (and a replaced one half deleted), and a
        session cannot take a change back: start again from the branch, and redo everything
        since the last commit but the refused groups. Rare, so its cost does not matter."""
        self._session = self._repo.writable_session(self._branch)
        self._writer = GroupWriter(self._runner)
        if self._deleted_since_commit:
            self._writer.delete_groups(self._session, self._deleted_since_commit)
        again = self._writer.write(self._session, self._written_since_commit)
        if again:  # these went in before: the storage, not the groups, is failing now
            raise RuntimeError(f"groups written before were refused on a retry: {sorted(again)}")
        return self._writer.write(self._session, batch)

    def _record(self, payload: GroupPayload, stamp: str) -> None:
        current = {s.url for s in payload.sources}
        if payload.mode == WriteMode.REPLACE:
            for url in self._ledger_by_group.get(payload.group, set()) - current:
                self._pending_entries.append(
                    LedgerEntry(url, 0, None, None, payload.group, self._batch, stamp, True)
                )
        for source in payload.sources:
            self._pending_entries.append(
                LedgerEntry(
                    source.url, source.size, source.etag, source.mtime, payload.group, self._batch, stamp
                )
            )
        known = self._ledger_by_group.setdefault(payload.group, set())
        if payload.mode == WriteMode.REPLACE:
            known.clear()
        known.update(current)
        self._pending_groups.append(payload.group)
        self.stats.groups_written += 1
        self.stats.files_written += len(payload.sources)

    def _checkpoint_due(self) -> bool:
        waiting = len(self._pending_groups) + len(self._buffer)
        if waiting == 0:
            return False
        return (
            waiting >= self._policy.every_groups
            or self._clock() - self._last_commit >= self._policy.every_seconds
        )

    def checkpoint(self) -> str | None:
        """Write the pending groups and their ledger page, and commit them in one snapshot."""
        self.flush()
        if not self._pending_groups:
            return None
        started = time.perf_counter()
        for entry in self._pending_entries:
            self._ledger[entry.url] = entry
        if self._pages + 1 >= COMPACT_AFTER_PAGES:
            self._runner.run(compact_pages(self._session.store))
            page = encode_page(self._ledger.values())
            self._pages = 0
        else:
            page = encode_page(self._pending_entries)
        self._writer.put_documents(self._session, page_documents(new_page_name(), page))
        self._pages += 1
        message = self._message()
        metadata = {
            "batch": self._batch,
            "spec_hash": self._spec_hash,
            "tool": "icechunk-operator",
            "tool_version": __version__,
            "groups": len(self._pending_groups),
            "files": sum(1 for e in self._pending_entries if not e.removed),
            "failed": self._failed_since_commit,
            "checkpoint": uuid.uuid4().hex,  # tells this commit from any other, if its answer is lost
        }
        failpoint("commit")  # with kill-after: the kill lands inside the commit below
        try:
            snapshot = self._commit(message, metadata)
        except icechunk.ConflictError as error:
            raise CommitConflictError(
                f"branch {self._branch!r} moved and another writer touched the same groups: "
                f"{error}. Nothing of this checkpoint was committed; run the batch again."
            ) from error
        failpoint("commit.after")  # committed, not yet counted or reported
        self.stats.commits.append(snapshot)
        self.stats.commit_seconds += time.perf_counter() - started
        self._pending_entries = []
        self._pending_groups = []
        self._failed_since_commit = 0
        self._written_since_commit = []
        self._deleted_since_commit = []
        self._last_commit = self._clock()
        self._session = self._repo.writable_session(self._branch)
        return snapshot

    def _commit(self, message: str, metadata: dict[str, Any]) -> str:
        return commit_with_retry(
            self._repo, self._branch, self._session, message, metadata, self._retry, self._clock
        )

    def _message(self) -> str:
        groups = self._pending_groups
        shown = ", ".join(groups[:MESSAGE_GROUPS_SHOWN])
        more = len(groups) - MESSAGE_GROUPS_SHOWN
        tail = f" and {more} more" if more > 0 else ""
        return f"{self._message_prefix}: {len(groups)} groups ({shown}{tail})"

    def close(self) -> None:
        self._runner.close()


def commit_with_retry(
    repo: icechunk.Repository,
    branch: str,
    session: icechunk.Session,
    message: str,
    metadata: dict[str, Any],
    retry: CommitRetry,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Commit the session, and again after a storage error (see :class:`CommitRetry`).

    ``metadata["checkpoint"]`` names the commit: before a retry the branch tip is checked, and
    when it is this checkpoint (its answer was lost, not the commit) it is taken as done, so a
    checkpoint never lands twice."""
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            if attempt > 1 and (landed := _landed(repo, branch, metadata["checkpoint"])):
                return landed
            return str(
                session.commit(
                    message, metadata=metadata, rebase_with=icechunk.ConflictDetector(), rebase_tries=5
                )
            )
        except icechunk.StorageError:
            spent = clock() - started
            if attempt >= retry.tries or spent >= retry.budget_seconds:
                raise
            delay = min(MAX_COMMIT_BACKOFF_SECONDS, 0.5 * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random()))


def _landed(repo: icechunk.Repository, branch: str, checkpoint: str) -> str | None:
    tip = next(iter(repo.ancestry(branch=branch)))
    return str(tip.id) if tip.metadata.get("checkpoint") == checkpoint else None


def initialize_repository(repo: icechunk.Repository, branch: str) -> str | None:
    """Give a new repository its root and ledger groups, so forks and parents never collide."""
    from icechunk_operator.engine.ledger import skeleton_documents

    if branch != "main" and branch not in repo.list_branches():
        # A new branch starts from main, initialized first, so it shares main's history.
        initialize_repository(repo, "main")
        repo.create_branch(branch, repo.lookup_branch("main"))
    session = repo.readonly_session(branch=branch)
    with asyncio.Runner() as runner:
        if runner.run(session.store.exists("_icechunk_operator/ledger/zarr.json")):
            return None
        writable = repo.writable_session(branch)
        GroupWriter(runner).put_documents(writable, skeleton_documents())
    return str(
        writable.commit(
            "Initialize icechunk-operator store",
            metadata={
                "tool": "icechunk-operator",
                "tool_version": __version__,
            },
        )
    )


def load_ledger(repo: icechunk.Repository, branch: str) -> dict[str, LedgerEntry]:
    session = repo.readonly_session(branch=branch)
    with asyncio.Runner() as runner:
        return runner.run(read_ledger(session.store))
