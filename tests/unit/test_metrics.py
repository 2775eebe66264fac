"""The operator's metrics, computed from the batch index at scrape time, and the cron clock the
test tier moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import generate_latest

from icechunk_operator.k8s.clock import schedule_clock, wall_clock
from icechunk_operator.k8s.ingest_schedules import ScheduleRunner
from icechunk_operator.k8s.kube import KubeApi
from icechunk_operator.k8s.metrics import SCHEDULE_CHECKED, OperatorMetrics
from icechunk_operator.k8s.schedule_plan import format_time
from icechunk_operator.k8s.views import BatchView


def test_batches_by_phase_and_files_by_outcome_per_store() -> None:
    index = {
        ("science", "ismip6"): [
            BatchView("a", "u1", "1", "Succeeded", files_done=10, files_failed=2),
            BatchView("b", "u2", "2", "Running", files_done=3, files_skipped=4),
            BatchView("c", "u3", "3", None),
        ]
    }
    metrics = OperatorMetrics(lambda: index.items())
    metrics.commit_seconds.observe(0.7)
    text = generate_latest(metrics.registry).decode()
    labels = 'namespace="science",{},store="ismip6"'
    assert f"icechunk_operator_batches{{{labels.format('phase="Succeeded"')}}} 1.0" in text
    assert f"icechunk_operator_batches{{{labels.format('phase="Pending"')}}} 1.0" in text
    assert f"icechunk_operator_batch_files{{{labels.format('outcome="ingested"')}}} 13.0" in text
    assert f"icechunk_operator_batch_files{{{labels.format('outcome="skipped"')}}} 4.0" in text
    assert "icechunk_operator_commit_seconds_count 1.0" in text


def test_a_schedule_reports_when_it_was_last_checked_on_the_moved_clock(tmp_path: Path) -> None:
    offset = tmp_path / "offset-seconds"
    clock = schedule_clock(str(offset))
    assert abs((clock() - datetime.now(UTC)).total_seconds()) < 5  # no file yet: the wall clock
    offset.write_text("3600\n")
    assert 3595 < (clock() - datetime.now(UTC)).total_seconds() < 3605
    body = {
        "metadata": {"namespace": "science", "name": "daily", "generation": 1, "uid": "u1"},
        "spec": {"schedule": "0 0 1 1 *", "batch": {"store": "sites"}},
        "status": {"observedGeneration": 1, "lastScheduleTime": format_time(datetime.now(UTC))},
    }
    runner = ScheduleRunner(cast(KubeApi, None), lambda *_: None, clock)  # not due: no API call
    asyncio.run(runner.tick(body))
    checked = runner.checked["science", "daily"]
    metrics = OperatorMetrics(dict().items, lambda: [[body]], lambda: runner.checked)
    text = generate_latest(metrics.registry).decode()
    labels = 'namespace="science",schedule="daily",store="sites"'
    sample = next(line for line in text.splitlines() if line.startswith(f"{SCHEDULE_CHECKED}{{{labels}}}"))
    assert float(sample.rsplit(" ", 1)[1]) == pytest.approx(checked.timestamp())
    assert checked > datetime.now(UTC)  # the moved clock's time, an hour ahead
    runner.forget("science", "daily")
    assert SCHEDULE_CHECKED + "{" not in generate_latest(metrics.registry).decode()


def test_a_clock_file_that_is_not_seconds_is_named(tmp_path: Path) -> None:
    offset = tmp_path / "offset-seconds"
    offset.write_text("soon")
    with pytest.raises(ValueError, match=r"ICECHUNK_OPERATOR_TEST_CLOCK_FILE .*offset-seconds: 'soon'"):
        schedule_clock(str(offset))()


def test_the_wall_clock_is_the_default() -> None:
    assert schedule_clock(None) is wall_clock and schedule_clock("") is wall_clock
