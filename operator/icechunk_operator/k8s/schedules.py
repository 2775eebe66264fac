"""Cron schedules and the Jobs they start, shared by Reconciliations and store maintenance.

A scheduled run is named after the cron time it stands for (``s202611210300``), so however many
events and timer ticks ask, one cron time starts at most one Job. Schedules that were missed while
the operator was down collapse into one run for the latest of them, as a Kubernetes CronJob does.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from icechunk_operator.api.common import expand_cron
from icechunk_operator.k8s.views import JobOutcome


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def scheduled_run(schedule: str | None, since: datetime, now: datetime) -> str | None:
    """The run the schedule asks for now: its latest cron time after ``since``, or None."""
    from cronsim import CronSim, CronSimError

    if not schedule:
        return None
    try:
        latest: datetime = next(CronSim(expand_cron(schedule), now.astimezone(UTC), reverse=True))
    except CronSimError:  # the models refuse it; an unvalidated body never fires
        return None
    return f"s{latest:%Y%m%d%H%M}" if latest > since else None


def requested_run(request: str) -> str:
    """The run a request annotation's value stands for: the same value names the same run."""
    return "r" + hashlib.sha256(request.encode()).hexdigest()[:10]


def schedule_time(run: str) -> str | None:
    """The cron time a scheduled run stands for (``lastScheduleTime``), None for other runs."""
    if not run.startswith("s"):
        return None
    return datetime.strptime(run[1:], "%Y%m%d%H%M").strftime("%Y-%m-%dT%H:%M:00Z")


def job_finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    ended = (JobOutcome.COMPLETE, JobOutcome.FAILED)
    return any(c.get("type") in ended and c.get("status") == "True" for c in conditions)


def job_failure(job: dict[str, Any]) -> str | None:
    """The Job's failure message when it failed for good, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == JobOutcome.FAILED and condition.get("status") == "True":
            return str(condition.get("message") or condition.get("reason") or "the Job failed")
    return None


def jobs_to_prune(jobs: list[dict[str, Any]], keep: int) -> list[str]:
    """Finished Jobs beyond the newest ``keep``; a running Job is never pruned."""
    finished = [job for job in jobs if job_finished(job)]
    finished.sort(key=lambda job: job["metadata"].get("creationTimestamp") or "", reverse=True)
    return [job["metadata"]["name"] for job in finished[keep:]]
