"""An IngestSchedule on a laptop: one run made from its template, and its schedule in words.

The CLI keeps no clock: ``run`` does the one run a person asked for, ``validate`` says when the
operator would run the schedule. The run's IngestBatch is built by the function the operator
builds a scheduled run with (:func:`~icechunk_operator.k8s.schedule_plan.run_batch_body`), so its
commits name the schedule and the run the same way; the store's ledger makes it ingest only what
is new or changed. Only the pure part of :mod:`~icechunk_operator.k8s` is imported: no Kopf, no
Kubernetes client, so the CLI starts as fast as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.common import expand_cron
from icechunk_operator.api.schedule import IngestSchedule
from icechunk_operator.k8s import schedule_plan
from icechunk_operator.k8s.schedule_plan import NewRun, cron_times, format_time, run_batch_body

if TYPE_CHECKING:
    from icechunk_operator.engine.runner import RunReport

#: A local run is ``<schedule>-l<YYYYmmddHHMM>``, beside the operator's ``-s`` (scheduled) and
#: ``-r`` (requested) runs: a laptop's run never takes the name of one the cluster made.
LOCAL_RUN = "l"


def local_run_batch(schedule: IngestSchedule, now: datetime) -> IngestBatch:
    """The IngestBatch of one local run of ``schedule`` at ``now``: its template, named for the run
    (a DNS label of at most 63 characters), its commit messages naming the schedule and the run."""
    run = f"{LOCAL_RUN}{now.astimezone(UTC):%Y%m%d%H%M}"
    reason = f"run locally at {format_time(now)}"
    namespace = schedule.metadata.namespace
    body = run_batch_body(
        schedule.to_api(), schedule.spec.batch.to_api(), NewRun(run, 0, reason, None), namespace or ""
    )
    if namespace is None:
        del body["metadata"]["namespace"]  # as a batch of the same file: none given, none made up
    return IngestBatch.model_validate(body)


def describe_schedule(schedule: IngestSchedule, now: datetime, count: int = 3) -> str:
    """``nightly (store gnss): '15 0 * * *' UTC (At 00:15 every day), next runs ...`` or ``suspended``."""
    spec = schedule.spec
    head = f"{schedule.metadata.name} (store {spec.batch.store}): {spec.schedule!r} UTC"
    head += f" ({explain(spec.schedule)})"
    if spec.suspend:
        return f"{head}, suspended"
    times = ", ".join(short_time(moment) for moment in cron_times(spec.schedule, now, count))
    return f"{head}, next runs {times}"


def explain(schedule: str) -> str:
    """The cron expression in English (cronsim's own words: no dependency more)."""
    from cronsim import CronSim

    words: str = CronSim(expand_cron(schedule), datetime.now(UTC)).explain()
    return words


def short_time(moment: datetime) -> str:
    """``2026-12-01T00:15Z``: minutes are what cron schedules by (seconds only when a six-field
    expression asks for them)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if moment.second else "%Y-%m-%dT%H:%MZ")


def suspended_note(schedule: IngestSchedule) -> str | None:
    """What ``run`` says before it runs a suspended schedule: asked for by name or by file, the run
    is a request, which the operator starts too (the run-requested annotation)."""
    if not schedule.spec.suspend:
        return None
    return (
        f"IngestSchedule {schedule.metadata.name}: spec.suspend is true, so the operator starts no "
        "scheduled runs of it; running it once here because it was asked for"
    )


def nothing_new(report: RunReport) -> str | None:
    """The line a run that found nothing to do prints, in the words of the schedule's status."""
    if not report.succeeded or report.done or report.failed or report.commits:
        return None
    return schedule_plan.nothing_new(report.total)
