"""Cases for isolation_forest, and score with a bound isolation forest."""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa

from operators.chain import Chain
from operators.models.isolation_forest import IsolationForest, IsolationForestFitted
from operators.testing.kit import case, fit, split


def outliers_table(rows: int = 200, seed: int = 11) -> pa.Table:
    """A cloud of two float features and an integer one with a few rows planted far from
    it, copies of a row among them, and a string column (not a feature)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3))
    x[:6] += rng.choice([-6.0, 6.0], size=(6, 3))
    x[10:14] = x[20]  # copies: drawn together, isolated by no split
    return pa.table({
        "x1": x[:, 0], "x2": x[:, 1], "x3": pa.array(np.round(3 * x[:, 2]).astype(np.int64)),
        "g": pa.array(np.array(["a", "b"])[rng.integers(0, 2, rows)]),
    })


@cache
def _forest() -> IsolationForestFitted:
    model = fit(IsolationForest(n_trees=20, max_samples=64, contamination=0.05, seed=2),
                split(outliers_table(seed=12), 3))
    assert isinstance(model, IsolationForestFitted)
    return model


def _cases() -> None:
    case("isolation_forest", {"n_trees": 25, "max_samples": 64, "seed": 1}, outliers_table,
         id="auto", rtol=1e-12, atol=1e-12)
    case("isolation_forest", {"n_trees": 15, "max_samples": 0.5, "max_features": 0.7,
                              "contamination": 0.05, "seed": 5, "features": ["x1", "x3"]},
         outliers_table, id="contamination-fraction", rtol=1e-12, atol=1e-12)
    case("isolation_forest", {"n_trees": 10, "max_samples": 1.0, "contamination": 0.1},
         outliers_table, id="every-row", rtol=1e-12, atol=1e-12)
    case("score", {"model": "a"}, outliers_table, id="isolation-forest",
         prepare=lambda op: op.bind(Chain([_forest()]), _forest().features,
                                    {"name": "a", "version": 1}))


_cases()
