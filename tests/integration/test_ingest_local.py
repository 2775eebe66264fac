"""The engine end to end on local disk: real NetCDF files, a real Icechunk repository, Dask."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.urls import SourceOutsideContainersError
from icechunk_operator.synthetic import GRID_VARIABLES, ArchiveLayout, _write_file, grid_axis
from tests.conftest import ismip6_resources
from tests.integration.readback import (
    assert_matches_source,
    branch_commits,
    ledger_urls,
    open_group,
)

DEFECT_CLASSES = {
    "zero_byte": "EmptyFileError",
    "truncated": "TruncatedFileError",
    "no_data": "NoDataVariablesError",
    "broken_time": "TimeDecodingError",
}


def test_every_variable_reads_back_equal_with_decoded_time(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(
        shared_archive.root, (tmp_path / "store").as_uri(), batch_extra={"commit": {"everyGroups": 7}}
    )
    report = run_batch(store, batch, scheduler=dask_scheduler)

    good = [f for f in shared_archive.files if f.defect == "none"]
    assert report.succeeded
    assert (report.total, report.done, report.failed) == (len(shared_archive.files), len(good), 4)
    assert len(report.commits) == -(-len(good) // 7)  # every 7 groups, and the rest at the end
    formats = {f.profile.file_format for f in good}
    assert formats == {"NETCDF4", "NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"}
    quirks = {f.profile.time_quirk for f in good}
    assert quirks >= {"unit_typo", "dd_mm_yyyy", "day_zero", "no_calendar"}
    assert any(not f.profile.has_xy for f in good)
    for item in good:
        assert_matches_source(store, item)
    assert set(ledger_urls(store)) == {f.path.resolve().as_uri() for f in good}


def test_missing_grid_is_rebuilt_and_flux_is_stamped_july(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    run_batch(store, batch, scheduler=dask_scheduler)
    no_xy = next(
        f
        for f in shared_archive.files
        if not f.profile.has_xy and f.defect == "none" and f.variable in dict(GRID_VARIABLES)
    )
    ds = open_group(store, no_xy.group)
    np.testing.assert_array_equal(ds["x"].values, grid_axis(32))
    flux = next(f for f in shared_archive.files if f.variable == "acabf" and f.defect == "none")
    assert int(open_group(store, flux.group)["time"].dt.month.values[0]) == 7


def test_defective_files_become_failure_records_and_the_rest_succeeds(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "repo" / "store").as_uri())
    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert report.failure_log is not None
    assert report.failure_log.startswith((tmp_path / "repo" / "failures").as_uri())
    log = json.loads(Path(report.failure_log.removeprefix("file://")).read_text())
    by_url = {record["url"]: record for record in log["failures"]}
    for defect, error_class in DEFECT_CLASSES.items():
        (item,) = shared_archive.by_defect(defect)
        record = by_url[item.path.resolve().as_uri()]
        assert record["error_class"] == error_class
        assert record["group"] == item.group
        assert record["message"] and record["time"] and record["attempts"] == 1
    assert log["summary"] == {cls: 1 for cls in DEFECT_CLASSES.values()}
    assert log["totals"]["done"] == report.done


def test_failures_beyond_tolerance_fail_the_batch(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(
        shared_archive.root, (tmp_path / "store").as_uri(), batch_extra={"failures": {"maxFailedFiles": 3}}
    )
    report = run_batch(store, batch, scheduler=dask_scheduler)
    assert report.failed == 4 and not report.succeeded
    assert report.done > 0  # the good files are still committed


def test_rerun_commits_nothing_and_skips_every_file(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(
        shared_archive.root,
        (tmp_path / "store").as_uri(),
        batch_extra={"source": {"skip": ["*/INST00/MODEL03/*"]}},
    )
    first = run_batch(store, batch, scheduler=dask_scheduler)
    commits_before = branch_commits(store)

    store, batch = ismip6_resources(
        shared_archive.root,
        (tmp_path / "store").as_uri(),
        batch_extra={"failures": {"maxFailedFiles": 10}, "source": {"skip": ["*/INST00/MODEL03/*"]}},
    )
    second = run_batch(store, batch, scheduler=dask_scheduler)

    assert first.done > 0
    assert second.commits == [] and second.done == 0
    assert branch_commits(store) == commits_before
    # Defective files are tried again (they are not in the ledger); all others are skipped.
    assert second.skipped == first.skipped + first.done
    assert second.failed == first.failed


def test_replaced_file_is_reingested_and_nothing_else(
    archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    first = run_batch(store, batch, scheduler=dask_scheduler)
    target = next(f for f in archive.files if f.defect == "none" and f.profile.file_format == "NETCDF4")
    before = open_group(store, target.group)[target.variable].values.copy()

    _write_file(target, grid_axis(32), "state", times=3, seed=57)  # new values, same shape
    later = target.path.stat().st_mtime + 5
    os.utime(target.path, (later, later))
    second = run_batch(store, batch, scheduler=dask_scheduler)

    assert second.done == 1 and second.groups_written == 1
    assert second.skipped == first.done - 1
    after = open_group(store, target.group)[target.variable].values
    assert not np.array_equal(before, after, equal_nan=True)
    assert_matches_source(store, target)


def test_source_outside_containers_is_refused_before_any_work(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store, batch = ismip6_resources(
        shared_archive.root, (tmp_path / "store").as_uri(), container_prefix=elsewhere.as_uri() + "/"
    )
    with pytest.raises(SourceOutsideContainersError, match=r"spec\.source\.prefix"):
        run_batch(store, batch)
    assert not (tmp_path / "store").exists()


def test_dot_segments_cannot_climb_out_of_a_container(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    root = shared_archive.root.resolve().as_uri() + "/"
    store, batch = ismip6_resources(
        shared_archive.root,
        (tmp_path / "store").as_uri(),
        container_prefix=root + "Projection-AIS/",
        batch_extra={"source": {"prefix": root + "Projection-AIS/../"}},
    )
    with pytest.raises(SourceOutsideContainersError, match=r"spec\.source\.prefix"):
        run_batch(store, batch)
    assert not (tmp_path / "store").exists()
