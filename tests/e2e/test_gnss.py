"""A GNSS batch on the test control plane: kubectl apply of a materialized IngestBatch, the commit
pod reads the real RINEX files, status says what happened, the store reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.k8s import names
from tests.e2e.conftest import ClusterDriver
from tests.gnss import INVALID, REFERENCE, STATION_PATTERN, assert_same_values, copy_files, reader_dataset
from tests.integration.readback import open_group

pytestmark = pytest.mark.slow


def test_a_gnss_batch_materializes_in_the_cluster(
    cluster: ClusterDriver, namespace: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    copy_files(REFERENCE[:4], archive / "rosalia")
    copy_files(
        [p for p in INVALID if p.stem == "truncated_header"],
        archive / "rosalia",
        ["ROSR01TUW_R_20250010100_15M_05S_AA.rnx"],
    )
    prefix = archive.resolve().as_uri() + "/"
    store = {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IcechunkStore",
        "metadata": {"name": "rosalia"},
        "spec": {
            "storage": {"url": (tmp_path / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": prefix}],
        },
    }
    batch = {
        "apiVersion": "icechunkoperator.io/v1alpha1",
        "kind": "IngestBatch",
        "metadata": {"name": "rosalia-2025-001"},
        "spec": {
            "store": "rosalia",
            "source": {"prefix": prefix, "glob": "rosalia/*.rnx"},
            "grouping": {"pattern": STATION_PATTERN, "template": "{station}/observations"},
            "materialize": {"reader": "rinex", "chunks": {"epoch": 34560, "sid": -1}, "onOverlap": "skip"},
            "execution": {"workers": 2},
            "failures": {"maxFailedFiles": 1},
            "tag": "v1.0",
        },
    }
    assert cluster.apply(store, namespace=namespace).returncode == 0
    cluster.kubectl_wait(namespace, "icechunkstore/rosalia", "Ready", 60)
    assert cluster.apply(batch, namespace=namespace).returncode == 0
    cluster.kubectl_wait(namespace, "ingestbatch/rosalia-2025-001", "Succeeded", 300)

    status = cluster.status(names.BATCHES, namespace, "rosalia-2025-001")
    assert status["files"] == {"total": 5, "done": 4, "failed": 1, "skipped": 0}
    assert len(status["commits"]) == 1 and status["failureLog"]
    model = IcechunkStore.model_validate(store)
    stored = open_group(model, "ROSR/observations")
    for path in (REFERENCE[0], REFERENCE[3]):
        want = reader_dataset(path)
        assert_same_values(stored.sel(epoch=want.epoch.values).compute(), want, path.name)
    assert open_repository(model.spec, create=False).lookup_tag("v1.0") == status["commits"][-1]
    log = json.loads(Path(status["failureLog"].removeprefix("file://")).read_text())
    assert [(f["error_class"], f["message"]) for f in log["failures"]] == [
        ("ValidationError", "mandatory header record TIME OF FIRST OBS is missing")
    ]
