"""The engine against a real S3-compatible server: sources and the store both in buckets."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from icechunk_operator.engine.runner import run_batch
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import S3_KEY, S3_SECRET, ismip6_resources
from tests.integration.readback import assert_bucket_ingest, branch_commits

pytestmark = pytest.mark.s3


def upload_archive(endpoint: str, layout: ArchiveLayout, bucket: str) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    for item in layout.files:
        key = item.path.relative_to(layout.root).as_posix()
        client.upload_file(str(item.path), bucket, key)
    return f"s3://{bucket}/"


def test_s3_sources_into_an_s3_store_read_back_equal(
    shared_archive: ArchiveLayout, tmp_path: Path, s3_env: str, dask_scheduler: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = upload_archive(s3_env, shared_archive, f"archive-{suffix}")
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=f"stores-{suffix}")
    keys = tmp_path / "s3-keys.json"  # the workers read credentials from a file the spec names
    keys.write_text(json.dumps({"access_key_id": S3_KEY, "secret_access_key": S3_SECRET}))
    location = {"endpoint": s3_env, "region": "us-east-1", "allowHttp": True, "forcePathStyle": True}
    store, batch = ismip6_resources(
        root,
        f"s3://stores-{suffix}/ismip6",
        store_extra={
            "storage": location,
            "virtualChunkContainers": [{"urlPrefix": root, **location, "credentials": {"file": str(keys)}}],
        },
        batch_extra={"virtualization": {"split": {"dimension": "time"}}, "commit": {"everyGroups": 10}},
    )

    report = run_batch(store, batch, scheduler=dask_scheduler)

    opened = assert_bucket_ingest(report, store, shared_archive, root)
    for item, ds in opened:
        assert int(ds["time"].dt.year.values[0]) == 2015
        if ds[item.variable].ndim == 3:
            assert ds[item.variable].encoding["chunks"][0] == 1  # split per time step

    commits = branch_commits(store)
    again = run_batch(store, batch, scheduler=dask_scheduler)
    assert again.done == 0 and again.commits == [] and branch_commits(store) == commits
    assert again.skipped == len(opened)
