"""A group the store refuses at write time, against a real Icechunk repository: its files become
failure records with the store's own message, the group stays out of the commit (a replaced
group keeps what it held), and every other group of the checkpoint, flushed before or after it,
is committed.

The refused documents are made here, after the workers' strict-JSON check, because that check
keeps every such document of a real file from reaching the writer; the refusal itself is
Icechunk's.
"""

from __future__ import annotations

from pathlib import Path

import icechunk
import numpy as np
import xarray as xr
import zarr

from icechunk_operator.engine.commits import (
    CheckpointedWriter,
    CheckpointPolicy,
    initialize_repository,
    load_ledger,
)
from icechunk_operator.engine.documents import GroupPayload, build_payload
from icechunk_operator.engine.planning import WriteMode
from icechunk_operator.engine.records import SourceFile


def payload(group: str, values: list[float], mode: WriteMode = WriteMode.CREATE) -> GroupPayload:
    ds = xr.Dataset({"v": ("x", np.array(values, dtype="f8"))})
    source = SourceFile(f"file:///archive/{group.replace('/', '-')}-{values[0]}.nc", 100, etag="e")
    return build_payload(group, ds, (source,), mode)


def refused_by_the_store(item: GroupPayload) -> GroupPayload:
    """The payload with a bare NaN in its array document: JSON that Icechunk refuses."""
    document = item.documents["v/zarr.json"].replace(b'"attributes": {}', b'"attributes": {"bad": NaN}')
    assert document != item.documents["v/zarr.json"]
    item.documents["v/zarr.json"] = document
    return item


def writer(repo: icechunk.Repository) -> CheckpointedWriter:
    return CheckpointedWriter(
        repo, "main", batch="b", spec_hash="h", policy=CheckpointPolicy(), ledger=load_ledger(repo, "main")
    )


def test_a_refused_group_is_left_out_and_the_rest_is_committed(tmp_path: Path) -> None:
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "store")))
    initialize_repository(repo, "main")
    first = writer(repo)
    first.add(payload("keep/replaced", [1.0, 2.0]))
    first.checkpoint()
    first.close()

    second = writer(repo)
    second.add(payload("new/before", [3.0]))
    second.flush()  # in the session before the refusal: must survive the rebuilt session
    second.add(refused_by_the_store(payload("new/refused", [4.0])))
    second.add(refused_by_the_store(payload("keep/replaced", [9.0, 9.0], WriteMode.REPLACE)))
    second.add(payload("new/after", [5.0]))
    snapshot = second.checkpoint()
    refusals = second.take_refusals()
    second.close()

    assert snapshot is not None
    assert {(r.group, r.error_class) for r in refusals} == {
        ("new/refused", "RefusedByStoreError"),
        ("keep/replaced", "RefusedByStoreError"),
    }
    assert all("bad metadata" in r.message and "InvalidInputError" in r.message for r in refusals)
    assert second.stats.groups_written == 2 and second.stats.files_written == 2

    root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r", zarr_format=3)
    assert root["new/before/v"][:].tolist() == [3.0]
    assert root["new/after/v"][:].tolist() == [5.0]
    assert "refused" not in root["new"]
    assert root["keep/replaced/v"][:].tolist() == [1.0, 2.0]  # the replacement was refused
    ledger = load_ledger(repo, "main")
    assert sorted(e.group for e in ledger.values()) == ["keep/replaced", "new/after", "new/before"]
    assert ledger["file:///archive/keep-replaced-1.0.nc"].group == "keep/replaced"
