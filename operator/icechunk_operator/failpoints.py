"""Failpoints: named places where a test makes this process die, as etcd's gofail does.

The fault matrix (``make test-faults``) must kill the commit process *at* a stage (inside a
commit, between a commit and its status patch), not somewhere near it, and a timer from outside
cannot aim that well. So the code names its stages with :func:`failpoint`, and a test arms some of
them through the environment:

    ICECHUNK_OPERATOR_FAILPOINTS="commit.after=kill;virtualize.file=kill@3"

Each entry is ``name=action[@hit]``: ``kill`` sends SIGKILL to this process (nothing runs after
it: no ``finally``, no atexit, exactly a node's power cut or the OOM killer), ``raise`` raises
:class:`InjectedFault` (an ordinary crash), ``kill-after:SECONDS`` arms a kernel timer that
sends SIGKILL that long after the point, to land inside the call that follows it. ``@hit`` fires on the
hit-th pass only (default: the first).

With ``ICECHUNK_OPERATOR_FAILPOINTS_ONCE_DIR`` set, a fault fires only if it is the first to
create ``<dir>/<name>``: across processes, so a Dask worker that restarts, a re-run or the Job's
retry of a killed pod pass the point, as a process that had not crashed would.

A kernel timer (POSIX ``timer_create`` with SIGKILL as its signal), not a Python timer thread:
the thread must be scheduled and take the GIL before it can send the signal, and on a loaded
machine that came after a small commit had finished, so the kill aimed inside it landed after it.
The kernel delivers the timer's SIGKILL at expiry whatever the process's threads are doing.

Unarmed (the environment unset, always outside tests) a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import ctypes
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


class _SigEvent(ctypes.Structure):
    """``struct sigevent`` of Linux (64 bytes): the value, the signal, how to notify."""

    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_rest", ctypes.c_int * 12),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


_CLOCK_MONOTONIC = 1
_SIGEV_SIGNAL = 0


def _kill_after(seconds: float) -> None:
    """SIGKILL from a kernel timer ``seconds`` from now; a timer thread where there is none."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "timer_create"):
        event = _SigEvent(None, signal.SIGKILL, _SIGEV_SIGNAL)
        timer = ctypes.c_void_p()
        whole, fraction = divmod(seconds, 1.0)
        expiry = _ITimerSpec(_TimeSpec(0, 0), _TimeSpec(int(whole), max(1, int(fraction * 1e9))))
        created = libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) == 0
        if created and libc.timer_settime(timer, 0, ctypes.byref(expiry), None) == 0:
            return
    thread = threading.Timer(seconds, _kill)
    thread.daemon = True
    thread.start()


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
        _kill_after(float(action.removeprefix("kill-after:")))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for failpoint {name!r}")


def armed_names() -> list[str]:
    """The failpoints this process's environment arms (for a test's own checks)."""
    return sorted(_armed())
