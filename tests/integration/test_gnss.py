"""GNSS observation stores: real RINEX files materialized, on local disk, with the real reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from icechunk_operator.engine.materialize.grid import SPAN_DASH
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from tests.faults.hostile import workers
from tests.gnss import (
    EPOCHS_PER_FILE,
    INVALID,
    REFERENCE,
    assert_same_values,
    copy_files,
    gnss_batch,
    gnss_store,
    reader_dataset,
)
from tests.integration.readback import open_group

GROUP = "ROSR/observations"


def messages(store) -> list[str]:  # type: ignore[no-untyped-def]
    repo = open_repository(store.spec, create=False)
    return [snapshot.message for snapshot in repo.ancestry(branch="main")]


def test_every_file_reads_back_as_the_reader_gives_it(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copies = copy_files(REFERENCE, archive / "rosalia")
    store = gnss_store(tmp_path / "store", archive)

    report = run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)

    assert (report.done, report.failed, report.skipped, len(report.commits)) == (24, 0, 0, 1)
    assert messages(store)[0] == f"Added 2025-001 00:00{SPAN_DASH}06:00, 24 files"
    stored = open_group(store, GROUP)
    assert stored.sizes == {"epoch": 24 * EPOCHS_PER_FILE, "sid": 4429}
    for path in copies:
        want = reader_dataset(path)
        assert_same_values(stored.sel(epoch=want.epoch.values).compute(), want, path.name)
    for name in ("sv", "system", "band", "code", "freq_center"):
        np.testing.assert_array_equal(stored[name].values, want[name].values)
    assert stored.epoch.attrs["time_system"] == "GPS"

    again = run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)
    assert (again.done, again.skipped, again.commits) == (0, 24, [])


def test_late_and_redelivered_files_give_the_same_store(tmp_path: Path, dask_scheduler: str) -> None:
    files = REFERENCE[:8]
    in_order = tmp_path / "in-order"
    copy_files(files, in_order)
    one = gnss_store(tmp_path / "one", in_order)
    run_batch(one, gnss_batch(in_order), scheduler=dask_scheduler)

    late = tmp_path / "late"
    two = gnss_store(tmp_path / "two", late)
    deliveries = [files[4:8], files[0:2], files[2:4]]
    for number, delivery in enumerate(deliveries):
        copy_files(delivery, late)
        report = run_batch(two, gnss_batch(late, f"delivery-{number}"), scheduler=dask_scheduler)
        assert (report.done, report.failed) == (len(delivery), 0)
    # The same content again under another name: recorded, nothing written.
    copy_files([files[5]], late, ["ROSR01TUW_R_20250019999_15M_05S_AA.rnx"])
    redelivered = run_batch(two, gnss_batch(late, "redelivered"), scheduler=dask_scheduler)
    assert (redelivered.done, redelivered.skipped) == (0, 9)
    assert messages(two)[0] == "Recorded 1 files whose epochs were already in the store"

    xr.testing.assert_identical(open_group(one, GROUP).compute(), open_group(two, GROUP).compute())
    assert run_batch(two, gnss_batch(late, "again"), scheduler=dask_scheduler).commits == []


def truncated_copy(path: Path, target: Path, epochs: int) -> None:
    """The file's header and first ``epochs`` epochs: a corrected, shorter delivery."""
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("> ")]
    target.write_text("".join(lines[: starts[epochs]]))


def test_a_corrected_file_replaces_its_epochs(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copies = copy_files(REFERENCE[:3], archive)
    store = gnss_store(tmp_path / "store", archive)
    run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)

    truncated_copy(REFERENCE[1], copies[1], 100)  # corrected upstream: 100 epochs now
    report = run_batch(store, gnss_batch(archive, "corrected"), scheduler=dask_scheduler)

    assert (report.done, report.skipped) == (1, 2)
    stored = open_group(store, GROUP).compute()
    corrected = reader_dataset(copies[1])
    assert_same_values(stored.sel(epoch=corrected.epoch.values), corrected, "corrected file")
    gone = stored.isel(epoch=slice(EPOCHS_PER_FILE + 100, 2 * EPOCHS_PER_FILE))
    assert np.isnan(gone["SNR"].values).all() and (gone["LLI"].values == -1).all()
    assert_same_values(stored.isel(epoch=slice(0, EPOCHS_PER_FILE)), reader_dataset(copies[0]), "first file")


def test_overlapping_files_are_skipped_or_refused_as_the_batch_says(
    tmp_path: Path, dask_scheduler: str
) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:2], archive)
    store = gnss_store(tmp_path / "store", archive)
    run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)
    before = open_group(store, GROUP).compute()
    # Another receiver export of the same quarter hour: different bytes, same epochs.
    truncated_copy(REFERENCE[0], archive / "ROSR01TUW_R_20250010001_15M_05S_AA.rnx", 120)

    refused = run_batch(store, gnss_batch(archive, "strict", onOverlap="fail"), scheduler=dask_scheduler)
    assert [(f.error_class, f.message.split(" are ")[0]) for f in refused.failures] == [
        ("OverlapError", f"epochs 2025-001 00:00{SPAN_DASH}00:10")
    ]
    skipped = run_batch(store, gnss_batch(archive, "lenient", onOverlap="skip"), scheduler=dask_scheduler)
    assert (skipped.done, skipped.failed) == (1, 0)
    xr.testing.assert_identical(open_group(store, GROUP).compute(), before)


#: What each malformed file becomes: the class of its failure record, or "repaired" where the
#: reader reads it correctly anyway (then its values equal the valid file's, checked below).
MALFORMED = {
    "binary_garbage": "UnreadableFileError",
    "bitflip_numeric": "RejectedEpochsError",
    "blank_lines_in_data": "repaired",
    "blank_observations": "ValidationError",
    "crlf_line_endings": "repaired",
    "duplicate_epochs": "ValidationError",
    "duplicate_obs_types": "ValidationError",
    "empty": "UnreadableFileError",
    "event_epoch": "ValidationError",
    "extra_long_sat_line": "RejectedEpochsError",
    "header_only": "ValidationError",
    "huge_satellite_count": "ValidationError",
    "invalid_epoch_flag": "UnreadableFileError",
    "invalid_month": "ValidationError",
    "invalid_satellite_id": "RejectedEpochsError",
    "leap_second": "ValidationError",
    "misaligned_observations": "RejectedEpochsError",
    "missing_end_of_header": "repaired",
    "missing_obs_types": "RejectedEpochsError",
    "mixed_valid_corrupt": "RejectedEpochsError",
    "multiple_end_of_header": "repaired",
    "negative_seconds": "ValidationError",
    "non_ascii_header": "repaired",
    "non_numeric_observations": "ValidationError",
    "null_bytes": "RejectedEpochsError",
    "obs_type_count_mismatch": "ValidationError",
    "reversed_epochs": "ValidationError",
    "satellite_count_mismatch": "RejectedEpochsError",
    "truncated_at_epoch_boundary": "ValidationError",
    "truncated_header": "ValidationError",
    "truncated_mid_epoch": "ValidationError",
    "truncated_sat_line": "RejectedEpochsError",
    "wrong_version_v2": "UnreadableFileError",
    "wrong_version_v4": "UnreadableFileError",
    "zero_position": "repaired",
    "zero_satellites": "RejectedEpochsError",
}


def test_each_malformed_file_becomes_one_failure_record_or_a_correct_repair(
    tmp_path: Path, dask_scheduler: str
) -> None:
    archive = tmp_path / "archive"
    copy_files(INVALID, archive)
    store = gnss_store(tmp_path / "store", archive)
    batch = gnss_batch(
        archive, pattern=r"(?P<name>[a-z0-9_]+)\.25o$", template="invalid/{name}", glob="*.25o"
    )

    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert sorted(MALFORMED) == [p.stem for p in INVALID]
    outcome = {Path(f.url).stem: f.error_class for f in report.failures}
    assert len(report.failures) == len(outcome)  # one record per file
    repaired = sorted(name for name, kind in MALFORMED.items() if kind == "repaired")
    assert outcome == {name: kind for name, kind in MALFORMED.items() if kind != "repaired"}
    assert all(f.message and "validation error for" not in f.message for f in report.failures)
    assert report.done == len(repaired)
    for name in repaired:
        stored = open_group(store, f"invalid/{name}").compute()
        fixed = cleaned(archive / f"{name}.25o", tmp_path / "cleaned" / f"{name}.rnx")
        assert_same_values(stored, reader_dataset(fixed), name)


def cleaned(path: Path, target: Path) -> Path:
    """The file corrected by hand: LF line ends, no blank lines, ASCII, one END OF HEADER where
    the header ends. The reader's own repair must give the same values."""
    text = path.read_bytes().decode("ascii", errors="replace").replace("\ufffd", "?").replace("\r\n", "\n")
    lines = [line for line in text.split("\n") if line.strip()]
    lines = [line for line in lines if "END OF HEADER" not in line]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("> "))
    lines.insert(first_epoch, " " * 60 + "END OF HEADER")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target


def test_accepted_repairs_are_written_and_listed(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copy_files([p for p in INVALID if p.stem == "mixed_valid_corrupt"], archive)
    store = gnss_store(tmp_path / "store", archive)
    batch = gnss_batch(
        archive,
        pattern=r"(?P<name>[a-z_]+)\.25o$",
        template="invalid/{name}",
        glob="*.25o",
        acceptRepairs=True,
    )

    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert (report.done, report.failed) == (1, 0)
    assert [r.error_class for r in report.repairs] == ["RejectedEpochs"]
    assert "dropped 1 malformed epochs" in report.repairs[0].message
    assert report.failure_log is not None
    shutil.rmtree(archive)


def test_a_reader_that_hangs_or_crashes_costs_only_its_file(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:3], archive)
    store = gnss_store(tmp_path / "store", archive)
    batch = gnss_batch(archive, reader="tests.gnss_readers:hostile")
    batch.spec.execution.file_timeout_seconds = 5
    batch.spec.failures.max_failed_files = 2
    before = workers(dask_scheduler)

    report = run_batch(store, batch, scheduler=dask_scheduler)

    outcome = {Path(f.url).name[19:23]: (f.error_class, f.message) for f in report.failures}
    assert report.done == 1 and set(outcome) == {"0015", "0030"}
    assert outcome["0015"][0] == "FileTimeoutError" and "fileTimeoutSeconds=5" in outcome["0015"][1]
    assert outcome["0030"][0] == "ParserCrashedError" and "SIGSEGV" in outcome["0030"][1]
    assert workers(dask_scheduler) == before  # no Dask worker died or was restarted


def test_a_grid_that_cannot_be_inferred_fails_the_files_until_the_interval_is_given(
    tmp_path: Path, dask_scheduler: str
) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:2], archive)
    store = gnss_store(tmp_path / "store", archive)
    reader = "tests.gnss_readers:first_epoch_only"  # a single epoch per file: no step to see

    refused = run_batch(store, gnss_batch(archive, reader=reader), scheduler=dask_scheduler)
    assert {(f.error_class, f.message) for f in refused.failures} == {
        ("GridError", "cannot infer the sampling interval (no file has two epochs); set materialize.interval")
    }
    assert refused.failed == 2
    given = run_batch(store, gnss_batch(archive, reader=reader, interval="5s"), scheduler=dask_scheduler)
    assert (given.done, given.failed) == (2, 0)
    assert open_group(store, GROUP).sizes["epoch"] == 181  # 00:00:00 and 00:15:00 on the 5 s grid
