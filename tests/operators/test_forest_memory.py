"""Memory of the level passes of random_forest and decision_tree: a pass's histograms
are written in place, counts (classes, no weight column) are summed and shipped as small
unsigned integers, a batch's rows are held in a few bytes each; none of it changes the
model, bit for bit."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from operators.arrays import get_namespace
from operators.base import drive, tree_reduce
from operators.models import trees
from operators.models.forest import DecisionTree, RandomForest
from operators.models.trees import Level, add_histograms, narrow_counts
from operators.testing.cases.trees import tree_table
from operators.testing.kit import split

NUMPY = get_namespace("numpy")


def fit_arrays(estimator: Any, parts: list[pa.Table]) -> dict[str, np.ndarray]:
    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, NUMPY) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state).arrays()


def assert_same_model(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        assert got[name].dtype == values.dtype, name
        np.testing.assert_array_equal(got[name], values, err_msg=name)


FITS = [
    (RandomForest, {"n_trees": 6, "max_depth": 6}),
    (RandomForest, {"n_trees": 5, "bootstrap": False, "max_features": "all",
                    "max_histogram_mb": 0.01}),
    (DecisionTree, {"max_depth": 8, "criterion": "entropy"}),
]


@pytest.mark.parametrize(("op", "params"), FITS, ids=["forest", "all-features", "tree"])
def test_counts_summed_as_integers_give_the_float_model(
        op: Any, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    parts = split(tree_table(rows=600, classes=3, seed=21), 3)
    as_integers = fit_arrays(op(label="y", seed=2, **params), parts)
    monkeypatch.setattr(op, "_counts", lambda self, state: False)
    as_floats = fit_arrays(op(label="y", seed=2, **params), parts)
    assert_same_model(as_integers, as_floats)


@pytest.mark.parametrize("regression", [False, True], ids=["classes", "regression"])
@pytest.mark.parametrize("max_features", ["sqrt", "all"])
def test_histogram_chunks_give_the_same_model(regression: bool, max_features: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sparse matrix of a batch's rows is made a chunk at a time: any chunk size,
    one model."""
    parts = split(tree_table(rows=400, seed=22, regression=regression), 2)

    def estimator() -> RandomForest:
        return RandomForest(label="y", n_trees=4, max_depth=5, max_features=max_features)

    whole = fit_arrays(estimator(), parts)
    monkeypatch.setattr(trees, "PRODUCT_ENTRIES", 7)
    assert_same_model(fit_arrays(estimator(), parts), whole)


def test_narrowed_counts_are_the_same_numbers() -> None:
    for top, dtype in ((255, np.uint8), (256, np.uint16), (70_000, np.uint32),
                       (2.0**33, np.float64)):
        sums = np.array([[0.0, 3.0], [top, 1.0]])
        narrow = narrow_counts(sums)
        assert narrow.dtype == dtype
        np.testing.assert_array_equal(narrow.astype(np.float64), sums)


def test_added_counts_grow_their_type_and_stay_exact() -> None:
    a = np.array([255, 0, 7], dtype=np.uint8)
    total = add_histograms(a, a)
    assert total.dtype == np.uint16
    np.testing.assert_array_equal(total, [510, 0, 14])
    big = np.array([2**32 - 1, 5], dtype=np.uint32)
    total = add_histograms(big, big)
    assert total.dtype == np.float64
    np.testing.assert_array_equal(total, [2.0**33 - 2, 10.0])
    floats = np.array([0.5, 2.25, 1.0])
    np.testing.assert_array_equal(add_histograms(a, floats),
                                  a.astype(np.float64) + floats)
    assert add_histograms(None, a) is a and add_histograms(a, None) is a
    assert add_histograms(None, None) is None


def test_a_pass_holds_a_few_bytes_per_tree_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each level pass of a forest allocates at most the float64 size of its histograms
    plus 40 bytes per (row, tree) and the buffers of one product batch (at most 21 bytes
    an entry: codes, cells, where the codes are, the matrix's ones), and ships its
    histograms as unsigned integers in at most half that size. A pass that kept a float64
    copy of the sums, or 8-byte indices, weights and classes of every (row, tree) pair
    twice over, would not fit."""
    rows, n_trees = 30_000, 20
    rng = np.random.default_rng(23)
    x = rng.standard_normal((rows, 8))
    table = pa.table({**{f"x{j}": x[:, j] for j in range(8)},
                      "y": (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)})
    estimator = RandomForest(label="y", n_trees=n_trees, max_depth=8, seed=1)
    passes: list[tuple[int, int, int]] = []  # (bytes allocated, float64 bytes, shipped)
    level_partial = trees.TreeEstimator._level_partial

    def measured(self: Any, part: pa.Table, state: dict[str, Any], xp: Any) -> Any:
        nodes, featsel = Level.group(state["level"])
        m = len(state["features"]) if featsel is None else featsel.shape[1]
        as_float = m * len(nodes) * (state["missing"] + 1) * len(state["classes"]) * 8
        tracemalloc.start()
        try:
            out = level_partial(self, part, state, xp)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        hist = out["hist"]
        assert hist.dtype.kind == "u"
        passes.append((peak, as_float, hist.nbytes))
        return out

    monkeypatch.setattr(trees.TreeEstimator, "_level_partial", measured)
    fit_arrays(estimator, [table])
    assert len(passes) >= 8
    for peak, as_float, shipped in passes:
        assert shipped <= as_float // 2
        assert peak <= as_float + 40 * rows * n_trees + 21 * trees.PRODUCT_ENTRIES, (
            peak, as_float)


def test_tree_reduce_frees_each_pair_as_it_combines() -> None:
    """The order is fixed (pairs, then pairs of pairs) and a combined pair is not kept:
    when the last combine runs, no partition's partial is alive any more (the engines
    hand over their lists of partials, so a level's histograms do not pile up)."""
    import weakref

    class Box:
        def __init__(self, label: str):
            self.label = label

    leaves = [Box(str(i)) for i in range(7)]
    refs = [weakref.ref(b) for b in leaves]
    alive_at_last: list[int] = []
    calls = 0

    def combine(a: Box, b: Box) -> Box:
        nonlocal calls
        calls += 1
        if calls == len(refs) - 1:
            alive_at_last.append(sum(r() is not None for r in refs))
        return Box(f"({a.label}+{b.label})")

    values = leaves
    del leaves
    out = tree_reduce(values, combine)
    assert out.label == "(((0+1)+(2+3))+((4+5)+6))"
    assert alive_at_last == [0] and values == []
