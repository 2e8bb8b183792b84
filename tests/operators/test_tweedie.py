"""Boosting with the Tweedie loss (claims: many zeros, then positive amounts): its
gradients and loss against scikit-learn's HalfTweedieLoss, one round's leaves as a
Newton step computes them, a fit's predictions, and evaluate's tweedie_deviance."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn._loss.loss import HalfTweedieLoss
from sklearn.metrics import mean_tweedie_deviance
from test_trees import fit_state, predictions, table_of

from operators.arrays import get_namespace
from operators.base import DataError, ParamError
from operators.evaluate.metrics import MetricAccumulator
from operators.models.boosted_trees import GradientBoostedTrees, _gradients, _loss
from operators.testing.kit import split

NUMPY = get_namespace("numpy")


def claims(n: int = 6000, seed: int = 0) -> pa.Table:
    """A compound Poisson-gamma label: a Poisson number of claims, each a gamma amount."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 10, (n, 3)).astype(float)
    frequency = np.exp(-1.5 + 0.2 * X[:, 0])
    severity = np.exp(1.0 + 0.1 * X[:, 1])
    counts = rng.poisson(frequency)
    y = np.array([rng.gamma(2.0, s / 2.0, c).sum() for c, s in zip(counts, severity,
                                                                     strict=True)])
    return table_of(X, y)


@pytest.mark.parametrize("power", [1.2, 1.5, 1.9])
def test_gradients_and_loss_are_scikit_learns(power: float) -> None:
    rng = np.random.default_rng(1)
    y = np.where(rng.random(500) < 0.6, 0.0, rng.gamma(2.0, 3.0, 500))
    raw = rng.normal(0.5, 1.0, 500)
    reference = HalfTweedieLoss(power=power)
    g, h = _gradients(raw[:, None], y, 1, "tweedie", NUMPY, power=power)
    expected_g, expected_h = reference.gradient_hessian(y, raw)
    np.testing.assert_allclose(g[:, 0], expected_g, rtol=1e-12)
    np.testing.assert_allclose(h[:, 0], expected_h, rtol=1e-12)
    # the loss up to terms of the label alone: differences between two scores agree
    other = raw + rng.normal(0, 0.3, 500)
    ours = _loss(raw[:, None], y, 1, "tweedie", NUMPY, power=power) - _loss(
        other[:, None], y, 1, "tweedie", NUMPY, power=power)
    np.testing.assert_allclose(ours, reference.loss(y, raw) - reference.loss(y, other),
                               rtol=1e-9, atol=1e-12)


def test_one_round_is_a_newton_step_from_the_log_of_the_mean() -> None:
    table = claims(seed=2)
    y, x0 = table.column("y").to_numpy(), table.column("x0").to_numpy()
    model, _, _ = fit_state(GradientBoostedTrees(
        label="y", loss="tweedie", tweedie_power=1.4, n_trees=1, max_depth=1,
        learning_rate=0.5, l2=1.0, features=["x0"]), split(table, 3))
    base = np.log(y.mean())
    g, h = _gradients(np.full((len(y), 1), base), y, 1, "tweedie", NUMPY, power=1.4)
    threshold = model.nodes["threshold"][0]
    predicted = predictions(model, table)["prediction"]
    for side in (x0 <= threshold, x0 > threshold):
        step = -0.5 * g[side, 0].sum() / (h[side, 0].sum() + 1.0)
        np.testing.assert_allclose(predicted[side], np.exp(base + step), rtol=1e-12)


def test_a_fit_follows_the_claims() -> None:
    table = claims(n=20_000, seed=3)
    model, _, _ = fit_state(GradientBoostedTrees(
        label="y", loss="tweedie", n_trees=60, max_depth=3), split(table, 2))
    held = claims(n=20_000, seed=4)
    y, p = held.column("y").to_numpy(), predictions(model, held)["prediction"]
    assert (p > 0).all()
    assert p.mean() == pytest.approx(y.mean(), rel=0.05)
    constant = np.full(len(y), table.column("y").to_numpy().mean())
    assert (mean_tweedie_deviance(y, p, power=1.5)
            < 0.9 * mean_tweedie_deviance(y, constant, power=1.5))


def test_tweedie_deviance_is_scikit_learns() -> None:
    table = claims(seed=5)
    y = table.column("y").to_numpy()
    pred = np.exp(np.random.default_rng(5).normal(0.0, 0.5, len(y))) * y.mean()
    w = np.random.default_rng(6).uniform(0.5, 2.0, len(y))
    acc = MetricAccumulator("regression", ["tweedie_deviance"], tweedie_power=1.3)
    got = acc.finalize(acc.combine(acc.partial(y[:100], pred[:100], None, w[:100]),
                                   acc.partial(y[100:], pred[100:], None, w[100:])))
    assert got["tweedie_deviance"] == pytest.approx(
        mean_tweedie_deviance(y, pred, sample_weight=w, power=1.3), rel=1e-10)
    with pytest.raises(DataError, match="tweedie_deviance needs labels >= 0"):
        acc.finalize(acc.partial(y - 1.0, pred, None, None))


def test_plan_errors() -> None:
    with pytest.raises(ParamError, match="tweedie_power: 1.3 is the power of loss: tweedie"):
        GradientBoostedTrees(label="y", tweedie_power=1.3)
    for bad in (1.0, 2.0):
        with pytest.raises(Exception, match="tweedie_power"):
            GradientBoostedTrees(label="y", loss="tweedie", tweedie_power=bad)
    table = table_of(np.zeros((3, 1)), np.array([-1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match="loss: tweedie needs non-negative"):
        fit_state(GradientBoostedTrees(label="y", loss="tweedie", n_trees=1), [table])


def test_a_log_link_models_validation_metrics_measure_its_deviance() -> None:
    """The deviance a model minimises is among its validation metrics (tune and promote
    compare such models by it), at its tweedie_power, and the saved model keeps it."""
    from operators.models.common import holdout_mask
    from operators.testing.kit import roundtrip

    table = claims(n=8000, seed=7)
    for loss, metric, extra in (("tweedie", "tweedie_deviance", {"tweedie_power": 1.3}),
                                ("poisson", "poisson_deviance", {})):
        model, metrics, _ = fit_state(GradientBoostedTrees(
            label="y", loss=loss, n_trees=10, max_depth=3, validation_fraction=0.25,
            features=["x0", "x1", "x2"], **extra), split(table, 2))
        held = table.filter(pa.array(holdout_mask(table, 0.25, 0)))
        y, p = held.column("y").to_numpy(), predictions(model, held)["prediction"]
        power = extra.get("tweedie_power", 1.0)
        assert metrics["validation"][metric] == pytest.approx(
            mean_tweedie_deviance(y, p, power=power), rel=1e-10)
        assert roundtrip(model).deviance == model.deviance
    plain, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", n_trees=3, validation_fraction=0.25), split(table, 2))
    assert plain.deviance is None and "tweedie_deviance" not in metrics["validation"]
