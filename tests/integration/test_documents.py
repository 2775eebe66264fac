"""The direct document writer produces what VirtualiZarr's ``to_icechunk`` produces."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import icechunk
import numpy as np
import xarray as xr
from zarr.core.buffer import default_buffer_prototype

from icechunk_operator.api.store import VirtualChunkContainerSpec
from icechunk_operator.engine.documents import build_payload
from icechunk_operator.engine.objects import build_registry
from icechunk_operator.engine.planning import WriteMode
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions, virtualize_file
from icechunk_operator.engine.writer import GroupWriter
from icechunk_operator.synthetic import ArchiveLayout


def new_repo(path: Path, prefix: str) -> icechunk.Repository:
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(prefix[7:]))
    )
    return icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path)),
        config=config,
        authorize_virtual_chunk_access=icechunk.containers_credentials(
            {prefix: icechunk.credentials.LocalFileSystemAccess}
        ),
    )


def zarr_json(session: icechunk.Session, key: str) -> dict:
    async def get() -> bytes:
        return (await session.store.get(key, default_buffer_prototype())).to_bytes()

    return json.loads(asyncio.run(get()))


def test_documents_match_to_icechunk(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    prefix = shared_archive.root.resolve().as_uri() + "/"
    registry = build_registry([VirtualChunkContainerSpec(url_prefix=prefix)])
    items = [f for f in shared_archive.files if f.defect == "none"][:12]
    ours, theirs = new_repo(tmp_path / "ours", prefix), new_repo(tmp_path / "theirs", prefix)
    mine, reference = ours.writable_session("main"), theirs.writable_session("main")
    datasets = {}
    for item in items:
        stat = item.path.stat()
        source = SourceFile(item.path.resolve().as_uri(), stat.st_size, None, stat.st_mtime)
        # Fully virtual: loaded variables take a different (native) route on purpose.
        ds = virtualize_file(source, VirtualizeOptions(loadable_variables=()), registry)
        datasets[item.group] = ds
        ds.vz.to_icechunk(reference.store, group=item.group)
        with asyncio.Runner() as runner:
            GroupWriter(runner).write(mine, [build_payload(item.group, ds, (source,), WriteMode.CREATE)])

    for group, ds in datasets.items():
        assert zarr_json(mine, f"{group}/zarr.json") == zarr_json(reference, f"{group}/zarr.json")
        for name in ds.variables:
            assert zarr_json(mine, f"{group}/{name}/zarr.json") == zarr_json(
                reference, f"{group}/{name}/zarr.json"
            ), f"{group}/{name}"
        a = xr.open_zarr(mine.store, group=group, consolidated=False, zarr_format=3)
        b = xr.open_zarr(reference.store, group=group, consolidated=False, zarr_format=3)
        for name in ds.variables:
            np.testing.assert_array_equal(a[name].values, b[name].values)
