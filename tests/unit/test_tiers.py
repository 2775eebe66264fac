"""Tiers come from folders, a unit test that asks for a server is refused, and the time table
names each tier: pytest run on a small tree of its own (no server is started)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cluster.control_plane import REPO
from tests.tiers import tier_of

CONFTEST = """
import pytest

pytest_plugins = ["tests.tiers"]


@pytest.fixture(scope="session")
def dask_scheduler():
    raise AssertionError("a server fixture was set up")
"""


def run_pytest(root: Path, *args: str, steps: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ICECHUNK_OPERATOR_STEP_TIMES": steps}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # hypothesis, zarr...: seconds of imports, unused here
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(root: Path, files: dict[str, str]) -> Path:
    (root / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_tier_is_the_folder_below_tests() -> None:
    assert tier_of(Path("/repo/tests/unit/test_a.py")) == "unit"
    assert tier_of(Path("/repo/tests/e2e/test_a.py")) == "k8s"
    assert tier_of(Path("/repo/tests/pods/test_a.py")) == "pods"
    assert tier_of(Path("/repo/tests/faults/sub/test_a.py")) == "faults"
    assert tier_of(Path("/repo/tests/test_a.py")) is None
    assert tier_of(Path("/repo/tests/bench/test_a.py")) is None


def test_markers_select_by_folder_and_the_table_names_each_tier(tmp_path: Path) -> None:
    steps = tmp_path / "steps.tsv"
    steps.write_text("build: control plane\t606.0\n")
    root = tree(
        tmp_path,
        {
            "tests/unit/test_u.py": "def test_u():\n    assert True\n",
            "tests/integration/test_i.py": "def test_i():\n    assert True\n",
        },
    )
    only_unit = run_pytest(root, "-m", "unit", steps=str(steps))
    assert only_unit.returncode == 0, only_unit.stdout + only_unit.stderr
    assert "1 passed, 1 deselected" in only_unit.stdout
    table = only_unit.stdout.split("time per tier", 1)[1]
    assert "| build: control plane | | 10 min 06 s | |" in table
    assert "| unit | 1 |" in table and "integration" not in table

    both = run_pytest(root)
    assert both.returncode == 0 and "2 passed" in both.stdout, both.stdout
    assert "| integration (real servers, local files) | 1 |" in both.stdout


def test_a_unit_test_asking_for_a_server_is_refused_before_anything_starts(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "tests/unit/test_u.py": "def test_u(dask_scheduler):\n    assert dask_scheduler\n",
            "tests/integration/test_i.py": "def test_i(dask_scheduler):\n    assert dask_scheduler\n",
        },
    )
    refused = run_pytest(root, "-m", "unit")
    assert refused.returncode == 4, refused.stdout + refused.stderr  # a usage error
    assert "tests/unit/test_u.py::test_u uses dask_scheduler" in refused.stderr
    assert "test_i" not in refused.stderr  # the integration tier may use servers
    assert "a server fixture was set up" not in refused.stdout + refused.stderr
