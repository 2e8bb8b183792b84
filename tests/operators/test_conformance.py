"""The conformance kit over every registered operator and every declared case."""

from __future__ import annotations

import pytest

from operators.base import registered
from operators.testing.kit import CHECKS, all_cases, applicable

CASES = all_cases()
# operators with no partition behaviour to check, and why
EXEMPT = {"save_model": "an action: the runtime stores the fitted chain; tested in "
                        "tests/pipelines/test_store.py"}


def test_every_operator_has_a_case() -> None:
    covered = {c.op for c in CASES}
    missing = sorted(set(registered()) - covered - set(EXEMPT))
    assert not missing, f"operators without a conformance case: {missing}"


PAIRS = [(c, check) for c in CASES for check in applicable(c)]


@pytest.mark.parametrize(("case", "check"), PAIRS,
                         ids=[f"{c.name}-{check}" for c, check in PAIRS])
def test_conformance(case, check: str) -> None:
    if check in case.skip:
        pytest.skip(f"declared: {case.skip[check]}")
    CHECKS[check](case)
