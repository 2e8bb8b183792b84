"""Iterative fits say which pass they are on: gradient boosting the tree of n_trees,
trees the level of at most max_depth, with a fit ETA, kmeans and gaussian_mixture their
Lloyd / EM pass of at most max_iter, on the progress bar of each pass (every engine; on
Spark the pass's job description too). The bar's line fits the terminal's width."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import sluice_on_terminal, write_pipeline

from operators.base import Estimator, FitClock, FitProgress, drive, tree_reduce
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import RandomForest
from operators.models.kmeans import KMeans
from operators.testing.kit import NUMPY, split
from pipelines.engines.progress import fit_label, pass_line, shortened
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


LABEL = "churn_boosted_trees_by_tenure: pass 38, tree 6 of 60, fit ETA 1m20s"
KEPT = [(30, "churn"), (30, "nure: "), (30, "fit ETA 1m20s"), (44, "tree 6 of 60"),
        (52, "pass 38")]
"""What of ``LABEL`` a line keeps from which terminal width on."""


def test_the_line_fits_the_width_keeping_the_step_id_and_the_counters() -> None:
    """What goes first as the terminal narrows: the bar, the rows, the times, the word
    'partitions', then the middle of the label; never wider than the terminal."""
    times = "0:00:03 ETA 0:00:05"
    full = "2/3 partitions, 5,000 rows 0:00:03 ETA 0:00:05"
    assert pass_line(LABEL, "2/3", 5000, times, 200) == (LABEL, 40, full)
    assert pass_line(LABEL, "2/3", 5000, times, 130) == (LABEL, 15, full)
    assert pass_line(LABEL, "2/3", 5000, times, 116) == (LABEL, 0, full)
    assert pass_line(LABEL, "2/3", 5000, times, 104) == (
        LABEL, 0, "2/3 partitions 0:00:03 ETA 0:00:05")
    assert pass_line(LABEL, "2/3", 5000, times, 100) == (LABEL, 0, "2/3 partitions")
    assert pass_line(LABEL, "2/3", 5000, times, 72) == (LABEL, 0, "2/3")
    assert pass_line(LABEL, "2/3", 5000, times, 60) == (
        "churn_boo…y_tenure: pass 38, tree 6 of 60, fit ETA 1m20s", 0, "2/3")
    assert shortened(LABEL, 40) == "churn…nure: …tree 6 of 60, fit ETA 1m20s"
    assert shortened(LABEL, 30) == "churn_b…tenure: …fit ETA 1m20s"
    assert shortened("model: pass 38, tree 6 of 60, fit ETA 1m20s", 36) == \
        "model: …tree 6 of 60, fit ETA 1m20s"
    for width in range(140):
        label, bar, after = pass_line(LABEL, "2/3", 5000, times, width)
        line = " ".join(p for p in (label, "━" * bar, after) if p)
        assert len(line) <= width, (width, line)
        assert (width < 4 or line.endswith("2/3") or "2/3 partitions" in line), line
        # the step id's two ends and the label's counters, the last ones longest
        kept = [said for least, said in KEPT if width >= least]
        assert all(said in label for said in kept), (width, label)


CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_on_a_narrow_terminal_each_bar_is_one_line_with_the_step_and_its_counters(
        churn: Path, workdir: Path) -> None:
    """On a terminal 60 columns wide (its window's size: no COLUMNS) every bar drawn is
    one line of at most 60, the step id cut in its middle and the tree counted; the
    bars go to stderr, so the summary sent to a file (`> FILE`) has none of them."""
    step = "churn_boosted_trees_by_tenure"
    path = write_pipeline(workdir, BOOSTED.replace("id: boosted", f"id: {step}"))
    summary = workdir / "summary.txt"
    code, text = sluice_on_terminal(["run", str(path)], workdir, columns=60, stdout=summary)
    assert code == 0, text
    drawn = [line for line in re.split(r"[\r\n]", CONTROL.sub("", text)) if line.strip()]
    bars = [line for line in drawn if re.search(r": (…|pass \d)", line)]
    assert bars and all(len(line) <= 60 for line in bars), bars
    assert all(re.match(r"churn_[^:]*nure: ", line) for line in bars), bars  # both ends
    assert any("…" in line.partition(":")[0] for line in bars), bars
    assert set(re.findall(r"tree (\d) of 3", "\n".join(bars))) == {"1", "2", "3"}, bars
    written = summary.read_text()
    assert not re.search(r"pass \d|partitions|\x1b|\r", written), written
    assert "succeeded" in written, written


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """What the progress bars draw on stderr, as on a terminal 400 columns wide: a
    function that reads it."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: draw as on a terminal
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "400")
    return lambda: capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("engine", ["local", "dask"], indirect=True)
def test_each_pass_of_an_iterative_fit_says_where_it_is(
        engine: Any, churn: Path, workdir: Path, screen: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "progress", True)
    record = run(write_pipeline(workdir, PASSES), engine_instance=engine)
    drawn = screen()
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


@pytest.mark.parametrize("engine", ["local", pytest.param("spark", marks=pytest.mark.slow)],
                         indirect=True)
def test_a_resident_fit_shows_its_passes_too(engine: Any, churn: Path, workdir: Path,
                                            screen: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar a pass, as one job a pass has, though the passes run in one job of tasks
    that keep their partitions (Spark: one barrier job, whose own bar would say
    nothing of the passes; Spark's stage bar is off, sluice's draws)."""
    profile(engine, monkeypatch, resident_fits="always")
    monkeypatch.setattr(engine, "progress", True)
    record = run(write_pipeline(workdir, BOOSTED), engine_instance=engine)
    assert record["steps"]["boosted"]["fit_mode"].startswith("resident")
    assert {tree for tree, _ in trees_said(screen())} == {"1", "2", "3"}
    assert record["steps"]["boosted"]["driver_seconds"] > 0


@pytest.mark.slow
def test_on_spark_each_pass_job_is_described_by_its_label(
        spark: Any, churn: Path, workdir: Path, screen: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit of one job a pass on Spark draws each job's bar with its label, and names
    each job so (the Spark UI's description, read here from its REST API)."""
    profile(spark, monkeypatch, resident_fits="never")
    monkeypatch.setattr(spark, "progress", True)
    record = run(write_pipeline(workdir, BOOSTED), engine_instance=spark)
    assert record["steps"]["boosted"]["fit_mode"] == "one job a pass"
    assert {tree for tree, _ in trees_said(screen())} == {"1", "2", "3"}
    sc = spark.spark.sparkContext
    assert sc.uiWebUrl.startswith("http://127.0.0.1:")  # a local master's: this machine's
    with urllib.request.urlopen(f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
                                "/jobs", timeout=30) as answer:
        jobs = json.load(answer)
    described = "\n".join(job.get("description", "") for job in jobs)
    assert {tree for tree, _ in trees_said(described)} == {"1", "2", "3"}, described
