"""join in pipelines: the same rows on every engine as pandas' merge; a join feeding a
model is data preparation, not part of the saved model: scoring joins the table too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, plan_file, run
from pipelines.store import ModelStore


@pytest.fixture
def regions(workdir: Path) -> Path:
    """One row per region of the churn data but 'west' (and one the data lacks)."""
    path = workdir / "data" / "regions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "region": ["north", "south", "east", "mars"],
        "tax_rate": [0.2, 0.1, 0.15, 0.9],
        "manager": ["ann", "bo", "cy", "dee"],
    }), path)
    return path


ENRICH = """
    pipeline: enrich
    steps:
      - op: read_parquet
        path: data/churn
        partition_mb: 0.05
      - op: join
        path: data/regions.parquet
        on: [region]
        how: {how}
      - op: derive
        columns: {{taxed: "monthly_charges * (1 + coalesce(tax_rate, 0))"}}
      - op: write_parquet
        path: out/enriched
"""


@pytest.mark.parametrize("how", ["left", "inner"])
def test_a_join_gives_pandas_merge_on_every_engine(churn: Path, regions: Path, workdir: Path,
                                                  engine: Engine, how: str) -> None:
    record = run(write_pipeline(workdir, ENRICH.format(how=how)), engine_instance=engine)
    got = pq.read_table(workdir / "out" / "enriched").to_pandas().sort_values(
        "customer_id").reset_index(drop=True)
    data = pq.read_table(churn).to_pandas()
    want = data.merge(pq.read_table(regions).to_pandas(), on="region", how=how)
    want = want.sort_values("customer_id").reset_index(drop=True)
    assert record["steps"]["join"]["rows"] == len(want) == len(got)
    assert (how == "inner") == (len(got) < len(data))
    assert list(got.columns) == [*data.columns, "tax_rate", "manager", "taxed"]
    pd.testing.assert_series_equal(got["manager"], want["manager"], check_dtype=False)
    np.testing.assert_allclose(got["taxed"], want["monthly_charges"]
                               * (1 + want["tax_rate"].fillna(0)), rtol=1e-12)


def test_an_anti_join_keeps_the_unmatched_rows_on_every_engine(
        churn: Path, regions: Path, workdir: Path, engine: Engine) -> None:
    record = run(write_pipeline(workdir, ENRICH.format(how="anti").replace(
        "coalesce(tax_rate, 0)", "0")), engine_instance=engine)
    got = pq.read_table(workdir / "out" / "enriched")
    data = pq.read_table(churn).to_pandas()
    unmatched = data[~data["region"].isin(["north", "south", "east", "mars"])]
    assert got.num_rows == len(unmatched) == record["steps"]["join"]["rows"] > 0
    assert set(got["region"].to_pylist()) == set(unmatched["region"])
    assert "tax_rate" not in got.column_names


TRAIN = """
    pipeline: train_joined
    steps:
      - op: read_parquet
        path: data/churn
      - op: join
        path: data/regions.parquet
        on: [region]
        columns: [tax_rate]
      - op: impute
        columns: [tax_rate]
        strategy: constant
        value: 0
      - op: logistic_regression
        label: churned
        features: [tenure, monthly_charges, tax_rate]
      - op: save_model
        name: joined
"""

SCORE = """
    pipeline: score_joined
    steps:
      - op: read_parquet
        path: data/churn
{join}      - op: score
        model: joined
      - op: write_parquet
        path: out/scores
"""


def test_a_join_is_not_part_of_the_saved_model(churn: Path, regions: Path,
                                               workdir: Path) -> None:
    run(write_pipeline(workdir, TRAIN))
    model = ModelStore().load("joined")
    assert [s.name for s in model.chain.steps] == ["impute.fitted",
                                                   "logistic_regression.fitted"]
    assert "tax_rate" in model.required
    assert model.meta["data_steps"] == [{
        "step": "join", "op": "join", "added_columns": ["tax_rate"],
        "params": {"path": "data/regions.parquet", "on": ["region"], "columns": ["tax_rate"]}}]
    shown = sluice_in_process("models", "show", "joined", cwd=workdir, check=True).stdout
    assert ('  data join (join): path=data/regions.parquet, on=["region"], '
            'columns=["tax_rate"]; added tax_rate\n') in shown
    assert ("  profile: 5,000 training rows (5,000 sampled): tax_rate, tenure, "
            "monthly_charges\n") in shown
    # a scoring pipeline brings the column itself: without the join it fails as planned
    bare = write_pipeline(workdir, SCORE.format(join=""), "bare.yaml")
    with pytest.raises(ValidationFailed) as info:
        run(bare)
    (problem,) = info.value.problems
    assert str(problem) == (
        f"{bare}:6: step 'score' (score): column the model 'joined' needs: 'tax_rate' not in "
        "the input (the model's training pipeline added 'tax_rate' in step 'join' (join), "
        "which a model does not keep: repeat that step before this one)")
    joined = SCORE.format(join="      - op: join\n        path: data/regions.parquet\n"
                               "        on: [region]\n")
    record = run(write_pipeline(workdir, joined, "joined.yaml"))
    assert record["steps"]["write_parquet"]["rows"] == 5000


def test_validating_a_join_reads_only_the_footer(churn: Path, regions: Path,
                                                 workdir: Path) -> None:
    plan = plan_file(write_pipeline(workdir, ENRICH.format(how="left")))
    assert plan.ok, plan.problems
    assert plan.step("join").schema.names[-2:] == ["tax_rate", "manager"]
    assert plan.step("join").op._table is None


def test_a_join_problem_is_reported_at_its_line(churn: Path, regions: Path,
                                                workdir: Path) -> None:
    path = write_pipeline(workdir, ENRICH.format(how="left").replace(
        "on: [region]", "on: {region: area}"))
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    line = [n for n, text in enumerate(path.read_text().splitlines(), 1)
            if "on: {region: area}" in text][0]
    assert str(problem) == (
        f"{path}:{line}: step 'join' (join): on: key column 'area' not in "
        "'data/regions.parquet' (it has: region, tax_rate, manager)")


BETWEEN = """
    pipeline: train_between
    steps:
      - op: read_parquet
        path: data/churn
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: join
        path: data/regions.parquet
        on: [region]
        columns: [tax_rate]
      - op: derive
        columns: {taxed: "monthly_charges * (1 + coalesce(tax_rate, 0))"}
      - op: logistic_regression
        label: churned
        features: [tenure, total_charges, taxed]
      - op: save_model
        name: between
"""


def test_a_join_between_fitted_steps_gives_the_model_its_columns(
        churn: Path, regions: Path, workdir: Path) -> None:
    """The model is impute, derive and the fit; the join between them is the scoring
    pipeline's to repeat, and the column it adds is one the model reads."""
    run(write_pipeline(workdir, BETWEEN))
    model = ModelStore().load("between")
    assert [s.name for s in model.chain.steps] == [
        "impute.fitted", "derive", "logistic_regression.fitted"]
    assert model.required == ["total_charges", "monthly_charges", "tax_rate", "tenure"]
    assert model.input_schema.field("tax_rate").type == pa.float64()
    # profiled for drift too: on the join's rows, in a pass of their own
    profiled = model.meta["profile"]["columns"]
    assert {"total_charges", "monthly_charges", "tax_rate", "tenure"} <= set(profiled)
    assert profiled["tax_rate"]["kind"] == "numeric"
    bare = write_pipeline(workdir, SCORE.format(join="").replace("joined", "between"),
                          "bare.yaml")
    with pytest.raises(ValidationFailed) as info:
        run(bare)
    assert "'tax_rate' not in the input (the model's training pipeline added 'tax_rate' " \
           "in step 'join' (join)" in str(info.value.problems[0])
    joined = SCORE.format(join="      - op: join\n        path: data/regions.parquet\n"
                               "        on: [region]\n").replace("joined", "between")
    record = run(write_pipeline(workdir, joined, "joined.yaml"))
    assert record["steps"]["write_parquet"]["rows"] == 5000


def test_a_join_on_a_column_a_model_step_wrote_is_refused_as_planned(
        churn: Path, regions: Path, workdir: Path) -> None:
    """Training would join on imputed regions, scoring (which joins before the model) on
    the raw ones: different rows of the table for the same customers."""
    text = BETWEEN.replace("columns: [total_charges]\n        strategy: median",
                           "columns: [region]\n        strategy: constant\n        "
                           "value: east")
    path = write_pipeline(workdir, text)
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    assert str(problem) == (
        f"{path}:18: step 'save_model' (save_model): step 'join' (join) reads 'region', "
        "which 'impute' (impute) writes, and the model saved here reads what it adds: "
        "'impute' is in the model and 'join' is not, so scoring does 'join' on the rows as "
        "they come and would use other values of 'region' than training did (move 'join' "
        "before 'impute', so that it reads 'region' as the rows come (as scoring will))")
    # what it adds unread by the model: nothing to skew, the pipeline runs
    unread = text.replace("coalesce(tax_rate, 0)", "0").replace(
        "[tenure, total_charges, taxed]", "[tenure, taxed]")
    run(write_pipeline(workdir, unread, "unread.yaml"))
