"""The file registry of materialized groups: which file filled which epochs, by content hash.

The ledger says which URLs the store holds; for materialized data that is not enough. A file
re-delivered under another name must change nothing (its hash is known), a corrected file must
first take back the epochs it filled before (its old range), and overlaps are judged against the
epochs other files filled. Pages are parquet tables in the same commit as the chunks they
describe, like the ledger's, under ``_icechunk_operator/registry``; later pages override
earlier ones per (group, url).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from icechunk_operator.engine.ledger import list_pages, new_page_name, page_documents
from icechunk_operator.engine.templates import RESERVED_ROOT

REGISTRY_GROUP = f"{RESERVED_ROOT}/registry"
_COLUMNS = (
    "group",
    "url",
    "digest",
    "processing",
    "first",
    "last",
    "epochs",
    "batch",
    "written_at",
    "removed",
)


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    group: str
    url: str
    digest: str
    processing: str  # what made the values: reader and options (see ``processing_key``)
    first: int  # grid index of the first epoch written
    last: int  # grid index of the last epoch written (inclusive); -1 when none was
    epochs: int  # epochs written
    batch: str
    written_at: str
    removed: bool = False


def processing_key(reader: str, options: dict[str, Any], dimension: str) -> str:
    """Files read the same way give the same values: a file already written with this key is
    skipped when unchanged, one written another way (a new processing version) is read again."""
    text = json.dumps({"reader": reader, "options": options, "dimension": dimension}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_registry_page(entries: Iterable[RegistryEntry]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [asdict(e) for e in entries]
    types = {
        "group": pa.string(), "url": pa.string(), "digest": pa.string(), "processing": pa.string(),
        "first": pa.int64(),
        "last": pa.int64(), "epochs": pa.int64(), "batch": pa.string(), "written_at": pa.string(),
        "removed": pa.bool_(),
    }  # fmt: skip
    table = pa.table({name: pa.array([r[name] for r in rows], types[name]) for name in _COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def decode_registry_page(data: bytes) -> list[RegistryEntry]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pydict()
    return [RegistryEntry(*values) for values in zip(*(columns[c] for c in _COLUMNS), strict=True)]


def registry_documents(entries: Iterable[RegistryEntry]) -> dict[str, bytes]:
    group = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'
    page = page_documents(new_page_name(), encode_registry_page(entries), under=REGISTRY_GROUP)
    return {f"{REGISTRY_GROUP}/zarr.json": group, **page}


async def read_registry(store: Any) -> dict[tuple[str, str], RegistryEntry]:
    """The latest entry per (group, url)."""
    from zarr.core.buffer import default_buffer_prototype

    ordered = await list_pages(store, REGISTRY_GROUP)
    prototype = default_buffer_prototype()
    datas = await asyncio.gather(*(store.get(f"{REGISTRY_GROUP}/{n}/c/0", prototype) for n in ordered))
    registry: dict[tuple[str, str], RegistryEntry] = {}
    for data in datas:
        for entry in decode_registry_page(bytes(data.to_bytes())):
            registry[(entry.group, entry.url)] = entry
    return registry


def load_registry(session: Any) -> dict[tuple[str, str], RegistryEntry]:
    with asyncio.Runner() as runner:
        return runner.run(read_registry(session.store))
