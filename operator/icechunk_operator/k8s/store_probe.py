"""What the operator reports about a store, read in a child process.

Opening a repository needs icechunk, zarr and xarray: some 80 MB the operator would otherwise
carry for its whole life, for a probe that runs on store changes and every few minutes. So the
operator runs ``python -m icechunk_operator.k8s.store_probe`` with the spec and the store's
Secret values on standard input (never on the command line or in the environment of anything
else) and reads the facts back as JSON. A crash or a hang in the child costs one probe, not the
operator.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

from icechunk_operator.api.store import IcechunkStoreSpec

PROBE_TIMEOUT_SECONDS = 300.0
#: How many of the branch's newest snapshots status lists; ``icechunk-operator history`` has all.
RECENT_SNAPSHOTS = 5


class ProbeError(RuntimeError):
    """The child could not open, create or delete the repository; the message is safe to show."""


def probe_store(spec: IcechunkStoreSpec) -> dict[str, Any]:
    """Create the repository if missing, apply config changes, and read what status shows."""
    from icechunk_operator.engine.commits import initialize_repository, load_ledger
    from icechunk_operator.engine.storage import open_repository, quiet_logs

    quiet_logs()
    repo = open_repository(spec, create=True)
    initialize_repository(repo, spec.branch)
    branches = {name: repo.lookup_branch(name) for name in sorted(repo.list_branches())}
    recent = recent_snapshots(repo, spec.branch)
    live = [entry for entry in load_ledger(repo, spec.branch).values() if not entry.removed]
    return {
        "branches": branches,
        "tags": {name: str(repo.lookup_tag(name)) for name in sorted(repo.list_tags())},
        "lastSnapshot": recent[0]["id"] if recent else None,
        "lastCommitTime": recent[0]["writtenAt"] if recent else None,
        "recentSnapshots": recent,
        "datasets": len({entry.group for entry in live}),
        "sources": len(live),
    }


def recent_snapshots(repo: Any, branch: str) -> list[dict[str, Any]]:
    """The branch's newest snapshots as ``status.recentSnapshots`` lists them."""
    from icechunk_operator.engine.lifecycle import history

    return [
        {
            "id": line.id,
            "writtenAt": line.written_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": line.message[:256],
            "batch": line.batch,
        }
        for line in history(repo, branch, RECENT_SNAPSHOTS)
    ]


def delete_store_data(spec: IcechunkStoreSpec) -> dict[str, Any]:
    from icechunk_operator.engine.storage import delete_repository

    return {"deleted": delete_repository(spec.storage)}


async def run_in_child(action: str, spec: IcechunkStoreSpec, secret_env: Mapping[str, str]) -> dict[str, Any]:
    """Run ``action`` ("probe" or "delete") for ``spec`` in a child process; its JSON result."""
    request = json.dumps({"action": action, "spec": spec.to_api(), "env": dict(secret_env)}).encode()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "icechunk_operator.k8s.store_probe",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(request), PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ProbeError(f"store {action} did not finish in {PROBE_TIMEOUT_SECONDS:.0f} s") from None
    lines = stdout.decode().strip().splitlines()
    answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if process.returncode != 0 or "error" in answer:
        raise ProbeError(str(answer.get("error") or stderr.decode().strip().splitlines()[-1:] or "failed"))
    return answer


def main() -> int:
    """The child's side: one request on stdin, one JSON line on stdout."""
    from icechunk_operator.engine.credentials import credentials_environment

    request = json.loads(sys.stdin.read())
    spec = IcechunkStoreSpec.model_validate(request["spec"])
    try:
        with credentials_environment(request.get("env") or {}):
            result = probe_store(spec) if request["action"] == "probe" else delete_store_data(spec)
    except Exception as error:  # reported to the operator as a one-line message, no traceback
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(json.dumps({"error": f"{type(error).__name__}: {text}"[:512]}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from icechunk_operator.exiting import exit_now

    exit_now(main())
