"""Benchmark sides for learning to rank against LightGBM (``pip install -e '.[bench]'``).

``train_boosted_lambdarank``: queries of 5 to 60 rows (ids unique over the files, a
query's rows one after another; a file may end inside one), 10 float features and a
relevance grade 0-4 of a nonlinear signal of them plus noise. Both sides fit 100 rounds
of depth-6 trees (at most 64 leaves; learning rate 0.1, 255 bins, at least 20 rows and
a hessian sum of 1e-3 a leaf, no L2) with LightGBM's lambdarank (truncation 30,
``lambdarank_norm``) and print NDCG@10 of the same held-out queries (10% of the queries,
by a hash of the query id, ``validation_fraction: 0.1``):
``read_parquet -> repartition by: [query] -> gradient_boosted_trees loss: lambdarank``
on the local engine against ``lightgbm.LGBMRanker(objective="lambdarank")`` on the
rows in memory (every core). sluice's time includes the repartition, which a query
split over files needs; LightGBM's the read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks
from bench.tree_cases import BOOSTED, HOLDOUT, SEED, _run_sluice

NUMBERS = 10
STREAM = 11
RANKING = {**BOOSTED, "loss": "lambdarank", "group": "query", "ndcg_at": 10}


def _block(seed: int, block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK): whole queries (the last one cut at the
    block's end), ids from the block's number, from the block's own seed."""
    coef = np.random.default_rng([seed, STREAM]).standard_normal(NUMBERS) / np.sqrt(NUMBERS)
    rng = np.random.default_rng([seed, STREAM, block])
    sizes = rng.integers(5, 61, BLOCK // 5 + 1)
    query = np.repeat(np.arange(len(sizes)), sizes)[:BLOCK] + block * (BLOCK + 1)
    x = rng.standard_normal((BLOCK, NUMBERS))
    signal = (x @ coef + np.sin(2 * x[:, 1]) + 0.5 * x[:, 2] * x[:, 3]
              + 0.5 * rng.standard_normal(BLOCK))
    grade = np.clip(np.floor(signal + 1.0), 0, 4).astype(np.int64)
    return pa.table({**{f"x{j}": pa.array(x[:, j]) for j in range(NUMBERS)},
                     "query": pa.array(query), "label": pa.array(grade)})


def rankings(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, lambda block: _block(SEED, block))


def train_boosted_lambdarank_sluice_local(data: Path, scratch: Path) -> None:
    _run_sluice(data, scratch, "train_boosted_lambdarank", "gradient_boosted_trees", RANKING,
                before=[{"op": "repartition", "by": "[query]"}])


def train_boosted_lambdarank_lightgbm(data: Path, scratch: Path) -> None:
    import lightgbm
    import pyarrow.parquet as pq

    from operators.models import ranking
    from operators.models.common import holdout_mask

    table = pq.read_table(data)
    held = holdout_mask(table, HOLDOUT, SEED, by="query")
    features = [f"x{j}" for j in range(NUMBERS)]
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    y = table.column("label").to_numpy()
    query = table.column("query").to_numpy()
    train = ~held  # a query's rows are consecutive: its group is their run
    groups = np.diff(np.flatnonzero(np.r_[True, query[train][1:] != query[train][:-1],
                                          True]))
    model = lightgbm.LGBMRanker(
        objective="lambdarank", n_estimators=BOOSTED["n_trees"],
        learning_rate=BOOSTED["learning_rate"], max_depth=BOOSTED["max_depth"],
        num_leaves=2 ** BOOSTED["max_depth"], min_child_samples=BOOSTED["min_samples_leaf"],
        min_child_weight=1e-3, reg_lambda=0.0, max_bin=255, verbose=-1,
        n_jobs=os.cpu_count())
    model.fit(x[train], y[train], group=groups)
    codes = np.unique(query[held], return_inverse=True)[1]
    total, count = ranking.ndcg_sums(model.predict(x[held]), y[held].astype(np.float64),
                                     codes, 10)
    print(f"  train_boosted_lambdarank lightgbm: held-out NDCG@10 {total / count:.4f} "
          f"({count} queries)")
