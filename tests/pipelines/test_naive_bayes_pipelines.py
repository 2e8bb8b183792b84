"""naive_bayes as a pipeline step: its run record, saved and scored by `score` and
`sluice score` on rows without the label, served with contributions, tuned; errors that
name the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline
from sklearn.metrics import log_loss
from sklearn.naive_bayes import GaussianNB

from operators.arrays import get_namespace
from operators.base import SluiceError
from operators.models.common import split_rows
from pipelines.runner import run
from pipelines.serving import load_model
from pipelines.store import ModelStore

FEATURES = ["tenure", "monthly_charges", "total_charges"]
TRAIN = """
    pipeline: plans
    steps:
      - op: read_parquet
        path: {data}
      - op: impute
        columns: [total_charges]
        strategy: median
      - id: nb
        op: naive_bayes
        label: plan
        features: [tenure, monthly_charges, total_charges]
        validation_fraction: 0.2
        seed: 1{extra}
      - op: save_model
        name: plans
"""


def imputed_split(rows: pa.Table, split: bool = True) -> tuple[pa.Table, pa.Table]:
    """The rows after the saved model's impute step, split as the step held them out."""
    impute = ModelStore().load("plans").chain.steps[0]
    rows = impute.transform(rows, get_namespace("numpy"))
    return split_rows(rows, 0.2, 1) if split else (rows, rows)


def matrix(rows: pa.Table) -> np.ndarray:
    return np.column_stack([rows.column(f).to_numpy().astype(float) for f in FEATURES])


def test_record_saved_model_scores_and_serves(workdir: Path, churn: Path) -> None:
    record = run(write_pipeline(workdir, TRAIN.format(data=churn, extra="")))
    metrics = record["metrics"]["nb"]
    assert metrics["model_type"] == "gaussian" and metrics["classes"] == 3
    assert sum(metrics["priors"]) == pytest.approx(1.0)
    assert metrics["training_rows"] + metrics["validation_rows"] == 5000
    assert metrics["validation"]["count"] == metrics["validation_rows"]
    # scoring rows without the label or the other columns: the model reads its features
    rows = pq.read_table(churn)
    pq.write_table(rows.select(["customer_id", *FEATURES]), workdir / "new.parquet")
    done = sluice_in_process("score", "plans", str(workdir / "new.parquet"), "out", "--keep",
                             "customer_id", cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["customer_id", "prediction", "probability"]
    # the saved model is scikit-learn's GaussianNB of the training rows after impute
    model = ModelStore().load("plans")
    assert model.chain.steps[-1].name == "naive_bayes.fitted"
    train, _ = imputed_split(rows)
    sk = GaussianNB().fit(matrix(train), train.column("plan").to_pylist())
    scored = imputed_split(rows.select(["customer_id", *FEATURES]), split=False)[0]
    by_id = dict(zip(out.column("customer_id").to_pylist(),
                     out.column("probability").to_pylist(), strict=True))
    proba = np.array([by_id[i] for i in scored.column("customer_id").to_pylist()])
    np.testing.assert_allclose(proba, sk.predict_proba(matrix(scored)), rtol=1e-9, atol=1e-15)
    assert out.column("prediction").to_pylist() == [
        sk.classes_[i] for i in np.argmax(np.array(out.column("probability").to_pylist()),
                                          axis=1)]
    served = load_model("plans")
    first = rows.slice(0, 4).select(FEATURES).to_pylist()
    answered = served.score(first)
    np.testing.assert_allclose([r["probability"] for r in answered],
                               [by_id[i] for i in rows.column("customer_id")[:4].to_pylist()],
                               rtol=1e-12)
    explained = served.score(first, contributions=True)
    for row, want in zip(explained, answered, strict=True):
        assert row["probability"] == want["probability"]
        assert set(row["contributions"]) == set(FEATURES)
        assert len(row["contribution_base"]) == 3  # a list per class: three classes


def test_tune_picks_by_held_out_log_loss(workdir: Path, churn: Path) -> None:
    """var_smoothing tuned: each candidate's held-out log-loss is scikit-learn's GaussianNB
    of that var_smoothing on the same training rows, and the lowest wins."""
    record = run(write_pipeline(workdir, TRAIN.format(
        data=churn, extra="\n        tune:\n          var_smoothing: [1.0e-9, 3.0]")))
    tuning = record["metrics"]["nb"]["tuning"]
    candidates = tuning["candidates"]
    losses = [candidates[f"var_smoothing={v}"]["log_loss"] for v in (1.0e-9, 3.0)]
    assert tuning["metric"] == "log_loss"
    assert tuning["best"] == min(candidates, key=lambda k: candidates[k]["log_loss"])
    assert losses[0] != losses[1]
    train, held = imputed_split(pq.read_table(churn))
    for smoothing, loss in zip([1.0e-9, 3.0], losses):
        sk = GaussianNB(var_smoothing=smoothing).fit(matrix(train),
                                                     train.column("plan").to_pylist())
        want = log_loss(held.column("plan").to_pylist(), sk.predict_proba(matrix(held)),
                        labels=sk.classes_)
        assert loss == pytest.approx(want, rel=1e-9)


def test_negative_counts_name_the_step(workdir: Path, churn: Path) -> None:
    pipeline = TRAIN.format(data=churn, extra="\n        model_type: multinomial").replace(
        "      - id: nb\n", "      - op: standard_scale\n        columns: [tenure]\n"
                          "      - id: nb\n")
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, pipeline))
    text = str(info.value)
    assert "'nb'" in text and "feature column 'tenure' has negative values" in text
    assert "a scaler before it makes values negative" in text
