"""Which group paths a store accepts: the check behind ``grouping.template`` and every rendered path.

Group paths come from user data (file names), so a path can never be absolute, never contain '.'
or '..' segments, and never reach the tool's reserved group. The rules live with the models
because ``GroupingSpec`` refuses a template that breaks them when the spec is validated, and the
models may not import the engine; the engine's ``templates`` module renders paths and checks each
one here again, since a field value taken from a file name could break them.
"""

from __future__ import annotations

import re
import string

from icechunk_operator.api.errors import Refused

RESERVED_ROOT = "_icechunk_operator"
#: Matched whole (``fullmatch``): with ``$`` a segment could end in a line break, and ".." + "\n" passed.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.\-+=@,]+")


class GroupPathError(Refused):
    """A template or rendered group path that would escape the store."""


def template_fields(template: str) -> list[str]:
    """The field names of ``template``, each a plain ``{name}``.

    A format spec or conversion is refused: a spec can nest another field (``{a:{b}<3}``), whose
    value from a file name then decides the spec and fails the render of that file as a crash,
    not a refusal; and a width (``{a:>999999999}``) allocates that many characters per path.
    """
    fields = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        del literal
        if name is not None:
            if not name.isidentifier():
                raise GroupPathError(f"grouping.template: field {{{name}}} is not a plain name")
            if spec or conversion:
                raise GroupPathError(
                    f"grouping.template: field {{{name}}} has a format spec or conversion; "
                    "only plain {name} fields are supported"
                )
            fields.append(name)
    return fields


def check_template(template: str, pattern: re.Pattern[str]) -> None:
    """Refuse templates that name unknown fields or escape the store by their literal parts."""
    try:
        fields = template_fields(template)
    except GroupPathError:
        raise
    except ValueError as error:  # string.Formatter's own: a single '{' or '}'
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
        if not _SAFE_SEGMENT.fullmatch(segment) or segment.startswith("__"):
            raise GroupPathError(
                f"{field_name}: group path segment {segment!r} has characters outside "
                "[A-Za-z0-9_.-+=@,] or starts with '__'"
            )
    if segments[0] == RESERVED_ROOT:
        raise GroupPathError(f"{field_name}: {RESERVED_ROOT!r} is reserved for the ledger")
    return path
