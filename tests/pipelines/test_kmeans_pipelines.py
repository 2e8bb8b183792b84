"""kmeans as a pipeline step: fitted, saved, scored by `score` and `sluice score`, served;
`promote` refuses it (no label to compare its clusters with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sluice_in_process, write_pipeline

from operators.arrays import get_namespace
from operators.base import SluiceError
from pipelines.cli import main
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
      - id: clusters
        op: kmeans
        features: [tenure, monthly_charges, total_charges]
        k: 4
        distance: {distance}
      - op: save_model
        name: segments
{extra}
"""


@pytest.fixture
def trained(workdir: Path, churn: Path) -> dict:
    return run(write_pipeline(workdir, TRAIN.format(data=churn, distance="true", extra="")))


def test_fit_record_and_score_pipeline(workdir: Path, churn: Path, trained: dict) -> None:
    metrics = trained["metrics"]["clusters"]
    assert metrics["converged"] and metrics["iterations"] >= 1
    assert sum(metrics["cluster_sizes"]) == metrics["training_rows"] == 5000
    assert metrics["inertia"] > 0
    run(write_pipeline(workdir, f"""
        pipeline: score_segments
        steps:
          - op: read_parquet
            path: {churn}
          - op: score
            model: segments
          - op: write_parquet
            path: {workdir / "scores"}
        """, "score.yaml"))
    scores = pq.read_table(workdir / "scores")
    rows = pq.read_table(churn)
    assert scores.column_names == [*rows.column_names, "prediction", "distance"]
    assert scores.schema.field("prediction").type == pa.int64()
    model = ModelStore().load("segments")
    expected = model.chain.transform(scores.select(rows.column_names), get_namespace("numpy"))
    np.testing.assert_array_equal(scores.column("prediction").to_numpy(),
                                  expected.column("prediction").to_numpy())
    np.testing.assert_allclose(scores.column("distance").to_numpy(),
                               expected.column("distance").to_numpy(), rtol=1e-12)
    assert sorted(set(scores.column("prediction").to_pylist())) == [0, 1, 2, 3]


def test_the_score_command_and_serving(workdir: Path, churn: Path, trained: dict) -> None:
    done = sluice_in_process("score", "segments", str(churn), "out", "--keep", "customer_id",
                             cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["customer_id", "prediction", "distance"]
    served = load_model("segments")
    assert [o["name"] for o in served.describe()["outputs"]] == ["prediction", "distance"]
    assert served.describe()["contributions"] is False
    rows = pq.read_table(churn).slice(0, 5).to_pylist()
    answered = served.score(rows)
    by_id = dict(zip(out.column("customer_id").to_pylist(), out.column("prediction").to_pylist()))
    assert [r["prediction"] for r in answered] == [by_id[r["customer_id"]] for r in rows]
    assert all(r["distance"] >= 0 for r in answered)
    with pytest.raises(SluiceError, match="no per-feature contributions"):
        served.score(rows, contributions=True)


def test_a_model_without_distance_keeps_an_input_distance(workdir: Path, churn: Path) -> None:
    """score takes the model's own columns only: an input column named distance passes
    through where the model gives none."""
    run(write_pipeline(workdir, TRAIN.format(data=churn, distance="false", extra="")))
    served = load_model("segments")
    rows = [{**r, "distance": 1.5} for r in pq.read_table(churn).slice(0, 3).to_pylist()]
    assert [r["distance"] for r in served.score(rows)] == [1.5, 1.5, 1.5]
    assert [o["name"] for o in served.describe()["outputs"]] == ["prediction"]


def test_promote_refuses_a_model_of_no_label(workdir: Path, churn: Path) -> None:
    promote = """      - op: promote
        input: clusters
        model: segments
        alias: production
        label: churned
"""
    path = write_pipeline(workdir, TRAIN.format(data=churn, distance="false", extra=promote))
    with pytest.raises(SluiceError, match="a model of no label") as err:
        run(path)
    assert "save_model's aliases" in err.value.hint


def test_k_tuned_by_the_held_out_silhouette_in_the_record_and_runs_show(
        workdir: Path, churn: Path) -> None:
    """tune: k by the held-out rows' silhouette: the record and `sluice runs show` have
    every candidate's and the chosen model's validation."""
    text = TRAIN.format(data=churn, distance="false", extra="").replace(
        "        k: 4\n", "        validation_fraction: 0.2\n        tune:\n"
                         "          k: [3, 4]\n")
    record = run(write_pipeline(workdir, text))
    metrics = record["metrics"]["clusters"]
    assert list(metrics["tuning"]["candidates"]) == ["k=3", "k=4"]
    assert metrics["training_rows"] + metrics["validation_rows"] == 5000
    assert set(metrics["validation"]) == {"silhouette", "calinski_harabasz", "davies_bouldin",
                                          "inertia", "count", "clusters", "cluster_sizes"}
    shown = CliRunner().invoke(main, ["runs", "show", record["run_id"]])
    assert shown.exit_code == 0, shown.output
    assert "metrics clusters.validation: silhouette=" in shown.output
    assert "metrics clusters.tuning: metric=silhouette, best=k=" in shown.output
    assert "metrics clusters.tuning.candidates.k=3: silhouette=" in shown.output
