import re
from pathlib import Path

import pytest

from icechunk_operator.api.documents import SpecError, load_resources

STORE = """
apiVersion: icechunkoperator.io/v1alpha1
kind: IcechunkStore
metadata: {name: s}
spec:
  storage: {url: "s3://bucket/stores/s"}
  virtualChunkContainers: [{urlPrefix: "s3://archive/"}]
"""
BATCH = """
apiVersion: icechunkoperator.io/v1alpha1
kind: IngestBatch
metadata: {name: b}
spec:
  store: s
  source: {prefix: "s3://archive/data/"}
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return load_resources(path)


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    resources = load(tmp_path, STORE + "---" + BATCH)
    batch = resources.batches[0]
    assert batch.spec.execution.workers == 2 and batch.spec.commit.every_groups == 2000
    assert resources.stores["s"].spec.config.inline_threshold_bytes == 8192


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("template: x", "grouping: {template: '../{stem}'}"), "spec.grouping"),
        (("template: x", "grouping: {template: '{nope}'}"), "spec.grouping"),
        (("template: x", "virtualization: {fixes: ['rm -rf']}"), "spec.virtualization.fixes"),
        (("template: x", "execution: {workers: 0}"), "spec.execution.workers"),
        (("template: x", "source: {files: ['s3://a/x.nc'], prefix: 's3://a/'}"), "spec.source"),
        (("template: x", "commit: {everyGroups: -1}"), "spec.commit.everyGroups"),
        (("template: x", "unknownField: 1"), "spec.unknownField"),
    ],
)
def test_invalid_batches_name_the_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    text = BATCH.replace('  source: {prefix: "s3://archive/data/"}\n', "") + "  " + edit[1] + "\n"
    if "source" not in edit[1]:
        text += '  source: {prefix: "s3://archive/data/"}\n'
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load(tmp_path, STORE + "---" + text)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('urlPrefix: "s3://archive/"', 'urlPrefix: "s3://archive"', "urlPrefix"),
        ('url: "s3://bucket/stores/s"', 'url: "ftp://x/y"', "spec.storage.url"),
        ('url: "s3://bucket/stores/s"', 'url: "s3://bucket"', "spec.storage.url"),
        ("name: s}", "name: Bad_Name}", "metadata.name"),
        ('url: "s3://bucket/stores/s"', 'url: "az://stores/s"', "spec.storage: azureAccount is required"),
        (
            'urlPrefix: "s3://archive/"',
            'urlPrefix: "az://archive/"',
            "spec.virtualChunkContainers.0: azureAccount is required",
        ),
    ],
)
def test_invalid_stores_name_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load(tmp_path, STORE.replace(old, new))


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (
            "{keepSnapshots: 3, schedule: 'weekly'}",
            "spec.maintenance.schedule: 'weekly' is not a cron expression",
        ),
        ("{keepSnapshots: 3, expireOlderThan: 7d}", "spec.maintenance: exactly one of expireOlderThan"),
        ("{schedule: '0 3 * * 0'}", "spec.maintenance: exactly one of expireOlderThan"),
        ("{expireOlderThan: 7 days}", "spec.maintenance.expireOlderThan"),
        ("{keepSnapshots: 0}", "spec.maintenance.keepSnapshots"),
    ],
)
def test_invalid_maintenance_policies_name_the_field(tmp_path: Path, policy: str, problem: str) -> None:
    with pytest.raises(SpecError, match=re.escape(problem)):
        load(tmp_path, STORE + f"  maintenance: {policy}\n")


def test_a_maintenance_policy_loads_with_defaults(tmp_path: Path) -> None:
    policy = (
        load(tmp_path, STORE + "  maintenance: {schedule: '0 3 * * 0', keepSnapshots: 10}\n")
        .stores["s"]
        .spec.maintenance
    )
    assert (
        policy is not None
        and policy.keep_snapshots == 10
        and policy.history_limit == 3
        and policy.memory == "2Gi"
    )


def test_batch_must_name_a_store_of_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec.store"):
        load(tmp_path, STORE + "---" + BATCH.replace("store: s", "store: other"))


def test_unknown_metadata_is_refused_in_a_users_document_and_ignored_from_the_api_server() -> None:
    """A misspelt ``lables`` in a YAML file is an error; a metadata field a later Kubernetes
    adds, read back from the API server, must not make the operator unable to read the batch."""
    from icechunk_operator.api import IcechunkStore
    from icechunk_operator.api.documents import parse_resource

    document = {
        "kind": "IcechunkStore",
        "metadata": {"name": "s", "lables": {"a": "b"}},
        "spec": {
            "storage": {"url": "file:///tmp/s"},
            "virtualChunkContainers": [{"urlPrefix": "file:///data/"}],
        },
    }
    with pytest.raises(SpecError, match=r"metadata: unknown fields \['lables'\]"):
        parse_resource(document)
    from_server = IcechunkStore.model_validate(document | {"metadata": {"name": "s", "futureField": 1}})
    assert from_server.metadata.name == "s"
