"""The source glob and the URL checks the operator runs before it starts a Job (pure, no I/O)."""

from __future__ import annotations

import glob
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.sources import check_sources, glob_regex, translate_glob
from icechunk_operator.engine.urls import SourceOutsideContainersError

GLOBS = [
    ("**/*.nc", "a.nc", True),  # ** is zero folders too (missed by the 3.12 fallback)
    ("**/*.nc", "x/y/a.nc", True),
    ("**/*.nc", "x/a.nc.bak", False),
    ("*.nc", "a.nc", True),
    ("*.nc", "x/a.nc", False),  # * never crosses / (it did in the 3.12 fallback)
    ("*/*.nc", "x/a.nc", True),
    ("*/*.nc", "x/y/a.nc", False),
    ("*/a.nc", "/a.nc", False),  # a whole * segment needs a character
    ("x/**", "x/", True),
    ("x/**", "x/y/z", True),
    ("x/**", "x", False),
    ("**", "", True),
    ("**/**/a", "a", True),
    ("x/**/a", "x/a", True),
    ("x/**/a", "x/y/z/a", True),
    ("x/**/a", "xa", False),
    ("a**b", "a/b", False),  # ** inside a segment is a *
    ("a**b", "axyb", True),
    ("?.nc", "a.nc", True),
    ("?.nc", "ab.nc", False),
    ("a?b", "a/b", False),
    ("**/.hidden/*.nc", ".hidden/a.nc", True),  # hidden files and folders match
    ("*", ".nc", True),
    ("[ab].nc", "b.nc", True),
    ("[ab].nc", "c.nc", False),
    ("[a-c]x", "bx", True),
    ("[!a-c]x", "dx", True),
    ("[!a-c]x", "bx", False),
    ("x[!a]y", "x/y", False),  # a class never crosses / either (3.13's negated class would)
    ("[]a]", "]", True),
    ("[!]]", "a", True),
    ("[z-a]", "z", False),
    ("[abc", "[abc", True),  # an unclosed [ is literal
    ("a+b(c).nc", "a+b(c).nc", True),  # regex characters are literal
    ("a\\b", "a\\b", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOBS)
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is expected


def test_glob_semantics_do_not_depend_on_the_python_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.12 has no glob.translate: the table holds without it."""
    monkeypatch.delattr(glob, "translate", raising=False)
    wrong = [(p, s) for p, s, want in GLOBS if bool(glob_regex(p).fullmatch(s)) is not want]
    assert not wrong


SEGMENTS = st.sampled_from(["a", "b", ".", "*", "**", "?", "a*", "*.a", ".a", "a?b", ""])
PATTERNS = st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join)
PATHS = st.text(alphabet="ab./", max_size=8)


@pytest.mark.skipif(not hasattr(glob, "translate"), reason="glob.translate is new in Python 3.13")
@given(pattern=PATTERNS, path=PATHS)
def test_glob_agrees_with_python_3_13(pattern: str, path: str) -> None:
    theirs = re.compile(glob.translate(pattern, recursive=True, include_hidden=True, seps="/"))
    assert bool(glob_regex(pattern).fullmatch(path)) is bool(theirs.fullmatch(path))


@pytest.mark.skipif(not hasattr(glob, "translate"), reason="glob.translate is new in Python 3.13")
@given(pattern=st.text(alphabet="ab.*?/", max_size=10), path=PATHS)
def test_glob_agrees_with_python_3_13_on_any_string(pattern: str, path: str) -> None:
    theirs = re.compile(glob.translate(pattern, recursive=True, include_hidden=True, seps="/"))
    assert bool(glob_regex(pattern).fullmatch(path)) is bool(theirs.fullmatch(path))


STORE = IcechunkStoreSpec.model_validate(
    {
        "storage": {"url": "s3://stores/ismip6"},
        "virtualChunkContainers": [{"urlPrefix": "s3://archive/"}],
    }
)


@pytest.mark.parametrize(
    "source",
    [
        {"index": "s3://archive/index.parquet"},  # in a container
        {"index": "s3://stores/reconciliations/check-ingest.parquet"},  # beside the store (repairs)
        {"prefix": "s3://archive/x/", "removeIndex": "s3://stores/r/check-remove.parquet"},
    ],
)
def test_index_files_in_a_container_or_beside_the_store_pass(source: dict[str, str]) -> None:
    check_sources(SourceSpec.model_validate(source), STORE)


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"index": "s3://elsewhere/index.parquet"}, "spec.source.index"),
        ({"index": "/local/index.parquet"}, "spec.source.index"),  # not a URL
        ({"index": "s3://stores/../elsewhere/index.parquet"}, "spec.source.index"),
        ({"prefix": "s3://archive/x/", "removeIndex": "gs://other/r.parquet"}, "spec.source.removeIndex"),
        ({"index": "s3://archive/i.parquet", "removeIndex": "s3://x/r.parquet"}, "spec.source.removeIndex"),
    ],
)
def test_index_files_elsewhere_are_refused_before_anything_is_read(
    source: dict[str, str], field: str
) -> None:
    with pytest.raises(SourceOutsideContainersError, match=re.escape(field)) as refused:
        check_sources(SourceSpec.model_validate(source), STORE)
    assert isinstance(refused.value, Refused)


def test_the_check_the_operator_runs_in_process_imports_nothing_heavy() -> None:
    code = (
        "import sys; import icechunk_operator.engine.sources; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'obstore', 'icechunk', "
        "'zarr', 'xarray', 'dask', 'numpy'}))"
    )
    answer = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert answer.stdout.strip() == "[]"


def test_translation_is_a_plain_regex() -> None:
    assert translate_glob("**/*.nc") == r"(?s:(?:.+/)?[^/]*\.nc)\Z"
