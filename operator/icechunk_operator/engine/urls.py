"""URL checks that guard the store: sources stay inside the declared containers."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

from icechunk_operator.engine.errors import Refused

_SCHEMES = ("file://", "s3://", "gs://", "az://")


class SourceOutsideContainersError(Refused):
    """A source URL that no virtual chunk container of the store covers: Icechunk would refuse
    to read its chunks, so the batch cannot run until the spec or the store's containers change."""


def has_dot_segments(url: str) -> bool:
    """True for URLs with '.' or '..' path segments, which could step out of a prefix, written
    out or percent-encoded ('%2e%2e', '..%2F'): Icechunk and the local reads decode them."""
    path = unquote(url.partition("://")[2])
    return any(segment in (".", "..") for segment in path.split("/"))


def has_control_characters(url: str) -> bool:
    """True for URLs with a NUL, a line break or another control character, written out or
    percent-encoded: no object store or file system names a file with one the same way twice."""
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in unquote(url))


def container_for(url: str, prefixes: Iterable[str]) -> str | None:
    """The longest container prefix that covers ``url``, or None."""
    if has_dot_segments(url) or has_control_characters(url):
        return None
    matches = [p for p in prefixes if url.startswith(p)]
    return max(matches, key=len) if matches else None


def outside_reason(url: str, prefixes: list[str]) -> str | None:
    """Why ``url`` is not a source the containers cover, in words for the message; None if it is."""
    if not url.startswith(_SCHEMES):
        return f"is not a URL (expected one of {list(_SCHEMES)})"
    if has_control_characters(url):
        return "has a control character (NUL, line break, ...), written out or percent-encoded"
    if has_dot_segments(url):
        return "has a '.' or '..' segment, written out or percent-encoded, which could leave a container"
    if container_for(url, prefixes) is None:
        return f"is outside the store's virtualChunkContainers {prefixes}"
    return None


def check_within_containers(url: str, prefixes: Iterable[str], field_name: str) -> None:
    reason = outside_reason(url, list(prefixes))
    if reason is not None:
        raise SourceOutsideContainersError(f"{field_name}: {url!r} {reason}")


def check_all_within_containers(
    urls: Iterable[str], prefixes: Iterable[str], field_name: str, where: str
) -> None:
    """Like :func:`check_within_containers` for the URLs listed in a file (``where``), with
    how many are outside: one message for a 100,000-row index, not one per row."""
    prefixes = list(prefixes)
    listed = list(urls)
    outside = [u for u in listed if not u.startswith(_SCHEMES) or container_for(u, prefixes) is None]
    if outside:
        raise SourceOutsideContainersError(
            f"{field_name}: {len(outside)} of the {len(listed)} URLs in {where} are outside the "
            f"store's virtualChunkContainers {prefixes}; the first is {outside[0]!r}, which "
            f"{outside_reason(outside[0], prefixes)}"
        )


def check_index_location(url: str, prefixes: Iterable[str], beside_store: str, field_name: str) -> None:
    """An index is read with the credentials of the container that holds it, or with the store's
    own beside the store (where reconciliations write repair lists): anywhere else there are no
    declared credentials to read it with, and no declared place a batch may read from."""
    prefixes = list(prefixes)
    if not url.startswith(_SCHEMES):
        raise SourceOutsideContainersError(
            f"{field_name}: {url!r} is not a URL (expected one of {list(_SCHEMES)})"
        )
    if has_control_characters(url):
        raise SourceOutsideContainersError(f"{field_name}: {url!r} {outside_reason(url, prefixes)}")
    if container_for(url, prefixes) is None and (has_dot_segments(url) or not url.startswith(beside_store)):
        raise SourceOutsideContainersError(
            f"{field_name}: {url!r} is neither in the store's virtualChunkContainers {prefixes} "
            f"nor beside the store ({beside_store})"
        )


def split_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b`` -> ("s3", "bucket", "a/b"); ``file:///x/y`` -> ("file", "", "/x/y")."""
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return scheme, "", unquote(rest)
    bucket, _, path = rest.partition("/")
    return scheme, bucket, path
