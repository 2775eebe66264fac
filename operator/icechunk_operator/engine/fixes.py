"""Dataset fixes: built-in repairs of the ISMIP6 quirks, and user fixes by import path.

A fix takes the (partly virtual) xarray Dataset of one file and returns a corrected one. Fixes
touch attributes and small loaded coordinates only: virtual arrays are references, not data.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

import numpy as np
import xarray as xr

Fix = Callable[[xr.Dataset], xr.Dataset]

GRID_HALF_WIDTH_M = 3_040_000.0
ISMIP6_RESOLUTIONS_KM = (1, 2, 4, 8, 16, 32)

_DD_MM_YYYY = re.compile(r"^(?P<unit>\w+)\s+since\s+(?P<d>\d{1,2})-(?P<m>\d{1,2})-(?P<y>\d{4})(?P<rest>.*)$")
_YMD = re.compile(r"^(?P<unit>\w+)\s+since\s+(?P<y>-?\d{1,4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?P<rest>.*)$")


def fix_time_units(ds: xr.Dataset) -> xr.Dataset:
    """Repair time units: 'unit' typo, DD-MM-YYYY reference dates, day 0, missing calendar."""
    if "time" not in ds.variables:
        return ds
    attrs = dict(ds["time"].attrs)
    if "units" not in attrs and "unit" in attrs:
        attrs["units"] = attrs.pop("unit")
    units = attrs.get("units")
    if isinstance(units, str):
        attrs["units"] = normalize_time_units(units)
        attrs.setdefault("calendar", "standard")
    fixed = ds.copy()
    fixed.variables["time"].attrs = attrs
    return fixed


def normalize_time_units(units: str) -> str:
    """'days since 01-01-2015' -> 'days since 2015-01-01'; 'days since 2015-1-0' -> '...-01-01'."""
    text = units.strip()
    match = _DD_MM_YYYY.match(text)
    if match:
        text = f"{match['unit']} since {match['y']}-{match['m']}-{match['d']}{match['rest']}"
    match = _YMD.match(text)
    if match:
        month = max(1, int(match["m"]))
        day = max(1, int(match["d"]))
        year = match["y"]
        text = f"{match['unit']} since {year}-{month:02d}-{day:02d}{match['rest']}"
    return text


def add_missing_ismip6_grid(ds: xr.Dataset) -> xr.Dataset:
    """Give files without x/y the ISMIP6 polar stereographic grid (±3,040 km, 1 to 32 km)."""
    additions = {}
    for dim in ("x", "y"):
        if dim in ds.dims and dim not in ds.variables:
            size = ds.sizes[dim]
            resolution_m = 2 * GRID_HALF_WIDTH_M / (size - 1) if size > 1 else 0
            if round(resolution_m / 1000, 6) not in ISMIP6_RESOLUTIONS_KM:
                continue  # not the ISMIP6 regular grid: leave it alone rather than guess
            values = np.linspace(-GRID_HALF_WIDTH_M, GRID_HALF_WIDTH_M, size)
            additions[dim] = xr.Variable(
                (dim,), values, {"units": "m", "standard_name": f"projection_{dim}_coordinate"}
            )
    return ds.assign_coords(additions) if additions else ds


def ismip6(ds: xr.Dataset) -> xr.Dataset:
    return add_missing_ismip6_grid(fix_time_units(ds))


BUILTIN_FIXES: dict[str, Fix] = {
    "ismip6": ismip6,
    "time-units": fix_time_units,
    "ismip6-grid": add_missing_ismip6_grid,
}


def resolve_fix(name: str) -> Fix:
    """A built-in fix by name, or ``package.module:function`` imported on the worker."""
    if name in BUILTIN_FIXES:
        return BUILTIN_FIXES[name]
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"virtualization.fixes: cannot import {name!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"virtualization.fixes: {name!r} is not callable")
    return function  # type: ignore[no-any-return]
