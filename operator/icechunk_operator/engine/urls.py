"""URL checks that guard the store: sources stay inside the declared containers."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

_SCHEMES = ("file://", "s3://", "gs://", "az://")


class SourceOutsideContainersError(ValueError):
    """A source URL that no virtual chunk container of the store covers."""


def has_dot_segments(url: str) -> bool:
    """True for URLs with '.' or '..' path segments, which could step out of a prefix."""
    path = unquote(url.partition("://")[2])
    return any(segment in (".", "..") for segment in path.split("/"))


def container_for(url: str, prefixes: Iterable[str]) -> str | None:
    """The longest container prefix that covers ``url``, or None."""
    if has_dot_segments(url):
        return None
    matches = [p for p in prefixes if url.startswith(p)]
    return max(matches, key=len) if matches else None


def check_within_containers(url: str, prefixes: Iterable[str], field_name: str) -> None:
    prefixes = list(prefixes)
    if not url.startswith(_SCHEMES):
        raise SourceOutsideContainersError(
            f"{field_name}: {url!r} is not a URL (expected one of {list(_SCHEMES)})"
        )
    if container_for(url, prefixes) is None:
        raise SourceOutsideContainersError(
            f"{field_name}: {url!r} is outside the store's virtualChunkContainers {prefixes}"
        )


def split_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b`` -> ("s3", "bucket", "a/b"); ``file:///x/y`` -> ("file", "", "/x/y")."""
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return scheme, "", unquote(rest)
    bucket, _, path = rest.partition("/")
    return scheme, bucket, path
