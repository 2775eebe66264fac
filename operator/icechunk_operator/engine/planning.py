"""Planning: listed files + the store's ledger + the batch spec -> the work to do. Pure.

The plan is what makes re-runs idempotent: files the ledger already holds with the same
identity are skipped, changed files are re-ingested (their whole group rewritten), and new
files of an existing concatenated group are appended along its dimension (when they sort after
the files it holds; a late one rebuilds the group in order).
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from icechunk_operator.api.batch import Combine, CombineRule, GroupingSpec
from icechunk_operator.engine.records import FailureRecord, LedgerEntry, SourceFile
from icechunk_operator.engine.templates import GroupPathError, render_group


class WriteMode(StrEnum):
    CREATE = "create"  # the group is new
    REPLACE = "replace"  # rewrite the group from all of its files
    APPEND = "append"  # add files along the combine dimension


@dataclass(frozen=True)
class GroupWork:
    """One group to write and the files that make it, in concatenation order."""

    group: str
    files: tuple[SourceFile, ...]
    combine: Combine
    dimension: str | None
    mode: WriteMode

    @property
    def size(self) -> int:
        return len(self.files)


@dataclass
class Plan:
    work: list[GroupWork] = field(default_factory=list)
    skipped: list[SourceFile] = field(default_factory=list)
    refused: list[FailureRecord] = field(default_factory=list)

    @property
    def files_to_ingest(self) -> int:
        return sum(w.size for w in self.work)


def rule_for(group: str, rules: Iterable[CombineRule]) -> CombineRule:
    for rule in rules:
        if fnmatch.fnmatchcase(group, rule.match):
            return rule
    return CombineRule()


def plan_ingest(
    files: Iterable[SourceFile],
    ledger: Mapping[str, LedgerEntry],
    grouping: GroupingSpec,
    skip: Iterable[str] = (),
) -> Plan:
    """Decide, for every listed file, whether it is skipped, refused or part of a group's work."""
    pattern = re.compile(grouping.pattern)
    skip_globs = list(skip)
    plan = Plan()
    by_group: dict[str, list[SourceFile]] = defaultdict(list)
    for source in files:
        if any(fnmatch.fnmatchcase(source.url, glob) for glob in skip_globs):
            plan.skipped.append(source)
            continue
        try:
            group = render_group(grouping.template, pattern, source.url)
        except GroupPathError as error:
            plan.refused.append(FailureRecord(source.url, "GroupingError", str(error), None, 0))
            continue
        by_group[group].append(source)

    ledger_by_group: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in ledger.values():
        if not entry.removed:
            ledger_by_group[entry.group].append(entry)

    for group in sorted(by_group):
        listed = sorted(by_group[group], key=lambda s: s.url)
        rule = rule_for(group, grouping.rules)
        _plan_group(plan, group, listed, ledger, ledger_by_group.get(group, []), rule)
    return plan


def _plan_group(
    plan: Plan,
    group: str,
    listed: list[SourceFile],
    ledger: Mapping[str, LedgerEntry],
    recorded: list[LedgerEntry],
    rule: CombineRule,
) -> None:
    new = [s for s in listed if s.url not in ledger or ledger[s.url].removed]
    changed = [s for s in listed if s not in new and not s.same_content_as(ledger[s.url])]
    moved = [s for s in listed if s not in new and ledger[s.url].group != group]
    if not new and not changed and not moved:
        plan.skipped.extend(listed)
        return

    if rule.combine == Combine.ONE:
        others = [e.url for e in recorded if e.url not in {s.url for s in listed}]
        if len(listed) > 1 or others:
            urls = [s.url for s in listed]
            message = (
                f"group {group!r} has combine 'one' but {len(urls) + len(others)} files map to "
                f"it ({', '.join((urls + others)[:3])}...); use combine 'concat' or 'merge'"
            )
            plan.refused.extend(FailureRecord(u, "GroupingError", message, group, 0) for u in urls)
            return
        mode = WriteMode.REPLACE if recorded else WriteMode.CREATE
        plan.work.append(GroupWork(group, tuple(listed), rule.combine, None, mode))
        return

    if not recorded:
        plan.work.append(GroupWork(group, tuple(listed), rule.combine, rule.dimension, WriteMode.CREATE))
        return
    # Concatenation is in URL order, so new files append only if they sort after every recorded
    # one; a late file (day 3 after day 4) rebuilds the group, or its times would step back.
    in_order = bool(new) and min(s.url for s in new) > max(e.url for e in recorded)
    if rule.combine == Combine.CONCAT and not changed and not moved and in_order:
        unchanged = [s for s in listed if s not in new]
        plan.skipped.extend(unchanged)
        plan.work.append(GroupWork(group, tuple(new), rule.combine, rule.dimension, WriteMode.APPEND))
        return
    # A changed file (or merge of new variables): rebuild the group from all of its files,
    # those listed now and those recorded earlier that this listing did not include.
    listed_urls = {s.url for s in listed}
    everything = listed + [e.as_source() for e in recorded if e.url not in listed_urls]
    everything.sort(key=lambda s: s.url)
    plan.work.append(GroupWork(group, tuple(everything), rule.combine, rule.dimension, WriteMode.REPLACE))


def without(ledger: Mapping[str, LedgerEntry], removed: Iterable[str]) -> dict[str, LedgerEntry]:
    """The ledger as if ``removed`` were already dropped: what the ingest plan must not keep."""
    view = dict(ledger)
    for url in removed:
        entry = view.get(url)
        if entry is not None and not entry.removed:
            view[url] = replace(entry, removed=True)
    return view


def plan_removals(
    plan: Plan, removed: Iterable[str], ledger: Mapping[str, LedgerEntry], grouping: GroupingSpec
) -> list[str]:
    """Fold the removal of ``removed`` files into ``plan`` (planned with :func:`without`).

    A group that loses files is rewritten from the files that remain (an append to it becomes a
    rewrite, so the removed file's data goes too); a group left with no files is returned, to be
    deleted.
    """
    gone = set(removed)
    by_group: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in ledger.values():
        if not entry.removed:
            by_group[entry.group].append(entry)
    affected = sorted({e.group for e in ledger.values() if e.url in gone and not e.removed})
    planned = {work.group: index for index, work in enumerate(plan.work)}
    deleted = []
    for group in affected:
        remaining = [e.as_source() for e in by_group[group] if e.url not in gone]
        rule = rule_for(group, grouping.rules)
        if group in planned:
            work = plan.work[planned[group]]
            if work.mode != WriteMode.REPLACE:
                files = sorted([*work.files, *remaining], key=lambda s: s.url)
                plan.work[planned[group]] = GroupWork(
                    group, tuple(files), work.combine, work.dimension, WriteMode.REPLACE
                )
        elif remaining:
            files = sorted(remaining, key=lambda s: s.url)
            plan.work.append(GroupWork(group, tuple(files), rule.combine, rule.dimension, WriteMode.REPLACE))
        else:
            deleted.append(group)
    return deleted


def plan_files(
    files: Iterable[SourceFile],
    ledger: Mapping[str, LedgerEntry],
    grouping: GroupingSpec,
    skip: Iterable[str] = (),
    processed: Mapping[tuple[str, str], str] | None = None,
    processing: str = "",
) -> tuple[list[tuple[SourceFile, str]], list[SourceFile], list[FailureRecord]]:
    """File by file, for materialized ingest: (file, group) to read, files skipped (unchanged in
    the ledger and read the same way, per ``processed``: (group, url) -> processing key; or
    matching ``skip``) and files refused (no group). A changed file, or one a new processing version
    reads differently, is read again; its group's registry knows which epochs it filled before."""
    pattern = re.compile(grouping.pattern)
    skip_globs = list(skip)
    work: list[tuple[SourceFile, str]] = []
    skipped: list[SourceFile] = []
    refused: list[FailureRecord] = []
    for source in sorted(files, key=lambda s: s.url):
        if any(fnmatch.fnmatchcase(source.url, glob) for glob in skip_globs):
            skipped.append(source)
            continue
        try:
            group = render_group(grouping.template, pattern, source.url)
        except GroupPathError as error:
            refused.append(FailureRecord(source.url, "GroupingError", str(error), None, 0))
            continue
        known = ledger.get(source.url)
        unchanged = (
            known is not None and not known.removed and known.group == group and source.same_content_as(known)
        )
        if unchanged and (processed is None or processed.get((group, source.url)) == processing):
            skipped.append(source)
        else:
            work.append((source, group))
    return work, skipped, refused
