"""Cases for decision_tree, random_forest and gradient_boosted_trees: classes and numbers,
weights, missing feature values (null and NaN), a constant feature, several node groups."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from operators.base import Operator, Transform, lookup
from operators.chain import Chain
from operators.models.common import FittedModel
from operators.score.score import Score
from operators.testing.kit import case, fit, split


def tree_table(rows: int = 160, classes: int = 2, seed: int = 0,
               regression: bool = False) -> pa.Table:
    """Float features with nulls and NaN, an integer and a boolean one, a constant one,
    a string column (not a feature), weights; the label depends on all of them."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal(rows)
    x2 = rng.uniform(-2, 2, rows)
    x3 = rng.integers(-3, 4, rows)
    x4 = rng.random(rows) < 0.4
    signal = 1.5 * x1 - 0.8 * np.abs(x2) + 0.4 * x3 + 1.2 * x4
    missing1 = rng.random(rows) < 0.1
    missing2 = rng.random(rows) < 0.1
    # missing x2 carries information, so the learned direction matters
    signal = np.where(missing2, signal + 1.5, signal) + 0.3 * rng.standard_normal(rows)
    # half of the missing x2 values are NaN, half null
    x2_values = np.where(missing2 & (rng.random(rows) < 0.5), np.nan, x2)
    columns = {
        "x1": pa.array(x1, mask=missing1),
        "x2": pa.array(x2_values, mask=missing2 & ~np.isnan(x2_values)),
        "x3": pa.array(x3.astype(np.int32)),
        "x4": pa.array(x4),
        "flat": np.full(rows, 2.5),
        "g": pa.array(np.array(["a", "b"])[rng.integers(0, 2, rows)]),
        "w": rng.uniform(0.2, 3.0, rows),
    }
    if regression:
        columns["y"] = signal
    else:
        cuts = np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])
        columns["y"] = pa.array(np.searchsorted(cuts, signal).astype(np.int64))
    return pa.table(columns)


CITIES = [f"city-{i:02d}" for i in range(12)]


def category_table(rows: int = 240, classes: int = 2, seed: int = 0,
                   regression: bool = False) -> pa.Table:
    """``tree_table`` with two categorical features the label depends on: ``city``
    (12 names, some null; four of them raise the label, in no order a threshold could
    split) and ``store`` (int16; store 3 lowers it)."""
    rng = np.random.default_rng(seed + 100)
    table = tree_table(rows, seed=seed, regression=True)
    city = rng.integers(0, len(CITIES), rows)
    store = rng.integers(0, 6, rows)
    signal = (np.asarray(table.column("y")) + 2.0 * np.isin(city, [1, 4, 7, 10])
              - 1.5 * (store == 3))
    null = rng.random(rows) < 0.08
    table = table.append_column("city", pa.array(np.array(CITIES)[city], mask=null))
    table = table.append_column("store", pa.array(store.astype(np.int16)))
    if regression:
        labels = pa.array(signal)
    else:
        cuts = np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])
        labels = pa.array(np.searchsorted(cuts, signal).astype(np.int64))
    return table.set_column(table.schema.get_field_index("y"), "y", labels)


def string_classes_table() -> pa.Table:
    table = tree_table(classes=3, seed=2)
    names = np.array(["north", "east", "south"])[table.column("y").to_numpy()]
    return table.set_column(table.schema.get_field_index("y"), "y", pa.array(names))


def counts_table() -> pa.Table:
    """The regression table with a count label (Poisson draws around exp of the signal)."""
    table = tree_table(regression=True, seed=9)
    signal = table.column("y").to_numpy()
    counts = np.random.default_rng(9).poisson(np.exp(np.clip(signal, -3, 3) / 2))
    return table.set_column(table.schema.get_field_index("y"), "y",
                            pa.array(counts.astype(np.float64)))


def ranking_table(queries: int = 24, seed: int = 0, min_rows: int = 2,
                  max_rows: int = 14) -> pa.Table:
    """Queries of ``min_rows`` to ``max_rows`` rows (query ids ``q<seed>-<i>``, their rows
    together), float features (some missing), an integer one, weights and a relevance
    grade 0-4 that rises with x1 and x3 and falls with x2's distance from 0; some queries
    have one grade only (nothing to learn from them)."""
    rng = np.random.default_rng(seed + 300)
    sizes = rng.integers(min_rows, max_rows + 1, queries)
    query = np.repeat(np.arange(queries), sizes)
    rows = len(query)
    x1 = rng.standard_normal(rows)
    x2 = rng.uniform(-2, 2, rows)
    x3 = rng.integers(-3, 4, rows)
    signal = 1.2 * x1 - 0.7 * np.abs(x2) + 0.3 * x3 + 0.4 * rng.standard_normal(rows)
    grade = np.clip(np.floor(signal + 1.5), 0, 4).astype(np.int64)
    flat = rng.random(queries) < 0.15  # a query of equal grades
    grade = np.where(flat[query], 1, grade)
    return pa.table({
        "x1": pa.array(x1, mask=rng.random(rows) < 0.05),
        "x2": x2,
        "x3": pa.array(x3.astype(np.int32)),
        "w": rng.uniform(0.5, 2.0, rows),
        "query": pa.array(np.array([f"q{seed}-{i}" for i in range(queries)])[query]),
        "y": pa.array(grade),
    })


def _cases() -> None:
    case("decision_tree", {"label": "y", "max_depth": 4}, tree_table, id="gini-missing")
    case("decision_tree", {"label": "y", "weight": "w", "max_depth": 4,
                           "monotonic": {"x1": 1, "x3": -1}},
         lambda: tree_table(regression=True, seed=8), id="variance-monotonic")
    case("decision_tree", {"label": "y", "weight": "w", "criterion": "entropy",
                           "max_depth": 5, "min_samples_leaf": 3, "validation_fraction": 0.2,
                           "seed": 3},
         string_classes_table, id="entropy-weighted-multiclass")
    case("decision_tree", {"label": "y", "weight": "w", "max_depth": 4,
                           "min_impurity_decrease": 0.01, "max_bins": 16},
         lambda: tree_table(regression=True, seed=4), id="variance-weighted")
    case("random_forest", {"label": "y", "n_trees": 6, "max_depth": 4, "seed": 5,
                           "class_weight": {1: 2.5}},
         tree_table, id="bootstrap-sqrt-class-weight")
    case("random_forest", {"label": "y", "weight": "w", "n_trees": 4, "max_depth": 3,
                           "max_features": 0.5, "validation_fraction": 0.2,
                           "max_histogram_mb": 0.01, "max_leaves": 6},
         lambda: tree_table(regression=True, seed=6), id="regression-node-groups-leaves")
    case("random_forest", {"label": "y", "n_trees": 3, "max_depth": 5, "bootstrap": False,
                           "max_features": "all", "criterion": "entropy",
                           "grow_policy": "lossguide", "max_leaves": 6},
         string_classes_table, id="no-bootstrap-multiclass-lossguide")
    case("gradient_boosted_trees", {"label": "y", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5},
         tree_table, id="binary", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "n_trees": 4, "max_depth": 5,
                                    "min_samples_leaf": 3, "max_leaves": 7},
         string_classes_table, id="multiclass-max-leaves", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 5, "max_depth": 2,
                                    "subsample": 0.7, "l2": 1.0, "min_samples_leaf": 3},
         lambda: tree_table(regression=True, seed=7), id="regression-subsample-weighted",
         rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5, "monotonic": {"x1": 1, "x3": -1},
                                    "l1": 0.5, "min_child_weight": 0.5},
         tree_table, id="binary-monotonic-l1", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 4, "max_depth": 4,
                                    "min_samples_leaf": 2, "min_split_gain": 0.5, "l1": 1.0},
         lambda: tree_table(regression=True, seed=11), id="regression-min-split-gain",
         rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5, "loss": "poisson",
                                    "validation_fraction": 0.2, "early_stopping": True},
         counts_table, id="poisson-weighted", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5, "loss": "quantile",
                                    "quantile": 0.8, "subsample": 0.8,
                                    "monotonic": {"x1": 1}, "validation_fraction": 0.2,
                                    "early_stopping": True},
         lambda: tree_table(regression=True, seed=12), id="quantile-weighted-monotonic",
         rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "n_trees": 4, "max_depth": 4,
                                    "min_samples_leaf": 5, "loss": "absolute_error",
                                    "categorical": ["city", "store"],
                                    "grow_policy": "lossguide", "max_leaves": 5},
         lambda: category_table(regression=True, seed=3), id="absolute-error-categories-lossguide",
         rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5, "loss": "tweedie",
                                    "tweedie_power": 1.3, "validation_fraction": 0.2,
                                    "early_stopping": True},
         counts_table, id="tweedie-weighted", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "n_trees": 4, "max_depth": 2,
                                    "min_samples_leaf": 5, "validation_fraction": 0.25,
                                    "early_stopping": True, "n_iter_no_change": 2},
         string_classes_table, id="multiclass-early-stopping", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "n_trees": 4, "max_depth": 3,
                                    "min_samples_leaf": 5, "tree_features": 0.7,
                                    "max_features": "sqrt", "seed": 2,
                                    "interactions": [["x1", "x2"], ["x3", "x4", "flat"]]},
         string_classes_table, id="multiclass-feature-sampling", rtol=1e-8, atol=1e-10)
    whole_queries = {check: "split() cuts queries, which a ranking refuses (the span "
                            "check); tests/operators/test_ranking.py fits whole queries on "
                            "1, 3 and 7 partitions" for check in ("partition_invariance",
                                                                  "combine_laws")}
    case("gradient_boosted_trees", {"label": "y", "loss": "lambdarank", "group": "query",
                                    "n_trees": 5, "max_depth": 3, "min_samples_leaf": 3,
                                    "truncation": 5},
         ranking_table, id="lambdarank", rtol=1e-8, atol=1e-10, skip=whole_queries,
         copies=2)  # the rows, and the round's gradients (sorted within queries on the host)
    case("gradient_boosted_trees", {"label": "y", "loss": "lambdarank", "group": "query",
                                    "weight": "w", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 3, "rank_norm": False,
                                    "subsample": 0.8, "validation_fraction": 0.3,
                                    "early_stopping": True, "n_iter_no_change": 2,
                                    "ndcg_at": 3},
         lambda: ranking_table(seed=1), id="lambdarank-weighted-early-stopping",
         rtol=1e-8, atol=1e-10, skip=whole_queries, copies=2)
    categorical = {"categorical": ["store"],
                   "features": ["x1", "x2", "x3", "city", "store"]}  # city: text, so one
    case("decision_tree", {"label": "y", "max_depth": 4, **categorical}, category_table,
         id="gini-categories")
    case("random_forest", {"label": "y", "n_trees": 4, "max_depth": 4, "seed": 3,
                           "max_features": 0.6, **categorical},
         lambda: category_table(classes=3, seed=1), id="multiclass-categories")
    case("gradient_boosted_trees", {"label": "y", "n_trees": 5, "max_depth": 3,
                                    "min_samples_leaf": 5, "categorical": ["city", "store"]},
         category_table, id="binary-categories", rtol=1e-8, atol=1e-10)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 4, "max_depth": 3,
                                    "min_samples_leaf": 3, "l2": 0.5, "max_bins": 4,
                                    **categorical},
         lambda: category_table(regression=True, seed=2), id="regression-few-categories",
         rtol=1e-8, atol=1e-10)
    for name, model in (("boosted-binary", _boosted_binary), ("forest-multiclass",
                                                                _forest_multiclass),
                        ("boosted-categories", _boosted_categories)):
        case("score", {"model": "t", "contributions": True}, _explained_table,
             id=f"contributions-{name}", rtol=1e-9, atol=1e-12,
             prepare=functools.partial(_bind, model))
    case("score", {"model": "t", "contributions": True, "contributions_by": "inputs"},
         lambda: tree_table(rows=70, seed=15).drop_columns(["y"]), id="contributions-by-input",
         prepare=_bind_prepared)


def _bind_prepared(op: Operator) -> None:
    """A chain of one_hot on g and boosted trees on its columns and x1..x3."""
    table = tree_table(seed=13)
    one_hot = fit(lookup("one_hot")(columns=["g"]), [table])
    features = ["g=a", "g=b", "x1", "x2", "x3"]
    model = fit(lookup("gradient_boosted_trees")(label="y", features=features, n_trees=4,
                                                 max_depth=3), [one_hot.transform(table, None)])
    assert isinstance(op, Score)
    op.bind(Chain([one_hot, model]), ["g", "x1", "x2", "x3"], {"name": "t", "version": 1})


def _bind(model: Callable[[], Transform], op: Operator) -> None:
    fitted = model()
    assert isinstance(op, Score) and isinstance(fitted, FittedModel)
    op.bind(Chain([fitted]), fitted.features, {"name": "t", "version": 1})


@functools.cache
def _boosted_binary() -> Transform:
    """Boosted trees on every feature, missing values of both kinds among them."""
    return fit(lookup("gradient_boosted_trees")(label="y", n_trees=6, max_depth=4,
                                                min_samples_leaf=3),
               split(tree_table(seed=11), 3))


@functools.cache
def _boosted_categories() -> Transform:
    """Boosted trees on numbers and the categorical city and store."""
    return fit(lookup("gradient_boosted_trees")(label="y", n_trees=5, max_depth=3,
                                                min_samples_leaf=3,
                                                categorical=["city", "store"]),
               split(category_table(seed=14), 3))


@functools.cache
def _forest_multiclass() -> Transform:
    return fit(lookup("random_forest")(label="y", n_trees=4, max_depth=5, seed=2),
               split(string_classes_table(), 2))


def _explained_table() -> pa.Table:
    """Scoring rows for the contribution cases (their features, missing values too, a
    city and a store no training row had), no label."""
    table = category_table(rows=70, seed=12).drop_columns(["y"])
    city = table.column("city").to_pylist()
    city[5] = "city-new"
    store = table.column("store").to_numpy().copy()
    store[6] = 99
    table = table.set_column(table.schema.get_field_index("city"), "city", pa.array(city))
    return table.set_column(table.schema.get_field_index("store"), "store",
                            pa.array(store.astype(np.int32)))  # another integer type


_cases()
