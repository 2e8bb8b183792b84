"""linear_regression against scikit-learn and numpy, over in-memory partitions."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression as SkLinearRegression
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.hashing import hash_rows, unit_interval
from operators.models.common import ConditioningWarning
from operators.models.linear import LinearRegression, LinearRegressionFitted
from operators.testing.kit import fit, roundtrip, split

NUMPY = get_namespace("numpy")


def fit_state(estimator: LinearRegression, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[LinearRegressionFitted, dict[str, Any]]:
    """The fitted model and the run-record metrics."""

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), estimator.metrics(state)


def table_of(X: np.ndarray, y: np.ndarray, **extra: Any) -> pa.Table:
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    return pa.table({**columns, "y": y, **extra})


def predictions(model: LinearRegressionFitted, table: pa.Table, xp: Any = NUMPY) -> np.ndarray:
    return model.transform(table, xp).column("prediction").to_numpy()


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, pa.Table]:
    X, y = load_diabetes(return_X_y=True)
    return X, y, table_of(X, y)


@pytest.fixture(scope="module")
def weighted() -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Table]:
    """Features on very different scales (float, int, bool) and row weights."""
    rng = np.random.default_rng(7)
    n = 400
    X = np.column_stack([rng.standard_normal(n) * 1e3, rng.integers(0, 10, n),
                         rng.random(n) < 0.3, rng.standard_normal(n) * 1e-3])
    y = X @ np.array([2e-3, -0.5, 1.5, 300.0]) + 4.0 + rng.standard_normal(n)
    w = rng.uniform(0.1, 5.0, n)
    table = pa.table({"a": X[:, 0], "b": pa.array(X[:, 1].astype(np.int16)),
                      "c": pa.array(X[:, 2].astype(bool)), "d": X[:, 3], "y": y, "w": w})
    return X, y, w, table


def test_ols_matches_scikit_learn(diabetes) -> None:
    X, y, table = diabetes
    model = fit(LinearRegression(label="y"), split(table, 7, seed=1))
    reference = SkLinearRegression().fit(X, y)
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=1e-8)
    assert model.intercept == pytest.approx(reference.intercept_, rel=1e-10)
    np.testing.assert_allclose(predictions(model, table), reference.predict(X), atol=1e-4)


@pytest.mark.parametrize("l2", [1e-3, 0.1, 10.0])
def test_ridge_matches_scikit_learn(diabetes, l2: float) -> None:
    X, y, table = diabetes
    model = fit(LinearRegression(label="y", l2=l2), split(table, 3))
    reference = Ridge(alpha=l2 * len(y)).fit(X, y)
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(predictions(model, table), reference.predict(X), atol=1e-4)


@pytest.mark.parametrize(("l2", "fit_intercept"), [(0.0, True), (0.05, True), (0.05, False),
                                                   (0.0, False)])
def test_weighted_matches_scikit_learn(weighted, l2: float, fit_intercept: bool) -> None:
    X, y, w, table = weighted
    estimator = LinearRegression(label="y", weight="w", l2=l2, fit_intercept=fit_intercept)
    model, metrics = fit_state(estimator, split(table, 5, seed=3))
    assert model.features == ["a", "b", "c", "d"]  # the weight is not a feature
    if l2 == 0:
        reference = SkLinearRegression(fit_intercept=fit_intercept)
    else:
        reference = Ridge(alpha=l2 * w.sum(), fit_intercept=fit_intercept)
    reference.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=1e-7)
    np.testing.assert_allclose(predictions(model, table), reference.predict(X), atol=1e-4)
    # scales 1e3 .. 1e-3 are not mistaken for a singular design
    assert metrics["rank"] == 4 and not metrics["rank_deficient"]
    assert "warning" not in metrics
    if l2 == 0 and fit_intercept:
        fitted = reference.predict(X)
        mse = np.average((y - fitted) ** 2, weights=w)
        assert metrics["training_rmse"] == pytest.approx(np.sqrt(mse), rel=1e-8)
        assert metrics["training_r2"] == pytest.approx(
            r2_score(y, fitted, sample_weight=w), rel=1e-8)


def test_partition_invariance(weighted) -> None:
    *_, table = weighted
    estimator = LinearRegression(label="y", weight="w", l2=0.01)
    one = fit(estimator, [table])
    for parts in (split(table, 7, seed=5), [table.slice(0, 0), *split(table, 4), table[:0]]):
        many = fit(estimator, parts)
        np.testing.assert_allclose(many.coef, one.coef, rtol=1e-8, atol=1e-12)
        assert many.intercept == pytest.approx(one.intercept, rel=1e-8)


def test_rank_deficient_design_gets_the_minimum_norm_solution(diabetes) -> None:
    X, y, table = diabetes
    doubled = table.append_column("dup", table.column("x2")).append_column(
        "const", pa.array(np.full(len(y), 3.0)))
    with pytest.warns(ConditioningWarning, match="rank-deficient"):
        model, metrics = fit_state(LinearRegression(label="y"), split(doubled, 4))
    assert np.all(np.isfinite(model.coef))
    design = np.column_stack([X, X[:, 2], np.full(len(y), 3.0)])
    centred = design - design.mean(axis=0)
    expected, *_ = np.linalg.lstsq(centred, y - y.mean(), rcond=None)
    np.testing.assert_allclose(model.coef, expected, rtol=1e-7, atol=1e-9)
    # minimum norm: the duplicate pair shares the weight, the constant column gets none
    assert model.coef[2] == pytest.approx(model.coef[10], rel=1e-9)
    assert model.coef[11] == 0.0
    reference = SkLinearRegression().fit(X, y)
    np.testing.assert_allclose(predictions(model, doubled), reference.predict(X), atol=1e-4)
    assert metrics["rank"] == 10 and metrics["rank_deficient"]
    assert "minimum-norm" in metrics["warning"]
    assert metrics["condition_number"] == float("inf")


def test_rescaled_copy_gets_the_minimum_norm_split(diabetes) -> None:
    X, y, table = diabetes
    scaled = table.append_column("big", pa.array(X[:, 3] * 1000.0))
    with pytest.warns(ConditioningWarning):
        model = fit(LinearRegression(label="y", features=["x3", "big"]), [scaled])
    design = np.column_stack([X[:, 3], X[:, 3] * 1000.0])
    expected, *_ = np.linalg.lstsq(design - design.mean(axis=0), y - y.mean(), rcond=None)
    np.testing.assert_allclose(model.coef, expected, rtol=1e-7)
    assert model.coef[1] == pytest.approx(1000.0 * model.coef[0], rel=1e-7)


def test_duplicate_column_without_intercept_matches_lstsq(diabetes) -> None:
    X, y, table = diabetes
    doubled = table.append_column("dup", table.column("x0"))
    with pytest.warns(ConditioningWarning):
        model = fit(LinearRegression(label="y", fit_intercept=False), [doubled])
    expected, *_ = np.linalg.lstsq(np.column_stack([X, X[:, 0]]), y, rcond=None)
    np.testing.assert_allclose(model.coef, expected, rtol=1e-7, atol=1e-9)
    assert model.intercept == 0.0


def test_validation_metrics_on_held_out_rows(weighted) -> None:
    X, y, w, table = weighted
    estimator = LinearRegression(label="y", weight="w", validation_fraction=0.3, seed=11)
    assert estimator.multi_pass
    model, metrics = fit_state(estimator, split(table, 6, seed=2))
    held = unit_interval(hash_rows(table, None, 11)) < 0.3
    assert metrics["validation_rows"] == held.sum() and 0 < held.sum() < len(y)
    reference = SkLinearRegression().fit(X[~held], y[~held], sample_weight=w[~held])
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=1e-7)
    got, truth = reference.predict(X[held]), y[held]
    validation = metrics["validation"]
    assert validation["count"] == held.sum()
    assert validation["r2"] == pytest.approx(r2_score(truth, got, sample_weight=w[held]),
                                             rel=1e-6)
    assert validation["rmse"] == pytest.approx(
        np.sqrt(mean_squared_error(truth, got, sample_weight=w[held])), rel=1e-6)
    assert validation["mae"] == pytest.approx(
        mean_absolute_error(truth, got, sample_weight=w[held]), rel=1e-6)


def test_strict_namespace_gives_the_same_model(weighted) -> None:
    *_, table = weighted
    estimator = LinearRegression(label="y", weight="w", l2=0.1)
    strict = get_namespace("array_api_strict")
    expected = fit(estimator, split(table, 3))
    got = fit(estimator, split(table, 3), strict)
    np.testing.assert_allclose(got.coef, expected.coef, rtol=1e-12)
    np.testing.assert_allclose(predictions(got, table, strict), predictions(expected, table),
                               rtol=1e-12)


def test_scoring_output_and_round_trip(weighted) -> None:
    *_, table = weighted
    model = fit(LinearRegression(label="y", features=["a", "b"]), [table])
    scoring = table.select(["d", "b", "a"])  # no label; other columns pass through
    out = roundtrip(model).transform(scoring, NUMPY)
    assert out.column_names == ["d", "b", "a", "prediction"]
    assert out.schema.field("prediction").type == pa.float64()
    assert out.schema == model.output_schema(scoring.schema)
    assert model.input_columns(scoring.schema) == ["a", "b"]
    np.testing.assert_allclose(out.column("prediction").to_numpy(),
                               predictions(model, table), rtol=0)


# --------------------------------------------------------------------------- bad input


def _small(**overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {"x": [1.0, 2.0, 3.0, 4.0], "n": [1, 0, 2, 5],
                               "y": [1.0, 2.5, 2.0, 4.0], "w": [1.0, 1.0, 2.0, 1.0]}
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(("table", "params", "match", "hint"), [
    (_small(y=pa.array([1.0, None, 2.0, 3.0])), {}, "label column 'y' has 1 null",
     "y is not null"),
    (_small(x=[1.0, float("nan"), 2.0, 3.0]), {}, "feature column 'x' has 1 NaN", "impute"),
    (_small(x=[1.0, float("inf"), 2.0, 3.0]), {}, "feature column 'x' has 1 NaN", "filter"),
    (_small(n=pa.array([1, None, 2, 3])), {}, "feature column 'n' has 1 null", "impute"),
    (_small(w=[1.0, -1.0, 1.0, 1.0]), {"weight": "w"}, "weight column 'w'", ">= 0"),
    (_small(w=[0.0, 0.0, 0.0, 0.0]), {"weight": "w"}, "sum to zero", "positive weight"),
    (_small(y=[1.0, float("nan"), 2.0, 3.0]), {}, "label column 'y' has 1 NaN",
     "abs(y) < 1e308"),
])
def test_bad_data_is_a_data_error(table: pa.Table, params: dict[str, Any], match: str,
                                  hint: str) -> None:
    estimator = LinearRegression(label="y", **params)
    with pytest.raises(DataError, match=match) as info:
        fit(estimator, split(table, 2))
    assert hint in (info.value.hint or "")


@pytest.mark.parametrize("label", ["y", "y 2"])
def test_the_filter_a_bad_label_is_told_keeps_the_good_rows(label: str) -> None:
    """NaN is not null: the filter the hint gives leaves out the NaN and infinite labels
    (\"y is not null\", told before, kept them all) and the rows left fit; a null label's
    filter leaves out the nulls (the name quoted where it needs it)."""
    from operators.expressions import parse_filter

    table = _small().rename_columns(["x", "n", label, "w"])
    bad = table.set_column(2, label, pa.array([1.0, float("nan"), float("inf"), -float("inf")]))
    with pytest.raises(DataError, match="3 NaN or infinite") as info:
        fit(LinearRegression(label=label), [bad])
    told = re.search(r'filter: "(.+?)"', info.value.hint or "")
    assert told is not None, info.value.hint
    kept = bad.filter(parse_filter(told.group(1), bad.schema))
    assert kept.column(label).to_pylist() == [1.0]
    from operators.models.common import ConditioningWarning

    with pytest.warns(ConditioningWarning, match="rank-deficient"):  # one row: it fits
        fit(LinearRegression(label=label), [kept])
    nulls = table.set_column(2, label, pa.array([1.0, None, 2.0, None]))
    with pytest.raises(DataError, match="2 null values") as info:
        fit(LinearRegression(label=label), [nulls])
    told = re.search(r'filter: "(.+?)"', info.value.hint or "")
    assert told is not None, info.value.hint
    kept = nulls.filter(parse_filter(told.group(1), nulls.schema))
    assert kept.column(label).to_pylist() == [1.0, 2.0]


def test_empty_training_set() -> None:
    with pytest.raises(DataError, match="no training rows") as info:
        fit(LinearRegression(label="y"), [_small()[:0]])
    assert "filter" in info.value.hint
    # every row held out for validation
    with pytest.raises(DataError, match="held out") as info:
        fit(LinearRegression(label="y", validation_fraction=0.99999), [_small()])
    assert "validation_fraction" in info.value.hint


def test_scoring_rejects_nan_features() -> None:
    model = fit(LinearRegression(label="y"), [_small()])
    with pytest.raises(DataError, match="feature column 'x'"):
        model.transform(_small(x=[1.0, float("nan"), 2.0, 3.0]), NUMPY)


@pytest.mark.parametrize(("params", "table", "error", "match", "hint"), [
    ({"features": ["x", "s"]}, _small(s=["a", "b", "c", "d"]), SchemaError,
     "feature column 's' is string", "one_hot"),
    ({}, _small(y=["a", "b", "c", "d"]), SchemaError, "label column 'y' is string",
     "logistic_regression"),
    ({"features": ["x", "nope"]}, _small(), SchemaError, "'nope' not in the input", "input has"),
    ({"features": ["x", "y"]}, _small(), ParamError, "label column 'y' is also listed",
     "remove"),
    ({"weight": "s"}, _small(s=["a", "b", "c", "d"]), SchemaError, "weight column 's'", "cast"),
    # no numeric column but the label (features: [] is refused as the step is built)
    ({}, pa.table({"s": ["a", "b"], "y": [1.0, 2.0]}), SchemaError, "no numeric feature",
     "one_hot"),
])
def test_plan_time_errors(params: dict[str, Any], table: pa.Table, error: type, match: str,
                          hint: str) -> None:
    with pytest.raises(error, match=match) as info:  # a label among features: as it is built
        LinearRegression(label="y", **params).output_schema(table.schema)
    assert hint in (info.value.hint or "")


def test_default_features_skip_non_numeric_columns() -> None:
    table = _small(s=["a", "b", "c", "d"])
    estimator = LinearRegression(label="y", weight="w")
    assert estimator.input_columns(table.schema) == ["x", "n", "y", "w"]
    schema = estimator.output_schema(table.schema)
    assert schema.names == [*table.column_names, "prediction"]


def test_parameter_validation() -> None:
    with pytest.raises(ValidationError):
        LinearRegression(label="y", l2=-1.0)
    with pytest.raises(ValidationError):
        LinearRegression(label="y", validation_fraction=1.0)
    with pytest.raises(ValidationError):
        LinearRegression(label="y", bogus=1)


def test_well_conditioned_fit_does_not_warn(diabetes) -> None:
    _, _, table = diabetes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(LinearRegression(label="y"), [table])
