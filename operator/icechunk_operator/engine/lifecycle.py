"""Store lifecycle: history, tags, and expiring old snapshots followed by garbage collection.

Expiry keeps what a reader may still need: the snapshots that branches and tags point at stay
readable (Icechunk never expires those), and garbage collection then deletes only objects that
no kept snapshot references and that are older than the cut-off, so a writer running at the same
moment cannot lose the objects of its next commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"duration {text!r}: expected a number and one of s, m, h, d, w (e.g. 7d)")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


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


class TagTakenError(ValueError):
    """The tag exists and names another snapshot; Icechunk tags never move."""


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
    ``keep``-th snapshot (``written`` is newest first). Exactly one rule applies."""
    if (older_than is None) == (keep is None):
        raise ValueError("give exactly one of older_than, keep")
    if older_than is not None:
        return now - older_than
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
    now = now or datetime.now(UTC)
    written = [info.written_at for info in repo.ancestry(branch=branch)]
    cutoff = expiry_cutoff(written, older_than=older_than, keep=keep, now=now)
    expired = repo.expire_snapshots(older_than=cutoff)
    summary = repo.garbage_collect(delete_object_older_than=cutoff)
    return ExpiryReport(
        cutoff=cutoff,
        expired=len(expired),
        snapshots_deleted=summary.snapshots_deleted,
        manifests_deleted=summary.manifests_deleted,
        chunks_deleted=summary.chunks_deleted,
        bytes_deleted=summary.bytes_deleted,
    )
