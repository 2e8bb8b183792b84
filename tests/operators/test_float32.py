"""float32 compute (a step's ``dtype: float32``): the numeric kernels against float64.

Each operator is fitted and applied with NumPy in float64 (the reference), with NumPy in
float32 and with array_api_strict in float32 on its non-default device; the results must
agree within the tolerances docs/float32.md states. The transfer ledger shows the
partition crossing to the device and back at 4 bytes a value, and the fit statistics
show float32 rounding (so the per-row work did run in float32) but no more than that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_strict as strict
import numpy as np
import pyarrow as pa
import pytest

from operators.arrays import get_namespace, transfers
from operators.base import Transform, drive, lookup, tree_reduce
from operators.chain import Chain
from operators.score.score import Score

NUMPY64 = get_namespace("numpy")
FLOAT32 = {
    "numpy-float32": get_namespace("numpy", dtype="float32"),
    "strict-device1-float32": get_namespace("array_api_strict", strict.Device("device1"),
                                            "float32"),
}
FEATURES = ["a", "b", "c", "d", "e"]
ROWS = 3000
CUTS = (0, 1100, 1900, ROWS)  # three partitions of unequal size

# the tolerances of docs/float32.md
SCALED_ABS = 1e-5        # standard_scale output (features with |mean| / std up to ~10)
MIN_MAX_ABS = 1e-6       # min_max_scale output in [0, 1]
COEF_REL = 1e-4          # linear / logistic coefficients, relative to the largest one
LINEAR_ABS = 1e-5        # linear predictions, relative to the label's spread
PROBABILITY_ABS = 1e-5   # logistic probabilities
MLP_PROBABILITY_ABS = 1e-3  # mlp (L-BFGS, converged to the same minimum) probabilities
MLP_LOSS_REL = 1e-6      # ... and its final objective
SCORE_ABS = 1e-5         # one saved model scored in float32 vs float64


def make_table(seed: int = 3) -> pa.Table:
    """Features on different scales (two with |mean| / std around 5 and 9), a correlated
    pair, a binary, a 3-class and a real label, and row weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((ROWS, len(FEATURES)))
    X[:, 1] += 0.6 * X[:, 0]
    z = X @ np.array([1.2, -0.8, 0.5, 0.3, -1.0]) + 0.3
    X = X * [1.0, 20.0, 0.01, 3.0, 1.0] + [0.0, 200.0, 0.0, -15.0, 0.5]
    columns: dict[str, Any] = {name: X[:, j] for j, name in enumerate(FEATURES)}
    columns["binary"] = (rng.random(ROWS) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    columns["classes"] = np.digitize(z + 0.7 * rng.standard_normal(ROWS), [-1.0, 0.8])
    columns["value"] = 3.0 * z + rng.standard_normal(ROWS) + 10.0
    columns["weight"] = rng.uniform(0.5, 2.0, ROWS)
    return pa.table(columns)


def standardised(table: pa.Table) -> pa.Table:
    """The features standardised (in float64), as a standard_scale step would."""
    for name in FEATURES:
        x = table.column(name).to_numpy()
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array((x - x.mean()) / x.std()))
    return table


def partitions(table: pa.Table) -> list[pa.Table]:
    return [table.slice(lo, hi - lo) for lo, hi in zip(CUTS[:-1], CUTS[1:])]


TABLE = make_table()
PARTS = partitions(TABLE)
SCALED = partitions(standardised(TABLE))


class Run(NamedTuple):
    metrics: dict[str, Any]
    state: dict[str, Any]
    fitted: Transform
    output: pa.Table
    passes: int


def run(op: str, params: dict[str, Any], xp: Any, parts: list[pa.Table] = PARTS) -> Run:
    """Fit over ``parts`` and apply the fitted transform to them, on ``xp``."""
    estimator = lookup(op)(params)

    def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, passes = drive(estimator, parts[0].schema, aggregate)
    fitted = estimator.fitted(state)
    output = pa.concat_tables([fitted.transform(p, xp) for p in parts])
    return Run(estimator.metrics(state), state, fitted, output, passes)


def values(table: pa.Table, column: str) -> np.ndarray:
    """A float64 or list<double> column as a NumPy array (lists as rows)."""
    array = table.column(column).combine_chunks()
    if pa.types.is_list(array.type):
        return np.asarray(array.to_pylist())
    return array.to_numpy()


def largest_gap(got: np.ndarray, expected: np.ndarray, relative_to: float = 1.0) -> float:
    return float(np.max(np.abs(np.asarray(got) - np.asarray(expected)))) / relative_to


def model_arrays(fitted: Transform) -> dict[str, np.ndarray]:
    return fitted.state()[1]


def assert_coefficients_close(got: Transform, expected: Transform) -> None:
    """Every fitted array within COEF_REL of the largest coefficient in it; float64 state."""
    for key, reference in model_arrays(expected).items():
        value = model_arrays(got)[key]
        assert value.dtype == np.float64, f"{key} came back as {value.dtype}"
        scale = max(float(np.max(np.abs(reference))), 1e-12)
        assert largest_gap(value, reference, scale) <= COEF_REL, key


@pytest.fixture(params=sorted(FLOAT32))
def xp32(request: pytest.FixtureRequest) -> Any:
    return FLOAT32[request.param]


# --------------------------------------------------------------------------- features


def test_standard_scale_matches_float64(xp32: Any) -> None:
    params = {"columns": FEATURES}
    expected, got = run("standard_scale", params, NUMPY64), run("standard_scale", params, xp32)
    # float64 columns whatever the compute dtype
    assert got.output.schema == expected.output.schema
    np.testing.assert_allclose(got.fitted.stats["mean"], expected.fitted.stats["mean"],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.fitted.stats["m2"], expected.fitted.stats["m2"], rtol=1e-5)
    for name in FEATURES:
        gap = largest_gap(values(got.output, name), values(expected.output, name))
        assert gap <= SCALED_ABS, name


@pytest.mark.parametrize("clip", [False, True])
def test_min_max_scale_matches_float64(xp32: Any, clip: bool) -> None:
    params = {"columns": FEATURES, "clip": clip}
    reference = run("min_max_scale", params, NUMPY64).output
    out = run("min_max_scale", params, xp32).output
    assert out.schema == reference.schema
    for name in FEATURES:
        assert largest_gap(values(out, name), values(reference, name)) <= MIN_MAX_ABS, name


# --------------------------------------------------------------------------- models


def test_linear_regression_matches_float64(xp32: Any) -> None:
    params = {"label": "value", "features": FEATURES, "weight": "weight", "l2": 1e-3,
              "validation_fraction": 0.2}
    expected = run("linear_regression", params, NUMPY64)
    got = run("linear_regression", params, xp32)
    assert_coefficients_close(got.fitted, expected.fitted)
    spread = float(np.std(TABLE.column("value").to_numpy()))
    gap = largest_gap(values(got.output, "prediction"), values(expected.output, "prediction"),
                      spread)
    assert gap <= LINEAR_ABS
    for metric in ("rmse", "mae", "r2"):
        assert got.metrics["validation"][metric] == pytest.approx(
            expected.metrics["validation"][metric], rel=1e-5)


LOGISTIC = {  # Newton on the raw features; L-BFGS (slow on them in float64 too) scaled
    "binary-newton": ({"label": "binary", "l2": 1e-4}, PARTS),
    "binary-lbfgs": ({"label": "binary", "l2": 1e-4, "solver": "lbfgs"}, SCALED),
    "multinomial-newton": ({"label": "classes", "l2": 1e-4, "weight": "weight"}, PARTS),
    "multinomial-lbfgs": ({"label": "classes", "l2": 1e-4, "solver": "lbfgs"}, SCALED),
}


@pytest.mark.parametrize("case", sorted(LOGISTIC))
def test_logistic_regression_matches_float64(xp32: Any, case: str) -> None:
    params, parts = LOGISTIC[case]
    params = {**params, "features": FEATURES}
    expected = run("logistic_regression", params, NUMPY64, parts)
    got = run("logistic_regression", params, xp32, parts)
    assert_coefficients_close(got.fitted, expected.fitted)
    proba, proba64 = values(got.output, "probability"), values(expected.output, "probability")
    assert largest_gap(proba, proba64) <= PROBABILITY_ABS
    # the class only differs where float64 itself was within the tolerance of a tie
    differ = values(got.output, "prediction") != values(expected.output, "prediction")
    top2 = np.sort(proba64.reshape(len(proba64), -1), axis=1)
    margin = (np.abs(proba64 - 0.5) if proba64.ndim == 1 else top2[:, -1] - top2[:, -2])
    assert np.all(margin[differ] <= 2 * PROBABILITY_ABS)
    # float32 stops as soon as float64 does: it does not chase a gradient below its rounding
    assert expected.metrics["converged"] and got.metrics["converged"]
    assert got.passes <= expected.passes


MLP = {
    "binary": {"label": "binary", "hidden": [4]},
    "multinomial": {"label": "classes", "hidden": [6]},
}


@pytest.mark.parametrize("case", sorted(MLP))
def test_mlp_lbfgs_matches_float64(xp32: Any, case: str) -> None:
    # well regularised, so that both fits reach the same minimum of the non-convex loss
    params = {**MLP[case], "features": FEATURES, "activation": "tanh", "l2": 1e-2,
              "tol": 1e-5, "max_iter": 500}
    expected, got = run("mlp", params, NUMPY64, SCALED), run("mlp", params, xp32, SCALED)
    assert expected.metrics["converged"] and got.metrics["converged"]
    assert got.metrics["loss"] == pytest.approx(expected.metrics["loss"], rel=MLP_LOSS_REL)
    gap = largest_gap(values(got.output, "probability"),
                      values(expected.output, "probability"))
    assert gap <= MLP_PROBABILITY_ABS


# --------------------------------------------------------------------------- scoring


SCORED = {
    "linear": ("linear_regression", {"label": "value", "features": FEATURES}),
    "logistic-binary": ("logistic_regression", {"label": "binary", "features": FEATURES}),
    "logistic-multinomial": ("logistic_regression",
                             {"label": "classes", "features": FEATURES}),
    "mlp-regression": ("mlp", {"label": "value", "features": FEATURES, "hidden": [8],
                               "max_iter": 50}),
    "mlp-multinomial": ("mlp", {"label": "classes", "features": FEATURES, "hidden": [8],
                                "max_iter": 50}),
}


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("model", sorted(SCORED))
def test_score_with_a_float64_model_in_float32(xp32: Any, model: str) -> None:
    """One model (scaler + model, fitted in float64) scored by ``score`` in both dtypes."""
    op, params = SCORED[model]
    scaler = run("standard_scale", {"columns": FEATURES}, NUMPY64)
    fitted = run(op, params, NUMPY64, partitions(scaler.output)).fitted
    score = Score({"model": "float32-test"})
    score.bind(Chain([scaler.fitted, fitted]), FEATURES, {})
    reference = pa.concat_tables([score.transform(p, NUMPY64) for p in PARTS])
    out = pa.concat_tables([score.transform(p, xp32) for p in PARTS])
    assert out.schema == reference.schema
    column = "probability" if "probability" in out.column_names else "prediction"
    spread = 1.0 if column == "probability" else float(np.std(values(reference, column)))
    assert largest_gap(values(out, column), values(reference, column), spread) <= SCORE_ABS


# --------------------------------------------------------------------------- float32 inside


CASES = {
    "standard_scale": ("standard_scale", {"columns": FEATURES}),
    "min_max_scale": ("min_max_scale", {"columns": FEATURES}),
    "linear_regression": ("linear_regression",
                          {"label": "value", "features": FEATURES, "validation_fraction": 0.2}),
    "linear_poisson": ("linear_regression",  # the classes 0, 1, 2 as counts
                       {"label": "classes", "features": FEATURES, "loss": "poisson",
                        "validation_fraction": 0.2}),
    "logistic_binary": ("logistic_regression", {"label": "binary", "features": FEATURES}),
    "logistic_multinomial": ("logistic_regression",
                             {"label": "classes", "features": FEATURES,
                              "validation_fraction": 0.2}),
    "mlp_lbfgs": ("mlp", {"label": "classes", "features": FEATURES, "hidden": [4],
                          "max_iter": 5, "validation_fraction": 0.2}),
    "mlp_adam": ("mlp", {"label": "value", "features": FEATURES, "hidden": [4],
                         "solver": "adam", "max_iter": 2, "batch_size": 256}),
    "kmeans": ("kmeans", {"k": 3, "features": FEATURES, "weight": "weight", "max_iter": 3,
                          "distance": True}),
}


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_partitions_cross_to_the_device_at_four_bytes_a_value(case: str) -> None:
    """Every row-sized move, host to device (the data) and back (scaled values,
    predictions, held-out predictions), is float32 on the placed float32 namespace, and
    float64 on the same device without it."""
    op, params = CASES[case]
    placed64 = get_namespace("array_api_strict", strict.Device("device1"))
    for xp, itemsize in ((FLOAT32["strict-device1-float32"], 4), (placed64, 8)):
        with transfers() as log:
            run(op, params, xp)
        # parameters and statistics here have fewer than 100 rows; partitions more
        sized = [(d, shape, nbytes) for d, shape, nbytes in log if shape and shape[0] >= 100]
        assert any(d == "h2d" for d, _, _ in sized), f"{xp}: no partition went to the device"
        for direction, shape, nbytes in sized:
            assert nbytes == itemsize * int(np.prod(shape)), (xp, direction, shape, nbytes)


def rounded(table: pa.Table) -> pa.Table:
    """The table with its floating columns rounded to float32 (stored as float64), so that
    float32 and float64 kernels see the same values."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_floating(column.type):
            column = pa.array(column.to_numpy().astype(np.float32).astype(np.float64))
        columns[name] = column
    return pa.table(columns)


def float_arrays(stats: Any) -> list[np.ndarray]:
    """The floating-point arrays and numbers of a partial's statistics, in key order."""
    if isinstance(stats, dict):
        return [a for k in sorted(stats) for a in float_arrays(stats[k])]
    array = np.asarray(stats)
    return [array] if array.dtype.kind == "f" else []


def statistics(stats: Any) -> np.ndarray:
    """A partial's statistics flattened into one vector."""
    return np.concatenate([a.reshape(-1) for a in float_arrays(stats)])


FIT_PASSES = {
    "standard_scale": ("standard_scale", {"columns": FEATURES}, "m2"),
    "linear_regression": ("linear_regression", {"label": "value", "features": FEATURES},
                          "comoment"),
    "linear_poisson": ("linear_regression", {"label": "classes", "features": FEATURES,
                                             "loss": "poisson"}, "hess"),
    "logistic_binary": ("logistic_regression", {"label": "binary", "features": FEATURES},
                        "grad"),
    "logistic_multinomial": ("logistic_regression",
                             {"label": "classes", "features": FEATURES}, "hess"),
    "mlp": ("mlp", {"label": "classes", "features": FEATURES, "hidden": [4]}, "sums"),
}


@pytest.mark.parametrize("case", sorted(FIT_PASSES))
def test_fit_statistics_are_float32_work_summed_in_float64(case: str) -> None:
    """On the same (float32-representable) data, a float32 pass's statistics differ from
    float64's by float32 rounding: never by less (the per-row work was done in float64
    after all) nor by more than the tolerances allow; they come back as float64."""
    op, params, key = FIT_PASSES[case]
    part = rounded(TABLE)
    estimator = lookup(op)(params)
    state = estimator.init(part.schema)
    if estimator.multi_pass:
        # the first optimisation pass, at the driver's starting point
        state, _ = estimator.update(estimator.partial(part, state, NUMPY64), state)
    reference = estimator.partial(part, state, NUMPY64)
    for xp in FLOAT32.values():
        stats = estimator.partial(part, state, xp)
        assert all(a.dtype == np.float64 for a in float_arrays(stats))
        got, expected = statistics(stats[key]), statistics(reference[key])
        gap = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
        assert 1e-12 < gap < 1e-5, (xp, gap)


def test_a_feature_past_float32s_range_is_said_not_made_inf(xp32: Any) -> None:
    """A value finite in float64 but past float32's range (1e39) would be inf in a
    float32 fit: a DataError naming the column and the way out, not a model of inf."""
    from operators.base import DataError
    from operators.testing.kit import fit

    table = pa.table({"a": [1.0, 2.0, 1e39, 3.0], "b": [0.5, 1.5, 2.5, 3.5],
                      "y": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(DataError, match=r"feature column 'a' has values past float32's "
                                        r"range \(3.4e\+38\)") as info:
        fit(lookup("linear_regression")(label="y"), [table], xp=xp32)
    assert "dtype: float64" in info.value.hint
