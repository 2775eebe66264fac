"""Deleting a repository (deletionPolicy: Delete) on local disk: a failure is an error, never a count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.storage import (
    DeleteFailedError,
    delete_objects,
    delete_repository,
    open_repository,
)


@pytest.fixture
def spec(tmp_path: Path) -> IcechunkStoreSpec:
    spec = IcechunkStoreSpec.model_validate(
        {
            "storage": {"url": (tmp_path / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": (tmp_path / "archive").as_uri() + "/"}],
        }
    )
    open_repository(spec)
    return spec


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_repository_is_deleted_and_counted(spec: IcechunkStoreSpec, tmp_path: Path) -> None:
    count = len(files_under(tmp_path / "store"))
    assert count and delete_repository(spec.storage) == count
    assert not (tmp_path / "store").exists()
    assert delete_repository(spec.storage) == 0  # deleting again: nothing there, nothing wrong


@pytest.mark.skipif(os.geteuid() == 0, reason="root deletes from read-only folders")
def test_a_read_only_folder_fails_the_delete(spec: IcechunkStoreSpec, tmp_path: Path) -> None:
    """Before the fix, rmtree(ignore_errors=True) reported success and the data stayed."""
    folder = next(p for p in (tmp_path / "store").iterdir() if p.is_dir() and any(p.iterdir()))
    folder.chmod(0o500)
    try:
        with pytest.raises(
            DeleteFailedError, match=rf"storage\.url: .*could not delete {folder}/.*PermissionError"
        ):
            delete_repository(spec.storage)
        assert files_under(folder)
    finally:
        folder.chmod(0o700)


def test_a_file_that_cannot_be_deleted_fails_the_delete(
    spec: IcechunkStoreSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same as the read-only folder, for a test run as root: the file system refuses one file."""
    stuck = files_under(tmp_path / "store")[0]
    unlink = os.unlink

    def refuse_one(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fsdecode(path) in (stuck.name, str(stuck)):
            raise PermissionError(13, "Permission denied", str(stuck))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_one)
    with pytest.raises(
        DeleteFailedError, match=rf"could not delete .*{stuck.name}.*PermissionError"
    ) as failed:
        delete_repository(spec.storage)
    assert str(tmp_path / "store") in str(failed.value)
    assert stuck.exists()


def test_the_object_store_path_fails_when_a_delete_fails_or_leaves_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import obstore
    from obstore.store import LocalStore

    store = LocalStore(tmp_path)
    for name in ("repo/a", "repo/b/c", "other/d"):
        obstore.put(store, name, b"x")

    def failing(store: Any, paths: Any) -> None:
        raise OSError("503 Service Unavailable")

    monkeypatch.setattr(obstore, "delete", failing)
    with pytest.raises(
        DeleteFailedError, match=r"s3://b/repo: deleting failed after 0 objects \(OSError: 503"
    ):
        delete_objects(store, "repo/", "s3://b/repo")

    monkeypatch.setattr(obstore, "delete", lambda store, paths: None)  # "succeeds", deletes nothing
    with pytest.raises(
        DeleteFailedError, match=r"2 objects are still there after deleting 2, the first repo/"
    ):
        delete_objects(store, "repo/", "s3://b/repo")

    monkeypatch.undo()
    assert delete_objects(store, "repo/", "s3://b/repo") == 2
    assert files_under(tmp_path) == [tmp_path / "other" / "d"]
