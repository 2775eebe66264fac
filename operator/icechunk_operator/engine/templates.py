"""From a file URL to a group path: a regex with named fields fills a template.

The rendered path is checked by the same rules that validated the template
(:mod:`icechunk_operator.api.grouping`), since a field value taken from a file name could still
make it absolute, add '.' or '..' segments, or reach the reserved group. Those rules and their
error are re-exported here, so the engine's callers import one module.
"""

from __future__ import annotations

import re

from icechunk_operator.api.grouping import (
    RESERVED_ROOT,
    GroupPathError,
    check_group_path,
    check_template,
    template_fields,
)

__all__ = [
    "RESERVED_ROOT",
    "GroupPathError",
    "check_group_path",
    "check_template",
    "render_group",
    "template_fields",
]


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
