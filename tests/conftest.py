"""Shared fixtures: a real Dask cluster, real object-storage servers (S3, Azure, toxiproxy in front
of S3), real NetCDF archives.

Servers listen on free loopback ports and fixtures wait until they answer; nothing sleeps.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE
from icechunk_operator.engine.storage import quiet_logs
from icechunk_operator.synthetic import ArchiveLayout, plan_archive, write_archive
from tests.faults.tally import TALLY, FaultTally
from tests.servers import (
    REPO,
    S3_KEY,
    S3_SECRET,
    GcsServer,
    S3Server,
    Toxiproxy,
    free_port,
    gcs_server,
    listening_or_ended,
    s3_server,
    stop_process,
    toxiproxy,
    wait_until,
)

pytest_plugins = ["tests.builds", "tests.tiers"]

quiet_logs()

#: Azurite's one built-in account and its key, published in Azurite's documentation.
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """One process cluster for the whole session: starting one costs seconds per run."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def s3_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto in server mode) in its own process."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server_process: S3Server) -> str:
    return s3_server_process.endpoint


@dataclass
class ProxiedS3:
    """The S3 server behind a toxiproxy proxy: ``endpoint`` goes through it, toxics act on it."""

    toxiproxy: Toxiproxy
    proxy: str
    endpoint: str
    server: S3Server

    def clear_toxics(self) -> None:
        for toxic in self.toxiproxy.toxics(self.proxy):
            self.toxiproxy.remove_toxic(self.proxy, toxic)


@pytest.fixture(scope="session")
def toxiproxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    """toxiproxy (built from its Go module and cached by scripts/build-toxiproxy.sh)."""
    with toxiproxy(tmp_path_factory.mktemp("toxiproxy")) as proxy:
        yield proxy


@pytest.fixture
def proxied_s3(toxiproxy_server: Toxiproxy, s3_server_process: S3Server, s3_env: str) -> Iterator[ProxiedS3]:
    """A fresh proxy in front of the S3 server per test (with the S3 keys in the environment),
    removed at the end with its toxics."""
    name = f"s3-{uuid.uuid4().hex[:8]}"
    endpoint = toxiproxy_server.proxy(name, s3_server_process.endpoint.removeprefix("http://"))
    proxied = ProxiedS3(toxiproxy_server, name, endpoint, s3_server_process)
    try:
        yield proxied
    finally:
        toxiproxy_server.delete_proxy(name)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture(scope="session")
def azure_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service (installed and cached by scripts/install-azurite.sh) in its own
    process; the endpoint is the account's blob URL."""
    command = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-azurite.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    port = free_port()
    folder = tmp_path_factory.mktemp("azurite")
    with (folder / "azurite.log").open("w") as out:
        address = ["--blobHost", "127.0.0.1", "--blobPort", str(port)]
        process = subprocess.Popen(
            [command, *address, "--location", str(folder / "data"), "--skipApiVersionCheck", "--loose"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}/{AZURE_ACCOUNT}"

    try:
        wait_until(lambda: listening_or_ended(port, process), what="Azurite")
        if process.poll() is not None:
            raise RuntimeError(f"Azurite ended at start: {(folder / 'azurite.log').read_text()[-2000:]}")
        yield endpoint
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def gcs_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """fake-gcs-server (built from its Go module and cached by scripts/build-go-tool.sh), the
    gs:// tests' only server; docs/gcs-emulator.md says which requests it serves."""
    with gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


def make_archive(root: Path, **kwargs: Any) -> ArchiveLayout:
    options = {"institutions": 2, "models": 5, "experiments": 2, "variables": 3} | kwargs
    layout = plan_archive(root, **options)
    write_archive(layout, resolution_km=32, times=3)
    return layout


@pytest.fixture(scope="session")
def shared_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveLayout:
    """A read-only archive for tests that do not change their sources."""
    return make_archive(tmp_path_factory.mktemp("shared") / "archive")


@pytest.fixture
def archive(tmp_path: Path) -> ArchiveLayout:
    """A private archive for tests that replace, add or break files."""
    return make_archive(tmp_path / "archive")


def ismip6_resources(
    archive_root: Path | str,
    store_url: str,
    *,
    container_prefix: str | None = None,
    batch_name: str = "ismip6",
    store_extra: dict[str, Any] | None = None,
    batch_extra: dict[str, Any] | None = None,
) -> tuple[IcechunkStore, IngestBatch]:
    """An IcechunkStore + IngestBatch pair for an ISMIP6-shaped archive."""
    root_url = archive_root if isinstance(archive_root, str) else archive_root.resolve().as_uri() + "/"
    store_doc: dict[str, Any] = {
        "kind": "IcechunkStore",
        "metadata": {"name": "ismip6"},
        "spec": {
            "storage": {"url": store_url},
            "virtualChunkContainers": [{"urlPrefix": container_prefix or root_url}],
        },
    }
    batch_doc: dict[str, Any] = {
        "kind": "IngestBatch",
        "metadata": {"name": batch_name},
        "spec": {
            "store": "ismip6",
            "source": {"prefix": root_url + "Projection-AIS/", "glob": "**/*.nc"},
            "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
            "virtualization": {"fixes": ["ismip6"]},
            "execution": {"workers": 2},
            "failures": {"maxFailedFiles": 10},
        },
    }
    _deep_update(store_doc["spec"], store_extra or {})
    _deep_update(batch_doc["spec"], batch_extra or {})
    return IcechunkStore.model_validate(store_doc), IngestBatch.model_validate(batch_doc)


def _deep_update(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


@pytest.fixture
def fault_tally() -> FaultTally:
    """The run's fault tally (see tests/faults/tally.py): add what a fault test injected."""
    return TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault matrix's figures, after a run that had fault tests."""
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)
        TALLY.write()


@pytest.fixture(scope="session")
def chart_tools() -> Path:
    """helm and checkov, built or found by scripts/build-chart-tools.sh."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-chart-tools.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])
