"""Read a store back through xarray and compare with the source files."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.runner import RunReport
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout, SyntheticFile


def open_group(store: IcechunkStore, group: str, snapshot: str | None = None, **options: Any) -> xr.Dataset:
    repo = open_repository(store.spec, create=False)
    session = (
        repo.readonly_session(snapshot_id=snapshot)
        if snapshot
        else repo.readonly_session(branch=store.spec.branch)
    )
    return xr.open_zarr(session.store, group=group, consolidated=False, zarr_format=3, **options)


def assert_matches_source(store: IcechunkStore, item: SyntheticFile, source_path: Any = None) -> None:
    """Every data variable equals the source file's values, and time decodes to dates."""
    ds = open_group(store, item.group)
    with xr.open_dataset(source_path or item.path, decode_times=False) as src:
        for name in src.data_vars:
            np.testing.assert_array_equal(ds[name].values, src[name].values, err_msg=item.group)
        assert ds[item.variable].dims == src[item.variable].dims
    assert np.issubdtype(ds["time"].dtype, np.datetime64) or ds["time"].dtype == object
    assert int(ds["time"].dt.year.values[0]) == 2015


def ledger_urls(store: IcechunkStore) -> dict[str, str]:
    repo = open_repository(store.spec, create=False)
    return {e.url: e.group for e in load_ledger(repo, store.spec.branch).values() if not e.removed}


def branch_commits(store: IcechunkStore) -> list[Any]:
    repo = open_repository(store.spec, create=False)
    return list(repo.ancestry(branch=store.spec.branch))


def assert_bucket_ingest(
    report: RunReport, store: IcechunkStore, layout: ArchiveLayout, root: str
) -> list[tuple[SyntheticFile, xr.Dataset]]:
    """An archive uploaded under ``root`` (a bucket or container URL) was ingested whole: the
    defective files failed into a log beside the store, the ledger names every good file's
    group, and each group's values equal the source. Returns the opened groups for more checks."""
    good = [f for f in layout.files if f.defect == "none"]
    assert report.succeeded and report.done == len(good) and report.failed == 4
    beside_store = store.spec.storage.url.rpartition("/")[0] + "/failures/"
    assert report.failure_log and report.failure_log.startswith(beside_store)
    ledger = ledger_urls(store)
    assert len(ledger) == len(good)
    opened = []
    for item in good:
        assert ledger[root + item.path.relative_to(layout.root).as_posix()] == item.group
        ds = open_group(store, item.group)  # virtual chunks read from the bucket by Icechunk
        with xr.open_dataset(item.path, decode_times=False) as src:
            np.testing.assert_array_equal(ds[item.variable].values, src[item.variable].values)
        opened.append((item, ds))
    return opened
