"""promote: the alias moves to the model a run saves only when it beats the version the
alias names, on every engine, with the metrics an evaluate of each model gives on the
same rows; plan problems name the line; a champion that cannot score the rows says so."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import write_pipeline

from operators.base import SluiceError
from pipelines.datagen import generate
from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, run
from pipelines.store import ModelStore

RETRAIN = """
    pipeline: retrain
    params: {{l2: 0.001, features: [tenure, monthly_charges, total_charges, plan=basic]}}
    steps:
      - id: rows
        op: read_parquet
        path: {data}
        partition_mb: 0.05
      - op: sample
        fraction: 0.75
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan]
      - op: logistic_regression
        label: churned
        l2: ${{l2}}
        features: ${{features}}
      - op: save_model
        name: churn
      - id: holdout
        op: sample
        input: rows
        fraction: 0.75
        complement: true
      - op: promote
        model: churn
        alias: production
        label: churned
{extra}
"""

EVALUATE = """
    pipeline: check
    steps:
      - op: read_parquet
        path: {data}
      - op: sample
        fraction: 0.75
        complement: true
      - op: score
        model: {model}
      - op: evaluate
        label: churned
"""


@pytest.fixture
def rows(workdir: Path) -> Path:
    folder = workdir / "rows"
    generate("churn", 4000, folder, files=4, seed=3)  # churn_table(4000, seed=3) in 4 files
    return folder


def _retrain(workdir: Path, rows: Path, engine: Any = None, extra: str = "",
             features: str | None = None, **params: str) -> dict[str, Any]:
    text = RETRAIN.format(data=rows, extra="\n".join(f"        {line}"
                                                     for line in extra.splitlines()))
    if features is not None:
        text = text.replace("features: [tenure, monthly_charges, total_charges, plan=basic]",
                            f"features: {features}")
    path = write_pipeline(workdir, text, "retrain.yaml")
    return run(path, {k: str(v) for k, v in params.items()}, engine_instance=engine)


def _evaluated(workdir: Path, rows: Path, model: str, metric: str) -> float:
    path = write_pipeline(workdir, EVALUATE.format(data=rows, model=model), "check.yaml")
    return run(path)["metrics"]["evaluate"][metric]


def test_the_alias_moves_only_to_a_better_model(workdir: Path, rows: Path,
                                                engine: Engine) -> None:
    store = ModelStore()
    first = _retrain(workdir, rows, engine)
    assert first["promotions"] == [{"step": "promote", "name": "churn", "alias": "production",
                                    "version": 1, "promoted": True, "was": None,
                                    "reason": "no version had the alias production"}]
    assert store.aliases("churn") == {"production": 1}
    decision = first["metrics"]["promote"]
    assert decision["metric"] == "log_loss" and decision["challenger"] == "churn@1"
    assert decision["challenger_value"] == pytest.approx(
        _evaluated(workdir, rows, "churn@1", "log_loss"), rel=1e-12)

    # a heavily regularised challenger is worse: the alias stays
    worse = _retrain(workdir, rows, engine, l2="10")
    decision = worse["metrics"]["promote"]
    assert (decision["challenger"], decision["champion"]) == ("churn@2", "churn@1")
    assert decision["promoted"] is False and decision["gain"] < 0
    assert decision["champion_value"] == pytest.approx(
        _evaluated(workdir, rows, "churn@1", "log_loss"), rel=1e-12)
    assert decision["challenger_value"] == pytest.approx(
        _evaluated(workdir, rows, "churn@2", "log_loss"), rel=1e-12)
    assert worse["promotions"][0]["promoted"] is False
    assert store.aliases("churn") == {"production": 1}

    # more features: better, promoted, by roc_auc this time
    better = _retrain(workdir, rows, engine, extra="metric: roc_auc",
                      features="[tenure, monthly_charges, total_charges, plan=basic, "
                               "plan=premium, plan=standard]")
    decision = better["metrics"]["promote"]
    assert decision["metric"] == "roc_auc" and decision["promoted"] is True
    assert decision["challenger_value"] > decision["champion_value"]
    assert decision["challenger_value"] == pytest.approx(
        _evaluated(workdir, rows, "churn@3", "roc_auc"), rel=1e-12)
    assert better["promotions"][0]["was"] == 1
    assert store.aliases("churn") == {"production": 3}


def test_an_alias_spelt_in_another_case_is_refused_before_any_step(workdir: Path,
                                                                  rows: Path) -> None:
    """`promote` to Production where the model has production, or `save_model` with
    aliases [CANDIDATE] where it has candidate: refused before any step runs (aliases are
    case-insensitive, so it would be a second name for it), naming the alias there;
    nothing saved or moved."""
    _retrain(workdir, rows)
    ModelStore().set_alias("churn", "candidate", 1)
    cases = {"promote": ("alias: production", "alias: Production", "Production", "production"),
             "save_model": ("name: churn\n", "name: churn\n        aliases: [CANDIDATE]\n",
                            "CANDIDATE", "candidate")}
    for step, (old, new, spelt, there) in cases.items():
        text = RETRAIN.format(data=rows, extra="").replace(old, new, 1)
        with pytest.raises(SluiceError) as info:
            run(write_pipeline(workdir, text, "retrain.yaml"))
        assert str(info.value).endswith(
            f"step '{step}' ({step}): model 'churn' has alias '{there}' (version 1), "
            f"which differs from '{spelt}' in case only: aliases are case-insensitive, so "
            f"'{spelt}' would name it too (spell it '{there}' to point it elsewhere, "
            "or choose another name)"), str(info.value)
    assert ModelStore().versions("churn") == [1]
    assert ModelStore().aliases("churn") == {"production": 1, "candidate": 1}
    failed = [json.loads(p.read_text()) for p in (workdir / "runs" / "retrain").glob("*.json")]
    assert sorted(r["status"] for r in failed) == ["failed", "failed", "succeeded"]
    assert all("rows" not in entry for r in failed if r["status"] == "failed"
               for entry in r["steps"].values())


def test_min_delta_keeps_the_champion_when_the_gain_is_small(workdir: Path,
                                                             rows: Path) -> None:
    _retrain(workdir, rows)
    record = _retrain(workdir, rows, extra="min_delta: 0.5", l2="0.0001")
    decision = record["metrics"]["promote"]
    assert decision["promoted"] is False
    assert "not lower by more than 0.5" in decision["reason"]
    assert ModelStore().aliases("churn") == {"production": 1}


def test_a_champion_that_cannot_score_the_rows_stops_the_run(workdir: Path,
                                                             rows: Path) -> None:
    _retrain(workdir, rows)  # churn@1 reads plan
    text = RETRAIN.format(data=rows, extra="").replace(
        "plan=basic]}", "]}").replace(
        "      - op: one_hot\n        columns: [plan]\n", "").replace(
        "path: " + str(rows), "path: " + str(rows) + "\n        columns: [tenure, "
        "monthly_charges, total_charges, churned]")
    path = write_pipeline(workdir, text, "narrow.yaml")
    with pytest.raises(SluiceError, match=r"churn@1 cannot score these rows: column the "
                                          r"model 'churn@production' needs: 'plan' not in"):
        run(path)
    assert ModelStore().aliases("churn") == {"production": 1}


def test_plan_problems_point_at_the_line(workdir: Path, rows: Path) -> None:
    cases = [
        (RETRAIN.replace("      - op: promote\n        model: churn",
                         "      - op: promote\n        model: other"),
         "model: no save_model step of this pipeline saves 'other'"),
        (RETRAIN.replace("        name: churn\n", "        name: churn\n"
                         "        aliases: [production]\n"),
         "alias: step 'save_model' sets 'production' itself"),
        (RETRAIN.replace("alias: production", "alias: '3'"), "alias '3' is not an alias"),
        (RETRAIN.replace("label: churned\n{extra}", "label: churned\n        metric: auc\n"
                         "{extra}"), "unknown metric 'auc'; did you mean 'pr_auc'"),
        (RETRAIN.replace("label: churned\n{extra}", "label: churn\n{extra}"),
         "'churn' not in the input"),
        (RETRAIN.replace("label: churned\n{extra}", "label: churned\n        metric: rmse\n"
                         "{extra}"), "metric 'rmse' is not a classification metric"),
    ]
    for text, message in cases:
        path = write_pipeline(workdir, text.format(data=rows, extra=""), "bad.yaml")
        with pytest.raises(ValidationFailed) as failed:
            run(path)
        problems = [str(p) for p in failed.value.problems]
        assert any(message in p for p in problems), (message, problems)
        line = next(p for p in problems if message in p)
        assert line.startswith(f"{path}:"), line


def test_the_retraining_example_pipeline(workdir: Path) -> None:
    """conf/pipelines/churn_retrain.yaml on the committed sample: the first run promotes
    its model; a run with a much larger l2 keeps it; the champion's roc_auc is the same
    in both records (the same held-out customers)."""
    import shutil

    from conftest import ROOT

    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    path = ROOT / "conf" / "pipelines" / "churn_retrain.yaml"
    first = run(path)
    assert first["promotions"][0]["promoted"] is True
    second = run(path, {"l2": "5"})
    decision = second["metrics"]["promote"]
    assert decision["promoted"] is False and decision["champion"] == "churn@1"
    assert decision["champion_value"] == first["metrics"]["promote"]["challenger_value"]
    assert ModelStore().aliases("churn") == {"production": 1}


def test_a_metric_the_rows_cannot_give_promotes_nothing(workdir: Path, rows: Path) -> None:
    _retrain(workdir, rows)
    one_class = RETRAIN.replace("        complement: true\n",
                                "        complement: true\n      - op: filter\n"
                                "        where: \"churned == 0\"\n")
    path = write_pipeline(workdir, one_class.format(data=rows, extra="        metric: roc_auc"),
                          "one_class.yaml")
    decision = run(path, {"l2": "0.0001"})["metrics"]["promote"]
    assert decision["promoted"] is False
    assert "roc_auc is not defined on these rows" in decision["reason"]
    assert ModelStore().aliases("churn") == {"production": 1}


QUANTILE = """
    pipeline: quantile
    params: {{trees: 10}}
    steps:
      - id: rows
        op: read_parquet
        path: {data}
      - op: sample
        fraction: 0.75
      - op: gradient_boosted_trees
        label: monthly_charges
        features: [tenure, total_charges, churned]
        loss: quantile
        quantile: 0.9
        n_trees: ${{trees}}
        max_depth: 3
      - op: save_model
        name: upper
      - op: sample
        input: rows
        fraction: 0.75
        complement: true
      - op: promote
        model: upper
        alias: production
        label: monthly_charges
"""


def test_quantile_models_are_compared_by_their_pinball_loss(workdir: Path, rows: Path) -> None:
    """By default a model of loss: quantile is compared by the pinball loss at its own
    quantile (rmse would favour the median), the same figure evaluate gives."""
    path = write_pipeline(workdir, QUANTILE.format(data=rows), "quantile.yaml")
    run(path)
    second = run(path, {"trees": "1"})  # one round: far from the quantile, worse
    decision = second["metrics"]["promote"]
    assert decision["metric"] == "pinball_loss" and decision["promoted"] is False
    check = write_pipeline(workdir, EVALUATE.format(data=rows, model="upper@1").replace(
        "label: churned", "label: monthly_charges\n        metrics: [pinball_loss, coverage]"
                          "\n        quantile: 0.9"), "check.yaml")
    evaluated = run(check)["metrics"]["evaluate"]
    assert decision["champion_value"] == pytest.approx(evaluated["pinball_loss"], rel=1e-12)
    assert 0.85 < evaluated["coverage"] < 0.95


def test_a_mean_model_against_a_quantile_model_needs_a_named_metric(workdir: Path,
                                                                    rows: Path) -> None:
    """A mean model (squared error) against the 0.9 quantile model that has the alias:
    rmse would favour the one and pinball_loss the other, so promote wants a metric."""
    run(write_pipeline(workdir, QUANTILE.format(data=rows), "quantile.yaml"))
    mean = QUANTILE.format(data=rows).replace("        loss: quantile\n        quantile: 0.9\n",
                                              "")
    with pytest.raises(SluiceError, match="upper@2 predicts the mean and upper@1 the 0.9 "
                                          "quantile, so no default metric compares them"):
        run(write_pipeline(workdir, mean, "mean.yaml"))
    named = write_pipeline(workdir, mean.rstrip() + "\n        metric: mae\n", "named.yaml")
    decision = run(named)["metrics"]["promote"]
    assert decision["metric"] == "mae" and decision["champion"] == "upper@1"


def test_models_of_one_log_link_are_compared_by_their_deviance(workdir: Path,
                                                                rows: Path) -> None:
    """Two Tweedie models of monthly charges: by default promote compares the deviance
    they minimise, at their tweedie_power, as evaluate measures it."""
    text = QUANTILE.format(data=rows).replace(
        "        loss: quantile\n        quantile: 0.9\n",
        "        loss: tweedie\n        tweedie_power: 1.2\n").replace("name: upper",
                                                                      "name: claims")
    text = text.replace("model: upper", "model: claims")
    path = write_pipeline(workdir, text, "tweedie.yaml")
    run(path)
    decision = run(path, {"trees": "1"})["metrics"]["promote"]
    assert decision["metric"] == "tweedie_deviance" and decision["promoted"] is False
    check = write_pipeline(workdir, EVALUATE.format(data=rows, model="claims@1").replace(
        "label: churned", "label: monthly_charges\n        metrics: [tweedie_deviance]"
                          "\n        tweedie_power: 1.2"), "check.yaml")
    assert decision["champion_value"] == pytest.approx(
        run(check)["metrics"]["evaluate"]["tweedie_deviance"], rel=1e-12)


def test_a_run_failing_after_its_promotion_moves_no_alias(workdir: Path, rows: Path) -> None:
    """The alias moves when the run publishes the challenger, with its outputs: a run
    that promotes and then fails leaves no version and no alias; the next run's
    promotion says what the alias was then."""
    from pipelines.engines.base import StepFailure

    store = ModelStore()
    text = RETRAIN.format(data=rows, extra="") + textwrap.indent(textwrap.dedent("""
        - input: rows
          op: sluice_testops.FailingLate
          after: {7: 0.0}
        """), "      ")
    with pytest.raises(StepFailure, match="boom at 7"):
        run(write_pipeline(workdir, text, "failing.yaml"))
    assert store.aliases("churn") == {} and store.versions("churn") == []
    record = _retrain(workdir, rows)
    assert [(p["version"], p["promoted"], p["was"]) for p in record["promotions"]] == [
        (2, True, None)]
    assert store.aliases("churn") == {"production": 2}
