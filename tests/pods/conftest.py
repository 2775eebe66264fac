"""Fixtures of the real-pod tier: a control plane and a real node that runs the project's image.

One per test session, apart from the fake-kubelet control plane of tests/e2e: its API server
listens on the node's bridge (pods reach it through the ``kubernetes`` Service), and nothing
fakes a pod. The chart is installed with the README's own commands, an S3 server listens on the
bridge for the pods, and ``tests/cluster/node.py`` puts the host back as it was afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.cluster.control_plane import REPO, ControlPlane, build_binaries
from tests.cluster.node import BRIDGE_ADDRESS, Node, build_images, build_node_binaries
from tests.servers import S3Server, s3_server

CACHE = Path(os.environ.get("ICECHUNK_OPERATOR_CACHE", Path.home() / ".cache" / "icechunk-operator"))


def readme_commands(heading: str) -> str:
    """The first ``sh`` block under ``heading`` in README.md: what a user types, run as it is."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, f"no sh block under {heading}"
    return match.group(1)


@dataclass
class RealCluster:
    plane: ControlPlane
    node: Node
    tools: Path  # helm's folder

    def env(self) -> dict[str, str]:
        """kubectl and helm of the test cluster first on PATH, as a user's shell would have them."""
        path = os.pathsep.join([str(self.plane.bin), str(self.tools), os.environ["PATH"]])
        return {**self.plane.env(), "PATH": path}

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{script}\nfailed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def diagnostics(self, namespace: str) -> str:
        """Pods, events and each pod's log: what a failing test shows."""
        parts = [
            self.sh(
                f"kubectl get pods -A -o wide; kubectl get events -n {namespace} --sort-by=.lastTimestamp | tail -40",
                check=False,
            ).stdout
        ]
        pods = self.sh(
            f"kubectl get pods -n {namespace} -o name; kubectl get pods -n icechunk-system -o name",
            check=False,
        )
        for pod in pods.stdout.split():
            ns = (
                "icechunk-system"
                if self.sh(f"kubectl get -n icechunk-system {pod}", check=False).returncode == 0
                else namespace
            )
            log = self.sh(f"kubectl logs -n {ns} {pod} --all-containers --tail=40", check=False)
            parts.append(f"--- {pod}:\n{log.stdout[-3000:]}{log.stderr[-500:]}")
        parts.append("--- kubelet:\n" + self.node.log_tail("kubelet", 30))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, chart_tools: Path) -> Iterator[RealCluster]:
    if os.geteuid() != 0:
        pytest.skip("a real node needs root (containerd, network namespaces, cgroups)")
    node_bin, plane_bin = build_node_binaries(), build_binaries()
    image, pause = build_images()
    root = tmp_path_factory.mktemp("real-node")
    (CACHE / "node").mkdir(parents=True, exist_ok=True)
    node = Node(root=root / "node", bin=node_bin, state_file=CACHE / "node" / "host-state.json")
    with ExitStack() as stack:
        stack.callback(node.stop)  # last: after the control plane, whatever failed
        node.network_up(root / "plane")
        plane = ControlPlane(root=root / "plane", bin=plane_bin, address=BRIDGE_ADDRESS, kwok=False)
        stack.callback(plane.stop)
        plane.start()
        node.start(plane, [pause, image])
        yield RealCluster(plane, node, chart_tools)


@pytest.fixture(scope="session")
def bridge_s3(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto on the node's bridge address: the pods' object storage, and the test's."""
    with s3_server(tmp_path_factory.mktemp("bridge-s3"), host=BRIDGE_ADDRESS) as server:
        yield server
