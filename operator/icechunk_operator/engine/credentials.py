"""Credentials resolved at the moment of use, from the environment or a file the spec names.

Nothing returned here is ever written to status, logs, commit metadata or the repository
config: callers pass it straight to the client that needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from icechunk_operator.api.common import Credentials


class CredentialsError(ValueError):
    pass


#: Extra variables that take precedence over the process environment for the current context.
#: The operator opens stores of many namespaces in one process, each with its own Secret, so it
#: cannot put their keys into ``os.environ``; it sets them here, per call, instead.
_NO_OVERLAY: Mapping[str, str] = MappingProxyType({})
_overlay: ContextVar[Mapping[str, str]] = ContextVar("credentials_overlay", default=_NO_OVERLAY)


@contextmanager
def credentials_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Resolve credentials from ``values`` first, then the process environment, inside the block."""
    token = _overlay.set({**_overlay.get(), **values})
    try:
        yield
    finally:
        _overlay.reset(token)


def _getenv(name: str) -> str | None:
    return _overlay.get().get(name) or os.environ.get(name) or None


@dataclass(frozen=True, repr=False)
class ResolvedCredentials:
    """Secrets in memory only; ``repr`` never shows them."""

    anonymous: bool = False
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_session_token: str | None = None
    gcs_service_account_file: str | None = None
    azure_account_key: str | None = None
    azure_sas_token: str | None = None

    def __repr__(self) -> str:
        present = [k for k, v in self.__dict__.items() if v and k != "anonymous"]
        return f"ResolvedCredentials(anonymous={self.anonymous}, present={present})"


def resolve_credentials(spec: Credentials, scheme: str) -> ResolvedCredentials:
    if spec.anonymous:
        return ResolvedCredentials(anonymous=True)
    if spec.file:
        return _from_file(Path(spec.file), scheme)
    env = spec.env
    return ResolvedCredentials(
        s3_access_key_id=_getenv(env.access_key_id),
        s3_secret_access_key=_getenv(env.secret_access_key),
        s3_session_token=_getenv(env.session_token),
        azure_account_key=_getenv(env.azure_account_key),
        azure_sas_token=_getenv(env.azure_sas_token),
    )


#: The fields of a service-account key file that object_store reads, with their JSON types.
_SERVICE_ACCOUNT_FIELDS: dict[str, type] = {
    "private_key": str,
    "private_key_id": str,
    "client_email": str,
    "gcs_base_url": str,
    "disable_oauth": bool,
}


def _from_file(path: Path, scheme: str) -> ResolvedCredentials:
    if not path.is_file():
        raise CredentialsError(f"credentials.file: {path} does not exist")
    try:
        keys = json.loads(path.read_text())
    except json.JSONDecodeError, UnicodeDecodeError:
        raise CredentialsError(f"credentials.file: {path} is not a JSON object") from None
    if not isinstance(keys, dict):
        raise CredentialsError(f"credentials.file: {path} is not a JSON object")
    if scheme == "gs":
        _check_service_account(path, keys)
        return ResolvedCredentials(gcs_service_account_file=str(path))
    return ResolvedCredentials(
        s3_access_key_id=keys.get("access_key_id"),
        s3_secret_access_key=keys.get("secret_access_key"),
        s3_session_token=keys.get("session_token"),
        azure_account_key=keys.get("account_key"),
        azure_sas_token=keys.get("sas_token"),
    )


def _check_service_account(path: Path, keys: dict[str, object]) -> None:
    """The GCS client reads the file itself, and its parser quotes a value of the wrong type in
    its error (``invalid type: string "<the value>", expected ...``): a whole file that is one
    JSON string, a secret where a flag belongs. That error would reach status, Events and logs,
    so the shape is checked here first, naming the field and never showing its value."""
    for name, kind in _SERVICE_ACCOUNT_FIELDS.items():
        if name in keys and not isinstance(keys[name], kind):
            wanted = "a string" if kind is str else "true or false"
            raise CredentialsError(f"credentials.file: {path}: {name} must be {wanted}")
