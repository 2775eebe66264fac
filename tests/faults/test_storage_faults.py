"""Storage faults between the engine and its object storage, injected by toxiproxy in front of
the S3 server (moto) and Azurite: connections reset, a server that stalls, answers that are lost,
latency and a bandwidth limit, aimed at the listing, the parsing (the workers' reads of source
heads) and the commit.

A fault that ends is ridden out: the batch succeeds. A fault that stays ends the run within a
bounded time with a clear error, the branch exactly at its last good snapshot; once the fault
clears, a re-run finishes the job. Every case ends with the same check (``check_all``): each good
file once in the ledger and read back equal, the failure log naming exactly the bad files, and
every snapshot of the branch from before the fault still on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import icechunk
import pytest
import yaml

from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.exiting import ExitCode, one_line_error
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import AZURE_ACCOUNT, AZURE_KEY, ismip6_resources, make_archive
from tests.faults.invariants import assert_failure_log_holds_the_bad_files, check_store
from tests.faults.storage_rig import (
    LOST_ANSWERS,
    QUICK_LIMITS,
    RESET,
    STALL,
    Rig,
    StageFault,
    Toxic,
    assert_branch_untouched,
    check_all,
    run,
    seed,
)
from tests.faults.tally import FaultTally
from tests.integration.test_ingest_azure import blob_service
from tests.integration.test_ingest_azure import upload_archive as upload_to_azure
from tests.integration.test_ingest_s3 import upload_archive as upload_to_s3
from tests.servers import S3_KEY, S3_SECRET, S3Server, Toxiproxy

#: A persistent fault must end the run within this long (the store's QUICK_LIMITS allow ~15 s).
BOUND_SECONDS = 90


@pytest.fixture(scope="module")
def fault_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveLayout:
    """18 files in 18 groups over three models (NetCDF4 and NetCDF3), four of them defective."""
    return make_archive(tmp_path_factory.mktemp("storage-faults") / "archive", models=3)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workers' keys (the session's Dask workers started before any test's environment)."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(
        json.dumps({"access_key_id": S3_KEY, "secret_access_key": S3_SECRET, "account_key": AZURE_KEY})
    )
    return path


@contextmanager
def two_proxies(toxiproxy: Toxiproxy, upstream: str) -> Iterator[tuple[str, str, str, str]]:
    """(sources name, sources endpoint, store name, store endpoint), deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"sources-{suffix}", f"store-{suffix}")
    endpoints = [toxiproxy.proxy(name, upstream) for name in names]
    try:
        yield names[0], endpoints[0], names[1], endpoints[1]
    finally:
        for name in names:
            toxiproxy.delete_proxy(name)


@pytest.fixture(scope="module")
def s3_archive_root(s3_server_process: S3Server, fault_archive: ArchiveLayout) -> str:
    return upload_to_s3(s3_server_process.endpoint, fault_archive, f"faults-archive-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def s3_rig(
    toxiproxy_server: Toxiproxy,
    s3_server_process: S3Server,
    s3_env: str,
    fault_archive: ArchiveLayout,
    s3_archive_root: str,
    keys: Path,
) -> Iterator[Rig]:
    """Sources and a fresh store bucket on moto; the store's keys come from the environment."""
    bucket = f"faults-store-{uuid.uuid4().hex[:8]}"
    client = s3_server_process.client()
    client.create_bucket(Bucket=bucket)

    def read(url: str) -> bytes:
        name, _, key = url.removeprefix("s3://").partition("/")
        return bytes(client.get_object(Bucket=name, Key=key)["Body"].read())

    upstream = s3_server_process.endpoint.removeprefix("http://")
    with two_proxies(toxiproxy_server, upstream) as (sources, sources_endpoint, store, store_endpoint):
        common = {"region": "us-east-1", "allowHttp": True, "forcePathStyle": True}
        yield Rig(
            toxiproxy_server,
            sources,
            store,
            fault_archive,
            s3_archive_root,
            f"s3://{bucket}/ismip6",
            {"endpoint": sources_endpoint, **common, "credentials": {"file": str(keys)}},
            {"endpoint": store_endpoint, **common},
            read,
        )


@pytest.fixture(scope="module")
def azure_archive_root(azure_endpoint: str, fault_archive: ArchiveLayout) -> str:
    return upload_to_azure(azure_endpoint, fault_archive, f"faults-archive-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def azure_rig(
    toxiproxy_server: Toxiproxy,
    azure_endpoint: str,
    fault_archive: ArchiveLayout,
    azure_archive_root: str,
    keys: Path,
) -> Iterator[Rig]:
    """Sources and a fresh store container on Azurite, both behind proxies of their own."""
    container = f"faults-store-{uuid.uuid4().hex[:8]}"
    service = blob_service(azure_endpoint)
    service.create_container(container)

    def read(url: str) -> bytes:
        name, _, key = url.removeprefix("az://").partition("/")
        return bytes(service.get_blob_client(name, key).download_blob().readall())

    upstream = azure_endpoint.removeprefix("http://").partition("/")[0]
    with two_proxies(toxiproxy_server, upstream) as (sources, sources_endpoint, store, store_endpoint):
        common = {"allowHttp": True, "azureAccount": AZURE_ACCOUNT, "credentials": {"file": str(keys)}}
        yield Rig(
            toxiproxy_server,
            sources,
            store,
            fault_archive,
            azure_archive_root,
            f"az://{container}/ismip6",
            {"endpoint": f"{sources_endpoint}/{AZURE_ACCOUNT}", **common},
            {"endpoint": f"{store_endpoint}/{AZURE_ACCOUNT}", **common},
            read,
        )


#: The stage a fault is aimed at, the proxy it goes on, and the report's timer that must have
#: lasted as long as the fault did (proof that the stage met it and waited it out).
STAGES = {
    "listing": ("sources", "list"),
    "parsing": ("sources", "ingest (wall)"),
    "commit": ("store", "commit"),
}
PROGRESS_STAGE = {"listing": "listing", "parsing": "virtualizing", "commit": "committing"}


@pytest.mark.s3
@pytest.mark.parametrize("stage", list(STAGES))
def test_s3_resets_during_a_stage_are_retried_to_success(
    s3_rig: Rig, dask_scheduler: str, fault_tally: FaultTally, stage: str
) -> None:
    side, timer = STAGES[stage]
    before = seed(s3_rig, dask_scheduler)
    store, batch = s3_rig.resources()
    fault = StageFault(s3_rig, getattr(s3_rig, side), PROGRESS_STAGE[stage], [RESET], seconds=2.0)

    outcome = run(store, batch, dask_scheduler, fault)

    assert outcome.report is not None, one_line_error(outcome.error or RuntimeError())
    assert fault.on_at is not None, "the run never reached the stage"
    assert outcome.report.stage_seconds[timer] >= 1.5, outcome.report.stage_seconds
    checked = check_all(s3_rig, store, outcome.report, before)
    fault_tally.add(
        "storage",
        f"S3 reset during {stage} (transient)",
        lost=checked.lost,
        duplicated=checked.duplicated,
    )


@pytest.mark.s3
@pytest.mark.parametrize("toxic", [STALL, LOST_ANSWERS], ids=["requests-swallowed", "answers-lost"])
def test_s3_stall_during_commit_that_ends_is_ridden_out(
    s3_rig: Rig, dask_scheduler: str, fault_tally: FaultTally, toxic: Toxic
) -> None:
    """A stalled request is given up after the store's timeout and tried again; when the answers
    were the ones lost, the retried writes find their first tries already done."""
    before = seed(s3_rig, dask_scheduler)
    store, batch = s3_rig.resources(store_limits=QUICK_LIMITS)
    fault = StageFault(s3_rig, s3_rig.store, "committing", [toxic], seconds=5.0)

    outcome = run(store, batch, dask_scheduler, fault)

    assert outcome.report is not None, one_line_error(outcome.error or RuntimeError())
    assert outcome.report.stage_seconds["commit"] >= 4.0, outcome.report.stage_seconds
    checked = check_all(s3_rig, store, outcome.report, before)
    what = "stall" if toxic.stream == "upstream" else "lost answers"
    fault_tally.add(
        "storage", f"S3 {what} during commit (transient)", lost=checked.lost, duplicated=checked.duplicated
    )


@pytest.mark.s3
@pytest.mark.slow
def test_s3_stall_during_commit_that_stays_fails_clearly_then_a_rerun_finishes(
    s3_rig: Rig, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    before = seed(s3_rig, dask_scheduler)
    store, batch = s3_rig.resources(store_limits=QUICK_LIMITS)
    fault = StageFault(s3_rig, s3_rig.store, "committing", [STALL], seconds=None)

    outcome = run(store, batch, dask_scheduler, fault)
    fault.stop()  # the server recovers

    assert outcome.seconds < BOUND_SECONDS, outcome.seconds
    error = outcome.error or RuntimeError(outcome.report.error if outcome.report else "")
    message = one_line_error(error)
    # the commit's own error, not the failure log's that the same stalled store refused after it
    assert message.startswith("StorageError:") and "read timeout" in message, message
    assert_branch_untouched(store, before, s3_rig)

    again = run(store, batch, dask_scheduler)
    assert again.report is not None, one_line_error(again.error or RuntimeError())
    checked = check_all(s3_rig, store, again.report, before)
    fault_tally.add(
        "storage", "S3 stall during commit (persistent)", lost=checked.lost, duplicated=checked.duplicated
    )


@pytest.mark.s3
@pytest.mark.slow
def test_s3_resets_on_the_store_that_stay_fail_the_cli_in_one_line_then_a_rerun_finishes(
    s3_rig: Rig, dask_scheduler: str, fault_tally: FaultTally, tmp_path: Path
) -> None:
    """The CLI, as a user runs it: once the workers are parsing, every connection to the store
    is reset, so the commit cannot land. The run ends with exit code 3 and one line that says
    what the storage did."""
    before = seed(s3_rig, dask_scheduler)
    store, batch = s3_rig.resources(store_limits={"maxTries": 3})
    spec = tmp_path / "batch.yaml"
    spec.write_text(yaml.safe_dump_all([store.to_api(), batch.to_api()]))
    command = [sys.executable, "-m", "icechunk_operator.cli", "run", "-f", str(spec)]
    process = subprocess.Popen(
        [*command, "--scheduler", dask_scheduler],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    parsing = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("[virtualizing]"):  # the plain progress of a run without a terminal
                s3_rig.add(s3_rig.store, RESET, "fault-0")
                parsing.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    started = time.monotonic()
    try:
        process.wait(timeout=BOUND_SECONDS)
    finally:
        process.kill()
        reader.join()
        s3_rig.clear()
    assert parsing.is_set(), lines
    assert time.monotonic() - started < BOUND_SECONDS
    assert process.returncode == ExitCode.CRASHED, lines
    said = [line for line in lines if line.startswith(f"IngestBatch {batch.metadata.name}")]
    assert len(said) == 1, lines
    assert "crashed: StorageError:" in said[0] and "Connection reset by peer" in said[0], said[0]
    assert_branch_untouched(store, before, s3_rig)

    again = run(store, batch, dask_scheduler)
    assert again.report is not None, one_line_error(again.error or RuntimeError())
    checked = check_all(s3_rig, store, again.report, before)
    fault_tally.add(
        "storage", "S3 resets on the store (persistent)", lost=checked.lost, duplicated=checked.duplicated
    )


@pytest.mark.s3
def test_s3_latency_and_a_bandwidth_limit_over_a_whole_run_only_slow_it(
    s3_rig: Rig, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    before = seed(s3_rig, dask_scheduler)
    store, batch = s3_rig.resources()
    rate = 256  # KB/s on each connection: the sources' answers and the store's uploads
    for proxy, stream in ((s3_rig.sources, "downstream"), (s3_rig.store, "upstream")):
        s3_rig.add(proxy, Toxic("latency", {"latency": 20, "jitter": 5}, "downstream"), "latency")
        s3_rig.add(proxy, Toxic("bandwidth", {"rate": rate}, stream), "bandwidth")
    biggest = max(s3_rig.good(), key=lambda f: f.path.stat().st_size)
    started = time.monotonic()
    s3_rig.read_through_sources(biggest)
    assert time.monotonic() - started >= 0.8 * biggest.path.stat().st_size / (rate * 1000)

    outcome = run(store, batch, dask_scheduler)
    s3_rig.clear()

    assert outcome.report is not None, one_line_error(outcome.error or RuntimeError())
    checked = check_all(s3_rig, store, outcome.report, before)
    fault_tally.add(
        "storage",
        f"S3 latency 20 ms and {rate} KB/s over a whole run",
        lost=checked.lost,
        duplicated=checked.duplicated,
    )


@pytest.mark.azure
def test_azure_stall_during_commit_that_ends_is_ridden_out(
    azure_rig: Rig, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    before = seed(azure_rig, dask_scheduler)
    store, batch = azure_rig.resources(store_limits=QUICK_LIMITS)
    fault = StageFault(azure_rig, azure_rig.store, "committing", [STALL], seconds=5.0)

    outcome = run(store, batch, dask_scheduler, fault)

    assert outcome.report is not None, one_line_error(outcome.error or RuntimeError())
    assert outcome.report.stage_seconds["commit"] >= 4.0, outcome.report.stage_seconds
    checked = check_all(azure_rig, store, outcome.report, before)
    fault_tally.add(
        "storage", "Azure stall during commit (transient)", lost=checked.lost, duplicated=checked.duplicated
    )


@pytest.mark.azure
@pytest.mark.slow
def test_azure_resets_on_the_store_that_stay_fail_clearly_then_a_rerun_finishes(
    azure_rig: Rig, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    before = seed(azure_rig, dask_scheduler)
    store, batch = azure_rig.resources(store_limits=QUICK_LIMITS)
    fault = StageFault(azure_rig, azure_rig.store, "committing", [RESET], seconds=None)

    outcome = run(store, batch, dask_scheduler, fault)
    fault.stop()

    assert outcome.seconds < BOUND_SECONDS, outcome.seconds
    error = outcome.error or RuntimeError(outcome.report.error if outcome.report else "")
    assert "Connection reset by peer" in one_line_error(error), one_line_error(error)
    assert_branch_untouched(store, before, azure_rig)

    again = run(store, batch, dask_scheduler)
    assert again.report is not None, one_line_error(again.error or RuntimeError())
    checked = check_all(azure_rig, store, again.report, before)
    fault_tally.add(
        "storage", "Azure resets on the store (persistent)", lost=checked.lost, duplicated=checked.duplicated
    )


def test_a_commit_whose_answer_is_lost_after_it_landed_is_made_once(
    fault_archive: ArchiveLayout,
    dask_scheduler: str,
    fault_tally: FaultTally,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The branch update lands and its answer is lost: the commit fails to the writer, which
    commits again. toxiproxy cannot aim at that one request among a commit's dozens, so this
    fault alone is simulated: Icechunk's commit runs for real, then the error a lost answer gives
    is raised in its place, once. The retry must find the checkpoint on the branch and take it
    as done, not commit it twice."""
    store, batch = ismip6_resources(
        fault_archive.root, (tmp_path / "store").as_uri(), batch_extra={"commit": {"everyGroups": 1000}}
    )
    commit = icechunk.Session.commit
    landed: list[str] = []

    def commit_then_lose_the_answer(session: icechunk.Session, message: str, **options: Any) -> str:
        snapshot = commit(session, message, **options)
        if "checkpoint" in (options.get("metadata") or {}) and not landed:
            landed.append(snapshot)
            raise icechunk.StorageError("connection reset by peer (simulated: the answer was lost)")
        return snapshot

    monkeypatch.setattr(icechunk.Session, "commit", commit_then_lose_the_answer)

    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert report.succeeded and report.commits == landed, report.error
    repo = open_repository(store.spec, create=False)
    checkpoints = [s for s in repo.ancestry(branch="main") if "checkpoint" in s.metadata]
    assert [c.id for c in checkpoints] == landed, "the checkpoint was committed twice"
    checked = check_store(store, fault_archive)
    assert_failure_log_holds_the_bad_files(tmp_path / "failures", fault_archive)
    fault_tally.add(
        "storage",
        "commit answer lost after it landed (simulated)",
        lost=checked.lost,
        duplicated=checked.duplicated + len(checkpoints) - 1,
    )
