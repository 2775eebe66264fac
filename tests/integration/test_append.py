"""Concatenated groups (GNSS-style daily files per site) and appends of new days."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.runner import run_batch
from tests.integration.readback import ledger_urls, open_group

EPOCHS_PER_DAY = 8
SIGNALS = 3


def write_day(root: Path, site: str, day: int, file_format: str = "NETCDF4") -> Path:
    path = root / "gnss" / site / f"{site}_2024{day:03d}.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w", format=file_format) as ds:
        ds.createDimension("epoch", EPOCHS_PER_DAY)
        ds.createDimension("sid", SIGNALS)
        epoch = ds.createVariable("epoch", "f8", ("epoch",))
        epoch.units = "seconds since 2024-01-01 00:00:00"
        epoch.calendar = "standard"
        epoch[:] = (day - 1) * 86400 + np.arange(EPOCHS_PER_DAY) * 10800.0
        vod = ds.createVariable("vod", "f4", ("epoch", "sid"))
        vod[:] = day * 100 + np.arange(EPOCHS_PER_DAY * SIGNALS, dtype="f4").reshape(-1, SIGNALS)
    return path


def gnss_resources(root: Path, store_path: Path) -> tuple[IcechunkStore, IngestBatch]:
    url = root.resolve().as_uri() + "/"
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "gnss"},
            "spec": {"storage": {"url": store_path.as_uri()}, "virtualChunkContainers": [{"urlPrefix": url}]},
        }
    )
    batch = IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": "daily"},
            "spec": {
                "store": "gnss",
                "source": {"prefix": url + "gnss/", "glob": "**/*.nc"},
                "grouping": {
                    "pattern": r"gnss/(?P<site>[^/]+)/",
                    "template": "sites/{site}",
                    "rules": [{"match": "sites/*", "combine": "concat", "dimension": "epoch"}],
                },
            },
        }
    )
    return store, batch


def expected(paths: list[Path]) -> xr.Dataset:
    return xr.concat([xr.open_dataset(p) for p in sorted(paths)], dim="epoch")


def test_files_of_a_group_concatenate_and_new_days_append(tmp_path: Path, dask_scheduler: str) -> None:
    root = tmp_path / "archive"
    days = {site: [write_day(root, site, d) for d in (1, 2, 3)] for site in ("rosalia", "oslo")}
    store, batch = gnss_resources(root, tmp_path / "store")

    first = run_batch(store, batch, scheduler=dask_scheduler)
    assert (first.done, first.groups_written, first.failed) == (6, 2, 0)
    for site, paths in days.items():
        got = open_group(store, f"sites/{site}")
        want = expected(paths)
        np.testing.assert_array_equal(got["vod"].values, want["vod"].values)
        np.testing.assert_array_equal(got["epoch"].values, want["epoch"].values)

    days["rosalia"] += [write_day(root, "rosalia", d) for d in (4, 5)]
    second = run_batch(store, batch, scheduler=dask_scheduler)
    assert (second.done, second.skipped, second.groups_written) == (2, 6, 1)

    got = open_group(store, "sites/rosalia")
    want = expected(days["rosalia"])
    assert got.sizes["epoch"] == 5 * EPOCHS_PER_DAY
    np.testing.assert_array_equal(got["vod"].values, want["vod"].values)
    np.testing.assert_array_equal(got["epoch"].values, want["epoch"].values)
    assert open_group(store, "sites/oslo").sizes["epoch"] == 3 * EPOCHS_PER_DAY
    assert len(ledger_urls(store)) == 8

    third = run_batch(store, batch, scheduler=dask_scheduler)
    assert (third.done, third.skipped, third.commits) == (0, 8, [])
