"""When the delete-data finalizer is added, removed, or waits for the data to go (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from icechunk_operator.k8s import names
from icechunk_operator.k8s.deletion import FinalizerStep, finalizer_step, retry_delay
from icechunk_operator.k8s.settings import OperatorSettings, PodSettings

FINALIZER = names.FINALIZER_DELETE_DATA


def store(policy: str | None, finalizers: list[str], deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "s", "finalizers": finalizers}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": metadata, "spec": {"deletionPolicy": policy} if policy else {}}


def test_the_finalizer_is_kept_exactly_on_stores_whose_data_goes_with_them() -> None:
    assert finalizer_step(store("Delete", [])) == FinalizerStep.ADD
    assert finalizer_step(store("Delete", [FINALIZER])) == FinalizerStep.NONE
    assert finalizer_step(store("Retain", [FINALIZER, "other"])) == FinalizerStep.REMOVE
    assert finalizer_step(store(None, [])) == FinalizerStep.NONE  # Retain by default


def test_a_deleted_store_loses_its_data_first_and_a_retained_one_just_goes() -> None:
    assert finalizer_step(store("Delete", [FINALIZER], deleting=True)) == FinalizerStep.DELETE_DATA
    assert finalizer_step(store("Retain", [FINALIZER], deleting=True)) == FinalizerStep.REMOVE
    assert finalizer_step(store("Delete", [], deleting=True)) == FinalizerStep.NONE  # removed by hand


def test_failed_deletes_are_retried_with_a_growing_bounded_delay() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(50) == 300.0


def test_settings_name_the_variable_that_is_wrong() -> None:
    with pytest.raises(ValueError, match="ICECHUNK_OPERATOR_QUEUE_INTERVAL_SECONDS"):
        OperatorSettings.from_env({"ICECHUNK_OPERATOR_QUEUE_INTERVAL_SECONDS": "soon"})
    pod = PodSettings.from_env({"ICECHUNK_OPERATOR_DASK_SCHEDULER": "tcp://s:8786", "OTHER": "x"})
    assert (pod.dask_scheduler, pod.scheduler_wait_seconds) == ("tcp://s:8786", 600.0)
