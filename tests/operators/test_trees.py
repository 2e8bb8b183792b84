"""Tree models: bins, histograms, split search, the artifact and scoring, missing values,
bad input, memo and node groups, metrics (small data; parity with scikit-learn is in
test_tree_parity.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import split_gain
from pydantic import ValidationError

from operators.arrays import get_namespace, to_numpy
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.models import trees
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.common import holdout_mask
from operators.models.forest import DecisionTree, RandomForest
from operators.models.trees import (
    Entropy,
    Gini,
    Newton,
    Variance,
    best_splits,
    bin_codes,
    bin_edges,
    histograms,
    poisson_counts,
)
from operators.testing.cases.trees import category_table, tree_table
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")


def fit_state(estimator: Any, parts: list[pa.Table], xp: Any = NUMPY, fresh: bool = False
              ) -> tuple[Any, dict[str, Any], int]:
    """The fitted model, its metrics and the number of passes. ``fresh``: every pass gets
    new table objects (as an engine without a cache), so no memo can help."""

    def aggregate(partial: Any) -> Any:
        tables = [p.slice(0) for p in parts] if fresh else parts
        return tree_reduce([partial(p, xp) for p in tables], estimator.combine)

    state, passes = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), estimator.metrics(state), passes


def predictions(model: Any, table: pa.Table, xp: Any = NUMPY) -> dict[str, np.ndarray]:
    out = model.transform(table, xp)
    result = {"prediction": np.asarray(out.column("prediction").to_pylist())}
    if "probability" in out.column_names:
        result["probability"] = np.asarray(out.column("probability").to_pylist(), dtype=float)
    return result


def table_of(X: np.ndarray, y: Any, **extra: Any) -> pa.Table:
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y, **extra})


# --------------------------------------------------------------------------- bins


def test_edges_are_midpoints_of_few_distinct_values() -> None:
    sample = np.array([[3.0, 1.0], [1.0, np.nan], [2.0, np.inf], [3.0, 5.0]])
    edges = bin_edges(sample, max_bins=8)
    np.testing.assert_array_equal(edges[0], [1.5, 2.5])
    np.testing.assert_array_equal(edges[1], [3.0])  # NaN and inf are not edges


def test_edges_are_quantiles_of_many_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5000, 1))
    edges = bin_edges(values, max_bins=16)[0]
    expected = np.percentile(values[:, 0], np.linspace(0, 100, 17)[1:-1],
                             method="averaged_inverted_cdf")
    np.testing.assert_allclose(edges, expected)
    assert len(edges) == 15


@pytest.mark.parametrize("xp", [NUMPY, STRICT], ids=["numpy", "strict"])
def test_bin_codes_follow_the_edges(xp: Any) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((2, 300))
    values[0, ::7] = np.nan
    values[1, :5] = [-np.inf, np.inf, 0.0, 0.0, 0.0]
    edges = bin_edges(values.T, max_bins=10)
    missing = trees.missing_bin(edges)
    codes = np.asarray(bin_codes(xp.asarray(values), edges, missing, xp)).reshape(2, -1)
    for f in range(2):
        for b in range(len(edges[f])):
            finite = ~np.isnan(values[f])
            # x <= edges[b] exactly when its code is <= b
            np.testing.assert_array_equal(values[f][finite] <= edges[f][b],
                                          codes[f][finite] <= b)
        assert (codes[f][np.isnan(values[f])] == missing).all()


def test_bin_sample_is_the_same_for_any_partitioning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bottom-k by row hash: a 40-row sample of 300 rows is the same set of rows for 1 or
    5 shuffled partitions, so the edges are too."""
    monkeypatch.setattr(trees, "BIN_SAMPLE_ROWS", 40)
    table = tree_table(rows=300, seed=3)
    estimator = DecisionTree(label="y", max_bins=8)

    def edges(parts: list[pa.Table]) -> list[np.ndarray]:
        state = estimator.init(table.schema)
        stats = tree_reduce([estimator.partial(p, state, NUMPY) for p in parts],
                            estimator.combine)
        assert len(stats["sample"]) == 40
        return estimator.update(stats, state)[0]["edges"]

    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    one, five = edges([table]), edges(split(shuffled, 5, seed=2))
    for a, b in zip(one, five, strict=True):
        np.testing.assert_array_equal(a, b)


def test_poisson_counts_have_the_poisson_frequencies() -> None:
    uniform = (np.arange(200_000) + 0.5) / 200_000
    counts = poisson_counts(uniform)
    freq = np.bincount(counts) / len(counts)
    pmf = [math.exp(-1) / math.factorial(k) for k in range(len(freq))]
    np.testing.assert_allclose(freq[:6], pmf[:6], atol=2e-5)


# --------------------------------------------------------------------------- histograms


def naive_histograms(codes: np.ndarray, rows: np.ndarray, slots: np.ndarray,
                     channels: list[np.ndarray], fold: np.ndarray | None, fold_size: int,
                     featsel: np.ndarray | None, n_slots: int, n_bins: int) -> np.ndarray:
    m = codes.shape[0] if featsel is None else featsel.shape[1]
    width = fold_size if fold is not None else len(channels)
    out = np.zeros((m, n_slots, n_bins, width))
    for i, (row, slot) in enumerate(zip(rows, slots, strict=True)):
        for j in range(m):
            f = j if featsel is None else featsel[slot, j]
            code = codes[f, row]
            if fold is not None:
                out[j, slot, code, fold[i]] += channels[0][i]
            else:
                for c, ch in enumerate(channels):
                    out[j, slot, code, c] += ch[i]
    return out


@pytest.mark.parametrize("xp", [NUMPY, STRICT], ids=["numpy", "strict"])
@pytest.mark.parametrize("kind", ["fold", "channels", "featsel"])
def test_histograms_match_a_loop(xp: Any, kind: str) -> None:
    rng = np.random.default_rng(4)
    n, n_features, n_bins, n_slots = 60, 3, 6, 4
    codes = rng.integers(0, n_bins, (n_features, n)).astype(np.uint8)
    rows = rng.choice(n, 45, replace=False)
    slots = rng.integers(0, n_slots, 45)
    channels = [rng.random(45), rng.standard_normal(45)]
    fold = rng.integers(0, 3, 45) if kind == "fold" else None
    featsel = (np.sort(np.argsort(rng.random((n_slots, n_features)), axis=1)[:, :2], axis=1)
               if kind == "featsel" else None)
    used = channels[:1] if kind == "fold" else channels
    got = histograms(xp, xp.asarray(codes.reshape(-1)), n, xp.asarray(rows), xp.asarray(slots),
                     [xp.asarray(c) for c in used], None if fold is None else xp.asarray(fold),
                     3 if kind == "fold" else 1, featsel, n_features, n_slots, n_bins)
    expected = naive_histograms(codes, rows, slots, used, fold, 3, featsel, n_slots, n_bins)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_slots", [1, 5])
@pytest.mark.parametrize("layout", ["by_row", "feature_major"])
@pytest.mark.parametrize("kind", ["channels", "fold", "counts", "featsel"])
def test_the_sparse_product_sums_as_bincount_bit_for_bit(
        n_slots: int, layout: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy's GIL-free product (``_product_histograms``) and bincount (the path of
    namespaces that have one) give the same sums, bit for bit, for any batch size: every
    cell adds its rows in row order. Every row at one slot (the roots: no gather), or a
    subset over several; counts in uint32."""
    rng = np.random.default_rng(11)
    n, n_features, n_bins = 3000, 4, 9
    codes = rng.integers(0, n_bins, (n_features, n)).astype(np.uint8)
    by_row = np.ascontiguousarray(codes.T) if layout == "by_row" else None
    rows = np.arange(n) if n_slots == 1 else np.sort(rng.choice(n, 2100, replace=False))
    slots = rng.integers(0, n_slots, rows.shape[0])
    gradients = rng.standard_normal(rows.shape[0]) * 1e3
    channels = [gradients, rng.random(rows.shape[0]) * 1e-7, gradients ** 2]
    fold = featsel = None
    if kind in ("fold", "counts"):
        fold = rng.integers(0, 3, rows.shape[0])
        channels = [rng.integers(0, 4, rows.shape[0]).astype(np.uint32)
                    if kind == "counts" else gradients]
    if kind == "featsel":
        featsel = np.sort(np.argsort(rng.random((n_slots, n_features)), axis=1)[:, :2], axis=1)
    m = n_features if featsel is None else 2
    shape = (m, n_slots, n_bins, 3 if fold is not None else len(channels))
    dtype = np.uint32 if kind == "counts" else np.float64

    def sums(out: np.ndarray) -> np.ndarray:
        return histograms(np, codes.reshape(-1), n, rows, slots, channels, fold,
                          3 if fold is not None else 1, featsel, n_features, n_slots,
                          n_bins, by_row, out=out)

    with monkeypatch.context() as patched:
        patched.setattr(trees, "_sparse_product", lambda: None)
        expected = sums(np.empty(shape, dtype))
    assert expected.any()
    for entries in (trees.PRODUCT_ENTRIES, 7 * m):  # one batch, or many
        monkeypatch.setattr(trees, "PRODUCT_ENTRIES", entries)
        assert sums(np.empty(shape, dtype)).tobytes() == expected.tobytes()
        # a view of a larger array (a pass's histograms) is written in place
        held = np.full((m, n_slots + 1, n_bins, shape[3]), 7, dtype)
        sums(held[:, 1:])
        assert held[:, 1:].tobytes() == expected.tobytes() and (held[:, 0] == 7).all()


def test_the_bin_samples_merge_as_a_stable_sort_of_both() -> None:
    """Two partitions' bin samples (each sorted by key) combine into the rows of smallest
    key, equal keys a's first: what a stable sort of a then b keeps; a categorical
    feature's sampled values (an Arrow array each) follow their rows."""
    rng = np.random.default_rng(3)
    for trial in range(300):
        na, nb, limit = (int(v) for v in rng.integers(0, 30, 3))
        keys_a = np.sort(rng.integers(0, 10, na).astype(np.uint64))
        keys_b = np.sort(rng.integers(0, 10, nb).astype(np.uint64))
        rows_a, rows_b = rng.standard_normal((na, 3)), rng.standard_normal((nb, 3))
        keys, rows = np.concatenate([keys_a, keys_b]), np.concatenate([rows_a, rows_b])
        order = np.argsort(keys, kind="stable")[:limit]
        (got_keys, got_rows), places = trees._smallest_keys(keys_a, rows_a, keys_b, rows_b,
                                                            limit)
        np.testing.assert_array_equal(got_keys, keys[order], err_msg=str(trial))
        np.testing.assert_array_equal(got_rows, rows[order], err_msg=str(trial))
        text_a, text_b = (pa.array([f"{v:.6f}" for v in r[:, 0]], type=pa.string())
                          for r in (rows_a, rows_b))
        merged = trees._merged(text_a, text_b, places)
        assert merged.to_pylist() == [f"{v:.6f}" for v in rows[order][:, 0]], trial


# --------------------------------------------------------------------------- splits


def brute_force_split(hist: np.ndarray, slot: int, criterion: Any, min_leaf: float
                      ) -> tuple[float, tuple[int, bool, int] | None]:
    """The best gain of a slot over every (feature position, threshold, missing side),
    and the first candidate within GAIN_RTOL of it in (position, missing right before
    left, bin) order."""
    m, _, n_bins1, _ = hist.shape
    candidates = []
    for j in range(m):
        h = hist[j, slot]
        total = h.sum(axis=0)
        for missing_left in (False, True):
            for b in range(n_bins1 - 1):
                left = h[:b + 1].sum(axis=0) + (h[-1] if missing_left else 0)
                gain = split_gain(criterion, left, total, min_leaf)
                if gain is not None:
                    candidates.append((gain, (j, missing_left, b)))
    if not candidates:
        return -np.inf, None
    best = max(g for g, _ in candidates)
    first = next(c for g, c in candidates if g >= best - 1e-9 * max(abs(best), 1.0))
    return best, first


@pytest.mark.parametrize("criterion", [Gini(3), Entropy(3), Variance(), Newton(0.5, 0.1, 1),
                                       Newton(0.5, 0.1, 1, l1=0.7, min_hessian=0.6)],
                         ids=["gini", "entropy", "variance", "newton", "newton-l1"])
def test_best_split_is_the_brute_force_best(criterion: Any) -> None:
    rng = np.random.default_rng(5)
    for trial in range(5):
        n_slots = 5
        hist = rng.integers(0, 4, (3, n_slots, 7, criterion.channels)).astype(float)
        if isinstance(criterion, Variance):
            hist[..., 1] = hist[..., 0] * rng.standard_normal(hist.shape[:-1])
        if isinstance(criterion, Newton):
            hist[..., 0] = rng.standard_normal(hist.shape[:-1]) * hist[..., 2]
            hist[..., 1] = hist[..., 2] * 0.25
        # every feature of a slot sees the same rows: the same node totals
        for slot in range(n_slots):
            hist[1:, slot] = hist[:1, slot][:, rng.permutation(7)]
        if trial % 2:
            hist[:, ::2, -1] = 0  # no missing values at some nodes
        slots = np.array([4, 0, 2, 3])
        # every slot, and some slots in another order, a chunk at a time
        for chosen, order in ((best_splits(hist, criterion, 1.0, np.zeros(n_slots)),
                               range(n_slots)),
                              (best_splits(hist, criterion, 1.0, np.zeros(4), chunk=3,
                                           slots=slots), slots)):
            for i, slot in enumerate(order):
                expected, first = brute_force_split(hist, slot, criterion, 1.0)
                if not chosen["found"][i]:
                    assert not expected > 1e-9, (trial, slot)
                    continue
                assert chosen["gain"][i] == pytest.approx(expected, rel=1e-9), (trial, slot)
                got = (chosen["position"][i], chosen["missing_left"][i], chosen["bin"][i])
                missing = hist[first[0], slot, -1][:, None]
                if criterion.weight(missing)[0] > 0:
                    assert got == first, (trial, slot)
                else:  # no missing value there: they go to the heavier side
                    assert got[::2] == first[::2], (trial, slot)


def test_ties_go_to_the_first_feature_and_bin() -> None:
    hist = np.zeros((2, 1, 4, 2))
    hist[:, 0, 0, 0] = 5.0  # class 0 in bin 0, class 1 in bin 2 of both features
    hist[:, 0, 2, 1] = 5.0
    found = best_splits(hist, Gini(2), 1.0, np.zeros(1))
    assert found["found"][0] and found["position"][0] == 0 and found["bin"][0] == 0
    # no missing values at the node: they go to the heavier side (left on a tie)
    assert found["missing_left"][0]


def test_a_rounding_residue_in_the_missing_bin_is_no_missing_value() -> None:
    """A sibling's histogram is its parent's minus its own: a missing bin that should be
    empty may hold a residue like 4e-15, and the sums of another engine or the GPU may
    not; missing values go to the heavier side either way."""
    hist = np.zeros((1, 2, 4, 2))
    hist[0, :, 0, 0] = 5.0  # the heavier side is the left: class 0 in bin 0
    hist[0, :, 2, 1] = 2.0
    hist[0, 1, 3, 1] = 3.55e-15  # slot 1: a residue where slot 0 has none
    found = best_splits(hist, Gini(2), 1.0, np.zeros(2))
    assert found["found"].all() and found["missing_left"].all()
    hist[0, 1, 3, 1] = 1e-6  # a real (if light) missing weight of class 1: to the right
    assert not best_splits(hist, Gini(2), 1.0, np.zeros(2))["missing_left"][1]


# --------------------------------------------------------------------------- the artifact


def walk(model: Any, x: np.ndarray) -> np.ndarray:
    """Per row, the sum over trees of the leaf values, walking the saved arrays."""
    nodes = model.nodes
    out = np.zeros((len(x), nodes["value"].shape[1]))
    for i, row in enumerate(x):
        for start in nodes["tree_start"][:-1]:
            node = int(start)
            while nodes["feature"][node] >= 0:
                value = row[nodes["feature"][node]]
                if np.isnan(value):
                    left = nodes["default_left"][node]
                else:
                    left = value <= nodes["threshold"][node]
                node = int(nodes["left"][node] if left else nodes["right"][node])
            out[i] += nodes["value"][node]
    return out


@pytest.mark.parametrize("op", ["random_forest", "gradient_boosted_trees"])
def test_scores_are_the_walk_of_the_saved_arrays(op: str) -> None:
    table = tree_table(rows=200, seed=8)
    features = ["x1", "x2", "x3", "x4", "flat"]
    if op == "random_forest":
        estimator: Any = RandomForest(label="y", features=features, n_trees=5, max_depth=4)
    else:
        estimator = GradientBoostedTrees(label="y", features=features, n_trees=4, max_depth=3,
                                         min_samples_leaf=5)
    model = roundtrip(fit_state(estimator, split(table, 3))[0])
    x = np.column_stack([np.asarray(table.column(f).to_pylist(), dtype=float)
                         for f in features])
    sums = walk(model, x)
    got = predictions(model, table, STRICT)["probability"]
    if op == "random_forest":
        expected = (sums / 5)[:, 1]
    else:
        expected = 1 / (1 + np.exp(-(sums[:, 0] + model.nodes["base"][0])))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert set(model.nodes) >= {"feature", "threshold", "left", "right", "default_left",
                                "value", "tree_start", "importances"}


@pytest.mark.parametrize("xp", [NUMPY, STRICT], ids=["numpy", "strict"])
@pytest.mark.parametrize("op", ["random_forest", "gradient_boosted_trees"])
def test_walking_the_codes_scores_as_comparing_the_values(op: str, xp: Any) -> None:
    """Scoring walks each row's codes against the thresholds the model splits at
    (``coded_walk``): the same leaves as comparing the values, bit for bit, for values
    on a threshold, next to one, infinite, NaN and -0.0."""
    table = tree_table(rows=300, seed=12)
    features = ["x1", "x2", "x3", "x4", "flat"]
    if op == "random_forest":
        estimator: Any = RandomForest(label="y", features=features, n_trees=6, max_depth=5)
    else:
        estimator = GradientBoostedTrees(label="y", features=features, n_trees=5,
                                         max_depth=4, min_samples_leaf=3)
    model = fit_state(estimator, split(table, 2))[0]
    nodes = model.nodes
    rng = np.random.default_rng(13)
    x = rng.standard_normal((400, len(features)))
    split_nodes = np.flatnonzero(nodes["feature"] >= 0)
    for i in range(400):  # many values exactly on, or a hair off, a threshold
        node = split_nodes[i % len(split_nodes)]
        t = nodes["threshold"][node]
        x[i, nodes["feature"][node]] = [t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf),
                                        np.nan, np.inf, -np.inf, -0.0, 0.0][i % 8]
    assert model._coded is not None
    flat = xp.asarray(np.ascontiguousarray(x.T).reshape(-1))
    args = (flat, 400, model._walk, nodes["tree_start"][:-1], model.depth, xp)
    coded, compared = trees.leaf_sums(*args, model._coded), trees.leaf_sums(*args, None)
    assert to_numpy(coded).tobytes() == to_numpy(compared).tobytes()
    np.testing.assert_array_equal(to_numpy(compared), walk(model, x))


# --------------------------------------------------------------------------- missing values


def test_missing_values_get_a_learned_direction() -> None:
    """y is 1 exactly where x0 is missing (null or NaN): one split on missingness."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(400)
    missing = rng.random(400) < 0.3
    nan = missing & (rng.random(400) < 0.5)
    column = pa.array(np.where(nan, np.nan, x), mask=missing & ~nan)
    table = pa.table({"x0": column, "x1": rng.standard_normal(400),
                      "y": pa.array(missing.astype(np.int64))})
    model = fit_state(DecisionTree(label="y", max_depth=2), [table])[0]
    assert (predictions(model, table)["prediction"] == missing).all()
    root = 0
    assert model.nodes["feature"][root] == 0
    assert math.isinf(model.nodes["threshold"][root])  # all values left, missing right
    assert not model.nodes["default_left"][root]


def test_missing_at_scoring_only_goes_to_the_heavier_side() -> None:
    x = np.array([0.0] * 30 + [1.0] * 10)
    table = pa.table({"x0": x, "y": pa.array((x > 0.5).astype(np.int64))})
    model = fit_state(DecisionTree(label="y", max_depth=1), [table])[0]
    scoring = pa.table({"x0": pa.array([np.nan, None, 1.0], type=pa.float64())})
    np.testing.assert_array_equal(predictions(model, scoring)["prediction"], [0, 0, 1])


# --------------------------------------------------------------------------- bad input


def test_a_constant_feature_is_never_split_on() -> None:
    table = tree_table(rows=200, seed=10)
    model, metrics, _ = fit_state(DecisionTree(label="y", max_depth=4), [table])
    assert metrics["feature_importances"]["flat"] == 0.0
    assert 4 not in model.nodes["feature"]  # "flat" is the fifth feature
    only = fit_state(DecisionTree(label="y", features=["flat"]), [table])[0]
    assert len(only.nodes["feature"]) == 1  # a single leaf


def test_a_single_row() -> None:
    table = pa.table({"x0": [1.0], "y": [4.5]})
    model = fit_state(GradientBoostedTrees(label="y", n_trees=3), [table])[0]
    assert predictions(model, table)["prediction"] == pytest.approx([4.5])
    model = fit_state(DecisionTree(label="y"), [table])[0]
    assert predictions(model, table)["prediction"] == pytest.approx([4.5])
    classes = pa.table({"x0": [1.0], "y": [1]})
    with pytest.raises(DataError, match="single class") as error:
        fit_state(RandomForest(label="y"), [classes])
    assert error.value.hint


@pytest.mark.parametrize("op", [DecisionTree, RandomForest, GradientBoostedTrees])
def test_a_null_label_is_a_data_error(op: Any) -> None:
    table = pa.table({"x0": [1.0, 2.0, 3.0], "y": pa.array([0, None, 1])})
    with pytest.raises(DataError, match="label column 'y' has 1 null") as error:
        fit_state(op(label="y"), [table])
    assert "filter" in error.value.hint


def _one_round(table: pa.Table, **params: Any) -> Any:
    """A depth-1 boosted tree of one round on x1 (no shrinkage), as a fitted model."""
    return fit_state(GradientBoostedTrees(label="y", features=["x1"], n_trees=1, max_depth=1,
                                          learning_rate=1.0, min_samples_leaf=1, **params),
                     [table])[0]


def test_l1_and_l2_shrink_the_leaf_values_as_xgboost() -> None:
    """XGBoost's leaf weight: -T(G) / (H + lambda), T moving the gradient sum towards 0 by
    alpha (0 within it); for squared error G sums the residuals at the base (the mean)
    and H counts the rows."""
    table = tree_table(rows=120, seed=3, regression=True)
    y = np.asarray(table.column("y"))
    # an l1 past every gradient sum leaves nothing to gain: no split
    assert len(_one_round(table, l1=1e6).nodes["feature"]) == 1
    for l1, l2 in ((0.0, 0.0), (5.0, 2.0), (40.0, 0.0)):
        model = _one_round(table, l1=l1, l2=l2)
        nodes = model.nodes
        root = int(nodes["tree_start"][0])
        x1 = np.asarray(table.column("x1").to_pylist(), dtype=float)
        left = np.where(np.isnan(x1), nodes["default_left"][root],
                        x1 <= nodes["threshold"][root])
        gradient = nodes["base"][0] - y
        for side, rows in ((nodes["left"][root], left), (nodes["right"][root], ~left)):
            g, h = gradient[rows].sum(), rows.sum()
            shrunk = np.sign(g) * max(abs(g) - l1, 0.0)
            assert nodes["value"][side][0] == pytest.approx(-shrunk / (h + l2), abs=1e-12)


def test_min_split_gain_is_xgboosts_gamma() -> None:
    """XGBoost (and LightGBM) compare gamma with G_L^2/(H_L+l2) + G_R^2/(H_R+l2) -
    G^2/(H+l2), twice the loss decrease the model's gain is: a root whose gain is g
    splits under a gamma of 1.99 g (it did not: gamma was compared with g)."""
    table = tree_table(rows=200, seed=4, regression=True)
    free = _one_round(table, l2=1.0)
    root = int(free.nodes["tree_start"][0])
    gain = float(free.nodes["gain"][root])
    x1 = np.asarray(table.column("x1").to_pylist(), dtype=float)
    left = np.where(np.isnan(x1), free.nodes["default_left"][root],
                    x1 <= free.nodes["threshold"][root])
    gradient = free.nodes["base"][0] - np.asarray(table.column("y"))

    def term(rows: np.ndarray) -> float:
        return gradient[rows].sum() ** 2 / (rows.sum() + 1.0)

    everything = np.ones(len(left), dtype=bool)
    xgboost_gain = term(left) + term(~left) - term(everything)
    assert xgboost_gain == pytest.approx(2 * gain, rel=1e-9)
    for gamma, nodes in ((xgboost_gain * 0.99, 3), (xgboost_gain * 1.01, 1)):
        assert len(_one_round(table, l2=1.0, min_split_gain=gamma).nodes["feature"]) == nodes


def test_min_child_weight_bounds_each_leafs_hessian() -> None:
    """Two classes, one round: a row's hessian is p (1 - p) at the prior, so a leaf's
    hessian sum is its rows times that; min_child_weight keeps every leaf above it (and
    without it some leaf is below)."""
    table = tree_table(rows=300, seed=5)
    y = np.asarray(table.column("y"))
    p = y.mean()
    per_row = p * (1 - p)

    def leaf_hessians(**params: Any) -> np.ndarray:
        model = fit_state(GradientBoostedTrees(label="y", features=["x1", "x2", "x3"],
                                               n_trees=1, max_depth=4, min_samples_leaf=1,
                                               **params), [table])[0]
        leaves = model.nodes["feature"] < 0
        return model.nodes["cover"][leaves] * per_row

    assert leaf_hessians().min() < 3.0
    assert leaf_hessians(min_child_weight=3.0).min() >= 3.0 - 1e-9


def test_rounds_after_an_exact_fit_do_not_split_on_rounding_residue() -> None:
    """A label one tree fits exactly leaves gradients of rounding residue, summed in
    another order in another partitioning: their 'gains' of 1e-30 split there and not
    here (17 of 20 such fits differed). A split must pass GAIN_RTOL of the largest gain
    the fit has made."""
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 4, 60).astype(float)
        table = pa.table({"x": x, "noise": rng.standard_normal(60), "y": 2.0 * x + 1.0})
        estimator = GradientBoostedTrees(label="y", n_trees=3, max_depth=3, learning_rate=1.0,
                                         min_samples_leaf=1)
        one, three = (fit_state(estimator, parts)[0] for parts in ([table], split(table, 3)))
        for name in ("feature", "left", "right"):
            np.testing.assert_array_equal(one.nodes[name], three.nodes[name], err_msg=seed)
        assert (one.nodes["feature"] >= 0).sum() == 3  # the first tree's splits only


def test_the_noise_floor_keeps_real_splits_of_labels_of_a_wide_range() -> None:
    """The noise floor is GAIN_RTOL of the largest gradient sum, GAIN_RTOL**2 of the
    largest gain: a label of 1e6 * a + b (integers) fit a in the first round, and the
    floor of GAIN_RTOL times that round's gain (1e-9 * 1e12) took every split on b after
    it (one split in all, 13 without the floor)."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 200).astype(float), rng.integers(0, 21, 200).astype(float)
    table = pa.table({"a": a, "b": b, "y": 1e6 * a + b})
    model = fit_state(GradientBoostedTrees(label="y", n_trees=5, max_depth=2, learning_rate=1.0,
                                           min_samples_leaf=1), split(table, 2))[0]
    features = model.nodes["feature"]
    assert (features == 1).sum() >= 10
    error = predictions(model, table)["prediction"] - (1e6 * a + b)
    assert np.sqrt(np.mean(error**2)) < 1.5  # 6.2 with the first tree's split only


def _leaves_per_tree(model: Any) -> np.ndarray:
    starts = model.nodes["tree_start"]
    leaf = model.nodes["feature"] < 0
    return np.array([leaf[a:b].sum() for a, b in zip(starts[:-1], starts[1:], strict=True)])


@pytest.mark.parametrize("max_histogram_mb", [64.0, 0.0005], ids=["one_pass", "passes"])
@pytest.mark.parametrize("op", ["decision_tree", "random_forest", "gradient_boosted_trees"])
def test_max_leaves_keeps_the_best_splits_of_a_level(op: str, max_histogram_mb: float) -> None:
    """No tree has more than max_leaves leaves; where a level has more splits than room,
    the tree keeps those of the largest gains (the unconstrained tree's gains say
    which), also where the level takes several passes (a pass per node); with room for
    everything it is the unconstrained model (its nodes in another order where a level
    took several passes: without max_leaves, a level's nodes are made pass by pass)."""
    table = tree_table(rows=400, seed=6, regression=True)
    kinds = {"decision_tree": (DecisionTree, {}),
             "random_forest": (RandomForest, {"n_trees": 3, "seed": 2}),
             "gradient_boosted_trees": (GradientBoostedTrees, {"n_trees": 3})}
    kind, extra = kinds[op]

    def grown(**params: Any) -> Any:
        return fit_state(kind(label="y", max_depth=4, min_samples_leaf=3, **extra, **params,
                              max_histogram_mb=max_histogram_mb), split(table, 2))[0]

    free, capped = grown(), grown(max_leaves=5)
    assert (_leaves_per_tree(capped) <= 5).all() and (_leaves_per_tree(free) > 5).all()
    roomy = grown(max_leaves=10_000)
    if max_histogram_mb > 1:
        for name in ("feature", "threshold", "left", "value"):
            np.testing.assert_array_equal(roomy.nodes[name], free.nodes[name], err_msg=name)
    else:
        np.testing.assert_array_equal(predictions(roomy, table)["prediction"],
                                      predictions(free, table)["prediction"])
    # the first tree: root and level-1 splits as unconstrained (4 leaves); of the level-2
    # candidates (the free tree's depth-2 splits) the one of largest gain splits (5)
    nodes, start = free.nodes, int(free.nodes["tree_start"][0])
    left, right = int(nodes["left"][start]), int(nodes["right"][start])
    level2 = [int(c) for n in (left, right) for c in (nodes["left"][n], nodes["right"][n])
              if nodes["feature"][c] >= 0]
    best = sorted(level2, key=lambda c: -nodes["gain"][c])[:1]
    kept = capped.nodes
    c_left, c_right = int(kept["left"][start]), int(kept["right"][start])
    c_level2 = [int(c) for n in (c_left, c_right) for c in (kept["left"][n], kept["right"][n])]
    split_gains = sorted(kept["gain"][c] for c in c_level2 if kept["feature"][c] >= 0)
    assert split_gains == sorted(nodes["gain"][c] for c in best)


@pytest.mark.parametrize("op", ["decision_tree", "random_forest", "gradient_boosted_trees"])
def test_max_leaves_keeps_the_same_splits_however_passes_divide_a_level(
        op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_histogram_mb is memory only: where max_leaves binds, a budget so small that a
    level takes many passes gives the default's model, node arrays bit for bit (a
    level's candidate splits wait for its last pass). Class counts are exact sums;
    boosting's are not, and a small budget keeps fewer parents' histograms for sibling
    subtraction (parent minus sibling rounds otherwise than the sibling's own sums),
    so for boosting no parent is kept either way."""
    kinds = {"decision_tree": (DecisionTree, {"max_leaves": 9, "categorical": ["city"]}),
             "random_forest": (RandomForest, {"n_trees": 24, "max_leaves": 6}),
             "gradient_boosted_trees": (GradientBoostedTrees, {
                 "n_trees": 4, "max_leaves": 5, "max_features": 0.7, "categorical": ["city"],
                 "monotonic": {"x1": 1}, "interactions": [["x1", "x2"], ["x3", "city"]]})}
    kind, params = kinds[op]
    boosted = kind is GradientBoostedTrees
    table = category_table(rows=500, classes=3, seed=31, regression=boosted)
    if boosted:
        monkeypatch.setattr(trees, "PARENT_HISTOGRAM_MB", 0.0)
    derived = []
    add_siblings = trees.add_siblings

    def counted(nodes: np.ndarray, hist: np.ndarray, siblings: Any) -> Any:
        out = add_siblings(nodes, hist, siblings)
        derived.append(len(out[0]) - len(nodes))
        return out

    monkeypatch.setattr(trees, "add_siblings", counted)

    def grown(**more: Any) -> tuple[Any, dict[str, Any]]:
        estimator = kind(label="y", max_depth=5, min_samples_leaf=3, seed=4,
                         **{**params, **more})
        model, metrics, _ = fit_state(estimator, split(table, 3))
        return model, metrics

    roomy, metrics = grown()
    if kind is DecisionTree:  # larger siblings came from their parents
        assert sum(derived) > 0
    tight, small = grown(max_histogram_mb=0.002)
    assert small["histogram_passes"] > 2 * metrics["histogram_passes"]
    for name, values in roomy.arrays().items():
        np.testing.assert_array_equal(tight.arrays()[name], values, err_msg=name)
    leaves = _leaves_per_tree(tight)
    free = _leaves_per_tree(grown(max_leaves=None)[0])
    assert (leaves <= params["max_leaves"]).all() and (free > params["max_leaves"]).any()


def test_max_depth_zero_is_a_single_leaf() -> None:
    """max_depth 0 is a single leaf: the class frequencies (the mean), as Spark MLlib."""
    table = tree_table(rows=120, seed=11)
    y = table.column("y").to_numpy()
    for op in (DecisionTree(label="y", max_depth=0),
               RandomForest(label="y", max_depth=0, n_trees=3, bootstrap=False)):
        model = fit_state(op, [table])[0]
        np.testing.assert_allclose(predictions(model, table)["probability"], y.mean())
    boosted = fit_state(GradientBoostedTrees(label="y", max_depth=0, n_trees=1,
                                             learning_rate=1.0), [table])[0]
    np.testing.assert_allclose(predictions(boosted, table)["probability"], y.mean(),
                               rtol=1e-12)
    with pytest.raises(ValidationError):
        DecisionTree(label="y", max_depth=-1)


def test_bad_parameters_and_schemas() -> None:
    table = tree_table(rows=50)
    with pytest.raises(ParamError, match="criterion variance"):
        DecisionTree(label="y", criterion="variance", task="classification")
    with pytest.raises(ParamError, match="criterion gini"):
        DecisionTree(label="y", criterion="gini").output_schema(
            tree_table(rows=10, regression=True).schema)
    with pytest.raises(ParamError, match="early_stopping needs held-out rows"):
        GradientBoostedTrees(label="y", early_stopping=True)
    # XGBoost's early_stopping_rounds turns early stopping on; n_iter_no_change (or tol)
    # alone did nothing here, silently: every one of n_trees was fitted
    with pytest.raises(ParamError) as info:
        GradientBoostedTrees(label="y", n_iter_no_change=5, validation_fraction=0.2)
    assert str(info.value) == (
        "n_iter_no_change says when early stopping stops, and early_stopping is off: every "
        "one of n_trees would be fitted (set early_stopping: true (with "
        "validation_fraction), or leave n_iter_no_change out)")
    with pytest.raises(ParamError, match="^n_iter_no_change and tol say when"):
        GradientBoostedTrees(label="y", tol=1e-3, n_iter_no_change=3)
    GradientBoostedTrees(label="y", n_iter_no_change=5, validation_fraction=0.2,
                         early_stopping=True)
    dated = table.append_column("d", pa.array(np.zeros(50, "datetime64[D]")))
    with pytest.raises(SchemaError, match="not numeric"):
        DecisionTree(label="y", features=["d"]).output_schema(dated.schema)
    # a text feature can only be categorical, so it is
    assert DecisionTree(label="y", features=["g"]).init(table.schema)["categories"].keys() == {
        "g"}
    with pytest.raises(SchemaError, match="regression label is a number"):
        DecisionTree(label="g", task="regression").output_schema(table.schema)
    with pytest.raises(ValidationError):
        RandomForest(label="y", max_features=1.5)
    zero = table.set_column(table.schema.get_field_index("w"), "w", pa.array(np.zeros(50)))
    with pytest.raises(DataError, match="sum to zero"):
        fit_state(DecisionTree(label="y", weight="w"), [zero])


def test_task_overrides_the_label_type() -> None:
    table = tree_table(rows=150, seed=12)
    regression = fit_state(DecisionTree(label="y", task="regression", max_depth=3), [table])[0]
    assert not regression.is_classifier
    floats = table.set_column(table.schema.get_field_index("y"), "y",
                              pa.array(table.column("y").to_numpy().astype(float)))
    classifier = fit_state(DecisionTree(label="y", task="classification"), [floats])[0]
    assert classifier.classes == [0.0, 1.0]


# --------------------------------------------------------------------------- memo, groups


@pytest.mark.parametrize("op", ["forest", "boosted"])
def test_memo_only_saves_time(op: str) -> None:
    """Fresh table objects every pass (no memo) give the same model, bit for bit."""
    table = tree_table(rows=240, seed=13)

    def estimator() -> Any:
        if op == "forest":
            return RandomForest(label="y", weight="w", n_trees=4, max_depth=4, seed=3)
        return GradientBoostedTrees(label="y", weight="w", n_trees=4, max_depth=3,
                                    subsample=0.8, min_samples_leaf=5, validation_fraction=0.2,
                                    early_stopping=True, n_iter_no_change=5)

    parts = split(table, 3)
    cached, _, _ = fit_state(estimator(), parts)
    fresh, _, _ = fit_state(estimator(), parts, fresh=True)
    for name, values in cached.arrays().items():
        np.testing.assert_array_equal(values, fresh.arrays()[name], err_msg=name)


def test_node_groups_give_the_same_forest() -> None:
    table = tree_table(rows=300, seed=14)
    parts = split(table, 2)
    one, metrics, _ = fit_state(RandomForest(label="y", n_trees=8, max_depth=5), parts)
    many, small, _ = fit_state(RandomForest(label="y", n_trees=8, max_depth=5,
                                            max_histogram_mb=0.005), parts)
    assert small["histogram_passes"] > metrics["histogram_passes"]
    for name, values in one.arrays().items():
        np.testing.assert_array_equal(values, many.arrays()[name], err_msg=name)


def test_row_batches_give_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forest's pass sums its trees' histograms in batches of rows: any batch size,
    one model."""
    table = tree_table(rows=300, classes=3, seed=19)

    def estimator() -> Any:
        return RandomForest(label="y", n_trees=6, max_depth=4, max_histogram_mb=0.02)

    whole = fit_state(estimator(), split(table, 2))[0]
    monkeypatch.setattr(trees, "ROW_BATCH", 50)
    batched = fit_state(estimator(), split(table, 2))[0]
    for name, values in whole.arrays().items():
        np.testing.assert_array_equal(values, batched.arrays()[name], err_msg=name)


def grown_state(estimator: Any, parts: list[pa.Table]) -> dict[str, Any]:
    """The driver's final state of a fit (its forest: every node, in creation order)."""
    state, _ = drive(estimator, parts[0].schema, lambda partial: tree_reduce(
        [partial(p, NUMPY) for p in parts], estimator.combine))
    return state


def test_boosting_splits_on_the_features_drawn_for_its_tree_and_node() -> None:
    """``tree_features`` draws features per tree, ``max_features`` some of those per node
    (XGBoost's colsample_bytree and colsample_bynode): every split is on a feature its
    node may use, trees draw different features, and drawing all is the default."""
    table = tree_table(rows=400, classes=3, seed=29)  # 6 features, 3 trees a round
    parts = split(table, 3)

    def boosting(**params: Any) -> GradientBoostedTrees:
        return GradientBoostedTrees(label="y", n_trees=8, max_depth=3, min_samples_leaf=3,
                                    seed=4, **params)

    state = grown_state(boosting(tree_features=0.5, max_features=0.7), parts)
    forest, n = state["forest"], len(state["features"])
    assert n == 6
    split_nodes = np.flatnonzero(forest["status"] == trees.SPLIT)
    tree_of = forest["tree"][split_nodes]
    keys = trees.node_keys(forest, split_nodes)
    per_tree = trees.allowed_features(keys, tree_of, n, 3, lambda m: m, 4)
    per_node = trees.allowed_features(keys, tree_of, n, 3, lambda m: int(0.7 * m), 4)
    assert (per_tree.sum(axis=1) == 3).all() and (per_node.sum(axis=1) == 2).all()
    assert not (per_node & ~per_tree).any()  # a node draws among its tree's features
    used = forest["feature"][split_nodes]
    assert per_node[np.arange(len(split_nodes)), used].all()
    for tree in np.unique(tree_of):  # a tree's nodes share its draw
        rows = per_tree[tree_of == tree]
        assert (rows == rows[0]).all()
    assert len({per_tree[tree_of == t][0].tobytes() for t in np.unique(tree_of)}) > 1
    # unsampled, some splits use features those draws would not allow
    full = grown_state(boosting(), parts)["forest"]
    full_nodes = np.flatnonzero(full["status"] == trees.SPLIT)
    allowed = trees.allowed_features(trees.node_keys(full, full_nodes),
                                     full["tree"][full_nodes], n, 3, lambda m: int(0.7 * m), 4)
    assert not allowed[np.arange(len(full_nodes)), full["feature"][full_nodes]].all()
    assert trees.allowed_features(trees.node_keys(full, full_nodes), full["tree"][full_nodes],
                                  n, n, lambda m: m, 4) is None
    every = grown_state(boosting(tree_features=1.0, max_features="all"), parts)["forest"]
    for name, values in full.items():
        np.testing.assert_array_equal(values, every[name], err_msg=name)
    # the forest's per-node choices keep their meaning
    assert [trees.features_fraction(c, 16, True) for c in ("auto", "sqrt", "log2", "all", 0.3)
            ] == [4, 4, 4, 16, 4]
    assert trees.features_fraction("auto", 16, False) == 16
    for bad in ({"tree_features": 0.0}, {"tree_features": 1.5}, {"max_features": 1.5},
                {"max_features": "auto"}):
        with pytest.raises(ValidationError):
            boosting(**bad)


@pytest.mark.parametrize("classes", [0, 2, 3])
def test_trees_sum_only_their_features_histograms_to_the_same_model(
        classes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``tree_features`` a pass sums the histograms of its trees' features only: the
    same trees as summing every feature's and searching the tree's (the same splits; the
    values to rounding: a node's sums are read from its first feature's histogram)."""
    from operators.models import boosted_trees

    table = tree_table(rows=400, classes=classes, seed=31, regression=classes == 0)
    parts = split(table, 3)

    def fitted() -> dict[str, np.ndarray]:
        model = fit_state(GradientBoostedTrees(
            label="y", n_trees=6, max_depth=4, min_samples_leaf=3, subsample=0.8,
            tree_features=0.5, max_features=0.7, seed=2), parts)[0]
        return model.arrays()

    summed: list[int] = []
    real = boosted_trees.histograms

    def counting(*args: Any, **kwargs: Any) -> np.ndarray:
        out = real(*args, **kwargs)
        summed.append(out.shape[0])
        return out

    monkeypatch.setattr(boosted_trees, "histograms", counting)
    only_theirs = fitted()
    assert set(summed) == {3}  # 3 of the 6 features a tree
    summed.clear()
    monkeypatch.setattr(GradientBoostedTrees, "_featsel", lambda self, state: lambda nodes: None)
    every = fitted()
    assert set(summed) == {6}
    for name, values in every.items():
        if values.dtype.kind == "f" and name not in ("threshold",):
            np.testing.assert_allclose(values, only_theirs[name], rtol=1e-12, atol=1e-15,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(values, only_theirs[name], err_msg=name)


@pytest.mark.parametrize("loss", ["poisson", "gamma"])
def test_poisson_and_gamma_losses_fit_as_scikit_learn(loss: str) -> None:
    """Counts and positive amounts: Newton boosting of the half deviance with a log link
    fits as HistGradientBoostingRegressor(loss=...) does, and predicts positive means."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.metrics import mean_gamma_deviance, mean_poisson_deviance

    rng = np.random.default_rng(8)
    x1, x2 = rng.uniform(-2, 2, 5000), rng.uniform(-2, 2, 5000)
    mean = np.exp(0.5 * x1 - 0.3 * x2 ** 2 + 0.5)
    y = rng.poisson(mean).astype(float) if loss == "poisson" else rng.gamma(2.0, mean / 2.0)
    table = pa.table({"x1": x1, "x2": x2, "y": y})
    model, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", n_trees=40, max_depth=3, min_samples_leaf=20, loss=loss), split(table, 3))
    ours = np.asarray(predictions(model, table)["prediction"])
    reference = HistGradientBoostingRegressor(
        loss=loss, max_iter=40, max_depth=3, min_samples_leaf=20, early_stopping=False
    ).fit(np.c_[x1, x2], y).predict(np.c_[x1, x2])
    deviance = mean_poisson_deviance if loss == "poisson" else mean_gamma_deviance
    assert (ours > 0).all()
    assert deviance(y, ours) == pytest.approx(deviance(y, reference), rel=1e-6)
    assert deviance(y, ours) < deviance(y, np.full_like(y, y.mean())) * 0.8
    roundtrip(model)  # the log link is saved with the model
    np.testing.assert_array_equal(predictions(roundtrip(model), table)["prediction"], ours)
    # early stopping follows the held-out deviance
    _, stopped, _ = fit_state(GradientBoostedTrees(
        label="y", n_trees=400, max_depth=3, loss=loss, validation_fraction=0.2,
        early_stopping=True, n_iter_no_change=5), split(table, 2))
    assert stopped["stopped_early"] and stopped["rounds"] < 400
    assert np.isfinite(stopped["validation_losses"]).all()


def test_losses_that_cannot_apply() -> None:
    rng = np.random.default_rng(9)
    table = pa.table({"x": rng.standard_normal(200), "y": rng.poisson(2.0, 200).astype(float)})
    with pytest.raises(DataError, match="loss: gamma needs positive labels; 'y' has 0"):
        fit_state(GradientBoostedTrees(label="y", loss="gamma"), [table])
    negative = table.set_column(1, "y", pa.array(np.r_[-1.0, table["y"].to_numpy()[1:]]))
    with pytest.raises(DataError, match="loss: poisson needs non-negative"):
        fit_state(GradientBoostedTrees(label="y", loss="poisson"), [negative])
    # a held-out row's label is checked as a training row's (it was refused after the
    # fit, by the validation deviance, with a hint to drop it from `metrics`)
    estimator = GradientBoostedTrees(label="y", loss="gamma", validation_fraction=0.3)
    labels = table["y"].to_numpy() + 1.0
    for row in range(200):  # a row held out with its label 0 (the hash reads it)
        held = table.set_column(1, "y", pa.array(np.where(np.arange(200) == row, 0.0, labels)))
        if holdout_mask(held, 0.3, estimator.params.seed)[row]:
            break
    with pytest.raises(DataError, match="loss: gamma needs positive labels; 'y' has 0"):
        fit_state(estimator, [held])
    # labels whose gradients' sums overflow float64: no split gained, silently
    huge = table.set_column(1, "y", pa.array(labels * 1e299))
    with pytest.raises(DataError, match=r"label column 'y' has values up to 7e\+299, "
                                        "too large for loss: poisson"):
        fit_state(GradientBoostedTrees(label="y", loss="poisson"), [huge])
    classes = table.set_column(1, "y", pa.array(np.arange(200) % 2))
    with pytest.raises(ParamError, match="regression loss"):
        GradientBoostedTrees(label="y", loss="poisson").output_schema(classes.schema)
    regression = GradientBoostedTrees(label="y", loss="poisson", task="regression")
    assert regression.output_schema(classes.schema).field("prediction").type == pa.float64()


def rising_and_wavy(rows: int, classify: bool, seed: int = 0) -> pa.Table:
    """A label that rises with x1 overall but not everywhere (a sine on top), and rises
    with x2."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-3, 3, rows), rng.uniform(-3, 3, rows)
    signal = np.sin(2 * x1) + 0.8 * x1 + 0.5 * x2 + 0.3 * rng.standard_normal(rows)
    y = (signal > 0).astype(np.int64) if classify else signal
    return pa.table({"x1": x1, "x2": x2, "y": y})


def largest_moves(model: Any, column: str, other: str) -> tuple[float, float]:
    """The largest fall and rise of the output along a grid of ``column``, the other
    feature held at several values."""
    grid = np.linspace(-3, 3, 241)
    out = "probability" if model.classes is not None else "prediction"
    steps = []
    for held in np.linspace(-2.9, 2.9, 9):
        table = pa.table({column: grid, other: np.full(len(grid), held)})
        steps.append(np.diff(np.asarray(model.transform(table, NUMPY).column(out))))
    steps = np.concatenate(steps)
    return float(steps.min()), float(steps.max())


def _peer(kind: str, classify: bool) -> Any:
    """The scikit-learn model of the same kind and settings, with monotonic_cst."""
    from sklearn import ensemble, tree

    if kind == "boosted":
        peer = (ensemble.HistGradientBoostingClassifier if classify
                else ensemble.HistGradientBoostingRegressor)
        return peer(max_iter=30, max_depth=4, min_samples_leaf=10, early_stopping=False,
                    monotonic_cst=[1, -1])
    if kind == "tree":
        peer = tree.DecisionTreeClassifier if classify else tree.DecisionTreeRegressor
        return peer(max_depth=6, min_samples_leaf=10, monotonic_cst=[1, -1])
    peer = ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor
    return peer(n_estimators=20, max_depth=6, min_samples_leaf=10, max_features=1.0,
                monotonic_cst=[1, -1], random_state=0)


MONOTONIC_KINDS = {  # (ours, settings, how close the fit must be to scikit-learn's)
    "boosted": (GradientBoostedTrees, {"n_trees": 30, "max_depth": 4, "min_samples_leaf": 10},
                0.02),
    "tree": (DecisionTree, {"max_depth": 6, "min_samples_leaf": 10}, 0.05),
    "forest": (RandomForest, {"n_trees": 20, "max_depth": 6, "min_samples_leaf": 10,
                              "max_features": "all"}, 0.05),
}


@pytest.mark.parametrize("kind", sorted(MONOTONIC_KINDS))
@pytest.mark.parametrize("classify", [False, True], ids=["regression", "binary"])
def test_monotonic_constraints_hold_and_fit_as_scikit_learn(kind: str, classify: bool) -> None:
    """``monotonic: {x1: 1, x2: -1}``: the output never falls along x1 and never rises
    along x2 (where the data rise), while the unconstrained model does both; the fit is
    as good as scikit-learn's model with its monotonic_cst (boosting clips values to the
    bounds, as HistGradientBoosting; the trees refuse splits that leave them, as
    scikit-learn's trees)."""
    op, settings, tolerance = MONOTONIC_KINDS[kind]
    table = rising_and_wavy(4000, classify)
    parts = split(table, 3)

    def fitted(**params: Any) -> Any:
        return fit_state(op(label="y", **settings, **params), parts)[0]

    free = fitted()
    assert largest_moves(free, "x1", "x2")[0] < -1e-3  # the sine shows
    assert largest_moves(free, "x2", "x1")[1] > 1e-3
    bound = fitted(monotonic={"x1": 1, "x2": -1})
    assert largest_moves(bound, "x1", "x2")[0] >= 0.0
    assert largest_moves(bound, "x2", "x1")[1] <= 0.0
    X, y = np.c_[table["x1"].to_numpy(), table["x2"].to_numpy()], table["y"].to_numpy()
    reference = _peer(kind, classify).fit(X, y)
    if classify:
        ours = np.clip(np.asarray(predictions(bound, table)["probability"]), 1e-6, 1 - 1e-6)
        theirs = np.clip(reference.predict_proba(X)[:, 1], 1e-6, 1 - 1e-6)
        loss = [float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p))) for p in (ours, theirs)]
    else:
        ours, theirs = np.asarray(predictions(bound, table)["prediction"]), reference.predict(X)
        loss = [float(np.mean((p - y) ** 2)) for p in (ours, theirs)]
    assert loss[0] == pytest.approx(loss[1], rel=tolerance), loss


def branch_features(model: Any) -> list[set[int]]:
    """The features split on along each root-to-leaf branch of every tree."""
    nodes, out = model.nodes, []
    for start in nodes["tree_start"][:-1]:
        stack = [(int(start), frozenset())]
        while stack:
            node, seen = stack.pop()
            feature = int(nodes["feature"][node])
            if feature < 0:
                out.append(set(seen))
                continue
            for child in (nodes["left"][node], nodes["right"][node]):
                stack.append((int(child), seen | {feature}))
    return out


def test_interaction_constraints_keep_each_branch_in_one_group() -> None:
    """``interactions: [[x1, x3], [x2]]``: every branch splits on the features of one
    group only, so the model is additive in x1 and x2 (no x1-x2 interaction term, where
    the label is x1 * x2 and the free model has one), and fits as HistGradientBoosting's
    with the same interaction_cst."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(12)
    x1, x2, x3 = (rng.uniform(-2, 2, 5000) for _ in range(3))
    y = x1 * x2 + 0.5 * x3 + 0.1 * rng.standard_normal(5000)
    table = pa.table({"x1": x1, "x2": x2, "x3": x3, "y": y})
    settings = {"label": "y", "n_trees": 40, "max_depth": 4, "min_samples_leaf": 20}

    def interaction(model: Any) -> float:
        grid = pa.table({"x1": [1.5, 1.5, -1.5, -1.5], "x2": [1.5, -1.5, 1.5, -1.5],
                         "x3": [0.3] * 4})
        f = np.asarray(predictions(model, grid)["prediction"])
        return float(f[0] - f[1] - f[2] + f[3])

    free = fit_state(GradientBoostedTrees(**settings), split(table, 3))[0]
    assert abs(interaction(free)) > 1.0
    bound = fit_state(GradientBoostedTrees(**settings, interactions=[["x1", "x3"], ["x2"]]),
                      split(table, 3))[0]
    assert abs(interaction(bound)) < 1e-12
    groups = [{0, 2}, {1}]
    assert all(any(used <= g for g in groups) for used in branch_features(bound))
    assert any(len(used) > 1 for used in branch_features(bound))  # x1 with x3 still
    reference = HistGradientBoostingRegressor(
        max_iter=40, max_depth=4, min_samples_leaf=20, early_stopping=False,
        interaction_cst=[[0, 2], [1]]).fit(np.c_[x1, x2, x3], y)
    ours = np.asarray(predictions(bound, table)["prediction"])
    mse = [float(np.mean((p - y) ** 2)) for p in (ours, reference.predict(np.c_[x1, x2, x3]))]
    assert mse[0] == pytest.approx(mse[1], rel=0.02), mse
    # the features no group names form a group of their own
    rest = fit_state(GradientBoostedTrees(**settings, interactions=[["x2"]]),
                     split(table, 3))[0]
    assert all(used <= {1} or used <= {0, 2} for used in branch_features(rest))
    with pytest.raises(SchemaError, match="interactions names 'x9'"):
        GradientBoostedTrees(label="y", interactions=[["x9"]]).output_schema(table.schema)


def test_monotonic_constraints_that_cannot_apply() -> None:
    table = rising_and_wavy(300, classify=False)
    with pytest.raises(SchemaError, match="monotonic names 'x9', which is not a feature"):
        GradientBoostedTrees(label="y", monotonic={"x9": 1}).output_schema(table.schema)
    with pytest.raises(ValidationError):
        GradientBoostedTrees(label="y", monotonic={"x1": 2})
    classes = table.set_column(2, "y", pa.array(np.arange(300) % 3))
    for op in (GradientBoostedTrees, DecisionTree, RandomForest):
        with pytest.raises(SchemaError, match="monotonic names 'x9'"):
            op(label="y", monotonic={"x9": 1}).output_schema(table.schema)
        with pytest.raises(DataError, match="'y' has 3 classes"):
            fit_state(op(label="y", monotonic={"x1": 1}), [classes])


@pytest.mark.parametrize("classes", [0, 2, 3])
def test_boosting_moves_rows_by_table_or_by_comparisons_to_one_model(
        classes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A boosting pass moves each row down the round's trees by a child lookup table,
    or by comparisons where the table would be too big; and an engine without the
    partition memo walks the trees from their roots: one model every way."""
    table = tree_table(rows=400, classes=classes, seed=23, regression=classes == 0)

    def estimator() -> GradientBoostedTrees:
        return GradientBoostedTrees(label="y", n_trees=4, max_depth=4, min_samples_leaf=3,
                                    subsample=0.8)

    parts = split(table, 3)
    by_table = fit_state(estimator(), parts)[0]
    no_memo = fit_state(estimator(), parts, fresh=True)[0]
    monkeypatch.setattr(trees, "TABLE_ENTRIES", 0)
    by_comparison = fit_state(estimator(), parts)[0]
    for name, values in by_table.arrays().items():
        np.testing.assert_array_equal(values, by_comparison.arrays()[name], err_msg=name)
        np.testing.assert_array_equal(values, no_memo.arrays()[name], err_msg=name)


@pytest.mark.parametrize("op", [DecisionTree, GradientBoostedTrees])
def test_node_groups_and_sibling_subtraction(op: Any) -> None:
    """All features per node: larger children get parent minus sibling; a budget too
    small for a level (or for the parents kept) gives the same model."""
    table = tree_table(rows=400, seed=18, regression=op is GradientBoostedTrees)
    parts = split(table, 3)
    params = {"label": "y", "weight": "w", "max_depth": 5, "min_samples_leaf": 2}
    if op is GradientBoostedTrees:
        params["n_trees"] = 3
    roomy, metrics, _ = fit_state(op(**params), parts)
    tight, small, _ = fit_state(op(**params, max_histogram_mb=0.002), parts)
    assert small["histogram_passes"] > metrics["histogram_passes"]
    assert small["nodes"] == metrics["nodes"]
    got, expected = predictions(tight, table), predictions(roomy, table)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-9, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- forests, metrics


def test_bootstrap_follows_the_seed() -> None:
    table = tree_table(rows=200, seed=15)
    first = fit_state(RandomForest(label="y", n_trees=3, seed=1), [table])[0]
    again = fit_state(RandomForest(label="y", n_trees=3, seed=1), split(table, 4, seed=3))[0]
    other = fit_state(RandomForest(label="y", n_trees=3, seed=2), [table])[0]
    np.testing.assert_allclose(predictions(first, table)["probability"],
                               predictions(again, table)["probability"], rtol=1e-12)
    assert not np.allclose(predictions(first, table)["probability"],
                           predictions(other, table)["probability"])


def test_metrics_have_importances_and_validation() -> None:
    rng = np.random.default_rng(16)
    X = rng.standard_normal((400, 3))
    y = (X[:, 1] > 0).astype(np.int64)
    table = table_of(X, y)
    _, metrics, passes = fit_state(RandomForest(label="y", n_trees=5, max_depth=3,
                                                validation_fraction=0.25), [table])
    importances = metrics["feature_importances"]
    assert sum(importances.values()) == pytest.approx(1.0)
    assert max(importances, key=importances.get) == "x1"
    assert metrics["validation"]["accuracy"] > 0.9
    assert metrics["trees"] == 5 and metrics["depth"] <= 3
    assert metrics["validation_rows"] + metrics["training_rows"] == 400
    assert passes == 1 + metrics["histogram_passes"] + 1


def test_early_stopping_keeps_the_rounds_grown() -> None:
    rng = np.random.default_rng(17)
    X = rng.standard_normal((300, 2))
    y = X[:, 0] + 0.1 * rng.standard_normal(300)
    table = table_of(X, y)
    _, metrics, _ = fit_state(GradientBoostedTrees(
        label="y", n_trees=200, learning_rate=1.0, max_depth=3, min_samples_leaf=5,
        validation_fraction=0.3, early_stopping=True, n_iter_no_change=3), [table])
    assert metrics["stopped_early"]
    assert metrics["rounds"] < 200
    losses = metrics["validation_losses"]
    assert len(losses) == metrics["rounds"] + 1  # the baseline, then one per round
    assert min(losses[-3:]) >= losses[-4] - 1e-7


def test_early_stopping_without_held_out_rows_is_an_error() -> None:
    """validation_fraction that holds no row out (few rows, a small fraction): every
    round's held-out loss would be 0 and the fit would stop after n_iter_no_change
    rounds, silently; it is a DataError saying what to change."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2))
    table = table_of(X, X[:, 0])
    assert not holdout_mask(table, 0.001, 0).any()
    with pytest.raises(DataError, match="validation_fraction 0.001 held out no rows") as err:
        fit_state(GradientBoostedTrees(label="y", n_trees=50, validation_fraction=0.001,
                                       early_stopping=True), [table])
    assert "raise validation_fraction" in err.value.hint


@pytest.mark.parametrize("capped", [{}, {"max_leaves": 12, "max_histogram_mb": 0.1}],
                         ids=["free", "max_leaves"])
def test_partitions_get_no_histograms_kept_for_the_driver(capped: dict[str, Any]) -> None:
    """The parents' histograms kept for sibling subtraction, and a capped level's
    candidate splits gathered until its last pass, are the driver's: what each pass
    ships to the partitions (``partial_state``) leaves them out, and every partition's
    partial is the one the whole state gives."""
    import pickle

    parts = split(tree_table(rows=600, seed=21), 3)
    estimator = GradientBoostedTrees(label="y", n_trees=4, max_depth=4, min_samples_leaf=5,
                                     **capped)
    whole = [estimator.init(parts[0].schema)]
    original = estimator.update

    def update(stats: Any, state: Any) -> Any:
        out = original(stats, state)
        whole.append(out[0])
        return out

    estimator.update = update  # type: ignore[method-assign]
    saved, gathered = [], []

    def aggregate(partial: Any) -> Any:
        (shipped,) = partial.__defaults__
        full = whole[-1]
        assert not {"siblings", "kept", "gathered"} & shipped.keys()
        gathered.append(full.get("gathered") is not None)
        saved.append(len(pickle.dumps(full)) - len(pickle.dumps(shipped)))
        values = [partial(p, NUMPY) for p in parts]
        expected = [estimator.partial(p, full, NUMPY) for p in parts]
        assert pickle.dumps(values) == pickle.dumps(expected)
        return tree_reduce(values, estimator.combine)

    drive(estimator, parts[0].schema, aggregate)
    assert max(saved) > 10_000  # a level's parent histograms stayed on the driver
    assert any(gathered) == bool(capped)


def test_node_draws_are_the_same_however_many_passes_a_level_takes() -> None:
    """A node's features (max_features) are drawn by its tree and its place in the tree,
    not by its id, which the passes of a level give in their own order (a larger sibling
    derived from its parent comes after the pass's own nodes): max_histogram_mb (a memory
    setting) does not change the model (the same splits; sums by another subtraction
    round in their last bits)."""
    table = tree_table(rows=600, seed=31, regression=True)
    for cls, params in ((GradientBoostedTrees, {"n_trees": 4, "max_features": 0.6}),
                        (RandomForest, {"n_trees": 3, "max_features": "sqrt"})):
        whole, _, _ = fit_state(cls(label="y", max_depth=6, **params), split(table, 2))
        passes, metrics, _ = fit_state(cls(label="y", max_depth=6, max_histogram_mb=0.002,
                                           **params), split(table, 2))
        assert metrics["histogram_passes"] > 6 * params["n_trees"] // 3
        a, b = whole.arrays(), passes.arrays()
        for key in ("feature", "threshold", "tree_start"):
            np.testing.assert_array_equal(np.sort(a[key]), np.sort(b[key]), err_msg=key)
        table_scores = predictions(whole, table)["prediction"]
        np.testing.assert_allclose(predictions(passes, table)["prediction"], table_scores,
                                   rtol=1e-9)


def test_an_absent_class_of_a_leaf_is_0_whatever_the_sums_order() -> None:
    """A class a leaf has no row of has probability 0 exactly, on NumPy and on the array
    API path (where a sibling's class weights are its parent's minus its own: a residue
    of 5e-16 where no row is), so that the validation's log loss and AUC, which a
    probability of 5e-16 against 0 moves, are the same on both."""
    from operators.testing.kit import all_cases, fit_measured

    (case,) = [c for c in all_cases() if c.name == "decision_tree[entropy-weighted-multiclass]"]
    data = case.data()
    fitted = {}
    for name, xp in (("numpy", NUMPY), ("strict", STRICT)):
        model, metrics = fit_measured(case.build(), [data], xp)
        proba = np.array(model.transform(data, NUMPY).column("probability").to_pylist())
        fitted[name] = proba, metrics["validation"]
    (p_numpy, v_numpy), (p_strict, v_strict) = fitted.values()
    assert (p_numpy == 0).any()
    np.testing.assert_array_equal(p_strict == 0, p_numpy == 0)
    for metric in ("log_loss", "roc_auc", "pr_auc"):
        assert v_strict[metric] == pytest.approx(v_numpy[metric], rel=1e-12), metric
