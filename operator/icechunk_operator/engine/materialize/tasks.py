"""What Dask workers do in a materialized ingest: read files, and write the slabs of one stored
object each into a forked session.

Reading returns a :class:`ParsedFile` that stays in the worker's memory (a Dask future); the
commit process fetches only its :class:`FileSummary` (times, labels, a content hash) to place the
file on the group's grid. Writing then moves the parsed files to the task that owns their target
object, so one object is written by one task in a commit, and values never pass through the
commit process.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from icechunk_operator.engine.execution import is_transient
from icechunk_operator.engine.isolation import borrowed_parser
from icechunk_operator.engine.materialize.readers import RejectedEpochsError, load_reader
from icechunk_operator.engine.objects import cached_registry
from icechunk_operator.engine.parse_protocol import (
    FileTimeoutError,
    ParseLimits,
    ParserCrashedError,
    ParserUnavailableError,
    ReadReply,
    ReadRequest,
)
from icechunk_operator.engine.records import FailureRecord, SourceFile
from icechunk_operator.exiting import first_line
from icechunk_operator.failpoints import failpoint

#: One write of a variable covers at most this many bytes of values (a slab of whole inner
#: chunks): what a write task holds per variable, whatever the object's size.
SLAB_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class FileSummary:
    """What the commit process needs to place a file: small, whatever the file's size."""

    url: str
    group: str
    digest: str  # SHA-256 of the file's bytes
    times: np.ndarray  # int64 nanoseconds since 1970, one per epoch, in the file's order
    labels: dict[str, np.ndarray]  # labels of every other dimension that has them
    variables: dict[str, tuple[tuple[str, ...], str]]  # name -> (dims, dtype)
    seconds: float


@dataclass
class ParsedFile:
    source: SourceFile
    group: str
    summary: FileSummary | None = None
    dataset: Any = None  # xarray.Dataset of the file, append dimension first
    failure: FailureRecord | None = None
    attempts: int = 1
    repair: FailureRecord | None = None  # what the reader repaired, when the batch accepts repairs


def _fetch(source: SourceFile, containers_json: str) -> bytes:
    registry = cached_registry(containers_json)
    store, path = registry.resolve(source.url)
    return bytes(store.get(str(path)).bytes())


def read_file(
    source: SourceFile,
    group: str,
    reader_name: str,
    reader_options: dict[str, Any],
    dimension: str,
    containers_json: str,
    transient_retries: int,
    accept_repairs: bool = False,
    limits: ParseLimits | None = None,
) -> ParsedFile:
    """Fetch, hash and read one file; any error of the file becomes its failure record."""
    started = time.perf_counter()
    parsed = ParsedFile(source, group)
    attempt = 0
    while True:
        attempt += 1
        try:
            failpoint("worker.file")
            data = _fetch(source, containers_json)
            break
        except Exception as error:
            if attempt <= transient_retries and is_transient(error):
                time.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))
                continue
            parsed.failure = FailureRecord(
                source.url, type(error).__name__, first_line(error), group, attempt
            )
            return parsed
    parsed.attempts = attempt
    digest = hashlib.sha256(data).hexdigest()
    request = ReadRequest(source.url, data, reader_name, reader_options, dimension, accept_repairs)
    reply = _read_isolated(request, limits) if limits is not None else read_here(request)
    if reply.error_class:
        parsed.failure = FailureRecord(source.url, reply.error_class, reply.message, group, attempt)
        return parsed
    if reply.repair:
        parsed.repair = FailureRecord(source.url, "RejectedEpochs", reply.repair, group, attempt)
    parsed.dataset = reply.dataset
    times, labels, variables = reply.times, reply.labels or {}, reply.variables or {}
    parsed.summary = FileSummary(
        source.url, group, digest, times, labels, variables, time.perf_counter() - started
    )
    return parsed


def read_here(request: ReadRequest) -> ReadReply:
    """Read in this process; a MemoryError passes through (the parser process reports it)."""
    try:
        dataset, (times, labels, variables), repair = read_dataset(
            request.data,
            request.url,
            request.reader,
            request.options,
            request.dimension,
            request.accept_repairs,
        )
    except MemoryError:
        raise
    except Exception as error:  # every file ends as a dataset or a failure record
        return ReadReply(error_class=type(error).__name__, message=describe(error)[:2000])
    return ReadReply(dataset, times, labels, variables, repair)


def _read_isolated(request: ReadRequest, limits: ParseLimits) -> ReadReply:
    """In this thread's parser process, under ``execution.fileTimeoutSeconds`` and the worker's
    memory: a reader that hangs, crashes or runs out of memory costs this file only."""
    overdue = f"reading exceeded execution.fileTimeoutSeconds={limits.timeout_seconds:g} s"
    try:
        with borrowed_parser(limits) as process:
            reply: ReadReply = process.request(request, limits.timeout_seconds, overdue)
            if reply.recycle:
                process.close()
    except (FileTimeoutError, ParserCrashedError, ParserUnavailableError) as error:
        return ReadReply(error_class=type(error).__name__, message=str(error))
    return reply


def read_dataset(
    data: bytes, url: str, reader_name: str, options: dict[str, Any], dimension: str, accept_repairs: bool
) -> tuple[Any, tuple[Any, Any, Any], str]:
    """The file's dataset (append dimension first), its summary parts, and the reader's repair
    when one was made and accepted (``RejectedEpochsError`` otherwise)."""
    repair = ""
    try:
        dataset = _read_bytes(data, url, reader_name, options)
    except RejectedEpochsError as repaired:
        if not accept_repairs or repaired.dataset is None:
            raise
        repair, dataset = str(repaired), repaired.dataset
    normalized, parts = _normalized(dataset, dimension)
    return normalized, parts, repair


def _read_bytes(data: bytes, url: str, reader_name: str, options: dict[str, Any]) -> Any:
    """Readers take a path: the bytes go to a private temporary folder under the file's own
    name (readers report it, and some look at its suffix)."""
    reader = load_reader(reader_name)
    name = PurePosixPath(url.rstrip("/")).name or "source"
    with tempfile.TemporaryDirectory(prefix="materialize-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return reader.read(path, options).load()
        except RejectedEpochsError as error:
            if error.dataset is not None:
                error.dataset = error.dataset.load()  # before its file goes
            raise


def describe(error: BaseException) -> str:
    """A reader's error in one line that says what is wrong: a pydantic ``ValidationError``'s
    first line only names the model ("1 validation error for Rnxv3Obs"), so its first problem
    is given instead."""
    problems = getattr(error, "errors", None)
    if callable(problems) and type(error).__name__ == "ValidationError":
        try:
            first = problems()[0]
        except Exception:
            return first_line(error)
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "")).removeprefix("Value error, ").rstrip(", ")
        if first.get("type") == "assertion_error" and message == "Assertion failed":
            message = "the reader's header check failed (an assertion without a message)"
        return f"{where}: {message}" if where else message
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:4])}"  # "Dataset validation failed:" and its reasons
    return first_line(error)


class EmptyFileError(ValueError):
    """The reader found no epochs in the file."""


def _normalized(dataset: Any, dimension: str) -> tuple[Any, tuple[Any, Any, Any]]:
    if dimension not in dataset.dims:
        raise ValueError(f"the reader's dataset has no dimension {dimension!r} (it has {list(dataset.dims)})")
    if dataset.sizes[dimension] == 0:
        raise EmptyFileError(f"no {dimension} in the file")
    values = dataset[dimension].values
    if not np.issubdtype(values.dtype, np.datetime64):
        raise ValueError(f"coordinate {dimension!r} is {values.dtype}, not a time")
    if np.isnat(values).any():
        raise ValueError(f"{int(np.isnat(values).sum())} {dimension} values are not times (NaT)")
    times = values.astype("datetime64[ns]").astype(np.int64)
    dataset = dataset.transpose(dimension, ...)
    labels = {
        name: np.asarray(dataset[name].values)
        for name in dataset.dims
        if name != dimension and name in dataset.coords
    }
    variables = {
        name: (tuple(str(d) for d in var.dims), str(var.dtype))
        for name, var in dataset.data_vars.items()
        if dimension in var.dims
    }
    return dataset, (times, labels, variables)


def summary_of(parsed: ParsedFile) -> ParsedFile:
    """The parsed file without its dataset: what travels back to the commit process."""
    return ParsedFile(
        parsed.source, parsed.group, parsed.summary, None, parsed.failure, parsed.attempts, parsed.repair
    )


@dataclass(frozen=True)
class FilePlacement:
    """Where one file's epochs go: ``rows`` of its dataset to grid ``positions``."""

    url: str
    rows: np.ndarray
    positions: np.ndarray


@dataclass(frozen=True)
class ObjectWrite:
    """Everything one task writes in one stored object of one group: files placed by the commit
    process, and grid ranges to reset first (a corrected file's old epochs)."""

    group: str
    dimension: str
    start: int  # grid range of the object, clipped to the array's length
    stop: int
    inner: int  # the inner chunk (or chunk) length along the dimension: slabs align to it
    variables: tuple[str, ...]
    placements: tuple[FilePlacement, ...]
    clears: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def write_object(fork: Any, task: ObjectWrite, *parsed: ParsedFile) -> Any:
    """Write one object's slabs into ``fork`` and hand the fork back to be merged."""
    import zarr

    datasets = {p.source.url: p.dataset for p in parsed if p.dataset is not None}
    touched = [
        (int(p.positions.min()), int(p.positions.max()) + 1) for p in task.placements if p.positions.size
    ]
    touched += list(task.clears)
    if not touched:
        return fork
    low = max(task.start, min(a for a, _ in touched) // task.inner * task.inner)
    high = min(task.stop, -(-max(b for _, b in touched) // task.inner) * task.inner)
    group = zarr.open_group(fork.store, path=task.group, mode="r+")
    mappings = _label_mappings(group, task, datasets)
    for name in task.variables:
        array = group[name]
        assert isinstance(array, zarr.Array)
        row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
        slab = max(task.inner, SLAB_BYTES // row_bytes // task.inner * task.inner)
        for slab_start in range(low, high, slab):
            slab_stop = min(high, slab_start + slab)
            block = np.asarray(array[slab_start:slab_stop])
            for clear_start, clear_stop in task.clears:
                lo, hi = max(clear_start, slab_start), min(clear_stop, slab_stop)
                if lo < hi:
                    block[lo - slab_start : hi - slab_start] = array.fill_value
            for placement in task.placements:
                _scatter(block, slab_start, slab_stop, placement, datasets[placement.url], name, mappings)
            array[slab_start:slab_stop] = block
    return fork


def _label_mappings(group: Any, task: ObjectWrite, datasets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per file and dimension: (the file's positions kept, their positions in the store's axis)."""
    axes: dict[str, dict[Any, int]] = {}
    mappings: dict[str, dict[str, Any]] = {}
    for url, dataset in datasets.items():
        per_dimension = {}
        for dim in dataset.dims:
            if dim == task.dimension or dim not in dataset.coords:
                continue
            if dim not in axes:
                axes[dim] = {label: i for i, label in enumerate(np.asarray(group[dim][:]).tolist())}
            index = axes[dim]
            file_labels = np.asarray(dataset[dim].values).tolist()
            kept = [i for i, label in enumerate(file_labels) if label in index]
            per_dimension[dim] = (
                np.asarray(kept, dtype=np.int64),
                np.asarray([index[file_labels[i]] for i in kept], dtype=np.int64),
            )
        mappings[url] = per_dimension
    return mappings


def _scatter(
    block: np.ndarray,
    slab_start: int,
    slab_stop: int,
    placement: FilePlacement,
    dataset: Any,
    name: str,
    mappings: dict[str, dict[str, Any]],
) -> None:
    if name not in dataset.data_vars:
        return
    inside = (placement.positions >= slab_start) & (placement.positions < slab_stop)
    if not inside.any():
        return
    variable = dataset[name]
    source_index: list[np.ndarray] = [placement.rows[inside]]
    target_index: list[np.ndarray] = [placement.positions[inside] - slab_start]
    for dim in variable.dims[1:]:
        mapped = mappings[placement.url].get(dim)
        if mapped is None:
            size = variable.sizes[dim]
            source_index.append(np.arange(size))
            target_index.append(np.arange(size))
        else:
            source_index.append(mapped[0])
            target_index.append(mapped[1])
    values = np.asarray(variable.values)
    block[np.ix_(*target_index)] = values[np.ix_(*source_index)]
