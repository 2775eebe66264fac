"""Hostile YAML: the CLI refuses alias bombs, huge and deeply nested files in moments, in bounded memory.

Each file goes to the real CLI (``icechunk-operator validate -f`` and ``run -f``) in a subprocess;
the test measures its wall time and its peak resident memory (``wait4``'s rusage of that one
child) and reads its exit code and message. Before the limits, ``kind: *bomb`` (nine anchors of
nine aliases) took 35 s and 2.2 GB before running out of memory, a 22 MB file took 16 s and
365 MB, and 100,000 nested brackets crashed the parser with a RecursionError (exit 3).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from icechunk_operator.api.yaml_reading import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES
from tests.faults.tally import FaultTally

CLI = str(Path(sys.executable).with_name("icechunk-operator"))
CATEGORY = "bad spec"
#: Generous for a loaded CI machine: a refusal reads at most 4 MiB and parses nothing big.
SECONDS = 10.0
PEAK_MB = 400

STORE = """\
apiVersion: icechunkoperator.io/v1alpha1
kind: IcechunkStore
metadata: {name: s}
spec:
  storage: {url: "s3://bucket/stores/s"}
  virtualChunkContainers: [{urlPrefix: "s3://archive/"}]
---
"""


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float
    peak_mb: float


#: Runs the CLI and prints its peak RSS in KiB. Linux starts a forked child's peak RSS at its
#: parent's (pytest's, 600 MB after the end-to-end tests), so the CLI is forked from this small
#: process rather than from pytest itself.
PEAK_WRAPPER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def cli(*args: str, stdin: bytes | None = None) -> Outcome:
    """Run the CLI; its exit code, message, wall time and peak RSS (that child's own)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", PEAK_WRAPPER, CLI, *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if stdin is not None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the CLI stopped reading at its limit, as it should
            process.stdin.write(stdin)
            process.stdin.close()
    stdout, stderr = process.communicate()
    peak_kib = int(stdout.decode().split()[-1])
    return Outcome(
        process.returncode, stderr.decode(errors="replace"), time.monotonic() - started, peak_kib / 1024
    )


def bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: ``width ** levels`` strings from a few hundred bytes."""
    lines = [f"x0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"x{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def refused_quickly(outcome: Outcome, problem: str | tuple[str, ...]) -> None:
    assert outcome.code == 2, outcome
    problems = (problem,) if isinstance(problem, str) else problem
    assert any(p in outcome.stderr for p in problems), outcome.stderr
    assert outcome.seconds < SECONDS, outcome
    assert outcome.peak_mb < PEAK_MB, outcome
    assert "Traceback" not in outcome.stderr


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("validate", "kind: *a8\nmetadata: {name: b}\n"),  # str(kind) of it was 2 GB
        ("run", "kind: *a8\nmetadata: {name: b}\n"),
        ("validate", "kind: IngestBatch\nmetadata: {name: b, labels: *a8}\nspec: {store: s}\n"),
        ("run", "kind: IngestBatch\nmetadata: {name: b}\nspec: {store: s, source: {files: *a8}}\n"),
    ],
    ids=["validate-kind", "run-kind", "validate-labels", "run-files"],
)
def test_alias_bombs_are_refused(tmp_path: Path, fault_tally: FaultTally, command: str, where: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(STORE + bomb() + where)
    outcome = cli(command, "-f", str(path))
    refused_quickly(outcome, f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes")
    assert str(path) in outcome.stderr
    fault_tally.add(CATEGORY, "YAML alias bomb (9 x 9)", injected=1)


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    """The limit leaves room for what aliases are for: one block of settings shared."""
    path = tmp_path / "shared.yaml"
    path.write_text(
        "kind: IcechunkStore\nmetadata: {name: s}\nspec:\n  storage: {url: 's3://bucket/stores/s'}\n"
        "  virtualChunkContainers:\n"
        "  - {urlPrefix: 's3://a/', region: eu-west-1, credentials: &shared {secretRef: {name: keys}}}\n"
        "  - {urlPrefix: 's3://b/', region: eu-west-1, credentials: *shared}\n"
    )
    outcome = cli("validate", "-f", str(path))
    assert outcome.code == 0, outcome.stderr


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_50_mb_document_is_refused_before_it_is_parsed(
    tmp_path: Path, fault_tally: FaultTally, command: str
) -> None:
    path = tmp_path / "huge.yaml"
    line = b"    - s3://archive/data/some/long/path/to/a/file/number/00000000.nc\n"
    with path.open("wb") as out:
        out.write(STORE.encode() + b"kind: IngestBatch\nmetadata: {name: b}\nspec:\n  store: s\n")
        out.write(b"  source:\n    files:\n")
        out.write(line * (50 * 2**20 // len(line)))
    assert path.stat().st_size > 50 * 10**6
    outcome = cli(command, "-f", str(path))
    refused_quickly(outcome, f"more than {MAX_FILE_BYTES // 2**20} MiB")
    fault_tally.add(CATEGORY, "huge YAML document (50 MB)", injected=1)


def test_a_huge_document_on_a_pipe_is_refused_at_the_limit(fault_tally: FaultTally) -> None:
    """/dev/stdin has no size to look at: the reader stops one byte past the limit."""
    data = (STORE + "kind: IngestBatch\n").encode() + b"# padding\n" * (5 * 2**20)
    outcome = cli("validate", "-f", "/dev/stdin", stdin=data)
    refused_quickly(outcome, f"more than {MAX_FILE_BYTES // 2**20} MiB")
    fault_tally.add(CATEGORY, "huge YAML document on a pipe", injected=1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # PyYAML 6.0.4's scanner refuses deep flow nesting itself, before our check sees events.
        (
            "[" * 100_000 + "]" * 100_000 + "\n",
            (f"nested more than {MAX_DEPTH} levels", "maximum nesting depth"),
        ),
        (
            "kind: IngestBatch\nspec: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
            (f"nested more than {MAX_DEPTH}", "maximum nesting depth"),
        ),
        ("kind: &k [*k]\n", "refers to its own node"),
        ("kind: IngestBatch\nmetadata: {name: b, generation: " + "1" * 5000 + "}\n", "not valid YAML"),
        ("kind: IngestBatch\nmetadata: {name: b}\nspec: {store: [unclosed\n", "not valid YAML"),
    ],
    ids=["deep-brackets", "deep-mappings", "recursive-alias", "5000-digit-integer", "broken"],
)
def test_shapes_that_crashed_the_parser_are_refused(
    tmp_path: Path, fault_tally: FaultTally, text: str, problem: str | tuple[str, ...]
) -> None:
    path = tmp_path / "shape.yaml"
    path.write_text(STORE + text)
    outcome = cli("validate", "-f", str(path))
    refused_quickly(outcome, problem)
    fault_tally.add(CATEGORY, "YAML nesting, recursion, digits", injected=1)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"kind: \xff\xfe IngestBatch\n", "not UTF-8"), (None, "cannot read")],
    ids=["not-utf8", "missing"],
)
def test_unreadable_files_are_refused_not_crashed(
    tmp_path: Path, fault_tally: FaultTally, content: bytes | None, problem: str
) -> None:
    """Before: UnicodeDecodeError and FileNotFoundError escaped as crashes (exit 3, a traceback)."""
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_bytes(content)
    outcome = cli("validate", "-f", str(path))
    refused_quickly(outcome, problem)
    fault_tally.add(CATEGORY, "unreadable YAML file", injected=1)


def test_a_large_legitimate_file_still_validates(tmp_path: Path) -> None:
    """Just under the size limit, a long explicit files list validates, in seconds."""
    path = tmp_path / "long.yaml"
    line = "    - s3://archive/data/a/file/number/{:08d}.nc\n"
    count = (MAX_FILE_BYTES - 1000) // len(line.format(0))
    path.write_text(
        STORE
        + "kind: IngestBatch\nmetadata: {name: b}\nspec:\n  store: s\n  source:\n    files:\n"
        + "".join(line.format(n) for n in range(count))
    )
    outcome = cli("validate", "-f", str(path))
    assert outcome.code == 0, outcome.stderr
    assert outcome.seconds < 30, outcome
