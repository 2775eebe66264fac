"""The ledger: which source files the store references, kept inside the repository.

Icechunk cannot say which source files a store references, so the writer records them itself,
in the same commit as the references (a crash can never leave one without the other). Each
commit adds one page, a small uint8 Zarr array under ``_icechunk_operator/ledger`` holding a
parquet table; later pages override earlier ones per URL. A store appended to every few minutes
would gather thousands of pages, each one more request when a run starts; so once a branch holds
:data:`COMPACT_AFTER_PAGES`, the next commit folds them into one (the whole current ledger) and
deletes the rest, in the same commit. A writer that committed a page meanwhile keeps it: its page
is newer than the folded one, and a rebase keeps both.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from icechunk_operator.engine.records import LedgerEntry
from icechunk_operator.engine.templates import RESERVED_ROOT

LEDGER_GROUP = f"{RESERVED_ROOT}/ledger"
_COLUMNS = ("url", "size", "etag", "mtime", "group", "batch", "ingested_at", "removed")


def encode_page(entries: Iterable[LedgerEntry]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [e.to_dict() for e in entries]
    table = pa.table(
        {
            "url": pa.array([r["url"] for r in rows], pa.string()),
            "size": pa.array([r["size"] for r in rows], pa.int64()),
            "etag": pa.array([r["etag"] for r in rows], pa.string()),
            "mtime": pa.array([r["mtime"] for r in rows], pa.float64()),
            "group": pa.array([r["group"] for r in rows], pa.string()),
            "batch": pa.array([r["batch"] for r in rows], pa.string()),
            "ingested_at": pa.array([r["ingested_at"] for r in rows], pa.string()),
            "removed": pa.array([r["removed"] for r in rows], pa.bool_()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def decode_page(data: bytes) -> list[LedgerEntry]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A native buffer, not a Python file object: Arrow may release its reader on a pool thread
    # after Python has begun shutting down, and a Python file there aborts the process
    # ("terminate called without an active exception", apache/arrow#34314).
    columns = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pydict()
    return [LedgerEntry(*values) for values in zip(*(columns[c] for c in _COLUMNS), strict=True)]


def new_page_name() -> str:
    """Sortable by creation time; unique across concurrent writers."""
    return f"page-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


#: Pages a branch may gather before the next commit folds them into one.
COMPACT_AFTER_PAGES = 32


def page_documents(name: str, data: bytes, under: str = LEDGER_GROUP) -> dict[str, bytes]:
    """A page as a 1-D uint8 Zarr array in one uncompressed chunk (the parquet is compressed)."""
    document = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [len(data)],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [len(data)]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
        "attributes": {"format": "parquet", "columns": list(_COLUMNS)},
        "dimension_names": ["byte"],
    }
    prefix = f"{under}/{name}"
    return {f"{prefix}/zarr.json": json.dumps(document).encode(), f"{prefix}/c/0": data}


def skeleton_documents() -> dict[str, bytes]:
    """Root, reserved and ledger groups, written when the repository is created."""
    group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
    return {"zarr.json": group, f"{RESERVED_ROOT}/zarr.json": group, f"{LEDGER_GROUP}/zarr.json": group}


async def read_pages(store: Any) -> dict[str, list[LedgerEntry]]:
    """Every page by name, oldest first."""
    import asyncio

    names = await list_pages(store)
    datas = await asyncio.gather(*(store.get(f"{LEDGER_GROUP}/{name}/c/0", _prototype()) for name in names))
    return {name: decode_page(bytes(data.to_bytes())) for name, data in zip(names, datas, strict=True)}


async def read_ledger(store: Any) -> dict[str, LedgerEntry]:
    """The current ledger: the latest entry per URL (tombstones included)."""
    ledger: dict[str, LedgerEntry] = {}
    for entries in (await read_pages(store)).values():
        for entry in entries:
            ledger[entry.url] = entry
    return ledger


def _prototype() -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


async def list_pages(store: Any, under: str = LEDGER_GROUP) -> list[str]:
    """The page names under ``under`` (ledger or registry), oldest first."""
    names = set()
    try:
        async for key in store.list_dir(under):
            name = key.rstrip("/")
            if name.startswith("page-"):
                names.add(name)
    except FileNotFoundError:
        return []
    return sorted(names)


async def delete_pages(store: Any, names: Iterable[str], under: str = LEDGER_GROUP) -> None:
    import asyncio

    await asyncio.gather(*(store.delete_dir(f"{under}/{name}") for name in names))


async def compact_pages(store: Any, under: str = LEDGER_GROUP) -> None:
    """Delete every page under ``under``: the caller writes one page with the whole state."""
    await delete_pages(store, await list_pages(store, under), under)
