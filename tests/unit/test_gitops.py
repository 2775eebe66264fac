"""The Argo CD health checks (Lua, run here by a real Lua runtime) on statuses the operator writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import LuaRuntime

from icechunk_operator.k8s.conditions import batch_phase_conditions, set_condition

GITOPS = Path(__file__).resolve().parents[2] / "docs" / "gitops"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute((GITOPS / script).read_text())
    return str(result["status"]), str(result["message"])


def batch(phase: str | None, progress: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status = {"phase": phase, "conditions": batch_phase_conditions([], phase, "Reason", "why", 1)}
    if progress:
        status["progress"] = progress
    return {"metadata": {"name": "b", "generation": 1}, "status": status}


def test_ingestbatch_health_follows_its_phase() -> None:
    assert health("health-ingestbatch.lua", {"metadata": {"generation": 1}})[0] == "Progressing"
    assert health("health-ingestbatch.lua", batch("Queued"))[0] == "Progressing"
    status, message = health("health-ingestbatch.lua", batch("Running", "120/442"))
    assert status == "Progressing" and "120/442" in message
    assert health("health-ingestbatch.lua", batch("Succeeded", "442/442"))[0] == "Healthy"
    status, message = health("health-ingestbatch.lua", batch("Failed"))
    assert status == "Degraded" and "why" in message


def test_icechunkstore_health_reads_ready_for_the_current_generation() -> None:
    def store(ready: bool | None, observed: int, generation: int = 2) -> dict[str, Any]:
        conditions = [] if ready is None else set_condition([], "Ready", ready, "R", "m", observed)
        return {"metadata": {"generation": generation}, "status": {"conditions": conditions}}

    assert health("health-icechunkstore.lua", store(None, 2))[0] == "Progressing"
    assert health("health-icechunkstore.lua", store(True, 2))[0] == "Healthy"
    assert health("health-icechunkstore.lua", store(False, 2))[0] == "Degraded"
    assert health("health-icechunkstore.lua", store(True, 1))[0] == "Progressing"  # spec changed since


def test_argocd_config_embeds_the_checks_verbatim() -> None:
    import yaml

    config = yaml.safe_load((GITOPS / "argocd-cm.yaml").read_text())["data"]
    assert (
        config["resource.customizations.health.icechunkoperator.io_IngestBatch"]
        == (GITOPS / "health-ingestbatch.lua").read_text()
    )
    assert (
        config["resource.customizations.health.icechunkoperator.io_IcechunkStore"]
        == (GITOPS / "health-icechunkstore.lua").read_text()
    )
