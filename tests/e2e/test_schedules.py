"""IngestSchedules on a real control plane: runs on a cron schedule and on request, new files
appended exactly once, nothing committed when nothing is new, suspend, a failing validation
gate that leaves main untouched, history limits, Events and metrics.

Each run is an IngestBatch the operator stamps from the schedule; its commit pod runs for real
(the fake kubelet runs it as a process) against a real Icechunk repository on local disk.
"""

from __future__ import annotations

import shutil
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.k8s import names
from icechunk_operator.k8s.metrics import (
    SCHEDULE_CHECKED,
    SCHEDULE_CONSECUTIVE_FAILURES,
    SCHEDULE_LAST_SUCCESS,
)
from icechunk_operator.k8s.schedule_plan import LABEL_SCHEDULE, REQUEST_ANNOTATION
from icechunk_operator.k8s.schedules import parse_time
from icechunk_operator.synthetic import ArchiveLayout
from tests.e2e.conftest import ClusterDriver, MovedClock
from tests.e2e.test_operator import batch_doc, store_doc, wait_ready
from tests.gnss import REFERENCE, STATION_PATTERN, copy_files
from tests.integration.readback import ledger_urls, open_group
from tests.integration.test_append import EPOCHS_PER_DAY, write_day

pytestmark = pytest.mark.slow


def schedule_doc(name: str, batch: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IngestSchedule",
        "metadata": {"name": name},
        "spec": {"schedule": "0 0 1 1 *", "batch": batch, **spec},
    }


def runs(cluster: ClusterDriver, namespace: str, schedule: str) -> dict[str, str | None]:
    """The schedule's runs (IngestBatches) by name, with their phase."""
    listed = cluster.custom.list_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.BATCHES, label_selector=f"{LABEL_SCHEDULE}={schedule}"
    )
    return {item["metadata"]["name"]: (item.get("status") or {}).get("phase") for item in listed["items"]}


def wait_for_run(
    cluster: ClusterDriver, namespace: str, schedule: str, after: int, timeout: float = 180
) -> dict[str, Any]:
    """The lastRun of the schedule once a run numbered above ``after`` has ended and been recorded."""

    def recorded() -> dict[str, Any] | None:
        last = cluster.status(names.SCHEDULES, namespace, schedule).get("lastRun") or {}
        return last if int(last.get("number") or 0) > after else None

    return dict(cluster.wait(namespace, recorded, timeout, f"a run of {schedule} after run {after}"))


def request_run(cluster: ClusterDriver, namespace: str, schedule: str, value: str) -> None:
    cluster.plane.kubectl(
        "annotate",
        "-n",
        namespace,
        f"ingestschedule/{schedule}",
        f"{REQUEST_ANNOTATION}={value}",
        "--overwrite",
    )


def events(cluster: ClusterDriver, namespace: str, name: str) -> list[str]:
    listed = cluster.plane.kubectl(
        "get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}",
        "-o", "jsonpath={range .items[*]}{.reason}{'\\n'}{end}",
    )  # fmt: skip
    return listed.stdout.split()


def scrape(cluster: ClusterDriver, metric: str, namespace: str) -> float | None:
    text = urllib.request.urlopen(cluster.operator.metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(metric + "{") and f'namespace="{namespace}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_metric(cluster: ClusterDriver, metric: str, namespace: str, expected: float | None) -> None:
    """The operator's metrics come from its watch of the schedules, which may trail the status
    the test has just read from the API by a watch event: wait for the value, do not race it."""
    cluster.wait(
        namespace,
        lambda: scrape(cluster, metric, namespace) == expected,
        30,
        f"{metric} to read {expected}",
    )


def concat_batch(store: str, root: Path) -> dict[str, Any]:
    return {
        "store": store,
        "source": {"prefix": root.resolve().as_uri() + "/gnss/", "glob": "**/*.nc"},
        "grouping": {
            "pattern": r"gnss/(?P<site>[^/]+)/",
            "template": "sites/{site}",
            "rules": [{"match": "sites/*", "combine": "concat", "dimension": "epoch"}],
        },
        "execution": {"workers": 1},
        "staging": True,
        "validation": {"timeContinuity": {"dimension": "epoch", "maxGap": "3h"}},
    }


def seconds_past_the_next_hour(now: datetime) -> float:
    """How far to move the clock to stand a second past the next full hour."""
    next_hour = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return (next_hour - now).total_seconds() + 1


def test_a_schedule_keeps_a_concat_store_current(
    cluster: ClusterDriver, namespace: str, tmp_path: Path, moved_clock: MovedClock
) -> None:
    root = tmp_path / "archive"
    for day in (1, 2):
        write_day(root, "rosa", day)
    store = {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": {"name": "sites"},
        "spec": {
            "storage": {"url": (tmp_path / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": root.resolve().as_uri() + "/"}],
        },
    }
    assert cluster.apply(store, namespace=namespace).returncode == 0
    cluster.kubectl_wait(namespace, "icechunkstore/sites", "Ready", 60)
    model = IcechunkStore.model_validate(store)
    schedule = schedule_doc(
        "daily",
        concat_batch("sites", root),
        schedule="0 * * * *",
        successfulRunsHistoryLimit=2,
        failedRunsHistoryLimit=1,
    )
    assert cluster.apply(schedule, namespace=namespace).returncode == 0

    # 1. The cron schedule fires (hourly here: the operators' clock moves to just past the next
    # hour, so the one after is an hour of real time away) and the first run ingests both days.
    moved_clock.advance(seconds_past_the_next_hour(moved_clock.now()))
    first = wait_for_run(cluster, namespace, "daily", 0, timeout=120)
    assert first["outcome"] == "Succeeded" and first["filesAdded"] == 2, first
    assert first["name"].startswith("daily-s") and first["snapshot"]
    repo = open_repository(model.spec, create=False)
    assert first["snapshot"] == repo.lookup_branch("main")
    message = next(iter(repo.ancestry(branch="main"))).message
    assert message.startswith(f"IngestSchedule daily run {first['name'].removeprefix('daily-')}"), message
    status = cluster.status(names.SCHEDULES, namespace, "daily")
    assert status["nextRunTime"] and status["consecutiveFailures"] == 0 and status["lastSuccessfulTime"]
    table = cluster.plane.kubectl("get", "isch", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "STORE",
        "SCHEDULE",
        "SUSPEND",
        "LAST",
        "RUN",
        "ADDED",
        "LAST",
        "SUCCESS",
        "NEXT",
        "RUN",
        "FAILURES",
        "AGE",
    ]
    assert table[1].split()[:3] == ["daily", "sites", "0"] and "Succeeded" in table[1]

    # 2. Suspended, no scheduled run starts, even across a cron time.
    cluster.plane.kubectl(
        "patch", "-n", namespace, "isch/daily", "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    cluster.wait(
        namespace,
        lambda: cluster.status(names.SCHEDULES, namespace, "daily").get("nextRunTime") is None,
        30,
        "the suspension seen",
    )
    before = runs(cluster, namespace, "daily")
    write_day(root, "rosa", 3)
    crossed = moved_clock.advance(2 * 3600).timestamp()  # two cron times pass
    cluster.wait(
        namespace,
        lambda: (scrape(cluster, SCHEDULE_CHECKED, namespace) or 0) >= crossed,
        30,
        "the operator to check the schedule after the cron times",
    )
    assert runs(cluster, namespace, "daily") == before

    # 3. A requested run starts while suspended and appends the new day exactly once.
    request_run(cluster, namespace, "daily", "day-3")
    third = wait_for_run(cluster, namespace, "daily", first["number"])
    assert third["outcome"] == "Succeeded" and third["filesAdded"] == 1, third
    assert len(ledger_urls(model)) == 3
    assert open_group(model, "sites/rosa").sizes["epoch"] == 3 * EPOCHS_PER_DAY

    # 4. Nothing new: the run succeeds, commits nothing and says so.
    tip = repo.lookup_branch("main")
    request_run(cluster, namespace, "daily", "again")
    quiet = wait_for_run(cluster, namespace, "daily", third["number"])
    assert quiet["outcome"] == "Succeeded" and quiet["filesAdded"] == 0 and quiet.get("snapshot") is None
    assert quiet["message"].startswith("nothing new"), quiet
    assert open_repository(model.spec, create=False).lookup_branch("main") == tip

    # 5. A day missing: the time-continuity gate fails the run and main does not move.
    write_day(root, "rosa", 5)
    request_run(cluster, namespace, "daily", "gap")
    gap = wait_for_run(cluster, namespace, "daily", quiet["number"])
    assert gap["outcome"] == "Failed" and "timeContinuity" in gap["message"], gap
    assert open_repository(model.spec, create=False).lookup_branch("main") == tip
    assert f"staging-{gap['name']}" in open_repository(model.spec, create=False).list_branches()
    assert len(ledger_urls(model)) == 3
    status = cluster.status(names.SCHEDULES, namespace, "daily")
    assert status["consecutiveFailures"] == 1
    wait_for_metric(cluster, SCHEDULE_CONSECUTIVE_FAILURES, namespace, 1)
    wait_for_metric(cluster, SCHEDULE_LAST_SUCCESS, namespace, None)  # suspended: never late

    # 6. History limits: two succeeded runs and one failed run are kept, the oldest run is gone.
    def pruned() -> dict[str, str | None] | None:
        kept = runs(cluster, namespace, "daily")
        return kept if first["name"] not in kept else None

    kept = cluster.wait(namespace, pruned, 30, "the oldest run pruned")
    assert kept == {third["name"]: "Succeeded", quiet["name"]: "Succeeded", gap["name"]: "Failed"}

    # 7. The missing day arrives: the next run passes the gate, adds both days, failures reset.
    write_day(root, "rosa", 4)
    request_run(cluster, namespace, "daily", "filled")
    filled = wait_for_run(cluster, namespace, "daily", gap["number"])
    assert filled["outcome"] == "Succeeded" and filled["filesAdded"] == 2, filled
    assert cluster.status(names.SCHEDULES, namespace, "daily")["consecutiveFailures"] == 0
    assert len(ledger_urls(model)) == 5
    assert open_group(model, "sites/rosa").sizes["epoch"] == 5 * EPOCHS_PER_DAY
    # the gated run's staging branch went when the next run started; the next one was promoted
    assert set(open_repository(model.spec, create=False).list_branches()) == {"main"}
    reasons = events(cluster, namespace, "daily")
    assert {"RunStarted", "RunSucceeded", "RunFailed"} <= set(reasons), reasons


def test_an_ismip6_prefix_gains_an_experiment(
    cluster: ClusterDriver, namespace: str, archive: ArchiveLayout, tmp_path: Path
) -> None:
    """Only the new experiment's groups are written by the run after it arrives."""
    experiments = sorted({f.experiment for f in archive.files})
    newer = experiments[-1]
    held = tmp_path / "held"
    moved = [f.path for f in archive.files if f.experiment == newer]
    for path in moved:  # not delivered yet
        target = held / path.relative_to(archive.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), archive), namespace=namespace)
    wait_ready(cluster, namespace, "ismip6")
    batch = batch_doc("template", "ismip6", archive)["spec"]
    cluster.apply(schedule_doc("ismip6-update", batch), namespace=namespace)

    request_run(cluster, namespace, "ismip6-update", "first")
    first = wait_for_run(cluster, namespace, "ismip6-update", 0)
    assert first["outcome"] == "Succeeded" and first["filesAdded"] > 0, first
    model = IcechunkStore.model_validate(store_doc("ismip6", (tmp_path / "store").as_uri(), archive))
    assert not any(f"/{newer}/" in url for url in ledger_urls(model))

    for path in moved:
        shutil.move(held / path.relative_to(archive.root), path)
    before = ledger_urls(model)
    request_run(cluster, namespace, "ismip6-update", "second")
    second = wait_for_run(cluster, namespace, "ismip6-update", first["number"])
    after = ledger_urls(model)
    added = set(after) - set(before)
    good = {f.path.resolve().as_uri() for f in archive.files if f.experiment == newer and f.defect == "none"}
    assert second["outcome"] == "Succeeded" and second["filesAdded"] == len(added) >= len(good), second
    assert good <= added and all(f"/{newer}/" in url for url in added)
    assert {url: group for url, group in after.items() if url in before} == before
    repo = open_repository(model.spec, create=False)
    message = next(iter(repo.ancestry(branch="main"))).message
    groups = message.split(": ", 1)[1]
    assert message.startswith("IngestSchedule ismip6-update run r"), message
    assert newer in groups and experiments[0] not in groups, message


def test_gnss_files_arriving_over_several_runs_give_the_store_of_one_run(
    cluster: ClusterDriver, namespace: str, tmp_path: Path
) -> None:
    """Three deliveries of real RINEX files, an hourly completeness gate between them: an hour
    closed with a file missing holds main back until the file arrives; then the store equals the
    one a single batch makes of all the files."""
    archive = tmp_path / "archive"
    files = REFERENCE[:12]  # 2025-001 00:00-02:45, four 15-minute files an hour
    deliveries = [files[0:6], [files[6], *files[8:12]], [files[7]]]
    prefix = archive.resolve().as_uri() + "/"

    def store(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "icechunkoperator.io/v1alpha1",
            "kind": "IcechunkStore",
            "metadata": {"name": name},
            "spec": {
                "storage": {"url": (tmp_path / name).as_uri()},
                "virtualChunkContainers": [{"urlPrefix": prefix}],
            },
        }

    def batch(store_name: str) -> dict[str, Any]:
        return {
            "store": store_name,
            "source": {"prefix": prefix, "glob": "rosalia/*.rnx"},
            "grouping": {"pattern": STATION_PATTERN, "template": "{station}/observations"},
            "materialize": {"reader": "rinex"},
            "execution": {"workers": 2},
        }

    assert cluster.apply(store("runs"), store("whole"), namespace=namespace).returncode == 0
    cluster.kubectl_wait(namespace, "icechunkstore/runs", "Ready", 60)
    gated = {
        **batch("runs"),
        "staging": True,
        "validation": {"filesPerPeriod": {"period": "1h", "expected": 4}},
    }
    assert cluster.apply(schedule_doc("rosalia", gated), namespace=namespace).returncode == 0
    runs_store = IcechunkStore.model_validate(store("runs"))

    copy_files(deliveries[0], archive / "rosalia")
    request_run(cluster, namespace, "rosalia", "delivery-1")
    first = wait_for_run(cluster, namespace, "rosalia", 0, timeout=300)
    assert first["outcome"] == "Succeeded" and first["filesAdded"] == 6, first  # hour 01 still open

    succeeded = cluster.status(names.SCHEDULES, namespace, "rosalia")["lastSuccessfulTime"]
    wait_for_metric(cluster, SCHEDULE_LAST_SUCCESS, namespace, parse_time(succeeded).timestamp())
    tip = open_repository(runs_store.spec, create=False).lookup_branch("main")
    copy_files(deliveries[1], archive / "rosalia")
    request_run(cluster, namespace, "rosalia", "delivery-2")
    second = wait_for_run(cluster, namespace, "rosalia", first["number"], timeout=300)
    assert second["outcome"] == "Failed", second
    assert "filesPerPeriod" in second["message"] and "2025-01-01T01:00Z" in second["message"], second
    assert "3 of 4 files" in second["message"], second
    assert open_repository(runs_store.spec, create=False).lookup_branch("main") == tip

    copy_files(deliveries[2], archive / "rosalia")
    request_run(cluster, namespace, "rosalia", "delivery-3")
    third = wait_for_run(cluster, namespace, "rosalia", second["number"], timeout=300)
    assert third["outcome"] == "Succeeded" and third["filesAdded"] == 6, third
    assert len(ledger_urls(runs_store)) == 12
    assert set(open_repository(runs_store.spec, create=False).list_branches()) == {"main"}

    whole = {"apiVersion": "icechunkoperator.io/v1alpha1", "kind": "IngestBatch", "metadata": {"name": "all"}}
    assert cluster.apply({**whole, "spec": batch("whole")}, namespace=namespace).returncode == 0
    cluster.wait_phase(namespace, "all", "Succeeded", timeout=300)
    whole_store = IcechunkStore.model_validate(store("whole"))
    xr.testing.assert_identical(
        open_group(runs_store, "ROSR/observations").compute(),
        open_group(whole_store, "ROSR/observations").compute(),
    )
