"""When a store's writer Lease counts as left behind, and when its holder must stop short.

Acquiring and releasing it against a real API server, and two operators meeting at it, are in
tests/e2e/test_faults_control_plane.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from icechunk_operator.k8s.writer_lock import Hold, expired, lease_name

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def lease(renewed: str | None, seconds: int = 60) -> dict[str, object]:
    return {"spec": {"renewTime": renewed, "leaseDurationSeconds": seconds}}


def test_a_lease_is_held_until_its_duration_has_passed_since_it_was_renewed() -> None:
    assert not expired(lease("2026-01-01T11:59:30.000000+00:00"), NOW)
    assert not expired(lease("2026-01-01T11:59:00.000000Z"), NOW)  # the API's MicroTime form
    assert expired(lease("2026-01-01T11:58:59.999999+00:00"), NOW)
    assert expired(lease("2026-01-01T11:59:50+00:00", seconds=5), NOW)


def test_a_lease_without_times_or_duration_holds_nothing() -> None:
    assert expired(lease(None), NOW)
    assert expired({"spec": {"acquireTime": "2026-01-01T11:59:59+00:00"}}, NOW)
    assert not expired(
        {"spec": {"acquireTime": "2026-01-01T11:59:59+00:00", "leaseDurationSeconds": 60}}, NOW
    )


def test_a_holder_stops_short_after_half_the_lease() -> None:
    assert not Hold(True, 60, since=time.monotonic()).expiring()
    assert not Hold(True, 60, since=time.monotonic() - 29).expiring()
    assert Hold(True, 60, since=time.monotonic() - 31).expiring()


def test_the_lease_is_named_after_its_store() -> None:
    assert lease_name("ismip6") == "ismip6-writer"
    assert len(lease_name("s" * 80)) <= 63
