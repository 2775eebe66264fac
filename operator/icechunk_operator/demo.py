"""The README's first command: a synthetic ISMIP6-like archive, ingested, inspected.

It writes the archive and a ready-to-edit ``ismip6.yaml`` (an IcechunkStore and an IngestBatch)
into one folder, runs that YAML exactly as ``icechunk-operator run -f`` would, prints the store's
tree and opens one group with xarray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ISMIP6_PATTERN = (
    r"Projection-AIS/(?P<institution>[^/]+)/(?P<model>[^/]+)/(?P<experiment>[^/]+)/"
    r"(?P<variable>[^_/]+)_AIS_[^/]+\.nc$"
)
ISMIP6_TEMPLATE = "{institution}_{model}/{experiment}/{variable}"


def demo_resources(archive: Path, store: Path, workers: int = 2) -> list[dict[str, Any]]:
    archive_url = archive.resolve().as_uri() + "/"
    return [
        {
            "apiVersion": "icechunkoperator.io/v1alpha1",
            "kind": "IcechunkStore",
            "metadata": {"name": "ismip6-demo"},
            "spec": {
                "storage": {"url": store.resolve().as_uri()},
                "virtualChunkContainers": [{"urlPrefix": archive_url}],
                "config": {"compression": {"level": 3}},
            },
        },
        {
            "apiVersion": "icechunkoperator.io/v1alpha1",
            "kind": "IngestBatch",
            "metadata": {"name": "projection-ais"},
            "spec": {
                "store": "ismip6-demo",
                "source": {"prefix": archive_url + "Projection-AIS/", "glob": "**/*.nc"},
                "grouping": {"pattern": ISMIP6_PATTERN, "template": ISMIP6_TEMPLATE},
                "virtualization": {"fixes": ["ismip6"], "split": {"dimension": "time"}},
                "execution": {"workers": workers},
                "commit": {"everyGroups": 100},
                "failures": {"maxFailedFraction": 0.1},
            },
        },
    ]


def write_demo_inputs(folder: Path, *, files_per_combo: int = 4, workers: int = 2) -> Path:
    from icechunk_operator.synthetic import plan_archive, write_archive

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "archive"
    if not archive.exists():
        layout = plan_archive(archive, institutions=3, models=5, experiments=3, variables=files_per_combo)
        write_archive(layout)
    spec_path = folder / "ismip6.yaml"
    spec_path.write_text(
        yaml.safe_dump_all(demo_resources(archive, folder / "store", workers), sort_keys=False)
    )
    return spec_path


def describe_store(store_spec: Any, max_lines: int = 25) -> str:
    """The store's group tree (first lines) and one group opened with xarray."""
    import xarray as xr
    import zarr

    from icechunk_operator.engine.storage import open_repository

    repo = open_repository(store_spec, create=False)
    session = repo.readonly_session(branch=store_spec.branch)
    root = zarr.open_group(session.store, mode="r", zarr_format=3)
    lines: list[str] = []
    first_leaf = None
    for path, node in sorted(root.members(max_depth=None), key=lambda item: item[0]):
        if path.startswith("_icechunk_operator"):
            continue
        depth = path.count("/")
        if isinstance(node, zarr.Group) and depth == 2 and first_leaf is None:
            first_leaf = path
        if len(lines) < max_lines:
            kind = "group" if isinstance(node, zarr.Group) else f"array {node.shape} {node.dtype}"
            lines.append(f"{'  ' * depth}{path.rsplit('/', 1)[-1]}  ({kind})")
    total_groups = sum(
        1 for p, n in root.members(max_depth=None) if isinstance(n, zarr.Group) and p.count("/") == 2
    )
    lines.append(f"... {total_groups} datasets in the store")
    if first_leaf is not None:
        ds = xr.open_zarr(session.store, group=first_leaf, consolidated=False, zarr_format=3)
        lines.append(f"\nxr.open_zarr(store, group={first_leaf!r}):\n{ds}")
    return "\n".join(lines)
