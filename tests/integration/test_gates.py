"""Validation gates on real repositories: a failing gate leaves main where it was, and delivering
what was missing lets the next run through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.staging import staging_branch
from icechunk_operator.engine.storage import open_repository
from tests.gnss import EPOCHS_PER_FILE, REFERENCE, copy_files, gnss_batch, gnss_store
from tests.integration.readback import open_group
from tests.integration.test_append import EPOCHS_PER_DAY, gnss_resources, write_day


def gated(batch: IngestBatch, validation: dict[str, object]) -> IngestBatch:
    spec = batch.spec.model_dump(mode="json", by_alias=True) | {"staging": True, "validation": validation}
    return IngestBatch.model_validate(
        {"kind": "IngestBatch", "metadata": {"name": batch.metadata.name}, "spec": spec}
    )


def tip(store: IcechunkStore) -> str:
    return str(open_repository(store.spec, create=False).lookup_branch("main"))


def ledger_on_main(store: IcechunkStore) -> set[str]:
    repo = open_repository(store.spec, create=False)
    return {url for url, entry in load_ledger(repo, "main").items() if not entry.removed}


def on_main(store: IcechunkStore, group: str, branch: str = "main") -> bool:
    repo = open_repository(store.spec, create=False)
    return group in zarr.open_group(repo.readonly_session(branch=branch).store, mode="r")


def test_a_missing_day_holds_main_back_until_it_arrives(tmp_path: Path, dask_scheduler: str) -> None:
    root = tmp_path / "archive"
    store, plain = gnss_resources(root, tmp_path / "store")
    batch = gated(plain, {"timeContinuity": {"dimension": "epoch", "maxGap": "1d"}})
    for day in (1, 2):
        write_day(root, "rosalia", day)

    first = run_batch(store, batch, scheduler=dask_scheduler)
    assert first.succeeded and first.promoted == tip(store)
    before, ledger_before = tip(store), ledger_on_main(store)

    write_day(root, "rosalia", 4)  # day 3 is late
    refused = run_batch(store, batch, scheduler=dask_scheduler)
    assert refused.refused and not refused.succeeded and refused.error is not None
    assert (
        "timeContinuity: sites/rosalia: time steps from 2024-01-02T21:00 to 2024-01-04T00:00 (27h) wider "
        "than maxGap 1d"
    ) in refused.error
    assert "'main' was not moved" in refused.error and staging_branch("daily") in refused.error
    assert tip(store) == before and ledger_on_main(store) == ledger_before
    assert open_group(store, "sites/rosalia").sizes["epoch"] == 2 * EPOCHS_PER_DAY

    write_day(root, "rosalia", 3)
    passed = run_batch(store, batch, scheduler=dask_scheduler)
    assert passed.succeeded and passed.promoted == tip(store) != before
    epochs = open_group(store, "sites/rosalia")["epoch"].values
    assert epochs.size == 4 * EPOCHS_PER_DAY  # every day once, in order
    assert np.all(np.diff(epochs) == np.timedelta64(3, "h"))
    assert len(ledger_on_main(store)) == 4


def test_a_repeated_file_is_not_rising(tmp_path: Path, dask_scheduler: str) -> None:
    """The same day delivered twice under two names: concatenated, its times step back."""
    root = tmp_path / "archive"
    store, plain = gnss_resources(root, tmp_path / "store")
    batch = gated(plain, {"timeContinuity": {"dimension": "epoch", "maxGap": "1d"}})
    write_day(root, "rosalia", 1)
    (root / "gnss" / "rosalia" / "rosalia_2024001.nc").rename(root / "gnss" / "rosalia" / "a_copy.nc")
    write_day(root, "rosalia", 1)

    report = run_batch(store, batch, scheduler=dask_scheduler)
    assert report.refused and report.error is not None
    assert (
        "timeContinuity: sites/rosalia: 'epoch' not rising: steps back from 2024-01-01T21:00 to 2024-01-01T00:00"
        in (report.error)
    )
    assert not on_main(store, "sites/rosalia")
    assert on_main(store, "sites/rosalia", staging_branch("daily"))  # kept for inspection only


HOUR = 4  # 15-minute files


@pytest.mark.slow
def test_files_per_hour_hold_main_back_until_the_hour_is_whole(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    store = gnss_store(tmp_path / "store", archive)
    batch = gated(
        gnss_batch(archive), {"filesPerPeriod": {"period": "1h", "expected": HOUR, "minFraction": 1.0}}
    )
    missing = REFERENCE[3]  # 00:45
    copy_files(
        [*REFERENCE[0:3], *REFERENCE[HOUR : 2 * HOUR]], archive / "rosalia"
    )  # hour 00 less one, hour 01

    refused = run_batch(store, batch, scheduler=dask_scheduler)
    assert refused.refused and refused.error is not None and refused.done == 7
    assert refused.error.startswith("validation gates found 1 problem (filesPerPeriod: ROSR/observations ")
    assert "2025-01-01T00:00Z..01:00Z holds 3 of 4 files (75% < 100%)" in refused.error
    assert not on_main(store, "ROSR/observations")

    # The missing file, and half of hour 02: the newest hour is still being delivered, not judged.
    copy_files([missing, *REFERENCE[2 * HOUR : 2 * HOUR + 2]], archive / "rosalia")
    passed = run_batch(store, batch, scheduler=dask_scheduler)
    assert passed.succeeded and passed.done == 3 and passed.promoted == tip(store)
    assert open_group(store, "ROSR/observations").sizes["epoch"] == 10 * EPOCHS_PER_FILE
