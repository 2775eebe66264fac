"""What the hostile-spec properties check, shared by the model property (tests/faults) and the
API-server property (tests/e2e, where the control plane's fixtures live).

A refusal must name a field the example touched; an accepted resource must survive what the
engine and the operator do with it next. ``FOUND`` holds the examples that found defects.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from icechunk_operator.api import IcechunkStore, IngestBatch, IngestSchedule, Reconciliation
from icechunk_operator.api.common import USER_DOCUMENT, ResourceModel
from icechunk_operator.api.documents import SpecError, format_validation_error, parse_resource
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.failures import failure_log_url
from icechunk_operator.engine.lifecycle import expiry_cutoff, parse_duration
from icechunk_operator.engine.planning import plan_ingest
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.runner import spec_hash, virtualize_options
from icechunk_operator.engine.sources import beside_store, check_sources, glob_regex
from icechunk_operator.engine.storage import build_config
from icechunk_operator.engine.templates import check_group_path
from icechunk_operator.k8s.children import commit_job, dask_cluster
from icechunk_operator.k8s.maintenance import maintenance_job
from icechunk_operator.k8s.reconciliations import reconcile_job
from icechunk_operator.k8s.schedules import scheduled_run
from icechunk_operator.k8s.settings import OperatorSettings
from tests.faults.spec_strategies import BASE_DOCUMENTS, MODELS, Mutated, Path, set_field

CATEGORY = "bad spec"
#: ICECHUNK_OPERATOR_SPEC_EXPLORE=N runs N random (not derandomized) examples per property: how
#: new defects are looked for; what they find becomes an explicit example below.
EXPLORE = int(os.environ.get("ICECHUNK_OPERATOR_SPEC_EXPLORE", "0"))

#: Files a batch may list, hostile names among them: planning must fail these, never crash.
HOSTILE_URLS = [
    "s3://archive/data/m/x.nc",
    "s3://archive/data/../x.nc",
    "s3://archive/data/%2e%2e/x.nc",
    "s3://archive/data/m/..\n.nc",
    "s3://archive/data/a\x00/b.nc",
    "s3://archive/data/\uff41/b.nc",
    "s3://archive/data/_icechunk_operator/x.nc",
    "s3://archive/data/m/..\\x.nc",
    "s3://archive/data//x.nc",
    "s3://archive/data/m/" + "y" * 2000 + ".nc",
]
SETTINGS = OperatorSettings()
BASE_STORE = IcechunkStore.model_validate(BASE_DOCUMENTS["IcechunkStore"])
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class Counter:
    """Examples tried and refused, for the fault tally (hypothesis runs the body many times)."""

    def __init__(self) -> None:
        self.tried = 0
        self.refused = 0


def related(loc: Path, touched: Path) -> bool:
    """A problem at the field an example touched, at a field that contains it, or inside it."""
    shorter = min(len(loc), len(touched))
    return tuple(loc[:shorter]) == tuple(touched[:shorter])


def _loc(problem: Any) -> Path:
    return tuple(part for part in problem["loc"])


def check_refusal(mutated: Mutated, error: ValidationError) -> None:
    problems = error.errors()
    assert problems
    touched = mutated.touched + mutated.added_unknown
    for problem in problems:
        assert problem["loc"], f"{mutated.describe()}: a problem with no field: {problem}"
    assert any(related(_loc(p), t) for p in problems for t in touched), (
        f"{mutated.describe()}: no problem names a touched field: {[p['loc'] for p in problems]}"
    )
    text = format_validation_error("doc", error)
    for problem in problems:
        assert ".".join(str(part) for part in problem["loc"]) in text


def survives_the_engine(resource: ResourceModel) -> None:
    """What the engine and the operator do next with an accepted resource: nothing may crash."""
    assert type(resource).model_validate(resource.to_api()) == resource, "the wire form round-trips"
    json.dumps(resource.to_api(), allow_nan=False)
    if isinstance(resource, IngestBatch):
        _batch_survives(resource)
    elif isinstance(resource, IcechunkStore):
        _store_survives(resource)
    elif isinstance(resource, Reconciliation):
        _reconciliation_survives(resource)
    elif isinstance(resource, IngestSchedule):
        _batch_survives(IngestBatch.model_validate(schedule_run(resource)))


def schedule_run(schedule: IngestSchedule) -> dict[str, Any]:
    """The IngestBatch the operator stamps for one run of ``schedule``."""
    from icechunk_operator.k8s.schedule_plan import NewRun, run_batch_body

    new_run = NewRun("s202601010300", 1, "scheduled for 2026-01-01T03:00:00Z", None)
    return run_batch_body(schedule.to_api(), schedule.spec.batch.to_api(), new_run, "default")


def _batch_survives(batch: IngestBatch) -> None:
    spec = batch.spec
    regex = glob_regex(spec.source.glob)
    for url in HOSTILE_URLS:
        regex.fullmatch(url.removeprefix("s3://archive/data/"))
    files = [SourceFile(url, 10, "etag", None) for url in HOSTILE_URLS]
    plan = plan_ingest(files, {}, spec.grouping, spec.source.skip)
    for work in plan.work:
        assert check_group_path(work.group, "test") == work.group
    assert plan.files_to_ingest + len(plan.refused) + len(plan.skipped) == len(files)
    refusal = ""
    try:
        check_sources(spec.source, BASE_STORE.spec)
    except Refused as error:
        refusal = str(error)
    assert not refusal or refusal.startswith("spec.source."), refusal
    spec_hash(batch)
    virtualize_options(batch)
    for job in (commit_job(batch, BASE_STORE, SETTINGS), dask_cluster(batch, BASE_STORE, SETTINGS)):
        assert DNS_LABEL.fullmatch(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
        json.dumps(job, allow_nan=False)


def _store_survives(store: IcechunkStore) -> None:
    spec = store.spec
    build_config(spec)
    beside_store(spec)
    url = failure_log_url(spec, "b")
    assert url.startswith(("file://", "s3://", "gs://", "az://")), url
    maintenance = spec.maintenance
    if maintenance is not None:
        now = datetime.now(UTC)
        older_than = parse_duration(maintenance.expire_older_than) if maintenance.expire_older_than else None
        expiry_cutoff([now], older_than=older_than, keep=maintenance.keep_snapshots, now=now)
        scheduled_run(maintenance.schedule, now - timedelta(days=400), now)
        job = maintenance_job(store, SETTINGS, "s202601010300")
        assert len(job["metadata"]["name"]) <= 63
        json.dumps(job, allow_nan=False)


def _reconciliation_survives(reconciliation: Reconciliation) -> None:
    spec = reconciliation.spec
    glob_regex(spec.glob).fullmatch("a/b.nc")
    now = datetime.now(UTC)
    scheduled_run(spec.schedule, now - timedelta(days=400), now)
    job = reconcile_job(reconciliation, BASE_STORE, SETTINGS, "s202601010300")
    assert DNS_LABEL.fullmatch(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63


def model_verdict(mutated: Mutated, counter: Counter) -> ResourceModel | None:
    """The resource, or None after checking that the refusal names a touched field."""
    counter.tried += 1
    document = mutated.document
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in MODELS:
        with pytest.raises(SpecError, match=r"resource: kind: must be one of"):
            parse_resource(document)
        counter.refused += 1
        return None
    try:
        resource = MODELS[kind].model_validate(document, context={USER_DOCUMENT: True})
    except ValidationError as error:
        check_refusal(mutated, error)
        with pytest.raises(SpecError):
            parse_resource(document)
        counter.refused += 1
        return None
    assert parse_resource(document) == resource
    return resource


def _example(kind: str, path: Path, value: Any) -> Mutated:
    """An explicit example: the base document of ``kind`` with one field set."""
    import copy

    mutated = Mutated(kind, copy.deepcopy(BASE_DOCUMENTS[kind]))
    mutated.touched.append(set_field(mutated.document, path, value))
    return mutated


def _materialized_without_virtualization() -> Mutated:
    """A materialized batch that says ``virtualization: null``: the server drops the null."""
    mutated = _example("IngestBatch", ("spec", "materialize"), {})
    mutated.touched.append(set_field(mutated.document, ("spec", "virtualization"), None))
    return mutated


#: Examples that found defects, run on every change whatever hypothesis draws; the comment says
#: what happened before the fix. Both properties run them.
FOUND = [
    # A nested field in a format spec raised KeyError out of validation (not a ValidationError),
    # and with the field known, a file name decided the spec and crashed planning.
    _example("IngestBatch", ("spec", "grouping", "template"), "{model:{stem}<3}"),
    # A width allocated a billion characters to validate the template.
    _example("IngestBatch", ("spec", "grouping", "template"), "{model:>999999999}"),
    # Accepted, then the failure log could not be written at the end of the batch.
    _example("IcechunkStore", ("spec", "failureLogUrl"), "ftp://host/x/"),
    # Accepted, then timedelta overflowed in the maintenance pod, and in `expire --older-than`.
    _example("IcechunkStore", ("spec", "maintenance", "expireOlderThan"), "99999999999999999999d"),
    # Accepted, then Icechunk's u32 overflowed when the store was opened.
    _example("IcechunkStore", ("spec", "config", "manifestSplitting", 0, "size"), 2**32),
    # Accepted, and Icechunk silently never matched it: no manifest was ever split.
    _example("IcechunkStore", ("spec", "config", "manifestSplitting", 0, "pathRegex"), "("),
    # Accepted, then Icechunk refused a file:// container without a path when the store opened.
    _example("IcechunkStore", ("spec", "virtualChunkContainers", 0, "urlPrefix"), "file:///"),
    # Accepted: '$' matched before the final line break.
    _example("IngestBatch", ("metadata", "name"), "b\n"),
    # Accepted by the model and the CRD, then every Job the operator made for it was refused.
    _example("IcechunkStore", ("spec", "storage", "credentials", "secretRef", "name"), ""),
    _example("IngestBatch", ("spec", "execution", "commitMemory"), "lots"),
    _example("IngestBatch", ("spec", "execution", "workerCpu"), "-1"),
    _example("IcechunkStore", ("spec", "maintenance", "memory"), "2 GB"),
    _example("IngestBatch", ("spec", "store"), "a/b"),  # a label value of the Jobs
    # The API server took them and the model refused them (or the reverse).
    _example("IngestBatch", ("spec", "grouping", "rules", 0, "dimension"), ""),
    _example("IngestBatch", ("spec", "grouping", "template"), ""),
    _example("IcechunkStore", ("spec", "config", "manifestSplitting", 0, "size"), True),
    _example("IngestBatch", ("spec", "staging"), "yes"),
    _example("IcechunkStore", ("spec", "storage", "credentials", "env"), None),
    _example("IcechunkStore", ("metadata", "unknownField"), 1),
    _example("IngestBatch", ("spec", "execution", "deadlineSeconds"), 2**63),
    _example("IngestBatch", ("spec", "failures", "maxFailedFiles"), 2**63),
    _example("Reconciliation", ("metadata", "name"), "a.b"),
    # The server took it (the null dropped), the model refused both modes as given.
    _materialized_without_virtualization(),
    # A created gate lacking its required period was called a refusal of the wrong field.
    _example("IngestBatch", ("spec", "validation", "filesPerPeriod", "expected"), 1),
]
