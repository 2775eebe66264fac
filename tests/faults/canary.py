"""Secret canaries: fresh random secrets for one run, and a search of everything the run wrote or
showed for any form of them.

A canary is the base64 text of 48 random bytes: a valid Azure account key as it is, and an S3
secret key or a field of a GCS key file as text. Nothing a run leaves behind may hold one: the
search looks for each secret as written, URL-quoted (an error that quotes a request URL),
base64-encoded (a Kubernetes Secret's ``data`` copied somewhere) and, for a base64 key, its raw
bytes (the decoded key written into an object). Objects are searched as stored and, where they
hold zstd frames (Icechunk's snapshots, manifests and config), decompressed too.

Both secret-canary tests (the CLI's and the cluster's) search with this module; the servers and
the Dask cluster they run against are in ``canary_world``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import urllib.parse
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.tally import FaultTally

#: Icechunk's file header; what follows it is a zstd frame (zstd's magic number below).
ICECHUNK_MAGIC = b"ICE\xf0\x9f\xa7\x8aCHUNK"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Secret:
    """One secret under a name the test reports, and every byte form it is searched in."""

    name: str
    forms: tuple[bytes, ...]


def canary(name: str) -> tuple[str, Secret]:
    """A fresh canary: its text (to hand to servers and clients) and the secret to search for."""
    text = base64.b64encode(secrets.token_bytes(48)).decode()
    return text, text_secret(name, text)


def text_secret(name: str, text: str) -> Secret:
    raw = text.encode()
    forms = {raw, urllib.parse.quote(text, safe="").encode(), base64.b64encode(raw)}
    with suppress(binascii.Error):
        forms.add(base64.b64decode(text, validate=True))
    return Secret(name, tuple(sorted(forms)))


def pem_secret(name: str, pem: str) -> Secret:
    """A PEM private key: each full line of its base64 body, and the key's DER bytes."""
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    forms = {line.encode() for line in body if len(line) >= 32}
    forms.add(base64.b64decode("".join(body)))
    return Secret(name, tuple(sorted(forms)))


@dataclass(frozen=True)
class Document:
    """One thing a run wrote or showed (a file, an object, a line of output), in every view
    searched: as stored, and each zstd frame in it decompressed."""

    name: str
    views: tuple[bytes, ...]

    def holds(self, secret: Secret) -> bool:
        return any(form in view for view in self.views for form in secret.forms)


@dataclass
class Evidence:
    """Everything a run wrote or showed, by place ("CLI output", "storage objects", ...)."""

    places: dict[str, list[Document]] = field(default_factory=dict)

    def add(self, place: str, name: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.places.setdefault(place, []).append(Document(name, (raw, *decompressed(name, raw))))

    def add_lines(self, place: str, name: str, text: str) -> None:
        """Output or a log, one document per line (the tally counts lines)."""
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                self.add(place, f"{name}:{number}", line)

    def add_tree(self, place: str, folder: Path) -> int:
        """Every file under ``folder`` (a storage server's data), whole; returns how many."""
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        for path in files:
            self.add(place, str(path.relative_to(folder)), path.read_bytes())
        return len(files)

    def count(self, place: str) -> int:
        return len(self.places.get(place, []))

    def leaks(self, secrets_: Iterable[Secret]) -> list[tuple[str, str, str]]:
        """(place, document, secret) for every document that holds a secret."""
        wanted = list(secrets_)
        return [
            (place, document.name, secret.name)
            for place, documents in sorted(self.places.items())
            for document in documents
            for secret in wanted
            if document.holds(secret)
        ]

    def tally(self, fault_tally: FaultTally, secrets_: Iterable[Secret]) -> list[tuple[str, str, str]]:
        """Add one row per place to the fault tally (documents searched, documents that leaked)
        and return the leaks."""
        found = self.leaks(secrets_)
        for place, documents in sorted(self.places.items()):
            leaked = len({name for where, name, _ in found if where == place})
            fault_tally.add("secrets", place, injected=len(documents), leaked=leaked)
        return found


def decompressed(name: str, data: bytes) -> list[bytes]:
    """Each zstd frame in ``data``, decompressed. An Icechunk file must decompress: searching
    only its compressed bytes would find nothing whatever it held."""
    from numcodecs import Zstd

    views: list[bytes] = []
    start = data.find(ZSTD_MAGIC)
    while start >= 0:
        with suppress(Exception):  # four bytes that only look like a frame's start
            views.append(bytes(Zstd().decode(data[start:])))
        start = data.find(ZSTD_MAGIC, start + 1)
    assert views or not data.startswith(ICECHUNK_MAGIC), f"{name}: an Icechunk file that does not decompress"
    return views


def describe(leaks: list[tuple[str, str, str]]) -> str:
    return "\n".join(f"{secret} in {place}: {document}" for place, document, secret in leaks[:20])
