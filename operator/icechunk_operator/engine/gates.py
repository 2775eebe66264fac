"""Validation gates: the checks a staged run must pass before the target branch moves.

A sample read (:mod:`icechunk_operator.engine.references`) proves that chunks decode; it cannot
tell that a day is missing or a file arrived twice. These gates look at what readers would
query, on the staged branch, and each problem becomes one message that names the gate, the
group and the offending time, because the message is all a person sees in ``status.message``:

- ``timeContinuity``: the time coordinate of every staged group rises strictly, with no step
  wider than ``maxGap`` (decoded from CF units as xarray decodes it);
- ``filesPerPeriod``: the periods the run wrote into, or closed, hold enough files, counted from
  the materialized registry (which file filled which epochs).

The counting and step checks are pure functions over integer nanoseconds; only
:func:`check_gates` reads the store.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from icechunk_operator.api.batch import FilesPerPeriodGate, TimeContinuityGate, ValidationSpec
from icechunk_operator.engine.lifecycle import parse_duration
from icechunk_operator.engine.materialize.grid import TimeGrid
from icechunk_operator.engine.materialize.layout import ATTRIBUTE, dimension_names
from icechunk_operator.engine.materialize.registry import RegistryEntry, read_registry

NS_PER_SECOND = 1_000_000_000
#: Largest first: a width is written in the largest unit that divides it (27h, 2d, 90m).
_UNITS = (("d", 86_400 * NS_PER_SECOND), ("h", 3600 * NS_PER_SECOND), ("m", 60 * NS_PER_SECOND))


def duration_ns(text: str) -> int:
    """A gate's duration ('1h', '1d', '15m', '30s') in nanoseconds."""
    return _ns(parse_duration(text))


def _ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


def format_width(width_ns: int) -> str:
    for unit, size in _UNITS:
        if width_ns % size == 0:
            return f"{width_ns // size}{unit}"
    return f"{width_ns / NS_PER_SECOND:g}s"


def format_moment(time_ns: int) -> str:
    """'2024-01-03T21:00', with seconds only when they are not zero."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second else "%Y-%m-%dT%H:%M")


# --- timeContinuity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Steps:
    """Where a time axis goes wrong: indices ``i`` of the steps ``times[i] -> times[i + 1]``."""

    not_rising: np.ndarray
    too_wide: np.ndarray


def find_bad_steps(times_ns: np.ndarray, max_gap_ns: int) -> Steps:
    steps = np.diff(np.asarray(times_ns, dtype=np.int64))
    return Steps(np.flatnonzero(steps <= 0), np.flatnonzero(steps > max_gap_ns))


def continuity_failures(
    group: str, dimension: str, times_ns: np.ndarray, label: Callable[[int], str], gate: TimeContinuityGate
) -> list[str]:
    """At most two messages for a group (the first step back or repeated value, the first gap),
    each saying how many more there are. ``label(i)`` is the i-th time as a person reads it, in
    the file's calendar (which ``times_ns``, offsets for comparing, cannot show); it is called
    only for the few indices a message names, not for a year of 5 s epochs."""
    found = find_bad_steps(times_ns, duration_ns(gate.max_gap))
    failures = []
    if found.not_rising.size:
        i = int(found.not_rising[0])
        what = (
            f"{label(i)} appears twice (index {i} and {i + 1})"
            if times_ns[i] == times_ns[i + 1]
            else f"steps back from {label(i)} to {label(i + 1)} (index {i + 1})"
        )
        failures.append(f"timeContinuity: {group}: {dimension!r} not rising: {what}{_more(found.not_rising)}")
    if found.too_wide.size:
        i = int(found.too_wide[0])
        width = format_width(int(times_ns[i + 1] - times_ns[i]))
        failures.append(
            f"timeContinuity: {group}: time steps from {label(i)} to {label(i + 1)} ({width}) wider than "
            f"maxGap {gate.max_gap}{_more(found.too_wide)}"
        )
    return failures


def _more(found: np.ndarray) -> str:
    return f" (and {found.size - 1} more)" if found.size > 1 else ""


def decode_times(
    name: str, values: np.ndarray, attrs: dict[str, Any]
) -> tuple[np.ndarray, Callable[[int], str]] | str:
    """Offsets in nanoseconds and readable labels, decoded as xarray decodes the coordinate
    (CF ``units``/``calendar``; int64 nanoseconds of materialized groups included). A string
    says why the values are not times."""
    import xarray as xr

    try:
        variable = xr.conventions.decode_cf_variable(name, xr.Variable((name,), values, attrs))
    except Exception as error:  # a broken units attribute: the gate's finding, not a crash
        return f"{name!r} does not decode to times ({type(error).__name__}: {error})"
    data = np.asarray(variable.values)
    if np.issubdtype(data.dtype, np.datetime64):
        stamps = data.astype("datetime64[ns]")
        if np.isnat(stamps).any():
            first = int(np.argmax(np.isnat(stamps)))
            return f"{name!r} has {int(np.isnat(stamps).sum())} missing values (first at index {first})"
        times_ns = stamps.astype(np.int64)
        return times_ns, lambda i: format_moment(int(times_ns[i]))
    if data.dtype == object and data.size and hasattr(data[0], "calendar"):  # cftime: other calendars
        zero = type(data[0])(1970, 1, 1, calendar=data[0].calendar)
        times_ns = np.array([_ns(t - zero) for t in data], dtype=np.int64)
        return times_ns, lambda i: str(data[i].strftime("%Y-%m-%dT%H:%M"))
    units = attrs.get("units")
    return f"{name!r} holds {data.dtype} values{f' in {units!r}' if units else ''}, not CF times"


# --- filesPerPeriod ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodCount:
    start_ns: int
    files: int


def period_of(time_ns: int, period_ns: int) -> int:
    """Periods are aligned to 1970-01-01T00:00Z: hours start on the hour, days at midnight UTC."""
    return time_ns // period_ns


def required_files(gate: FilesPerPeriodGate) -> int:
    """The fewest files that pass (0.9 of 96 needs 87); rounded so 0.75 * 4 is 3, not 3.0000001."""
    return math.ceil(round(gate.min_fraction * gate.expected, 9))


def incomplete_periods(
    starts_ns: Iterable[int],
    newest_ns: int,
    touched_ns: Iterable[int],
    closed_from_ns: int | None,
    period_ns: int,
    required: int,
) -> list[PeriodCount]:
    """The judged periods that hold fewer than ``required`` files, oldest first.

    A file counts in the period of its first epoch (``starts_ns``: every live file of the
    group). The period holding ``newest_ns``, the group's newest epoch, is still being delivered
    and is never judged. Judged are the periods before it that the run

    - wrote into (``touched_ns``: first epochs of files it added, corrected or took back), and
    - closed: every period from the one that held the newest epoch before the run
      (``closed_from_ns``; None for a new group, then from its first file) up to the open one,
      so a period with no file at all between old and new data is caught too.

    Older periods the run did not write into are not judged again: a receiver outage accepted
    last month must not block every later update.
    """
    counts = Counter(period_of(t, period_ns) for t in starts_ns)
    if not counts:
        return []
    open_period = period_of(newest_ns, period_ns)
    judged = {period_of(t, period_ns) for t in touched_ns}
    first_closed = period_of(closed_from_ns, period_ns) if closed_from_ns is not None else min(counts)
    judged.update(range(first_closed, open_period))
    return [
        PeriodCount(p * period_ns, counts[p])
        for p in sorted(judged)
        if p < open_period and counts[p] < required
    ]


def describe_period(start_ns: int, period_ns: int) -> str:
    """'2025-01-01T00:00Z..01:00Z', or the whole end when the period ends on another day."""
    start, end = format_moment(start_ns), format_moment(start_ns + period_ns)
    same_day = start[:10] == end[:10]
    return f"{start}Z..{end[11:] if same_day else end}Z"


def period_failures(group: str, gate: FilesPerPeriodGate, incomplete: Iterable[PeriodCount]) -> list[str]:
    period_ns = duration_ns(gate.period)
    return [
        f"filesPerPeriod: {group} {describe_period(c.start_ns, period_ns)} holds {c.files} of "
        f"{gate.expected} files ({_percent(c.files / gate.expected)} < {_percent(gate.min_fraction)})"
        for c in incomplete
    ]


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}".removesuffix(".0") + "%"


def group_periods(
    grid: TimeGrid,
    staged: Iterable[RegistryEntry],
    base: Mapping[str, RegistryEntry],
    period_ns: int,
    required: int,
) -> list[PeriodCount]:
    """:func:`incomplete_periods` for one group from its registry entries now (``staged``) and
    before the run (``base``, by URL). A file counts while it is not removed and filled epochs
    (a re-delivered duplicate fills none). "Touched" is what differs from the base registry, not
    the entries' ``batch`` field: a scheduled run is a new batch each time, and a re-run of a
    refused batch on its staging branch still differs from the base for everything it wrote."""
    now = {e.url: e for e in staged}
    live = [e for e in now.values() if _fills(e)]
    before = [e for e in base.values() if _fills(e)]
    touched: list[int] = []
    for url, entry in now.items():
        previous = base.get(url)
        if entry == previous:
            continue
        touched.extend(grid.time_of(e.first) for e in (entry, previous) if e is not None and _fills(e))
    if not live:
        return []
    return incomplete_periods(
        (grid.time_of(e.first) for e in live),
        max(grid.time_of(e.last) for e in live),
        touched,
        max(grid.time_of(e.last) for e in before) if before else None,
        period_ns,
        required,
    )


def _fills(entry: RegistryEntry) -> bool:
    return not entry.removed and entry.epochs > 0


# --- reading the staged store --------------------------------------------------------------------


def check_gates(
    repo: Any, store: Any, base: str, groups: Sequence[str], validation: ValidationSpec
) -> list[str]:
    """Every gate failure of the staged ``groups`` (``store`` is the staged session's store;
    ``base`` the target's snapshot the staging started from), one message per problem."""
    failures: list[str] = []
    if validation.time_continuity is not None:
        for group in groups:
            failures.extend(_check_continuity(store, group, validation.time_continuity))
    if validation.files_per_period is not None:
        failures.extend(_check_periods(repo, store, base, groups, validation.files_per_period))
    return failures


def _check_continuity(store: Any, group: str, gate: TimeContinuityGate) -> list[str]:
    import zarr

    node = zarr.open_group(store, path=group, mode="r")
    array = node.get(gate.dimension)
    if not isinstance(array, zarr.Array) or dimension_names(array) != (gate.dimension,):
        return []  # not a time series along this dimension: nothing to judge
    decoded = decode_times(gate.dimension, np.asarray(array[:]), dict(array.attrs))
    if isinstance(decoded, str):
        return [f"timeContinuity: {group}: {decoded}"]
    times_ns, label = decoded
    return continuity_failures(group, gate.dimension, times_ns, label, gate)


def _check_periods(
    repo: Any, store: Any, base: str, groups: Sequence[str], gate: FilesPerPeriodGate
) -> list[str]:
    staged_registry = _registry(store)
    base_registry = _registry(repo.readonly_session(snapshot_id=base).store)
    period_ns, required = duration_ns(gate.period), required_files(gate)
    failures: list[str] = []
    for group in sorted(set(groups) & {g for g, _ in staged_registry}):
        grid = _grid(store, group)
        if grid is None:
            failures.append(f"filesPerPeriod: {group}: no materialized time grid to count files on")
            continue
        entries = [e for (g, _), e in staged_registry.items() if g == group]
        before = {url: e for (g, url), e in base_registry.items() if g == group}
        failures.extend(
            period_failures(group, gate, group_periods(grid, entries, before, period_ns, required))
        )
    return failures


def _grid(store: Any, group: str) -> TimeGrid | None:
    import zarr

    ours = zarr.open_group(store, path=group, mode="r").attrs.get(ATTRIBUTE)
    settings = ours.get("materialize") if isinstance(ours, dict) else None
    if not isinstance(settings, dict):
        return None
    return TimeGrid(int(settings["origin_ns"]), int(settings["interval_ns"]))


def _registry(store: Any) -> dict[tuple[str, str], RegistryEntry]:
    with asyncio.Runner() as runner:
        return runner.run(read_registry(store))
