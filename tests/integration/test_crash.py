"""SIGKILL between checkpoints, then a re-run: every file ingested exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import icechunk
import pytest
import yaml
import zarr

from icechunk_operator.engine.ledger import read_pages
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import ismip6_resources, make_archive, wait_until
from tests.integration.readback import assert_matches_source, branch_commits

pytestmark = pytest.mark.slow


@pytest.fixture
def big_archive(tmp_path: Path) -> ArchiveLayout:
    return make_archive(tmp_path / "archive", institutions=3, models=5, experiments=4, variables=6)


def test_sigkill_between_checkpoints_then_rerun_ingests_each_file_once(
    big_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store, batch = ismip6_resources(
        big_archive.root,
        (tmp_path / "store").as_uri(),
        batch_extra={"commit": {"everyGroups": 8}, "execution": {"workers": 1, "filesPerTask": 1}},
    )
    spec = tmp_path / "batch.yaml"
    spec.write_text(yaml.safe_dump_all([store.to_api(), batch.to_api()]))
    command = [sys.executable, "-m", "icechunk_operator.cli", "run", "-f", str(spec)]

    def commits_so_far() -> int:
        try:
            return len(branch_commits(store))
        except FileNotFoundError, icechunk.IcechunkError:  # the repository is still being created
            return 0

    run = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Initialization plus two checkpoints: the run is between checkpoints, mid-batch.
        wait_until(lambda: commits_so_far() >= 4, timeout=120, what="two checkpoint commits")
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL
    good = [f for f in big_archive.files if f.defect == "none"]
    committed_groups = (len(branch_commits(store)) - 2) * 8
    assert committed_groups < len(good), "the run finished before it could be killed"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    repo = open_repository(store.spec, create=False)
    session = repo.readonly_session(branch="main")
    pages = asyncio.run(read_pages(session.store))
    counts = Counter(entry.url for entries in pages.values() for entry in entries)
    assert set(counts) == {f.path.resolve().as_uri() for f in good}
    assert set(counts.values()) == {1}, "a file was recorded twice"
    root = zarr.open_group(session.store, mode="r", zarr_format=3)
    groups = {
        path
        for path, node in root.members(max_depth=None)
        if isinstance(node, zarr.Group) and path.count("/") == 2
    }
    assert groups == {f.group for f in good}
    for item in good[::7]:
        assert_matches_source(store, item)
