"""The Helm chart: lint, render, validate on the real API server, least privilege, an ingest with it.

Needs helm (and checkov), built and cached by ``scripts/build-chart-tools.sh``.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.control_plane import REPO, ControlPlane
from tests.e2e.conftest import ClusterDriver, ProcessHandle
from tests.e2e.test_operator import batch_doc, store_doc

pytestmark = pytest.mark.k8s

CHART = REPO / "charts" / "icechunk-operator"
_numbers = itertools.count(1)
KUBE = ("--kube-version", "1.36.3")  # the control plane's; helm's own default is older than the chart allows
NON_DEFAULT = [
    "--set",
    "replicas=2",
    "--set",
    "daskOperator.install=true",
    "--set",
    "image.repository=registry.example/icechunk-operator",
    "--set",
    "image.tag=0.1.0",
    "--set-json",
    'workers={"nodeSelector":{"pool":"dask"},"tolerations":[{"key":"dask","operator":"Exists"}]}',
]


def helm(tools: Path, *args: str) -> str:
    result = subprocess.run([str(tools / "helm"), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def render(tools: Path, namespace: str, *values: str) -> list[dict[str, Any]]:
    text = helm(
        tools, "template", "ico", str(CHART), "--namespace", namespace, "--include-crds", *KUBE, *values
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_chart_crds_are_the_generated_ones() -> None:
    for generated in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / generated.name).read_text() == generated.read_text(), "run `make crds`"


def test_helm_lint_with_default_and_other_values(chart_tools: Path) -> None:
    helm(chart_tools, "lint", "--strict", str(CHART))
    helm(chart_tools, "lint", "--strict", str(CHART), *NON_DEFAULT, "--set-json", 'watchNamespaces=["a","b"]')
    bad = subprocess.run(
        [str(chart_tools / "helm"), "template", str(CHART), *KUBE, "--set", "replicas=0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "replicas" in bad.stderr


def test_rendered_manifests_pass_the_api_servers_strict_validation(
    chart_tools: Path, control_plane: ControlPlane
) -> None:
    control_plane.kubectl("create", "namespace", "chart-a", check=False)
    control_plane.kubectl("create", "namespace", "chart-b", check=False)
    for values in ([], [*NON_DEFAULT, "--set-json", 'watchNamespaces=["chart-a","chart-b"]']):
        documents = render(chart_tools, "default", *values)
        text = "\n---\n".join(json.dumps(d) for d in documents if d["kind"] != "CustomResourceDefinition")
        result = control_plane.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text, check=False
        )
        assert result.returncode == 0, result.stderr


def test_security_linter_finds_nothing(chart_tools: Path, tmp_path: Path) -> None:
    for index, values in enumerate(([], NON_DEFAULT)):
        folder = tmp_path / f"render-{index}"
        folder.mkdir()
        for number, document in enumerate(render(chart_tools, "icechunk-system", *values)):
            if document["kind"] != "CustomResourceDefinition":
                (folder / f"{number:02d}.yaml").write_text(yaml.safe_dump(document))
        result = subprocess.run(
            [
                str(chart_tools / "checkov"),
                "--directory",
                str(folder),
                "--framework",
                "kubernetes",
                "--config-file",
                str(CHART / "checkov.yaml"),
                "--compact",
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-4000:]


@pytest.fixture
def chart_operator(
    chart_tools: Path,
    control_plane: ControlPlane,
    operator_process: ProcessHandle,
    tmp_path: Path,
) -> Iterator[tuple[ProcessHandle, str]]:
    """The chart installed as the README says, for one namespace, and the operator run with the
    chart's ServiceAccount token only (no container runs here: its Deployment's pod is kwok's)."""
    namespace = f"charted-{next(_numbers)}"
    control_plane.kubectl("create", "namespace", namespace)
    install = [
        str(chart_tools / "helm"),
        "install",
        "icechunk",
        str(CHART),
        "-n",
        "icechunk-system",
        "--create-namespace",
        "--set-json",
        f'watchNamespaces=["{namespace}"]',
    ]
    installed = subprocess.run(install, env=control_plane.env(), capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    token = control_plane.kubectl(
        "create", "token", "icechunk-operator", "-n", "icechunk-system"
    ).stdout.strip()
    kubeconfig = control_plane.kubeconfig_for_token("chart-operator", token, "icechunk-system")
    operator_process.stop()  # the admin operator of the other tests must not serve this namespace
    handle = ProcessHandle(
        "chart-operator",
        [str(Path(operator_process.args[0])), "operator", f"--namespace={namespace}"],
        {**operator_process.env, "KUBECONFIG": str(kubeconfig)},
        tmp_path,
    ).start()
    handle.kubeconfig = kubeconfig  # type: ignore[attr-defined]
    try:
        yield handle, namespace
    finally:
        handle.stop()
        operator_process.start()
        subprocess.run(
            [str(chart_tools / "helm"), "uninstall", "icechunk", "-n", "icechunk-system"],
            env=control_plane.env(),
            capture_output=True,
        )
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def denials(log: str) -> list[str]:
    """Log lines where the API server refused the operator.

    Matches the forms the Kubernetes client and Kopf print ("Forbidden", "forbidden",
    "(403)", "'code': 403"), not a bare 403, which also appears as milliseconds in timestamps.
    """
    refused = re.compile(r"forbidden|\(403\)|'code': 403|status=403", re.IGNORECASE)
    return [line for line in log.splitlines() if refused.search(line)]


def test_operator_with_the_charts_rights_only_ingests_end_to_end(
    chart_operator: tuple[ProcessHandle, str],
    cluster: ClusterDriver,
    shared_archive: Any,
    tmp_path: Path,
) -> None:
    chart_operator_process, namespace = chart_operator
    cluster.operator = chart_operator_process
    cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), shared_archive), namespace=namespace)
    cluster.apply(batch_doc("charted", "ismip6", shared_archive), namespace=namespace)
    status = cluster.wait_phase(namespace, "charted", "Succeeded", 180)
    assert status["files"]["done"] > 0
    log = chart_operator_process.log()
    assert not denials(log), denials(log)

    kubeconfig = str(chart_operator_process.kubeconfig)  # type: ignore[attr-defined]

    def can_i(*args: str) -> str:
        result = cluster.plane.kubectl("auth", "can-i", "--kubeconfig", kubeconfig, *args, check=False)
        return result.stdout.strip()

    assert can_i("create", "jobs.batch", "-n", namespace) == "yes"
    assert can_i("get", "secrets", "-n", namespace) == "yes"  # store credentials, by reference
    assert can_i("get", "secrets", "-n", "kube-system") == "no"
    assert can_i("list", "secrets", "-n", namespace) == "no"
    assert can_i("delete", "customresourcedefinitions.apiextensions.k8s.io") == "no"
    assert can_i("create", "jobs.batch", "-n", "default") == "no"
    assert can_i("patch", "ingestbatches.icechunkoperator.io", "-n", namespace) == "no"  # status only
    assert can_i("delete", "pods", "-n", namespace) == "no"
