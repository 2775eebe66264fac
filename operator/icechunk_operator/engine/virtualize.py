"""One file in, one virtual xarray Dataset out (or an exception that becomes a failure record).

VirtualiZarr's parsers do the format work. Around them this module adds what an archive needs:
the parser chosen from the file's magic bytes, loadable variables read in one concurrent round
instead of through ``xr.open_zarr`` (which costs more than the parse itself), checks that catch
empty, truncated and data-less files, fixes, and splitting of contiguous arrays.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from icechunk_operator.engine.attributes import check_decodable
from icechunk_operator.engine.file_errors import (
    EmptyFileError,
    FixFailedError,
    MalformedFileError,
    NoDataVariablesError,
    TimeDecodingError,
    TruncatedFileError,
    UnknownFormatError,
    UnusableFileError,
)
from icechunk_operator.engine.fixes import resolve_fix
from icechunk_operator.engine.packing import unpack_in_codecs
from icechunk_operator.engine.parsers import make_parser
from icechunk_operator.engine.prefetch import HDF5_BLOCK_BYTES, Head, HeadStore
from icechunk_operator.engine.records import SourceFile

__all__ = [  # the failure classes, importable from here as before
    "EmptyFileError",
    "FixFailedError",
    "MalformedFileError",
    "NoDataVariablesError",
    "TimeDecodingError",
    "TruncatedFileError",
    "UnknownFormatError",
    "UnusableFileError",
    "VirtualizeOptions",
    "virtualize_file",
]

#: Array-to-array codecs that work value by value: a byte range of whole values stays one.
ELEMENTWISE_CODECS = ("numcodecs.fixedscaleoffset",)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02")  # classic and 64-bit offset; CDF-5 is not netCDF3


@dataclass(frozen=True)
class VirtualizeOptions:
    parser: str = "auto"
    loadable_variables: tuple[str, ...] | None = None
    drop_variables: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    split_dimension: str | None = None
    decode_times: bool = True


def sniff_format(head: bytes) -> str:
    """'hdf5' or 'netcdf3' from the first bytes of a file."""
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head[:4] in NETCDF3_MAGICS:
        return "netcdf3"
    raise UnknownFormatError(f"not HDF5/NetCDF4 or NetCDF3 (first bytes {head[:8]!r})")


def _read_head(store: Any, path: str, length: int) -> bytes:
    from obstore.store import LocalStore

    if isinstance(store, LocalStore) and store.prefix is None:
        with open("/" + path, "rb") as file:  # a system call, not an object-store request
            return file.read(length)
    return bytes(store.get_range(path, start=0, length=length))


def is_storage_error(error: BaseException) -> bool:
    """An error of the storage or the machine rather than of the file: left as it is, for the
    retry loop to judge (and MemoryError for the parser process to report)."""
    machine = isinstance(error, ConnectionError | TimeoutError | MemoryError)
    return machine or type(error).__module__.startswith("obstore")


@contextmanager
def reading(step: str, error_class: type[UnusableFileError] = MalformedFileError) -> Iterator[None]:
    """Name what went wrong in the file: a library's own exception (``KeyError``, ``OSError``
    from HDF5, ``IndexError``...) becomes ``error_class`` with the step, the original class and
    its text."""
    try:
        yield
    except UnusableFileError:
        raise
    except Exception as error:
        if is_storage_error(error):
            raise
        raise error_class(f"{step}: {type(error).__name__}: {error}") from error


def _native_local_reader(store: Any, path: str) -> Any:
    """Local files go to HDF5 by path: its own I/O is a third faster than reads through Python.
    Object stores keep VirtualiZarr's block reader, in small blocks over a prefetched head."""
    from obspec_utils.readers import BlockStoreReader
    from obstore.store import LocalStore

    if isinstance(store, LocalStore) and store.prefix is None:
        return "/" + path
    if isinstance(store, HeadStore):
        served: Any = store  # the part of obspec's Store that the block reader calls
        return BlockStoreReader(served, path, block_size=HDF5_BLOCK_BYTES)
    return BlockStoreReader(store, path)


class _OneFileRegistry:
    """The batch's registry, except that one file is read through its prefetched head."""

    def __init__(self, registry: Any, url: str, store: HeadStore, path: str) -> None:
        self._registry = registry
        self._url = url
        self._resolved = (store, path)

    def resolve(self, url: str) -> tuple[Any, str]:
        return self._resolved if url == self._url else self._registry.resolve(url)


def virtualize_file(
    source: SourceFile, options: VirtualizeOptions, registry: Any, head: Head | None = None
) -> xr.Dataset:
    """The file as a Dataset of ManifestArrays (virtual) and numpy arrays (loadable).

    With ``head`` (the file's first bytes, fetched ahead) the parse reads from memory and asks
    the store only for what lies beyond it."""
    if source.size == 0:
        raise EmptyFileError("file is empty (0 bytes)")
    store, path = registry.resolve(source.url)
    if head is not None:
        store = HeadStore(store, path, head)
        registry = _OneFileRegistry(registry, source.url, store, path)
    kind = options.parser
    if kind == "auto":
        kind = sniff_format(_read_head(store, path, min(8, source.size)))
    with reading(f"the {kind} parser cannot read this file"):
        parser = make_parser(kind, source.size, _native_local_reader)
        manifest_store = parser(url=source.url, registry=registry)
    group = manifest_store._group  # the parsed root group; ManifestStore has no public accessor
    arrays = {str(k): v for k, v in group.arrays.items() if k not in options.drop_variables}
    check_within_file(arrays, source.size)
    check_chunk_sizes(arrays)
    for name, array in arrays.items():
        check_decodable(name, array.metadata.attributes)

    loadable = options.loadable_variables
    if loadable is None:
        dims = {d for array in arrays.values() for d in (array.metadata.dimension_names or ())}
        loadable = tuple(name for name in arrays if name in dims)
    with reading("the values of its coordinates cannot be read"):
        loaded = load_arrays({n: arrays[n] for n in loadable if n in arrays}, store, path, manifest_store)
    with reading("its packed variables cannot be unpacked in their codecs"):
        arrays = {n: a if n in loaded else unpack_in_codecs(a) for n, a in arrays.items()}
    with reading("its variables do not make one dataset"):
        if options.split_dimension:
            arrays = split_contiguous(arrays, options.split_dimension)
        ds = _assemble(group, arrays, loaded)

    for name in options.fixes:
        fix = resolve_fix(name)
        with reading(f"virtualization.fixes: {name!r} failed", FixFailedError):
            ds = fix(ds)
    if not ds.data_vars:
        raise NoDataVariablesError("file has no data variables")
    if options.decode_times:
        check_time_decodes(ds)
    return ds


def _assemble(group: Any, arrays: dict[str, Any], loaded: dict[str, np.ndarray]) -> xr.Dataset:
    """One Dataset construction (each xarray assign costs about a millisecond)."""
    from virtualizarr.xarray import construct_fully_virtual_dataset

    attributes = dict(group.metadata.to_dict()["attributes"])
    coord_names = attributes.pop("coordinates", [])
    if isinstance(coord_names, str):
        coord_names = coord_names.split()
    variables = {}
    for name, array in arrays.items():
        if name in loaded:  # no need to build the stripped virtual metadata of a loaded array
            metadata = array.metadata
            variables[name] = xr.Variable(
                metadata.dimension_names or (), loaded[name], dict(metadata.attributes)
            )
        else:
            variables[name] = array.to_virtual_variable()
    return construct_fully_virtual_dataset(variables, coord_names=coord_names, attrs=attributes)


def check_within_file(arrays: dict[str, Any], file_size: int) -> None:
    """Refuse references past the end of the file: the mark of a truncated download."""
    for name, array in arrays.items():
        manifest = array.manifest
        present = manifest._paths != ""
        if present.any():
            end = int((manifest._offsets[present] + manifest._lengths[present]).max())
            if end > file_size:
                raise TruncatedFileError(
                    f"variable {name!r} references bytes up to {end} but the file has "
                    f"{file_size} bytes (truncated?)"
                )


def check_chunk_sizes(arrays: dict[str, Any]) -> None:
    """Refuse an uncompressed chunk whose stored size is not what the array's chunk shape holds:
    the mark of a chunk index that lies (HDF5 checks a contiguous block against its dataspace,
    but not the sizes in a chunk B-tree). Ingested, it serves errors or garbage to every reader."""
    for name, array in arrays.items():
        metadata = array.metadata
        if len(metadata.codecs) != 1 or metadata.codecs[0].to_dict()["name"] != "bytes":
            continue  # compressed: a chunk's stored size says nothing of its shape
        manifest = array.manifest
        lengths = manifest._lengths[manifest._paths != ""]
        if not lengths.size:
            continue
        dtype = np.dtype(metadata.data_type.to_native_dtype())
        expected = dtype.itemsize * int(np.prod(metadata.chunks, dtype=object))
        wrong = lengths[lengths != expected]
        if wrong.size:
            raise MalformedFileError(
                f"variable {name!r} claims chunks of shape {tuple(metadata.chunks)} of {dtype} "
                f"({expected} bytes), but the file stores {int(wrong[0])} bytes for one "
                "(a shape or a chunk index that lies)"
            )


def check_time_decodes(ds: xr.Dataset) -> None:
    """A loaded time coordinate must decode to dates, or the store would serve numbers."""
    if "time" not in ds.variables or not isinstance(ds["time"].data, np.ndarray):
        return
    attrs = ds["time"].attrs
    values = np.asarray(ds["time"].values)
    if values.size == 0 or values.dtype.kind not in "iuf":
        return
    error = _time_decoding_error(
        attrs.get("units"), attrs.get("calendar", "standard"), values.min().item(), values.max().item()
    )
    if error:
        raise TimeDecodingError(error + _fill_value_hint(values, attrs))


#: What the NetCDF library writes where no value was ever written (netCDF4.default_fillvals).
NETCDF_DEFAULT_FILLS = {
    "i1": -127,
    "u1": 255,
    "i2": -32767,
    "u2": 65535,
    "i4": -2147483647,
    "u4": 4294967295,
    "i8": -9223372036854775806,
    "u8": 18446744073709551614,
    "f4": 9.969209968386869e36,
    "f8": 9.969209968386869e36,
}


def _fill_value_hint(values: np.ndarray, attrs: dict[str, Any]) -> str:
    """Say so when the times that do not decode are a fill value: the file holds no time
    there, and the way out is a setting, not a units fix."""
    fills: dict[float, str] = {}
    default = NETCDF_DEFAULT_FILLS.get(values.dtype.str.lstrip("<>|="))
    if default is not None:
        fills[float(np.asarray(default, dtype=values.dtype))] = (
            f"the NetCDF default fill value of {values.dtype}"
        )
    for key in ("missing_value", "_FillValue"):
        given = attrs.get(key)
        if isinstance(given, int | float | np.number) and not isinstance(given, bool):
            fills[float(given)] = f"the variable's {key}"
    found = [(v, why) for v, why in fills.items() if np.any(values == v)]
    if not found:
        return ""
    value, why = found[0]
    count = int(np.count_nonzero(values == value))
    shown = int(value) if float(value).is_integer() else value
    return (
        f"; {count} of {values.size} time values are {shown}, {why}: the file holds no time "
        "there. Correct the file, set the times with a virtualization.fixes function, or set "
        "virtualization.decodeTimes: false to store the numbers as they are"
    )


@functools.lru_cache(maxsize=256)
def _time_decoding_error(units: object, calendar: object, first: float, last: float) -> str | None:
    """Files of one archive share their units: decoding the extremes once per kind is enough."""
    if not isinstance(units, str) or " since " not in units:
        return f"time has no CF units ({units!r})"
    try:
        xr.coding.times.decode_cf_datetime(np.array([first, last]), units, str(calendar))
    except (ValueError, TypeError, OverflowError) as error:
        return f"time units {units!r} do not decode: {error}"
    return None


def load_arrays(arrays: dict[str, Any], store: Any, path: str, manifest_store: Any) -> dict[str, np.ndarray]:
    """Values of small arrays. Uncompressed single-chunk arrays (coordinates, almost always) are
    read as byte ranges in one request; anything else goes through zarr's decoding."""
    direct: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    for name, array in arrays.items():
        layout = _raw_layout(array)
        if layout is not None:
            direct[name] = layout
    values: dict[str, np.ndarray] = {}
    if direct:
        starts = [offset for _, _, offset, _ in direct.values()]
        ends = [offset + length for _, _, offset, length in direct.values()]
        buffers = store.get_ranges(path, starts=starts, ends=ends)
        for (name, (dtype, shape, _, _)), buffer in zip(direct.items(), buffers, strict=True):
            raw = np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape)
            values[name] = raw.astype(dtype.newbyteorder("="))
    others = [name for name in arrays if name not in direct]
    if others:
        from zarr.core.sync import sync

        values.update(zip(others, sync(_read_arrays(manifest_store, others)), strict=True))
    return values


def _raw_layout(array: Any) -> tuple[np.dtype, tuple[int, ...], int, int] | None:
    """(dtype with byte order, shape, offset, length) when the array is one plain byte range."""
    metadata = array.metadata
    if len(metadata.codecs) != 1 or tuple(metadata.chunks) != tuple(array.shape):
        return None
    codec = metadata.codecs[0].to_dict()
    if codec["name"] != "bytes":
        return None
    manifest = array.manifest
    if manifest._paths.size != 1 or manifest._paths.ravel()[0] == "" or manifest._inlined:
        return None
    dtype = np.dtype(metadata.data_type.to_native_dtype())
    if dtype.kind not in "biuf":
        return None
    endian = (codec.get("configuration") or {}).get("endian", "little")
    dtype = dtype.newbyteorder(">" if endian == "big" else "<")
    length = int(manifest._lengths.ravel()[0])
    if length != dtype.itemsize * int(np.prod(array.shape, dtype=np.int64)):
        return None
    return dtype, tuple(array.shape), int(manifest._offsets.ravel()[0]), length


async def _read_arrays(manifest_store: Any, names: Sequence[str]) -> list[np.ndarray]:
    import zarr.api.asynchronous as zarr_async

    async def read(name: str) -> np.ndarray:
        array = await zarr_async.open_array(store=manifest_store, path=name, zarr_format=3)
        return np.asarray(await array.getitem(Ellipsis))

    return list(await asyncio.gather(*(read(name) for name in names)))


def split_contiguous(arrays: dict[str, Any], dimension: str) -> dict[str, Any]:
    """One virtual chunk per step along ``dimension`` for arrays stored as one uncompressed block.

    A reader who wants one time step of a 761x761x86 contiguous array otherwise fetches all 86.
    Only the leading dimension can be split: a slab along it is one contiguous byte range.
    """
    from virtualizarr.manifests import ChunkManifest, ManifestArray
    from virtualizarr.manifests.utils import copy_and_replace_metadata

    result = dict(arrays)
    for name, array in arrays.items():
        metadata = array.metadata
        dims = metadata.dimension_names or ()
        if not dims or dims[0] != dimension:
            continue
        codecs = [c.to_dict()["name"] for c in metadata.codecs]
        codecs = [c for c in codecs if c not in ELEMENTWISE_CODECS]
        steps = array.shape[0]
        if codecs != ["bytes"] or tuple(metadata.chunks) != tuple(array.shape) or steps <= 1:
            continue  # compressed or already chunked: byte ranges per step do not exist
        manifest = array.manifest
        if manifest._paths.size != 1 or manifest._paths.ravel()[0] == "":
            continue
        step_bytes = int(manifest._lengths.ravel()[0]) // steps
        grid = (steps,) + (1,) * (array.ndim - 1)
        offsets = manifest._offsets.ravel()[0] + step_bytes * np.arange(steps, dtype=np.uint64)
        new_manifest = ChunkManifest.from_arrays(
            paths=np.full(grid, manifest._paths.ravel()[0], dtype=np.dtypes.StringDType()),
            offsets=offsets.reshape(grid).astype(np.uint64),
            lengths=np.full(grid, step_bytes, dtype=np.uint64),
            validate_paths=False,
        )
        new_metadata = copy_and_replace_metadata(metadata, new_chunks=[1, *array.shape[1:]])
        result[name] = ManifestArray(metadata=new_metadata, chunkmanifest=new_manifest)
    return result
