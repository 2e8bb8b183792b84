"""Benchmark sides for boosting against XGBoost (``pip install -e '.[bench]'``).

Both sides fit 100 rounds of depth-6 trees (learning rate 0.1, 255 bins, XGBoost's
``hist``) on the same Parquet files and print the accuracy on the same held-out rows
(the 10% ``validation_fraction: 0.1`` holds out by row hash):

* ``train_boosted_xgboost``: ``gradient_boosted_trees`` on the local engine against
  ``xgboost.XGBClassifier`` (every core, as the local engine);
* ``score_boosted_xgboost``: read, score with a 100-tree model of each (trained once,
  untimed, ``boosted_models``), write Parquet: sluice's ``score`` step against
  XGBoost's ``inplace_predict`` on each file's rows (every core);
* ``explain_boosted_xgboost``: the same with each row's per-feature contributions
  written too (``score``'s ``contributions: true``, exact TreeSHAP) against XGBoost's
  ``predict(..., pred_contribs=True)`` (its TreeSHAP), as a struct column each;
* ``train_boosted_colsample``: the same with half the features per tree
  (``tree_features: 0.5`` against ``colsample_bytree=0.5``);
* ``dask_train_boosted``: the same on the Dask engine against ``xgboost.dask``'s
  ``DaskXGBClassifier`` on Dask arrays of the same training rows persisted on the
  workers (sluice reads its Parquet in the fit's time; XGBoost's side gets its rows
  ready), each side in its own LocalCluster of one single-threaded worker per core.

The models differ in their details: XGBoost's leaf cap is a hessian sum
(``min_child_weight``, left at 1) where sluice counts rows (``min_samples_leaf: 20``),
and XGBoost sketches its bins per feature where sluice takes exact quantiles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.tree_cases import BOOSTED, SEED, _run_sluice, _split

XGB: dict[str, Any] = {"n_estimators": BOOSTED["n_trees"], "max_depth": BOOSTED["max_depth"],
                       "learning_rate": BOOSTED["learning_rate"], "max_bin": 255,
                       "tree_method": "hist", "random_state": SEED}


def train_boosted_xgboost_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_xgboost", "gradient_boosted_trees", BOOSTED)


def _fit_xgboost(data: Path, name: str, **extra: Any) -> None:
    """XGBoost's side of a local case: fit on every core, print the held-out accuracy."""
    import xgboost

    x, y, x_held, y_held = _split(data)
    model = xgboost.XGBClassifier(**XGB, **extra, n_jobs=os.cpu_count()).fit(x, y)
    print(f"  {name} xgboost: held-out accuracy {model.score(x_held, y_held):.4f}")


def train_boosted_xgboost_xgboost(data: Path, scratch: Path) -> None:
    _fit_xgboost(data, "train_boosted_xgboost")


def train_boosted_colsample_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_colsample", "gradient_boosted_trees",
                {**BOOSTED, "tree_features": 0.5})


def train_boosted_colsample_xgboost(data: Path, scratch: Path) -> None:
    _fit_xgboost(data, "train_boosted_colsample", colsample_bytree=0.5)


def dask_train_boosted_sluice_dask(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "dask_train_boosted", "gradient_boosted_trees", BOOSTED,
                engine="dask")


def dask_train_boosted_xgboost(data: Path, scratch: Path) -> None:
    """xgboost.dask on the training rows (sluice's hold-out mask), as Dask arrays of
    four chunks persisted on the workers before the fit."""
    import dask.array as da
    import numpy as np
    import xgboost.dask as dxgb

    from bench.dask_cases import _cluster

    x, y, x_held, y_held = _split(data)
    rows = -(-len(y) // 4)
    with _cluster() as client:
        dx = da.from_array(x, chunks=(rows, x.shape[1])).persist()
        dy = da.from_array(y, chunks=rows).persist()
        model = dxgb.DaskXGBClassifier(**XGB).fit(dx, dy)
        booster = model.get_booster()
    del client
    accuracy = float(np.mean((booster.inplace_predict(x_held) > 0.5) == y_held))
    print(f"  dask_train_boosted xgboost: held-out accuracy {accuracy:.4f}")


def boosted_models(data: Path, scratch: Path) -> None:
    """Both sides' 100-tree models on the same training rows, for the scoring case."""
    import xgboost

    _run_sluice(data, scratch, "score_boosted", "gradient_boosted_trees", BOOSTED)
    x, y, _, _ = _split(data)
    model = xgboost.XGBClassifier(**XGB, n_jobs=os.cpu_count()).fit(x, y)
    model.get_booster().save_model(str(scratch / "score_boosted.ubj"))


def score_boosted_xgboost_sluice_local(data: Path, scratch: Path,
                                       contributions: bool = False) -> None:
    import shutil

    from pipelines.runner import run

    out = scratch / "score_boosted_sluice"
    shutil.rmtree(out, ignore_errors=True)
    pipeline = scratch / "score_boosted.yaml"
    pipeline.write_text(f"""pipeline: score_boosted
steps:
  - op: read_parquet
    path: {data}
  - op: score
    model: fit
    contributions: {str(contributions).lower()}
  - op: write_parquet
    path: {out}
""")
    run(pipeline, models=str(scratch / "score_boosted_models"), runs_dir=str(scratch / "runs"))


def explain_boosted_xgboost_sluice_local(data: Path, scratch: Path) -> None:
    score_boosted_xgboost_sluice_local(data, scratch, contributions=True)


def explain_boosted_xgboost_xgboost(data: Path, scratch: Path) -> None:
    score_boosted_xgboost_xgboost(data, scratch, contributions=True)


def score_boosted_xgboost_xgboost(data: Path, scratch: Path,
                                  contributions: bool = False) -> None:
    """Per file: read, predict with the booster, add the two columns (and the
    contributions: a struct of a field per feature, and the bias), write."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(scratch / "score_boosted.ubj"))
    booster.set_param({"nthread": os.cpu_count()})
    out = scratch / "score_boosted_xgboost"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, fragment in enumerate(ds.dataset(data, format="parquet").get_fragments()):
        table = fragment.to_table()
        names = [c for c in table.column_names if c != "label"]
        x = np.column_stack([table.column(c).to_numpy() for c in names])
        p = booster.inplace_predict(x).astype(np.float64)
        table = table.append_column("prediction", pa.array((p > 0.5).astype(np.int64)))
        table = table.append_column("probability", pa.array(p))
        if contributions:
            phi = booster.predict(xgboost.DMatrix(x), pred_contribs=True).astype(np.float64)
            table = table.append_column("contributions", pa.StructArray.from_arrays(
                [pa.array(phi[:, j]) for j in range(len(names))], names=names))
            table = table.append_column("contribution_base", pa.array(phi[:, -1]))
        pq.write_table(table, out / f"part-{i:05d}.parquet")
