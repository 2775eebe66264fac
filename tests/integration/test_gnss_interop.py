"""canVODpy's own store reader (canvod-store) opens a materialized GNSS store as it opens its own.

GNSS researchers read their stores with canvod-store, so a store the operator materialized must
be readable by it with no conversion: the same values, epochs and signals as xarray reads, and
its date selection working. What it cannot see (our file registry) is pinned here too, so a
change on either side shows up; docs/gnss-interop.md describes the differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from icechunk_operator.engine.materialize.registry import load_registry
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from tests.gnss import (
    EPOCHS_PER_FILE,
    REFERENCE,
    copy_files,
    gnss_batch,
    gnss_store,
)
from tests.integration.readback import open_group

pytestmark = [pytest.mark.slow]

GROUP = "ROSR/observations"


def test_canvod_store_reads_a_materialized_store_as_xarray_does(
    tmp_path: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quarter hours 0, 1 and 3 of 2025-001: quarter 2 is a gap on the grid (times, no values).
    archive = tmp_path / "archive"
    copies = copy_files([REFERENCE[0], REFERENCE[1], REFERENCE[3]], archive / "rosalia")
    store = gnss_store(tmp_path / "store", archive)
    report = run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)
    assert (report.done, report.failed) == (3, 0)
    ours = open_group(store, GROUP).compute()
    assert ours.sizes["epoch"] == 4 * EPOCHS_PER_FILE
    tip = open_repository(store.spec, create=False).lookup_branch("main")

    # No settings file: canvod-store opens read-only and never looks in ~/.config.
    config = tmp_path / "canvod-config"
    config.mkdir()
    monkeypatch.setenv("CANVOD_CONFIG_DIR", str(config))
    from canvod.store import open_gnss_store  # heavy (scipy, matplotlib): only when this test runs

    canvod = open_gnss_store(tmp_path / "store")

    assert canvod.list_data_groups() == [GROUP]
    # Its top-level listing (in the store's order) hides only its own "canvod" group, so it shows ours.
    assert sorted(canvod.list_groups()) == ["ROSR", "_icechunk_operator"]
    whole = canvod.read_group(GROUP).compute()
    xr.testing.assert_identical(whole, ours)  # values, dtypes, epochs, sid and coordinates, attributes
    assert whole.epoch.attrs["time_system"] == "GPS"
    assert whole["LLI"].dtype == np.int8  # integers keep -1 where nothing was seen, not NaN

    day = canvod.read_group(GROUP, date="2025001").compute()
    xr.testing.assert_identical(day, ours)
    assert canvod.read_group(GROUP, date="2025002").sizes["epoch"] == 0
    assert canvod.read_group(GROUP, date="2024366").sizes["epoch"] == 0
    quarter = slice(np.datetime64("2025-01-01T00:15"), np.datetime64("2025-01-01T00:29:55"))
    second = canvod.read_group(GROUP, time_slice=quarter).compute()
    assert second.sizes["epoch"] == EPOCHS_PER_FILE
    xr.testing.assert_identical(second, ours.sel(epoch=quarter))

    # The gap reads as grid times with missing values. drop_empty only acts on canvod's own
    # day-block groups, so on ours it keeps them: filter on SNR instead (docs/gnss-interop.md).
    kept = canvod.read_group(GROUP, drop_empty=True)
    assert kept.sizes["epoch"] == 4 * EPOCHS_PER_FILE
    gap = kept.isel(epoch=slice(2 * EPOCHS_PER_FILE, 3 * EPOCHS_PER_FILE)).compute()
    assert np.isnan(gap["SNR"].values).all() and (gap["LLI"].values == -1).all()
    filled = kept.isel(epoch=kept.SNR.notnull().any("sid").values)  # the filter the docs give
    assert filled.sizes["epoch"] == 3 * EPOCHS_PER_FILE and filled["LLI"].dtype == np.int8

    # canvod's ledger is {group}/metadata/table, which we do not write: it knows no file of ours.
    # Our registry knows them by SHA-256, whose first 16 hex digits are canvod's file hash.
    from canvod.utils.tools.hashing import bytes_hash

    hashes = {bytes_hash(path.read_bytes()) for path in copies}
    registry = load_registry(open_repository(store.spec, create=False).readonly_session(branch="main"))
    assert {entry.digest[:16] for entry in registry.values() if entry.group == GROUP} == hashes
    start, end = np.datetime64("2025-01-01T00:00"), np.datetime64("2025-01-01T01:00")
    assert canvod.source_file_hashes(GROUP, start, end) == []
    assert canvod.should_skip_file(GROUP, min(hashes), start, end) == (False, "")

    [last] = canvod.get_history(limit=1)
    assert last["snapshot_id"] == report.commits[-1] and last["commit_msg"].startswith("Added 2025-001 00:00")
    assert open_repository(store.spec, create=False).lookup_branch("main") == tip  # reading wrote nothing
