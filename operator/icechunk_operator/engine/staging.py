"""Staging: a batch writes to its own branch, and the target branch moves only after validation.

Readers of the target branch never see a half-checked ingest: the batch commits to
``staging-<batch>``, branched from the target's tip (the *base*). When it is done, every group it
changed must pass a sample read (:mod:`icechunk_operator.engine.references`), and then the target is
moved to the staged tip with a compare-and-swap on the base. If the target moved meanwhile (another
writer committed), the promotion is refused and the staged snapshot stays on its branch for
inspection; a re-run finds the stale base and stages afresh from the new tip.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
from typing import Any

from icechunk_operator.api.batch import ValidationSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.failpoints import failpoint

log = logging.getLogger("icechunk_operator.staging")


class StagingRefusedError(RuntimeError):
    """The staged work was not promoted and the target branch did not move; the subclass says
    whether running the batch again can help."""


class StagingValidationError(StagingRefusedError, Refused):
    """A staged group failed its sample read or a validation gate: a re-run resumes on the same
    staging branch and finds the same, so only fixing the files (or delivering the missing ones,
    which the re-run adds to what is staged) helps."""


class TargetMovedError(StagingRefusedError):
    """Another writer moved the target branch while the batch staged. Not refused: a re-run
    (the Job's retry of a crash) stages afresh on the new tip and usually succeeds."""


def staging_branch(batch: str) -> str:
    return f"staging-{batch}"


def base_of(repo: Any, staging: str, target: str) -> str:
    """The target's snapshot the staging branch started from (its newest shared ancestor)."""
    shared = {info.id for info in repo.ancestry(branch=target)}
    for info in repo.ancestry(branch=staging):
        if info.id in shared:
            return str(info.id)
    raise StagingRefusedError(f"branch {staging!r} shares no history with {target!r}")


def drop_superseded(repo: Any, schedule: str, keep: str) -> list[str]:
    """The staging branches earlier runs of ``schedule`` left behind (a gate refused them), deleted.

    A run of a schedule stages everything the target lacks afresh, so an earlier run's branch
    holds nothing it needs: it stays for inspection only until the next run starts, and a
    schedule never gathers one branch per failed run. Run names are ``<schedule>-`` and one
    token (``s202611300015``, ``r<hash>``, ``l202611300015``), so another schedule's runs never match.
    """
    pattern = re.compile(rf"{re.escape(staging_branch(schedule))}-[srl][0-9a-f]+")
    dropped = sorted(b for b in repo.list_branches() if pattern.fullmatch(b) and b != keep)
    for branch in dropped:
        log.info("deleting %s, left by an earlier run of schedule %s", branch, schedule)
        repo.delete_branch(branch)
    return dropped


def start_staging(repo: Any, batch: str, target: str) -> tuple[str, str]:
    """The staging branch to write to and its base; a branch left from a run against an older
    tip of the target is discarded, so the work is staged on what readers see now."""
    staging = staging_branch(batch)
    tip = str(repo.lookup_branch(target))
    if staging in repo.list_branches():
        base = base_of(repo, staging, target)
        if base == tip:
            return staging, base  # a re-run after a crash: carry on where the branch is
        log.warning("%s was staged on %s, but %s is at %s now: staging afresh", staging, base, target, tip)
        repo.delete_branch(staging)
    repo.create_branch(staging, tip)
    return staging, tip


def staged_groups(repo: Any, base: str, staging: str) -> list[str]:
    """Every group with a new or changed array since ``base``, over all runs of the batch."""
    from icechunk_operator.engine.templates import RESERVED_ROOT

    diff = repo.diff(from_snapshot_id=base, to_branch=staging)
    arrays = set(diff.new_arrays) | set(diff.updated_arrays) | set(diff.updated_chunks)
    groups = {posixpath.dirname(path).strip("/") for path in arrays}
    return sorted(g for g in groups if g and not g.startswith(RESERVED_ROOT))


#: Gate failures a refusal lists; the rest are counted (status.message must stay readable).
SHOWN_FAILURES = 3


def promote(
    repo: Any, staging: str, target: str, base: str, validation: ValidationSpec | None = None
) -> str | None:
    """Validate the staged groups (a sample read, then the ``validation`` gates), then move
    ``target`` to the staged tip if it is still at ``base``. Returns the promoted snapshot (None
    when nothing was staged)."""
    from icechunk_operator.engine.gates import check_gates
    from icechunk_operator.engine.references import sample_groups

    staged = str(repo.lookup_branch(staging))
    if staged == base:
        repo.delete_branch(staging)
        return None
    session = repo.readonly_session(snapshot_id=staged)
    groups = staged_groups(repo, base, staging)
    failures = asyncio.run(sample_groups(session.store, groups))
    if failures:
        shown = "; ".join(f"{group}: {reason}" for group, reason in failures[:SHOWN_FAILURES])
        raise StagingValidationError(
            f"validation failed for {len(failures)} groups ({shown}); {target!r} was not moved, the "
            f"staged snapshot {staged} stays on branch {staging!r}"
        )
    gate_failures = (
        check_gates(repo, session.store, base, groups, validation) if validation is not None else []
    )
    if gate_failures:
        more = len(gate_failures) - SHOWN_FAILURES
        shown = "; ".join(gate_failures[:SHOWN_FAILURES]) + (f"; and {more} more" if more > 0 else "")
        raise StagingValidationError(
            f"validation gates found {len(gate_failures)} problem{'s' * (len(gate_failures) > 1)} "
            f"({shown}); {target!r} was not moved, the staged snapshot {staged} stays on branch {staging!r}"
        )
    current = str(repo.lookup_branch(target))
    if current != base:
        raise TargetMovedError(_moved(target, base, current, staged, staging))
    failpoint("promote")  # validated, target not moved yet
    try:
        repo.reset_branch(target, staged, from_snapshot_id=base)
    except Exception as error:  # the compare-and-swap lost a race with another writer
        current = str(repo.lookup_branch(target))
        raise TargetMovedError(_moved(target, base, current, staged, staging)) from error
    failpoint("promote.after")  # target moved, staging branch not deleted yet
    repo.delete_branch(staging)
    return staged


def _moved(target: str, base: str, current: str, staged: str, staging: str) -> str:
    return (
        f"branch {target!r} moved from {base} to {current} while this batch was staging; it was not "
        f"moved to the staged snapshot {staged} (kept on branch {staging!r}). Run the batch again to "
        f"stage it on the new tip."
    )
