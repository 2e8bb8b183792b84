"""logistic_regression against scikit-learn, over in-memory partitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.metrics import accuracy_score, log_loss

from operators.arrays import get_namespace
from operators.base import DataError, SchemaError, drive, tree_reduce
from operators.hashing import hash_rows, unit_interval
from operators.models.common import ConvergenceWarning
from operators.models.logistic import LogisticRegression, LogisticRegressionFitted
from operators.testing.kit import fit, roundtrip, split

NUMPY = get_namespace("numpy")
pytestmark = pytest.mark.filterwarnings("error::operators.models.common.ConvergenceWarning")
SOLVERS = ["newton", "lbfgs"]


def fit_state(estimator: LogisticRegression, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[LogisticRegressionFitted, dict[str, Any]]:
    """The fitted model and the run-record metrics."""

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), estimator.metrics(state)


def standardised(X: np.ndarray) -> np.ndarray:
    return (X - X.mean(axis=0)) / X.std(axis=0)


def table_of(X: np.ndarray, y: Any, **extra: Any) -> pa.Table:
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y, **extra})


def probabilities(model: LogisticRegressionFitted, table: pa.Table, xp: Any = NUMPY
                  ) -> np.ndarray:
    column = model.transform(table, xp).column("probability").combine_chunks()
    if pa.types.is_list(column.type):
        return np.asarray(column.to_pylist())
    return column.to_numpy()


def reference(X: np.ndarray, y: np.ndarray, l2: float, weight: np.ndarray | None = None,
              fit_intercept: bool = True) -> SkLogisticRegression:
    n = len(y) if weight is None else weight.sum()
    C = np.inf if l2 == 0 else 1.0 / (l2 * n)
    return SkLogisticRegression(C=C, tol=1e-12, max_iter=20000,
                                fit_intercept=fit_intercept).fit(X, y, sample_weight=weight)


def assert_matches(model: LogisticRegressionFitted, sk: SkLogisticRegression, X: np.ndarray,
                   table: pa.Table) -> None:
    expected = sk.predict_proba(X)
    got = probabilities(model, table)
    np.testing.assert_allclose(got, expected[:, 1] if expected.shape[1] == 2 else expected,
                               atol=1e-4)
    coef, intercept = sk.coef_, np.atleast_1d(sk.intercept_).astype(float)
    if coef.shape[0] > 1:  # the softmax is unchanged by a shift of every class
        intercept = intercept - intercept.mean()
    np.testing.assert_allclose(model.coef, coef, atol=1e-4 * max(1.0, np.abs(coef).max()))
    np.testing.assert_allclose(model.intercept, intercept, atol=1e-4)
    predicted = model.transform(table, NUMPY).column("prediction").to_numpy(
        zero_copy_only=False)
    assert (predicted == sk.predict(X)).mean() > 0.99


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, pa.Table]:
    X, y = load_breast_cancer(return_X_y=True)
    X = standardised(X)
    return X, y, table_of(X, y)


def synthetic(n: int = 600, classes: int = 2, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping classes (a finite unpenalised optimum) and row weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)) * np.array([1.0, 3.0, 0.5, 1.0]) + 0.5
    logits = X @ rng.standard_normal((4, classes)) + rng.gumbel(size=(n, classes))
    return X, np.argmax(logits, axis=1), rng.uniform(0.2, 3.0, n)


@pytest.mark.parametrize("solver", SOLVERS)
def test_breast_cancer_matches_scikit_learn(cancer, solver: str) -> None:
    X, y, table = cancer
    model, metrics = fit_state(LogisticRegression(label="y", l2=1e-3, solver=solver),
                               split(table, 7, seed=1))
    assert metrics["converged"] and metrics["solver"] == solver
    assert_matches(model, reference(X, y, 1e-3), X, table)
    assert model.classes == [0, 1]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_weighted_binary_matches_scikit_learn(solver: str, l2: float) -> None:
    X, y, w = synthetic()
    table = table_of(X, y, w=w)
    model = fit(LogisticRegression(label="y", weight="w", l2=l2, solver=solver),
                split(table, 4, seed=2))
    assert model.features == ["x0", "x1", "x2", "x3"]
    assert_matches(model, reference(X, y, l2, w), X, table)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dataset", ["iris", "wine"])
def test_multiclass_matches_scikit_learn(solver: str, dataset: str) -> None:
    X, y = (load_iris if dataset == "iris" else load_wine)(return_X_y=True)
    X = standardised(X)
    table = table_of(X, y)
    model, metrics = fit_state(LogisticRegression(label="y", l2=0.01, solver=solver),
                               split(table, 5, seed=3))
    assert metrics["converged"]
    assert_matches(model, reference(X, y, 0.01), X, table)
    assert model.transform(table, NUMPY).schema.field("probability").type == pa.list_(
        pa.float64())


@pytest.mark.parametrize("solver", SOLVERS)
def test_unpenalised_weighted_multiclass_without_intercept(solver: str) -> None:
    X, y, w = synthetic(classes=4, seed=4)
    table = table_of(X, y, w=w)
    model = fit(LogisticRegression(label="y", weight="w", solver=solver, fit_intercept=False),
                split(table, 3))
    sk = reference(X, y, 0.0, w, fit_intercept=False)
    sk.coef_ = sk.coef_ - sk.coef_.mean(axis=0)  # unpenalised: only differences identified
    assert_matches(model, sk, X, table)
    np.testing.assert_array_equal(model.intercept, 0.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_string_labels(solver: str) -> None:
    X, y, _ = synthetic(classes=3, seed=5)
    names = np.array(["cherry", "apple", "banana"])[y]
    table = table_of(X, pa.array(names, pa.large_string()))
    model = fit(LogisticRegression(label="y", l2=0.01, solver=solver), split(table, 3))
    assert model.classes == ["apple", "banana", "cherry"]
    out = model.transform(table.drop_columns(["y"]), NUMPY)
    assert out.schema.field("prediction").type == pa.large_string()
    sk = reference(X, names, 0.01)
    assert list(sk.classes_) == model.classes
    assert_matches(model, sk, X, table)
    assert out.column("prediction").to_pylist() == list(sk.predict(X))


def test_binary_string_and_boolean_labels() -> None:
    X, y, _ = synthetic(seed=6)
    names = np.array(["stay", "churn"])[y]
    model = fit(LogisticRegression(label="y", l2=0.01), [table_of(X, names)])
    assert model.classes == ["churn", "stay"]  # sorted; probability is P("stay")
    sk = reference(X, names, 0.01)
    np.testing.assert_allclose(probabilities(model, table_of(X, names)),
                               sk.predict_proba(X)[:, 1], atol=1e-4)
    flags = table_of(X, pa.array(y.astype(bool)))
    estimator = LogisticRegression(label="y", l2=0.01)
    boolean = fit(estimator, [flags])
    assert boolean.classes == [False, True]
    out = boolean.transform(flags, NUMPY)
    assert out.schema == estimator.output_schema(flags.schema)  # binary: known at plan time
    assert out.schema.field("prediction").type == pa.bool_()
    np.testing.assert_allclose(boolean.coef, model.coef * -1, rtol=1e-8)  # classes swapped


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("classes", [2, 3])
def test_partition_invariance(solver: str, classes: int) -> None:
    X, y, w = synthetic(classes=classes, seed=7)
    table = table_of(X, y, w=w)
    # L-BFGS's answer is only as exact as its tolerance: tighten it to compare at 1e-8
    tight = {"tol": 1e-10, "max_iter": 1000} if solver == "lbfgs" else {}
    estimator = LogisticRegression(label="y", weight="w", l2=1e-3, solver=solver, **tight)
    one = fit(estimator, [table])
    for parts in (split(table, 7, seed=9), [table[:0], *split(table, 3), table[:0]]):
        many = fit(estimator, parts)
        np.testing.assert_allclose(many.coef, one.coef, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(many.intercept, one.intercept, rtol=1e-8, atol=1e-10)


def test_solvers_agree() -> None:
    X, y, w = synthetic(classes=3, seed=8)
    table = table_of(X, y, w=w)
    newton = fit(LogisticRegression(label="y", weight="w", l2=1e-3, solver="newton"), [table])
    lbfgs = fit(LogisticRegression(label="y", weight="w", l2=1e-3, solver="lbfgs"), [table])
    np.testing.assert_allclose(lbfgs.coef, newton.coef, rtol=1e-6, atol=1e-7)


def test_auto_solver_picks_by_size() -> None:
    X, y, _ = synthetic(seed=9)
    small = fit_state(LogisticRegression(label="y"), [table_of(X, y)])[1]
    assert small["solver"] == "newton"
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((300, 60))
    labels = rng.integers(0, 10, 300)  # 10 x 61 coefficients
    metrics = fit_state(LogisticRegression(label="y", l2=0.1), [table_of(wide, labels)])[1]
    assert metrics["solver"] == "lbfgs"


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_convergence_is_warned_and_recorded(cancer, solver: str) -> None:
    *_, table = cancer
    # one iteration said as one ('after 1 iteration', not '1 iterations')
    with pytest.warns(ConvergenceWarning, match=r"did not converge: .* after 1 iteration \("):
        _, metrics = fit_state(LogisticRegression(label="y", max_iter=1, solver=solver),
                               [table])
    assert metrics["converged"] is False
    assert metrics["iterations"] == 1
    assert metrics["gradient_norm"] > 1e-8 * metrics["initial_gradient_norm"]
    assert "max_iter" in metrics["stop_reason"]


@pytest.mark.parametrize(("l2", "advice"), [(0.0, "or set l2 > 0"), (0.1, "or raise l2")])
def test_non_convergence_advice_fits_the_penalty(cancer, l2: float, advice: str) -> None:
    """A fit that has a penalty is not told to set one: a user of l2=0.1 who reads `set
    l2 > 0` looks for a setting that is already there."""
    *_, table = cancer
    with pytest.warns(ConvergenceWarning) as said:
        fit_state(LogisticRegression(label="y", max_iter=1, l2=l2), [table])
    message = str(said[0].message)
    assert message.endswith(f"standardise the features (op: standard_scale) {advice}"), message


def test_validation_metrics_on_held_out_rows() -> None:
    X, y, w = synthetic(n=800, classes=3, seed=10)
    table = table_of(X, y, w=w)
    estimator = LogisticRegression(label="y", weight="w", l2=0.01, validation_fraction=0.25,
                                   seed=4)
    model, metrics = fit_state(estimator, split(table, 5, seed=1))
    held = unit_interval(hash_rows(table, None, 4)) < 0.25
    assert metrics["validation_rows"] == held.sum() > 0
    assert metrics["training_rows"] == (~held).sum()
    sk = reference(X[~held], y[~held], 0.01, w[~held])
    assert_matches(model, sk, X, table)
    validation = metrics["validation"]
    proba = sk.predict_proba(X[held])
    assert validation["count"] == held.sum()
    assert validation["accuracy"] == pytest.approx(
        accuracy_score(y[held], sk.predict(X[held]), sample_weight=w[held]), abs=1e-9)
    assert validation["log_loss"] == pytest.approx(
        log_loss(y[held], proba, sample_weight=w[held]), rel=1e-4)


def test_strict_namespace_gives_the_same_model() -> None:
    X, y, w = synthetic(classes=3, seed=11)
    table = table_of(X, y, w=w)
    strict = get_namespace("array_api_strict")
    for solver in SOLVERS:
        estimator = LogisticRegression(label="y", weight="w", l2=0.01, solver=solver)
        expected = fit(estimator, split(table, 3))
        got = fit(estimator, split(table, 3), strict)
        np.testing.assert_allclose(got.coef, expected.coef, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(probabilities(got, table, strict),
                                   probabilities(expected, table), rtol=1e-10)


def test_scoring_needs_only_the_features_and_round_trips(cancer) -> None:
    _, _, table = cancer
    model = fit(LogisticRegression(label="y", features=["x3", "x0"], l2=0.01), [table])
    scoring = table.select(["x0", "x5", "x3"])
    assert model.input_columns(scoring.schema) == ["x3", "x0"]
    out = roundtrip(model).transform(scoring, NUMPY)
    assert out.column_names == ["x0", "x5", "x3", "prediction", "probability"]
    assert out.schema == model.output_schema(scoring.schema)
    assert out.schema.field("prediction").type == pa.int64()
    np.testing.assert_array_equal(probabilities(model, table), out.column("probability"))


def test_empty_partitions_add_nothing_to_a_multiclass_fit() -> None:
    X, y, _ = synthetic(classes=3, seed=12)
    table = table_of(X, y)
    estimator = LogisticRegression(label="y", l2=0.01)
    whole = fit(estimator, [table])
    padded = fit(estimator, [table[:0], table, table[:0]])
    np.testing.assert_allclose(padded.coef, whole.coef, rtol=1e-12)
    out = whole.transform(table[:0], NUMPY)
    assert out.num_rows == 0 and out.schema == whole.output_schema(table.schema)


# --------------------------------------------------------------------------- bad input


def _small(**overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {"x": [0.5, 2.0, 3.0, 1.0, 2.5, 0.0],
                               "y": pa.array([0, 1, 1, 0, 0, 1])}
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(("table", "params", "match", "hint"), [
    (_small(y=pa.array([1, 1, 1, 1, 1, 1])), {}, "single class", "two classes"),
    (_small(y=pa.array([0, None, 1, 0, 1, 1])), {}, "label column 'y' has 1 null",
     'filter: "y is not null"'),
    (_small(x=[0.5, float("nan"), 3.0, 1.0, 2.5, 0.0]), {}, "feature column 'x' has 1 NaN",
     "impute"),
    (_small(x=pa.array([0.5, None, 3.0, 1.0, 2.5, 0.0])), {}, "feature column 'x' has 1 null",
     "filter"),
    (_small()[:0], {}, "no training rows", "filter"),
    (_small(), {"validation_fraction": 0.99999}, "held out", "validation_fraction"),
])
def test_bad_data_is_a_data_error(table: pa.Table, params: dict[str, Any], match: str,
                                  hint: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        fit(LogisticRegression(label="y", **params), split(table, 2))
    assert hint in (info.value.hint or "")


@pytest.mark.parametrize(("params", "table", "match", "hint"), [
    ({}, _small(y=[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]), "label column 'y' is double", "cast"),
    ({"features": ["x", "s"]}, _small(s=list("abcdef")), "feature column 's' is string",
     "hash_encode"),
    ({}, _small(s=list("abcdef")).drop_columns(["x"]), "no numeric feature", "one_hot"),
])
def test_plan_time_errors(params: dict[str, Any], table: pa.Table, match: str,
                          hint: str) -> None:
    estimator = LogisticRegression(label="y", **params)
    with pytest.raises(SchemaError, match=match) as info:
        estimator.output_schema(table.schema)
    assert hint in (info.value.hint or "")
