"""Failure semantics on a real control plane: crashes are retried, Failed batches can be retried
by request, and a recreated batch never takes over the Job of the batch it replaced."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from icechunk_operator.api import IcechunkStore
from icechunk_operator.engine.commits import load_ledger
from icechunk_operator.engine.storage import open_repository
from icechunk_operator.failpoints import ENV, ONCE_DIR_ENV
from icechunk_operator.k8s import names
from icechunk_operator.k8s.views import RETRY_ANNOTATION
from icechunk_operator.synthetic import ArchiveLayout
from tests.conftest import make_archive
from tests.e2e.conftest import ClusterDriver, wait_until
from tests.e2e.test_operator import batch_doc, store_doc, wait_ready


def ledger_urls(store: dict[str, object]) -> Counter[str]:
    """How often each source file is recorded (live) in the store: every good file exactly once."""
    model = IcechunkStore.model_validate(store)
    repo = open_repository(model.spec, create=False)
    entries = load_ledger(repo, model.spec.branch).values()
    return Counter(entry.url for entry in entries if not entry.removed)


def good_urls(archive: ArchiveLayout) -> set[str]:
    return {f.path.resolve().as_uri() for f in archive.files if f.defect == "none"}


def condition(status: dict[str, object], type_: str) -> dict[str, str]:
    conditions = status.get("conditions") or []
    return next(c for c in conditions if c["type"] == type_)  # type: ignore[union-attr, index]


def test_a_commit_pod_that_crashes_is_retried_and_resumes_from_the_last_commit(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    store = store_doc("ismip6", (tmp_path / "store").as_uri(), shared_archive)
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "ismip6")
    # A failpoint (icechunk_operator.failpoints): the first commit process raises an uncaught
    # exception on its fifth group, after its first commits (every 2 groups); once, so the retry passes.
    once = tmp_path / "once"
    once.mkdir()
    cluster.kubelet.namespace_env[namespace] = {ENV: "virtualizing=raise@5", ONCE_DIR_ENV: str(once)}
    batch = batch_doc("crashy", "ismip6", shared_archive, commit={"everyGroups": 2})
    batch["spec"]["execution"] |= {"podRetries": 2, "filesPerTask": 1}
    cluster.apply(batch, namespace=namespace)

    status = cluster.wait_phase(namespace, "crashy", "Succeeded", 240)
    assert (once / "virtualizing").exists(), "the failpoint never fired"
    runs = [run for run in cluster.kubelet.commit_runs(namespace) if run.process.poll() is not None]
    assert [run.process.returncode for run in runs] == [3, 0]  # a crash, then the retry
    assert "test fault: failpoint virtualizing" in runs[0].log.read_text()
    assert len(cluster.jobs(namespace)) == 1  # the Job retried its pod; no second Job
    assert status["files"]["skipped"] > 0, status  # files of the first pod's commits were not redone
    assert status.get("message") is None, status  # the crash's note is gone once it succeeded
    recorded = ledger_urls(store)
    assert set(recorded) == good_urls(shared_archive) and max(recorded.values()) == 1


def test_a_batch_failed_beyond_tolerance_is_retried_by_request_and_finishes_from_the_ledger(
    cluster: ClusterDriver, namespace: str, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "archive", institutions=1, models=3, experiments=2, variables=2)
    store = store_doc("strict", (tmp_path / "store").as_uri(), archive)
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "strict")
    batch = batch_doc("strict", "strict", archive, failures={"maxFailedFiles": 0})
    cluster.apply(batch, namespace=namespace)

    failed = cluster.wait_phase(namespace, "strict", "Failed", 180)
    reason = condition(failed, "Failed")
    assert reason["reason"] == "BeyondFailureTolerance", reason
    assert RETRY_ANNOTATION in reason["message"], reason  # the message says what to do
    broken = [f for f in archive.files if f.defect != "none"]
    assert failed["files"]["failed"] == len(broken) > 0
    assert set(ledger_urls(store)) == good_urls(archive)  # what could be ingested was kept

    # Re-applying the same spec changes nothing: a Failed batch waits for the documented request.
    assert cluster.apply(batch, namespace=namespace).returncode == 0
    assert cluster.phase(namespace, "strict") == "Failed"

    for item in broken:  # the data provider fixes the archive: the broken files are withdrawn
        item.path.unlink()
    cluster.plane.kubectl(
        "annotate", "-n", namespace, "ingestbatch/strict", f"{RETRY_ANNOTATION}=1", "--overwrite"
    )
    wait_until(
        lambda: cluster.status(names.BATCHES, namespace, "strict").get("attempt") == 1, 30, "the re-queue"
    )
    status = cluster.wait_phase(namespace, "strict", "Succeeded", 180)
    assert status["attempt"] == 1 and status["lastRetryRequest"] == "1"
    assert status["files"] == {
        "total": len(archive.files) - len(broken),
        "done": 0,
        "failed": 0,
        "skipped": len(archive.files) - len(broken),
    }
    jobs = sorted(job.metadata.name for job in cluster.jobs(namespace))
    assert jobs == sorted([names.commit_job_name("strict"), names.commit_job_name("strict", 1)])
    recorded = ledger_urls(store)
    assert set(recorded) == good_urls(archive) and max(recorded.values()) == 1


def test_a_recreated_batch_never_adopts_the_job_of_the_batch_it_replaced(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    cluster.apply(store_doc("ismip6", (tmp_path / "store").as_uri(), shared_archive), namespace=namespace)
    wait_ready(cluster, namespace, "ismip6")
    cluster.kubelet.hold(namespace)
    cluster.apply(batch_doc("again", "ismip6", shared_archive), namespace=namespace)
    cluster.wait_phase(namespace, "again", "Running", 30)
    old_uid = cluster.get(names.BATCHES, namespace, "again")["metadata"]["uid"]
    # The old Job outlives its batch (as it does while the garbage collector is behind).
    cluster.plane.kubectl("delete", "-n", namespace, "ingestbatch/again", "--cascade=orphan")
    cluster.apply(batch_doc("again", "ismip6", shared_archive), namespace=namespace)
    new_uid = cluster.get(names.BATCHES, namespace, "again")["metadata"]["uid"]
    assert new_uid != old_uid

    queued = cluster.wait_phase(namespace, "again", "Queued", 30)  # the old Job still holds the store
    assert queued.get("commitJob") is None
    cluster.kubelet.release(namespace)
    status = cluster.wait_phase(namespace, "again", "Succeeded", 240)

    job = next(j for j in cluster.jobs(namespace) if j.metadata.name == status["commitJob"])
    assert [ref.uid for ref in job.metadata.owner_references or []] == [new_uid]
    runs = [run.pod for run in cluster.kubelet.commit_runs(namespace)]
    assert len(runs) == 2  # the old Job's pod and the new batch's own


def test_a_failed_data_delete_keeps_the_store_says_why_and_is_retried(
    cluster: ClusterDriver, namespace: str, shared_archive: ArchiveLayout, tmp_path: Path
) -> None:
    repository = tmp_path / "store"
    store = store_doc("doomed", repository.as_uri(), shared_archive, deletionPolicy="Delete")
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "doomed")
    wait_until(
        lambda: (
            names.FINALIZER_DELETE_DATA
            in cluster.get(names.STORES, namespace, "doomed")["metadata"].get("finalizers", [])
        ),
        30,
        "the delete-data finalizer",
    )
    # A real fault, no mock: the repository's folder is replaced by a file, which no delete of a
    # folder can remove (permissions cannot make the delete fail: the tests run as root).
    aside = tmp_path / "aside"
    repository.rename(aside)
    repository.write_text("not a repository")
    cluster.plane.kubectl("delete", "-n", namespace, "icechunkstore/doomed", "--wait=false")

    def warnings() -> str:
        return cluster.plane.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector=involvedObject.kind=IcechunkStore,reason=DataDeletionFailed",
            "-o",
            "jsonpath={.items[*].message}",
        ).stdout

    message = wait_until(warnings, 60, "the DataDeletionFailed Event")
    assert "could not delete" in message and "trying again in" in message, message
    kept = cluster.get(names.STORES, namespace, "doomed")  # the finalizer holds it: nothing was lost
    assert names.FINALIZER_DELETE_DATA in kept["metadata"]["finalizers"]

    repository.unlink()  # the fault is repaired; the next attempt deletes the data and lets go
    aside.rename(repository)

    def gone() -> bool:
        listed = cluster.plane.kubectl("get", "icechunkstores", "-n", namespace, "-o", "name").stdout
        return "doomed" not in listed

    wait_until(gone, 60, "the store to be deleted after the retry")
    assert not repository.exists()
