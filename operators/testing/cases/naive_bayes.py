"""Cases for naive_bayes (each model type), and score with a bound naive Bayes model."""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa

from operators.chain import Chain
from operators.models.naive_bayes import NaiveBayes, NaiveBayesFitted
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
    case("score", {"model": "nb"}, count_features_table, id="naive-bayes",
         prepare=lambda op: op.bind(Chain([_model()]), _model().features,
                                    {"name": "nb", "version": 1}))
    case("score", {"model": "nb", "contributions": True}, count_features_table,
         id="naive-bayes-contributions",
         prepare=lambda op: op.bind(Chain([_model()]), _model().features,
                                    {"name": "nb", "version": 1}))


_cases()
