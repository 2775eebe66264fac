"""Processing versions of a GNSS store: a second version on its own branch and tag, compared with
the first, expired like any store, and checked chunk by chunk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from icechunk_operator.api.reconciliation import Reconciliation
from icechunk_operator.engine.integrity import check_integrity
from icechunk_operator.engine.reconcile import run_reconciliation
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.engine.versions import compare_versions
from tests.gnss import REFERENCE, copy_files, gnss_batch, gnss_store
from tests.integration.readback import open_group

pytestmark = pytest.mark.slow
GROUP = "ROSR/observations"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_operator.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_two_processing_versions_compare_check_and_expire(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:3], archive)
    store = gnss_store(tmp_path / "store", archive)
    v1 = gnss_batch(archive, "v1")
    v1.spec.tag = "v1.0"
    first = run_batch(store, v1, scheduler=dask_scheduler)
    assert first.tagged is not None

    v2 = gnss_batch(archive, "v2", reader="tests.gnss_readers:snr_to_quarter_db", onOverlap="replace")
    v2.spec.branch, v2.spec.tag = "processing-v2", "v2.0"
    second = run_batch(store, v2, scheduler=dask_scheduler)
    assert (second.done, second.skipped, second.failed) == (3, 0, 0)  # read again: another processing
    assert run_batch(store, v2, scheduler=dask_scheduler).commits == []  # and only once

    repo = open_repository(store.spec, create=False)
    differences = {d.name: d for d in compare_versions(repo, GROUP, "v1.0", "v2.0")}
    snr = differences["SNR"]
    assert snr.differing > 1000 and 0 < snr.mean_abs <= 0.125 and snr.max_abs <= 0.125  # type: ignore[operator]
    for name in ("Pseudorange", "Phase", "Doppler", "LLI", "SSI", "epoch", "sid"):
        assert differences[name].differing == 0, name
    main_values = open_group(store, GROUP)["SNR"].values
    assert np.nanmax(np.abs(main_values * 4 - np.round(main_values * 4))) > 0  # main kept version 1

    spec_file = tmp_path / "store.yaml"
    spec_file.write_text(yaml.safe_dump(store.to_api()))
    compared = cli("compare", "-f", str(spec_file), "--group", GROUP, "v1.0", "v2.0")
    assert compared.returncode == 0, compared.stderr
    snr_line = next(line for line in compared.stdout.splitlines() if line.startswith("SNR "))
    assert f"{snr.differing:,}" in snr_line
    assert cli("compare", "-f", str(spec_file), "--group", GROUP, "v1.0", "v9").returncode == 2

    checked = cli("fsck", "-f", str(spec_file), "--ref", "v2.0")
    assert checked.returncode == 0 and "0 do not decode" in checked.stdout, checked.stdout + checked.stderr
    expired = cli("expire", "-f", str(spec_file), "--keep", "1")
    assert expired.returncode == 0, expired.stderr
    assert check_integrity(repo.readonly_session(tag="v1.0")).clean  # tags survive expiry


def test_fsck_names_the_chunks_that_do_not_decode(tmp_path: Path, dask_scheduler: str) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:1], archive)
    store = gnss_store(tmp_path / "store", archive)
    run_batch(store, gnss_batch(archive), scheduler=dask_scheduler)
    repo = open_repository(store.spec, create=False)
    healthy = check_integrity(repo.readonly_session(branch="main"))
    assert healthy.clean and healthy.arrays >= 6 and healthy.chunks > 0

    chunk_files = sorted((tmp_path / "store" / "chunks").iterdir(), key=lambda p: p.stat().st_size)
    damaged = chunk_files[-1]  # the largest object: a shard of one variable
    damaged.write_bytes(b"\x00" * damaged.stat().st_size)

    report = check_integrity(repo.readonly_session(branch="main"))
    assert report.undecodable > 0
    assert len({p.array for p in report.problems}) == 1
    assert report.problems[0].array.startswith(GROUP + "/")
    spec_file = tmp_path / "store.yaml"
    spec_file.write_text(yaml.safe_dump(store.to_api()))
    checked = cli("fsck", "-f", str(spec_file))
    assert checked.returncode == 1 and f"{report.undecodable} do not decode" in checked.stdout

    reconciliation = Reconciliation.model_validate(
        {
            "kind": "Reconciliation",
            "metadata": {"name": "chunks"},
            "spec": {
                "store": "rosalia",
                "prefix": archive.resolve().as_uri() + "/",
                "glob": "*.rnx",
                "checkChunks": True,
            },
        }
    )
    found = run_reconciliation(store, reconciliation)
    assert found.counts() == {"missing": 0, "stale": 0, "orphaned": 0, "undecodable": report.undecodable}
    assert not found.clean
