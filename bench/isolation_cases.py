"""Benchmark sides for the isolation forest: sluice against scikit-learn.

Rows of 10 correlated float features with 1% of them planted off the cloud (a label
``anomaly`` says which, never a feature). Both sides grow 100 trees on 256 rows each
and score every row, then print the ROC AUC of their scores against the label:

* ``train_isolation_forest``: read -> ``isolation_forest`` (``contamination: 0.01``: the
  exact quantile of the training rows' scores, a few scoring passes) -> ``evaluate``
  (``probability: anomaly_score``: every row scored) on the local engine, against
  scikit-learn's ``IsolationForest(n_estimators=100, max_samples=256,
  contamination=0.01)`` ``.fit`` + ``score_samples`` on the same files read with pyarrow
  into one array (one job: scikit-learn's default ``n_jobs``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks

FEATURES = 10
SHARE = 0.01
SEED = 0


def _block(block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    mixing = np.random.default_rng([SEED, 1]).standard_normal((FEATURES, FEATURES))
    rng = np.random.default_rng([SEED, 2, block])
    x = rng.standard_normal((BLOCK, FEATURES)) @ mixing
    planted = rng.random(BLOCK) < SHARE
    x[planted] += rng.choice([-4.0, 4.0], (int(planted.sum()), FEATURES))
    columns = {f"x{j}": pa.array(x[:, j]) for j in range(FEATURES)}
    return pa.table({**columns, "anomaly": pa.array(planted.astype(np.int8))})


def planted_rows(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def train_isolation_forest_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run

    features = ", ".join(f"x{j}" for j in range(FEATURES))
    pipeline = scratch / "isolation_forest.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: isolation_forest
        steps:
          - op: read_parquet
            path: {data}
          - id: model
            op: isolation_forest
            features: [{features}]
            n_trees: 100
            max_samples: 256
            contamination: {SHARE}
            seed: {SEED}
          - id: evaluate
            op: evaluate
            label: anomaly
            probability: anomaly_score
            metrics: [roc_auc]
        """))
    record = run(pipeline, runs_dir=str(scratch / "runs"), engine="local")
    metrics = record["metrics"]
    print(f"  isolation_forest sluice: roc_auc {metrics['evaluate']['roc_auc']:.6f}, "
          f"flagged {metrics['model']['flagged_share']:.4%}, "
          f"threshold passes {metrics['model']['threshold_passes']}")


def train_isolation_forest_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.dataset as ds
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    table = ds.dataset(data, format="parquet").to_table()
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(FEATURES)])
    model = IsolationForest(n_estimators=100, max_samples=256, contamination=SHARE,
                            random_state=SEED).fit(X)
    scores = model.score_samples(X)
    auc = roc_auc_score(table.column("anomaly").to_numpy(), -scores)
    print(f"  isolation_forest scikit-learn: roc_auc {auc:.6f}, "
          f"flagged {np.mean(scores < model.offset_):.4%}")
