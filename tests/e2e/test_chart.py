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
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from icechunk_operator.k8s import metrics, names
from icechunk_operator.k8s.kube import KubeApi
from tests.cluster.control_plane import REPO, ControlPlane
from tests.e2e.conftest import ClusterDriver, ProcessHandle
from tests.e2e.promql_subset import Labels, Sample, evaluate, metric_names, parse
from tests.e2e.test_operator import batch_doc, store_doc

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
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "serviceMonitor.enabled=true",
]
#: The label of an IngestSchedule's runs (``kubectl get ib -l icechunkoperator.io/schedule=NAME``).
RUN_LABEL = f"{names.GROUP}/schedule"
#: Kinds of the Prometheus Operator, whose CRDs the test control plane does not have.
MONITORING = {"PrometheusRule", "ServiceMonitor"}


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
        # The API server cannot validate kinds it does not serve: the monitoring ones are checked
        # by their own tests below (test_prometheus_rule_*, test_service_monitor_*).
        assert {d["kind"] for d in documents} & MONITORING == (MONITORING if values else set())
        served = [d for d in documents if d["kind"] not in {"CustomResourceDefinition", *MONITORING}]
        text = "\n---\n".join(json.dumps(d) for d in served)
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


#: The operator's rights (the ClusterRole, or the Role in each watched namespace), complete: what
#: its code and Kopf use, nothing more. (group, resource, verb).
OPERATOR_RIGHTS = {
    *(
        ("icechunkoperator.io", r, v)
        for r in ("icechunkstores", "ingestschedules")
        for v in ("get", "list", "watch", "patch")
    ),
    *(("icechunkoperator.io", "reconciliations", v) for v in ("get", "list", "watch")),
    # An IngestSchedule's runs: created, listed, pruned beyond its history limits; never patched.
    *(("icechunkoperator.io", "ingestbatches", v) for v in ("get", "list", "watch", "create", "delete")),
    *(
        ("icechunkoperator.io", f"{r}/{sub}", verb)
        for r in ("icechunkstores", "ingestbatches", "ingestschedules", "reconciliations")
        for sub, verb in (("status", "patch"), ("finalizers", "update"))
    ),
    *(("batch", "jobs", v) for v in ("get", "list", "watch", "create", "delete")),
    ("kubernetes.dask.org", "daskclusters", "create"),
    ("kubernetes.dask.org", "daskclusters", "delete"),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "create", "update", "delete")),
    ("", "secrets", "get"),
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
}


def rights(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_rules_are_what_its_code_uses_in_both_modes(chart_tools: Path) -> None:
    (cluster_role,) = [
        d
        for d in render(chart_tools, "icechunk-system")
        if d["kind"] in ("Role", "ClusterRole") and d["metadata"]["name"].endswith("icechunk-operator")
    ]
    assert cluster_role["kind"] == "ClusterRole"
    assert rights(cluster_role) == OPERATOR_RIGHTS
    roles = [
        d
        for d in render(chart_tools, "icechunk-system", "--set-json", 'watchNamespaces=["a","b"]')
        if d["kind"] in ("Role", "ClusterRole") and d["metadata"]["name"].endswith("icechunk-operator")
    ]
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in roles) == [("Role", "a"), ("Role", "b")]
    assert all(rights(role) == OPERATOR_RIGHTS for role in roles)


def test_operator_role_serves_schedules_on_the_api_server(
    chart_tools: Path, control_plane: ControlPlane
) -> None:
    """The chart's Role, applied for real, lets the operator run an IngestSchedule, and no more.

    The operator's own API calls (KubeApi), as its ServiceAccount (impersonated). A run is owned
    by its schedule with blockOwnerDeletion, which the control plane's
    OwnerReferencesPermissionEnforcement admits only with update on ingestschedules/finalizers.
    The schedule is suspended and its store does not exist: the session's operator, if it runs,
    starts nothing here.
    """
    namespace = f"chart-rbac-{next(_numbers)}"
    control_plane.kubectl("create", "namespace", namespace)
    identity = f"system:serviceaccount:{namespace}:icechunk-operator"

    def can_i(verb: str, resource: str, subresource: str = "") -> str:
        where = [f"--subresource={subresource}"] if subresource else []
        return control_plane.kubectl(
            "auth",
            "can-i",
            f"--as={identity}",
            "-n",
            namespace,
            verb,
            f"{resource}.{names.GROUP}",
            *where,
            check=False,
        ).stdout.strip()

    try:
        chart = render(chart_tools, namespace, "--set-json", f'watchNamespaces=["{namespace}"]')
        rbac = [d for d in chart if d["kind"] in ("Role", "RoleBinding")]
        control_plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
        )
        batch_spec = {"store": "daily", "source": {"prefix": "s3://archive/daily/"}}
        schedule = {
            "apiVersion": f"{names.GROUP}/{names.VERSION}",
            "kind": "IngestSchedule",
            "metadata": {"name": "nightly", "namespace": namespace},
            "spec": {"schedule": "15 0 * * *", "suspend": True, "batch": batch_spec},
        }
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(schedule))

        for verb in ("get", "list", "watch", "patch"):
            assert can_i(verb, "ingestschedules") == "yes", verb
        for verb in ("create", "update", "delete"):  # schedules are their authors'
            assert can_i(verb, "ingestschedules") == "no", verb
        assert can_i("patch", "ingestschedules", "status") == "yes"
        assert can_i("update", "ingestschedules", "finalizers") == "yes"
        for verb in ("get", "list", "watch", "create", "delete"):
            assert can_i(verb, "ingestbatches") == "yes", verb
        for verb in ("patch", "update"):  # a run's spec is the schedule's copy, never edited
            assert can_i(verb, "ingestbatches") == "no", verb

        impersonated = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
        impersonated.set_default_header("Impersonate-User", identity)
        api = KubeApi(impersonated)
        owner = api.get(names.SCHEDULES, namespace, "nightly")
        assert owner is not None

        def run(name: str, owner: dict[str, Any]) -> dict[str, Any]:
            reference = {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            metadata = {"name": name, "namespace": namespace, "labels": {RUN_LABEL: "nightly"}}
            return {
                "apiVersion": f"{names.GROUP}/{names.VERSION}",
                "kind": "IngestBatch",
                "metadata": {**metadata, "ownerReferences": [reference]},
                "spec": batch_spec,
            }

        assert api.create(names.BATCHES, run("nightly-s202601010015", owner))
        (listed,) = api.labelled(names.BATCHES, namespace, {RUN_LABEL: "nightly"})
        api.patch_status(names.SCHEDULES, namespace, "nightly", {"consecutiveFailures": 1})
        api.patch_metadata(names.SCHEDULES, namespace, "nightly", {"annotations": {"example.org/seen": "1"}})
        api.delete(names.BATCHES, namespace, "nightly-s202601010015", listed["metadata"]["uid"])
        # The control: the same run owned by a Job, whose finalizers the operator may not update,
        # is refused, so the admission the run above passed is really enforced here.
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "other", "uid": owner["metadata"]["uid"]},
        }
        with pytest.raises(ApiException) as refused:
            api.create(names.BATCHES, run("other-run", job))
        assert refused.value.status == 403 and "blockOwnerDeletion" in str(refused.value.body)

        after = api.get(names.SCHEDULES, namespace, "nightly")
        assert after is not None and after["status"]["consecutiveFailures"] == 1
        assert after["metadata"]["annotations"]["example.org/seen"] == "1"
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


#: Labels of the schedule metrics (operator/icechunk_operator/k8s/metrics.py).
SCHEDULE_LABELS = ("namespace", "schedule", "store")
#: What a rule may hold (the PrometheusRule CRD's fields of an alerting rule).
RULE_FIELDS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def alerts(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def schedule_samples(**values: float) -> list[Sample]:
    """One sample per schedule (named by the keyword), in namespace "ns", of store "s-NAME"."""
    labels: list[Labels] = [{"namespace": "ns", "schedule": name, "store": f"s-{name}"} for name in values]
    return list(zip(labels, values.values(), strict=True))


def test_monitoring_is_off_by_default(chart_tools: Path) -> None:
    kinds = [d["kind"] for d in render(chart_tools, "icechunk-system")]
    assert not set(kinds) & MONITORING
    assert "Service" in kinds  # the metrics Service is there for any scraper


def test_prometheus_rule_alerts_on_the_operators_schedule_metrics_at_the_values_thresholds(
    chart_tools: Path,
) -> None:
    documents = render(
        chart_tools,
        "monitoring",
        "--set-json",
        'prometheusRule={"enabled":true,"updateLateAfterHours":1.5,"consecutiveFailures":2,"for":"5m","labels":{"release":"kps"}}',
    )
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kps"  # what Prometheus's ruleSelector picks
    rules = alerts(documents)
    assert set(rules) == {"IcechunkStoreUpdateLate", "IcechunkScheduleFailing"}
    for name, alert in rules.items():
        assert set(alert) <= RULE_FIELDS, name
        assert alert["for"] == "5m" and alert["labels"] == {"severity": "warning"}, name

    now = 1_800_000_000.0
    late = parse(rules["IcechunkStoreUpdateLate"]["expr"])
    assert metric_names(late) == {metrics.SCHEDULE_LAST_SUCCESS}
    successes = {metrics.SCHEDULE_LAST_SUCCESS: schedule_samples(fresh=now - 5399, stale=now - 5401)}
    assert evaluate(late, successes, now) == [  # 1.5 hours; the value is the age ($value)
        ({"namespace": "ns", "schedule": "stale", "store": "s-stale"}, 5401)
    ]
    failing = parse(rules["IcechunkScheduleFailing"]["expr"])
    assert metric_names(failing) == {metrics.SCHEDULE_CONSECUTIVE_FAILURES}
    failures = {metrics.SCHEDULE_CONSECUTIVE_FAILURES: schedule_samples(ok=0, once=1, twice=2, more=5)}
    assert [labels["schedule"] for labels, _ in evaluate(failing, failures, now)] == ["twice", "more"]

    defaults = alerts(render(chart_tools, "monitoring", "--set", "prometheusRule.enabled=true"))
    assert defaults["IcechunkStoreUpdateLate"]["expr"].endswith("> 26 * 3600")
    assert defaults["IcechunkScheduleFailing"]["expr"].endswith(">= 3")
    assert {alert["for"] for alert in defaults.values()} == {"15m"}
    assert "1.5 hours" in rules["IcechunkStoreUpdateLate"]["annotations"]["summary"]


def test_prometheus_rule_annotations_are_prometheus_templates_of_the_metrics_labels(
    chart_tools: Path,
) -> None:
    """Helm leaves Prometheus's {{ $labels.X }} alone, and each names a label the metrics carry."""
    allowed = {*(f"$labels.{label}" for label in SCHEDULE_LABELS), "$value", "$value | humanizeDuration"}
    for name, alert in alerts(render(chart_tools, "m", "--set", "prometheusRule.enabled=true")).items():
        assert set(alert["annotations"]) == {"summary", "description"}, name
        for text in alert["annotations"].values():
            actions = re.findall(r"\{\{ (.*?) \}\}", text)
            assert set(actions) <= allowed, (name, text)
            rest = re.sub(r"\{\{ .*? \}\}", "", text)
            assert "{{" not in rest and "}}" not in rest, text
        summary = alert["annotations"]["summary"]
        assert all(f"$labels.{label}" in summary for label in SCHEDULE_LABELS), (name, summary)


def test_alert_values_are_checked_by_the_schema(chart_tools: Path) -> None:
    for value, field in (
        ("prometheusRule.for=15 minutes", "for"),
        ("prometheusRule.consecutiveFailures=0", "consecutiveFailures"),
        ("prometheusRule.updateLateAfterHours=0", "updateLateAfterHours"),
        ("serviceMonitor.interval=often", "interval"),
    ):
        bad = subprocess.run(
            [str(chart_tools / "helm"), "template", str(CHART), *KUBE, "--set", value],
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and field in bad.stderr, (value, bad.stderr)


def test_service_monitor_scrapes_the_operators_metrics_service(chart_tools: Path) -> None:
    documents = render(
        chart_tools,
        "monitoring",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=kps",
    )
    (monitor,) = [d for d in documents if d["kind"] == "ServiceMonitor"]
    (service,) = [d for d in documents if d["kind"] == "Service"]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert {"name": port["targetPort"], "containerPort": 9090} in container["ports"]
    assert "--metrics-port=9090" in container["args"]


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
