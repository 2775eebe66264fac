"""INJECTED FAULTS, for tests only: ``virtualization.fixes`` functions that misbehave on the files
that ask for it (a global attribute ``injected_fault``), and pass every other file through.

They run where a fix runs, in the worker's parser process, so they stand for what a hostile
file can do to a parser that no real file here reliably does: hang in a sleep (as a parse stuck
in C code waits), spin in a pure-Python loop, die of SIGSEGV (a crash in a C library), or
allocate without bound.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import xarray as xr


def misbehave(ds: xr.Dataset) -> xr.Dataset:
    fault = ds.attrs.get("injected_fault")
    if fault == "hang":
        while True:
            time.sleep(3600)
    if fault == "spin":
        count = 0
        while True:  # holds the GIL, as a loop in the parser's Python would
            count += 1
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)  # injected fault: a crash in a C library
    if fault == "allocate":
        ds.attrs["ballast"] = float(np.ones(1 << 29).sum())  # 4 GiB of float64, touched
    return ds
