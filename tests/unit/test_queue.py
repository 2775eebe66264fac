"""The per-store queue: one unfinished commit Job per store, first come first served."""

from __future__ import annotations

from icechunk_operator.k8s.queue import BatchView, JobOutcome, JobView, plan_queue


def batch(name: str, created: str, phase: str | None = None, uid: str | None = None) -> BatchView:
    return BatchView(name=name, uid=uid or f"uid-{name}", created=created, phase=phase)


def job(batch_name: str, outcome: JobOutcome = JobOutcome.RUNNING, uid: str | None = None) -> JobView:
    return JobView(
        name=f"{batch_name}-commit", batch=batch_name, owner_uid=uid or f"uid-{batch_name}", outcome=outcome
    )


def test_oldest_waiting_batch_starts_and_the_rest_get_positions() -> None:
    batches = [
        batch("late", "2026-01-01T00:00:03Z"),
        batch("early", "2026-01-01T00:00:01Z"),
        batch("mid", "2026-01-01T00:00:02Z", "Queued"),
    ]
    decision = plan_queue(batches, [], store_ready=True)
    assert decision.start is not None and decision.start.name == "early"
    assert decision.positions == {"mid": 1, "late": 2}


def test_same_creation_time_orders_by_name() -> None:
    decision = plan_queue([batch("b", "t"), batch("a", "t")], [], store_ready=True)
    assert decision.start is not None and decision.start.name == "a"


def test_nothing_starts_while_any_job_of_the_store_runs() -> None:
    decision = plan_queue([batch("a", "1", "Running"), batch("b", "2")], [job("a")], store_ready=True)
    assert decision.start is None and decision.blocked_by == "a"
    assert decision.positions == {"b": 1}


def test_a_job_left_by_a_deleted_batch_still_holds_the_store() -> None:
    decision = plan_queue([batch("b", "2")], [job("gone")], store_ready=True)
    assert decision.start is None and decision.blocked_by == "gone"


def test_ended_jobs_finish_their_batches_and_free_the_store() -> None:
    batches = [batch("a", "1", "Running"), batch("b", "2", "Running"), batch("c", "3")]
    jobs = [job("a", JobOutcome.COMPLETE), job("b", JobOutcome.FAILED)]
    decision = plan_queue(batches, jobs, store_ready=True)
    assert [(b.name, j.outcome) for b, j in decision.finish] == [("a", "Complete"), ("b", "Failed")]
    assert decision.start is not None and decision.start.name == "c"


def test_a_running_job_of_a_queued_batch_is_adopted_not_restarted() -> None:
    decision = plan_queue([batch("a", "1", "Queued"), batch("b", "2")], [job("a")], store_ready=True)
    assert [b.name for b, _ in decision.adopt] == ["a"]
    assert decision.start is None


def test_running_batch_without_job_is_reported_lost() -> None:
    decision = plan_queue([batch("a", "1", "Running")], [], store_ready=True)
    assert [b.name for b in decision.lost] == ["a"]


def test_a_job_of_an_earlier_batch_with_the_same_name_is_not_this_batchs() -> None:
    decision = plan_queue(
        [batch("a", "5", uid="new")], [job("a", JobOutcome.COMPLETE, uid="old")], store_ready=True
    )
    assert not decision.finish
    assert decision.start is not None and decision.start.uid == "new"


def test_terminal_batches_are_ignored_and_an_unready_store_starts_nothing() -> None:
    batches = [batch("done", "1", "Succeeded"), batch("bad", "2", "Failed"), batch("next", "3")]
    decision = plan_queue(batches, [], store_ready=False)
    assert decision.start is None and decision.positions == {"next": 0}


def test_only_changed_positions_are_reported() -> None:
    batches = [
        BatchView("a", "uid-a", "1", "Running"),
        BatchView("b", "uid-b", "2", "Queued", queue_position=1),
        BatchView("c", "uid-c", "3", "Queued", queue_position=1),
    ]
    decision = plan_queue(batches, [job("a")], store_ready=True)
    assert decision.positions == {"c": 2}


def maintenance_job(outcome: JobOutcome = JobOutcome.RUNNING) -> JobView:
    return JobView(name="s-maint-r1", batch="", owner_uid=None, outcome=outcome, component="maintenance")


def test_due_maintenance_goes_before_waiting_batches() -> None:
    decision = plan_queue([batch("a", "1"), batch("b", "2")], [], store_ready=True, maintenance_due=True)
    assert decision.maintain and decision.start is None
    assert decision.positions == {"a": 1, "b": 2}


def test_due_maintenance_waits_for_the_running_commit() -> None:
    running = plan_queue([batch("a", "1", "Running")], [job("a")], store_ready=True, maintenance_due=True)
    assert not running.maintain and running.blocked_by == "a"


def test_a_running_maintenance_job_holds_the_store_and_reconcile_jobs_do_not() -> None:
    held = plan_queue([batch("a", "1")], [maintenance_job()], store_ready=True)
    assert held.start is None and held.blocked_by == "s-maint-r1"
    reader = JobView(
        name="check-g1", batch="", owner_uid=None, outcome=JobOutcome.RUNNING, component="reconcile"
    )
    free = plan_queue([batch("a", "1")], [reader], store_ready=True)
    assert free.start is not None and free.start.name == "a"
    done = plan_queue([batch("a", "1")], [maintenance_job(JobOutcome.COMPLETE)], store_ready=True)
    assert done.start is not None and done.finish == []


def test_no_maintenance_on_a_store_that_is_not_ready() -> None:
    decision = plan_queue([], [], store_ready=False, maintenance_due=True)
    assert not decision.maintain
