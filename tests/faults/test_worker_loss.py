"""Dask workers that die while they hold finished results nobody has read yet.

Its pod deleted, its node drained: the results go with it, and the scheduler computes them again
on another worker. The commit process must wait for them, not write their files off as failures
(the real-pod tier found that: two groups of good files ended ``worker task failed: None``).
Here both workers are killed by SIGKILL at the moment each holds unread results, so the loss is
certain and the commit loop meets the lost futures before anything could compute them again.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from distributed import Client, LocalCluster

from icechunk_operator.engine.runner import run_batch
from icechunk_operator.progress import Progress
from tests.conftest import ismip6_resources, make_archive
from tests.faults.invariants import check_store
from tests.faults.tally import FaultTally


def test_results_lost_with_a_dead_worker_are_computed_again_not_failed(
    tmp_path: Path, fault_tally: FaultTally
) -> None:
    layout = make_archive(tmp_path / "archive", institutions=1, models=4, experiments=2, variables=3)
    store, batch = ismip6_resources(
        layout.root,
        (tmp_path / "store").as_uri(),
        batch_extra={"execution": {"workers": 2, "filesPerTask": 1}, "commit": {"everyGroups": 1000}},
    )
    held_when_killed: list[int] = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as watcher,
    ):

        def kill_a_worker_holding_results(progress: Progress) -> None:
            if held_when_killed or progress.stage != "virtualizing" or progress.done + progress.failed == 0:
                return
            # The commit loop waits here, so the other tasks finish and their results stay unread.
            deadline = time.monotonic() + 60
            held: dict[str, int] = {}
            while time.monotonic() < deadline:
                held = {worker: len(keys) for worker, keys in watcher.has_what().items()}
                if len(held) == 2 and min(held.values()) > 0:
                    break
                time.sleep(0.05)
            # Both workers: until their nannies have started them again, nothing can compute the
            # lost results, so the commit loop meets them lost rather than already redone.
            pids = watcher.run(os.getpid)
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            held_when_killed.append(sum(held.values()))
            # As when a pod is deleted and the loop reads on later: the scheduler has removed the
            # workers and told the clients their results are lost before the loop goes on.
            while time.monotonic() < deadline and set(pids) & set(watcher.scheduler_info()["workers"]):
                time.sleep(0.05)
            time.sleep(0.5)

        report = run_batch(
            store, batch, scheduler=cluster.scheduler_address, on_progress=kill_a_worker_holding_results
        )

    assert held_when_killed and held_when_killed[0] > 0, "no worker died holding results"
    good = [f for f in layout.files if f.defect == "none"]
    classes = sorted({failure.error_class for failure in report.failures})
    assert (report.done, report.failed) == (len(good), 4), classes
    assert "CancelledError" not in classes and "NoneType" not in classes
    result = check_store(store, layout)
    fault_tally.add(
        "SIGKILL, Dask worker",
        f"both, holding {held_when_killed[0]} unread results (computed again)",
        lost=result.lost,
        duplicated=result.duplicated,
    )
