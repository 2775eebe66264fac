"""Readers: a file on local disk in, an xarray.Dataset along the append dimension out.

The built-in ``rinex`` reader is canVODpy's own (canvod-readers), so a store holds exactly the
values the field's tools read. It is asked for the signals a file has (``pad_global_sid=False``,
about a quarter of the global list), which keeps what a worker holds and ships small; the store's
``sid`` axis is the reader's global signal list, taken once from :func:`rinex_axes`, so it never
has to grow when a new satellite or signal appears.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog.testing
import xarray as xr

ReadFunction = Callable[[Path, Mapping[str, Any]], xr.Dataset]
AxesFunction = Callable[[xr.Dataset, Mapping[str, Any], str], xr.Dataset]


class UnreadableFileError(ValueError):
    """The reader refused the file (malformed, unsupported version, no epochs)."""


class RejectedEpochsError(ValueError):
    """The reader read the file but dropped malformed epochs: a partial file is not ingested
    unless the batch accepts the reader's repairs (then ``dataset`` is what it could read)."""

    def __init__(self, message: str, dataset: xr.Dataset | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset


@dataclass(frozen=True)
class Reader:
    """``read`` gives one file's dataset; ``axes`` gives, from a first dataset, the store's full
    coordinates with zero steps along the append dimension (labels a later file lacks are filled
    with missing values; labels outside the axes are dropped when ``drops_unknown_labels``, the
    reader's own rule, and fail the file otherwise)."""

    name: str
    read: ReadFunction
    axes: AxesFunction
    drops_unknown_labels: bool = False


def _first_line(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.readline(200).decode("ascii", errors="replace")


def read_rinex(path: Path, options: Mapping[str, Any]) -> xr.Dataset:
    """RINEX 3.0x through ``Rnxv3Obs``, 2.1x through ``Rnxv2Obs`` (the version is the header's
    first field); the signals present only. The reader's own errors pass through: the caller
    turns them into failure records."""
    from canvod.readers import Rnxv2Obs, Rnxv3Obs

    header = _first_line(path)
    version = header[:9].strip()
    if "OBSERVATION DATA" not in header:
        shown = header[:60].rstrip()
        what = (
            f"its first line is {shown!r}" if shown.isprintable() and shown else "its first line is not text"
        )
        raise UnreadableFileError(f"not a RINEX observation file ({what})")
    if version.startswith("3."):
        _check_v3_epoch_flags(path)
        reader: Any = Rnxv3Obs(fpath=path)
    elif version.startswith("2."):
        if _has_v3_epoch_lines(path):
            raise UnreadableFileError(
                f"the header says RINEX {version} but the records are RINEX 3 ('>' epoch lines)"
            )
        reader = Rnxv2Obs(fpath=path)
    else:
        raise UnreadableFileError(f"RINEX version {version or '(none)'!r} is not 2.x or 3.x")
    kwargs = {"strip_fillval": False} | {key: value for key, value in options.items() if key != "keep_sids"}
    # Fill values stay on the variables: padding to the global list needs them (-1 for LLI/SSI).
    with structlog.testing.capture_logs() as events:
        dataset: xr.Dataset = reader.to_ds(pad_global_sid=False, **kwargs)
    rejected = [e for e in events if e.get("event") == "rinex_epochs_rejected"]
    if rejected:
        count = sum(int(e.get("n_rejected", 0)) for e in rejected)
        lines = [line for e in rejected for line in e.get("first_lines", [])][:5]
        raise RejectedEpochsError(
            f"the reader dropped {count} malformed epochs (lines {', '.join(map(str, lines))}) and "
            f"kept {dataset.sizes.get('epoch', 0)}; fix the file, or set materialize.acceptRepairs "
            "to keep the epochs it could read",
            dataset,
        )
    return dataset


#: RINEX 3 epoch flags: 0 OK, 1 power failure, 2-5 events, 6 cycle slips.
_EPOCH_FLAGS = frozenset("0123456")


def _epoch_lines(path: Path) -> list[tuple[int, str]]:
    with path.open("rb") as handle:
        return [
            (number, line.decode("ascii", errors="replace"))
            for number, line in enumerate(handle, start=1)
            if line.startswith(b"> ")
        ]


def _check_v3_epoch_flags(path: Path) -> None:
    """canvod-readers skips an epoch whose flag is not a RINEX flag without saying so: the file
    would lose that epoch silently. It fails here instead, naming the line."""
    for number, line in _epoch_lines(path):
        flag = line[31:32]
        if flag not in _EPOCH_FLAGS:
            raise UnreadableFileError(f"line {number}: epoch flag {flag!r} is not a RINEX epoch flag (0-6)")


def _has_v3_epoch_lines(path: Path) -> bool:
    return bool(_epoch_lines(path))


def rinex_axes(sample: xr.Dataset, options: Mapping[str, Any], dimension: str) -> xr.Dataset:
    """The global signal list (or ``keep_sids``), with every per-signal coordinate, no epochs."""
    from canvod.readers.preprocessing import pad_to_global_sid

    keep = options.get("keep_sids")
    empty = sample.isel({dimension: slice(0, 0)})
    padded: xr.Dataset = pad_to_global_sid(empty, keep_sids=list(keep) if keep else None)
    return padded


def sample_axes(sample: xr.Dataset, options: Mapping[str, Any], dimension: str) -> xr.Dataset:
    """For a reader of our users: the first file's labels are the store's."""
    return sample.isel({dimension: slice(0, 0)})


BUILTIN_READERS: dict[str, Reader] = {
    "rinex": Reader("rinex", read_rinex, rinex_axes, drops_unknown_labels=True),
}


def load_reader(name: str) -> Reader:
    """A built-in reader, or ``package.module:function`` (path -> Dataset) of the user's image."""
    if name in BUILTIN_READERS:
        return BUILTIN_READERS[name]
    module_name, _, function_name = name.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)

    def read(path: Path, options: Mapping[str, Any]) -> xr.Dataset:
        dataset = function(path, **options)
        if not isinstance(dataset, xr.Dataset):
            raise TypeError(f"reader {name} returned {type(dataset).__name__}, not an xarray.Dataset")
        return dataset

    return Reader(name, read, sample_axes)
