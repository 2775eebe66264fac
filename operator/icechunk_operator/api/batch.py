"""IngestBatch: which files go into which store, how they map to groups, how they are virtualized."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from icechunk_operator.api import grouping
from icechunk_operator.api.common import (
    CPU_QUANTITY_PATTERN,
    DNS_LABEL_PATTERN,
    MEMORY_QUANTITY_PATTERN,
    ApiModel,
    Condition,
    ResourceModel,
    cel,
    conditions_field,
    immutable_field,
)


class SourceSpec(ApiModel):
    """Exactly one of ``prefix`` (with ``glob``), ``files`` or ``index`` says which files to ingest."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.prefix), has(self.files), has(self.index)].filter(x, x).size() == 1",
                    "exactly one of source.prefix, source.files, source.index must be set",
                )
            ]
        }
    )

    prefix: str | None = Field(default=None, description="List files under this URL prefix.")
    glob: str = Field(default="**/*.nc", description="Glob on paths relative to prefix.")
    files: list[str] | None = Field(default=None, description="An explicit list of file URLs.")
    index: str | None = Field(
        default=None, description="A parquet index with columns url, size and etag or mtime."
    )
    skip: list[str] = Field(
        default_factory=list, description="Globs on the file URL; matching files are skipped."
    )
    remove_index: str | None = Field(
        default=None,
        description=(
            "A parquet file (column url) of source files to drop from the store: their groups are "
            "rebuilt from the files that remain, or deleted when none remain. Repairs write it."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [n for n in ("prefix", "files", "index") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"source: exactly one of prefix, files, index must be set (got {given or 'none'})"
            )
        if self.prefix is not None and not self.prefix.endswith("/"):
            self.prefix += "/"
        return self


class Combine(StrEnum):
    ONE = "one"  # exactly one file per group
    CONCAT = "concat"  # concatenate the group's files along a dimension
    MERGE = "merge"  # merge the variables of the group's files


class CombineRule(ApiModel):
    """A combine rule for groups whose path matches ``match`` (a glob on the group path)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.combine) || self.combine != 'concat' || has(self.dimension)",
                    "combine 'concat' needs a dimension",
                )
            ]
        }
    )

    match: str = Field(default="*", description="Glob on the group path, e.g. 'GNSS/*'.")
    combine: Combine = Field(default=Combine.ONE)
    dimension: str | None = Field(default=None, min_length=1, description="Concatenation dimension.")

    @model_validator(mode="after")
    def _dimension_for_concat(self) -> CombineRule:
        if self.combine == Combine.CONCAT and not self.dimension:
            raise ValueError("grouping.rules: combine 'concat' needs a dimension")
        return self


class GroupingSpec(ApiModel):
    """How a file path becomes a group path: a regex with named fields and a template.

    The API server refuses absolute templates and '.'/'..' segments; the engine checks the
    rendered paths again, since a field value could contain them.
    """

    pattern: str = Field(
        default=r"(?P<stem>[^/]+)\.nc$",
        description="Regex searched in the file URL; its named groups fill the template.",
    )
    template: str = Field(
        default="{stem}",
        description="Group path, e.g. '{model}/{experiment}'.",
        min_length=1,
        max_length=512,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.startsWith('/') && !self.matches('(^|/)[.][.]?(/|$)')",
                    "grouping.template must be relative and contain no '.' or '..' segment",
                )
            ]
        },
    )
    rules: list[CombineRule] = Field(
        default_factory=lambda: [CombineRule()],
        description="Combine rules; the first whose match fits the group applies.",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"grouping.pattern is not a valid regex: {error}") from None
        return value

    @model_validator(mode="after")
    def _template_fields_exist(self) -> GroupingSpec:
        grouping.check_template(self.template, re.compile(self.pattern))
        return self


class ParserChoice(StrEnum):
    AUTO = "auto"
    HDF5 = "hdf5"
    NETCDF3 = "netcdf3"


class SplitSpec(ApiModel):
    """Split single-chunk contiguous arrays into one virtual chunk per step along ``dimension``."""

    dimension: str = Field(description="Dimension to split along, e.g. time.")


#: Names of the fixes the engine ships (``engine.fixes.BUILTIN_FIXES``; a test keeps them equal).
BUILTIN_FIX_NAMES = ("ismip6", "time-units", "ismip6-grid")


class VirtualizationSpec(ApiModel):
    parser: ParserChoice = Field(
        default=ParserChoice.AUTO, description="auto picks the parser from the magic bytes."
    )
    loadable_variables: list[str] | None = Field(
        default=None,
        description="Variables stored as real data; default: the dimension coordinates.",
    )
    drop_variables: list[str] = Field(default_factory=list)
    fixes: list[str] = Field(
        default_factory=list,
        description="Built-in fixes ('ismip6') or 'package.module:function' callables.",
    )
    split: SplitSpec | None = None
    decode_times: bool = Field(
        default=True,
        description="false: a file whose time coordinate does not decode to dates (a fill value "
        "as time, units xarray cannot read) is stored with its numbers as they are, for readers "
        "that open it with decode_times=False, instead of failing.",
    )

    @field_validator("fixes")
    @classmethod
    def _fix_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in BUILTIN_FIX_NAMES and not re.fullmatch(r"[\w.]+:\w+", name):
                raise ValueError(
                    f"virtualization.fixes: {name!r} is neither a built-in fix "
                    f"({sorted(BUILTIN_FIX_NAMES)}) nor 'package.module:function'"
                )
        return value


class Codec(StrEnum):
    ZSTD = "zstd"
    LZ4 = "lz4"
    GZIP = "gzip"
    NONE = "none"


class EncodingSpec(ApiModel):
    """How materialized chunks are compressed (every data variable alike)."""

    codec: Codec = Field(default=Codec.ZSTD, description="zstd, lz4 (Blosc), gzip or none.")
    level: int = Field(default=5, ge=0, le=22, description="Compression level (zstd 1-22, gzip 1-9).")
    shuffle: bool = Field(
        default=False,
        description="Byte-shuffle before compressing. Off by default: on GNSS data, mostly NaN, "
        "zstd alone compresses better (docs/gnss.md has the figures).",
    )

    @model_validator(mode="after")
    def _level_fits_codec(self) -> EncodingSpec:
        if self.codec == Codec.GZIP and self.level > 9:
            raise ValueError("materialize.encoding.level: gzip takes levels 0-9")
        if self.codec == Codec.LZ4 and self.level > 9:
            raise ValueError("materialize.encoding.level: lz4 (Blosc) takes levels 0-9")
        return self


class OnOverlap(StrEnum):
    SKIP = "skip"  # keep the epochs already in the store; write only the new ones
    REPLACE = "replace"  # the file's values replace the store's at its epochs
    FAIL = "fail"  # a file with epochs already in the store becomes a failure record


#: Names of the readers the engine ships (``engine.materialize.readers.BUILTIN_READERS``).
BUILTIN_READER_NAMES = ("rinex",)
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"


class MaterializeSpec(ApiModel):
    """Read each file with a reader and write its values as real chunks, appended along one
    dimension at the index its coordinate gives. For sources that cannot be virtualized, such as
    GNSS RINEX text files."""

    reader: str = Field(
        default="rinex",
        description="Built-in reader ('rinex': canVODpy's canvod-readers, RINEX 3.0x and 2.11 "
        "observations) or 'package.module:function' taking a local path and returning an xarray.Dataset.",
    )
    reader_options: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Keyword arguments for the reader, e.g. {keep_data_vars: [SNR]} for rinex.",
    )
    append_dimension: str = Field(
        default="epoch", min_length=1, max_length=128, description="The time dimension files append along."
    )
    chunks: dict[str, int] = Field(
        default_factory=lambda: {"epoch": 34560, "sid": -1},
        description="Shape of one stored object per dimension (-1: the whole dimension). The seed's "
        "GNSS strategy: epoch 34560 (a day at 2.5 s), sid -1 (all signals together).",
    )
    inner_chunks: dict[str, int] | None = Field(
        default=None,
        description="Zarr sharding: each stored object holds chunks of this shape, so appending one file "
        "rewrites only the chunks it touches. Default: along appendDimension, chunks/48 when that divides "
        "evenly (720 for 34560), else no sharding; other dimensions whole. {} turns sharding off.",
    )
    encoding: EncodingSpec = Field(default_factory=EncodingSpec)
    on_overlap: OnOverlap = Field(
        default=OnOverlap.SKIP,
        description="Epochs already in the store: skip keeps them, replace overwrites them with the new "
        "file's, fail makes the file a failure record.",
    )
    interval: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        description="Sampling interval of the append dimension, e.g. 5s; default: from the data.",
    )
    origin: datetime | None = Field(
        default=None,
        description="First epoch of the store's time axis; default: the start (UTC day) of the earliest "
        "epoch of the first files written. Files before it cannot be placed and fail.",
    )
    accept_repairs: bool = Field(
        default=False,
        description="When the reader drops malformed epochs of a file (rinex: rinex_epochs_rejected), the "
        "file fails (RejectedEpochsError) unless this is true; then the epochs it could read are written "
        "and the repair is listed in the failure log's repairs.",
    )
    files_per_commit: int = Field(
        default=192,
        ge=1,
        le=100000,
        description="Files read, written and committed together (192: two days of 15-minute files).",
    )

    @field_validator("reader")
    @classmethod
    def _reader_name(cls, value: str) -> str:
        if value not in BUILTIN_READER_NAMES and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(
                f"materialize.reader: {value!r} is neither a built-in reader "
                f"({sorted(BUILTIN_READER_NAMES)}) nor 'package.module:function'"
            )
        return value

    @field_validator("chunks", "inner_chunks")
    @classmethod
    def _chunk_sizes(cls, value: dict[str, int] | None, info: ValidationInfo) -> dict[str, int] | None:
        name = "innerChunks" if info.field_name == "inner_chunks" else "chunks"
        for dimension, size in (value or {}).items():
            if size == 0 or size < -1:
                raise ValueError(f"materialize.{name}.{dimension}: {size} is neither a size > 0 nor -1")
        return value

    @model_validator(mode="after")
    def _chunks_cover_append_dimension(self) -> MaterializeSpec:
        size = self.chunks.get(self.append_dimension)
        if size is None or size < 1:
            raise ValueError(
                f"materialize.chunks: give {self.append_dimension} (the appendDimension) a size > 0"
            )
        inner = (self.inner_chunks or {}).get(self.append_dimension)
        if inner is not None and inner > 0 and size % inner:
            raise ValueError(
                f"materialize.innerChunks.{self.append_dimension}: {inner} does not divide "
                f"chunks.{self.append_dimension} ({size})"
            )
        return self


class ExecutionSpec(ApiModel):
    workers: int = Field(default=2, ge=1, le=1000, description="Dask worker processes or pods.")
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    worker_memory: str = Field(
        default="2Gi",
        pattern=MEMORY_QUANTITY_PATTERN,
        description="Memory per worker; also the address space each worker's parser process may use.",
    )
    worker_cpu: str = Field(
        default="1", pattern=CPU_QUANTITY_PATTERN, description="CPU per worker (Kubernetes), e.g. 1 or 500m."
    )
    scheduler: str | None = Field(default=None, description="Address of an existing Dask scheduler to use.")
    retries: int = Field(default=3, ge=0, le=20, description="Retries for transient errors.")
    files_per_task: int = Field(
        default=0, ge=0, le=10000, description="Files per Dask task; 0 chooses automatically."
    )
    files_in_flight: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Files each worker process fetches ahead of its parser (the first 256 KiB of "
        "each, 1 MiB of a NetCDF3 file, held in memory until parsed). On object storage a parse "
        "waits on round trips; with several files in flight the worker parses while the next files "
        "arrive. 1 fetches each file only when its parse starts.",
    )
    file_timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Seconds one file's parse may take. Each file is parsed in a parser process beside "
        "the worker; a parse that takes longer is killed and the file becomes a FileTimeoutError "
        "failure record. A parser that crashes (ParserCrashedError) or needs more memory than "
        "workerMemory (MemoryLimitError) also costs only its file.",
    )
    commit_memory: str = Field(
        default="2Gi", pattern=MEMORY_QUANTITY_PATTERN, description="Memory of the commit pod (Kubernetes)."
    )
    commit_cpu: str = Field(
        default="1", pattern=CPU_QUANTITY_PATTERN, description="CPU of the commit pod (Kubernetes)."
    )
    deadline_seconds: int = Field(
        default=86400,
        ge=60,
        description="The batch fails if it has not finished this long after it started (Kubernetes).",
    )
    pod_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Times a crashed commit pod is restarted; each restart resumes from the last commit.",
    )


class CommitSpec(ApiModel):
    every_groups: int = Field(default=2000, ge=1, description="Commit after this many groups.")
    every_seconds: float = Field(default=300, gt=0, description="Commit at least this often.")
    message: str | None = Field(default=None, description="Prefix for commit messages.")


class FailureSpec(ApiModel):
    max_failed_files: int | None = Field(
        default=None, ge=0, description="Failures tolerated before the batch counts as failed."
    )
    max_failed_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of files allowed to fail."
    )


#: A span of time for validation gates: 30s, 15m, 1h, 1d.
GATE_DURATION_PATTERN = r"^[0-9]+(s|m|h|d)$"


class FilesPerPeriodGate(ApiModel):
    """Completeness: every whole period the run wrote into holds enough files.

    Judged on the files the store's registry says filled each group's epochs, so it needs
    ``spec.materialize``. Only periods that ended before the group's newest epoch count: a day
    still being delivered is not incomplete yet."""

    period: str = Field(pattern=GATE_DURATION_PATTERN, description="The period, e.g. 1d or 1h.")
    expected: int = Field(ge=1, le=1000000, description="Files a whole period holds, e.g. 96 a day.")
    min_fraction: float = Field(
        default=1.0, gt=0, le=1, description="Fraction of expected files a period must hold."
    )


class TimeContinuityGate(ApiModel):
    """The time coordinate of every group the run wrote rises strictly, with no step wider than
    ``maxGap``: a missing day or a file delivered twice is caught before readers see it."""

    dimension: str = Field(default="time", min_length=1, max_length=128, description="The time dimension.")
    max_gap: str = Field(
        pattern=GATE_DURATION_PATTERN, description="Widest step allowed between neighbours, e.g. 1d."
    )


class ValidationSpec(ApiModel):
    """Gates the staged run must pass before the target branch moves (needs ``staging: true``).
    The sample read of every written group (chunks decode) always runs with staging."""

    files_per_period: FilesPerPeriodGate | None = None
    time_continuity: TimeContinuityGate | None = None


class IngestBatchSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.materialize) && has(self.virtualization))",
                    "spec.materialize and spec.virtualization exclude each other",
                ),
                cel(
                    "!has(self.validation) || (has(self.staging) && self.staging)",
                    "spec.validation needs spec.staging: true (gates check the staged branch)",
                ),
                cel(
                    "!has(self.validation) || !has(self.validation.filesPerPeriod) || has(self.materialize)",
                    "spec.validation.filesPerPeriod needs spec.materialize (the registry knows each "
                    "file's epochs)",
                ),
            ]
        }
    )

    store: str = immutable_field(
        "Name of the IcechunkStore (same namespace).", "spec.store", pattern=DNS_LABEL_PATTERN, max_length=63
    )
    source: SourceSpec
    grouping: GroupingSpec = Field(default_factory=GroupingSpec)
    virtualization: VirtualizationSpec = Field(default_factory=VirtualizationSpec)
    materialize: MaterializeSpec | None = Field(
        default=None,
        description="Read and write the files' values as real chunks instead of virtualizing them.",
    )
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    commit: CommitSpec = Field(default_factory=CommitSpec)
    failures: FailureSpec = Field(default_factory=FailureSpec)
    branch: str | None = Field(default=None, description="Branch to commit to; default the store's.")
    tag: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=128,
        description="Tag the branch tip when the batch succeeds (a processing version, e.g. v2.1).",
    )
    staging: bool = Field(
        default=False,
        description=(
            "Commit to a branch staging-<batch> first; the target branch moves to it only after a "
            "sample read of every written group, and only if it did not move meanwhile."
        ),
    )
    validation: ValidationSpec | None = Field(
        default=None, description="Gates the staged data must pass before the target branch moves."
    )

    @model_serializer(mode="wrap")
    def _without_the_other_mode(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A materialized batch is written without ``virtualization``'s defaults, so what
        ``to_api`` gives (a repair batch, a test's YAML) is accepted again."""
        data: dict[str, Any] = handler(self)
        if self.materialize is not None:
            data.pop("virtualization", None)
        return data

    @model_validator(mode="after")
    def _one_ingest_mode(self) -> IngestBatchSpec:
        if self.materialize is not None and "virtualization" in self.model_fields_set:
            raise ValueError("spec.materialize and spec.virtualization exclude each other")
        if self.validation is not None and not self.staging:
            raise ValueError("spec.validation needs spec.staging: true (gates check the staged branch)")
        if self.validation is not None and self.validation.files_per_period and self.materialize is None:
            raise ValueError(
                "spec.validation.filesPerPeriod needs spec.materialize "
                "(the registry knows each file's epochs)"
            )
        return self


class FileCounts(ApiModel):
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0


class BatchPhase(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class IngestBatchStatus(ApiModel):
    phase: BatchPhase | None = Field(default=None, description="Queued, Running, Succeeded or Failed.")
    conditions: list[Condition] = conditions_field()
    files: FileCounts = Field(default_factory=FileCounts)
    progress: str | None = Field(default=None, description="Files done (ingested or skipped) / total.")
    stage: str | None = Field(default=None, description="What the commit pod is doing now.")
    message: str | None = Field(default=None, description="Why the commit pod refused the batch, if it did.")
    commits: list[str] = Field(default_factory=list, description="Snapshot ids this batch committed.")
    failure_log: str | None = Field(default=None, description="Where the failure records went.")
    mean_commit_seconds: float | None = Field(default=None, description="Mean time of one commit.")
    queue_position: int | None = Field(default=None, description="Batches ahead of this one on its store.")
    commit_job: str | None = Field(default=None, description="Name of the commit Job.")
    attempt: int | None = Field(
        default=None, description="Retries acted on; the commit Job of attempt N > 0 is <batch>-commit-rN."
    )
    last_retry_request: str | None = Field(
        default=None, description="The value of the retry-requested annotation last acted on."
    )
    dask_cluster: str | None = Field(default=None, description="Name of the DaskCluster.")
    start_time: datetime | None = None
    completion_time: datetime | None = None
    observed_generation: int | None = None


class IngestBatch(ResourceModel):
    kind_name: ClassVar[str] = "IngestBatch"
    plural: ClassVar[str] = "ingestbatches"
    short_names: ClassVar[tuple[str, ...]] = ("ib",)
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Store", "type": "string", "jsonPath": ".spec.store"},
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Done/Total", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.files.failed"},
    )

    kind: Literal["IngestBatch"] = "IngestBatch"
    spec: IngestBatchSpec
    status: IngestBatchStatus | None = None
