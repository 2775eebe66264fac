"""The image's recipe: non-root, slim Python 3.14, pinned by a lock that matches what the tests ran.

No container engine runs here, so the image itself is built by `make image` elsewhere; these
checks keep its inputs honest.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if match:
            found[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return found


def test_dockerfile_runs_as_non_root_on_slim_python_314() -> None:
    text = (REPO / "worker_image" / "Dockerfile").read_text()
    # The base image is a build argument (defaulting to slim Python 3.14) used by both stages.
    assert "ARG BASE_IMAGE=python:3.14-slim" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2
    assert "USER 10001:10001" in text
    assert "requirements.lock" in text and "--no-deps" in text


def test_image_lock_is_within_the_development_lock() -> None:
    image, dev = pins(REPO / "worker_image" / "requirements.lock"), pins(REPO / "requirements-dev.lock")
    assert {"icechunk", "virtualizarr", "kopf", "kubernetes", "dask-kubernetes"} <= set(image)
    different = {
        name: (version, dev.get(name)) for name, version in image.items() if dev.get(name) != version
    }
    assert not different, f"run `make image-lock`: {different}"
