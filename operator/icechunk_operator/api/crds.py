"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the single source of truth; this module turns their JSON schema into the
structural OpenAPI v3 schema the API server wants (every ``$ref`` inlined, no ``anyOf`` with
null, OpenAPI 3.0 exclusive bounds, no titles) and adds what only Kubernetes knows: CEL rules
(``x-kubernetes-validations`` set on the models), the status subresource, printer columns, short
names and the ``icechunk`` category. ``make crds`` writes ``crds/``; a test fails on drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from icechunk_operator.api.common import API_GROUP, API_VERSION, DNS_LABEL_PATTERN, ResourceModel, cel

CATEGORY = "icechunk"

_DROPPED_KEYS = {"title", "additionalProperties"}

#: The models take a DNS label for a resource's name, since its Jobs and DaskCluster are named
#: after it; the API server would take any DNS subdomain ("a.b"), which the operator then could
#: not read. CEL at the schema's root may see metadata.name, so the CRD checks it too.
NAME_RULE = cel(
    f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
    "metadata.name must be a DNS label: lowercase letters, digits and '-', at most 63 characters",
)


def _clean_description(text: str) -> str:
    return re.sub(r"``([^`]+)``", r"\1", " ".join(text.split()))


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON-schema node as a structural OpenAPI v3 node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return _structural({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {schema['anyOf']} structurally")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _structural({**options[0], **rest}, defs)
    return _structural_leaf_keys(schema, defs)


def _structural_leaf_keys(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS or key == "$ref":
            continue
        if key == "default" and value is None:
            continue
        if key == "description":
            out[key] = _clean_description(value)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = _without_defaults(_structural(value, defs))
        else:
            out[key] = value
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        values = _structural(additional, defs)
        # Values of any JSON type (reader options): structural schemas say so explicitly.
        out["additionalProperties"] = values or {"x-kubernetes-preserve-unknown-fields": True}
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    return out


def _without_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop defaults inside list items. The API server would fill them into each item, the
    stored list would then differ from the applied one, and every ``kubectl apply`` or GitOps
    sync would see a change (lists are replaced whole). The models apply these defaults anyway."""
    out = {key: value for key, value in schema.items() if key != "default"}
    if "properties" in out:
        out["properties"] = {name: _without_defaults(prop) for name, prop in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _without_defaults(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _without_defaults(out["additionalProperties"])
    return out


def openapi_schema(model: type[ResourceModel]) -> dict[str, Any]:
    """The structural schema of one resource (apiVersion, kind, metadata, spec, status)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    root = _structural(schema, defs)
    properties = root["properties"]
    properties["metadata"] = {"type": "object"}  # the API server owns metadata's schema
    properties["apiVersion"] = {"type": "string"}
    properties["kind"] = {"type": "string"}
    root["required"] = [name for name in root.get("required", []) if name in ("spec",)]
    root.pop("description", None)
    root["x-kubernetes-validations"] = [NAME_RULE]
    return root


def custom_resource_definition(model: type[ResourceModel]) -> dict[str, Any]:
    """The CRD of one resource model."""
    columns = [
        {"name": c["name"], "type": c["type"], "jsonPath": c["jsonPath"], **_column_extras(c)}
        for c in model.printer_columns
    ]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": model.kind_name,
                "listKind": f"{model.kind_name}List",
                "plural": model.plural,
                "singular": model.kind_name.lower(),
                "shortNames": list(model.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _column_extras(column: dict[str, str]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if "description" in column:
        extras["description"] = column["description"]
    if "priority" in column:
        extras["priority"] = int(column["priority"])
    return extras


def render_crds() -> dict[str, str]:
    """File name → YAML text for every resource, as ``make crds`` writes them."""
    from icechunk_operator.api import RESOURCE_KINDS

    header = "# Generated by `make crds` from operator/icechunk_operator/api; do not edit.\n"
    return {
        f"{API_GROUP}_{model.plural}.yaml": header
        + yaml.safe_dump(custom_resource_definition(model), sort_keys=False, width=100)
        for model in RESOURCE_KINDS
    }


def write_crds(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written
