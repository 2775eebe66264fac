from icechunk_operator.api.batch import CombineRule, GroupingSpec
from icechunk_operator.engine.planning import WriteMode, plan_ingest, plan_removals, without
from icechunk_operator.engine.records import LedgerEntry, SourceFile

GROUPING = GroupingSpec(pattern=r"data/(?P<site>[^/]+)/(?P<name>[^/]+)\.nc$", template="{site}/{name}")
CONCAT = GroupingSpec(
    pattern=r"data/(?P<site>[^/]+)/",
    template="{site}",
    rules=[CombineRule(combine="concat", dimension="time")],
)


def src(path: str, size: int = 10, etag: str = "e1") -> SourceFile:
    return SourceFile(f"s3://b/data/{path}", size, etag)


def entry(source: SourceFile, group: str) -> LedgerEntry:
    return LedgerEntry(source.url, source.size, source.etag, source.mtime, group, "b1", "t")


def test_new_files_are_created_one_group_each() -> None:
    plan = plan_ingest([src("s1/a.nc"), src("s1/b.nc")], {}, GROUPING)
    assert [(w.group, w.mode) for w in plan.work] == [("s1/a", WriteMode.CREATE), ("s1/b", WriteMode.CREATE)]


def test_unchanged_files_are_skipped() -> None:
    a = src("s1/a.nc")
    plan = plan_ingest([a], {a.url: entry(a, "s1/a")}, GROUPING)
    assert plan.work == [] and plan.skipped == [a]


def test_changed_etag_replaces_the_group() -> None:
    old, new = src("s1/a.nc", etag="e1"), src("s1/a.nc", etag="e2")
    plan = plan_ingest([new], {old.url: entry(old, "s1/a")}, GROUPING)
    assert [(w.group, w.mode, w.files) for w in plan.work] == [("s1/a", WriteMode.REPLACE, (new,))]


def test_changed_size_without_etag_replaces() -> None:
    old = SourceFile("s3://b/data/s1/a.nc", 10, None, 100.0)
    new = SourceFile("s3://b/data/s1/a.nc", 10, None, 200.0)
    plan = plan_ingest([new], {old.url: entry(old, "s1/a")}, GROUPING)
    assert plan.work[0].mode == WriteMode.REPLACE


def test_new_files_of_a_concat_group_append() -> None:
    d1, d2, d3 = src("s1/d1.nc"), src("s1/d2.nc"), src("s1/d3.nc")
    ledger = {d1.url: entry(d1, "s1"), d2.url: entry(d2, "s1")}
    plan = plan_ingest([d1, d2, d3], ledger, CONCAT)
    (work,) = plan.work
    assert (work.mode, work.files, work.dimension) == (WriteMode.APPEND, (d3,), "time")
    assert set(plan.skipped) == {d1, d2}


def test_changed_member_of_a_concat_group_rebuilds_it_with_recorded_files() -> None:
    d1, d2 = src("s1/d1.nc"), src("s1/d2.nc")
    ledger = {d1.url: entry(d1, "s1"), d2.url: entry(d2, "s1")}
    changed = src("s1/d2.nc", etag="e9")
    plan = plan_ingest([changed], ledger, CONCAT)  # d1 was not listed this time
    (work,) = plan.work
    assert work.mode == WriteMode.REPLACE and work.files == (d1, changed)


def test_two_files_for_a_one_file_group_are_refused() -> None:
    grouping = GroupingSpec(pattern=r"data/(?P<site>[^/]+)/", template="{site}")
    plan = plan_ingest([src("s1/a.nc"), src("s1/b.nc")], {}, grouping)
    assert plan.work == [] and {f.error_class for f in plan.refused} == {"GroupingError"}


def test_skip_list_and_unmatched_paths() -> None:
    plan = plan_ingest(
        [src("s1/a.nc"), SourceFile("s3://b/other/x.nc", 1, "e")], {}, GROUPING, skip=["*/s1/*"]
    )
    assert [s.url for s in plan.skipped] == ["s3://b/data/s1/a.nc"]
    assert [f.url for f in plan.refused] == ["s3://b/other/x.nc"]


def test_removed_files_rebuild_their_group_or_delete_it() -> None:
    a1, a2, b1 = src("s1/t1.nc"), src("s1/t2.nc"), src("s2/t1.nc")
    ledger = {a1.url: entry(a1, "s1"), a2.url: entry(a2, "s1"), b1.url: entry(b1, "s2")}
    removed = [a2.url, b1.url]
    plan = plan_ingest([], without(ledger, removed), CONCAT)
    deleted = plan_removals(plan, removed, ledger, CONCAT)
    assert deleted == ["s2"]  # no file of s2 remains
    assert [(w.group, w.mode, w.files) for w in plan.work] == [("s1", WriteMode.REPLACE, (a1,))]


def test_an_append_to_a_group_that_loses_a_file_becomes_a_rewrite() -> None:
    a1, a2, a3 = src("s1/t1.nc"), src("s1/t2.nc"), src("s1/t3.nc")
    ledger = {a1.url: entry(a1, "s1"), a2.url: entry(a2, "s1")}
    plan = plan_ingest([a3], without(ledger, [a1.url]), CONCAT)
    assert [w.mode for w in plan.work] == [WriteMode.APPEND]
    assert plan_removals(plan, [a1.url], ledger, CONCAT) == []
    assert [(w.mode, w.files) for w in plan.work] == [(WriteMode.REPLACE, (a2, a3))]


def test_removing_unknown_or_already_removed_files_changes_nothing() -> None:
    a1 = src("s1/t1.nc")
    ledger = {a1.url: entry(a1, "s1")}
    plan = plan_ingest([], without(ledger, ["s3://b/data/s9/x.nc"]), CONCAT)
    assert plan_removals(plan, ["s3://b/data/s9/x.nc"], ledger, CONCAT) == [] and plan.work == []


def test_tasks_hold_several_prefetch_windows_when_the_archive_allows() -> None:
    """Each task starts with an empty read-ahead window, so tasks grow with filesInFlight; small
    archives still give every worker several tasks."""
    from icechunk_operator.engine.execution import auto_files_per_task

    assert auto_files_per_task(10_034, workers=2) == 32
    assert auto_files_per_task(10_034, workers=2, files_in_flight=16) == 64
    assert auto_files_per_task(200, workers=2, files_in_flight=16) == 12
    assert auto_files_per_task(3, workers=2, files_in_flight=16) == 1


def test_a_late_file_of_a_concat_group_rebuilds_it_in_order() -> None:
    """Day 3 arriving after day 4 was appended: appending it would put its times after day 4's."""
    d1, d3, d4 = src("s1/d1.nc"), src("s1/d3.nc"), src("s1/d4.nc")
    ledger = {d1.url: entry(d1, "s1"), d4.url: entry(d4, "s1")}
    plan = plan_ingest([d1, d3, d4], ledger, CONCAT)
    (work,) = plan.work
    assert (work.mode, work.files) == (WriteMode.REPLACE, (d1, d3, d4))
