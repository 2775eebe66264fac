"""Processing versions side by side: the same group at two tags, branches or snapshots, compared
variable by variable (how many values differ, by how much on average and at most).

The two versions are read in blocks along the first dimension, one block of each at a time, so a
comparison of years of observations holds two blocks in memory, not two stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class VariableDifference:
    name: str
    compared: int  # values present in both versions (the common extent)
    differing: int  # values not equal (NaN equals NaN)
    mean_abs: float | None  # over the differing values both versions have (not NaN)
    max_abs: float | None
    only_in_a: int  # values beyond the other version's extent
    only_in_b: int


def open_version(repo: Any, ref: str) -> Any:
    """A read-only session of ``ref``: a tag, a branch or a snapshot id, in that order."""
    if ref in set(repo.list_tags()):
        return repo.readonly_session(tag=ref)
    if ref in set(repo.list_branches()):
        return repo.readonly_session(branch=ref)
    try:
        return repo.readonly_session(snapshot_id=ref)
    except Exception as error:
        raise ValueError(f"{ref!r} is neither a tag, a branch nor a snapshot of the store") from error


def compare_versions(repo: Any, group: str, a: str, b: str) -> list[VariableDifference]:
    import zarr

    first = zarr.open_group(open_version(repo, a).store, path=group, mode="r")
    second = zarr.open_group(open_version(repo, b).store, path=group, mode="r")
    names = sorted(
        name for name, member in first.members() if isinstance(member, zarr.Array) and name in second
    )
    if not names:
        raise ValueError(f"group {group!r} has no array in both {a!r} and {b!r}")
    return [_compare(name, first[name], second[name]) for name in names]


def _compare(name: str, a: Any, b: Any) -> VariableDifference:
    if a.ndim != b.ndim or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} differ beyond the first dimension")
    common = min(a.shape[0], b.shape[0]) if a.ndim else 0
    per_row = int(np.prod(a.shape[1:], dtype=np.int64)) if a.ndim else 1
    rows = max(1, BLOCK_BYTES // max(1, per_row * a.dtype.itemsize))
    numeric = a.dtype.kind in "fiub" and b.dtype.kind in "fiub"
    differing, total_abs, largest, counted = 0, 0.0, None, 0
    blocks: list[tuple[slice, ...]] = (
        [()] if not a.ndim else [(slice(s, min(s + rows, common)),) for s in range(0, common, rows)]
    )
    for region in blocks:
        x, y = np.asarray(a[region]), np.asarray(b[region])
        same = x == y
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            same |= np.isnan(x) & np.isnan(y)
        differing += int((~same).sum())
        if numeric:
            delta = np.abs(x.astype(np.float64) - y.astype(np.float64))[~same]
            delta = delta[~np.isnan(delta)]
            if delta.size:
                total_abs += float(delta.sum())
                counted += int(delta.size)
                peak = float(delta.max())
                largest = peak if largest is None else max(largest, peak)
    compared = common * per_row if a.ndim else 1
    return VariableDifference(
        name,
        compared,
        differing,
        total_abs / counted if counted else (0.0 if numeric else None),
        largest if largest is not None else (0.0 if numeric else None),
        (a.shape[0] - common) * per_row if a.ndim else 0,
        (b.shape[0] - common) * per_row if b.ndim else 0,
    )
