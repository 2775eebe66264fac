"""One materialized batch: list, plan against the ledger, then window by window read on the
workers, place on the grid, write objects through forked sessions, merge and commit.

A window (``materialize.filesPerCommit`` files) is one commit: its chunks, its ledger page and
its registry page land together or not at all, so a crash leaves the store at its last good
snapshot and a re-run starts from the first window not committed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icechunk_operator import __version__
from icechunk_operator.api.batch import IngestBatch, MaterializeSpec
from icechunk_operator.engine.commits import CommitRetry, commit_with_retry
from icechunk_operator.engine.ledger import (
    COMPACT_AFTER_PAGES,
    compact_pages,
    encode_page,
    list_pages,
    new_page_name,
    page_documents,
)
from icechunk_operator.engine.materialize.grid import GridError, as_ns, describe_span, parse_duration
from icechunk_operator.engine.materialize.layout import (
    ForeignGroupError,
    GroupState,
    create_group,
    grow,
    read_state,
)
from icechunk_operator.engine.materialize.placement import GroupPlacement, new_grid, place_group
from icechunk_operator.engine.materialize.readers import load_reader
from icechunk_operator.engine.materialize.registry import (
    REGISTRY_GROUP,
    RegistryEntry,
    load_registry,
    processing_key,
    registry_documents,
)
from icechunk_operator.engine.materialize.tasks import (
    FilePlacement,
    ObjectWrite,
    ParsedFile,
    read_file,
    summary_of,
    write_object,
)
from icechunk_operator.engine.parse_protocol import ParseLimits
from icechunk_operator.engine.records import FailureRecord, LedgerEntry, SourceFile, now_iso
from icechunk_operator.engine.writer import GroupWriter
from icechunk_operator.failpoints import failpoint


@dataclass
class WindowResult:
    done: int = 0
    skipped: int = 0
    failures: list[FailureRecord] = field(default_factory=list)
    repairs: list[FailureRecord] = field(default_factory=list)
    snapshot: str | None = None
    seconds_reading: float = 0.0


@dataclass(frozen=True)
class Window:
    """Files to ingest now, each with its group; ``replacing`` are files the ledger knows."""

    files: tuple[tuple[SourceFile, str], ...]


def windows(work: Sequence[tuple[SourceFile, str]], size: int) -> list[Window]:
    ordered = sorted(work, key=lambda item: item[0].url)
    return [Window(tuple(ordered[i : i + size])) for i in range(0, len(ordered), size)]


def axes_template(parsed: ParsedFile, reader_name: str, options: dict[str, Any], dimension: str) -> Any:
    """Runs on the worker that holds the file: the store's axes and a zero-length sample."""
    reader = load_reader(reader_name)
    dataset = parsed.dataset
    return reader.axes(dataset, options, dimension), dataset.isel({dimension: slice(0, 0)})


class MaterializedWriter:
    """The commit process's side: one window at a time, one commit each."""

    def __init__(
        self,
        repo: Any,
        branch: str,
        batch: IngestBatch,
        spec_hash: str,
        containers_json: str,
        retry: CommitRetry,
        limits: ParseLimits | None = None,
        ledger: Mapping[str, LedgerEntry] | None = None,
    ) -> None:
        assert batch.spec.materialize is not None
        self._repo = repo
        self._branch = branch
        self._batch = batch
        self._spec: MaterializeSpec = batch.spec.materialize
        self._spec_hash = spec_hash
        self._containers_json = containers_json
        self._retry = retry
        self._limits = limits
        self._ledger = dict(ledger or {})
        self._reader = load_reader(self._spec.reader)
        self._options = dict(self._spec.reader_options)
        self.processing = processing_key(self._spec.reader, self._options, self._spec.append_dimension)
        self.commits: list[str] = []
        self.commit_seconds = 0.0
        self.write_seconds = 0.0

    def run_window(self, client: Any, window: Window) -> WindowResult:
        spec = self._spec
        dimension = spec.append_dimension
        execution = self._batch.spec.execution
        futures = client.map(
            read_file,
            [source for source, _ in window.files],
            [group for _, group in window.files],
            reader_name=spec.reader,
            reader_options=self._options,
            dimension=dimension,
            containers_json=self._containers_json,
            transient_retries=execution.retries,
            accept_repairs=spec.accept_repairs,
            limits=self._limits,
            pure=False,
        )
        by_url = {source.url: future for (source, _), future in zip(window.files, futures, strict=True)}
        summaries: list[ParsedFile] = client.gather(client.map(summary_of, futures, pure=False))
        failpoint("virtualizing")
        result = WindowResult()
        result.failures.extend(p.failure for p in summaries if p.failure is not None)
        result.repairs.extend(p.repair for p in summaries if p.repair is not None)
        result.seconds_reading = sum(p.summary.seconds for p in summaries if p.summary is not None)
        readable = [p for p in summaries if p.summary is not None]
        if not readable:
            return result

        started = time.perf_counter()
        session = self._repo.writable_session(self._branch)
        registry = load_registry(session)
        stamp = now_iso()
        sources = {source.url: source for source, _ in window.files}
        placements: dict[str, GroupPlacement] = {}
        states: dict[str, GroupState] = {}
        by_group: dict[str, list[ParsedFile]] = defaultdict(list)
        for parsed in readable:
            by_group[parsed.group].append(parsed)
        for group, members in sorted(by_group.items()):
            group_summaries = [p.summary for p in members if p.summary is not None]
            try:
                state = read_state(session.store, group, dimension)
                grid = (
                    None
                    if state.exists
                    else new_grid(
                        group_summaries,
                        parse_duration(spec.interval) if spec.interval else None,
                        as_ns(spec.origin) if spec.origin else None,
                    )
                )
            except (GridError, ForeignGroupError) as error:  # the group's files cannot be placed
                result.failures.extend(
                    FailureRecord(p.source.url, type(error).__name__, str(error), group) for p in members
                )
                continue
            if grid is not None:
                first = min(members, key=lambda p: p.source.url)
                axes, sample = client.submit(
                    axes_template, by_url[first.source.url], spec.reader, self._options, dimension, pure=False
                ).result()
                state = create_group(session.store, group, axes, sample, spec, grid, spec.reader)
            assert state.grid is not None
            entries = {url: e for (g, url), e in registry.items() if g == group}
            placement = place_group(
                group,
                group_summaries,
                state.grid,
                state.length,
                entries,
                spec.on_overlap,
                state.axes,
                state.variables,
                self._reader.drops_unknown_labels,
                self._batch.metadata.name,
                stamp,
                self.processing,
            )
            grow(session.store, group, state, placement.length, dimension)
            placements[group], states[group] = placement, state
            result.failures.extend(placement.failures)

        tasks = [
            task
            for group in sorted(placements)
            for task in object_writes(group, placements[group], states[group], dimension)
        ]
        forks = []
        for task in tasks:
            urls = sorted({p.url for p in task.placements})
            forks.append(
                client.submit(write_object, session.fork(), task, *[by_url[u] for u in urls], pure=False)
            )
        merged = client.gather(forks)
        if merged:
            session.merge(*merged)
        failpoint("written")
        self.write_seconds += time.perf_counter() - started

        placed = [p for g in placements.values() for p in g.placed]
        duplicates = [u for g in placements.values() for u in g.duplicates]
        result.done = len(placed)
        result.skipped = len(duplicates)
        group_of = {
            u: g for g, pl in placements.items() for u in [*(p.url for p in pl.placed), *pl.duplicates]
        }
        ledger = [
            LedgerEntry(
                url,
                sources[url].size,
                sources[url].etag,
                sources[url].mtime,
                group_of[url],
                self._batch.metadata.name,
                stamp,
            )
            for url in sorted(group_of)
        ]
        if ledger:
            rows = [p.entry for p in placed] + [e for g in placements.values() for e in g.recorded]
            with asyncio.Runner() as runner:
                documents = runner.run(self._pages(session.store, ledger, rows, registry))
                GroupWriter(runner).put_documents(session, documents)
            result.snapshot = self._commit(session, placements, states, len(ledger))
        client.cancel(futures)
        return result

    async def _pages(
        self,
        store: Any,
        ledger: list[LedgerEntry],
        rows: list[RegistryEntry],
        registry: dict[tuple[str, str], RegistryEntry],
    ) -> dict[str, bytes]:
        """This window's ledger and registry pages; each folded with all earlier pages into one
        once the branch holds :data:`COMPACT_AFTER_PAGES` of them."""
        for entry in ledger:
            self._ledger[entry.url] = entry
        if len(await list_pages(store)) + 1 >= COMPACT_AFTER_PAGES:
            await compact_pages(store)
            ledger = list(self._ledger.values())
        if len(await list_pages(store, REGISTRY_GROUP)) + 1 >= COMPACT_AFTER_PAGES:
            await compact_pages(store, REGISTRY_GROUP)
            rows = list((registry | {(e.group, e.url): e for e in rows}).values())
        return page_documents(new_page_name(), encode_page(ledger)) | registry_documents(rows)

    def _commit(
        self, session: Any, placements: dict[str, GroupPlacement], states: dict[str, GroupState], files: int
    ) -> str:
        message = commit_message(self._batch.spec.commit.message, placements, states)
        metadata = {
            "batch": self._batch.metadata.name,
            "spec_hash": self._spec_hash,
            "tool": "icechunk-operator",
            "tool_version": __version__,
            "mode": "materialize",
            "reader": self._spec.reader,
            "files": files,
            "checkpoint": uuid.uuid4().hex,
        }
        if self._batch.spec.tag:
            metadata["processing_version"] = self._batch.spec.tag
        started = time.perf_counter()
        failpoint("commit")
        snapshot = commit_with_retry(self._repo, self._branch, session, message, metadata, self._retry)
        failpoint("commit.after")
        self.commit_seconds += time.perf_counter() - started
        self.commits.append(snapshot)
        return snapshot


def object_writes(
    group: str, placement: GroupPlacement, state: GroupState, dimension: str
) -> list[ObjectWrite]:
    """One task per stored object the window touches: the files' epochs split at object
    boundaries, so no two tasks ever write the same object."""
    chunk = state.chunk
    by_object: dict[int, list[FilePlacement]] = defaultdict(list)
    clears: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for placed in placement.placed:
        positions = placed.placement.positions
        objects = positions // chunk
        for index in np.unique(objects).tolist():
            inside = objects == index
            by_object[index].append(
                FilePlacement(placed.url, placed.placement.rows[inside], positions[inside])
            )
        for start, stop in placed.clears:
            for index in range(start // chunk, (stop - 1) // chunk + 1):
                lo, hi = max(start, index * chunk), min(stop, (index + 1) * chunk)
                clears[index].append((lo, hi))
    writes = []
    for index in sorted(set(by_object) | set(clears)):
        writes.append(
            ObjectWrite(
                group,
                dimension,
                index * chunk,
                min(state.length, (index + 1) * chunk),
                state.inner,
                tuple(sorted(state.variables)),
                tuple(by_object.get(index, [])),
                tuple(clears.get(index, [])),
            )
        )
    return writes


def commit_message(
    prefix: str | None, placements: dict[str, GroupPlacement], states: dict[str, GroupState]
) -> str:
    """'Added 2025-001 00:00-06:00, 24 files' (an en dash): the epochs written, per group when
    several."""
    parts = []
    for group in sorted(placements):
        placement, grid = placements[group], states[group].grid
        assert grid is not None
        written = [p.entry for p in placement.placed if p.entry.epochs]
        if not written:
            continue
        first = min(e.first for e in written)
        last = max(e.last for e in written)
        span = describe_span(grid.time_of(first), grid.time_of(last) + grid.interval_ns)
        count = len(written)
        text = f"{span}, {count} file{'s' if count != 1 else ''}"
        parts.append(text if len(placements) == 1 else f"{group} {text}")
    if parts:
        body = "Added " + "; ".join(parts)
    else:
        recorded = sum(len(p.placed) + len(p.duplicates) for p in placements.values())
        body = f"Recorded {recorded} files whose epochs were already in the store"
    return f"{prefix}: {body}" if prefix else body
