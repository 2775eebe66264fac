"""Hostile input: hundreds of broken NetCDF3/NetCDF4/HDF5 files through a real batch, and parses
that hang, spin, crash or allocate without bound. Every file ends as exactly one record (in the
ledger, or one failure record with a clear class); no worker dies, no batch hangs, memory stays
within the parser's cap.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from icechunk_operator.api.batch import Combine
from icechunk_operator.api.store import VirtualChunkContainerSpec
from icechunk_operator.engine.isolation import IsolatedParser, ParserProcess
from icechunk_operator.engine.objects import containers_key
from icechunk_operator.engine.parse_protocol import FileTimeoutError, ParseLimits, ParserCrashedError
from icechunk_operator.engine.planning import GroupWork, WriteMode
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions
from tests.faults.corpus import HostileFile, build_corpus
from tests.faults.hostile import HostileRun, run_hostile
from tests.faults.tally import FaultTally
from tests.servers import REPO

pytestmark = pytest.mark.slow

GiB = 1 << 30
#: What a failure record may name: each says what is wrong with the file or its parse.
CLEAR_CLASSES = {
    # materialized ingest of RINEX: ours before the reader, the reader's own, epochs it dropped
    "UnreadableFileError",
    "ValidationError",
    "RejectedEpochsError",
    "EmptyFileError",
    "UnknownFormatError",
    "TruncatedFileError",
    "MalformedFileError",
    "NoDataVariablesError",
    "TimeDecodingError",
    "UnstorableAttributeError",
    "InvalidMetadataError",
    "RefusedByStoreError",
    "FileTimeoutError",
    "ParserCrashedError",
    "MemoryLimitError",
}
INJECTED = "tests.faults.injected:misbehave"
#: The 36 malformed RINEX files of the GNSS archive (read-only, beside the repository).
GNSS_INVALID = REPO.parent / "shared" / "data" / "gnss" / "invalid"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[HostileFile]:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "corpus")


def test_the_corpus_is_the_same_for_the_same_seed(corpus: list[HostileFile], tmp_path: Path) -> None:
    again = build_corpus(tmp_path / "again")

    def digest(files: list[HostileFile]) -> list[tuple[str, str, str]]:
        return [(f.kind, f.path.name, hashlib.sha256(f.path.read_bytes()).hexdigest()) for f in files]

    mutations = [f for f in corpus if f.kind != "original"]
    assert len(mutations) >= 500
    kinds = {f.kind for f in mutations}
    assert kinds >= {"bitflip", "truncate", "zeroed-superblock", "lying-dims", "huge-array", "cyclic-link"}
    assert sum(1 for f in mutations if f.kind == "attribute-value") >= 80
    # No timestamps in the files (h5py and netCDF4 track no object times by default): every byte
    # of every file is the same.
    assert digest(again) == digest(corpus)


def account(run: HostileRun, fault_tally: FaultTally, category: str) -> dict[str, dict[str, int]]:
    """Print outcomes per kind and class, add them to the tally, return them."""
    table = run.table()
    print(f"\n{category}: {len(run.files)} files in {run.seconds:.1f} s")
    for kind, outcomes in sorted(table.items()):
        print(f"  {kind:<18} " + ", ".join(f"{name} {count}" for name, count in outcomes.most_common()))
        originals_not_ingested = sum(
            1 for f in run.files if f.kind == kind == "original" and run.outcome(f) != "ingested"
        )
        fault_tally.add(
            category,
            kind,
            injected=sum(outcomes.values()),
            lost=outcomes["lost"] + originals_not_ingested,
            duplicated=outcomes["duplicated"],
        )
    classes = {name for outcomes in table.values() for name in outcomes}
    print("  outcomes overall: " + ", ".join(sorted(classes)))
    return {kind: dict(outcomes) for kind, outcomes in table.items()}


def assert_each_file_has_one_clear_record(run: HostileRun) -> None:
    report = run.report
    assert report.error is None, report.error
    assert report.total == len(run.files)
    assert report.done + report.failed == len(run.files)
    assert sum(run.ledger.values()) == report.done
    wrong = [
        (f.kind, f.path.name, f.detail, run.outcome(f))
        for f in run.files
        if run.outcome(f) in ("lost", "duplicated")
    ]
    assert not wrong, wrong[:10]
    for records in run.failures.values():
        for record in records:
            assert record["error_class"] in CLEAR_CLASSES, record
            assert record["message"].strip(), record
    assert run.workers_after == run.workers_before, "a Dask worker died (or was restarted)"


def test_every_hostile_file_ends_as_one_record_and_no_worker_dies(
    corpus: list[HostileFile], tmp_path: Path, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    run = run_hostile(corpus, tmp_path / "store", dask_scheduler, file_timeout=5, worker_memory="1Gi")
    table = account(run, fault_tally, "hostile input")

    assert_each_file_has_one_clear_record(run)
    assert table["original"] == {"ingested": 6}
    assert run.seconds < 300, "the batch took too long: a parse hung past its deadline?"
    # RLIMIT_AS caps a parser's address space, and so its resident size; the whole tree (this
    # process, the scheduler, two nannies, two workers, two parsers) stays within a few GiB.
    assert 0 < run.memory.largest_parser <= GiB
    assert run.memory.largest_total < 6 * GiB
    for kind in ("truncate", "zeroed-superblock", "zeroed-header", "garbage"):
        assert "ingested" not in table[kind], f"a {kind} file was ingested"
    # Non-finite attributes are stored (as strings) where readers decode the same; refused,
    # named, where they would not (scale_factor NaN, an infinite missing_value).
    odd = {f.base: run.outcome(f) for f in corpus if f.kind == "attribute-value" and f.base}
    assert odd["non-cf-nan"] == odd["valid-range-inf"] == odd["missing-value-nan"] == "ingested"
    assert odd["scale-factor-nan"] == odd["missing-value-inf"] == "UnstorableAttributeError"


def write_small(path: Path, fault: str | None = None) -> HostileFile:
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        if fault:
            ds.setncattr("injected_fault", fault)
        ds.createDimension("x", 3)
        x = ds.createVariable("x", "f8", ("x",))
        x[:] = [0.0, 1.0, 2.0]
        values = ds.createVariable("values", "f4", ("x",))
        values[:] = np.arange(3, dtype=np.float32)
    return HostileFile(fault or "good", path)


def test_hanging_spinning_crashing_and_allocating_parses_cost_only_their_file(
    tmp_path: Path, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    faults = ["hang", "spin", "segfault", "allocate"]
    files = [write_small(folder / f"good-{i}.nc") for i in range(4)]
    files += [write_small(folder / f"{fault}.nc", fault) for fault in faults]

    run = run_hostile(files, tmp_path / "store", dask_scheduler, file_timeout=2, fixes=[INJECTED])
    account(run, fault_tally, "parser faults")

    assert_each_file_has_one_clear_record(run)
    outcomes = {f.kind: run.outcome(f) for f in files}
    assert outcomes == {
        "good": "ingested",
        "hang": "FileTimeoutError",
        "spin": "FileTimeoutError",
        "segfault": "ParserCrashedError",
        "allocate": "MemoryLimitError",
    }
    by_kind = {
        f.kind: run.failures[f.path.resolve().as_uri()][0]["message"] for f in files if f.kind in faults
    }
    assert by_kind["hang"].startswith("parse exceeded execution.fileTimeoutSeconds=2 s")
    assert "SIGSEGV" in by_kind["segfault"]
    assert "execution.workerMemory=1Gi" in by_kind["allocate"]
    assert sum(run.ledger.values()) == 4
    # Two deadlines of 2 s, and a new parser process after each of the four: well under a minute.
    assert run.seconds < 60


def isolated(folder: Path, limits: ParseLimits) -> tuple[ParserProcess, IsolatedParser]:
    container = VirtualChunkContainerSpec.model_validate({"urlPrefix": folder.resolve().as_uri() + "/"})
    process = ParserProcess(limits.memory_bytes)
    return process, IsolatedParser(
        process, VirtualizeOptions(fixes=(INJECTED,)), containers_key([container]), limits
    )


def source_of(item: HostileFile) -> SourceFile:
    return SourceFile(item.path.resolve().as_uri(), item.path.stat().st_size)


def test_a_hung_parse_is_killed_at_its_deadline_and_the_next_file_parses(tmp_path: Path) -> None:
    hang, good = write_small(tmp_path / "hang.nc", "hang"), write_small(tmp_path / "good.nc")
    process, parser = isolated(
        tmp_path, ParseLimits(timeout_seconds=2, memory_bytes=GiB, memory_setting="1Gi")
    )

    def work(item: HostileFile) -> GroupWork:
        return GroupWork(item.path.stem, (source_of(item),), Combine.ONE, None, WriteMode.CREATE)

    try:
        process.ready()  # started before the clock: the deadline is the parse's alone
        first = process.pid
        started = time.perf_counter()
        with pytest.raises(FileTimeoutError, match="fileTimeoutSeconds=2 s"):
            parser.parse(work(hang), source_of(hang), None)
        elapsed = time.perf_counter() - started
        assert 2.0 <= elapsed < 4.0
        assert parser.finish(work(hang)) == (None, [])

        parser.parse(work(good), source_of(good), None)
        payload, failures = parser.finish(work(good))
        assert payload is not None and not failures
        assert process.pid != first and process.started == 2
    finally:
        process.close()


@pytest.mark.parametrize("fault", ["hang", "segfault"])
def test_a_group_keeps_the_files_its_killed_parser_held(tmp_path: Path, fault: str) -> None:
    """A concatenated group's parsed files live in the parser process until the group is done: a
    file that kills it midway costs that file, and the new process parses the others again."""
    files = [
        write_small(tmp_path / "a.nc"),
        write_small(tmp_path / "b.nc", fault),
        write_small(tmp_path / "c.nc"),
    ]
    sources = tuple(source_of(f) for f in files)
    work = GroupWork("series", sources, Combine.CONCAT, "x", WriteMode.CREATE)
    process, parser = isolated(
        tmp_path, ParseLimits(timeout_seconds=2, memory_bytes=GiB, memory_setting="1Gi")
    )
    try:
        parser.parse(work, sources[0], None)
        with pytest.raises(FileTimeoutError if fault == "hang" else ParserCrashedError):
            parser.parse(work, sources[1], None)
        parser.parse(work, sources[2], None)
        payload, failures = parser.finish(work)
    finally:
        process.close()

    assert not failures
    assert payload is not None and payload.sources == (sources[0], sources[2])
    assert process.started == 2


@pytest.mark.skipif(not GNSS_INVALID.is_dir(), reason=f"{GNSS_INVALID} is not here")
def test_the_malformed_rinex_files_take_the_same_path(
    tmp_path: Path, dask_scheduler: str, fault_tally: FaultTally
) -> None:
    """The harness takes any file kind: the malformed RINEX files through materialized ingest
    with canVODpy's reader, each ending as one clear failure record or one ledger entry (a repair
    the reader makes; tests/integration/test_gnss.py checks those values)."""
    files = [HostileFile("rinex-invalid", path, path.stem) for path in sorted(GNSS_INVALID.iterdir())]
    assert len(files) == 36
    run = run_hostile(files, tmp_path / "store", dask_scheduler, materialize={"reader": "rinex"})
    account(run, fault_tally, "hostile input")

    assert_each_file_has_one_clear_record(run)


def test_a_parser_process_dies_with_its_worker(tmp_path: Path) -> None:
    """A worker killed by SIGKILL (the OOM killer, a node going) leaves no parser behind, even
    one stuck mid-parse: the child asked the kernel for SIGKILL when its parent goes."""
    hang = write_small(tmp_path / "hang.nc", "hang")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_THAT_HANGS, str(tmp_path), str(hang.path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())  # printed once the child is parsing the hanging file
        assert psutil.pid_exists(child)
    finally:
        worker.kill()
        worker.wait()
    _, alive = psutil.wait_procs([psutil.Process(child)] if psutil.pid_exists(child) else [], timeout=10)
    assert not alive, f"parser process {child} outlived its worker"


#: A stand-in for a Dask worker: it starts a parser process on a file that hangs, says the
#: child's pid, and waits to be killed.
WORKER_THAT_HANGS = """
import sys, threading, time
from pathlib import Path
from icechunk_operator.api.store import VirtualChunkContainerSpec
from icechunk_operator.engine.isolation import IsolatedParser, ParserProcess
from icechunk_operator.engine.objects import containers_key
from icechunk_operator.engine.parse_protocol import ParseLimits
from icechunk_operator.engine.planning import GroupWork, WriteMode
from icechunk_operator.engine.records import SourceFile
from icechunk_operator.engine.virtualize import VirtualizeOptions
from icechunk_operator.api.batch import Combine

folder, file = Path(sys.argv[1]), Path(sys.argv[2])
container = VirtualChunkContainerSpec.model_validate({"urlPrefix": folder.as_uri() + "/"})
limits = ParseLimits(3600)
process = ParserProcess(None)
parser = IsolatedParser(process, VirtualizeOptions(fixes=("tests.faults.injected:misbehave",)),
                        containers_key([container]), limits)
source = SourceFile(file.as_uri(), file.stat().st_size)
work = GroupWork("g", (source,), Combine.ONE, None, WriteMode.CREATE)
process.ready()
threading.Timer(1.0, lambda: print(process.pid, flush=True)).start()
parser.parse(work, source, None)  # hangs until this process is killed
"""
