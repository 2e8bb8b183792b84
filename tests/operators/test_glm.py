"""linear_regression with a log link (loss: poisson, gamma, tweedie): scikit-learn's
PoissonRegressor, GammaRegressor and TweedieRegressor(link="log") with alpha = l2 on the
same weighted rows, partition invariance, float32 and the strict namespace, the label
errors, validation deviances, contributions on the log scale, and a saved model scored
by a pipeline and in process (serve's path)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline
from sklearn.linear_model import GammaRegressor, PoissonRegressor, TweedieRegressor
from sklearn.metrics import mean_tweedie_deviance
from test_linear import fit_state, predictions

from operators.arrays import get_namespace
from operators.base import DataError, ParamError
from operators.chain import Chain
from operators.models.common import ConvergenceWarning, holdout_mask
from operators.models.linear import LinearRegression, LinearRegressionFitted
from operators.testing.kit import fit, roundtrip, split
from pipelines.runner import run
from pipelines.serving import load_model

NUMPY = get_namespace("numpy")
FEATURES = ["a", "b", "c", "d"]
POWER = {"poisson": 1.0, "gamma": 2.0, "tweedie": 1.4}


def log_linear_table(n: int = 3000, seed: int = 0) -> pa.Table:
    """Features of different scales and kinds (float, integer, boolean), row weights, and
    labels with mean exp(x w + b): a Poisson count, a gamma amount, a compound
    Poisson-gamma (zeros, then amounts)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = rng.integers(0, 10, n)
    c = rng.random(n) < 0.3
    d = rng.uniform(0.0, 50.0, n)
    mean = np.exp(0.3 * a - 0.08 * b + 0.5 * c + 0.01 * d + 0.2)
    counts = rng.poisson(mean)
    return pa.table({
        "a": a, "b": pa.array(b.astype(np.int32)), "c": pa.array(c), "d": d,
        "poisson": counts.astype(np.int64), "gamma": rng.gamma(3.0, mean / 3.0),
        "tweedie": counts * rng.gamma(2.0, 0.5, n), "w": rng.uniform(0.2, 3.0, n)})


TABLE = log_linear_table()


def design(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(f).to_numpy().astype(float) for f in FEATURES])


def scikit_learn(loss: str, l2: float, fit_intercept: bool = True) -> Any:
    """scikit-learn's model of ``loss`` with alpha = l2, fitted to its own tightest tol."""
    options = {"alpha": l2, "fit_intercept": fit_intercept, "solver": "newton-cholesky",
               "tol": 1e-14, "max_iter": 1000}
    if loss == "poisson":
        return PoissonRegressor(**options)
    if loss == "gamma":
        return GammaRegressor(**options)
    return TweedieRegressor(power=POWER["tweedie"], link="log", **options)


def ours(loss: str, **params: Any) -> LinearRegression:
    extra = {"tweedie_power": POWER["tweedie"]} if loss == "tweedie" else {}
    return LinearRegression(label=loss, features=FEATURES, loss=loss, **extra, **params)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("loss", ["poisson", "gamma", "tweedie"])
def test_matches_scikit_learn_with_weights(loss: str, l2: float, solver: str) -> None:
    """The same objective: both fitted until the gradient is at rounding level (ours to
    tol 1e-11 of the starting gradient, scikit-learn's Newton-Cholesky to 1e-14), Newton's
    coefficients agree to 1e-12 (measured: 1e-15), L-BFGS's to 1e-9 (measured: 2e-10 at
    worst, its iterates approach the minimum along approximate curvature)."""
    rtol = 1e-12 if solver == "newton" else 1e-9
    X, y, w = design(TABLE), TABLE.column(loss).to_numpy(), TABLE.column("w").to_numpy()
    reference = scikit_learn(loss, l2).fit(X, y, sample_weight=w)
    model, metrics = fit_state(ours(loss, weight="w", l2=l2, solver=solver, tol=1e-11,
                                    max_iter=500), split(TABLE, 3))
    assert metrics["converged"] and metrics["solver"] == solver
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=rtol)
    assert model.intercept == pytest.approx(reference.intercept_, rel=rtol)
    np.testing.assert_allclose(predictions(model, TABLE), reference.predict(X), rtol=rtol)


@pytest.mark.parametrize("loss", ["poisson", "gamma", "tweedie"])
def test_without_intercept_matches_scikit_learn(loss: str) -> None:
    X, y = design(TABLE), TABLE.column(loss).to_numpy()
    reference = scikit_learn(loss, 0.1, fit_intercept=False).fit(X, y)
    model = fit(ours(loss, l2=0.1, fit_intercept=False, tol=1e-11), split(TABLE, 2))
    np.testing.assert_allclose(model.coef, reference.coef_, rtol=1e-12)
    assert model.intercept == 0.0


def test_the_loss_is_the_objective_scikit_learn_minimises() -> None:
    """The run record's loss is the weighted mean half deviance + l2/2 |w|^2 up to terms
    of the label alone: scikit-learn's objective at our solution, less its constant."""
    from sklearn._loss.loss import HalfPoissonLoss

    X, y, w = design(TABLE), TABLE.column("poisson").to_numpy(), TABLE.column("w").to_numpy()
    model, metrics = fit_state(ours("poisson", weight="w", l2=0.05), split(TABLE, 2))
    raw = X @ model.coef + model.intercept
    half = HalfPoissonLoss().loss(y.astype(float), raw)  # without its constant, as ours
    expected = np.average(half, weights=w) + 0.025 * float(model.coef @ model.coef)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-12)


def test_the_start_is_the_log_of_the_mean_and_zero_coefficients() -> None:
    """One optimiser pass that stops at once (max_iter 1, a huge tol) leaves the start."""
    y, w = TABLE.column("gamma").to_numpy(), TABLE.column("w").to_numpy()
    model, metrics = fit_state(ours("gamma", weight="w", tol=1e6), [TABLE])
    assert metrics["iterations"] == 0 and metrics["converged"]
    np.testing.assert_array_equal(model.coef, np.zeros(4))
    assert model.intercept == pytest.approx(np.log(np.average(y, weights=w)), rel=1e-15)


def test_partition_invariance_and_order() -> None:
    estimator = ours("tweedie", weight="w", l2=0.01)
    whole = fit(estimator, [TABLE])
    for parts in (split(TABLE, 5), split(TABLE, 7, seed=3)):
        got = fit(estimator, parts)
        np.testing.assert_allclose(got.coef, whole.coef, rtol=1e-9, atol=1e-12)
        assert got.intercept == pytest.approx(whole.intercept, rel=1e-9)


def test_strict_namespace_gives_the_same_model() -> None:
    estimator = ours("poisson", weight="w", l2=0.01)
    strict = get_namespace("array_api_strict")
    expected = fit(estimator, split(TABLE, 3))
    got = fit(estimator, split(TABLE, 3), strict)
    np.testing.assert_allclose(got.coef, expected.coef, rtol=1e-10)
    np.testing.assert_allclose(predictions(got, TABLE, strict), predictions(expected, TABLE),
                               rtol=1e-10)


@pytest.mark.parametrize("loss", ["poisson", "gamma", "tweedie"])
def test_float32_is_within_its_stated_tolerance(loss: str) -> None:
    """docs/float32.md: coefficients within 1e-4 of the largest (standardised-scale
    features), predictions within 1e-5 relative."""
    scaled = TABLE
    for name in ("b", "d"):  # the integer and wide features on the unit scale
        x = TABLE.column(name).to_numpy().astype(float)
        scaled = scaled.set_column(scaled.schema.get_field_index(name), name,
                                   pa.array((x - x.mean()) / x.std()))
    estimator = ours(loss, weight="w", l2=0.01)
    expected = fit(estimator, split(scaled, 3))
    for xp in (get_namespace("numpy", dtype="float32"),
               get_namespace("array_api_strict", dtype="float32")):
        got = fit(estimator, split(scaled, 3), xp)
        scale = np.abs(expected.coef).max()
        np.testing.assert_allclose(got.coef, expected.coef, atol=1e-4 * scale)
        assert got.intercept == pytest.approx(expected.intercept, abs=1e-4 * scale)
        np.testing.assert_allclose(predictions(got, scaled, xp), predictions(expected, scaled),
                                   rtol=1e-5)


def test_unconverged_fit_warns_and_says_so() -> None:
    with pytest.warns(ConvergenceWarning, match="linear_regression did not converge"):
        _, metrics = fit_state(ours("poisson", solver="lbfgs", max_iter=1), [TABLE])
    assert not metrics["converged"] and metrics["stop_reason"] == "max_iter=1 reached"


def test_unconverged_penalised_fit_is_told_to_raise_its_penalty() -> None:
    with pytest.warns(ConvergenceWarning, match=r"or raise l2$"):
        fit_state(ours("poisson", solver="lbfgs", max_iter=1, l2=0.5), [TABLE])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("loss", "labels", "match"), [
    ("poisson", [1.0, -1.0, 3.0], "loss: poisson needs non-negative, not all zero labels; "
                                  "'y' has -1"),
    ("tweedie", [1.0, -0.5, 3.0], "loss: tweedie needs non-negative, not all zero labels"),
    ("poisson", [0.0, 0.0, 0.0], r"'y' has 0 \(its mean is 0\)"),
    ("tweedie", [0.0, 0.0, 0.0], r"'y' has 0 \(its mean is 0\)"),
    ("gamma", [1.0, 0.0, 3.0], "loss: gamma needs positive labels; 'y' has 0"),
])
def test_labels_outside_the_loss_are_data_errors(loss: str, labels: list[float],
                                                 match: str) -> None:
    table = pa.table({"x": [1.0, 2.0, 3.0], "y": labels})
    with pytest.raises(DataError, match=match) as error:
        fit(LinearRegression(label="y", loss=loss), [table])
    assert error.value.hint == "filter those rows out, or choose another loss"



@pytest.mark.parametrize(("loss", "bad", "match"), [
    ("gamma", 0.0, "loss: gamma needs positive labels; 'y' has 0"),
    ("poisson", -1.0, "loss: poisson needs non-negative, not all zero labels; 'y' has -1"),
])
def test_a_held_out_label_outside_the_loss_is_the_same_data_error(
        loss: str, bad: float, match: str) -> None:
    # the check read the training rows only: a held-out row's label was refused after the
    # whole fit, by the validation metric, with a hint to drop it from `metrics`
    rng = np.random.default_rng(3)
    estimator = LinearRegression(label="y", loss=loss, validation_fraction=0.3)
    x, labels = rng.standard_normal(400), rng.uniform(0.5, 2.0, 400)
    for row in range(400):  # a row held out with its bad label (the hash reads it)
        table = pa.table({"x": x, "y": np.where(np.arange(400) == row, bad, labels)})
        if holdout_mask(table, 0.3, estimator.params.seed)[row]:
            break
    with pytest.raises(DataError, match=match) as error:
        fit(estimator, [table])
    assert error.value.hint == "filter those rows out, or choose another loss"

@pytest.mark.parametrize(("loss", "power", "largest"), [
    ("poisson", 1.5, "1e+300"), ("tweedie", 1.5, "1e+300"), ("tweedie", 1.2, "1e+130")])
def test_labels_too_large_for_the_loss_are_a_data_error(loss: str, power: float,
                                                        largest: str) -> None:
    """Labels whose gradients' sums overflow float64 (the fit stopped at zero coefficients,
    without a word) are refused, naming the label column and its largest value; gamma's
    gradients do not grow with the labels, and it fits them."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(300)
    labels = np.exp(0.5 * x) * float(largest) / np.exp(0.5 * x).max()
    table = pa.table({"x": x, "y": labels})
    extra = {"tweedie_power": power} if loss == "tweedie" else {}
    with pytest.raises(DataError, match=re.escape(f"label column 'y' has values up to "
                                                  f"{largest}, too large for loss: {loss}")
                       ) as error:
        fit(LinearRegression(label="y", loss=loss, **extra), [table])
    assert "derive the label in larger units" in error.value.hint
    model = fit(LinearRegression(label="y", loss="gamma"), [table])
    assert model.state()[1]["coef"] == pytest.approx([0.5], rel=1e-6)


@pytest.mark.parametrize("label", ["y", "claim amount"])
def test_the_larger_units_a_label_too_large_is_told_fit(label: str) -> None:
    """The derive the hint gives is an expression of the label (quoted where its name
    needs it) whose values the loss takes."""
    from operators.expressions import parse_expression

    rng = np.random.default_rng(5)
    x = rng.standard_normal(300)
    table = pa.table({"x": x, label: np.exp(0.5 * x) * 1e250})
    with pytest.raises(DataError, match="too large for loss: poisson") as error:
        fit(LinearRegression(label=label, loss="poisson"), [table])
    assert "choose loss: gamma" in (error.value.hint or "")  # the labels are positive
    told = re.search(r'e\.g\. "(.+?)"', error.value.hint or "")
    assert told is not None, error.value.hint
    derived = ds.dataset(table).to_table(
        columns={"x": pc.field("x"), "scaled": parse_expression(told.group(1), table.schema)})
    model = fit(LinearRegression(label="scaled", loss="poisson"), [derived])
    assert model.state()[1]["coef"] == pytest.approx([0.5], rel=1e-6)
    # with zeros among the labels (tweedie's usual case) gamma, which refuses them, is
    # not offered
    zeros = table.set_column(1, label, pa.array(np.where(x > 0, table[label], 0.0)))
    with pytest.raises(DataError, match="too large for loss: tweedie") as error:
        fit(LinearRegression(label=label, loss="tweedie", tweedie_power=1.2), [zeros])
    assert "gamma" not in (error.value.hint or "")


@pytest.mark.parametrize(("params", "match", "hint"), [
    ({"loss": "poisson", "tweedie_power": 1.3},
     "tweedie_power: 1.3 is the power of loss: tweedie, and the loss is poisson",
     "add loss: tweedie"),
    ({"tweedie_power": 1.3}, "the loss is squared_error", "add loss: tweedie"),
    ({"max_iter": 50, "tol": 1e-6}, "max_iter, tol set the optimiser of loss: poisson, "
                                    "gamma or tweedie, and loss: squared_error",
     "set loss: poisson, gamma or tweedie"),
    ({"solver": "lbfgs"}, "solver sets the optimiser",
     "set loss: poisson, gamma or tweedie"),
])
def test_parameters_of_another_loss_are_param_errors(params: dict[str, Any], match: str,
                                                     hint: str) -> None:
    with pytest.raises(ParamError, match=match) as error:
        LinearRegression(label="y", **params)
    assert hint in error.value.hint


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_tweedie_power_is_between_1_and_2(power: float) -> None:
    with pytest.raises(Exception, match="tweedie_power"):
        LinearRegression(label="y", loss="tweedie", tweedie_power=power)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("loss", ["poisson", "gamma", "tweedie"])
def test_validation_measures_the_deviance_the_model_minimises(loss: str) -> None:
    """As the boosted trees': the held-out rows' deviance among the validation metrics,
    the same as scikit-learn's mean_tweedie_deviance; the saved model keeps it."""
    model, metrics = fit_state(ours(loss, weight="w", validation_fraction=0.25),
                               split(TABLE, 2))
    held = TABLE.filter(pa.array(holdout_mask(TABLE, 0.25, 0)))
    y, w = held.column(loss).to_numpy(), held.column("w").to_numpy()
    assert metrics["validation_rows"] == held.num_rows
    assert metrics["validation"][f"{loss}_deviance"] == pytest.approx(
        mean_tweedie_deviance(y, predictions(model, held), sample_weight=w,
                              power=POWER[loss]), rel=1e-10)
    expected = {"metric": f"{loss}_deviance"}
    if loss == "tweedie":
        expected["tweedie_power"] = POWER["tweedie"]
    assert model.deviance == expected
    again = roundtrip(model)
    assert again.deviance == expected and again.link == "exp"
    assert Chain([again]).found("deviance") == expected
    assert model.meta()["link"] == "exp"


def test_least_squares_keeps_its_identity_link_and_no_deviance() -> None:
    model, metrics = fit_state(LinearRegression(label="tweedie", features=FEATURES,
                                                validation_fraction=0.25), [TABLE])
    assert model.link == "identity" and model.deviance is None
    assert "tweedie_deviance" not in metrics["validation"] and "solver" not in metrics
    assert "deviance" not in model.meta() and model.meta()["link"] == "identity"
    # a model saved before the log links (no link in its meta) is least squares
    meta, arrays = model.state()
    del meta["link"]
    old = LinearRegressionFitted.from_state(meta, arrays)
    np.testing.assert_array_equal(predictions(old, TABLE), predictions(model, TABLE))


def test_predictions_are_exp_and_contributions_are_on_the_log_scale() -> None:
    model = fit(ours("poisson", weight="w", l2=0.01), split(TABLE, 2))
    X = design(TABLE)
    np.testing.assert_allclose(predictions(model, TABLE),
                               np.exp(X @ model.coef + model.intercept), rtol=1e-13)
    out = model.explain(TABLE, NUMPY)
    phi = np.column_stack([out.column("contributions").combine_chunks().field(f)
                           .to_numpy() for f in FEATURES])
    base = out.column("contribution_base").to_numpy()
    np.testing.assert_allclose(phi.sum(axis=1) + base,
                               np.log(out.column("prediction").to_numpy()), rtol=1e-12,
                               atol=1e-12)


def test_fitted_before_the_end_is_the_current_iterate() -> None:
    """As logistic regression's: a model to inspect mid-fit (the start, here)."""
    estimator = ours("poisson")
    state = estimator.init(TABLE.schema)
    stats = estimator.partial(TABLE, state, NUMPY)
    state, done = estimator.update(stats, state)
    assert not done
    model = estimator.fitted(state)
    np.testing.assert_allclose(predictions(model, TABLE),
                               np.full(TABLE.num_rows, TABLE.column("poisson").to_numpy()
                                       .mean()), rtol=1e-12)


# --------------------------------------------------------------------------- pipelines

TRAIN = """
    pipeline: claims
    params: {{l2: 0.01}}
    steps:
      - op: read_parquet
        path: {data}
      - op: linear_regression
        label: tweedie
        features: [a, b, c, d]
        weight: w
        loss: tweedie
        tweedie_power: 1.4
        l2: ${{l2}}
        validation_fraction: 0.2
      - op: save_model
        name: claims
"""

SCORE = """
    pipeline: score
    steps:
      - op: read_parquet
        path: {data}
      - op: score
        model: {model}
        contributions: true
      - op: write_parquet
        path: {out}
"""


def test_a_saved_model_scores_in_a_pipeline_and_in_process(tmp_path: Path) -> None:
    folder = tmp_path / "rows"
    folder.mkdir()
    pq.write_table(TABLE.slice(0, 2000), folder / "part-0.parquet")
    pq.write_table(TABLE.slice(2000), folder / "part-1.parquet")
    models = str(tmp_path / "models")
    record = run(write_pipeline(tmp_path, TRAIN.format(data=folder)), models=models,
                 runs_dir=str(tmp_path / "runs"))
    trained = record["metrics"]["linear_regression"]
    assert trained["converged"] and "tweedie_deviance" in trained["validation"]
    rows = TABLE.slice(0, 300).select(FEATURES)
    pq.write_table(rows, tmp_path / "score.parquet")
    run(write_pipeline(tmp_path, SCORE.format(data=tmp_path / "score.parquet",
                                              model="claims", out=tmp_path / "out"),
                       "score.yaml"), models=models, runs_dir=str(tmp_path / "runs"))
    bulk = pq.read_table(tmp_path / "out")
    served = load_model("claims", models)
    online = served.score(rows, contributions=True)
    np.testing.assert_array_equal(online.column("prediction").to_numpy(),
                                  bulk.column("prediction").to_numpy())
    records = served.score(rows.to_pylist())
    np.testing.assert_allclose([r["prediction"] for r in records],
                               bulk.column("prediction").to_numpy(), rtol=1e-12)
    # the prediction is exp of the saved coefficients', the contributions add up to its log
    reference = fit(ours("tweedie", weight="w", l2=0.01, validation_fraction=0.2),
                    [TABLE.slice(0, 2000), TABLE.slice(2000)])
    np.testing.assert_allclose(bulk.column("prediction").to_numpy(),
                               predictions(reference, rows), rtol=1e-9)
    phi = online.column("contributions").combine_chunks()
    total = sum(phi.field(f).to_numpy() for f in FEATURES)
    np.testing.assert_allclose(total + online.column("contribution_base").to_numpy(),
                               np.log(online.column("prediction").to_numpy()), rtol=1e-12,
                               atol=1e-12)


PROMOTE = TRAIN + """
      - op: read_parquet
        path: {data}
      - op: promote
        model: claims
        alias: production
        label: tweedie
"""


def test_promote_compares_linear_log_link_models_by_their_deviance(tmp_path: Path) -> None:
    folder = tmp_path / "rows"
    folder.mkdir()
    pq.write_table(TABLE, folder / "part-0.parquet")
    path = write_pipeline(tmp_path, PROMOTE.format(data=folder))
    models = str(tmp_path / "models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        run(path, models=models, runs_dir=str(tmp_path / "runs"))
        decision = run(path, {"l2": "100"}, models=models,
                       runs_dir=str(tmp_path / "runs"))["metrics"]["promote"]
    assert decision["metric"] == "tweedie_deviance" and decision["promoted"] is False


def test_tune_compares_linear_log_link_models_by_their_deviance(tmp_path: Path) -> None:
    folder = tmp_path / "rows"
    folder.mkdir()
    pq.write_table(TABLE, folder / "part-0.parquet")
    text = TRAIN.format(data=folder).replace("        l2: ${l2}\n",
                                             "        tune: {l2: [0.001, 30.0]}\n")
    record = run(write_pipeline(tmp_path, text), models=str(tmp_path / "models"),
                 runs_dir=str(tmp_path / "runs"))
    tuning = record["metrics"]["linear_regression"]["tuning"]
    assert tuning["metric"] == "tweedie_deviance" and tuning["best"] == "l2=0.001"
    values = {k: v["tweedie_deviance"] for k, v in tuning["candidates"].items()}
    assert values["l2=0.001"] < values["l2=30.0"]


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("loss", ["poisson", "gamma", "tweedie"])
def test_trial_steps_past_exp_are_not_warnings(loss: str, solver: str) -> None:
    """A feature in the thousands makes the first trial steps overflow exp: the line
    search steps back from the infinite loss, as it should, and says nothing about it
    (NumPy's overflow warnings reached the user before). The fit is scikit-learn's."""
    rng = np.random.default_rng(0)
    big, x = 1000 * rng.standard_normal(5000), rng.standard_normal(5000)
    mean = np.exp(0.5 * x + 3.0 * (big > 0))
    label = rng.poisson(mean) + (1.0 if loss == "gamma" else 0.0)
    table = pa.table({"a": big, "b": x, "c": pa.array(big > 0), "d": x * x,
                      loss: label.astype(float)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, metrics = fit_state(ours(loss, solver=solver, tol=1e-10, max_iter=500),
                                   split(table, 2))
    assert metrics["converged"]
    with warnings.catch_warnings():  # its Newton line search gives up here, for lbfgs
        warnings.simplefilter("ignore")
        reference = scikit_learn(loss, 0.0).fit(design(table), label)
    np.testing.assert_allclose(predictions(model, table), reference.predict(design(table)),
                               rtol=1e-6)
