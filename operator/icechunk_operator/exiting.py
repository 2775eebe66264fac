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
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush logs and standard streams, then end the process with ``code``."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
