"""select_features in a pipeline: the model after it trains on the kept features only,
the run record ranks them as scikit-learn's f_classif does, and the saved model scores
rows that have only those."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from conftest import sluice_in_process, write_pipeline
from sklearn.feature_selection import f_classif

from pipelines.runner import run
from pipelines.store import ModelStore

CANDIDATES = ["tenure", "monthly_charges", "total_charges"]


def test_the_model_trains_and_scores_on_the_kept_features(workdir: Path, churn: Path) -> None:
    record = run(write_pipeline(workdir, f"""
        pipeline: selected
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, total_charges, churned]
            filter: "total_charges is not null"
          - id: pick
            op: select_features
            label: churned
            k: 2
          - op: logistic_regression
            label: churned
          - op: save_model
            name: selected
        """))
    metrics = record["metrics"]["pick"]
    rows = pq.read_table(churn).filter(pq.read_table(churn).column("total_charges").is_valid())
    X = np.column_stack([rows.column(c).to_numpy().astype(float) for c in CANDIDATES])
    statistic, _ = f_classif(X, rows.column("churned").to_numpy())
    ranked = [CANDIDATES[i] for i in np.argsort(-statistic)]
    assert list(metrics["statistic"]) == ranked
    np.testing.assert_allclose(list(metrics["statistic"].values()), np.sort(statistic)[::-1],
                               rtol=1e-9)
    assert metrics["kept"] == ranked[:2] and metrics["dropped"] == 1
    model = ModelStore().load("selected")
    assert sorted(model.chain.steps[-1].features) == sorted(ranked[:2])
    # rows with the kept features and an id only: the dropped one is not asked for
    pq.write_table(rows.select(["customer_id", *ranked[:2]]), workdir / "new.parquet")
    done = sluice_in_process("score", "selected", str(workdir / "new.parquet"), "out", "--keep",
                             "customer_id", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(workdir / "out").num_rows == rows.num_rows


def test_the_summary_shows_the_best_twenty_of_a_wide_ranking(workdir: Path) -> None:
    """60 candidates: the summary line has the 20 best and how many more the record
    keeps (it listed every one on one line); the record ranks all 60."""
    import json

    import pyarrow as pa

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    X = rng.standard_normal((2000, 60)) + np.outer(y, np.linspace(0, 1, 60))
    (workdir / "wide").mkdir()
    pq.write_table(pa.table({**{f"f{j:02d}": X[:, j] for j in range(60)}, "y": y}),
                   workdir / "wide" / "part-0.parquet")
    path = write_pipeline(workdir, f"""
        pipeline: wide
        steps:
          - op: read_parquet
            path: {workdir / "wide"}
          - id: pick
            op: select_features
            label: y
            k: 5
        """, "wide.yaml")
    done = sluice_in_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "metrics pick.statistic:" in x)
    assert line.count("=") == 20 and line.endswith("40 more in the run record")
    record = json.loads(Path(next(x.split("record: ", 1)[1] for x in done.stdout.splitlines()
                                  if "record: " in x)).read_text())
    assert len(record["metrics"]["pick"]["statistic"]) == 60
    assert line.split(": ", 1)[1].split("=")[0] == next(iter(record["metrics"]["pick"][
        "statistic"]))
