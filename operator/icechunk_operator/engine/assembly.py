"""One group's parsed files -> its payload, and the parser protocol that feeds it.

A :class:`FileParser` takes a group's files one at a time and keeps what parsed; ``finish``
combines them into the payload the writer puts into the store. The worker drives it; where the
datasets live is the parser's business: in the worker (:class:`InProcessParser`) or in a parser
process beside it (:class:`~icechunk_operator.engine.isolation.IsolatedParser`), which then
sends back only the finished payload (a few KB per group) instead of every file's dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import xarray as xr

from icechunk_operator.api.batch import Combine
from icechunk_operator.engine.documents import GroupPayload, build_payload
from icechunk_operator.engine.planning import GroupWork
from icechunk_operator.engine.prefetch import Head
from icechunk_operator.engine.records import FailureRecord, SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions, virtualize_file

#: A group's payload (None when no file of it parsed) and the failures its assembly found.
Assembled = tuple[GroupPayload | None, list[FailureRecord]]


class FileParser(Protocol):
    def parse(self, work: GroupWork, source: SourceFile, head: Head | None) -> None:
        """Parse one file of ``work`` and keep it, or raise what becomes its failure record."""

    def finish(self, work: GroupWork) -> Assembled:
        """The payload of the files kept since the last ``finish``, which it forgets."""


def combine_datasets(datasets: Sequence[xr.Dataset], combine: Combine, dimension: str | None) -> xr.Dataset:
    if len(datasets) == 1 or combine == Combine.ONE:
        return datasets[0]
    if combine == Combine.CONCAT:
        return xr.concat(
            list(datasets),
            dim=dimension,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
            combine_attrs="override",
        )
    return xr.merge(list(datasets), compat="override", join="override", combine_attrs="override")


def assemble_group(work: GroupWork, good: Sequence[tuple[SourceFile, xr.Dataset]]) -> Assembled:
    """The payload of the files that parsed; an incompatible member spoils the group (each of
    its files gets the failure record), not the batch."""
    if not good:
        return None, []
    try:
        combined = combine_datasets([ds for _, ds in good], work.combine, work.dimension)
        return build_payload(work.group, combined, tuple(s for s, _ in good), work.mode, work.dimension), []
    except Exception as error:
        return None, [
            FailureRecord(s.url, type(error).__name__, str(error)[:2000], work.group) for s, _ in good
        ]


class InProcessParser:
    """Parses in the calling process: no deadline, no isolation (tests, and any caller that
    passes no parse limits)."""

    def __init__(self, options: VirtualizeOptions, registry: Any) -> None:
        self._options = options
        self._registry = registry
        self._good: list[tuple[SourceFile, xr.Dataset]] = []

    def parse(self, work: GroupWork, source: SourceFile, head: Head | None) -> None:
        self._good.append((source, virtualize_file(source, self._options, self._registry, head)))

    def finish(self, work: GroupWork) -> Assembled:
        good, self._good = self._good, []
        return assemble_group(work, good)
