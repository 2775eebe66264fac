import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icechunk_operator.engine.templates import (
    GroupPathError,
    check_group_path,
    check_template,
    render_group,
)

PATTERN = re.compile(r"(?P<a>[^/]+)/(?P<b>[^/]+)\.nc$")


def test_renders_fields_from_the_pattern() -> None:
    assert render_group("{a}_x/{b}", PATTERN, "s3://bucket/inst/lithk.nc") == "inst_x/lithk"


@pytest.mark.parametrize("template", ["../{a}", "{a}/../{b}", "/{a}", "{a}//{b}", "_icechunk_operator/{a}"])
def test_templates_that_escape_are_refused(template: str) -> None:
    with pytest.raises(GroupPathError, match="grouping.template"):
        check_template(template, PATTERN)


def test_unknown_template_field_is_named() -> None:
    with pytest.raises(GroupPathError, match=r"\['c'\]"):
        check_template("{a}/{c}", PATTERN)


@pytest.mark.parametrize("url", ["s3://b/../x.nc", "s3://b/./x.nc"])
def test_values_that_escape_are_refused(url: str) -> None:
    pattern = re.compile(r"s3://b/(?P<a>[^/]+)/(?P<b>[^/]+)\.nc$")
    with pytest.raises(GroupPathError):
        render_group("{a}/{b}", pattern, url)


def test_non_matching_url_is_refused() -> None:
    with pytest.raises(GroupPathError, match="does not match"):
        render_group("{a}/{b}", PATTERN, "s3://b/readme.txt")


@given(st.text(min_size=1, max_size=40))
def test_no_rendered_path_ever_escapes(value: str) -> None:
    pattern = re.compile(r"^(?P<a>.*)$", re.DOTALL)
    try:
        path = render_group("root/{a}", pattern, value)
    except GroupPathError:
        return
    segments = path.split("/")
    assert not path.startswith("/")
    assert ".." not in segments and "." not in segments and "" not in segments


def test_check_group_path_accepts_ismip6_names() -> None:
    assert check_group_path("AWI_ISSM/ctrl/lithk", "f") == "AWI_ISSM/ctrl/lithk"
