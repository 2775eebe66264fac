"""What a scheduler and a kubelet would do, for a cluster without a container runtime.

Every unscheduled pod is bound to the kwok node (kwok then marks it Running). A pod of a commit
or reconcile Job gets its container's command run for real, as a local process with the container's
environment (plain values and ``envFrom`` Secrets), a kubeconfig in place of the in-cluster
service-account mount, and ``overrides`` (the tests point the Dask scheduler variable at a local
cluster, since Dask worker pods cannot run here). When the process exits, its exit code goes into
the pod's status, and the Job controller takes it from there.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.control_plane import KWOK_NODE

#: Pods whose command runs for real: commit, reconcile and maintenance pods (Dask pods only look Running).
RUN_COMPONENTS = ("commit", "reconcile", "maintenance")
#: Where the "image's" programs are: this virtual environment's scripts (icechunk-operator).
IMAGE_BIN = Path(sys.executable).parent


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CommitRun:
    namespace: str
    pod: str
    command: list[str]
    started: float
    process: subprocess.Popen[bytes]
    log: Path
    labels: dict[str, str] = field(default_factory=dict)  # the pod's (its Job's name, its store)
    ended: float | None = None  # when the loop saw the process exit (monotonic, as ``started``)


@dataclass
class FakeKubelet:
    api: client.CoreV1Api
    workdir: Path
    kubeconfig_for: Callable[[str, str], Path]  # (namespace, service account) -> kubeconfig
    overrides: dict[str, str] = field(default_factory=dict)
    runs: list[CommitRun] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _seen_done: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # namespaces whose commit pods wait to be run
    #: Extra environment for the pods of one namespace (a test's fault switch), after ``overrides``.
    namespace_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def hold(self, namespace: str) -> None:
        """Leave commit pods of ``namespace`` Running without running them, until released."""
        self.held.add(namespace)

    def release(self, namespace: str) -> None:
        self.held.discard(namespace)

    def start(self) -> FakeKubelet:
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for run in self.runs:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()

    def commit_runs(self, namespace: str | None = None) -> list[CommitRun]:
        return [r for r in self.runs if namespace is None or r.namespace == namespace]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as error:  # keep going: a test reads the errors if it needs them
                self.errors.append(repr(error))
            self._stop.wait(0.1)

    def _tick(self) -> None:
        # Only the pods to act on are listed (the unbound, and the running ones whose command
        # runs here): with hundreds of others (a load test), reading all of them ten times a
        # second would take a core of its own.
        for pod in self.api.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items:
            if pod.metadata.deletion_timestamp is None:
                self._bind(pod.metadata.namespace, pod.metadata.name)
        runnable = f"app.kubernetes.io/component in ({','.join(RUN_COMPONENTS)})"
        running = self.api.list_pod_for_all_namespaces(
            label_selector=runnable, field_selector="status.phase=Running"
        )
        for pod in running.items:
            meta = pod.metadata
            if meta.deletion_timestamp is not None or meta.namespace in self.held:
                continue
            if meta.uid not in self._seen:
                self._run(pod)
                self._seen.add(meta.uid)  # only once started: an API error before is retried
        for run in list(self.runs):
            code = run.process.poll()
            if code is not None and run.pod not in self._seen_done:
                run.ended = run.ended or time.monotonic()
                self._report(run, code if code >= 0 else 128 - code)  # a signal n exits 128+n
                self._seen_done.add(run.pod)  # only once reported: an API outage is retried

    def _bind(self, namespace: str, name: str) -> None:
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=KWOK_NODE),
        )
        try:
            self.api.create_namespaced_binding(namespace, body, _preload_content=False)
        except client.exceptions.ApiException as error:
            if error.status != 409:
                raise

    def _environment(self, namespace: str, container: Any, service_account: str) -> dict[str, str]:
        env = {
            "PATH": f"{IMAGE_BIN}{os.pathsep}{os.environ['PATH']}",
            "KUBECONFIG": str(self.kubeconfig_for(namespace, service_account)),
            "PYTHONUNBUFFERED": "1",
        }
        for source in container.env_from or []:
            if source.secret_ref is not None:
                secret = self.api.read_namespaced_secret(source.secret_ref.name, namespace)
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        for variable in container.env or []:
            if variable.value is not None:
                env[variable.name] = variable.value
        scratch = self.workdir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        env.update({"HOME": str(scratch), "TMPDIR": str(scratch)})
        env.update(self.overrides)
        env.update(self.namespace_env.get(namespace, {}))
        return env

    def _run(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        command = list(container.command or []) + list(container.args or [])
        executable = (
            shutil.which(command[0], path=f"{IMAGE_BIN}{os.pathsep}{os.environ['PATH']}") or command[0]
        )
        log = self.workdir / f"{pod.metadata.namespace}-{pod.metadata.name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [executable, *command[1:]],
                env=self._environment(pod.metadata.namespace, container, pod.spec.service_account_name),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.runs.append(
            CommitRun(
                pod.metadata.namespace,
                pod.metadata.name,
                command,
                time.monotonic(),
                process,
                log,
                dict(pod.metadata.labels or {}),
            )
        )

    def _report(self, run: CommitRun, code: int) -> None:
        try:
            pod = self.api.read_namespaced_pod(run.pod, run.namespace)
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile (its Job or namespace): nothing to report to
            raise
        container = pod.spec.containers[0]
        status = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "lastTransitionTime": _now(),
                        "reason": "PodCompleted",
                    },
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "lastTransitionTime": _now(),
                        "reason": "PodCompleted",
                    },
                ],
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "startedAt": _now(),
                                "finishedAt": _now(),
                            }
                        },
                    }
                ],
            }
        }
        self.api.patch_namespaced_pod_status(run.pod, run.namespace, status)
