"""Benchmark sides for Poisson regression: sluice's ``linear_regression`` with ``loss:
poisson`` against scikit-learn's ``PoissonRegressor``.

Rows of 20 float features (standard normal, five of them on wider scales) and a Poisson
count label with mean ``exp(x @ coef - 0.5)``. Both sides minimise the same objective
(the weighted mean half Poisson deviance + ``l2/2 |w|^2``: ``alpha = l2``) by L-BFGS with
``tol`` 1e-6 and at most 100 iterations (sluice's ``tol`` is relative to the starting
gradient's norm, scikit-learn's bounds the largest gradient entry: both near 1e-6 at
this data's scale), on the same Parquet files, the same training rows and the same 10%
held out by row hash, and print the held-out mean Poisson deviance
(scikit-learn's ``mean_poisson_deviance``).

    train_poisson: read + linear_regression (loss: poisson) vs PoissonRegressor(lbfgs)
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks
from bench.tree_cases import HOLDOUT, SEED, _split

FEATURES = 20
STREAM = 11  # the rows' own seeds, apart from the other generated datasets'
L2 = 1e-4
TOL = 1e-6
MAX_ITER = 100


def _block(seed: int, block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    coef = np.random.default_rng([seed, STREAM]).standard_normal(FEATURES) * 0.3 / np.sqrt(
        FEATURES)
    rng = np.random.default_rng([seed, STREAM, block])
    x = rng.standard_normal((BLOCK, FEATURES))
    label = rng.poisson(np.exp(x @ coef - 0.5))
    scale = np.where(np.arange(FEATURES) % 4 == 0, 10.0, 1.0)  # wider features
    return pa.table({**{f"x{j}": pa.array(x[:, j] * scale[j]) for j in range(FEATURES)},
                     "label": pa.array(label.astype(np.int64))})


def counts(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, lambda block: _block(SEED, block))


def train_poisson_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run

    shutil.rmtree(scratch / "train_poisson_models", ignore_errors=True)
    pipeline = scratch / "train_poisson.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: train_poisson
        steps:
          - op: read_parquet
            path: {data}
          - id: model
            op: linear_regression
            label: label
            loss: poisson
            l2: {L2}
            solver: lbfgs
            tol: {TOL}
            max_iter: {MAX_ITER}
            validation_fraction: {HOLDOUT}
            seed: {SEED}
          - op: save_model
            name: fit
        """))
    record = run(pipeline, models=str(scratch / "train_poisson_models"),
                 runs_dir=str(scratch / "runs"))
    metrics = record["metrics"]["model"]
    print(f"  train_poisson sluice: held-out Poisson deviance "
          f"{metrics['validation']['poisson_deviance']:.6f}, {metrics['iterations']} "
          f"iterations, converged {metrics['converged']}, objective {metrics['loss']:.9f}")


def train_poisson_sklearn_lbfgs(data: Path, scratch: Path) -> None:
    """scikit-learn on the rows sluice trains on (the files read with pyarrow)."""
    from sklearn.linear_model import PoissonRegressor
    from sklearn.metrics import mean_poisson_deviance

    x, y, x_held, y_held = _split(data)
    model = PoissonRegressor(alpha=L2, solver="lbfgs", tol=TOL, max_iter=MAX_ITER).fit(x, y)
    raw = x @ model.coef_ + model.intercept_
    # its objective without the label's own terms, as sluice's run record gives it
    objective = np.mean(np.exp(raw) - y * raw) + 0.5 * L2 * model.coef_ @ model.coef_
    print(f"  train_poisson sklearn: held-out Poisson deviance "
          f"{mean_poisson_deviance(y_held, model.predict(x_held)):.6f}, {model.n_iter_} "
          f"iterations, objective {objective:.9f}")
