"""Index and removeIndex files on local disk: what is in them is checked before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.runner import run_batch
from icechunk_operator.engine.sources import IndexFileError, check_index_contents, list_sources
from icechunk_operator.engine.urls import SourceOutsideContainersError


@pytest.fixture
def store(tmp_path: Path) -> IcechunkStore:
    (tmp_path / "archive").mkdir()
    (tmp_path / "stores").mkdir()
    return IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "s"},
            "spec": {
                "storage": {"url": (tmp_path / "stores" / "s").as_uri()},
                "virtualChunkContainers": [{"urlPrefix": (tmp_path / "archive").as_uri() + "/"}],
            },
        }
    )


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> str:
    pq.write_table(pa.table(columns), path)
    return path.as_uri()


def inside(store: IcechunkStore, name: str) -> str:
    return store.spec.virtual_chunk_containers[0].url_prefix + name


def test_an_index_of_files_in_the_containers_passes(store: IcechunkStore, tmp_path: Path) -> None:
    urls = [inside(store, "a.nc"), inside(store, "b/c.nc")]
    columns = {"url": urls, "size": [1, 2], "mtime": [1.0, 2.0]}
    index = write_parquet(tmp_path / "stores" / "index.parquet", columns)  # beside the store
    removed = write_parquet(tmp_path / "archive" / "gone.parquet", {"url": [inside(store, "old.nc")]})
    source = SourceSpec(index=index, remove_index=removed)
    check_index_contents(source, store.spec)
    assert [f.url for f in list_sources(source, store.spec)] == urls


def test_urls_outside_the_containers_are_counted_and_the_first_named(
    store: IcechunkStore, tmp_path: Path
) -> None:
    urls = [inside(store, "a.nc"), "s3://elsewhere/x.nc", (tmp_path / "y.nc").as_uri(), "no-scheme.nc"]
    index = write_parquet(
        tmp_path / "archive" / "i.parquet", {"url": urls, "size": [1] * 4, "etag": ["e"] * 4}
    )
    with pytest.raises(SourceOutsideContainersError) as refused:
        check_index_contents(SourceSpec(index=index), store.spec)
    message = str(refused.value)
    assert message.startswith("spec.source.index: 3 of the 4 URLs in " + index)
    assert "'s3://elsewhere/x.nc'" in message and isinstance(refused.value, Refused)


def test_a_remove_index_outside_the_containers_is_refused(store: IcechunkStore, tmp_path: Path) -> None:
    removed = write_parquet(tmp_path / "stores" / "remove.parquet", {"url": ["s3://elsewhere/x.nc"]})
    source = SourceSpec(files=[inside(store, "a.nc")], remove_index=removed)
    with pytest.raises(SourceOutsideContainersError, match=r"spec\.source\.removeIndex: 1 of the 1 URLs"):
        check_index_contents(source, store.spec)


def test_an_index_file_outside_the_containers_is_never_read(store: IcechunkStore, tmp_path: Path) -> None:
    index = write_parquet(tmp_path / "index.parquet", {"url": [], "size": [], "mtime": []})
    with pytest.raises(SourceOutsideContainersError, match=r"spec\.source\.index: .* nor beside the store"):
        check_index_contents(SourceSpec(index=index), store.spec)


@pytest.mark.parametrize(
    ("field", "write", "problem"),
    [
        (
            "index",
            lambda p: write_parquet(p, {"url": ["x"], "size": [1]}),
            "needs columns url, size and etag",
        ),
        (
            "index",
            lambda p: write_parquet(p, {"url": [None], "size": [1], "etag": ["e"]}),
            "1 rows without a url",
        ),
        ("removeIndex", lambda p: write_parquet(p, {"path": ["x"]}), "needs a url column"),
        ("index", lambda p: (p.write_text("not parquet"), p.as_uri())[1], "not a readable parquet file"),
        ("removeIndex", lambda p: p.as_uri(), "does not exist"),
    ],
)
def test_bad_index_files_are_refused_naming_the_field(
    store: IcechunkStore, tmp_path: Path, field: str, write: Any, problem: str
) -> None:
    url = write(tmp_path / "archive" / "list.parquet")
    source = (
        SourceSpec(index=url)
        if field == "index"
        else SourceSpec(files=[inside(store, "a")], remove_index=url)
    )
    with pytest.raises(IndexFileError, match=problem) as refused:
        check_index_contents(source, store.spec)
    assert str(refused.value).startswith(f"spec.source.{field}: {url}") and isinstance(refused.value, Refused)


def test_the_engine_refuses_a_remove_index_outside_the_containers_before_it_writes(
    store: IcechunkStore, tmp_path: Path
) -> None:
    """Before the fix, removeIndex URLs were never checked and the batch ran."""
    (tmp_path / "archive" / "empty").mkdir()
    removed = write_parquet(tmp_path / "stores" / "remove.parquet", {"url": ["s3://elsewhere/x.nc"]})
    batch = IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": "b"},
            "spec": {
                "store": "s",
                "source": {"prefix": inside(store, "empty/"), "removeIndex": removed},
                "grouping": {"pattern": r"(?P<name>[^/]+)\.nc$", "template": "{name}"},
            },
        }
    )
    with pytest.raises(SourceOutsideContainersError, match=r"spec\.source\.removeIndex"):
        run_batch(store, batch)


def test_the_operator_refuses_an_index_with_outside_urls_before_any_job(
    store: IcechunkStore, tmp_path: Path
) -> None:
    """The operator's admission reads the index in its child process (no API server needed:
    the store names no Secrets), so a bad index costs no Job and no DaskCluster."""
    from kubernetes import client

    from icechunk_operator.k8s.admission import check_batch
    from icechunk_operator.k8s.controller import Controller
    from icechunk_operator.k8s.kube import KubeApi
    from icechunk_operator.k8s.settings import OperatorSettings

    controller = Controller(KubeApi(client.ApiClient()), OperatorSettings(), lambda *_: None)
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    store_body = {"apiVersion": store.api_version, **store.to_api(), **ready}
    store_body["metadata"]["namespace"] = "default"

    def batch_body(index: str) -> dict[str, Any]:
        batch = IngestBatch.model_validate(
            {
                "kind": "IngestBatch",
                "metadata": {"name": "b", "uid": index},
                "spec": {"store": "s", "source": {"index": index}},
            }
        )
        return {"apiVersion": batch.api_version, **batch.to_api()}

    columns = {"url": [inside(store, "a.nc"), "s3://elsewhere/x.nc"], "size": [1, 2], "etag": ["e", "f"]}
    bad = write_parquet(tmp_path / "archive" / "bad.parquet", columns)
    refused = check_batch(batch_body(bad), store_body, controller._check_index)
    assert refused.invalid is not None and "spec.source.index" in refused.invalid, refused
    assert "s3://elsewhere/x.nc" in refused.invalid

    good = write_parquet(
        tmp_path / "archive" / "good.parquet", {**columns, "url": [inside(store, "a.nc")] * 2}
    )
    assert check_batch(batch_body(good), store_body, controller._check_index).ok
