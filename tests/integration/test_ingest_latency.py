"""The ingest on object storage behind toxiproxy: latency hiding changes nothing in the result,
and connections that are reset or stall now and then lose and duplicate nothing.

Every request (the workers' reads, the writer's commits, the listing) goes through the proxy.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import default_buffer_prototype

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.ledger import LEDGER_GROUP, decode_page
from icechunk_operator.engine.runner import RunReport, run_batch
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import S3_KEY, S3_SECRET, ProxiedS3, ismip6_resources
from tests.integration.readback import assert_bucket_ingest, branch_commits
from tests.integration.test_ingest_s3 import upload_archive

pytestmark = pytest.mark.s3


def proxied_resources(
    proxied: ProxiedS3, root: str, store_url: str, batch_extra: dict[str, Any], keys: Path
) -> tuple[IcechunkStore, IngestBatch]:
    """Store and sources through the proxy; the workers (a cluster started before this test's
    environment) read their keys from a file."""
    keys.write_text(json.dumps({"access_key_id": S3_KEY, "secret_access_key": S3_SECRET}))
    location = {
        "endpoint": proxied.endpoint,
        "region": "us-east-1",
        "allowHttp": True,
        "forcePathStyle": True,
    }
    container = {"urlPrefix": root, **location, "credentials": {"file": str(keys)}}
    return ismip6_resources(
        root,
        store_url,
        store_extra={"storage": location, "virtualChunkContainers": [container]},
        batch_extra={"virtualization": {"split": {"dimension": "time"}}, **batch_extra},
    )


def store_contents(store: IcechunkStore) -> dict[str, Any]:
    """Every key of the branch: documents as JSON, chunks as their bytes (read through the
    virtual references), the ledger as its entries without the time and batch of ingest."""

    async def dump() -> dict[str, Any]:
        repo = open_repository(store.spec, create=False)
        session = repo.readonly_session(branch=store.spec.branch)
        prototype = default_buffer_prototype()
        keys = sorted([key async for key in session.store.list()])
        values = await asyncio.gather(*(session.store.get(key, prototype) for key in keys))
        contents: dict[str, Any] = {}
        ledger: list[tuple[Any, ...]] = []
        for key, value in zip(keys, values, strict=True):
            data = value.to_bytes()
            if key.startswith(LEDGER_GROUP + "/page-"):
                if not key.endswith("zarr.json"):
                    ledger.extend((e.url, e.size, e.etag, e.group, e.removed) for e in decode_page(data))
            else:
                contents[key] = json.loads(data) if key.endswith("zarr.json") else data
        contents["ledger"] = sorted(ledger)
        return contents

    return asyncio.run(dump())


def test_files_in_flight_change_nothing_in_the_store(
    shared_archive: ArchiveLayout, proxied_s3: ProxiedS3, dask_scheduler: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = upload_archive(proxied_s3.server.endpoint, shared_archive, f"archive-{suffix}")
    proxied_s3.server.client().create_bucket(Bucket=f"stores-{suffix}")
    proxied_s3.toxiproxy.set_latency(proxied_s3.proxy, 20)
    stores = {}
    for in_flight in (1, 8):
        store, batch = proxied_resources(
            proxied_s3,
            root,
            f"s3://stores-{suffix}/in-flight-{in_flight}",
            {"execution": {"filesInFlight": in_flight, "filesPerTask": 6}},
            tmp_path / "keys.json",
        )
        report = run_batch(store, batch, scheduler=dask_scheduler)
        assert report.succeeded and report.failed == 4, [f.message[:400] for f in report.failures][:3]
        stores[in_flight] = store
    proxied_s3.clear_toxics()

    one_at_a_time, eight = (store_contents(stores[n]) for n in (1, 8))
    assert one_at_a_time.keys() == eight.keys()
    assert one_at_a_time == eight
    good = [f for f in shared_archive.files if f.defect == "none"]
    assert len(one_at_a_time["ledger"]) == len(good)


def assert_some_connections_fail(endpoint: str, attempts: int = 40) -> None:
    """The toxics really bite: of a few fresh connections through the proxy, some fail."""
    failures = 0
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2) as response:
                response.read()
        except OSError, http.client.HTTPException:
            failures += 1
    assert 0 < failures < attempts


def run_until_done(
    store: IcechunkStore, batch: IngestBatch, scheduler: str, defective: int, runs: int = 4
) -> list[RunReport]:
    """Run, and run again as a user would, until the batch succeeds with only the defective
    files failed: a crash leaves the store at its last good snapshot, and a re-run retries the
    files a fault made fail."""
    reports = []
    for _ in range(runs):
        try:
            report = run_batch(store, batch, scheduler=scheduler)
        except Exception as error:
            reports.append(RunReport(batch.metadata.name, store.metadata.name, error=repr(error)))
            continue
        reports.append(report)
        if report.succeeded and report.failed == defective:
            break
    return reports


@pytest.mark.parametrize(
    "toxics",
    [
        pytest.param(
            [("reset_peer", {"timeout": 0}, "upstream", 0.3)], id="connections-reset-before-the-request"
        ),
        pytest.param(
            [("reset_peer", {"timeout": 150}, "downstream", 0.3)], id="connections-reset-mid-response"
        ),
        pytest.param([("timeout", {"timeout": 500}, "downstream", 0.15)], id="connections-stall-then-close"),
    ],
)
def test_flaky_connections_lose_and_duplicate_nothing(
    shared_archive: ArchiveLayout,
    proxied_s3: ProxiedS3,
    dask_scheduler: str,
    toxics: list[tuple[str, dict[str, int], str, float]],
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = upload_archive(proxied_s3.server.endpoint, shared_archive, f"archive-{suffix}")
    proxied_s3.server.client().create_bucket(Bucket=f"stores-{suffix}")
    store, batch = proxied_resources(
        proxied_s3,
        root,
        f"s3://stores-{suffix}/flaky",
        {"execution": {"filesPerTask": 4}, "commit": {"everyGroups": 8}},
        tmp_path / "keys.json",
    )
    proxied_s3.toxiproxy.set_latency(proxied_s3.proxy, 5)
    for kind, attributes, stream, toxicity in toxics:
        proxied_s3.toxiproxy.add_toxic(proxied_s3.proxy, kind, attributes, stream=stream, toxicity=toxicity)
    assert_some_connections_fail(proxied_s3.endpoint)

    reports = run_until_done(store, batch, dask_scheduler, defective=4)
    proxied_s3.clear_toxics()

    final = reports[-1]
    assert final.succeeded and final.failed == 4, [
        (r.error, [f.message[:200] for f in r.failures]) for r in reports
    ]
    # Every good file exactly once: the ledger's pages name each one in one entry only, and
    # each group reads back equal to its source.
    clean = store_contents(store)
    urls = [entry[0] for entry in clean["ledger"] if not entry[4]]
    assert len(urls) == len(set(urls))
    assert_bucket_ingest(
        RunReport(
            final.batch,
            final.store,
            done=len(urls),
            failed=4,
            failure_log=final.failure_log,
            tolerance=final.tolerance,
        ),
        store,
        shared_archive,
        root,
    )
    # Each commit that landed is one checkpoint: its groups count once.
    repo = open_repository(store.spec, create=False)
    groups = sum(int(s.metadata.get("groups", 0)) for s in repo.ancestry(branch="main"))
    assert groups == len(urls)
    assert len(branch_commits(store)) >= 2
