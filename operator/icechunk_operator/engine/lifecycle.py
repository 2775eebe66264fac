"""Store lifecycle: history, tags, and expiring old snapshots followed by garbage collection.

Expiry is Icechunk's ``expire_snapshots``, which has no way to limit itself to one branch: it walks
every branch and every tag, and on each drops the snapshots written before the cut-off from the
history, whichever branch the cut-off was counted on. What each branch and tag points at stays
readable (we never ask Icechunk to delete expired branches or tags, and it never expires a tip or
the root snapshot), so a staging branch kept after a refused promotion keeps its staged snapshot
but loses its older history, including the snapshot it was staged on. Garbage collection then
deletes only objects that no kept snapshot references and that are older than the cut-off, so a
writer running at the same moment cannot lose the objects of its next commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from icechunk_operator.engine.errors import Refused
from icechunk_operator.failpoints import failpoint

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"duration {text!r}: expected a number and one of s, m, h, d, w (e.g. 7d)")
    try:
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        raise ValueError(f"duration {text!r}: too long (at most {timedelta.max.days:,} days)") from None


@dataclass(frozen=True)
class SnapshotLine:
    id: str
    written_at: datetime
    message: str
    batch: str | None


def history(repo: Any, branch: str, limit: int | None = None) -> list[SnapshotLine]:
    lines = []
    for info in repo.ancestry(branch=branch):
        lines.append(SnapshotLine(info.id, info.written_at, info.message, (info.metadata or {}).get("batch")))
        if limit is not None and len(lines) >= limit:
            break
    return lines


def tag_snapshot(repo: Any, tag: str, *, snapshot: str | None = None, branch: str = "main") -> str:
    """Tag ``snapshot`` (default: the branch's tip); returns the tagged snapshot id."""
    target = snapshot or repo.lookup_branch(branch)
    repo.create_tag(tag, target)
    return str(target)


class TagTakenError(Refused):
    """The tag exists and names another snapshot; Icechunk tags never move, so only another tag
    name (or deleting the tag by hand) lets the batch finish."""


def tag_once(repo: Any, tag: str, snapshot: str) -> None:
    """Tag ``snapshot``; a re-run that finds the tag on the same snapshot is fine."""
    if tag in repo.list_tags():
        existing = str(repo.lookup_tag(tag))
        if existing != snapshot:
            raise TagTakenError(f"spec.tag: tag {tag!r} exists already, on snapshot {existing}")
        return
    repo.create_tag(tag, snapshot)


@dataclass(frozen=True)
class ExpiryReport:
    cutoff: datetime
    expired: int
    snapshots_deleted: int
    manifests_deleted: int
    chunks_deleted: int
    bytes_deleted: int


def expiry_cutoff(
    written: list[datetime], *, older_than: timedelta | None, keep: int | None, now: datetime
) -> datetime:
    """The time before which snapshots expire: ``now - older_than``, or the time of the newest
    ``keep``-th snapshot of one branch (``written`` is its history, newest first). Exactly one
    rule applies. The cut-off then applies to every branch and tag, so ``keep`` counts snapshots
    of that branch only: another branch keeps what it wrote after the cut-off, however many."""
    if (older_than is None) == (keep is None):
        raise ValueError("give exactly one of older_than, keep")
    if older_than is not None:
        earliest = datetime.min.replace(tzinfo=now.tzinfo)
        # Older than the calendar's first day: nothing expires (``now - older_than`` overflows).
        return now - older_than if now - earliest > older_than else earliest
    assert keep is not None
    if keep < 1:
        raise ValueError("keep must be at least 1: the branch tip always stays")
    return written[keep - 1] if len(written) >= keep else min(written, default=now)


def expire_and_collect(
    repo: Any,
    branch: str,
    *,
    older_than: timedelta | None = None,
    keep: int | None = None,
    now: datetime | None = None,
) -> ExpiryReport:
    """Expire, on every branch and tag, the snapshots older than the cut-off ``branch`` gives
    (see :func:`expiry_cutoff`), then garbage-collect. Branches and tags are never deleted."""
    now = now or datetime.now(UTC)
    written = [info.written_at for info in repo.ancestry(branch=branch)]
    cutoff = expiry_cutoff(written, older_than=older_than, keep=keep, now=now)
    failpoint("expire")  # with kill-after: the kill lands inside the expiry
    expired = repo.expire_snapshots(
        older_than=cutoff, delete_expired_branches=False, delete_expired_tags=False
    )
    failpoint("collect")  # expired, not yet collected (with kill-after: inside the collection)
    summary = repo.garbage_collect(delete_object_older_than=cutoff)
    return ExpiryReport(
        cutoff=cutoff,
        expired=len(expired),
        snapshots_deleted=summary.snapshots_deleted,
        manifests_deleted=summary.manifests_deleted,
        chunks_deleted=summary.chunks_deleted,
        bytes_deleted=summary.bytes_deleted,
    )
