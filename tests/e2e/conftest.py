"""Fixtures for the end-to-end tests on a real control plane.

One control plane per session (etcd, kube-apiserver, kube-controller-manager, kwok), with our
CRDs and the Dask operator's installed, the Dask operator's controller and ours running as
processes, and a fake kubelet that runs commit pods' commands for real against a local Dask
cluster. Each test gets its own namespace.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from icechunk_operator.k8s import names
from icechunk_operator.k8s.metrics import QUEUE_PASSES
from tests.cluster.control_plane import REPO, ControlPlane, build_binaries, free_port
from tests.cluster.kubelet import FakeKubelet


def _dask_crds() -> Path:
    import dask_kubernetes

    return Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"


def wait_until(
    check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", poll: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric_value(url: str, metric: str, **labels: str) -> float | None:
    """One sample of an operator's /metrics (the first whose labels include ``labels``)."""
    import urllib.request

    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(root=tmp_path_factory.mktemp("control-plane"), bin=build_binaries()).start()
    try:
        plane.kubectl("apply", "-f", str(REPO / "crds"))
        plane.kubectl("apply", "--server-side", "-f", str(_dask_crds()))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


class ProcessHandle:
    """A long-running process of the test cluster (an operator), restartable and killable."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.args, self.env, self.logdir = name, args, env, logdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_url = ""
        self.health_url = ""

    def start(self) -> ProcessHandle:
        self.starts += 1
        log = (self.logdir / f"{self.name}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.logdir.glob(f"{self.name}-*.log"))
        )


@pytest.fixture(scope="session")
def dask_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessHandle]:
    """The Dask operator's controller (a Kopf operator shipped in dask-kubernetes)."""
    kopf = Path(sys.executable).with_name("kopf")
    handle = ProcessHandle(
        "dask-operator",
        [str(kopf), "run", "--standalone", "--all-namespaces", "-m", "dask_kubernetes.operator.controller"],
        control_plane.env(),
        tmp_path_factory.mktemp("dask-operator"),
    ).start()
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def operator_process(
    control_plane: ControlPlane, dask_operator: ProcessHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessHandle]:
    """Our operator, started exactly as the README says: ``icechunk-operator operator -A``."""
    env = {
        **control_plane.env(),
        "ICECHUNK_OPERATOR_QUEUE_INTERVAL_SECONDS": "2",
        # The stores' periodic probe (a child process, a second or two of CPU each) at the
        # production interval: a store's change and a batch's end probe it at once, and those are
        # what the tests wait on; every 5 s it took a good part of a core per live store.
        "ICECHUNK_OPERATOR_STORE_REFRESH_SECONDS": "300",
        # The test tier's cron clock (k8s/clock.py), moved by the moved_clock fixture.
        "ICECHUNK_OPERATOR_TEST_CLOCK_FILE": str(tmp_path_factory.mktemp("clock") / "offset-seconds"),
    }
    binary = Path(sys.executable).with_name("icechunk-operator")
    metrics_port, health_port = free_port(), free_port()
    handle = ProcessHandle(
        "operator",
        [
            str(binary),
            "operator",
            "--all-namespaces",
            f"--metrics-port={metrics_port}",
            f"--liveness=http://127.0.0.1:{health_port}/healthz",
        ],
        env,
        tmp_path_factory.mktemp("operator"),
    )
    handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    handle.health_url = f"http://127.0.0.1:{health_port}/healthz"
    handle.start()
    yield handle
    handle.stop()


OperatorStarter = Callable[..., ProcessHandle]


@pytest.fixture
def own_operators(
    operator_process: ProcessHandle, kubelet: FakeKubelet, tmp_path: Path
) -> Iterator[OperatorStarter]:
    """Starts operators of one test only: ``start(name, namespaces, **env)`` runs
    ``icechunk-operator operator -n NS...`` (standalone; every namespace when ``namespaces`` is
    empty) with extra environment. The session's operator watches every namespace, so it stops
    for the test (or it would act on the test's namespaces too) and starts again after it."""
    started: list[ProcessHandle] = []

    def start(name: str, namespaces: list[str], **env: str) -> ProcessHandle:
        where = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
        defaults = dict(operator_process.env)
        metrics_port = free_port()
        args = [operator_process.args[0], "operator", *where, f"--metrics-port={metrics_port}"]
        handle = ProcessHandle(name, args, {**defaults, **env}, tmp_path)
        handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        handle.start()
        started.append(handle)
        return handle

    operator_process.stop()
    try:
        yield start
    finally:
        for handle in started:
            handle.stop()
        operator_process.start()


@pytest.fixture(scope="session")
def kubelet(
    control_plane: ControlPlane,
    kube: client.ApiClient,
    dask_scheduler: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FakeKubelet]:
    tokens: dict[tuple[str, str], Path] = {}

    def service_account_kubeconfig(namespace: str, account: str) -> Path:
        """The pod's own identity, as the in-cluster token mount would give it: not an admin."""
        if (namespace, account) not in tokens:
            token = control_plane.kubectl("create", "token", account, "-n", namespace, "--duration=1h")
            tokens[namespace, account] = control_plane.kubeconfig_for_token(
                f"{namespace}-{account}", token.stdout.strip(), namespace
            )
        return tokens[namespace, account]

    fake = FakeKubelet(
        api=client.CoreV1Api(kube),
        workdir=tmp_path_factory.mktemp("kubelet"),
        kubeconfig_for=service_account_kubeconfig,
        overrides={names.ENV_SCHEDULER: dask_scheduler},
    ).start()
    yield fake
    fake.stop()


class MovedClock:
    """The operator's cron clock, which the test moves forward (``advance``) instead of waiting
    for a cron time to come: the session's operators read the offset from ``path``."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0.0

    def advance(self, seconds: float) -> datetime:
        """Moves the clock; returns the operators' "now" just after the move."""
        self.offset += seconds
        self.path.write_text(f"{self.offset}\n")
        return self.now()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)


@pytest.fixture
def moved_clock(operator_process: ProcessHandle) -> Iterator[MovedClock]:
    clock = MovedClock(Path(operator_process.env["ICECHUNK_OPERATOR_TEST_CLOCK_FILE"]))
    try:
        yield clock
    finally:
        clock.path.write_text("0\n")


_namespace_numbers = itertools.count(1)


@pytest.fixture
def namespace(control_plane: ControlPlane, kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, set up as the README says (service accounts and the commit pod's Role)."""
    name = f"e2e-{os.getpid() % 10000}-{next(_namespace_numbers)}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    control_plane.kubectl(
        "apply", "-n", name, "-f", str(REPO / "examples" / "kubernetes" / "namespace-setup.yaml")
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def cluster(
    control_plane: ControlPlane, operator_process: ProcessHandle, kubelet: FakeKubelet, kube: client.ApiClient
) -> ClusterDriver:
    return ClusterDriver(control_plane, operator_process, kubelet, kube)


class ClusterDriver:
    """What the tests do to the cluster, with ``kubectl`` as a user would where it matters."""

    def __init__(
        self, plane: ControlPlane, operator: ProcessHandle, kubelet: FakeKubelet, kube: client.ApiClient
    ) -> None:
        self.plane, self.operator, self.kubelet = plane, operator, kubelet
        self.custom = client.CustomObjectsApi(kube)
        self.batch_api = client.BatchV1Api(kube)
        self.coordination = client.CoordinationV1Api(kube)

    def apply(self, *documents: dict[str, Any], namespace: str) -> subprocess.CompletedProcess[str]:
        text = "\n---\n".join(json.dumps(d) for d in documents)
        return self.plane.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, plural, name
        )
        return obj

    def status(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.get(plural, namespace, name).get("status") or {})

    def phase(self, namespace: str, batch: str) -> str | None:
        phase = self.status(names.BATCHES, namespace, batch).get("phase")
        return str(phase) if phase else None

    def jobs(self, namespace: str) -> list[Any]:
        return list(self.batch_api.list_namespaced_job(namespace).items)

    def leases(self, namespace: str) -> list[str]:
        """Names of the namespace's Leases (a store's writer Lease lives while a writer starts)."""
        return [lease.metadata.name for lease in self.coordination.list_namespaced_lease(namespace).items]

    def dask_clusters(self, namespace: str) -> list[dict[str, Any]]:
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(
            names.DASK_GROUP, names.DASK_VERSION, namespace, names.DASK_CLUSTERS
        )
        return list(listed["items"])

    def diagnostics(self, namespace: str) -> str:
        """What a failing test shows: kubelet errors, commit pod logs, the operator's log tail."""
        parts = [f"fake kubelet errors: {self.kubelet.errors[-5:]}"]
        for run in self.kubelet.commit_runs(namespace):
            text = "\n".join(
                line
                for line in run.log.read_text(errors="replace").splitlines()
                if "InsecureRequest" not in line
            )
            parts.append(f"commit pod {run.pod} (exit {run.process.poll()}):\n{text[-3000:]}")
        parts.append("operator log:\n" + self.operator.log()[-3000:])
        return "\n".join(parts)

    def kubectl_wait(self, namespace: str, target: str, condition: str, timeout: int = 120) -> None:
        result = self.plane.kubectl(
            "wait",
            "-n",
            namespace,
            f"--for=condition={condition}",
            target,
            f"--timeout={timeout}s",
            check=False,
            timeout=timeout + 30,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"kubectl wait {target} {condition}: {result.stderr}\n{self.diagnostics(namespace)}"
            )

    def wait(self, namespace: str, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """``wait_until``, failing with the namespace's diagnostics when time runs out."""
        try:
            return wait_until(check, timeout, what)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.diagnostics(namespace)}") from None

    def queue_passes(self, namespace: str, store: str, operator: ProcessHandle | None = None) -> float:
        """Passes an operator has made over a store's queue (its own metric); 0 while it does not
        serve metrics yet (it has just started)."""
        try:
            url = (operator or self.operator).metrics_url
            return metric_value(url, QUEUE_PASSES, namespace=namespace, store=store) or 0.0
        except OSError:
            return 0.0

    def wait_for_queue_passes(
        self,
        namespace: str,
        stores: list[str],
        operators: list[ProcessHandle] | None = None,
        more: int = 2,
    ) -> None:
        """Until each operator has planned each store's queue ``more`` more times: the positive
        signal that what a test checks next was decided by passes that began after this call."""
        watched = [(operator, store) for operator in operators or [self.operator] for store in stores]
        start = {key: self.queue_passes(namespace, key[1], key[0]) for key in watched}
        self.wait(
            namespace,
            lambda: all(self.queue_passes(namespace, s, o) >= start[o, s] + more for o, s in watched),
            60,
            f"{more} more passes over the queues of {', '.join(stores)}",
        )

    def wait_phase(self, namespace: str, batch: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        def reached() -> bool:
            current = self.phase(namespace, batch)
            if current in ("Succeeded", "Failed") and current != phase:
                raise AssertionError(
                    f"batch {batch} ended {current}: {self.status(names.BATCHES, namespace, batch)}\n"
                    + self.diagnostics(namespace)
                )
            return current == phase

        self.wait(namespace, reached, timeout, f"batch {batch} to be {phase}")
        return self.status(names.BATCHES, namespace, batch)
