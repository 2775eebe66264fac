"""The example manifests in the README and examples/ are valid resources."""

from __future__ import annotations

from pathlib import Path

import yaml

from icechunk_operator.api.documents import load_resources

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"


def test_kubernetes_examples_load() -> None:
    resources = load_resources(EXAMPLES / "ismip6.yaml")
    assert list(resources.stores) == ["ismip6"]
    assert [b.metadata.name for b in resources.batches] == ["projection-ais"]
    assert [r.spec.batch_template for r in resources.reconciliations] == ["projection-ais"]
    store = resources.stores["ismip6"]
    assert store.spec.storage.credentials.secret_ref is not None


def test_namespace_setup_gives_the_pods_only_what_they_use() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "namespace-setup.yaml").read_text()))
    (role,) = [d for d in documents if d["kind"] == "Role"]
    verbs = {
        (resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]
    }
    assert verbs == {
        ("ingestbatches", "get"),
        ("icechunkstores", "get"),
        ("reconciliations", "get"),
        ("ingestbatches/status", "patch"),
        ("reconciliations/status", "patch"),
        ("icechunkstores/status", "patch"),  # what maintenance freed
        ("ingestbatches", "create"),  # a Repair's batch
        ("reconciliations/finalizers", "update"),  # ... owned by its Reconciliation
    }


def test_the_schedule_example_is_the_readme_one_and_loads() -> None:
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    block = readme.split("A complete example (`examples/kubernetes/gnss-schedule.yaml`):\n\n```yaml\n", 1)[1]
    example = (EXAMPLES / "gnss-schedule.yaml").read_text()
    assert example.endswith(block.split("```", 1)[0])
    resources = load_resources(EXAMPLES / "gnss-schedule.yaml")
    (schedule,) = resources.schedules
    assert schedule.spec.batch.store in resources.stores
    assert schedule.spec.batch.staging and schedule.spec.batch.validation is not None
