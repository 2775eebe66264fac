"""Each file is parsed in a parser process beside the Dask worker, never in the worker itself.

A hostile file can hang a parser (a loop in HDF5's C code, which holds the GIL, or in Python),
crash it (a segfault in a C library) or make it allocate without bound (a dimension of 2**40).
None of that may take a worker down or stall a batch, and a thread can be neither stopped nor
survived when it segfaults: a process can. So each worker thread borrows a long-lived child
process (:mod:`~icechunk_operator.engine.parser_child`) and sends it one file at a time over a
socket. The worker waits at most ``execution.fileTimeoutSeconds`` for the answer, then SIGKILLs
the child (:class:`FileTimeoutError`); a child that dies is reported with its signal
(:class:`ParserCrashedError`); the child's address space is capped with ``RLIMIT_AS``
(:class:`MemoryLimitError`). The file becomes a failure record either way, and a fresh child
takes the next file (after parsing again the files of the current group the dead one held).

The child keeps each group's datasets and sends back only the group's payload
(:mod:`~icechunk_operator.engine.assembly`), with the reply to its last file: one round trip per
file, a few KB. That costs the worker about 0.5 ms of CPU per file (pickling the request, waking
the child, unpickling the payload) next to a parse of 8-15 ms; returning each file's dataset
instead cost 0.8 ms (unpickling xarray objects), and combining the datasets of hostile files is
itself a thing to isolate. A child is started once per worker thread (imports and one tiny
warm-up parse: about 2 s of CPU), again only after a kill.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import Connection
from socket import socketpair
from typing import Any

from icechunk_operator.engine.assembly import Assembled
from icechunk_operator.engine.parse_protocol import (
    FileTimeoutError,
    GroupReply,
    GroupRequest,
    MemoryLimitError,
    ParseFailed,
    ParseLimits,
    ParserCrashedError,
    ParseReply,
    ParseRequest,
    ParserUnavailableError,
    ReadRequest,
    describe_exit,
    failure_record,
)
from icechunk_operator.engine.planning import GroupWork
from icechunk_operator.engine.prefetch import Head
from icechunk_operator.engine.records import FailureRecord, SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions

#: Imports take 1-2 s; on a node busy with other pods, much longer.
STARTUP_SECONDS = 120.0
#: Idle parser processes a worker keeps for later tasks (one per worker thread is typical).
MAX_IDLE = 2
#: The parser does no linear algebra, and each extra malloc arena reserves 64 MiB of the
#: address space that RLIMIT_AS caps: one thread per library, two arenas.
CHILD_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}

#: Children are started from this one long-lived thread: the parent-death signal the child asks
#: for fires when the thread that forked it exits, and a Dask executor thread may exit any time.
_spawner = ThreadPoolExecutor(1, thread_name_prefix="parser-spawner")


def _child_environment() -> dict[str, str]:
    """The worker's environment and import path, so that fixes import in the child as they do
    in the worker (``virtualization.fixes: [package.module:function]``)."""
    path = os.pathsep.join(p for p in sys.path if p)
    return os.environ | CHILD_ENVIRONMENT | {"PYTHONPATH": path}


class ParserProcess:
    """One child process that parses one file at a time; started on first use, replaced after
    a kill or a death."""

    def __init__(self, memory: int | None) -> None:
        self.memory = memory
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._poller: select.poll | None = None  # one per child: Connection.poll builds one per call
        self.started = 0  # children started so far (tests count restarts)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Connection]:
        mine, theirs = socketpair()
        try:
            command = [
                sys.executable,
                "-m",
                "icechunk_operator.engine.parser_child",
                str(theirs.fileno()),
                str(os.getpid()),
                str(self.memory or 0),
            ]
            process = subprocess.Popen(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=_child_environment()
            )
        finally:
            theirs.close()
        return process, Connection(mine.detach())

    def _start(self) -> Connection:
        process, connection = _spawner.submit(self._spawn).result()
        self._process, self._connection = process, connection
        self._poller = select.poll()
        self._poller.register(connection.fileno(), select.POLLIN)
        self.started += 1
        if not connection.poll(STARTUP_SECONDS):
            self.close()
            raise ParserUnavailableError(f"parser process did not start in {STARTUP_SECONDS:.0f} s")
        try:
            connection.recv()  # "ready"
        except EOFError, OSError:
            code = process.wait()
            self.close()
            raise ParserUnavailableError(
                f"parser process ended before it was ready (exit {code}; see the worker's log)"
            ) from None
        return connection

    def ready(self) -> int:
        """Start the child unless one is alive; the number of the one serving now (a new number
        means whatever the previous child held is gone)."""
        if self._connection is None or self._process is None or self._process.poll() is not None:
            self.close()  # died while idle (killed from outside): not this file's fault
            self._start()
        return self.started

    def request(
        self, message: ParseRequest | GroupRequest | ReadRequest, timeout: float, overdue: str
    ) -> Any:
        """The child's reply to ``message`` within ``timeout`` seconds; a child that does not
        answer in time is killed (:class:`FileTimeoutError` with the text ``overdue``), one that
        dies is reaped (:class:`ParserCrashedError`)."""
        self.ready()
        connection, process, poller = self._connection, self._process, self._poller
        assert connection is not None
        assert process is not None
        assert poller is not None
        try:
            connection.send(message)
            answered = bool(poller.poll(timeout * 1000))  # readable: an answer, or the child's end
        except OSError:  # the child died between the check and the send
            answered = True  # recv reports it
        if not answered:
            self.close()
            raise FileTimeoutError(f"{overdue}; its parser process was killed")
        try:
            return connection.recv()
        except EOFError, OSError:
            code = process.wait()
            self.close()
            raise ParserCrashedError(describe_exit(code)) from None

    def close(self, grace: float = 0.0) -> None:
        """End the child (if any) and reap it: closing the socket ends an idle child by itself
        within ``grace`` seconds; SIGKILL ends any other."""
        if self._connection is not None:
            self._connection.close()
            self._connection, self._poller = None, None
        if self._process is not None:
            try:
                self._process.wait(grace)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


class IsolatedParser:
    """A :class:`~icechunk_operator.engine.assembly.FileParser` whose files are parsed and
    assembled in a parser process.

    The child holds the current group's datasets. When it is replaced mid-group (a kill, a
    crash), the files it held are parsed again in the new one before anything else: a failure
    then is theirs, reported with the group's other failures."""

    def __init__(
        self, process: ParserProcess, options: VirtualizeOptions, containers_json: str, limits: ParseLimits
    ) -> None:
        self._process = process
        self._options = options
        self._containers = containers_json
        self._limits = limits
        self._kept: list[SourceFile] = []  # parsed and held by child number ``_holder``
        self._holder = 0
        self._lost: list[FailureRecord] = []
        self._assembled: GroupReply | None = None  # the group, assembled with its last file

    def _restore(self, work: GroupWork) -> None:
        """Make the serving child hold every kept file (a new child holds none)."""
        serving = self._process.ready()
        if serving == self._holder:
            return
        self._holder = serving
        lost, self._kept = self._kept, []
        for source in lost:
            try:
                self._parse(work, source, None, last=False)
            except Exception as error:
                self._lost.append(failure_record(source, error, work.group))

    def parse(self, work: GroupWork, source: SourceFile, head: Head | None) -> None:
        self._parse(work, source, head, last=source == work.files[-1])

    def _parse(self, work: GroupWork, source: SourceFile, head: Head | None, last: bool) -> None:
        limits = self._limits
        self._restore(work)
        request = ParseRequest(
            work.group, source, self._options, self._containers, head, work if last else None
        )
        overdue = f"parse exceeded execution.fileTimeoutSeconds={limits.timeout_seconds:g} s"
        reply: ParseReply = self._process.request(request, limits.timeout_seconds, overdue)
        if reply.group is not None:  # the child assembled the group and forgot its files
            self._assembled, self._kept = reply.group, []
            self._check(reply)
            return
        self._check(reply)
        self._kept.append(source)

    def _check(self, reply: ParseReply) -> None:
        """Raise the error a reply carries (after replacing a child that asks for it)."""
        if reply.recycle:
            self._process.close()
        if reply.error_class == MemoryLimitError.__name__:
            raise MemoryLimitError(
                f"{reply.message} (the parser may address "
                f"execution.workerMemory={self._limits.memory_setting})"
            )
        if reply.error_class:
            raise ParseFailed(reply.error_class, reply.message, reply.transient)

    def finish(self, work: GroupWork) -> Assembled:
        lost, self._lost = self._lost, []
        if self._assembled is not None:
            assembled, self._assembled = self._assembled, None
            return assembled.payload, lost + assembled.failures
        held = tuple(self._kept)
        try:
            payload, failures = self._assemble(work, held)
        except Exception as error:  # killed, crashed, or no parser process: the group's files fail
            failed = {record.url for record in self._lost}
            fresh = [failure_record(s, error, work.group) for s in held if s.url not in failed]
            payload, failures = None, self._lost + fresh
        finally:
            self._kept, self._lost = [], []
        return payload, lost + failures

    def _assemble(self, work: GroupWork, held: tuple[SourceFile, ...]) -> Assembled:
        if held:
            self._restore(work)  # a child started since holds none of them: parse them again
        kept = tuple(self._kept)
        if not kept:
            return None, list(self._lost)
        seconds = self._limits.timeout_seconds * len(kept)
        overdue = (
            f"assembling the group's {len(kept)} parsed files exceeded {seconds:g} s "
            "(execution.fileTimeoutSeconds per file)"
        )
        reply: GroupReply | ParseReply = self._process.request(GroupRequest(work, kept), seconds, overdue)
        if isinstance(reply, ParseReply):  # the assembly itself failed (out of memory, say)
            self._check(reply)
        assert isinstance(reply, GroupReply)
        return reply.payload, self._lost + reply.failures


_idle: list[ParserProcess] = []
_idle_lock = threading.Lock()


@atexit.register
def _close_idle() -> None:
    """Reap the idle parsers when the worker exits, so none outlives it."""
    with _idle_lock:
        parsers = list(_idle)
        _idle.clear()
    for parser in parsers:
        parser.close(grace=5.0)


@contextmanager
def borrowed_parser(limits: ParseLimits) -> Iterator[ParserProcess]:
    """A parser process for this thread's task, returned to the worker's pool afterwards."""
    with _idle_lock:
        found = next((p for p in _idle if p.memory == limits.memory_bytes), None)
        if found is not None:
            _idle.remove(found)
    parser = found or ParserProcess(limits.memory_bytes)
    try:
        yield parser
    except BaseException:
        parser.close()  # interrupted mid-request: its state is unknown
        raise
    with _idle_lock:
        _idle.append(parser)
        surplus = _idle[:-MAX_IDLE]
        del _idle[:-MAX_IDLE]
    for extra in surplus:
        extra.close()
