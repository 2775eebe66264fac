"""One local run of an IngestSchedule: its batch's name and commit messages; the schedule in words."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from icechunk_operator.api.schedule import IngestSchedule
from icechunk_operator.engine.runner import RunReport
from icechunk_operator.k8s.schedule_plan import LABEL_SCHEDULE
from icechunk_operator.local_schedules import (
    describe_schedule,
    local_run_batch,
    nothing_new,
    suspended_note,
)

TEMPLATE = {"store": "gnss", "source": {"prefix": "file:///archive/", "glob": "**/*.nc"}}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
AT = datetime(2026, 12, 1, 3, 15, 42, tzinfo=UTC)


def schedule(name: str = "nightly", **spec: Any) -> IngestSchedule:
    return IngestSchedule.model_validate(
        {
            "kind": "IngestSchedule",
            "metadata": {"name": name},
            "spec": {"schedule": "15 0 * * *", "batch": TEMPLATE} | spec,
        }
    )


def test_a_local_run_is_the_template_named_for_the_schedule_and_the_minute() -> None:
    batch = local_run_batch(schedule(), AT)
    assert batch.metadata.name == "nightly-l202612010315"
    assert batch.metadata.namespace is None  # none in the file, none made up
    assert batch.metadata.labels[LABEL_SCHEDULE] == "nightly"
    assert batch.spec.commit.message == (
        "IngestSchedule nightly run l202612010315 (run locally at 2026-12-01T03:15:42Z)"
    )
    assert batch.spec.store == "gnss" and batch.spec.source.glob == "**/*.nc"
    # A time in another zone names the same UTC minute.
    eastern = AT.astimezone(timezone(timedelta(hours=-5)))
    assert local_run_batch(schedule(), eastern).metadata.name == "nightly-l202612010315"


def test_a_local_run_keeps_the_templates_commit_message_as_prefix() -> None:
    templated = schedule(batch=TEMPLATE | {"commit": {"message": "GNSS daily append"}})
    message = local_run_batch(templated, AT).spec.commit.message
    assert message == "GNSS daily append run l202612010315 (run locally at 2026-12-01T03:15:42Z)"


def test_a_long_schedule_name_still_gives_a_unique_dns_label() -> None:
    first, second = "a" * 62 + "x", "a" * 62 + "y"  # the longest names; equal for 62 characters
    names = {local_run_batch(schedule(name), AT).metadata.name for name in (first, second)}
    assert len(names) == 2
    for name in names:
        assert len(name) <= 63 and DNS_LABEL.match(name) and name.endswith("-l202612010315")


def test_a_namespaced_schedule_runs_in_its_namespace() -> None:
    body = schedule().to_api() | {"metadata": {"name": "nightly", "namespace": "science"}}
    batch = local_run_batch(IngestSchedule.model_validate(body), AT)
    assert batch.metadata.namespace == "science"


def test_describe_gives_the_cron_in_words_and_the_next_three_runs_in_utc() -> None:
    assert describe_schedule(schedule(), AT) == (
        "nightly (store gnss): '15 0 * * *' UTC (At 00:15 every day), "
        "next runs 2026-12-02T00:15Z, 2026-12-03T00:15Z, 2026-12-04T00:15Z"
    )
    assert describe_schedule(schedule(schedule="@weekly"), AT).endswith(
        "next runs 2026-12-06T00:00Z, 2026-12-13T00:00Z, 2026-12-20T00:00Z"
    )
    suspended = describe_schedule(schedule(suspend=True), AT)
    assert suspended.endswith("(At 00:15 every day), suspended") and "next runs" not in suspended


def test_a_suspended_schedule_runs_with_a_note() -> None:
    assert suspended_note(schedule()) is None
    note = suspended_note(schedule(suspend=True))
    assert note is not None and "spec.suspend" in note and "nightly" in note


def test_nothing_new_is_said_only_of_a_run_that_did_nothing() -> None:
    idle = RunReport(batch="nightly-l1", store="gnss", total=12, skipped=12)
    assert nothing_new(idle) == ("nothing new: 12 files listed, all in the store already; nothing committed")
    assert nothing_new(RunReport(batch="b", store="s")) == "nothing new: no files listed; nothing committed"
    added = RunReport(batch="b", store="s", total=12, done=2, skipped=10, commits=["SNAP"])
    failed_again = RunReport(batch="b", store="s", total=12, failed=1, skipped=11, tolerance=1)
    refused = RunReport(batch="b", store="s", total=12, skipped=12, error="gate", refused=True)
    assert nothing_new(added) is None and nothing_new(failed_again) is None and nothing_new(refused) is None
