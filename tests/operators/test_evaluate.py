"""The evaluate operator: metrics against scikit-learn, partition invariance, plan-time
and data errors, pass-through of the rows."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_pinball_loss,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.evaluate.evaluate import Evaluate
from operators.testing.cases.evaluate import binary_table, multiclass_table, regression_table
from operators.testing.kit import fit, roundtrip, split

NUMPY = get_namespace("numpy")
AUC_TOL = 1e-4


def evaluate(params: dict[str, Any], parts: list[pa.Table], xp: Any = NUMPY) -> dict[str, Any]:
    """The metrics evaluate reports for data in these partitions (the runtime's loop)."""
    op = Evaluate(**params)
    op.output_schema(parts[0].schema)

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], op.combine)

    state, rounds = drive(op, parts[0].schema, aggregate)
    assert rounds == 1
    return op.metrics(state)


def partitionings(table: pa.Table, label: str) -> dict[str, list[pa.Table]]:
    by_label = table.sort_by(label)
    return {"one": [table], "four": split(table, 4), "shuffled": split(table, 9, seed=3),
            "by-label": split(by_label, 6, seed=1)}


def assert_same_metrics(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        elif key == "confusion_matrix":
            np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
        else:
            assert got[key] == value, key


def column(table: pa.Table, name: str) -> np.ndarray:
    values = table.column(name)
    if pa.types.is_list(values.type):
        return np.array(values.to_pylist())
    return values.to_numpy()


# --------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("weighted", [False, True])
def test_binary_matches_sklearn_on_every_partitioning(weighted: bool) -> None:
    table = binary_table(1500)
    params = {"label": "churned", **({"weight": "w"} if weighted else {})}
    y, pred, proba = (column(table, c) for c in ("churned", "prediction", "probability"))
    w = column(table, "w") if weighted else None
    results = {how: evaluate(params, parts)
               for how, parts in partitionings(table, "churned").items()}
    got = results["one"]
    for other in results.values():
        assert_same_metrics(other, got)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred, sample_weight=w), rel=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, y_proba=proba, sample_weight=w),
                                            rel=1e-12)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, sample_weight=w), rel=1e-12)
    np.testing.assert_allclose(got["confusion_matrix"],
                               confusion_matrix(y, pred, sample_weight=w), rtol=1e-12)
    assert abs(got["roc_auc"] - roc_auc_score(y, proba, sample_weight=w)) <= AUC_TOL
    assert got["count"] == 1500 and got["classes"] == [0, 1]


def test_multiclass_matches_sklearn_on_every_partitioning() -> None:
    table = multiclass_table(1200)
    y, pred, proba = (column(table, c) for c in ("plan", "prediction", "probability"))
    results = {how: evaluate({"label": "plan"}, parts)
               for how, parts in partitionings(table, "plan").items()}
    got = results["one"]
    for other in results.values():
        assert_same_metrics(other, got)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), rel=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, y_proba=proba), rel=1e-12)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0),
                                          rel=1e-12)
    assert abs(got["roc_auc"] - roc_auc_score(y, proba, multi_class="ovr")) <= AUC_TOL
    assert got["classes"] == sorted(set(y))
    np.testing.assert_array_equal(got["confusion_matrix"], confusion_matrix(y, pred))


@pytest.mark.parametrize("weighted", [False, True])
def test_brier_on_request_is_scikit_learns_on_every_partitioning(weighted: bool) -> None:
    """scikit-learn's brier_score_loss: two classes' mean (p - y)^2, more classes' mean
    sum over the classes (its [0, 2] range); partitions that see some classes only (the
    labels sorted) too. Asked for, as the deviances are."""
    for table, label, weight in ((binary_table(1500), "churned", "w"),
                                 (multiclass_table(1200), "plan", None)):
        params = {"label": label, "metrics": ["brier", "log_loss"],
                  **({"weight": weight} if weighted and weight else {})}
        w = column(table, weight) if weighted and weight else None
        y, proba = column(table, label), column(table, "probability")
        labels = sorted(set(y)) if proba.ndim == 2 else None
        want = brier_score_loss(y, proba, sample_weight=w, labels=labels)
        for how, parts in partitionings(table, label).items():
            got = evaluate(params, parts)
            assert got.keys() == {"brier", "log_loss"}
            assert got["brier"] == pytest.approx(want, rel=1e-12), (label, how)
    assert "brier" not in evaluate({"label": "churned"}, [binary_table(100)])


@pytest.mark.parametrize("weighted", [False, True])
def test_regression_matches_sklearn_on_every_partitioning(weighted: bool) -> None:
    table = regression_table(1500)
    params = {"label": "charges", "metrics": ["rmse", "mse", "mae", "r2", "count"],
              **({"weight": "w"} if weighted else {})}
    y, pred = column(table, "charges"), column(table, "prediction")
    w = column(table, "w") if weighted else None
    results = {how: evaluate(params, parts)
               for how, parts in partitionings(table, "charges").items()}
    got = results["one"]
    for other in results.values():
        assert_same_metrics(other, got)
    mse = mean_squared_error(y, pred, sample_weight=w)
    assert got["mse"] == pytest.approx(mse, rel=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred, sample_weight=w), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, pred, sample_weight=w), rel=1e-12)
    assert got["count"] == 1500


def test_pinball_loss_and_coverage_at_the_models_quantile() -> None:
    table = regression_table(1500)
    y, pred = column(table, "charges"), column(table, "prediction")
    got = evaluate({"label": "charges", "metrics": ["pinball_loss", "coverage", "mae"],
                    "quantile": 0.9}, split(table, 3))
    assert got["pinball_loss"] == pytest.approx(
        mean_pinball_loss(y, pred, alpha=0.9), rel=1e-12)
    assert got["coverage"] == pytest.approx(np.mean(y <= pred), rel=1e-12)
    with pytest.raises(ParamError, match="quantile: 0.9 is the level of pinball_loss"):
        Evaluate(label="charges", quantile=0.9)


def test_string_and_dictionary_labels_with_explicit_classes() -> None:
    rng = np.random.default_rng(7)
    y = rng.choice(["no", "yes"], 400)
    score = np.clip(0.4 * (y == "yes") + 0.6 * rng.random(400), 0, 1)
    pred = np.where(score > 0.5, "yes", "no")
    table = pa.table({"churn": pa.array(y).dictionary_encode(), "prediction": pa.array(pred),
                      "probability": pa.array(score)})
    got = evaluate({"label": "churn", "classes": ["yes", "no"]}, split(table, 5, seed=2))
    assert got["classes"] == ["no", "yes"]
    assert got["f1"] == pytest.approx(f1_score(y, pred, pos_label="yes"), rel=1e-12)
    assert abs(got["roc_auc"] - roc_auc_score(y == "yes", score)) <= AUC_TOL


def test_array_api_strict_gives_the_same_metrics() -> None:
    for params, table in (({"label": "plan"}, multiclass_table(300)),
                          ({"label": "churned", "weight": "w"}, binary_table(300)),
                          ({"label": "charges", "weight": "w"}, regression_table(300))):
        parts = split(table, 3)
        assert_same_metrics(evaluate(params, parts, get_namespace("array_api_strict")),
                            evaluate(params, parts))


# --------------------------------------------------------------------------- the operator


def test_rows_pass_through_and_metrics_survive_save_load() -> None:
    table = binary_table(200)
    op = Evaluate(label="churned")
    assert op.output_schema(table.schema) == table.schema
    fitted = fit(op, split(table, 3))
    assert fitted.transform(table, NUMPY).equals(table)
    again = roundtrip(fitted)
    assert again.transform(table, NUMPY).equals(table)
    assert again.metrics == fitted.metrics and fitted.metrics["count"] == 200
    assert json.loads(json.dumps(fitted.metrics)) == fitted.metrics


@pytest.mark.parametrize(("label", "values", "task"), [
    ("i", pa.array([0, 1, 1, 0], pa.int32()), "classification"),
    ("b", pa.array([True, False, True, True]), "classification"),
    ("s", pa.array(["a", "b", "a", "a"]), "classification"),
    ("f", pa.array([0.5, 1.5, 2.0, 3.0]), "regression"),
])
def test_task_auto_follows_the_label_type(label: str, values: pa.Array, task: str) -> None:
    table = pa.table({label: values, "prediction": values})
    got = evaluate({"label": label}, [table])
    if task == "classification":
        assert got["accuracy"] == 1.0 and "rmse" not in got
    else:
        assert got["rmse"] == 0.0 and "accuracy" not in got


def test_task_override_classifies_a_float_label() -> None:
    values = pa.array([0.0, 1.0, 1.0, 2.0])
    table = pa.table({"y": values, "prediction": pa.array([0.0, 1.0, 2.0, 2.0])})
    got = evaluate({"label": "y", "task": "classification", "metrics": ["accuracy"]}, [table])
    assert got["accuracy"] == 0.75


def test_default_metrics_follow_the_probability_column() -> None:
    table = binary_table(100).drop_columns(["probability"])
    got = evaluate({"label": "churned"}, [table])
    assert "log_loss" not in got and "roc_auc" not in got and "f1" in got
    with pytest.raises(SchemaError, match="'probability'") as info:
        Evaluate(label="churned", metrics=["roc_auc"]).output_schema(table.schema)
    assert "probability" in info.value.hint


def test_probability_column_named_by_param() -> None:
    table = binary_table(100).rename_columns(["id", "churned", "prediction", "p_yes", "w"])
    got = evaluate({"label": "churned", "probability": "p_yes", "metrics": ["log_loss"]},
                   [table])
    assert got["log_loss"] == pytest.approx(
        log_loss(column(table, "churned"), y_proba=column(table, "p_yes")), rel=1e-12)


# --------------------------------------------------------------------------- errors


def test_a_probability_that_is_not_one_says_how_and_where() -> None:
    """The checks calibrate makes of a probability column (one reading of it, one set of
    messages): nulls, NaN or values outside [0, 1] counted with the first, lists of
    unequal lengths, nulls inside lists."""
    table = binary_table(100)
    values = column(table, "probability").copy()
    values[[3, 7]] = [1.5, np.nan]
    bad = table.set_column(table.schema.get_field_index("probability"), "probability",
                           pa.array(values))
    with pytest.raises(DataError, match=r"'probability' has 2 values that are NaN or outside "
                                        r"\[0, 1\] \(first: 1.5\)") as info:
        evaluate({"label": "churned"}, [bad])
    assert info.value.hint == "is it a probability (not a logit or score)?"
    lists = multiclass_table(30)
    at = lists.schema.get_field_index("probability")
    rows = lists.column("probability").to_pylist()
    for change, message in ((lambda r: r[:2], "has lists of 2 and of 4 values"),
                            (lambda r: [None, *r[1:]], "has 1 null values in its lists")):
        changed = [change(r) if i == 5 else r for i, r in enumerate(rows)]
        broken = lists.set_column(at, "probability", pa.array(
            changed, lists.schema.field(at).type))
        with pytest.raises(DataError, match=message):
            evaluate({"label": lists.column_names[1]}, [broken])


def test_nulls_in_a_probability_say_to_drop_or_fill_them() -> None:
    """A null probability is no logit or score: the hint says what to do with it (it
    was "is it a probability (not a logit or score)?")."""
    table = binary_table(100)
    values = column(table, "probability").tolist()
    values[4] = None
    bad = table.set_column(table.schema.get_field_index("probability"), "probability",
                           pa.array(values))
    with pytest.raises(DataError, match="probability column 'probability' has 1 null "
                                        "values") as info:
        evaluate({"label": "churned"}, [bad])
    assert info.value.hint == "drop or fill rows with a null 'probability' before evaluate"


def test_unknown_metric_is_a_param_error_with_a_suggestion() -> None:
    with pytest.raises(ParamError, match="did you mean 'accuracy'"):
        Evaluate(label="churned", metrics=["acuracy"])
    with pytest.raises(ParamError, match="'rmse' is not a classification metric"):
        Evaluate(label="churned", metrics=["rmse"]).output_schema(binary_table(10).schema)


@pytest.mark.parametrize(("params", "error", "match"), [
    ({"label": "nope"}, SchemaError, "'nope'"),
    ({"label": "churned", "metrics": []}, ParamError, "empty"),
    ({"label": "churned", "prediction": "id2"}, SchemaError, "'id2'"),
    ({"label": "churned", "weight": "wt"}, SchemaError, "'wt'"),
    ({"label": "churned", "classes": ["a", "b"]}, ParamError, "label type"),
    ({"label": "churned", "classes": [0, 1, 2]}, SchemaError, "one number per row"),
    ({"label": "w", "classes": [0, 1]}, ParamError, "task: classification"),
    ({"label": "churned", "probability": "id", "metrics": ["log_loss"]}, SchemaError, "int64"),
])
def test_plan_time_errors(params: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        Evaluate(**params).output_schema(binary_table(10).schema)
    assert info.value.hint


def test_label_with_nulls_is_a_data_error_naming_the_column() -> None:
    table = binary_table(50)
    labels = pa.array(column(table, "churned"), mask=np.arange(50) == 7)
    table = table.set_column(1, "churned", labels)
    with pytest.raises(DataError, match="label column 'churned' has 1 null") as info:
        evaluate({"label": "churned"}, [table])
    assert info.value.hint


@pytest.mark.parametrize(("name", "values", "match"), [
    ("probability", [1.5] + [0.5] * 49, "outside"),
    ("w", [-1.0] + [1.0] * 49, "negative"),
])
def test_bad_probability_or_weight_is_a_data_error(name: str, values: list, match: str) -> None:
    table = binary_table(50)
    table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    with pytest.raises(DataError, match=match):
        evaluate({"label": "churned", "weight": "w"}, [table])


def test_nan_regression_label_is_a_data_error() -> None:
    table = regression_table(20)
    y = column(table, "charges").copy()
    y[3] = np.nan
    table = table.set_column(0, "charges", pa.array(y))
    with pytest.raises(DataError, match="'charges' has NaN"):
        evaluate({"label": "charges"}, [table])


def test_empty_input_is_a_data_error() -> None:
    empty = binary_table(10).schema.empty_table()
    with pytest.raises(DataError, match="no rows") as info:
        evaluate({"label": "churned"}, [empty, empty])
    assert info.value.hint


# --------------------------------------------------------------------------- end to end


def test_a_pipeline_run_records_the_metrics(workdir: Path) -> None:
    from pipelines.runner import run

    table = binary_table(600)
    (workdir / "scored").mkdir()
    for i, piece in enumerate(split(table, 3)):
        pq.write_table(piece, workdir / "scored" / f"part-{i}.parquet")
    path = workdir / "eval.yaml"
    path.write_text(textwrap.dedent("""
        pipeline: churn_eval
        steps:
          - op: read_parquet
            path: scored
          - id: quality
            op: evaluate
            label: churned
            metrics: [accuracy, roc_auc]
        """))
    record = run(path)
    metrics = record["metrics"]["quality"]
    y, pred, proba = (column(table, c) for c in ("churned", "prediction", "probability"))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), rel=1e-12)
    assert abs(metrics["roc_auc"] - roc_auc_score(y, proba)) <= AUC_TOL


# --------------------------------------------------------------------------- by groups


def with_segments(table: pa.Table, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = table.num_rows
    segment = np.array(["east", "north", "south"])[rng.integers(0, 3, n)]
    return table.append_column("segment", pa.array(segment, mask=rng.random(n) < 0.05)) \
        .append_column("flag", pa.array(rng.random(n) < 0.4))


@pytest.mark.parametrize("weighted", [False, True])
def test_by_gives_each_group_the_metrics_of_its_rows_on_every_partitioning(
        weighted: bool) -> None:
    table = with_segments(binary_table(1500))
    params = {"label": "churned", "by": ["segment", "flag"],
              **({"weight": "w"} if weighted else {})}
    results = {how: evaluate(params, parts)
               for how, parts in partitionings(table, "churned").items()}
    got = results["one"]
    for other in results.values():
        assert other.keys() == got.keys() and other["groups"].keys() == got["groups"].keys()
        assert_same_metrics({k: v for k, v in other.items() if k != "groups"},
                            {k: v for k, v in got.items() if k != "groups"})
        for label, metrics in got["groups"].items():
            assert_same_metrics(other["groups"][label], metrics)
    overall = evaluate({k: v for k, v in params.items() if k != "by"}, [table])
    assert_same_metrics({k: v for k, v in got.items() if k != "groups"}, overall)
    segments, flags = table["segment"].to_pylist(), table["flag"].to_pylist()
    expected = sorted({(s, f) for s, f in zip(segments, flags)},
                      key=lambda k: (k[0] is None, k[0] or "", k[1]))
    assert list(got["groups"]) == [f"segment={'null' if s is None else s},flag={str(f).lower()}"
                                   for s, f in expected]
    for s, f in expected:
        mask = np.array([a == s and b == f for a, b in zip(segments, flags)])
        rows = table.filter(pa.array(mask))
        label = f"segment={'null' if s is None else s},flag={str(f).lower()}"
        assert_same_metrics(got["groups"][label], evaluate(
            {**{k: v for k, v in params.items() if k != "by"}, "classes": [0, 1]}, [rows]))
        y, pred = column(rows, "churned"), column(rows, "prediction")
        w = column(rows, "w") if weighted else None
        assert got["groups"][label]["accuracy"] == pytest.approx(
            accuracy_score(y, pred, sample_weight=w), rel=1e-12)
    assert sum(g["count"] for g in got["groups"].values()) == 1500


def test_by_groups_keep_every_class_of_the_rows() -> None:
    """A group that lacks a class still reports it: its confusion matrix is k x k in the
    classes of all the rows."""
    table = multiclass_table(1200)
    plans = table["plan"].to_pylist()
    # 'early' holds the first 300 rows (sorted labels: basic and some plus only), predicted
    # right: neither its labels nor its predictions name pro or team
    predicted = plans[:300] + table["prediction"].to_pylist()[300:]
    table = table.set_column(1, "prediction", pa.array(predicted)).append_column(
        "cohort", pa.array(["early" if i < 300 else "late" for i in range(len(plans))]))
    assert not {"pro", "team"} & set(plans[:300])
    got = evaluate({"label": "plan", "by": ["cohort"],
                    "metrics": ["accuracy", "confusion_matrix", "count"]}, split(table, 5))
    early = got["groups"]["cohort=early"]
    assert early["classes"] == got["classes"] == sorted(set(plans))
    rows = table.slice(0, 300)
    np.testing.assert_array_equal(early["confusion_matrix"], confusion_matrix(
        column(rows, "plan"), column(rows, "prediction"), labels=sorted(set(plans))))
    assert early["count"] == 300 and got["groups"]["cohort=late"]["count"] == 900


def test_by_a_null_and_the_text_null_are_two_groups() -> None:
    table = binary_table(200).append_column("tag", pa.array(
        [None if i % 3 == 0 else "null" if i % 3 == 1 else "x" for i in range(200)]))
    got = evaluate({"label": "churned", "by": ["tag"], "metrics": ["count"]}, split(table, 3))
    assert list(got["groups"].items()) == [("tag='null'", {"count": 67}),
                                           ("tag=x", {"count": 66}), ("tag=null", {"count": 67})]


def test_by_on_a_regression() -> None:
    table = regression_table(900)
    table = table.append_column("day", pa.array(np.arange(900) % 3, pa.int32()))
    got = evaluate({"label": "charges", "by": ["day"], "metrics": ["rmse", "count"]},
                   split(table, 4, seed=2))
    assert list(got["groups"]) == ["day=0", "day=1", "day=2"]
    for day in range(3):
        rows = table.filter(pa.array(np.arange(900) % 3 == day))
        assert got["groups"][f"day={day}"]["rmse"] == pytest.approx(math.sqrt(
            mean_squared_error(column(rows, "charges"), column(rows, "prediction"))), rel=1e-12)


def test_by_errors() -> None:
    table = with_segments(binary_table(300)).append_column("id_str", pa.array(
        [str(i) for i in range(300)]))
    with pytest.raises(DataError, match="evaluate by id_str: more than 100 groups") as info:
        evaluate({"label": "churned", "by": ["id_str"], "max_groups": 100}, split(table, 3))
    assert "raise max_groups" in str(info.value)
    with pytest.raises(SchemaError, match="by column 'w' is double: groups need distinct"):
        Evaluate(label="churned", by=["w"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="by column 'segmnt' not in the input; did you mean "
                                          "'segment'"):
        Evaluate(label="churned", by=["segmnt"]).output_schema(table.schema)
    with pytest.raises(ParamError, match="'segment' is listed twice in `by`"):
        Evaluate(label="churned", by=["segment", "segment"])


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("weighted", [False, True])
def test_thresholds_are_scikit_learns_roc_and_precision_recall_curves(weighted: bool) -> None:
    """Scores on the bins' grid (k / 2**16, 60 distinct values): every threshold listed,
    and its tpr, fpr and precision are roc_curve's and precision_recall_curve's at it;
    the best F1 is the highest over them; the same on every partitioning."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(5)
    rows = 3000
    y = rng.random(rows) < 0.3
    grid = rng.integers(0, 60, rows) * 1000 + np.where(y, 3000, 0)
    proba = np.clip(grid, 0, 65536) / 2 ** 16
    w = rng.integers(1, 4, rows).astype(float)
    table = pa.table({"churned": pa.array(y.astype(np.int64)),
                      "prediction": pa.array((proba > 0.5).astype(np.int64)),
                      "probability": proba, "w": w})
    params = {"label": "churned", "metrics": ["thresholds", "roc_auc"],
              **({"weight": "w"} if weighted else {})}
    sample = w if weighted else None
    results = {how: evaluate(params, parts)
               for how, parts in partitionings(table, "churned").items()}
    got = results["one"]["thresholds"]
    for other in results.values():
        assert other["thresholds"] == got
    fpr, tpr, at = roc_curve(y, proba, sample_weight=sample, drop_intermediate=False)
    curve = {t: (f, r) for f, r, t in zip(fpr, tpr, at, strict=True)}
    assert len(got["threshold"]) == len(np.unique(proba)) <= 100
    assert got["threshold"] == sorted(got["threshold"], reverse=True)
    for t, f, r in zip(got["threshold"], got["fpr"], got["tpr"], strict=True):
        assert (f, r) == pytest.approx(curve[t], rel=1e-12)
    precision, recall, at = precision_recall_curve(y, proba, sample_weight=sample)
    by_threshold = dict(zip(at, precision[:-1], strict=True))
    for t, p in zip(got["threshold"], got["precision"], strict=True):
        assert p == pytest.approx(by_threshold[t], rel=1e-12)
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1])
    best = got["best_f1"]
    assert best["f1"] == pytest.approx(f1.max(), rel=1e-12)
    assert best["threshold"] == max(t for t, v in zip(at, f1, strict=True)
                                    if v == pytest.approx(f1.max(), rel=1e-12))
    assert got["tpr"][-1] == got["fpr"][-1] == 1.0


def test_thresholds_of_many_scores_are_a_hundred_points_and_not_of_three_classes() -> None:
    table = binary_table(5000)
    got = evaluate({"label": "churned", "metrics": ["thresholds"]}, split(table, 3))
    curve = got["thresholds"]
    assert len(curve["threshold"]) == 100 and curve["tpr"][-1] == 1.0
    assert all(np.diff(curve["tpr"]) >= 0) and all(np.diff(curve["fpr"]) >= 0)
    assert 0 < curve["best_f1"]["f1"] <= 1
    three = multiclass_table(600)
    with pytest.raises(DataError, match="thresholds are of two classes' scores, and the "
                                        "label has 4"):
        evaluate({"label": "plan", "metrics": ["thresholds"]}, [three])


def test_best_f1_threshold_given_to_score_cuts_as_the_curve_counted() -> None:
    """Probabilities of a tree's leaves (0.1, 0.3, 0.7: off the bins' grid), the best F1
    at the 0.3 leaf: score's rule (the second class where the probability is at least
    the threshold) at best_f1's threshold gives best_f1's precision and recall. A score
    went to the nearest grid point, 0.3 to 0.3000031, which is above 0.3: the leaf's
    rows counted positive in the curve were negative when cut there."""
    rng = np.random.default_rng(0)
    leaf = rng.choice([0.1, 0.3, 0.7], 2000)
    y = rng.random(2000) < np.where(leaf == 0.3, 0.6, leaf)
    table = pa.table({"churned": pa.array(y.astype(np.int64)),
                      "prediction": pa.array((leaf > 0.5).astype(np.int64)),
                      "probability": leaf})
    best = evaluate({"label": "churned", "metrics": ["thresholds"]},
                    split(table, 2))["thresholds"]["best_f1"]
    cut = leaf >= best["threshold"]
    assert 0.1 < best["threshold"] <= 0.3
    assert best["precision"] == pytest.approx(precision_score(y, cut), rel=1e-12)
    assert best["recall"] == pytest.approx(recall_score(y, cut), rel=1e-12)
    assert best["f1"] == pytest.approx(f1_score(y, cut), rel=1e-12)
