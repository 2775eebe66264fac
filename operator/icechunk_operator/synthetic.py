"""A synthetic ISMIP6-shaped archive, quirks included.

The demo, the tests and the benchmark all need an archive that looks and misbehaves like the
real ISMIP6 projections (``Projection-AIS/{institution}/{model}/{experiment}/{variable}_AIS_...nc``)
without downloading 1.1 TB. Every quirk listed in DESIGN.md is reproduced on purpose, on a
deterministic subset of models, so that tests can name the file that carries each one.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILL_VALUE = -9e33
GRID_HALF_WIDTH_M = 3_040_000.0

#: (name, kind): kind is "state" (stamped Jan 1), "flux" (stamped Jul 1); scalars have no grid.
GRID_VARIABLES: tuple[tuple[str, str], ...] = (
    ("lithk", "state"),
    ("orog", "state"),
    ("topg", "state"),
    ("hfgeoubed", "state"),
    ("acabf", "flux"),
    ("libmassbfgr", "flux"),
    ("libmassbffl", "flux"),
    ("dlithkdt", "flux"),
    ("xvelsurf", "state"),
    ("yvelsurf", "state"),
    ("zvelsurf", "state"),
    ("xvelbase", "state"),
    ("yvelbase", "state"),
    ("zvelbase", "state"),
    ("xvelmean", "state"),
    ("yvelmean", "state"),
    ("litemptop", "state"),
    ("litempbotgr", "state"),
    ("litempbotfl", "state"),
    ("strbasemag", "state"),
    ("licalvf", "flux"),
    ("lifmassbf", "flux"),
    ("ligroundf", "flux"),
    ("sftgif", "state"),
    ("sftgrf", "state"),
    ("sftflf", "state"),
)
SCALAR_VARIABLES: tuple[tuple[str, str], ...] = (
    ("lim", "state"),
    ("limnsw", "state"),
    ("iareagr", "state"),
    ("iareafl", "state"),
    ("tendacabf", "flux"),
    ("tendlibmassbf", "flux"),
    ("tendlibmassbffl", "flux"),
    ("tendlicalvf", "flux"),
    ("tendlifmassbf", "flux"),
    ("tendligroundf", "flux"),
    ("tendlithk", "flux"),
)
ALL_VARIABLES = GRID_VARIABLES + SCALAR_VARIABLES
#: Small archives take variables in this order: grid state, scalar, grid flux, ... so that even
#: three variables per experiment cover 3-D and 1-D arrays, Jan 1 and Jul 1 stamps.
SMALL_ARCHIVE_ORDER = (
    "lithk",
    "lim",
    "acabf",
    "orog",
    "tendacabf",
    "topg",
    "iareagr",
    "libmassbfgr",
    "xvelsurf",
    "limnsw",
)

#: Time-encoding quirks, keyed by name; "none" is a well-formed file.
TIME_QUIRKS = ("none", "unit_typo", "dd_mm_yyyy", "day_zero", "no_calendar")


@dataclass(frozen=True)
class ModelProfile:
    """How one (institution, model) writes its files: format and quirks."""

    institution: str
    model: str
    file_format: str  # NETCDF4 | NETCDF3_CLASSIC | NETCDF3_64BIT_OFFSET
    time_quirk: str
    has_xy: bool


@dataclass(frozen=True)
class SyntheticFile:
    """One file of the archive, with what a test needs to know about it."""

    path: Path
    institution: str
    model: str
    experiment: str
    variable: str
    profile: ModelProfile
    defect: str = "none"  # none | zero_byte | no_data | broken_time | truncated

    @property
    def group(self) -> str:
        return f"{self.institution}_{self.model}/{self.experiment}/{self.variable}"


@dataclass
class ArchiveLayout:
    """The plan of an archive: which files exist and which carry a defect."""

    root: Path
    files: list[SyntheticFile] = field(default_factory=list)

    def by_defect(self, defect: str) -> list[SyntheticFile]:
        return [f for f in self.files if f.defect == defect]


def grid_axis(resolution_km: int) -> np.ndarray:
    """The ISMIP6 polar stereographic axis: ±3,040 km at the given resolution."""
    count = int(2 * GRID_HALF_WIDTH_M / (resolution_km * 1000)) + 1
    return np.linspace(-GRID_HALF_WIDTH_M, GRID_HALF_WIDTH_M, count)


def model_profiles(institutions: int, models: int) -> list[ModelProfile]:
    """Spread formats and quirks over the models so that each appears at least once."""
    formats = ("NETCDF4", "NETCDF4", "NETCDF3_CLASSIC", "NETCDF4", "NETCDF3_64BIT_OFFSET")
    profiles = []
    for index in range(models):
        institution = f"INST{index % institutions:02d}"
        profiles.append(
            ModelProfile(
                institution=institution,
                model=f"MODEL{index:02d}",
                file_format=formats[index % len(formats)],
                time_quirk=TIME_QUIRKS[index % len(TIME_QUIRKS)],
                has_xy=index % 4 != 3,
            )
        )
    return profiles


def plan_archive(
    root: Path,
    *,
    institutions: int = 3,
    models: int = 5,
    experiments: int = 3,
    variables: int = 4,
    total_files: int | None = None,
    defects: bool = True,
    seed: int = 0,
) -> ArchiveLayout:
    """Decide the archive's files without writing any.

    With ``total_files`` the variable subsets are drawn at random so the archive holds exactly
    that many files (the ISMIP6 shape: 10,034 files over 442 model/experiment batches).
    """
    rng = random.Random(seed)
    profiles = model_profiles(institutions, models)
    combos = [(p, f"exp{e:02d}") for p, e in itertools.product(profiles, range(experiments))]
    names = [name for name, _ in ALL_VARIABLES]
    small = list(SMALL_ARCHIVE_ORDER) + [n for n in names if n not in SMALL_ARCHIVE_ORDER]
    if total_files is None:
        per_combo = [min(variables, len(names))] * len(combos)
    else:
        base, extra = divmod(total_files, len(combos))
        if base >= len(names):
            raise ValueError("total_files needs more combos or more variables")
        per_combo = [base + (1 if i < extra else 0) for i in range(len(combos))]
    layout = ArchiveLayout(root=root)
    for (profile, experiment), count in zip(combos, per_combo, strict=True):
        chosen = small[:count] if total_files is None else sorted(rng.sample(names, count))
        for variable in chosen:
            relative = (
                f"Projection-AIS/{profile.institution}/{profile.model}/{experiment}/"
                f"{variable}_AIS_{profile.institution}_{profile.model}_{experiment}.nc"
            )
            layout.files.append(
                SyntheticFile(
                    root / relative, profile.institution, profile.model, experiment, variable, profile
                )
            )
    if defects:
        _assign_defects(layout)
    return layout


def _assign_defects(layout: ArchiveLayout) -> None:
    """Give four files (spread over the archive) one defect each."""
    kinds = ("zero_byte", "no_data", "broken_time", "truncated")
    step = max(1, len(layout.files) // (len(kinds) + 1))
    for number, kind in enumerate(kinds, start=1):
        index = min(number * step, len(layout.files) - 1)
        original = layout.files[index]
        layout.files[index] = SyntheticFile(
            original.path,
            original.institution,
            original.model,
            original.experiment,
            original.variable,
            original.profile,
            kind,
        )


def _time_encoding(quirk: str) -> tuple[dict[str, str], str]:
    """Attributes of the time variable for a quirk, and the reference date they mean."""
    if quirk == "unit_typo":
        return {"unit": "days since 2015-01-01", "calendar": "365_day"}, "2015-01-01"
    if quirk == "dd_mm_yyyy":
        return {"units": "days since 01-01-2015", "calendar": "365_day"}, "2015-01-01"
    if quirk == "day_zero":
        return {"units": "days since 2015-1-0", "calendar": "365_day"}, "2015-01-01"
    if quirk == "no_calendar":
        return {"units": "days since 2015-01-01"}, "2015-01-01"
    return {"units": "days since 2015-01-01", "calendar": "365_day"}, "2015-01-01"


def write_archive(layout: ArchiveLayout, *, resolution_km: int = 32, times: int = 3) -> None:
    """Write every file of the layout (NetCDF4 contiguous, or NetCDF3) with its quirks."""
    import netCDF4  # noqa: F401  (imported here: only writers of archives need it)

    axis = grid_axis(resolution_km)
    kinds = dict(ALL_VARIABLES)
    for number, item in enumerate(layout.files):
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if item.defect == "zero_byte":
            item.path.write_bytes(b"")
            continue
        _write_file(item, axis, kinds[item.variable], times, seed=number)
        if item.defect == "truncated":
            data = item.path.read_bytes()
            item.path.write_bytes(data[: max(64, len(data) // 3)])


def _write_file(item: SyntheticFile, axis: np.ndarray, kind: str, times: int, seed: int) -> None:
    import netCDF4

    profile = item.profile
    with netCDF4.Dataset(item.path, "w", format=profile.file_format) as ds:  # type: ignore[arg-type]
        ds.setncattr("Conventions", "CF-1.7")
        ds.setncattr("institution", item.institution)
        ds.setncattr("model", item.model)
        ds.setncattr("experiment", item.experiment)
        ds.createDimension("time", times)
        is_grid = item.variable in dict(GRID_VARIABLES)
        if is_grid:
            ds.createDimension("x", axis.size)
            ds.createDimension("y", axis.size)
            if profile.has_xy:
                for name in ("x", "y"):
                    coord = ds.createVariable(name, "f8", (name,))
                    coord[:] = axis
                    coord.setncattr("units", "m")
                    coord.setncattr("standard_name", f"projection_{name}_coordinate")
        time = ds.createVariable("time", "f8", ("time",))
        attrs, _ = _time_encoding(profile.time_quirk)
        if item.defect == "broken_time":
            attrs = {"units": "fortnights after the big thaw", "calendar": "365_day"}
        for key, value in attrs.items():
            time.setncattr(key, value)
        offset = 0.0 if kind == "state" else 181.0
        time[:] = offset + 365.0 * np.arange(times)
        if item.defect == "no_data":
            return
        dims = ("time", "y", "x") if is_grid else ("time",)
        var = ds.createVariable(item.variable, "f4", dims, fill_value=np.float32(FILL_VALUE))
        var.setncattr("units", "1")
        var.setncattr("standard_name", f"synthetic_{item.variable}")
        shape = (times, axis.size, axis.size) if is_grid else (times,)
        values = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 997) + seed % 101
        if is_grid:
            values[:, 0, :] = FILL_VALUE  # the ocean edge is masked, as in ISMIP6
        var[:] = values
