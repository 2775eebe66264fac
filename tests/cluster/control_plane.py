"""Start etcd, kube-apiserver, kube-controller-manager and kwok on loopback ports.

The API server authorizes with RBAC and signs service-account tokens, like a real cluster; the
test client authenticates as an admin with a static token. Every process logs to a file under the
control plane's folder, which a failing test can read.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-control-plane.sh"
KWOK_NODE = "kwok-node"
ADMIN_TOKEN = "icechunk-operator-test-admin-token"  # a loopback-only test cluster's own token
SERVICE_RANGE = "10.96.0.0/16"  # Services' virtual addresses (a real node's kube-proxy routes them)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def build_binaries() -> Path:
    """Build (first time) or find the cached binaries; returns their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class ControlPlane:
    root: Path
    bin: Path
    server: str = ""
    kubeconfig: Path = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    etcd_url: str = ""
    etcd_peer_url: str = ""
    #: Where the API server listens and what it advertises (the ``kubernetes`` Service's
    #: endpoint): loopback, unless pods of a real node must reach it (the node's bridge address).
    address: str = "127.0.0.1"
    #: Simulate a node with kwok; a real node (tests/cluster/node.py) registers itself instead.
    kwok: bool = True

    def __post_init__(self) -> None:
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.ca_file = self.root / "certs" / "apiserver.crt"
        self.kubelet_client_ca = self.root / "kubelet-client-ca.crt"

    # Processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")  # a restart appends: the first run's log stays
        self.processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self) -> ControlPlane:
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys()
        self._etcd()
        self._apiserver()
        self._write_kubeconfig(self.kubeconfig, ADMIN_TOKEN)
        self._controller_manager()
        if self.kwok:
            self._kwok()
        return self

    def stop(self, grace: float = 3.0) -> None:
        """Ask every process to end, then kill what is left after ``grace`` seconds: the plane's
        state is thrown away, and the API server, with watches open until the end of a run, took
        some 20 s of its own graceful shutdown."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def _keys(self) -> None:
        key, pub = self.root / "sa.key", self.root / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True
        )
        (self.root / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n')
        self._kubelet_client_certificate()

    def _kubelet_client_certificate(self) -> None:
        """A CA, and the certificate the API server presents to kubelets (for logs and exec);
        a real node's kubelet trusts that CA and asks the API server what the holder may do."""
        if self.kubelet_client_ca.exists():
            return

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.root)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kubelet-client-ca",
            "-keyout",
            "kubelet-client-ca.key",
            "-out",
            "kubelet-client-ca.crt",
        )
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "-keyout",
            "kubelet-client.key",
            "-out",
            "kubelet-client.csr",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            "kubelet-client.csr",
            "-CA",
            "kubelet-client-ca.crt",
            "-CAkey",
            "kubelet-client-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "kubelet-client.crt",
        )

    def _etcd(self) -> None:
        if not self.etcd_url:  # a restart keeps the ports (and the data directory)
            self.etcd_url, self.etcd_peer_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--data-dir",
                str(self.root / "etcd-data"),
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                self.etcd_peer_url,
                "--initial-advertise-peer-urls",
                self.etcd_peer_url,
                "--initial-cluster",
                f"default={self.etcd_peer_url}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=1) as response:
                return bool(json.load(response).get("health") == "true")

        wait_for(healthy, "etcd")

    def _apiserver(self) -> None:
        if not self.server:  # a restart keeps the port (and the certificates in cert-dir)
            self.server = f"https://{self.address}:{free_port(self.address)}"
        port = self.server.rpartition(":")[2]
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--secure-port={port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--cert-dir={self.root / 'certs'}",
                "--authorization-mode=RBAC",
                # As OpenShift does: setting blockOwnerDeletion on a child needs the right to
                # update the owner's finalizers, which the chart and namespace Roles must grant.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--token-auth-file={self.root / 'tokens.csv'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.root / 'sa.pub'}",
                f"--service-account-signing-key-file={self.root / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                f"--kubelet-client-certificate={self.root / 'kubelet-client.crt'}",
                f"--kubelet-client-key={self.root / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=false",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )

        self._wait_apiserver_ready()

    def _apiserver_ready(self) -> bool:
        request = urllib.request.Request(
            self.server + "/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        if not self.ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)  # an error status raises; wait_for retries

    def _wait_apiserver_ready(self) -> None:
        try:
            wait_for(self._apiserver_ready, "kube-apiserver", timeout=120)
        except TimeoutError:
            raise TimeoutError("kube-apiserver not ready:\n" + self.log_tail("kube-apiserver")) from None

    # Faults --------------------------------------------------------------------------------
    def restart_apiserver(self) -> None:
        """Kill kube-apiserver (SIGKILL, as a crash) and start it again on the same port, with the
        same certificates and etcd; returns once it is ready. Every client's connection breaks."""
        self._kill("kube-apiserver")
        self._apiserver()

    def restart_etcd(self) -> None:
        """Kill etcd (SIGKILL) and start it again on the same ports and data directory; returns
        once etcd is healthy and the API server ready again (it reconnects by itself)."""
        self._kill("etcd")
        self._etcd()
        self._wait_apiserver_ready()

    def _kill(self, name: str) -> None:
        process = self.processes[name]  # the entry stays: stop() keeps its order
        process.kill()
        process.wait()

    def _write_kubeconfig(self, path: Path, token: str, namespace: str = "default") -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    # The server's self-signed certificate file also holds the CA that signed it.
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {"name": "local", "context": {"cluster": "local", "user": "user", "namespace": namespace}}
            ],
            "current-context": "local",
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def kubeconfig_for_token(self, name: str, token: str, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with ``token`` (a service account's, say)."""
        path = self.root / f"{name}.kubeconfig"
        self._write_kubeconfig(path, token, namespace)
        return path

    def _controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={self.root / 'sa.key'}",
                # The CA pods find in their kube-root-ca.crt ConfigMap, to trust the API server.
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                # A real node needs the node lifecycle controller to lift its not-ready taint.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller"
                + (",-nodelifecycle" if self.kwok else ""),
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

    def _kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--config={Path(__file__).with_name('kwok-stages.yaml')}",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=40",
            ],
        )
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": KWOK_NODE,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": KWOK_NODE, "type": "kwok"},
            },
            "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"}},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    # kubectl -------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result
