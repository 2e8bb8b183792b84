"""tune: every combination fitted on the same rows and compared on the same held-out
rows, the best kept, on every engine; and the problems of a tune: as the file plans."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.arrays import get_namespace
from operators.base import SluiceError
from operators.models.common import ConvergenceWarning, holdout_mask
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


def _line_of(path: Path, key: str) -> int:
    """The line of a step key (tune, tune_metric...), else of a key under tune."""
    lines = path.read_text().splitlines()
    tune = next(n for n, text in enumerate(lines, 1) if text.strip() == "tune:")
    return next(n for n, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:")
                and (key.startswith("tune") or n > tune))


@pytest.mark.parametrize(("tune", "key", "message"), [
    # a problem of one key of tune is said at that key's line
    ("tune:\n          l2: [0.1]\n          max_iters: [10]", "max_iters",
     "tune: unknown parameter 'max_iters'; did you mean 'max_iter'? (logistic_regression "
     "takes: label, features,"),
    ("tune:\n          seed: [1, 2]", "seed",
     "tune cannot vary 'seed': every candidate is fitted and compared on the same rows"),
    ("tune:\n          l2: 0.1", "l2", "tune: 'l2' must list the values to try"),
    ("tune:\n          max_iter: [10]\n          l2: [0.1, -1.0]", "l2",
     "tune: max_iter=10, l2=-1.0: parameter 'l2': Input should be greater than or equal "
     "to 0 (got -1.0)"),
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
    line = _line_of(path, key)
    assert (problem.line, problem.step) == (line, "model")
    assert message in problem.message, problem.message


def test_a_key_with_a_problem_does_not_hide_the_values_the_others_list_wrong(
        churn: Path, workdir: Path) -> None:
    """One validate says every problem of a tune: the values the step refuses, each at
    its key's line, besides an unknown key (not one a round)."""
    tune = ("tune:\n          l2: [0.1, -1.0]\n          max_iters: [10]\n"
            "          max_iter: [10, 0]\n          tol: [0.001]")
    path = write_pipeline(workdir, TUNED.format(tune="        " + tune))
    said = [(p.line, p.message) for p in plan_file(path).problems]
    assert said == [
        (_line_of(path, "l2"), "tune: l2=-1.0: parameter 'l2': Input should be greater than "
                               "or equal to 0 (got -1.0)"),
        (_line_of(path, "max_iters"), said[1][1]),
        (_line_of(path, "max_iter"), "tune: max_iter=0: parameter 'max_iter': Input should "
                                     "be greater than or equal to 1 (got 0)")]
    assert said[1][1].startswith("tune: unknown parameter 'max_iters'")


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
    assert "standard_scale cannot be tuned: tune compares candidates by their metrics on " \
           "rows the step holds out (validation_fraction), which only a model of a label " \
           "(logistic_regression, linear_regression, the trees, mlp, naive_bayes), kmeans or " \
           "gaussian_mixture does" in str(
               problem)
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


UNCONVERGED = """        tune:
          max_iter: [1, 50]
          l2: [0.1, 1.0]"""


def test_candidates_that_do_not_converge_are_one_warning_of_the_run(
        churn: Path, workdir: Path, engine: Engine) -> None:
    """A candidate fit's ConvergenceWarning is the run's, as a plain fit's, naming the
    candidate and fold: one line for the six alike (max_iter=1, two l2s, three folds),
    not six Python warnings from sluice's source; the best values fitted again converge,
    so nothing more is said."""
    cv = TUNED.format(tune=UNCONVERGED + "\n        tune_folds: 3").replace(
        "        validation_fraction: 0.25\n", "")
    path = write_pipeline(workdir, cv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = run(path, engine_instance=engine)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)], caught
    tuning = record["metrics"]["model"]["tuning"]
    assert tuning["best"].startswith("max_iter=50, ") and record["metrics"]["model"]["converged"]
    assert {k: c.get("warned") for k, c in tuning["candidates"].items()} == {
        "max_iter=1, l2=0.1": 3, "max_iter=1, l2=1.0": 3,
        "max_iter=50, l2=0.1": None, "max_iter=50, l2=1.0": None}
    (said,) = record["warnings"]
    line = model_line(path)
    assert said.startswith(f"{path}:{line}: step 'model' (logistic_regression): tune candidate "
                           "max_iter=1, l2=0.1 (fold 1 of 3): logistic_regression did not "
                           "converge: max_iter=1 reached after 1 iteration (gradient norm "), said
    assert said.endswith("; so did 5 more candidate fits: max_iter=1, l2=0.1 (fold 2 of 3); "
                         "max_iter=1, l2=0.1 (fold 3 of 3); max_iter=1, l2=1.0 (fold 1 of 3); "
                         "and 2 more (6 of the tune's 12 candidate fits)"), said


def test_the_tuned_models_own_warning_names_it_and_no_fit_converging_is_said(
        churn: Path, workdir: Path) -> None:
    """Without folds the best candidate's fit is the model: its warning names it, the
    chosen one, the three others' are the candidates' (one line, counted of the four:
    not read as three of four warned); none of the four converged, which a third line
    says (the choice ranks unfinished fits: list larger max_iter values); all counted in
    the status, no Python warning on stderr."""
    path = write_pipeline(workdir, TUNED.format(tune=UNCONVERGED.replace("50", "2")))
    done = sluice_in_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert ": succeeded, 3 warnings in " in done.stdout.splitlines()[0], done.stdout
    record = json.loads(next((workdir / "runs" / "tuned").glob("*.json")).read_text())
    best = record["metrics"]["model"]["tuning"]["best"]
    head = f"{path}:{model_line(path)}: step 'model' (logistic_regression): "
    assert done.stderr.splitlines() == [f"warning: {w}" for w in record["warnings"]]
    candidates, model, chosen = record["warnings"]
    others = [k for k in record["metrics"]["model"]["tuning"]["candidates"] if k != best]
    assert candidates.startswith(f"{head}tune candidate {others[0]}: logistic_regression "
                                 "did not converge: "), candidates
    assert candidates.endswith(f"; so did 2 more candidate fits: {others[1]}; {others[2]} "
                               "(3 of the tune's 4 candidate fits)"), candidates
    max_iter = best.split(",")[0].removeprefix("max_iter=")
    assert model.startswith(f"{head}tune candidate {best}, chosen (its fit is the model): "
                            f"logistic_regression did not converge: max_iter={max_iter} "
                            "reached"), model
    assert chosen == (f"{head}tune chose {best} from fits that did not converge: none of its "
                      "4 candidate fits converged, so their scores rank unfinished models; "
                      "list larger max_iter values in the tune (its largest is 2) (or "
                      "standardise the features) and run again"), chosen


def model_line(path: Path) -> int:
    """The line of the tuned step (``- id: model``) in a pipeline file."""
    return path.read_text().splitlines().index("  - id: model") + 1


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


# --------------------------------------------------------------------------- kmeans

KMEANS = """
    pipeline: segments
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - id: clusters
        op: kmeans
        features: [x0, x1, x2]
        seed: 2
{settings}
      - op: save_model
        name: segments
"""


def blobs(folder: Path, centres: int, files: int, rows: int = 1200) -> Path:
    """Well-separated blobs in three features, an id column, in ``files`` files."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(rows, n_features=3, centers=centres, cluster_std=0.8,
                      center_box=(-20, 20), random_state=centres)
    table = pa.table({"id": np.arange(rows), **{f"x{j}": X[:, j] for j in range(3)}})
    folder.mkdir(parents=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]),
                       folder / f"part-{i}.parquet", row_group_size=100)
    return folder


@pytest.mark.parametrize("centres", [3, 4])
def test_kmeans_tune_picks_the_blobs_k_by_the_held_out_silhouette(
        workdir: Path, engine: Engine, centres: int) -> None:
    """k picked by the held-out silhouette (higher is better) on well-separated blobs:
    the same candidates' values on every engine and partitioning, the model the best's,
    its held-out metrics scikit-learn's on the held-out rows."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    settings = ("        validation_fraction: 0.2\n"
                "        tune:\n          k: [2, 3, 4, 5, 6]")
    one = blobs(workdir / "one", centres, 1)
    reference = run(write_pipeline(workdir, KMEANS.format(data=one, settings=settings),
                                   "one.yaml"))
    record = run(write_pipeline(workdir, KMEANS.format(
        data=blobs(workdir / "many", centres, 4), settings=settings).replace(
        "name: segments", "name: many")), engine_instance=engine)
    tuning = record["metrics"]["clusters"]["tuning"]
    assert tuning["metric"] == "silhouette" and tuning["best"] == f"k={centres}"
    candidates = tuning["candidates"]
    assert list(candidates) == [f"k={k}" for k in (2, 3, 4, 5, 6)]
    assert max(candidates, key=lambda c: candidates[c]["silhouette"]) == f"k={centres}"
    for name, entry in reference["metrics"]["clusters"]["tuning"]["candidates"].items():
        assert candidates[name]["silhouette"] == pytest.approx(entry["silhouette"], rel=1e-9)
    validation = record["metrics"]["clusters"]["validation"]
    assert validation["silhouette"] == candidates[f"k={centres}"]["silhouette"]
    model = ModelStore().load("many")
    assert model.meta["trained_with"]["clusters"]["params"]["k"] == centres
    fitted = model.chain.steps[-1]
    np.testing.assert_allclose(fitted.centres,
                               ModelStore().load("segments").chain.steps[-1].centres,
                               rtol=1e-9, atol=1e-9)
    rows = pq.read_table(one)
    held = rows.filter(pa.array(holdout_mask(rows, 0.2, 2)))
    assert validation["count"] == held.num_rows
    labels = model.chain.transform(held, get_namespace("numpy")).column("prediction")
    X = np.column_stack([held.column(f"x{j}").to_numpy() for j in range(3)])
    assert validation["silhouette"] == pytest.approx(
        silhouette_score(X, labels, metric="sqeuclidean"), rel=1e-12, abs=1e-12)
    assert validation["calinski_harabasz"] == pytest.approx(
        calinski_harabasz_score(X, labels), rel=1e-12)
    assert validation["davies_bouldin"] == pytest.approx(
        davies_bouldin_score(X, labels), rel=1e-12)


def test_kmeans_tune_folds_cross_validates_k(workdir: Path) -> None:
    """tune_folds: each k fitted on 3 folds and scored by the mean silhouette, the
    best k then fitted on all the rows; a fold is a plain fit holding out its share."""
    data = blobs(workdir / "data", 3, 2)
    cv = KMEANS.format(data=data, settings="        tune:\n          k: [2, 3, 5]\n"
                                           "        tune_folds: 3")
    record = run(write_pipeline(workdir, cv))
    metrics = record["metrics"]["clusters"]
    tuning = metrics["tuning"]
    assert (tuning["folds"], tuning["metric"], tuning["best"]) == (3, "silhouette", "k=3")
    for entry in tuning["candidates"].values():
        assert len(entry["folds"]) == 3
        assert entry["silhouette"] == pytest.approx(np.mean(entry["folds"]), rel=1e-12)
    assert metrics["training_rows"] == 1200 and "validation" not in metrics
    third = 0.3333333333333333
    fold = KMEANS.format(data=data, settings=f"        k: 5\n        validation_fraction: "
                                             f"{third}\n        validation_start: {third}")
    one = run(write_pipeline(workdir, fold.replace("name: segments", "name: fold"),
                             "fold.yaml"))
    assert one["metrics"]["clusters"]["validation"]["silhouette"] == pytest.approx(
        tuning["candidates"]["k=5"]["folds"][1], rel=1e-12)


def test_a_kmeans_candidate_of_one_held_out_cluster_loses_with_a_note(workdir: Path) -> None:
    """A big blob and a few rows far away, none held out: k=2 puts the far rows in a
    cluster of their own, so its held-out rows are all in one cluster and have no
    silhouette (NaN): it loses, and its entry says why. With only such candidates the
    step fails and says why."""
    rng = np.random.default_rng(0)
    blob = rng.standard_normal((400, 3))
    far = pa.table({"id": np.arange(400, 440), **{
        f"x{j}": rng.standard_normal(40) * 0.1 + 60.0 for j in range(3)}})
    far = far.filter(pa.array(~holdout_mask(far, 0.2, 2)))
    table = pa.concat_tables([pa.table({"id": np.arange(400), **{
        f"x{j}": blob[:, j] for j in range(3)}}), far])
    pq.write_table(table, workdir / "rows.parquet")
    text = KMEANS.format(data=workdir / "rows.parquet", settings=(
        "        validation_fraction: 0.2\n        tune:\n          k: [2, 3]"))
    record = run(write_pipeline(workdir, text))
    tuning = record["metrics"]["clusters"]["tuning"]
    assert tuning["best"] == "k=3"
    two = tuning["candidates"]["k=2"]
    assert np.isnan(two["silhouette"])
    assert two["note"].startswith("k=2: ") and "rows in 1 clusters: the metrics need 2 to" in (
        two["note"])
    only = write_pipeline(workdir, text.replace("k: [2, 3]", "k: [2]"), "only.yaml")
    with pytest.raises(SluiceError) as info:
        run(only)
    assert str(info.value).startswith(f"{only}:") and "step 'clusters'" in str(info.value)
    assert "tune: no candidate has a held-out silhouette (k=2: " in str(info.value)
    assert "hold out more rows (validation_fraction)" in str(info.value)


def test_a_kmeans_candidate_larger_than_the_training_rows_fails_named(workdir: Path) -> None:
    pq.write_table(pa.table({"id": np.arange(10), "x0": np.arange(10.0),
                             "x1": np.arange(10.0) ** 2, "x2": np.ones(10)}),
                   workdir / "few.parquet")
    text = KMEANS.format(data=workdir / "few.parquet", settings=(
        "        validation_fraction: 0.3\n        tune:\n          k: [2, 12]"))
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, text))
    message = str(info.value)
    assert "step 'clusters': tune candidate k=12: " in message
    assert "training rows for k = 12 clusters" in message and "(lower k, or " in message
    folds = text.replace("        validation_fraction: 0.3\n", "").replace(
        "k: [2, 12]", "k: [2]\n        tune_folds: 20")
    with pytest.raises(SluiceError, match=r"tune candidate k=2 \(fold 1 of 20\): tune: the "
                                          "step held out no rows to compare the candidates "
                                          "on"):
        run(write_pipeline(workdir, folds, "folds.yaml"))


def test_too_few_held_out_rows_for_a_silhouette_fail_saying_so(workdir: Path) -> None:
    """Two rows held out (of 40): in 2 clusters each is alone, in one no silhouette
    either: no candidate has one, and the step says why and what to do."""
    table = pa.table({"id": np.arange(40), "x0": np.arange(40.0), "x1": np.arange(40.0) ** 2,
                      "x2": np.ones(40)})
    assert int(holdout_mask(table, 0.08, 2).sum()) == 2
    pq.write_table(table, workdir / "rows.parquet")
    text = KMEANS.format(data=workdir / "rows.parquet", settings=(
        "        validation_fraction: 0.08\n        tune:\n          k: [2, 3]"))
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, text))
    message = str(info.value)
    assert "step 'clusters': tune: no candidate has a held-out silhouette (k=2: 2 rows in " in (
        message)
    assert "the metrics need 3 rows at least (2 clusters, fewer than the rows)" in message
    assert message.endswith("(hold out more rows (validation_fraction), or try other values)")


@pytest.mark.parametrize(("settings", "key", "message"), [
    ("validation_fraction: 0.2\n        tune:\n          k: [2, 3]\n"
     "        tune_metric: inertia", "tune_metric",
     "tune_metric: inertia cannot choose k: the held-out rows' inertia falls as k grows"),
    ("validation_fraction: 0.2\n        tune:\n          k: [2, 3]\n"
     "        tune_metric: roc_auc", "tune_metric",
     "kmeans cannot be compared by a model of a label's metric 'roc_auc' (one of: "
     "calinski_harabasz, davies_bouldin, inertia, silhouette)"),
    ("validation_fraction: 0.2\n        tune:\n          k: [2, 3]\n"
     "        tune_metric: silhuette", "tune_metric",
     "unknown metric 'silhuette'; did you mean 'silhouette'?"),
    ("k: 3\n        validation_fraction: 0.2\n        tune:\n          features: [[x0, x1]]",
     "features", "tune cannot vary 'features': the candidates' clusters are compared in the "
             "space of their features"),
    ("k: 3\n        validation_fraction: 0.2\n        tune:\n"
     "          distance_measure: [euclidean, cosine]", "distance_measure",
     "tune cannot vary 'distance_measure': a cosine silhouette and a Euclidean one"),
    ("distance_measure: cosine\n        validation_fraction: 0.2\n        tune:\n"
     "          k: [2, 3]\n        tune_metric: davies_bouldin", "tune_metric",
     "tune_metric: davies_bouldin measures Euclidean distances, and the step's "
     "distance_measure is cosine: compare by silhouette"),
    ("k: 3\n        validation_fraction: 0.2\n        tune:\n          seed: [1, 2]",
     "seed", "tune cannot vary 'seed': every candidate is fitted and compared on the same"),
    ("k: 3\n        validation_fraction: 0.2\n        tune:\n          weight: [id]",
     "weight", "tune cannot vary 'weight'"),
    ("tune:\n          k: [2, 3]", "tune",
     "tune needs held-out rows to compare the candidates on: set validation_fraction"),
    ("validation_fraction: 0.2\n        tune:\n          k: [3, 1]", "k",
     "tune: k=1: parameter 'k': Input should be greater than or equal to 2"),
    ("validation_fraction: 0.2\n        tune:\n          k: [1, 3]", "k",
     "tune: k=1: parameter 'k': Input should be greater than or equal to 2 (got 1)"),
], ids=["inertia-for-k", "a-label-metric", "unknown-metric", "features", "measure",
        "cosine-davies-bouldin", "seed", "weight",
        "nothing-held-out", "a-bad-k", "a-bad-first-k"])
def test_kmeans_tune_problems_are_reported_as_the_file_plans(
        workdir: Path, settings: str, key: str, message: str) -> None:
    pq.write_table(pa.table({"id": np.arange(4), "x0": np.zeros(4), "x1": np.zeros(4),
                             "x2": np.zeros(4)}), workdir / "rows.parquet")
    path = write_pipeline(workdir, KMEANS.format(data=workdir / "rows.parquet",
                                                 settings="        " + settings))
    (problem,) = plan_file(path).problems
    line = _line_of(path, key)
    assert (problem.line, problem.step) == (line, "clusters")
    assert message in problem.message, problem.message


def test_a_model_of_a_label_is_not_compared_by_a_clustering_metric(churn: Path,
                                                                    workdir: Path) -> None:
    path = write_pipeline(workdir, TUNED.format(tune=GRID + "\n        tune_metric: "
                                                "silhouette"))
    (problem,) = plan_file(path).problems
    assert problem.message.startswith("logistic_regression cannot be compared by a "
                                      "clustering's metric 'silhouette' (one of: accuracy,")


def test_the_metric_directions() -> None:
    """What tune and promote rank by: more is better but for these."""
    from operators.evaluate.metrics import LOWER_IS_BETTER

    assert {"davies_bouldin", "inertia", "log_loss", "rmse"} <= LOWER_IS_BETTER
    assert not {"silhouette", "calinski_harabasz", "roc_auc", "r2"} & LOWER_IS_BETTER


# --------------------------------------------------------------------------- mixtures


def test_gaussian_mixture_tune_picks_k_by_the_held_out_log_likelihood(workdir: Path) -> None:
    """k picked by the held-out rows' mean log-likelihood (higher is better), the same on
    one file and four; a clustering's metric is refused as the file plans."""
    settings = ("        validation_fraction: 0.25\n        tune:\n          k: [1, 2, 4]")
    mixture = KMEANS.replace("op: kmeans", "op: gaussian_mixture")
    one = run(write_pipeline(workdir, mixture.format(data=blobs(workdir / "one", 4, 1),
                                                     settings=settings), "one.yaml"))
    many = run(write_pipeline(workdir, mixture.format(data=blobs(workdir / "many", 4, 4),
                                                      settings=settings)))
    tuning = many["metrics"]["clusters"]["tuning"]
    assert tuning["metric"] == "log_likelihood" and tuning["best"] == "k=4"
    candidates = tuning["candidates"]
    values = [candidates[f"k={k}"]["log_likelihood"] for k in (1, 2, 4)]
    assert values == sorted(values) and values[2] > values[1] + 0.5
    for name, entry in one["metrics"]["clusters"]["tuning"]["candidates"].items():
        assert candidates[name]["log_likelihood"] == pytest.approx(entry["log_likelihood"],
                                                                   rel=1e-9)
    assert many["metrics"]["clusters"]["validation"]["log_likelihood"] == values[2]
    silhouette = mixture.format(data=workdir / "one", settings=settings
                                + "\n        tune_metric: silhouette")
    (problem,) = plan_file(write_pipeline(workdir, silhouette, "bad.yaml")).problems
    assert ("gaussian_mixture cannot be compared by a clustering's metric "
            "'silhouette' (one of: log_likelihood)") in str(problem)
