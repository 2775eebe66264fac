"""Secret canaries through the CLI: one random secret is the S3 secret key of the store's server,
the Azure account key of the sources' server and two fields of a GCS key file, for full runs
that succeed, fail, crash and are refused; afterwards it is in nothing they wrote or showed.

The servers check it: versitygw verifies every request's signature with it, and Azurite runs
with it as its only account's key, so a run that works used it for real. A second canary is
the wrong secret of the runs that must fail to authenticate: their messages may not quote it.

Searched (each a row of the fault tally, category "secrets"): every command's output, its Python
logging at DEBUG and Icechunk's own log at debug; every object the three storage servers hold,
decompressed where compressed; the commit messages and metadata of every snapshot; the failure
logs and reconciliation reports; the Dask workers' logs; and ``repr``/``str`` of the loaded
models, the resolved credentials, the storage objects and the exceptions of the failing paths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from icechunk_operator.api import IcechunkStore
from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.documents import load_resources
from icechunk_operator.demo import ISMIP6_PATTERN, ISMIP6_TEMPLATE
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.credentials import credentials_environment, resolve_credentials
from icechunk_operator.engine.sources import list_sources
from icechunk_operator.engine.storage import build_storage, open_repository
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import make_archive
from tests.faults.canary import Evidence, Secret, canary, describe, pem_secret
from tests.faults.canary_world import (
    Servers,
    canary_servers,
    collect_commits,
    collect_lines,
    collect_storage,
    credential_values,
    dask_cluster,
    environment_with,
    folder,
)
from tests.faults.tally import FaultTally
from tests.integration.readback import assert_matches_source
from tests.servers import S3_KEY, write_service_account_key

pytestmark = [
    pytest.mark.s3,
    pytest.mark.azure,
    pytest.mark.slow,
    pytest.mark.builds("versitygw", "Azurite", "fake-gcs-server"),
]

#: The CLI with Python's logging at DEBUG into a file (the first argument): the CLI has no
#: verbose flag, and whatever any library logs at any level must be searched too.
VERBOSE_CLI = (
    "import logging, sys\n"
    "logging.basicConfig(filename=sys.argv.pop(1), level=logging.DEBUG)\n"
    "from icechunk_operator.cli import entrypoint\n"
    "entrypoint()\n"
)


@dataclass
class Cli:
    """Runs ``icechunk-operator`` as a user would, keeping everything it showed and logged."""

    environment: dict[str, str]
    evidence: Evidence
    logs: Path
    runs: int = 0

    def __call__(self, *args: str, expect: int, **extra_env: str | None) -> str:
        """Run a command (``extra_env`` changes its environment; None unsets); its output."""
        self.runs += 1
        label = f"{self.runs:02d} {' '.join(args[:1] + args[3:5])}"
        log = self.logs / f"python-{self.runs:02d}.log"
        environment = {**self.environment, **extra_env}
        result = subprocess.run(
            [sys.executable, "-c", VERBOSE_CLI, str(log), *args],
            env={name: value for name, value in environment.items() if value is not None},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        shown = result.stdout + result.stderr
        self.evidence.add_lines("CLI output", label, shown)
        self.evidence.add_lines("Python logs", label, log.read_text(errors="replace"))
        assert result.returncode == expect, f"{label}: exit {result.returncode}\n{shown[-4000:]}"
        return shown


def test_cli_runs_leave_the_secret_nowhere(tmp_path: Path, fault_tally: FaultTally) -> None:
    key, key_secret = canary("canary")
    wrong, wrong_secret = canary("wrong canary")
    gcs_key, pem = service_account_key(tmp_path / "service-account.json", key)
    secrets = [key_secret, wrong_secret, pem_secret("GCS private key", pem)]
    layout = make_archive(tmp_path / "archive", institutions=1, models=2)
    defective = sum(f.defect != "none" for f in layout.files)
    evidence = Evidence()

    with ExitStack() as stack:
        servers = stack.enter_context(canary_servers(tmp_path / "servers", key, layout))
        environment = cli_environment(key)
        dask = stack.enter_context(dask_cluster(folder(tmp_path / "dask"), environment))
        spec = write_yaml(tmp_path / "resources.yaml", resources(servers, gcs_key, dask))
        cli = Cli(environment, evidence, folder(tmp_path / "logs"))

        shown = cli("validate", "-f", str(spec), expect=0)
        assert "2 stores, 3 batches, 1 reconciliations: valid" in shown
        crashed = cli(
            *("run", "-f", str(spec), "--batch", "first"),
            expect=3,
            ICECHUNK_OPERATOR_FAILPOINTS="written=raise",
        )
        assert "crashed: InjectedFault: test fault: failpoint written" in crashed
        cli("run", "-f", str(spec), "--batch", "first", expect=0)  # resumes; defective files logged
        assert "IngestBatch strict failed" in cli("run", "-f", str(spec), "--batch", "strict", expect=1)
        cli("run", "-f", str(spec), "--batch", "from-gcs", expect=0)
        reconciled = cli("reconcile", "-f", str(spec), expect=1)
        assert f"missing {defective}" in reconciled and "report: s3://stores/reconciliations/" in reconciled
        assert "first" in cli("history", "-f", str(spec), "--store", "ismip6", expect=0)
        assert "expired" in cli("expire", "-f", str(spec), "--store", "ismip6", "--keep", "1", expect=0)

        # The wrong secret, where each is used: its server refuses it, and no message quotes it.
        s3_refused = cli(
            "history", "-f", str(spec), "--store", "ismip6", expect=3, AWS_SECRET_ACCESS_KEY=wrong
        )
        assert "SignatureDoesNotMatch" in s3_refused
        cli("run", "-f", str(spec), "--batch", "first", expect=3, AWS_SECRET_ACCESS_KEY=wrong)
        azure_refused = cli(
            "run", "-f", str(spec), "--batch", "first", expect=3, AZURE_STORAGE_ACCOUNT_KEY=wrong
        )
        assert "403 Forbidden" in azure_refused
        sas_refused = cli(
            *("run", "-f", str(spec), "--batch", "first"),
            expect=3,
            AZURE_STORAGE_ACCOUNT_KEY=None,
            AZURE_STORAGE_SAS_TOKEN=sas_token(wrong),
        )
        assert "403 Forbidden" in sas_refused
        broken_key = tmp_path / "broken-key.json"  # a quoted secret where the key file belongs
        broken_key.write_text(json.dumps(wrong))
        broken = write_yaml(tmp_path / "broken.yaml", resources(servers, broken_key, dask))
        unreadable = cli("run", "-f", str(broken), "--batch", "from-gcs", expect=3)
        assert wrong not in unreadable, f"the error quotes the key file:\n{unreadable[-2000:]}"
        assert f"credentials.file: {broken_key} is not a JSON object" in unreadable
        # A GitOps folder's file may hold the Secret beside the resources: refused, not quoted.
        with_secret = write_yaml(tmp_path / "with-secret.yaml", [kubernetes_secret(key), *read_yaml(spec)])
        assert "kind: must be one of" in cli("validate", "-f", str(with_secret), expect=2)

        stores = load_resources(spec).stores
        with credentials_environment(credential_values(key)):
            check_ingested(stores, layout, defective)
            collect_commits(evidence, stores)
            collect_reprs(evidence, stores)
        collect_failing_reprs(evidence, stores, load_resources(broken).stores["gcs"], wrong)

    collect_storage(evidence, servers.root)
    collect_lines(evidence, "worker logs", sorted((tmp_path / "dask").glob("*.log")))
    logged = {document.name.rpartition("-")[0] for document in evidence.places["failure logs"]}
    assert logged >= {"first", "strict", "from-gcs"}, logged  # and the crashed run's, if it had failures
    assert evidence.count("reconciliation reports") == 1
    # The search sees what is there: a commit message that only decompressed snapshots show,
    # and the canary in the file that holds the Secret.
    message = Secret("a commit message", (b"Ingest batch first",))
    objects = evidence.places["storage objects"]
    assert [d for d in objects if d.holds(message) and message.forms[0] not in d.views[0]]
    control = Evidence()
    control.add("control", with_secret.name, with_secret.read_bytes())
    assert control.leaks([key_secret])
    leaks = evidence.tally(fault_tally, secrets)
    assert not leaks, describe(leaks)


def resources(servers: Servers, gcs_key: Path, scheduler: str) -> list[dict[str, Any]]:
    """Store "ismip6" on versitygw with its sources on Azurite, store "gcs" beside it with its
    sources on fake-gcs-server; a batch that tolerates the defective files, one that does not,
    one from gs://, and a reconciliation that reads chunks back."""
    assert servers.gcs is not None
    gcs = {
        "urlPrefix": "gs://archive/",
        "endpoint": servers.gcs.endpoint,
        "allowHttp": True,
        "credentials": {"file": str(gcs_key)},
    }

    def store(name: str, container: dict[str, Any]) -> dict[str, Any]:
        storage = {"url": f"s3://stores/{name}", **servers.storage()}
        return resource("IcechunkStore", name, {"storage": storage, "virtualChunkContainers": [container]})

    def batch(name: str, store: str, root: str, max_failed: int) -> dict[str, Any]:
        spec = {
            "store": store,
            "source": {"prefix": root + "Projection-AIS/", "glob": "**/*.nc"},
            "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
            "virtualization": {"fixes": ["ismip6"]},
            "execution": {"scheduler": scheduler},
            "failures": {"maxFailedFiles": max_failed},
        }
        return resource("IngestBatch", name, spec)

    check = {"store": "ismip6", "prefix": "az://archive/Projection-AIS/", "checkReferences": True}
    return [
        store("ismip6", servers.azure_container()),
        store("gcs", gcs),
        batch("first", "ismip6", "az://archive/", 100),
        batch("strict", "ismip6", "az://archive/", 0),
        batch("from-gcs", "gcs", "gs://archive/", 100),
        resource("Reconciliation", "check", check),
    ]


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def kubernetes_secret(key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "store-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": key},
    }


def write_yaml(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def read_yaml(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text()))


def service_account_key(path: Path, key: str) -> tuple[Path, str]:
    """A GCS key file with a real RSA key (object_store signs its token with it) and the canary
    as its key id and client id; returns the file and its PEM key, a secret as well."""
    write_service_account_key(path)
    document = json.loads(path.read_text())
    document.update(private_key_id=key, client_id=key)
    path.write_text(json.dumps(document))
    return path, str(document["private_key"])


def sas_token(signature: str) -> str:
    """An account SAS of the usual shape whose signature is ``signature``."""
    return f"sv=2021-08-06&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&sig={urllib.parse.quote(signature)}"


def cli_environment(key: str) -> dict[str, str]:
    """The canary's credentials, Icechunk's log at debug and the traceback of a crash: all the
    output the CLI can be made to give."""
    values = {"ICECHUNK_LOG": "icechunk=debug", "ICECHUNK_OPERATOR_TRACEBACK": "1"}
    return environment_with({**credential_values(key), **values})


def check_ingested(stores: Mapping[str, IcechunkStore], layout: ArchiveLayout, defective: int) -> None:
    """The runs really used the secrets: every good file is in each store's ledger, and a good
    file's values read back through each store's virtual chunk container."""
    good = [f for f in layout.files if f.defect == "none"]
    for store in stores.values():
        ledger = load_ledger(open_repository(store.spec, create=False), store.spec.branch)
        assert len([e for e in ledger.values() if not e.removed]) == len(layout.files) - defective
        assert_matches_source(store, good[0])


def collect_reprs(evidence: Evidence, stores: Mapping[str, IcechunkStore]) -> None:
    """What a debugger, a log line or an f-string would show of the objects holding credentials."""
    for name, store in stores.items():
        storage = store.spec.storage
        shown = [
            repr(store),
            str(store),
            repr(resolve_credentials(storage.credentials, "s3")),
            str(resolve_credentials(storage.credentials, "s3")),
            repr(build_storage(storage)),
        ]
        for container in store.spec.virtual_chunk_containers:
            scheme = container.url_prefix.partition("://")[0]
            shown.append(repr(resolve_credentials(container.credentials, scheme)))
        evidence.add("reprs", name, "\n".join(shown))


def collect_failing_reprs(
    evidence: Evidence, stores: Mapping[str, IcechunkStore], broken: IcechunkStore, wrong: str
) -> None:
    """The exceptions of the failing paths, caught in this process: their str and repr."""
    caught: list[BaseException] = []
    ismip6 = stores["ismip6"].spec
    failing = [
        ({"AWS_SECRET_ACCESS_KEY": wrong}, lambda: open_repository(ismip6, create=False)),
        (
            {"AZURE_STORAGE_ACCOUNT_KEY": wrong},
            lambda: list_sources(SourceSpec(prefix="az://archive/Projection-AIS/"), ismip6),
        ),
        ({}, lambda: list_sources(SourceSpec(prefix="gs://archive/Projection-AIS/"), broken.spec)),
    ]
    for values, call in failing:
        with credentials_environment({"AWS_ACCESS_KEY_ID": S3_KEY, **values}):
            try:
                call()
            except Exception as error:
                caught.append(error)
    assert len(caught) == len(failing), "a call with a wrong secret succeeded"
    for error in caught:
        evidence.add("exceptions", type(error).__name__, f"{error}\n{error!r}\n{error.__cause__!r}")
