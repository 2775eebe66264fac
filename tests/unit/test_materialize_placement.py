"""The pure part of materialized ingest: the time grid, placing files, splitting by object."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatchSpec, MaterializeSpec, OnOverlap
from icechunk_operator.engine.materialize.grid import (
    NS_PER_DAY,
    SPAN_DASH,
    BeforeOriginError,
    DuplicateEpochError,
    OffGridError,
    TimeGrid,
    describe_span,
    parse_duration,
)
from icechunk_operator.engine.materialize.layout import GroupState, inner_length
from icechunk_operator.engine.materialize.placement import new_grid, place_group
from icechunk_operator.engine.materialize.registry import RegistryEntry
from icechunk_operator.engine.materialize.run import commit_message, object_writes
from icechunk_operator.engine.materialize.tasks import FileSummary

S = 1_000_000_000
DAY0 = 20089 * NS_PER_DAY  # 2025-01-01


def summary(url: str, first: int, count: int, step: int = 5, digest: str | None = None) -> FileSummary:
    times = DAY0 + (first + np.arange(count, dtype=np.int64) * step) * S
    return FileSummary(
        url, "g", digest or url, times, {"sid": np.array(["a", "b"])}, {"SNR": (("epoch", "sid"), "f4")}, 0.1
    )


def place(summaries, registry=None, on_overlap=OnOverlap.SKIP, length=0):  # type: ignore[no-untyped-def]
    grid = TimeGrid(DAY0, 5 * S)
    return place_group(
        "g",
        summaries,
        grid,
        length,
        registry or {},
        on_overlap,
        {"sid": {"a", "b"}},
        {"SNR"},
        False,
        "b",
        "now",
    )


def test_the_grid_places_epochs_by_time_and_refuses_what_it_cannot_place() -> None:
    grid = TimeGrid(DAY0, 5 * S)
    assert grid.indices(DAY0 + np.array([10, 0, 5]) * S).tolist() == [2, 0, 1]
    assert grid.indices(np.array([DAY0 + 5 * S + S // 100])).tolist() == [1]  # jitter within 10 %
    with pytest.raises(BeforeOriginError, match="before the group's first epoch 2025-01-01T00:00:00"):
        grid.indices(np.array([DAY0 - 5 * S]))
    with pytest.raises(OffGridError, match="off the 5 s grid"):
        grid.indices(np.array([DAY0 + 2 * S]))
    with pytest.raises(DuplicateEpochError, match="more than once"):
        grid.indices(np.array([DAY0, DAY0]))


def test_durations_and_spans_read_as_people_write_them() -> None:
    assert parse_duration("2.5s") == 2_500_000_000 and parse_duration("100ms") == 100_000_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 s")
    assert describe_span(DAY0, DAY0 + 6 * 3600 * S) == f"2025-001 00:00{SPAN_DASH}06:00"
    assert describe_span(DAY0, DAY0 + NS_PER_DAY) == f"2025-001 00:00{SPAN_DASH}24:00"
    assert describe_span(DAY0, DAY0 + NS_PER_DAY + 3600 * S) == f"2025-001 00:00{SPAN_DASH}2025-002 01:00"


def test_a_new_grid_starts_at_the_day_of_the_earliest_epoch_with_the_common_step() -> None:
    grid = new_grid([summary("late", 7200, 10), summary("early", 900, 10)], None, None)
    assert (grid.origin_ns, grid.interval_ns) == (DAY0, 5 * S)
    assert new_grid([summary("x", 900, 1)], 30 * S, DAY0 - NS_PER_DAY).origin_ns == DAY0 - NS_PER_DAY


def test_files_land_where_their_times_say_whatever_the_order() -> None:
    placed = place([summary("b", 900, 180), summary("a", 0, 180)])
    assert [p.url for p in placed.placed] == ["a", "b"]
    assert [(p.entry.first, p.entry.last) for p in placed.placed] == [(0, 179), (180, 359)]
    assert placed.length == 360


def test_overlap_is_skipped_replaced_or_refused() -> None:
    known = {"a": RegistryEntry("g", "a", "a", "", 0, 179, 180, "b0", "then")}
    half = summary("c", 450, 180)  # epochs 90..269: 90 already in the store
    skipped = place([half], known)
    assert skipped.placed[0].entry.epochs == 90 and skipped.placed[0].placement.positions[0] == 180
    replaced = place([half], known, OnOverlap.REPLACE)
    assert replaced.placed[0].entry.epochs == 180
    refused = place([half], known, OnOverlap.FAIL)
    assert [f.error_class for f in refused.failures] == ["OverlapError"] and not refused.placed
    assert "from a" in refused.failures[0].message


def test_known_content_is_a_duplicate_and_a_corrected_file_takes_back_its_epochs() -> None:
    known = {"a": RegistryEntry("g", "a", "hash-a", "", 0, 179, 180, "b0", "then")}
    again = place([summary("copy-of-a", 0, 180, digest="hash-a")], known)
    assert again.duplicates == ["copy-of-a"] and not again.placed
    corrected = place([summary("a", 0, 100, digest="hash-a2")], known)
    assert corrected.placed[0].clears == ((0, 180),) and corrected.placed[0].entry.epochs == 100


def test_unknown_labels_and_variables_fail_the_file_for_readers_that_do_not_drop_them() -> None:
    odd = summary("odd", 0, 2)
    odd = FileSummary(odd.url, "g", "d", odd.times, {"sid": np.array(["a", "zz"])}, odd.variables, 0.1)
    result = place([odd])
    assert [f.error_class for f in result.failures] == ["UnknownLabelsError"]


def test_objects_are_split_at_their_boundaries_so_no_two_tasks_write_one() -> None:
    placed = place([summary("a", 0, 180), summary("b", 900, 180)])
    state = GroupState(True, TimeGrid(DAY0, 5 * S), 360, 200, 50, {}, {"SNR"})
    writes = object_writes("g", placed, state, "epoch")
    assert [(w.start, w.stop) for w in writes] == [(0, 200), (200, 360)]
    assert [[(p.url, p.positions.size) for p in w.placements] for w in writes] == [
        [("a", 180), ("b", 20)],
        [("b", 160)],
    ]
    assert (
        commit_message("v1", {"g": placed}, {"g": state})
        == f"v1: Added 2025-001 00:00{SPAN_DASH}00:30, 2 files"
    )


def test_the_spec_refuses_what_cannot_work_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="innerChunks.epoch: 7 does not divide"):
        MaterializeSpec.model_validate({"innerChunks": {"epoch": 7}})
    with pytest.raises(ValidationError, match="give epoch"):
        MaterializeSpec.model_validate({"chunks": {"sid": -1}})
    with pytest.raises(ValidationError, match="neither a built-in reader"):
        MaterializeSpec.model_validate({"reader": "georinex"})
    with pytest.raises(ValidationError, match="exclude each other"):
        IngestBatchSpec.model_validate(
            {"store": "s", "source": {"prefix": "s3://b/"}, "materialize": {}, "virtualization": {}}
        )
    assert inner_length(MaterializeSpec()) == 720
    assert inner_length(MaterializeSpec.model_validate({"innerChunks": {}})) is None


def test_a_materialized_batch_survives_its_own_wire_form() -> None:
    from icechunk_operator.api import IngestBatch

    batch = IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": "b"},
            "spec": {"store": "s", "source": {"prefix": "s3://b/"}, "materialize": {}},
        }
    )
    wire = batch.to_api()
    assert "virtualization" not in wire["spec"]
    assert IngestBatch.model_validate(wire) == batch
