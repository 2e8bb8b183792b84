"""Benchmark sides for ``pca``: sluice against scikit-learn and dask-ml.

Rows of 20 float columns made from 8 latent factors of decaying spread mixed at random,
plus independent noise, each column with its own scale and mean: a spectrum of distinct
variances, so the top 5 components are well defined and both sides must find the same
ones. Every side reads the same Parquet files, fits a PCA of 5 components and writes
them out (sluice: its model store; the references: a ``.npy``); the check, after the
runs, prints the largest gap between the components (and how many are signed the other
way: none against scikit-learn, whose sign rule sluice follows) and between the
explained variance ratios:

* ``train_pca``: ``pca`` (k 5) on the local engine against scikit-learn's ``PCA(5)`` on
  the files read with pyarrow (its default solver: ``covariance_eigh`` for so many more
  rows than columns, the same one-pass covariance; ``full``, an SVD of the rows, is
  several times slower);
* ``dask_pca``: ``pca`` on the Dask engine against ``dask_ml.decomposition.PCA(5)`` on
  the files read with ``dd.read_parquet`` (a tall-and-skinny QR of the rows), each on a
  LocalCluster of one single-threaded worker per core.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks

COLUMNS = 20
FACTORS = 8
K = 5
SEED = 21
NAMES = [f"x{j}" for j in range(COLUMNS)]


def _block(block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    shape = np.random.default_rng(SEED)
    mixing = shape.standard_normal((FACTORS, COLUMNS)) * (3.0 / (1 + np.arange(FACTORS)))[:, None]
    scale, mean = np.exp(shape.standard_normal(COLUMNS)), shape.standard_normal(COLUMNS) * 10
    rng = np.random.default_rng([SEED, block])
    x = rng.standard_normal((BLOCK, FACTORS)) @ mixing + rng.standard_normal((BLOCK, COLUMNS))
    x = x * scale + mean
    return pa.table({name: pa.array(x[:, j]) for j, name in enumerate(NAMES)})


def components(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def _run_sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    from pipelines.runner import run

    path = scratch / f"{case}.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: {case}
        steps:
          - op: read_parquet
            path: {data}
          - op: pca
            columns: [{", ".join(NAMES)}]
            k: {K}
          - op: save_model
            name: {case}
        """))
    run(path, models=str(scratch / f"{case}_models"), runs_dir=str(scratch / "runs"),
        engine=engine)


def _save(scratch: Path, case: str, components: np.ndarray, ratio: np.ndarray) -> None:
    np.save(scratch / f"{case}_components.npy", components)
    np.save(scratch / f"{case}_ratio.npy", ratio)


def train_pca_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_pca", "local")


def train_pca_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.parquet as pq
    from sklearn.decomposition import PCA

    table = pq.read_table(data, columns=NAMES)
    x = np.column_stack([table.column(name).to_numpy() for name in NAMES])
    del table
    model = PCA(K).fit(x)
    _save(scratch, "train_pca", model.components_, model.explained_variance_ratio_)


def dask_pca_sluice_dask(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "dask_pca", "dask")


def dask_pca_dask_ml(data: Path, scratch: Path) -> None:
    import dask.dataframe as dd
    from dask_ml.decomposition import PCA

    from bench.dask_cases import _cluster

    with _cluster():
        x = dd.read_parquet(data, columns=NAMES).to_dask_array(lengths=True)
        model = PCA(K).fit(x)
    _save(scratch, "dask_pca", model.components_, model.explained_variance_ratio_)


def _check(scratch: Path, case: str, signs: bool) -> None:
    """The two sides' components and ratios agree: the largest gaps, each component's
    sign set aside (dask-ml signs them by another rule), and how many signs differ
    (none may against scikit-learn when ``signs``)."""
    from pipelines.store import ModelStore

    fitted = ModelStore(str(scratch / f"{case}_models")).load(case).chain.steps[-1]
    _, arrays = fitted.state()
    ours = arrays["components"]
    reference = np.load(scratch / f"{case}_components.npy")
    ratio = np.load(scratch / f"{case}_ratio.npy")
    flipped = np.sign(np.sum(ours * reference, axis=1))
    gap = float(np.abs(ours - flipped[:, None] * reference).max())
    ratio_gap = float(np.abs(arrays["explained_variance_ratio"] - ratio).max())
    differ = int((flipped < 0).sum())
    print(f"  components max |gap| {gap:.2e} ({differ} of {len(ours)} signed the other "
          f"way), explained variance ratio max |gap| {ratio_gap:.2e} (total {ratio.sum():.4f})")
    if gap > 1e-6 or (signs and differ):
        raise SystemExit(f"bench: {case}: the components differ by {gap:.2e}, "
                         f"{differ} in sign")


def check_train_pca(data: Path, scratch: Path) -> None:
    _check(scratch, "train_pca", signs=True)


def check_dask_pca(data: Path, scratch: Path) -> None:
    _check(scratch, "dask_pca", signs=False)
