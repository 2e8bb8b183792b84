"""Benchmark sides for boosting with categorical features against XGBoost's native
categories (``pip install -e '.[bench]'``).

``train_boosted_categories``: rows of 10 float features and three text columns (``city``
of 200 names, ``channel`` of 40, ``device`` of 12) whose categories move the label each
by an effect of their own, in no order a threshold on codes could follow. Both sides fit
100 rounds of depth-6 trees (learning rate 0.1, 255 bins) on the same Parquet files,
splitting the three columns by sets of categories: ``gradient_boosted_trees`` with
``categorical: [city, channel, device]`` on the local engine against
``xgboost.XGBClassifier(enable_categorical=True, max_cat_to_onehot=1)`` on pandas
category columns (partition-based splits, every core); each prints the accuracy on the
same held-out rows (the 10% ``validation_fraction: 0.1`` holds out by row hash).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.tree_cases import BOOSTED, HOLDOUT, SEED, _run_sluice
from bench.xgboost_cases import XGB

NUMBERS = 10
CATEGORIES = {"city": 200, "channel": 40, "device": 12}
BLOCK = 100_000


def _block(seed: int, block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK): each block from its own seed, so the
    same rows whatever the files."""
    effects = np.random.default_rng(seed + 1)
    coef = effects.standard_normal(NUMBERS) / np.sqrt(NUMBERS)
    per_category = {name: effects.standard_normal(k) for name, k in CATEGORIES.items()}
    rng = np.random.default_rng([seed, block])
    x = rng.standard_normal((BLOCK, NUMBERS))
    logit = x @ coef
    columns = {f"x{j}": pa.array(x[:, j]) for j in range(NUMBERS)}
    for name, k in CATEGORIES.items():
        # skewed frequencies, as real category columns are
        code = np.minimum(rng.zipf(1.3, BLOCK) - 1, k - 1)
        code = rng.permutation(k)[code]
        logit += per_category[name][code]
        columns[name] = pa.array(np.array([f"{name}-{i}" for i in range(k)])[code])
    columns["label"] = pa.array((rng.random(BLOCK) < 1 / (1 + np.exp(-logit))).astype(np.int64))
    return pa.table(columns)


def write_blocks(out: Path, rows: int, files: int, block: Callable[[int], pa.Table]) -> None:
    """``rows`` rows in ``files`` Parquet files, made ``BLOCK`` rows at a time by
    ``block(b)`` (rows [b * BLOCK, (b + 1) * BLOCK), from a seed of their own), so both
    sides of a case, and any number of files, read the same rows."""
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i in range(files):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        blocks = [block(b) for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1)]
        table = pa.concat_tables(blocks).slice(lo - (lo // BLOCK) * BLOCK, hi - lo)
        pq.write_table(table, out / f"part-{i:05d}.parquet", row_group_size=250_000)


def categories(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, lambda block: _block(SEED, block))


def train_boosted_categories_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_categories", "gradient_boosted_trees",
                {**BOOSTED, "categorical": f"[{', '.join(CATEGORIES)}]"})


def train_boosted_categories_xgboost(data: Path, scratch: Path) -> None:
    """XGBoost on pandas category columns (its categorical splits), the held-out rows
    sluice holds out."""
    import xgboost

    from operators.models.common import holdout_mask

    table = pq.read_table(data)
    held = holdout_mask(table, HOLDOUT, SEED)
    frame = table.drop_columns(["label"]).to_pandas()
    for name in CATEGORIES:
        frame[name] = frame[name].astype("category")
    y = table.column("label").to_numpy()
    model = xgboost.XGBClassifier(**XGB, enable_categorical=True, max_cat_to_onehot=1,
                                  n_jobs=os.cpu_count())
    model.fit(frame[~held], y[~held])
    accuracy = float((model.predict(frame[held]) == y[held]).mean())
    print(f"  train_boosted_categories xgboost: held-out accuracy {accuracy:.4f}")
