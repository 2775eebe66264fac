"""Attributes as Zarr documents can hold them: strict JSON, and nothing xarray would read
differently from the source file.

NetCDF and HDF5 attributes may hold NaN and ±Infinity (``_FILLVALUE = nan``, ``valid_max = inf``);
JSON has no such numbers. zarr-python writes them as the bare words ``NaN`` and ``Infinity``,
which Python reads but Icechunk (strict JSON) refuses, so a single such attribute used to fail
the whole commit. Here they become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``:
the spelling Zarr v3 gives non-finite fill values, and reversible (:func:`decode_non_finite`).

A few attributes are read as numbers by xarray's CF decoder. There a string would change what
a reader gets, so a file whose ``scale_factor``/``add_offset`` is not finite, or whose
``missing_value``/``_FillValue`` is ±Infinity, is refused with a message naming the variable
(a NaN missing value masks nothing, so it is kept as ``"NaN"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from icechunk_operator.engine.file_errors import InvalidMetadataError, UnstorableAttributeError

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
#: Attributes xarray's CF decoder multiplies or adds with.
ARITHMETIC_KEYS = ("scale_factor", "add_offset")
#: Attributes xarray's CF decoder compares values with (a NaN among them matches nothing).
MASK_KEYS = ("missing_value", "_FillValue")


def json_value(value: Any) -> Any:
    """``value`` as strict JSON can hold it: numpy scalars and arrays as Python values,
    non-finite floats (anywhere in lists) as their strings."""
    if hasattr(value, "tolist"):  # numpy scalar or array
        value = value.tolist()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return value


def json_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): json_value(v) for k, v in attrs.items()}


def decode_non_finite(value: Any) -> Any:
    """The inverse of :func:`json_value` for readers that want the numbers back."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, list):
        return [decode_non_finite(v) for v in value]
    return value


def _numbers(value: Any) -> list[float]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [float(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


def check_decodable(variable: str, attrs: Mapping[str, Any]) -> None:
    """Refuse CF attributes whose non-finite values a Zarr reader could not decode as the
    source's reader does (see the module docstring)."""
    for key in ARITHMETIC_KEYS:
        bad = [v for v in _numbers(attrs.get(key)) if not math.isfinite(v)]
        if bad:
            raise UnstorableAttributeError(
                f"variable {variable!r}: {key} = {bad[0]} cannot unpack any value (readers would "
                f"get NaN or an error); fix the attribute with a virtualization.fixes function "
                f"or drop the variable (virtualization.dropVariables)"
            )
    for key in MASK_KEYS:
        if key == "_FillValue" and isinstance(attrs.get(key), str):
            continue  # already encoded by the parser (base64 of the float), which holds ±inf
        bad = [v for v in _numbers(attrs.get(key)) if math.isinf(v)]
        if bad:
            raise UnstorableAttributeError(
                f"variable {variable!r}: {key} = {bad[0]} cannot be stored as a number in Zarr's "
                f"JSON attributes, and as a string xarray would no longer mask those values; "
                f"replace it with a finite value or drop it with a virtualization.fixes function"
            )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_strict_json(key: str, document: bytes) -> None:
    """Refuse a ``zarr.json`` that is not strict JSON, before it leaves the worker: the store
    would refuse it at write time, in the single writer."""
    try:
        json.loads(document, parse_constant=_refuse_constant)
    except ValueError as error:
        raise InvalidMetadataError(f"{key}: the document is not strict JSON ({error})") from error
