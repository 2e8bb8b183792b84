"""Cases for calibrate: rows a model scored (two classes: a double; more: a list), with
their labels (integer, boolean, string), weights, ties, and a fit past max_points."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.testing.kit import case


def scored_two(rows: int = 300, seed: int = 0) -> pa.Table:
    """A two-class model's probability (rounded: ties) and prediction, integer and
    boolean labels, weights (some 0), and a column that passes through."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.beta(2, 3, rows), 2)
    y = rng.random(rows) < p ** 1.5
    w = rng.uniform(0.0, 2.0, rows)
    w[::17] = 0.0
    return pa.table({"id": np.arange(rows), "y": y.astype(np.int64), "flag": pa.array(y),
                     "w": w, "probability": p, "prediction": (p > 0.5).astype(np.int64)})


def scored_fine(rows: int = 300, seed: int = 2) -> pa.Table:
    """``scored_two`` with as many distinct probabilities as rows (a grid's worth)."""
    table = scored_two(rows, seed)
    p = np.random.default_rng(seed).beta(2, 3, rows)
    return table.set_column(table.schema.get_field_index("probability"), "probability",
                            pa.array(p))


def scored_three(rows: int = 300, seed: int = 1) -> pa.Table:
    """A three-class model's probabilities (a list per row, class order), string labels."""
    rng = np.random.default_rng(seed)
    proba = np.round(rng.dirichlet(np.ones(3), rows), 2)
    proba /= proba.sum(axis=1, keepdims=True)
    names = np.array(["high", "low", "mid"])
    y = np.array([rng.choice(3, p=row ** 2 / (row ** 2).sum()) for row in proba])
    offsets = pa.array(np.arange(0, 3 * rows + 1, 3, dtype=np.int32))
    return pa.table({"label": pa.array(names[y]), "w": rng.uniform(0.5, 1.5, rows),
                     "probability": pa.ListArray.from_arrays(offsets, pa.array(proba.ravel())),
                     "prediction": pa.array(names[np.argmax(proba, axis=1)])})


for method in ("isotonic", "sigmoid"):
    case("calibrate", {"label": "y", "method": method}, scored_two, id=f"two-{method}")
    case("calibrate", {"label": "label", "method": method, "weight": "w"}, scored_three,
         id=f"three-{method}-weighted")
case("calibrate", {"label": "flag", "weight": "w"}, lambda: scored_two().drop_columns(
    ["prediction"]), id="boolean-weighted-no-prediction")
case("calibrate", {"label": "y", "max_points": 40}, scored_fine, id="grid")
case("calibrate", {"label": "label", "method": "sigmoid", "sigmoid_of": "log_odds"},
     scored_three, id="three-sigmoid-of-log-odds")
