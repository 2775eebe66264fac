"""Hypothesis strategies for hostile resource documents: valid documents with a few fields set to
random or adversarial values, removed, or joined by unknown fields.

Which fields exist, and their types, bounds, patterns and enums, come from the CRD schemas the
models generate (``api.crds.openapi_schema``), so a field added to a model is fuzzed without a
change here. Each example records the mutations it made, so a failure names the field it
touched and a property can check that a refusal names it too.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from icechunk_operator.api import IcechunkStore, IngestBatch, IngestSchedule, Reconciliation
from icechunk_operator.api.common import GROUP_VERSION, ResourceModel
from icechunk_operator.api.crds import openapi_schema

Path = tuple[str | int, ...]

BASE_DOCUMENTS: dict[str, dict[str, Any]] = {
    "IcechunkStore": {
        "apiVersion": GROUP_VERSION,
        "kind": "IcechunkStore",
        "metadata": {"name": "s"},
        "spec": {
            "storage": {
                "url": "s3://bucket/stores/s",
                "endpoint": "http://127.0.0.1:9000",
                "region": "us-east-1",
                "allowHttp": True,
                "forcePathStyle": True,
                "credentials": {"secretRef": {"name": "creds"}, "env": {"accessKeyId": "KEY"}},
            },
            "config": {
                "compression": {"algorithm": "zstd", "level": 3},
                "inlineThresholdBytes": 8192,
                "manifestSplitting": [{"pathRegex": ".*/lithk", "dimension": "time", "size": 10}],
                "commitConcurrency": 64,
                "specVersion": 2,
            },
            "virtualChunkContainers": [{"urlPrefix": "s3://archive/", "region": "us-east-1"}],
            "branch": "main",
            "failureLogUrl": "s3://bucket/failures/",
            "deletionPolicy": "Retain",
            "maintenance": {
                "schedule": "0 3 * * 0",
                "expireOlderThan": "30d",
                "memory": "2Gi",
                "deadlineSeconds": 3600,
                "historyLimit": 3,
            },
        },
    },
    "IngestBatch": {
        "apiVersion": GROUP_VERSION,
        "kind": "IngestBatch",
        "metadata": {"name": "b"},
        "spec": {
            "store": "s",
            "source": {"prefix": "s3://archive/data/", "glob": "**/*.nc", "skip": ["*/tmp/*"]},
            "grouping": {
                "pattern": r"(?P<model>[^/]+)/(?P<stem>[^/]+)\.nc$",
                "template": "{model}/{stem}",
                "rules": [{"match": "*", "combine": "concat", "dimension": "time"}],
            },
            "virtualization": {
                "parser": "auto",
                "loadableVariables": ["time"],
                "dropVariables": ["x"],
                "fixes": ["ismip6"],
                "split": {"dimension": "time"},
            },
            "execution": {
                "workers": 2,
                "threadsPerWorker": 1,
                "workerMemory": "2Gi",
                "workerCpu": "1",
                "retries": 3,
                "filesPerTask": 0,
                "filesInFlight": 16,
                "commitMemory": "2Gi",
                "commitCpu": "1",
                "deadlineSeconds": 3600,
                "podRetries": 2,
            },
            "commit": {"everyGroups": 100, "everySeconds": 60, "message": "m"},
            "failures": {"maxFailedFiles": 1, "maxFailedFraction": 0.1},
            "branch": "main",
            "tag": "v1",
            "staging": False,
        },
    },
    "Reconciliation": {
        "apiVersion": GROUP_VERSION,
        "kind": "Reconciliation",
        "metadata": {"name": "r"},
        "spec": {
            "store": "s",
            "prefix": "s3://archive/",
            "glob": "**/*.nc",
            "checkReferences": True,
            "mode": "Repair",
            "batchTemplate": "b",
            "removeOrphans": False,
            "schedule": "0 4 * * *",
            "historyLimit": 3,
        },
    },
}

BASE_DOCUMENTS["IngestSchedule"] = {
    "apiVersion": GROUP_VERSION,
    "kind": "IngestSchedule",
    "metadata": {"name": "sch"},
    "spec": {
        "schedule": "15 0 * * *",
        "suspend": False,
        "startingDeadlineSeconds": 3600,
        "concurrencyPolicy": "Forbid",
        "successfulRunsHistoryLimit": 3,
        "failedRunsHistoryLimit": 1,
        "batch": {
            **{k: v for k, v in BASE_DOCUMENTS["IngestBatch"]["spec"].items() if k != "tag"},
            "staging": True,
            "validation": {"timeContinuity": {"dimension": "time", "maxGap": "1d"}},
        },
    },
}

MODELS: dict[str, type[ResourceModel]] = {
    "IcechunkStore": IcechunkStore,
    "IngestBatch": IngestBatch,
    "Reconciliation": Reconciliation,
    "IngestSchedule": IngestSchedule,
}

#: Strings that have broken, or could break, a parser, a path or a URL check.
HOSTILE_STRINGS = [
    "",
    " ",
    "..",
    "/",
    "../x",
    "/etc/passwd",
    "%2e%2e",
    "%2e%2e%2f",
    "..%2F",
    "%2F",
    "a\x00b",
    "\x00",
    "line\nbreak",
    "tab\there",
    "\x7f",
    "\u202eevil",
    "\uff41",
    "é",
    "💥",
    "x" * 300,
    "x" * 5000,
    "{unknown}",
    "{stem",
    "}",
    "{stem:{model}<3}",
    "{stem:>999999999}",
    "{stem!r}",
    "{0}",
    "{}",
    "{{stem}}",
    "(?P<x",
    "[",
    "(?=x)",
    "(a+)+$",
    "(?P<stem>.*)",
    "*",
    "**",
    "**/../*",
    "[!/]",
    "[z-a]",
    "file:///",
    "file://",
    "file:///tmp/x/",
    "file:///tmp/x/../y/",
    "file:///tmp/%2e%2e/",
    "s3://",
    "s3://b",
    "s3://b/",
    "s3://b/p",
    "s3://b/p/",
    "s3://b/../p/",
    "s3://archive/%2e%2e/x/",
    "s3://archive/..%2Fx/",
    "gs://b/p/",
    "az://c/p/",
    "ftp://host/x/",
    "http://host/x/",
    "javascript:alert(1)",
    "S3://b/p/",
    "0",
    "-1",
    "1e9",
    "2Gi",
    "500m",
    "1.5",
    "-2Gi",
    "2GB",
    "Infinity",
    "30d",
    "99999999999999999999d",
    "0s",
    "* * * * *",
    "0 0 30 2 *",
    "61 * * * *",
    "@daily",
    "ismip6",
    "package.module:function",
    "os:system",
    "main",
    "a/b",
    "refs/heads/main",
    "-flag",
    "Repair",
    "Report",
    "concat",
    "zstd",
    "Delete",
    "hdf5",
]
HOSTILE_INTEGERS = [0, 1, -1, 2, 21, 22, 23, 63, 64, 65, 255, 256, 257, 2**31 - 1, 2**31, 2**53 + 1]
HOSTILE_INTEGERS += [2**63 - 1, 2**63, -(2**63), 2**64, 10**30]
HOSTILE_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, -1.5, 1e-300, 1e300, 1e308]
WRONG_TYPES: list[Any] = [
    None,
    True,
    False,
    [],
    {},
    [1],
    ["a"],
    {"a": 1},
    1,
    1.5,
    "1",
    "true",
    [None],
    {"": None},
]


@dataclass
class Mutated:
    """One hostile document and what was done to the valid one it came from."""

    kind: str
    document: dict[str, Any]
    touched: list[Path] = field(default_factory=list)
    added_unknown: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        parts = [".".join(str(p) for p in path) for path in self.touched + self.added_unknown]
        return f"{self.kind} with {', '.join(parts) or 'no change'}"


@functools.cache
def field_paths(model: type[ResourceModel]) -> list[tuple[Path, dict[str, Any]]]:
    """Every field of the spec (and metadata.name, apiVersion, kind), with its CRD schema node."""
    schema = openapi_schema(model)
    found: list[tuple[Path, dict[str, Any]]] = [
        (("metadata", "name"), {"type": "string"}),
        (("apiVersion",), {"type": "string"}),
        (("kind",), {"type": "string"}),
        (("metadata",), {"type": "object"}),
        (("spec",), {"type": "object"}),
    ]

    def walk(node: dict[str, Any], path: Path) -> None:
        found.append((path, node))
        for name, child in node.get("properties", {}).items():
            walk(child, (*path, name))
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], (*path, 0))

    walk(schema["properties"]["spec"], ("spec",))
    return found


def _bounded_integers(node: dict[str, Any]) -> st.SearchStrategy[int]:
    edges = list(HOSTILE_INTEGERS)
    for key in ("minimum", "maximum"):
        if key in node:
            edges += [node[key] - 1, node[key], node[key] + 1]
    return st.one_of(st.sampled_from(edges), st.integers(), st.integers(-(2**70), 2**70))


def _strings(node: dict[str, Any], json_only: bool) -> st.SearchStrategy[str]:
    alphabet = st.characters(exclude_categories=("Cs",)) if json_only else st.characters()
    options: list[st.SearchStrategy[str]] = [
        st.sampled_from(HOSTILE_STRINGS),
        st.text(alphabet, max_size=40),
        st.text(st.sampled_from("abz09-_./%{}:*?[]!^$\\ \n"), max_size=20),
    ]
    if "enum" in node:
        options.append(st.sampled_from([str(v) for v in node["enum"]]))
    if "pattern" in node:
        options.append(st.from_regex(node["pattern"], fullmatch=False).filter(lambda s: len(s) < 200))
    return st.one_of(options)


def value_for(node: dict[str, Any], json_only: bool) -> st.SearchStrategy[Any]:
    """Random and adversarial values for one field: of its type, at its bounds, or of any type."""
    wrong = st.sampled_from(WRONG_TYPES)
    kind = node.get("type")
    if kind == "string":
        typed: st.SearchStrategy[Any] = _strings(node, json_only)
    elif kind == "integer":
        typed = _bounded_integers(node)
    elif kind == "number":
        floats = st.floats(allow_nan=not json_only, allow_infinity=not json_only)
        typed = st.one_of(st.sampled_from(HOSTILE_FLOATS), floats, _bounded_integers(node))
        if not json_only:
            typed = st.one_of(typed, st.sampled_from([math.inf, -math.inf, math.nan]))
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "array":
        item = node.get("items", {})
        typed = st.lists(value_for(item, json_only) if item.get("type") != "object" else wrong, max_size=3)
    else:
        typed = st.one_of(st.just({}), st.dictionaries(_strings({}, json_only), wrong, max_size=2))
    return st.one_of(typed, typed, typed, wrong)


def set_field(document: dict[str, Any], path: Path, value: Any) -> Path:
    """Set ``path`` to ``value``, creating the objects and lists on the way; returns the path
    of the outermost one created (or replaced), else ``path``. That path is what the mutation
    touched: a created ``filesPerPeriod`` lacks its required ``period`` as much as its
    ``expected`` is set, and a refusal naming either is a refusal of what changed."""
    node: Any = document
    created: Path | None = None
    for depth, (step, following) in enumerate(itertools.pairwise(path)):
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            if not isinstance(node, list):
                return path
            while len(node) <= step:
                node.append(fresh)
            if not isinstance(node[step], type(fresh)):
                node[step] = fresh
                created = created or path[: depth + 1]
            node = node[step]
        else:
            if not isinstance(node, dict):
                return path
            if not isinstance(node.get(step), type(fresh)):
                node[step] = fresh
                created = created or path[: depth + 1]
            node = node[step]
    last = path[-1]
    if isinstance(last, int) and isinstance(node, list):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    elif isinstance(last, str) and isinstance(node, dict):
        node[last] = value
    return created or path


def _delete(document: dict[str, Any], path: Path) -> None:
    node: Any = document
    for step in path[:-1]:
        try:
            node = node[step]
        except KeyError, IndexError, TypeError:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        del node[path[-1]]


@st.composite
def hostile_documents(
    draw: st.DrawFn, kinds: tuple[str, ...] = tuple(MODELS), json_only: bool = False
) -> Mutated:
    """A valid document of one of ``kinds`` with one to three fields changed, removed or added.
    Values are copied in: the samples are shared, and a later mutation may write inside one."""
    kind = draw(st.sampled_from(kinds))
    mutated = Mutated(kind, copy.deepcopy(BASE_DOCUMENTS[kind]))
    paths = field_paths(MODELS[kind])
    for _ in range(draw(st.integers(1, 3))):
        path, node = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["set", "set", "set", "set", "delete", "unknown"]))
        if action == "set":
            mutated.touched.append(
                set_field(mutated.document, path, copy.deepcopy(draw(value_for(node, json_only))))
            )
        elif action == "delete":
            _delete(mutated.document, path)
            mutated.touched.append(path)
        else:
            parent = path if node.get("type") == "object" else path[:-1]
            name = draw(st.sampled_from(["unknownField", "extra", "Store", "SPEC", "store ", "$ref"]))
            created = set_field(
                mutated.document, (*parent, name), copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))
            )
            mutated.added_unknown.append((*parent, name))
            if created != (*parent, name):
                mutated.touched.append(created)
    return mutated
