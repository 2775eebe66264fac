"""Packed variables (CF ``scale_factor``/``add_offset``) that read back in the source's dtype.

xarray unpacks an int16 variable with float32 ``scale_factor`` and ``add_offset`` to float32,
choosing the dtype from the attributes' types. Zarr attributes are JSON, whose numbers are all
float64, so the same variable read from a store came back as float64: twice the memory, and
"equal to the source" checks failed on the dtype.

Where that would happen, the unpacking moves out of the attributes into the array's codecs:
the array's data type becomes the dtype xarray gives for the source, and a
``numcodecs.fixedscaleoffset`` codec (shipped with every zarr-python 3) unpacks the stored
integers. ``_FillValue`` and ``missing_value`` move to the unpacked values, so xarray masks the
same elements. The codec unpacks in float64 and rounds once, so a value can differ from xarray's
own float32 unpacking of the source (which rounds twice, after the multiply and after the add)
by that one float32 rounding at the terms' magnitude; the dtype and the masked elements are the
same.

Left as they were (xarray then unpacks to float64, as it always has for Zarr): packed time
variables (xarray decodes those itself), integers wider than 16 bits (float32 cannot hold them
exactly, so a mask could catch a neighbour of the fill value), fill values whose unpacked value
a neighbouring integer shares, and variables a reader already unpacks to the JSON dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

PACKING_KEYS = ("scale_factor", "add_offset")


def source_unpacked_dtype(raw: np.dtype, attrs: Mapping[str, Any]) -> np.dtype:
    """The dtype xarray's CF decoder unpacks ``raw`` to, given typed (numpy) attributes.

    xarray's own rule, called rather than copied so the two never drift (a test compares with
    xarray reading the source file)."""
    from xarray.coding.variables import _choose_float_dtype

    packing = {k: attrs[k] for k in PACKING_KEYS if attrs.get(k) is not None}
    return np.dtype(_choose_float_dtype(raw, packing))


def _as_json_numbers(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float(attrs[k]) for k in PACKING_KEYS if attrs.get(k) is not None}


@dataclasses.dataclass(frozen=True)
class Unpacking:
    """``raw / scale + offset``, rounded once to ``dtype``: what the codec computes."""

    raw: np.dtype
    dtype: np.dtype
    scale: float
    offset: float

    def apply(self, values: Any) -> np.ndarray:
        stored = np.asarray(values).astype(self.raw)
        return np.asarray((stored / self.scale) + self.offset).astype(self.dtype)

    def codec(self) -> Any:
        from zarr.codecs.numcodecs import FixedScaleOffset

        return FixedScaleOffset(
            offset=self.offset, scale=self.scale, dtype=self.dtype.str, astype=self.raw.str
        )

    def unique(self, fill: int) -> bool:
        """True when no neighbour of ``fill`` unpacks to the same value (the mapping is
        monotonic, so only neighbours can collide)."""
        info = np.iinfo(self.raw)
        around = [v for v in (fill - 1, fill, fill + 1) if info.min <= v <= info.max]
        unpacked = self.apply(around)
        return len(set(unpacked.tolist())) == len(around)


def plan_unpacking(raw: np.dtype, attrs: Mapping[str, Any]) -> Unpacking | None:
    """The unpacking to move into the codecs, or None to leave the variable as it is."""
    from xarray.coding.variables import _is_time_like

    if not any(attrs.get(k) is not None for k in PACKING_KEYS):
        return None
    if raw.kind not in "iu" or raw.itemsize > 2 or _is_time_like(attrs.get("units")):  # type: ignore[no-untyped-call]
        return None
    wanted = source_unpacked_dtype(raw, attrs)
    if wanted == source_unpacked_dtype(raw, _as_json_numbers(attrs)):
        return None  # JSON's float64 gives the same dtype: CF attributes stay as they are
    scale_factor = float(attrs.get("scale_factor", 1.0))
    offset = float(attrs.get("add_offset", 0.0))
    if scale_factor == 0 or not (math.isfinite(scale_factor) and math.isfinite(offset)):
        return None
    return Unpacking(raw, wanted, 1.0 / scale_factor, offset)


def _fills(attrs: Mapping[str, Any], key: str) -> list[int] | None:
    value = attrs.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return None  # not an integer of the packed type: leave the variable alone
    return [int(v) for v in values]


def unpack_in_codecs(array: Any) -> Any:
    """``array`` (a ManifestArray) with its unpacking moved into its codecs, where
    :func:`plan_unpacking` says so; otherwise ``array`` itself."""
    from virtualizarr.manifests import ManifestArray
    from xarray.backends.zarr import FillValueCoder
    from zarr.core.dtype import parse_dtype

    metadata = array.metadata
    attrs = dict(metadata.attributes)
    raw = np.dtype(metadata.data_type.to_native_dtype())
    unpacking = plan_unpacking(raw, attrs)
    if unpacking is None:
        return array
    fill_values, missing_values = _fills(attrs, "_FillValue"), _fills(attrs, "missing_value")
    if fill_values is None or missing_values is None:
        return array
    if not all(unpacking.unique(v) for v in fill_values + missing_values):
        return array
    for key in PACKING_KEYS:
        attrs.pop(key, None)
    if fill_values:
        attrs["_FillValue"] = FillValueCoder.encode(float(unpacking.apply(fill_values)[0]), unpacking.dtype)
    if missing_values:
        unpacked = unpacking.apply(missing_values).tolist()
        attrs["missing_value"] = unpacked if isinstance(attrs["missing_value"], list | tuple) else unpacked[0]
    stored_fill = metadata.fill_value if metadata.fill_value is not None else 0
    new_metadata = dataclasses.replace(
        metadata,
        data_type=parse_dtype(unpacking.dtype, zarr_format=3),
        fill_value=unpacking.dtype.type(unpacking.apply([int(stored_fill)])[0]),
        codecs=(unpacking.codec(), *metadata.codecs),
        attributes=attrs,
    )
    return ManifestArray(metadata=new_metadata, chunkmanifest=array.manifest)
