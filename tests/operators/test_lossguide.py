"""grow_policy: lossguide (LightGBM's leaf-wise growth, XGBoost's lossguide): the tree
is the best-first cut of the tree grown level by level to max_depth, whatever the
partitioning or the passes; checked against a best-first walk of the fully grown tree."""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from test_trees import fit_state, predictions, table_of

from operators.base import ParamError
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import DecisionTree, RandomForest
from operators.testing.cases.trees import category_table, tree_table
from operators.testing.kit import split

MODELS = {
    "tree-regression": (DecisionTree, {}, True),
    "tree-classes": (DecisionTree, {"criterion": "entropy"}, False),
    "forest": (RandomForest, {"n_trees": 4, "seed": 2}, True),
    "boosted-one-round": (GradientBoostedTrees, {"n_trees": 1, "learning_rate": 0.5}, False),
}


def best_first_cut(model: Any, max_leaves: int) -> list[set[int]]:
    """Per tree, the split nodes best-first growth keeps: from the root, the split of
    greatest gain (float32) among the leaves so far, ties to the shallower then further
    left node, until max_leaves leaves."""
    a = model.arrays()
    kept = []
    for start, end in zip(a["tree_start"][:-1], a["tree_start"][1:], strict=True):
        feature, left, right = a["feature"][start:end], a["left"][start:end], a["right"][start:end]
        gain = a["gain"][start:end].astype(np.float32)
        place = {0: 0}
        frontier = [(-gain[0], 0, 0)] if feature[0] >= 0 else []
        chosen: set[int] = set()
        while frontier and len(chosen) + 1 < max_leaves:
            _, _, node = heapq.heappop(frontier)
            chosen.add(node)
            for child, offset in ((left[node] - start, 1), (right[node] - start, 2)):
                place[child] = 2 * place[node] + offset
                if feature[child] >= 0:
                    heapq.heappush(frontier, (-gain[child], place[child], child))
        kept.append(chosen)
    return kept


def cut_predictions(model: Any, table: pa.Table, kept: list[set[int]]) -> np.ndarray:
    """The fully grown model's scores with every tree stopped where the cut stops it:
    a row ends at the first node the cut did not split, and takes that node's value."""
    a = model.arrays()
    X = np.column_stack([np.asarray(table.column(f).to_numpy(zero_copy_only=False),
                                    dtype=float) for f in model.features])
    total = np.zeros((table.num_rows, a["value"].shape[1]))
    for start, chosen in zip(a["tree_start"][:-1], kept, strict=True):
        node = np.zeros(table.num_rows, dtype=np.int64)
        for _ in range(64):
            inner = np.array([n in chosen for n in node])
            if not inner.any():
                break
            g = start + node
            x = X[np.arange(len(node)), np.maximum(a["feature"][g], 0)]
            go_left = np.where(np.isnan(x), a["default_left"][g], x <= a["threshold"][g])
            nxt = np.where(go_left, a["left"][g], a["right"][g]) - start
            node = np.where(inner, nxt, node)
        total += a["value"][start + node]
    if model.combine == "mean":
        total /= len(kept)
    return total + a["base"]


@pytest.mark.parametrize("max_leaves", [2, 5, 9, 17])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_lossguide_is_the_best_first_cut_of_the_grown_tree(name: str, max_leaves: int
                                                           ) -> None:
    cls, params, regression = MODELS[name]
    table = tree_table(rows=1500, seed=4, regression=regression)
    full, _, _ = fit_state(cls(label="y", max_depth=6, **params), split(table, 2))
    cut, metrics, _ = fit_state(cls(label="y", max_depth=6, grow_policy="lossguide",
                                    max_leaves=max_leaves, **params), split(table, 3))
    kept = best_first_cut(full, max_leaves)
    a = cut.arrays()
    leaves = [int((a["feature"][s:e] < 0).sum())
              for s, e in zip(a["tree_start"][:-1], a["tree_start"][1:], strict=True)]
    assert leaves == [len(k) + 1 for k in kept]
    assert max(leaves) == max_leaves  # the cap binds
    raw = cut_predictions(full, table, kept)
    if regression:
        np.testing.assert_allclose(predictions(cut, table)["prediction"], raw[:, 0],
                                   rtol=1e-10, atol=1e-12)
    else:
        ours = np.asarray(cut.transform(table, None).column("probability").to_pylist(),
                          dtype=float) if cut.classes and len(cut.classes) > 2 else \
            predictions(cut, table)["probability"]
        if name.startswith("boosted"):
            raw = 1 / (1 + np.exp(-raw[:, 0]))
        else:
            raw = raw[:, 1] / raw.sum(axis=1)
        np.testing.assert_allclose(ours, raw, rtol=1e-10, atol=1e-12)


def test_room_for_every_leaf_is_the_depthwise_model_bit_for_bit() -> None:
    table = tree_table(rows=800, seed=5, regression=True)
    for cls, params in ((DecisionTree, {}), (GradientBoostedTrees, {"n_trees": 4})):
        full, _, _ = fit_state(cls(label="y", max_depth=5, **params), split(table, 2))
        cut, _, _ = fit_state(cls(label="y", max_depth=5, grow_policy="lossguide",
                                  max_leaves=10_000, **params), split(table, 2))
        for key, values in full.arrays().items():
            np.testing.assert_array_equal(values, cut.arrays()[key], err_msg=key)


def test_leaf_wise_growth_goes_deep_where_the_gains_are() -> None:
    """A label that grows geometrically towards x0 = 1: best-first spends its leaves down
    that branch, deeper than level-by-level growth with the same cap, and fits better."""
    rng = np.random.default_rng(6)
    X = rng.random((4000, 2))
    y = 3.0 ** np.minimum(np.floor(-np.log2(1 - X[:, 0])), 8) + 2 * X[:, 1]
    table = table_of(X, y)
    for max_leaves in (8, 12):
        cut, metrics, _ = fit_state(DecisionTree(
            label="y", max_depth=12, grow_policy="lossguide", max_leaves=max_leaves),
            split(table, 2))
        level, level_metrics, _ = fit_state(DecisionTree(
            label="y", max_depth=12, max_leaves=max_leaves), split(table, 2))
        assert metrics["depth"] > level_metrics["depth"]
        err = {name: np.mean((predictions(m, table)["prediction"] - y) ** 2)
               for name, m in (("cut", cut), ("level", level))}
        assert err["cut"] < 0.8 * err["level"]


def test_boosting_rounds_learn_from_the_cut_trees() -> None:
    """Each round's scores come from the trees as cut (not as grown): the model and its
    held-out loss are the same with a memo (rows' nodes kept) and without."""
    table = category_table(rows=900, seed=7, regression=True)
    params = {"n_trees": 6, "max_depth": 5, "grow_policy": "lossguide", "max_leaves": 6,
              "categorical": ["city", "store"], "features": ["x1", "x2", "city", "store"],
              "validation_fraction": 0.2, "early_stopping": True, "n_iter_no_change": 10}
    for loss in ({}, {"loss": "quantile", "quantile": 0.7}):
        cached, metrics, _ = fit_state(GradientBoostedTrees(label="y", **params, **loss),
                                       split(table, 3))
        fresh, fresh_metrics, _ = fit_state(GradientBoostedTrees(label="y", **params, **loss),
                                            split(table, 3), fresh=True)
        for key, values in cached.arrays().items():
            np.testing.assert_array_equal(values, fresh.arrays()[key], err_msg=key)
        assert metrics["validation_losses"] == fresh_metrics["validation_losses"]
        a = cached.arrays()
        assert max(int((a["feature"][s:e] < 0).sum()) for s, e in
                   zip(a["tree_start"][:-1], a["tree_start"][1:], strict=True)) == 6


def test_the_cut_is_the_same_for_any_partitioning_and_passes() -> None:
    table = tree_table(rows=1200, seed=8)
    params = {"n_trees": 3, "max_depth": 6, "grow_policy": "lossguide", "max_leaves": 7}
    whole, _, _ = fit_state(RandomForest(label="y", **params), split(table, 1))
    parts, _, _ = fit_state(RandomForest(label="y", max_histogram_mb=0.002, **params),
                            split(table, 5, seed=1))
    for key in ("feature", "threshold", "left", "right", "default_left", "tree_start"):
        np.testing.assert_array_equal(whole.arrays()[key], parts.arrays()[key], err_msg=key)
    np.testing.assert_allclose(whole.arrays()["value"], parts.arrays()["value"], rtol=1e-12)


def test_lossguide_needs_max_leaves() -> None:
    table = tree_table(rows=50, seed=9)
    with pytest.raises(ParamError, match="grow_policy: lossguide grows leaf by leaf"):
        DecisionTree(label="y", grow_policy="lossguide").output_schema(table.schema)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_growing_only_what_the_cut_can_keep_changes_nothing(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending nodes under a split best-first growth cannot make stop growing (a
    level's pass sums fewer rows and nodes); the cut trees are those of growing
    everything to max_depth, bit for bit."""
    cls, params, regression = MODELS[name]
    table = tree_table(rows=1500, seed=10, regression=regression)
    params = {**params, "n_trees": 3} if cls is not DecisionTree else params
    pruned, _, _ = fit_state(cls(label="y", max_depth=8, grow_policy="lossguide",
                                 max_leaves=6, **params), split(table, 2))
    from operators.models import trees

    monkeypatch.setattr(trees, "best_first_pending", lambda forest, first, leaves: forest)
    full, _, _ = fit_state(cls(label="y", max_depth=8, grow_policy="lossguide",
                               max_leaves=6, **params), split(table, 2))
    for key, values in full.arrays().items():
        np.testing.assert_array_equal(values, pruned.arrays()[key], err_msg=key)


def test_rows_follow_the_cut_without_a_walk_from_the_roots(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut puts each grown node's rows at its nearest kept node (``cut_places``): a
    walk of the grown trees looked up there is the walk of the cut trees, so a boosting
    round's rows are not walked down from the roots again after the cut."""
    from operators.models import boosted_trees, trees

    table = tree_table(rows=1500, seed=12)
    params = {"n_trees": 4, "max_depth": 7, "grow_policy": "lossguide", "max_leaves": 6}
    grown, _, _ = fit_state(GradientBoostedTrees(label="y", **{**params, "max_leaves": 200}),
                            split(table, 1))
    a = grown.arrays()
    start, end = int(a["tree_start"][1]), int(a["tree_start"][2])  # the second tree
    split_ = a["feature"][start:end] >= 0
    forest = {"tree": np.zeros(end - start, np.int32),
              "status": np.where(split_, trees.SPLIT, trees.LEAF).astype(np.int8),
              "left": np.where(split_, a["left"][start:end] - start, -1),
              "right": np.where(split_, a["right"][start:end] - start, -1),
              "gain": a["gain"][start:end], "roots": np.zeros(1, np.int32)}
    depth, place = np.zeros(end - start, np.int64), np.zeros(end - start, np.int64)
    for node in np.flatnonzero(split_):
        for child, offset in ((forest["left"][node], 1), (forest["right"][node], 2)):
            depth[child], place[child] = depth[node] + 1, 2 * place[node] + offset
    forest.update(depth=depth, place=place)
    kept_split, kept = trees._best_first_kept(forest, 0, 6)
    at = trees.cut_places(forest, 0, 6)
    new_id = np.cumsum(kept) - 1
    assert at.shape == (end - start,) and np.array_equal(at[kept], new_id[kept])
    for node in np.flatnonzero(~kept):  # a dropped node's rows: its nearest kept ancestor
        up = node
        while not kept[up]:
            up = int(np.flatnonzero((forest["left"] == up) | (forest["right"] == up))[0])
        assert at[node] == new_id[up] and not kept_split[up]

    counted: list[int] = []
    step = boosted_trees.walk_step

    def counting(*args: Any) -> Any:
        counted.append(1)
        return step(*args)

    monkeypatch.setattr(boosted_trees, "walk_step", counting)
    model, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 2))
    with_places = len(counted)
    counted.clear()
    monkeypatch.setattr(GradientBoostedTrees, "_walk",
                        staticmethod(lambda state, memo, xp: memo.get("walk")))
    walked, _, _ = fit_state(GradientBoostedTrees(label="y", **params), split(table, 2))
    assert with_places < len(counted)
    for key, values in walked.arrays().items():
        np.testing.assert_array_equal(values, model.arrays()[key], err_msg=key)
