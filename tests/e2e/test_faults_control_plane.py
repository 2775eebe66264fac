"""Control-plane faults: the operator SIGKILLed at each queue transition, kube-apiserver and etcd
killed and restarted mid-batch, and two operators racing without peering (and the store's writer
Lease that keeps them apart, also when its holder died holding it).

Each case ends with the same check (``tests/faults/invariants.py``): the store holds every good
file exactly once (ledger pages and values read back), the failure logs hold exactly the bad ones,
no snapshot a batch reported was lost, and no store ever had two writers at once (from the fake
kubelet's runs and the API server's Jobs, ``tests/e2e/writers.py``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from icechunk_operator.api import IcechunkStore
from icechunk_operator.failpoints import ENV
from icechunk_operator.k8s import names
from icechunk_operator.k8s.apply import Applier
from icechunk_operator.k8s.kube import KubeApi
from icechunk_operator.k8s.plan import Start
from icechunk_operator.k8s.settings import OperatorSettings
from icechunk_operator.k8s.views import WRITER_COMPONENTS, batch_view
from icechunk_operator.k8s.writer_lock import lease_name
from icechunk_operator.synthetic import ArchiveLayout, SyntheticFile
from tests.cluster.control_plane import REPO, ControlPlane
from tests.cluster.kubelet import FakeKubelet
from tests.conftest import make_archive
from tests.e2e.conftest import ClusterDriver, OperatorStarter, ProcessHandle
from tests.e2e.test_operator import batch_doc, store_doc, wait_ready
from tests.e2e.writers import (
    assert_jobs_match_runs,
    failure_log_urls,
    max_concurrent_writers,
    writer_runs,
)
from tests.faults.invariants import check_store, local_url
from tests.faults.tally import FaultTally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

#: The operator's queue transitions (failpoints in ``k8s/apply.py``), with the phase the batch is
#: left in and whether its Job exists when the operator dies there.
TRANSITIONS = [
    ("operator.queued", "Queued", False),  # admitted to the queue, no Event yet
    ("operator.job-created", "Queued", True),  # the Job exists, the batch is not Running yet
    ("operator.started", "Running", True),  # Running, no Event yet
    ("operator.job-finished", "Running", True),  # the Job ended, the batch does not say so yet
    ("operator.finished", "Succeeded", True),  # the final phase is patched, no Event yet
]
RACED_STORES = 3


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveLayout:
    """12 files, 4 of them broken (one of each defect)."""
    return make_archive(
        tmp_path_factory.mktemp("control-plane-faults") / "archive", institutions=1, models=2, variables=3
    )


@pytest.fixture
def extra_namespaces(
    control_plane: ControlPlane, kube: client.ApiClient, namespace: str
) -> Iterator[list[str]]:
    """The test's namespace and four more, each set up as the README says."""
    core = client.CoreV1Api(kube)
    more = [f"{namespace}-{n}" for n in range(1, len(TRANSITIONS))]
    with ExitStack() as cleanup:
        for name in more:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
            cleanup.callback(core.delete_namespace, name)
            control_plane.kubectl(
                "apply", "-n", name, "-f", str(REPO / "examples" / "kubernetes" / "namespace-setup.yaml")
            )
        yield [namespace, *more]


def bad_urls(files: list[SyntheticFile]) -> set[str]:
    return {local_url(f) for f in files if f.defect != "none"}


def files_batch(name: str, store: str, archive: ArchiveLayout, files: list[SyntheticFile]) -> dict[str, Any]:
    """A batch of an explicit list of files (one worker: the commit pods share the session's
    Dask cluster)."""
    batch = batch_doc(name, store, archive, source={"files": [local_url(f) for f in files]})
    batch["spec"]["execution"] |= {"workers": 1}
    return batch


def check_batches(
    cluster: ClusterDriver,
    namespace: str,
    store: dict[str, Any],
    archive: ArchiveLayout,
    batches: dict[str, list[SyntheticFile]],
) -> tuple[int, int, int]:
    """The end check of every case in ``namespace``: (lost, duplicated, most writers at once per
    store, which the caller tallies, then asserts is 1)."""
    statuses = {name: cluster.status(names.BATCHES, namespace, name) for name in batches}
    for name, files in batches.items():
        logged = failure_log_urls(statuses[name])
        assert set(logged.values()) <= {1} and set(logged) == bad_urls(files), (name, logged)
        assert statuses[name]["files"]["failed"] == len(bad_urls(files)), statuses[name]
    reported = [snapshot for status in statuses.values() for snapshot in status.get("commits", [])]
    result = check_store(
        IcechunkStore.model_validate(store), archive, snapshots_before=reported, read_every=1
    )
    runs = writer_runs(cluster.kubelet, namespace)
    assert_jobs_match_runs(cluster.jobs(namespace), runs)
    return result.lost, result.duplicated, max(max_concurrent_writers(runs, time.monotonic()).values())


def assert_one_writer(cluster: ClusterDriver, namespace: str, most: int) -> None:
    assert most == 1, f"{most} writers ran at once for one store:\n{cluster.diagnostics(namespace)}"


def test_an_operator_killed_at_each_queue_transition_is_replaced_and_the_batch_ends_exactly_once(
    own_operators: OperatorStarter,
    extra_namespaces: list[str],
    control_plane: ControlPlane,
    kubelet: FakeKubelet,
    kube: client.ApiClient,
    small_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    # One namespace per transition, side by side: an operator armed to SIGKILL itself there (the
    # failpoint), then a fresh one, which must carry the batch on from what the API server holds.
    cases = list(zip(TRANSITIONS, extra_namespaces, strict=True))
    clusters: dict[str, ClusterDriver] = {}
    stores: dict[str, dict[str, Any]] = {}
    for (point, _, _), namespace in cases:
        armed = own_operators(f"armed-{point}", [namespace], **{ENV: f"{point}=kill"})
        clusters[namespace] = cluster = ClusterDriver(control_plane, armed, kubelet, kube)
        stores[namespace] = store_doc("transitions", (tmp_path / namespace / "store").as_uri(), small_archive)
        cluster.apply(stores[namespace], namespace=namespace)
    for (_, _, _), namespace in cases:
        wait_ready(clusters[namespace], namespace, "transitions")
        clusters[namespace].apply(
            files_batch("transitions", "transitions", small_archive, small_archive.files), namespace=namespace
        )

    for (point, phase, has_job), namespace in cases:
        cluster = clusters[namespace]
        armed = cluster.operator
        cluster.wait(
            namespace,
            lambda armed=armed: armed.process is not None and armed.process.poll() == -signal.SIGKILL,
            180,
            f"the operator to kill itself at {point}",
        )
        assert cluster.phase(namespace, "transitions") == phase, point  # it died where it was told
        assert len(cluster.jobs(namespace)) == int(has_job), point
        cluster.operator = own_operators(f"fresh-{point}", [namespace])

    for (point, _, _), namespace in cases:
        cluster = clusters[namespace]
        cluster.wait_phase(namespace, "transitions", "Succeeded", 240)
        jobs = cluster.jobs(namespace)
        runs = writer_runs(kubelet, namespace)
        assert len(jobs) == 1 and [run.process.returncode for run in runs] == [0], (point, runs)
        leaked = 0
        try:  # the DaskCluster goes with the batch's end, whoever of the two operators ended it
            cluster.wait(namespace, lambda c=cluster, ns=namespace: not c.dask_clusters(ns), 30, "teardown")
        except AssertionError:
            leaked = len(cluster.dask_clusters(namespace))
        lost, duplicated, most = check_batches(
            cluster, namespace, stores[namespace], small_archive, {"transitions": small_archive.files}
        )
        fault_tally.add(
            "control plane", f"operator SIGKILL at {point}", lost=lost, duplicated=duplicated, leaked=leaked
        )
        assert leaked == 0, f"{point}: the DaskCluster was left behind"
        assert_one_writer(cluster, namespace, most)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_process_killed_mid_batch_restarts_and_the_batches_end_exactly_once(
    component: str,
    cluster: ClusterDriver,
    namespace: str,
    small_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    store = store_doc("restarts", (tmp_path / "stores" / "store").as_uri(), small_archive)
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "restarts")
    half = len(small_archive.files) // 2
    batches = {"during": small_archive.files[:half], "after": small_archive.files[half:]}
    cluster.kubelet.hold(namespace)
    cluster.apply(files_batch("during", "restarts", small_archive, batches["during"]), namespace=namespace)
    cluster.wait_phase(namespace, "during", "Running", 60)
    cluster.kubelet.release(namespace)
    cluster.wait(namespace, lambda: writer_runs(cluster.kubelet, namespace), 60, "the commit pod to start")

    killed = time.monotonic()
    restart = {"kube-apiserver": cluster.plane.restart_apiserver, "etcd": cluster.plane.restart_etcd}
    restart[component]()  # the commit pod, the operator and the kubelet all lose the API meanwhile
    print(f"{component} killed and ready again in {time.monotonic() - killed:.1f} s")
    # Applied after the restart: only an operator whose watch came back ever sees this batch.
    cluster.apply(files_batch("after", "restarts", small_archive, batches["after"]), namespace=namespace)

    for name in batches:
        cluster.wait_phase(namespace, name, "Succeeded", 240)
    jobs = sorted(job.metadata.name for job in cluster.jobs(namespace))
    assert jobs == ["after-commit", "during-commit"]  # one Job each, however often a pod retried
    lost, duplicated, most = check_batches(cluster, namespace, store, small_archive, batches)
    kind = f"{component} SIGKILL and restart mid-batch"
    fault_tally.add("control plane", kind, lost=lost, duplicated=duplicated)
    assert_one_writer(cluster, namespace, most)


def unfinished_writer_jobs(cluster: ClusterDriver, namespace: str) -> Counter[str]:
    """Per store, the writer Jobs neither Complete nor Failed: each holds its store."""
    held: Counter[str] = Counter()
    for job in cluster.jobs(namespace):
        labels = job.metadata.labels or {}
        ended = any(
            c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or []
        )
        if labels.get(names.LABEL_COMPONENT) in WRITER_COMPONENTS and not ended:
            held[labels.get(names.LABEL_STORE, "")] += 1
    return held


def test_two_operators_without_peering_never_run_two_writers_for_one_store(
    own_operators: OperatorStarter,
    control_plane: ControlPlane,
    kubelet: FakeKubelet,
    kube: client.ApiClient,
    namespace: str,
    small_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    first = own_operators("racer-a", [namespace])
    second = own_operators("racer-b", [namespace])  # standalone both: no peering keeps either idle
    cluster = ClusterDriver(control_plane, first, kubelet, kube)
    stores = {
        f"raced{n}": store_doc(f"raced{n}", (tmp_path / f"s{n}" / "store").as_uri(), small_archive)
        for n in range(RACED_STORES)
    }
    cluster.apply(*stores.values(), namespace=namespace)
    for name in stores:
        wait_ready(cluster, namespace, name)

    # Per store, four batches of three files, all created at once (in no set order, within a
    # second): each that sorts first (the same creation second, an earlier name) becomes the
    # head of the queue, so two operators whose watches are a few milliseconds apart can see
    # different heads, and each would start its own unless the API server holds them apart.
    # The pods are held meanwhile: every writer Job the operators create stays unfinished.
    files = small_archive.files
    parts = {f"b{n}": files[3 * n : 3 * n + 3] for n in range(len(files) // 3)}
    kubelet.hold(namespace)
    custom = client.CustomObjectsApi(kube)

    def create(store_and_part: tuple[str, str]) -> None:
        store, part = store_and_part
        body = files_batch(f"{store}-{part}", store, small_archive, parts[part])
        custom.create_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.BATCHES, body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, [(store, part) for store in stores for part in sorted(parts, reverse=True)]))
    cluster.wait(
        namespace,
        lambda: set(unfinished_writer_jobs(cluster, namespace)) == set(stores),
        60,
        "a Job per store",
    )
    cluster.wait_for_queue_passes(namespace, list(stores), [first, second])  # while the pods are held
    held = unfinished_writer_jobs(cluster, namespace)
    kubelet.release(namespace)

    for store in stores:
        for part in parts:
            cluster.wait_phase(namespace, f"{store}-{part}", "Succeeded", 400)
    most = 0
    for store, body in stores.items():
        lost, duplicated, ran = check_batches(
            cluster, namespace, body, small_archive, {f"{store}-{part}": parts[part] for part in parts}
        )
        most = max(most, ran, held[store])
        # A second writer at once counts as a duplicate: it is how files end up written twice.
        extra = max(ran, held[store]) - 1
        fault_tally.add(
            "control plane", "two operators, no peering", len(parts), lost=lost, duplicated=duplicated + extra
        )
    assert max(held.values()) == 1, f"two writer Jobs held one store at once: {held}"
    assert_one_writer(cluster, namespace, most)
    assert len(cluster.jobs(namespace)) == len(stores) * len(parts)
    for racer in (first, second):  # both were alive all along
        assert racer.process is not None and racer.process.poll() is None, racer.log()[-2000:]


def test_two_operators_that_both_saw_a_free_store_start_one_writer_between_them(
    own_operators: OperatorStarter,
    control_plane: ControlPlane,
    kubelet: FakeKubelet,
    kube: client.ApiClient,
    namespace: str,
    small_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    """The moment the race above is about, made certain: two operators have each asked the API
    server for the store's writer Jobs and seen none, and neither has created its own yet.

    The operator's own action code (two ``Applier``s, one API client each, as two processes
    would have) starts two different batches of one store, each waiting after its listing of the
    store's Jobs until the other has listed too. No real server can be told to hold two clients
    there, so the test holds them (the one thing not real here; the API server is). Without the
    store's writer Lease both created a Job; with it, the second is turned away before it lists.
    """
    assert own_operators  # the session's operator is stopped: nothing else acts in the namespace
    kubelet.hold(namespace)  # the Jobs' pods never run: the count of writer Jobs is the finding
    cluster = ClusterDriver(control_plane, ProcessHandle("none", [], {}, tmp_path), kubelet, kube)
    store = store_doc("contested", (tmp_path / "store").as_uri(), small_archive)
    batches = [files_batch(name, "contested", small_archive, small_archive.files) for name in ("one", "two")]
    assert cluster.apply(store, *batches, namespace=namespace).returncode == 0
    bodies = [cluster.get(names.BATCHES, namespace, name) for name in ("one", "two")]
    rendezvous = threading.Barrier(2)

    class ListsThenWaits(KubeApi):
        def store_jobs(self, namespace: str, store: str) -> list[dict[str, Any]]:
            jobs = super().store_jobs(namespace, store)
            with contextlib.suppress(threading.BrokenBarrierError):  # the other never listed
                rendezvous.wait(timeout=3)
            return jobs

    def start(body: dict[str, Any]) -> None:
        api = ListsThenWaits(config.new_client_from_config(config_file=str(control_plane.kubeconfig)))
        Applier(api, OperatorSettings(), lambda *_: None).apply(namespace, None, [Start(batch_view(body))])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(start, bodies))
    writers = unfinished_writer_jobs(cluster, namespace)["contested"]
    leases = client.CoordinationV1Api(kube).list_namespaced_lease(namespace).items  # all released
    kind = "two operators between check and create"
    fault_tally.add("control plane", kind, 2, duplicated=writers - 1, leaked=len(leases))
    assert writers == 1, [job.metadata.name for job in cluster.jobs(namespace)]
    assert not leases, [lease.metadata.name for lease in leases]


def test_a_writer_lease_left_by_a_dead_operator_holds_the_store_until_it_expires(
    cluster: ClusterDriver,
    kube: client.ApiClient,
    namespace: str,
    small_archive: ArchiveLayout,
    tmp_path: Path,
    fault_tally: FaultTally,
) -> None:
    store = store_doc("orphaned", (tmp_path / "stores" / "store").as_uri(), small_archive)
    cluster.apply(store, namespace=namespace)
    wait_ready(cluster, namespace, "orphaned")
    # What an operator killed between taking the store's writer Lease and releasing it leaves
    # behind: its Lease, last renewed 50 s ago, for 60 s. No writer may start before it expires.
    expires = datetime.now(UTC) + timedelta(seconds=10)
    renewed = (expires - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    leases = client.CoordinationV1Api(kube)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease_name("orphaned")},
        "spec": {"holderIdentity": "dead-operator/1", "leaseDurationSeconds": 60, "renewTime": renewed},
    }
    leases.create_namespaced_lease(namespace, lease)
    cluster.apply(files_batch("held", "orphaned", small_archive, small_archive.files), namespace=namespace)
    cluster.wait_phase(namespace, "held", "Queued", 30)
    status = cluster.wait_phase(namespace, "held", "Succeeded", 120)
    job = cluster.jobs(namespace)[0]
    # the one writer was created once the Lease had expired, not under it
    assert job.metadata.creation_timestamp >= expires.replace(microsecond=0), "started under a live Lease"
    left = leases.list_namespaced_lease(namespace).items  # taken over, then released
    lost, duplicated, most = check_batches(
        cluster, namespace, store, small_archive, {"held": small_archive.files}
    )
    fault_tally.add(
        "control plane", "writer Lease of a dead operator", lost=lost, duplicated=duplicated, leaked=len(left)
    )
    assert not left and status["commitJob"] == job.metadata.name
    assert_one_writer(cluster, namespace, most)
