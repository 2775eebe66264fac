"""Prefetched heads: reads inside a head cost no request, reads beyond it go to the store, and the
prefetcher keeps at most ``files_in_flight`` files ahead, in order. On obstore's own in-memory
store (a real object store, without a server)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from obstore.store import MemoryStore

from icechunk_operator.engine.prefetch import NETCDF3_BLOCK_BYTES, HeadPrefetcher, HeadStore, fetch_head
from icechunk_operator.engine.records import SourceFile

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def memory() -> MemoryStore:
    store = MemoryStore()
    store.put("a/file.nc", DATA)
    return store


def test_reads_inside_the_head_cost_no_request(memory: MemoryStore) -> None:
    head = fetch_head(memory, "a/file.nc", len(DATA), 4096)
    assert len(head.data) == 4096 and not head.complete
    store = HeadStore(memory, "a/file.nc", head)
    assert store.head("a/file.nc")["size"] == len(DATA)
    assert store.get_range("a/file.nc", start=10, length=100) == DATA[10:110]
    assert store.get_ranges("a/file.nc", starts=[0, 4000], ends=[8, 4096]) == [DATA[:8], DATA[4000:4096]]
    assert asyncio.run(store.get_range_async("a/file.nc", start=0, end=4096)) == DATA[:4096]
    assert store.misses == 0


def test_reads_beyond_the_head_go_to_the_store_once_per_call(memory: MemoryStore) -> None:
    store = HeadStore(memory, "a/file.nc", fetch_head(memory, "a/file.nc", len(DATA), 4096))
    mixed = store.get_ranges("a/file.nc", starts=[0, 5000, 9000], lengths=[16, 100, 1240])
    assert mixed == [DATA[:16], DATA[5000:5100], DATA[9000:10240]]
    assert store.misses == 1
    assert store.get_range("a/file.nc", start=4000, end=5000) == DATA[4000:5000]
    assert asyncio.run(store.get_ranges_async("a/file.nc", starts=[8000], ends=[8100])) == [DATA[8000:8100]]
    assert store.misses == 3


def test_a_small_object_is_fetched_whole(memory: MemoryStore) -> None:
    head = fetch_head(memory, "a/file.nc", len(DATA), 1 << 20)
    assert head.complete and head.data == DATA
    store = HeadStore(memory, "a/file.nc", head)
    # A reader asking for a whole block past the end gets what the object has, from memory.
    assert store.get_range("a/file.nc", start=8192, length=1 << 20) == DATA[8192:]
    assert store.misses == 0


def test_a_netcdf3_head_covers_the_block_its_parser_reads_first() -> None:
    memory = MemoryStore()
    netcdf3 = b"CDF\x01" + bytes(3 * NETCDF3_BLOCK_BYTES)
    memory.put("classic.nc", netcdf3)
    head = fetch_head(memory, "classic.nc", len(netcdf3), 4096)
    assert len(head.data) == NETCDF3_BLOCK_BYTES and head.data == netcdf3[:NETCDF3_BLOCK_BYTES]
    store = HeadStore(memory, "classic.nc", head)
    assert store.get_ranges("classic.nc", starts=[0], lengths=[NETCDF3_BLOCK_BYTES]) == [head.data]
    assert store.misses == 0


class _Registry:
    def __init__(self, store: object) -> None:
        self.store = store

    def resolve(self, url: str) -> tuple[object, str]:
        return self.store, url.removeprefix("memory:///")


class _CountingStore:
    """obstore's MemoryStore, recording how many range reads run at once."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._running = 0
        self.most = 0
        self.release = threading.Event()

    def get_range(self, path: str, *, start: int, length: int) -> bytes:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        self.release.wait(5)
        try:
            return bytes(self._store.get_range(path, start=start, length=length))
        finally:
            with self._lock:
                self._running -= 1


def test_the_prefetcher_keeps_files_in_order_and_at_most_n_in_flight(memory: MemoryStore) -> None:
    sources = []
    for number in range(12):
        memory.put(f"f{number}", bytes([number]) * (100 + number))
        sources.append(SourceFile(f"memory:///f{number}", 100 + number, None, None))
    counting = _CountingStore(memory)
    stream = HeadPrefetcher(_Registry(counting), files_in_flight=3, head_bytes=64).stream(sources)
    first_source, first = next(stream)
    threading.Timer(0.2, counting.release.set).start()  # let three fetches pile up first
    heads = [(first_source, first.result())] + [(source, future.result()) for source, future in stream]
    assert [source for source, _ in heads] == sources
    assert counting.most == 3
    for number, (_, head) in enumerate(heads):
        assert head is not None and head.data == bytes([number]) * 64 and head.size == 100 + number
