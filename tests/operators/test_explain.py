"""Per-feature contributions of tree models (``operators/models/explain.py``) against the
definition: the Shapley values of the path-dependent expectation game, by enumerating
every subset of the features, for every tree model family, with missing values."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from operators.arrays import get_namespace, transfers
from operators.base import ParamError, SchemaError, lookup
from operators.chain import Chain
from operators.models import explain
from operators.models.common import split_rows
from operators.models.trees import TreeModelFitted, feature_columns, leaf_sums
from operators.score.score import Score
from operators.testing.cases.models import classification_table, regression_table
from operators.testing.cases.trees import (
    category_table,
    counts_table,
    string_classes_table,
    tree_table,
)
from operators.testing.kit import assert_tables_close, fit, roundtrip, split

NUMPY = get_namespace("numpy")


def shapley_by_subsets(model: TreeModelFitted, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row and feature, every raw output's Shapley value of ``v(S)``: the trees'
    expected raw score with the features of S known (an unknown feature's split
    averages both sides by their training cover); and ``v({})``. Raw outputs as the
    model combines its trees (mean for a forest, sum plus base for boosting)."""
    nodes, features = model.nodes, model.features
    f = len(features)
    starts = nodes["tree_start"][:-1]
    mean = model.combine == "mean"

    def expected(node: int, x: np.ndarray, known: frozenset[int]) -> np.ndarray:
        j = nodes["feature"][node]
        if j < 0:
            return nodes["value"][node]
        left, right = nodes["left"][node], nodes["right"][node]
        if j in known:
            value, category = x[j], nodes["category"][node]
            if np.isnan(value):
                go_left = nodes["default_left"][node]
            elif category >= 0:  # a categorical split: the value is its code
                go_left = nodes["category_left"][category][int(value)]
            else:
                go_left = value <= nodes["threshold"][node]
            return expected(left if go_left else right, x, known)
        return (nodes["cover"][left] * expected(left, x, known)
                + nodes["cover"][right] * expected(right, x, known)) / nodes["cover"][node]

    def game(x: np.ndarray, known: frozenset[int]) -> np.ndarray:
        total = sum(expected(int(s), x, known) for s in starts)
        return total / len(starts) if mean else total + nodes["base"]

    out = []
    for x in feature_columns(table, features, categories=model.categories).T:
        values = {frozenset(s): game(x, frozenset(s)) for k in range(f + 1)
                  for s in itertools.combinations(range(f), k)}
        phi = np.zeros((f, nodes["value"].shape[1]))
        for i in range(f):
            others = [j for j in range(f) if j != i]
            for k in range(f):
                weight = math.factorial(k) * math.factorial(f - 1 - k) / math.factorial(f)
                for s in itertools.combinations(others, k):
                    phi[i] += weight * (values[frozenset(s) | {i}] - values[frozenset(s)])
        out.append(phi)
    return np.array(out), values[frozenset()]


def contributions_of(out: pa.Table, model: TreeModelFitted) -> tuple[np.ndarray, np.ndarray]:
    """The ``contributions`` and ``contribution_base`` columns as (rows, features, k)
    and (rows, k) arrays."""
    struct = out.column("contributions").combine_chunks()
    assert [f.name for f in struct.type] == model.features
    per_feature = [np.array(struct.field(j).to_pylist(), dtype=np.float64)
                   for j in range(len(model.features))]
    phi = np.stack(per_feature, axis=1)
    base = np.array(out.column("contribution_base").to_pylist(), dtype=np.float64)
    if phi.ndim == 2:
        return phi[:, :, None], base[:, None]
    return phi, base


def explained(model: TreeModelFitted, rows: pa.Table, xp: Any = NUMPY) -> pa.Table:
    score = Score(model="m", contributions=True)
    score.bind(Chain([model]), model.features, {"name": "m", "version": 1})
    return score.transform(rows, xp)


def raw_scores(model: TreeModelFitted, rows: pa.Table) -> np.ndarray:
    flat = feature_columns(rows, model.features, categories=model.categories).reshape(-1)
    sums = leaf_sums(flat, rows.num_rows, model._walk, model.nodes["tree_start"][:-1],
                     model.depth, NUMPY, sets=model._sets)
    if model.combine == "mean":
        return sums / (len(model.nodes["tree_start"]) - 1)
    return sums + model.nodes["base"]


def explained_outputs(model: TreeModelFitted, raw: np.ndarray) -> np.ndarray:
    """The raw outputs contributions explain: the positive class's for a binary
    forest (as ``probability``), else all."""
    return raw[:, 1:] if raw.shape[1] == 2 else raw


FEATURES = ["x1", "x2", "x3", "x4"]
MODELS = {
    "tree-regression": lambda: fit(lookup("decision_tree")(
        label="y", features=FEATURES, max_depth=5, min_samples_leaf=3),
        split(tree_table(regression=True, seed=3), 2)),
    "forest-binary": lambda: fit(lookup("random_forest")(
        label="y", features=FEATURES, n_trees=4, max_depth=4, seed=1),
        split(tree_table(seed=4), 3)),
    "forest-multiclass": lambda: fit(lookup("random_forest")(
        label="y", features=FEATURES, n_trees=3, max_depth=4, seed=2),
        [string_classes_table()]),
    "boosted-binary": lambda: fit(lookup("gradient_boosted_trees")(
        label="y", n_trees=5, max_depth=4, min_samples_leaf=3),  # x1..x4, flat, w
        split(tree_table(seed=5), 2)),
    "boosted-multiclass": lambda: fit(lookup("gradient_boosted_trees")(
        label="y", features=FEATURES, n_trees=3, max_depth=3, min_samples_leaf=3),
        [string_classes_table()]),
    "boosted-poisson": lambda: fit(lookup("gradient_boosted_trees")(
        label="y", features=FEATURES, n_trees=4, max_depth=3, loss="poisson",
        min_samples_leaf=3), [counts_table()]),
    # categorical splits; a path may split the city twice (an intersection of sets)
    "boosted-categories": lambda: fit(lookup("gradient_boosted_trees")(
        label="y", features=["x1", "x2", "city", "store"], categorical=["store"], n_trees=4,
        max_depth=4, min_samples_leaf=3), split(category_table(seed=6), 2)),
    "forest-categories": lambda: fit(lookup("random_forest")(
        label="y", features=["x1", "city", "store"], categorical=["store"], n_trees=3,
        max_depth=5, seed=3), [category_table(classes=3, seed=7)]),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> TreeModelFitted:
    fitted = MODELS[request.param]()
    assert isinstance(fitted, TreeModelFitted)
    return fitted


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """Rows to explain, with nulls and NaN in x1 and x2 (tree_table's), null cities and
    one no training row had."""
    table = category_table(rows=24, seed=21).drop_columns(["y"])
    city = table.column("city").to_pylist()
    city[3] = "city-new"
    return table.set_column(table.schema.get_field_index("city"), "city", pa.array(city))


@pytest.mark.parametrize("tabulated", [True, False], ids=["tables", "polynomials"])
def test_contributions_are_the_shapley_values_of_the_expectation_game(
        model: TreeModelFitted, rows: pa.Table, tabulated: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not tabulated:  # the per-row polynomials of deep forests
        monkeypatch.setattr(explain, "TABLE_ENTRIES", 0)
        model.__dict__.pop("_paths", None)
    assert (model._paths.tables is not None) == tabulated
    phi, base = contributions_of(explained(model, rows), model)
    expected, empty = shapley_by_subsets(model, rows)
    expected = explained_outputs(model, expected.transpose(0, 2, 1)).transpose(0, 2, 1)
    np.testing.assert_allclose(phi, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(base, np.broadcast_to(
        explained_outputs(model, empty[None, :]), base.shape), rtol=1e-12, atol=1e-14)
    model.__dict__.pop("_paths", None)


def test_contributions_add_up_to_the_raw_score(model: TreeModelFitted, rows: pa.Table) -> None:
    out = explained(model, rows)
    phi, base = contributions_of(out, model)
    raw = explained_outputs(model, raw_scores(model, rows))
    np.testing.assert_allclose(phi.sum(axis=1) + base, raw, rtol=1e-12, atol=1e-12)
    if model.link == "sigmoid":  # boosted binary: the probability is the sigmoid of it
        probability = out.column("probability").to_numpy()
        np.testing.assert_allclose(1 / (1 + np.exp(-(phi.sum(axis=1) + base)[:, 0])),
                                   probability, rtol=1e-12)
    if model.link == "exp":  # poisson: the prediction is the exp of it
        np.testing.assert_allclose(np.exp(phi.sum(axis=1) + base)[:, 0],
                                   out.column("prediction").to_numpy(), rtol=1e-12)


def test_a_feature_no_split_uses_contributes_exactly_zero(rows: pa.Table) -> None:
    """``flat`` is constant: no tree splits on it, its contribution is 0.0, not noise."""
    model = MODELS["boosted-binary"]()
    assert "flat" in model.features
    assert not np.any(model.nodes["feature"] == model.features.index("flat"))
    phi, _ = contributions_of(explained(model, rows), model)
    assert np.all(phi[:, model.features.index("flat"), :] == 0.0)
    assert np.any(phi[:, model.features.index("x1"), :] != 0.0)


def test_paths_that_split_a_feature_twice_merge_its_conditions() -> None:
    """Deep trees on two features split each many times along a path: one entry per
    (leaf, feature), the interval of its conditions, and still the exact values."""
    table = tree_table(rows=300, regression=True, seed=13)
    model = fit(lookup("decision_tree")(label="y", features=["x1", "x2"], max_depth=7,
                                        min_samples_leaf=2), [table])
    path_features = np.count_nonzero(model._paths.real, axis=1)
    assert model.depth > 2 and path_features.max() == 2
    rows = table.slice(0, 30)
    phi, _ = contributions_of(explained(model, rows), model)
    expected, _ = shapley_by_subsets(model, rows)
    np.testing.assert_allclose(phi, expected, rtol=1e-9, atol=1e-12)


def test_blocks_of_rows_do_not_change_a_value(model: TreeModelFitted, rows: pa.Table,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    whole = explained(model, rows)
    monkeypatch.setattr(explain, "BLOCK_ENTRIES", 1)  # a row at a time
    monkeypatch.setattr(explain, "SUM_ENTRIES", 1)  # a feature at a time
    model.__dict__.pop("_paths", None)
    try:  # sums in another order: the last bits may differ
        assert_tables_close(explained(model, rows), whole, rtol=1e-12, atol=1e-15)
    finally:
        model.__dict__.pop("_paths", None)


def test_trees_without_a_split_explain_nothing(rows: pa.Table) -> None:
    model = fit(lookup("gradient_boosted_trees")(label="y", features=FEATURES, n_trees=2,
                                                 min_samples_leaf=1000),
                [tree_table(seed=5)])
    assert np.all(model.nodes["feature"] < 0)
    phi, base = contributions_of(explained(model, rows), model)
    assert np.all(phi == 0.0)
    np.testing.assert_allclose(base, raw_scores(model, rows), rtol=1e-12)


def test_an_empty_partition_has_the_columns(model: TreeModelFitted, rows: pa.Table) -> None:
    out = explained(model, rows.slice(0, 0))
    assert out.num_rows == 0
    assert out.schema.field("contributions").type.num_fields == len(model.features)


def test_on_a_device_the_rows_go_over_once_and_the_values_are_the_same(
        model: TreeModelFitted, rows: pa.Table) -> None:
    strict = get_namespace("array_api_strict")
    device = get_namespace("array_api_strict", strict.Device("device1"))
    expected = explained(model, rows)
    with transfers() as log:
        got = explained(model, rows, device)
    assert_tables_close(got, expected, rtol=1e-12, atol=1e-15)
    # the features go over as one (features x rows) block, flattened
    size = len(model.features) * rows.num_rows
    moved = [shape for way, shape, _ in log if way == "h2d" and (
        rows.num_rows in shape or math.prod(shape) == size)]
    assert len(moved) == 1, moved


@pytest.mark.filterwarnings("ignore:mlp did not converge")
def test_contributions_of_a_model_without_them_is_an_error() -> None:
    table = classification_table()
    model = fit(lookup("mlp")(label="y", hidden=[3], max_iter=5), [table])
    score = Score(model="churn", contributions=True)
    score.bind(Chain([model]), model.features, {"name": "churn", "version": 1})
    with pytest.raises(SchemaError, match="contributions: model 'churn' ends in mlp, which "
                                          "has no per-feature contributions"):
        score.output_schema(table.schema)
    with pytest.raises(SchemaError, match="model ends in mlp, which has no per-feature "
                                          "contributions"):
        model.explain(table, NUMPY)


# --------------------------------------------------------------------------- linear models


LINEAR = {
    "logistic-binary": lambda: fit(lookup("logistic_regression")(
        label="y", weight="w", l2=0.01, validation_fraction=0.25, seed=2),
        split(classification_table(), 3)),
    "logistic-multiclass": lambda: fit(lookup("logistic_regression")(
        label="y", class_weight="balanced"), split(classification_table(classes=3), 2)),
    "linear-weighted": lambda: fit(lookup("linear_regression")(
        label="y", weight="w", validation_fraction=0.2), split(regression_table(), 4)),
}


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_linear_contributions_are_coefficient_times_distance_from_the_training_mean(
        name: str) -> None:
    """The reference is the weighted mean of the rows the model was trained on (not the
    held-out ones, not class_weight's weights), as SHAP's LinearExplainer with them as
    background; per row the contributions and the base add up to the raw score."""
    model = LINEAR[name]()
    data = (classification_table(classes=3) if "multiclass" in name else
            regression_table() if "linear" in name else classification_table())
    train, _ = split_rows(data, model_params(name)["validation_fraction"],
                          model_params(name)["seed"])
    weights = (train["w"].to_numpy() if model_params(name)["weight"] else
               np.ones(train.num_rows))
    X = np.column_stack([train[f].to_numpy().astype(float) for f in model.features])
    mean = weights @ X / weights.sum()
    np.testing.assert_allclose(model.means, mean, rtol=1e-12)
    rows = data.slice(0, 40)
    phi, base = contributions_of(explained(model, rows), model)
    coef = np.atleast_2d(model.coef)
    x = np.column_stack([rows[f].to_numpy().astype(float) for f in model.features])
    np.testing.assert_allclose(phi, (x - mean)[:, :, None] * coef.T[None], rtol=1e-12,
                               atol=1e-14)
    raw = x @ coef.T + model.intercept
    np.testing.assert_allclose(phi.sum(axis=1) + base, raw, rtol=1e-12, atol=1e-12)
    # saved and loaded, the means come along
    assert np.array_equal(roundtrip(model).means, model.means)


def model_params(name: str) -> dict[str, Any]:
    return {"validation_fraction": 0.25 if name == "logistic-binary" else
            0.2 if name == "linear-weighted" else 0.0,
            "seed": 2 if name == "logistic-binary" else 0,
            "weight": name != "logistic-multiclass"}


def test_a_linear_model_saved_without_means_asks_to_be_trained_again() -> None:
    model = LINEAR["logistic-binary"]()
    meta, arrays = model.state()
    del arrays["means"]
    old = type(model).from_state(meta, arrays)
    score = Score(model="churn@1", contributions=True)
    score.bind(Chain([old]), old.features, {"name": "churn", "version": 1})
    with pytest.raises(SchemaError, match="ends in logistic_regression saved without its "
                                          "training means .by an older sluice.: train it "
                                          "again to explain its scores"):
        score.output_schema(classification_table().schema)
    assert old.transform(classification_table(), NUMPY).num_rows == 160  # it still scores


def test_contributions_replace_columns_of_those_names(model: TreeModelFitted,
                                                      rows: pa.Table) -> None:
    """Scoring again an output that has them replaces them, as prediction is."""
    once = explained(model, rows)
    again = explained(model, once)
    assert again.column_names == once.column_names
    assert_tables_close(again, once, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- by input


def test_contributions_by_input_add_up_the_features_made_from_a_column() -> None:
    """one_hot's plan=... add up to plan, a renamed column counts as its input name, a
    column derived from one column as that column, one derived from two as itself."""
    from operators.score.score import input_groups

    table = tree_table(seed=14)
    chain = [fit(lookup("one_hot")(columns=["g"]), [table]),
             lookup("rename")(columns={"x3": "count"}),
             lookup("derive")(columns={"x1_sq": "x1 * x1", "both": "coalesce(x1, 0) + x2"})]
    prepared = table
    for step in chain:
        prepared = step.transform(prepared, NUMPY)
    features = ["g=a", "g=b", "count", "x1_sq", "both", "x4"]
    assert input_groups(chain, features) == {"g=a": "g", "g=b": "g", "count": "x3",
                                             "x1_sq": "x1", "both": "both", "x4": "x4"}
    model = fit(lookup("gradient_boosted_trees")(label="y", features=features, n_trees=4,
                                                 max_depth=3), [prepared])
    rows = table.slice(0, 30)
    scored = {}
    for by in ("features", "inputs"):
        score = Score(model="m", contributions=True, contributions_by=by)
        score.bind(Chain([*chain, model]), ["g", "x3", "x1", "x2", "x4"],
                   {"name": "m", "version": 1})
        out = score.transform(rows, NUMPY)
        assert out.schema == score.output_schema(rows.schema)
        scored[by] = out.column("contributions").combine_chunks()
    by_input = scored["inputs"]
    assert [f.name for f in by_input.type] == ["g", "x3", "x1", "both", "x4"]
    features_of = scored["features"]
    np.testing.assert_allclose(by_input.field("g").to_numpy(),
                               features_of.field("g=a").to_numpy()
                               + features_of.field("g=b").to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(by_input.field("x3").to_numpy(),
                                  features_of.field("count").to_numpy())


def test_contributions_by_needs_contributions() -> None:
    with pytest.raises(ParamError, match="contributions_by needs contributions: true"):
        Score(model="m", contributions_by="inputs")
