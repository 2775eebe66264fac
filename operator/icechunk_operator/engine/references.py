"""Checking a store's actual virtual references, not only its ledger.

The ledger says which files a store was built from; the references are what a reader will
fetch. Two checks find references that would fail a reader:

- *object gone*: every location the snapshot references is asked for (one HEAD each);
- *sample read*: for every group, the first and last chunk of every array are read through
  Icechunk, which fetches the byte range and checks the object against the ETag or modification
  time recorded with the reference. That catches truncated, replaced or unreadable objects whose
  listing still looks right (an index written before the damage, for example).

A sample is a sample: a middle file of a long concatenation is only caught by the first check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.records import LedgerEntry
from icechunk_operator.exiting import one_line_error

READS_IN_FLIGHT = 32


@dataclass(frozen=True)
class BrokenReference:
    group: str
    url: str | None  # the object, when the failure names one
    reason: str


def find_broken(
    repo: Any, branch: str, store: IcechunkStoreSpec, ledger: Mapping[str, LedgerEntry]
) -> list[BrokenReference]:
    """References of the branch tip whose object is gone or whose group fails a sample read."""
    from icechunk_operator.engine.sources import missing_objects

    session = repo.readonly_session(branch=branch)
    live = {url: entry for url, entry in ledger.items() if not entry.removed}
    locations = sorted(set(session.all_virtual_chunk_locations()))
    broken = [
        BrokenReference(live[url].group if url in live else "", url, "object gone")
        for url in missing_objects(locations, store)
    ]
    already = {b.group for b in broken}
    groups = sorted({entry.group for entry in live.values()} - already)
    failures = asyncio.run(sample_groups(session.store, groups))
    broken.extend(BrokenReference(group, None, reason) for group, reason in failures)
    return sorted(broken, key=lambda b: (b.group, b.url or ""))


async def sample_groups(store: Any, groups: Iterable[str]) -> list[tuple[str, str]]:
    limit = asyncio.Semaphore(READS_IN_FLIGHT)

    async def sample(group: str) -> tuple[str, str] | None:
        async with limit:
            try:
                await _sample_group(store, group)
            except Exception as error:  # any failure to read is the finding
                return group, f"sample read failed: {one_line_error(error)}"
            return None

    results = await asyncio.gather(*(sample(g) for g in groups))
    return [r for r in results if r is not None]


async def _sample_group(store: Any, group: str) -> None:
    import zarr.api.asynchronous as zarr_async

    node = await zarr_async.open_group(store=store, path=group, mode="r")
    async for _, array in node.arrays():
        for selection in edge_blocks(array.shape, array.chunks):
            await array.getitem(selection)


def edge_blocks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The first and the last chunk of an array, as selections (one if they coincide)."""
    if any(size == 0 for size in shape):
        return []
    first = tuple(slice(0, min(c, s)) for s, c in zip(shape, chunks, strict=True))
    last = tuple(slice(((s - 1) // c) * c, s) for s, c in zip(shape, chunks, strict=True))
    return [first] if first == last else [first, last]
