"""The operator's metrics, computed from the batch index at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from icechunk_operator.k8s.metrics import OperatorMetrics
from icechunk_operator.k8s.views import BatchView


def test_batches_by_phase_and_files_by_outcome_per_store() -> None:
    index = {
        ("science", "ismip6"): [
            BatchView("a", "u1", "1", "Succeeded", files_done=10, files_failed=2),
            BatchView("b", "u2", "2", "Running", files_done=3, files_skipped=4),
            BatchView("c", "u3", "3", None),
        ]
    }
    metrics = OperatorMetrics(lambda: index.items())
    metrics.commit_seconds.observe(0.7)
    text = generate_latest(metrics.registry).decode()
    labels = 'namespace="science",{},store="ismip6"'
    assert f"icechunk_operator_batches{{{labels.format('phase="Succeeded"')}}} 1.0" in text
    assert f"icechunk_operator_batches{{{labels.format('phase="Pending"')}}} 1.0" in text
    assert f"icechunk_operator_batch_files{{{labels.format('outcome="ingested"')}}} 13.0" in text
    assert f"icechunk_operator_batch_files{{{labels.format('outcome="skipped"')}}} 4.0" in text
    assert "icechunk_operator_commit_seconds_count 1.0" in text
