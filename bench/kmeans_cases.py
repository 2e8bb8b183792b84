"""Benchmark sides for k-means: sluice against scikit-learn and dask-ml.

Rows of 16 float features around 8 centres (drawn once from the seed) with overlapping
clusters (unit noise, centres about 2 apart), so Lloyd does not settle in 20 passes and
both sides do the same number of them. Every side fits k = 8 with ``max_iter: 20`` and
``tol: 0`` (it stops early only when no row changes cluster) and prints its inertia
(the weighted sum of squared distances to the centres, scikit-learn's name) and its
iterations:

* ``train_kmeans``: ``kmeans`` on the local engine (k-means|| start: 2 sampling passes,
  then k-means++ over the candidates on the driver) against scikit-learn's
  ``KMeans(algorithm="lloyd", n_init=1, init="k-means++")`` on the same files read into
  one array (k-means++ is the start scikit-learn has nearest k-means||: the same
  weighted draw, over all the rows, one pass a centre);
* ``dask_train_kmeans``: ``kmeans`` on the Dask engine against
  ``dask_ml.cluster.KMeans(init="k-means||", init_max_iter=2, oversampling_factor=2)``
  on persisted Dask arrays, each on its own LocalCluster of 2 single-threaded workers.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks

FEATURES = 16
CLUSTERS = 8
ITERATIONS = 20
SEED = 0


def _block(block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    centres = np.random.default_rng([SEED, 1]).standard_normal((CLUSTERS, FEATURES)) * 0.5
    rng = np.random.default_rng([SEED, 2, block])
    x = centres[rng.integers(0, CLUSTERS, BLOCK)] + rng.standard_normal((BLOCK, FEATURES))
    return pa.table({f"x{j}": pa.array(x[:, j]) for j in range(FEATURES)})


def blobs(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def _fit_sluice(data: Path, scratch: Path, engine: str) -> None:
    from pipelines.runner import run

    name = "dask" if engine.endswith(".yaml") else engine
    models = scratch / f"kmeans_models_{name}"
    shutil.rmtree(models, ignore_errors=True)
    pipeline = scratch / f"kmeans_{name}.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: kmeans_{name}
        steps:
          - op: read_parquet
            path: {data}
          - id: model
            op: kmeans
            k: {CLUSTERS}
            max_iter: {ITERATIONS}
            tol: 0
            seed: {SEED}
          - op: save_model
            name: clusters
        """))
    record = run(pipeline, models=str(models), runs_dir=str(scratch / "runs"), engine=engine)
    metrics = record["metrics"]["model"]
    print(f"  kmeans sluice ({name}): inertia {metrics['inertia']:.6g}, "
          f"{metrics['iterations']} iterations, {metrics['init_passes']} start passes")


def train_kmeans_sluice_local(data: Path, scratch: Path) -> None:
    _fit_sluice(data, scratch, "local")


def train_kmeans_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.dataset as ds
    from sklearn.cluster import KMeans

    table = ds.dataset(data, format="parquet").to_table()
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(FEATURES)])
    model = KMeans(CLUSTERS, init="k-means++", n_init=1, algorithm="lloyd",
                   max_iter=ITERATIONS, tol=0.0, random_state=SEED).fit(X)
    print(f"  kmeans scikit-learn: inertia {model.inertia_:.6g}, {model.n_iter_} iterations")


@contextmanager
def _cluster() -> Iterator[Any]:
    """A LocalCluster of 2 single-threaded worker processes, a client that is the
    default (the sluice side's engine is given the same shape)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        yield client


def dask_train_kmeans_sluice_dask(data: Path, scratch: Path) -> None:
    profile = scratch / "dask-2-workers.yaml"
    profile.write_text("engine: dask\nworkers: 2\nthreads_per_worker: 1\n")
    _fit_sluice(data, scratch, str(profile))


def dask_train_kmeans_dask_ml(data: Path, scratch: Path) -> None:
    import dask.dataframe as dd
    from dask_ml.cluster import KMeans

    with _cluster():
        frame = dd.read_parquet(data).persist()
        X = frame.to_dask_array(lengths=True).persist()
        model = KMeans(n_clusters=CLUSTERS, init="k-means||", init_max_iter=2,
                       oversampling_factor=2, max_iter=ITERATIONS, tol=0.0,
                       random_state=SEED).fit(X)
        np.save(scratch / "dask_ml_centres.npy", model.cluster_centers_)
        print(f"  kmeans dask-ml: {model.n_iter_} iterations")


def check_dask_kmeans(data: Path, scratch: Path) -> None:
    """Both sides' inertia on the same rows, from their centres (dask-ml's own
    ``inertia_`` is not the sum over all the rows)."""
    import pyarrow.dataset as ds

    from pipelines.store import ModelStore

    table = ds.dataset(data, format="parquet").to_table()
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(FEATURES)])
    ours = ModelStore(str(scratch / "kmeans_models_dask")).load("clusters").chain.steps[-1]
    for name, centres in (("sluice", ours.centres),
                          ("dask-ml", np.load(scratch / "dask_ml_centres.npy"))):
        d2 = np.min(np.sum(X * X, axis=1)[:, None] - 2 * X @ centres.T
                    + np.sum(centres * centres, axis=1)[None, :], axis=1)
        print(f"  {name} inertia: {float(np.sum(np.maximum(d2, 0))):.6g}")
