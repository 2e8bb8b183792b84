"""isolation_forest: scikit-learn's IsolationForest, its trees scored as ours, its
statistics on planted anomalies, the subsample draw and the errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.ensemble import IsolationForest as SkIsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.metrics import roc_auc_score

from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.hashing import hash_rows, salted_keys
from operators.models.isolation_forest import (
    _SUBSAMPLE_SALT,
    AUTO_OFFSET,
    IsolationForest,
    IsolationForestFitted,
    average_path_length,
    height_limit,
)
from operators.testing.kit import NUMPY, fit, split


def planted(rows: int = 4000, anomalies: int = 40, features: int = 5, seed: int = 0
            ) -> tuple[pa.Table, np.ndarray]:
    """A correlated Gaussian cloud with ``anomalies`` rows planted off it, and the truth."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((features, features))
    X = rng.standard_normal((rows, features)) @ mixing
    truth = np.zeros(rows, dtype=bool)
    truth[rng.choice(rows, anomalies, replace=False)] = True
    X[truth] += rng.choice([-1.0, 1.0], (anomalies, features)) * rng.uniform(2, 5, (
        anomalies, features)) * X.std(axis=0)
    return pa.table({f"x{j}": X[:, j] for j in range(features)}), truth


def matrix(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy() for c in table.column_names])


def fitted_state(estimator: IsolationForest, parts: list[pa.Table]) -> dict:
    state, _ = drive(estimator, parts[0].schema,
                     lambda partial: tree_reduce([partial(p, NUMPY) for p in parts],
                                                 estimator.combine))
    return state


def from_sklearn(model: SkIsolationForest, features: list[str]) -> IsolationForestFitted:
    """scikit-learn's fitted trees as our arrays: its features through each tree's
    feature subset, children as positions in the concatenated nodes."""
    trees = []
    for tree, used in zip(model.estimators_, model.estimators_features_, strict=True):
        t = tree.tree_
        leaf = t.children_left < 0
        trees.append({"feature": np.where(leaf, -1, used[np.maximum(t.feature, 0)]),
                      "threshold": np.where(leaf, 0.0, t.threshold),
                      "left": t.children_left, "right": t.children_right,
                      "samples": t.n_node_samples, "depth": t.compute_node_depths() - 1})
    starts = np.concatenate([[0], np.cumsum([len(t["feature"]) for t in trees])])
    nodes = {key: np.concatenate([t[key] for t in trees])
             for key in ("feature", "threshold", "samples", "depth")}
    for key in ("left", "right"):
        nodes[key] = np.concatenate([np.where(t[key] >= 0, t[key] + s, -1)
                                     for t, s in zip(trees, starts[:-1], strict=True)])
    nodes["tree_start"] = starts
    return IsolationForestFitted(features, nodes, model.max_samples_, model.offset_)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("max_features", [1.0, 0.6])
def test_scikit_learns_trees_score_as_scikit_learn(max_features: float) -> None:
    """scikit-learn's fitted forest, loaded into our scorer: the same score_samples,
    decision_function and predict, to 1e-12."""
    table, _ = planted(seed=1)
    X = matrix(table)
    model = SkIsolationForest(n_estimators=50, max_samples=128, max_features=max_features,
                              contamination=0.02, random_state=4).fit(X)
    ours = from_sklearn(model, table.column_names)
    scored = ours.transform(table, NUMPY)
    scores = scored.column("anomaly_score").to_numpy()
    np.testing.assert_allclose(-scores, model.score_samples(X), rtol=1e-12, atol=0)
    np.testing.assert_allclose(-scores - ours.offset, model.decision_function(X), rtol=1e-12,
                               atol=1e-15)
    flagged = scored.column("prediction").to_numpy()
    np.testing.assert_array_equal(flagged, (model.predict(X) == -1).astype(np.int64))
    assert 0 < flagged.sum() < len(flagged)


def test_our_trees_score_as_a_walk_with_scikit_learns_path_lengths() -> None:
    """Our grown trees: each row walked down each tree one node at a time, its leaf's
    depth plus scikit-learn's ``_average_path_length`` of the leaf's rows, equals the
    vectorised scorer's score to 1e-12; the trees keep to scikit-learn's height limit."""
    table, _ = planted(rows=600, seed=2)
    model = fit(IsolationForest(n_trees=30, max_samples=100, seed=3), split(table, 4))
    nodes, X = model.nodes, matrix(table)
    assert nodes["depth"].max() <= height_limit(100) == 7
    total = np.zeros(len(X))
    for start in nodes["tree_start"][:-1]:
        for i, row in enumerate(X):
            at = start
            while nodes["feature"][at] >= 0:
                go_left = row[nodes["feature"][at]] <= nodes["threshold"][at]
                at = nodes["left"][at] if go_left else nodes["right"][at]
            total[i] += nodes["depth"][at] + _average_path_length([nodes["samples"][at]])[0]
    expected = 2.0 ** (-total / (30 * _average_path_length([100])[0]))
    got = model.transform(table, NUMPY).column("anomaly_score").to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # a leaf holds rows no split isolates: at the limit, or copies of one row
    leaves = nodes["feature"] < 0
    assert ((nodes["depth"][leaves] == 7) | (nodes["samples"][leaves] <= 1)).all()


def test_average_path_length_is_scikit_learns() -> None:
    n = np.array([0, 1, 2, 3, 4, 17, 256, 10**6])
    np.testing.assert_array_equal(average_path_length(n), _average_path_length(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_anomalies_rank_as_scikit_learns(seed: int) -> None:
    """ROC AUC of the anomaly score within 0.01 of scikit-learn's, and contamination's
    share of the training rows flagged."""
    table, truth = planted(seed=10 + seed)
    X = matrix(table)
    reference = SkIsolationForest(n_estimators=100, max_samples=256, contamination=0.01,
                                  random_state=seed).fit(X)
    estimator = IsolationForest(contamination=0.01, seed=seed)
    state = fitted_state(estimator, split(table, 3))
    ours = estimator.fitted(state)
    scored = ours.transform(table, NUMPY)
    auc = roc_auc_score(truth, scored.column("anomaly_score").to_numpy())
    expected = roc_auc_score(truth, -reference.score_samples(X))
    assert abs(auc - expected) < 0.01, (auc, expected)
    assert auc > 0.95
    flagged = scored.column("prediction").to_numpy()
    assert flagged.sum() == (reference.predict(X) == -1).sum() == 40
    metrics = estimator.metrics(state)
    assert metrics["flagged"] == 40 and metrics["flagged_share"] == 0.01
    # the offset is the exact 1% quantile of scikit-learn's score_samples of our scores
    assert metrics["offset"] == np.percentile(-scored.column("anomaly_score").to_numpy(), 1)
    assert metrics["threshold"] == -metrics["offset"]


def test_auto_contamination_flags_above_one_half() -> None:
    table, _ = planted(seed=5)
    estimator = IsolationForest(seed=1)
    state = fitted_state(estimator, split(table, 2))
    scored = estimator.fitted(state).transform(table, NUMPY)
    scores = scored.column("anomaly_score").to_numpy()
    np.testing.assert_array_equal(scored.column("prediction").to_numpy(), scores > 0.5)
    metrics = estimator.metrics(state)
    assert metrics["offset"] == AUTO_OFFSET and metrics["trees"] == 100
    assert metrics["max_samples"] == 256 and metrics["height_limit"] == 8
    assert metrics["flagged_share"] == np.mean(scores > 0.5)


# --------------------------------------------------------------------------- draws


def test_each_tree_grows_on_the_k_rows_of_smallest_key() -> None:
    """Tree t's subsample: exactly max_samples rows, those of smallest salted hash of the
    whole table, whatever the partitioning; the trees bit for bit the same."""
    table, _ = planted(rows=1000, seed=6)
    X = matrix(table)
    estimator = IsolationForest(n_trees=5, max_samples=50, seed=9)
    whole = fitted_state(estimator, [table])
    hashes = hash_rows(table, table.column_names, 9)
    state = estimator.init(table.schema)
    sample = tree_reduce([estimator.partial(p, state, NUMPY) for p in split(table, 7, 3)],
                         estimator.combine)
    for t in range(5):
        expected = np.sort(np.argsort(salted_keys(hashes, _SUBSAMPLE_SALT + t))[:50])
        got = sample["values"][t]
        assert got.shape == (50, 5)
        rows = np.sort([int(np.flatnonzero((row == X).all(axis=1))[0]) for row in got])
        np.testing.assert_array_equal(rows, expected)
        assert whole["nodes"]["samples"][whole["nodes"]["tree_start"][t]] == 50
    for parts in (split(table, 3), split(table, 8, 1), [table.slice(0, 0), table]):
        state = fitted_state(IsolationForest(n_trees=5, max_samples=50, seed=9), parts)
        for key, value in whole["nodes"].items():
            np.testing.assert_array_equal(state["nodes"][key], value, err_msg=key)


def test_max_samples_a_fraction_counts_the_rows_first() -> None:
    table, _ = planted(rows=500, seed=7)
    estimator = IsolationForest(n_trees=3, max_samples=0.1)
    state = fitted_state(estimator, split(table, 3))
    assert state["k"] == 50 and estimator.metrics(state)["height_limit"] == 6


def test_more_max_samples_than_rows_uses_every_row_with_a_note() -> None:
    table, _ = planted(rows=100, seed=8)
    estimator = IsolationForest(n_trees=4, max_samples=300)
    state = fitted_state(estimator, split(table, 3))
    metrics = estimator.metrics(state)
    assert metrics["max_samples"] == 100
    assert metrics["note"] == ("max_samples (300) is more than the 100 training rows: every "
                               "row is used (max_samples 100)")
    with_auto = IsolationForest(n_trees=4)
    state = fitted_state(with_auto, [table])  # auto: 256 or every row, no warning
    assert with_auto.metrics(state)["max_samples"] == 100 and "note" not in with_auto.metrics(
        state)


# --------------------------------------------------------------------------- errors


def test_nan_and_null_features_are_the_shared_feature_errors() -> None:
    table, _ = planted(rows=50, seed=9)
    nan = table.set_column(0, "x0", pa.array([np.nan] + [1.0] * 49))
    with pytest.raises(DataError, match="feature column 'x0' has 1 NaN or infinite values"):
        fit(IsolationForest(n_trees=2), [nan])
    null = table.set_column(1, "x1", pa.array([None, 2.0] + [1.0] * 48))
    with pytest.raises(DataError, match="feature column 'x1' has 1 null values"):
        fit(IsolationForest(n_trees=2), [null])
    model = fit(IsolationForest(n_trees=2), [table])
    with pytest.raises(DataError, match="feature column 'x0' has 1 NaN"):
        model.transform(nan, NUMPY)


def test_non_numeric_features_and_bad_parameters() -> None:
    table = pa.table({"x": [1.0, 2.0], "name": ["a", "b"]})
    with pytest.raises(SchemaError, match="feature column 'name' is string, not numeric"):
        IsolationForest(features=["x", "name"]).output_schema(table.schema)
    assert IsolationForest().init(table.schema)["features"] == ["x"]  # default: numeric
    with pytest.raises(SchemaError, match="no numeric feature columns"):
        IsolationForest().output_schema(pa.schema([("name", pa.string())]))
    for bad in ({"contamination": 0.6}, {"contamination": 0.0}, {"max_samples": 0},
                {"max_samples": 1.5}, {"max_features": 0.0}):
        with pytest.raises((ParamError, ValueError)):
            IsolationForest(**bad)
    with pytest.raises(DataError, match="max_features is 3 and there are 1 features"):
        fit(IsolationForest(max_features=3, n_trees=2), [table])


def test_scores_are_the_same_on_every_namespace_and_after_save() -> None:
    from operators.arrays import get_namespace
    from operators.testing.kit import roundtrip

    table, _ = planted(rows=300, seed=3)
    model = fit(IsolationForest(n_trees=10, max_samples=32, contamination=0.05), [table])
    expected = model.transform(table, NUMPY)
    strict = get_namespace("array_api_strict", dtype="float32")
    assert roundtrip(model).transform(table, strict).equals(expected)


def test_a_feature_of_a_tiny_range_is_constant_as_in_scikit_learn() -> None:
    """Values spanning at most 1e-7 are not split on (scikit-learn's FEATURE_THRESHOLD):
    copies of one row and such rows alike end in one leaf of the root."""
    rng = np.random.default_rng(0)
    tiny = pa.table({"x": 1.0 + rng.random(300) * 1e-8, "y": np.full(300, 2.0)})
    model = fit(IsolationForest(n_trees=3, max_samples=64), [tiny])
    assert (model.nodes["feature"] == -1).all() and (model.nodes["samples"] == 64).all()
    wider = tiny.set_column(0, "x", pa.array(1.0 + rng.random(300) * 1e-6))
    assert (fit(IsolationForest(n_trees=3, max_samples=64), [wider]).nodes["feature"] == 0
            ).any()


def test_subsamples_past_the_memory_share_are_refused_before_they_are_drawn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees' subsamples (n_trees x max_samples rows of every feature, float64, three
    copies while draws merge) are checked against the share of memory the term columns
    may take (here 50 KB) before the pass that draws them: a count before the first
    pass, a fraction after the count; dense features and a sparse column's terms alike,
    the error saying how large and what lowers it."""
    import operators.features.text as text
    from operators.features.text import VectorizeText

    table, _ = planted(rows=500, seed=4)  # 5 features
    monkeypatch.setattr(text, "dense_limit", lambda: 50_000.0)
    phases: list[str] = []

    def fitted(estimator: IsolationForest, parts: list[pa.Table]) -> dict:
        def aggregate(partial):
            phases.append(partial.__defaults__[0]["phase"])  # the state it runs with
            return tree_reduce([partial(p, NUMPY) for p in parts], estimator.combine)
        return drive(estimator, parts[0].schema, aggregate)[0]

    # 3 x 8 x 10 x 64 x 5 = 76,800 bytes: refused before any pass
    with pytest.raises(DataError, match=r"the subsamples the trees grow on, 10 trees x 64 "
                                        r"rows x 5 features \(float64, held 3 times over as "
                                        r"partitions' draws merge\), take 0.0 GiB, over 25% "
                                        r"of the memory here") as err:
        fitted(IsolationForest(n_trees=10, max_samples=64), split(table, 3))
    assert phases == []
    assert "lower max_samples" in err.value.hint and "n_trees" in err.value.hint
    assert "fewer features (features:)" in err.value.hint
    # a fraction: 50 rows a tree once counted (60,000 bytes), refused before the draw
    with pytest.raises(DataError, match="10 trees x 50 rows x 5 features"):
        fitted(IsolationForest(n_trees=10, max_samples=0.1), split(table, 3))
    assert phases == ["count"]
    phases.clear()
    state = fitted(IsolationForest(n_trees=10, max_samples=32), split(table, 3))  # 38,400
    assert phases[:1] == ["sample"] and state["k"] == 32
    # a sparse column: its terms are the features, which the hint names
    words = pa.table({"text": [f"w{i % 7} w{i % 11} w{i % 13}" for i in range(300)]})
    step = fit(VectorizeText(columns=["text"], sparse=True), [words])
    rows = step.transform(words, None)
    terms = len(step.vocabulary["text"]["terms"])
    with pytest.raises(DataError, match=rf"10 trees x 64 rows x {terms} features") as err:
        fitted(IsolationForest(n_trees=10, max_samples=64), [rows])
    assert f"the sparse column 'text' gives {terms} of them" in err.value.hint
    assert "vectorize_text's max_features" in err.value.hint
