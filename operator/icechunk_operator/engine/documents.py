"""A virtual Dataset -> the Zarr documents and reference arrays of one group.

This is the part of ``vds.vz.to_icechunk`` that needs no store: it runs on the Dask workers, so
the single writer only has to put finished bytes and reference arrays into the session. The
metadata documents are built with the same VirtualiZarr and zarr helpers as ``to_icechunk``
(tests compare both byte for byte); loadable variables become small native chunks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from icechunk_operator.engine.attributes import check_strict_json, json_attributes, json_value
from icechunk_operator.engine.planning import WriteMode
from icechunk_operator.engine.records import SourceFile


@dataclass(frozen=True)
class ArrayRefs:
    """The virtual references of one array that point into one source file."""

    array: str
    grid_shape: tuple[int, ...]
    locations: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    checksum: Any  # ETag string or datetime: Icechunk refuses reads once the object changes


@dataclass
class GroupPayload:
    """Everything the writer needs for one group, built off the writer's process."""

    group: str
    mode: WriteMode
    sources: tuple[SourceFile, ...]
    documents: dict[str, bytes] = field(default_factory=dict)  # keys relative to the group
    refs: list[ArrayRefs] = field(default_factory=list)
    dataset: xr.Dataset | None = None  # APPEND goes through VirtualiZarr's own append path
    dimension: str | None = None


def group_document(attrs: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()


def build_payload(
    group: str,
    ds: xr.Dataset,
    sources: tuple[SourceFile, ...],
    mode: WriteMode,
    dimension: str | None = None,
) -> GroupPayload:
    payload = GroupPayload(group, mode, sources, dimension=dimension)
    if mode == WriteMode.APPEND:
        payload.dataset = _json_safe(ds)
        return payload
    from virtualizarr.manifests import ManifestArray

    checksums = {s.url: s.checksum for s in sources}
    for name, variable in ds.variables.items():
        if isinstance(variable.data, ManifestArray):
            payload.documents[f"{name}/zarr.json"] = _virtual_array_document(variable)
            payload.refs.extend(_array_refs(str(name), variable.data, checksums, payload.documents))
        else:
            payload.documents.update(_loaded_array_documents(str(name), variable))
    attrs = json_attributes(ds.attrs)
    if ds.coords:
        attrs["coordinates"] = " ".join(str(c) for c in ds.coords)
    payload.documents["zarr.json"] = group_document(attrs)
    for key, document in payload.documents.items():
        if key.endswith("zarr.json"):
            check_strict_json(f"{group}/{key}", document)
    return payload


def _json_safe(ds: xr.Dataset) -> xr.Dataset:
    """The dataset with attributes strict JSON holds, for VirtualiZarr's own append path."""
    safe = ds.copy()
    safe.attrs = json_attributes(ds.attrs)
    for name, variable in safe.variables.items():
        variable.attrs = json_attributes(ds.variables[name].attrs)
        variable.encoding = {
            k: json_value(v) if isinstance(v, float) else v for k, v in ds.variables[name].encoding.items()
        }
    return safe


def _array_attributes(variable: xr.Variable) -> dict[str, Any]:
    """Attributes as ``to_icechunk`` writes them (xarray attrs plus CF encoding keys), except
    that non-finite numbers are strings (:mod:`~icechunk_operator.engine.attributes`)."""
    from virtualizarr.writers.icechunk import ENCODING_KEYS

    attrs = json_attributes(variable.attrs)
    for key, value in variable.encoding.items():
        if key in ENCODING_KEYS:
            attrs[key] = json_value(value)
    return attrs


def _virtual_array_document(variable: xr.Variable) -> bytes:
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    metadata = variable.data.metadata
    metadata = dataclasses.replace(
        metadata,
        dimension_names=tuple(str(d) for d in variable.dims),
        attributes=_array_attributes(variable),
        chunk_key_encoding=DefaultChunkKeyEncoding(separator="/"),
    )
    return _metadata_bytes(metadata)


def _metadata_bytes(metadata: Any) -> bytes:
    from zarr.core.buffer import default_buffer_prototype

    return bytes(metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())


def _loaded_array_documents(name: str, variable: xr.Variable) -> dict[str, bytes]:
    """A loaded variable as one uncompressed little-endian chunk with the source's attributes.

    An empty variable (an unlimited dimension with no records yet) has no chunk at all: Zarr
    allows no zero-length chunk edge, and Icechunk refuses a zero-byte chunk, which failed the
    whole commit."""
    values = np.asarray(variable.values)
    if values.dtype.kind in "OUSM":
        raise TypeError(f"variable {name!r}: cannot store loaded dtype {values.dtype} natively")
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    shape = list(values.shape)
    document = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": str(np.dtype(values.dtype.str.lstrip("<>|="))) if values.dtype.kind != "b" else "bool",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, n) for n in shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _zero_fill(values.dtype),
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": _array_attributes(variable),
        "dimension_names": [str(d) for d in variable.dims],
    }
    documents = {f"{name}/zarr.json": json.dumps(document).encode()}
    if values.size:
        chunk_key = "c" if not shape else "c/" + "/".join("0" for _ in shape)
        documents[f"{name}/{chunk_key}"] = np.ascontiguousarray(little).tobytes()
    return documents


def _zero_fill(dtype: np.dtype) -> Any:
    if dtype.kind == "b":
        return False
    if dtype.kind == "f":
        return 0.0
    return 0


def _array_refs(
    name: str, array: Any, checksums: dict[str, Any], documents: dict[str, bytes]
) -> list[ArrayRefs]:
    """Reference arrays per source file, so each file's references carry its own checksum."""
    manifest = array.manifest
    paths = manifest._paths.ravel()
    offsets = manifest._offsets.ravel().astype(np.uint64)
    lengths = manifest._lengths.ravel().astype(np.uint64)
    grid = tuple(int(n) for n in manifest.shape_chunk_grid)
    if manifest._inlined:
        from virtualizarr.manifests.manifest import INLINED_CHUNK_PATH

        for index, data in manifest._inlined.items():
            documents[f"{name}/c/" + "/".join(str(i) for i in index)] = bytes(data)
        paths = np.where(paths == INLINED_CHUNK_PATH, "", paths)
    refs = []
    for url in sorted({str(p) for p in np.unique(paths) if p}):
        mine = paths == url
        locations = np.where(mine, paths, "").tolist()
        refs.append(ArrayRefs(name, grid, locations, offsets, lengths, checksums.get(url)))
    return refs
