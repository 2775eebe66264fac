"""Listing the files of a batch: by prefix and glob, by explicit list, or from a parquet index.

Every file comes with its size and ETag and/or mtime: the identity the ledger compares on the
next run to tell unchanged files from changed ones.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob as globlib
import posixpath
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.objects import build_object_store
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.urls import (
    SourceOutsideContainersError,
    check_within_containers,
    container_for,
)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses folders, ``*`` does not (the shell's meaning, not fnmatch's)."""
    translate = getattr(globlib, "translate", None)
    if translate is not None:
        return re.compile(translate(pattern, recursive=True, include_hidden=True))
    return re.compile(fnmatch.translate(pattern))


def check_sources(source: SourceSpec, store: IcechunkStoreSpec) -> None:
    """Refuse, before any work, sources that the store's containers do not cover."""
    prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
    if source.prefix is not None:
        check_within_containers(source.prefix, prefixes, "spec.source.prefix")
    for number, url in enumerate(source.files or []):
        check_within_containers(url, prefixes, f"spec.source.files[{number}]")


def list_sources(source: SourceSpec, store: IcechunkStoreSpec) -> list[SourceFile]:
    check_sources(source, store)
    if source.prefix is not None:
        files = _list_prefix(source.prefix, source.glob, store)
    elif source.files is not None:
        files = _head_files(source.files, store)
    else:
        assert source.index is not None
        files = read_index(source.index, store)
        prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
        for number, item in enumerate(files):
            check_within_containers(item.url, prefixes, f"spec.source.index row {number}")
    return sorted(files, key=lambda f: f.url)


def _location_for(url: str, store: IcechunkStoreSpec) -> Any:
    prefix = container_for(url, [c.url_prefix for c in store.virtual_chunk_containers])
    return next(c for c in store.virtual_chunk_containers if c.url_prefix == prefix)


def _source_file(url: str, meta: Any) -> SourceFile:
    modified = meta.get("last_modified")
    mtime = modified.timestamp() if isinstance(modified, datetime) else None
    # Local "ETags" are inode/mtime hashes that Icechunk does not compare: mtime is the identity.
    etag = None if url.startswith("file://") else meta.get("e_tag")
    return SourceFile(url=url, size=int(meta["size"]), etag=etag, mtime=mtime)


def _list_prefix(prefix: str, pattern: str, store: IcechunkStoreSpec) -> list[SourceFile]:
    object_store, path = build_object_store(prefix, _location_for(prefix, store))
    regex = glob_regex(pattern)
    root = prefix[: len(prefix) - len(path)] if path else prefix
    if prefix.startswith("file://"):
        root = "file:///"
    files = []
    for batch in object_store.list(prefix=path.rstrip("/") or None):
        for meta in batch:
            relative = meta["path"][len(path) :] if path else meta["path"]
            if regex.fullmatch(relative):
                files.append(_source_file(root + meta["path"], meta))
    return files


def _head_files(urls: Iterable[str], store: IcechunkStoreSpec) -> list[SourceFile]:
    import obstore

    async def head_all() -> list[SourceFile]:
        async def head(url: str) -> SourceFile:
            object_store, path = build_object_store(url, _location_for(url, store))
            return _source_file(url, await obstore.head_async(object_store, path))

        return list(await asyncio.gather(*(head(u) for u in urls)))

    return asyncio.run(head_all())


def missing_objects(urls: Iterable[str], store: IcechunkStoreSpec) -> list[str]:
    """Which of ``urls`` no longer exist (one concurrent HEAD each)."""
    import obstore
    from obstore.exceptions import NotFoundError

    async def gone(url: str) -> bool:
        object_store, path = build_object_store(url, _location_for(url, store))
        try:
            await obstore.head_async(object_store, path)
        except (NotFoundError, FileNotFoundError):  # S3 and GCS; local files
            return True
        return False

    async def check_all(wanted: list[str]) -> list[str]:
        found = await asyncio.gather(*(gone(u) for u in wanted))
        return [url for url, is_gone in zip(wanted, found, strict=True) if is_gone]

    return asyncio.run(check_all(list(urls)))


def read_index(url: str, store: IcechunkStoreSpec) -> list[SourceFile]:
    """A parquet index with columns url, size and etag and/or mtime (seconds or timestamp)."""
    columns = _parquet_columns(url, store)
    missing = {"url", "size"} - columns.keys()
    if missing or not ({"etag", "mtime"} & columns.keys()):
        raise ValueError(
            f"spec.source.index: {url} needs columns url, size and etag or mtime; has {sorted(columns)}"
        )
    etags = columns.get("etag") or [None] * len(columns["url"])
    mtimes = columns.get("mtime") or [None] * len(columns["url"])
    return [
        SourceFile(u, int(s), e, m.timestamp() if isinstance(m, datetime) else m)
        for u, s, e, m in zip(columns["url"], columns["size"], etags, mtimes, strict=True)
    ]


def encode_index(files: Iterable[SourceFile]) -> bytes:
    """The parquet form :func:`read_index` reads (a repair's files to ingest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(files)
    table = pa.table(
        {
            "url": pa.array([f.url for f in rows], pa.string()),
            "size": pa.array([f.size for f in rows], pa.int64()),
            "etag": pa.array([f.etag for f in rows], pa.string()),
            "mtime": pa.array([f.mtime for f in rows], pa.float64()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def encode_url_list(urls: Iterable[str]) -> bytes:
    """The parquet form :func:`read_url_list` reads (a repair's files to remove)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"url": pa.array(list(urls), pa.string())}), sink)
    return bytes(sink.getvalue().to_pybytes())


def read_url_list(url: str, store: IcechunkStoreSpec) -> list[str]:
    """A parquet file with a ``url`` column (the files a repair removes)."""
    columns = _parquet_columns(url, store)
    if "url" not in columns:
        raise ValueError(f"spec.source.removeIndex: {url} needs a url column; has {sorted(columns)}")
    return [str(u) for u in columns["url"]]


def _parquet_columns(url: str, store: IcechunkStoreSpec) -> dict[str, list[Any]]:
    """Read with the credentials of the container that holds ``url``, or with the store's own
    when ``url`` lies beside the store (where reconciliations write their repair lists)."""
    import obstore
    import pyarrow as pa
    import pyarrow.parquet as pq

    if url.startswith("file://") or "://" not in url:
        source: Any = url.removeprefix("file://")
    else:
        prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
        beside_store = posixpath.dirname(store.storage.url.rstrip("/")) + "/"
        if any(url.startswith(prefix) for prefix in prefixes):
            location: Any = _location_for(url, store)
        elif url.startswith(beside_store):
            location = store.storage
        else:
            raise SourceOutsideContainersError(
                f"{url}: an index must lie in a virtual chunk container or beside the store ({beside_store})"
            )
        object_store, path = build_object_store(url, location)
        source = pa.BufferReader(bytes(obstore.get(object_store, path).bytes()))
    # Never a Python file object (see ledger.decode_page for the abort that avoids).
    columns: dict[str, list[Any]] = pq.ParquetFile(source).read(use_threads=False).to_pydict()
    return columns
