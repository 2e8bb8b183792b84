"""Categorical features of the tree models (``operators/models/categories.py``): the split
search against every subset of the categories, the codes at fit and at scoring (unseen
values, nulls, other integer and string types), the saved model walked by hand, the
coded and compared walks, the GPU stand-in, plan errors, and scikit-learn's native
categories as the peer."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import split_gain

from operators.arrays import get_namespace, to_numpy
from operators.base import DataError, ParamError, SchemaError
from operators.models import trees
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.categories import choose_categories
from operators.models.forest import DecisionTree, RandomForest
from operators.models.trees import Gini, Newton, Variance, best_splits
from operators.testing.cases.trees import CITIES, category_table
from operators.testing.kit import fit as fit_model
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")


def probabilities(model: Any, table: pa.Table, xp: Any = NUMPY) -> np.ndarray:
    out = model.transform(table, xp)
    return np.asarray(out.column("probability").to_pylist(), dtype=float)


# --------------------------------------------------------------------------- the search


def brute_force_subsets(hist: np.ndarray, slot: int, criterion: Any, min_leaf: float
                        ) -> float:
    """The best gain of a slot's categorical position 0 over every set of its categories
    sent left (missing values left or right)."""
    h = hist[0, slot]
    total = h.sum(axis=0)
    k = h.shape[0] - 1
    best = -np.inf
    for size in range(k + 1):
        for chosen in itertools.combinations(range(k), size):
            for missing_left in (False, True):
                left = h[list(chosen)].sum(axis=0) + (h[-1] if missing_left else 0)
                gain = split_gain(criterion, left, total, min_leaf)
                if gain is not None:
                    best = max(best, gain)
    return best


@pytest.mark.parametrize("criterion", [Gini(2), Variance(), Newton(0.0, 0.1, 1)],
                         ids=["gini", "variance", "newton"])
def test_the_ordered_categories_find_the_best_of_every_subset(criterion: Any) -> None:
    """Two classes, the mean, and boosting's gradient ratio (without l2): ordering the
    categories by their value makes the best set a prefix (Fisher), so the search finds
    the best of all 2^k sets; and the set it reports has the gain it reports."""
    rng = np.random.default_rng(7)
    n_slots, k = 6, 7
    for trial in range(12):
        hist = rng.integers(0, 6, (1, n_slots, k + 1, criterion.channels)).astype(float)
        if isinstance(criterion, Variance):
            hist[..., 1] = hist[..., 0] * rng.standard_normal(hist.shape[:-1])
        if isinstance(criterion, Newton):
            hist[..., 0] = rng.standard_normal(hist.shape[:-1]) * hist[..., 2]
            hist[..., 1] = hist[..., 2] * rng.uniform(0.1, 0.3, hist.shape[:-1])
        hist[0, :2, rng.integers(0, k)] = 0  # a category without rows at some nodes
        if trial % 2:
            hist[..., -1, :] = 0  # no missing values
        chosen = best_splits(hist, criterion, 1.0, np.zeros(n_slots),
                             categorical=np.ones((n_slots, 1), dtype=bool))
        for slot in range(n_slots):
            expected = brute_force_subsets(hist, slot, criterion, 1.0)
            if not chosen["found"][slot]:
                assert not expected > 1e-9, (trial, slot)
                continue
            assert chosen["gain"][slot] == pytest.approx(expected, rel=1e-9), (trial, slot)
            went_left = chosen["categories"][slot]
            h = hist[0, slot]
            left = h[:k][went_left].sum(axis=0) + (h[-1] if chosen["missing_left"][slot] else 0)
            np.testing.assert_allclose(chosen["left"][slot], left)
            # a category without rows here goes right
            assert not went_left[criterion.weight(h[:k].T) <= 0].any()


def test_numbers_beside_categories_keep_their_thresholds() -> None:
    """A chunk with a categorical and a numeric position: the number's candidates are
    its thresholds (a prefix of its bins in their order), whatever the categories do."""
    hist = np.zeros((2, 1, 5, 2))
    # position 0, categorical: class 1 in categories 1 and 3 (no threshold splits them)
    hist[0, 0, [0, 2], 0] = 10.0
    hist[0, 0, [1, 3], 1] = 10.0
    # position 1, numeric: the same rows, class 1 in the low bins: split after bin 1
    hist[1, 0, [2, 3], 0] = 10.0
    hist[1, 0, [0, 1], 1] = 10.0
    found = best_splits(hist, Gini(2), 1.0, np.zeros(1),
                        categorical=np.array([[True, False]]))
    assert found["found"][0] and found["gain"][0] == pytest.approx(20.0)
    assert found["position"][0] == 0  # both are perfect; the first position wins
    assert set(np.flatnonzero(found["categories"][0])) in ({0, 2}, {1, 3})
    numeric = best_splits(hist[1:], Gini(2), 1.0, np.zeros(1),
                          categorical=np.array([[False]]))
    assert numeric["bin"][0] == 1 and not numeric["categories"][0].any()


def test_a_category_whose_rows_are_a_rounding_residue_goes_right() -> None:
    """A larger sibling's histogram is its parent's minus its own: a category with no
    rows there has sums of rounding noise (1e-14), whose mean orders it anywhere. It
    has no rows, so it goes right, as one whose sums are exactly 0."""
    hist = np.zeros((1, 1, 4, 2))
    hist[0, 0, :3] = [[10.0, 10.0], [1.8e-14, -5e-14], [10.0, 50.0]]
    found = best_splits(hist, Variance(), 1.0, np.zeros(1),
                        categorical=np.ones((1, 1), dtype=bool))
    assert found["found"][0] and found["gain"][0] == pytest.approx(80.0)
    assert found["categories"][0].tolist() == [True, False, False]


def test_classes_tied_up_to_rounding_order_the_categories_alike() -> None:
    """More than two classes order the categories by the node's most frequent class:
    with balanced class weights the classes weigh the same up to the noise of sums
    added in another order, and that noise must not pick another class (so another
    set): the first of the tied classes orders them."""
    hist = np.zeros((1, 1, 5, 3))
    hist[0, 0, :4] = [[6, 0, 2], [0, 6, 2], [4, 4, 0], [0, 0, 6]]
    chosen = []
    for noisy in (0, 1):
        h = hist.copy()
        h[0, 0, 3, noisy] += 1e-12
        found = best_splits(h, Gini(3), 1.0, np.zeros(1),
                            categorical=np.ones((1, 1), dtype=bool))
        chosen.append(found["categories"][0].tolist())
    assert chosen[0] == chosen[1]


def test_categories_are_the_most_frequent_values_then_by_value() -> None:
    sample = pa.array(["b", "a", None, "c", "b", "a", "d", None, "b"])
    assert choose_categories(sample, 3).to_pylist() == ["b", "a", "c"]
    assert choose_categories(pa.array([None, None], pa.string()), 3).to_pylist() == []


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("op", ["decision_tree", "random_forest", "gradient_boosted_trees"])
def test_a_set_of_categories_is_learned_in_one_split(op: str) -> None:
    """Seven of 30 cities (in no order a threshold could follow) decide the label: one
    split on the city finds them, where thresholds on its codes could not."""
    rng = np.random.default_rng(0)
    n = 6000
    city = rng.integers(0, 30, n)
    y = np.isin(city, [1, 4, 7, 9, 13, 22, 28]).astype(np.int64)
    table = pa.table({"city": pa.array([f"c{c}" for c in city]).dictionary_encode(),
                      "noise": rng.standard_normal(n), "y": y})
    kwargs: dict[str, Any] = {"max_depth": 1}
    if op == "random_forest":
        estimator: Any = RandomForest(label="y", features=["city", "noise"], n_trees=3,
                                      max_features="all", bootstrap=False, **kwargs)
    elif op == "decision_tree":
        estimator = DecisionTree(label="y", features=["city", "noise"], **kwargs)
    else:
        estimator = GradientBoostedTrees(label="y", features=["city", "noise"], n_trees=3,
                                         learning_rate=1.0, **kwargs)
    model = roundtrip(fit_model(estimator, split(table, 3)))
    predicted = np.asarray(model.transform(table, NUMPY).column("prediction").to_pylist())
    np.testing.assert_array_equal(predicted, y)
    root = int(model.nodes["tree_start"][0])
    assert model.features[model.nodes["feature"][root]] == "city"
    assert model.nodes["category"][root] == 0


def walk_by_hand(model: Any, table: pa.Table) -> np.ndarray:
    """Per row, the sum over trees of the leaf values, walking the saved arrays with the
    model's category lists: a value's code is its place in its feature's list."""
    nodes = model.nodes
    columns = []
    for name in model.features:
        values = table.column(name).to_pylist()
        if name in model.categories:
            known = model.categories[name].to_pylist()
            columns.append([known.index(v) if v in known else None for v in values])
        else:
            columns.append([np.nan if v is None else float(v) for v in values])
    out = np.zeros((table.num_rows, nodes["value"].shape[1]))
    for i in range(table.num_rows):
        for start in nodes["tree_start"][:-1]:
            node = int(start)
            while nodes["feature"][node] >= 0:
                value = columns[nodes["feature"][node]][i]
                category = nodes["category"][node]
                if value is None or (category < 0 and np.isnan(value)):
                    left = nodes["default_left"][node]
                elif category >= 0:
                    left = nodes["category_left"][category][value]
                else:
                    left = value <= nodes["threshold"][node]
                node = int(nodes["left"][node] if left else nodes["right"][node])
            out[i] += nodes["value"][node]
    return out


def scoring_rows() -> pa.Table:
    """Rows with a city no training row had, a null city, a store never seen, and the
    city as a dictionary and the store as int64 (int16 at training)."""
    table = category_table(rows=60, seed=31).drop_columns(["y"])
    city = table.column("city").to_pylist()
    city[0], city[1] = "city-new", None
    store = table.column("store").to_numpy().astype(np.int64)
    store[2] = 1000
    table = table.set_column(table.schema.get_field_index("city"), "city",
                             pa.array(city).dictionary_encode())
    return table.set_column(table.schema.get_field_index("store"), "store", pa.array(store))


@pytest.mark.parametrize("op", ["random_forest", "gradient_boosted_trees"])
@pytest.mark.parametrize("xp", [NUMPY, STRICT], ids=["numpy", "strict"])
def test_scores_are_the_walk_of_the_saved_arrays_and_categories(op: str, xp: Any) -> None:
    """The saved model walked by hand; an unseen or null category takes the missing side;
    the coded walk, the compared walk and the stand-in device give the same sums."""
    features = ["x1", "x2", "x3", "city", "store"]
    if op == "random_forest":
        estimator: Any = RandomForest(label="y", features=features, categorical=["store"],
                                      n_trees=4, max_depth=5, seed=2)
    else:
        estimator = GradientBoostedTrees(label="y", features=features, categorical=["store"],
                                         n_trees=5, max_depth=4, min_samples_leaf=3)
    model = roundtrip(fit_model(estimator, split(category_table(seed=4), 3)))
    assert (model.nodes["category"] >= 0).sum() >= 2
    rows = scoring_rows()
    sums = walk_by_hand(model, rows)
    flat = xp.asarray(trees.feature_columns(rows, model.features, None,
                                            model.categories).reshape(-1))
    args = (flat, rows.num_rows, model._walk, model.nodes["tree_start"][:-1], model.depth, xp)
    assert model._coded is not None
    coded = trees.leaf_sums(*args, model._coded, model._sets)
    compared = trees.leaf_sums(*args, None, model._sets)
    assert to_numpy(coded).tobytes() == to_numpy(compared).tobytes()
    np.testing.assert_allclose(to_numpy(compared), sums, rtol=1e-12, atol=1e-15)
    # the scoring path through transform (categories coded from the table)
    np.testing.assert_allclose(probabilities(model, rows, xp), probabilities(model, rows),
                               rtol=1e-12)


def test_unseen_and_null_categories_go_where_missing_values_go() -> None:
    model = fit_model(GradientBoostedTrees(label="y", features=["city"], n_trees=3,
                                           max_depth=2, min_samples_leaf=3),
                      [category_table(rows=400, seed=5)])
    rows = pa.table({"city": pa.array(["city-new", None, "another"])})
    p = probabilities(model, rows)
    assert p[0] == p[1] == p[2]


def test_rare_categories_beyond_max_bins_are_missing() -> None:
    """max_bins: 4 keeps the four most frequent cities; the others code as missing at
    fit and at scoring alike."""
    table = category_table(rows=600, seed=6)
    model = fit_model(DecisionTree(label="y", features=["city", "x1"], max_depth=4,
                                   max_bins=4), [table])
    counts = {}
    for c in table.column("city").to_pylist():
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    top = sorted(counts, key=lambda c: (-counts[c], c))[:4]
    assert model.categories["city"].to_pylist() == top
    rare = [c for c in CITIES if c not in top][0]
    p = probabilities(model, pa.table({"city": [rare, None], "x1": [0.5, 0.5]}))
    assert p[0] == p[1]


def test_the_same_model_for_any_partitioning() -> None:
    table = category_table(rows=500, seed=8)
    estimator = GradientBoostedTrees(label="y", categorical=["city", "store"], n_trees=4,
                                     max_depth=3, min_samples_leaf=3)
    one, three = fit_model(estimator, [table]), fit_model(estimator, split(table, 5))
    for name in ("feature", "category", "left", "right", "default_left"):
        np.testing.assert_array_equal(one.nodes[name], three.nodes[name], err_msg=name)
    np.testing.assert_array_equal(one.nodes["category_left"], three.nodes["category_left"])
    np.testing.assert_allclose(one.nodes["value"], three.nodes["value"], rtol=1e-9)
    assert one.categories["city"].equals(three.categories["city"])


@pytest.mark.parametrize("op", ["random_forest", "gradient_boosted_trees"])
def test_the_same_model_for_any_partitioning_with_weights_and_balanced_classes(
        op: str) -> None:
    """Weighted sums are rounded in the order of the rows: a category without rows at a
    node, and classes that weigh the same, must not make another set for another
    partitioning."""
    features = ["city", "store", "x1"]
    if op == "random_forest":
        table = category_table(rows=400, classes=3, seed=0)
        estimator: Any = RandomForest(label="y", features=features, categorical=["store"],
                                      weight="w", class_weight="balanced", n_trees=3,
                                      max_depth=4, bootstrap=False, max_features="all")
    else:
        table = category_table(rows=400, seed=5)
        estimator = GradientBoostedTrees(label="y", categorical=["city", "store"], weight="w",
                                         class_weight="balanced", n_trees=3, max_depth=4,
                                         min_samples_leaf=3)
    one = fit_model(estimator, [table])
    for k in (2, 3, 5, 7):
        other = fit_model(estimator, split(table, k))
        for name in ("feature", "category", "left", "right", "default_left"):
            np.testing.assert_array_equal(one.nodes[name], other.nodes[name], err_msg=name)
        np.testing.assert_array_equal(one.nodes["category_left"], other.nodes["category_left"])


def test_roots_that_cannot_split_beside_roots_that_can() -> None:
    """Bootstrap roots under 2 * min_samples_leaf stay leaves while the others split on
    the city: each node's categorical positions are its own (no IndexError, no
    other node's flags)."""
    table = category_table(rows=100, seed=1)
    model = fit_model(RandomForest(label="y", features=["city", "x1"], n_trees=8, max_depth=2,
                                   min_samples_leaf=50, seed=0), [table])
    roots = model.nodes["tree_start"][:-1]
    assert (model.nodes["feature"][roots] < 0).any() and (model.nodes["category"] >= 0).any()
    city = model.features.index("city")
    split_on = model.nodes["feature"] >= 0
    assert ((model.nodes["category"][split_on] >= 0)
            == (model.nodes["feature"][split_on] == city)).all()


def test_a_model_saved_before_categories_still_scores() -> None:
    """Models saved without the category arrays (every split a threshold) load as they
    were."""
    model = fit_model(GradientBoostedTrees(label="y", features=["x1", "x2"], n_trees=3,
                                           max_depth=2), [category_table(rows=200)])
    meta, arrays = model.state()
    old = {k: v for k, v in arrays.items() if k not in ("category", "category_left")}
    loaded = type(model).from_state(meta, old)
    rows = category_table(rows=30, seed=3)
    np.testing.assert_array_equal(probabilities(loaded, rows), probabilities(model, rows))


def test_uint64_values_beyond_int64_are_missing_at_scoring_and_refused_at_training() -> None:
    """Integer categories are kept as int64: a uint64 value beyond it is no category,
    so at scoring it is missing (not an ArrowInvalid), and a training sample with one
    is a DataError naming the column."""
    store = np.arange(200) % 5
    table = pa.table({"store": pa.array(store.astype(np.uint64)),
                      "y": (store % 2 == 0).astype(np.int64)})
    model = fit_model(GradientBoostedTrees(label="y", categorical=["store"], n_trees=2,
                                           min_samples_leaf=5), [table])
    rows = pa.table({"store": pa.array([2**63 + 5, None], pa.uint64())})
    p = probabilities(model, rows)
    assert p[0] == p[1]
    big = table.set_column(0, "store", pa.array(store.astype(np.uint64) + np.uint64(2**63)))
    with pytest.raises(DataError, match="categorical column 'store' has uint64 values beyond "
                                        "int64"):
        fit_model(GradientBoostedTrees(label="y", categorical=["store"], n_trees=2), [big])


# --------------------------------------------------------------------------- plan errors


def test_what_cannot_be_categorical_says_so() -> None:
    schema = category_table(rows=20).schema
    with pytest.raises(SchemaError, match="categorical column 'x1' is double"):
        DecisionTree(label="y", categorical=["x1"]).output_schema(schema)
    with pytest.raises(ParamError, match="categorical names 'store', which is not a feature"):
        DecisionTree(label="y", features=["x1", "city"], categorical=["store"]).output_schema(
            schema)
    with pytest.raises(SchemaError, match="categorical column 'shop' not in the input.*store"):
        DecisionTree(label="y", categorical=["shop"]).output_schema(schema)
    with pytest.raises(ParamError, match="'store' is categorical.*monotonic"):
        GradientBoostedTrees(label="y", categorical=["store"],
                             monotonic={"store": 1}).output_schema(schema)
    with pytest.raises(ParamError, match="categorical names 'y', the label column"):
        DecisionTree(label="y", categorical=["y"]).output_schema(schema)
    with pytest.raises(ParamError, match="categorical names 'w', the weight column"):
        DecisionTree(label="y", weight="w", categorical=["w"]).output_schema(schema)
    with pytest.raises(ParamError, match="categorical names 'city' twice"):
        DecisionTree(label="y", categorical=["city", "store", "city"]).output_schema(schema)
    # listed columns are features when features is left out; text is not otherwise
    state = DecisionTree(label="y", categorical=["city"]).init(schema)
    assert "city" in state["features"] and "g" not in state["features"]


def test_scoring_rows_whose_column_cannot_hold_the_categories() -> None:
    model = fit_model(DecisionTree(label="y", features=["city", "x1"], max_depth=2),
                      [category_table(rows=200)])
    schema = pa.schema([("city", pa.float64()), ("x1", pa.float64())])
    with pytest.raises(SchemaError, match="'city' is double, but the model's categories of "
                                          "it are string"):
        model.output_schema(schema)
    ok = pa.schema([("city", pa.dictionary(pa.int8(), pa.large_string())),
                    ("x1", pa.float32())])
    model.output_schema(ok)


# --------------------------------------------------------------------------- the peer


def test_boosting_on_categories_fits_as_scikit_learn() -> None:
    """HistGradientBoosting with the same categories (native, as ours): held-out accuracy
    within a point of each other, and both above one-hot-free thresholds on the codes."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    train, test = category_table(rows=4000, seed=9), category_table(rows=2000, seed=10)
    features = ["x1", "x2", "x3", "city", "store"]
    ours = fit_model(GradientBoostedTrees(label="y", features=features, categorical=["store"],
                                          n_trees=40, max_depth=3, min_samples_leaf=20),
                     split(train, 2))
    y_test = np.asarray(test.column("y"))
    acc_ours = (np.asarray(ours.transform(test, NUMPY).column("prediction").to_pylist())
                == y_test).mean()

    def matrix(table: pa.Table) -> np.ndarray:
        columns = trees.feature_columns(table, features, None, ours.categories)
        return columns.T

    peer = HistGradientBoostingClassifier(max_iter=40, max_depth=3, learning_rate=0.1,
                                          min_samples_leaf=20, early_stopping=False,
                                          categorical_features=[3, 4], random_state=0)
    peer.fit(matrix(train), np.asarray(train.column("y")))
    acc_peer = (peer.predict(matrix(test)) == y_test).mean()
    assert abs(acc_ours - acc_peer) <= 0.015, (acc_ours, acc_peer)
    assert acc_ours > 0.8
