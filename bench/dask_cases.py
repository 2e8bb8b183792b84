"""Benchmark sides on Dask: sluice's Dask engine against what a Dask user writes by hand.

Every side starts its own LocalCluster (one single-threaded worker process per core on
127.0.0.1, as the engine does) and stops it, so both sides pay the same start-up.
The cases (in ``bench.cases.CASES``, which imports these sides for ``bench.worker``)
reuse that module's data and model set-up, imported when a side runs:

* ``dask_score_logistic``: read -> score (logistic) -> write, sluice on Dask against
  ``dd.read_parquet(...).map_partitions(numpy scoring).to_parquet(...)``, the floor on
  Dask;
* ``dask_train_logistic``: read + fit logistic regression, sluice on Dask (persisted
  input, one pass per Newton step) against ``dask_ml.linear_model.LogisticRegression``
  (L-BFGS with the same L2 penalty, C = 1 / (l2 * n), on persisted Dask arrays).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def _cluster() -> Iterator[Any]:
    """A LocalCluster shaped like the engine's, and a client that is the default."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        yield client


def dask_score_logistic_sluice_dask(data: Path, scratch: Path) -> None:
    from bench.cases import _score_logistic

    _score_logistic(data, scratch, "score_sluice_dask", engine="dask")


def dask_score_logistic_dask_numpy(data: Path, scratch: Path) -> None:
    """The floor on Dask: map_partitions with X @ w + b in NumPy, Parquet in and out."""
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    from bench.cases import fresh

    model = np.load(scratch / "bench_model.npz")
    coef = model["coef"].ravel()
    intercept = float(np.ravel(model["intercept"])[0])
    features = [f"x{i}" for i in range(len(coef))]
    out = fresh(scratch / "score_dask_numpy")

    def score(part: pd.DataFrame) -> pd.DataFrame:
        p = 1 / (1 + np.exp(-(part[features].to_numpy() @ coef + intercept)))
        return part.assign(prediction=(p > 0.5).astype(np.int64), probability=p)

    with _cluster():
        dd.read_parquet(data).map_partitions(score).to_parquet(out, write_index=False)


def dask_train_logistic_sluice_dask(data: Path, scratch: Path) -> None:
    from bench.cases import _fit_logistic

    _fit_logistic(data, scratch, "train_models_dask", engine="dask")


def dask_train_logistic_dask_ml(data: Path, scratch: Path) -> None:
    """dask-ml on the same files and objective (it also penalises the intercept, which
    l2 * n = 100 at a million rows barely moves)."""
    import dask.dataframe as dd
    from dask_ml.linear_model import LogisticRegression

    from bench.cases import L2

    with _cluster():
        # persisted first: the two projections below then share its partitions (read
        # apart, dask-expr may combine the files of one differently from the other's)
        frame = dd.read_parquet(data).persist()
        features = [c for c in frame.columns if c != "label"]
        x = frame[features].to_dask_array(lengths=True).persist()
        y = frame["label"].to_dask_array(lengths=True).persist()
        rows = int(x.shape[0])
        LogisticRegression(C=1 / (L2 * rows), solver="lbfgs", max_iter=100).fit(x, y)
