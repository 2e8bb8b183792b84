"""The benchmarks' sluice side of a model (bench/tree_cases.py), at a tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ranking_cases import RANKING, rankings
from bench.tree_cases import _run_sluice


def test_steps_before_the_model(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ranking case's pipeline: read, repartition by query, train, save; the held-out
    NDCG printed with its cut-off and queries."""
    rankings(workdir / "data", 3000, 2)
    small = {**RANKING, "n_trees": 3, "max_depth": 2}
    _run_sluice(workdir / "data", workdir, "ranker", "gradient_boosted_trees", small,
                before=[{"op": "repartition", "by": "[query]"}])
    printed = capsys.readouterr().out
    assert "  ranker sluice: held-out NDCG@10 0." in printed, printed
    assert "queries), 8 passes" in printed, printed
    steps = (workdir / "ranker.yaml").read_text()
    assert steps.index("op: read_parquet") < steps.index("op: repartition") < steps.index(
        "op: gradient_boosted_trees") < steps.index("op: save_model")
