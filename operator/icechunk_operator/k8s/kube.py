"""Thin calls to the Kubernetes API (the ``kubernetes`` client), as plain dictionaries.

Everything else in this package works on dictionaries and pydantic models; this module is the
only one that knows the client's classes. Creating a child that already exists returns the
existing one, and deleting one that is gone is not an error, so every caller can be re-run.
"""

from __future__ import annotations

import base64
import logging
from functools import cached_property
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from icechunk_operator.api.common import ResourceModel
from icechunk_operator.k8s import names

Resource = TypeVar("Resource", bound=ResourceModel)


def load_config() -> None:
    """In-cluster service-account credentials when in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def pod_connection(reference: str, plural: str) -> tuple[KubeApi, str, str, dict[str, Any] | None]:
    """A commit, reconcile or maintenance pod's API client, the namespace and name it was started
    for, and that resource (None, after logging it, when it is gone)."""
    namespace, _, name = reference.rpartition("/")
    namespace = namespace or "default"
    load_config()
    api = KubeApi()
    body = api.get(plural, namespace, name)
    if body is None:
        logging.getLogger("icechunk_operator.pod").error("%s %s/%s not found", plural, namespace, name)
    return api, namespace, name, body


def without_status(body: dict[str, Any]) -> dict[str, Any]:
    """The parts the models validate: status belongs to the operator and its pods."""
    return {key: value for key, value in body.items() if key != "status"}


def map_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns the map ``old`` into ``new``: keys that are gone (a deleted
    staging branch, a deleted tag) are nulled, or a merge patch would keep them forever."""
    return {**dict.fromkeys(old or {}), **new}


class ChildOwnedByAnother(RuntimeError):
    """A child with the name we need exists and belongs to another owner (a deleted namesake)."""


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {ref.get("uid", "") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []}


def _check_owner(existing: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """``existing`` when it has the owner ``manifest`` names and is not going away; else
    ChildOwnedByAnother (the caller waits for a later pass)."""
    if (existing.get("metadata") or {}).get("deletionTimestamp"):
        metadata = existing.get("metadata") or {}
        raise ChildOwnedByAnother(f"{existing.get('kind', 'object')} {metadata.get('name')} is being deleted")
    wanted = _owner_uids(manifest)
    if wanted and not wanted & _owner_uids(existing):
        metadata = existing.get("metadata") or {}
        raise ChildOwnedByAnother(
            f"{existing.get('kind', 'object')} {metadata.get('name')} exists and belongs to another owner"
        )
    return existing


class KubeApi:
    """The API calls the operator and the commit pod make, nothing more (see the RBAC rules)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._client = api_client or client.ApiClient()

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self._client)

    @cached_property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self._client)

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client)

    @cached_property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self._client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self._client.sanitize_for_serialization(obj)
        return plain

    # Our resources -------------------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(obj)

    def load(self, model: type[Resource], namespace: str, name: str, field: str) -> Resource:
        """One of our resources, validated; a LookupError naming ``field`` when it is absent."""
        body = self.get(model.plural, namespace, name)
        if body is None:
            raise LookupError(f"{field}: {model.kind_name} {namespace}/{name} not found")
        return model.model_validate(without_status(body))

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch ``status``; fields not named are left to whoever else writes them."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                names.GROUP, names.VERSION, namespace, plural, name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise

    def patch_metadata(self, plural: str, namespace: str, name: str, metadata: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, plural, name, {"metadata": metadata}
        )

    def create(self, plural: str, manifest: dict[str, Any]) -> bool:
        """Create one of our resources; False when it exists already (a re-run made it)."""
        try:
            self.custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, manifest["metadata"]["namespace"], plural, manifest
            )
        except ApiException as error:
            if error.status != 409:
                raise
            return False
        return True

    def labelled(self, plural: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listed: Any = self.custom.list_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, plural, label_selector=selector
        )
        return [dict(item) for item in listed.get("items", [])]

    def delete(self, plural: str, namespace: str, name: str, uid: str) -> None:
        """Delete one of our resources if it is still the one with ``uid``; gone already is fine."""
        options = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, plural, name, body=options
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # Children ------------------------------------------------------------------------------
    def labelled_jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector)
        return [self._plain(job) for job in jobs.items]

    def delete_job(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Job and, in the background, its pods; with ``uid``, only if it is still that
        Job (not a new one of the same name)."""
        options = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            self.batch.delete_namespaced_job(name, namespace, body=options)
        except ApiException as error:
            if error.status not in (404, 409):  # gone, or another Job has the name now
                raise

    def store_jobs(self, namespace: str, store: str) -> list[dict[str, Any]]:
        selector = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY},{names.LABEL_STORE}={store}"
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector)
        return [self._plain(job) for job in jobs.items]

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a Job, or return the one a re-run created; ChildOwnedByAnother when the Job of
        that name has another owner (it was left by a deleted batch of the same name)."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            return self._plain(self.batch.create_namespaced_job(namespace, manifest))
        except ApiException as error:
            if error.status != 409:
                raise
        return _check_owner(self._plain(self.batch.read_namespaced_job(name, namespace)), manifest)

    def create_dask_cluster(self, manifest: dict[str, Any]) -> None:
        """Create a DaskCluster, unless ours exists; ChildOwnedByAnother as for Jobs."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        coordinates = (names.DASK_GROUP, names.DASK_VERSION, namespace, names.DASK_CLUSTERS)
        try:
            self.custom.create_namespaced_custom_object(*coordinates, manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            existing: Any = self.custom.get_namespaced_custom_object(*coordinates, name)
            _check_owner(dict(existing), manifest)

    def delete_dask_cluster(self, namespace: str, name: str) -> bool:
        """Tear a batch's workers down; False when there was nothing to delete."""
        try:
            self.custom.delete_namespaced_custom_object(
                names.DASK_GROUP, names.DASK_VERSION, namespace, names.DASK_CLUSTERS, name
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    # Leases (the store's writer lock) ---------------------------------------------------------
    def create_lease(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a Lease; None when one of that name exists (it is held)."""
        try:
            return self._plain(self.coordination.create_namespaced_lease(namespace, manifest))
        except ApiException as error:
            if error.status != 409:
                raise
            return None

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.coordination.read_namespaced_lease(name, namespace))
        except ApiException as error:
            if error.status != 404:
                raise
            return None

    def replace_lease(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Replace a Lease whose ``metadata.resourceVersion`` is still the one read; None when
        it changed or went meanwhile (another took or released it first)."""
        name = manifest["metadata"]["name"]
        try:
            return self._plain(self.coordination.replace_namespaced_lease(name, namespace, manifest))
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            return None

    def delete_lease(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete a Lease only if it is still the one given (not taken over since)."""
        preconditions = client.V1Preconditions(uid=uid, resource_version=resource_version)
        try:
            self.coordination.delete_namespaced_lease(
                name, namespace, body=client.V1DeleteOptions(preconditions=preconditions)
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def secret_values(self, namespace: str, name: str) -> dict[str, str]:
        """The decoded keys of a Secret, for the operator's own use; never logged or stored."""
        secret = self.core.read_namespaced_secret(name, namespace)
        return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
