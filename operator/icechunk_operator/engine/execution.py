"""Parallel virtualization on Dask: tasks of whole groups run on worker processes, results stream
back to the single writer as they complete.

Processes, not threads: VirtualiZarr's HDF5 parser holds the HDF5 library lock. Each task
returns finished payloads (a few KB per group), so the writer does no parsing at all. Within a
task, the heads of the next ``files_in_flight`` files are fetched while the current one parses
(:mod:`~icechunk_operator.engine.prefetch`), so on object storage a worker parses instead of
waiting. The parse itself runs in a parser process beside the worker, under a deadline and a
memory cap (:mod:`~icechunk_operator.engine.isolation`): a hostile file costs a failure record,
never the worker.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from icechunk_operator.engine.assembly import FileParser, InProcessParser
from icechunk_operator.engine.documents import GroupPayload
from icechunk_operator.engine.isolation import IsolatedParser, borrowed_parser
from icechunk_operator.engine.objects import cached_registry
from icechunk_operator.engine.parse_protocol import (
    ParseFailed,
    ParseLimits,
    ParserUnavailableError,
    failure_record,
)
from icechunk_operator.engine.planning import GroupWork
from icechunk_operator.engine.prefetch import Head, HeadPrefetcher
from icechunk_operator.engine.records import FailureRecord, SourceFile
from icechunk_operator.engine.virtualize import UnusableFileError, VirtualizeOptions
from icechunk_operator.failpoints import failpoint

MAX_BACKOFF_SECONDS = 10.0


@dataclass
class GroupOutcome:
    group: str
    files: int
    payload: GroupPayload | None
    failures: list[FailureRecord] = field(default_factory=list)
    seconds: float = 0.0


def is_transient(error: BaseException) -> bool:
    """Network hiccups are worth a retry; a malformed file is not."""
    if isinstance(error, ParseFailed):
        return error.transient  # judged in the parser process, on the original exception
    if isinstance(error, UnusableFileError):
        return False
    if isinstance(error, ParserUnavailableError):
        return True
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    name = type(error).__name__
    text = str(error).lower()
    if name in {"NotFoundError", "PermissionDeniedError", "UnauthenticatedError"}:
        return False
    return name == "GenericError" and any(
        word in text for word in ("timed out", "timeout", "connection", "503", "429", "reset")
    )


def _with_retries(
    work: GroupWork,
    source: SourceFile,
    parser: FileParser,
    retries: int,
    prefetcher: HeadPrefetcher,
    prefetched: Future[Head | None],
) -> FailureRecord | None:
    """The first attempt parses the prefetched head (a failed prefetch is that attempt's
    error); a retry fetches the head again itself."""
    attempt = 0
    while True:
        attempt += 1
        try:
            head = prefetched.result() if attempt == 1 else prefetcher.fetch(source)
            parser.parse(work, source, head)
            return None
        except Exception as error:  # every file ends as a dataset or a failure record
            if is_transient(error) and attempt <= retries:
                delay = min(MAX_BACKOFF_SECONDS, 0.25 * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random()))
                continue
            return failure_record(source, error, None, attempt)


def virtualize_group(
    work: GroupWork,
    parser: FileParser,
    retries: int,
    prefetcher: HeadPrefetcher,
    heads: Generator[tuple[SourceFile, Future[Head | None]]],
) -> GroupOutcome:
    """``heads`` yields the prefetched heads of this group's files, in order."""
    started = time.perf_counter()
    outcome = GroupOutcome(work.group, work.size, None)
    for source in work.files:
        failpoint("worker.file")  # on a Dask worker: a kill here loses the task in flight
        fetched, prefetched = next(heads)
        if fetched != source:
            raise RuntimeError(f"prefetch out of order: {fetched.url} for {source.url}")
        failure = _with_retries(work, source, parser, retries, prefetcher, prefetched)
        if failure is not None:
            outcome.failures.append(_in_group(failure, work.group))
    outcome.payload, failures = parser.finish(work)
    outcome.failures.extend(failures)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _in_group(failure: FailureRecord, group: str) -> FailureRecord:
    return FailureRecord(
        failure.url, failure.error_class, failure.message, group, failure.attempts, failure.time
    )


def virtualize_task(
    works: list[GroupWork],
    options: VirtualizeOptions,
    containers_json: str,
    retries: int,
    files_in_flight: int = 1,
    limits: ParseLimits | None = None,
) -> list[GroupOutcome]:
    """The Dask task: a handful of groups, each to a payload or failure records.

    With ``limits`` each file is parsed in this thread's parser process
    (:mod:`~icechunk_operator.engine.isolation`); without, in this process (no deadline)."""
    registry = cached_registry(containers_json)
    prefetcher = HeadPrefetcher(registry, files_in_flight)
    heads = prefetcher.stream(source for work in works for source in work.files)
    try:
        with _parser(options, containers_json, registry, limits) as parser:
            return [virtualize_group(work, parser, retries, prefetcher, heads) for work in works]
    finally:
        heads.close()  # joins the prefetch threads


@contextmanager
def _parser(
    options: VirtualizeOptions, containers_json: str, registry: Any, limits: ParseLimits | None
) -> Iterator[FileParser]:
    if limits is None:
        yield InProcessParser(options, registry)
        return
    with borrowed_parser(limits) as process:
        yield IsolatedParser(process, options, containers_json, limits)


def make_tasks(work: Sequence[GroupWork], files_per_task: int) -> list[list[GroupWork]]:
    tasks: list[list[GroupWork]] = []
    current: list[GroupWork] = []
    size = 0
    for item in work:
        current.append(item)
        size += item.size
        if size >= files_per_task:
            tasks.append(current)
            current, size = [], 0
    if current:
        tasks.append(current)
    return tasks


def auto_files_per_task(total_files: int, workers: int, files_in_flight: int = 1) -> int:
    """Enough tasks to keep every worker busy and stream results, few enough to keep overhead low.

    Each task starts with an empty prefetch window (one round trip before its first parse), so
    a task holds at least four windows' worth of files when the archive allows it."""
    ceiling = max(32, 4 * files_in_flight)
    return max(1, min(ceiling, total_files // max(1, workers * 8)))


class SchedulerUnreachable(ConnectionError):
    """The Dask scheduler did not accept a connection within the wait; a crash, retried."""


def wait_for_scheduler(address: str, timeout: float, poll: float = 1.0) -> None:
    """Return once ``address`` (``tcp://host:port``) accepts TCP connections.

    In a cluster the commit pod starts together with its DaskCluster, and the scheduler's Service
    has no endpoint until the scheduler pod is ready: seconds to minutes, with an image to pull.
    Dask's own connect timeout (30 s) would turn that into a failed pod; waiting here, with a
    deadline of its own, does not.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    host, port = parts.hostname or "localhost", parts.port or 8786
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as error:  # name not resolvable yet, refused, timed out
            if time.monotonic() + poll > deadline:
                raise SchedulerUnreachable(
                    f"Dask scheduler {address} did not accept a connection in {timeout:.0f} s: {error}"
                ) from None
            time.sleep(poll)


@contextmanager
def dask_client(scheduler: str | None, workers: int, threads_per_worker: int) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def stream_outcomes(
    client: Any,
    tasks: Sequence[list[GroupWork]],
    options: VirtualizeOptions,
    containers_json: str,
    retries: int,
    files_in_flight: int = 1,
    limits: ParseLimits | None = None,
) -> Iterator[GroupOutcome]:
    """Outcomes in completion order; a task that crashed becomes failure records, not a crash.

    A worker that leaves (its pod deleted, its node drained) takes the results it held with it:
    their futures turn "lost" (or back to "pending") while the scheduler computes them again on
    another worker. Such a future goes back into the stream and is read when it finishes again;
    only a task that raised, or was cancelled, costs its files."""
    from distributed import as_completed

    futures = {
        client.submit(
            virtualize_task, works, options, containers_json, retries, files_in_flight, limits, pure=False
        ): works
        for works in tasks
    }
    completed = as_completed(futures)
    for future in completed:
        if future.status in ("lost", "pending"):
            completed.add(future)
            continue
        works = futures.pop(future)
        if future.status == "finished":
            yield from future.result()
        else:
            error = future.exception() if future.status == "error" else None
            kind = type(error).__name__ if error is not None else "CancelledError"
            message = f"worker task failed: {error}" if error is not None else f"worker task {future.status}"
            for work in works:
                yield GroupOutcome(
                    work.group,
                    work.size,
                    None,
                    [FailureRecord(s.url, kind, message, work.group) for s in work.files],
                )
        future.release()
