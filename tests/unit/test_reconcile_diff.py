"""The pure comparison of a ledger with a listing."""

from __future__ import annotations

from icechunk_operator.engine.reconcile import diff_store
from icechunk_operator.engine.records import LedgerEntry, SourceFile
from icechunk_operator.engine.sources import glob_regex


def entry(url: str, size: int = 10, mtime: float = 1.0, removed: bool = False) -> LedgerEntry:
    return LedgerEntry(url, size, None, mtime, "g", "b", "2026-01-01T00:00:00Z", removed)


def test_categories_and_scope() -> None:
    ledger = {
        "s3://a/x/same.nc": entry("s3://a/x/same.nc"),
        "s3://a/x/changed.nc": entry("s3://a/x/changed.nc"),
        "s3://a/x/gone.nc": entry("s3://a/x/gone.nc"),
        "s3://a/x/tombstone.nc": entry("s3://a/x/tombstone.nc", removed=True),
        "s3://a/y/elsewhere.nc": entry("s3://a/y/elsewhere.nc"),
        "s3://a/x/notes.txt": entry("s3://a/x/notes.txt"),
    }
    listed = [
        SourceFile("s3://a/x/same.nc", 10, None, 1.0),
        SourceFile("s3://a/x/changed.nc", 12, None, 2.0),
        SourceFile("s3://a/x/new.nc", 5, None, 1.0),
        SourceFile("s3://a/x/tombstone.nc", 10, None, 1.0),
    ]
    report = diff_store(ledger, listed, prefix="s3://a/x/", glob=glob_regex("**/*.nc"))
    assert [s.url for s in report.missing] == ["s3://a/x/new.nc", "s3://a/x/tombstone.nc"]
    assert [s.url for s, _ in report.stale] == ["s3://a/x/changed.nc"]
    assert [e.url for e in report.orphaned] == ["s3://a/x/gone.nc"]  # not y/, not the .txt
    assert report.counts() == {"missing": 2, "stale": 1, "orphaned": 1}


def test_an_index_covers_the_whole_store() -> None:
    ledger = {"s3://a/y/elsewhere.nc": entry("s3://a/y/elsewhere.nc")}
    report = diff_store(ledger, [])
    assert [e.url for e in report.orphaned] == ["s3://a/y/elsewhere.nc"]
    assert not diff_store({}, []).counts()["missing"] and diff_store({}, []).clean


def test_edge_blocks_are_the_first_and_last_chunk() -> None:
    from icechunk_operator.engine.references import edge_blocks

    assert edge_blocks((10, 4), (3, 4)) == [(slice(0, 3), slice(0, 4)), (slice(9, 10), slice(0, 4))]
    assert edge_blocks((3,), (5,)) == [(slice(0, 3),)]  # one chunk: read once
    assert edge_blocks((0, 4), (1, 4)) == []  # an empty array has nothing to read
    assert edge_blocks((), ()) == [()]  # a scalar is its own chunk
