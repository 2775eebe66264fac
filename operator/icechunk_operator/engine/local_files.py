"""Local sources (``file://``) stay inside their containers on disk, symbolic links resolved.

A URL check sees only the text of a URL: ``file:///archive/link.nc`` lies in the container
``file:///archive/`` even when ``link.nc`` is a symbolic link to ``/home/user/.ssh/id_rsa``, and a
prefix listing follows a linked folder wherever it leads (obstore walks with links followed). So
before a prefix is listed, its folder is walked without following links and any link that leads
out of the container refuses the batch, naming the link and its target; and every local file the
batch would read, listed or named, must resolve to a path inside its container's own real path.
A link that stays inside the container is fine.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence

from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.urls import (
    SourceOutsideContainersError,
    container_for,
    has_control_characters,
    split_url,
)


class LinkOutsideContainersError(SourceOutsideContainersError):
    """A local source that is, or lies behind, a symbolic link leading out of its container."""


class UnlistableSourceError(Refused):
    """A file under a prefix whose name no object store can hold (a line break in it): the
    listing would stop at it, every time."""


def local_path(url: str) -> str:
    return split_url(url)[2]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _skipped(url: str, skip: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(url, glob) or fnmatch.fnmatchcase(url + "/", glob) for glob in skip)


def check_prefix_folder(prefix: str, prefixes: Sequence[str], skip: Sequence[str], field_name: str) -> bool:
    """Refuse a local prefix whose folder is, or holds, a link out of its container or a name
    that cannot be listed; True when the folder holds any link at all (then each listed file is
    resolved too, since a link inside the container can lead to another that leads out)."""
    container = container_for(prefix, prefixes)
    if container is None or not prefix.startswith("file://"):
        return False
    root = os.path.realpath(local_path(container))
    folder = local_path(prefix)
    if not _inside(os.path.realpath(folder), root):
        raise LinkOutsideContainersError(
            f"{field_name}: {prefix!r} resolves to {os.path.realpath(folder)}, outside its container "
            f"{container!r} ({root}): a symbolic link on the way leads out"
        )
    found_links = False
    for directory, folders, files in os.walk(folder, followlinks=False):
        for name in folders + files:
            path = os.path.join(directory, name)
            url = prefix + os.path.relpath(path, folder)
            if has_control_characters(name) and not _skipped(url, skip):
                raise UnlistableSourceError(
                    f"{field_name}: {url!r} has a control character in its name, which object stores "
                    "cannot name; rename it or skip it (spec.source.skip)"
                )
            if not os.path.islink(path):
                continue
            found_links = True
            target = os.path.realpath(path)
            if not _inside(target, root) and not _skipped(url, skip):
                raise LinkOutsideContainersError(
                    f"{field_name}: {url!r} is a symbolic link to {target}, outside its container "
                    f"{container!r}; remove the link or skip it (spec.source.skip)"
                )
    return found_links


def check_resolved(
    files: Iterable[SourceFile], prefixes: Sequence[str], skip: Sequence[str], field_name: str
) -> None:
    """Refuse local files whose real path leaves the container that covers their URL."""
    roots: dict[str, str] = {}
    for source in files:
        if not source.url.startswith("file://") or _skipped(source.url, skip):
            continue
        container = container_for(source.url, prefixes)
        if container is None:
            continue  # the URL checks refuse it, with their own message
        root = roots.setdefault(container, os.path.realpath(local_path(container)))
        target = os.path.realpath(local_path(source.url))
        if not _inside(target, root):
            raise LinkOutsideContainersError(
                f"{field_name}: {source.url!r} resolves to {target} through a symbolic link, outside "
                f"its container {container!r}; remove the link or skip it (spec.source.skip)"
            )


def check_local_index(url: str, prefixes: Sequence[str], beside_store: str, field_name: str) -> None:
    """Refuse a local index or removeIndex that resolves out of both its container and the
    folder beside the store, the two places :func:`~icechunk_operator.engine.urls.check_index_location`
    allows by URL."""
    if not url.startswith("file://"):
        return
    container = container_for(url, prefixes)
    allowed = local_path(container) if container is not None else local_path(beside_store)
    root = os.path.realpath(allowed)
    target = os.path.realpath(local_path(url))
    if not _inside(target, root):
        raise LinkOutsideContainersError(
            f"{field_name}: {url!r} resolves to {target} through a symbolic link, outside {root}"
        )
