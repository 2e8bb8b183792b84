"""Benchmark sides for naive Bayes and select_features: sluice against scikit-learn.

The logistic benchmark's rows (``numeric``: 20 float features and a binary label). Both
sides fit a Gaussian naive Bayes model on every row and print the first class's mean of
the first feature and the variance of the last (equal to 1e-12 when the sides agree):

* ``train_naive_bayes``: read + ``naive_bayes`` + ``save_model`` on the local engine
  against scikit-learn's ``GaussianNB().fit`` on the same files read with pyarrow.
* ``select_features``: read + ``select_features`` (ANOVA F, the best 10) + write against
  ``SelectKBest(f_classif, k=10)`` on the files read with pyarrow, the kept columns
  written with pyarrow; both print the features kept.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path


def train_naive_bayes_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run
    from pipelines.store import ModelStore

    models = scratch / "naive_bayes_models"
    shutil.rmtree(models, ignore_errors=True)
    pipeline = scratch / "naive_bayes.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: naive_bayes
        steps:
          - op: read_parquet
            path: {data}
          - op: naive_bayes
            label: label
          - op: save_model
            name: nb
            profile: false
        """))
    run(pipeline, models=str(models), runs_dir=str(scratch / "runs"))
    model = ModelStore(str(models)).load("nb").chain.steps[-1]
    print(f"  naive_bayes sluice: theta[0, 0] {model.theta[0, 0]:.15g}, "
          f"var[0, -1] {model.var[0, -1]:.15g}")


def train_naive_bayes_sklearn(data: Path, scratch: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.naive_bayes import GaussianNB

    table = pq.read_table(data)
    features = [c for c in table.column_names if c != "label"]
    X = np.column_stack([table.column(f).to_numpy() for f in features])
    model = GaussianNB().fit(X, table.column("label").to_numpy())
    print(f"  naive_bayes scikit-learn: theta[0, 0] {model.theta_[0, 0]:.15g}, "
          f"var[0, -1] {model.var_[0, -1]:.15g}")


def select_features_sluice_local(data: Path, scratch: Path) -> None:
    """read + select_features (anova, the best 10 of 20) + write."""
    from pipelines.runner import run

    out = scratch / "selected"
    pipeline = scratch / "select_features.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: select_features
        steps:
          - op: read_parquet
            path: {data}
          - id: pick
            op: select_features
            label: label
            k: 10
          - op: write_parquet
            path: {out}
            mode: overwrite
        """))
    record = run(pipeline, runs_dir=str(scratch / "runs"))
    print(f"  select_features sluice: kept {sorted(record['metrics']['pick']['kept'])}")


def select_features_sklearn(data: Path, scratch: Path) -> None:
    """scikit-learn's SelectKBest(f_classif, k=10) on the files read with pyarrow, the
    kept columns and the label written with pyarrow."""
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.feature_selection import SelectKBest, f_classif

    table = pq.read_table(data)
    features = [c for c in table.column_names if c != "label"]
    X = np.column_stack([table.column(f).to_numpy() for f in features])
    selector = SelectKBest(f_classif, k=10).fit(X, table.column("label").to_numpy())
    kept = [f for f, on in zip(features, selector.get_support()) if on]
    out = scratch / "selected_sklearn"
    out.mkdir(exist_ok=True)
    pq.write_table(table.select([*kept, "label"]), out / "part-0.parquet")
    print(f"  select_features scikit-learn: kept {sorted(kept)}")
