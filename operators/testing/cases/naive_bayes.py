"""Cases for naive_bayes (each model type), and score with a bound naive Bayes model; the
sparse column's cases of the other steps that read one (logistic_regression, kmeans,
evaluate_clusters, the trees)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.chain import Chain
from operators.models.naive_bayes import NaiveBayes, NaiveBayesFitted
from operators.sparse import from_csr, indptr_of, sparse_field
from operators.testing.cases.models import classification_table, string_multiclass_table
from operators.testing.kit import case, fit, split


def count_features_table(rows: int = 160, seed: int = 6) -> pa.Table:
    """Counts a class shifts (multinomial and bernoulli features), string classes, weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    counts = rng.poisson(1.0 + y[:, None] * [0.5, 2.0, 0.0], (rows, 3))
    return pa.table({
        "c1": pa.array(counts[:, 0], pa.int32()), "c2": counts[:, 1].astype(float),
        "c3": pa.array(counts[:, 2] > 0),
        "y": pa.array(np.array(["a", "b", "c"])[y]), "w": rng.uniform(0.5, 2.0, rows),
    })


def sparse_counts_table(rows: int = 160, seed: int = 7) -> pa.Table:
    """A sparse column of 12 term counts (``operators.sparse``: a few non-zeros a row,
    some rows empty) a class shifts, beside a plain count column; string classes,
    weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    rates = 0.15 + 0.6 * (np.arange(12)[None, :] % 3 == y[:, None])
    dense = rng.poisson(rates)
    rows_of, positions = np.nonzero(dense)
    terms = from_csr(indptr_of(rows_of, rows), positions,
                     dense[rows_of, positions].astype(float))
    field = sparse_field("terms", 12, [f"t{i:02d}" for i in range(12)])
    return pa.table({"terms": terms, "c": rng.poisson(1.0 + y), "w": rng.uniform(0.5, 2.0, rows),
                     "y": pa.array(np.array(["a", "b", "c"])[y])}).cast(pa.schema([
                         field, pa.field("c", pa.int64()), pa.field("w", pa.float64()),
                         pa.field("y", pa.string())]))


def _sparse_clustered() -> pa.Table:
    """``sparse_counts_table`` with its classes as clusters (``prediction``)."""
    table = sparse_counts_table()
    codes = pc.index_in(table.column("y"), value_set=pa.array(["a", "b", "c"]))
    return table.append_column("prediction", codes.cast(pa.int64()))


@cache
def _model() -> NaiveBayesFitted:
    model = fit(NaiveBayes(label="y", model_type="multinomial"), split(count_features_table(), 3))
    assert isinstance(model, NaiveBayesFitted)
    return model


def _cases() -> None:
    case("naive_bayes", {"label": "y"}, classification_table, id="gaussian", rtol=1e-9,
         atol=1e-12)
    case("naive_bayes", {"label": "y", "weight": "w", "validation_fraction": 0.25, "seed": 2,
                         "var_smoothing": 1e-3},
         string_multiclass_table, id="gaussian-weighted-validation", rtol=1e-9, atol=1e-12)
    case("naive_bayes", {"label": "y", "model_type": "multinomial", "weight": "w",
                         "smoothing": 0.5},
         count_features_table, id="multinomial-weighted", rtol=1e-9, atol=1e-12)
    case("naive_bayes", {"label": "y", "model_type": "bernoulli", "binarize": 1.0,
                         "priors": {"a": 0.2, "b": 0.3, "c": 0.5}},
         count_features_table, id="bernoulli-priors", rtol=1e-9, atol=1e-12)
    case("naive_bayes", {"label": "y", "model_type": "complement", "weight": "w",
                         "validation_fraction": 0.3},
         count_features_table, id="complement-validation", rtol=1e-9, atol=1e-12)
    case("naive_bayes", {"label": "y", "model_type": "multinomial", "weight": "w"},
         sparse_counts_table, id="multinomial-sparse", rtol=1e-9, atol=1e-12)
    case("naive_bayes", {"label": "y", "model_type": "bernoulli", "validation_fraction": 0.25},
         sparse_counts_table, id="bernoulli-sparse-validation", rtol=1e-9, atol=1e-12)
    case("logistic_regression", {"label": "y", "l2": 0.01, "solver": "lbfgs",
                                 "features": ["terms", "c"]},
         sparse_counts_table, id="multiclass-lbfgs-sparse", rtol=1e-6, atol=1e-8)
    # whole counts put rows at equal distances from two centres: ties, whatever last
    # bits the plain column's mean and the centres get from the partitioning
    case("kmeans", {"k": 3, "features": ["terms", "c"], "weight": "w",
                    "validation_fraction": 0.25, "seed": 3},
         sparse_counts_table, id="kmeans-sparse-validation", rtol=1e-9, atol=1e-9)
    case("kmeans", {"k": 4, "features": ["terms"], "init": "k-means++", "distance": True},
         sparse_counts_table, id="kmeans-sparse-plusplus", rtol=1e-9, atol=1e-9)
    case("evaluate_clusters", {"features": ["terms", "c"], "weight": "w"},
         _sparse_clustered, id="sparse", rtol=1e-9, atol=1e-12)
    case("isolation_forest", {"n_trees": 8, "max_samples": 48, "features": ["terms", "c"],
                              "contamination": 0.1, "seed": 2},
         sparse_counts_table, id="sparse-contamination", rtol=1e-12, atol=1e-12)
    case("pca", {"columns": ["terms", "c"], "k": 4, "weight": "w", "whiten": True},
         sparse_counts_table, id="sparse-weighted", rtol=1e-9, atol=1e-10)
    case("mlp", {"label": "y", "features": ["terms", "c"], "weight": "w", "hidden": [3],
                 "activation": "tanh", "l2": 0.1, "tol": 1e-10, "max_iter": 500},
         sparse_counts_table, id="lbfgs-sparse", rtol=1e-6, atol=1e-8, float32_atol=1e-3)
    case("gradient_boosted_trees", {"label": "y", "weight": "w", "n_trees": 4, "max_depth": 3,
                                    "min_samples_leaf": 3, "validation_fraction": 0.25,
                                    "features": ["terms", "c"]},
         sparse_counts_table, id="multiclass-sparse-validation", rtol=1e-8, atol=1e-10)
    case("random_forest", {"label": "y", "n_trees": 4, "max_depth": 4, "seed": 2,
                           "max_features": 0.5},
         sparse_counts_table, id="sparse-bootstrap", rtol=1e-9, atol=1e-12)
    case("decision_tree", {"label": "c", "task": "regression", "max_depth": 3,
                           "features": ["terms"]},
         sparse_counts_table, id="regression-sparse", rtol=1e-9, atol=1e-12)
    case("score", {"model": "nb"}, count_features_table, id="naive-bayes",
         prepare=lambda op: op.bind(Chain([_model()]), _model().features,
                                    {"name": "nb", "version": 1}))
    case("score", {"model": "nb", "contributions": True}, count_features_table,
         id="naive-bayes-contributions",
         prepare=lambda op: op.bind(Chain([_model()]), _model().features,
                                    {"name": "nb", "version": 1}))


_cases()
