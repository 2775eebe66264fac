"""Listing the files of a batch: by prefix and glob, by explicit list, or from a parquet index.

Every file comes with its size and ETag and/or mtime: the identity the ledger compares on the
next run to tell unchanged files from changed ones.
"""

from __future__ import annotations

import asyncio
import fnmatch
import posixpath
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.local_files import check_local_index, check_prefix_folder, check_resolved
from icechunk_operator.engine.objects import build_object_store
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.urls import (
    SourceOutsideContainersError,
    check_all_within_containers,
    check_index_location,
    check_within_containers,
    container_for,
    outside_reason,
    split_url,
)
from icechunk_operator.exiting import first_line
from icechunk_operator.failpoints import failpoint

_NOT_SEP = "[^/]"  # one character of one path segment


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``spec.source.glob`` as a regex on paths relative to the prefix.

    Our own translation, so a store lists the same files on every Python: ``glob.translate``
    exists only from 3.13, and ``fnmatch`` lets ``*`` cross ``/``. It follows
    ``glob.translate(pattern, recursive=True, include_hidden=True)``: ``*`` and ``?`` never cross
    ``/``, a whole ``*`` segment needs one character or more, a whole ``**`` segment matches zero
    or more folders (``**/*.nc`` matches ``a.nc``). One deliberate difference: a negated class
    (``[!a]``) never matches ``/`` either, where 3.13's does.
    """
    return re.compile(translate_glob(pattern))


def translate_glob(pattern: str) -> str:
    parts = pattern.split("/")
    last = len(parts) - 1
    pieces = []
    for number, part in enumerate(parts):
        if part == "**":
            if number == last:
                pieces.append(".*")
            elif parts[number + 1] != "**":  # a run of ** segments means one
                pieces.append("(?:.+/)?")
            continue
        pieces.append(_NOT_SEP + "+" if part == "*" else _translate_segment(part))
        if number < last:
            pieces.append("/")
    return "(?s:" + "".join(pieces) + r")\Z"


def _translate_segment(part: str) -> str:
    pieces: list[str] = []
    position = 0
    while position < len(part):
        char = part[position]
        position += 1
        if char == "*":
            if not pieces or pieces[-1] != _NOT_SEP + "*":  # ** inside a segment is one *
                pieces.append(_NOT_SEP + "*")
        elif char == "?":
            pieces.append(_NOT_SEP)
        elif char == "[" and (end := _class_end(part, position)) is not None:
            pieces.append(_translate_class(part[position:end]))
            position = end + 1
        else:
            pieces.append(re.escape(char))
    return "".join(pieces)


def _class_end(part: str, start: int) -> int | None:
    """Where the class opened just before ``start`` closes: a ``]`` right after ``[`` or
    ``[!`` is a member, as in the shell; None when it never closes (then ``[`` is literal)."""
    position = start + 1 if part[start : start + 1] == "!" else start
    if part[position : position + 1] == "]":
        position += 1
    end = part.find("]", position)
    return None if end < 0 else end


def _translate_class(members: str) -> str:
    negated = members.startswith("!")
    if negated:
        members = members[1:]
    ranges: list[tuple[str, str]] = []
    position = 0
    while position < len(members):
        if position + 2 < len(members) and members[position + 1] == "-":
            ranges.append((members[position], members[position + 2]))
            position += 3
        else:
            ranges.append((members[position], members[position]))
            position += 1
    kept = "".join(
        re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
        for low, high in ranges
        if low <= high  # z-a matches nothing
    )
    if negated:
        return f"[^/{kept}]"
    return f"[{kept}]" if kept else "(?!)"


def check_sources(source: SourceSpec, store: IcechunkStoreSpec) -> None:
    """Refuse, before any work, sources that the store's containers do not cover.

    URLs only, nothing is read: the operator calls this in its own process before it starts a
    Job, so it must stay cheap (no pyarrow, no object store). The URLs inside an index are
    :func:`check_index_contents`' job.
    """
    prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
    if source.prefix is not None:
        check_within_containers(source.prefix, prefixes, "spec.source.prefix")
    for number, url in enumerate(source.files or []):
        check_within_containers(url, prefixes, f"spec.source.files[{number}]")
    if source.index is not None:
        check_index_location(source.index, prefixes, beside_store(store), "spec.source.index")
    if source.remove_index is not None:
        check_index_location(source.remove_index, prefixes, beside_store(store), "spec.source.removeIndex")


def check_index_contents(source: SourceSpec, store: IcechunkStoreSpec) -> None:
    """Refuse a batch whose index or removeIndex is missing, unreadable, lacks a column, or lists
    a URL outside the store's containers, before a Job and a Dask cluster start for it.

    It reads both files (pyarrow, object-store clients, the containers' credentials), so the
    operator runs it in a child process (``store_probe``'s "check-index"). The engine refuses the
    same things as it reads the files, before it virtualizes anything.
    """
    check_sources(source, store)
    if source.index is not None:
        read_index(source.index, store)
    if source.remove_index is not None:
        read_url_list(source.remove_index, store)


def beside_store(store: IcechunkStoreSpec) -> str:
    """The folder that holds the store, where failure logs, reports and repair lists go."""
    return posixpath.dirname(store.storage.url.rstrip("/")) + "/"


def list_sources(source: SourceSpec, store: IcechunkStoreSpec) -> list[SourceFile]:
    """The batch's files, each one the containers cover: by URL, and for local files on disk too
    (:mod:`~icechunk_operator.engine.local_files`); files that ``skip`` names are not checked."""
    check_sources(source, store)
    prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
    resolve = True
    if source.prefix is not None:
        field_name = "spec.source.prefix"
        resolve = check_prefix_folder(source.prefix, prefixes, source.skip, field_name)
        files = _list_prefix(source.prefix, source.glob, store)
        check_listed_names(files, prefixes, source.skip)
    elif source.files is not None:
        field_name = "spec.source.files"
        files = _head_files(source.files, store)
    else:
        assert source.index is not None
        field_name = "spec.source.index"
        files = read_index(source.index, store)
    if resolve:
        check_resolved(files, prefixes, source.skip, field_name)
    return sorted(files, key=lambda f: f.url)


def check_listed_names(files: Iterable[SourceFile], prefixes: list[str], skip: Iterable[str]) -> None:
    """Refuse a listing that holds a file whose name reads as a URL escape: Icechunk decodes
    ``%2e%2e%2F`` in a reference to '../', and ``a%20b.nc`` to another file than the parser read."""
    globs = list(skip)
    for source in files:
        if any(fnmatch.fnmatchcase(source.url, glob) for glob in globs):
            continue
        reason = outside_reason(source.url, prefixes)
        if reason is None and unquote(source.url) != source.url:
            reason = "has a '%' escape in its name, which Icechunk would decode to another path"
        if reason is not None:
            raise SourceOutsideContainersError(
                f"spec.source.prefix: listed file {source.url!r} {reason}; rename it or skip it "
                "(spec.source.skip)"
            )


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
        failpoint("listing")
        for meta in batch:
            relative = meta["path"][len(path) :] if path else meta["path"]
            if regex.fullmatch(relative):
                files.append(_source_file(root + meta["path"], meta))
    return files


class MissingSourceError(Refused):
    """A file ``spec.source.files`` names that does not exist, or that no object path can name:
    running again finds it missing again, so the batch is refused, naming it."""


def _head_files(urls: Iterable[str], store: IcechunkStoreSpec) -> list[SourceFile]:
    import obstore
    from obstore.exceptions import NotFoundError

    async def head_all() -> list[SourceFile]:
        async def head(number: int, url: str) -> SourceFile:
            object_store, path = build_object_store(url, _location_for(url, store))
            try:
                meta = await obstore.head_async(object_store, path)
            except FileNotFoundError, NotFoundError:
                raise MissingSourceError(f"spec.source.files[{number}]: {url!r} does not exist") from None
            except ValueError as error:  # obstore's InvalidPathError: an empty or invalid segment
                reason = first_line(error)
                raise MissingSourceError(f"spec.source.files[{number}]: {url!r}: {reason}") from None
            return _source_file(url, meta)

        return list(await asyncio.gather(*(head(n, u) for n, u in enumerate(urls))))

    return asyncio.run(head_all())


def missing_objects(urls: Iterable[str], store: IcechunkStoreSpec) -> list[str]:
    """Which of ``urls`` no longer exist (one concurrent HEAD each)."""
    import obstore
    from obstore.exceptions import NotFoundError

    async def gone(url: str) -> bool:
        object_store, path = build_object_store(url, _location_for(url, store))
        try:
            await obstore.head_async(object_store, path)
        except NotFoundError, FileNotFoundError:  # S3 and GCS; local files
            return True
        return False

    async def check_all(wanted: list[str]) -> list[str]:
        found = await asyncio.gather(*(gone(u) for u in wanted))
        return [url for url, is_gone in zip(wanted, found, strict=True) if is_gone]

    return asyncio.run(check_all(list(urls)))


class IndexFileError(Refused):
    """An index or removeIndex file that is missing, is not parquet, or lacks the columns it needs."""


def read_index(url: str, store: IcechunkStoreSpec) -> list[SourceFile]:
    """A parquet index with columns url, size and etag and/or mtime (seconds or timestamp).

    Every URL in it must lie in the store's containers: the batch is refused otherwise.
    """
    field_name = "spec.source.index"
    columns = _parquet_columns(url, store, field_name)
    missing = {"url", "size"} - columns.keys()
    if missing or not ({"etag", "mtime"} & columns.keys()):
        raise IndexFileError(
            f"{field_name}: {url} needs columns url, size and etag or mtime; has {sorted(columns)}"
        )
    urls, sizes = columns["url"], columns["size"]
    empty = [
        n for n, (u, s) in enumerate(zip(urls, sizes, strict=True)) if not isinstance(u, str) or s is None
    ]
    if empty:
        raise IndexFileError(
            f"{field_name}: {url} has {len(empty)} rows without a url string or a size (row {empty[0]})"
        )
    prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
    check_all_within_containers(urls, prefixes, field_name, url)
    etags = columns.get("etag") or [None] * len(urls)
    mtimes = columns.get("mtime") or [None] * len(urls)
    return [
        SourceFile(u, int(s), e, m.timestamp() if isinstance(m, datetime) else m)
        for u, s, e, m in zip(urls, sizes, etags, mtimes, strict=True)
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
    """A parquet file with a ``url`` column (the files a repair removes), each in the store's
    containers (the ledger holds no other)."""
    field_name = "spec.source.removeIndex"
    columns = _parquet_columns(url, store, field_name)
    if "url" not in columns:
        raise IndexFileError(f"{field_name}: {url} needs a url column; has {sorted(columns)}")
    urls = [str(u) for u in columns["url"] if u is not None]
    if len(urls) != len(columns["url"]):
        raise IndexFileError(f"{field_name}: {url} has rows without a url")
    check_all_within_containers(urls, [c.url_prefix for c in store.virtual_chunk_containers], field_name, url)
    return urls


def _parquet_columns(url: str, store: IcechunkStoreSpec, field_name: str) -> dict[str, list[Any]]:
    """Read with the credentials of the container that holds ``url``, or with the store's own
    when ``url`` lies beside the store (where reconciliations write their repair lists).

    A missing or non-parquet file is refused (the spec names the wrong file); any other error,
    a storage 5xx or an expired credential, is a crash and the run is retried.
    """
    import obstore
    import pyarrow as pa
    import pyarrow.parquet as pq
    from obstore.exceptions import NotFoundError

    prefixes = [c.url_prefix for c in store.virtual_chunk_containers]
    check_index_location(url, prefixes, beside_store(store), field_name)
    check_local_index(url, prefixes, beside_store(store), field_name)
    try:
        if url.startswith("file://"):
            source: Any = split_url(url)[2]
        else:
            location = _location_for(url, store) if container_for(url, prefixes) else store.storage
            object_store, path = build_object_store(url, location)
            source = pa.BufferReader(bytes(obstore.get(object_store, path).bytes()))
        # Never a Python file object (see ledger.decode_page for the abort that avoids).
        columns: dict[str, list[Any]] = pq.ParquetFile(source).read(use_threads=False).to_pydict()
    except (FileNotFoundError, NotFoundError) as error:
        raise IndexFileError(f"{field_name}: {url} does not exist") from error
    except pa.ArrowInvalid as error:
        raise IndexFileError(f"{field_name}: {url} is not a readable parquet file ({error})") from error
    return columns
