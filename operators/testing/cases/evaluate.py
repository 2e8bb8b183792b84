"""Cases for evaluate: binary, multiclass, regression and weighted.

evaluate passes rows through, so the kit's output comparisons only see the data;
tests/operators/test_evaluate.py checks that the metrics themselves are partition
invariant and match scikit-learn.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.testing.kit import case


def binary_table(rows: int = 300, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    p = np.clip(0.35 * y + 0.65 * rng.random(rows), 0.0, 1.0)
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "churned": pa.array(y.astype(np.int64)),
        "prediction": pa.array((p > 0.5).astype(np.int64)),
        "probability": pa.array(p),
        "w": pa.array(rng.random(rows) * 3),
    })


def multiclass_table(rows: int = 300, seed: int = 1) -> pa.Table:
    """String labels sorted, so that most partitions see only some of the classes."""
    rng = np.random.default_rng(seed)
    names = np.array(["basic", "plus", "pro", "team"])
    proba = rng.dirichlet(np.ones(len(names)), rows)
    y = names[np.array([rng.choice(len(names), p=row) for row in proba])]
    order = np.argsort(y, kind="stable")
    return pa.table({
        "plan": pa.array(y[order]),
        "prediction": pa.array(names[proba.argmax(axis=1)][order]),
        "probability": pa.array(list(proba[order]), pa.list_(pa.float64())),
    })


def regression_table(rows: int = 300, seed: int = 2) -> pa.Table:
    rng = np.random.default_rng(seed)
    y = 1000.0 + rng.standard_normal(rows) * 5
    return pa.table({
        "charges": pa.array(y),
        "prediction": pa.array(y + rng.standard_normal(rows)),
        "w": pa.array(rng.integers(0, 4, rows).astype(np.float64)),
    })


case("evaluate", {"label": "churned"}, binary_table, id="binary")
case("evaluate", {"label": "plan", "metrics": ["accuracy", "log_loss", "roc_auc", "f1",
                                               "confusion_matrix"]},
     multiclass_table, id="multiclass")
case("evaluate", {"label": "charges"}, regression_table, id="regression")
case("evaluate", {"label": "churned", "weight": "w", "classes": [0, 1]}, binary_table,
     id="weighted")
case("evaluate", {"label": "charges", "weight": "w"}, regression_table, id="weighted-regression")


def segmented_table(rows: int = 300) -> pa.Table:
    """binary_table with a segment column (nulls included) to group by."""
    table = binary_table(rows, seed=4)
    rng = np.random.default_rng(9)
    segment = np.array(["east", "north", "south"])[rng.integers(0, 3, rows)]
    return table.append_column("segment", pa.array(segment, mask=rng.random(rows) < 0.1))


case("evaluate", {"label": "churned", "by": ["segment"], "weight": "w"}, segmented_table,
     id="by-segment")


def ranked_table() -> pa.Table:
    """Queries of graded rows (``ranking_table``) with a noisy score of the grade."""
    from operators.testing.cases.trees import ranking_table

    table = ranking_table(queries=30, seed=3)
    grade = table.column("y").to_numpy().astype(np.float64)
    noise = np.random.default_rng(6).standard_normal(table.num_rows)
    return table.append_column("prediction", pa.array(np.round(grade + noise, 1)))


case("evaluate", {"label": "y", "group": "query", "k": 5}, ranked_table, id="ndcg",
     skip={check: "split() cuts queries, which ndcg refuses (the span check); "
                  "tests/operators/test_ranking.py measures whole queries on 3 partitions"
           for check in ("partition_invariance", "combine_laws")})


def _drift_cases() -> None:
    """drift against a profile of one features table, on another: numbers with nulls,
    text with nulls and a value the profile lacks, a dictionary column."""
    from operators.evaluate.drift import profile_finish, profile_partial
    from operators.testing.cases.features import features_table

    columns = ["x", "big", "small", "plan", "region"]
    profile = profile_finish(profile_partial(features_table(seed=3), columns))

    def bind(op) -> None:
        op.bind(None, [], {"name": "t", "version": 1, "meta": {"profile": profile}})

    def shifted() -> pa.Table:
        table = features_table(seed=8)
        plans = table["plan"].to_pylist()
        plans[:20] = ["gold"] * 20
        return table.set_column(table.schema.get_field_index("plan"), "plan",
                                pa.array(plans))

    case("drift", {"model": "t"}, shifted, id="report", prepare=bind)
    case("drift", {"model": "t", "columns": ["x", "region"], "max_psi": 10.0}, shifted,
         id="columns-limit", prepare=bind)


_drift_cases()


def clustered_table(rows: int = 300, seed: int = 5) -> pa.Table:
    """Three blobs of numbers (an integer column among them), cluster ids as kmeans
    writes them, and its distance column (not a feature)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 3, rows)
    centres = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    x = centres[cluster] + rng.standard_normal((rows, 2))
    return pa.table({"x": x[:, 0], "y": x[:, 1],
                     "n": pa.array(rng.integers(0, 5, rows).astype(np.int32)),
                     "prediction": pa.array(cluster.astype(np.int64)),
                     "distance": pa.array(rng.random(rows))})


case("evaluate_clusters", {}, clustered_table, id="kmeans-output")
case("evaluate_clusters", {"features": ["x", "y"], "metrics": ["calinski_harabasz", "count"]},
     clustered_table, id="one-pass")
case("evaluate_clusters", {"features": ["x", "y"], "weight": "n1"},
     lambda: clustered_table().append_column(
         "n1", pa.array(clustered_table().column("n").to_numpy() + 1.0)), id="weighted")
case("evaluate_clusters", {"features": ["x", "y"], "by": ["g"], "weight": "n1"},
     lambda: clustered_table().append_column(
         "n1", pa.array(clustered_table().column("n").to_numpy() + 1.0)).append_column(
         "g", pa.array(np.array(["a", "b", None], dtype=object)[
             clustered_table().column("n").to_numpy() % 3])), id="by-weighted")
case("evaluate_clusters", {"features": ["x", "y"], "weight": "n1", "distance_measure": "cosine"},
     lambda: clustered_table().append_column(
         "n1", pa.array(clustered_table().column("n").to_numpy() + 1.0)), id="cosine-weighted")
