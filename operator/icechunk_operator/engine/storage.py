"""From an IcechunkStore spec to an open Icechunk repository.

The repository config (compression, inline threshold, manifest splitting, virtual chunk
containers) is built from the spec and saved when it differs; credentials are passed on every
open and never persisted, as Icechunk requires.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import icechunk

from icechunk_operator.api.store import (
    IcechunkStoreSpec,
    ObjectStoreLocation,
    StorageSpec,
    VirtualChunkContainerSpec,
)
from icechunk_operator.engine.credentials import resolve_credentials
from icechunk_operator.engine.objects import FIRST_BACKOFF
from icechunk_operator.engine.urls import split_url
from icechunk_operator.exiting import first_line


def quiet_logs() -> None:
    """Icechunk warns on every local open that local disk is unsafe for concurrent commits,
    and that local disk cannot stamp write-ids in object metadata; this tool serialises
    writers per store and never turns metadata off on object stores, so only errors from
    those two are worth showing."""
    import os

    if "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter("warn,icechunk_arrow_object_store=error,icechunk_storage::readback=error")


def build_storage(spec: StorageSpec) -> icechunk.Storage:
    scheme, bucket, path = split_url(spec.url)
    creds = resolve_credentials(spec.credentials, scheme)
    if scheme == "file":
        return icechunk.local_filesystem_storage(path)
    if scheme == "s3":
        kwargs: dict[str, Any] = {}
        if creds.anonymous:
            kwargs["anonymous"] = True
        elif creds.s3_access_key_id:
            kwargs.update(
                access_key_id=creds.s3_access_key_id,
                secret_access_key=creds.s3_secret_access_key,
                session_token=creds.s3_session_token,
            )
        else:
            kwargs["from_env"] = True
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=path,
            region=spec.region,
            endpoint_url=spec.endpoint,
            allow_http=spec.allow_http,
            force_path_style=spec.force_path_style,
            **kwargs,
        )
    if scheme == "gs":
        return icechunk.gcs_storage(
            bucket=bucket,
            prefix=path,
            config=_client_config(spec, "base_url", with_timeout=True),
            service_account_file=creds.gcs_service_account_file,
            anonymous=creds.anonymous or None,
            from_env=None if (creds.gcs_service_account_file or creds.anonymous) else True,
        )
    if scheme == "az":
        if not spec.azure_account:
            raise ValueError("storage.azureAccount: required for az:// URLs")
        return icechunk.azure_storage(
            account=spec.azure_account,
            container=bucket,
            prefix=path,
            access_key=creds.azure_account_key,
            sas_token=creds.azure_sas_token,
            from_env=None if (creds.azure_account_key or creds.azure_sas_token) else True,
            config=_client_config(spec, "endpoint", with_timeout=True),
        )
    raise ValueError(f"storage.url: unsupported scheme in {spec.url!r}")


def _client_config(
    location: ObjectStoreLocation, endpoint_key: str, *, with_timeout: bool = False
) -> dict[str, str] | None:
    """object_store options for a GCS or Azure location: its endpoint (an emulator, a private
    endpoint) under the provider's key, plain http when allowed, and for the repository's own
    storage the request timeout (Icechunk's timeout settings reach only its S3 client)."""
    config = {endpoint_key: location.endpoint} if location.endpoint else {}
    if location.allow_http:
        config["allow_http"] = "true"
    if with_timeout:
        config["timeout"] = f"{location.request_timeout_seconds}s"
    return config or None


def storage_settings(location: StorageSpec) -> icechunk.StorageSettings | None:
    """How long a request to the repository may go unanswered, and how often it is tried.

    Without a limit Icechunk's S3 client waits for an answer for ever: a server that accepts the
    connection and then stalls hung a commit indefinitely. The read timeout covers a request
    from its first byte sent to the answer's headers (an upload included); a download that
    stalls afterwards is cut by the client's stalled-stream protection. The backoff starts
    where obstore's does (:data:`~icechunk_operator.engine.objects.FIRST_BACKOFF`); it must be
    given, as a retry setting without it means no backoff at all. The settings are saved with
    the repository's config, so its readers get them too. Local
    disk keeps Icechunk's own (no retries): it does not stall, and its errors are not transient.
    """
    if location.url.startswith("file://"):
        return None
    return icechunk.StorageSettings(
        timeouts=icechunk.StorageTimeoutSettings(read_timeout_ms=location.request_timeout_seconds * 1000),
        retries=icechunk.StorageRetriesSettings(
            max_tries=location.max_tries,
            initial_backoff_ms=int(FIRST_BACKOFF.total_seconds() * 1000),
            max_backoff_ms=180_000,
        ),
    )


def _container_store(container: VirtualChunkContainerSpec) -> Any:
    scheme = container.url_prefix.partition("://")[0]
    if scheme == "file":
        return icechunk.local_filesystem_store(container.url_prefix.removeprefix("file://"))
    if scheme == "s3":
        return icechunk.s3_store(
            region=container.region,
            endpoint_url=container.endpoint,
            allow_http=container.allow_http,
            anonymous=container.credentials.anonymous,
            s3_compatible=container.endpoint is not None,
            force_path_style=container.force_path_style,
        )
    if scheme == "gs":
        return icechunk.gcs_store(_client_config(container, "base_url"))
    if scheme == "az":
        from icechunk.storage import azure_store  # not re-exported at the top level

        account = container.azure_account or ""
        return azure_store(account=account, config=_client_config(container, "endpoint"))
    raise ValueError(f"virtualChunkContainers: unsupported scheme in {container.url_prefix!r}")


def container_credentials(location: ObjectStoreLocation, url_prefix: str) -> Any:
    """The credential Icechunk needs to read virtual chunks under one container."""
    scheme = url_prefix.partition("://")[0]
    creds = resolve_credentials(location.credentials, scheme)
    if scheme == "file":
        return icechunk.credentials.LocalFileSystemAccess
    if scheme == "s3":
        if creds.anonymous:
            return icechunk.s3_anonymous_credentials()
        if creds.s3_access_key_id:
            return icechunk.s3_static_credentials(
                access_key_id=creds.s3_access_key_id,
                secret_access_key=creds.s3_secret_access_key or "",
                session_token=creds.s3_session_token,
            )
        return icechunk.s3_from_env_credentials()
    if scheme == "gs":
        if creds.anonymous:
            from icechunk.credentials import gcs_anonymous_credentials  # not re-exported

            return gcs_anonymous_credentials()
        if creds.gcs_service_account_file:
            # gcs_credentials, not gcs_static_credentials: containers_credentials takes only
            # the wrapped kinds and refuses a bare static one
            return icechunk.gcs_credentials(service_account_file=creds.gcs_service_account_file)
        return icechunk.gcs_from_env_credentials()
    if creds.anonymous:
        return icechunk.azure_anonymous_credentials()
    if creds.azure_account_key:
        return icechunk.azure_credentials(access_key=creds.azure_account_key)
    if creds.azure_sas_token:
        return icechunk.azure_credentials(sas_token=creds.azure_sas_token)
    return icechunk.azure_from_env_credentials()


def build_config(spec: IcechunkStoreSpec) -> icechunk.RepositoryConfig:
    cfg = spec.config
    splitting = None
    if cfg.manifest_splitting:
        sizes = tuple(
            (
                icechunk.ManifestSplitCondition.path_matches(split.path_regex),
                ((icechunk.ManifestSplitDimCondition.DimensionName(split.dimension), split.size),),
            )
            for split in cfg.manifest_splitting
        )
        splitting = icechunk.ManifestSplittingConfig.from_dict({cond: dict(dims) for cond, dims in sizes})
    manifest = icechunk.ManifestConfig(
        splitting=splitting,
        max_concurrent_manifest_fetches_during_commit=cfg.commit_concurrency,
    )
    config = icechunk.RepositoryConfig(
        inline_chunk_threshold_bytes=cfg.inline_threshold_bytes,
        compression=icechunk.CompressionConfig(
            algorithm=icechunk.CompressionAlgorithm.Zstd, level=cfg.compression.level
        ),
        manifest=manifest,
        storage=storage_settings(spec.storage),
    )
    for container in spec.virtual_chunk_containers:
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(container.url_prefix, _container_store(container))
        )
    return config


def authorize_containers(spec: IcechunkStoreSpec) -> dict[str, Any]:
    return icechunk.containers_credentials(
        {c.url_prefix: container_credentials(c, c.url_prefix) for c in spec.virtual_chunk_containers}
    )


def open_repository(spec: IcechunkStoreSpec, *, create: bool = True) -> icechunk.Repository:
    """Open (or create) the repository, applying the spec's config when it changed.

    Opening is the first use of the storage: Icechunk builds its S3 client then, with that use's
    settings, and keeps it. So the open itself carries the request limits (an existence check
    first would build a client without them, and every later request would wait for ever on a
    stalled server)."""
    storage = build_storage(spec.storage)
    config = build_config(spec)
    credentials = authorize_containers(spec)
    try:
        repo = icechunk.Repository.open(storage, config=config, authorize_virtual_chunk_access=credentials)
    except icechunk.RepositoryNotFoundError:
        if not create:
            raise FileNotFoundError(f"storage.url: no Icechunk repository at {spec.storage.url}") from None
        return icechunk.Repository.create(
            storage,
            config=config,
            authorize_virtual_chunk_access=credentials,
            spec_version=spec.config.spec_version,
        )
    stored = icechunk.Repository.fetch_config(storage)
    if stored is None or stored != config:
        repo.save_config()
    return repo


class DeleteFailedError(RuntimeError):
    """Some of the repository could not be deleted: the data is still there, so whoever asked
    (the finalizer) must not go away, and trying again may succeed once the cause is fixed."""


def delete_repository(spec: StorageSpec) -> int:
    """Delete every object of the repository (deletionPolicy: Delete); returns how many.

    Raises :class:`DeleteFailedError` when anything is left, never a partial count."""
    scheme, _, path = split_url(spec.url)
    if scheme == "file":
        return _delete_folder(Path(path), spec.url)
    from icechunk_operator.engine.objects import build_object_store

    store, path = build_object_store(spec.url, spec)
    return delete_objects(store, path.strip("/") + "/", spec.url)


def _delete_folder(root: Path, url: str) -> int:
    if not root.exists():
        return 0
    count = sum(1 for item in root.rglob("*") if item.is_file())
    failures: list[tuple[str, BaseException]] = []
    shutil.rmtree(root, onexc=lambda _, item, error: failures.append((item, error)))
    if failures:
        # The first failure is the cause; the folders above it then fail as "not empty".
        item, error = failures[0]
        raise DeleteFailedError(
            f"storage.url: {url}: could not delete {item} ({type(error).__name__}: {error}); "
            f"{len(failures)} deletes failed, some of the data is still there"
        )
    return count


def delete_objects(store: Any, prefix: str, url: str) -> int:
    """Delete every object under ``prefix`` of an obstore store, then list again: a delete that
    failed, or a writer that added objects meanwhile, leaves something, and that is an error."""
    import obstore

    deleted = 0
    try:
        for listed in obstore.list(store, prefix=prefix, chunk_size=1000):
            paths = [entry["path"] for entry in listed]
            if paths:
                obstore.delete(store, paths)
                deleted += len(paths)
    except Exception as error:
        raise DeleteFailedError(
            f"storage.url: {url}: deleting failed after {deleted} objects ({type(error).__name__}: "
            f"{first_line(error)})"
        ) from error
    left = [
        entry["path"] for listed in obstore.list(store, prefix=prefix, chunk_size=1000) for entry in listed
    ]
    if left:
        raise DeleteFailedError(
            f"storage.url: {url}: {len(left)} objects are still there after deleting {deleted}, "
            f"the first {left[0]}"
        )
    return deleted
