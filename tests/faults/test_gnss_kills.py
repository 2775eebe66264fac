"""SIGKILL of the commit process at each stage of a materialized GNSS batch, then a re-run: the
store equals one written without a kill, every file is in the ledger once, and no snapshot from
before the kill is lost."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr
import yaml

from icechunk_operator.engine.materialize.registry import load_registry
from icechunk_operator.engine.storage import open_repository
from tests.faults.hostile import ledger_counts
from tests.faults.invariants import branch_snapshots
from tests.faults.tally import FaultTally
from tests.faults.test_kill_matrix import run_cli
from tests.gnss import INVALID, REFERENCE, copy_files, gnss_batch, gnss_store
from tests.integration.readback import open_group

pytestmark = pytest.mark.slow

GROUP = "ROSR/observations"
#: Stage (as the README's table names it) and failpoint; windows of two files, so the second
#: window's hit lands after one commit.
KILLS = [
    ("mid-read (second window read, nothing placed)", "virtualizing=kill@2"),
    ("forks merged, not committed", "written=kill@2"),
    ("inside a window's commit", "commit=kill-after:0.005@2"),
    ("between a commit and its report", "commit.after=kill@2"),
    ("after the last commit", "committed=kill"),
]


def write_spec(folder: Path, archive: Path) -> tuple[Path, object]:
    store = gnss_store(folder / "stores" / "store", archive)
    batch = gnss_batch(archive, "kills", filesPerCommit=2)
    batch.spec.failures.max_failed_files = 1
    spec = folder / "batch.yaml"
    spec.write_text(yaml.safe_dump_all([store.to_api(), batch.to_api()]))
    return spec, store


@pytest.fixture(scope="module")
def gnss_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real files and a malformed one in the same naming scheme; read-only for the cases."""
    archive = tmp_path_factory.mktemp("gnss-kills") / "archive"
    copy_files(REFERENCE[:6], archive)
    copy_files(
        [p for p in INVALID if p.stem == "truncated_header"],
        archive,
        ["ROSR01TUW_R_20250010200_15M_05S_AA.rnx"],
    )
    return archive


@pytest.fixture(scope="module")
def unkilled(gnss_archive: Path, tmp_path_factory: pytest.TempPathFactory, dask_scheduler: str) -> xr.Dataset:
    spec, store = write_spec(tmp_path_factory.mktemp("unkilled"), gnss_archive)
    assert run_cli(spec, scheduler=dask_scheduler).returncode == 0
    return open_group(store, GROUP).compute()  # type: ignore[arg-type]


@pytest.mark.parametrize(("stage", "failpoint"), KILLS, ids=[f.split("=")[0] for _, f in KILLS])
def test_sigkill_at_each_stage_of_a_gnss_batch_then_a_rerun_gives_the_same_store(
    stage: str,
    failpoint: str,
    gnss_archive: Path,
    unkilled: xr.Dataset,
    tmp_path: Path,
    dask_scheduler: str,
    fault_tally: FaultTally,
) -> None:
    spec, store = write_spec(tmp_path, gnss_archive)

    killed = run_cli(spec, scheduler=dask_scheduler, failpoints=failpoint)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {stage}:\n{killed.stderr[-2000:]}"
    survived = branch_snapshots(store)  # type: ignore[arg-type]
    rerun = run_cli(spec, scheduler=dask_scheduler)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    xr.testing.assert_identical(open_group(store, GROUP).compute(), unkilled)  # type: ignore[arg-type]
    ledger = ledger_counts(store)  # type: ignore[arg-type]
    good = {(gnss_archive / p.name).resolve().as_uri() for p in REFERENCE[:6]}
    lost = len(good - set(ledger))
    duplicated = sum(count - 1 for count in ledger.values() if count > 1)
    repo = open_repository(store.spec, create=False)  # type: ignore[attr-defined]
    registered = Counter(url for _, url in load_registry(repo.readonly_session(branch="main")))
    assert (lost, duplicated) == (0, 0) and set(ledger) == good and set(registered) == good
    after = branch_snapshots(store)  # type: ignore[arg-type]
    assert after[-len(survived) :] == survived, "a snapshot from before the kill is gone"
    fault_tally.add("SIGKILL, commit process (GNSS, CLI re-run)", stage, lost=lost, duplicated=duplicated)
