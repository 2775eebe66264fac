"""The engine's two parsers: VirtualiZarr's, narrowed to what the engine ingests and guarded
against what a hostile file claims.

- NetCDF3: the header is read once and its claims (begin, vsize, dimension lengths, numrecs)
  are checked against the file's size before any manifest is built. A 1 KB file whose header
  claims two million records otherwise costs seconds of CPU and gigabytes of manifests before
  the references past the end are noticed; a ``begin`` of 0xFFFFFFFF (read as -1) otherwise
  ends in an ``OverflowError`` that says nothing of the file.
- HDF5: only the root group is read, which is all the engine ingests. VirtualiZarr's parser
  walks every subgroup, and follows hard and soft links into them: a link back to an ancestor
  made it recurse until ``RecursionError``, re-opening the file at each level (minutes for a
  group with a few datasets). Members reached through an external link are skipped: their
  bytes are in another file, and references into this one would read the wrong data.

Both reuse VirtualiZarr's private helpers (``_parse_header``, ``_build_manifest_array``,
``_construct_manifest_array``, ...), as the engine already reads its ``ManifestStore._group``;
the lock pins the version these were written against.
"""

from __future__ import annotations

import math
from typing import Any

from icechunk_operator.engine.file_errors import MalformedFileError, TruncatedFileError
from icechunk_operator.engine.packing import PACKING_KEYS


def make_parser(kind: str, file_size: int, reader_factory: Any) -> Any:
    return RootGroupHDFParser(reader_factory) if kind == "hdf5" else CheckedNetCDF3Parser(file_size)


class CheckedNetCDF3Parser:
    """VirtualiZarr's NetCDF3 parser, with the header's claims checked first."""

    def __init__(self, file_size: int) -> None:
        self.file_size = file_size

    def __call__(self, url: str, registry: Any) -> Any:
        from obspec_utils.readers import BlockStoreReader
        from virtualizarr.manifests import ManifestGroup, ManifestStore
        from virtualizarr.parsers import netcdf3

        store, path = registry.resolve(url)
        _keep_float_attribute_types(netcdf3)
        header = netcdf3._parse_header(BlockStoreReader(store=store, path=path))
        if header.numrecs == netcdf3._STREAMING:
            header.numrecs = netcdf3._resolve_streaming_numrecs(header, self.file_size)
        check_netcdf3_claims(header, self.file_size)
        arrays = {var.name: netcdf3._build_manifest_array(var, header, url) for var in header.variables}
        group = ManifestGroup(arrays=arrays, attributes=header.attributes)
        return ManifestStore(group=group, registry=registry)


def check_netcdf3_claims(header: Any, file_size: int) -> None:
    """Refuse a header whose numbers are negative or place data past the end of the file."""
    if header.numrecs < 0:
        raise MalformedFileError(f"the NetCDF3 header claims {header.numrecs} records")
    for name, length in header.dimensions.items():
        if length < 0:
            raise MalformedFileError(f"the NetCDF3 header gives dimension {name!r} the length {length}")
    for var in header.variables:
        # A vsize of 2**32-1 (read as -1) means "too large to say"; any other negative, or a
        # vsize smaller than the data it sizes, is a lie (record strides are sums of vsizes).
        record = math.prod(var.shape[1:] if var.is_record else var.shape) * var.dtype.itemsize
        if var.begin < 0 or var.vsize < -1 or 0 <= var.vsize < record:
            raise MalformedFileError(
                f"the NetCDF3 header gives variable {var.name!r} begin={var.begin} and vsize={var.vsize}, "
                f"for {record} bytes of data"
            )
        if var.is_record:
            if header.numrecs == 0:
                continue
            end = var.begin + (header.numrecs - 1) * header.recsize + record
            claim = f"{header.numrecs} records of {header.recsize} bytes from byte {var.begin}"
        else:
            end = var.begin + record
            claim = f"shape {var.shape} from byte {var.begin}"
        if end > file_size:
            raise TruncatedFileError(
                f"variable {var.name!r}: the NetCDF3 header claims {claim}, up to byte {end}, but the "
                f"file has {file_size} bytes (truncated, or a header that lies)"
            )


class RootGroupHDFParser:
    """VirtualiZarr's HDF5 parser for the root group alone."""

    def __init__(self, reader_factory: Any) -> None:
        self.reader_factory = reader_factory

    def __call__(self, url: str, registry: Any) -> Any:
        import h5py
        from virtualizarr.manifests import ManifestGroup, ManifestStore
        from virtualizarr.parsers.hdf import hdf

        store, path = registry.resolve(url)
        with h5py.File(self.reader_factory(store, path), mode="r") as root:
            dimensions_without_data = set(hdf._find_non_coord_dimension_vars(group=root))
            arrays = {}
            for name in root:
                if name in dimensions_without_data:
                    continue
                if isinstance(root.get(name, getlink=True), h5py.ExternalLink):
                    continue  # another file's bytes
                item = root[name]  # not .get(), which turns "cannot open this object" into None
                if isinstance(item, h5py.Dataset):
                    array = hdf._construct_manifest_array(url, item, "/", False)
                    arrays[name] = _with_typed_packing(array, item)
            attributes = hdf._extract_attrs(root, False)
        return ManifestStore(registry=registry, group=ManifestGroup(arrays=arrays, attributes=attributes))


def _with_typed_packing(array: Any, dataset: Any) -> Any:
    """The array with its ``scale_factor``/``add_offset`` as the numpy scalars h5py reads:
    VirtualiZarr makes them Python floats, and the unpacked dtype depends on their type
    (:mod:`~icechunk_operator.engine.packing`)."""
    import dataclasses

    import numpy as np
    from virtualizarr.manifests import ManifestArray

    typed = {}
    for key in PACKING_KEYS:
        if key in dataset.attrs:
            value = np.asarray(dataset.attrs[key])
            if value.size == 1 and value.dtype.kind == "f":
                typed[key] = value.reshape(-1)[0]
    if not typed:
        return array
    metadata = dataclasses.replace(array.metadata, attributes={**array.metadata.attributes, **typed})
    return ManifestArray(metadata=metadata, chunkmanifest=array.manifest)


def _keep_float_attribute_types(netcdf3: Any) -> None:
    """Make VirtualiZarr's NetCDF3 header reader keep float and double attributes of one value
    as numpy scalars (it returns Python floats, losing float32), for the same reason as
    :func:`_with_typed_packing`. Installed once per process; every later value is as before,
    typed (JSON writes both the same)."""
    base = netcdf3._HeaderReader
    if getattr(base, "keeps_float_types", False):
        return

    class TypedFloatHeaderReader(base):  # type: ignore[misc,valid-type]
        keeps_float_types = True

        def values(self, nc_type: int, nelems: int) -> Any:
            if nc_type not in _NC_FLOAT_TYPES or nelems != 1:
                return super().values(nc_type, nelems)
            import numpy as np

            dtype = netcdf3._NC_TYPES[nc_type]
            raw = self.read(dtype.itemsize)
            self.pad(dtype.itemsize)
            return np.frombuffer(raw, dtype)[0].astype(dtype.newbyteorder("="))

    netcdf3._HeaderReader = TypedFloatHeaderReader


_NC_FLOAT_TYPES = (5, 6)  # NC_FLOAT, NC_DOUBLE
