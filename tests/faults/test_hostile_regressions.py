"""One case for each defect the hostile corpus found, small enough to say what it was.

- A file with no records yet (an unlimited dimension of length 0) failed the whole commit: its
  empty coordinate became a zero-byte chunk, which Icechunk refuses.
- An HDF5 link back to an ancestor group made the parser recurse until RecursionError, re-opening
  the file at each level (seconds to minutes per file), though only the root group is ingested.
- An HDF5 chunk index (B-tree) that lies about a chunk's size was ingested: every reader of the
  array got errors or garbage (HDF5 checks contiguous blocks against the dataspace, not chunk sizes).
- A NetCDF3 header claiming two million records in a 1 KB file cost seconds of CPU and GBs of
  manifests before the overrun was noticed; a ``begin`` of 0xFFFFFFFF ended in OverflowError.
- Parser errors carried the library's class (KeyError, OSError, IndexError, ...), which says
  nothing of what is wrong with the file.
- An external link at the root was followed, so another file's offsets were recorded as
  references into this one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from icechunk_operator.api.store import VirtualChunkContainerSpec
from icechunk_operator.engine.objects import cached_registry, containers_key
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.virtualize import (
    MalformedFileError,
    TruncatedFileError,
    VirtualizeOptions,
    virtualize_file,
)
from tests.faults.corpus import HostileFile
from tests.faults.formats import hdf5_layout, netcdf3_layout, object_header_addresses, patched
from tests.faults.hostile import run_hostile


def parse(path: Path) -> object:
    container = VirtualChunkContainerSpec.model_validate({"urlPrefix": path.parent.resolve().as_uri() + "/"})
    registry = cached_registry(containers_key([container]))
    return virtualize_file(
        SourceFile(path.resolve().as_uri(), path.stat().st_size), VirtualizeOptions(), registry
    )


def write_netcdf(path: Path, file_format: str, records: int = 3) -> Path:
    import netCDF4

    with netCDF4.Dataset(path, "w", format=file_format) as ds:  # type: ignore[arg-type]
        ds.createDimension("time", None)
        ds.createDimension("x", 4)
        time_ = ds.createVariable("time", "f8", ("time",))
        time_.setncattr("units", "days since 2000-01-01")
        time_[:] = np.arange(float(records))
        x = ds.createVariable("x", "f8", ("x",))
        x[:] = np.arange(4.0)
        ds.createVariable("flux", "f4", ("time", "x"))[:] = np.ones((records, 4), dtype=np.float32)
        ds.createVariable("mask", "i4", ("x",))[:] = np.arange(4, dtype=np.int32)
    return path


@pytest.mark.slow
def test_a_file_with_no_records_yet_is_ingested(tmp_path: Path, dask_scheduler: str) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    files = [
        HostileFile("no-records", write_netcdf(folder / f"{fmt.lower()}.nc", fmt, records=0))
        for fmt in ("NETCDF3_CLASSIC", "NETCDF4")
    ]
    run = run_hostile(files, tmp_path / "store", dask_scheduler)

    assert run.report.error is None
    assert [run.outcome(f) for f in files] == ["ingested", "ingested"]


def test_a_hard_link_back_to_an_ancestor_costs_no_time(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "cycle.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("values", data=np.arange(4.0))
        f.create_group("g/h")
        f["g/h/back"] = f["g"]
        f["g/root"] = f["/"]
    started = time.perf_counter()
    ds = parse(path)
    assert time.perf_counter() - started < 2.0
    assert list(ds.data_vars) == ["values"]  # type: ignore[attr-defined]


def test_a_chunk_index_that_lies_about_a_chunk_size_is_refused(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "lying.nc"
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset("values", data=np.arange(12, dtype="f4"), chunks=(4,))  # uncompressed
    data = bytearray(path.read_bytes())
    (node,) = [
        n
        for n, label in hdf5_layout(bytes(data), object_header_addresses(path)).boundaries
        if label == "TREE" and data[n + 4] == 1
    ]  # the chunk B-tree (type 1)
    first_key = node + 8 + 2 * 8  # signature, type, level, entries, two siblings
    assert int.from_bytes(data[first_key : first_key + 4], "little") == 16
    data[first_key : first_key + 4] = (15).to_bytes(4, "little")  # HDF5 itself never checks it
    path.write_bytes(bytes(data))

    with pytest.raises(
        MalformedFileError, match=r"'values' claims chunks of shape \(4,\) of float32 \(16 bytes\)"
    ):
        parse(path)


def test_an_unreadable_member_fails_the_file_instead_of_vanishing(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "unreadable.nc"
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset("kept", data=np.arange(3.0))
        f.create_dataset("broken", data=np.arange(5.0))
    data = path.read_bytes()
    (dim,) = [d for d in hdf5_layout(data, object_header_addresses(path)).dimensions if d.value == 5]
    path.write_bytes(patched(data, dim, 0))  # HDF5: "invalid dataset size, likely file corruption"

    with pytest.raises(MalformedFileError, match="the hdf5 parser cannot read this file: KeyError"):
        parse(path)


@pytest.mark.parametrize("file_format", ["NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"])
def test_netcdf3_header_claims_are_checked_before_any_manifest(tmp_path: Path, file_format: str) -> None:
    original = write_netcdf(tmp_path / "original.nc", file_format).read_bytes()
    layout = netcdf3_layout(original)
    numrecs = layout.counts[0]
    begin = next(a for a in layout.addresses if a.label == "begin of mask")
    vsize = next(c for c in layout.counts if c.label == "vsize of flux")

    def with_lie(place: object, value: int) -> Path:
        path = tmp_path / "lie.nc"
        path.write_bytes(patched(original, place, value))  # type: ignore[arg-type]
        return path

    started = time.perf_counter()
    with pytest.raises(TruncatedFileError, match=r"'time': the NetCDF3 header claims 2097155 records"):
        parse(with_lie(numrecs, 2**21 + 3))
    assert time.perf_counter() - started < 1.0
    with pytest.raises(MalformedFileError, match=r"variable 'mask' begin=-1"):
        parse(with_lie(begin, 2 ** (8 * begin.width) - 1))
    with pytest.raises(MalformedFileError, match=r"variable 'flux' begin=\d+ and vsize=4, for 16 bytes"):
        parse(with_lie(vsize, 4))


def test_a_parser_error_names_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    whole = write_netcdf(tmp_path / "whole.nc", "NETCDF4").read_bytes()
    cut = tmp_path / "cut.nc"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        MalformedFileError, match=r"^the hdf5 parser cannot read this file: OSError: .*truncated"
    ):
        parse(cut)


def test_an_external_link_is_not_virtualized_as_this_files_bytes(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "other.nc", "w") as f:
        f.create_dataset("foreign", data=np.arange(100.0))
    path = tmp_path / "linking.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("own", data=np.arange(3.0))
        f["foreign"] = h5py.ExternalLink("other.nc", "/foreign")
    assert list(parse(path).data_vars) == ["own"]  # type: ignore[attr-defined]
