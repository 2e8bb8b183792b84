"""The suite relies on ``xdist_group``: a module whose fixtures start a cluster or train
a registry runs in one test process, so that they start once. pytest-xdist sends a group
to one process only where the group reaches its scheduler in the test's id (a pytest
that stores ids where xdist cannot suffix them made every group a no-op: each process
started its own clusters)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.xdist_group("probe")


def test_a_grouped_test_carries_its_group_to_the_scheduler(request: pytest.FixtureRequest
                                                           ) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("checked in the test processes of `pytest -n 2 --dist loadgroup`")
    if not request.config.getvalue("loadgroup"):
        pytest.skip("this run does not group tests (--dist is not loadgroup)")
    assert request.node.nodeid.endswith("@probe"), (
        f"{request.node.nodeid}: xdist_group does not reach pytest-xdist's scheduler with "
        "this pytest; pin pytest to a version whose node ids xdist can suffix")
