"""Hostile specs: every document is refused naming the field, or accepted and safe to run.

A document with random or adversarial fields either validates, or is refused with a
``ValidationError``/``SpecError`` whose problems are located at a field the example touched (or
one that contains it); never any other exception. A document that validates
then goes through what the engine and the operator do with it next (the glob, the grouping
template on hostile file names, the URL checks, the Icechunk configuration, the duration and
cron of maintenance, the Jobs and DaskCluster the operator would create, the wire round trip),
and none of those may crash: a refusal there is a ``Refused`` naming the field.

Property 2, that the CRD schemas and the models agree on the real API server, is
tests/e2e/test_spec_agreement.py (beside the control plane's fixtures); both run the explicit
examples of ``spec_checks.FOUND``, which found the defects fixed with them.

Hypothesis runs derandomized (the same examples on every run), so CI is reproducible.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.faults.spec_checks import CATEGORY, EXPLORE, FOUND, Counter, model_verdict, survives_the_engine
from tests.faults.spec_strategies import Mutated, hostile_documents
from tests.faults.tally import FaultTally

MODEL_EXAMPLES = EXPLORE or 1000

MODEL_COUNTER = Counter()


@settings(
    max_examples=MODEL_EXAMPLES,
    derandomize=not EXPLORE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated=hostile_documents())
def test_models_refuse_naming_the_field_or_accept_what_runs(mutated: Mutated) -> None:
    resource = model_verdict(mutated, MODEL_COUNTER)
    if resource is not None:
        survives_the_engine(resource)


for _found in FOUND:
    test_models_refuse_naming_the_field_or_accept_what_runs = example(mutated=_found)(
        test_models_refuse_naming_the_field_or_accept_what_runs
    )


def test_model_examples_are_tallied(fault_tally: FaultTally) -> None:
    """Runs after the property (file order): the examples it tried, into the fault matrix."""
    if MODEL_COUNTER.tried == 0:
        pytest.skip("the property did not run in this session")
    assert MODEL_COUNTER.refused > MODEL_COUNTER.tried // 10, "the strategy must reach refusals"
    assert MODEL_COUNTER.refused < MODEL_COUNTER.tried, "and acceptances"
    fault_tally.add(CATEGORY, "hostile field values (models)", injected=MODEL_COUNTER.tried)
