"""Leaving a finished process without interpreter finalization.

When a command's work is done and flushed, what finalization still adds is a race with native
threads winding down: Icechunk's tokio threads drop Python objects after the interpreter has begun
tearing down (a segfault), and Arrow's pool threads release Python objects they can no longer
take the GIL for (an abort, apache/arrow#34314). Both were caught in core dumps of runs that had
finished their work, about one run in a hundred on a loaded machine, and they turn a success into
exit code -6 or -11.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import IntEnum
from typing import NoReturn


class ExitCode(IntEnum):
    """What every command's exit code means, on a laptop and in a pod alike. A Job fails at once
    on 1 and 2 (retrying cannot help) and retries anything else, which is a crash."""

    OK = 0
    BATCH_FAILED = 1  # more files failed than the batch tolerates, or a store differs from its source
    REFUSED = 2  # the spec or its inputs are refused; the message names the field
    CRASHED = 3  # an uncaught exception; signals and OOM kills give 128+n, also crashes


def first_line(error: BaseException) -> str:
    """An error's message up to its first line break: what fits in a status field or an Event."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def one_line_error(error: BaseException) -> str:
    """An error for status, Events and the terminal: its class and first line, nothing longer
    (a traceback belongs in a log; a long message would be cut by the API anyway)."""
    return f"{type(error).__name__}: {first_line(error)}"[:512]


def exit_now(code: int) -> NoReturn:
    """Flush logs and standard streams, then end the process with ``code``."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
