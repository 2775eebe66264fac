"""Reconciliation: what a store is missing, holds stale, or holds though its source is gone.

The store's ledger (every source file it references, with the size and ETag or mtime seen at
ingest) is compared with a fresh listing of the source or with a parquet index:

- *missing*: in the source, not in the store;
- *stale*: in both, but the source file changed since it was ingested;
- *orphaned*: in the store, gone from the source;
- *broken* (when ``checkReferences`` asks): a reference of the branch tip whose object is gone
  or whose group fails a sample read (:mod:`icechunk_operator.engine.references`).

Only ledger entries inside the listing's scope can be orphaned: a prefix and glob cover the files
they match, an index covers the whole store. The comparison is pure (:func:`diff_store`); the
report goes to storage beside the store as JSON.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from icechunk_operator.api.batch import IngestBatch, SourceSpec
from icechunk_operator.api.reconciliation import Reconciliation
from icechunk_operator.api.store import IcechunkStore, IcechunkStoreSpec
from icechunk_operator.engine.integrity import IntegrityReport
from icechunk_operator.engine.records import LedgerEntry, SourceFile
from icechunk_operator.engine.references import BrokenReference


@dataclass
class ReconcileReport:
    missing: list[SourceFile] = field(default_factory=list)
    stale: list[tuple[SourceFile, LedgerEntry]] = field(default_factory=list)
    orphaned: list[LedgerEntry] = field(default_factory=list)
    broken: list[BrokenReference] | None = None  # None: references were not checked
    integrity: IntegrityReport | None = None  # None: chunks were not read
    listed: int = 0
    recorded: int = 0
    report_url: str | None = None

    @property
    def clean(self) -> bool:
        undecodable = self.integrity is not None and not self.integrity.clean
        return not (self.missing or self.stale or self.orphaned or self.broken or undecodable)

    def counts(self) -> dict[str, int]:
        counts = {"missing": len(self.missing), "stale": len(self.stale), "orphaned": len(self.orphaned)}
        if self.broken is not None:
            counts["broken"] = len(self.broken)
        if self.integrity is not None:
            counts["undecodable"] = self.integrity.undecodable
        return counts

    def to_json(self, reconciliation: str, store: str) -> dict[str, Any]:
        return {
            "reconciliation": reconciliation,
            "store": store,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "listed": self.listed,
            "recorded": self.recorded,
            "counts": self.counts(),
            "missing": [{"url": s.url, "size": s.size} for s in self.missing],
            "stale": [
                {
                    "url": s.url,
                    "group": e.group,
                    "size": s.size,
                    "ingested_size": e.size,
                    "ingested_at": e.ingested_at,
                }
                for s, e in self.stale
            ],
            "orphaned": [
                {"url": e.url, "group": e.group, "ingested_at": e.ingested_at} for e in self.orphaned
            ],
            "broken": None
            if self.broken is None
            else [{"group": b.group, "url": b.url, "reason": b.reason} for b in self.broken],
            "undecodable": None
            if self.integrity is None
            else [
                {"array": p.array, "chunk": list(p.chunk), "error": p.error} for p in self.integrity.problems
            ],
        }


def in_scope(prefix: str | None, glob: re.Pattern[str] | None) -> Any:
    """Whether a ledger URL lies inside what the listing covered."""

    def covered(url: str) -> bool:
        if prefix is None:
            return True
        return url.startswith(prefix) and (glob is None or glob.fullmatch(url[len(prefix) :]) is not None)

    return covered


def diff_store(
    ledger: Mapping[str, LedgerEntry],
    listed: Iterable[SourceFile],
    *,
    prefix: str | None = None,
    glob: re.Pattern[str] | None = None,
) -> ReconcileReport:
    """Missing, stale and orphaned files of a store against a listing (pure)."""
    live = {url: entry for url, entry in ledger.items() if not entry.removed}
    sources = {source.url: source for source in listed}
    report = ReconcileReport(listed=len(sources), recorded=len(live))
    for url in sorted(sources):
        source = sources[url]
        entry = live.get(url)
        if entry is None:
            report.missing.append(source)
        elif not source.same_content_as(entry):
            report.stale.append((source, entry))
    covered = in_scope(prefix, glob)
    report.orphaned = [live[url] for url in sorted(live) if url not in sources and covered(url)]
    return report


def report_url(store: IcechunkStoreSpec, name: str, when: datetime | None = None) -> str:
    """``<the store's parent>/reconciliations/<name>-<UTC timestamp>.json``."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = posixpath.dirname(store.storage.url.rstrip("/")) + "/reconciliations"
    return f"{base}/{name}-{stamp}.json"


def run_reconciliation(store: IcechunkStore, reconciliation: Reconciliation) -> ReconcileReport:
    """List the source (or read the index), diff it with the store's ledger, write the report."""
    from icechunk_operator.engine.commits import load_ledger
    from icechunk_operator.engine.failures import write_json
    from icechunk_operator.engine.sources import glob_regex, list_sources
    from icechunk_operator.engine.storage import open_repository

    spec = reconciliation.spec
    if spec.prefix is not None:
        source = SourceSpec(prefix=spec.prefix, glob=spec.glob)
    else:
        source = SourceSpec(index=spec.index)
    listed = list_sources(source, store.spec)  # refuses sources outside the containers
    repo = open_repository(store.spec, create=False)
    ledger = load_ledger(repo, store.spec.branch)
    prefix = source.prefix
    report = diff_store(ledger, listed, prefix=prefix, glob=glob_regex(spec.glob) if prefix else None)
    if spec.check_references:
        from icechunk_operator.engine.references import find_broken

        report.broken = find_broken(repo, store.spec.branch, store.spec, ledger)
    if spec.check_chunks:
        from icechunk_operator.engine.integrity import check_integrity

        report.integrity = check_integrity(repo.readonly_session(branch=store.spec.branch))
    url = report_url(store.spec, reconciliation.metadata.name)
    write_json(url, store.spec, report.to_json(reconciliation.metadata.name, store.metadata.name))
    report.report_url = url
    return report


def repair_batch(
    store: IcechunkStore, reconciliation: Reconciliation, template: IngestBatch, report: ReconcileReport
) -> IngestBatch | None:
    """The IngestBatch that fixes what ``report`` found, or None when there is nothing to fix.

    Its lists go beside the report as parquet (a spec could not hold 100,000 URLs): missing and
    stale files to ingest, and, with ``removeOrphans``, orphaned files to remove. Broken references
    are reported, not repaired: the files behind them look unchanged, so only a person can say
    whether to re-ingest or drop them.
    """
    from icechunk_operator.engine.failures import write_beside_store
    from icechunk_operator.engine.sources import encode_index, encode_url_list

    spec = reconciliation.spec
    if template.spec.store != spec.store:
        raise ValueError(
            f"spec.batchTemplate: IngestBatch {template.metadata.name} writes to store "
            f"{template.spec.store!r}, not {spec.store!r}"
        )
    to_ingest = [*report.missing, *(source for source, _ in report.stale)]
    to_remove = [entry.url for entry in report.orphaned] if spec.remove_orphans else []
    if not to_ingest and not to_remove:
        return None
    if report.report_url is None:
        raise ValueError("a repair needs the report written first")
    base = report.report_url.removesuffix(".json")
    ingest_url = f"{base}-ingest.parquet"
    write_beside_store(ingest_url, store.spec, encode_index(to_ingest))
    remove_url = None
    if to_remove:
        remove_url = f"{base}-remove.parquet"
        write_beside_store(remove_url, store.spec, encode_url_list(to_remove))
    stamp = base.rsplit("-", 1)[-1].lower()
    metadata = {
        "name": f"{reconciliation.metadata.name}-repair-{stamp}",
        "namespace": reconciliation.metadata.namespace,
        "labels": {"icechunkoperator.io/reconciliation": reconciliation.metadata.name},
    }
    source = SourceSpec(index=ingest_url, remove_index=remove_url)
    return IngestBatch.model_validate(
        {
            "kind": "IngestBatch",
            "metadata": metadata,
            "spec": template.spec.model_copy(update={"source": source}).model_dump(by_alias=True),
        }
    )
