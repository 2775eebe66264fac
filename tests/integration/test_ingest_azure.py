"""The engine against Azurite, the Azure Storage emulator: sources and the store both in az://
containers, read back through Icechunk's own Azure client, then reconciled against a listing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from icechunk_operator.api import Reconciliation
from icechunk_operator.engine.reconcile import run_reconciliation
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import AZURE_ACCOUNT, AZURE_KEY, ismip6_resources
from tests.integration.readback import assert_bucket_ingest, branch_commits, ledger_urls

pytestmark = pytest.mark.azure


def blob_service(endpoint: str) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(
        account_url=endpoint, credential={"account_name": AZURE_ACCOUNT, "account_key": AZURE_KEY}
    )


def upload_archive(endpoint: str, layout: ArchiveLayout, container: str) -> str:
    client = blob_service(endpoint).create_container(container)
    for item in layout.files:
        with item.path.open("rb") as data:
            client.upload_blob(item.path.relative_to(layout.root).as_posix(), data)
    return f"az://{container}/"


def test_azure_sources_into_an_azure_store_read_back_equal_and_reconcile_clean(
    shared_archive: ArchiveLayout, tmp_path: Path, azure_endpoint: str, dask_scheduler: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = upload_archive(azure_endpoint, shared_archive, f"archive-{suffix}")
    blob_service(azure_endpoint).create_container(f"stores-{suffix}")
    keys = tmp_path / "azure-keys.json"  # the workers read the key from a file the spec names
    keys.write_text(json.dumps({"account_key": AZURE_KEY}))
    location = {
        "endpoint": azure_endpoint,
        "allowHttp": True,
        "azureAccount": AZURE_ACCOUNT,
        "credentials": {"file": str(keys)},
    }
    store, batch = ismip6_resources(
        root,
        f"az://stores-{suffix}/ismip6",
        store_extra={"storage": location, "virtualChunkContainers": [{"urlPrefix": root, **location}]},
        batch_extra={"virtualization": {"split": {"dimension": "time"}}, "commit": {"everyGroups": 10}},
    )

    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert_bucket_ingest(report, store, shared_archive, root)

    commits = branch_commits(store)
    again = run_batch(store, batch, scheduler=dask_scheduler)
    assert again.done == 0 and again.commits == [] and branch_commits(store) == commits

    check = Reconciliation.model_validate(
        {
            "kind": "Reconciliation",
            "metadata": {"name": "check"},
            "spec": {"store": "ismip6", "prefix": root, "glob": "**/*.nc", "checkReferences": True},
        }
    )
    found = run_reconciliation(store, check)
    # the defective files were listed but never ingested: missing, and nothing else
    defective = {
        root + f.path.relative_to(shared_archive.root).as_posix() for f in shared_archive.files
    } - set(ledger_urls(store))
    assert found.counts() == {"missing": len(defective), "stale": 0, "orphaned": 0, "broken": 0}
    assert {entry.url for entry in found.missing} == defective
