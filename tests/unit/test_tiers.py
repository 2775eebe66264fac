"""Tiers come from folders, a unit test that asks for a server is refused, and the time table
names each tier: pytest run on a small tree of its own (no server is started)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builds import builds_needed
from tests.cluster.control_plane import REPO
from tests.tiers import TIER_OF_FOLDER, tier_of

CONFTEST = """
import pytest

pytest_plugins = ["tests.tiers"]


@pytest.fixture(scope="session")
def dask_scheduler():
    raise AssertionError("a server fixture was set up")
"""


def run_pytest(
    root: Path, *args: str, steps: str = "", run_started: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ICECHUNK_OPERATOR_STEP_TIMES": steps}
    env["ICECHUNK_OPERATOR_RUN_STARTED"] = run_started
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


def test_tiers_run_in_the_tables_order_whatever_the_folders_names(tmp_path: Path) -> None:
    files = {
        f"tests/{folder}/test_{folder}.py": "def test_x():\n    assert True\n" for folder in TIER_OF_FOLDER
    }
    listed = run_pytest(tree(tmp_path, files), "--collect-only")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ran = [line.split("/")[1] for line in listed.stdout.splitlines() if line.endswith("::test_x")]
    assert ran == ["unit", "integration", "faults", "e2e", "pods"]


def test_the_builds_a_test_needs_come_from_its_fixtures_and_marks() -> None:
    fixtures = ["tmp_path", "real_cluster", "chart_tools", "gcs_server_process"]
    assert builds_needed(fixtures) == [
        "fake-gcs-server",
        "control plane",
        "helm and checkov",
        "node",
        "image",
    ]
    assert builds_needed(["tmp_path"], ["versitygw", "Azurite"]) == ["Azurite", "versitygw"]
    with pytest.raises(ValueError, match="unknown builds"):
        builds_needed([], ["kubelet"])


BUILD_CONFTEST = """
from pathlib import Path

import pytest

import tests.builds

pytest_plugins = ["tests.builds", "tests.tiers"]
tests.builds.SCRIPTS = Path(__file__).parent
tests.builds.BUILDS["control plane"] = ("slow-build.sh",)


@pytest.fixture(scope="session")
def control_plane():
    assert (Path(__file__).parent / "built").exists(), "the build was not waited for"
"""

# A build that takes longer than the test's timeout (a cold control plane takes minutes).
SLOW_BUILD = 'sleep 2\ntouch "$(dirname "$0")/built"\n'


def test_a_test_waits_for_its_build_outside_its_timeout_and_the_table_says_so(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(BUILD_CONFTEST)
    (tmp_path / "slow-build.sh").write_text(SLOW_BUILD)
    (tmp_path / "tests" / "e2e").mkdir(parents=True)
    (tmp_path / "tests" / "e2e" / "test_e.py").write_text("def test_e(control_plane):\n    assert True\n")
    run = run_pytest(tmp_path, "-p", "pytest_timeout", "--timeout=1", run_started="1")
    assert run.returncode == 0, run.stdout + run.stderr
    table = run.stdout.split("time per tier", 1)[1]
    waited = next(line for line in table.splitlines() if "tests waited for: control plane" in line)
    assert float(waited.split("|")[3].split()[0]) >= 2.0
    assert "| whole run (make test, wall) |" in table  # from ICECHUNK_OPERATOR_RUN_STARTED
