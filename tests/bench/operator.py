"""``make bench-operator``: the operator on the local control plane, at 1,000 IngestBatches.

Prints the time from ``kubectl apply`` of a batch to its commit Job existing (on an idle cluster
and with 1,000 batches present), and the operator's resident memory (now and peak) once it has
admitted 1,000 batches over 10 stores. No commit pod runs here: the batches queue behind one
running Job per store, which is the heaviest state for the operator (every batch is live).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.cluster.control_plane import REPO, ControlPlane, build_binaries

NAMESPACE = "bench"
STORES = 10
BATCHES = 1000


def store(name: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": {"name": name},
        "spec": {
            "storage": {"url": (root / "stores" / name).as_uri()},
            "virtualChunkContainers": [{"urlPrefix": (root / "archive").as_uri() + "/"}],
        },
    }


def batch(name: str, store_name: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IngestBatch",
        "metadata": {"name": name},
        "spec": {"store": store_name, "source": {"prefix": (root / "archive" / name).as_uri() + "/"}},
    }


def apply(plane: ControlPlane, documents: list[dict[str, Any]]) -> None:
    plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def job_latency(plane: ControlPlane, jobs: client.BatchV1Api, root: Path, name: str) -> float:
    """Seconds from `kubectl apply` of a batch (on a fresh, Ready store) to its commit Job."""
    apply(plane, [store(name, root)])
    plane.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", f"icechunkstore/{name}", "--timeout=60s")
    started = time.monotonic()
    apply(plane, [batch(f"{name}-batch", name, root)])
    selector = f"icechunkoperator.io/batch={name}-batch"
    wait(lambda: jobs.list_namespaced_job(NAMESPACE, label_selector=selector).items, 60, "the commit Job")
    return time.monotonic() - started


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="icechunk-operator-bench-"))
    started = time.monotonic()
    plane = ControlPlane(root=root / "control-plane", bin=build_binaries()).start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        import dask_kubernetes

        dask_crds = (
            Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
        )
        plane.kubectl("apply", "-f", str(REPO / "crds"))
        plane.kubectl("apply", "--server-side", "-f", str(dask_crds))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples/kubernetes/namespace-setup.yaml"))
        print(f"control plane up in {time.monotonic() - started:.1f} s", file=sys.stderr)

        log = (root / "operator.log").open("wb")
        operator = subprocess.Popen(
            [str(Path(sys.executable).with_name("icechunk-operator")), "operator", "--all-namespaces"],
            env=plane.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        jobs, custom = client.BatchV1Api(api), client.CustomObjectsApi(api)

        idle = [job_latency(plane, jobs, root, f"idle-{i}") for i in range(5)]
        idle_rss, _ = rss_mb(operator.pid)

        apply(plane, [store(f"store-{i}", root) for i in range(STORES)])
        for i in range(STORES):
            plane.kubectl(
                "wait", "-n", NAMESPACE, "--for=condition=Ready", f"icechunkstore/store-{i}", "--timeout=60s"
            )
        created = time.monotonic()
        for first in range(0, BATCHES, 100):
            apply(plane, [batch(f"b{n:04d}", f"store-{n % STORES}", root) for n in range(first, first + 100)])

        def all_admitted() -> bool:
            items = custom.list_namespaced_custom_object(
                "icechunkoperator.io", "v1alpha1", NAMESPACE, "ingestbatches"
            )["items"]
            phased = [
                b
                for b in items
                if b["metadata"]["name"].startswith("b") and (b.get("status") or {}).get("phase")
            ]
            return len(phased) == BATCHES

        wait(all_admitted, 600, "every batch to be admitted")
        admitted = time.monotonic() - created
        busy = [job_latency(plane, jobs, root, f"busy-{i}") for i in range(5)]
        time.sleep(5)  # a few queue timer ticks at steady state
        rss, peak = rss_mb(operator.pid)

        print("\n== operator on the local control plane")
        print(
            f"apply -> commit Job, idle cluster      median {statistics.median(idle):.2f} s (max {max(idle):.2f})"
        )
        print(
            f"apply -> commit Job, 1,000 batches     median {statistics.median(busy):.2f} s (max {max(busy):.2f})"
        )
        print(f"1,000 batches admitted (Queued/Running) in {admitted:.1f} s")
        print(f"operator RSS: idle {idle_rss:.0f} MB; with 1,000 batches {rss:.0f} MB (peak {peak:.0f} MB)")
        print("targets: apply -> Job under 2 s; operator memory under 200 MB with 1,000 batches")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        plane.stop()


if __name__ == "__main__":
    main()
