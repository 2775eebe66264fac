"""Hostile specs on the real API server: the CRD schema and the models agree.

A document the API server accepts (a dry-run create, with strict field validation, against the
CRDs of ``crds/``) validates in the model, except for the checks a CRD cannot express
(``MODEL_ONLY``, each with why); a document the model accepts is accepted by the server, except
what only a request to the server needs (``SERVER_ONLY``), and so are the Jobs and DaskCluster the
operator would build for it; a refusal by the server names the field. The documents come from
the strategies of tests/faults/spec_strategies.py, the model property's (tests/faults/
test_spec_properties.py), without values JSON cannot carry. It lives here, beside the control
plane's session fixtures, so that one control plane serves it and the other end-to-end tests.

Hypothesis runs derandomized (the same examples on every run), so CI is reproducible.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from icechunk_operator.api import IcechunkStore, IngestBatch, IngestSchedule, Reconciliation
from icechunk_operator.api.common import USER_DOCUMENT, ResourceModel
from icechunk_operator.api.documents import format_validation_error
from icechunk_operator.k8s import names
from icechunk_operator.k8s.children import commit_job, dask_cluster
from icechunk_operator.k8s.maintenance import maintenance_job
from icechunk_operator.k8s.reconciliations import reconcile_job
from tests.faults.spec_checks import (
    BASE_STORE,
    CATEGORY,
    EXPLORE,
    FOUND,
    SETTINGS,
    schedule_run,
    survives_the_engine,
)
from tests.faults.spec_strategies import MODELS, Mutated, Path, hostile_documents
from tests.faults.tally import FaultTally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SERVER_EXAMPLES = EXPLORE or 400

#: Checks of the models that a CRD schema cannot express, each matched on the model's message.
#: A document the API server accepts may fail only these in the model; the operator reports them
#: on the resource (Admission.invalid), as it does for every refused spec.
MODEL_ONLY = {
    # Compiling a Python regex, and its named groups against the template's fields.
    r"not a valid regex": "regexes compile in Python, not in CEL",
    r"grouping\.template: fields \[.*\] are not named groups": "template fields vs regex groups",
    r"grouping\.template: field \{.*\} (has a format spec|is not a plain name)": "format-string parsing",
    r"grouping\.template: (Single|unmatched|expected)": "format-string parsing",
    r"grouping\.template: group path": "the rendered probe path's segments",
    r"is not a cron expression": "cron parsing",
    r"virtualization\.fixes": "fix names: built-in or module:function",
    r"repositories at a bucket root": "a URL's path after the bucket",
    r"urlPrefix values must be distinct": "distinct list members by one field",
}
#: What only the API server requires. The CLI reads documents that leave out apiVersion and kind
#: (the models default them); a request to the server must carry both.
SERVER_ONLY = {
    r"the API version in the data \(\) does not match": "apiVersion left out",
    r"Object 'Kind' is missing": "kind left out",
    r"\.(apiVersion|kind) accessor error: <nil>": "apiVersion or kind null, which the models read as left out",
}
PLURALS = {
    "IcechunkStore": names.STORES,
    "IngestBatch": names.BATCHES,
    "Reconciliation": names.RECONCILIATIONS,
    "IngestSchedule": names.SCHEDULES,
}


@pytest.fixture(scope="module")
def dry_run(kube: client.ApiClient) -> Any:
    """A namespace to dry-run in, and the functions that do it."""
    namespace = f"spec-properties-{id(kube) % 100000}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    yield ServerJudge(kube, namespace)
    core.delete_namespace(namespace)


class ServerJudge:
    """Dry-run creates: what the API server would store, or why it refuses."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(kube)
        self.batch = client.BatchV1Api(kube)
        self.namespace = namespace
        self.tried = 0
        self.refused = 0
        self.children = 0

    def create(self, kind: str, document: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        try:
            stored = self.custom.create_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                self.namespace,
                PLURALS[kind],
                document,
                dry_run="All",
                field_validation="Strict",
            )
        except ApiException as error:
            status, message = error.status, _server_message(error)
        else:
            return stored, ""
        assert status in (400, 422), f"{status}: {message}"
        return None, message

    def create_child(self, child: dict[str, Any]) -> str:
        """'' when the server would create the Job, DaskCluster or run IngestBatch, else its message."""
        child = {**child, "metadata": {**child["metadata"], "namespace": self.namespace}}
        try:
            if child["kind"] == "Job":
                self.batch.create_namespaced_job(self.namespace, child, dry_run="All")
            else:
                group, version = child["apiVersion"].split("/")
                plural = names.BATCHES if child["kind"] == "IngestBatch" else names.DASK_CLUSTERS
                self.custom.create_namespaced_custom_object(
                    group, version, self.namespace, plural, child, dry_run="All"
                )
        except ApiException as error:
            return _server_message(error)
        return ""


def _server_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.body))
    except ValueError:
        return str(error.body)


def _wire(path: Path) -> str:
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")


def server_names_a_touched_field(message: str, mutated: Mutated) -> bool:
    """The server's message names the field an example touched, or one containing or inside it:
    by its path (``spec.execution.workers``) or its name ("the API version" for apiVersion)."""
    squeezed = message.replace(" ", "").lower()
    for touched in mutated.touched + mutated.added_unknown:
        for length in range(len(touched), 0, -1):
            prefix = touched[:length]
            if isinstance(prefix[-1], int):
                continue
            if _wire(prefix) in message or str(prefix[-1]).replace(" ", "").lower() in squeezed:
                return True
        if any(alias in squeezed for alias in SERVER_ALIASES.get(str(touched[0]), ())):
            return True
    return False


#: How the API server's own messages name the top-level fields it decodes itself.
SERVER_ALIASES = {"metadata": ("objectmeta",), "apiVersion": ("groupversion", "apiversion")}


def model_only(error: ValidationError) -> bool:
    return all(any(re.search(rule, p["msg"]) for rule in MODEL_ONLY) for p in error.errors())


def children_of(resource: ResourceModel) -> list[dict[str, Any]]:
    """What the operator would create for an accepted resource."""
    if isinstance(resource, IngestBatch):
        return [commit_job(resource, BASE_STORE, SETTINGS), dask_cluster(resource, BASE_STORE, SETTINGS)]
    if isinstance(resource, IcechunkStore) and resource.spec.maintenance is not None:
        return [maintenance_job(resource, SETTINGS, "s202601010300")]
    if isinstance(resource, Reconciliation):
        return [reconcile_job(resource, BASE_STORE, SETTINGS, "s202601010300")]
    if isinstance(resource, IngestSchedule):
        return [schedule_run(resource)]
    return []


def check_agreement(judge: ServerJudge, mutated: Mutated) -> None:
    judge.tried += 1
    kind = mutated.kind
    document = mutated.document
    stored, message = judge.create(kind, document)
    try:
        resource: ResourceModel | None = MODELS[kind].model_validate(document, context={USER_DOCUMENT: True})
        refusal = None
    except ValidationError as error:
        resource, refusal = None, error
    if stored is None:
        judge.refused += 1
        server_only = any(re.search(rule, message) for rule in SERVER_ONLY)
        assert resource is None or server_only, (
            f"{mutated.describe()}: the model accepts what the server refuses: {message}"
        )
        assert server_names_a_touched_field(message, mutated), f"{mutated.describe()}: {message}"
        return
    if refusal is not None:
        assert model_only(refusal), (
            f"{mutated.describe()}: the server accepts what the model refuses, and the CRD could "
            f"check it: {format_validation_error('model', refusal)}"
        )
        return
    # What the operator reads back: defaults filled in, unknown fields pruned.
    as_stored = MODELS[kind].model_validate({k: v for k, v in stored.items() if k != "status"})
    survives_the_engine(as_stored)
    for child in children_of(as_stored):
        judge.children += 1
        problem = judge.create_child(child)
        assert not problem, f"{mutated.describe()}: the operator's {child['kind']} is refused: {problem}"


def test_the_crds_and_the_models_agree(dry_run: ServerJudge, fault_tally: FaultTally) -> None:
    """One test runs the property by hand, so the control plane starts once for all examples."""

    @settings(
        max_examples=SERVER_EXAMPLES,
        derandomize=not EXPLORE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated=hostile_documents(json_only=True))
    def agree(mutated: Mutated) -> None:
        check_agreement(dry_run, mutated)

    for found in FOUND:
        agree = example(mutated=found)(agree)
    agree()
    assert dry_run.refused > 0 and dry_run.children > 0
    fault_tally.add(CATEGORY, "hostile field values (API server vs models)", injected=dry_run.tried)
