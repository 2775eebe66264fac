"""Tiers from folders, and where a run's time went.

Each test's tier marker comes from its folder (``tests/unit`` is ``unit``, ``tests/e2e`` is
``k8s``, ...), so a new file cannot land in the wrong tier by a forgotten ``pytestmark``; a unit
test that asks for a server fixture is refused at collection, so ``make test-fast`` (the unit
tier) never starts one. Tiers run in the table's order, those that need no build first.

At the end of a run the time and CPU of each tier is printed, after the build and lint steps
``scripts/timed.sh`` recorded for this run (``$ICECHUNK_OPERATOR_STEP_TIMES``): CI logs show
where the minutes went without a second run. CPU is the whole machine's (``/proc/stat``), since
most of it is spent in servers and child processes, not in pytest.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.builds import waits

#: Folder under tests/ -> tier marker. Fault tests elsewhere keep their own ``faults`` marker.
TIER_OF_FOLDER = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "k8s",
    "pods": "pods",
    "faults": "faults",
}

#: What each tier is called in the table, in the order of a run.
TIER_TITLES = {
    "unit": "unit",
    "integration": "integration (real servers, local files)",
    "faults": "faults (kills, storage faults, hostile input)",
    "k8s": "end-to-end, fast tier (control plane, fake kubelet)",
    "load": "load (many batches at once)",
    "pods": "real pods (a real node runs the image)",
}

#: Tier -> its place in a run.
RUN_ORDER = {tier: place for place, tier in enumerate(TIER_TITLES)}

#: Fixtures that start a server, a cluster or a control plane (the rest are built on them).
SERVER_FIXTURES = frozenset(
    {
        "dask_scheduler",
        "s3_server_process",
        "toxiproxy_server",
        "azure_endpoint",
        "gcs_server_process",
        "control_plane",
        "real_cluster",
        "chart_tools",
    }
)


def tier_of(path: Path) -> str | None:
    """The tier of a test file from its folder below ``tests/``; None outside a tier folder."""
    parts = path.parts
    for index, part in enumerate(parts[:-1]):
        if part == "tests" and index + 1 < len(parts) - 1:
            return TIER_OF_FOLDER.get(parts[index + 1])
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        tier = tier_of(Path(str(item.path)))
        if tier is None:
            continue
        item.add_marker(tier)
        if tier == "unit" and (servers := SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))):
            misplaced.append(f"{item.nodeid} uses {', '.join(sorted(servers))}")
    if misplaced:
        raise pytest.UsageError(
            "unit tests start no server (make test-fast runs them alone); move these to "
            "tests/integration or tests/e2e:\n  " + "\n  ".join(misplaced)
        )
    items.sort(key=_run_order)


def _run_order(item: pytest.Item) -> int:
    """Tiers run in the order of ``TIER_TITLES`` (a stable sort keeps the files' order within
    one): the tiers that need no build come first, so the control plane, the node and the image
    build beside them (tests/builds.py)."""
    return RUN_ORDER.get(tier_of(Path(str(item.path))) or "", len(RUN_ORDER))


def _machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return time.process_time()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class TierTime:
    tests: int = 0
    wall: float = 0.0
    cpu: float = 0.0


class TierClock:
    """Wall and CPU seconds per tier, summed over each test's setup, call and teardown."""

    def __init__(self) -> None:
        self.tiers: dict[str, TierTime] = defaultdict(TierTime)
        self.started = time.monotonic()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        wall, cpu = time.monotonic(), _machine_cpu_seconds()
        try:
            return (yield)
        finally:
            tier = self.tiers[_table_tier(item)]
            tier.tests += 1
            tier.wall += time.monotonic() - wall
            tier.cpu += _machine_cpu_seconds() - cpu

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.tiers:
            return
        terminalreporter.section("time per tier")
        for line in self.lines(_step_times(), waits(terminalreporter.config), _run_started()):
            terminalreporter.write_line(line)

    def lines(
        self,
        steps: list[tuple[str, float]],
        build_waits: Sequence[tuple[str, float]] = (),
        run_started: float | None = None,
    ) -> list[str]:
        """The table: steps (builds beside the tests overlap the tiers), the tests' waits for
        those builds (in no tier), each tier, and the whole run's wall time."""
        out = ["| Step or tier | Tests | Wall | CPU (machine) |", "| --- | ---: | ---: | ---: |"]
        out += [f"| {name} | | {_minutes(seconds)} | |" for name, seconds in [*steps, *build_waits]]
        order = [t for t in TIER_TITLES if t in self.tiers] + sorted(set(self.tiers) - set(TIER_TITLES))
        for name in order:
            tier = self.tiers[name]
            out.append(
                f"| {TIER_TITLES.get(name, name)} | {tier.tests} | {_minutes(tier.wall)} | {tier.cpu:.0f} s |"
            )
        tests = sum(t.tests for t in self.tiers.values())
        total = time.monotonic() - self.started
        out.append(f"| pytest in all (collection included) | {tests} | {_minutes(total)} | |")
        if run_started is not None:
            out.append(f"| whole run (make test, wall) | | {_minutes(time.time() - run_started)} | |")
        return out


def _table_tier(item: pytest.Item) -> str:
    """The row a test's time goes to: its folder's tier, with the load test a row of its own."""
    if item.get_closest_marker("load") is not None:
        return "load"
    return tier_of(Path(str(item.path))) or "other"


def _step_times() -> list[tuple[str, float]]:
    """(step, seconds) that scripts/timed.sh recorded for this run, in the order they ended."""
    path = os.environ.get("ICECHUNK_OPERATOR_STEP_TIMES")
    if not path or not Path(path).is_file():
        return []
    steps: list[tuple[str, float]] = []
    for line in Path(path).read_text().splitlines():
        name, _, seconds = line.rpartition("\t")
        try:
            steps.append((name, float(seconds)))
        except ValueError:
            continue
    return steps


def _run_started() -> float | None:
    """When make test began (epoch seconds, scripts/test.sh), for the whole run's wall time."""
    try:
        return float(os.environ["ICECHUNK_OPERATOR_RUN_STARTED"])
    except KeyError, ValueError:
        return None


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TierClock(), "tier-clock")
