"""Cases for linear_regression (least squares and the log links), logistic_regression,
kmeans and score (a bound logistic or kmeans model)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa

from operators.chain import Chain
from operators.models.kmeans import KMeans, KMeansFitted
from operators.models.logistic import LogisticRegression, LogisticRegressionFitted
from operators.testing.kit import case, fit, split


def regression_table(rows: int = 160, seed: int = 0) -> pa.Table:
    """Float, integer and boolean features, a string column (not a feature), weights."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal(rows)
    x2 = rng.integers(-3, 4, rows).astype(np.int32)
    x3 = rng.random(rows) < 0.4
    y = 1.5 * x1 - 0.7 * x2 + 2.0 * x3 + 0.3 + 0.5 * rng.standard_normal(rows)
    return pa.table({
        "x1": x1, "x2": pa.array(x2), "x3": pa.array(x3),
        "g": pa.array(np.array(["a", "b"])[rng.integers(0, 2, rows)]),
        "y": y, "w": rng.uniform(0.2, 3.0, rows),
    })


def count_table(rows: int = 160, seed: int = 4) -> pa.Table:
    """``regression_table``'s features with log-linear labels: a Poisson count ``n``, a
    gamma amount ``amount`` (positive) and a compound Poisson-gamma ``claims`` (zeros,
    then amounts)."""
    table = regression_table(rows, seed)
    rng = np.random.default_rng(seed + 100)
    x1, x2 = table.column("x1").to_numpy(), table.column("x2").to_numpy()
    mean = np.exp(0.4 * x1 - 0.15 * x2 + 0.2)
    counts = rng.poisson(mean)
    labels = {"n": counts, "amount": rng.gamma(2.0, mean / 2.0),
              "claims": counts * rng.gamma(2.0, 1.5, rows)}
    for name, values in labels.items():
        table = table.append_column(name, pa.array(values))
    return table


def classification_table(rows: int = 160, classes: int = 2, seed: int = 1) -> pa.Table:
    """Two float features and an integer one; labels overlap (no separation)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3))
    x[:, 2] = np.round(x[:, 2] * 2)
    logits = x @ rng.standard_normal((3, classes)) + rng.standard_normal((rows, classes))
    label = np.argmax(logits, axis=1)
    return pa.table({
        "x1": x[:, 0], "x2": x[:, 1], "x3": pa.array(x[:, 2].astype(np.int64)),
        "y": pa.array(label.astype(np.int64)), "w": rng.uniform(0.5, 2.0, rows),
    })


def string_multiclass_table() -> pa.Table:
    table = classification_table(classes=3, seed=2)
    names = np.array(["north", "east", "south"])[table.column("y").to_numpy()]
    return table.set_column(table.schema.get_field_index("y"), "y", pa.array(names))


def _cases() -> None:
    case("linear_regression", {"label": "y"}, regression_table, id="ols", rtol=1e-9,
         atol=1e-10)
    case("linear_regression", {"label": "y", "features": ["x1", "x2", "x3"], "weight": "w",
                               "l2": 0.1, "fit_intercept": False},
         regression_table, id="ridge-weighted", rtol=1e-9, atol=1e-10)
    case("linear_regression", {"label": "y", "weight": "w", "validation_fraction": 0.25,
                               "seed": 3},
         regression_table, id="validation", rtol=1e-9, atol=1e-10)
    case("linear_regression", {"label": "n", "features": ["x1", "x2", "x3"], "weight": "w",
                               "loss": "poisson", "l2": 0.01, "validation_fraction": 0.2},
         count_table, id="poisson-weighted", rtol=1e-7, atol=1e-9)
    case("linear_regression", {"label": "amount", "features": ["x1", "x2", "x3"],
                               "loss": "gamma", "solver": "lbfgs"},
         count_table, id="gamma-lbfgs", rtol=1e-6, atol=1e-8)
    case("linear_regression", {"label": "claims", "features": ["x1", "x2", "x3"],
                               "weight": "w", "loss": "tweedie", "tweedie_power": 1.3,
                               "fit_intercept": False},
         count_table, id="tweedie-no-intercept", rtol=1e-7, atol=1e-9)
    case("logistic_regression", {"label": "y"}, classification_table, id="binary-newton",
         rtol=1e-7, atol=1e-9)
    case("logistic_regression", {"label": "y", "weight": "w", "l2": 0.01, "solver": "lbfgs",
                                 "validation_fraction": 0.2},
         classification_table, id="binary-lbfgs-weighted", rtol=1e-6, atol=1e-8)
    case("logistic_regression", {"label": "y", "l2": 0.001, "solver": "newton",
                                 "validation_fraction": 0.2, "class_weight": "balanced"},
         string_multiclass_table, id="multiclass-newton", rtol=1e-7, atol=1e-9)
    case("logistic_regression", {"label": "y", "weight": "w", "l2": 0.01, "solver": "lbfgs",
                                 "fit_intercept": False},
         lambda: classification_table(classes=4, seed=3), id="multiclass-lbfgs-weighted",
         rtol=1e-6, atol=1e-8)
    case("kmeans", {"k": 3}, blobs_table, id="kmeans-parallel", rtol=1e-9, atol=1e-9)
    case("kmeans", {"k": 3, "weight": "w", "init": "k-means++", "distance": True,
                    "seed": 4}, blobs_table, id="kmeans-plusplus-weighted", rtol=1e-9,
         atol=1e-9)
    case("kmeans", {"k": 4, "features": ["x1", "x2"], "init": "random", "seed": 2,
                    "tol": 0.0}, blobs_table, id="kmeans-random", rtol=1e-9, atol=1e-9)
    case("kmeans", {"k": 3, "weight": "w", "validation_fraction": 0.25, "seed": 5},
         blobs_table, id="kmeans-validation", rtol=1e-9, atol=1e-9)
    case("kmeans", {"k": 3, "n_init": 3, "init": "k-means++", "seed": 6,
                    "validation_fraction": 0.2}, blobs_table, id="kmeans-n-init",
         rtol=1e-9, atol=1e-9)
    case("kmeans", {"k": 3, "weight": "w", "distance_measure": "cosine", "distance": True,
                    "validation_fraction": 0.25, "seed": 5},
         blobs_table, id="kmeans-cosine", rtol=1e-9, atol=1e-9)
    case("score", {"model": "c"}, blobs_table, id="kmeans",
         prepare=lambda op: op.bind(Chain([_clusters()]), _clusters().features,
                                    {"name": "c", "version": 1}))
    case("score", {"model": "t"}, _scoring_table, id="logistic",
         prepare=lambda op: op.bind(Chain([_scoring_model()]), _scoring_model().features,
                                    {"name": "t", "version": 1}))
    case("score", {"model": "t", "contributions": True}, _scoring_table,
         id="logistic-contributions",
         prepare=lambda op: op.bind(Chain([_scoring_model()]), _scoring_model().features,
                                    {"name": "t", "version": 1}))


def blobs_table(rows: int = 150, seed: int = 7) -> pa.Table:
    """Three well-separated blobs in two float features and an integer one, a weight and
    a string column (not a feature)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 1.0, 10.0], [-3.0, 9.0, 20.0]])
    which = rng.integers(0, 3, rows)
    x = centres[which] + rng.standard_normal((rows, 3))
    return pa.table({
        "x1": x[:, 0], "x2": x[:, 1], "x3": pa.array(np.round(x[:, 2]).astype(np.int64)),
        "w": rng.uniform(0.5, 2.0, rows),
        "g": pa.array(np.array(["a", "b"])[rng.integers(0, 2, rows)]),
    })


@cache
def _clusters() -> KMeansFitted:
    model = fit(KMeans(k=3, features=["x1", "x2", "x3"], distance=True),
                split(blobs_table(seed=8), 3))
    assert isinstance(model, KMeansFitted)
    return model


@cache
def _scoring_model() -> LogisticRegressionFitted:
    table = classification_table(seed=4)
    model = fit(LogisticRegression(label="y", features=["x1", "x2", "x3"], l2=0.01),
                split(table, 3))
    assert isinstance(model, LogisticRegressionFitted)
    return model


def _scoring_table() -> pa.Table:
    """Scoring input: the features, an id to pass through, no label."""
    table = classification_table(rows=90, seed=5)
    ids = pa.array([f"r{i}" for i in range(table.num_rows)])
    return table.select(["x1", "x2", "x3"]).append_column("id", ids)


def _labelled_table() -> pa.Table:
    """Held-out rows with their label: what promote compares two models on."""
    return classification_table(rows=120, seed=6).select(["x1", "x2", "x3", "y"])


@cache
def _weaker_model() -> LogisticRegressionFitted:
    """A champion to beat: one feature only."""
    model = fit(LogisticRegression(label="y", features=["x1"], l2=1.0),
                split(classification_table(seed=4), 3))
    assert isinstance(model, LogisticRegressionFitted)
    return model


def _bind_promote(champion: bool) -> Callable[[Any], None]:
    def bind(op: Any) -> None:
        new, old = _scoring_model(), _weaker_model()
        op.bind((Chain([new]), new.features, {"name": "t", "version": 2, "ref": "t"}),
                (Chain([old]), old.features, {"name": "t", "version": 1,
                                              "ref": "t@production"}) if champion else None)
    return bind


def _promote_cases() -> None:
    case("promote", {"model": "t", "alias": "production", "label": "y"}, _labelled_table,
         id="champion", prepare=_bind_promote(True), copies=2)
    case("promote", {"model": "t", "alias": "production", "label": "y", "metric": "roc_auc"},
         _labelled_table, id="first", prepare=_bind_promote(False))


_cases()
_promote_cases()
