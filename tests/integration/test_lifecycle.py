"""Tags, history, expiry and garbage collection on a real repository."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
import zarr

from icechunk_operator.engine.lifecycle import expiry_cutoff, parse_duration
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources
from tests.integration.readback import assert_matches_source


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_operator.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_expire_and_gc_keep_tagged_and_current_snapshots_readable(
    shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(
        shared_archive.root, (tmp_path / "store").as_uri(), batch_extra={"commit": {"everyGroups": 5}}
    )
    report = run_batch(store, batch)
    assert len(report.commits) >= 4
    spec_file = tmp_path / "store.yaml"
    spec_file.write_text(yaml.safe_dump(store.to_api()))

    tagged = report.commits[1]
    assert cli("tag", "-f", str(spec_file), "v1", "--snapshot", tagged).returncode == 0
    before = cli("history", "-f", str(spec_file), "-n", "100")
    assert before.returncode == 0 and tagged in before.stdout

    no_rule = cli("expire", "-f", str(spec_file))
    assert no_rule.returncode == 2 and "spec.maintenance" in no_rule.stderr
    spec_file.write_text(
        yaml.safe_dump(
            store.to_api() | {"spec": store.to_api()["spec"] | {"maintenance": {"keepSnapshots": 1}}}
        )
    )
    expired = cli("expire", "-f", str(spec_file))  # the store's own policy: keep the newest 1
    assert expired.returncode == 0, expired.stderr
    assert "garbage collection deleted" in expired.stdout

    repo = open_repository(store.spec, create=False)
    history = [info.id for info in repo.ancestry(branch="main")]
    assert history[0] == report.commits[-1] and tagged not in history[:-1]
    assert repo.lookup_tag("v1") == tagged
    tagged_root = zarr.open_group(repo.readonly_session(tag="v1").store, mode="r", zarr_format=3)
    assert any(True for _ in tagged_root.members(max_depth=None))  # the tagged snapshot still reads
    good = [f for f in shared_archive.files if f.defect == "none"]
    for item in good[::9]:
        assert_matches_source(store, item)  # the current snapshot still reads, values equal the source
    gone = next(i for i in report.commits[2:-1])
    with pytest.raises(Exception, match="(?i)snapshot|not found|object"):
        repo.readonly_session(snapshot_id=gone)


def test_expiry_rules() -> None:
    now = datetime(2026, 11, 21, tzinfo=UTC)
    written = [now - timedelta(days=n) for n in range(5)]  # newest first
    assert expiry_cutoff(written, older_than=timedelta(days=2), keep=None, now=now) == now - timedelta(days=2)
    assert expiry_cutoff(written, older_than=None, keep=3, now=now) == written[2]
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("12h") == timedelta(hours=12)
    with pytest.raises(ValueError, match="exactly one"):
        expiry_cutoff(written, older_than=None, keep=None, now=now)
    with pytest.raises(ValueError, match="at least 1"):
        expiry_cutoff(written, older_than=None, keep=0, now=now)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("a week")


def test_a_batch_tags_its_final_snapshot_and_a_tag_never_moves(
    archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(archive.root, (tmp_path / "store").as_uri(), batch_extra={"tag": "v1"})
    first = run_batch(store, batch)
    repo = open_repository(store.spec)
    assert first.succeeded and first.tagged == str(repo.lookup_tag("v1")) == str(repo.lookup_branch("main"))
    assert run_batch(store, batch).succeeded  # a re-run that changes nothing: same tip, same tag

    copied = next(f for f in archive.files if f.defect == "none")
    added = copied.path.parent.parent / "exp99" / copied.path.name
    added.parent.mkdir()
    added.write_bytes(copied.path.read_bytes())
    moved = run_batch(store, batch)  # commits the new file: the tip moves, the tag cannot follow
    assert not moved.succeeded and moved.error is not None and "tag 'v1' exists already" in moved.error
    assert str(repo.lookup_tag("v1")) == first.tagged
