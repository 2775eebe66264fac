"""Failpoints: named places where a test makes this process die, as etcd's gofail does.

The fault matrix (``make test-faults``) must kill the commit process *at* a stage (inside a
commit, between a commit and its status patch), not somewhere near it, and a timer from outside
cannot aim that well. So the code names its stages with :func:`failpoint`, and a test arms some of
them through the environment:

    ICECHUNK_OPERATOR_FAILPOINTS="commit.after=kill;virtualize.file=kill@3"

Each entry is ``name=action[@hit]``: ``kill`` sends SIGKILL to this process (nothing runs after
it: no ``finally``, no atexit, exactly a node's power cut or the OOM killer), ``raise`` raises
:class:`InjectedFault` (an ordinary crash), ``kill-after:SECONDS`` starts a timer that sends
SIGKILL that long after the point, to land inside the call that follows it. ``@hit`` fires on the
hit-th pass only (default: the first).

With ``ICECHUNK_OPERATOR_FAILPOINTS_ONCE_DIR`` set, a fault fires only if it is the first to
create ``<dir>/<name>``: across processes, so a Dask worker that restarts, a re-run or the Job's
retry of a killed pod pass the point, as a process that had not crashed would.

Unarmed (the environment unset, always outside tests) a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from functools import cache
from pathlib import Path

ENV = "ICECHUNK_OPERATOR_FAILPOINTS"
ONCE_DIR_ENV = "ICECHUNK_OPERATOR_FAILPOINTS_ONCE_DIR"

_hits: Counter[str] = Counter()
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """TEST ONLY: the crash a ``raise`` failpoint asks for."""


@cache
def _armed() -> dict[str, tuple[str, int]]:
    """``{name: (action, hit)}`` from the environment, read once per process."""
    armed: dict[str, tuple[str, int]] = {}
    for entry in os.environ.get(ENV, "").split(";"):
        name, _, action = entry.strip().partition("=")
        if not name or not action:
            continue
        action, _, hit = action.partition("@")
        armed[name.strip()] = (action.strip(), int(hit) if hit else 1)
    return armed


def _first_across_processes(name: str) -> bool:
    folder = os.environ.get(ONCE_DIR_ENV)
    if not folder:
        return True
    try:
        descriptor = os.open(Path(folder) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """Die here if a test armed ``name``; otherwise return at once."""
    armed = _armed()
    if name not in armed:
        return
    action, hit = armed[name]
    with _lock:
        _hits[name] += 1
        if _hits[name] != hit or not _first_across_processes(name):
            return
    if action == "kill":
        _kill()
    elif action == "raise":
        raise InjectedFault(f"test fault: failpoint {name}")
    elif action.startswith("kill-after:"):
        timer = threading.Timer(float(action.removeprefix("kill-after:")), _kill)
        timer.daemon = True
        timer.start()
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for failpoint {name!r}")


def armed_names() -> list[str]:
    """The failpoints this process's environment arms (for a test's own checks)."""
    return sorted(_armed())
