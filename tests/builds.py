"""Builds that run beside the tests, waited for outside any test's timeout.

``make test`` (scripts/test.sh) starts the builds the later tiers need in the background, in the
order the tiers need them, while lint, the unit and the integration tiers run: on a cold machine
the control plane alone is minutes of compiling that the first tiers need not wait for. Each build
script holds a lock while it builds and prints the cached path when the build is there, so calling
it waits for the background build and then returns at once.

This plugin makes that call before the first test that needs a build, in an outer wrapper of the
test's protocol: the wait is not charged to the test (a cold control plane takes longer than the
600 s a test may) nor to its tier, and the time table names it. A failed build is not reported
here: the fixture runs the script again and fails the test with the build's own error.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

#: A build's name (as the time table shows it) -> the script and arguments that build or find it.
BUILDS: dict[str, tuple[str, ...]] = {
    "Azurite": ("install-azurite.sh",),
    "toxiproxy": ("build-go-tool.sh", "toxiproxy"),
    "fake-gcs-server": ("build-go-tool.sh", "fake-gcs-server"),
    "versitygw": ("build-go-tool.sh", "versitygw"),
    "control plane": ("build-control-plane.sh",),
    "helm and checkov": ("build-chart-tools.sh",),
    "node": ("build-node.sh",),
    "image": ("build-image.sh",),
}

#: Fixtures whose set-up runs a build script (directly or through a server they start).
BUILDS_OF_FIXTURE: dict[str, tuple[str, ...]] = {
    "azure_endpoint": ("Azurite",),
    "toxiproxy_server": ("toxiproxy",),
    "gcs_server_process": ("fake-gcs-server",),
    "control_plane": ("control plane",),
    "chart_tools": ("helm and checkov",),
    "real_cluster": ("control plane", "node", "image"),
    "image_tarballs": ("image",),
}


def builds_needed(fixtures: Iterable[str], marked: Iterable[str] = ()) -> list[str]:
    """The builds a test needs, from its fixtures and its ``builds`` marks (for servers a test
    starts in its body), in the order of ``BUILDS``."""
    wanted = set(marked)
    for fixture in fixtures:
        wanted.update(BUILDS_OF_FIXTURE.get(fixture, ()))
    unknown = wanted - set(BUILDS)
    if unknown:
        raise ValueError(f"unknown builds {sorted(unknown)}; known: {', '.join(BUILDS)}")
    return [name for name in BUILDS if name in wanted]


def _marked_builds(item: pytest.Item) -> list[str]:
    return [str(name) for mark in item.iter_markers("builds") for name in mark.args]


class BuildWaiter:
    """Runs each needed build script once per session, before the first test that needs it."""

    def __init__(self) -> None:
        self.waited: dict[str, float] = {}

    @pytest.hookimpl(tryfirst=True, wrapper=True)  # outside pytest-timeout's wrapper
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        fixtures = getattr(item, "fixturenames", ())
        for name in builds_needed(fixtures, _marked_builds(item)):
            if name not in self.waited:
                self.waited[name] = self._wait_for(name)
        return (yield)

    @staticmethod
    def _wait_for(name: str) -> float:
        script, *arguments = BUILDS[name]
        started = time.monotonic()
        subprocess.run(
            ["bash", str(SCRIPTS / script), *arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,  # the fixture runs it again and fails with the build's own message
        )
        return time.monotonic() - started

    def lines(self) -> list[tuple[str, float]]:
        """(row, seconds) for the time table: the waits that cost more than a second."""
        return [(f"tests waited for: {name}", s) for name, s in self.waited.items() if s >= 1.0]


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(BuildWaiter(), "build-waiter")


def waits(config: Any) -> list[tuple[str, float]]:
    """The build waits of this session, for the time table (tests/tiers.py)."""
    waiter = config.pluginmanager.get_plugin("build-waiter")
    return waiter.lines() if isinstance(waiter, BuildWaiter) else []
