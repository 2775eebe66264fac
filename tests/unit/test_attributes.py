"""Non-finite attribute values as strict JSON holds them, and the CF attributes refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icechunk_operator.engine.attributes import (
    check_decodable,
    check_strict_json,
    decode_non_finite,
    json_attributes,
    json_value,
)
from icechunk_operator.engine.file_errors import InvalidMetadataError, UnstorableAttributeError


def test_non_finite_numbers_become_zarr_v3_strings_in_scalars_arrays_and_nested_lists() -> None:
    attrs = {
        "a": np.float32("nan"),
        "b": np.array([np.inf, -np.inf, 1.5], dtype="f4"),
        "c": [[float("nan")], 2],
        "d": np.int64(3),
        "e": "text",
    }
    encoded = json_attributes(attrs)
    assert encoded == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity", 1.5],
        "c": [["NaN"], 2],
        "d": 3,
        "e": "text",
    }
    json.dumps(encoded, allow_nan=False)  # strict JSON


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8))
def test_decoding_gives_the_numbers_back(values: list[float]) -> None:
    back = decode_non_finite(json_value(values))
    assert len(back) == len(values)
    for original, decoded in zip(values, back, strict=True):
        assert (math.isnan(original) and math.isnan(decoded)) or original == decoded


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        ({"scale_factor": np.float32("nan")}, "scale_factor = nan"),
        ({"add_offset": float("-inf")}, "add_offset = -inf"),
        ({"missing_value": np.array([np.nan, np.inf])}, "missing_value = inf"),
        ({"_FillValue": -math.inf}, "_FillValue = -inf"),
        ({"missing_value": np.float32("nan"), "valid_max": math.inf, "_FILLVALUE": math.nan}, None),
        ({"_FillValue": "AAAAAAAA8P8="}, None),  # base64 (the parsers' own encoding) holds -inf
    ],
)
def test_cf_attributes_readers_compute_with_must_stay_numbers(
    attrs: dict[str, object], refused: str | None
) -> None:
    if refused is None:
        check_decodable("v", attrs)
        return
    with pytest.raises(UnstorableAttributeError, match=refused) as error:
        check_decodable("v", attrs)
    assert "variable 'v'" in str(error.value)


def test_a_document_with_a_bare_nan_is_refused_naming_its_key() -> None:
    check_strict_json("g/zarr.json", b'{"a": "NaN"}')
    with pytest.raises(InvalidMetadataError, match=r"g/v/zarr\.json: the document is not strict JSON"):
        check_strict_json("g/v/zarr.json", b'{"a": NaN}')
    with pytest.raises(InvalidMetadataError):
        check_strict_json("g/zarr.json", b'{"a": -Infinity}')
