"""SIGKILL of the commit pod's process at each stage, then the Job's retry of the pod: the batch
Succeeds with every good file exactly once, the failure log holds exactly the bad ones, and no
snapshot of the first attempt is lost.

The kills are aimed by failpoints (``icechunk_operator.failpoints``), armed for the namespace's
pods through the fake kubelet, once across processes: the retried pod passes the point.

Only the stages where the pod differs from a CLI run are here: around the status patches a retried
pod must not double-count. The engine's stages (mid-virtualization, before a staged promotion, and
the rest) are killed in ``tests/faults/test_kill_matrix.py`` with the same failpoints, archive and
batch, then re-run; that a Job retries a crashed pod from the last commit is
``tests/e2e/test_failures.py::test_a_commit_pod_that_crashes_is_retried_and_resumes_from_the_last_commit``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from icechunk_operator.api import IcechunkStore
from icechunk_operator.failpoints import ENV, ONCE_DIR_ENV
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import make_archive
from tests.e2e.conftest import ClusterDriver
from tests.e2e.test_operator import batch_doc, store_doc, wait_ready
from tests.faults.invariants import assert_failure_log_holds_the_bad_files, branch_snapshots, check_store
from tests.faults.tally import FaultTally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS = [
    ("between a commit and its status patch", "commit.after=kill@2"),
    ("after the last commit, before the final status", "committed=kill"),
]


@pytest.fixture(scope="module")
def kill_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveLayout:
    return make_archive(tmp_path_factory.mktemp("pod-kills") / "archive", models=3)


@pytest.mark.parametrize(("stage", "failpoint"), KILLS, ids=[f.split("=")[0] for _, f in KILLS])
def test_a_commit_pod_killed_at_each_stage_is_retried_by_its_job_and_ends_exactly_once(
    stage: str,
    failpoint: str,
    cluster: ClusterDriver,
    namespace: str,
    kill_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    store = store_doc("kills", (tmp_path / "stores" / "store").as_uri(), kill_archive)
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "kills")
    once = tmp_path / "once"
    once.mkdir()
    cluster.kubelet.namespace_env[namespace] = {ENV: failpoint, ONCE_DIR_ENV: str(once)}
    batch = batch_doc("kills", "kills", kill_archive, commit={"everyGroups": 3})
    batch["spec"]["execution"] |= {"podRetries": 2, "filesPerTask": 3, "workers": 1}
    cluster.apply(batch, namespace=namespace)
    model = IcechunkStore.model_validate(store)

    def first_pod_ended() -> bool:
        return any(run.process.poll() is not None for run in cluster.kubelet.commit_runs(namespace))

    cluster.wait(namespace, first_pod_ended, 240, "the first commit pod to be killed")
    survived = branch_snapshots(model)  # at least what the killed pod committed
    status = cluster.wait_phase(namespace, "kills", "Succeeded", 300)
    runs = [run for run in cluster.kubelet.commit_runs(namespace) if run.process.poll() is not None]
    assert [run.process.returncode for run in runs] == [-signal.SIGKILL, 0], cluster.diagnostics(namespace)
    assert len(cluster.jobs(namespace)) == 1  # the Job retried its pod; no second Job
    bad = [f for f in kill_archive.files if f.defect != "none"]
    assert status["files"]["failed"] == len(bad), status

    result = check_store(model, kill_archive, snapshots_before=survived)
    assert_failure_log_holds_the_bad_files(tmp_path / "stores" / "failures", kill_archive)
    fault_tally.add("SIGKILL, commit pod (Job retry)", stage, lost=result.lost, duplicated=result.duplicated)
