"""Choosing rows (filter, sample) and scoring, in the same run, the model the run saves:
train on one share of the rows and evaluate on the rest, on every engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline
from sklearn.metrics import accuracy_score, roc_auc_score

from operators.arrays import get_namespace
from operators.base import lookup
from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, run
from pipelines.store import ModelStore

NP = get_namespace("numpy")

TRAIN_TEST = """
    pipeline: train_test
    steps:
      - id: customers
        op: read_parquet
        path: data/churn
        partition_mb: 0.05
      - id: train_rows
        op: sample
        fraction: 0.75
        seed: 4
        by: [customer_id]
      - op: filter
        where: "tenure > 0 or monthly_charges > 50"
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges, total_charges, plan=basic, plan=premium]
      - op: save_model
        name: churn
      - id: test_rows
        op: sample
        input: customers
        fraction: 0.75
        seed: 4
        by: [customer_id]
        complement: true
      - id: test_scores
        op: score
        model: churn
      - op: evaluate
        label: churned
        metrics: [accuracy, roc_auc, count]
      - op: write_parquet
        input: test_scores
        path: out/test_scores
        mode: overwrite
    """


def rows_of(table: pa.Table, **params) -> pa.Table:
    cls = lookup("sample")
    return cls(cls.Params(**params)).transform(table, NP)


def test_train_on_a_sample_and_evaluate_the_rest_in_one_run(churn: Path, workdir: Path,
                                                           engine: Engine) -> None:
    record = run(write_pipeline(workdir, TRAIN_TEST), engine_instance=engine)
    data = pq.read_table(churn)
    split = {"fraction": 0.75, "seed": 4, "by": ["customer_id"]}
    train, test = rows_of(data, **split), rows_of(data, **split, complement=True)
    trained = train.filter((pc.field("tenure") > 0) | (pc.field("monthly_charges") > 50))
    steps = record["steps"]
    assert steps["train_rows"]["rows"] == train.num_rows
    assert steps["filter"]["rows"] == trained.num_rows < train.num_rows
    assert record["metrics"]["model"]["training_rows"] == trained.num_rows
    assert steps["test_rows"]["rows"] == test.num_rows == data.num_rows - train.num_rows
    # the score step used the version this run saved (the registry was empty when planned)
    assert record["models"][0]["version"] == 1
    assert [(m["step"], m["name"], m["version"]) for m in record["models_used"]] == [
        ("test_scores", "churn", 1)]
    # the saved model leaves the rows alone: no filter or sample in it
    model = ModelStore().load("churn")
    assert [s.name for s in model.chain.steps] == [
        "impute.fitted", "one_hot.fitted", "standard_scale.fitted",
        "logistic_regression.fitted"]
    assert set(model.required) == {"total_charges", "plan", "region", "tenure",
                                   "monthly_charges"}
    # the evaluation is of the held-out rows, scored by that model
    scored = model.chain.transform(test, NP)
    truth = scored["churned"].to_numpy()
    metrics = record["metrics"]["evaluate"]
    assert metrics["count"] == test.num_rows
    assert metrics["accuracy"] == pytest.approx(
        accuracy_score(truth, scored["prediction"].to_numpy()), abs=1e-12)
    # evaluate's AUC is binned (mergeable): within test_evaluate's 1e-4 of the exact one
    assert metrics["roc_auc"] == pytest.approx(
        roc_auc_score(truth, scored["probability"].to_numpy()), abs=1e-4)
    written = pq.read_table(workdir / "out" / "test_scores").sort_by("customer_id")
    np.testing.assert_allclose(written["probability"].to_numpy(),
                               scored.sort_by("customer_id")["probability"].to_numpy(),
                               rtol=1e-9)


def test_a_model_the_run_saves_is_scored_not_the_registry_latest(churn: Path,
                                                                  workdir: Path) -> None:
    """With an older version in the registry, `model: churn` (and an alias the save sets)
    scores with the version this run saves, even when the score step comes first in the
    file; `churn@1` still names the registry's version 1."""
    first = run(write_pipeline(workdir, TRAIN_TEST))
    assert first["models"][0]["version"] == 1
    moved = """
        pipeline: scored_first
        steps:
          - id: customers
            op: read_parquet
            path: data/churn
          - op: score
            input: customers
            model: churn
          - op: write_parquet
            path: out/scores
          - op: sample
            input: customers
            fraction: 0.5
          - op: logistic_regression
            label: churned
            features: [tenure]
          - op: save_model
            name: churn
        """
    record = run(write_pipeline(workdir, moved, "moved.yaml"))
    assert record["models"][0]["version"] == 2
    assert record["models_used"][0]["version"] == 2
    assert ModelStore().load("churn@2").chain.steps[-1].features == ["tenure"]
    assert record["steps"]["write_parquet"]["rows"] == 5000
    aliased = run(write_pipeline(workdir, TRAIN_TEST.replace(
        "name: churn\n", "name: churn\n        aliases: [candidate]\n").replace(
        "model: churn\n", "model: churn@candidate\n")))
    assert aliased["models_used"][0]["version"] == aliased["models"][0]["version"] == 3
    pinned = run(write_pipeline(workdir, TRAIN_TEST.replace("model: churn\n",
                                                            "model: churn@1\n")))
    assert pinned["models"][0]["version"] == 4
    assert pinned["models_used"][0]["version"] == 1
    assert pinned["metrics"]["evaluate"]["accuracy"] == first["metrics"]["evaluate"]["accuracy"]


def test_a_pipeline_that_scores_its_own_model_validates_without_a_registry(
        churn: Path, workdir: Path) -> None:
    from pipelines.runner import plan_file

    plan = plan_file(write_pipeline(workdir, TRAIN_TEST))
    assert plan.ok, plan.problems
    # the model's features come from one_hot's fit: its columns are known at run time
    assert plan.step("test_scores").open
    assert "customer_id" in plan.step("test_scores").schema.names
    known = plan_file(write_pipeline(workdir, TRAIN_TEST.replace(
        ", plan=basic, plan=premium]", "]"), "known.yaml"))
    assert known.ok, known.problems
    scores = known.step("test_scores").schema
    assert scores.names[-2:] == ["prediction", "probability"]
    assert scores.field("probability").type == pa.float64()
    assert not (workdir / "models").exists()
    broken = TRAIN_TEST.replace("columns: [plan, region]", "columns: [plan, regoin]")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, broken, "broken.yaml"))
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1 and "column 'regoin' not in the input" in problems[0]


def test_save_model_with_nothing_fitted_before_it_fails_when_planned(churn: Path,
                                                                     workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: nothing
        steps:
          - op: read_parquet
            path: data/churn
          - op: sample
            fraction: 0.5
          - op: save_model
            name: empty
        """)
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    assert str(problem) == (f"{path}:7: step 'save_model' (save_model): nothing is fitted "
                            "before save_model (put save_model after a model step)")


def test_the_holdout_example_pipeline(workdir: Path) -> None:
    """conf/pipelines/churn_holdout.yaml on the committed sample: trained on 80% of the
    customers, evaluated on the other 20% with the version it saved, and no customer on
    both sides."""
    from conftest import ROOT

    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")  # it writes data/
    record = run(ROOT / "conf" / "pipelines" / "churn_holdout.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    steps = record["steps"]
    assert steps["train_rows"]["rows"] + steps["test_rows"]["rows"] == steps["customers"][
        "rows"]
    assert record["metrics"]["evaluate"]["count"] == steps["test_rows"]["rows"]
    assert record["metrics"]["evaluate"]["roc_auc"] > 0.6
    assert record["models_used"][0]["version"] == record["models"][0]["version"] == 1
    written = pq.read_table(record["outputs"][0]["path"])
    assert pc.min(written["probability"]).as_py() >= 0.5
    model = ModelStore(str(workdir / "models")).load("churn_holdout@candidate")
    train = rows_of(pq.read_table(ROOT / "data" / "churn"), fraction=0.8, seed=1,
                    by=["customer_id"])
    assert not set(written["customer_id"].to_pylist()) & set(train["customer_id"].to_pylist())
    assert model.version == 1
    # with each customer's reasons, which add up to the score's log-odds, by the columns
    # the model was given (plan's one-hot columns added up)
    reasons = written["contributions"].combine_chunks()
    assert [f.name for f in reasons.type] == ["tenure", "monthly_charges", "total_charges",
                                              "plan"]
    margin = np.sum([reasons.field(i).to_numpy() for i in range(reasons.type.num_fields)],
                    axis=0) + written["contribution_base"].to_numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), written["probability"].to_numpy(),
                               rtol=1e-12)


def test_scoring_the_model_the_run_saves_into_its_own_training_is_a_cycle(
        churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: stacked
        steps:
          - op: read_parquet
            path: data/churn
          - op: score
            model: churn
          - op: logistic_regression
            label: churned
            features: [tenure, probability]
          - op: save_model
            name: churn
        """)
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    assert str(problem) == (
        f"{path}:6: step 'score' (score): score uses the model 'churn' that step "
        "'save_model' saves in this run, which is trained on the score's output (a cycle: "
        "score -> save_model -> logistic_regression -> score); to score with an earlier "
        "version, name it: churn@3 or an alias")


def test_contributions_of_the_model_the_run_saves(churn: Path, workdir: Path) -> None:
    """The logistic model this run saves explains its test scores; an MLP, which has no
    contributions, is a problem of the file, reported before any data moves."""
    explained = TRAIN_TEST.replace("model: churn\n", "model: churn\n        contributions: true\n")
    run(write_pipeline(workdir, explained))
    written = pq.read_table(workdir / "out" / "test_scores")
    reasons = written["contributions"].combine_chunks()
    model = ModelStore().load("churn").chain.steps[-1]
    assert [f.name for f in reasons.type] == model.features
    margin = np.sum([reasons.field(i).to_numpy() for i in range(reasons.type.num_fields)],
                    axis=0) + written["contribution_base"].to_numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), written["probability"].to_numpy(),
                               rtol=1e-12)
    mlp = explained.replace("op: logistic_regression", "op: mlp\n        hidden: [4]")
    path = write_pipeline(workdir, mlp, "mlp.yaml")
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    line = [n for n, text in enumerate(path.read_text().splitlines(), 1)
            if text.strip() == "contributions: true"][0]
    assert str(problem) == (
        f"{path}:{line}: step 'test_scores' (score): contributions: model 'churn' ends in "
        "mlp, which has no per-feature contributions (contributions are computed for "
        "decision_tree, random_forest, gradient_boosted_trees, linear_regression, "
        "logistic_regression and naive_bayes; score another model, or drop contributions)")
    assert ModelStore().versions("churn") == [1]


def test_the_model_the_run_saves_scores_rows_without_its_label_or_weight(
        churn: Path, workdir: Path) -> None:
    """A score in the saving run asks its rows for what the saved model reads: not the
    label nor the weight only the fit read (the plan asked for both, though the model
    saved scores without them)."""
    rows = pq.read_table(churn).drop_columns(["churned", "tenure"])
    pq.write_table(rows, workdir / "new.parquet")
    run(write_pipeline(workdir, f"""
        pipeline: unlabelled
        steps:
          - op: read_parquet
            path: {churn}
          - op: logistic_regression
            label: churned
            weight: tenure
            features: [monthly_charges]
          - op: save_model
            name: churn
          - op: read_parquet
            path: {workdir / "new.parquet"}
          - op: score
            model: churn
          - op: write_parquet
            path: {workdir / "scores"}
        """))
    assert pq.read_table(workdir / "scores").num_rows == rows.num_rows
