"""The failure log: one JSON record per failed file and a summary, written beside the store."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.objects import build_object_store
from icechunk_operator.engine.records import FailureRecord


def failure_log_url(store: IcechunkStoreSpec, batch: str, when: datetime | None = None) -> str:
    """``<failureLogUrl or the store's parent>/failures/<batch>-<UTC timestamp>.json``."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = store.failure_log_url or posixpath.dirname(store.storage.url.rstrip("/")) + "/failures"
    return f"{base.rstrip('/')}/{batch}-{stamp}.json"


def summarize(failures: Sequence[FailureRecord]) -> dict[str, int]:
    return dict(Counter(f.error_class for f in failures).most_common())


def build_failure_log(
    batch: str,
    store: str,
    failures: Sequence[FailureRecord],
    totals: dict[str, int],
    repairs: Sequence[FailureRecord] = (),
) -> dict[str, Any]:
    """``repairs`` are files ingested after their reader repaired them (epochs it dropped):
    not failures, but a person should be able to find them."""
    log = {
        "batch": batch,
        "store": store,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "totals": totals,
        "summary": summarize(failures),
        "failures": [f.to_dict() for f in failures],
    }
    if repairs:
        log["repairs"] = [r.to_dict() for r in repairs]
    return log


def write_failure_log(url: str, store: IcechunkStoreSpec, log: dict[str, Any]) -> None:
    write_json(url, store, log)


def write_json(url: str, store: IcechunkStoreSpec, document: dict[str, Any]) -> None:
    """A JSON document beside the store (failure logs, reconciliation reports)."""
    write_beside_store(url, store, json.dumps(document, indent=1).encode())


def write_beside_store(url: str, store: IcechunkStoreSpec, data: bytes) -> None:
    """An object written with the store's own credentials (reports, repair lists)."""
    import obstore

    if url.startswith("file://"):
        from pathlib import Path

        path = Path(url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    object_store, key = build_object_store(url, store.storage)
    obstore.put(object_store, key, data)
