"""Ledger and registry pages fold into one once a branch holds many, in the same commit, and
nothing recorded is lost (a store appended to every few minutes would otherwise read thousands of
pages at the start of every run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from icechunk_operator.engine import commits, ledger
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.materialize import run as materialize_run
from icechunk_operator.engine.materialize.registry import REGISTRY_GROUP, load_registry
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources
from tests.gnss import REFERENCE, copy_files, gnss_batch, gnss_store

FOLD_AT = 3


def pages(store, under: str = ledger.LEDGER_GROUP) -> list[str]:  # type: ignore[no-untyped-def]
    session = open_repository(store.spec, create=False).readonly_session(branch="main")
    return asyncio.run(ledger.list_pages(session.store, under))


def test_virtual_ingest_folds_its_ledger_pages(
    shared_archive: ArchiveLayout, tmp_path: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commits, "COMPACT_AFTER_PAGES", FOLD_AT)
    store, batch = ismip6_resources(
        shared_archive.root, (tmp_path / "store").as_uri(), batch_extra={"commit": {"everyGroups": 2}}
    )
    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert len(report.commits) > 2 * FOLD_AT
    assert len(pages(store)) < FOLD_AT
    recorded = load_ledger(open_repository(store.spec, create=False), "main")
    assert len(recorded) == report.done
    assert run_batch(store, batch, scheduler=dask_scheduler).commits == []


def test_materialized_ingest_folds_ledger_and_registry_pages(
    tmp_path: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(materialize_run, "COMPACT_AFTER_PAGES", FOLD_AT)
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:7], archive)
    store = gnss_store(tmp_path / "store", archive)
    report = run_batch(store, gnss_batch(archive, filesPerCommit=1), scheduler=dask_scheduler)

    assert (report.done, len(report.commits)) == (7, 7)
    assert len(pages(store)) < FOLD_AT and len(pages(store, REGISTRY_GROUP)) < FOLD_AT
    repo = open_repository(store.spec, create=False)
    assert len(load_ledger(repo, "main")) == 7
    assert len(load_registry(repo.readonly_session(branch="main"))) == 7
    assert run_batch(store, gnss_batch(archive, filesPerCommit=1), scheduler=dask_scheduler).commits == []
