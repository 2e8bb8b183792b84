"""Benchmark sides for Gaussian mixtures: sluice against scikit-learn.

The k-means benchmark's rows (bench/kmeans_cases.py: 16 float features around 8
overlapping centres). Both sides fit k = 8 full-covariance components, 20 EM passes with
``tol`` 0 (neither stops early), and print the mean log-likelihood lower bound and the
passes:

* ``train_gaussian_mixture``: ``gaussian_mixture`` on the local engine (k-means|| start,
  each row to its nearest centre for the first M-step) against scikit-learn's
  ``GaussianMixture(init_params="k-means++", n_init=1)`` on the same files read into one
  array.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np

from bench.kmeans_cases import CLUSTERS, FEATURES, SEED

PASSES = 20


def train_gaussian_mixture_sluice_local(data: Path, scratch: Path) -> None:
    import warnings

    from operators.models.common import ConvergenceWarning
    from pipelines.runner import run

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # tol 0: all 20 passes
    models = scratch / "mixture_models"
    shutil.rmtree(models, ignore_errors=True)
    pipeline = scratch / "mixture.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: mixture
        steps:
          - op: read_parquet
            path: {data}
          - id: model
            op: gaussian_mixture
            k: {CLUSTERS}
            covariance: full
            max_iter: {PASSES}
            tol: 0
            seed: {SEED}
          - op: save_model
            name: mixture
        """))
    record = run(pipeline, models=str(models), runs_dir=str(scratch / "runs"))
    metrics = record["metrics"]["model"]
    print(f"  gaussian_mixture sluice: lower bound {metrics['lower_bound']:.6f}, "
          f"{metrics['iterations']} EM passes")


def train_gaussian_mixture_sklearn(data: Path, scratch: Path) -> None:
    import warnings

    import pyarrow.dataset as ds
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # tol 0: all 20 passes
    table = ds.dataset(data, format="parquet").to_table()
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(FEATURES)])
    model = GaussianMixture(CLUSTERS, covariance_type="full", max_iter=PASSES, tol=0.0,
                            init_params="k-means++", n_init=1, random_state=SEED).fit(X)
    print(f"  gaussian_mixture scikit-learn: lower bound {model.lower_bound_:.6f}, "
          f"{model.n_iter_} EM passes")
