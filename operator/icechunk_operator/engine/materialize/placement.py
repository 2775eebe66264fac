"""Placing files on a group's grid: summaries + the registry -> what to write where. Pure.

Files are placed in URL order, each against the registry and the files placed before it, so one
batch decides the same way whatever order its files were listed or delivered in; across batches
the grid (fixed at creation) makes a late file land in its own place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from icechunk_operator.api.batch import OnOverlap
from icechunk_operator.engine.materialize.grid import (
    GridError,
    TimeGrid,
    day_start,
    describe_span,
    infer_interval,
)
from icechunk_operator.engine.materialize.registry import RegistryEntry
from icechunk_operator.engine.materialize.tasks import FilePlacement, FileSummary
from icechunk_operator.engine.records import FailureRecord


class OverlapError(ValueError):
    """The file's epochs are already in the store and ``onOverlap`` is ``fail``."""


class UnknownLabelsError(ValueError):
    """Labels along a non-append dimension that the group's axis does not have."""


class VariablesMismatchError(ValueError):
    """Variables the group does not have."""


@dataclass(frozen=True)
class PlacedFile:
    url: str
    placement: FilePlacement  # rows -> positions actually written (may be empty)
    clears: tuple[tuple[int, int], ...]  # the file's own old range, when it replaces itself
    entry: RegistryEntry


@dataclass
class GroupPlacement:
    placed: list[PlacedFile] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # content already in the group
    recorded: list[RegistryEntry] = field(default_factory=list)  # registry rows of the duplicates
    failures: list[FailureRecord] = field(default_factory=list)
    length: int = 0  # the grid length the group needs afterwards

    @property
    def written_epochs(self) -> int:
        return sum(p.entry.epochs for p in self.placed)


def new_grid(summaries: Sequence[FileSummary], interval_ns: int | None, origin_ns: int | None) -> TimeGrid:
    """The grid of a new group: the spec's interval and origin, else the data's most common step
    and the start of the UTC day of the earliest epoch."""
    if interval_ns is None:
        steps = [s for s in (infer_interval(x.times) for x in summaries) if s]
        if not steps:
            raise GridError(
                "cannot infer the sampling interval (no file has two epochs); set materialize.interval"
            )
        values, counts = np.unique(np.asarray(steps), return_counts=True)
        interval_ns = int(values[np.argmax(counts)])
    if origin_ns is None:
        origin_ns = day_start(min(int(s.times.min()) for s in summaries))
    return TimeGrid(origin_ns, interval_ns)


def place_group(
    group: str,
    summaries: Sequence[FileSummary],
    grid: TimeGrid,
    length: int,
    registry: Mapping[str, RegistryEntry],
    on_overlap: OnOverlap,
    axes: Mapping[str, set[object]],
    variables: set[str],
    drops_unknown_labels: bool,
    batch: str,
    stamp: str,
    processing: str = "",
) -> GroupPlacement:
    """Decide every file of one group in a window. ``registry`` holds the group's entries by URL,
    ``axes`` the labels of its other dimensions, ``length`` its current grid length."""
    result = GroupPlacement(length=length)
    live = {url: e for url, e in registry.items() if not e.removed and e.epochs > 0}
    digests = {(e.digest, e.processing) for e in registry.values() if not e.removed}
    for summary in sorted(summaries, key=lambda s: s.url):
        previous = registry.get(summary.url)
        known = (summary.digest, processing) in digests
        if known and (previous is None or previous.removed or previous.digest == summary.digest):
            result.duplicates.append(summary.url)
            result.recorded.append(
                RegistryEntry(group, summary.url, summary.digest, processing, -1, -1, 0, batch, stamp)
            )
            continue
        try:
            _check_axes(summary, axes, variables, drops_unknown_labels)
            positions = grid.indices(summary.times)
        except (GridError, UnknownLabelsError, VariablesMismatchError) as error:
            result.failures.append(FailureRecord(summary.url, type(error).__name__, str(error), group))
            continue
        rows = np.arange(positions.size, dtype=np.int64)
        others = {url: e for url, e in live.items() if url != summary.url}
        taken = _taken(positions, others.values())
        if taken.any() and on_overlap == OnOverlap.FAIL:
            owners = sorted({url for url, e in others.items() if _overlaps(positions, e)})
            span = describe_span(
                grid.time_of(int(positions[taken].min())),
                grid.time_of(int(positions[taken].max())) + grid.interval_ns,
            )
            message = f"epochs {span} are already in the store (from {', '.join(owners[:3])})"
            result.failures.append(FailureRecord(summary.url, OverlapError.__name__, message, group))
            continue
        if on_overlap == OnOverlap.SKIP:
            rows, positions = rows[~taken], positions[~taken]
        clears: tuple[tuple[int, int], ...] = ()
        if previous is not None and not previous.removed and previous.epochs > 0:
            clears = ((previous.first, previous.last + 1),)  # a corrected file takes back its old epochs
        order = np.argsort(positions, kind="stable")
        rows, positions = rows[order], positions[order]
        entry = RegistryEntry(
            group,
            summary.url,
            summary.digest,
            processing,
            int(positions[0]) if positions.size else -1,
            int(positions[-1]) if positions.size else -1,
            int(positions.size),
            batch,
            stamp,
        )
        result.placed.append(
            PlacedFile(summary.url, FilePlacement(summary.url, rows, positions), clears, entry)
        )
        digests.add((summary.digest, processing))
        if positions.size:
            live[summary.url] = entry
            result.length = max(result.length, int(positions[-1]) + 1)
    return result


def _overlaps(positions: np.ndarray, entry: RegistryEntry) -> bool:
    return bool(((positions >= entry.first) & (positions <= entry.last)).any())


def _taken(positions: np.ndarray, entries: object) -> np.ndarray:
    taken = np.zeros(positions.shape, dtype=bool)
    for entry in entries:  # type: ignore[attr-defined]
        taken |= (positions >= entry.first) & (positions <= entry.last)
    return taken


def _check_axes(
    summary: FileSummary, axes: Mapping[str, set[object]], variables: set[str], drops_unknown: bool
) -> None:
    extra = sorted(set(summary.variables) - variables)
    if variables and extra:
        raise VariablesMismatchError(f"variables {extra} are not in the group (it has {sorted(variables)})")
    if drops_unknown:
        return
    for dim, labels in summary.labels.items():
        known = axes.get(dim)
        if known is None:
            continue
        unknown = [label for label in labels.tolist() if label not in known]
        if unknown:
            raise UnknownLabelsError(
                f"{len(unknown)} labels along {dim!r} are not in the group's axis (first: {unknown[0]!r})"
            )
