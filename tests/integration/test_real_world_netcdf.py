"""Files of the kinds real archives hold and nobody here designed: non-finite attributes (NaN and
±Infinity, under CF and non-CF names, scalar and array), packed variables (int16 with float32 and
float64 ``scale_factor``/``add_offset``), a fill value used as a time. Written by netCDF4 at test
time, ingested by a real batch into a real Icechunk repository, read back with xarray and
compared with xarray's reading of each original, value, dtype and attribute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import xarray as xr

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.attributes import decode_non_finite
from icechunk_operator.engine.runner import run_batch
from tests.integration.readback import ledger_urls, open_group

NAN32, INF32 = np.float32("nan"), np.float32("inf")


def _axes(ds: netCDF4.Dataset, times: int = 3) -> None:
    ds.createDimension("time", times)
    ds.createDimension("x", 4)
    time = ds.createVariable("time", "f8", ("time",))
    time.units = "days since 2000-01-01"
    time[:] = np.arange(times)
    x = ds.createVariable("x", "f8", ("x",))
    x[:] = np.arange(4) * 1000.0


def plain(path: Path) -> None:
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        _axes(ds)
        ds.createVariable("temp", "f4", ("time", "x"))[:] = np.arange(12).reshape(3, 4)


def non_finite_attributes(path: Path, file_format: str) -> None:
    """NaN and ±Infinity where real products put them: a non-CF ``_FILLVALUE``, ``valid_max``,
    ``valid_range``, CF ``_FillValue`` and ``missing_value`` of NaN, global scalars and arrays."""
    with netCDF4.Dataset(path, "w", format=file_format) as ds:
        _axes(ds)
        ds.setncattr("global_nan", np.float64("nan"))
        ds.setncattr("global_limits", np.array([-np.inf, 0.5, np.inf]))
        count = ds.createVariable("CORRECTED_COUNT", "f4", ("time", "x"))
        count[:] = np.arange(12).reshape(3, 4)
        count.setncattr("_FILLVALUE", NAN32)
        count.setncattr("valid_max", INF32)
        count.setncattr("valid_range", np.array([-np.inf, np.inf], dtype="f4"))
        masked = ds.createVariable("masked", "f4", ("time", "x"), fill_value=NAN32)
        masked.setncattr("missing_value", NAN32)
        values = np.arange(12, dtype="f4").reshape(3, 4)
        values[1, 2] = np.nan
        masked[:] = values


def packed(path: Path, file_format: str) -> None:
    """CF packing as satellite products write it, with fill values among the data."""
    with netCDF4.Dataset(path, "w", format=file_format) as ds:
        _axes(ds)
        raw = (np.arange(12, dtype="i2").reshape(3, 4) - 6) * 1000

        def variable(name: str, dtype: str, attrs: dict[str, Any], fill: Any = None) -> None:
            var = ds.createVariable(name, dtype, ("time", "x"), fill_value=fill)
            var.set_auto_maskandscale(False)
            for key, value in attrs.items():
                var.setncattr(key, value)
            data = raw.astype(dtype) if dtype == "i2" else (np.arange(12).reshape(3, 4) - 6).astype(dtype)
            if fill is not None:
                data[0, 0] = fill
            var[:] = data

        variable(
            "cth", "i2", {"scale_factor": np.float32(0.305), "add_offset": np.float32(10.0)}, np.int16(-32767)
        )
        variable("cth64", "i2", {"scale_factor": 0.305, "add_offset": 10.0}, np.int16(-32767))
        variable("scaled_only", "i2", {"scale_factor": np.float32(0.01)})
        variable("counts", "i1", {"scale_factor": np.float32(0.5), "add_offset": np.float32(-3.0)}, -127)
        variable("offset_only", "i2", {"add_offset": np.float32(273.15)})


def infinite_missing_value(path: Path) -> None:
    """A missing value xarray masks with, which JSON cannot hold as a number."""
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        _axes(ds)
        var = ds.createVariable("temp", "f4", ("time", "x"))
        var.setncattr("missing_value", np.float32(-np.inf))
        var[:] = np.arange(12).reshape(3, 4)


def fill_value_as_time(path: Path) -> None:
    """NETCDF3, time never written: the int32 default fill value with CF units."""
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("time", 1)
        ds.createDimension("x", 4)
        time = ds.createVariable("time", "i4", ("time",))
        time.units = "days since 1961-01-01"
        time[:] = [-2147483647]
        ds.createVariable("temp", "f4", ("time", "x"))[:] = np.arange(4)


FILES: dict[str, Callable[[Path], None]] = {
    "plain": plain,
    "nonfinite-nc4": lambda p: non_finite_attributes(p, "NETCDF4"),
    "nonfinite-nc3": lambda p: non_finite_attributes(p, "NETCDF3_64BIT_OFFSET"),
    "packed-nc4": lambda p: packed(p, "NETCDF4"),
    "packed-nc3": lambda p: packed(p, "NETCDF3_CLASSIC"),
    "missing-inf": infinite_missing_value,
    "fill-time": fill_value_as_time,
}
EXPECTED_FAILURES = {"missing-inf": "UnstorableAttributeError", "fill-time": "TimeDecodingError"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-world") / "archive"
    root.mkdir()
    for name, write in FILES.items():
        write(root / f"{name}.nc")
    return root


def resources(archive: Path, store: Path, **virtualization: Any) -> tuple[IcechunkStore, IngestBatch]:
    prefix = archive.resolve().as_uri() + "/"
    return (
        IcechunkStore.model_validate(
            {
                "kind": "IcechunkStore",
                "metadata": {"name": "real"},
                "spec": {
                    "storage": {"url": store.as_uri()},
                    "virtualChunkContainers": [{"urlPrefix": prefix}],
                },
            }
        ),
        IngestBatch.model_validate(
            {
                "kind": "IngestBatch",
                "metadata": {"name": "real"},
                "spec": {
                    "store": "real",
                    "source": {"prefix": prefix, "glob": "*.nc"},
                    "grouping": {"pattern": r"(?P<name>[\w-]+)\.nc", "template": "files/{name}"},
                    "virtualization": virtualization,
                    "failures": {"maxFailedFiles": 2},
                    "execution": {"workers": 2},
                },
            }
        ),
    )


def same_attribute(stored: Any, original: Any) -> bool:
    stored = decode_non_finite(stored)
    left, right = np.asarray(stored), np.asarray(original)
    if left.dtype.kind in "fiu" and right.dtype.kind in "fiu":
        return left.shape == right.shape and bool(np.array_equal(left, right, equal_nan=True))
    return bool(stored == original)


def assert_reads_back_as_the_original(store: IcechunkStore, group: str, path: Path) -> None:
    ds = open_group(store, group)
    with xr.open_dataset(path) as original:
        assert set(ds.variables) == set(original.variables), group
        for name, expected in original.variables.items():
            actual = ds[name]
            assert actual.dtype == expected.dtype, (group, name, actual.dtype, expected.dtype)
            if expected.dtype.kind == "f":
                # Unpacked by the codec, rounded once; xarray rounds twice (after * and +): equal
                # within a float32 rounding at the variable's magnitude.
                np.testing.assert_array_equal(np.isnan(actual.values), np.isnan(expected.values))
                finite = ~np.isnan(expected.values)
                bound = 2 * np.spacing(np.abs(expected.values[finite]).max(initial=0).astype(expected.dtype))
                np.testing.assert_allclose(actual.values[finite], expected.values[finite], rtol=0, atol=bound)
            else:
                np.testing.assert_array_equal(actual.values, expected.values, err_msg=f"{group}/{name}")
            assert set(actual.attrs) == set(expected.attrs), (group, name)
            for key, value in expected.attrs.items():
                assert same_attribute(actual.attrs[key], value), (group, name, key, actual.attrs[key], value)
        for key, value in original.attrs.items():
            assert same_attribute(ds.attrs[key], value), (group, key)


def test_the_good_files_commit_and_each_bad_one_is_a_named_failure(
    archive: Path, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = resources(archive, tmp_path / "store")
    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert report.error is None and report.succeeded, report.error
    assert (report.total, report.done, report.failed) == (len(FILES), len(FILES) - 2, 2)
    failures = {Path(f.url).stem: f for f in report.failures}
    assert {name: f.error_class for name, f in failures.items()} == EXPECTED_FAILURES
    assert "missing_value = -inf" in failures["missing-inf"].message
    fill_message = failures["fill-time"].message
    assert "-2147483647, the NetCDF default fill value of int32" in fill_message
    assert "virtualization.decodeTimes: false" in fill_message
    good = [name for name in FILES if name not in EXPECTED_FAILURES]
    assert sorted(Path(u).stem for u in ledger_urls(store)) == sorted(good)
    for name in good:
        assert_reads_back_as_the_original(store, f"files/{name}", archive / f"{name}.nc")


def test_non_finite_attributes_are_strings_in_strict_json(
    archive: Path, tmp_path: Path, dask_scheduler: str
) -> None:
    """What a reader of the documents sees: Zarr v3's spelling of non-finite numbers."""
    store, batch = resources(archive, tmp_path / "store")
    run_batch(store, batch, scheduler=dask_scheduler)
    ds = open_group(store, "files/nonfinite-nc4")
    assert ds.attrs["global_nan"] == "NaN"
    assert ds.attrs["global_limits"] == ["-Infinity", 0.5, "Infinity"]
    assert ds["CORRECTED_COUNT"].attrs["_FILLVALUE"] == "NaN"
    assert ds["CORRECTED_COUNT"].attrs["valid_range"] == ["-Infinity", "Infinity"]
    assert math.isnan(decode_non_finite(ds["CORRECTED_COUNT"].attrs["_FILLVALUE"]))


def test_packed_float32_variables_are_unpacked_by_a_codec(
    archive: Path, tmp_path: Path, dask_scheduler: str
) -> None:
    """float32 packing moves into the codecs (the dtype JSON attributes cannot carry), float64
    packing stays in CF attributes: both read as xarray reads the original."""
    from tests.integration.readback import open_repository

    store, batch = resources(archive, tmp_path / "store")
    run_batch(store, batch, scheduler=dask_scheduler)
    session = open_repository(store.spec, create=False).readonly_session(branch="main")
    import zarr

    for name in ("packed-nc4", "packed-nc3"):
        group = zarr.open_group(session.store, path=f"files/{name}", mode="r", zarr_format=3)
        cth = group["cth"].metadata.to_dict()
        assert cth["data_type"] == "float32", name
        assert cth["codecs"][0]["name"] == "numcodecs.fixedscaleoffset", name
        assert "scale_factor" not in cth["attributes"], name
        cth64 = group["cth64"].metadata.to_dict()
        assert cth64["data_type"] == "int16" and cth64["attributes"]["scale_factor"] == 0.305, name
    assert json.loads(json.dumps(cth))  # strict JSON throughout


def test_decode_times_false_stores_the_fill_value_time_as_it_is(
    archive: Path, tmp_path: Path, dask_scheduler: str
) -> None:
    store, batch = resources(archive, tmp_path / "store", decodeTimes=False)
    report = run_batch(store, batch, scheduler=dask_scheduler)
    assert {Path(f.url).stem for f in report.failures} == {"missing-inf"}
    raw = open_group(store, "files/fill-time", decode_times=False)
    assert raw["time"].values.tolist() == [-2147483647]
