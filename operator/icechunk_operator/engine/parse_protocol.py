"""What crosses the socket between a worker and its parser process, and how a parse can end.

The requests and replies are small frozen dataclasses (pickled by ``multiprocessing``'s
``Connection``); the errors are the classes a failure record names when a parse is killed at its
deadline, dies, or runs out of memory. Both sides import this module, and nothing heavier.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from icechunk_operator.engine.documents import GroupPayload
from icechunk_operator.engine.file_errors import UnusableFileError
from icechunk_operator.engine.planning import GroupWork
from icechunk_operator.engine.prefetch import Head
from icechunk_operator.engine.records import FailureRecord, SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions

_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_FACTORS = {
    "": 1,
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def memory_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity ('2Gi', '512M', '1073741824')."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"execution.workerMemory: {quantity!r} is not a memory quantity such as 2Gi")
    return int(float(match["number"]) * _FACTORS[match["suffix"] or ""])


@dataclass(frozen=True)
class ParseLimits:
    """How long one file's parse may take, and how much address space its process may use."""

    timeout_seconds: float
    memory_bytes: int | None = None
    memory_setting: str = ""  # the workerMemory it came from, for messages


class FileTimeoutError(UnusableFileError):
    """The parse did not finish within ``execution.fileTimeoutSeconds``; its process was killed."""


class ParserCrashedError(UnusableFileError):
    """The parser process died on this file (a signal such as SIGSEGV, or an exit)."""


class MemoryLimitError(UnusableFileError):
    """The parse needed more memory than its process may address."""


class ParserUnavailableError(ConnectionError):
    """A parser process did not start; transient (a busy node), so the file is retried."""


class ParseFailed(Exception):
    """A parse that failed inside the parser process, as its class name and text (the exception
    itself may not survive pickling)."""

    def __init__(self, error_class: str, message: str, transient: bool) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.transient = transient


@dataclass(frozen=True)
class GroupReply:
    payload: GroupPayload | None
    failures: list[FailureRecord]


@dataclass(frozen=True)
class ParseRequest:
    """Parse one file of ``group`` and keep its dataset (a new group drops what was kept).

    With ``assemble`` (the group's work, sent with its last file) the child assembles the group
    right after, unless the parse failed in a way worth a retry: one round trip per file."""

    group: str
    source: SourceFile
    options: VirtualizeOptions
    containers_json: str
    head: Head | None
    assemble: GroupWork | None = None


@dataclass(frozen=True)
class ParseReply:
    """Empty when the file parsed; else its error. ``recycle`` asks the worker to replace the
    process (after a MemoryError its heap is no longer worth keeping); ``group`` is the
    assembled group when the request asked for it."""

    error_class: str = ""
    message: str = ""
    transient: bool = False
    recycle: bool = False
    group: GroupReply | None = None


@dataclass(frozen=True)
class ReadRequest:
    """Read one whole file with a materializing reader; its bytes travel with the request (a
    RINEX file is a few MB), so the parser process needs no credentials."""

    url: str
    data: bytes
    reader: str
    options: dict[str, Any]
    dimension: str
    accept_repairs: bool = False


@dataclass(frozen=True)
class ReadReply:
    """The file's dataset and what the commit process needs of it, or its error."""

    dataset: Any = None
    times: Any = None
    labels: dict[str, Any] | None = None
    variables: dict[str, tuple[tuple[str, ...], str]] | None = None
    repair: str = ""  # what the reader repaired, when the batch accepts repairs
    error_class: str = ""
    message: str = ""
    recycle: bool = False


@dataclass(frozen=True)
class GroupRequest:
    """Assemble the kept datasets of ``sources`` (the files of ``work`` that parsed)."""

    work: GroupWork
    sources: tuple[SourceFile, ...]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "an unknown signal"
        hint = " (the out-of-memory killer?)" if number == signal.SIGKILL else ""
        return f"parser process died on this file: killed by signal {number} ({name}){hint}"
    return f"parser process died on this file: it exited with code {returncode}"


def error_class(error: BaseException) -> str:
    """The class a failure record names: the original one for a parse that failed in the parser
    process."""
    return error.error_class if isinstance(error, ParseFailed) else type(error).__name__


def failure_record(
    source: SourceFile, error: BaseException, group: str | None, attempts: int = 1
) -> FailureRecord:
    return FailureRecord(source.url, error_class(error), str(error)[:2000], group, attempts)
