"""Hostile paths: no batch reads a file outside its store's containers or writes a group outside the store.

Real batches on local disk: a container folder with real NetCDF files, and beside it, outside
the container, a bait file (a real NetCDF too, so ingesting it would succeed). Each attempt to
reach the bait (dot segments written out or percent-encoded, symbolic links to a file or a
folder, an index that lists it, a file name that decodes to '../', a template whose field value
climbs out) must be refused or fail its file with a message naming the problem; afterwards the
ledger holds nothing that resolves outside the container, the store holds only the expected
groups, and nothing was written outside the store and its failure logs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import zarr

from icechunk_operator.api import IcechunkStore, IngestBatch
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.runner import RunReport, run_batch
from icechunk_operator.engine.sources import encode_index
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.engine.templates import RESERVED_ROOT, GroupPathError, render_group
from icechunk_operator.synthetic import plan_archive, write_archive
from tests.faults.tally import FaultTally

CATEGORY = "path escape"


@pytest.fixture(scope="module")
def netcdf_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real NetCDF files to copy into each test's container (and one to use as bait)."""
    layout = plan_archive(
        tmp_path_factory.mktemp("netcdf") / "archive",
        institutions=1,
        models=1,
        experiments=1,
        variables=3,
        defects=False,
    )
    write_archive(layout, resolution_km=64, times=2)
    return [f.path for f in layout.files]


class Site:
    """A container ``archive/`` with good files, a bait ``outside/secret.nc``, and a store."""

    def __init__(self, root: Path, netcdf: list[Path]) -> None:
        self.root = root
        self.archive = root / "archive"
        self.outside = root / "outside"
        (self.archive / "good").mkdir(parents=True)
        self.outside.mkdir()
        self.good = []
        for name, source in zip(("a", "b"), netcdf, strict=False):
            target = self.archive / "good" / f"{name}.nc"
            shutil.copy(source, target)
            self.good.append(target)
        self.bait = self.outside / "secret.nc"
        shutil.copy(netcdf[2], self.bait)
        self.before = self.tree_outside_store()

    @property
    def container(self) -> str:
        return self.archive.as_uri() + "/"

    def store(self) -> IcechunkStore:
        return IcechunkStore.model_validate(
            {
                "kind": "IcechunkStore",
                "metadata": {"name": "escapes"},
                "spec": {
                    "storage": {"url": (self.root / "store").as_uri()},
                    "virtualChunkContainers": [{"urlPrefix": self.container}],
                },
            }
        )

    def batch(self, source: dict[str, Any], **spec: Any) -> IngestBatch:
        return IngestBatch.model_validate(
            {
                "kind": "IngestBatch",
                "metadata": {"name": "hostile"},
                "spec": {
                    "store": "escapes",
                    "source": source,
                    "failures": {"maxFailedFiles": 100},
                    **spec,
                },
            }
        )

    def tree_outside_store(self) -> dict[str, int]:
        """Every file under the site except the store and its failure logs, with its size."""
        found = {}
        for directory, folders, files in os.walk(self.root):
            relative = os.path.relpath(directory, self.root)
            if relative.split(os.sep)[0] in ("store", "failures"):
                continue
            for name in folders + files:
                path = os.path.join(directory, name)
                if relative == "." and name in ("store", "failures"):
                    continue
                found[os.path.relpath(path, self.root)] = os.lstat(path).st_size
        return found

    def ledger(self, store: IcechunkStore) -> dict[str, str]:
        if not (self.root / "store").exists():
            return {}
        repo = open_repository(store.spec, create=False)
        return {e.url: e.group for e in load_ledger(repo, store.spec.branch).values() if not e.removed}

    def groups(self, store: IcechunkStore) -> set[str]:
        if not (self.root / "store").exists():
            return set()
        repo = open_repository(store.spec, create=False)
        root = zarr.open_group(repo.readonly_session(branch=store.spec.branch).store, mode="r")
        return {
            path
            for path, node in root.members(max_depth=None)
            if isinstance(node, zarr.Group) and not path.startswith(RESERVED_ROOT)
        }

    def baits_ingested(self, store: IcechunkStore) -> int:
        """Ledger entries whose file, links resolved, lies outside the container."""
        archive = os.path.realpath(self.archive)
        outside = 0
        for url in self.ledger(store):
            real = os.path.realpath(unquote(url.removeprefix("file://")))
            if not real.startswith(archive + os.sep):
                outside += 1
        return outside


@pytest.fixture
def site(tmp_path: Path, netcdf_files: list[Path]) -> Site:
    return Site(tmp_path.resolve() / "site", netcdf_files)  # messages name real paths


def attempt(site: Site, batch: IngestBatch, scheduler: str) -> tuple[IcechunkStore, RunReport | Refused]:
    store = site.store()
    try:
        outcome: RunReport | Refused = run_batch(store, batch, scheduler=scheduler)
    except Refused as error:
        outcome = error
    return store, outcome


def assert_contained(site: Site, store: IcechunkStore, tally: FaultTally, kind: str, tried: int = 1) -> None:
    """The bait is in no ledger entry, and nothing outside the store changed."""
    leaked = site.baits_ingested(store)
    after = site.tree_outside_store()
    assert after == site.before, f"files changed outside the store: {set(after) ^ set(site.before)}"
    assert leaked == 0
    tally.add(CATEGORY, kind, injected=tried, leaked=leaked)


# --- dot segments and percent-encoded separators in URLs -------------------------------------

DOTTED_PREFIXES = [
    ("{archive}/../outside/", r"'\.' or '\.\.' segment"),
    ("{archive}/%2e%2e/outside/", r"'\.' or '\.\.' segment"),
    ("{archive}/%2E%2E%2Foutside/", r"'\.' or '\.\.' segment"),
    ("{archive}/good%2F..%2F..%2Foutside/", r"'\.' or '\.\.' segment"),
    ("{archive}%2Fgood/", "outside the store's virtualChunkContainers"),
    ("{archive}/good/%00/", "control character"),
]


@pytest.mark.parametrize(("prefix", "problem"), DOTTED_PREFIXES)
def test_prefixes_that_climb_out_are_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally, prefix: str, problem: str
) -> None:
    url = prefix.format(archive=site.archive.as_uri())
    store, outcome = attempt(site, site.batch({"prefix": url}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert re.search(r"spec\.source\.prefix: .*" + problem, str(outcome)), outcome
    assert not (site.root / "store").exists()  # refused before the store is opened
    assert_contained(site, store, fault_tally, "file:// prefix with '..' or %2F")


DOTTED_FILES = [
    ("{archive}/good/../../outside/secret.nc", r"'\.' or '\.\.' segment"),
    ("{archive}/good/%2e%2e/%2e%2e/outside/secret.nc", r"'\.' or '\.\.' segment"),
    ("{archive}/good/..%2F..%2Foutside%2Fsecret.nc", r"'\.' or '\.\.' segment"),
    ("{archive}%2F..%2Foutside%2Fsecret.nc", r"'\.' or '\.\.' segment"),
    ("{root}/outside/secret.nc", "outside the store's virtualChunkContainers"),
    ("{archive}/good/a.nc%00", "control character"),
    ("{archive}/good/a.nc%0A", "control character"),
    # Decoded once, as everything here decodes: a file literally named '%2e%2e', which is absent.
    ("{archive}/good/%252e%252e/%252e%252e/outside/secret.nc", "does not exist"),
]


@pytest.mark.parametrize(("url", "problem"), DOTTED_FILES)
def test_file_urls_that_climb_out_are_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally, url: str, problem: str
) -> None:
    named = url.format(archive=site.archive.as_uri(), root=site.root.as_uri())
    files = [site.good[0].as_uri(), named]
    store, outcome = attempt(site, site.batch({"files": files}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert re.search(r"spec\.source\.files\[1\]: .*" + problem, str(outcome)), outcome
    assert site.ledger(store) == {}  # refused as a whole: not even the good file went in
    assert_contained(site, store, fault_tally, "files: URL with '..', %2e%2e, %2F, NUL")


# --- symbolic links inside the container -----------------------------------------------------


def test_a_file_link_out_of_the_container_refuses_the_listing(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    (site.archive / "good" / "link.nc").symlink_to(site.bait)
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"prefix": site.container}), dask_scheduler)
    assert isinstance(outcome, Refused)
    message = str(outcome)
    assert "spec.source.prefix" in message and "good/link.nc' is a symbolic link to" in message
    assert str(site.bait) in message and "spec.source.skip" in message
    assert_contained(site, store, fault_tally, "symlink to a file outside (prefix listing)")


def test_a_folder_link_out_of_the_container_is_not_followed(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    (site.archive / "good" / "elsewhere").symlink_to(site.outside, target_is_directory=True)
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"prefix": site.container}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert "good/elsewhere' is a symbolic link to " + str(site.outside) in str(outcome)
    assert_contained(site, store, fault_tally, "symlink to a folder outside (prefix listing)")


def test_a_link_chain_through_an_inner_folder_is_resolved(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    """The prefix's folder holds only a link inside the container; the folder it leads to holds
    the link out. The walk of the prefix does not see the second link; the resolution does."""
    data, other = site.archive / "data", site.archive / "other"
    data.mkdir()
    other.mkdir()
    (data / "inner").symlink_to(other, target_is_directory=True)
    (other / "x.nc").symlink_to(site.bait)
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"prefix": site.container + "data/"}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert "data/inner/x.nc' resolves to " + str(site.bait) in str(outcome)
    assert_contained(site, store, fault_tally, "symlink chain out through an inner folder")


def test_a_prefix_that_is_itself_a_link_out_is_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    (site.archive / "mirror").symlink_to(site.outside, target_is_directory=True)
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"prefix": site.container + "mirror/"}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert "resolves to " + str(site.outside) in str(outcome)
    assert_contained(site, store, fault_tally, "prefix is a symlink out")


@pytest.mark.parametrize("via", ["file link", "folder link"])
def test_named_files_behind_links_out_are_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally, via: str
) -> None:
    if via == "file link":
        (site.archive / "link.nc").symlink_to(site.bait)
        named = site.container + "link.nc"
    else:
        (site.archive / "elsewhere").symlink_to(site.outside, target_is_directory=True)
        named = site.container + "elsewhere/secret.nc"
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"files": [site.good[0].as_uri(), named]}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert re.search(r"spec\.source\.files: .* resolves to " + re.escape(str(site.bait)), str(outcome))
    assert site.ledger(store) == {}
    assert_contained(site, store, fault_tally, f"files: URL through a {via} out")


def test_an_index_listing_a_link_out_is_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    from icechunk_operator.engine.records import SourceFile

    (site.archive / "link.nc").symlink_to(site.bait)
    rows = [SourceFile(p.as_uri(), p.stat().st_size, None, p.stat().st_mtime) for p in site.good]
    rows.append(SourceFile(site.container + "link.nc", site.bait.stat().st_size, None, 0.0))
    (site.archive / "index.parquet").write_bytes(encode_index(rows))
    site.before = site.tree_outside_store()
    batch = site.batch({"index": site.container + "index.parquet"})
    store, outcome = attempt(site, batch, dask_scheduler)
    assert isinstance(outcome, Refused)
    assert re.search(r"spec\.source\.index: .*link\.nc' resolves to ", str(outcome)), outcome
    assert_contained(site, store, fault_tally, "index row through a symlink out")


@pytest.mark.parametrize(
    "row",
    ["{root}/outside/secret.nc", "{archive}/../outside/secret.nc", "{archive}/%2e%2e/outside/secret.nc"],
)
def test_an_index_listing_urls_outside_is_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally, row: str
) -> None:
    from icechunk_operator.engine.records import SourceFile

    url = row.format(root=site.root.as_uri(), archive=site.archive.as_uri())
    rows = [SourceFile(p.as_uri(), p.stat().st_size, None, p.stat().st_mtime) for p in site.good]
    rows.append(SourceFile(url, site.bait.stat().st_size, None, site.bait.stat().st_mtime))
    (site.archive / "index.parquet").write_bytes(encode_index(rows))
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"index": site.container + "index.parquet"}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert "spec.source.index: 1 of the 3 URLs" in str(outcome) and url in str(outcome)
    assert_contained(site, store, fault_tally, "index row outside the containers")


def test_an_index_that_is_a_link_out_is_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    from icechunk_operator.engine.records import SourceFile

    rows = [SourceFile(p.as_uri(), p.stat().st_size, None, p.stat().st_mtime) for p in site.good]
    (site.outside / "index.parquet").write_bytes(encode_index(rows))
    (site.archive / "index.parquet").symlink_to(site.outside / "index.parquet")
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"index": site.container + "index.parquet"}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert "spec.source.index" in str(outcome) and "resolves to " + str(site.outside) in str(outcome)
    assert_contained(site, store, fault_tally, "index file is a symlink out")


def test_a_file_named_like_an_encoded_climb_is_refused(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    """A file in the container literally named '%2e%2e%2Foutside%2Fsecret.nc': listed, its URL
    would read as '../outside/secret.nc' to Icechunk, which decodes reference locations."""
    (site.archive / "%2e%2e%2Foutside%2Fsecret.nc").write_bytes(site.bait.read_bytes())
    (site.archive / "a%20b.nc").write_bytes(site.good[0].read_bytes())
    site.before = site.tree_outside_store()
    store, outcome = attempt(site, site.batch({"prefix": site.container}), dask_scheduler)
    assert isinstance(outcome, Refused)
    assert re.search(r"spec\.source\.prefix: listed file .*%", str(outcome)), outcome
    assert "spec.source.skip" in str(outcome)
    assert_contained(site, store, fault_tally, "file name with %2e%2e%2F (prefix listing)", tried=2)


@pytest.mark.slow  # a real ingest on the Dask cluster
def test_links_that_stay_inside_and_skipped_links_out_still_ingest(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    """The checks refuse escapes, not links: a link inside the container is read, and a link
    out that spec.source.skip names is neither read nor a reason to refuse the batch."""
    (site.archive / "alias.nc").symlink_to(site.good[1])
    (site.archive / "good" / "link.nc").symlink_to(site.bait)
    (site.archive / "good" / "elsewhere").symlink_to(site.outside, target_is_directory=True)
    site.before = site.tree_outside_store()
    batch = site.batch(
        {"prefix": site.container, "skip": ["*/good/link.nc", "*/good/elsewhere/*"]},
        grouping={"pattern": r"archive/(?P<path>.+)\.nc$", "template": "{path}"},
    )
    store, outcome = attempt(site, batch, dask_scheduler)
    assert isinstance(outcome, RunReport), outcome
    expected = {p.as_uri() for p in site.good} | {site.container + "alias.nc"}
    ledger = site.ledger(store)
    lost = len(expected - set(ledger))
    assert set(ledger) == expected and outcome.failed == 0 and outcome.skipped == 2
    assert site.groups(store) == {"good", "good/a", "good/b", "alias"}
    assert_contained(site, store, fault_tally, "skipped symlinks out / symlink inside (control)")
    fault_tally.add(CATEGORY, "skipped symlinks out / symlink inside (control)", injected=0, lost=lost)


# --- group paths rendered from file names ----------------------------------------------------

HOSTILE_NAMES = {
    ".._x.nc": "'.' or '..' segment",  # the field value is '..'
    "._x.nc": "'.' or '..' segment",
    "..\\_x.nc": "without '\\'",  # a backslash
    "\uff41_x.nc": "characters outside",  # a fullwidth letter
    "__a_x.nc": "starts with '__'",
    "_icechunk_operator_x.nc": "reserved for the ledger",
}


@pytest.mark.slow  # a real ingest on the Dask cluster
def test_group_paths_from_hostile_names_fail_their_files_only(
    site: Site, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    for name in HOSTILE_NAMES:
        (site.archive / "good" / name).write_bytes(site.good[0].read_bytes())
    site.before = site.tree_outside_store()
    batch = site.batch(
        {"prefix": site.container + "good/"},
        grouping={"pattern": r"/(?P<stem>[^/]+?)(?:_x)?\.nc$", "template": "{stem}"},
    )
    store, outcome = attempt(site, batch, dask_scheduler)
    assert isinstance(outcome, RunReport), outcome
    failures = {f.url.rsplit("/", 1)[-1]: f for f in outcome.failures}
    assert set(failures) == set(HOSTILE_NAMES)
    for name, problem in HOSTILE_NAMES.items():
        assert failures[name].error_class == "GroupingError"
        assert "grouping.template" in failures[name].message and problem in failures[name].message, name
    assert set(site.ledger(store)) == {p.as_uri() for p in site.good}
    assert site.groups(store) == {"a", "b"}
    lost = 2 - len(site.ledger(store))
    assert_contained(site, store, fault_tally, "group path from hostile file names", tried=len(HOSTILE_NAMES))
    fault_tally.add(CATEGORY, "group path from hostile file names", injected=0, lost=lost)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("..", "'.' or '..' segment"),
        ("/etc", "must be relative"),
        ("a/../../b", "'.' or '..' segment"),
        ("%2e%2e%2fx", "characters outside"),
        ("..\\x", "must be relative"),
        ("a\x00b", "characters outside"),
        ("..\n", "characters outside"),  # passed before the segment check matched whole
        ("x\n", "characters outside"),
    ],
)
def test_rendered_group_paths_never_escape(value: str, problem: str, fault_tally: FaultTally) -> None:
    """Values a regex can take from URLs that object stores can name, though local disks cannot."""
    pattern = re.compile(r"^s3://bucket/(?P<v>.*)\.nc$", re.DOTALL)
    with pytest.raises(GroupPathError, match=re.escape(problem)):
        render_group("{v}", pattern, f"s3://bucket/{value}.nc")
    fault_tally.add(CATEGORY, "rendered group path (value)", injected=1)


def test_the_cli_refuses_a_link_out_with_exit_two(site: Site, fault_tally: FaultTally) -> None:
    import yaml

    (site.archive / "good" / "link.nc").symlink_to(site.bait)
    site.before = site.tree_outside_store()
    spec = site.root.parent / "spec.yaml"
    store, batch = site.store(), site.batch({"prefix": site.container})
    spec.write_text(yaml.safe_dump_all([store.to_api(), batch.to_api()]))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("icechunk-operator")), "run", "-f", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "IngestBatch hostile: spec.source.prefix:" in result.stderr
    assert "is a symbolic link to " + str(site.bait) in result.stderr
    assert_contained(site, store, fault_tally, "symlink to a file outside (CLI run)")
