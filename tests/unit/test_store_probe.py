"""The store probe's child process: exactly three actions, and nothing deleted on any other."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icechunk_operator.api.batch import SourceSpec
from icechunk_operator.api.store import IcechunkStoreSpec
from icechunk_operator.engine.errors import Refused
from icechunk_operator.k8s.store_probe import ProbeError, ProbeRefusedError, answer, run_in_child


@pytest.fixture
def spec(tmp_path: Path) -> IcechunkStoreSpec:
    (tmp_path / "archive").mkdir()
    return IcechunkStoreSpec.model_validate(
        {
            "storage": {"url": (tmp_path / "store").as_uri()},
            "virtualChunkContainers": [{"urlPrefix": (tmp_path / "archive").as_uri() + "/"}],
        }
    )


def child(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The child exactly as the operator runs it: JSON on stdin, one JSON line back."""
    done = subprocess.run(
        [sys.executable, "-m", "icechunk_operator.k8s.store_probe"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_an_unknown_action_is_refused_and_deletes_nothing(spec: IcechunkStoreSpec, tmp_path: Path) -> None:
    """Before the fix, any action but "probe" ran the delete."""
    asyncio.run(run_in_child("probe", spec, {}))  # creates the repository
    before = files_under(tmp_path / "store")
    assert before

    code, answer = child({"action": "prob", "spec": spec.to_api(), "env": {}})

    assert code == 2 and answer["refused"] is True
    assert answer["error"] == "unknown action 'prob': expected one of ['check-index', 'delete', 'probe']"
    assert files_under(tmp_path / "store") == before
    with pytest.raises(ProbeRefusedError, match="unknown action 'prob'") as refused:
        asyncio.run(run_in_child("prob", spec, {}))
    assert isinstance(refused.value, ProbeError) and isinstance(refused.value, Refused)
    assert files_under(tmp_path / "store") == before


@pytest.mark.parametrize("action", ["Delete", "delete ", "", None, 1])
def test_only_the_exact_names_are_actions(spec: IcechunkStoreSpec, tmp_path: Path, action: object) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "kept").write_text("data")
    assert answer({"action": action, "spec": spec.to_api()}) == (
        2,
        {
            "error": f"unknown action {action!r}: expected one of ['check-index', 'delete', 'probe']",
            "refused": True,
        },
    )
    assert (tmp_path / "store" / "kept").read_text() == "data"


def test_delete_deletes(spec: IcechunkStoreSpec, tmp_path: Path) -> None:
    asyncio.run(run_in_child("probe", spec, {}))
    count = len(files_under(tmp_path / "store"))
    assert asyncio.run(run_in_child("delete", spec, {})) == {"deleted": count}
    assert not (tmp_path / "store").exists()


def test_check_index_answers_ok_or_refused(spec: IcechunkStoreSpec, tmp_path: Path) -> None:
    inside = (tmp_path / "archive" / "a.nc").as_uri()
    index = tmp_path / "archive" / "index.parquet"
    pq.write_table(pa.table({"url": [inside], "size": [1], "mtime": [1.0]}), index)
    source = SourceSpec(index=index.as_uri())
    assert asyncio.run(run_in_child("check-index", spec, {}, source=source)) == {"ok": True}

    pq.write_table(
        pa.table({"url": [inside, "s3://elsewhere/b.nc"], "size": [1, 1], "mtime": [1.0, 1.0]}), index
    )
    code, answer = child(
        {"action": "check-index", "spec": spec.to_api(), "source": source.to_api(), "env": {}}
    )
    assert code == 2 and answer["refused"] is True
    assert answer["error"].startswith("spec.source.index: 1 of the 2 URLs in ")
    assert "'s3://elsewhere/b.nc'" in answer["error"]
