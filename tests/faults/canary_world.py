"""What the secret-canary tests run against: storage servers that check the canary, a Dask
cluster whose workers hold it as worker pods would, and the collection of what the servers
and the repositories hold afterwards.

versitygw verifies every request's signature with the canary as its secret key; Azurite runs
with the canary as its only account's key; fake-gcs-server accepts any token, which the client
signs with a key file that holds the canary. A run that works used the canary for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.faults.canary import Evidence
from tests.servers import (
    S3_KEY,
    GcsServer,
    S3Server,
    azurite_server,
    free_port,
    gcs_server,
    listening_or_ended,
    stop_process,
    versitygw_server,
    wait_until,
)

ACCOUNT = "canaryaccount"
#: The servers' data folders: objects and their metadata, not the servers' own request logs
#: (a SAS token travels in the URL by design, so Azurite's log holds a wrong one).
DATA_FOLDERS = ("s3/versitygw-data", "s3/versitygw-meta", "azure/data", "gcs/fake-gcs-data")


@dataclass
class Servers:
    s3: S3Server
    azure: str  # the account's blob endpoint
    gcs: GcsServer | None
    root: Path  # each server's folder is below

    def storage(self) -> dict[str, object]:
        """``spec.storage`` fields (but the URL) of a store on versitygw."""
        return {
            "endpoint": self.s3.endpoint,
            "allowHttp": True,
            "forcePathStyle": True,
            "region": "us-east-1",
        }

    def azure_container(self, **extra: object) -> dict[str, object]:
        """The virtual chunk container of the sources on Azurite."""
        location = {"endpoint": self.azure, "allowHttp": True, "azureAccount": ACCOUNT}
        return {"urlPrefix": "az://archive/", **location, **extra}


def folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@contextmanager
def canary_servers(root: Path, key: str, layout: ArchiveLayout, *, gcs: bool = True) -> Iterator[Servers]:
    """versitygw with bucket ``stores`` for the stores, and the archive in container ``archive``
    of Azurite (and, with ``gcs``, in bucket ``archive`` of fake-gcs-server)."""
    from azure.storage.blob import BlobServiceClient

    with ExitStack() as stack:
        s3 = stack.enter_context(versitygw_server(folder(root / "s3"), secret=key))
        azure = stack.enter_context(azurite_server(folder(root / "azure"), ACCOUNT, key))
        gcs_ = stack.enter_context(gcs_server(folder(root / "gcs"))) if gcs else None
        s3.client().create_bucket(Bucket="stores")
        credential = {"account_name": ACCOUNT, "account_key": key}
        container = BlobServiceClient(account_url=azure, credential=credential).create_container("archive")
        if gcs_:
            gcs_.create_bucket("archive")
        for item in layout.files:
            name = item.path.relative_to(layout.root).as_posix()
            container.upload_blob(name, item.path.read_bytes())
            if gcs_:
                gcs_.upload("archive", name, item.path.read_bytes())
        yield Servers(s3, azure, gcs_, root)


def credential_values(key: str) -> dict[str, str]:
    """The variables a store's Secret holds, with the canary as both secrets."""
    return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": key, "AZURE_STORAGE_ACCOUNT_KEY": key}


def environment_with(values: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without anyone's credentials or Icechunk settings, plus
    ``values``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "AZURE_", "GOOGLE_", "ICECHUNK_"))
    }
    return {**inherited, "AWS_DEFAULT_REGION": "us-east-1", **values}


@contextmanager
def dask_cluster(folder: Path, environment: Mapping[str, str], workers: int = 1) -> Iterator[str]:
    """A Dask scheduler and ``workers`` worker processes (two threads each) with ``environment``,
    as the worker pods of a batch get the store's Secret (the session's shared cluster has no
    secrets, and must not); their output goes to ``folder/dask-*.log``, searched too. Yields
    the scheduler's address."""
    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = {
        "scheduler": [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        "worker": [
            *(dask, "worker", address, "--nworkers", str(workers), "--nthreads", "2"),
            *("--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0"),
        ],
    }
    with ExitStack() as stack:
        processes = {}
        for role, command in commands.items():
            with (folder / f"dask-{role}.log").open("wb") as out:
                processes[role] = subprocess.Popen(
                    command, env=dict(environment), stdout=out, stderr=subprocess.STDOUT
                )
            stack.callback(stop_process, processes[role])
            if role == "scheduler":
                wait_until(lambda: listening_or_ended(port, processes["scheduler"]), what="dask scheduler")
        _wait_for_workers(address, workers, processes["worker"])
        yield address


def _wait_for_workers(address: str, count: int, process: subprocess.Popen[bytes]) -> None:
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(count, timeout=120)
    if process.poll() is not None:
        raise RuntimeError(f"dask worker ended at start (exit {process.returncode})")


def collect_storage(evidence: Evidence, root: Path) -> None:
    """Every object and metadata file the servers hold; the failure logs and reconciliation
    reports also as documents of their own (they are what a person opens)."""
    for data in DATA_FOLDERS:
        if (root / data.partition("/")[0]).exists():
            assert evidence.add_tree("storage objects", root / data), f"nothing in {data}"
    stores = root / "s3" / "versitygw-data" / "stores"
    for log in sorted((stores / "failures").glob("*.json")):
        evidence.add("failure logs", log.name, log.read_bytes())
    for report in sorted((stores / "reconciliations").glob("*.json")):
        evidence.add("reconciliation reports", report.name, report.read_bytes())


def collect_commits(evidence: Evidence, stores: Mapping[str, IcechunkStore]) -> None:
    """Each snapshot's message and metadata, and each repository's config, as Icechunk reads
    them (inside ``credentials_environment`` with the canary)."""
    for name, store in stores.items():
        repo = open_repository(store.spec, create=False)
        for info in repo.ancestry(branch=store.spec.branch):
            record = {"message": info.message, "metadata": info.metadata, "id": info.id}
            evidence.add("commit metadata", f"{name} {info.id}", json.dumps(record, default=str))
        evidence.add("commit metadata", f"{name} config", repr(repo.config))


def collect_lines(evidence: Evidence, place: str, files: list[Path]) -> None:
    for path in files:
        evidence.add_lines(place, path.name, path.read_text(errors="replace"))
