"""Boosting with the absolute error and the pinball (quantile) loss: the exact quantile
search over partitions (operators/models/selection.py) against NumPy's and
scikit-learn's percentiles, the models against scikit-learn's HistGradientBoosting, and
what the losses promise (coverage, partition invariance, monotonic bounds, early
stopping, plan errors)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.utils.stats import _weighted_percentile
from test_trees import fit_state, predictions, table_of

from operators.arrays import get_namespace
from operators.base import ParamError
from operators.models import selection
from operators.models.boosted_trees import GradientBoostedTrees
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")


def search(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], groups: int,
           level: float, weighted: bool, xp: Any = NUMPY) -> tuple[np.ndarray, int]:
    """Each group's quantile found over the partitions ``(group, value, mass)`` as a fit
    finds it, and the number of passes."""
    def on(a: np.ndarray | None) -> Any:
        return None if a is None or not weighted else xp.asarray(a)

    summary = None
    for g, v, m in parts:
        s = selection.summarise(xp, xp.asarray(g), xp.asarray(v), on(m), groups)
        summary = s if summary is None else selection.combine(summary, s)
    queries, passes = selection.start(summary, level, weighted), 1
    while not selection.done(queries):
        sent = selection.broadcast(queries)
        stats = None
        for g, v, m in parts:
            rows = selection.narrow(xp, xp.asarray(g), xp.asarray(v), on(m), sent)
            s = selection.search_partial(xp, *rows, sent)
            stats = s if stats is None else selection.combine(stats, s)
        queries = selection.search_update(queries, sent, stats)
        passes += 1
        assert passes < 40, "the search does not end"
    return selection.values(queries), passes


def cut(n: int, k: int, rng: np.random.Generator) -> list[slice]:
    edges = np.sort(rng.integers(0, n + 1, k - 1))
    return [slice(a, b) for a, b in zip([0, *edges], [*edges, n], strict=True)]


VALUES = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "ties": lambda rng, n: rng.integers(-2, 3, n).astype(float),
    "two values": lambda rng, n: rng.integers(0, 2, n) * 7.5,
    "heavy tails": lambda rng, n: rng.standard_cauchy(n) * 1e6,
    "float64's range": lambda rng, n: rng.choice([-1.7e308, 1.7e308, 0.0, 5e-324], n) *
    rng.random(n),
    "subnormal": lambda rng, n: rng.integers(0, 5, n) * 5e-324,
}


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("level", [0.5, 0.1, 0.9, 0.001, 0.999])
def test_unweighted_quantiles_are_numpys_bit_for_bit(kind: str, level: float) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind} {level}".encode()))
    n, groups = 30_000, 5
    values = VALUES[kind](rng, n)
    group = rng.integers(0, groups, n)
    group[group == 4] = 3  # group 4 has no rows
    parts = [(group[s], values[s], None) for s in cut(n, 4, rng)]
    got, passes = search(parts, groups, level, weighted=False)
    for g in range(groups):
        mine = values[group == g]
        if len(mine) == 0:
            assert np.isnan(got[g])
        else:
            assert got[g] == np.percentile(mine, 100 * level), (g, got[g])
    assert passes <= 8


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("level", [0.5, 0.25, 0.95])
def test_weighted_quantiles_are_scikit_learns(kind: str, level: float) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind} {level} weighted".encode()))
    n, groups = 20_000, 3
    values = VALUES[kind](rng, n)
    group = rng.integers(0, groups, n)
    weight = rng.integers(1, 5, n).astype(float)  # whole weights: sums exact in any order
    parts = [(group[s], values[s], weight[s]) for s in cut(n, 5, rng)]
    got, _ = search(parts, groups, level, weighted=True)
    for g in range(groups):
        mine = group == g
        assert got[g] == _weighted_percentile(values[mine], weight[mine], 100 * level)


def test_the_search_is_the_same_on_the_strict_namespace_and_any_partitioning() -> None:
    rng = np.random.default_rng(3)
    n = 9000
    values = rng.standard_t(2, n) * 10
    group = rng.integers(0, 7, n)
    weight = rng.uniform(0.1, 2.0, n)
    whole, _ = search([(group, values, weight)], 7, 0.8, weighted=True)
    for k in (2, 6):
        parts = [(group[s], values[s], weight[s]) for s in cut(n, k, rng)]
        got, _ = search(parts, 7, 0.8, weighted=True, xp=STRICT)
        np.testing.assert_array_equal(got, whole)
    for g in range(7):
        mine = group == g
        assert whole[g] == _weighted_percentile(values[mine], weight[mine], 80.0)


@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_most_groups_take_a_summary_a_binned_and_a_listing_pass(tails: str) -> None:
    """The first binned pass cuts the mean +- 4 standard deviations finely, so a few
    far outliers (Student's t with 2 degrees of freedom) do not cost another pass."""
    rng = np.random.default_rng(4)
    n = 200_000
    values = rng.standard_normal(n) if tails == "normal" else rng.standard_t(2, n) * 50
    group = rng.integers(0, 64, n)
    for level in (0.5, 0.9):
        _, passes = search([(group, values, None)], 64, level, weighted=False)
        assert passes == 3


# --------------------------------------------------------------------------- models

FEATURES = ["x0", "x1", "x2"]


def regression_table(n: int = 6000, seed: int = 0, weighted: bool = False) -> pa.Table:
    """Integer features (few distinct values: the same bins as scikit-learn's) and a
    label with heavy-tailed noise."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 12, (n, 3)).astype(float)
    y = 2.0 * X[:, 0] + 4.0 * np.sin(X[:, 1]) + rng.standard_t(2, n) * (1 + X[:, 2] / 4)
    extra = {"w": rng.integers(1, 4, n).astype(float)} if weighted else {}
    return table_of(X, y, **extra)


def _sklearn(table: pa.Table, loss: str, quantile: float | None, weighted: bool,
             **params: Any) -> np.ndarray:
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(3)])
    model = HistGradientBoostingRegressor(
        loss=loss, quantile=quantile, max_leaf_nodes=None, early_stopping=False, **params)
    model.fit(X, table.column("y").to_numpy(),
              sample_weight=table.column("w").to_numpy() if weighted else None)
    return model.predict(X)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("loss", "quantile"), [("absolute_error", None), ("quantile", 0.9),
                                                ("quantile", 0.2)])
def test_models_are_histgradientboostings(loss: str, quantile: float | None,
                                          weighted: bool) -> None:
    """The same rounds as scikit-learn's: gradients, splits on hessians of 1, leaves the
    residual quantiles (NumPy's median and percentile without weights, the weighted
    percentile with), the label's quantile to start from."""
    table = regression_table(weighted=weighted)
    # min_samples_leaf is a leaf's weight here, its rows in scikit-learn's: alike at 1
    leaf = 1 if weighted else 20
    params = {"loss": loss, "n_trees": 15, "max_depth": 3, "min_samples_leaf": leaf,
              "learning_rate": 0.2, "features": ["x0", "x1", "x2"]}
    if quantile is not None:
        params["quantile"] = quantile
    if weighted:
        params["weight"] = "w"
    model, metrics, _ = fit_state(GradientBoostedTrees(label="y", **params),
                                  split(table, 3))
    expected = _sklearn(table, loss, quantile, weighted, max_iter=15, max_depth=3,
                        min_samples_leaf=leaf, learning_rate=0.2)
    np.testing.assert_allclose(predictions(model, table)["prediction"], expected,
                               rtol=1e-12, atol=1e-12)
    # the leaves' rows and weights are the trees' and the round's residual spread comes
    # with its first pass: no summary pass; leaves of known few rows are listed at once
    # (a weighted leaf's rows are unknown: a binned pass first)
    assert 15 <= metrics["selection_passes"] <= 2 * 15 + 4


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_a_quantile_model_covers_its_level(level: float) -> None:
    table = regression_table(n=20_000, seed=1)
    model, _, _ = fit_state(GradientBoostedTrees(
        label="y", loss="quantile", quantile=level, n_trees=40, max_depth=3), split(table, 2))
    held = regression_table(n=20_000, seed=2)
    below = held.column("y").to_numpy() <= predictions(model, held)["prediction"]
    assert abs(below.mean() - level) < 0.02


def test_the_model_is_the_same_for_any_partitioning() -> None:
    table = regression_table(n=3000, seed=5)
    params = {"loss": "absolute_error", "n_trees": 8, "max_depth": 4, "subsample": 0.7,
              "validation_fraction": 0.2, "early_stopping": True, "n_iter_no_change": 3}
    whole, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 1))
    for k in (4, 9):
        parts = split(table, k, seed=k)
        parts.insert(1, table.slice(0, 0))  # an empty partition too
        got, _, _ = fit_state(GradientBoostedTrees(label="y", **params), parts)
        for name, values in whole.arrays().items():
            np.testing.assert_array_equal(values, got.arrays()[name], err_msg=name)


def test_the_memo_only_saves_time() -> None:
    table = regression_table(n=3000, seed=6, weighted=True)
    params = {"loss": "quantile", "quantile": 0.7, "weight": "w", "n_trees": 5,
              "max_depth": 3, "subsample": 0.8}
    parts = split(table, 3)
    cached, _, _ = fit_state(GradientBoostedTrees(label="y", **params), parts)
    fresh, _, _ = fit_state(GradientBoostedTrees(label="y", **params), parts, fresh=True)
    for name, values in cached.arrays().items():
        np.testing.assert_array_equal(values, fresh.arrays()[name], err_msg=name)


def test_leaves_stay_within_monotonic_bounds() -> None:
    """A leaf's quantile is kept within the bounds its constrained ancestors set, so the
    prediction still only rises with x0 (a quantile unbounded would break it)."""
    rng = np.random.default_rng(7)
    n = 4000
    X = rng.integers(0, 20, (n, 2)).astype(float)
    # the label falls with x0 where x1 is small, so an unconstrained fit would fall too
    y = np.where(X[:, 1] < 5, -X[:, 0], X[:, 0]) + rng.standard_t(2, n)
    table = table_of(X, y)
    model, _, _ = fit_state(GradientBoostedTrees(
        label="y", loss="quantile", quantile=0.75, n_trees=20, max_depth=3,
        monotonic={"x0": 1}), split(table, 2))
    grid = table_of(np.column_stack([np.repeat(np.arange(20.0), 20),
                                     np.tile(np.arange(20.0), 20)]), np.zeros(400))
    surface = predictions(model, grid)["prediction"].reshape(20, 20)
    assert (np.diff(surface, axis=0) >= 0).all()
    free, _, _ = fit_state(GradientBoostedTrees(
        label="y", loss="quantile", quantile=0.75, n_trees=20, max_depth=3), split(table, 2))
    assert (np.diff(predictions(free, grid)["prediction"].reshape(20, 20), axis=0) < 0).any()


def test_early_stopping_watches_the_pinball_loss() -> None:
    table = regression_table(n=4000, seed=8)
    level = 0.8
    model, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", loss="quantile", quantile=level, n_trees=300, max_depth=3,
        learning_rate=0.3, validation_fraction=0.25, early_stopping=True,
        n_iter_no_change=5, features=FEATURES), split(table, 2))
    assert metrics["stopped_early"] and metrics["rounds"] < 300
    losses = metrics["validation_losses"]
    assert losses[-1] < losses[0]
    # the first round's loss is the pinball loss of the starting quantile on the held
    # out rows (those the fit did not learn from)
    held = table.filter(pa.array(~_training_rows(table, 0.25)))
    y = held.column("y").to_numpy()
    train_y = table.filter(pa.array(_training_rows(table, 0.25))).column("y").to_numpy()
    start = np.percentile(train_y, 100 * level)
    diff = y - start
    pinball = np.mean(np.where(diff >= 0, level * diff, (level - 1) * diff))
    assert losses[0] == pytest.approx(pinball, rel=1e-12)
    assert model is not None


def _training_rows(table: pa.Table, fraction: float) -> np.ndarray:
    from operators.models.common import holdout_mask

    return ~holdout_mask(table, fraction, 0)


def test_plan_errors() -> None:
    with pytest.raises(ParamError, match="loss: quantile needs the quantile") as err:
        GradientBoostedTrees(label="y", loss="quantile")
    assert "quantile: 0.9" in err.value.hint
    with pytest.raises(ParamError, match="is the level of loss: quantile") as err:
        GradientBoostedTrees(label="y", quantile=0.9)
    assert "squared_error" in str(err.value)
    with pytest.raises(ParamError, match="is the level of loss: quantile"):
        GradientBoostedTrees(label="y", loss="absolute_error", quantile=0.9)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(Exception, match="quantile"):
            GradientBoostedTrees(label="y", loss="quantile", quantile=bad)
    table = table_of(np.zeros((4, 1)), pa.array([0, 1, 0, 1]))
    with pytest.raises(ParamError, match="regression loss"):
        GradientBoostedTrees(label="y", loss="absolute_error").init(table.schema)


def test_a_quantile_models_validation_metrics_measure_its_quantile() -> None:
    table = regression_table(n=4000, seed=9)
    model, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", loss="quantile", quantile=0.9, n_trees=20, max_depth=3,
        validation_fraction=0.25, features=FEATURES), split(table, 2))
    held = table.filter(pa.array(~_training_rows(table, 0.25)))
    y, p = held.column("y").to_numpy(), predictions(model, held)["prediction"]
    diff = y - p
    validation = metrics["validation"]
    assert validation["pinball_loss"] == pytest.approx(
        np.mean(np.where(diff >= 0, 0.9 * diff, -0.1 * diff)), rel=1e-12)
    assert validation["coverage"] == pytest.approx(np.mean(y <= p), rel=1e-12)
    assert roundtrip(model).quantile == 0.9
    median, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", loss="absolute_error", n_trees=5, validation_fraction=0.25),
        split(table, 2))
    assert median.quantile == 0.5 and "pinball_loss" in metrics["validation"]
    plain, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", n_trees=5, validation_fraction=0.25), split(table, 2))
    assert plain.quantile is None and "pinball_loss" not in metrics["validation"]


def test_a_tie_of_label_and_prediction_has_the_pinball_gradient_of_scikit_learn() -> None:
    """At a tie the gradient is -level (scikit-learn's), so quantile 0.5 grows the
    absolute error's trees; integer labels tie often."""
    X = np.array([0, 0, 0, 0, 0, 1, 2.0])[:, None]
    y = np.array([1, 1, 1, 1, 1, 0, 2.0])
    for loss in ({"loss": "quantile", "quantile": 0.5}, {"loss": "absolute_error"}):
        model, _, _ = fit_state(GradientBoostedTrees(
            label="y", n_trees=1, max_depth=1, min_samples_leaf=1, learning_rate=1.0,
            **loss), [table_of(X, y)])
        assert model.nodes["threshold"][0] == 0.5
    rng = np.random.default_rng(11)
    X = rng.integers(0, 8, (3000, 3)).astype(float)
    y = np.round(X[:, 0] + rng.standard_t(2, 3000))  # whole numbers: ties everywhere
    table = table_of(X, y)
    for level in (0.5, 0.8):
        model, _, _ = fit_state(GradientBoostedTrees(
            label="y", loss="quantile", quantile=level, n_trees=10, max_depth=3,
            min_samples_leaf=20, learning_rate=0.3), split(table, 2))
        expected = HistGradientBoostingRegressor(
            loss="quantile", quantile=level, max_iter=10, max_depth=3, min_samples_leaf=20,
            learning_rate=0.3, max_leaf_nodes=None, early_stopping=False).fit(X, y).predict(X)
        np.testing.assert_allclose(predictions(model, table)["prediction"], expected,
                                   rtol=1e-12, atol=1e-12)


def test_the_weighted_rank_is_scikit_learns_percent_and_the_median_numpys() -> None:
    # 0.056 * 125 is 7.000000000000001; scikit-learn's 5.6 / 100 * 125 is 7.0
    values, weights = np.arange(125.0), np.ones(125)
    got, _ = search([(np.zeros(125, np.int64), values, weights)], 1, 0.056, weighted=True)
    assert got[0] == _weighted_percentile(values, weights, 5.6) == 6.0
    # np.median's mean of the two middle rows, where the interpolation is 1 ulp off
    values = np.array([0.2, 0.3, 2.4, 2.1])
    summary = selection.summarise(NUMPY, np.zeros(4, np.int64), values, None, 1)
    queries = selection.start(summary, 0.5, weighted=False, median=True)
    while not selection.done(queries):
        sent = selection.broadcast(queries)
        queries = selection.search_update(queries, sent, selection.search_partial(
            NUMPY, *selection.narrow(NUMPY, np.zeros(4, np.int64), values, None, sent), sent))
    assert selection.values(queries)[0] == np.median(values) == 1.2


def test_fractional_weights_reach_a_rank_alike_in_any_partitioning() -> None:
    """Round weights (0.1, 0.2, 0.3, 0.7) land running sums on the rank in one order and
    a rounding step short of it in another: a tie within the slack reaches it."""
    rng = np.random.default_rng(12)
    differ = 0
    for _ in range(300):
        n = int(rng.integers(2, 60))
        values = rng.integers(0, 6, n).astype(float)
        weights = rng.choice([0.1, 0.2, 0.3, 0.7], n)
        group = np.zeros(n, np.int64)
        whole, _ = search([(group, values, weights)], 1, 0.5, weighted=True)
        order = rng.permutation(n)
        parts = [(group[s], values[order][s], weights[order][s]) for s in cut(n, 4, rng)]
        got, _ = search(parts, 1, 0.5, weighted=True)
        differ += int(got[0] != whole[0])
    assert differ == 0


def test_monotonic_bounds_are_on_the_quantiles_scale() -> None:
    """The leaves' bounds come from their quantiles (the middle of a constrained split's
    two sides), not from the growing trees' Newton values in the gradients' scale, which
    squeezed the leaves: the constrained fit is as good as scikit-learn's (whose leaf
    update ignores the constraint), and the same in any partitioning."""
    rng = np.random.default_rng(7)
    X = rng.integers(0, 20, (4000, 2)).astype(float)
    y = np.where(X[:, 1] < 5, -X[:, 0], X[:, 0]) * 0.2 + X[:, 0] + rng.standard_t(2, 4000)
    table = table_of(X, y)

    def pinball(p: np.ndarray) -> float:
        d = y - p
        return float(np.mean(np.where(d >= 0, 0.75 * d, -0.25 * d)))

    params = {"loss": "quantile", "quantile": 0.75, "n_trees": 30, "max_depth": 3,
              "monotonic": {"x0": 1}}
    one, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 1))
    three, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 3))
    ours = predictions(one, table)["prediction"]
    np.testing.assert_array_equal(ours, predictions(three, table)["prediction"])
    reference = HistGradientBoostingRegressor(
        loss="quantile", quantile=0.75, max_iter=30, max_depth=3, max_leaf_nodes=None,
        early_stopping=False, monotonic_cst=[1, 0]).fit(X, y).predict(X)
    assert pinball(ours) < 1.01 * pinball(reference)


def clean_table(n: int = 8000, seed: int = 3) -> pa.Table:
    """A label without noise, a step function and a slope: most nodes soon hold
    residuals of one sign only."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 4))
    return table_of(X, np.floor(4 * X[:, 0]) + X[:, 1])


def pinball(y: np.ndarray, prediction: np.ndarray, level: float) -> float:
    r = y - prediction
    return float(np.mean(np.maximum(level * r, (level - 1) * r)))


@pytest.mark.parametrize(("loss", "quantile"), [("quantile", 0.9), ("absolute_error", None)])
def test_nodes_whose_gradients_are_all_alike_split_by_their_residuals(
        loss: str, quantile: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose residuals are all on one side gains 0 by any split of the gradients;
    it splits by its residuals' squared-error gain, with a gain of 0 (so min_split_gain
    refuses it): closer fits than without, and than scikit-learn's (which splits such
    nodes on float32 noise), the same on any partitioning and namespace."""
    table = clean_table()
    y = table.column("y").to_numpy()
    level = quantile or 0.5
    params = {"loss": loss, "quantile": quantile, "n_trees": 30, "max_depth": 4}
    model, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 3))
    a = model.arrays()
    blind = (a["feature"] >= 0) & (a["gain"] == 0)
    assert blind.sum() > 20  # splits made by the residuals
    ours = pinball(y, predictions(model, table)["prediction"], level)
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(4)])
    reference = HistGradientBoostingRegressor(
        loss=loss, quantile=quantile, max_iter=30, max_depth=4, min_samples_leaf=20,
        max_leaf_nodes=None, early_stopping=False).fit(X, y)
    assert ours < 0.8 * pinball(y, reference.predict(X), level)
    for parts, xp in ((split(table, 1), NUMPY), (split(table, 7, seed=2), STRICT)):
        other, _, _ = fit_state(GradientBoostedTrees(label="y", **params), parts, xp)
        for key in ("feature", "threshold", "left", "right", "default_left"):
            np.testing.assert_array_equal(other.arrays()[key], a[key], err_msg=key)
        np.testing.assert_allclose(other.arrays()["value"], a["value"], rtol=1e-12, atol=1e-12)
    # what the gradients alone grow, and min_split_gain's refusal of gain-0 splits
    refused, _, _ = fit_state(GradientBoostedTrees(label="y", min_split_gain=1e-12, **params),
                              split(table, 3))
    assert not ((refused.arrays()["feature"] >= 0) & (refused.arrays()["gain"] == 0)).any()
    assert pinball(y, predictions(refused, table)["prediction"], level) > 1.2 * ours
