"""What the operator reports about a store, read in a child process, and the store's other
heavy requests: deleting its data, reading a batch's index files.

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
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.exiting import first_line, one_line_error

PROBE_TIMEOUT_SECONDS = 300.0
#: How many of the branch's newest snapshots status lists; ``icechunk-operator history`` has all.
RECENT_SNAPSHOTS = 5


class ProbeError(RuntimeError):
    """The child could not open, create or delete the repository; the message is safe to show."""


class ProbeRefusedError(ProbeError, Refused):
    """The child refused the request (exit code 2): an action it does not know, or a batch whose
    index it cannot use. Asking again changes nothing."""


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


def delete_store_data(spec: IcechunkStoreSpec, request: Mapping[str, Any]) -> dict[str, Any]:
    from icechunk_operator.engine.storage import delete_repository

    return {"deleted": delete_repository(spec.storage)}


def check_index(spec: IcechunkStoreSpec, request: Mapping[str, Any]) -> dict[str, Any]:
    """The URLs inside a batch's index and removeIndex (``request["source"]``, its spec.source
    as the API serialises it), read here because pyarrow is as heavy as icechunk."""
    from icechunk_operator.engine.sources import check_index_contents

    check_index_contents(SourceSpec.model_validate(request.get("source") or {}), spec)
    return {"ok": True}


def _probe(spec: IcechunkStoreSpec, request: Mapping[str, Any]) -> dict[str, Any]:
    return probe_store(spec)


#: Exactly these: an unknown action (a typo, a newer operator) must never fall through to a delete.
ACTIONS: dict[str, Callable[[IcechunkStoreSpec, Mapping[str, Any]], dict[str, Any]]] = {
    "probe": _probe,
    "delete": delete_store_data,
    "check-index": check_index,
}


def _request(
    action: str, spec: IcechunkStoreSpec, secret_env: Mapping[str, str], source: SourceSpec | None
) -> bytes:
    fields: dict[str, Any] = {"action": action, "spec": spec.to_api(), "env": dict(secret_env)}
    if source is not None:
        fields["source"] = source.to_api()
    return json.dumps(fields).encode()


def _result(returncode: int | None, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """The child's JSON answer, or the error it stands for."""
    lines = stdout.decode().strip().splitlines()
    answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if returncode != 0 or "error" in answer:
        # The child answers with a safe one-line error; its stderr could hold anything, so it
        # goes no further than saying the child failed.
        message = str(answer.get("error") or f"the store's child process failed (exit code {returncode})")
        raise ProbeRefusedError(message) if returncode == 2 else ProbeError(message)
    return answer


_CHILD = [sys.executable, "-m", "icechunk_operator.k8s.store_probe"]


async def run_in_child(
    action: str,
    spec: IcechunkStoreSpec,
    secret_env: Mapping[str, str],
    *,
    source: SourceSpec | None = None,
) -> dict[str, Any]:
    """Run ``action`` (one of :data:`ACTIONS`) for ``spec`` in a child process; its JSON result.

    Raises :class:`ProbeRefusedError` when the child refuses (exit code 2), :class:`ProbeError`
    for any other failure."""
    process = await asyncio.create_subprocess_exec(
        *_CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(_request(action, spec, secret_env, source)), PROBE_TIMEOUT_SECONDS
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ProbeError(f"store {action} did not finish in {PROBE_TIMEOUT_SECONDS:.0f} s") from None
    return _result(process.returncode, stdout, stderr)


def run_in_child_blocking(
    action: str,
    spec: IcechunkStoreSpec,
    secret_env: Mapping[str, str],
    *,
    source: SourceSpec | None = None,
) -> dict[str, Any]:
    """:func:`run_in_child` for code that runs in a worker thread (the operator's store passes)."""
    try:
        process = subprocess.run(
            _CHILD,
            input=_request(action, spec, secret_env, source),
            capture_output=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProbeError(f"store {action} did not finish in {PROBE_TIMEOUT_SECONDS:.0f} s") from None
    return _result(process.returncode, process.stdout, process.stderr)


def answer(request: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The exit code and the JSON line for one request: 0 done, 2 refused (``"refused": true``,
    asking again changes nothing), 1 failed (a network error, a crash: asking again may work)."""
    from icechunk_operator.engine.credentials import credentials_environment

    action = request.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        return 2, {"error": f"unknown action {action!r}: expected one of {sorted(ACTIONS)}", "refused": True}
    try:
        spec = IcechunkStoreSpec.model_validate(request.get("spec"))
        with credentials_environment(request.get("env") or {}):
            return 0, ACTIONS[action](spec, request)
    except Refused as error:  # the message names the field and is meant for status.message
        return 2, {"error": first_line(error)[:1024], "refused": True}
    except Exception as error:  # reported to the operator as a one-line message, no traceback
        return 1, {"error": one_line_error(error)}


def main() -> int:
    """The child's side: one request on stdin, one JSON line on stdout."""
    code, result = answer(json.loads(sys.stdin.read()))
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    from icechunk_operator.exiting import exit_now

    exit_now(main())
