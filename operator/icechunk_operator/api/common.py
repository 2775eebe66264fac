"""Pieces shared by the three resources: metadata, conditions, credentials, the base model.

The pydantic models in this package are the single source of truth for the custom resources:
the CRDs in ``crds/`` are generated from them, and the CLI reads the same YAML. Field names are
camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from icechunk_operator.api.wire_values import read_as_the_server_does, without_dropped_nulls

#: Validation context key: the document comes from a person (a YAML file), not the API server.
USER_DOCUMENT = "user_document"

API_GROUP = "icechunkoperator.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

#: A DNS-1123 label: resource names, and the fields that name a resource (``spec.store``).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain, as Kubernetes names Secrets.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Memory as a pod's resources take it (2Gi, 512Mi, 1.5G, 1000000), and Dask's memory limit too.
MEMORY_QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
#: CPU as a pod's resources take it: 1, 0.5, 500m.
CPU_QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
#: Matched whole (``fullmatch``): with ``$``, "name" + "\n" passed as a DNS label.
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls_as_the_api_server_drops(cls, data: Any) -> Any:
        return without_dropped_nulls(cls.model_fields, data)

    @field_validator("*", mode="before")
    @classmethod
    def _as_the_api_server_reads(cls, value: Any, info: ValidationInfo) -> Any:
        """No lax coercion, null as "not given": see :mod:`~icechunk_operator.api.wire_values`."""
        assert info.field_name is not None
        return read_as_the_server_does(cls.model_fields[info.field_name], value)

    def to_api(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(ApiModel):
    """The subset of Kubernetes ObjectMeta this tool reads."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="ignore",  # the API server adds uid, resourceVersion, managedFields, ...
    )

    #: Every field of Kubernetes' ObjectMeta today. A document a person wrote (validated with the
    #: context ``USER_DOCUMENT``, as the CLI does) may hold no other: the API server refuses a
    #: misspelt ``lables`` and so does the CLI. What the operator reads back from the server is
    #: not checked: a field a later Kubernetes adds must not make every resource unreadable.
    KNOWN_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            *("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation"),
            *("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels"),
            *("annotations", "ownerReferences", "finalizers", "managedFields"),
        }
    )

    name: str = Field(description="Name of the resource, a DNS label.")
    namespace: str | None = Field(default=None, description="Namespace of the resource.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and (info.context or {}).get(USER_DOCUMENT):
            unknown = sorted(str(key) for key in data if key not in cls.KNOWN_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
        return data

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
            raise ValueError(
                f"metadata.name {value!r} must be a DNS label: lowercase letters, digits and "
                "'-', at most 63 characters"
            )
        return value


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes API convention condition (metav1.Condition)."""

    type: str
    status: ConditionStatus
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: datetime = Field(default_factory=lambda: datetime.now(UTC))


def conditions_field() -> Any:
    """A ``conditions`` list: one entry per type, merged by type on server-side apply."""
    return Field(
        default_factory=list,
        description="Current conditions of the resource (Kubernetes API conventions).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def cel(rule: str, message: str) -> JsonValue:
    """One CEL validation rule for the CRD (``x-kubernetes-validations``)."""
    return {"rule": rule, "message": message}


def problem_text(problem: Any) -> str:
    """One validation problem as ``dotted.field.path: message``, the way users name fields."""
    path = ".".join(str(part) for part in problem["loc"]) or "(document)"
    return f"{path}: {problem['msg'].removeprefix('Value error, ')}"


def first_problem(error: ValidationError) -> str:
    return problem_text(error.errors()[0])


#: The macros a Kubernetes CronJob takes, as five-field expressions.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def expand_cron(schedule: str) -> str:
    """``@daily`` and the other CronJob macros as five fields; anything else unchanged."""
    return CRON_MACROS.get(schedule.strip(), schedule)


def check_cron(schedule: str | None) -> str | None:
    """A cron expression the operator can schedule by; the CRD schema cannot check this."""
    if schedule is None:
        return None
    from cronsim import CronSim, CronSimError

    fields = len(expand_cron(schedule).split())
    if fields != 5:  # cronsim reads six as seconds first: '0 3 * * * *' would be hourly, at :03
        raise ValueError(
            f"{schedule!r} is not a cron expression: {fields} fields, where a schedule has five "
            "(minute hour day-of-month month day-of-week) or is a macro such as @daily"
        )
    try:
        CronSim(expand_cron(schedule), datetime.now(UTC))
    except CronSimError as error:
        raise ValueError(f"{schedule!r} is not a cron expression: {error}") from None
    return schedule


def immutable_field(description: str, what: str, **options: Any) -> Any:
    """A field whose value cannot change once the resource exists (checked by the API server)."""
    return Field(
        description=description,
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", f"{what} is immutable")]},
        **options,
    )


class EnvCredentials(ApiModel):
    """Names of environment variables that hold credentials (filled from a Secret in-cluster)."""

    access_key_id: str = Field(default="AWS_ACCESS_KEY_ID", description="S3 access key id variable.")
    secret_access_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", description="S3 secret access key variable."
    )
    session_token: str = Field(default="AWS_SESSION_TOKEN", description="S3 session token variable.")
    azure_account_key: str = Field(
        default="AZURE_STORAGE_ACCOUNT_KEY", description="Azure account key variable."
    )
    azure_sas_token: str = Field(default="AZURE_STORAGE_SAS_TOKEN", description="Azure SAS variable.")


class SecretReference(ApiModel):
    """A Kubernetes Secret whose keys become environment variables of the pods that need them."""

    name: str = Field(
        description="Secret name, in the resource's namespace.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )


class Credentials(ApiModel):
    """Where credentials come from. They are read at use and never stored anywhere.

    Exactly one source applies: ``anonymous``, a ``file`` (a GCS service-account JSON, or a
    JSON object of S3/Azure keys), or environment variables (the default). In a cluster,
    ``secretRef`` names the Secret the operator exposes to its pods as those variables.
    """

    anonymous: bool = Field(default=False, description="Unsigned requests (public buckets).")
    file: str | None = Field(
        default=None, description="Path of a credentials file (service-account JSON for gs://)."
    )
    env: EnvCredentials = Field(default_factory=EnvCredentials)
    secret_ref: SecretReference | None = Field(
        default=None, description="Secret that holds the credentials (Kubernetes only)."
    )


class ResourceModel(ApiModel):
    """A custom resource: apiVersion, kind, metadata, spec and status."""

    #: Filled by each resource class: CRD names and printer columns.
    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]] = ()
    printer_columns: ClassVar[tuple[dict[str, str], ...]] = ()

    api_version: str = Field(default=GROUP_VERSION, description="Must be " + GROUP_VERSION)
    kind: str
    metadata: ObjectMeta

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value != GROUP_VERSION:
            raise ValueError(f"apiVersion must be {GROUP_VERSION!r}, got {value!r}")
        return value
