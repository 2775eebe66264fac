"""IcechunkStore: where a repository lives, how it is configured, which sources it may reference."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from icechunk_operator.api.common import (
    ApiModel,
    Condition,
    Credentials,
    ResourceModel,
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


class StorageSpec(ObjectStoreLocation):
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
    size: int = Field(ge=1, description="Chunks per manifest split along that dimension.")


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
    spec_version: Literal[1, 2] = Field(
        default=2, description="Icechunk format; 1 keeps the store readable by Icechunk 1.x."
    )


class VirtualChunkContainerSpec(ObjectStoreLocation):
    """A source prefix this store may reference. Ingests outside every container are refused."""

    url_prefix: str = Field(
        description="Source prefix, ending with '/', e.g. s3://ismip6/.",
        pattern=r"^(file|s3|gs|az)://.*/$",
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


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class IcechunkStoreSpec(ApiModel):
    storage: StorageSpec
    config: RepositoryConfigSpec = Field(default_factory=RepositoryConfigSpec)
    virtual_chunk_containers: list[VirtualChunkContainerSpec] = Field(
        min_length=1, description="The source prefixes this store may reference."
    )
    branch: str = Field(default="main", description="Branch that ingests commit to.")
    failure_log_url: str | None = Field(
        default=None,
        description="Where failure logs go; default: a 'failures' folder beside the store.",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="Retain keeps the repository when the resource is deleted.",
    )

    @model_validator(mode="after")
    def _containers_distinct(self) -> IcechunkStoreSpec:
        prefixes = [c.url_prefix for c in self.virtual_chunk_containers]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("virtualChunkContainers: urlPrefix values must be distinct")
        return self


class IcechunkStoreStatus(ApiModel):
    conditions: list[Condition] = conditions_field()
    branches: dict[str, str] = Field(default_factory=dict, description="Branch name to tip snapshot.")
    last_snapshot: str | None = Field(default=None, description="Tip snapshot of the store's branch.")
    last_commit_time: datetime | None = None
    datasets: int | None = Field(default=None, description="Number of ingested groups.")
    sources: int | None = Field(default=None, description="Number of source files in the ledger.")
    observed_generation: int | None = None


class IcechunkStore(ResourceModel):
    kind_name: ClassVar[str] = "IcechunkStore"
    plural: ClassVar[str] = "icechunkstores"
    short_names: ClassVar[tuple[str, ...]] = ("ics",)
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Snapshot", "type": "string", "jsonPath": ".status.lastSnapshot"},
        {"name": "Datasets", "type": "integer", "jsonPath": ".status.datasets"},
    )

    kind: Literal["IcechunkStore"] = "IcechunkStore"
    spec: IcechunkStoreSpec
    status: IcechunkStoreStatus | None = None
