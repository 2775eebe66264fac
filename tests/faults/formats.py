"""Where the structures of a NetCDF3 or HDF5 file lie, byte for byte: what the hostile corpus
(tests/faults/corpus.py) truncates at and lies in.

Only what the corpus needs is read: the NetCDF3 header (dimension, attribute and variable lists,
with the fields that size and place the data), and in HDF5 the superblock, the object headers
(version 1, and version 2 with their checksums), their dataspace, attribute, link and
continuation messages, and the addresses of the other metadata structures (by signature).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# -- Jenkins' lookup3 (hashlittle), the checksum of HDF5's version 2 metadata ----------------


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for shift_a, shift_b, shift_c in ((4, 6, 8), (16, 19, 4)):
        a = ((a - c) & 0xFFFFFFFF) ^ _rot(c, shift_a)
        c = (c + b) & 0xFFFFFFFF
        b = ((b - a) & 0xFFFFFFFF) ^ _rot(a, shift_b)
        a = (a + c) & 0xFFFFFFFF
        c = ((c - b) & 0xFFFFFFFF) ^ _rot(b, shift_c)
        b = (b + a) & 0xFFFFFFFF
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    mask = 0xFFFFFFFF
    c = ((c ^ b) - _rot(b, 14)) & mask
    a = ((a ^ c) - _rot(c, 11)) & mask
    b = ((b ^ a) - _rot(a, 25)) & mask
    c = ((c ^ b) - _rot(b, 16)) & mask
    a = ((a ^ c) - _rot(c, 4)) & mask
    b = ((b ^ a) - _rot(a, 14)) & mask
    return ((c ^ b) - _rot(b, 24)) & mask


def lookup3(data: bytes, initval: int = 0) -> int:
    """``H5_checksum_lookup3`` (Jenkins' hashlittle): a patched field of a checksummed structure
    needs it again, or the HDF5 library refuses the structure before it ever reads the lie."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & 0xFFFFFFFF
    position = 0
    while length - position > 12:
        words = [int.from_bytes(data[position + i : position + i + 4], "little") for i in (0, 4, 8)]
        a, b, c = _mix((a + words[0]) & 0xFFFFFFFF, (b + words[1]) & 0xFFFFFFFF, (c + words[2]) & 0xFFFFFFFF)
        position += 12
    if length == position:
        return c
    tail = data[position:] + bytes(12 - (length - position))
    words = [int.from_bytes(tail[i : i + 4], "little") for i in (0, 4, 8)]
    return _final((a + words[0]) & 0xFFFFFFFF, (b + words[1]) & 0xFFFFFFFF, (c + words[2]) & 0xFFFFFFFF)


# -- NetCDF3 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A number stored in the file: where, how wide (bytes), its value, and what it means."""

    offset: int
    width: int
    value: int
    label: str
    little_endian: bool = False
    checksum: tuple[int, int] | None = None  # (start, end) of the checksummed bytes; sum at end

    def encode(self, value: int) -> bytes:
        return (value % (1 << (8 * self.width))).to_bytes(
            self.width, "little" if self.little_endian else "big"
        )


@dataclass
class Layout:
    """Structure boundaries (offset, label) and the fields a lie can go into."""

    boundaries: list[tuple[int, str]] = field(default_factory=list)
    dimensions: list[Field] = field(default_factory=list)  # lengths (NetCDF3) or dataspace dims
    counts: list[Field] = field(default_factory=list)  # numrecs, vsize, max dims
    addresses: list[Field] = field(default_factory=list)  # begin, EOF, continuation, link targets
    float_values: list[Field] = field(default_factory=list)  # NetCDF3 float and double attribute values
    header_end: int = 0


_NC_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8}
_NC_FLOATS = {5: "float", 6: "double"}


def netcdf3_layout(data: bytes) -> Layout:
    """The header of a classic (CDF1) or 64-bit offset (CDF2) file."""
    begin_width = 8 if data[3] == 2 else 4
    layout = Layout(boundaries=[(0, "magic"), (4, "numrecs")])

    def u32(at: int) -> int:
        return int.from_bytes(data[at : at + 4], "big")

    def name(at: int) -> tuple[str, int]:
        size = u32(at)
        text = data[at + 4 : at + 4 + size].decode()
        return text, at + 4 + (size + 3) // 4 * 4

    def attributes(at: int, owner: str) -> int:
        count = u32(at + 4)
        at += 8
        for _ in range(count):
            layout.boundaries.append((at, f"attribute of {owner}"))
            attribute, at = name(at)
            kind, items = u32(at), u32(at + 4)
            if kind in _NC_FLOATS:  # each value of a float or double attribute, for lies
                width = _NC_SIZES[kind]
                for index in range(items):
                    where = at + 8 + index * width
                    label = f"{_NC_FLOATS[kind]} attribute {attribute}[{index}] of {owner}"
                    layout.float_values.append(Field(where, width, u32(where) if width == 4 else 0, label))
            at += 8 + (_NC_SIZES[kind] * items + 3) // 4 * 4
        return at

    layout.counts.append(Field(4, 4, u32(4), "numrecs"))
    position = 8
    layout.boundaries.append((position, "dimension list"))
    count = u32(position + 4)
    position += 8
    for _ in range(count):
        layout.boundaries.append((position, "dimension"))
        dim, position = name(position)
        layout.dimensions.append(Field(position, 4, u32(position), f"length of dimension {dim}"))
        position += 4
    layout.boundaries.append((position, "global attributes"))
    position = attributes(position, "the file")
    layout.boundaries.append((position, "variable list"))
    count = u32(position + 4)
    position += 8
    for _ in range(count):
        layout.boundaries.append((position, "variable"))
        var, position = name(position)
        position += 4 + 4 * u32(position)
        layout.boundaries.append((position, f"attributes of {var}"))
        position = attributes(position, var)
        position += 4  # nc_type
        layout.counts.append(Field(position, 4, u32(position), f"vsize of {var}"))
        position += 4
        begin = int.from_bytes(data[position : position + begin_width], "big")
        layout.addresses.append(Field(position, begin_width, begin, f"begin of {var}"))
        layout.boundaries.append((begin, f"data of {var}"))
        position += begin_width
    layout.header_end = position
    layout.boundaries.append((position, "end of header"))
    return layout


# -- HDF5 ---------------------------------------------------------------------------------------

#: What starts each signed HDF5 metadata structure (object headers v2, B-trees, heaps, free space).
HDF5_SIGNATURES: tuple[bytes, ...] = (b"OHDR", b"OCHK", b"TREE", b"HEAP", b"GCOL", b"SNOD", b"BTHD")
HDF5_SIGNATURES += (b"BTIN", b"BTLF", b"FRHP", b"FHDB", b"FHIB", b"FSHD", b"FSSE")


def _le(data: bytes, at: int, width: int) -> int:
    return int.from_bytes(data[at : at + width], "little")


@dataclass
class Hdf5Layout(Layout):
    superblock_size: int = 0
    superblock_version: int = 0
    object_headers: list[int] = field(default_factory=list)


def hdf5_layout(data: bytes, object_headers: list[int]) -> Hdf5Layout:
    """Superblock, object headers (from ``object_headers``: addresses h5py reports) and every
    structure that starts with a signature."""
    version = data[8]
    layout = Hdf5Layout(superblock_version=version, object_headers=sorted(set(object_headers)))
    if version in (0, 1):
        offsets = data[13]
        start = 24 + (4 if version == 1 else 0)
        layout.superblock_size = start + 4 * offsets + 2 * offsets + 24
        eof_at = start + 2 * offsets
        layout.addresses.append(Field(eof_at, offsets, _le(data, eof_at, offsets), "EOF address", True))
        root_at = start + 4 * offsets + offsets
        layout.addresses.append(Field(root_at, offsets, _le(data, root_at, offsets), "root address", True))
    else:
        offsets = data[9]
        layout.superblock_size = 12 + 4 * offsets + 4
        checksum = (0, layout.superblock_size - 4)
        for index, label in ((2, "EOF address"), (3, "root address")):
            at = 12 + index * offsets
            layout.addresses.append(Field(at, offsets, _le(data, at, offsets), label, True, checksum))
    layout.boundaries += [(0, "superblock"), (layout.superblock_size, "after the superblock")]
    for signature in HDF5_SIGNATURES:
        for match in re.finditer(re.escape(signature), data):
            layout.boundaries.append((match.start(), signature.decode()))
    for address in layout.object_headers:
        layout.boundaries.append((address, "object header"))
        _walk_object_header(data, address, offsets, layout)
    return layout


def _walk_object_header(data: bytes, address: int, offsets: int, layout: Hdf5Layout) -> None:
    if data[address : address + 4] == b"OHDR":
        flags = data[address + 5]
        position = address + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 3)
        size = _le(data, position, width)
        position += width
        _v2_messages(data, position, position + size, (address, position + size), flags, offsets, layout)
    else:
        size = _le(data, address + 8, 4)
        _v1_messages(data, address + 16, address + 16 + size, offsets, layout)


def _v1_messages(data: bytes, start: int, end: int, offsets: int, layout: Hdf5Layout) -> None:
    position = start
    while position + 8 <= end:
        kind, size = _le(data, position, 2), _le(data, position + 2, 2)
        body = position + 8
        layout.boundaries.append((position, f"message {kind:#x}"))
        _message(data, kind, body, size, offsets, layout, None, 1)
        position = body + size


def _v2_messages(
    data: bytes, start: int, end: int, checksum: tuple[int, int], flags: int, offsets: int, layout: Hdf5Layout
) -> None:
    position = start
    header = 6 if flags & 0x04 else 4
    while position + header <= end:
        kind, size = data[position], _le(data, position + 1, 2)
        body = position + header
        if body + size > end:
            break
        layout.boundaries.append((position, f"message {kind:#x}"))
        _message(data, kind, body, size, offsets, layout, checksum, 2, flags)
        position = body + size


def _message(
    data: bytes,
    kind: int,
    body: int,
    size: int,
    offsets: int,
    layout: Hdf5Layout,
    checksum: tuple[int, int] | None,
    header_version: int,
    flags: int = 0,
) -> None:
    if kind == 0x01:
        _dataspace(data, body, layout, checksum, "dataset")
    elif kind == 0x0C:
        version = data[body]
        name_size, type_size, space_size = (_le(data, body + 2 + 2 * i, 2) for i in range(3))
        if version == 1:
            at = body + 8 + _pad8(name_size) + _pad8(type_size)
        else:
            at = body + 8 + (1 if version == 3 else 0) + name_size + type_size
        if space_size:
            _dataspace(data, at, layout, checksum, "attribute")
    elif kind == 0x10:
        target, length = _le(data, body, offsets), _le(data, body + offsets, 8)
        layout.addresses.append(Field(body, offsets, target, "continuation", True, checksum))
        layout.boundaries.append((target, "continuation block"))
        if header_version == 1:
            _v1_messages(data, target, target + length, offsets, layout)
        elif data[target : target + 4] == b"OCHK":
            _v2_messages(
                data, target + 4, target + length - 4, (target, target + length - 4), flags, offsets, layout
            )
    elif kind == 0x06:
        _hard_link(data, body, offsets, layout, checksum)


def _pad8(size: int) -> int:
    return (size + 7) // 8 * 8


def _dataspace(
    data: bytes, at: int, layout: Hdf5Layout, checksum: tuple[int, int] | None, owner: str
) -> None:
    version, rank, flags = data[at], data[at + 1], data[at + 2]
    dims = at + (8 if version == 1 else 4)
    for index in range(rank):
        place = dims + 8 * index
        layout.dimensions.append(Field(place, 8, _le(data, place, 8), f"{owner} dim {index}", True, checksum))
        if flags & 1:
            place += 8 * rank
            layout.counts.append(
                Field(place, 8, _le(data, place, 8), f"{owner} max dim {index}", True, checksum)
            )


def _hard_link(
    data: bytes, at: int, offsets: int, layout: Hdf5Layout, checksum: tuple[int, int] | None
) -> None:
    flags = data[at + 1]
    position = at + 2
    kind = 0
    if flags & 0x08:
        kind = data[position]
        position += 1
    position += (8 if flags & 0x04 else 0) + (1 if flags & 0x10 else 0)
    width = 1 << (flags & 3)
    name_size = _le(data, position, width)
    position += width
    name = data[position : position + name_size].decode(errors="replace")
    position += name_size
    if kind == 0:
        target = _le(data, position, offsets)
        layout.addresses.append(Field(position, offsets, target, f"hard link {name}", True, checksum))


def patched(data: bytes, place: Field, value: int) -> bytes:
    """``data`` with ``value`` in ``place``, and the checksum of its structure made right again."""
    out = bytearray(data)
    out[place.offset : place.offset + place.width] = place.encode(value)
    if place.checksum is not None:
        start, end = place.checksum
        out[end : end + 4] = struct.pack("<I", lookup3(bytes(out[start:end])))
    return bytes(out)


def checksum_holds(data: bytes, span: tuple[int, int]) -> bool:
    start, end = span
    stored: int = struct.unpack("<I", data[end : end + 4])[0]
    return stored == lookup3(data[start:end])


def object_header_addresses(path: Path) -> list[int]:
    """Every object's header address, by walking the file with h5py (a file without cycles)."""
    import h5py

    addresses: list[int] = []
    with h5py.File(path, "r") as file:
        addresses.append(h5py.h5o.get_info(file.id).addr)
        file.visititems(lambda _, obj: addresses.append(h5py.h5o.get_info(obj.id).addr))
    return addresses


def data_offsets(path: Path) -> list[tuple[int, str]]:
    """Where each dataset's bytes start: contiguous blocks and every chunk."""
    import h5py

    found: list[tuple[int, str]] = []

    def visit(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            if offset is not None:
                found.append((offset, f"data of {name}"))
            return
        for index in range(obj.id.get_num_chunks()):
            found.append((obj.id.get_chunk_info(index).byte_offset, f"chunk {index} of {name}"))

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return found
