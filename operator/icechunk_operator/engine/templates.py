"""From a file URL to a group path: a regex with named fields fills a template.

Group paths come from user data (file names), so every rendered path is checked: it can never be
absolute, never contain '.' or '..' segments, and never reach the tool's reserved group.
"""

from __future__ import annotations

import re
import string

RESERVED_ROOT = "_icechunk_operator"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-+=@,]+$")


class GroupPathError(ValueError):
    """A template or rendered group path that would escape the store."""


def template_fields(template: str) -> list[str]:
    fields = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        del literal, spec, conversion
        if name is not None:
            if not name.isidentifier():
                raise GroupPathError(f"grouping.template: field {{{name}}} is not a plain name")
            fields.append(name)
    return fields


def check_template(template: str, pattern: re.Pattern[str]) -> None:
    """Refuse templates that name unknown fields or escape the store by their literal parts."""
    try:
        fields = template_fields(template)
    except ValueError as error:
        raise GroupPathError(f"grouping.template: {error}") from None
    missing = [f for f in fields if f not in pattern.groupindex]
    if missing:
        raise GroupPathError(f"grouping.template: fields {missing} are not named groups of grouping.pattern")
    probe = template.format(**{f: "x" for f in fields})
    check_group_path(probe, "grouping.template")


def check_group_path(path: str, field_name: str) -> str:
    if not path:
        raise GroupPathError(f"{field_name}: the group path is empty")
    if path.startswith("/") or "\\" in path:
        raise GroupPathError(f"{field_name}: group path {path!r} must be relative, without '\\'")
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise GroupPathError(f"{field_name}: group path {path!r} has an empty, '.' or '..' segment")
        if not _SAFE_SEGMENT.match(segment) or segment.startswith("__"):
            raise GroupPathError(
                f"{field_name}: group path segment {segment!r} has characters outside "
                "[A-Za-z0-9_.-+=@,] or starts with '__'"
            )
    if segments[0] == RESERVED_ROOT:
        raise GroupPathError(f"{field_name}: {RESERVED_ROOT!r} is reserved for the ledger")
    return path


def render_group(template: str, pattern: re.Pattern[str], url: str) -> str:
    """The group path for ``url``; ``GroupPathError`` if the pattern does not match or escapes."""
    match = pattern.search(url)
    if match is None:
        raise GroupPathError(f"grouping.pattern does not match {url!r}")
    values = {k: v for k, v in match.groupdict().items() if v is not None}
    try:
        path = template.format(**values)
    except KeyError as error:
        raise GroupPathError(f"grouping.template: field {error} is empty for {url!r}") from None
    return check_group_path(path, "grouping.template")
