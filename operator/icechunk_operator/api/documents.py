"""Multi-document YAML of resources in, validated models out, errors naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from icechunk_operator.api.batch import IngestBatch
from icechunk_operator.api.common import USER_DOCUMENT, problem_text
from icechunk_operator.api.reconciliation import Reconciliation
from icechunk_operator.api.schedule import IngestSchedule
from icechunk_operator.api.store import IcechunkStore
from icechunk_operator.api.yaml_reading import UnreadableYamlError, read_yaml_documents

Resource = IcechunkStore | IngestBatch | Reconciliation | IngestSchedule

_KINDS: dict[str, type[Resource]] = {
    "IcechunkStore": IcechunkStore,
    "IngestBatch": IngestBatch,
    "Reconciliation": Reconciliation,
    "IngestSchedule": IngestSchedule,
}


class SpecError(ValueError):
    """An invalid resource: the message names the document and the field."""


@dataclass
class ResourceSet:
    stores: dict[str, IcechunkStore] = field(default_factory=dict)
    batches: list[IngestBatch] = field(default_factory=list)
    reconciliations: list[Reconciliation] = field(default_factory=list)
    schedules: list[IngestSchedule] = field(default_factory=list)


def format_validation_error(where: str, error: ValidationError) -> str:
    """One line per problem, each starting with the dotted path of the field."""
    return "\n".join(f"{where}: {problem_text(problem)}" for problem in error.errors())


def parse_resource(document: dict[str, Any], where: str = "resource") -> Resource:
    kind = document.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:  # never str() of what is not a string: a list of aliases can be gigabytes
        scalar = kind is None or isinstance(kind, str | int | float)
        got = repr(kind)[:100] if scalar else f"a {type(kind).__name__}"
        raise SpecError(f"{where}: kind: must be one of {sorted(_KINDS)}, got {got}")
    metadata = document.get("metadata")
    name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
    name = name if isinstance(name, str) else "?"
    try:
        return model.model_validate(document, context={USER_DOCUMENT: True})
    except ValidationError as error:
        raise SpecError(format_validation_error(f"{where} ({kind} {name})", error)) from None


def check_unique(
    seen: dict[tuple[str, str], tuple[int, str | None]],
    resource: Resource,
    number: int,
    path: Path,
) -> None:
    """Refuse a second resource of the same kind and name, which would silently replace the
    first. In another namespace too: a file's references (``spec.store``,
    ``spec.batchTemplate``) and the CLI name resources without one."""
    key = (resource.kind, resource.metadata.name)
    namespace = resource.metadata.namespace
    if key in seen:
        first, first_namespace = seen[key]
        where = "" if first_namespace == namespace else f" (namespaces {first_namespace!r} and {namespace!r})"
        raise SpecError(
            f"{path}: documents {first} and {number} are both {resource.kind} {resource.metadata.name}"
            f"{where}: names must be unique per kind in one file"
        )
    seen[key] = (number, namespace)


def load_resources(path: Path) -> ResourceSet:
    """Read every resource in a YAML file; refuse the whole file on the first invalid one."""
    try:
        documents = read_yaml_documents(path)
    except UnreadableYamlError as error:
        raise SpecError(str(error)) from None
    resources = ResourceSet()
    seen: dict[tuple[str, str], tuple[int, str | None]] = {}
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, dict):
            raise SpecError(f"{path} document {number}: expected a mapping")
        resource = parse_resource(document, f"{path} document {number}")
        check_unique(seen, resource, number, path)
        if isinstance(resource, IcechunkStore):
            resources.stores[resource.metadata.name] = resource
        elif isinstance(resource, IngestBatch):
            resources.batches.append(resource)
        elif isinstance(resource, IngestSchedule):
            resources.schedules.append(resource)
        else:
            resources.reconciliations.append(resource)
    references = (
        [(b.kind, b.metadata.name, "spec.store", b.spec.store) for b in resources.batches]
        + [(r.kind, r.metadata.name, "spec.store", r.spec.store) for r in resources.reconciliations]
        + [(s.kind, s.metadata.name, "spec.batch.store", s.spec.batch.store) for s in resources.schedules]
    )
    for kind, name, field_path, store in references:
        if store not in resources.stores:
            raise SpecError(
                f"{path}: {kind} {name}: {field_path}: no IcechunkStore named {store!r} in this file"
            )
    batch_names = {b.metadata.name for b in resources.batches}
    for reconciliation in resources.reconciliations:
        template = reconciliation.spec.batch_template
        if template is not None and template not in batch_names:
            raise SpecError(
                f"{path}: Reconciliation {reconciliation.metadata.name}: spec.batchTemplate: "
                f"no IngestBatch named {template!r} in this file"
            )
    return resources
