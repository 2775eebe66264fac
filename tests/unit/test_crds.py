"""The CRDs in crds/ are generated from the models; they must match and be structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from icechunk_operator.api.crds import CATEGORY, render_crds

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    rendered = render_crds()
    on_disk = {path.name: path.read_text() for path in CRDS.glob("*.yaml")}
    assert on_disk == rendered, "crds/ is stale: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schemas_are_structural() -> None:
    for text in render_crds().values():
        crd = yaml.safe_load(text)
        version = crd["spec"]["versions"][0]
        for path, node in _walk(version["schema"]["openAPIV3Schema"]):
            # Kubernetes lets a node that keeps any JSON (reader options) go without a type.
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
            for forbidden in ("$ref", "anyOf", "title", "$defs", "const"):
                assert forbidden not in node, f"{path} has {forbidden}"
            if "default" in node:
                assert node["default"] is not None, path
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True and not isinstance(node["minimum"], bool), path
        assert version["subresources"] == {"status": {}}
        assert CATEGORY in crd["spec"]["names"]["categories"]


def test_printer_columns_and_rules() -> None:
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t) for t in render_crds().values()}

    def columns(kind: str) -> list[str]:
        return [c["name"] for c in crds[kind]["spec"]["versions"][0]["additionalPrinterColumns"]]

    assert columns("IcechunkStore") == ["Ready", "Snapshot", "Datasets", "Maintenance", "Maintained", "Age"]
    assert columns("IngestBatch") == ["Store", "Status", "Done/Total", "Failed", "Age"]
    assert columns("Reconciliation") == [
        *("Store", "Missing", "Stale", "Orphaned", "Broken", "Repair", "Ready", "Age")
    ]
    batch = crds["IngestBatch"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert batch["properties"]["store"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert "x-kubernetes-validations" in batch["properties"]["source"]
    store = crds["IcechunkStore"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    maintenance = store["properties"]["maintenance"]
    assert (
        "exactly one of expireOlderThan, keepSnapshots"
        in maintenance["x-kubernetes-validations"][0]["message"]
    )
    assert maintenance["properties"]["expireOlderThan"]["pattern"] == "^[0-9]{1,8}[smhdw]$"
    conditions = crds["IngestBatch"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
