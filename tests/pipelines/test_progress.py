"""Iterative fits say which pass they are on: gradient boosting the tree of n_trees,
trees the level of at most max_depth, with a fit ETA, kmeans and gaussian_mixture their
Lloyd / EM pass of at most max_iter, on the progress bar of each pass (local and Dask;
Spark: the pass's job description)."""

from __future__ import annotations

import io
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import rich
from conftest import write_pipeline
from rich.console import Console

from operators.base import Estimator, FitClock, FitProgress, drive, tree_reduce
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import RandomForest
from operators.models.kmeans import KMeans
from operators.testing.kit import NUMPY, split
from pipelines.engines.progress import fit_label
from pipelines.runner import run

BOOSTED = """
    pipeline: passes
    steps:
      - op: read_parquet
        path: data/churn
      - id: boosted
        op: gradient_boosted_trees
        label: churned
        features: [tenure, monthly_charges]
        n_trees: 3
        max_depth: 1
"""
PASSES = BOOSTED + """      - id: clusters
        input: read_parquet
        op: kmeans
        k: 3
        features: [tenure, monthly_charges]
        max_iter: 4
      - id: mixture
        input: read_parquet
        op: gaussian_mixture
        k: 2
        features: [tenure, monthly_charges]
        max_iter: 3
      - id: logistic
        input: read_parquet
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
        solver: lbfgs
        max_iter: 3
      - id: forest
        input: read_parquet
        op: random_forest
        label: churned
        features: [tenure, monthly_charges]
        n_trees: 2
        max_depth: 2
      - id: net
        input: read_parquet
        op: mlp
        label: churned
        features: [tenure, monthly_charges]
        hidden: [2]
        solver: adam
        max_iter: 2
"""


def test_the_label_says_the_pass_where_the_fit_is_and_its_eta() -> None:
    estimator = KMeans(KMeans.Params(k=2))
    seconds = iter([100.0, 109.0])
    clock = FitClock(estimator, now=lambda: next(seconds))
    clock.at_pass(37, FitProgress("tree 1 of 60", 0.0))  # the ETA's pace starts here
    assert fit_label("model", clock) == "model: pass 37, tree 1 of 60"
    clock.at_pass(38, FitProgress("tree 6 of 60", 0.1))
    # 9 s for a tenth of the fit: 81 s to go
    assert fit_label("model", clock) == "model: pass 38, tree 6 of 60, fit ETA 1m21s"
    clock.at_pass(39, FitProgress("Lloyd pass 12 of at most 300"))
    assert fit_label("model", clock) == "model: pass 39, Lloyd pass 12 of at most 300"
    clock.at_pass(40, None)
    assert fit_label("model", clock) == "model: pass 40"


def fit_labels(estimator: Estimator) -> list[str]:
    """The label of each pass of ``estimator``'s fit on 400 noisy rows in 2 partitions,
    by a clock at which every pass takes 10 s."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1],
                      "y": (x[:, 0] + rng.normal(size=400) > 0).astype(np.int64)})
    clock = FitClock(estimator)
    clock.now = lambda: 10.0 * clock.passes
    labels = []

    def aggregate(partial: Any) -> Any:
        labels.append(fit_label("model", clock))
        return tree_reduce([partial(p, NUMPY) for p in split(table, 2)], estimator.combine)

    drive(estimator, table.schema, aggregate, clock)
    return labels


def test_tree_fits_tell_the_time_left_from_the_levels_and_trees_grown() -> None:
    """The fit ETA runs from the first level's pass (the summary pass before it goes at
    another pace), as if every tree grows to max_depth at the pace of the levels so
    far; a level in several passes (max_histogram_mb) counts its node groups done."""
    assert fit_labels(RandomForest(label="y", n_trees=2, max_depth=3)) == [
        "model: pass 1",
        "model: pass 2, level 1 of at most 3",
        "model: pass 3, level 2 of at most 3, fit ETA 20.0s",  # a third done in 10 s
        "model: pass 4, level 3 of at most 3, fit ETA 10.0s"]
    assert fit_labels(GradientBoostedTrees(label="y", n_trees=2, max_depth=2)) == [
        "model: pass 1",
        "model: pass 2, tree 1 of 2, level 1 of at most 2",
        "model: pass 3, tree 1 of 2, level 2 of at most 2, fit ETA 30.0s",
        "model: pass 4, tree 2 of 2, level 1 of at most 2, fit ETA 20.0s",
        "model: pass 5, tree 2 of 2, level 2 of at most 2, fit ETA 10.0s"]
    # a node a pass: the 2 trees' roots take 2 passes, half of level 1 done after one
    grouped = fit_labels(RandomForest(label="y", n_trees=2, max_depth=3,
                                      max_histogram_mb=0.001))
    assert grouped[1:3] == ["model: pass 2, level 1 of at most 3",
                            "model: pass 3, level 1 of at most 3, fit ETA 50.0s"]
    levels = [int(re.search(r"level (\d)", label)[1]) for label in grouped[1:]]
    assert levels == sorted(levels) and set(levels) == {1, 2, 3}
    assert all(", fit ETA " in label for label in grouped[2:])


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the progress bars draw, as on a terminal."""
    out = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=out, force_terminal=True, width=400))
    return out


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("engine", ["local", "dask"], indirect=True)
def test_each_pass_of_an_iterative_fit_says_where_it_is(
        engine: Any, churn: Path, workdir: Path, screen: io.StringIO,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "progress", True)
    record = run(write_pipeline(workdir, PASSES), engine_instance=engine)
    drawn = screen.getvalue()
    trees = trees_said(drawn)
    assert {tree for tree, _ in trees} == {"1", "2", "3"}, drawn
    assert all(bool(eta) == (tree != "1") for tree, eta in trees)  # none before a tree
    lloyd = {int(n) for n in re.findall(r"clusters: pass \d+, Lloyd pass (\d) of at most 4",
                                        drawn)}
    assert lloyd == set(range(1, record["metrics"]["clusters"]["iterations"] + 1)), drawn
    em = {int(n) for n in re.findall(r"mixture: pass \d+, EM pass (\d) of at most 3", drawn)}
    assert em == set(range(1, record["metrics"]["mixture"]["iterations"] + 1)), drawn
    lbfgs = {int(n) for n in re.findall(
        r"logistic: pass \d+, L-BFGS iteration (\d) of at most 3", drawn)}
    assert lbfgs == set(range(1, record["metrics"]["logistic"]["iterations"] + 1)), drawn
    levels = re.findall(r"forest: pass \d+, level (\d) of at most 2(, fit ETA \d)?", drawn)
    assert {level for level, _ in levels} == {"1", "2"}, drawn
    assert all(eta for level, eta in levels if level == "2"), drawn
    epochs = set(re.findall(r"net: pass \d+, epoch (\d) of at most 2", drawn))
    assert epochs == {"1", "2"}, drawn


def trees_said(texts: str) -> list[tuple[str, str]]:
    """The trees (and ETAs) the boosting fit's pass labels name."""
    return re.findall(r"boosted: pass \d+, tree (\d) of 3, level 1 of at most 1"
                      r"(, fit ETA \d)?", texts)


def profile(engine: Any, monkeypatch: pytest.MonkeyPatch, **update: Any) -> None:
    monkeypatch.setattr(engine, "profile", engine.profile.model_copy(update=update))


@pytest.mark.parametrize("engine", ["local"], indirect=True)
def test_a_resident_fit_shows_its_passes_too(engine: Any, churn: Path, workdir: Path,
                                            screen: io.StringIO,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    profile(engine, monkeypatch, resident_fits="always")
    monkeypatch.setattr(engine, "progress", True)
    record = run(write_pipeline(workdir, BOOSTED), engine_instance=engine)
    assert record["steps"]["boosted"]["fit_mode"].startswith("resident")
    assert {tree for tree, _ in trees_said(screen.getvalue())} == {"1", "2", "3"}
    assert record["steps"]["boosted"]["driver_seconds"] > 0


@pytest.mark.slow
def test_on_spark_each_pass_job_is_described_by_its_label(
        spark: Any, churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark draws its own stage bar; a fit of one job a pass names each job (the Spark
    UI's description, read here from its REST API)."""
    profile(spark, monkeypatch, resident_fits="never")
    record = run(write_pipeline(workdir, BOOSTED), engine_instance=spark)
    assert record["steps"]["boosted"]["fit_mode"] == "one job a pass"
    sc = spark.spark.sparkContext
    assert sc.uiWebUrl.startswith("http://127.0.0.1:")  # a local master's: this machine's
    with urllib.request.urlopen(f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
                                "/jobs", timeout=30) as answer:
        jobs = json.load(answer)
    described = "\n".join(job.get("description", "") for job in jobs)
    assert {tree for tree, _ in trees_said(described)} == {"1", "2", "3"}, described
