"""Plain records that flow through the engine: source files, ledger entries, failures.

They are frozen dataclasses (cheap to pickle between Dask workers and the writer) with no
behaviour beyond small derived properties.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file as the listing saw it. ``etag`` or ``mtime`` tell whether it changed later."""

    url: str
    size: int
    etag: str | None = None
    mtime: float | None = None  # seconds since the epoch

    def same_content_as(self, other: SourceFile | LedgerEntry) -> bool:
        """True when size and the strongest shared identity (ETag, else mtime) agree."""
        if self.size != other.size:
            return False
        if self.etag is not None and other.etag is not None:
            return self.etag == other.etag
        if self.mtime is not None and other.mtime is not None:
            return abs(self.mtime - other.mtime) < 1e-3
        return False  # nothing to compare: treat as changed rather than risk stale references

    @property
    def checksum(self) -> str | datetime | None:
        """What Icechunk stores with each reference to detect a later change of the object."""
        if self.etag is not None:
            return self.etag
        if self.mtime is not None:
            # Icechunk keeps whole seconds and refuses reads of objects modified after the
            # checksum time: round up, so a sub-second mtime does not look like a change.
            return datetime.fromtimestamp(math.ceil(self.mtime) + 1, UTC)
        return None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One source file recorded in the store, written in the same commit as its references."""

    url: str
    size: int
    etag: str | None
    mtime: float | None
    group: str
    batch: str
    ingested_at: str
    removed: bool = False  # a tombstone: the group no longer references this file

    def as_source(self) -> SourceFile:
        return SourceFile(self.url, self.size, self.etag, self.mtime)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Why one file did not make it into the store."""

    url: str
    error_class: str
    message: str
    group: str | None
    attempts: int = 1
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
