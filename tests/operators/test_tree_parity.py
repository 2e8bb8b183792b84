"""Tree models against scikit-learn on held-out splits, and partition invariance: the same
rows in 1 or many (shuffled) partitions, in memory and as Parquet files through the local
engine, give the same model."""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_iris,
    load_wine,
    make_classification,
    make_regression,
)
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from operators.arrays import get_namespace
from operators.models.boosted_trees import GradientBoostedTrees
from operators.models.forest import DecisionTree, RandomForest
from operators.testing.cases.trees import tree_table
from operators.testing.kit import fit, split

NUMPY = get_namespace("numpy")
ACCURACY_TOL = 0.02
R2_TOL = 0.03


@cache
def dataset(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(X, y, is classification)."""
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    elif name == "wine":
        X, y = load_wine(return_X_y=True)
    elif name == "iris":
        X, y = load_iris(return_X_y=True)
    elif name == "diabetes":
        X, y = load_diabetes(return_X_y=True)
        return X, y, False
    elif name == "classification_3":
        X, y = make_classification(3000, 20, n_informative=8, n_classes=3, random_state=0)
    elif name == "classification_2":
        X, y = make_classification(4000, 20, n_informative=6, flip_y=0.05, random_state=1)
    else:
        X, y = make_regression(3000, 10, n_informative=6, noise=20.0, random_state=2)
        return X, y, False
    return X, y, True


def table_of(X: np.ndarray, y: np.ndarray | None = None) -> pa.Table:
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    return pa.table(columns if y is None else {**columns, "y": y})


def held_out(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y, classify = dataset(name)
    return train_test_split(X, y, test_size=0.3, random_state=seed,
                            stratify=y if classify else None)


def predicted(model: Any, X: np.ndarray) -> np.ndarray:
    return model.transform(table_of(X), NUMPY).column("prediction").to_numpy()


def quality(name: str, ours: Any, theirs: Any, seeds: range) -> tuple[float, float]:
    """Mean held-out accuracy (R2) of ours and theirs over the splits of ``seeds``."""
    classify = dataset(name)[2]
    score = accuracy_score if classify else r2_score
    got, expected = [], []
    for seed in seeds:
        X_train, X_test, y_train, y_test = held_out(name, seed)
        model = fit(ours(), split(table_of(X_train, y_train), 3))
        got.append(score(y_test, predicted(model, X_test)))
        expected.append(score(y_test, theirs().fit(X_train, y_train).predict(X_test)))
    return float(np.mean(got)), float(np.mean(expected))


def assert_parity(name: str, got: float, expected: float) -> None:
    tol = ACCURACY_TOL if dataset(name)[2] else R2_TOL
    assert got >= expected - tol, f"{name}: {got:.4f} vs scikit-learn {expected:.4f}"


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "iris", "classification_3",
                                  "diabetes", "regression"])
def test_decision_tree_parity(name: str) -> None:
    """A single tree is unstable: compare the mean over five held-out splits."""
    classify = dataset(name)[2]
    depth = 5 if classify else 4
    sk = DecisionTreeClassifier if classify else DecisionTreeRegressor
    got, expected = quality(name, lambda: DecisionTree(label="y", max_depth=depth),
                            lambda: sk(max_depth=depth, random_state=0), range(5))
    assert_parity(name, got, expected)


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "classification_2", "diabetes",
                                  "regression"])
def test_random_forest_parity(name: str) -> None:
    classify = dataset(name)[2]
    if classify:
        def theirs() -> Any:
            return RandomForestClassifier(50, max_depth=8, random_state=0)
    else:
        def theirs() -> Any:
            return RandomForestRegressor(50, max_depth=8, max_features=1.0, random_state=0)
    # the generated sets have 900+ held-out rows: one split is a stable comparison
    seeds = range(2) if name in ("breast_cancer", "wine", "diabetes") else range(1)
    got, expected = quality(name, lambda: RandomForest(label="y", n_trees=50, max_depth=8),
                            theirs, seeds)
    assert_parity(name, got, expected)


BOOSTED = {"max_depth": 3, "learning_rate": 0.1, "min_samples_leaf": 20}


@pytest.mark.parametrize("name", ["breast_cancer", "iris", "classification_3", "diabetes",
                                  "regression"])
def test_boosted_trees_parity(name: str) -> None:
    classify = dataset(name)[2]
    sk = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
    got, expected = quality(
        name, lambda: GradientBoostedTrees(label="y", n_trees=60, **BOOSTED),
        lambda: sk(max_iter=60, max_leaf_nodes=None, early_stopping=False, **BOOSTED),
        range(1))
    assert_parity(name, got, expected)


def rounded(X: np.ndarray) -> np.ndarray:
    """At most 41 distinct values per feature: the bins are the distinct values."""
    return np.round((X - X.mean(axis=0)) / X.std(axis=0) * 4) / 4


def test_exact_bins_give_scikit_learns_tree() -> None:
    """With every distinct value its own bin the search is scikit-learn's exact one."""
    X, y, _ = dataset("breast_cancer")
    X = rounded(X)
    model = fit(DecisionTree(label="y", max_depth=6, criterion="entropy"),
                split(table_of(X, y), 4))
    theirs = DecisionTreeClassifier(max_depth=6, criterion="entropy", random_state=0)
    proba = model.transform(table_of(X), NUMPY).column("probability").to_numpy()
    np.testing.assert_allclose(proba, theirs.fit(X, y).predict_proba(X)[:, 1], atol=1e-12)
    X, y, _ = dataset("diabetes")
    X = rounded(X)
    model = fit(DecisionTree(label="y", max_depth=5), split(table_of(X, y), 4))
    theirs = DecisionTreeRegressor(max_depth=5, random_state=0).fit(X, y)
    np.testing.assert_allclose(predicted(model, X), theirs.predict(X), rtol=1e-9)


@pytest.mark.parametrize("name", ["diabetes", "classification_3"])
def test_boosting_is_scikit_learns_hist_gradient_boosting(name: str) -> None:
    """Same bins, gradients, gains and leaf values: the same predictions (up to
    scikit-learn's float32 gradients and hessians)."""
    X, y, classify = dataset(name)
    params = {"max_depth": 3, "learning_rate": 0.2, "min_samples_leaf": 10}
    model = fit(GradientBoostedTrees(label="y", n_trees=20, **params), split(table_of(X, y), 3))
    if classify:
        theirs = HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=None,
                                                early_stopping=False, **params).fit(X, y)
        got = np.asarray(model.transform(table_of(X), NUMPY).column("probability").to_pylist())
        np.testing.assert_allclose(got, theirs.predict_proba(X), atol=1e-6)
    else:
        theirs = HistGradientBoostingRegressor(max_iter=20, max_leaf_nodes=None,
                                               early_stopping=False, **params).fit(X, y)
        np.testing.assert_allclose(predicted(model, X), theirs.predict(X), rtol=1e-7)


# --------------------------------------------------------------------------- invariance

OPS = {
    "decision_tree": lambda: DecisionTree(label="y", weight="w", max_depth=6),
    "random_forest": lambda: RandomForest(label="y", weight="w", n_trees=10, max_depth=6,
                                          seed=4, validation_fraction=0.1),
    "gradient_boosted_trees": lambda: GradientBoostedTrees(
        label="y", weight="w", n_trees=10, max_depth=4, subsample=0.8, min_samples_leaf=5),
}


def outputs(model: Any, table: pa.Table) -> dict[str, np.ndarray]:
    out = model.transform(table, NUMPY)
    result = {"prediction": np.asarray(out.column("prediction").to_pylist())}
    if "probability" in out.column_names:
        result["probability"] = np.asarray(out.column("probability").to_pylist(), dtype=float)
    return result


def assert_same_outputs(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    if expected["prediction"].dtype.kind == "f":
        np.testing.assert_allclose(got["prediction"], expected["prediction"], rtol=1e-9,
                                   atol=1e-12)
    else:
        np.testing.assert_array_equal(got["prediction"], expected["prediction"])
    if "probability" in expected:
        np.testing.assert_allclose(got["probability"], expected["probability"], rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("regression", [False, True], ids=["classes", "numbers"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_one_or_many_shuffled_partitions(op: str, regression: bool) -> None:
    table = tree_table(rows=1500, classes=3, seed=21, regression=regression)
    shuffled = table.take(np.random.default_rng(5).permutation(table.num_rows))
    one = fit(OPS[op](), [table])
    many = fit(OPS[op](), split(shuffled, 5, seed=6))
    assert_same_outputs(outputs(many, table), outputs(one, table))


def test_one_file_or_five_files_through_the_local_engine(tmp_path: Path) -> None:
    """Parquet in 1 file or 5 shuffled files of small row groups, the local engine (its
    partition cache, so the partition memo, in play): the same forest and boosting."""
    from pipelines.runner import run
    from pipelines.store import ModelStore

    table = tree_table(rows=2000, seed=22)
    shuffled = table.take(np.random.default_rng(7).permutation(table.num_rows))
    layouts = {1: [table], 5: split(shuffled, 5)}
    results = {}
    for files, parts in layouts.items():
        folder = tmp_path / f"data{files}"
        folder.mkdir()
        for i, part in enumerate(parts):
            pq.write_table(part, folder / f"part-{i}.parquet", row_group_size=150)
        pipeline = tmp_path / f"train{files}.yaml"
        pipeline.write_text(textwrap.dedent(f"""\
            pipeline: trees
            steps:
              - id: data
                op: read_parquet
                path: {folder}
              - id: forest
                op: random_forest
                label: y
                weight: w
                n_trees: 8
                max_depth: 5
                max_histogram_mb: 0.02
              - id: save_forest
                op: save_model
                name: forest{files}
              - id: boosted
                op: gradient_boosted_trees
                input: data
                label: y
                n_trees: 6
                max_depth: 3
                subsample: 0.7
              - id: save_boosted
                op: save_model
                name: boosted{files}
            """))
        run(pipeline, models=str(tmp_path / "models"), runs_dir=str(tmp_path / "runs"))
        store = ModelStore(str(tmp_path / "models"))
        results[files] = {kind: outputs(store.load(f"{kind}{files}").chain.steps[-1], table)
                          for kind in ("forest", "boosted")}
    for kind in ("forest", "boosted"):
        assert_same_outputs(results[5][kind], results[1][kind])
