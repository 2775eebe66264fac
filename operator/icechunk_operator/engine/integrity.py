"""The integrity check (the seed's ``fsck``): read every stored chunk of every array and name the
ones that do not decode.

Only chunks that exist are read (listed from the store, not enumerated from the array's shape, so
a sparse time axis costs nothing); a sharded object is read one inner chunk at a time, so memory
stays at one chunk whatever the object's size. Virtual chunks are read from their source files
too: a reference to a file that changed or went away is a chunk that does not decode.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from icechunk_operator.engine.templates import RESERVED_ROOT

MAX_PROBLEMS_KEPT = 1000


@dataclass(frozen=True)
class ChunkProblem:
    array: str
    chunk: tuple[int, ...]  # the chunk's (inner chunk's) grid coordinates
    error: str


@dataclass
class IntegrityReport:
    arrays: int = 0
    chunks: int = 0
    problems: list[ChunkProblem] = field(default_factory=list)
    undecodable: int = 0

    @property
    def clean(self) -> bool:
        return self.undecodable == 0


def check_integrity(session: Any, *, include_reserved: bool = False) -> IntegrityReport:
    """Read every chunk that exists in ``session`` (a read-only Icechunk session)."""
    import zarr

    report = IntegrityReport()
    root = zarr.open_group(session.store, mode="r")
    for path, array in _arrays(root, include_reserved):
        report.arrays += 1
        for coords, region in _stored_chunks(session, path, array):
            report.chunks += 1
            try:
                array[region]
            except Exception as error:
                report.undecodable += 1
                if len(report.problems) < MAX_PROBLEMS_KEPT:
                    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                    report.problems.append(ChunkProblem(path, coords, message[:300]))
    return report


def _arrays(group: Any, include_reserved: bool) -> Iterator[tuple[str, Any]]:
    import zarr

    for path, member in group.members(max_depth=None):
        if not include_reserved and (path == RESERVED_ROOT or path.startswith(RESERVED_ROOT + "/")):
            continue
        if isinstance(member, zarr.Array):
            yield path, member


def _stored_chunks(
    session: Any, path: str, array: Any
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Regions of the (inner) chunks inside every stored object of the array."""
    object_shape = tuple(array.shards or array.chunks)
    inner_shape = tuple(array.chunks)
    if not array.shape:
        yield (), ()
        return
    for object_index in _stored_objects(session, path):
        starts = [i * size for i, size in zip(object_index, object_shape, strict=True)]
        ranges = [
            range(start, min(start + size, length), step)
            for start, size, length, step in zip(starts, object_shape, array.shape, inner_shape, strict=True)
        ]
        for corner in itertools.product(*ranges):
            region = tuple(
                slice(c, min(c + step, length))
                for c, step, length in zip(corner, inner_shape, array.shape, strict=True)
            )
            yield tuple(c // step for c, step in zip(corner, inner_shape, strict=True)), region


def _stored_objects(session: Any, path: str) -> list[tuple[int, ...]]:
    """The grid coordinates of the array's objects that exist (Icechunk's own list)."""

    async def listed() -> list[tuple[int, ...]]:
        return [tuple(c) async for c in session.chunk_coordinates(f"/{path}")]

    with asyncio.Runner() as runner:
        return sorted(runner.run(listed()))
