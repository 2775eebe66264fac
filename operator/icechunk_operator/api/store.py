"""IcechunkStore: where a repository lives, how it is configured, which sources it may reference."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from icechunk_operator.api.common import (
    MEMORY_QUANTITY_PATTERN,
    ApiModel,
    Condition,
    Credentials,
    ResourceModel,
    cel,
    check_cron,
    conditions_field,
    immutable_field,
)

SUPPORTED_SCHEMES = ("file", "s3", "gs", "az")


class ObjectStoreLocation(ApiModel):
    """An object-store location and how to reach it (shared by the repository and containers)."""

    endpoint: str | None = Field(
        default=None,
        description="Custom endpoint (S3-compatible server, GCS emulator base URL, Azure URL).",
    )
    region: str | None = Field(default=None, description="S3 region.")
    allow_http: bool = Field(default=False, description="Allow plain http to the endpoint.")
    force_path_style: bool = Field(default=False, description="S3 path-style addressing.")
    azure_account: str | None = Field(default=None, description="Azure storage account name.")
    credentials: Credentials = Field(default_factory=Credentials)
    request_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="A request to this location that is not answered within this many seconds (its "
        "upload included) is abandoned and tried again, so a stalled server fails the run instead of "
        "hanging it. Raise it for large objects over a slow link.",
    )
    max_tries: int = Field(
        default=10,
        ge=1,
        le=50,
        description="Tries of each request to this location, the first included, with exponential "
        "backoff between them, before the run gives up on the storage with an error.",
    )


AZURE_ACCOUNT_REQUIRED = "azureAccount is required for az:// URLs"


def _azure_account_rule(url_field: str) -> ConfigDict:
    """az:// needs an account name: the URL holds only the container."""
    rule = cel(f"!self.{url_field}.startsWith('az://') || has(self.azureAccount)", AZURE_ACCOUNT_REQUIRED)
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [rule]})


class StorageSpec(ObjectStoreLocation):
    model_config = _azure_account_rule("url")

    url: str = immutable_field(
        "Repository location: file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.",
        "spec.storage.url",
        pattern=r"^(file|s3|gs|az)://.+",
    )

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in SUPPORTED_SCHEMES:
            raise ValueError(f"url must start with one of {[s + '://' for s in SUPPORTED_SCHEMES]}")
        if scheme != "file" and "/" not in rest.strip("/"):
            raise ValueError(
                "url needs a prefix inside the bucket: repositories at a bucket root "
                "are not supported by Icechunk 2"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _azure_account(self) -> StorageSpec:
        if self.url.startswith("az://") and not self.azure_account:
            raise ValueError(AZURE_ACCOUNT_REQUIRED)
        return self


class CompressionAlgorithm(StrEnum):
    ZSTD = "zstd"


class CompressionSpec(ApiModel):
    algorithm: CompressionAlgorithm = Field(
        default=CompressionAlgorithm.ZSTD, description="Metadata compression algorithm."
    )
    level: int = Field(default=3, ge=1, le=22, description="Compression level.")


class ManifestSplitSpec(ApiModel):
    """Split manifests of matching arrays into pieces of ``size`` chunks along ``dimension``."""

    path_regex: str = Field(default=".*", description="Regex on the array path, e.g. '.*/lithk'.")
    dimension: str = Field(description="Dimension name (regex) to split along.")
    size: int = Field(
        ge=1, le=2**32 - 1, description="Chunks per manifest split along that dimension (Icechunk's u32)."
    )

    @field_validator("path_regex", "dimension")
    @classmethod
    def _compiles(cls, value: str) -> str:
        """Icechunk takes a regex that does not compile and never matches it: the split would
        silently not happen, so it is refused here, naming the field."""
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regex: {error}") from None
        return value


class RepositoryConfigSpec(ApiModel):
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    inline_threshold_bytes: int = Field(
        default=8192,
        ge=0,
        le=65536,
        description="Chunks up to this size are stored inside the manifests. Loaded coordinates of "
        "NetCDF files are a few kilobytes: inlined, they cost no object to write and no request to read.",
    )
    manifest_splitting: list[ManifestSplitSpec] = Field(default_factory=list)
    commit_concurrency: int = Field(
        default=64,
        ge=1,
        le=256,
        description="Manifests a commit writes (and fetches) at the same time. A commit writes one "
        "manifest per changed array; on object storage each is a round trip, and Icechunk's own "
        "default, 1, makes a commit of 2,000 new groups wait for some 6,600 of them in a row. Memory "
        "grows with this times the size of a manifest (kilobytes for NetCDF archives; lower it for "
        "arrays of millions of chunks).",
    )
    spec_version: Literal[1, 2] = Field(
        default=2, description="Icechunk format; 1 keeps the store readable by Icechunk 1.x."
    )


class VirtualChunkContainerSpec(ObjectStoreLocation):
    """A source prefix this store may reference. Ingests outside every container are refused."""

    model_config = _azure_account_rule("urlPrefix")

    url_prefix: str = Field(
        description="Source prefix, ending with '/', e.g. s3://ismip6/ or file:///data/archive/.",
        # Not a bare root ('file:///', 's3:///'): Icechunk refuses a container without a path.
        pattern=r"^(file|s3|gs|az)://.*[^/]/$",
    )

    @field_validator("url_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if not sep or scheme not in SUPPORTED_SCHEMES:
            raise ValueError(f"urlPrefix must start with one of {[s + '://' for s in SUPPORTED_SCHEMES]}")
        if not value.endswith("/"):
            raise ValueError("urlPrefix must end with '/'")
        return value

    @model_validator(mode="after")
    def _azure_account(self) -> VirtualChunkContainerSpec:
        if self.url_prefix.startswith("az://") and not self.azure_account:
            raise ValueError(AZURE_ACCOUNT_REQUIRED)
        return self


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


#: ``30m``, ``12h``, ``7d``, ``2w``: what ``engine.lifecycle.parse_duration`` reads. At most eight
#: digits: 99999999w still fits a timedelta, where a longer number overflowed it in the pod.
DURATION_PATTERN = r"^[0-9]{1,8}[smhdw]$"


class MaintenanceSpec(ApiModel):
    """Expire old snapshots of the store's branch, then garbage-collect what no kept snapshot needs.

    Snapshots that a branch or a tag points at are never expired, so tagged processing versions
    stay readable. A run takes the store's turn in its queue: no batch commits while it runs.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.expireOlderThan) != has(self.keepSnapshots)",
                    "exactly one of expireOlderThan, keepSnapshots must be set",
                )
            ]
        }
    )

    schedule: str | None = Field(
        default=None,
        description="Cron schedule (UTC), e.g. '0 3 * * 0'. Without one, maintenance runs only when "
        "requested with the icechunkoperator.io/maintenance-requested annotation.",
    )
    expire_older_than: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        description="Expire snapshots older than this: a number and s, m, h, d or w (e.g. 30d).",
    )
    keep_snapshots: int | None = Field(
        default=None, ge=1, description="Or keep the newest N snapshots of the branch."
    )
    memory: str = Field(
        default="2Gi",
        pattern=MEMORY_QUANTITY_PATTERN,
        description="Memory of the maintenance pod: garbage collection reads every kept manifest.",
    )
    deadline_seconds: int = Field(
        default=21600,
        ge=60,
        description="A run still going after this fails, and frees the store's queue for its batches.",
    )
    history_limit: int = Field(
        default=3, ge=0, le=100, description="Finished Jobs kept besides the latest run's."
    )

    _schedule = field_validator("schedule")(check_cron)

    @model_validator(mode="after")
    def _one_rule(self) -> MaintenanceSpec:
        if (self.expire_older_than is None) == (self.keep_snapshots is None):
            raise ValueError("exactly one of expireOlderThan, keepSnapshots must be set")
        return self


class IcechunkStoreSpec(ApiModel):
    storage: StorageSpec
    config: RepositoryConfigSpec = Field(default_factory=RepositoryConfigSpec)
    virtual_chunk_containers: list[VirtualChunkContainerSpec] = Field(
        min_length=1, description="The source prefixes this store may reference."
    )
    branch: str = Field(default="main", description="Branch that ingests commit to.")
    failure_log_url: str | None = Field(
        default=None,
        pattern=r"^(file|s3|gs|az)://.+",
        description="Where failure logs go (file://, s3://, gs:// or az://, written with the "
        "store's credentials); default: a 'failures' folder beside the store.",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="Retain keeps the repository when the resource is deleted.",
    )
    maintenance: MaintenanceSpec | None = Field(
        default=None, description="Expire old snapshots and garbage-collect, on a schedule or on request."
    )

    @model_validator(mode="after")
    def _containers_distinct(self) -> IcechunkStoreSpec:
        prefixes = [c.url_prefix for c in self.virtual_chunk_containers]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("virtualChunkContainers: urlPrefix values must be distinct")
        return self


class SnapshotSummary(ApiModel):
    id: str
    written_at: datetime
    message: str
    batch: str | None = Field(default=None, description="The IngestBatch that wrote it, if any.")


class MaintenanceResult(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class MaintenanceStatus(ApiModel):
    """The latest maintenance run: what made it due, its Job, and what it freed."""

    job: str | None = Field(default=None, description="The Job of the latest run.")
    result: MaintenanceResult | None = None
    message: str | None = None
    last_schedule_time: datetime | None = Field(
        default=None, description="The cron time of the latest scheduled run."
    )
    last_request: str | None = Field(
        default=None, description="The maintenance-requested annotation value last acted on."
    )
    last_run_time: datetime | None = Field(default=None, description="When the latest run finished.")
    cutoff: datetime | None = Field(default=None, description="Snapshots written before this expired.")
    expired_snapshots: int | None = None
    deleted_snapshots: int | None = None
    deleted_manifests: int | None = None
    deleted_chunks: int | None = None
    deleted_bytes: int | None = None


class IcechunkStoreStatus(ApiModel):
    conditions: list[Condition] = conditions_field()
    branches: dict[str, str] = Field(default_factory=dict, description="Branch name to tip snapshot.")
    last_snapshot: str | None = Field(default=None, description="Tip snapshot of the store's branch.")
    last_commit_time: datetime | None = None
    datasets: int | None = Field(default=None, description="Number of ingested groups.")
    sources: int | None = Field(default=None, description="Number of source files in the ledger.")
    recent_snapshots: list[SnapshotSummary] = Field(
        default_factory=list, description="The newest snapshots of the store's branch, newest first."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tag name to snapshot.")
    maintenance: MaintenanceStatus | None = None
    observed_generation: int | None = None


class IcechunkStore(ResourceModel):
    kind_name: ClassVar[str] = "IcechunkStore"
    plural: ClassVar[str] = "icechunkstores"
    short_names: ClassVar[tuple[str, ...]] = ("ics",)
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Snapshot", "type": "string", "jsonPath": ".status.lastSnapshot"},
        {"name": "Datasets", "type": "integer", "jsonPath": ".status.datasets"},
        {"name": "Maintenance", "type": "string", "jsonPath": ".status.maintenance.result", "priority": "1"},
        {
            "name": "Maintained",
            "type": "date",
            "jsonPath": ".status.maintenance.lastRunTime",
            "priority": "1",
        },
    )

    kind: Literal["IcechunkStore"] = "IcechunkStore"
    spec: IcechunkStoreSpec
    status: IcechunkStoreStatus | None = None
