"""The time axis of a materialized group: a regular grid ``origin + i * interval``. Pure.

A file's epochs land at the index their time gives, whatever order files arrive in: the grid is
fixed when the group is created (origin and interval in its attributes), so a late file fills
its own place and a re-delivered one lands exactly where it did before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
_UNITS_NS = {"ms": 1_000_000, "s": NS_PER_SECOND, "m": 60 * NS_PER_SECOND, "h": 3600 * NS_PER_SECOND}
#: An epoch may sit this fraction of an interval off its grid point (receiver clock jitter).
GRID_TOLERANCE = 0.1


class GridError(ValueError):
    """A file's epochs cannot be placed on the group's time grid."""


class BeforeOriginError(GridError):
    """Epochs earlier than the grid's first one: the axis cannot grow backwards."""


class OffGridError(GridError):
    """Epochs between grid points (another sampling phase or interval)."""


class DuplicateEpochError(GridError):
    """Two epochs of one file fall on the same grid point."""


def parse_duration(text: str) -> int:
    """'5s', '2.5s', '100ms', '1h' -> nanoseconds."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 5s, 2.5s, 100ms)")
    nanoseconds = round(float(match.group(1)) * _UNITS_NS[match.group(2)])
    if nanoseconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return nanoseconds


def infer_interval(times_ns: np.ndarray) -> int | None:
    """The most common step between consecutive epochs; None with fewer than two epochs."""
    if times_ns.size < 2:
        return None
    steps = np.diff(np.sort(times_ns))
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def day_start(time_ns: int) -> int:
    return (time_ns // NS_PER_DAY) * NS_PER_DAY


def as_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (seconds.days * 86_400 + seconds.seconds) * NS_PER_SECOND + seconds.microseconds * 1000


@dataclass(frozen=True)
class TimeGrid:
    origin_ns: int
    interval_ns: int

    def indices(self, times_ns: np.ndarray) -> np.ndarray:
        """Grid index of every epoch; raises :class:`GridError` for epochs it cannot place."""
        offsets = times_ns.astype(np.int64) - self.origin_ns
        if offsets.size and offsets.min() < -self.interval_ns * GRID_TOLERANCE:
            first = format_time(int(times_ns.min()))
            raise BeforeOriginError(
                f"epoch {first} is before the group's first epoch {format_time(self.origin_ns)}; "
                "the time axis cannot grow backwards (set materialize.origin earlier for a new store)"
            )
        index = np.rint(offsets / self.interval_ns).astype(np.int64)
        off = np.abs(offsets - index * self.interval_ns) > self.interval_ns * GRID_TOLERANCE
        if off.any():
            where = int(np.argmax(off))
            raise OffGridError(
                f"{int(off.sum())} epochs are off the {self.interval_ns / NS_PER_SECOND:g} s grid "
                f"starting {format_time(self.origin_ns)} (first: {format_time(int(times_ns[where]))})"
            )
        unique, counts = np.unique(index, return_counts=True)
        if (counts > 1).any():
            twice = int(unique[np.argmax(counts > 1)])
            raise DuplicateEpochError(
                f"{int((counts > 1).sum())} epochs appear more than once "
                f"(first: {format_time(self.time_of(twice))})"
            )
        return index

    def time_of(self, index: int) -> int:
        return self.origin_ns + index * self.interval_ns

    def times(self, start: int, stop: int) -> np.ndarray:
        return self.origin_ns + np.arange(start, stop, dtype=np.int64) * self.interval_ns


def format_time(time_ns: int) -> str:
    moment: datetime = np.datetime64(time_ns, "ns").astype("datetime64[s]").item()
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


#: Between the two ends of a span, as typeset ranges are written.
SPAN_DASH = "\N{EN DASH}"


def describe_span(first_ns: int, end_ns: int) -> str:
    """'2025-001 00:00-06:00' (one day) or '2025-001 00:00-2025-002 06:00', with an en dash: how
    commit messages name what was added, in the year-and-day-of-year form GNSS archives use."""
    first = np.datetime64(first_ns, "ns").astype("datetime64[s]").item()
    end = np.datetime64(end_ns, "ns").astype("datetime64[s]").item()
    start_text = first.strftime("%Y-%j %H:%M")
    if end.date() == first.date():
        return f"{start_text}{SPAN_DASH}{end.strftime('%H:%M')}"
    if (end.date() - first.date()).days == 1 and end.time() == end.time().min:
        return f"{start_text}{SPAN_DASH}24:00"
    return f"{start_text}{SPAN_DASH}{end.strftime('%Y-%j %H:%M')}"
