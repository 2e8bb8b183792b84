"""Iterative fits say which pass they are on: gradient boosting the tree of n_trees and
a fit ETA, kmeans and gaussian_mixture their Lloyd / EM pass of at most max_iter, on the
progress bar of each pass (local and Dask; Spark: the pass's job description)."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import rich
from conftest import write_pipeline
from rich.console import Console

from operators.base import FitClock, FitProgress
from operators.models.kmeans import KMeans
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
    clock = FitClock(estimator, passes=38, progress=FitProgress("tree 6 of 60", 0.1),
                     started=time.perf_counter() - 9.0)
    # 9 s for a tenth of the fit: 81 s to go
    assert fit_label("model", clock) == "model: pass 38, tree 6 of 60, fit ETA 1m21s"
    clock.progress = FitProgress("Lloyd pass 12 of at most 300")
    assert fit_label("model", clock) == "model: pass 38, Lloyd pass 12 of at most 300"
    clock.progress = None
    assert fit_label("model", clock) == "model: pass 38"


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
    levels = set(re.findall(r"forest: pass \d+, level (\d) of at most 2", drawn))
    assert levels == {"1", "2"}, drawn
    epochs = set(re.findall(r"net: pass \d+, epoch (\d) of at most 2", drawn))
    assert epochs == {"1", "2"}, drawn


def trees_said(texts: str) -> list[tuple[str, str]]:
    """The trees (and ETAs) the boosting fit's pass labels name."""
    return re.findall(r"boosted: pass \d+, tree (\d) of 3(, fit ETA \d)?", texts)


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
