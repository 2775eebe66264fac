"""The arrays of a materialized group: created from a reader's first dataset, grown along the
time axis, described by attributes that fix the grid.

The group is written the way xarray writes a dataset (dimension names, CF time encoding,
coordinates), so ``xarray.open_zarr`` and canVODpy's store reader open it as they open their own:
``epoch`` is int64 nanoseconds since 1970 (canvod-store's own encoding). The grid's origin and
interval live in the group's attributes (``icechunk_operator.materialize``), set once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from icechunk_operator.api.batch import Codec, EncodingSpec, MaterializeSpec
from icechunk_operator.engine.materialize.grid import TimeGrid, format_time

ATTRIBUTE = "icechunk_operator"
EPOCH_UNITS = "nanoseconds since 1970-01-01"
#: Per-file attributes of a reader's dataset that say nothing about the group.
VOLATILE_ATTRIBUTES = frozenset({"Created", "File Hash"})
#: Inner chunks along the append dimension, when the spec gives none: the object's length / 48.
DEFAULT_INNER_DIVISOR = 48


class ForeignGroupError(ValueError):
    """The group exists but holds no materialized time grid (virtual ingest or another tool)."""


@dataclass
class GroupState:
    """What the commit process knows of a group before placing files in it."""

    exists: bool
    grid: TimeGrid | None = None
    length: int = 0
    chunk: int = 0  # object length along the append dimension
    inner: int = 0  # write unit along it (inner chunk, or the object when not sharded)
    axes: dict[str, set[object]] = field(default_factory=dict)
    variables: set[str] = field(default_factory=set)


def inner_length(spec: MaterializeSpec) -> int | None:
    """The inner chunk along the append dimension, or None for no sharding."""
    chunk = spec.chunks[spec.append_dimension]
    if spec.inner_chunks is not None:
        inner = spec.inner_chunks.get(spec.append_dimension)
        return inner if inner is not None and 0 < inner < chunk else None
    return chunk // DEFAULT_INNER_DIVISOR if chunk % DEFAULT_INNER_DIVISOR == 0 else None


def read_state(store: Any, group: str, dimension: str) -> GroupState:
    import zarr

    try:
        node = zarr.open_group(store, path=group, mode="r")
    except FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError:
        return GroupState(False)
    ours = node.attrs.get(ATTRIBUTE)
    settings = ours.get("materialize") if isinstance(ours, dict) else None
    if not isinstance(settings, dict):
        raise ForeignGroupError(
            f"group {group!r} exists and was not written by materialized ingest: choose another "
            "grouping.template or store"
        )
    grid = TimeGrid(int(settings["origin_ns"]), int(settings["interval_ns"]))
    time_array = node[dimension]
    assert isinstance(time_array, zarr.Array)
    axes: dict[str, set[object]] = {}
    variables: set[str] = set()
    for name, member in node.members():
        if not isinstance(member, zarr.Array):
            continue
        dims = dimension_names(member)
        if name != dimension and dims == (name,):
            axes[name] = set(np.asarray(member[:]).tolist())
        elif dims[:1] == (dimension,) and name != dimension:
            variables.add(name)
    return GroupState(
        True,
        grid,
        int(time_array.shape[0]),
        int(settings["chunk"]),
        int(settings["inner"]),
        axes,
        variables,
    )


def dimension_names(array: Any) -> tuple[str, ...]:
    return tuple(str(d) for d in getattr(array.metadata, "dimension_names", None) or ())


def compressors(encoding: EncodingSpec, itemsize: int) -> list[Any]:
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
    from zarr.codecs.numcodecs import Shuffle

    shuffle = [Shuffle(elementsize=itemsize)] if encoding.shuffle and itemsize > 1 else []
    if encoding.codec == Codec.ZSTD:
        return [*shuffle, ZstdCodec(level=encoding.level)]
    if encoding.codec == Codec.GZIP:
        return [*shuffle, GzipCodec(level=encoding.level)]
    if encoding.codec == Codec.LZ4:
        mode: Literal["shuffle", "noshuffle"] = "shuffle" if encoding.shuffle else "noshuffle"
        return [BloscCodec(cname="lz4", clevel=encoding.level, shuffle=mode, typesize=itemsize)]
    return [*shuffle]


def create_group(
    store: Any,
    group: str,
    axes_template: Any,
    sample: Any,
    spec: MaterializeSpec,
    grid: TimeGrid,
    reader: str,
) -> GroupState:
    """Write the group's metadata and coordinates with zero epochs; :func:`grow` sizes it."""
    import xarray as xr

    dimension = spec.append_dimension
    template = axes_template.copy()
    for name, variable in sample.data_vars.items():
        if dimension not in variable.dims:
            continue
        shape = tuple(0 if d == dimension else template.sizes.get(d, sample.sizes[d]) for d in variable.dims)
        template[name] = xr.Variable(variable.dims, np.empty(shape, variable.dtype), variable.attrs)
    template = template.transpose(dimension, ...)
    template[dimension] = xr.Variable((dimension,), np.empty(0, "datetime64[ns]"), sample[dimension].attrs)
    chunk = spec.chunks[dimension]
    inner = inner_length(spec)
    encoding: dict[str, dict[str, Any]] = {
        dimension: {
            "units": EPOCH_UNITS,
            "dtype": "int64",
            "calendar": "proleptic_gregorian",
            "chunks": (chunk,),
        }
    }
    for name, variable in template.data_vars.items():
        object_shape = tuple(
            chunk if d == dimension else _size(spec.chunks.get(str(d), -1), template.sizes[d])
            for d in variable.dims
        )
        settings: dict[str, Any] = {"compressors": compressors(spec.encoding, variable.dtype.itemsize)}
        if inner is not None:
            inner_shape = tuple(
                inner if d == dimension else _inner_size(spec, str(d), object_shape[i])
                for i, d in enumerate(variable.dims)
            )
            settings |= {"shards": object_shape, "chunks": inner_shape}
        else:
            settings["chunks"] = object_shape
        if "_FillValue" in variable.attrs:
            # The array's fill value, not a CF mask: read back, LLI is int8 with -1 where a
            # signal was not seen, as the reader gives it, not floats with NaN.
            settings["fill_value"] = variable.attrs.pop("_FillValue")
        encoding[str(name)] = settings
    template.attrs = {k: v for k, v in sample.attrs.items() if k not in VOLATILE_ATTRIBUTES}
    template.attrs[ATTRIBUTE] = {
        "materialize": {
            "origin": format_time(grid.origin_ns),
            "origin_ns": grid.origin_ns,
            "interval_ns": grid.interval_ns,
            "dimension": dimension,
            "chunk": chunk,
            "inner": inner or chunk,
            "reader": reader,
        }
    }
    template.to_zarr(store, group=group, mode="w-", encoding=encoding, zarr_format=3, consolidated=False)
    axes = {
        str(d): set(np.asarray(template[d].values).tolist())
        for d in template.dims
        if d != dimension and d in template.coords
    }
    return GroupState(True, grid, 0, chunk, inner or chunk, axes, {str(n) for n in template.data_vars})


def _size(size: int, length: int) -> int:
    return length if size == -1 else max(1, min(size, length))


def _inner_size(spec: MaterializeSpec, dim: str, object_size: int) -> int:
    inner = (spec.inner_chunks or {}).get(dim, -1)
    return object_size if inner == -1 or object_size % inner else inner


def grow(store: Any, group: str, state: GroupState, length: int, dimension: str) -> None:
    """Lengthen every array along the time axis to ``length`` and write the new epochs' times
    (the grid's, whether or not a file fills them: missing epochs read as missing values)."""
    import zarr

    if length <= state.length:
        return
    assert state.grid is not None
    node = zarr.open_group(store, path=group, mode="r+")
    for _, member in node.members():
        if isinstance(member, zarr.Array) and dimension_names(member)[:1] == (dimension,):
            member.resize((length, *member.shape[1:]))
    time_array = node[dimension]
    assert isinstance(time_array, zarr.Array)
    time_array[state.length : length] = state.grid.times(state.length, length)
    state.length = length
