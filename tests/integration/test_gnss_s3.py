"""GNSS files in a bucket, the materialized store in another, on a real S3-compatible server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.runner import run_batch
from tests.conftest import S3_KEY, S3_SECRET
from tests.gnss import REFERENCE, assert_same_values, gnss_batch, reader_dataset
from tests.integration.readback import open_group

pytestmark = pytest.mark.s3


def test_rinex_files_in_a_bucket_materialize_into_a_bucket(
    tmp_path: Path, s3_env: str, dask_scheduler: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket=f"gnss-{suffix}")
    client.create_bucket(Bucket=f"stores-{suffix}")
    files = REFERENCE[:6]
    for path in reversed(files):  # delivered newest first
        client.upload_file(str(path), f"gnss-{suffix}", f"rosalia/reference/{path.name}")
    root = f"s3://gnss-{suffix}/rosalia/"
    keys = tmp_path / "s3-keys.json"  # the workers read credentials from a file the spec names
    keys.write_text(json.dumps({"access_key_id": S3_KEY, "secret_access_key": S3_SECRET}))
    location = {"endpoint": s3_env, "region": "us-east-1", "allowHttp": True, "forcePathStyle": True}
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "rosalia"},
            "spec": {
                "storage": {"url": f"s3://stores-{suffix}/rosalia", **location},
                "virtualChunkContainers": [
                    {"urlPrefix": root, **location, "credentials": {"file": str(keys)}}
                ],
            },
        }
    )
    batch = gnss_batch(Path("/unused"), "s3-day")
    batch.spec.source.prefix, batch.spec.source.glob = root, "reference/*.rnx"

    report = run_batch(store, batch, scheduler=dask_scheduler)

    assert (report.done, report.failed, len(report.commits)) == (6, 0, 1)
    stored = open_group(store, "ROSR/observations")
    for path in (files[0], files[-1]):
        want = reader_dataset(path)
        assert_same_values(stored.sel(epoch=want.epoch.values).compute(), want, path.name)
    again = run_batch(store, batch, scheduler=dask_scheduler)
    assert (again.skipped, again.commits) == (6, [])
