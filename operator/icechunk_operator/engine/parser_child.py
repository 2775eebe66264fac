"""The parser process: ``python -m icechunk_operator.engine.parser_child FD PARENT MEMORY``.

It reads requests from the socket FD until the socket closes: a
:class:`~icechunk_operator.engine.parse_protocol.ParseRequest` parses one file and keeps its
dataset (and, with the group's last file, assembles the group), a
:class:`~icechunk_operator.engine.parse_protocol.GroupRequest` assembles the kept datasets of a
group into its payload. Whatever a hostile file does to this process, the worker that started it
carries on (see :mod:`~icechunk_operator.engine.isolation`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import resource
import signal
import struct
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path

import xarray as xr

from icechunk_operator.api.batch import Combine
from icechunk_operator.api.store import VirtualChunkContainerSpec
from icechunk_operator.engine.assembly import assemble_group
from icechunk_operator.engine.execution import is_transient
from icechunk_operator.engine.objects import build_registry, cached_registry
from icechunk_operator.engine.parse_protocol import (
    GroupReply,
    GroupRequest,
    MemoryLimitError,
    ParseReply,
    ParseRequest,
    ReadReply,
    ReadRequest,
)
from icechunk_operator.engine.planning import GroupWork, WriteMode
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions, virtualize_file

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the worker goes, even mid-parse in C code (Linux); elsewhere
    the closed socket ends it once the parse returns."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError, AttributeError:
        pass
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(0)


def cap_memory(limit: int) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Kept:
    """The datasets of the current group's files that parsed, in order."""

    def __init__(self) -> None:
        self.group: str | None = None
        self.files: list[tuple[SourceFile, xr.Dataset]] = []


def answer(request: object, kept: Kept) -> bytes:
    """The pickled reply to one request; every error becomes a reply, none ends the loop."""
    try:
        reply: GroupReply | ParseReply
        if isinstance(request, GroupRequest):
            if tuple(source for source, _ in kept.files) != request.sources:
                raise RuntimeError("parser process: the files it kept are not the group's")  # a bug
            reply = assemble(request.work, kept)
        elif isinstance(request, ReadRequest):
            return pickle.dumps(read(request), protocol=pickle.HIGHEST_PROTOCOL)
        elif isinstance(request, ParseRequest):
            parsed = parse(request, kept)
            if request.assemble is not None and not parsed.transient:
                parsed = dataclasses.replace(parsed, group=assemble(request.assemble, kept))
            reply = parsed
        else:
            raise TypeError(f"parser process: unexpected request {type(request).__name__}")
        return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        return pickle.dumps(failed(error), protocol=pickle.HIGHEST_PROTOCOL)


def parse(request: ParseRequest, kept: Kept) -> ParseReply:
    """Parse one file and keep its dataset; a reply that is empty, or carries the error."""
    if kept.group != request.group:
        kept.group, kept.files = request.group, []
    try:
        registry = cached_registry(request.containers_json)
        dataset = virtualize_file(request.source, request.options, registry, request.head)
    except Exception as error:  # every file ends as a dataset or a failure record
        return failed(error)
    kept.files.append((request.source, dataset))
    return ParseReply()


def read(request: ReadRequest) -> ReadReply:
    """A materializing reader's whole file (:mod:`~icechunk_operator.engine.materialize`)."""
    from icechunk_operator.engine.materialize.tasks import read_here

    try:
        return read_here(request)
    except MemoryError as error:
        detail = f": {error}" if str(error) else ""
        return ReadReply(
            error_class=MemoryLimitError.__name__, message=f"read ran out of memory{detail}", recycle=True
        )


def assemble(work: GroupWork, kept: Kept) -> GroupReply:
    files, kept.files, kept.group = kept.files, [], None
    return GroupReply(*assemble_group(work, files))


def failed(error: Exception) -> ParseReply:
    if isinstance(error, MemoryError):
        detail = f": {error}" if str(error) else ""
        return ParseReply(MemoryLimitError.__name__, f"parse ran out of memory{detail}"[:2000], recycle=True)
    return ParseReply(type(error).__name__, str(error)[:2000], transient=is_transient(error))


def serve(connection: Connection) -> None:
    kept = Kept()
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return  # the worker closed the socket (or died)
        connection.send_bytes(answer(request, kept))


def tiny_netcdf3() -> bytes:
    """A NetCDF3 classic file: a time coordinate (CF units) and one variable along it."""

    def name(text: str) -> bytes:
        raw = text.encode()
        return struct.pack(">i", len(raw)) + raw + bytes(-len(raw) % 4)

    absent = struct.pack(">ii", 0, 0)
    units = struct.pack(">ii", 12, 1) + name("units") + struct.pack(">i", 2) + name("days since 2000-01-01")

    def variable(label: str, attributes: bytes, nc_type: int, size: int, begin: int) -> bytes:
        return name(label) + struct.pack(">ii", 1, 0) + attributes + struct.pack(">iii", nc_type, size, begin)

    head = b"CDF\x01" + struct.pack(">i", 0) + struct.pack(">ii", 10, 1) + name("time") + struct.pack(">i", 2)
    head += absent + struct.pack(">ii", 11, 2)
    start = len(head) + len(variable("time", units, 6, 16, 0)) + len(variable("v", absent, 5, 8, 0))
    head += variable("time", units, 6, 16, start) + variable("v", absent, 5, 8, start + 16)
    return head + struct.pack(">2d", 0.0, 1.0) + struct.pack(">2f", 0.0, 1.0)


def warm_up() -> None:
    """Parse and assemble a tiny file once: the first parse of a process imports dask, jinja2
    and more through xarray (0.4 s here, seconds on a busy node), which must not count against
    the first real file's deadline."""
    with tempfile.TemporaryDirectory(prefix="parser-warm-up-") as folder:
        path = Path(folder) / "tiny.nc"
        path.write_bytes(tiny_netcdf3())
        container = VirtualChunkContainerSpec.model_validate({"urlPrefix": Path(folder).as_uri() + "/"})
        source = SourceFile(path.as_uri(), path.stat().st_size)
        dataset = virtualize_file(source, VirtualizeOptions(), build_registry([container]))
        work = GroupWork("warm-up", (source,), Combine.ONE, None, WriteMode.CREATE)
        assemble_group(work, [(source, dataset)])


def main(argv: list[str]) -> None:
    fd, parent, limit = (int(value) for value in argv[1:4])
    die_with_parent(parent)
    # Everything a parse needs is imported (above) and run once before the cap and before
    # "ready": a restart costs this once, and no file's deadline is charged for it.
    warm_up()
    connection = Connection(fd)
    cap_memory(limit)
    connection.send("ready")
    serve(connection)


if __name__ == "__main__":
    main(sys.argv)
