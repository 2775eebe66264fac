"""Conditions follow the API conventions and stay put when nothing changes (no GitOps diffs)."""

from __future__ import annotations

from icechunk_operator.k8s.conditions import batch_phase_conditions, set_condition


def test_one_phase_condition_true_at_a_time() -> None:
    conditions = batch_phase_conditions([], "Running", "Started", "job started", 3)
    by_type = {c["type"]: c for c in conditions}
    phases = ("Queued", "Running", "Succeeded", "Failed")
    assert [t for t, c in by_type.items() if c["status"] == "True" and t in phases] == ["Running"]
    assert set(by_type) == {"Queued", "Running", "Succeeded", "Failed", "Ready", "Reconciling", "Stalled"}
    assert all(c["observedGeneration"] == 3 for c in conditions)
    assert by_type["Running"]["message"] == "job started"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", True, "RepositoryReady", "ok", 1)
    first[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = set_condition(first, "Ready", True, "RepositoryReady", "still ok", 1)
    flipped = set_condition(first, "Ready", False, "RepositoryError", "gone", 1)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_reapplying_the_same_phase_changes_nothing() -> None:
    once = batch_phase_conditions([], "Queued", "Submitted", "Waiting in queue", 1)
    twice = batch_phase_conditions(once, "Queued", "Submitted", "Waiting in queue", 1)
    assert once == twice


def test_kstatus_conditions_follow_the_phase() -> None:
    def status(phase: str) -> dict[str, str]:
        conditions = batch_phase_conditions([], phase, "Reason", "message", 1)
        return {
            c["type"]: c["status"] for c in conditions if c["type"] in ("Ready", "Reconciling", "Stalled")
        }

    assert status("Queued") == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert status("Running") == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert status("Succeeded") == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert status("Failed") == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
