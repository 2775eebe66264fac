"""Every kind of source container a spec can declare becomes a config and credentials that
Icechunk accepts: no server is needed to find a credential kind Icechunk refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import icechunk
import pytest

from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.storage import authorize_containers, build_config

SERVICE_ACCOUNT = {"type": "service_account", "client_email": "reader@example.invalid", "private_key": ""}


def spec_with(container: dict[str, Any]) -> IcechunkStoreSpec:
    return IcechunkStoreSpec.model_validate(
        {"storage": {"url": "file:///tmp/store"}, "virtualChunkContainers": [container]}
    )


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, str]:
    files = {
        "gcs": {"path": tmp_path / "sa.json", "body": SERVICE_ACCOUNT},
        "azure-key": {"path": tmp_path / "azure-key.json", "body": {"account_key": "a2V5"}},
        "azure-sas": {"path": tmp_path / "azure-sas.json", "body": {"sas_token": "sv=2024&sig=x"}},
        "s3": {"path": tmp_path / "s3.json", "body": {"access_key_id": "id", "secret_access_key": "secret"}},
    }
    for entry in files.values():
        Path(entry["path"]).write_text(json.dumps(entry["body"]))
    return {name: str(entry["path"]) for name, entry in files.items()}


@pytest.mark.parametrize(
    ("prefix", "credentials", "location"),
    [
        ("file:///data/archive/", {}, {}),
        ("s3://archive/", {"file": "s3"}, {"endpoint": "http://127.0.0.1:9000", "allowHttp": True}),
        ("s3://archive/", {"anonymous": True}, {}),
        ("s3://archive/", {}, {"region": "us-west-2"}),
        ("gs://archive/", {"file": "gcs"}, {"endpoint": "http://127.0.0.1:4443", "allowHttp": True}),
        ("gs://archive/", {"anonymous": True}, {}),
        ("gs://archive/", {}, {}),
        (
            "az://archive/",
            {"file": "azure-key"},
            {"azureAccount": "acct", "endpoint": "http://127.0.0.1:10000/acct"},
        ),
        ("az://archive/", {"file": "azure-sas"}, {"azureAccount": "acct"}),
        ("az://archive/", {"anonymous": True}, {"azureAccount": "acct"}),
        ("az://archive/", {}, {"azureAccount": "acct"}),
    ],
)
def test_each_container_kind_gives_a_config_and_credentials_icechunk_accepts(
    prefix: str, credentials: dict[str, Any], location: dict[str, Any], key_files: dict[str, str]
) -> None:
    if "file" in credentials:
        credentials = {"file": key_files[credentials["file"]]}
    spec = spec_with({"urlPrefix": prefix, "credentials": credentials, **location})

    config = build_config(spec)
    authorized = authorize_containers(spec)  # raises on a credential kind Icechunk refuses

    assert list(config.virtual_chunk_containers or {}) == [prefix]
    assert list(authorized) == [prefix]
    # A repository really opens with both: the config and credentials fit together.
    repo = icechunk.Repository.create(
        icechunk.in_memory_storage(), config=config, authorize_virtual_chunk_access=authorized
    )
    assert list(repo.config.virtual_chunk_containers or {}) == [prefix]


def test_commit_concurrency_reaches_the_repository_config(tmp_path: Path) -> None:
    """The store's commitConcurrency is the manifest concurrency of Icechunk's commits, kept
    beside manifest splitting, and a repository created with it stores it."""
    spec = IcechunkStoreSpec.model_validate(
        {
            "storage": {"url": (tmp_path / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": "file:///data/"}],
            "config": {
                "commitConcurrency": 16,
                "manifestSplitting": [{"pathRegex": ".*", "dimension": "time", "size": 100}],
            },
        }
    )
    config = build_config(spec)
    assert config.manifest is not None
    assert config.manifest.max_concurrent_manifest_fetches_during_commit == 16
    assert config.manifest.splitting is not None
    default = build_config(spec_with({"urlPrefix": "file:///data/"}))
    assert default.manifest is not None
    assert default.manifest.max_concurrent_manifest_fetches_during_commit == 64

    icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "store")), config=config)
    stored = icechunk.Repository.fetch_config(icechunk.local_filesystem_storage(str(tmp_path / "store")))
    assert stored is not None and stored.manifest is not None
    assert stored.manifest.max_concurrent_manifest_fetches_during_commit == 16
