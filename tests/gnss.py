"""The real GNSS files beside the repository, and resources that materialize them.

``rosalia-reference`` holds 24 RINEX 3.04 files of one receiver (15 minutes each at 5 s, 2025-001
00:00-06:00); ``invalid`` holds 36 malformed ones. They are read-only: tests copy them first.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from icechunk_operator.api import IcechunkStore, IngestBatch

REPO = Path(__file__).resolve().parents[1]
GNSS = REPO.parent / "shared" / "data" / "gnss"
REFERENCE = sorted((GNSS / "rosalia-reference").glob("*.rnx"))
INVALID = sorted((GNSS / "invalid").glob("*.25o"))
STATION_PATTERN = r"(?P<station>[A-Z0-9]{4})\d\d[A-Z]{3}_R_\d{11}_15M_05S_AA\.rnx$"
EPOCHS_PER_FILE = 180


def copy_files(files: Sequence[Path], folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index, path in enumerate(files):
        target = folder / (names[index] if names else path.name)
        shutil.copyfile(path, target)
        copies.append(target)
    return copies


def gnss_store(store_path: Path, archive: Path, name: str = "rosalia") -> IcechunkStore:
    return IcechunkStore.model_validate(
        {
            "kind": "IcechunkStore",
            "metadata": {"name": name},
            "spec": {
                "storage": {"url": store_path.as_uri()},
                "virtualChunkContainers": [{"urlPrefix": archive.resolve().as_uri() + "/"}],
            },
        }
    )


def gnss_batch(
    archive: Path,
    name: str = "day",
    *,
    pattern: str = STATION_PATTERN,
    template: str = "{station}/observations",
    glob: str = "**/*.rnx",
    **materialize: Any,
) -> IngestBatch:
    return IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": {"name": name},
            "spec": {
                "store": "rosalia",
                "source": {"prefix": archive.resolve().as_uri() + "/", "glob": glob},
                "grouping": {"pattern": pattern, "template": template},
                "materialize": {"reader": "rinex", **materialize},
            },
        }
    )


def reader_dataset(path: Path) -> xr.Dataset:
    """What canVODpy's reader gives for the file with its defaults (padded to the global
    signal list): the values the store must hold."""
    from canvod.readers import Rnxv3Obs

    return Rnxv3Obs(fpath=path).to_ds()


def assert_same_values(got: xr.Dataset, want: xr.Dataset, what: str) -> None:
    """Every variable equal (NaN equal to NaN) on the same epochs and signals."""
    assert list(got.sid.values) == list(want.sid.values), what
    np.testing.assert_array_equal(got.epoch.values, want.epoch.values, err_msg=what)
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=f"{what}: {name}")
        assert got[name].dtype == want[name].dtype, f"{what}: {name}"
