"""obstore stores for sources, failure logs and the workers' registry, built from spec locations."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache
from typing import Any

from icechunk_operator.api.store import ObjectStoreLocation, VirtualChunkContainerSpec
from icechunk_operator.engine.credentials import resolve_credentials
from icechunk_operator.engine.urls import split_url


def build_object_store(url: str, location: ObjectStoreLocation) -> tuple[Any, str]:
    """An obstore store for the bucket of ``url`` and the path of ``url`` inside it."""
    from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

    scheme, bucket, path = split_url(url)
    creds = resolve_credentials(location.credentials, scheme)
    client_options: Any = {"timeout": f"{location.request_timeout_seconds}s"}
    if location.allow_http:
        client_options["allow_http"] = True
    retry_config = request_retries(location)
    if scheme == "file":
        return LocalStore(), path.lstrip("/")
    if scheme == "s3":
        s3: dict[str, Any] = {"virtual_hosted_style_request": not location.force_path_style}
        if location.endpoint:
            s3["endpoint"] = location.endpoint
        if location.region:
            s3["region"] = location.region
        if creds.anonymous:
            s3["skip_signature"] = True
        elif creds.s3_access_key_id:
            s3["access_key_id"] = creds.s3_access_key_id
            s3["secret_access_key"] = creds.s3_secret_access_key or ""
            if creds.s3_session_token:
                s3["session_token"] = creds.s3_session_token
        return S3Store(bucket, client_options=client_options, retry_config=retry_config, **s3), path
    if scheme == "gs":
        gcs: dict[str, Any] = {}
        if location.endpoint:
            gcs["base_url"] = location.endpoint
        if creds.gcs_service_account_file:
            gcs["service_account"] = creds.gcs_service_account_file
        if creds.anonymous:
            gcs["skip_signature"] = True
        return GCSStore(bucket, client_options=client_options, retry_config=retry_config, **gcs), path
    if scheme == "az":
        azure: dict[str, Any] = {}
        if location.azure_account:
            azure["account_name"] = location.azure_account
        if location.endpoint:
            azure["endpoint"] = location.endpoint
        if creds.azure_account_key:
            azure["account_key"] = creds.azure_account_key
        if creds.azure_sas_token:
            azure["sas_key"] = creds.azure_sas_token
        if creds.anonymous:
            azure["skip_signature"] = True
        return AzureStore(bucket, client_options=client_options, retry_config=retry_config, **azure), path
    raise ValueError(f"unsupported URL scheme in {url!r}")


#: The first wait before a retry. object_store's own, 0.1 s with its jitter, let ten tries of a
#: listing go by within the first two seconds of a brief outage, and the run failed.
FIRST_BACKOFF = timedelta(milliseconds=500)


def request_retries(location: ObjectStoreLocation) -> Any:
    """obstore's retry settings for a location: its tries, backing off from :data:`FIRST_BACKOFF`,
    within a budget of every try's timeout (object_store otherwise stops retrying after three
    minutes, whatever the timeout)."""
    seconds = location.request_timeout_seconds * location.max_tries
    return {
        "max_retries": location.max_tries - 1,
        "retry_timeout": timedelta(seconds=seconds),
        "backoff": {"init_backoff": FIRST_BACKOFF, "max_backoff": timedelta(seconds=15), "base": 2},
    }


def bucket_root(url: str) -> str:
    scheme, bucket, _ = split_url(url)
    return "file://" if scheme == "file" else f"{scheme}://{bucket}"


def build_registry(containers: Iterable[VirtualChunkContainerSpec]) -> Any:
    """A VirtualiZarr/obspec registry that reads every container with its own settings."""
    from obspec_utils.registry import ObjectStoreRegistry

    stores = {}
    for container in containers:
        store, _ = build_object_store(container.url_prefix, container)
        stores[bucket_root(container.url_prefix)] = store
    return ObjectStoreRegistry(stores)


@lru_cache(maxsize=8)
def cached_registry(containers_json: str) -> Any:
    """One registry per worker process and container set: stores keep their connection pools."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[VirtualChunkContainerSpec])
    return build_registry(adapter.validate_json(containers_json))


def containers_key(containers: Iterable[VirtualChunkContainerSpec]) -> str:
    import json

    return json.dumps([c.model_dump(mode="json") for c in containers], sort_keys=True)
