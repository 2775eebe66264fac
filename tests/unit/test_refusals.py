"""Which engine errors are refusals (exit 2, not retried) and which are crashes (retried)."""

from __future__ import annotations

import pytest

from icechunk_operator.engine.errors import Refused
from icechunk_operator.engine.lifecycle import TagTakenError
from icechunk_operator.engine.sources import IndexFileError
from icechunk_operator.engine.staging import StagingRefusedError, StagingValidationError, TargetMovedError
from icechunk_operator.engine.storage import DeleteFailedError
from icechunk_operator.engine.urls import SourceOutsideContainersError


@pytest.mark.parametrize(
    "error", [SourceOutsideContainersError, IndexFileError, TagTakenError, StagingValidationError]
)
def test_refused_running_again_changes_nothing(error: type[Exception]) -> None:
    assert issubclass(error, Refused) and issubclass(error, ValueError)


@pytest.mark.parametrize("error", [TargetMovedError, DeleteFailedError])
def test_not_refused_running_again_can_succeed(error: type[Exception]) -> None:
    assert not issubclass(error, Refused)


def test_both_staging_outcomes_are_still_caught_as_one() -> None:
    assert issubclass(StagingValidationError, StagingRefusedError)
    assert issubclass(TargetMovedError, StagingRefusedError)
