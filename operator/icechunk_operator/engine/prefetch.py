"""Latency hiding for the parsers: the bytes a parse needs, fetched ahead for several files at once.

On object storage a parse is mostly waiting: VirtualiZarr's readers ask for a few ranges one
after another (the format sniff, a HEAD for the size, a block of metadata, the coordinates), and
the HDF5 parser holds its lock while it waits. Here each file's head (its first bytes, or the
whole object when it is small) arrives in one ranged GET, up to ``files_in_flight`` files ahead
of the parser, on a small thread pool (obstore releases the GIL while it waits). The parser then
reads from memory through :class:`HeadStore`; a read beyond the head still goes to the real store
and is counted, so a head too short for some file costs requests, never correctness.

Memory per worker is bounded by ``files_in_flight + 1`` heads: 256 KiB each, 1 MiB for NetCDF3.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from icechunk_operator.engine.records import SourceFile

#: The metadata of NetCDF4/HDF5 files (superblock, object headers, small coordinates) sits at the
#: front: a GET of this much parsed every ISMIP6-shaped NetCDF4 file with no other request.
DEFAULT_HEAD_BYTES = 256 * 1024
#: HDF5 reads its metadata through a block reader; blocks of this size (VirtualiZarr's default is
#: 1 MiB) keep a read of a few KB of object headers inside the head.
HDF5_BLOCK_BYTES = 64 * 1024
#: VirtualiZarr's NetCDF3 parser reads the header as one 1 MiB block, whatever its size: a NetCDF3
#: head is extended to that much in the prefetch, where the second GET costs no parse time.
NETCDF3_BLOCK_BYTES = 1024 * 1024
NETCDF3_MAGIC = b"CDF"


def is_local(store: Any) -> bool:
    """Local files are read with system calls: nothing to hide, and HDF5 reads them by path."""
    from obstore.store import LocalStore

    return isinstance(store, LocalStore)


@dataclass(frozen=True)
class Head:
    """The first ``len(data)`` bytes of an object of ``size`` bytes."""

    size: int
    data: bytes

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.size


def fetch_head(store: Any, path: str, size: int, head_bytes: int) -> Head:
    """One ranged GET (the whole object when it is no larger than ``head_bytes``); a second one
    for a NetCDF3 file, up to the block its parser reads first."""
    length = min(size, head_bytes)
    data = bytes(store.get_range(path, start=0, length=length)) if length else b""
    if data.startswith(NETCDF3_MAGIC) and len(data) < min(size, NETCDF3_BLOCK_BYTES):
        rest = store.get_range(path, start=len(data), end=min(size, NETCDF3_BLOCK_BYTES))
        data += bytes(rest)
    return Head(size, data)


class HeadStore:
    """An obspec store for one object whose head is in memory: what VirtualiZarr's readers and
    the loader of coordinate values ask of it is served from the head where it can be, and
    from ``store`` otherwise (``misses`` counts those requests)."""

    def __init__(self, store: Any, path: str, head: Head) -> None:
        self._store = store
        self._path = path
        self._head = head
        self.misses = 0

    def _served(self, start: int, end: int) -> bytes | None:
        end = min(end, self._head.size)
        if end <= len(self._head.data):
            return self._head.data[start:end]
        return None

    def _end(self, start: int, end: int | None, length: int | None) -> int:
        if end is not None:
            return end
        if length is not None:
            return start + length
        return self._head.size

    def head(self, path: str) -> dict[str, Any]:
        return {"path": path, "size": self._head.size, "last_modified": None, "e_tag": None, "version": None}

    async def head_async(self, path: str) -> dict[str, Any]:
        return self.head(path)

    def get_range(self, path: str, *, start: int, end: int | None = None, length: int | None = None) -> bytes:
        stop = self._end(start, end, length)
        served = self._served(start, stop) if path == self._path else None
        if served is not None:
            return served
        self.misses += 1
        return bytes(self._store.get_range(path, start=start, end=stop))

    async def get_range_async(
        self, path: str, *, start: int, end: int | None = None, length: int | None = None
    ) -> bytes:
        stop = self._end(start, end, length)
        served = self._served(start, stop) if path == self._path else None
        if served is not None:
            return served
        self.misses += 1
        return bytes(await self._store.get_range_async(path, start=start, end=stop))

    def get_ranges(
        self,
        path: str,
        *,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> list[bytes]:
        stops = self._ends(starts, ends, lengths)
        results, missing = self._serve_ranges(path, starts, stops)
        if missing:
            # One call for all of them: obstore coalesces nearby ranges and fetches concurrently.
            fetched = self._store.get_ranges(
                path, starts=[starts[i] for i in missing], ends=[stops[i] for i in missing]
            )
            return self._fill(results, missing, fetched)
        return [r or b"" for r in results]

    async def get_ranges_async(
        self,
        path: str,
        *,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> list[bytes]:
        stops = self._ends(starts, ends, lengths)
        results, missing = self._serve_ranges(path, starts, stops)
        if missing:
            fetched = await self._store.get_ranges_async(
                path, starts=[starts[i] for i in missing], ends=[stops[i] for i in missing]
            )
            return self._fill(results, missing, fetched)
        return [r or b"" for r in results]

    def _serve_ranges(
        self, path: str, starts: Sequence[int], stops: Sequence[int]
    ) -> tuple[list[bytes | None], list[int]]:
        """The ranges the head holds, and the indexes of those it does not (counted as one miss)."""
        results = [
            self._served(s, e) if path == self._path else None for s, e in zip(starts, stops, strict=True)
        ]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            self.misses += 1
        return results, missing

    @staticmethod
    def _fill(results: list[bytes | None], missing: list[int], fetched: Iterable[Any]) -> list[bytes]:
        for index, data in zip(missing, fetched, strict=True):
            results[index] = bytes(data)
        return [r or b"" for r in results]

    def _ends(
        self, starts: Sequence[int], ends: Sequence[int] | None, lengths: Sequence[int] | None
    ) -> list[int]:
        if ends is not None:
            return list(ends)
        if lengths is not None:
            return [s + n for s, n in zip(starts, lengths, strict=True)]
        raise ValueError("get_ranges needs ends or lengths")


class HeadPrefetcher:
    """Heads of ``sources`` in order, each fetched up to ``files_in_flight`` files ahead.

    A fetch that failed hands its exception to the caller, who counts it as the file's first
    attempt (the retry loop decides whether to try again, without the prefetch).
    """

    def __init__(self, registry: Any, files_in_flight: int, head_bytes: int = DEFAULT_HEAD_BYTES) -> None:
        self._registry = registry
        self._in_flight = max(1, files_in_flight)
        self._head_bytes = head_bytes

    def fetch(self, source: SourceFile) -> Head | None:
        """The head of one file now, or None for a local file (read directly)."""
        store, path = self._registry.resolve(source.url)
        if is_local(store):
            return None
        return fetch_head(store, path, source.size, self._head_bytes)

    def stream(self, sources: Iterable[SourceFile]) -> Generator[tuple[SourceFile, Future[Head | None]]]:
        pending: deque[tuple[SourceFile, Future[Head | None]]] = deque()
        queue = iter(sources)
        with ThreadPoolExecutor(self._in_flight, thread_name_prefix="prefetch") as pool:
            try:
                for source in queue:
                    pending.append((source, pool.submit(self.fetch, source)))
                    if len(pending) >= self._in_flight:
                        yield pending.popleft()
                while pending:
                    yield pending.popleft()
            finally:
                for _, future in pending:  # the consumer stopped early: drop what is unread
                    future.cancel()
