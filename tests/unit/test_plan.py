"""The operator's decisions for one store, without an API server: every case in one line each."""

from __future__ import annotations

from icechunk_operator.api.batch import BatchPhase
from icechunk_operator.k8s import names
from icechunk_operator.k8s.plan import (
    Action,
    Adopt,
    DeleteJob,
    Finish,
    Lost,
    MaintenanceFailed,
    Observed,
    Queue,
    Refuse,
    Requeue,
    SetPosition,
    Start,
    StartMaintenance,
    admission_candidates,
    plan_store,
)
from icechunk_operator.k8s.views import (
    RETRY_ANNOTATION,
    Admission,
    BatchView,
    JobOutcome,
    JobView,
    Reason,
    StoreView,
    batch_view,
    job_view,
    store_view,
)

QUEUED, RUNNING, FAILED, SUCCEEDED = (
    BatchPhase.QUEUED,
    BatchPhase.RUNNING,
    BatchPhase.FAILED,
    BatchPhase.SUCCEEDED,
)
OK = Admission()


def batch(name: str, created: str = "1", phase: BatchPhase | None = None, **fields: object) -> BatchView:
    values: dict[str, object] = {"uid": f"uid-{name}", "generation": 1, "observed_generation": 1, **fields}
    if phase is None:
        values["observed_generation"] = fields.get("observed_generation")
    return BatchView(name=name, created=created, phase=phase, **values)  # type: ignore[arg-type]


def job(
    batch_name: str,
    outcome: JobOutcome = JobOutcome.RUNNING,
    uid: str | None = None,
    attempt: int = 0,
    **fields: object,
) -> JobView:
    return JobView(
        name=names.commit_job_name(batch_name, attempt),
        batch=batch_name,
        owner_uid=uid or f"uid-{batch_name}",
        outcome=outcome,
        **fields,  # type: ignore[arg-type]
    )


def store(ready: bool = True, **fields: object) -> StoreView:
    return StoreView(name="s", ready=ready, **fields)  # type: ignore[arg-type]


def plan(
    batches: list[BatchView],
    jobs: list[JobView] | None = None,
    admissions: dict[str, Admission] | None = None,
    store_seen: StoreView | None = None,
) -> list[Action]:
    """The plan, with every admission candidate found fine unless ``admissions`` says otherwise."""
    checked = {b.uid: OK for b in admission_candidates(batches)} | (admissions or {})
    return plan_store(Observed(store_seen or store(), tuple(batches), tuple(jobs or []), checked))


def of(kind: type, actions: list[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def started(actions: list[Action]) -> str | None:
    starts = of(Start, actions)
    assert len(starts) <= 1
    return starts[0].batch.name if starts else None  # type: ignore[attr-defined]


def positions(actions: list[Action]) -> dict[str, int]:
    return {a.batch.name: a.position for a in of(SetPosition, actions)}  # type: ignore[attr-defined]


# Queueing ---------------------------------------------------------------------------------------
def test_new_batches_are_admitted_the_oldest_starts_and_the_rest_get_positions() -> None:
    actions = plan([batch("late", "3"), batch("early", "1"), batch("mid", "2", QUEUED)])
    assert [a.batch.name for a in of(Queue, actions)] == ["early", "late"]  # type: ignore[attr-defined]
    assert all(a.reason == Reason.SUBMITTED for a in of(Queue, actions))  # type: ignore[attr-defined]
    assert started(actions) == "early"
    assert positions(actions) == {"mid": 1, "late": 2}


def test_same_creation_time_orders_by_name() -> None:
    assert started(plan([batch("b", "t"), batch("a", "t")])) == "a"


def test_only_changed_positions_are_patched() -> None:
    batches = [batch("a", "1", RUNNING), batch("b", "2", QUEUED, queue_position=1)]
    batches.append(batch("c", "3", QUEUED, queue_position=1))
    assert positions(plan(batches, [job("a")])) == {"c": 2}


def test_nothing_starts_while_any_writer_of_the_store_runs() -> None:
    actions = plan([batch("a", "1", RUNNING), batch("b", "2", QUEUED)], [job("a")])
    assert started(actions) is None and positions(actions) == {"b": 1}


def test_a_store_that_is_not_ready_or_missing_starts_nothing_and_batches_wait_for_it() -> None:
    waiting = Admission(waiting="IcechunkStore s is not Ready")
    actions = plan([batch("a")], admissions={"uid-a": waiting}, store_seen=store(ready=False))
    assert started(actions) is None
    assert [(a.reason, a.message) for a in of(Queue, actions)] == [
        (Reason.WAITING_FOR_STORE, waiting.waiting)
    ]  # type: ignore[attr-defined]
    missing = plan_store(Observed(None, (batch("a"),), (), {"uid-a": Admission(waiting="no store")}))
    assert started(missing) is None and of(Queue, missing)


def test_a_batch_that_waited_for_its_store_is_admitted_once_it_is_ready() -> None:
    actions = plan([batch("a", phase=QUEUED, waiting_for_store=True)])
    assert [a.reason for a in of(Queue, actions)] == [Reason.SUBMITTED]  # type: ignore[attr-defined]
    assert started(actions) == "a"


def test_an_invalid_batch_is_refused_and_never_started() -> None:
    actions = plan([batch("a"), batch("b", "2")], admissions={"uid-a": Admission(invalid="spec.source: no")})
    assert [(a.batch.name, a.message) for a in of(Refuse, actions)] == [("a", "spec.source: no")]  # type: ignore[attr-defined]
    assert started(actions) == "b"


def test_the_head_of_the_queue_is_checked_again_before_it_starts() -> None:
    head = batch("a", "1", QUEUED)
    assert admission_candidates([head, batch("b", "2", QUEUED)]) == [head]
    actions = plan([head], admissions={"uid-a": Admission(invalid="outside the containers now")})
    assert of(Refuse, actions) and started(actions) is None


def test_a_queued_batch_without_a_fresh_check_does_not_start() -> None:
    actions = plan_store(Observed(store(), (batch("a", phase=QUEUED),), (), {}))
    assert started(actions) is None


# Jobs ending, adoption, lost Jobs, deadlines --------------------------------------------------
def test_ended_jobs_finish_their_batches_and_free_the_store() -> None:
    batches = [batch("a", "1", RUNNING, files_done=3), batch("b", "2", RUNNING), batch("c", "3")]
    failed = job("b", JobOutcome.FAILED, reason="PodFailurePolicy", exit_code=1)
    actions = plan(batches, [job("a", JobOutcome.COMPLETE), failed])
    finished = {a.batch.name: (a.phase, a.reason) for a in of(Finish, actions)}  # type: ignore[attr-defined]
    assert finished == {
        "a": (SUCCEEDED, Reason.COMPLETED),
        "b": (FAILED, Reason.BEYOND_TOLERANCE),
    }
    assert started(actions) == "c"


def test_each_way_a_job_fails_has_its_reason_and_says_how_to_retry() -> None:
    cases = {
        Reason.REFUSED: job("a", JobOutcome.FAILED, reason="PodFailurePolicy", exit_code=2),
        Reason.CRASHED: job("a", JobOutcome.FAILED, reason="BackoffLimitExceeded", failed_pods=3),
        Reason.DEADLINE_EXCEEDED: job("a", JobOutcome.FAILED, reason="DeadlineExceeded"),
        Reason.JOB_FAILED: job("a", JobOutcome.FAILED, reason="Evicted", message="node gone"),
    }
    for reason, failed in cases.items():
        (finish,) = of(Finish, plan([batch("a", phase=RUNNING)], [failed]))
        assert finish.reason == reason, finish  # type: ignore[attr-defined]
        assert RETRY_ANNOTATION in finish.message  # type: ignore[attr-defined]
    (crashed,) = of(Finish, plan([batch("a", phase=RUNNING)], [cases[Reason.CRASHED]]))
    assert "crashed 3 times" in crashed.message and "podRetries" in crashed.message  # type: ignore[attr-defined]


def test_a_running_job_of_a_batch_not_marked_running_is_adopted_not_restarted() -> None:
    for phase in (None, QUEUED):
        actions = plan([batch("a", "1", phase), batch("b", "2")], [job("a")])
        assert [a.batch.name for a in of(Adopt, actions)] == ["a"]  # type: ignore[attr-defined]
        assert started(actions) is None


def test_a_job_that_ended_while_the_operator_was_down_finishes_its_batch() -> None:
    actions = plan([batch("a", phase=QUEUED)], [job("a", JobOutcome.COMPLETE)])
    assert [a.phase for a in of(Finish, actions)] == [SUCCEEDED]  # type: ignore[attr-defined]


def test_a_running_batch_without_its_job_is_lost() -> None:
    assert [a.batch.name for a in of(Lost, plan([batch("a", phase=RUNNING)]))] == ["a"]  # type: ignore[attr-defined]


# Jobs of others: deleted namesakes, earlier attempts, maintenance, reconcile --------------------
def test_a_job_left_by_a_deleted_batch_of_the_same_name_is_never_adopted_or_finished() -> None:
    new = batch("a", "5", uid="new")
    running = plan([new], [job("a", uid="old")])
    assert not of(Adopt, running) and not of(Finish, running)
    assert started(running) is None  # it still holds the store until it ends
    ended = plan([new], [job("a", JobOutcome.FAILED, uid="old")])
    assert not of(Finish, ended)
    assert [a.job for a in of(DeleteJob, ended)] == [names.commit_job_name("a")]  # type: ignore[attr-defined]
    assert started(ended) == "a"


def test_a_recreated_running_batch_is_lost_not_given_its_namesakes_job() -> None:
    actions = plan([batch("a", phase=RUNNING, uid="new")], [job("a", JobOutcome.RUNNING, uid="old")])
    assert of(Lost, actions) and not of(Adopt, actions)


def test_due_maintenance_goes_before_waiting_batches_and_waits_for_a_running_commit() -> None:
    due = store(maintenance_due="r123")
    actions = plan([batch("a", "1"), batch("b", "2")], store_seen=due)
    assert [a.run for a in of(StartMaintenance, actions)] == ["r123"]  # type: ignore[attr-defined]
    assert started(actions) is None and positions(actions) == {"a": 1, "b": 2}
    busy = plan([batch("a", "1", RUNNING)], [job("a")], store_seen=due)
    assert not of(StartMaintenance, busy)
    assert not of(StartMaintenance, plan([], store_seen=store(ready=False, maintenance_due="r1")))


def test_a_maintenance_job_holds_the_store_and_a_reconcile_job_does_not() -> None:
    maintenance = JobView("s-maint-r1", "", None, JobOutcome.RUNNING, component="maintenance")
    assert started(plan([batch("a")], [maintenance])) is None
    reader = JobView("check-g1", "", None, JobOutcome.RUNNING, component="reconcile")
    assert started(plan([batch("a")], [reader])) == "a"


def test_a_failed_maintenance_job_is_reported_while_its_run_is_current() -> None:
    failed = JobView(
        "s-maint-r1", "", None, JobOutcome.FAILED, message="BackoffLimitExceeded", component="maintenance"
    )
    current = plan([], [failed], store_seen=store(maintenance_job="s-maint-r1"))
    assert of(MaintenanceFailed, current) == [MaintenanceFailed("s-maint-r1", "BackoffLimitExceeded")]
    assert not of(MaintenanceFailed, plan([], [failed], store_seen=store(maintenance_job="s-maint-r2")))
    assert not of(MaintenanceFailed, plan([], [failed], store_seen=store()))


# Retrying a Failed batch -------------------------------------------------------------------------
def test_a_failed_batch_stays_failed_until_a_retry_is_requested() -> None:
    failed = batch("a", phase=FAILED, retry_request="1", last_retry="1")
    assert admission_candidates([failed]) == []
    assert plan([failed]) == []


def test_a_retry_request_requeues_a_failed_batch_which_starts_on_the_next_pass() -> None:
    failed = batch("a", phase=FAILED, retry_request="2", last_retry="1", attempt=1)
    actions = plan([failed])
    assert of(Requeue, actions) == [Requeue(failed, "retry requested")]
    assert started(actions) is None
    requeued = batch("a", phase=QUEUED, attempt=2)
    actions = plan([requeued])
    assert started(actions) == "a" and requeued.job_name == names.commit_job_name("a", 2)


def test_the_failed_attempts_job_is_not_the_retried_batchs_job() -> None:
    retried = batch("a", phase=RUNNING, attempt=1)
    actions = plan(
        [retried], [job("a", JobOutcome.FAILED, attempt=0), job("a", JobOutcome.RUNNING, attempt=1)]
    )
    assert actions == []  # running, with the Job of its attempt; the failed one is history
    lost = plan([retried], [job("a", JobOutcome.FAILED, attempt=0)])
    assert of(Lost, lost) and not of(Finish, lost)


def test_a_changed_spec_requeues_a_failed_batch_and_an_invalid_one_is_refused_again() -> None:
    changed = batch("a", phase=FAILED, generation=2, observed_generation=1)
    assert of(Requeue, plan([changed])) == [Requeue(changed, "spec changed")]
    retried = batch("a", phase=FAILED, retry_request="x")
    actions = plan([retried], admissions={"uid-a": Admission(invalid="spec.source.index: outside")})
    assert [a.message for a in of(Refuse, actions)] == ["spec.source.index: outside"]  # type: ignore[attr-defined]
    assert not of(Requeue, actions)


def test_a_succeeded_batch_is_never_rerun() -> None:
    assert plan([batch("a", phase=SUCCEEDED, retry_request="x", generation=2)]) == []


def test_the_same_observation_gives_the_same_plan() -> None:
    batches = [batch("a", "1", RUNNING), batch("b", "2"), batch("c", "3", FAILED, retry_request="r")]
    jobs = [job("a", JobOutcome.COMPLETE)]
    assert plan(batches, jobs) == plan(batches, jobs)


# Views: what the plan reads from API objects -----------------------------------------------------
def test_a_job_failed_by_its_pod_failure_policy_carries_the_exit_code() -> None:
    failed = job_view(
        {
            "metadata": {
                "name": "a-commit",
                "labels": {names.LABEL_BATCH: "a", names.LABEL_COMPONENT: "commit"},
                "ownerReferences": [{"kind": "IngestBatch", "uid": "u"}],
            },
            "status": {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Container commit for pod ns/a-commit-x failed with exit code 1 "
                        "matching FailJob rule at index 0",
                    }
                ],
            },
        }
    )
    assert (failed.outcome, failed.exit_code, failed.owner_uid, failed.batch) == (
        JobOutcome.FAILED,
        1,
        "u",
        "a",
    )


def test_a_batchs_retry_request_and_attempt_are_read_from_annotation_and_status() -> None:
    view = batch_view(
        {
            "metadata": {
                "name": "a",
                "uid": "u",
                "generation": 3,
                "annotations": {RETRY_ANNOTATION: "17"},
            },
            "status": {"phase": "Failed", "attempt": 2, "lastRetryRequest": "16", "observedGeneration": 3},
        }
    )
    assert view.phase == FAILED and view.retry_pending and not view.spec_changed
    assert view.job_name == names.commit_job_name("a", 2)
    assert batch_view({"metadata": {"name": "x"}, "status": {"phase": "Bogus"}}).phase is None


def test_when_the_head_is_refused_no_younger_batch_overtakes_the_older_ones() -> None:
    head, older, younger = batch("a", "1"), batch("b", "2", QUEUED), batch("c", "3")
    checked = {b.uid for b in admission_candidates([head, older, younger])}
    assert "uid-b" not in checked  # b was admitted before; it is checked once it is the head
    invalid = Admission(invalid="spec.source: no")
    admissions = {"uid-a": invalid, "uid-c": OK}
    actions = plan_store(Observed(store(), (head, older, younger), (), admissions))
    assert of(Refuse, actions) and started(actions) is None  # b goes first, on the next pass
    assert admission_candidates([older, younger]) == [younger, older]


def test_a_store_being_deleted_starts_nothing() -> None:
    body = {
        "metadata": {"name": "s", "deletionTimestamp": "2026-11-29T00:00:00Z"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    deleting = store_view(body, maintenance_due="r1")
    assert not deleting.ready
    actions = plan([batch("a")], store_seen=deleting)
    assert started(actions) is None and not of(StartMaintenance, actions)
