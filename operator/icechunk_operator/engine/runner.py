"""One batch, end to end: validate, open, list, plan, virtualize on Dask, write, commit, report.

This is the function the CLI calls on a laptop and the commit pod calls in a cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.schedule import SCHEDULE_LABEL
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.engine.commits import (
    CheckpointedWriter,
    CheckpointPolicy,
    CommitRetry,
    initialize_repository,
    load_ledger,
)
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.execution import (
    auto_files_per_task,
    dask_client,
    make_tasks,
    stream_outcomes,
)
from icechunk_operator.engine.failures import build_failure_log, failure_log_url, write_failure_log
from icechunk_operator.engine.lifecycle import TagTakenError, tag_once
from icechunk_operator.engine.materialize.registry import load_registry, processing_key
from icechunk_operator.engine.materialize.run import MaterializedWriter, windows
from icechunk_operator.engine.objects import containers_key
from icechunk_operator.engine.parse_protocol import ParseLimits, memory_bytes
from icechunk_operator.engine.planning import plan_files, plan_ingest, plan_removals, without
from icechunk_operator.engine.records import FailureRecord, LedgerEntry, SourceFile
from icechunk_operator.engine.sources import check_index_contents, list_sources, read_url_list
from icechunk_operator.engine.staging import (
    StagingRefusedError,
    TargetMovedError,
    drop_superseded,
    promote,
    start_staging,
)
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.engine.virtualize import VirtualizeOptions
from icechunk_operator.exiting import one_line_error
from icechunk_operator.failpoints import failpoint


@dataclass
class Progress:
    """Counts as the run goes; ``on_change`` lets the CLI or the commit pod show them."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    stage: str = "starting"


@dataclass
class RunReport:
    batch: str
    store: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    groups_written: int = 0
    groups_deleted: int = 0
    commits: list[str] = field(default_factory=list)
    failure_log: str | None = None
    failures: list[FailureRecord] = field(default_factory=list)
    repairs: list[FailureRecord] = field(default_factory=list)  # files ingested after a reader's repair
    stage_seconds: dict[str, float] = field(default_factory=dict)
    tolerance: int = 0
    error: str | None = None
    refused: bool = False  # the error is a refusal (an existing tag, a staged group that fails its read)
    promoted: str | None = None  # the staged snapshot the target branch moved to
    tagged: str | None = None  # the snapshot spec.tag names

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.failed <= self.tolerance


def spec_hash(batch: IngestBatch) -> str:
    text = json.dumps(batch.spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def virtualize_options(batch: IngestBatch) -> VirtualizeOptions:
    spec = batch.spec.virtualization
    return VirtualizeOptions(
        parser=str(spec.parser),
        loadable_variables=tuple(spec.loadable_variables) if spec.loadable_variables is not None else None,
        drop_variables=tuple(spec.drop_variables),
        fixes=tuple(spec.fixes),
        split_dimension=spec.split.dimension if spec.split else None,
        decode_times=spec.decode_times,
    )


def parse_limits(batch: IngestBatch) -> ParseLimits:
    execution = batch.spec.execution
    return ParseLimits(
        float(execution.file_timeout_seconds), memory_bytes(execution.worker_memory), execution.worker_memory
    )


def commit_retry(store: IcechunkStore) -> CommitRetry:
    """A checkpoint gets the budget of one request to the store: all its tries, each timed out."""
    storage = store.spec.storage
    return CommitRetry(storage.max_tries, float(storage.request_timeout_seconds * storage.max_tries))


def run_batch(
    store: IcechunkStore,
    batch: IngestBatch,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> RunReport:
    report = RunReport(batch=batch.metadata.name, store=store.metadata.name)
    progress = Progress()
    stages = report.stage_seconds

    def stage(name: str) -> None:
        progress.stage = name
        on_progress(progress)

    check_index_contents(batch.spec.source, store.spec)  # refused before anything is touched
    target = branch = batch.spec.branch or store.spec.branch

    started = time.perf_counter()
    stage("opening store")
    repo = open_repository(store.spec)
    initialize_repository(repo, target)
    base = None
    if batch.spec.staging:
        branch, base = start_staging(repo, report.batch, target)
        if schedule := batch.metadata.labels.get(SCHEDULE_LABEL):
            drop_superseded(repo, schedule, keep=branch)
    ledger = load_ledger(repo, branch)
    stages["open"] = time.perf_counter() - started

    started = time.perf_counter()
    stage("listing")
    files = list_sources(batch.spec.source, store.spec)
    stages["list"] = time.perf_counter() - started

    ingest = _ingest_materialized if batch.spec.materialize is not None else _ingest_virtual
    return _finish(
        repo,
        store,
        batch,
        report,
        branch,
        target,
        base,
        lambda: ingest(
            repo,
            store,
            batch,
            branch,
            files,
            ledger,
            report,
            progress,
            on_progress,
            scheduler,
            workers,
            stage,
        ),
        stage,
    )


def _ingest_virtual(
    repo: Any,
    store: IcechunkStore,
    batch: IngestBatch,
    branch: str,
    files: list[SourceFile],
    ledger: dict[str, LedgerEntry],
    report: RunReport,
    progress: Progress,
    on_progress: Callable[[Progress], None],
    scheduler: str | None,
    workers: int | None,
    stage: Callable[[str], None],
) -> None:
    stages = report.stage_seconds
    started = time.perf_counter()
    source = batch.spec.source
    removed = read_url_list(source.remove_index, store.spec) if source.remove_index else []
    plan = plan_ingest(files, without(ledger, removed), batch.spec.grouping, source.skip)
    deleted_groups = plan_removals(plan, removed, ledger, batch.spec.grouping)
    failpoint("planning")
    stages["plan"] = time.perf_counter() - started

    report.total = len(files)
    report.skipped = progress.skipped = len(plan.skipped)
    report.failures.extend(plan.refused)
    report.failed = progress.failed = len(plan.refused)
    progress.total = report.total
    failures_allowed = batch.spec.failures
    report.tolerance = max(
        failures_allowed.max_failed_files or 0,
        int(failures_allowed.max_failed_fraction * report.total),
    )

    writer = CheckpointedWriter(
        repo,
        branch,
        batch=report.batch,
        spec_hash=spec_hash(batch),
        policy=CheckpointPolicy(batch.spec.commit.every_groups, batch.spec.commit.every_seconds),
        ledger=ledger,
        message_prefix=batch.spec.commit.message,
        retry=commit_retry(store),
    )
    execution = batch.spec.execution
    worker_count = workers or execution.workers
    per_task = execution.files_per_task or auto_files_per_task(
        plan.files_to_ingest, worker_count, execution.files_in_flight
    )
    started = time.perf_counter()
    virtualize_seconds = 0.0
    try:
        for group in deleted_groups:  # in the first commit
            writer.delete_group(group)
        if plan.work:
            stage("virtualizing")
            with dask_client(
                scheduler or execution.scheduler, worker_count, execution.threads_per_worker
            ) as client:
                stages["cluster"] = time.perf_counter() - started
                outcomes = stream_outcomes(
                    client,
                    make_tasks(plan.work, per_task),
                    virtualize_options(batch),
                    containers_key(store.spec.virtual_chunk_containers),
                    execution.retries,
                    execution.files_in_flight,
                    parse_limits(batch),
                )
                for outcome in outcomes:
                    failpoint("virtualizing")
                    virtualize_seconds += outcome.seconds
                    report.failures.extend(outcome.failures)
                    report.failed += len(outcome.failures)
                    writer.note_failures(len(outcome.failures))
                    if outcome.payload is not None:
                        report.done += len(outcome.payload.sources)
                        writer.add(outcome.payload)
                    _count_refusals(report, writer)
                    progress.done, progress.failed = report.done, report.failed
                    on_progress(progress)
        stage("committing")
        writer.checkpoint()
        _count_refusals(report, writer)
    except Exception as error:
        report.error = f"{type(error).__name__}: {error}"
        raise
    finally:
        writer.close()
        report.commits = writer.stats.commits
        report.groups_written = writer.stats.groups_written
        report.groups_deleted = writer.stats.groups_deleted
        stages["virtualize (worker CPU)"] = virtualize_seconds
        stages["write"] = writer.stats.write_seconds
        stages["commit"] = writer.stats.commit_seconds
        stages["ingest (wall)"] = time.perf_counter() - started


def _count_refusals(report: RunReport, writer: CheckpointedWriter) -> None:
    """Files whose group the store refused at write time were counted done when their payload
    arrived: they are failures."""
    refusals = writer.take_refusals()
    report.failures.extend(refusals)
    report.failed += len(refusals)
    report.done -= len(refusals)


def _ingest_materialized(
    repo: Any,
    store: IcechunkStore,
    batch: IngestBatch,
    branch: str,
    files: list[SourceFile],
    ledger: dict[str, LedgerEntry],
    report: RunReport,
    progress: Progress,
    on_progress: Callable[[Progress], None],
    scheduler: str | None,
    workers: int | None,
    stage: Callable[[str], None],
) -> None:
    """Read, place and write window by window (:mod:`~icechunk_operator.engine.materialize`)."""
    assert batch.spec.materialize is not None
    stages = report.stage_seconds
    started = time.perf_counter()
    materialize = batch.spec.materialize
    processing = processing_key(
        materialize.reader, dict(materialize.reader_options), materialize.append_dimension
    )
    processed = {key: e.processing for key, e in load_registry(repo.readonly_session(branch=branch)).items()}
    work, skipped, refused = plan_files(
        files, ledger, batch.spec.grouping, batch.spec.source.skip, processed, processing
    )
    failpoint("planning")
    stages["plan"] = time.perf_counter() - started
    report.total = progress.total = len(files)
    report.skipped = progress.skipped = len(skipped)
    report.failures.extend(refused)
    report.failed = progress.failed = len(refused)
    allowed = batch.spec.failures
    report.tolerance = max(allowed.max_failed_files or 0, int(allowed.max_failed_fraction * report.total))
    writer = MaterializedWriter(
        repo,
        branch,
        batch,
        spec_hash(batch),
        containers_key(store.spec.virtual_chunk_containers),
        commit_retry(store),
        parse_limits(batch),
        ledger,
    )
    execution = batch.spec.execution
    started = time.perf_counter()
    reading = 0.0
    try:
        if work:
            stage("materializing")
            with dask_client(
                scheduler or execution.scheduler, workers or execution.workers, execution.threads_per_worker
            ) as client:
                stages["cluster"] = time.perf_counter() - started
                for window in windows(work, batch.spec.materialize.files_per_commit):
                    outcome = writer.run_window(client, window)
                    reading += outcome.seconds_reading
                    report.failures.extend(outcome.failures or [])
                    report.repairs.extend(outcome.repairs)
                    report.failed += len(outcome.failures or [])
                    report.done += outcome.done
                    report.skipped += outcome.skipped
                    progress.done, progress.failed, progress.skipped = (
                        report.done,
                        report.failed,
                        report.skipped,
                    )
                    on_progress(progress)
    finally:
        report.commits = writer.commits
        report.groups_written = len({g for _, g in work}) if writer.commits else 0
        stages["read (worker CPU)"] = reading
        stages["write"] = writer.write_seconds
        stages["commit"] = writer.commit_seconds
        stages["ingest (wall)"] = time.perf_counter() - started


def _finish(
    repo: Any,
    store: IcechunkStore,
    batch: IngestBatch,
    report: RunReport,
    branch: str,
    target: str,
    base: str | None,
    ingest: Callable[[], None],
    stage: Callable[[str], None],
) -> RunReport:
    """What every batch does after its ingest: the failure log, promotion, the tag."""
    try:
        ingest()
    except Exception as error:
        report.error = report.error or f"{type(error).__name__}: {error}"
        raise
    finally:
        if report.failures or report.repairs:
            url = failure_log_url(store.spec, report.batch)
            totals = {
                "total": report.total,
                "done": report.done,
                "failed": report.failed,
                "skipped": report.skipped,
            }
            try:
                write_failure_log(
                    url,
                    store.spec,
                    build_failure_log(report.batch, report.store, report.failures, totals, report.repairs),
                )
            except Exception as log_error:
                if report.error is None:
                    raise
                # The run's own error is on its way out: a store that failed the commit often
                # fails this write too, and its error must not take the commit's place.
                logging.getLogger(__name__).warning(
                    "failure log %s not written: %s", url, one_line_error(log_error)
                )
            else:
                report.failure_log = url

    failpoint("committed")  # every checkpoint is in; the caller has not reported it yet
    if base is not None and report.error is None:
        stage("validating")
        try:
            promoted = promote(repo, branch, target, base, batch.spec.validation)
        except TargetMovedError:
            raise  # a crash, not a refusal: the retry stages afresh on the new tip
        except StagingRefusedError as error:
            report.error, report.refused = str(error), isinstance(error, Refused)
        else:
            report.promoted = promoted
    if batch.spec.tag and report.succeeded:
        tip = str(repo.lookup_branch(target))
        try:
            tag_once(repo, batch.spec.tag, tip)
        except TagTakenError as error:
            report.error, report.refused = str(error), True
        else:
            report.tagged = tip
    stage("done")
    return report
