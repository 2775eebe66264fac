"""Reconciliation on real files and a real repository: each category found exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
import zarr

from icechunk_operator.api import Reconciliation
from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.engine.reconcile import run_reconciliation
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.sources import list_sources
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources


def reconciliation(prefix: str, store: str = "ismip6", **spec: object) -> Reconciliation:
    source = {"index": prefix} if prefix.endswith(".parquet") else {"prefix": prefix, "glob": "**/*.nc"}
    return Reconciliation.model_validate(
        {
            "kind": "Reconciliation",
            "metadata": {"name": "check"},
            "spec": {"store": store, **source, **spec},
        }
    )


def write_index(files: list[SourceFile], path: Path) -> str:
    """A parquet index as a catalogue would keep it: url, size and mtime per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "url": [f.url for f in files],
        "size": [f.size for f in files],
        "mtime": [f.mtime for f in files],
    }
    pq.write_table(pa.table(columns), path)
    return path.as_uri()


def test_missing_stale_and_orphaned_are_each_found_exactly(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    assert run_batch(store, batch).succeeded
    prefix = archive.root.resolve().as_uri() + "/Projection-AIS/"

    clean = run_reconciliation(store, reconciliation(prefix))
    defective = sorted(f.path.resolve().as_uri() for f in archive.files if f.defect != "none")
    assert [s.url for s in clean.missing] == defective  # they failed at ingest: not in the store
    assert not clean.stale and not clean.orphaned

    good = [f for f in archive.files if f.defect == "none"]
    gone, changed, copied = good[0], good[1], good[2]
    gone.path.unlink()
    with changed.path.open("ab") as file:
        file.write(b"\0" * 64)  # a new size and mtime: the store's references are stale
    added = copied.path.with_name(copied.path.name.replace(".nc", "-v2.nc"))
    shutil.copy(copied.path, added)

    report = run_reconciliation(store, reconciliation(prefix))
    assert [s.url for s in report.missing] == sorted([*defective, added.resolve().as_uri()])
    assert [(s.url, e.group) for s, e in report.stale] == [(changed.path.resolve().as_uri(), changed.group)]
    assert [(e.url, e.group) for e in report.orphaned] == [(gone.path.resolve().as_uri(), gone.group)]
    assert report.recorded == len(good) and report.listed == len(archive.files)

    assert report.report_url is not None
    written = json.loads(Path(report.report_url.removeprefix("file://")).read_text())
    assert written["counts"] == {"missing": len(defective) + 1, "stale": 1, "orphaned": 1}
    assert written["orphaned"][0]["group"] == gone.group


def test_broken_references_are_found_though_the_index_still_lists_the_files(
    archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    assert run_batch(store, batch).succeeded
    prefix = archive.root.resolve().as_uri() + "/Projection-AIS/"
    listed = list_sources(SourceSpec(prefix=prefix), store.spec)
    good = {f.path.resolve().as_uri(): f for f in archive.files if f.defect == "none"}
    index = write_index([f for f in listed if f.url in good], tmp_path / "index.parquet")

    check = reconciliation(index, checkReferences=True)
    assert run_reconciliation(store, check).counts() == {"missing": 0, "stale": 0, "orphaned": 0, "broken": 0}

    by_group: dict[str, list[str]] = {}
    for url, item in sorted(good.items()):
        by_group.setdefault(item.group, []).append(url)
    gone_group, damaged_group = sorted(by_group)[:2]
    gone = by_group[gone_group][0]
    Path(gone.removeprefix("file://")).unlink()
    damaged = Path(by_group[damaged_group][0].removeprefix("file://"))  # first in its concatenation
    before = damaged.stat()
    damaged.write_bytes(b"")  # truncated, but with its old mtime: only a read can tell
    os.utime(damaged, ns=(before.st_atime_ns, before.st_mtime_ns))

    report = run_reconciliation(store, check)
    assert not report.missing and not report.stale and not report.orphaned  # the index is unchanged
    assert report.broken is not None
    assert [(b.group, b.url) for b in report.broken] == [(gone_group, gone), (damaged_group, None)]
    assert report.broken[0].reason == "object gone"
    assert report.broken[1].reason.startswith("sample read failed")
    assert run_reconciliation(store, reconciliation(index)).broken is None  # only on request


def test_a_narrower_prefix_does_not_call_the_rest_orphaned(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    run_batch(store, batch)
    first = archive.files[0]
    narrow = first.path.parent.resolve().as_uri() + "/"
    report = run_reconciliation(store, reconciliation(narrow))
    assert not report.orphaned
    assert report.listed == len([f for f in archive.files if f.path.parent == first.path.parent])


def test_cli_reports_and_exits_non_zero_on_differences(archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    run_batch(store, batch)
    check = reconciliation(archive.root.resolve().as_uri() + "/Projection-AIS/")
    spec = tmp_path / "reconcile.yaml"
    spec.write_text(yaml.safe_dump_all([store.to_api(), check.to_api()]))
    command = [sys.executable, "-m", "icechunk_operator.cli", "reconcile", "-f", str(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # the defective files are missing from the store
    assert "missing 4, stale 0, orphaned 0" in result.stdout

    repair = check.to_api()
    repair["spec"]["mode"] = "Repair"
    spec.write_text(yaml.safe_dump_all([store.to_api(), repair]))
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "batchTemplate" in refused.stderr


def test_repair_makes_the_next_reconciliation_clean(archive: ArchiveLayout, tmp_path: Path) -> None:
    for item in archive.files:
        if item.defect != "none":
            item.path.unlink()  # a clean start: every file of the archive can be ingested
    good = [f for f in archive.files if f.defect == "none"]
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri())
    assert run_batch(store, batch).succeeded
    gone, changed, copied = good[0], good[1], good[2]
    gone.path.unlink()
    os.utime(changed.path)  # a new mtime: stale
    added = copied.path.parent.parent / "exp99" / copied.path.name
    added.parent.mkdir()
    shutil.copy(copied.path, added)

    prefix = archive.root.resolve().as_uri() + "/Projection-AIS/"
    check = reconciliation(prefix, mode="Repair", batchTemplate="ismip6", removeOrphans=True)
    spec = tmp_path / "repair.yaml"
    spec.write_text(yaml.safe_dump_all([store.to_api(), batch.to_api(), check.to_api()]))
    command = [sys.executable, "-m", "icechunk_operator.cli", "reconcile", "-f", str(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "missing 1, stale 1, orphaned 1" in result.stdout
    assert "repair: IngestBatch check-repair-" in result.stdout

    after = run_reconciliation(store, reconciliation(prefix, checkReferences=True))
    assert after.clean and after.recorded == len(good)  # one gone, one added
    session = open_repository(store.spec, create=False).readonly_session(branch="main")
    root = zarr.open_group(session.store, mode="r")
    assert gone.group not in root  # its only file was removed: the group went with it
    added_group = copied.group.replace(copied.experiment, "exp99")
    assert added_group in root and changed.group in root
