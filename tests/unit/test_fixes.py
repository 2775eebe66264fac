import numpy as np
import pytest
import xarray as xr

from icechunk_operator.engine.fixes import (
    add_missing_ismip6_grid,
    fix_time_units,
    normalize_time_units,
    resolve_fix,
)


@pytest.mark.parametrize(
    ("units", "fixed"),
    [
        ("days since 01-01-2015", "days since 2015-01-01"),
        ("days since 2015-1-0", "days since 2015-01-01"),
        ("days since 2015-01-01 00:00:00", "days since 2015-01-01 00:00:00"),
        ("seconds since 31-12-1999", "seconds since 1999-12-31"),
    ],
)
def test_time_units_are_normalized(units: str, fixed: str) -> None:
    assert normalize_time_units(units) == fixed


def test_unit_typo_and_missing_calendar() -> None:
    ds = xr.Dataset(coords={"time": ("time", [0.0, 365.0], {"unit": "days since 2015-1-0"})})
    fixed = fix_time_units(ds)
    assert fixed["time"].attrs == {"units": "days since 2015-01-01", "calendar": "standard"}
    assert ds["time"].attrs == {"unit": "days since 2015-1-0"}  # the input is left alone
    assert xr.decode_cf(fixed)["time"].dt.year.values.tolist() == [2015, 2016]


@pytest.mark.parametrize(("size", "step_km"), [(191, 32), (761, 8)])
def test_missing_grid_is_the_ismip6_grid(size: int, step_km: int) -> None:
    ds = xr.Dataset({"v": (("y", "x"), np.zeros((size, size)))})
    fixed = add_missing_ismip6_grid(ds)
    assert fixed["x"].values[0] == -3_040_000 and fixed["x"].values[-1] == 3_040_000
    assert fixed["x"].values[1] - fixed["x"].values[0] == step_km * 1000


def test_other_grids_are_left_alone() -> None:
    ds = xr.Dataset({"v": (("y", "x"), np.zeros((10, 10)))})
    assert "x" not in add_missing_ismip6_grid(ds).variables


def test_user_fix_by_import_path() -> None:
    assert resolve_fix("icechunk_operator.engine.fixes:ismip6").__name__ == "ismip6"
    with pytest.raises(ValueError, match="cannot import"):
        resolve_fix("no.such.module:fix")


def test_api_lists_exactly_the_engine_builtin_fixes() -> None:
    from icechunk_operator.api.batch import BUILTIN_FIX_NAMES
    from icechunk_operator.engine.fixes import BUILTIN_FIXES

    assert set(BUILTIN_FIX_NAMES) == set(BUILTIN_FIXES)
