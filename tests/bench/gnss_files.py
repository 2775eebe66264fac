"""Days of RINEX files for the GNSS benchmark, made from the 24 real files by shifting their times.

The real files cover 2025-001 00:00-06:00 of one receiver (15 minutes each at 5 s). A file for
another quarter hour is a real file with every time in it moved by a whole number of hours: the
epoch lines (``> yyyy mm dd hh mm ss.sssssss``, RINEX 3 fixed columns), the header's ``TIME OF
FIRST OBS`` and ``TIME OF LAST OBS`` lines and the name's ``yyyydddhhmm``. Every other byte is the
real file's, so the reader parses the same satellites, signals and values; only the times differ
(the satellites are not where they would be at that hour, which no part of the ingest looks at).
Day ``d``, quarter ``6h * k + q`` is real file ``q`` moved by ``(d - 1) days + 6k hours``.

Each file's modification time is set to its last epoch's end, so a regenerated file is the same
file to the ledger (a local file's identity is its size and mtime) and a cached store stays valid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.gnss import REFERENCE

YEAR = 2025
FILE_SPAN = timedelta(minutes=15)
_NAME = re.compile(r"^(?P<head>.+_R_)(?P<stamp>\d{11})(?P<tail>_15M_05S_AA\.rnx)$")
_FIRST_OBS = b"TIME OF FIRST OBS"
_LAST_OBS = b"TIME OF LAST OBS"


def _epoch_line(line: bytes, offset: timedelta) -> bytes:
    """``> 2025 01 01 00 00  0.0000000  0 56``: year, month, day, hour, minute in columns 2-17;
    the seconds (and everything after) are kept, the offset being whole minutes."""
    when = datetime(int(line[2:6]), int(line[7:9]), int(line[10:12]), int(line[13:15]), int(line[16:18]))
    assert b"> " + when.strftime("%Y %m %d %H %M").encode() == line[:18], (
        f"not a RINEX 3 epoch line: {line!r}"
    )
    return b"> " + (when + offset).strftime("%Y %m %d %H %M").encode() + line[18:]


def _header_time(line: bytes, offset: timedelta) -> bytes:
    """``  2025     1     1     0     0    0.0000000     GPS``: 5I6, then the seconds (kept)."""
    fields = [int(line[i : i + 6]) for i in range(0, 30, 6)]
    assert b"".join(b"%6d" % v for v in fields) == line[:30], f"not a RINEX time line: {line!r}"
    moved = datetime(*fields) + offset  # type: ignore[misc]
    values = (moved.year, moved.month, moved.day, moved.hour, moved.minute)
    return b"".join(b"%6d" % v for v in values) + line[30:]


def shift_rinex(data: bytes, offset: timedelta) -> bytes:
    """The file's bytes with every time moved by ``offset`` (whole minutes)."""
    if offset % timedelta(minutes=1):
        raise ValueError(f"offset {offset} is not whole minutes")
    lines = data.splitlines(keepends=True)
    header = True
    for number, line in enumerate(lines):
        if header:
            label = line[60:].rstrip()
            if label in (_FIRST_OBS, _LAST_OBS):
                lines[number] = _header_time(line, offset)
            elif label == b"END OF HEADER":
                header = False
        elif line.startswith(b"> "):
            lines[number] = _epoch_line(line, offset)
    return b"".join(lines)


def start_of(name: str) -> datetime:
    """The first epoch a long RINEX name says (``..._R_2025001HHMM_...``), UTC."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a long RINEX 3 name of a 15-minute file")
    return datetime.strptime(match["stamp"], "%Y%j%H%M").replace(tzinfo=UTC)


def shifted_name(name: str, offset: timedelta) -> str:
    match = _NAME.match(name)
    assert match is not None
    return match["head"] + (start_of(name) + offset).strftime("%Y%j%H%M") + match["tail"]


def day_folder(root: Path, day: int) -> Path:
    return root / f"{YEAR}-{day:03d}"


def day_sources(day: int) -> Iterator[tuple[Path, timedelta]]:
    """(real file, offset) for the 96 quarter hours of day ``day`` (1 = 2025-001)."""
    for quarter in range(4):
        for path in REFERENCE:
            yield path, timedelta(days=day - 1, hours=6 * quarter)


def write_day(root: Path, day: int, only: str | None = None) -> Path:
    """The day's 96 files (or the one whose name is ``only``) under ``root/2025-ddd``, once."""
    folder = day_folder(root, day)
    marker = folder / (f".complete-{only.removesuffix('.rnx')}" if only else ".complete")
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for path, offset in day_sources(day):
        name = shifted_name(path.name, offset)
        if only is not None and name != only:
            continue
        target = folder / name
        partial = target.with_suffix(".partial")
        partial.write_bytes(shift_rinex(path.read_bytes(), offset))
        end = (start_of(name) + FILE_SPAN).timestamp()
        os.utime(partial, (end, end))
        partial.rename(target)
    marker.touch()
    return folder


def check_shift(root: Path) -> None:
    """The bench's own check: a shifted file parses with canVODpy's reader, and its epochs are
    the real file's moved by exactly the offset, values untouched."""
    import numpy as np
    from canvod.readers import Rnxv3Obs

    real = REFERENCE[5]
    offset = timedelta(days=1, hours=18)
    day = 2
    folder = write_day(root, day)
    shifted = folder / shifted_name(real.name, offset)
    want = Rnxv3Obs(fpath=real).to_ds(pad_global_sid=False)
    got = Rnxv3Obs(fpath=shifted).to_ds(pad_global_sid=False)
    moved = want.epoch.values + np.timedelta64(int(offset.total_seconds()), "s")
    assert (got.epoch.values == moved).all(), f"{shifted.name}: epochs not shifted by {offset}"
    assert list(got.sid.values) == list(want.sid.values), f"{shifted.name}: other signals"
    np.testing.assert_array_equal(got["SNR"].values, want["SNR"].values, err_msg=shifted.name)
    assert len(shifted.read_bytes()) == len(real.read_bytes()), f"{shifted.name}: size changed"
