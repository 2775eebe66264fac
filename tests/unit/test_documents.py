"""One file of resources: a second resource of the same kind and name is refused, not a replacement."""

from __future__ import annotations

from pathlib import Path

import pytest

from icechunk_operator.api.documents import SpecError, load_resources
from tests.unit.test_models import BATCH, STORE


def load(tmp_path: Path, *documents: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("---".join(documents))
    load_resources(path)


def test_two_stores_of_one_name_are_refused(tmp_path: Path) -> None:
    """Before the fix, the second store replaced the first without a word."""
    other = STORE.replace("s3://bucket/stores/s", "s3://bucket/stores/other")
    with pytest.raises(SpecError, match=r"spec\.yaml: documents 1 and 3 are both IcechunkStore s: names"):
        load(tmp_path, STORE, BATCH, other)


def test_two_batches_of_one_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="documents 2 and 3 are both IngestBatch b"):
        load(tmp_path, STORE, BATCH, BATCH.replace("data/", "more/"))


def test_another_namespace_is_named_and_refused_too(tmp_path: Path) -> None:
    moved = STORE.replace("metadata: {name: s}", "metadata: {name: s, namespace: science}")
    with pytest.raises(SpecError, match=r"both IcechunkStore s \(namespaces None and 'science'\)"):
        load(tmp_path, STORE, moved)


def test_one_name_in_two_kinds_is_fine(tmp_path: Path) -> None:
    load(tmp_path, STORE, BATCH.replace("metadata: {name: b}", "metadata: {name: s}"))
