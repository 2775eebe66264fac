"""The CLI as a user runs it: exit codes, messages naming fields, the summary table."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cronsim import CronSim

from icechunk_operator.synthetic import ArchiveLayout, plan_archive, write_archive
from tests.conftest import ismip6_resources
from tests.integration.readback import assert_matches_source, branch_commits, ledger_urls


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_operator.cli", *args], capture_output=True, text=True, timeout=300
    )


def write_spec(path: Path, store, batch, **batch_spec_changes) -> Path:
    documents = [store.to_api(), batch.to_api()]
    documents[1]["spec"].update(batch_spec_changes)
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_run_prints_a_summary_and_exits_zero(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    result = cli("run", "-f", str(write_spec(tmp_path / "b.yaml", store, batch)), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "result          " in result.stdout and "succeeded" in result.stdout
    good = sum(1 for f in shared_archive.files if f.defect == "none")
    assert f"{good} ingested, 4 failed" in result.stdout
    assert "[virtualizing]" in result.stderr  # plain progress lines when not on a terminal


def test_failures_beyond_tolerance_exit_one(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch, failures={"maxFailedFiles": 0})
    result = cli("run", "-f", str(spec), "--workers", "1")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "EmptyFileError=1" in result.stdout
    assert "run the same command again" in result.stderr  # the retry, as in the cluster's message


def test_escaping_template_is_refused_naming_the_field(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(
        tmp_path / "b.yaml", store, batch, grouping={"pattern": r"(?P<v>[^/]+)\.nc$", "template": "../{v}"}
    )
    result = cli("run", "-f", str(spec))
    assert result.returncode == 2
    assert "spec.grouping" in result.stderr and "'..'" in result.stderr
    assert not (tmp_path / "store").exists()


def test_source_outside_containers_is_refused_naming_the_field(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch, source={"prefix": "file:///etc/", "glob": "*.nc"})
    result = cli("run", "-f", str(spec))
    assert result.returncode == 2
    assert "spec.source.prefix" in result.stderr and "outside" in result.stderr
    assert not (tmp_path / "store").exists()


def test_validate(tmp_path: Path, shared_archive: ArchiveLayout) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    result = cli("validate", "-f", str(write_spec(tmp_path / "b.yaml", store, batch)))
    assert result.returncode == 0 and "1 stores, 1 batches" in result.stdout


def test_a_crash_exits_three_in_one_line_and_running_again_is_the_retry(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    """A real fault: the store's folder lies under a file, so the repository cannot be created."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    store, batch = ismip6_resources(shared_archive.root, (blocker / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch)
    crashed = cli("run", "-f", str(spec), "--workers", "1")
    assert crashed.returncode == 3, crashed.stderr
    assert (
        "IngestBatch ismip6: crashed: " in crashed.stderr and "run the same command again" in crashed.stderr
    )
    assert "Traceback" not in crashed.stderr

    blocker.unlink()  # the fault is repaired: the same command is the retry
    assert cli("run", "-f", str(spec), "--workers", "1").returncode == 0


def write_schedule(path: Path, store, batch, *extra: dict[str, Any], **schedule_spec: Any) -> Path:
    """The store and an IngestSchedule ``daily`` whose template is ``batch``'s spec, then ``extra``."""
    schedule = {
        "kind": "IngestSchedule",
        "metadata": {"name": "daily"},
        "spec": {"schedule": "0 3 * * *", "batch": batch.to_api()["spec"]} | schedule_spec,
    }
    path.write_text(yaml.safe_dump_all([store.to_api(), schedule, *extra]))
    return path


@pytest.mark.slow
def test_run_does_one_run_of_a_schedule_and_each_run_ingests_only_what_is_new(
    tmp_path: Path, dask_scheduler: str
) -> None:
    """An ISMIP6-like prefix that gains an experiment between runs, as on a laptop: ``run`` twice
    with nothing new commits nothing and says so; after new files arrive it adds exactly those."""
    layout = plan_archive(
        tmp_path / "archive", institutions=1, models=2, experiments=2, variables=2, defects=False
    )
    first = [f for f in layout.files if f.experiment == "exp00"]
    arriving = [f for f in layout.files if f.experiment == "exp01"]
    write_archive(ArchiveLayout(layout.root, first))
    store, batch = ismip6_resources(layout.root, (tmp_path / "store").as_uri())
    spec = write_schedule(tmp_path / "s.yaml", store, batch)

    ran = cli("run", "-f", str(spec), "--scheduler", dask_scheduler)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"IngestSchedule daily: run daily-l\d{12}\n", ran.stderr)
    assert "4 total, 4 ingested, 0 failed, 0 skipped" in ran.stdout and "nothing new" not in ran.stdout
    root = layout.root.resolve().as_uri() + "/"
    assert ledger_urls(store) == {root + f.path.relative_to(layout.root).as_posix(): f.group for f in first}
    tip = branch_commits(store)[0]
    assert re.match(r"IngestSchedule daily run l\d{12} \(run locally at [-0-9T:]+Z\): 4 groups", tip.message)

    # Nothing new, and asked for by name while suspended (a request runs; the note says so).
    # The batch beside it is not chosen, so it does not run.
    other = batch.to_api() | {"metadata": {"name": "other"}}
    history = [s.id for s in branch_commits(store)]
    suspended = write_schedule(tmp_path / "suspended.yaml", store, batch, other, suspend=True)
    idle = cli("run", "-f", str(suspended), "--schedule", "daily", "--scheduler", dask_scheduler)
    assert idle.returncode == 0, idle.stderr
    assert "nothing new: 4 files listed, all in the store already; nothing committed" in idle.stdout
    assert "spec.suspend is true" in idle.stderr
    assert idle.stdout.count("batch ") == 1 and "other" not in idle.stdout
    assert [s.id for s in branch_commits(store)] == history  # the branch tip did not move

    write_archive(ArchiveLayout(layout.root, arriving))
    grown = cli("run", "-f", str(spec), "--scheduler", dask_scheduler)
    assert grown.returncode == 0, grown.stderr
    assert "8 total, 4 ingested, 0 failed, 4 skipped" in grown.stdout
    ledger = ledger_urls(store)
    assert ledger == {root + f.path.relative_to(layout.root).as_posix(): f.group for f in layout.files}
    # Each file ingested once: the commits of all runs together record eight files.
    recorded = [int(s.metadata.get("files", 0)) for s in branch_commits(store)]
    assert sum(recorded) == len(layout.files), recorded
    for item in arriving:
        assert_matches_source(store, item)


def test_validate_explains_each_schedule_and_refuses_a_bad_cron(
    tmp_path: Path, shared_archive: ArchiveLayout
) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    paused = {
        "kind": "IngestSchedule",
        "metadata": {"name": "paused"},
        "spec": {"schedule": "@hourly", "suspend": True, "batch": batch.to_api()["spec"]},
    }
    spec = write_schedule(tmp_path / "s.yaml", store, batch, paused)
    before = datetime.now(UTC)
    result = cli("validate", "-f", str(spec))
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    assert "1 stores, 0 batches, 0 reconciliations, 2 schedules: valid" in result.stdout

    def expected(now: datetime) -> str:
        times = CronSim("0 3 * * *", now)  # independently of the product's own cron helpers
        shown = ", ".join(f"{next(times):%Y-%m-%dT%H:%M}Z" for _ in range(3))
        return f"daily (store ismip6): '0 3 * * *' UTC (At 03:00 every day), next runs {shown}"

    assert expected(before) in result.stdout or expected(after) in result.stdout, result.stdout
    assert "paused (store ismip6): '@hourly' UTC (At the start of every hour), suspended" in result.stdout

    misnamed = cli("run", "-f", str(spec), "--schedule", "nightly")  # refused, not silently skipped
    assert misnamed.returncode == 2
    assert (
        "--schedule nightly: no IngestSchedule of that name (the file has: daily, paused)" in misnamed.stderr
    )
    assert not (tmp_path / "store").exists()

    bad = write_schedule(tmp_path / "bad.yaml", store, batch, schedule="0 25 * * *")
    refused = cli("validate", "-f", str(bad))
    assert refused.returncode == 2
    assert "(IngestSchedule daily): spec.schedule: '0 25 * * *' is not a cron expression" in refused.stderr
    # Six fields would be read with seconds first (every hour at minute 3, not daily at 03:00):
    # a CronJob refuses them, and so does the schedule.
    seconds = write_schedule(tmp_path / "seconds.yaml", store, batch, schedule="0 3 * * * *")
    refused = cli("validate", "-f", str(seconds))
    assert refused.returncode == 2, refused.stdout
    assert "spec.schedule: '0 3 * * * *' is not a cron expression: 6 fields" in refused.stderr
