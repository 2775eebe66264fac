"""Which packed variables move their unpacking into the codecs, and that the codec's arithmetic
and the masks agree with xarray's CF decoding of the same integers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from icechunk_operator.engine.packing import plan_unpacking, source_unpacked_dtype

F32 = np.float32


@pytest.mark.parametrize(
    ("raw", "attrs", "moved"),
    [
        ("i2", {"scale_factor": F32(0.305), "add_offset": F32(10.0)}, True),
        ("i2", {"scale_factor": F32(0.01)}, True),
        ("u1", {"scale_factor": F32(0.5), "add_offset": F32(-3.0)}, True),
        ("i2", {"scale_factor": 0.305, "add_offset": 10.0}, False),  # float64: JSON keeps it
        ("i2", {"add_offset": F32(273.15)}, False),  # xarray gives float64 for an offset alone
        ("i4", {"scale_factor": F32(0.01)}, False),  # float32 cannot hold every int32
        ("f4", {"scale_factor": F32(2.0)}, False),
        ("i2", {"scale_factor": F32(1.0), "units": "days since 2000-01-01"}, False),  # a packed time
        ("i2", {}, False),
    ],
)
def test_only_what_json_would_widen_moves_into_the_codecs(
    raw: str, attrs: dict[str, object], moved: bool
) -> None:
    unpacking = plan_unpacking(np.dtype(raw), attrs)
    assert (unpacking is not None) == moved
    if unpacking is not None:
        assert unpacking.dtype == source_unpacked_dtype(np.dtype(raw), attrs) == np.float32


@pytest.mark.parametrize(("scale", "offset"), [(0.305, 10.0), (0.01, 273.15), (1e-4, -0.1), (0.002, 300.0)])
def test_the_codec_unpacks_within_a_float32_rounding_of_xarray_and_masks_the_same(
    scale: float, offset: float
) -> None:
    raw = np.arange(-32768, 32768, dtype="i2")
    attrs = {"scale_factor": F32(scale), "add_offset": F32(offset), "_FillValue": np.int16(-32767)}
    unpacking = plan_unpacking(raw.dtype, attrs)
    assert unpacking is not None
    expected = xr.conventions.decode_cf_variable("v", xr.Variable("x", raw, attrs)).values
    unpacked = unpacking.apply(raw)
    assert unpacked.dtype == expected.dtype == np.float32
    fill = unpacking.apply([-32767])[0]
    masked = np.where(unpacked == fill, np.nan, unpacked)
    np.testing.assert_array_equal(np.isnan(masked), np.isnan(expected))
    keep = ~np.isnan(expected)
    # Within float32 roundings at the terms' magnitude: xarray rounds after the multiply and after the
    # add, the codec once, so near zero (where the two terms cancel) ULPs of the result mislead.
    magnitude = np.maximum(
        np.abs(raw[keep] * F32(scale)), np.maximum(np.abs(expected[keep]), F32(abs(offset)))
    )
    bound = 2 * np.spacing(magnitude)
    assert np.all(np.abs(masked[keep] - expected[keep]) <= bound)
    assert np.mean(masked[keep] == expected[keep]) > 0.5
    assert unpacking.unique(-32767)
    assert unpacking.codec().to_dict()["configuration"]["astype"] == "<i2"
