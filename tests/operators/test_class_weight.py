"""class_weight on every classifier: a factor on each class's rows' weights, the same as a
weight column that holds it; balanced makes every class weigh as much in all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from operators.arrays import get_namespace
from operators.base import DataError, ParamError
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import DecisionTree, RandomForest
from operators.models.logistic import LogisticRegression
from operators.models.mlp import MLP
from operators.testing.kit import fit, split

NUMPY = get_namespace("numpy")
# the MLP's few iterations: both sides of each comparison stop at the same one
pytestmark = pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")

MODELS = {
    "logistic_regression": (LogisticRegression, {"l2": 0.01}),
    "decision_tree": (DecisionTree, {"max_depth": 4}),
    # no bootstrap: its draws hash the rows, the weight column with them
    "random_forest": (RandomForest, {"n_trees": 4, "max_depth": 4, "seed": 1, "bootstrap": False}),
    "gradient_boosted_trees": (GradientBoostedTrees, {"n_trees": 5, "max_depth": 3}),
    "mlp": (MLP, {"hidden": [4], "solver": "lbfgs", "max_iter": 30}),
}


def imbalanced(rows: int = 600, classes: int = 2, seed: int = 0) -> pa.Table:
    """A rare class 1 (and 2): a score shifted per class, a noise feature."""
    rng = np.random.default_rng(seed)
    share = [0.8, 0.15, 0.05][:classes]
    y = rng.choice(classes, rows, p=np.array(share) / sum(share))
    return pa.table({"x1": rng.standard_normal(rows) + 1.2 * y,
                     "x2": rng.standard_normal(rows), "y": pa.array(y, pa.int64())})


def probabilities(estimator: Any, table: pa.Table) -> np.ndarray:
    model = fit(estimator, split(table, 3))
    out = model.transform(table, NUMPY).column("probability")
    return np.asarray(out.to_pylist(), dtype=float)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("classes", [2, 3])
def test_a_class_factor_is_a_weight_column_holding_it(name: str, classes: int) -> None:
    op, params = MODELS[name]
    table = imbalanced(classes=classes)
    y = table["y"].to_numpy()
    factors = {1: 4.0, 2: 2.5}
    weights = np.array([factors.get(int(c), 1.0) for c in y])
    by_factor = probabilities(op(label="y", features=["x1", "x2"], **params,
                                 class_weight={c: f for c, f in factors.items() if c < classes}),
                              table)
    by_column = probabilities(op(label="y", features=["x1", "x2"], weight="w", **params),
                              table.append_column("w", pa.array(weights)))
    np.testing.assert_allclose(by_factor, by_column, rtol=1e-9, atol=1e-12)
    plain = probabilities(op(label="y", features=["x1", "x2"], **params), table)
    assert not np.allclose(plain, by_factor, atol=1e-3)  # the factor mattered


@pytest.mark.parametrize("name", sorted(MODELS))
def test_balanced_weighs_each_class_as_much(name: str) -> None:
    op, params = MODELS[name]
    table = imbalanced(classes=3, seed=1)
    y = table["y"].to_numpy()
    counts = np.bincount(y)
    weights = len(y) / (len(counts) * counts[y])  # scikit-learn's balanced weights
    balanced = probabilities(op(label="y", features=["x1", "x2"], **params,
                                class_weight="balanced"), table)
    by_column = probabilities(op(label="y", features=["x1", "x2"], weight="w", **params),
                              table.append_column("w", pa.array(weights)))
    np.testing.assert_allclose(balanced, by_column, rtol=1e-6, atol=1e-9)


def test_balanced_logistic_regression_is_scikit_learns() -> None:
    table = imbalanced(2000, seed=2)
    X = np.c_[table["x1"].to_numpy(), table["x2"].to_numpy()]
    y = table["y"].to_numpy()
    l2 = 0.01
    ours = probabilities(LogisticRegression(label="y", l2=l2, class_weight="balanced", tol=1e-12),
                         table)[:, None]
    # mean weighted log-loss + l2/2 |w|^2, the weights summing to n: C = 1 / (l2 n)
    theirs = SkLogisticRegression(C=1 / (l2 * len(y)), class_weight="balanced", tol=1e-12,
                                  max_iter=1000).fit(X, y).predict_proba(X)[:, 1:]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8)
    recall = [((p[:, 0] > 0.5) & (y == 1)).sum() / (y == 1).sum()
              for p in (ours, probabilities(LogisticRegression(label="y", l2=l2), table)[:, None])]
    assert recall[0] > recall[1]  # the rare class is found more often


def test_class_weight_that_cannot_apply() -> None:
    table = imbalanced()
    with pytest.raises(DataError, match="class_weight names class 7, which label 'y' does not"):
        fit(LogisticRegression(label="y", class_weight={7: 2.0}), [table])
    numbers = table.set_column(2, "y", pa.array(table["y"].to_numpy().astype(float)))
    for op, params in MODELS.values():
        if op is LogisticRegression:
            continue
        with pytest.raises(ParamError, match="class_weight weighs classes"):
            op(label="y", class_weight="balanced", **params).output_schema(numbers.schema)
    with pytest.raises(ValidationError):
        LogisticRegression(label="y", class_weight={1: 0.0})
    with pytest.raises(ValidationError):
        LogisticRegression(label="y", class_weight="even")
    # classes named as text, as YAML may write them
    named = probabilities(LogisticRegression(label="y", class_weight={"1": 3.0}), table)
    numbered = probabilities(LogisticRegression(label="y", class_weight={1: 3.0}), table)
    np.testing.assert_array_equal(named, numbered)


@pytest.mark.parametrize("name", sorted(MODELS) + ["linear_regression"])
def test_weights_that_sum_to_zero_are_a_data_error_naming_the_column(name: str) -> None:
    from operators.models.linear import LinearRegression

    op, params = MODELS.get(name, (LinearRegression, {}))
    table = imbalanced(60).append_column("w", pa.array(np.zeros(60)))
    if name == "linear_regression":
        table = table.set_column(2, "y", pa.array(table["y"].to_numpy().astype(float)))
    with pytest.raises(DataError, match="the weights in column 'w' sum to zero") as info:
        fit(op(label="y", features=["x1", "x2"], weight="w", **params), split(table, 2))
    assert "give some training rows a positive weight" in str(info.value)
