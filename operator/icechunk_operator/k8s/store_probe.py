"""What the operator reports about a store: open (or create) it and read its branches and ledger.

Runs in the operator process, in a worker thread, with the store's credentials set for this call
only (``credentials_environment``), so stores of different namespaces never see each other's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from icechunk_operator.api.store import IcechunkStoreSpec


@dataclass(frozen=True)
class StoreFacts:
    branches: dict[str, str] = field(default_factory=dict)
    last_snapshot: str | None = None
    last_commit_time: datetime | None = None
    datasets: int = 0
    sources: int = 0


def probe_store(spec: IcechunkStoreSpec, secret_env: Mapping[str, str]) -> StoreFacts:
    """Create the repository if missing, apply config changes, and read what status shows."""
    from icechunk_operator.engine.commits import initialize_repository, load_ledger
    from icechunk_operator.engine.credentials import credentials_environment
    from icechunk_operator.engine.storage import open_repository

    with credentials_environment(secret_env):
        repo = open_repository(spec, create=True)
        initialize_repository(repo, spec.branch)
        branches = {name: repo.lookup_branch(name) for name in sorted(repo.list_branches())}
        tip = next(iter(repo.ancestry(branch=spec.branch)), None)
        ledger = load_ledger(repo, spec.branch)
    live = [entry for entry in ledger.values() if not entry.removed]
    return StoreFacts(
        branches=branches,
        last_snapshot=tip.id if tip else None,
        last_commit_time=tip.written_at if tip else None,
        datasets=len({entry.group for entry in live}),
        sources=len(live),
    )
