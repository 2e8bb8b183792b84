"""isolation_forest as a pipeline step: fitted with its run record, saved, scored by
`score` and `sluice score`, served; evaluated by its anomaly_score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    pipeline: anomalies
    steps:
      - op: read_parquet
        path: {data}
      - op: impute
        columns: [total_charges]
        strategy: median
      - id: forest
        op: isolation_forest
        features: [tenure, monthly_charges, total_charges]
        n_trees: 40
        max_samples: {max_samples}
        contamination: 0.02
        seed: 3
      - op: save_model
        name: anomalies
      - id: evaluate
        op: evaluate
        label: churned
        probability: anomaly_score
        metrics: [roc_auc]
"""


@pytest.fixture
def trained(workdir: Path, churn: Path) -> dict:
    return run(write_pipeline(workdir, TRAIN.format(data=churn, max_samples=128)))


def test_fit_record_score_pipeline_and_evaluate(workdir: Path, churn: Path,
                                                trained: dict) -> None:
    metrics = trained["metrics"]["forest"]
    assert metrics["trees"] == 40 and metrics["max_samples"] == 128
    assert metrics["height_limit"] == 7 and metrics["training_rows"] == 5000
    assert metrics["flagged"] == 100 and metrics["flagged_share"] == 0.02
    assert metrics["threshold"] == -metrics["offset"] and 0 < metrics["threshold"] < 1
    assert 0 < trained["metrics"]["evaluate"]["roc_auc"] < 1
    run(write_pipeline(workdir, f"""
        pipeline: score_anomalies
        steps:
          - op: read_parquet
            path: {churn}
          - op: impute
            columns: [total_charges]
            strategy: median
          - op: score
            model: anomalies
          - op: write_parquet
            path: {workdir / "scores"}
        """, "score.yaml"))
    scores = pq.read_table(workdir / "scores")
    rows = pq.read_table(churn)
    assert scores.column_names == [*rows.column_names, "prediction", "anomaly_score"]
    assert scores.schema.field("prediction").type == pa.int64()
    assert scores.schema.field("anomaly_score").type == pa.float64()
    # the saved chain imputes as the training run did: the same rows flagged
    assert int(np.sum(scores.column("prediction").to_numpy())) == 100
    model = ModelStore().load("anomalies")
    expected = model.chain.transform(rows, get_namespace("numpy"))
    np.testing.assert_array_equal(scores.column("anomaly_score").to_numpy(),
                                  expected.column("anomaly_score").to_numpy())


def test_the_score_command_and_serving(workdir: Path, churn: Path, trained: dict) -> None:
    done = sluice_in_process("score", "anomalies", str(churn), "out", "--keep", "customer_id",
                             cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["customer_id", "prediction", "anomaly_score"]
    served = load_model("anomalies")
    assert [o["name"] for o in served.describe()["outputs"]] == ["prediction",
                                                                 "anomaly_score"]
    rows = pq.read_table(churn).slice(0, 5).to_pylist()
    answered = served.score(rows)
    by_id = dict(zip(out.column("customer_id").to_pylist(),
                     out.column("anomaly_score").to_pylist(), strict=True))
    assert [r["anomaly_score"] for r in answered] == [by_id[r["customer_id"]] for r in rows]
    with pytest.raises(SluiceError, match="no per-feature contributions"):
        served.score(rows, contributions=True)


def test_more_max_samples_than_rows_is_a_note(workdir: Path, churn: Path) -> None:
    notes: list[str] = []
    record = run(write_pipeline(workdir, TRAIN.format(data=churn, max_samples=9000)),
                 notify=notes.append)
    said = [n for n in notes if "step 'forest'" in n]
    assert len(said) == 1 and "max_samples (9000) is more than the 5000 training rows" in said[0]
    metrics = record["metrics"]["forest"]
    assert metrics["max_samples"] == 5000 and "every row is used" in metrics["note"]


def test_the_transactions_example_finds_the_planted_fraud(workdir: Path) -> None:
    """conf/pipelines/transactions_anomalies.yaml on the committed sample (the
    ``transactions`` generator's first 20,000 rows): 0.5% flagged, the planted fraud
    ranked far above the rest, and the saved chain (derive, the forest) flags the same
    rows again."""
    import pyarrow.dataset as ds
    from conftest import ROOT

    from pipelines.datagen import transactions_table

    (workdir / "data").symlink_to(ROOT / "data")
    committed = ds.dataset(ROOT / "data" / "transactions").to_table()
    assert committed.equals(transactions_table(committed.num_rows).cast(committed.schema))
    record = run(ROOT / "conf" / "pipelines" / "transactions_anomalies.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    assert record["status"] == "succeeded"
    metrics = record["metrics"]["anomalies"]
    assert metrics["flagged"] == 100 and metrics["training_rows"] == 20_000
    quality = record["metrics"]["quality"]
    assert quality["roc_auc"] > 0.9 and quality["precision"] > 0.5
    model = ModelStore(str(workdir / "models")).load("transactions_anomalies")
    assert [s.name for s in model.chain.steps] == ["derive",
                                                   "isolation_forest.fitted"]
    scored = model.chain.transform(committed, get_namespace("numpy"))
    assert int(np.sum(scored.column("prediction").to_numpy())) == 100


def test_spark_udf_answers_the_anomaly_score(workdir: Path, churn: Path, trained: dict,
                                             spark: Any) -> None:
    """spark_udf: the prediction (1: an outlier) by default, ``result: anomaly_score``
    the score, ``all`` both; as load_model scores them."""
    from pyspark.sql import functions as F

    from pipelines.serving import spark_udf

    rows = pq.read_table(churn).slice(0, 200)
    path = workdir / "spark-rows.parquet"
    pq.write_table(rows, path)
    df = spark.spark.read.parquet(str(path))
    expected = load_model("anomalies").score(rows)
    ids = rows.column("customer_id").to_pylist()
    for result in (None, "anomaly_score"):
        score = spark_udf("anomalies", result=result)
        got = df.select("customer_id", score(F.struct(*score.columns)).alias("s")).collect()
        column = expected.column(result or "prediction").to_pylist()
        assert {r.customer_id: r.s for r in got} == dict(zip(ids, column, strict=True))
    everything = spark_udf("anomalies", result="all")
    first = df.select(everything(F.struct(*everything.columns)).alias("s")).first().s
    assert set(first.asDict()) == {"prediction", "anomaly_score"}
