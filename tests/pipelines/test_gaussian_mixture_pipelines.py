"""gaussian_mixture as a pipeline step: fitted with its run record, saved, scored by
`score` and `sluice score`, served; errors that name the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.arrays import get_namespace
from operators.base import SluiceError
from pipelines.runner import run
from pipelines.serving import load_model
from pipelines.store import ModelStore

TRAIN = """
    pipeline: segments
    steps:
      - op: read_parquet
        path: {data}
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - id: mixture
        op: gaussian_mixture
        features: [tenure, monthly_charges, total_charges]
        k: {k}
        covariance: {covariance}
        seed: 3
        validation_fraction: 0.2
      - op: save_model
        name: segments
"""


@pytest.fixture
def trained(workdir: Path, churn: Path) -> dict:
    return run(write_pipeline(workdir, TRAIN.format(data=churn, k=3, covariance="full")))


def test_fit_record_and_score_pipeline(workdir: Path, churn: Path, trained: dict) -> None:
    metrics = trained["metrics"]["mixture"]
    assert metrics["converged"] and 1 < metrics["iterations"] <= 100
    assert sum(metrics["weights"]) == pytest.approx(1.0) and len(metrics["weights"]) == 3
    assert metrics["training_rows"] + metrics["validation_rows"] == 5000
    assert metrics["validation"]["count"] == metrics["validation_rows"]
    # the held-out rows are about as likely under the mixture as the training rows
    assert abs(metrics["validation"]["log_likelihood"] - metrics["log_likelihood"]) < 0.5
    assert metrics["lower_bound"] <= metrics["log_likelihood"] + 1e-9  # EM never loses
    run(write_pipeline(workdir, f"""
        pipeline: score_segments
        steps:
          - op: read_parquet
            path: {churn}
          - op: impute
            columns: [total_charges]
            strategy: median
          - op: score
            model: segments
          - op: write_parquet
            path: {workdir / "scores"}
        """, "score.yaml"))
    scores = pq.read_table(workdir / "scores")
    rows = pq.read_table(churn)
    assert scores.column_names == [*rows.column_names, "prediction", "probability",
                                   "log_likelihood"]
    assert scores.schema.field("prediction").type == pa.int64()
    assert scores.schema.field("probability").type == pa.list_(pa.float64())
    model = ModelStore().load("segments")
    assert [s.name for s in model.chain.steps] == ["impute.fitted", "standard_scale.fitted",
                                                   "gaussian_mixture.fitted"]
    expected = model.chain.transform(rows, get_namespace("numpy"))
    np.testing.assert_array_equal(scores.column("log_likelihood").to_numpy(),
                                  expected.column("log_likelihood").to_numpy())
    proba = np.array(scores.column("probability").to_pylist())
    np.testing.assert_array_equal(np.argmax(proba, axis=1), scores.column("prediction"))


def test_the_score_command_and_serving(workdir: Path, churn: Path, trained: dict) -> None:
    done = sluice_in_process("score", "segments", str(churn), "out", "--keep", "customer_id",
                             cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["customer_id", "prediction", "probability", "log_likelihood"]
    served = load_model("segments")
    assert [o["name"] for o in served.describe()["outputs"]] == [
        "prediction", "probability", "log_likelihood"]
    rows = pq.read_table(churn).slice(0, 5).to_pylist()
    answered = served.score(rows)
    by_id = dict(zip(out.column("customer_id").to_pylist(),
                     out.column("log_likelihood").to_pylist(), strict=True))
    assert [r["log_likelihood"] for r in answered] == [by_id[r["customer_id"]] for r in rows]
    with pytest.raises(SluiceError, match="no per-feature contributions"):
        served.score(rows, contributions=True)


def test_a_singular_covariance_names_the_step(workdir: Path, churn: Path) -> None:
    table = pq.read_table(churn).select(["tenure", "monthly_charges"])
    table = table.append_column("again", table.column("tenure").cast(pa.float64()))
    pq.write_table(table, workdir / "twice.parquet")
    pipeline = TRAIN.format(data=workdir / "twice.parquet", k=2, covariance="full").replace(
        "features: [tenure, monthly_charges, total_charges]", "reg_covar: 0.0").replace(
        "      - op: impute\n        columns: [total_charges]\n        strategy: median\n", "")
    pipeline = pipeline.replace("columns: [tenure, monthly_charges, total_charges]",
                                "columns: [tenure, monthly_charges]")
    with pytest.raises(SluiceError, match="mixture") as info:
        run(write_pipeline(workdir, pipeline))
    assert "singular even after reg_covar" in str(info.value)
    assert "raise reg_covar" in str(info.value) and "covariance: diag" in str(info.value)
