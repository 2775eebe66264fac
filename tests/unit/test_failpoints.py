"""Failpoints: unarmed they do nothing; armed they fire at the hit asked for, once across
processes when a once-folder is given. (The kill actions are exercised for real by the fault
matrix, tests/faults/test_kill_matrix.py, and here in child processes only: a SIGKILL in this one
would end the test run.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from icechunk_operator import failpoints
from icechunk_operator.failpoints import ENV, ONCE_DIR_ENV, InjectedFault, failpoint


@pytest.fixture(autouse=True)
def fresh_failpoints() -> Iterator[None]:
    failpoints._armed.cache_clear()
    failpoints._hits.clear()
    yield
    failpoints._armed.cache_clear()
    failpoints._hits.clear()


def test_unarmed_failpoints_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    for _ in range(3):
        failpoint("commit")
    assert failpoints.armed_names() == []


def test_an_armed_failpoint_fires_on_the_hit_asked_for_and_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "written=raise@3; commit = raise")
    assert failpoints.armed_names() == ["commit", "written"]
    failpoint("written")
    failpoint("written")
    with pytest.raises(InjectedFault, match="failpoint written"):
        failpoint("written")
    failpoint("written")  # the fourth pass goes through
    with pytest.raises(InjectedFault, match="failpoint commit"):
        failpoint("commit")


def test_a_once_folder_lets_a_fault_fire_in_one_process_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV, "planning=raise")
    monkeypatch.setenv(ONCE_DIR_ENV, str(tmp_path))
    with pytest.raises(InjectedFault):
        failpoint("planning")
    assert (tmp_path / "planning").exists()
    failpoints._hits.clear()  # as a new process (the Job's retry) would start
    failpoint("planning")  # passes: the marker says it fired already


def test_an_unknown_action_is_an_error_naming_the_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "listing=explode")
    with pytest.raises(ValueError, match="unknown action 'explode' for failpoint 'listing'"):
        failpoint("listing")


# A regular expression that backtracks for hours and holds the GIL all along: a Python timer
# thread could not send its signal before it ends.
GIL_HOLDER = """
import re
from icechunk_operator.failpoints import failpoint
failpoint("commit")
re.match(r"(a+)+$", "a" * 40 + "b")
print("the call ended before the kill")
"""


def test_kill_after_lands_inside_a_call_that_holds_the_gil() -> None:
    """The kill is the kernel's timer, in a child process (a SIGKILL here would end the run)."""
    env = {**os.environ, ENV: "commit=kill-after:0.05"}
    child = subprocess.run(
        [sys.executable, "-c", GIL_HOLDER], env=env, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "ended before the kill" not in child.stdout
