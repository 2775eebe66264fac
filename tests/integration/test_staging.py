"""Staging on a real repository: promoted after validation, refused when main moved or a read fails."""

from __future__ import annotations

import os
from pathlib import Path

import icechunk
import pytest
import zarr

from icechunk_operator.engine.runner import Progress, run_batch
from icechunk_operator.engine.staging import TargetMovedError, staging_branch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources


def staged_resources(archive: ArchiveLayout, tmp_path: Path) -> tuple[object, object]:
    return ismip6_resources(archive.root, (tmp_path / "store").as_uri(), batch_extra={"staging": True})


def another_writer_commits(repo: icechunk.Repository) -> str:
    """A real second writer: one attribute on the root group of main, committed."""
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["note"] = "written while the batch was staging"
    return str(session.commit("another writer"))


def test_a_staged_batch_moves_main_only_after_validation(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = staged_resources(archive, tmp_path)
    stages: list[tuple[str, str]] = []
    repo = open_repository(store.spec)

    def watch(progress: Progress) -> None:
        if progress.stage in ("committing", "validating") and (not stages or stages[-1][0] != progress.stage):
            stages.append((progress.stage, str(repo.lookup_branch("main"))))

    report = run_batch(store, batch, on_progress=watch)
    assert report.succeeded and report.promoted is not None
    (_, main_while_committing), (_, main_while_validating) = stages
    assert main_while_committing == main_while_validating  # readers saw nothing until validated
    assert report.promoted != main_while_validating
    assert str(repo.lookup_branch("main")) == report.promoted
    assert staging_branch("ismip6") not in repo.list_branches()
    good = [f for f in archive.files if f.defect == "none"]
    root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    assert all(f.group in root for f in good)


def test_staging_refuses_when_main_moved_and_a_rerun_restages(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = staged_resources(archive, tmp_path)
    repo = open_repository(store.spec)
    moved: list[str] = []

    def interfere(progress: Progress) -> None:
        if progress.stage == "validating" and not moved:
            moved.append(another_writer_commits(repo))

    # Not a refusal but a crash (exit 3): the Job's retry, or running the CLI again, restages.
    with pytest.raises(TargetMovedError, match="moved .* Run the batch again"):
        run_batch(store, batch, on_progress=interfere)
    assert str(repo.lookup_branch("main")) == moved[0]  # the other writer's commit stands
    staged = str(repo.lookup_branch(staging_branch("ismip6")))  # kept for inspection
    assert staged != moved[0] and staged in [
        info.id for info in repo.ancestry(branch=staging_branch("ismip6"))
    ]

    again = run_batch(store, batch)  # stages afresh on the new tip, then promotes
    assert again.succeeded and again.promoted is not None
    history = [info.id for info in repo.ancestry(branch="main")]
    assert history[0] == again.promoted and moved[0] in history
    assert zarr.open_group(repo.readonly_session(branch="main").store, mode="r").attrs["note"]


def test_staging_refuses_when_a_sample_read_fails(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = staged_resources(archive, tmp_path)
    repo = open_repository(store.spec)
    initial = []
    victim = next(f for f in archive.files if f.defect == "none")

    def damage(progress: Progress) -> None:
        if progress.stage == "validating" and not initial:
            initial.append(str(repo.lookup_branch("main")))
            before = victim.path.stat()
            victim.path.write_bytes(b"")  # truncated after ingest, mtime kept: only a read tells
            os.utime(victim.path, ns=(before.st_atime_ns, before.st_mtime_ns))

    report = run_batch(store, batch, on_progress=damage)
    assert not report.succeeded and report.error is not None
    assert report.error.startswith("validation failed for 1 groups") and victim.group in report.error
    assert str(repo.lookup_branch("main")) == initial[0]  # main did not move


def test_a_schedule_run_drops_only_the_staging_branches_of_its_own_earlier_runs(tmp_path: Path) -> None:
    from icechunk_operator.engine.staging import drop_superseded

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    tip = repo.lookup_branch("main")
    left = ["staging-daily-s202611300015", "staging-daily-r0123456789", "staging-daily-l202611300020"]
    others = ["staging-daily-x-s202611300015", "staging-daily", "staging-nightly-s202611300015"]
    for branch in [*left, *others, "staging-daily-s202611300100"]:
        repo.create_branch(branch, tip)
    assert drop_superseded(repo, "daily", keep="staging-daily-s202611300100") == sorted(left)
    assert set(repo.list_branches()) == {"main", *others, "staging-daily-s202611300100"}
