"""One file in, one virtual xarray Dataset out (or an exception that becomes a failure record).

VirtualiZarr's parsers do the format work. Around them this module adds what an archive needs:
the parser chosen from the file's magic bytes, loadable variables read in one concurrent round
instead of through ``xr.open_zarr`` (which costs more than the parse itself), checks that catch
empty, truncated and data-less files, fixes, and splitting of contiguous arrays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from icechunk_operator.engine.fixes import resolve_fix
from icechunk_operator.engine.records import SourceFile

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02")  # classic and 64-bit offset; CDF-5 is not netCDF3


class UnusableFileError(ValueError):
    """A file that can never be virtualized as it is (empty, truncated, no data, bad format)."""


class EmptyFileError(UnusableFileError):
    pass


class TruncatedFileError(UnusableFileError):
    pass


class NoDataVariablesError(UnusableFileError):
    pass


class UnknownFormatError(UnusableFileError):
    pass


class TimeDecodingError(UnusableFileError):
    pass


@dataclass(frozen=True)
class VirtualizeOptions:
    parser: str = "auto"
    loadable_variables: tuple[str, ...] | None = None
    drop_variables: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    split_dimension: str | None = None


def sniff_format(head: bytes) -> str:
    """'hdf5' or 'netcdf3' from the first bytes of a file."""
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head[:4] in NETCDF3_MAGICS:
        return "netcdf3"
    raise UnknownFormatError(f"not HDF5/NetCDF4 or NetCDF3 (first bytes {head[:8]!r})")


def make_parser(kind: str) -> Any:
    from virtualizarr.parsers import HDFParser, NetCDF3Parser

    return HDFParser() if kind == "hdf5" else NetCDF3Parser()


def virtualize_file(source: SourceFile, options: VirtualizeOptions, registry: Any) -> xr.Dataset:
    """The file as a Dataset of ManifestArrays (virtual) and numpy arrays (loadable)."""
    if source.size == 0:
        raise EmptyFileError("file is empty (0 bytes)")
    store, path = registry.resolve(source.url)
    kind = options.parser
    if kind == "auto":
        import obstore

        head = bytes(obstore.get_range(store, path, start=0, length=min(8, source.size)))
        kind = sniff_format(head)
    manifest_store = make_parser(kind)(url=source.url, registry=registry)
    group = manifest_store._group  # the parsed root group; ManifestStore has no public accessor
    ds = group.to_virtual_dataset()
    ds = ds.drop_vars([v for v in options.drop_variables if v in ds.variables])
    check_within_file(ds, source.size)

    loadable = options.loadable_variables
    if loadable is None:
        loadable = tuple(str(name) for name in ds.dims if name in ds.variables)
    ds = _load_variables(ds, manifest_store, [n for n in loadable if n in ds.variables])

    for name in options.fixes:
        ds = resolve_fix(name)(ds)
    if not ds.data_vars:
        raise NoDataVariablesError("file has no data variables")
    check_time_decodes(ds)
    if options.split_dimension:
        ds = split_contiguous(ds, options.split_dimension)
    return ds


def check_within_file(ds: xr.Dataset, file_size: int) -> None:
    """Refuse references past the end of the file: the mark of a truncated download."""
    from virtualizarr.manifests import ManifestArray

    for name, variable in ds.variables.items():
        if isinstance(variable.data, ManifestArray):
            manifest = variable.data.manifest
            present = manifest._paths != ""
            if present.any():
                ends = manifest._offsets[present] + manifest._lengths[present]
                end = int(ends.max())
                if end > file_size:
                    raise TruncatedFileError(
                        f"variable {name!r} references bytes up to {end} but the file has "
                        f"{file_size} bytes (truncated?)"
                    )


def check_time_decodes(ds: xr.Dataset) -> None:
    """A loaded time coordinate must decode to dates, or the store would serve numbers."""
    if "time" not in ds.variables or not isinstance(ds["time"].data, np.ndarray):
        return
    attrs = ds["time"].attrs
    units = attrs.get("units")
    if not isinstance(units, str) or " since " not in units:
        raise TimeDecodingError(f"time has no CF units ({units!r})")
    try:
        xr.coding.times.decode_cf_datetime(
            np.asarray(ds["time"].values), units, attrs.get("calendar", "standard")
        )
    except (ValueError, TypeError, OverflowError) as error:
        raise TimeDecodingError(f"time units {units!r} do not decode: {error}") from None


def _load_variables(ds: xr.Dataset, manifest_store: Any, names: Sequence[str]) -> xr.Dataset:
    """Replace virtual variables by their values, read concurrently in one event-loop round."""
    if not names:
        return ds
    from zarr.core.sync import sync

    values = sync(_read_arrays(manifest_store, names))
    replacements = {
        name: xr.Variable(ds[name].dims, array, ds[name].attrs)
        for name, array in zip(names, values, strict=True)
    }
    return ds.assign(replacements) if replacements else ds


async def _read_arrays(manifest_store: Any, names: Sequence[str]) -> list[np.ndarray]:
    import zarr.api.asynchronous as zarr_async

    async def read(name: str) -> np.ndarray:
        array = await zarr_async.open_array(store=manifest_store, path=name, zarr_format=3)
        return np.asarray(await array.getitem(Ellipsis))

    return list(await asyncio.gather(*(read(name) for name in names)))


def split_contiguous(ds: xr.Dataset, dimension: str) -> xr.Dataset:
    """One virtual chunk per step along ``dimension`` for arrays stored as one uncompressed block.

    A reader who wants one time step of a 761x761x86 contiguous array otherwise fetches all 86.
    Only the leading dimension can be split: a slab along it is one contiguous byte range.
    """
    from virtualizarr.manifests import ChunkManifest, ManifestArray
    from virtualizarr.manifests.utils import copy_and_replace_metadata

    updated = {}
    for name, variable in ds.variables.items():
        data = variable.data
        if not isinstance(data, ManifestArray) or not variable.dims or variable.dims[0] != dimension:
            continue
        metadata = data.metadata
        codecs = [c.to_dict()["name"] for c in metadata.codecs]
        steps = data.shape[0]
        if codecs != ["bytes"] or tuple(metadata.chunks) != tuple(data.shape) or steps <= 1:
            continue  # compressed or already chunked: byte ranges per step do not exist
        manifest = data.manifest
        if len(manifest._paths.ravel()) != 1 or manifest._paths.ravel()[0] == "":
            continue
        step_bytes = int(manifest._lengths.ravel()[0]) // steps
        grid = (steps,) + (1,) * (data.ndim - 1)
        offsets = manifest._offsets.ravel()[0] + step_bytes * np.arange(steps, dtype=np.uint64)
        new_manifest = ChunkManifest.from_arrays(
            paths=np.full(grid, manifest._paths.ravel()[0], dtype=np.dtypes.StringDType()),
            offsets=offsets.reshape(grid).astype(np.uint64),
            lengths=np.full(grid, step_bytes, dtype=np.uint64),
            validate_paths=False,
        )
        new_metadata = copy_and_replace_metadata(metadata, new_chunks=[1, *data.shape[1:]])
        updated[name] = xr.Variable(
            variable.dims,
            ManifestArray(metadata=new_metadata, chunkmanifest=new_manifest),
            variable.attrs,
            variable.encoding,
        )
    return ds.assign(updated) if updated else ds
