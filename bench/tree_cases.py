"""Benchmark sides for tree training: sluice (local engine) against scikit-learn.

Both sides train on the same Parquet files and report the accuracy on the same
held-out rows (the 10% that ``validation_fraction: 0.1`` holds out by row hash), so the
time is printed beside the quality it bought. scikit-learn uses every core.

    train_forest:  random_forest (50 trees, depth 10) vs RandomForestClassifier
    train_boosted: gradient_boosted_trees (100 trees, depth 6) vs
                   HistGradientBoostingClassifier (same depth, no leaf cap, no early stop)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOLDOUT = 0.1
SEED = 0
FOREST = {"n_trees": 50, "max_depth": 10}
BOOSTED = {"n_trees": 100, "max_depth": 6, "learning_rate": 0.1, "min_samples_leaf": 20}
# BOOSTED in scikit-learn's words, for its HistGradientBoosting classifier and regressor
HIST: dict[str, Any] = {
    "max_iter": BOOSTED["n_trees"], "max_depth": BOOSTED["max_depth"], "max_leaf_nodes": None,
    "learning_rate": BOOSTED["learning_rate"], "min_samples_leaf": BOOSTED["min_samples_leaf"],
    "early_stopping": False, "random_state": SEED}


def _run_sluice(data: Path, scratch: Path, name: str, op: str, params: dict[str, Any],
                engine: str = "local", before: Sequence[dict[str, Any]] = ()) -> None:
    """Read ``data``, run the steps ``before`` (each a step's settings), train ``op``
    with ``params`` holding out ``HOLDOUT`` of the rows, save it; print its held-out
    quality, passes and nodes."""
    from pipelines.runner import run

    shutil.rmtree(scratch / f"{name}_models", ignore_errors=True)
    steps = [{"op": "read_parquet", "path": data}, *before,
             {"id": "model", "op": op, "label": "label", "validation_fraction": HOLDOUT,
              "seed": SEED, **params},
             {"op": "save_model", "name": "fit"}]
    pipeline = scratch / f"{name}.yaml"
    pipeline.write_text(f"pipeline: {name}\nsteps:\n" + "".join(
        "  - " + "\n    ".join(f"{k}: {v}" for k, v in step.items()) + "\n"
        for step in steps))
    record = run(pipeline, models=str(scratch / f"{name}_models"), runs_dir=str(scratch / "runs"),
                 engine=engine)
    metrics = record["metrics"]["model"]
    selection = (f" ({metrics['selection_passes']} for the leaves' quantiles)"
                 if "selection_passes" in metrics else "")
    print(f"  {name} sluice: {held_out(metrics['validation'])}, "
          f"{metrics['passes']} passes{selection}, {metrics['nodes']} nodes")


def held_out(validation: dict[str, Any]) -> str:
    """A side's held-out quality as printed: a ranking's NDCG, a quantile model's
    pinball loss and coverage (the share of labels at or below their prediction), a
    classifier's accuracy (and log-loss, where there is one), another regression's rmse."""
    if "ndcg" in validation:
        return (f"held-out NDCG@{validation['ndcg_at']} {validation['ndcg']:.4f} "
                f"({validation['queries']} queries)")
    if "pinball_loss" in validation:
        return (f"held-out pinball loss {validation['pinball_loss']:.4f}, "
                f"coverage {validation['coverage']:.4f}")
    if "accuracy" in validation:
        loss = (f", log-loss {validation['log_loss']:.4f}" if "log_loss" in validation
                else "")
        return f"held-out accuracy {validation['accuracy']:.4f}{loss}"
    return f"held-out rmse {validation['rmse']:.4f}"


def _split(data: Path) -> tuple[Any, Any, Any, Any]:
    """The training and held-out rows sluice uses (the same hash of the same columns)."""
    import numpy as np
    import pyarrow.parquet as pq

    from operators.models.common import holdout_mask

    table = pq.read_table(data)
    held = holdout_mask(table, HOLDOUT, SEED)
    features = [c for c in table.column_names if c != "label"]
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    y = table.column("label").to_numpy()
    return x[~held], y[~held], x[held], y[held]


def train_forest_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_forest", "random_forest", FOREST)


def train_forest_sklearn(data: Path, scratch: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y, x_held, y_held = _split(data)
    model = RandomForestClassifier(n_estimators=FOREST["n_trees"], max_depth=FOREST["max_depth"],
                                   n_jobs=os.cpu_count(), random_state=SEED).fit(x, y)
    print(f"  train_forest sklearn: held-out accuracy {model.score(x_held, y_held):.4f}")


def train_boosted_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted", "gradient_boosted_trees", BOOSTED)


def train_boosted_sklearn_hist(data: Path, scratch: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y, x_held, y_held = _split(data)
    model = HistGradientBoostingClassifier(**HIST).fit(x, y)
    print(f"  train_boosted sklearn: held-out accuracy {model.score(x_held, y_held):.4f}")
