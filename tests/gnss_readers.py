"""A second processing version of the GNSS files, as a user's own reader would give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def snr_to_quarter_db(path: Path, **options: Any) -> xr.Dataset:
    """canVODpy's reader with SNR rounded to 0.25 dB (a changed algorithm, values slightly off)."""
    from canvod.readers import Rnxv3Obs

    dataset = Rnxv3Obs(fpath=path).to_ds(pad_global_sid=False, strip_fillval=False, **options)
    dataset["SNR"] = (np.round(dataset["SNR"] * 4) / 4).astype(dataset["SNR"].dtype)
    return dataset


def hostile(path: Path, **options: Any) -> xr.Dataset:
    """The quarter hour 00:15 hangs, 00:30 kills its process with SIGSEGV, the rest read."""
    import os
    import signal
    import time

    if "0015_15M" in path.name:
        time.sleep(3600)
    if "0030_15M" in path.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return snr_to_quarter_db(path, **options)


def first_epoch_only(path: Path, **options: Any) -> xr.Dataset:
    """One epoch per file: nothing in the data says the sampling interval."""
    return snr_to_quarter_db(path, **options).isel(epoch=slice(0, 1))
