"""Showing a run's progress: a bar on a terminal, plain lines in logs and CI."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from icechunk_operator.engine.failures import summarize
from icechunk_operator.engine.runner import Progress, RunReport


class PlainProgress:
    """One line per stage change and at most one progress line every ``interval`` seconds."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 2.0) -> None:
        self._stream = stream
        self._interval = interval
        self._last = 0.0
        self._stage = ""

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.stage != self._stage:
            self._stage = progress.stage
            self._stream.write(f"[{progress.stage}] {_counts(progress)}\n")
            self._last = now
        elif now - self._last >= self._interval:
            self._stream.write(f"  {_counts(progress)}\n")
            self._last = now
        self._stream.flush()

    def close(self) -> None:
        pass


class BarProgress:
    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]} skipped {task.fields[skipped]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task: Any = self._bar.add_task("starting", total=None, failed=0, skipped=0)
        self._bar.start()

    def __call__(self, progress: Progress) -> None:
        self._bar.update(
            self._task,
            description=progress.stage,
            total=progress.total or None,
            completed=progress.done + progress.failed + progress.skipped,
            failed=progress.failed,
            skipped=progress.skipped,
        )

    def close(self) -> None:
        self._bar.stop()


def make_progress(stream: TextIO = sys.stderr) -> PlainProgress | BarProgress:
    return BarProgress() if stream.isatty() else PlainProgress(stream)


def _counts(progress: Progress) -> str:
    return f"total={progress.total} done={progress.done} failed={progress.failed} skipped={progress.skipped}"


def summary_table(report: RunReport) -> str:
    rows = [
        ("batch", report.batch),
        ("store", report.store),
        ("result", "succeeded" if report.succeeded else "FAILED"),
        (
            "files",
            f"{report.total} total, {report.done} ingested, {report.failed} failed, "
            f"{report.skipped} skipped (tolerance {report.tolerance})",
        ),
        ("groups written", str(report.groups_written)),
        ("commits", ", ".join(report.commits) or "none (nothing to write)"),
        ("failure log", report.failure_log or "-"),
    ]
    rows += [(f"seconds: {name}", f"{seconds:.2f}") for name, seconds in report.stage_seconds.items()]
    if report.error:
        rows.append(("error", report.error))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    if report.failures:
        lines.append(
            "failures by class: "
            + ", ".join(f"{cls}={count}" for cls, count in summarize(report.failures).items())
        )
    return "\n".join(lines)
