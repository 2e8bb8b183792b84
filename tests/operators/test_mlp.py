"""mlp against scikit-learn's MLPClassifier / MLPRegressor, over in-memory partitions."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_breast_cancer, load_digits, make_regression
from sklearn.metrics import accuracy_score, log_loss, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from threadpoolctl import threadpool_limits

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.hashing import hash_rows, unit_interval
from operators.models import mlp as mlp_module
from operators.models.common import ConvergenceWarning
from operators.models.mlp import MLP, MLPFitted
from operators.testing.kit import fit, roundtrip, split

NUMPY = get_namespace("numpy")
SK_ACTIVATION = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic"}


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """The matrices here are tiny: BLAS threads only add overhead on a shared machine
    (both sides of every comparison run under the same limit)."""
    with threadpool_limits(1):
        yield


def fit_state(estimator: MLP, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[MLPFitted, dict[str, Any]]:
    """The fitted model and the run-record metrics."""

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), estimator.metrics(state)


def table_of(X: np.ndarray, y: Any, **extra: Any) -> pa.Table:
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y, **extra})


def flat(model: MLPFitted) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in model.arrays().values()])


def predictions(model: MLPFitted, X: np.ndarray) -> np.ndarray:
    return model.transform(table_of(X, np.zeros(len(X))).drop_columns(["y"]), NUMPY).column(
        "prediction").to_numpy(zero_copy_only=False)


def probabilities(model: MLPFitted, table: pa.Table) -> np.ndarray:
    column = model.transform(table, NUMPY).column("probability").combine_chunks()
    if pa.types.is_list(column.type):
        return np.asarray(column.to_pylist())
    return column.to_numpy()


def held_out_split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """70/30 split, features standardised with the training rows' moments."""
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def objective(model: MLPFitted, X: np.ndarray, y: np.ndarray, l2: float,
              w: np.ndarray | None = None) -> float:
    """The documented objective, computed independently: weighted mean loss (log-loss or
    half squared error) + l2/2 * |W|^2."""
    w = np.ones(len(y)) if w is None else w
    a = X
    for W, b in zip(model.weights[:-1], model.biases[:-1]):
        z = a @ W + b
        a = {"relu": np.maximum(z, 0), "tanh": np.tanh(z),
             "sigmoid": 1 / (1 + np.exp(-z))}[model.activation]
    z = a @ model.weights[-1] + model.biases[-1]
    penalty = 0.5 * l2 * sum(float(np.sum(W * W)) for W in model.weights)
    if model.classes is None:
        return float(np.average(0.5 * (z[:, 0] - y) ** 2, weights=w)) + penalty
    if z.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-z[:, 0]))
        proba = np.column_stack([1 - p1, p1])
    else:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        proba = e / e.sum(axis=1, keepdims=True)
    return log_loss(y, proba, sample_weight=w, labels=model.classes) + penalty


def sklearn_with(model: MLPFitted, X: np.ndarray, y: np.ndarray, alpha: float,
                 w: np.ndarray | None = None) -> MLPClassifier | MLPRegressor:
    """A scikit-learn network of the same architecture holding our fitted parameters."""
    cls = MLPRegressor if model.classes is None else MLPClassifier
    sk = cls(hidden_layer_sizes=model.hidden, activation=SK_ACTIVATION[model.activation],
             solver="lbfgs", alpha=alpha, max_iter=1, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X, y, sample_weight=w)
    sk.coefs_ = [W.copy() for W in model.weights]
    sk.intercepts_ = [b.copy() for b in model.biases]
    return sk


def xor() -> pa.Table:
    return pa.table({"a": [0.0, 0.0, 1.0, 1.0], "b": [0.0, 1.0, 0.0, 1.0],
                     "y": pa.array([0, 1, 1, 0])})


def synthetic(n: int = 300, classes: int = 2, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping classes from a small nonlinear model, and row weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    logits = np.tanh(X @ rng.standard_normal((3, 4))) @ rng.standard_normal((4, classes))
    y = np.argmax(2 * logits + rng.gumbel(size=(n, classes)), axis=1)
    return X, y, rng.uniform(0.2, 3.0, n)


SMOOTH = {"hidden": [4], "activation": "tanh", "l2": 0.01, "tol": 1e-9, "max_iter": 500}
"""A small smooth network with a penalty: L-BFGS converges to a tight tolerance."""


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    return held_out_split(*load_digits(return_X_y=True))


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, ...]:
    return held_out_split(*load_breast_cancer(return_X_y=True))


@pytest.fixture(scope="module")
def regression() -> tuple[np.ndarray, ...]:
    return held_out_split(*make_regression(1000, 10, noise=10.0, random_state=0))


def sklearn_alpha(solver: str, l2: float, n: int, batch_size: int = 200) -> float:
    """The documented mapping: alpha = l2 * n (lbfgs), l2 * batch_size (adam)."""
    return l2 * (n if solver == "lbfgs" else batch_size)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
@pytest.mark.parametrize(("dataset", "l2", "tolerance"), [
    ("digits", 1e-4, 0.02), ("cancer", 1e-3, 0.02), ("regression", 1e-4, 0.03)])
def test_held_out_score_matches_scikit_learn(request, solver: str, dataset: str, l2: float,
                                             tolerance: float) -> None:
    X_train, X_test, y_train, y_test = request.getfixturevalue(dataset)
    regressor = dataset == "regression"
    cls = MLPRegressor if regressor else MLPClassifier
    sk = cls(hidden_layer_sizes=(64, 32), solver=solver, max_iter=200, random_state=0,
             alpha=sklearn_alpha(solver, l2, len(y_train))).fit(X_train, y_train)
    parts = split(table_of(X_train, y_train), 3 if solver == "lbfgs" else 2, seed=1)
    model, metrics = fit_state(MLP(label="y", hidden=[64, 32], solver=solver, l2=l2,
                                   max_iter=200), parts)
    score = r2_score if regressor else accuracy_score
    ours, theirs = score(y_test, predictions(model, X_test)), score(y_test, sk.predict(X_test))
    assert ours == pytest.approx(theirs, abs=tolerance)
    assert ours > (0.95 if dataset != "regression" else 0.97)
    assert metrics["classes"] == (None if regressor else len(np.unique(y_train)))
    assert len(metrics["loss_curve"]) == metrics["iterations"] > 0


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_xor_is_learned(activation: str, solver: str) -> None:
    table = xor()
    params = ({"max_iter": 500, "l2": 0.0} if solver == "lbfgs" else
              {"max_iter": 1000, "l2": 0.0, "learning_rate": 0.05, "batch_size": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a perfect fit: loss -> 0
        model = fit(MLP(label="y", hidden=[8], activation=activation, solver=solver,
                        **params), [table])
    out = model.transform(table, NUMPY).column("prediction").to_pylist()
    assert out == [0, 1, 1, 0]


# --------------------------------------------------------------------------- the objective


@pytest.mark.parametrize(("activation", "classes"), [
    ("tanh", 2), ("sigmoid", 3), ("relu", None)])
def test_forward_pass_is_scikit_learns(activation: str, classes: int | None) -> None:
    """The same parameters give scikit-learn's predictions: layout, activations, outputs."""
    X, y, w = synthetic(classes=classes or 2, seed=1)
    label = y if classes else X @ [1.0, -2.0, 0.5] + np.sin(X[:, 0])
    table = table_of(X, label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = fit(MLP(label="y", hidden=[5, 3], activation=activation, max_iter=20), [table])
    sk = sklearn_with(model, X, label, alpha=0.0)
    if classes is None:
        np.testing.assert_allclose(predictions(model, X), sk.predict(X), rtol=1e-12)
        return
    expected = sk.predict_proba(X)
    got = probabilities(model, table)
    np.testing.assert_allclose(got, expected[:, 1] if classes == 2 else expected, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_array_equal(predictions(model, X), sk.predict(X))


@pytest.mark.parametrize(("classes", "weighted"), [(2, True), (3, False), (None, True)])
def test_lbfgs_minimises_the_documented_objective(classes: int | None, weighted: bool) -> None:
    """At our optimum scikit-learn (alpha = l2 * n) has the same loss and no further step
    to take; the recorded loss is the objective computed independently."""
    X, y, w = synthetic(classes=classes or 2, seed=2)
    label = y if classes else X @ [1.0, -2.0, 0.5] + np.sin(2 * X[:, 0])
    w = w if weighted else None
    extra = {"w": w} if weighted else {}
    l2 = 0.01
    model, metrics = fit_state(MLP(label="y", weight="w" if weighted else None, **SMOOTH),
                               split(table_of(X, label, **extra), 3))
    assert metrics["converged"]
    expected = objective(model, X, label, l2, w)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-9)
    assert metrics["loss_curve"][-1] == metrics["loss"]
    # L-BFGS steps never go up (beyond rounding, where the line search judges by slope)
    assert np.all(np.diff(metrics["loss_curve"]) <= 1e-12 * metrics["loss"])
    n = len(label) if w is None else w.sum()
    sk = sklearn_with(model, X, label, alpha=l2 * n, w=w)
    sk.set_params(max_iter=100, tol=1e-12)
    sk.fit(X, label, sample_weight=w)
    assert sk.loss_ == pytest.approx(metrics["loss"], rel=1e-7)
    moved = max(np.abs(a - b).max() for a, b in zip(sk.coefs_, model.weights))
    assert moved < 1e-3


def test_initial_weights_come_from_the_seed() -> None:
    """He (relu), Glorot (tanh, output layer), scikit-learn's sigmoid bound; biases start
    at zero and the output bias at the log prior odds."""
    X, y, _ = synthetic(n=400, seed=3)
    table = table_of(X, y)

    def initial(**params: Any) -> MLPFitted:
        estimator = MLP(label="y", hidden=[300, 200], **params)
        state = estimator.init(table.schema)
        state, _ = estimator.update(estimator.partial(table, state, NUMPY), state)
        return estimator.fitted(state)

    relu, tanh, sigm = (initial(activation=a) for a in ("relu", "tanh", "sigmoid"))
    uniform_std = 1 / np.sqrt(3)  # of U(-1, 1)
    assert relu.weights[1].std() == pytest.approx(np.sqrt(6 / 300) * uniform_std, rel=0.02)
    assert tanh.weights[1].std() == pytest.approx(np.sqrt(6 / 500) * uniform_std, rel=0.02)
    assert sigm.weights[1].std() == pytest.approx(np.sqrt(2 / 500) * uniform_std, rel=0.02)
    assert relu.weights[2].std() == pytest.approx(np.sqrt(6 / 201) * uniform_std, rel=0.15)
    assert np.abs(relu.weights[0]).max() <= np.sqrt(6 / 3)
    np.testing.assert_array_equal(relu.biases[0], 0.0)
    np.testing.assert_allclose(relu.biases[-1], np.log(y.mean() / (1 - y.mean())))
    np.testing.assert_array_equal(flat(initial(activation="relu")), flat(relu))
    assert not np.allclose(flat(initial(activation="relu", seed=1)), flat(relu))


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("classes", [2, 3, None])
def test_lbfgs_is_the_same_for_any_partitioning(classes: int | None) -> None:
    X, y, w = synthetic(classes=classes or 2, seed=4)
    label = y if classes else X @ [1.0, -2.0, 0.5] + np.sin(2 * X[:, 0])
    table = table_of(X, label, w=w)
    estimator = MLP(label="y", weight="w", **SMOOTH)
    one = fit(estimator, [table])
    expected = one.transform(table, NUMPY)
    for parts in (split(table, 7, seed=9), [table[:0], *split(table, 3), table[:0]]):
        assert_same_fit(fit(estimator, parts), one, expected, table)


def assert_same_fit(model: MLPFitted, reference: MLPFitted, expected: pa.Table,
                    table: pa.Table) -> None:
    """The same minimum to the optimiser's tolerance (tol 1e-9 x the first gradient): a
    different grouping of the float sums moves the converged point by about 1e-7."""
    np.testing.assert_allclose(flat(model), flat(reference), rtol=1e-5, atol=1e-6)
    out = model.transform(table, NUMPY)
    if reference.classes is not None:
        assert out.column("prediction").equals(expected.column("prediction"))
    key = "probability" if reference.classes is not None else "prediction"
    got, want = (np.asarray(t.column(key).to_pylist()) for t in (out, expected))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_partition_order_changes_no_bit(solver: str) -> None:
    """The partition sums are combined exactly, so the order an engine combines them in
    does not matter; adam's batch order comes from row content, not row position."""
    X, y, _ = synthetic(n=400, classes=3, seed=5)
    table = table_of(X, y)
    estimator = MLP(label="y", hidden=[16, 8], solver=solver, max_iter=15, batch_size=20)
    parts = split(table, 5)
    expected = flat(fit(estimator, parts))
    rng = np.random.default_rng(0)
    shuffled = [parts[i] for i in rng.permutation(len(parts))]
    if solver == "adam":  # rows within a partition too
        shuffled = [p.take(rng.permutation(p.num_rows)) for p in shuffled]
    np.testing.assert_array_equal(flat(fit(estimator, shuffled)), expected)


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
def test_adam_depends_on_seed_and_partitioning_not_on_order(cancer) -> None:
    X_train, X_test, y_train, y_test = cancer
    table = table_of(X_train, y_train)
    params = {"hidden": [16], "solver": "adam", "max_iter": 30, "batch_size": 32}
    base = fit(MLP(label="y", **params), split(table, 4))
    again = fit(MLP(label="y", **params), split(table, 4))
    np.testing.assert_array_equal(flat(again), flat(base))
    other_seed = fit(MLP(label="y", seed=1, **params), split(table, 4))
    other_split = fit(MLP(label="y", **params), split(table, 3))
    for other in (other_seed, other_split):
        assert not np.allclose(flat(other), flat(base))
        assert accuracy_score(y_test, predictions(other, X_test)) == pytest.approx(
            accuracy_score(y_test, predictions(base, X_test)), abs=0.03)


def test_one_partition_adam_is_sequential_adam() -> None:
    """On one partition adam is plain mini-batch Adam (scikit-learn's update rule) over
    the hash-ordered rows, a batch's weighted loss divided by its rows x the mean weight;
    checked step by step with a hand-written loop."""
    X, y, w = synthetic(n=50, seed=6)
    table = table_of(X, y, w=w)
    estimator = MLP(label="y", weight="w", hidden=[3], solver="adam", max_iter=2,
                    batch_size=16, learning_rate=0.01, l2=0.1)
    state = estimator.init(table.schema)
    state, _ = estimator.update(estimator.partial(table, state, NUMPY), state)
    start = estimator.fitted(state)
    with pytest.warns(ConvergenceWarning):
        model = fit(estimator, [table])
    W = [a.copy() for a in start.weights]
    b = [a.copy() for a in start.biases]
    m = [np.zeros_like(a) for a in W + b]
    v = [np.zeros_like(a) for a in W + b]
    t = 0
    for epoch in range(2):
        order = mlp_module._batch_order(
            mlp_module._row_keys(np.column_stack([X, y.astype(float), w]), 0), epoch)
        for s in range(0, 50, 16):
            rows = order[s:s + 16]
            xb, yb, wb = X[rows], y[rows], w[rows]
            h = np.maximum(xb @ W[0] + b[0], 0)
            p = 1 / (1 + np.exp(-(h @ W[1] + b[1])[:, 0]))
            d2 = (wb * (p - yb))[:, None] / (len(rows) * w.mean())
            d1 = (d2 @ W[1].T) * (h > 0)
            grads = [xb.T @ d1 + 0.1 * W[0], h.T @ d2 + 0.1 * W[1], d1.sum(0), d2.sum(0)]
            t += 1
            params = W + b
            for i, g in enumerate(grads):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                step = 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
                params[i] = params[i] - step * m[i] / (np.sqrt(v[i]) + 1e-8)
            W, b = params[:2], params[2:]
    for got, want in zip(model.weights + model.biases, W + b):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_chunked_passes_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full-batch passes and scoring work in row blocks; the block size changes nothing
    but rounding."""
    X, y, w = synthetic(n=200, classes=3, seed=7)
    table = table_of(X, y, w=w)
    estimator = MLP(label="y", weight="w", **SMOOTH)
    whole = fit(estimator, [table])
    proba = probabilities(whole, table)
    monkeypatch.setattr(mlp_module, "CHUNK_ROWS", 7)
    np.testing.assert_allclose(probabilities(whole, table), proba, rtol=1e-13)
    assert_same_fit(fit(estimator, [table]), whole, whole.transform(table, NUMPY), table)


# --------------------------------------------------------------------------- run record


def test_early_stopping_keeps_the_best_epoch() -> None:
    X, y, w = synthetic(n=600, classes=3, seed=8)
    table = table_of(X, y, w=w)
    estimator = MLP(label="y", weight="w", hidden=[32], solver="adam", learning_rate=0.05,
                    batch_size=32, max_iter=200, early_stopping=True, validation_fraction=0.3,
                    n_iter_no_change=3, seed=2)
    model, metrics = fit_state(estimator, split(table, 2))
    curve = metrics["validation_loss_curve"]
    assert metrics["converged"] and metrics["iterations"] < 200
    best = int(np.argmin(curve))
    assert metrics["best_epoch"] == best
    assert len(curve) == metrics["iterations"]  # each epoch scores the weights it starts from
    held = unit_interval(hash_rows(table, None, 2)) < 0.3
    assert metrics["validation_rows"] == held.sum()
    proba = probabilities(model, table)[held]
    assert log_loss(y[held], proba, sample_weight=w[held]) == pytest.approx(curve[best],
                                                                           rel=1e-9)
    assert metrics["validation"]["accuracy"] == pytest.approx(
        accuracy_score(y[held], proba.argmax(axis=1), sample_weight=w[held]), abs=1e-12)


def test_early_stopping_at_max_iter_scores_the_last_epoch_too() -> None:
    X, y, _ = synthetic(n=300, seed=10)
    table = table_of(X, y)
    estimator = MLP(label="y", hidden=[8], solver="adam", learning_rate=0.01, max_iter=4,
                    early_stopping=True, validation_fraction=0.3)
    with pytest.warns(ConvergenceWarning, match="max_iter=4"):
        model, metrics = fit_state(estimator, split(table, 2))
    curve = metrics["validation_loss_curve"]
    assert metrics["iterations"] == 4 and len(curve) == 5  # epochs 0..4: one more pass
    # still improving: the best is the last epoch, known only from the extra pass
    assert metrics["best_epoch"] == int(np.argmin(curve)) == 4
    held = unit_interval(hash_rows(table, None, 0)) < 0.3
    p1 = probabilities(model, table)[held]
    assert log_loss(y[held], np.column_stack([1 - p1, p1])) == pytest.approx(curve[4],
                                                                           rel=1e-9)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_non_convergence_is_warned_and_recorded(cancer, solver: str) -> None:
    X_train, _, y_train, _ = cancer
    with pytest.warns(ConvergenceWarning, match="did not converge: max_iter=3"):
        _, metrics = fit_state(MLP(label="y", hidden=[8], solver=solver, max_iter=3),
                               [table_of(X_train, y_train)])
    assert metrics["converged"] is False
    assert metrics["iterations"] == 3 == len(metrics["loss_curve"])
    assert "max_iter" in metrics["stop_reason"]


# --------------------------------------------------------------------------- scoring


def test_artifact_is_arrays_and_architecture_json() -> None:
    X, y, _ = synthetic(classes=3, seed=9)
    names = np.array(["cherry", "apple", "banana"])[y]
    table = table_of(X, pa.array(names, pa.large_string()))
    model = fit(MLP(label="y", features=["x2", "x0"], **SMOOTH), split(table, 2))
    meta, arrays = model.state()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["hidden"] == [4] and meta["activation"] == "tanh"
    assert meta["output"] == "softmax" and meta["classes"] == ["apple", "banana", "cherry"]
    assert sorted(arrays) == ["W0", "W1", "b0", "b1"]
    assert arrays["W0"].shape == (2, 4) and arrays["W1"].shape == (4, 3)
    scoring = table.select(["x0", "x1", "x2"])
    out = roundtrip(model).transform(scoring, NUMPY)
    assert out.column_names == ["x0", "x1", "x2", "prediction", "probability"]
    assert out.schema == model.output_schema(scoring.schema)
    assert out.schema.field("prediction").type == pa.large_string()
    assert out.schema.field("probability").type == pa.list_(pa.float64())
    np.testing.assert_array_equal(np.asarray(out.column("probability").to_pylist()),
                                  probabilities(model, table))


@pytest.mark.parametrize(("label", "task", "expected"), [
    (pa.array([0, 1] * 10), None, pa.int64()),
    (pa.array([False, True] * 10), None, pa.bool_()),
    (pa.array([0.5, 1.5] * 10), None, None),
    (pa.array([0.5, 1.5] * 10), "classification", pa.float64()),
    (pa.array([0, 3] * 10), "regression", None),
])
def test_task_follows_the_label_type(label: pa.Array, task: str | None,
                                     expected: pa.DataType | None) -> None:
    table = pa.table({"x": np.linspace(-1, 1, 20), "y": label})
    estimator = MLP(label="y", hidden=[2], task=task, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = fit(estimator, [table])
    out = model.transform(table, NUMPY)
    assert out.schema == estimator.output_schema(table.schema)  # binary: known at plan time
    if expected is None:
        assert model.classes is None and "probability" not in out.column_names
        assert out.schema.field("prediction").type == pa.float64()
    else:
        assert out.schema.field("prediction").type == expected
        assert out.schema.field("probability").type == pa.float64()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("hidden", "match"), [
    ([], "at least 1 item"), ([8, 0], "at least one unit"), ([-3], "at least one unit")])
def test_hidden_layers_need_units(hidden: list[int], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        MLP(label="y", hidden=hidden)


@pytest.mark.parametrize(("params", "match", "hint"), [
    ({"early_stopping": True, "solver": "lbfgs", "validation_fraction": 0.1}, "solver: adam",
     "solver: adam"),
    ({"early_stopping": True, "solver": "adam"}, "held-out rows", "validation_fraction"),
])
def test_parameter_conflicts(params: dict[str, Any], match: str, hint: str) -> None:
    with pytest.raises(ParamError, match=match) as info:
        MLP(label="y", **params)
    assert hint in (info.value.hint or "")


def _small(**overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {"x": [0.5, 2.0, 3.0, 1.0, 2.5, 0.0],
                               "y": pa.array([0, 1, 1, 0, 0, 1])}
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(("table", "params", "match", "hint"), [
    (_small(x=[0.5, float("nan"), 3.0, 1.0, 2.5, 0.0]), {}, "feature column 'x' has 1 NaN",
     "impute"),
    (_small(x=[0.5, float("inf"), 3.0, 1.0, 2.5, 0.0]), {"solver": "adam"},
     "feature column 'x' has 1 NaN or infinite", "impute"),
    pytest.param(_small(x=[1e200] * 6, y=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), {},
                 "not finite at the start", "standard_scale",
                 marks=pytest.mark.filterwarnings("ignore::RuntimeWarning")),
    pytest.param(_small(y=[1e200, 0.0, 1.0, 2.0, 3.0, 4.0]), {"solver": "adam"},
                 "adam diverged in epoch 1", "learning_rate",
                 marks=pytest.mark.filterwarnings("ignore::RuntimeWarning")),
    (_small(w=[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]),  # seed 0 holds out rows 1, 3 and 4
     {"solver": "adam", "early_stopping": True, "weight": "w", "validation_fraction": 0.5},
     "no weight to score", "weight column"),
    (_small(y=pa.array([1, 1, 1, 1, 1, 1])), {}, "single class", "two classes"),
    (_small(y=pa.array([0, None, 1, 0, 1, 1])), {}, "label column 'y' has 1 null",
     "filter"),
    (_small()[:0], {}, "no training rows", "filter"),
    (_small(), {"solver": "adam", "early_stopping": True, "validation_fraction": 1e-9},
     "no rows were held out", "validation_fraction"),
])
def test_bad_data_is_a_data_error(table: pa.Table, params: dict[str, Any], match: str,
                                  hint: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        fit(MLP(label="y", hidden=[2], **params), split(table, 2))
    assert hint in (info.value.hint or "")


@pytest.mark.parametrize(("params", "table", "match", "hint"), [
    ({"task": "regression"}, _small(y=list("abcdef")), "a regressor needs numbers", "task"),
    ({}, _small(y=pa.array([[1], [2], [3], [4], [5], [6]])), "neither classes", "int64"),
    ({"features": ["x", "s"]}, _small(s=list("abcdef")), "feature column 's' is string",
     "one_hot"),
    ({"task": "classification"}, _small(y=pa.array([[1], [2], [3], [4], [5], [6]])),
     "not classes", "cast"),
])
def test_plan_time_errors(params: dict[str, Any], table: pa.Table, match: str,
                          hint: str) -> None:
    with pytest.raises(SchemaError, match=match) as info:
        MLP(label="y", **params).output_schema(table.schema)
    assert hint in (info.value.hint or "")


def test_a_floating_zero_one_label_says_it_fitted_a_regression() -> None:
    """As the trees: scikit-learn's MLPClassifier takes 0.0 / 1.0 as classes; a float
    label of only 0 and 1 fits a regression here, as designed, and the metrics' note (the
    run's note line) says so with the two ways to a classifier. Other values, task given,
    or an integer label: no note."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 2))
    y = (x[:, 0] + 0.3 * rng.standard_normal(300) > 0).astype(float)
    params = {"label": "y", "hidden": [3], "max_iter": 20, "seed": 1}

    def note(label: pa.Array, **extra: Any) -> str | None:
        table = pa.table({"a": x[:, 0], "b": x[:, 1], "y": label})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _, metrics = fit_state(MLP(**params, **extra), [table.slice(0, 150),
                                                           table.slice(150)])
        return metrics.get("note")

    said = note(pa.array(y))
    assert said is not None and said.startswith("the label 'y' is double of only 0 and 1: "
                                                "mlp fitted a regression")
    assert "task: classification" in said and "int64" in said
    assert note(pa.array(y * 2.0)) is None
    assert note(pa.array(y), task="regression") is None
    assert note(pa.array(y.astype(np.int64))) is None
    assert note(pa.array(np.zeros(300))) is None  # one value: nothing to classify

