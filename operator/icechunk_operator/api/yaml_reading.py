"""Reading a user's YAML file with limits, so a hostile file is refused in moments, not after minutes.

A resource file is a few kilobytes. Three shapes of YAML would otherwise cost far more than
their size: an alias bomb ("billion laughs": nine anchors of nine aliases each, under a kilobyte,
expand to 387 million nodes once validation walks them), deep nesting (``[[[[...]]]]`` a
hundred thousand levels deep overflows the parser's recursion), and a sheer size that takes
minutes to parse and gigabytes to hold. The file is refused before it is parsed when too big, and
while its events stream past (the C parser when PyYAML has it) when too deep or when its aliases
would expand too far; only then are its documents built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Bytes a resource file may have. Kubernetes itself takes at most 1.5 MiB per object; a batch
#: with a longer explicit ``files:`` list belongs in a parquet index (``spec.source.index``).
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Nesting levels of mappings and lists. The resources nest six or seven levels.
MAX_DEPTH = 64
#: Nodes that aliases may repeat, over the whole file: ample to share a block of settings,
#: far short of a bomb.
MAX_ALIAS_NODES = 10_000

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnreadableYamlError(ValueError):
    """A file that is not YAML this tool reads; the message starts with the file's path."""


def read_yaml_documents(path: Path) -> list[Any]:
    """The file's non-empty documents, or :class:`UnreadableYamlError` saying which limit it broke."""
    text = _read_text(path)
    try:
        check_shape(text)
        return [document for document in yaml.load_all(text, Loader=_LOADER) if document is not None]
    except UnreadableYamlError as error:
        raise UnreadableYamlError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise UnreadableYamlError(f"{path}: not valid YAML: {error}") from None
    except (ValueError, RecursionError) as error:  # e.g. an integer of more than 4,300 digits
        raise UnreadableYamlError(f"{path}: not valid YAML: {error}") from None


def _read_text(path: Path) -> str:
    """At most ``MAX_FILE_BYTES`` + 1 bytes are read, so a pipe or /dev/zero is refused too."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UnreadableYamlError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableYamlError(
            f"{path}: more than {MAX_FILE_BYTES // 2**20} MiB; a resource file is a few kilobytes "
            "(list many files in a parquet index, spec.source.index)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableYamlError(f"{path}: not UTF-8 text (byte {error.start})") from None


def check_shape(text: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and aliases that expand to more than
    ``MAX_ALIAS_NODES`` nodes, from the parser's events: nothing is built yet."""
    sizes: dict[str, int] = {}  # anchor -> nodes its value holds, aliases expanded
    open_nodes: list[list[Any]] = [[None, 0]]  # [anchor, nodes so far] per open collection
    repeated = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                raise UnreadableYamlError(f"alias *{event.anchor} refers to its own node or to no anchor")
            repeated += sizes[event.anchor]
            if repeated > MAX_ALIAS_NODES:
                raise UnreadableYamlError(
                    f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (line {_line(event)}); "
                    "write the values out"
                )
            open_nodes[-1][1] += sizes[event.anchor]
        elif isinstance(event, yaml.ScalarEvent):
            open_nodes[-1][1] += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) - 1 > MAX_DEPTH:
                raise UnreadableYamlError(f"nested more than {MAX_DEPTH} levels deep (line {_line(event)})")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = count
            open_nodes[-1][1] += count
        elif isinstance(event, yaml.DocumentEndEvent):
            sizes.clear()  # anchors do not cross documents


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 0
