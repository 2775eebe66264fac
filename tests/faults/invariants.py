"""The check every fault case ends with: the store holds every good file exactly once (ledger
and values read back), the failure log holds exactly the bad ones, and no snapshot was lost.

It counts what it finds (files lost, files recorded twice) before asserting, so a fault test
can put the real figures into the tally.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import zarr

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.ledger import read_pages
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.synthetic import ArchiveLayout, SyntheticFile
from tests.integration.readback import assert_matches_source


@dataclass(frozen=True)
class StoreCheck:
    lost: int
    duplicated: int
    snapshots_lost: int
    tip: str


def local_url(item: SyntheticFile) -> str:
    return item.path.resolve().as_uri()


def branch_snapshots(store: IcechunkStore, branch: str | None = None) -> list[str]:
    """The branch's snapshots, newest first; empty while the repository does not exist yet."""
    try:
        repo = open_repository(store.spec, create=False)
        return [str(info.id) for info in repo.ancestry(branch=branch or store.spec.branch)]
    except Exception:  # no repository (or no branch) yet: nothing committed to lose
        return []


def check_store(
    store: IcechunkStore,
    layout: ArchiveLayout,
    *,
    snapshots_before: Iterable[str] = (),
    url_of: Callable[[SyntheticFile], str] = local_url,
    read_every: int = 5,
    missing_groups: Iterable[str] = (),
) -> StoreCheck:
    """Count, then assert, that the branch holds each good file of ``layout`` once (but those of
    ``missing_groups``, which it must not hold), that every snapshot in ``snapshots_before`` is
    still an ancestor of the tip, and that the values of every ``read_every``-th good file read
    back equal the source."""
    left_out = set(missing_groups)
    good = [f for f in layout.files if f.defect == "none" and f.group not in left_out]
    repo = open_repository(store.spec, create=False)
    branch = store.spec.branch
    session = repo.readonly_session(branch=branch)
    pages = asyncio.run(read_pages(session.store))
    counts = Counter(entry.url for entries in pages.values() for entry in entries if not entry.removed)
    wanted = {url_of(f) for f in good}
    lost = len(wanted - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    ancestry = {str(info.id) for info in repo.ancestry(branch=branch)}
    snapshots_lost = len(set(snapshots_before) - ancestry)

    assert lost == 0, f"files missing from the ledger: {sorted(wanted - set(counts))[:5]}"
    assert duplicated == 0, f"files recorded twice: {[u for u, n in counts.items() if n > 1][:5]}"
    assert set(counts) == wanted, f"unexpected ledger entries: {sorted(set(counts) - wanted)[:5]}"
    assert snapshots_lost == 0, "a snapshot of the branch before the fault is no longer on it"
    root = zarr.open_group(session.store, mode="r", zarr_format=3)
    groups = {
        path
        for path, node in root.members(max_depth=None)
        if isinstance(node, zarr.Group) and path.count("/") == 2 and not path.startswith("_")
    }
    assert groups == {f.group for f in good}
    for item in good[::read_every]:
        assert_matches_source(store, item)
    return StoreCheck(lost, duplicated, snapshots_lost, str(repo.lookup_branch(branch)))


def newest_failure_log(folder: Path) -> dict[str, object]:
    logs = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    assert logs, f"no failure log in {folder}"
    return dict(json.loads(logs[-1].read_text()))


def assert_failure_log_holds_the_bad_files(
    folder: Path, layout: ArchiveLayout, url_of: Callable[[SyntheticFile], str] = local_url
) -> None:
    """The newest failure log names each defective file once, and nothing else."""
    log = newest_failure_log(folder)
    failures = log["failures"]
    assert isinstance(failures, list)
    urls = Counter(str(record["url"]) for record in failures)
    assert set(urls.values()) == {1}, "a bad file was recorded twice in one log"
    assert set(urls) == {url_of(f) for f in layout.files if f.defect != "none"}
