"""gs:// against a real GCS emulator, fake-gcs-server (docs/gcs-emulator.md).

What it serves is tested end to end: sources listed, HEAD-ed and read on gs:// (by prefix and
glob, by explicit list, from a parquet index on gs://), a full batch virtualized from gs://
into a store on local disk with every value read back through Icechunk's own GCS client, a
reconciliation with reference checks, and deleting a prefix (deletionPolicy: Delete).

What it does not serve is pinned: it refuses the XML API's ``PUT /bucket/object`` that
object_store (under both obstore and Icechunk) writes every object with, so an Icechunk
repository cannot live on it. The test that says so asserts the exact request and answer:
when an emulator release serves it, that test fails and the store can move onto gs:// here.

Every client authenticates with a service-account key file (object_store signs its own token
from it, so no request leaves the machine): GCS credentials from the environment, or anonymous
writes, would make object_store ask the instance metadata server instead.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import icechunk
import pytest

from icechunk_operator.api import IcechunkStore, Reconciliation
from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import StorageSpec
from icechunk_operator.engine.reconcile import run_reconciliation
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.sources import encode_index, list_sources
from icechunk_operator.engine.storage import delete_repository, open_repository
from icechunk_operator.synthetic import ArchiveLayout, SyntheticFile
from tests.conftest import ismip6_resources
from tests.faults.invariants import assert_failure_log_holds_the_bad_files, check_store
from tests.faults.tally import FaultTally
from tests.servers import GcsServer, write_service_account_key

pytestmark = pytest.mark.slow

#: The emulator's whole answer to an XML-API object upload (fake-gcs-server v1.56.1).
REFUSAL = '{"error":{"code":400,"message":"invalid uploadType"'


@pytest.fixture(scope="module")
def gcs_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_service_account_key(tmp_path_factory.mktemp("gcs-key") / "service-account.json")


@pytest.fixture(scope="module")
def gcs_archive(shared_archive: ArchiveLayout, gcs_server_process: GcsServer) -> str:
    """The shared archive in a bucket of its own, uploaded through the JSON API; its gs:// root."""
    bucket = f"archive-{uuid.uuid4().hex[:8]}"
    gcs_server_process.create_bucket(bucket)
    for item in shared_archive.files:
        gcs_server_process.upload(bucket, relative(item, shared_archive), item.path.read_bytes())
    return f"gs://{bucket}/"


def relative(item: SyntheticFile, layout: ArchiveLayout) -> str:
    return item.path.relative_to(layout.root).as_posix()


def decoded(requests: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The emulator logs paths as object_store sends them, every byte but [A-Za-z0-9] escaped."""
    return [(method, urllib.parse.unquote(path), status) for method, path, status in requests]


def gcs_location(server: GcsServer, key: Path) -> dict[str, Any]:
    return {"endpoint": server.endpoint, "allowHttp": True, "credentials": {"file": str(key)}}


def gcs_resources(
    root: str, store_url: str, server: GcsServer, key: Path, **batch_extra: Any
) -> tuple[IcechunkStore, Any]:
    location = gcs_location(server, key)
    storage = location if store_url.startswith("gs://") else {}
    return ismip6_resources(
        root,
        store_url,
        store_extra={"storage": storage, "virtualChunkContainers": [{"urlPrefix": root, **location}]},
        batch_extra={"commit": {"everyGroups": 10}, **batch_extra},
    )


def test_sources_on_gs_listed_headed_and_indexed_as_uploaded(
    shared_archive: ArchiveLayout, gcs_archive: str, gcs_server_process: GcsServer, gcs_key: Path
) -> None:
    """The three ways a batch names its files, each against the emulator: a listing, one HEAD
    per listed file, and a parquet index read from gs:// (the sizes and generations are the
    uploaded objects', so the ledger's identity of a file is the one GCS gives it)."""
    store, _ = gcs_resources(gcs_archive, "file:///unused/ismip6", gcs_server_process, gcs_key)
    expected = {
        gcs_archive + relative(f, shared_archive): f.path.stat().st_size for f in shared_archive.files
    }
    _, since = gcs_server_process.requests()

    listed = list_sources(SourceSpec(prefix=gcs_archive + "Projection-AIS/"), store.spec)
    assert {f.url: f.size for f in listed} == expected
    assert all(f.etag for f in listed)

    some = sorted(expected)[::7]
    headed = list_sources(SourceSpec(files=some), store.spec)
    assert {f.url: f.size for f in headed} == {url: expected[url] for url in some}
    # the listing's ETag and the HEAD's are the same object's (HEAD quotes it, listing does not)
    etags = {f.url: f.etag for f in listed}
    assert all(f.etag and f.etag.strip('"') == (etags[f.url] or "").strip('"') for f in headed)

    bucket = gcs_archive.removeprefix("gs://").rstrip("/")
    gcs_server_process.upload(bucket, "indexes/some.parquet", encode_index(headed))
    indexed = list_sources(SourceSpec(index=gcs_archive + "indexes/some.parquet"), store.spec)
    assert indexed == headed

    requests = decoded(gcs_server_process.requests(since)[0])
    assert ("GET", f"/{bucket}?list-type=2&prefix=Projection-AIS/", 200) in requests, requests[:3]
    assert sorted(p for m, p, s in requests if (m, s) == ("HEAD", 200)) == [
        "/" + url.removeprefix("gs://") for url in some
    ]
    assert ("GET", f"/{bucket}/indexes/some.parquet", 200) in requests
    assert all(s < 400 for _, _, s in requests), [r for r in requests if r[2] >= 400]


def test_batch_from_gs_sources_reads_back_equal_through_icechunk_gcs(
    shared_archive: ArchiveLayout,
    gcs_archive: str,
    gcs_server_process: GcsServer,
    gcs_key: Path,
    tmp_path: Path,
    dask_scheduler: str,
    fault_tally: FaultTally,
) -> None:
    """A full batch with its sources on gs://: listed, read in ranges by the Dask workers
    (VirtualiZarr through obstore), committed into a store on local disk (the emulator cannot
    hold one), then every good file's values read back through Icechunk's own GCS client from
    the emulator; a re-run ingests nothing, and a reconciliation finds only the defective files
    missing. The emulator saw reads only, each answered."""
    store, batch = gcs_resources(
        gcs_archive,
        (tmp_path / "stores" / "ismip6").resolve().as_uri(),
        gcs_server_process,
        gcs_key,
        virtualization={"fixes": ["ismip6"], "split": {"dimension": "time"}},
    )
    _, since = gcs_server_process.requests()

    report = run_batch(store, batch, scheduler=dask_scheduler)

    good = [f for f in shared_archive.files if f.defect == "none"]
    assert report.succeeded and report.done == len(good) and report.failed == 4, report.error
    batch_requests, since = gcs_server_process.requests(since)
    result = check_store(
        store, shared_archive, url_of=lambda f: gcs_archive + relative(f, shared_archive), read_every=1
    )
    readback_requests, since = gcs_server_process.requests(since)
    assert_failure_log_holds_the_bad_files(
        tmp_path / "stores" / "failures",
        shared_archive,
        url_of=lambda f: gcs_archive + relative(f, shared_archive),
    )
    for requests in (batch_requests, readback_requests):
        assert {m for m, _, _ in requests} <= {"GET", "HEAD"}, "only reads of the sources"
        assert all(s < 400 for _, _, s in requests), [r for r in requests if r[2] >= 400][:5]
    # the workers read the sources in ranges; Icechunk read every good file's chunks in ranges
    assert any(s == 206 for _, _, s in batch_requests), "no ranged read of a source"
    read_back = {p for m, p, s in decoded(readback_requests) if (m, s) == ("GET", 206)}
    assert read_back >= {
        "/" + (gcs_archive + relative(f, shared_archive)).removeprefix("gs://") for f in good
    }

    again = run_batch(store, batch, scheduler=dask_scheduler)
    assert again.done == 0 and again.commits == [] and again.skipped == len(good)

    check = Reconciliation.model_validate(
        {
            "kind": "Reconciliation",
            "metadata": {"name": "check"},
            "spec": {"store": "ismip6", "prefix": gcs_archive, "glob": "**/*.nc", "checkReferences": True},
        }
    )
    found = run_reconciliation(store, check)
    bad = {gcs_archive + relative(f, shared_archive) for f in shared_archive.files if f.defect != "none"}
    assert found.counts() == {"missing": len(bad), "stale": 0, "orphaned": 0, "broken": 0}
    assert {entry.url for entry in found.missing} == bad
    fault_tally.add(
        "storage: GCS emulator",
        "sources on gs://, store on local disk (read back from gs://)",
        injected=len(good),
        lost=result.lost,
        duplicated=result.duplicated,
    )


def test_deleting_a_prefix_on_gs_removes_every_object(gcs_server_process: GcsServer, gcs_key: Path) -> None:
    """deletionPolicy: Delete on gs:// (a listing, one XML-API DELETE per object, a listing
    again), on objects put through the JSON API since the emulator refuses object_store's PUT;
    objects beside the prefix stay."""
    bucket = f"doomed-{uuid.uuid4().hex[:8]}"
    gcs_server_process.create_bucket(bucket)
    for name in ("store/repo", "store/snapshots/a", "store/chunks/b", "store-other/kept"):
        gcs_server_process.upload(bucket, name, b"x")
    spec = StorageSpec.model_validate(
        {"url": f"gs://{bucket}/store", **gcs_location(gcs_server_process, gcs_key)}
    )

    assert delete_repository(spec) == 3

    requests = decoded(gcs_server_process.requests()[0])
    deletes = {p for m, p, s in requests if m == "DELETE" and p.startswith(f"/{bucket}/") and s < 300}
    assert deletes == {f"/{bucket}/store/{rest}" for rest in ("repo", "snapshots/a", "chunks/b")}
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"{gcs_server_process.endpoint}/{bucket}/store%2Frepo", timeout=10)
    with urllib.request.urlopen(
        f"{gcs_server_process.endpoint}/{bucket}/store-other%2Fkept", timeout=10
    ) as r:
        assert r.read() == b"x"


def assert_names_the_refused_put(message: str, server: GcsServer, bucket: str) -> None:
    """object_store's error names the request and quotes the emulator's answer."""
    request = re.search(rf"Error performing PUT {re.escape(server.endpoint)}(/\S+) in ", message)
    # the first snapshot and its transaction log go out together: either is refused first
    assert request and urllib.parse.unquote(request.group(1)) in {
        f"/{bucket}/ismip6/{kind}/1CECHNKREP0F1RSTCMT0" for kind in ("snapshots", "transactions")
    }, message
    assert f"400 Bad Request: {REFUSAL}" in message, message


def test_emulator_refuses_the_xml_api_put_so_no_repository_on_gs(
    shared_archive: ArchiveLayout,
    gcs_archive: str,
    gcs_server_process: GcsServer,
    gcs_key: Path,
    dask_scheduler: str,
    fault_tally: FaultTally,
) -> None:
    """A known limitation of fake-gcs-server (its issue #331, open as of v1.56.1): an XML-API upload,
    ``PUT /bucket/object`` without ``uploadType``, is answered 400 "invalid uploadType". Real
    GCS accepts it, and object_store writes every object with it (plain, with
    ``x-goog-if-generation-match`` for Icechunk's conditional writes, and ``POST ?uploads`` for
    multipart), so creating a repository on the emulator fails at Icechunk's first write.

    Asserted at three levels: the raw requests (the same bytes the JSON API stores), Icechunk
    creating a repository, and a batch whose store is on gs:// (it fails naming the request and
    loses nothing). When this test fails, the emulator serves the request: move the store of
    the batch test above onto gs:// and update docs/gcs-emulator.md."""
    bucket = f"stores-{uuid.uuid4().hex[:8]}"
    gcs_server_process.create_bucket(bucket)
    _, since = gcs_server_process.requests()

    # 1. the requests themselves, as object_store sends them: a conditional create (Icechunk's
    # writes), and the start of a multipart upload (obstore's large puts)
    object_url = f"{gcs_server_process.endpoint}/{bucket}/probe%2Fobject"
    for method, url, headers in [
        ("PUT", object_url, {"x-goog-if-generation-match": "0"}),
        ("POST", object_url + "?uploads=", {}),
    ]:
        request = urllib.request.Request(
            url,
            data=b"icechunk",
            method=method,
            headers={"Content-Type": "application/octet-stream", **headers},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
        assert refused.value.read().decode().startswith(REFUSAL)
    # the same bytes through the JSON API are stored
    assert gcs_server_process.upload(bucket, "probe/object", b"icechunk")["size"] == "8"

    # 2. Icechunk creating a repository: its first write is the initial snapshot
    store, batch = gcs_resources(gcs_archive, f"gs://{bucket}/ismip6", gcs_server_process, gcs_key)
    with pytest.raises(icechunk.IcechunkError) as failed:
        open_repository(store.spec)
    assert_names_the_refused_put(str(failed.value), gcs_server_process, bucket)

    # 3. a batch into that store: the run fails (a storage error, retried by whoever runs it)
    # naming the request, before it lists a source; nothing written, nothing lost
    with pytest.raises(icechunk.IcechunkError) as failed:
        run_batch(store, batch, scheduler=dask_scheduler)
    assert_names_the_refused_put(str(failed.value), gcs_server_process, bucket)

    requests = decoded(gcs_server_process.requests(since)[0])
    assert ("POST", f"/{bucket}/probe/object?uploads=", 400) in requests
    refused_puts = {p for m, p, s in requests if (m, s) == ("PUT", 400)}
    assert f"/{bucket}/probe/object" in refused_puts
    assert f"/{bucket}/ismip6/snapshots/1CECHNKREP0F1RSTCMT0" in refused_puts
    assert not [r for r in requests if r[0] in ("PUT", "DELETE") and r[2] < 300], "a write was stored"
    # nothing lost: every source is still there, and the store's prefix holds nothing
    sources = list_sources(SourceSpec(prefix=gcs_archive, glob="**/*.nc"), store.spec)
    lost = len(shared_archive.files) - len(sources)
    assert lost == 0
    with urllib.request.urlopen(f"{gcs_server_process.endpoint}/storage/v1/b/{bucket}/o?prefix=ismip6/") as r:
        assert "items" not in json.loads(r.read())
    fault_tally.add(
        "storage: GCS emulator",
        "XML-API PUT refused (400 invalid uploadType): store on gs://",
        injected=len(refused_puts),
        lost=lost,
    )


def test_emulator_ignores_if_match_so_a_replaced_source_is_not_refused(
    gcs_server_process: GcsServer, gcs_key: Path, fault_tally: FaultTally
) -> None:
    """A second limitation of fake-gcs-server v1.56.1: it ignores ``If-Match`` on reads. Icechunk
    reads every virtual chunk with ``If-Match: <the ETag recorded with the reference>``, so on GCS a
    source replaced after its ingest is refused (412) instead of read as the new file's bytes;
    on the emulator the read succeeds. A test of replaced sources on gs:// therefore cannot run
    here: it would pass whatever Icechunk did. When this test fails, the emulator checks it."""
    import obstore
    from obstore.store import GCSStore

    bucket = f"replaced-{uuid.uuid4().hex[:8]}"
    gcs_server_process.create_bucket(bucket)
    gcs_server_process.upload(bucket, "source.nc", b"first version")
    store = GCSStore(
        bucket,
        base_url=gcs_server_process.endpoint,
        service_account_path=str(gcs_key),
        client_options={"allow_http": True},
    )
    recorded = obstore.head(store, "source.nc")["e_tag"]
    gcs_server_process.upload(bucket, "source.nc", b"second version")  # a new generation
    assert obstore.head(store, "source.nc")["e_tag"] != recorded
    _, since = gcs_server_process.requests()

    read = obstore.get(store, "source.nc", options={"if_match": recorded, "range": (0, 6)})

    assert bytes(read.bytes()) == b"second"  # real GCS: 412 Precondition Failed, PreconditionError
    assert decoded(gcs_server_process.requests(since)[0]) == [("GET", f"/{bucket}/source.nc", 206)]
    # one replaced source tried; nothing of the product's is at stake, so no loss to count
    fault_tally.add("storage: GCS emulator", "If-Match ignored on reads: replaced source served")
