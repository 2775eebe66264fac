"""The CLI as a user runs it: exit codes, messages naming fields, the summary table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_operator.cli", *args], capture_output=True, text=True, timeout=300
    )


def write_spec(path: Path, store, batch, **batch_spec_changes) -> Path:
    documents = [store.to_api(), batch.to_api()]
    documents[1]["spec"].update(batch_spec_changes)
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_run_prints_a_summary_and_exits_zero(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    result = cli("run", "-f", str(write_spec(tmp_path / "b.yaml", store, batch)), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "result          " in result.stdout and "succeeded" in result.stdout
    good = sum(1 for f in shared_archive.files if f.defect == "none")
    assert f"{good} ingested, 4 failed" in result.stdout
    assert "[virtualizing]" in result.stderr  # plain progress lines when not on a terminal


def test_failures_beyond_tolerance_exit_one(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch, failures={"maxFailedFiles": 0})
    result = cli("run", "-f", str(spec), "--workers", "1")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "EmptyFileError=1" in result.stdout
    assert "run the same command again" in result.stderr  # the retry, as in the cluster's message


def test_escaping_template_is_refused_naming_the_field(shared_archive: ArchiveLayout, tmp_path: Path) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(
        tmp_path / "b.yaml", store, batch, grouping={"pattern": r"(?P<v>[^/]+)\.nc$", "template": "../{v}"}
    )
    result = cli("run", "-f", str(spec))
    assert result.returncode == 2
    assert "spec.grouping" in result.stderr and "'..'" in result.stderr
    assert not (tmp_path / "store").exists()


def test_source_outside_containers_is_refused_naming_the_field(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch, source={"prefix": "file:///etc/", "glob": "*.nc"})
    result = cli("run", "-f", str(spec))
    assert result.returncode == 2
    assert "spec.source.prefix" in result.stderr and "outside" in result.stderr
    assert not (tmp_path / "store").exists()


def test_validate(tmp_path: Path, shared_archive: ArchiveLayout) -> None:
    store, batch = ismip6_resources(shared_archive.root, (tmp_path / "store").as_uri())
    result = cli("validate", "-f", str(write_spec(tmp_path / "b.yaml", store, batch)))
    assert result.returncode == 0 and "1 stores, 1 batches" in result.stdout


def test_a_crash_exits_three_in_one_line_and_running_again_is_the_retry(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    """A real fault: the store's folder lies under a file, so the repository cannot be created."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    store, batch = ismip6_resources(shared_archive.root, (blocker / "store").as_uri())
    spec = write_spec(tmp_path / "b.yaml", store, batch)
    crashed = cli("run", "-f", str(spec), "--workers", "1")
    assert crashed.returncode == 3, crashed.stderr
    assert (
        "IngestBatch ismip6: crashed: " in crashed.stderr and "run the same command again" in crashed.stderr
    )
    assert "Traceback" not in crashed.stderr

    blocker.unlink()  # the fault is repaired: the same command is the retry
    assert cli("run", "-f", str(spec), "--workers", "1").returncode == 0
