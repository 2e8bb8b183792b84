"""Benchmark sides for quantile boosting: sluice against scikit-learn and XGBoost
(``pip install -e '.[bench]'``).

Rows of 10 float features and a float label with heavy-tailed noise whose spread grows
with one feature (``x @ coef + 3 sin(x1)`` plus Student's t with 3 degrees of freedom
times ``1 + |x2|``), so the label's 0.9 quantile is not its mean moved up by a constant.
Every side fits 100 rounds of depth-6 trees (learning rate 0.1, 255 bins) predicting
that 0.9 quantile on the same Parquet files and prints, on the same held-out rows (the
10% ``validation_fraction: 0.1`` holds out by row hash), the mean pinball loss at 0.9
(scikit-learn's ``mean_pinball_loss``) and the coverage (the share of labels at or below
their prediction; near 0.9 for a good model):

* ``train_boosted_quantile``: ``gradient_boosted_trees`` with ``loss: quantile,
  quantile: 0.9`` on the local engine against scikit-learn's
  ``HistGradientBoostingRegressor(loss="quantile", quantile=0.9)`` (no leaf cap, no
  early stop, ``min_samples_leaf`` 20 on both, every core);
* ``train_boosted_quantile_xgboost``: the same sluice side against XGBoost's ``hist``
  with ``objective="reg:quantileerror", quantile_alpha=0.9`` (every core), whose leaf
  cap is a hessian sum: ``min_child_weight`` 20, twenty rows (the pinball loss's
  hessians are 1), as sluice's ``min_samples_leaf: 20``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks
from bench.tree_cases import BOOSTED, HIST, SEED, _run_sluice, _split, held_out
from bench.xgboost_cases import XGB

NUMBERS = 10
LEVEL = 0.9
STREAM = 9  # the rows' own seeds, apart from those of the categories' features
QUANTILE = {**BOOSTED, "loss": "quantile", "quantile": LEVEL}


def _block(seed: int, block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    coef = np.random.default_rng([seed, STREAM]).standard_normal(NUMBERS) / np.sqrt(NUMBERS)
    rng = np.random.default_rng([seed, STREAM, block])
    x = rng.standard_normal((BLOCK, NUMBERS))
    noise = rng.standard_t(3, BLOCK) * (1 + np.abs(x[:, 2]))
    label = x @ coef + 3 * np.sin(x[:, 1]) + noise
    return pa.table({**{f"x{j}": pa.array(x[:, j]) for j in range(NUMBERS)},
                     "label": pa.array(label)})


def quantiles(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, lambda block: _block(SEED, block))


def train_boosted_quantile_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_quantile", "gradient_boosted_trees", QUANTILE)


def train_boosted_quantile_xgboost_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_quantile_xgboost", "gradient_boosted_trees",
                QUANTILE)


def _fit_reference(data: Path, name: str, model: Any) -> None:
    """A reference side: ``model`` fitted on sluice's training rows, its pinball loss and
    coverage on sluice's held-out rows printed."""
    from sklearn.metrics import mean_pinball_loss

    x, y, x_held, y_held = _split(data)
    predicted = model.fit(x, y).predict(x_held)
    quality = {"pinball_loss": mean_pinball_loss(y_held, predicted, alpha=LEVEL),
               "coverage": float(np.mean(y_held <= predicted))}
    print(f"  {name}: {held_out(quality)}")


def train_boosted_quantile_sklearn_hist(data: Path, scratch: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    _fit_reference(data, "train_boosted_quantile sklearn",
                   HistGradientBoostingRegressor(**HIST, loss="quantile", quantile=LEVEL))


def train_boosted_quantile_xgboost_xgboost(data: Path, scratch: Path) -> None:
    import xgboost

    _fit_reference(data, "train_boosted_quantile_xgboost xgboost",
                   xgboost.XGBRegressor(**XGB, objective="reg:quantileerror",
                                        quantile_alpha=LEVEL, n_jobs=os.cpu_count(),
                                        min_child_weight=BOOSTED["min_samples_leaf"]))
