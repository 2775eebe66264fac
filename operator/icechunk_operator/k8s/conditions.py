"""Status conditions in the Kubernetes API conventions (pure).

One condition per phase type plus ``Ready`` on stores. A condition keeps its
``lastTransitionTime`` while its status stays the same, so re-applying the same state changes
nothing and never makes a GitOps diff.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.api.reconciliation import RunPhase

BATCH_CONDITION_TYPES = tuple(BatchPhase)
RECONCILIATION_CONDITION_TYPES = tuple(RunPhase)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; the transition time moves only when the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == value else now()
    updated = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": since,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [updated]


def batch_phase_conditions(
    conditions: list[dict[str, Any]], phase: str, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """Exactly the phase's condition True and the other phase conditions False, plus the
    kstatus trio that Flux and other GitOps tools read: ``Ready`` (the batch is done and good),
    ``Reconciling`` (still queued or running) and ``Stalled`` (failed; it will not get better
    by waiting)."""
    return phase_conditions(
        conditions,
        BATCH_CONDITION_TYPES,
        phase,
        BatchPhase.SUCCEEDED,
        BatchPhase.FAILED,
        reason,
        message,
        generation,
    )


def reconciliation_conditions(
    conditions: list[dict[str, Any]], phase: str, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """The same for a Reconciliation run: ``Running``, then ``Complete`` or ``Failed``."""
    return phase_conditions(
        conditions,
        RECONCILIATION_CONDITION_TYPES,
        phase,
        RunPhase.COMPLETE,
        RunPhase.FAILED,
        reason,
        message,
        generation,
    )


def phase_conditions(
    conditions: list[dict[str, Any]],
    types: tuple[str, ...],
    phase: str,
    good: str,
    bad: str,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    result = list(conditions)
    for type_ in types:
        active = type_ == phase
        result = set_condition(result, type_, active, reason, message if active else "", generation)
    finished = phase in (good, bad)
    result = set_condition(result, "Ready", phase == good, reason, message, generation)
    result = set_condition(
        result, "Reconciling", not finished, reason, message if not finished else "", generation
    )
    return set_condition(result, "Stalled", phase == bad, reason, message if phase == bad else "", generation)
