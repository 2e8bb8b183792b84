"""Benchmark sides for leaf-wise boosting against LightGBM (``pip install -e '.[bench]'``).

``train_boosted_lightgbm``: both sides fit 100 rounds of trees of at most 31 leaves and
10 levels, grown leaf-wise (learning rate 0.1, 255 bins, at least 20 rows and a hessian
sum of 1e-3 a leaf, no L2, every row and feature) on the same Parquet files of the
``numeric`` data set and print the accuracy and log-loss on the same held-out rows (the
10% ``validation_fraction: 0.1`` holds out by row hash): ``gradient_boosted_trees``
with ``grow_policy: lossguide, max_leaves: 31`` on the local engine against
``lightgbm.LGBMClassifier(num_leaves=31)`` (every core, as the local engine).

The models differ in their details: LightGBM bins its own way (zero in a bin of its
own) where sluice takes quantiles, both of a 200,000-row sample; it keeps gradients and
hessians in float32; its ``min_child_samples`` counts a side's rows from its hessian sum
(a bin's hessians times the node's rows per unit of hessian, rounded), which for the
log-loss is not the row count sluice's ``min_samples_leaf`` takes; a feature with no
split at a node is never tried below it; and a threshold in a gap of a node's values
goes to the gap's right end (sluice: its left end). Where the bins coincide and the
hessians are 1 (squared error), the two grow the same trees, to float32 and ties.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.tree_cases import BOOSTED, _run_sluice, _split, held_out

LEAF_WISE = {**BOOSTED, "grow_policy": "lossguide", "max_leaves": 31, "max_depth": 10}
# LEAF_WISE in LightGBM's words
LGBM: dict[str, Any] = {
    "n_estimators": LEAF_WISE["n_trees"], "learning_rate": LEAF_WISE["learning_rate"],
    "num_leaves": LEAF_WISE["max_leaves"], "max_depth": LEAF_WISE["max_depth"],
    "min_child_samples": LEAF_WISE["min_samples_leaf"], "min_child_weight": 1e-3,
    "reg_lambda": 0, "max_bin": 255, "subsample": 1, "colsample_bytree": 1, "verbose": -1}


def train_boosted_lightgbm_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_lightgbm", "gradient_boosted_trees", LEAF_WISE)


def train_boosted_lightgbm_lightgbm(data: Path, scratch: Path) -> None:
    import lightgbm
    from sklearn.metrics import log_loss

    x, y, x_held, y_held = _split(data)
    model = lightgbm.LGBMClassifier(**LGBM, n_jobs=os.cpu_count()).fit(x, y)
    quality = {"accuracy": model.score(x_held, y_held),
               "log_loss": log_loss(y_held, model.predict_proba(x_held))}
    print(f"  train_boosted_lightgbm lightgbm: {held_out(quality)}")
