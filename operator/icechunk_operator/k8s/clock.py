"""The operator's "now" for cron schedules: IngestSchedules, Reconciliation schedules and store
maintenance.

It is the wall clock. The test tier alone moves it: when ``ICECHUNK_OPERATOR_TEST_CLOCK_FILE``
names a file, the seconds written in it are added, so a schedule test crosses a cron time by
writing a number instead of waiting a minute for one. Only whoever runs the operator sets its
environment (the chart never sets this one), so no tenant can move another tenant's schedules.
Leases, Events and status times keep the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def schedule_clock(offset_file: str | None) -> Clock:
    """The wall clock, or the wall clock plus the seconds in ``offset_file`` (none: plus 0)."""
    if not offset_file:
        return wall_clock
    path = Path(offset_file)

    def moved() -> datetime:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        try:
            offset = float(text or 0)
        except ValueError:
            problem = f"ICECHUNK_OPERATOR_TEST_CLOCK_FILE {path}: {text[:40]!r} is not seconds"
            raise ValueError(problem) from None
        return wall_clock() + timedelta(seconds=offset)

    return moved
