"""The tree models on a sparse column (``operators/models/sparse_codes.py``): the same
trees as on a column per term (an absent term is 0), from the stored entries only; bin
edges that count the zeros; histograms whose zero bins are the nodes' totals less the
rest; the rows made dense off NumPy; refused by name where a node's histograms are past
the memory share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

import operators.models.trees as trees
from operators.arrays import get_namespace
from operators.base import DataError
from operators.features.text import VectorizeText
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import DecisionTree, RandomForest
from operators.models.sparse_codes import SparseCodes, find_codes, sparse_codes
from operators.testing.kit import roundtrip, split
from tests.operators.test_sparse import NP, fit_model, topics
from tests.operators.test_text import fit

CASES = [
    (GradientBoostedTrees, {"label": "topic", "n_trees": 5, "max_depth": 3}),
    (GradientBoostedTrees, {"label": "topic", "n_trees": 4, "max_depth": 3,
                            "max_features": 0.5, "tree_features": 0.7}),
    (GradientBoostedTrees, {"label": "size", "n_trees": 4, "max_depth": 3, "weight": "w"}),
    (GradientBoostedTrees, {"label": "size", "n_trees": 4, "max_depth": 3, "loss": "poisson"}),
    (GradientBoostedTrees, {"label": "size", "n_trees": 3, "max_depth": 3, "loss": "quantile",
                            "quantile": 0.7}),
    (GradientBoostedTrees, {"label": "topic", "n_trees": 3, "max_leaves": 6,
                            "grow_policy": "lossguide"}),
    (DecisionTree, {"label": "topic", "max_depth": 5}),
    (RandomForest, {"label": "topic", "n_trees": 5, "max_depth": 4, "bootstrap": False}),
    (RandomForest, {"label": "size", "n_trees": 4, "max_depth": 4, "bootstrap": False,
                    "max_features": 0.3, "max_histogram_mb": 0.05}),
]


def sized_topics(seed: int = 4) -> pa.Table:
    table = topics(seed=seed)
    size = np.array([len(t or "") for t in table.column("text").to_pylist()], float)
    return table.append_column("size", pa.array(size / 10.0 + 0.5))


def both_forms(table: pa.Table, parts: int, **params: Any) -> tuple[Any, Any, list, list]:
    """The sparse and the dense (a column per term) vectorize_text steps and their rows
    of ``parts`` partitions."""
    sparse = fit(VectorizeText(columns=["text"], sparse=True, min_df=3, **params),
                 split(table, parts))
    dense = fit(VectorizeText(columns=["text"], min_df=3, **params), split(table, parts))
    return (sparse, dense, [sparse.transform(p, None) for p in split(table, parts)],
            [dense.transform(p, None) for p in split(table, parts)])


def assert_same_trees(a: Any, b: Any, rtol: float = 1e-12, atol: float = 1e-12) -> None:
    """The same nodes; their numbers to rounding (a zero bin's sums are a node's total
    less its other bins, not the sum of its rows: a variance gain's difference of squares
    can take that to 1e-10)."""
    assert a.features == b.features
    for name in a.nodes:
        x, y = np.asarray(a.nodes[name]), np.asarray(b.nodes[name])
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("parts", [1, 4])
@pytest.mark.parametrize("op,params", CASES)
def test_trees_on_a_sparse_column_are_the_term_columns_trees(
        op: type, params: dict, parts: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node (feature, threshold, children, value, cover, gain) and every score of
    the model of a sparse TF-IDF column and a plain feature is the model's of the same
    terms as columns; its passes summed the stored entries (``sparse_histograms``)."""
    summed = []
    real = trees.sparse_histograms
    monkeypatch.setattr(trees, "sparse_histograms",
                        lambda *a, **k: summed.append(1) or real(*a, **k))
    table = sized_topics()
    sparse, dense, sparse_rows, dense_rows = both_forms(table, parts, idf="smooth",
                                                        norm="l2")
    plain = [] if params.get("weight") else ["w"]
    on_sparse = fit_model(op(features=["text", *plain], **params), sparse_rows)
    assert summed
    on_dense = fit_model(op(features=dense.names("text") + plain, **params), dense_rows)
    assert_same_trees(on_sparse, on_dense)
    assert on_sparse.feature_importances == pytest.approx(on_dense.feature_importances,
                                                          rel=1e-12, abs=1e-15)
    column = "probability" if params["label"] == "topic" else "prediction"
    got = on_sparse.transform(sparse.transform(table, None), NP).column(column)
    want = on_dense.transform(dense.transform(table, None), NP).column(column)
    np.testing.assert_allclose(np.array(got.to_pylist()), np.array(want.to_pylist()),
                               rtol=1e-12, atol=1e-14)


def test_a_bootstrap_forest_of_a_sparse_column_is_one_model_on_any_partitioning() -> None:
    """Bootstrap counts and node draws hash a sparse row as stored: one forest on 1 and 4
    partitions, the rows shuffled; saved and loaded, it scores the same, its features
    and importances named by term."""
    table = sized_topics(seed=6)
    step = fit(VectorizeText(columns=["text"], sparse=True, min_df=2), [table])
    rows = step.transform(table, None)
    op = RandomForest(label="topic", features=["text"], n_trees=8, max_depth=5, seed=3)
    one = fit_model(op, [rows])
    order = np.random.default_rng(0).permutation(rows.num_rows)
    four = fit_model(op, split(rows.take(pa.array(order)), 4))
    assert_same_trees(one, four)
    assert set(one.feature_importances) == {f"text:{t}" for t in
                                            step.vocabulary["text"]["terms"]}
    assert max(one.feature_importances, key=one.feature_importances.get).startswith("text:")
    loaded = roundtrip(one)
    np.testing.assert_array_equal(
        np.array(loaded.transform(rows, NP).column("probability").to_pylist()),
        np.array(one.transform(rows, NP).column("probability").to_pylist()))


def test_sparse_bin_edges_count_the_zeros_a_row_does_not_store() -> None:
    """A feature's edges from a sparse sample are the dense sample's: its quantiles
    (more distinct values than bins) and its midpoints (fewer) count its zeros; NaN of a
    plain feature is no edge; a feature of zeros has none."""
    rng = np.random.default_rng(1)
    numbers = rng.normal(size=(3000, 6))
    numbers[:, 3:] = numbers[:, 3:].round(1)  # few distinct values: midpoints
    dense = np.where(rng.random((3000, 6)) < [0.9, 0.5, 0.02, 1.0, 0.0, 0.3], numbers, 0.0)
    dense[rng.random(3000) < 0.1, 5] = np.nan
    for max_bins in (4, 32, 255):
        got = trees.bin_edges(sp.csr_matrix(np.where(dense == 0, 0, dense)), max_bins)
        want = trees.bin_edges(dense, max_bins)
        assert len(got) == len(want)
        for j, (a, b) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"feature {j}, {max_bins} bins")


@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("sampled", [True, False])
def test_sparse_histograms_are_the_dense_codes_histograms(counts: bool, sampled: bool) -> None:
    """Per (feature position, slot, bin): the stored codes' sums and the zero bins' totals
    less the rest are the dense codes' sums (counts exactly, weights to rounding)."""
    rng = np.random.default_rng(2)
    n, m, bins, slots = 500, 12, 9, 3
    values = np.where(rng.random((m, n)) < 0.2, rng.normal(size=(m, n)), 0.0)
    values[0, rng.random(n) < 0.3] = np.nan
    edges = [np.sort(rng.normal(size=int(rng.integers(0, bins - 1)))) for _ in range(m)]
    missing = trees.missing_bin(edges)
    codes = trees.bin_codes(values, edges, missing, NP)
    table = pa.table({f"f{j}": values[j] for j in range(m)})
    stored = sparse_codes(table, list(table.column_names), edges, missing,
                          lambda name: table.column(name).to_numpy())
    assert isinstance(stored, SparseCodes) and len(stored.code) < m * n
    np.testing.assert_array_equal(stored.take(np.arange(m * n)), codes)
    rows = np.sort(rng.choice(n, 400, replace=False))
    slot = rng.integers(0, slots, len(rows))
    featsel = (np.stack([np.sort(rng.choice(m, 5, replace=False)) for _ in range(slots)])
               if sampled else None)
    if counts:
        channels, fold, width = [np.ones(len(rows), np.uint32)], rng.integers(0, 3, len(rows)), 3
        dtype = np.uint32
    else:
        channels, fold, width = [rng.random(len(rows)), rng.normal(size=len(rows))], None, 1
        dtype = np.float64
    shape = (m if featsel is None else featsel.shape[1], slots, missing + 1,
             width if counts else 2)
    want = trees.histograms(NP, codes, n, rows, slot, channels, fold, width, featsel, m,
                            slots, missing + 1, out=np.zeros(shape, dtype))
    got = trees.histograms(NP, stored, n, rows, slot, channels, fold, width, featsel, m,
                           slots, missing + 1, out=np.zeros(shape, dtype))
    if counts:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_find_codes_is_the_binary_search_of_bin_codes() -> None:
    rng = np.random.default_rng(3)
    edges = [np.sort(rng.normal(size=k)) for k in (0, 1, 7, 254)]
    values = rng.normal(size=(4, 300))
    values[1, :5] = [np.inf, -np.inf, np.nan, edges[1][0], 0.0]
    want = trees.bin_codes(values, edges, 256, NP, np.int64)
    feature = np.repeat(np.arange(4), 300)
    np.testing.assert_array_equal(find_codes(values.reshape(-1), feature, edges, 256), want)


def test_off_numpy_the_rows_are_made_dense_with_the_same_trees() -> None:
    """On the strict stand-in (a GPU's path) a sparse column's rows are made dense in the
    partition's buffer: the same trees and scores as the stored entries' on NumPy."""
    strict = get_namespace("array_api_strict")
    table = sized_topics(seed=5)
    _, _, rows, _ = both_forms(table, 2)
    for op in (GradientBoostedTrees(label="topic", features=["text", "w"], n_trees=3,
                                    max_depth=3),
               RandomForest(label="size", features=["text"], n_trees=3, max_depth=3,
                            seed=1)):
        cpu = fit_model(op, rows)
        off = fit_model(op, rows, strict)
        assert_same_trees(off, cpu, rtol=1e-9, atol=1e-11)
        column = "probability" if op.params.label == "topic" else "prediction"
        np.testing.assert_allclose(
            np.array(off.transform(rows[0], strict).column(column).to_pylist(), float),
            np.array(cpu.transform(rows[0], NP).column(column).to_pylist(), float),
            rtol=1e-9, atol=1e-12)


def test_histograms_of_a_node_past_the_memory_share_are_refused_by_column(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's histograms hold every position's bins, however few rows store one: a
    hashed column of 65,536 positions past the share (here 1 MB) stops the fit after its
    bins are found, naming the column, and says what to cut."""
    import operators.features.text as text

    table = sized_topics(seed=7)
    step = fit(VectorizeText(columns=["text"], sparse=True, num_features=1 << 16), [table])
    rows = step.transform(table, None)
    monkeypatch.setattr(text, "dense_limit", lambda: float(1 << 20))
    with pytest.raises(DataError, match=r"a node's histograms of 65,536 features \(65,536 "
                                        r"the positions of the sparse column 'text'\) x \d+ "
                                        r"bins take") as err:
        fit_model(GradientBoostedTrees(label="topic", features=["text"], n_trees=2), [rows])
    assert "min_df" in err.value.hint and "max_bins" in err.value.hint
    monkeypatch.setattr(text, "dense_limit", lambda: float(1 << 30))
    model = fit_model(GradientBoostedTrees(label="topic", features=["text"], n_trees=2,
                                           max_depth=2), [rows])
    assert len(model.features) == 1 << 16
    assert model.transform(rows, NP).num_rows == rows.num_rows


def test_contributions_of_a_sparse_model_name_its_terms_and_add_up() -> None:
    """explain of a boosted model of a sparse column: a contribution per term
    (``text:<term>``), adding up to each row's raw score; the term columns' model's."""
    table = sized_topics(seed=8)
    sparse, dense, sparse_rows, dense_rows = both_forms(table, 1)
    a = fit_model(GradientBoostedTrees(label="size", features=["text"], n_trees=4,
                                       max_depth=3), sparse_rows)
    b = fit_model(GradientBoostedTrees(label="size", features=dense.names("text"), n_trees=4,
                                       max_depth=3), dense_rows)
    got = a.explain(sparse_rows[0].slice(0, 50), NP)
    want = b.explain(dense_rows[0].slice(0, 50), NP)
    names = [f.name for f in got.schema.field("contributions").type]
    assert names == a.features and names[0].startswith("text:")
    phi = np.array([list(r.values()) for r in got.column("contributions").to_pylist()])
    np.testing.assert_allclose(phi, [list(r.values()) for r in
                                     want.column("contributions").to_pylist()],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(phi.sum(axis=1) + got.column("contribution_base").to_numpy(),
                               got.column("prediction").to_numpy(), rtol=1e-9)
