"""tune: every combination fitted on the same rows and compared on the same held-out
rows, the best kept, on every engine; and the problems of a tune: as the file plans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_pipeline

from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, plan_file, run
from pipelines.store import ModelStore

TUNED = """
    pipeline: tuned
    steps:
      - op: read_parquet
        path: data/churn
        partition_mb: 0.05
      - op: standard_scale
        columns: [tenure, monthly_charges]
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
        validation_fraction: 0.25
        seed: 3
{tune}
      - op: save_model
        name: churn
"""

GRID = """        tune:
          l2: [10.0, 0.001, 1.0]
          class_weight: [null, balanced]"""


def test_the_best_candidate_on_the_held_out_rows_is_the_model(churn: Path, workdir: Path,
                                                               engine: Engine) -> None:
    record = run(write_pipeline(workdir, TUNED.format(tune=GRID + "\n        tune_metric: "
                                                      "roc_auc")), engine_instance=engine)
    tuning = record["metrics"]["model"]["tuning"]
    candidates = tuning["candidates"]
    assert list(candidates) == [f"l2={l2}, class_weight={w}" for l2 in (10.0, 0.001, 1.0)
                                for w in (None, "balanced")]
    assert tuning["metric"] == "roc_auc"
    best = max(candidates, key=lambda k: candidates[k]["roc_auc"])
    assert tuning["best"] == best
    assert record["metrics"]["model"]["validation"]["roc_auc"] == candidates[best]["roc_auc"]
    # the saved model is the best's, and says so
    model = ModelStore().load("churn")
    trained = model.meta["trained_with"]["model"]["params"]
    l2, weight = best.removeprefix("l2=").split(", class_weight=")
    assert trained["l2"] == float(l2)
    assert trained.get("class_weight") == (None if weight == "None" else weight)
    # ... the same model as a plain fit with those values
    plain = TUNED.format(tune="").replace("seed: 3\n", f"seed: 3\n        l2: {l2}\n" + (
        f"        class_weight: {weight}\n" if weight != "None" else ""))
    again = run(write_pipeline(workdir, plain.replace("name: churn", "name: plain"),
                               "plain.yaml"), engine_instance=engine)
    assert again["metrics"]["model"]["validation"]["roc_auc"] == pytest.approx(
        candidates[best]["roc_auc"], rel=1e-9)
    ours = model.chain.steps[-1].state()[1]
    theirs = ModelStore().load("plain").chain.steps[-1].state()[1]
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-8, err_msg=key)


def test_the_default_metric_is_the_log_loss_lower_is_better(churn: Path,
                                                            workdir: Path) -> None:
    record = run(write_pipeline(workdir, TUNED.format(tune=GRID)))
    tuning = record["metrics"]["model"]["tuning"]
    candidates = tuning["candidates"]
    assert tuning["metric"] == "log_loss"
    assert tuning["best"] == min(candidates, key=lambda k: candidates[k]["log_loss"])


def test_candidates_compared_by_their_brier_score(churn: Path, workdir: Path) -> None:
    """tune_metric: brier (how true the probabilities are), lower is better; every
    classifier's validation reports it."""
    record = run(write_pipeline(workdir, TUNED.format(tune=GRID + "\n        tune_metric: "
                                                      "brier")))
    tuning = record["metrics"]["model"]["tuning"]
    candidates = tuning["candidates"]
    assert tuning["metric"] == "brier"
    assert tuning["best"] == min(candidates, key=lambda k: candidates[k]["brier"])
    assert len({round(c["brier"], 12) for c in candidates.values()}) > 1
    assert 0 < record["metrics"]["model"]["validation"]["brier"] < 0.25


@pytest.mark.parametrize(("tune", "key", "message"), [
    ("tune:\n          max_iters: [10]", "tune",
     "tune: unknown parameter 'max_iters'; did you mean 'max_iter'? (logistic_regression "
     "takes: label, features,"),
    ("tune:\n          seed: [1, 2]", "tune",
     "tune cannot vary 'seed': every candidate is fitted and compared on the same rows"),
    ("tune:\n          l2: 0.1", "tune", "tune: 'l2' must list the values to try"),
    ("tune:\n          l2: [0.1, -1.0]", "tune",
     "tune: l2=-1.0: parameter 'l2': Input should be greater than or equal to 0"),
    ("tune:\n          l2: [0.1]\n        tune_metric: roc_aoc", "tune_metric",
     "unknown metric 'roc_aoc'; did you mean 'roc_auc'? (one of: accuracy, brier, f1,"),
    ("tune:\n          l2: [0.1]\n        tune_samples: 0", "tune_samples",
     "tune_samples must be a whole number from 1 to 100 (got 0)"),
    ("tune:\n          max_iter: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]\n"
     "          l2: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", "tune",
     "tune makes 110 combinations, over 100: try fewer values"),
])
def test_tune_problems_are_reported_as_the_file_plans(churn: Path, workdir: Path, tune: str,
                                                      key: str, message: str) -> None:
    path = write_pipeline(workdir, TUNED.format(tune="        " + tune))
    plan = plan_file(path)
    (problem,) = plan.problems
    lines = path.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:"))
    assert (problem.line, problem.step) == (line, "model")
    assert message in problem.message, problem.message


def test_only_a_model_with_held_out_rows_is_tuned(churn: Path, workdir: Path) -> None:
    no_rows = TUNED.format(tune=GRID).replace("        validation_fraction: 0.25\n", "")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, no_rows))
    (problem,) = info.value.problems
    assert "tune needs held-out rows to compare the candidates on: set " \
           "validation_fraction (e.g. 0.2)" in str(problem)
    scaler = TUNED.format(tune="").replace(
        "columns: [tenure, monthly_charges]\n",
        "columns: [tenure, monthly_charges]\n        tune:\n          with_mean: [true]\n")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, scaler, "scaler.yaml"))
    (problem,) = info.value.problems
    assert "standard_scale is not a model of a label: only a model step with a label (and " \
           "validation_fraction) can be tuned" in str(problem)
    twice = TUNED.format(tune=GRID).replace("seed: 3\n", "seed: 3\n        l2: 0.5\n")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, twice, "twice.yaml"))
    assert "tune: 'l2' is set on the step too" in str(info.value.problems[0])


def test_a_metric_the_model_does_not_report_fails_located(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, TUNED.format(tune=GRID + "\n        tune_metric: rmse"))
    with pytest.raises(Exception) as info:
        run(path)
    assert str(info.value).startswith(f"{path}:") and "step 'model'" in str(info.value)
    assert "tune_metric: the model reports no validation rmse (it reports: accuracy" in str(
        info.value)


def test_tune_folds_cross_validates_then_fits_the_best_as_the_step_says(
        churn: Path, workdir: Path, engine: Engine) -> None:
    """Each combination fitted on k folds (fold i holds out the rows whose hash is in
    [i/k, (i+1)/k)), scored by the mean; the best then fitted on all the rows."""
    cv = TUNED.format(tune=GRID + "\n        tune_folds: 3").replace(
        "        validation_fraction: 0.25\n", "")
    record = run(write_pipeline(workdir, cv), engine_instance=engine)
    tuning = record["metrics"]["model"]["tuning"]
    assert tuning["folds"] == 3 and tuning["metric"] == "log_loss"
    candidates = tuning["candidates"]
    assert all(len(c["folds"]) == 3 for c in candidates.values())
    for entry in candidates.values():
        assert entry["log_loss"] == pytest.approx(np.mean(entry["folds"]), rel=1e-12)
    best = min(candidates, key=lambda k: candidates[k]["log_loss"])
    assert tuning["best"] == best
    # a fold is a plain fit holding out that share of the hash order
    l2, weight = best.removeprefix("l2=").split(", class_weight=")
    values = f"        l2: {l2}\n" + (f"        class_weight: {weight}\n"
                                      if weight != "None" else "")
    fold = TUNED.format(tune="").replace(
        "        validation_fraction: 0.25\n",
        "        validation_fraction: 0.3333333333333333\n"
        "        validation_start: 0.3333333333333333\n" + values)
    one = run(write_pipeline(workdir, fold.replace("name: churn", "name: fold"), "fold.yaml"),
              engine_instance=engine)
    assert one["metrics"]["model"]["validation"]["log_loss"] == pytest.approx(
        candidates[best]["folds"][1], rel=1e-9)
    # the model: the best values on all the rows (the step holds none out)
    assert record["metrics"]["model"]["training_rows"] == 5000
    whole = TUNED.format(tune="").replace("        validation_fraction: 0.25\n", values)
    run(write_pipeline(workdir, whole.replace("name: churn", "name: whole"), "whole.yaml"),
        engine_instance=engine)
    ours = ModelStore().load("churn").chain.steps[-1].state()[1]
    theirs = ModelStore().load("whole").chain.steps[-1].state()[1]
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-8, err_msg=key)


@pytest.mark.parametrize("folds", ["1", "21", "2.5", "true"])
def test_tune_folds_must_be_a_count(churn: Path, workdir: Path, folds: str) -> None:
    path = write_pipeline(workdir, TUNED.format(tune=GRID + f"\n        tune_folds: {folds}"))
    (problem,) = plan_file(path).problems
    assert problem.message.startswith("tune_folds must be a whole number from 2 to 20 (got")


def test_tune_samples_tries_a_random_share_of_a_large_grid(churn: Path, workdir: Path) -> None:
    """A grid of 300 combinations (over the 100 a step may try) searched at random: 5 of
    them, chosen by the step's seed, the same on every run."""
    grid = """        tune:
          l2: [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
          max_iter: [20, 40, 60, 80, 100]
          tol: [1.0e-6, 1.0e-7, 1.0e-8, 1.0e-9, 1.0e-10, 1.0e-11, 1.0e-12, 1.0e-13, 1.0e-14,
                1.0e-15]
        tune_samples: 5"""
    path = write_pipeline(workdir, TUNED.format(tune=grid))
    first = plan_file(path).step("model").tuning
    assert len(first.combos) == 5
    assert first.combos == plan_file(path).step("model").tuning.combos  # by the seed
    other = plan_file(write_pipeline(workdir, TUNED.format(tune=grid).replace(
        "seed: 3", "seed: 4"), "other.yaml")).step("model").tuning
    assert other.combos != first.combos
    grid_order = [(c["l2"], c["max_iter"], c["tol"]) for c in first.combos]
    assert grid_order == sorted(grid_order, key=lambda v: (
        [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0].index(v[0]), v[1], -v[2]))
    record = run(path)
    assert len(record["metrics"]["model"]["tuning"]["candidates"]) == 5
    without = TUNED.format(tune=grid.replace("\n        tune_samples: 5", ""))
    (problem,) = plan_file(write_pipeline(workdir, without, "all.yaml")).problems
    assert "tune makes 300 combinations, over 100: try fewer values, or tune_samples" in (
        problem.message)


BOOSTED = """
    pipeline: boosted
    steps:
      - op: read_parquet
        path: data/churn
      - id: model
        op: gradient_boosted_trees
        label: monthly_charges
        features: [tenure, churned]
        n_trees: 5
        max_depth: 2
        validation_fraction: 0.25
{tune}
"""


def test_candidates_of_other_losses_or_quantiles_need_a_named_metric(churn: Path,
                                                                    workdir: Path) -> None:
    """Candidates minimising different losses have no one default metric (each would
    report its own: rmse for the mean, pinball_loss for a quantile), and a quantile is
    not a setting to tune: both said as the file plans."""
    losses = "        tune:\n          loss: [squared_error, absolute_error]"
    plan = plan_file(write_pipeline(workdir, BOOSTED.format(tune=losses), "losses.yaml"))
    (problem,) = plan.problems
    assert "tune varies loss, so its candidates minimise different losses" in problem.message
    levels = ("        loss: quantile\n        quantile: 0.5\n"
              "        tune:\n          learning_rate: [0.1]\n          quantile: [0.1, 0.9]")
    plan = plan_file(write_pipeline(workdir, BOOSTED.format(tune=levels), "levels.yaml"))
    assert any("tune cannot vary 'quantile': it is what a model of loss: quantile predicts"
               in p.message for p in plan.problems)
    powers = "        loss: tweedie\n        tune:\n          tweedie_power: [1.2, 1.8]"
    plan = plan_file(write_pipeline(workdir, BOOSTED.format(tune=powers), "powers.yaml"))
    (problem,) = plan.problems
    assert "tune varies tweedie_power, so its candidates minimise different" in problem.message
    named = losses + "\n        tune_metric: mae"
    record = run(write_pipeline(workdir, BOOSTED.format(tune=named), "named.yaml"))
    candidates = record["metrics"]["model"]["tuning"]["candidates"]
    assert all(list(c) == ["mae", "passes"] for c in candidates.values())


@pytest.mark.parametrize(("tune", "message"), [
    ("group: region\n        tune:\n          ndcg_at: [1, 10]",
     "tune cannot vary 'ndcg_at'"),
    ("group: region\n        tune:\n          group: [region, plan]",
     "tune cannot vary 'group': every candidate is fitted and compared on the same rows"),
])
def test_a_ranking_cannot_tune_its_queries_or_its_ndcg_cut_off(churn: Path, workdir: Path,
                                                               tune: str, message: str
                                                               ) -> None:
    """ndcg_at is what the candidates are compared by (NDCG@1 of one against NDCG@10 of
    another: the shorter list wins whatever the model, as a quantile's levels), and
    group which rows are queries and which are held out: said as the file plans."""
    text = BOOSTED.format(tune="        loss: lambdarank\n        " + tune)
    plan = plan_file(write_pipeline(workdir, text, "ranking.yaml"))
    assert any(message in p.message for p in plan.problems), plan.problems



def test_quantile_candidates_are_compared_by_their_pinball_loss(churn: Path,
                                                                workdir: Path) -> None:
    tuned = ("        loss: quantile\n        quantile: 0.9\n"
             "        tune:\n          learning_rate: [0.01, 0.3]")
    record = run(write_pipeline(workdir, BOOSTED.format(tune=tuned), "quantile.yaml"))
    tuning = record["metrics"]["model"]["tuning"]
    assert tuning["metric"] == "pinball_loss"
    values = {k: v["pinball_loss"] for k, v in tuning["candidates"].items()}
    assert tuning["best"] == min(values, key=values.get)
