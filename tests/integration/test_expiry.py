"""What expiry does to the branches and tags beside the store's branch, on a real repository."""

from __future__ import annotations

from pathlib import Path

import icechunk
import zarr

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.lifecycle import expire_and_collect, history
from icechunk_operator.engine.staging import base_of, staging_branch, start_staging
from icechunk_operator.engine.storage import open_repository


def commit(repo: icechunk.Repository, branch: str, message: str) -> str:
    """A real commit: one attribute on the root group, and one small array that GC could free."""
    session = repo.writable_session(branch)
    root = zarr.open_group(session.store, mode="a")
    root.attrs["last"] = message
    root.create_array(message, shape=(4,), dtype="int32", fill_value=0)[:] = [1, 2, 3, 4]
    return str(session.commit(message))


def messages(repo: icechunk.Repository, **ref: str) -> list[str]:
    return [info.message for info in repo.ancestry(**ref)]


def test_keep_counts_on_the_store_branch_and_expires_every_branch_and_tag(tmp_path: Path) -> None:
    store = IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": "s"},
            "spec": {
                "storage": {"url": (tmp_path / "store").as_uri()},
                "virtualChunkContainers": [{"urlPrefix": (tmp_path / "archive").as_uri() + "/"}],
            },
        }
    )
    repo = open_repository(store.spec)
    c1 = commit(repo, "main", "c1")
    commit(repo, "main", "c2")
    staging, base = start_staging(repo, "b", "main")  # a batch stages on c2 ...
    commit(repo, staging, "s1")
    c3 = commit(repo, "main", "c3")  # ... main moves on: its promotion would be refused
    commit(repo, staging, "s2")
    s3 = commit(repo, staging, "s3")
    repo.create_tag("v1", c1)
    assert messages(repo, branch=staging)[:-1] == ["s3", "s2", "s1", "c2", "c1"]

    report = expire_and_collect(repo, "main", keep=1)

    assert report.cutoff == history(repo, "main", 1)[0].written_at  # main's newest snapshot
    root = "Repository initialized"
    assert messages(repo, branch="main") == ["c3", root]
    # The staging branch lost what was older than main's cut-off, its base c2 too; everything
    # it wrote after the cut-off stayed, though keep=1 (keep counts on main only).
    assert messages(repo, branch=staging) == ["s3", "s2", root]
    assert messages(repo, tag="v1") == ["c1", root]  # a tag keeps its snapshot, not its history
    assert set(repo.list_branches()) == {"main", staging} and set(repo.list_tags()) == {"v1"}
    assert report.expired == 2  # c2 and s1; c1 stays as the tag's snapshot

    for ref in ({"branch": staging}, {"tag": "v1"}, {"branch": "main"}):
        group = zarr.open_group(repo.readonly_session(**ref).store, mode="r")
        assert all(array[:].tolist() == [1, 2, 3, 4] for _, array in group.arrays())  # tips still read
    assert zarr.open_group(repo.readonly_session(branch=staging).store, mode="r").attrs["last"] == "s3"

    # Staged on a snapshot that is gone: only the root is shared, so a re-run stages afresh.
    assert base != c3 and base_of(repo, staging, "main") != base
    assert staging_branch("b") == staging and str(repo.lookup_branch(staging)) == s3
    assert start_staging(repo, "b", "main") == (staging, c3)
    assert str(repo.lookup_branch(staging)) == c3
