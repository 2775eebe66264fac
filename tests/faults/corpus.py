"""The hostile input corpus: real NetCDF3, NetCDF4 and HDF5 files written at test time, and
hundreds of deterministic mutations of them (a fixed seed), each with its ``kind``.

Mutations: bit flips at random offsets (mostly in the metadata, where they hurt), truncation at
every structure boundary (found by parsing the format: tests/faults/formats.py), zeroed and
lying superblocks, lying dimension sizes and offsets (HDF5 checksums recomputed, so the library
reads the lie instead of refusing a bad checksum), huge claimed arrays (dimensions of 2**40),
cyclic HDF5 links (made with h5py, and by patching a link, a continuation or a B-tree node to
point back at itself), attribute values JSON cannot hold or no unpacking survives (NaN, ±Infinity,
the largest finite value, subnormals and -0.0 patched into every float attribute of a NetCDF3
header; h5py files with such values on ``scale_factor``, ``missing_value``, ``_FillValue`` and
others), and garbage. The unmutated originals are in the corpus too: they must be
ingested.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.faults.formats import (
    Field,
    Hdf5Layout,
    Layout,
    data_offsets,
    hdf5_layout,
    netcdf3_layout,
    object_header_addresses,
    patched,
)

SEED = 20260512
HUGE = 1 << 40


@dataclass(frozen=True)
class HostileFile:
    """One file for the harness: ``kind`` names the fault (or ``original``), ``detail`` what
    exactly was done, for the message of a failed check."""

    kind: str
    path: Path
    base: str = ""
    detail: str = ""


# -- the originals ------------------------------------------------------------------------------


def _netcdf(path: Path, file_format: str) -> None:
    import netCDF4

    with netCDF4.Dataset(path, "w", format=file_format) as ds:  # type: ignore[arg-type]
        ds.setncattr("title", "hostile corpus original")
        ds.setncattr("version", np.int32(3))
        ds.setncattr("valid_range", np.array([-50.0, 50.0]))
        ds.createDimension("time", None)
        ds.createDimension("y", 5)
        ds.createDimension("x", 4)
        time = ds.createVariable("time", "f8", ("time",))
        time.setncattr("units", "days since 2000-01-01")
        time.setncattr("calendar", "standard")
        time[:] = [0.0, 1.0, 2.0]
        for name, size in (("x", 4), ("y", 5)):
            coord = ds.createVariable(name, "f8", (name,))
            coord.setncattr("units", "m")
            coord[:] = np.arange(size) * 1000.0
        dims, fill = ("time", "y", "x"), np.float32(-9e33)
        if file_format.startswith("NETCDF4"):  # chunked and compressed
            temp = ds.createVariable(
                "temp", "f4", dims, fill_value=fill, zlib=True, shuffle=True, chunksizes=(1, 5, 4)
            )
        else:
            temp = ds.createVariable("temp", "f4", dims, fill_value=fill)
        temp.setncattr("units", "K")
        temp.setncattr("long_name", "temperature")
        temp[:] = np.arange(60, dtype=np.float32).reshape(3, 5, 4)
        count = ds.createVariable("count", "i4", ("time",))
        count.setncattr("valid_max", np.float64(100.0))
        count[:] = [1, 2, 3]
        mask = ds.createVariable("mask", "i2", ("y", "x"))
        mask.set_auto_maskandscale(False)
        mask.setncattr("scale_factor", np.float32(0.5))  # packed: unpacked by a codec in the store
        mask.setncattr("add_offset", np.float32(1.0))
        mask[:] = np.ones((5, 4), dtype=np.int16)
        if file_format == "NETCDF4":
            sub = ds.createGroup("sub")
            inner = sub.createVariable("inner", "i4", ("x",), zlib=True)
            inner[:] = [1, 2, 3, 4]
            inner.setncattr("note", "a variable in a subgroup")


def _hdf5(path: Path, libver: str) -> None:
    """A plain HDF5 file (h5py, no netCDF library), with dimension scales as netCDF4 has them."""
    import h5py

    with h5py.File(path, "w", libver=libver) as f:
        f.attrs["title"] = "hostile corpus original"
        f.attrs["levels"] = np.arange(3)
        if libver == "latest":  # enough attributes and links for dense storage (fractal heaps)
            for index in range(12):
                f.attrs[f"a{index:02d}"] = index
        axes = {"time": np.arange(3.0), "y": np.arange(5.0), "x": np.arange(4.0), "n": np.arange(400.0)}
        axes["m"] = np.arange(40.0)
        scales = {}
        for name, values in axes.items():
            scales[name] = f.create_dataset(name, data=values)
            scales[name].make_scale(name)
        scales["time"].attrs["units"] = "days since 2000-01-01"
        temp = f.create_dataset("temp", data=np.arange(60, dtype="f4").reshape(3, 5, 4))
        temp.attrs["units"] = "K"
        for index, name in enumerate(("time", "y", "x")):
            temp.dims[index].attach_scale(scales[name])
        packed = f.create_dataset("packed", data=np.arange(400.0), chunks=(50,), compression="gzip")
        packed.dims[0].attach_scale(scales["n"])
        plain = f.create_dataset("plain", data=np.arange(40, dtype="i4"), chunks=(10,))  # uncompressed
        plain.dims[0].attach_scale(scales["m"])
        group = f.create_group("g")
        group.create_dataset("values", data=np.arange(10, dtype="i4"))
        if libver == "latest":
            for index in range(12):
                group.create_dataset(f"d{index:02d}", data=np.arange(3))


ORIGINALS: dict[str, Callable[[Path], None]] = {
    "nc3-classic": lambda p: _netcdf(p, "NETCDF3_CLASSIC"),
    "nc3-64bit": lambda p: _netcdf(p, "NETCDF3_64BIT_OFFSET"),
    "nc4-groups": lambda p: _netcdf(p, "NETCDF4"),
    "nc4-classic": lambda p: _netcdf(p, "NETCDF4_CLASSIC"),
    "h5-earliest": lambda p: _hdf5(p, "earliest"),
    "h5-latest": lambda p: _hdf5(p, "latest"),
}


def _cyclic_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Valid HDF5 files whose links make cycles: h5py lets you write them."""
    import h5py

    def write(name: str, make: Callable[[h5py.File, Path], None]) -> Path:
        path = folder / f"cyclic-link-{name}.nc"
        with h5py.File(path, "w") as f:
            f.create_dataset("temp", data=np.arange(12, dtype="f4"))
            make(f, path)
        return path

    def hard_to_parent(f: h5py.File, _: Path) -> None:
        f.create_group("g/h")
        f["g/h/back"] = f["g"]

    def hard_to_root(f: h5py.File, _: Path) -> None:
        f.create_group("g")
        f["g/root"] = f["/"]

    def soft_to_ancestor(f: h5py.File, _: Path) -> None:
        f.create_group("g")
        f["g/up"] = h5py.SoftLink("/")

    def soft_to_itself(f: h5py.File, _: Path) -> None:
        f["self"] = h5py.SoftLink("/self")

    def soft_ring(f: h5py.File, _: Path) -> None:
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.SoftLink("/a")

    def external_to_itself(f: h5py.File, path: Path) -> None:
        f.create_group("g")
        f["g/ext"] = h5py.ExternalLink(path.name, "/")

    for make in (
        hard_to_parent,
        hard_to_root,
        soft_to_ancestor,
        soft_to_itself,
        soft_ring,
        external_to_itself,
    ):
        name = make.__name__.replace("_", "-")
        yield name, write(name, make)


def _huge_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Valid HDF5 files that claim 2**40 values and store none (h5py allocates storage late)."""
    import h5py

    shapes = {
        "chunked-1d": ((HUGE,), (1024,)),
        "chunked-2d": ((1 << 20, 1 << 20), (256, 256)),
        "contiguous": ((HUGE,), None),
    }
    for name, (shape, chunks) in shapes.items():
        path = folder / f"huge-array-{name}.nc"
        with h5py.File(path, "w") as f:
            f.create_dataset("temp", shape=shape, dtype="f8", chunks=chunks)
        yield name, path


def _odd_attribute_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Valid HDF5 files (h5py) whose attributes hold what JSON cannot, or what breaks
    unpacking: NaN and ±Infinity as scalars and in arrays, on CF names and others, and
    integers at the ends of their ranges."""
    import h5py

    odd: dict[str, tuple[str, object]] = {
        "scale-factor-nan": ("scale_factor", np.float32("nan")),
        "scale-factor-inf": ("scale_factor", np.float32("inf")),
        "scale-factor-zero": ("scale_factor", np.float32(0.0)),
        "add-offset-inf": ("add_offset", np.float64("-inf")),
        "missing-value-inf": ("missing_value", np.float32("inf")),
        "missing-value-nan": ("missing_value", np.float32("nan")),
        "missing-values-mixed": ("missing_value", np.array([np.nan, -np.inf], dtype="f4")),
        "fill-value-inf": ("_FillValue", np.float32("-inf")),
        "fill-value-nan-int": ("_FillValue", np.float64("nan")),
        "valid-range-inf": ("valid_range", np.array([-np.inf, np.inf])),
        "non-cf-nan": ("_FILLVALUE", np.float32("nan")),
        "int64-extremes": ("limits", np.array([np.iinfo("i8").min, np.iinfo("i8").max])),
        "uint64-max": ("count_max", np.uint64(np.iinfo("u8").max)),
        "float-max": ("valid_max", np.float64(np.finfo("f8").max)),
    }
    for name, (key, value) in odd.items():
        path = folder / f"attribute-value-{name}.nc"
        with h5py.File(path, "w") as f:
            f.attrs["global_nan"] = np.float64("nan")
            f.attrs["global_limits"] = np.array([-np.inf, 0.0, np.inf])
            x = f.create_dataset("x", data=np.arange(4.0))
            x.make_scale("x")
            packed = name.startswith(("scale", "add", "fill-value-nan-int"))
            data = np.arange(4, dtype="i2") if packed else np.arange(4, dtype="f4")
            temp = f.create_dataset("temp", data=data)
            temp.dims[0].attach_scale(x)
            temp.attrs[key] = value
        yield name, path


# -- the mutations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    kind: str
    data: bytes
    detail: str


def _bit_flips(data: bytes, metadata_end: int, rng: random.Random, count: int) -> Iterator[Mutation]:
    for _ in range(count):
        out = bytearray(data)
        flips = []
        for _ in range(rng.randint(1, 3)):
            limit = metadata_end if rng.random() < 0.7 else len(data)
            offset = rng.randrange(min(limit, len(data)))
            bit = rng.randrange(8)
            out[offset] ^= 1 << bit
            flips.append(f"{offset}:{bit}")
        yield Mutation("bitflip", bytes(out), "bits " + ",".join(flips))


def _truncations(data: bytes, layout: Layout) -> Iterator[Mutation]:
    """At the start of every structure (in HDF5: not at each message of an object header)."""
    seen: set[int] = set()
    for offset, label in sorted(layout.boundaries):
        if not label.startswith("message") and 0 < offset < len(data) and offset not in seen:
            seen.add(offset)
            yield Mutation("truncate", data[:offset], f"at {label} (byte {offset})")


def _pick(rng: random.Random, fields: list[Field], count: int) -> list[Field]:
    """Up to ``count`` of ``fields``, in file order."""
    return sorted(rng.sample(fields, min(count, len(fields))), key=lambda f: f.offset)


def _lies(
    data: bytes, fields: list[Field], kind: str, values: Callable[[Field], list[int]]
) -> Iterator[Mutation]:
    for place in fields:
        for value in values(place):
            if value != place.value:
                yield Mutation(kind, patched(data, place, value), f"{place.label}: {place.value} -> {value}")


def _netcdf3_mutations(data: bytes, rng: random.Random) -> Iterator[Mutation]:
    layout = netcdf3_layout(data)
    end = layout.header_end
    yield from _bit_flips(data, end, rng, 40)
    yield from _truncations(data, layout)
    yield Mutation("zeroed-header", bytes(8) + data[8:], "magic and numrecs zeroed")
    yield Mutation("zeroed-header", data[:4] + bytes(end - 4) + data[end:], "header after the magic zeroed")
    yield from _lies(
        data, layout.dimensions, "lying-dims", lambda f: [0, f.value + 1, 2 * f.value + 7, 2**32 - 1]
    )
    yield from _lies(data, layout.counts, "lying-dims", lambda f: [0, f.value + 1, 2**32 - 1])
    largest = 2 ** (8 * layout.addresses[0].width) - 1
    yield from _lies(data, layout.addresses, "lying-offsets", lambda f: [0, 4, len(data), 2**31 - 1, largest])
    fixed = [d for d in layout.dimensions if d.value]
    out = data
    for place in fixed:
        out = patched(out, place, 2**20)
    yield Mutation("huge-array", out, "every fixed dimension 2**20 (temp claims 2**40 values)")
    for place in fixed:
        yield Mutation("huge-array", patched(data, place, 2**31 - 1), f"{place.label} = 2**31-1")
    yield Mutation("huge-array", patched(data, layout.counts[0], 2**31 - 1), "numrecs = 2**31-1")
    yield from _attribute_values(data, layout)


#: What a float attribute can hold that JSON cannot, or that no arithmetic survives.
ODD_FLOATS = {
    "NaN": math.nan,
    "+Infinity": math.inf,
    "-Infinity": -math.inf,
    "largest finite": None,  # the type's own: 3.4e38 for float, 1.8e308 for double
    "smallest subnormal": 5e-324,
    "negative zero": -0.0,
}


def _attribute_values(data: bytes, layout: Layout) -> Iterator[Mutation]:
    """Every float and double attribute value of a NetCDF3 header set, in turn, to NaN, ±Infinity,
    the largest finite value, a subnormal and -0.0 (``scale_factor``, ``add_offset``,
    ``_FillValue``, ``valid_max``, ``valid_range`` among them)."""
    for place in layout.float_values:
        code = ">f" if place.width == 4 else ">d"
        for label, value in ODD_FLOATS.items():
            if value is None:
                value = float(np.finfo(np.float32 if place.width == 4 else np.float64).max)
            raw = struct.pack(code, value) if place.width == 8 or value != 5e-324 else struct.pack(">I", 1)
            out = data[: place.offset] + raw + data[place.offset + place.width :]
            yield Mutation("attribute-value", out, f"{place.label} = {label}")


def _hdf5_mutations(data: bytes, path: Path, rng: random.Random) -> Iterator[Mutation]:
    layout = hdf5_layout(data, object_header_addresses(path))
    offsets = data_offsets(path)
    layout.boundaries.extend(offsets)
    yield from _bit_flips(data, min((o for o, _ in offsets), default=len(data)), rng, 40)
    yield from _truncations(data, layout)
    size = layout.superblock_size
    yield Mutation("zeroed-superblock", bytes(size) + data[size:], "whole superblock zeroed")
    yield Mutation(
        "zeroed-superblock", data[:8] + bytes(size - 8) + data[size:], "zeroed after the signature"
    )
    for place in layout.addresses[:2]:  # EOF and root address, checksum made right
        yield Mutation("zeroed-superblock", patched(data, place, 0), f"{place.label} zeroed")
    dataset_dims = [f for f in layout.dimensions if f.label.startswith("dataset")]
    attribute_dims = [f for f in layout.dimensions if f.label.startswith("attribute")]
    dims = _pick(rng, dataset_dims, 8) + _pick(rng, attribute_dims, 4)
    yield from _lies(data, dims, "lying-dims", lambda f: [0, f.value + 1, 2**32 + 3])
    yield from _lies(data, _pick(rng, layout.counts, 4), "lying-dims", lambda f: [0, f.value + 1])
    places = layout.addresses[:2] + _pick(rng, layout.addresses[2:], 6)
    yield from _lies(data, places, "lying-offsets", lambda f: [0, 1, len(data) - 1, len(data) + 4096, HUGE])
    for place in _pick(rng, dataset_dims, 6):
        yield Mutation("huge-array", patched(data, place, HUGE), f"{place.label} = 2**40")
    yield from _self_references(data, layout, rng)


def _self_references(data: bytes, layout: Hdf5Layout, rng: random.Random) -> Iterator[Mutation]:
    """Cycles made by patching: a link to the root group, a continuation back to its own header
    (or its own messages), a B-tree node that is its own sibling and child."""
    root = next(f.value for f in layout.addresses if f.label == "root address")
    links = [f for f in layout.addresses if f.label.startswith("hard link")]
    for place in _pick(rng, links, 4):
        yield Mutation("cyclic-link", patched(data, place, root), f"{place.label} -> the root group")
    for place in (f for f in layout.addresses if f.label == "continuation"):
        header = max((a for a in layout.object_headers if a < place.offset), default=root)
        yield Mutation(
            "cyclic-link", patched(data, place, header), f"continuation -> its own header {header}"
        )
        if data[header : header + 4] != b"OHDR":  # a version 1 block has no signature to refuse it
            yield Mutation(
                "cyclic-link", patched(data, place, header + 16), "continuation -> its own messages"
            )
    width = data[13] if data[8] in (0, 1) else data[9]
    for offset, label in layout.boundaries:
        if label != "TREE":
            continue
        out = bytearray(data)
        out[offset + 8 : offset + 8 + width] = offset.to_bytes(width, "little")
        yield Mutation("cyclic-link", bytes(out), f"B-tree node {offset} is its own left sibling")
        if data[offset + 4] == 1:  # a chunk index: its first key starts with the chunk's size
            key = offset + 8 + 2 * width
            size = int.from_bytes(data[key : key + 4], "little")
            for lie in (size - 1, size + 1, 0):
                out = bytearray(data)
                out[key : key + 4] = lie.to_bytes(4, "little")
                yield Mutation(
                    "lying-dims", bytes(out), f"chunk size in B-tree node {offset}: {size} -> {lie}"
                )
        if data[offset + 4] == 0:  # a group node: keys are heap offsets (8 bytes)
            out[offset + 5] = max(1, out[offset + 5])
            child = offset + 8 + 2 * width + 8
            out[child : child + width] = offset.to_bytes(width, "little")
            yield Mutation("cyclic-link", bytes(out), f"B-tree node {offset} is its own sibling and child")


def _garbage(rng: random.Random, folder: Path) -> Iterator[Mutation]:
    yield Mutation("garbage", b"", "zero bytes")
    yield Mutation("garbage", b"\x89HDF\r\n\x1a\n", "the HDF5 signature alone")
    yield Mutation("garbage", b"CDF\x01", "the NetCDF3 magic alone")
    for index in range(8):
        magic = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"")[index % 4]
        noise = rng.randbytes(rng.choice((16, 512, 4096)))
        yield Mutation("garbage", magic + noise, f"{len(noise)} random bytes after {magic!r}")


def build_corpus(folder: Path, seed: int = SEED) -> list[HostileFile]:
    """Write the originals and every mutation under ``folder``; the same files for the same seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: list[HostileFile] = []
    number = 0

    def add(kind: str, base: str, data: bytes, detail: str) -> None:
        nonlocal number
        path = folder / f"{kind}-{number:04d}-{base}.nc"
        path.write_bytes(data)
        files.append(HostileFile(kind, path, base, detail))
        number += 1

    for base, write in ORIGINALS.items():
        original = folder / f"original-{base}.nc"
        write(original)
        files.append(HostileFile("original", original, base, "unmutated"))
        data = original.read_bytes()
        if data.startswith(b"CDF"):
            mutations = _netcdf3_mutations(data, rng)
        else:
            mutations = _hdf5_mutations(data, original, rng)
        for mutation in mutations:
            add(mutation.kind, base, mutation.data, mutation.detail)
    for name, path in _cyclic_files(folder):
        files.append(HostileFile("cyclic-link", path, name, "written by h5py"))
    for name, path in _huge_files(folder):
        files.append(HostileFile("huge-array", path, name, "written by h5py"))
    for name, path in _odd_attribute_files(folder):
        files.append(HostileFile("attribute-value", path, name, "written by h5py"))
    for mutation in _garbage(rng, folder):
        add(mutation.kind, "garbage", mutation.data, mutation.detail)
    return files
