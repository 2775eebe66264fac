"""``icechunk-operator``: run ingest specs locally, run the Kubernetes operator or its pods."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from icechunk_operator import __version__
from icechunk_operator.exiting import ExitCode, one_line_error

EXIT_OK, EXIT_BATCH_FAILED, EXIT_INVALID_SPEC = ExitCode.OK, ExitCode.BATCH_FAILED, ExitCode.REFUSED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="icechunk-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="ingest the IngestBatches of a YAML file and do one run of each IngestSchedule"
    )
    run.add_argument("-f", "--file", required=True, type=Path, help="YAML with stores and batches")
    run.add_argument("--scheduler", help="address of a Dask scheduler (default: local cluster)")
    run.add_argument("--workers", type=int, help="worker processes of the local cluster")
    run.add_argument("--batch", action="append", help="only these batches (repeatable)")
    run.add_argument("--schedule", action="append", help="only these schedules, one run each (repeatable)")

    validate = commands.add_parser("validate", help="check a YAML file without running it")
    validate.add_argument("-f", "--file", required=True, type=Path)

    demo = commands.add_parser("demo", help="build a synthetic ISMIP6-like archive and ingest it")
    demo.add_argument("--dir", type=Path, default=Path("demo-output"))
    demo.add_argument("--workers", type=int, default=2)

    reconcile = commands.add_parser(
        "reconcile", help="compare stores with their sources: missing, stale and orphaned files"
    )
    target = reconcile.add_mutually_exclusive_group(required=True)
    target.add_argument("-f", "--file", type=Path, help="YAML with stores and reconciliations")
    target.add_argument(
        "--resource", help="the reconcile pod: NAMESPACE/NAME of a Reconciliation in the cluster"
    )
    reconcile.add_argument("--name", action="append", help="only these reconciliations (repeatable)")

    history = commands.add_parser("history", help="a store's snapshots, newest first")
    tag = commands.add_parser("tag", help="tag a store's snapshot (default: the branch tip)")
    expire = commands.add_parser("expire", help="expire old snapshots of a store, then garbage-collect")
    compare = commands.add_parser(
        "compare", help="compare a group at two versions (tags, branches, snapshots), variable by variable"
    )
    fsck = commands.add_parser(
        "fsck", help="read every stored chunk of a store; name those that do not decode"
    )
    for lifecycle in (history, tag, expire, compare, fsck):
        lifecycle.add_argument("-f", "--file", required=True, type=Path, help="YAML with the IcechunkStore")
        lifecycle.add_argument("--store", help="the store's name (default: the only one in the file)")
    history.add_argument("-n", "--limit", type=int, default=20)
    tag.add_argument("tag", help="tag name, e.g. v1.0")
    tag.add_argument("--snapshot", help="snapshot id (default: the tip of the store's branch)")
    rule = expire.add_mutually_exclusive_group()
    rule.add_argument(
        "--older-than", help="expire snapshots older than this, e.g. 30d (default: the store's maintenance)"
    )
    rule.add_argument("--keep", type=int, help="keep the newest N snapshots of the branch")
    compare.add_argument("--group", required=True, help="the group, e.g. ROSR/observations")
    compare.add_argument("a", help="first version: a tag (v1.0), a branch or a snapshot id")
    compare.add_argument("b", help="second version")
    fsck.add_argument("--ref", help="tag, branch or snapshot to check (default: the store's branch)")

    maintain = commands.add_parser(
        "maintain", help="the maintenance pod: run a store's maintenance policy in the cluster"
    )
    maintain.add_argument("--store", required=True, help="NAMESPACE/NAME of the IcechunkStore")

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions generated from the models")
    crds.add_argument("-o", "--output", type=Path, default=Path("crds"), help="folder (default: crds)")

    operator = commands.add_parser("operator", help="run the Kubernetes operator (Kopf)")
    where = operator.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    operator.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (default: none)"
    )
    operator.add_argument("-v", "--verbose", action="store_true")

    commit = commands.add_parser("commit", help="the commit pod: run one IngestBatch from the cluster")
    commit.add_argument("--batch", required=True, help="NAMESPACE/NAME of the IngestBatch")
    commit.add_argument("--scheduler", help="Dask scheduler (default: $ICECHUNK_OPERATOR_DASK_SCHEDULER)")

    args = parser.parse_args(argv)
    from icechunk_operator.engine.storage import quiet_logs

    quiet_logs()
    if args.command == "validate":
        return _validate(args.file)
    if args.command == "demo":
        return _demo(args.dir, args.workers)
    if args.command == "crds":
        return _crds(args.output)
    if args.command == "reconcile":
        if args.resource:
            return _in_cluster("reconcile", args.resource)
        return _reconcile(args.file, args.name)
    if args.command in ("history", "tag", "expire", "compare", "fsck"):
        return _lifecycle(args)
    if args.command == "operator":
        if args.metrics_port:
            import os

            os.environ["ICECHUNK_OPERATOR_METRICS_PORT"] = str(args.metrics_port)
        return _operator(args.namespace or [], args.liveness, args.verbose)
    if args.command == "commit":
        return _in_cluster("commit", args.batch, args.scheduler)
    if args.command == "maintain":
        return _in_cluster("maintain", args.store)
    return run_file(
        args.file, scheduler=args.scheduler, workers=args.workers, only=args.batch, schedules=args.schedule
    )


def _load_chosen(path: Path, kind: str, only: list[str] | None) -> tuple[Any, list[Any]] | None:
    """The file's resources and those of ``kind`` to run; None, after saying why, if there are none."""
    from icechunk_operator.api.documents import SpecError, load_resources

    try:
        resources = load_resources(path)
    except SpecError as error:
        print(error, file=sys.stderr)
        return None
    pool = resources.batches if kind == "IngestBatch" else resources.reconciliations
    chosen = [r for r in pool if not only or r.metadata.name in only]
    if not chosen:
        print(f"{path}: no {kind} to run", file=sys.stderr)
        return None
    return resources, chosen


def _lifecycle(args: argparse.Namespace) -> int:
    from icechunk_operator.api.documents import SpecError, load_resources
    from icechunk_operator.engine import lifecycle
    from icechunk_operator.engine.storage import open_repository

    try:
        stores = load_resources(args.file).stores
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SPEC
    name = args.store or (next(iter(stores)) if len(stores) == 1 else None)
    if name not in stores:
        print(f"{args.file}: --store must name one of {sorted(stores)}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    spec = stores[name].spec
    try:
        repo = open_repository(spec, create=False)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SPEC
    if args.command == "history":
        for line in lifecycle.history(repo, spec.branch, args.limit):
            stamp = line.written_at.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{line.id}  {stamp}  {line.batch or '-':<20}  {line.message}")
        return EXIT_OK
    if args.command == "compare":
        return _compare(repo, args.group, args.a, args.b)
    if args.command == "fsck":
        return _fsck(repo, args.ref or spec.branch)
    if args.command == "tag":
        target = lifecycle.tag_snapshot(repo, args.tag, snapshot=args.snapshot, branch=spec.branch)
        print(f"tagged {target} as {args.tag}")
        return EXIT_OK
    older_than_text, keep = args.older_than, args.keep
    if older_than_text is None and keep is None:
        if spec.maintenance is None:
            print("expire: give --older-than or --keep, or set the store's spec.maintenance", file=sys.stderr)
            return EXIT_INVALID_SPEC
        older_than_text, keep = spec.maintenance.expire_older_than, spec.maintenance.keep_snapshots
    try:
        older_than = lifecycle.parse_duration(older_than_text) if older_than_text else None
        report = lifecycle.expire_and_collect(repo, spec.branch, older_than=older_than, keep=keep)
    except ValueError as error:
        print(f"expire: {error}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    print(
        f"expired {report.expired} snapshots older than {report.cutoff:%Y-%m-%d %H:%M:%S}; garbage "
        f"collection deleted {report.snapshots_deleted} snapshots, {report.manifests_deleted} manifests, "
        f"{report.chunks_deleted} chunks ({report.bytes_deleted} bytes)"
    )
    return EXIT_OK


def _compare(repo: Any, group: str, a: str, b: str) -> int:
    from icechunk_operator.engine.versions import compare_versions

    try:
        differences = compare_versions(repo, group, a, b)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    print(f"{group}: {a} vs {b}")
    print(
        f"{'variable':<16} {'compared':>12} {'differing':>12} {'mean |diff|':>14} {'max |diff|':>14}  beyond"
    )
    for d in differences:
        mean = "-" if d.mean_abs is None else f"{d.mean_abs:.6g}"
        peak = "-" if d.max_abs is None else f"{d.max_abs:.6g}"
        beyond = f"{d.only_in_a} only in {a}, {d.only_in_b} only in {b}" if d.only_in_a or d.only_in_b else ""
        print(f"{d.name:<16} {d.compared:>12,} {d.differing:>12,} {mean:>14} {peak:>14}  {beyond}")
    return EXIT_OK


def _fsck(repo: Any, ref: str) -> int:
    """Exit 0 when every chunk decodes, 1 when some do not."""
    from icechunk_operator.engine.integrity import check_integrity
    from icechunk_operator.engine.versions import open_version

    try:
        session = open_version(repo, ref)
    except ValueError as error:
        print(f"fsck: {error}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    report = check_integrity(session)
    for problem in report.problems:
        print(f"{problem.array} chunk {'.'.join(map(str, problem.chunk))}: {problem.error}")
    print(
        f"fsck {ref}: {report.chunks:,} chunks of {report.arrays} arrays read, "
        f"{report.undecodable} do not decode"
    )
    return EXIT_OK if report.clean else EXIT_BATCH_FAILED


def _reconcile(path: Path, only: list[str] | None) -> int:
    """Exit 0 when every store matches its source (or a repair made it so), 1 when something
    differs (or a repair failed), 2 when refused."""
    from icechunk_operator.api.reconciliation import ReconciliationMode
    from icechunk_operator.engine.reconcile import repair_batch, run_reconciliation
    from icechunk_operator.engine.urls import SourceOutsideContainersError

    loaded = _load_chosen(path, "Reconciliation", only)
    if loaded is None:
        return EXIT_INVALID_SPEC
    resources, chosen = loaded
    batches = {batch.metadata.name: batch for batch in resources.batches}
    exit_code: int = EXIT_OK
    for reconciliation in chosen:
        name = reconciliation.metadata.name
        store = resources.stores[reconciliation.spec.store]
        try:
            report = run_reconciliation(store, reconciliation)
        except (SourceOutsideContainersError, FileNotFoundError) as error:
            print(f"Reconciliation {name}: {error}", file=sys.stderr)
            return EXIT_INVALID_SPEC
        found = ", ".join(f"{category} {count}" for category, count in report.counts().items())
        print(f"{name}: {report.listed} source files, {report.recorded} in the store; {found}")
        print(f"  report: {report.report_url}")
        template = reconciliation.spec.batch_template
        if reconciliation.spec.mode == ReconciliationMode.REPORT or template is None:
            exit_code = max(exit_code, EXIT_OK if report.clean else EXIT_BATCH_FAILED)
            continue
        try:
            repair = repair_batch(store, reconciliation, batches[template], report)
        except ValueError as error:
            print(f"Reconciliation {name}: {error}", file=sys.stderr)
            return EXIT_INVALID_SPEC
        if repair is None:
            exit_code = max(exit_code, EXIT_OK if not report.broken else EXIT_BATCH_FAILED)
            continue
        print(f"  repair: IngestBatch {repair.metadata.name}")
        code = _run_batch(store, repair)
        if code == EXIT_INVALID_SPEC:
            return code
        exit_code = max(exit_code, code, EXIT_BATCH_FAILED if report.broken else EXIT_OK)
    return exit_code


def _crds(folder: Path) -> int:
    from icechunk_operator.api.crds import write_crds

    for path in write_crds(folder):
        print(path)
    return EXIT_OK


def _operator(namespaces: list[str], liveness: str | None, verbose: bool) -> int:
    import random

    from icechunk_operator.k8s.settings import OperatorSettings

    # Kopf recognises objects of optional client libraries by importing them when they are
    # installed (dask-kubernetes brings kubernetes_asyncio): 80 MB and 3 s at start for types
    # this operator never hands it.
    for optional in ("kubernetes_asyncio", "pykube"):
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]

    import kopf

    import icechunk_operator.k8s.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)  # Kopf's logging setup, which our loggers share
    # Kopf peering is not leader election: peers of equal priority all pause. Replicas of one
    # Deployment therefore draw distinct priorities; the highest works and the others wait until
    # its keep-alives stop (a tie pauses both, which is safe, until one restarts). Peering must be
    # given to kopf.run itself: set later, in a startup handler, it would not pause the watchers.
    settings = OperatorSettings.from_env()
    peering, priority = settings.peering, settings.peering_priority
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=peering is None,
        peering_name=peering,
        priority=(priority if priority is not None else random.randint(1, 1_000_000)) if peering else None,
    )
    return EXIT_OK


def _in_cluster(pod: str, reference: str, scheduler: str | None = None) -> int:
    """The commit, reconcile or maintenance pod, logging to stderr for ``kubectl logs``. An
    exception nothing caught is a crash (exit 3, retried by the Job), never exit 1, which the
    commit Job reads as "beyond the failure tolerance" and does not retry."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return _run_pod(pod, reference, scheduler)
    except Exception:
        logging.getLogger("icechunk_operator.pod").exception("%s pod for %s crashed", pod, reference)
        return ExitCode.CRASHED
    except SystemExit as exit_:  # a library that calls sys.exit(1) must not look like exit 1
        logging.getLogger("icechunk_operator.pod").error("%s pod exited early: %s", pod, exit_.code)
        return ExitCode.OK if exit_.code in (0, None) else ExitCode.CRASHED


def _run_pod(pod: str, reference: str, scheduler: str | None) -> int:
    if pod == "commit":
        from icechunk_operator.k8s.commit_pod import run_commit_pod

        return run_commit_pod(reference, scheduler=scheduler)
    if pod == "maintain":
        from icechunk_operator.k8s.maintenance_pod import run_maintenance_pod

        return run_maintenance_pod(reference)
    from icechunk_operator.k8s.reconcile_pod import run_reconcile_pod

    return run_reconcile_pod(reference)


def _validate(path: Path) -> int:
    from icechunk_operator.api.documents import SpecError, load_resources

    try:
        resources = load_resources(path)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SPEC
    schedules = f", {len(resources.schedules)} schedules" if resources.schedules else ""
    print(
        f"{path}: {len(resources.stores)} stores, {len(resources.batches)} batches, "
        f"{len(resources.reconciliations)} reconciliations{schedules}: valid"
    )
    if resources.schedules:
        from datetime import UTC, datetime

        from icechunk_operator.local_schedules import describe_schedule

        now = datetime.now(UTC)
        for schedule in resources.schedules:
            print(f"  {describe_schedule(schedule, now)}")
    return EXIT_OK


def run_file(
    path: Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    only: list[str] | None = None,
    schedules: list[str] | None = None,
) -> int:
    """The file's batches, then one run of each schedule; with ``only`` (batches) or ``schedules``
    given, just the resources they name."""
    from icechunk_operator.api.documents import SpecError, load_resources

    try:
        resources = load_resources(path)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SPEC
    chosen = _choose_runs(path, resources, only, schedules)
    if chosen is None:
        return EXIT_INVALID_SPEC
    batches, chosen_schedules = chosen
    exit_code: int = EXIT_OK
    for batch in batches:
        code = _run_batch(resources.stores[batch.spec.store], batch, scheduler=scheduler, workers=workers)
        if code == EXIT_INVALID_SPEC:
            return code
        exit_code = max(exit_code, code)
    for schedule in chosen_schedules:
        code = _run_schedule_once(resources.stores[schedule.spec.batch.store], schedule, scheduler, workers)
        if code == EXIT_INVALID_SPEC:
            return code
        exit_code = max(exit_code, code)
    return exit_code


def _choose_runs(
    path: Path, resources: Any, batches: list[str] | None, schedules: list[str] | None
) -> tuple[list[Any], list[Any]] | None:
    """The batches and schedules ``run`` runs: all, or only those named (a name the file does not
    hold is refused, not skipped); None, after saying why, when that is nothing."""
    pools = (
        ("--batch", "IngestBatch", resources.batches, batches),
        ("--schedule", "IngestSchedule", resources.schedules, schedules),
    )
    named = batches is not None or schedules is not None
    chosen: list[list[Any]] = []
    for option, kind, pool, names in pools:
        known = [r.metadata.name for r in pool]
        for name in names or []:
            if name not in known:
                has = ", ".join(known) or "none"
                print(
                    f"{path}: {option} {name}: no {kind} of that name (the file has: {has})", file=sys.stderr
                )
                return None
        chosen.append([r for r in pool if (r.metadata.name in names if names else not named)])
    if not any(chosen):
        print(f"{path}: no IngestBatch or IngestSchedule to run", file=sys.stderr)
        return None
    return chosen[0], chosen[1]


def _run_schedule_once(store: Any, schedule: Any, scheduler: str | None, workers: int | None) -> int:
    """One run of an IngestSchedule, now: the IngestBatch its template makes, run as any batch."""
    from datetime import UTC, datetime

    from icechunk_operator.local_schedules import local_run_batch, suspended_note

    note = suspended_note(schedule)
    if note:
        print(note, file=sys.stderr)
    batch = local_run_batch(schedule, datetime.now(UTC))
    print(f"IngestSchedule {schedule.metadata.name}: run {batch.metadata.name}", file=sys.stderr)
    return _run_batch(store, batch, scheduler=scheduler, workers=workers)


def _run_batch(store: Any, batch: Any, *, scheduler: str | None = None, workers: int | None = None) -> int:
    """One batch with a progress bar and a summary table; the exit code it earns."""
    import traceback

    from icechunk_operator.engine.errors import Refused
    from icechunk_operator.engine.runner import run_batch
    from icechunk_operator.k8s.settings import PodSettings
    from icechunk_operator.local_schedules import nothing_new
    from icechunk_operator.progress import make_progress, summary_table

    progress = make_progress()
    name = batch.metadata.name
    try:
        report = run_batch(store, batch, scheduler=scheduler, workers=workers, on_progress=progress)
    except Refused as error:
        print(f"IngestBatch {name}: {error}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    except Exception as error:  # a crash: one line, the traceback only when asked for
        progress.close()
        if PodSettings.from_env().traceback:
            traceback.print_exc()
        print(
            f"IngestBatch {name}: crashed: {one_line_error(error)}\n"
            f"  Nothing committed is lost: run the same command again to resume from the last commit "
            f"(set ICECHUNK_OPERATOR_TRACEBACK=1 to see the traceback).",
            file=sys.stderr,
        )
        return ExitCode.CRASHED
    finally:
        progress.close()
    print(summary_table(report))
    quiet = nothing_new(report)
    if quiet:
        print(quiet)
    if report.refused:
        print(f"IngestBatch {name} refused: {report.error}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    if not report.succeeded:
        print(
            f"IngestBatch {name} failed: {report.error or 'more files failed than spec.failures allows'}.\n"
            "  To retry, fix the cause and run the same command again: "
            "it skips what is committed and resumes from the ledger.",
            file=sys.stderr,
        )
    return EXIT_OK if report.succeeded else EXIT_BATCH_FAILED


def _demo(folder: Path, workers: int) -> int:
    from icechunk_operator.api.documents import load_resources
    from icechunk_operator.demo import describe_store, write_demo_inputs

    spec_path = write_demo_inputs(folder, workers=workers)
    print(f"archive and spec written to {folder}/ (re-run with: icechunk-operator run -f {spec_path})")
    code = run_file(spec_path)
    store = next(iter(load_resources(spec_path).stores.values()))
    print()
    print(describe_store(store.spec))
    return code


def entrypoint() -> NoReturn:
    """The console script: :func:`main`, then :func:`~icechunk_operator.exiting.exit_now`.

    Whatever escapes is a crash, exit 3, never Python's 1: in a pod, 1 means "beyond the failure
    tolerance", and a Job does not retry it."""
    from icechunk_operator.exiting import exit_now

    try:
        code = main()
    except Exception as error:
        import traceback

        traceback.print_exc()
        print(f"icechunk-operator: crashed: {one_line_error(error)}", file=sys.stderr)
        code = ExitCode.CRASHED
    exit_now(code)


if __name__ == "__main__":
    entrypoint()
