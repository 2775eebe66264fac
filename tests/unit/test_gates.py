"""The pure parts of the validation gates: step checks, period bucketing and the messages."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icechunk_operator.api.batch import FilesPerPeriodGate, TimeContinuityGate
from icechunk_operator.engine.gates import (
    PeriodCount,
    continuity_failures,
    decode_times,
    describe_period,
    duration_ns,
    find_bad_steps,
    format_width,
    group_periods,
    incomplete_periods,
    period_failures,
    required_files,
)
from icechunk_operator.engine.materialize.grid import TimeGrid
from icechunk_operator.engine.materialize.registry import RegistryEntry

H = 3600 * 10**9
QUARTER = H // 4
DAY = 24 * H
JAN_1_2025 = 1_735_689_600 * 10**9


def label(times: list[int]) -> Callable[[int], str]:
    return lambda i: f"t{times[i] // H}"


def test_durations_and_widths() -> None:
    assert [duration_ns(t) for t in ("30s", "15m", "1h", "1d")] == [30 * 10**9, QUARTER, H, DAY]
    assert [format_width(w) for w in (27 * H, 2 * DAY, 90 * 60 * 10**9, 1_500_000_000)] == [
        "27h",
        "2d",
        "90m",
        "1.5s",
    ]


def test_rising_steps_within_the_gap_pass_and_the_gap_itself_is_allowed() -> None:
    found = find_bad_steps(np.array([0, H, 2 * H, 3 * H]), H)
    assert found.not_rising.size == 0 and found.too_wide.size == 0


def test_repeats_reversals_and_gaps_are_found_where_they_are() -> None:
    found = find_bad_steps(np.array([0, H, H, 0, 5 * H, 9 * H]), 2 * H)
    assert found.not_rising.tolist() == [1, 2] and found.too_wide.tolist() == [3, 4]


@given(st.lists(st.integers(-(10**15), 10**15), max_size=50), st.integers(1, 10**14))
def test_bad_steps_match_a_plain_loop(times: list[int], gap: int) -> None:
    found = find_bad_steps(np.array(times, dtype=np.int64), gap)
    pairs = list(pairwise(times))
    assert found.not_rising.tolist() == [i for i, (a, b) in enumerate(pairs) if b <= a]
    assert found.too_wide.tolist() == [i for i, (a, b) in enumerate(pairs) if b - a > gap]


def test_continuity_messages_name_the_group_the_times_and_the_count() -> None:
    gate = TimeContinuityGate(dimension="epoch", max_gap="1d")
    times = [0, 21 * H, 48 * H, 48 * H, 72 * H, 200 * H]
    messages = continuity_failures("sites/a", "epoch", np.array(times), label(times), gate)
    assert messages == [
        "timeContinuity: sites/a: 'epoch' not rising: t48 appears twice (index 2 and 3)",
        "timeContinuity: sites/a: time steps from t21 to t48 (27h) wider than maxGap 1d (and 1 more)",
    ]
    back = [0, 5 * H, 2 * H]
    (message,) = continuity_failures("g", "time", np.array(back), label(back), gate)
    assert message == "timeContinuity: g: 'time' not rising: steps back from t5 to t2 (index 2)"


def test_cf_times_decode_as_xarray_decodes_them() -> None:
    seconds = decode_times("epoch", np.array([0.0, 10800.0]), {"units": "seconds since 2024-01-01"})
    assert not isinstance(seconds, str)
    times, name = seconds
    assert np.diff(times).tolist() == [3 * H] and name(1) == "2024-01-01T03:00"

    nanoseconds = decode_times(
        "epoch", np.array([JAN_1_2025, JAN_1_2025 + 5 * 10**9]), {"units": "nanoseconds since 1970-01-01"}
    )
    assert not isinstance(nanoseconds, str)
    assert nanoseconds[1](1) == "2025-01-01T00:00:05"

    noleap = decode_times(
        "time", np.array([58.0, 59.0]), {"units": "days since 2015-01-01", "calendar": "noleap"}
    )
    assert not isinstance(noleap, str)
    assert np.diff(noleap[0]).tolist() == [DAY] and noleap[1](1) == "2015-03-01T00:00"  # no 29 February


def test_values_that_are_not_times_are_a_finding_not_a_crash() -> None:
    assert decode_times("time", np.array([1.0, 2.0]), {}) == "'time' holds float64 values, not CF times"
    missing = decode_times("time", np.array([0.0, np.nan]), {"units": "days since 2000-01-01"})
    assert missing == "'time' has 1 missing values (first at index 1)"
    broken = decode_times("time", np.array([0.0]), {"units": "fortnights since the flood"})
    assert isinstance(broken, str) and broken.startswith("'time' does not decode to times")


def hours(*quarters: int) -> list[int]:
    """First epochs of 15-minute files, by their quarter-hour number since 2025-01-01T00:00."""
    return [JAN_1_2025 + q * QUARTER for q in quarters]


def test_the_newest_period_is_open_and_not_judged() -> None:
    starts = hours(0, 1, 2, 3, 4)  # hour 01 has one file so far
    assert incomplete_periods(starts, starts[-1], starts, None, H, 4) == []


def test_a_period_the_run_wrote_into_is_judged() -> None:
    starts = hours(0, 1, 2, 4, 5, 6, 7, 8)
    assert incomplete_periods(starts, starts[-1], starts, None, H, 4) == [PeriodCount(JAN_1_2025, 3)]


def test_an_old_period_the_run_did_not_touch_is_not_judged_again() -> None:
    old = hours(0, 1, 2, 4, 5, 6, 7, 8)  # hour 00 was accepted short; hour 02 was still open
    new = hours(9, 10, 11, 12)  # closes hour 02, opens hour 03
    assert incomplete_periods(old + new, new[-1], new, old[-1], H, 4) == []
    corrected = hours(1)  # a later run that writes into hour 00 again has it judged
    got = incomplete_periods(old + new, new[-1], corrected, new[-1], H, 4)
    assert got == [PeriodCount(JAN_1_2025, 3)]


def test_a_period_with_no_file_between_old_and_new_data_is_caught() -> None:
    old = hours(0, 1, 2, 3)
    new = hours(8, 9, 10, 11, 12)  # hour 01 missing, hour 02 complete, hour 03 open
    got = incomplete_periods(old + new, new[-1], new, old[-1], H, 4)
    assert got == [PeriodCount(JAN_1_2025 + H, 0)]


def test_periods_are_aligned_to_utc_midnight() -> None:
    starts = [JAN_1_2025 - QUARTER, JAN_1_2025, JAN_1_2025 + DAY]
    got = incomplete_periods(starts, starts[-1], starts, None, DAY, 2)
    assert got == [PeriodCount(JAN_1_2025 - DAY, 1), PeriodCount(JAN_1_2025, 1)]


def test_the_fraction_rounds_up_to_whole_files() -> None:
    assert required_files(FilesPerPeriodGate(period="1d", expected=96, min_fraction=0.9)) == 87
    assert required_files(FilesPerPeriodGate(period="1h", expected=4, min_fraction=0.75)) == 3
    assert required_files(FilesPerPeriodGate(period="1h", expected=10, min_fraction=0.7)) == 7


def test_period_messages() -> None:
    gate = FilesPerPeriodGate(period="1h", expected=4)
    assert period_failures("ROSR/observations", gate, [PeriodCount(JAN_1_2025, 3)]) == [
        "filesPerPeriod: ROSR/observations 2025-01-01T00:00Z..01:00Z holds 3 of 4 files (75% < 100%)"
    ]
    daily = FilesPerPeriodGate(period="1d", expected=96, min_fraction=0.9)
    assert period_failures("g", daily, [PeriodCount(JAN_1_2025, 80)]) == [
        "filesPerPeriod: g 2025-01-01T00:00Z..2025-01-02T00:00Z holds 80 of 96 files (83.3% < 90%)"
    ]
    assert describe_period(JAN_1_2025 + 23 * H + 30 * 60 * 10**9, 30 * 10**9) == (
        "2025-01-01T23:30Z..23:30:30Z"
    )


GRID = TimeGrid(JAN_1_2025, 5 * 10**9)  # 5 s epochs: a 15-minute file fills 180


def entry(url: str, quarter: int, epochs: int = 180, removed: bool = False) -> RegistryEntry:
    first = quarter * 180
    return RegistryEntry("g", url, f"d-{url}", "p", first, first + epochs - 1, epochs, "b", "t", removed)


def test_registry_entries_count_by_first_epoch_and_duplicates_do_not_count() -> None:
    files = [entry(f"q{q}", q) for q in (0, 1, 2, 4)]
    duplicate = entry("q1-again", -1, 0)  # the registry's record of content already in the store
    got = group_periods(GRID, [*files, duplicate], {}, H, 4)
    assert got == [PeriodCount(JAN_1_2025, 3)]


def test_unchanged_entries_are_not_touched_but_a_removal_is() -> None:
    hour0 = [entry(f"q{q}", q) for q in range(4)]
    hour1 = [entry(f"q{q}", q) for q in (4, 5)]
    base = {e.url: e for e in hour0 + hour1}
    new = [entry("q8", 8)]  # hour 02 opens, closing hour 01 (2 of 4)
    assert group_periods(GRID, hour0 + hour1 + new, base, H, 4) == [PeriodCount(JAN_1_2025 + H, 2)]
    gone = entry("q2", 2, removed=True)  # hour 00 loses a file: judged although nothing was added
    staged = [*hour0[:2], gone, hour0[3], *hour1, *new]
    assert PeriodCount(JAN_1_2025, 3) in group_periods(GRID, staged, base, H, 4)


@pytest.mark.parametrize("text", ["1h", "15m", "30s", "2d"])
def test_gate_durations_parse_with_the_shared_parser(text: str) -> None:
    assert duration_ns(text) > 0
