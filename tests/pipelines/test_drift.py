"""Training profiles and drift: the profile save_model keeps is the same on every engine
and partitioning, and drift's PSI is the one worked out here with NumPy; max_psi stops a
run before it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import SluiceError
from operators.evaluate.drift import FLOOR, psi
from pipelines.datagen import churn_table
from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, run
from pipelines.store import ModelStore

TRAIN = """
    pipeline: train
    steps:
      - op: read_parquet
        path: train
        partition_mb: 0.05
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: logistic_regression
        label: churned
        features: [tenure, monthly_charges, total_charges, plan=basic, region=east]
      - op: save_model
        name: churn
"""

CHECK = """
    pipeline: check
    steps:
      - op: read_parquet
        path: scoring
        partition_mb: 0.05
      - op: drift
        model: churn
{extra}
      - op: score
        model: churn
      - op: write_parquet
        path: out
"""


@pytest.fixture
def tables(workdir: Path) -> tuple[pa.Table, pa.Table]:
    """3,000 training rows in 3 files; 2,000 scoring rows whose charges rose by 40% and
    with a region the training rows never had."""
    train = churn_table(3000, seed=1)
    (workdir / "train").mkdir()
    for i in range(3):
        pq.write_table(train.slice(i * 1000, 1000), workdir / "train" / f"p{i}.parquet",
                       row_group_size=300)
    scoring = churn_table(2000, seed=2)
    charges = scoring["monthly_charges"].to_numpy() * 1.4
    scoring = scoring.set_column(scoring.schema.get_field_index("monthly_charges"),
                                 "monthly_charges", pa.array(charges))
    regions = scoring["region"].to_pylist()
    regions[:100] = ["mars"] * 100
    scoring = scoring.set_column(scoring.schema.get_field_index("region"), "region",
                                 pa.array(regions))
    (workdir / "scoring").mkdir()
    pq.write_table(scoring, workdir / "scoring" / "s.parquet", row_group_size=500)
    return train, scoring


def numeric_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    known = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, known, side="left"), minlength=len(edges) + 1)
    return np.append(counts, values.size - known.size) / values.size


def test_the_profile_is_the_training_rows_on_every_engine(tables, workdir: Path,
                                                          engine: Engine) -> None:
    train, _ = tables
    run(write_pipeline(workdir, TRAIN), engine_instance=engine)
    profile = ModelStore().load("churn").meta["profile"]
    assert profile["rows"] == profile["sample_rows"] == 3000  # all rows: below 20,000
    # the columns the model reads from its input (before impute and one_hot)
    assert sorted(profile["columns"]) == ["monthly_charges", "plan", "region", "tenure",
                                          "total_charges"]
    charges = profile["columns"]["monthly_charges"]
    values = train["monthly_charges"].to_numpy()
    edges = np.unique(np.quantile(values, np.arange(1, 10) / 10, method="lower"))
    np.testing.assert_array_equal(charges["edges"], edges)
    np.testing.assert_allclose(charges["shares"], numeric_shares(values, edges), rtol=1e-12)
    total = profile["columns"]["total_charges"]  # nulls: the last share
    nulls = train["total_charges"].null_count
    assert nulls > 0 and total["shares"][-1] == pytest.approx(nulls / 3000, rel=1e-12)
    plan = profile["columns"]["plan"]
    counts = {v: train["plan"].to_pylist().count(v) for v in set(train["plan"].to_pylist())}
    assert plan["values"] == sorted(counts, key=lambda v: (-counts[v], v))
    assert plan["shares"][:-2] == pytest.approx([counts[v] / 3000 for v in plan["values"]])
    assert plan["shares"][-2:] == [0.0, 0.0]
    # the same profile, to the bit, however the rows were partitioned and run
    assert json.dumps(profile) == json.dumps(_reference_profile(workdir, train))


def _reference_profile(workdir: Path, train: pa.Table) -> dict:
    """The profile of the same rows as one file on the local engine."""
    one = workdir / "one"
    one.mkdir()
    pq.write_table(train, one / "all.parquet")
    models = workdir / "models-one"
    run(write_pipeline(workdir, TRAIN.replace("path: train", f"path: {one}"), "one.yaml"),
        models=str(models))
    return ModelStore(str(models)).load("churn").meta["profile"]


def test_drift_is_the_psi_worked_out_here(tables, workdir: Path, engine: Engine) -> None:
    train, scoring = tables
    run(write_pipeline(workdir, TRAIN), engine_instance=engine)
    profile = ModelStore().load("churn").meta["profile"]["columns"]
    record = run(write_pipeline(workdir, CHECK.format(extra=""), "check.yaml"),
                 engine_instance=engine)
    metrics = record["metrics"]["drift"]
    charges = profile["monthly_charges"]
    expected = psi(charges["shares"],
                   numeric_shares(scoring["monthly_charges"].to_numpy(), charges["edges"]))
    assert metrics["psi"]["monthly_charges"] == pytest.approx(expected, rel=1e-12)
    assert expected > 0.25
    region = profile["region"]
    seen = scoring["region"].to_pylist()
    shares = [seen.count(v) / 2000 for v in region["values"]]
    shares += [sum(v not in region["values"] for v in seen) / 2000, 0.0]
    assert metrics["psi"]["region"] == pytest.approx(psi(region["shares"], shares), rel=1e-12)
    assert metrics["psi"]["tenure"] < 0.1  # the same distribution
    assert metrics["drifted"][0] == "monthly_charges"
    assert metrics["rows"] == 2000 and metrics["reference_rows"] == 3000
    assert metrics["model"] == "churn@1"
    assert record["steps"]["write_parquet"]["rows"] == 2000  # report only: the run goes on


def test_max_psi_stops_the_run_before_it_writes(tables, workdir: Path) -> None:
    run(write_pipeline(workdir, TRAIN))
    path = write_pipeline(workdir, CHECK.format(extra="        max_psi: 0.25"), "check.yaml")
    with pytest.raises(SluiceError) as info:
        run(path)
    text = str(info.value)
    assert text.startswith(f"{path}:6: step 'drift': 2 columns moved past max_psi 0.25 "
                           "from the training rows of model 'churn': monthly_charges (PSI "
                           ), text
    assert "), region (PSI 0.3" in text  # 5% of the rows in a region never seen
    assert "retrain on recent rows, or raise max_psi" in text
    assert not (workdir / "out").exists()


def test_a_model_saved_without_a_profile_cannot_be_compared(tables, workdir: Path) -> None:
    run(write_pipeline(workdir, TRAIN.replace("name: churn", "name: churn\n        "
                                                             "profile: false")))
    assert "profile" not in ModelStore().load("churn").meta
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, CHECK.format(extra=""), "check.yaml"))
    (problem,) = info.value.problems
    assert "model 'churn' has no training profile (saved by an older sluice, or with " \
           "profile: false) (save it again to compare with it)" in str(problem)


def test_drift_columns_are_checked_as_planned(tables, workdir: Path) -> None:
    run(write_pipeline(workdir, TRAIN))
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, CHECK.format(extra="        columns: [tenure, churned]"),
                           "cols.yaml"))
    assert "columns: 'churned' is not in the profile of model 'churn' (profiled: " in str(
        info.value.problems[0])
    cast = CHECK.format(extra="").replace(
        "      - op: drift", "      - op: cast\n        columns: {tenure: string}\n"
                            "      - op: drift")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, cast, "cast.yaml"))
    assert "column 'tenure' is string here, numeric in the training rows (cast it as it " \
           "was (op: cast))" in str(info.value.problems[0])
    dropped = CHECK.format(extra="").replace(
        "      - op: drift", "      - op: drop\n        columns: [tenure]\n      - op: drift")
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, dropped, "dropped.yaml"))
    assert "column the model 'churn' was trained with: 'tenure' not in the input" in str(
        info.value.problems[0])
    some = run(write_pipeline(workdir, CHECK.format(extra="        columns: [tenure]"),
                              "some.yaml"))
    assert list(some["metrics"]["drift"]["psi"]) == ["tenure"]


def test_psi_floors_empty_bins() -> None:
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    moved = psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1])
    assert moved == pytest.approx((0.4 - 0.5) * np.log(0.4 / 0.5)
                                  + (0.1 - FLOOR) * np.log(0.1 / FLOOR))


TRAIN_AND_CHECK = TRAIN + """
      - op: read_parquet
        path: scoring
      - op: drift
        model: churn
"""


def test_drift_in_the_saving_run_compares_with_the_version_it_saves(
        tables, workdir: Path, engine: Engine) -> None:
    """A run that saves a model and then measures rows' drift from it compares with the
    training rows of the version it saves, as score scores with it: not the registry's
    latest before the run (the first run has none), and on every engine the same PSI
    as a run that measures the saved version afterwards."""
    path = write_pipeline(workdir, TRAIN_AND_CHECK)
    first = run(path, engine_instance=engine)
    assert first["metrics"]["drift"]["model"] == "churn@1"
    second = run(path, engine_instance=engine)
    assert second["metrics"]["drift"]["model"] == "churn@2"
    assert [m["version"] for m in second["models_used"] if m["step"] == "drift"] == [2]
    after = run(write_pipeline(workdir, CHECK.format(extra=""), "check.yaml"),
                engine_instance=engine)
    assert after["metrics"]["drift"]["model"] == "churn@2"
    assert after["metrics"]["drift"]["psi"] == second["metrics"]["drift"]["psi"]


def test_drift_of_the_rows_a_run_trains_on_is_with_the_version_before(
        tables, workdir: Path) -> None:
    """Drift on the rows the run goes on to train with compares with the version saved
    before (the registry's, at the step's turn): no cycle."""
    run(write_pipeline(workdir, TRAIN))
    before = TRAIN.replace("        partition_mb: 0.05\n",
                           "        partition_mb: 0.05\n      - op: drift\n"
                           "        model: churn\n", 1)
    record = run(write_pipeline(workdir, before, "before.yaml"))
    assert record["metrics"]["drift"]["model"] == "churn@1"
    assert record["metrics"]["drift"]["max_psi"] == 0.0  # the same rows as churn@1's
    assert ModelStore().load("churn").version == 2


def test_drift_in_the_saving_run_needs_its_profile(tables, workdir: Path) -> None:
    no_profile = TRAIN_AND_CHECK.replace("name: churn\n", "name: churn\n        profile: false\n",
                                         1)
    path = write_pipeline(workdir, no_profile)
    with pytest.raises(ValidationFailed) as info:
        run(path)
    assert ("model: step 'save_model' saves 'churn' with profile: false, so there are no "
            "training rows to compare with (drop profile: false from step 'save_model', "
            "or compare with a saved version (name@3, name@ALIAS))") in str(
        info.value.problems[0])
    dropped = TRAIN_AND_CHECK + "        columns: [churned]\n"
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, dropped, "columns.yaml"))
    assert "columns: 'churned' is not in the profile of model 'churn' (profiled: " in str(
        info.value.problems[0])


def test_drift_of_rows_a_second_save_trains_on_is_with_the_first_save(
        tables, workdir: Path) -> None:
    """A run that saves a model twice: drift of the rows the second save trains on
    compares with the version the first save made in this run (the one saved before
    them), not the registry's before the run."""
    run(write_pipeline(workdir, TRAIN))
    twice = TRAIN + """
      - op: read_parquet
        path: scoring
      - id: before_second
        op: drift
        model: churn
      - op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
      - id: second
        op: save_model
        name: churn
"""
    record = run(write_pipeline(workdir, twice, "twice.yaml"))
    assert [(m["step"], m["version"]) for m in record["models"]] == [
        ("save_model", 2), ("second", 3)]
    assert record["metrics"]["before_second"]["model"] == "churn@2"
    assert [m["version"] for m in record["models_used"]
            if m["step"] == "before_second"] == [2]


def test_drift_in_the_saving_run_of_a_weight_another_step_reads(
        tables, workdir: Path) -> None:
    """A model's weight column that a step before it reads too (impute) is the fit's
    only, as the label is: the saved impute leaves it out (scoring rows have no
    weight), so the profile has it not, and the plan and the run agree on that (the
    plan once refused what the run profiled). The features' drift is planned as ever."""
    weighted = """
    pipeline: weighted
    steps:
      - op: read_parquet
        path: train
      - op: impute
        columns: [total_charges, monthly_charges]
        strategy: median
      - op: logistic_regression
        label: churned
        weight: total_charges
        features: [monthly_charges]
      - op: save_model
        name: churn
      - op: read_parquet
        path: scoring
      - op: drift
        model: churn
        columns: [monthly_charges]
"""
    record = run(write_pipeline(workdir, weighted))
    assert list(record["metrics"]["drift"]["psi"]) == ["monthly_charges"]
    for column in ("total_charges", "churned"):  # the fit's only
        only = weighted.rsplit("columns:", 1)[0] + f"columns: [{column}]\n"
        with pytest.raises(ValidationFailed) as info:
            run(write_pipeline(workdir, only, f"{column}.yaml"))
        assert f"columns: '{column}' is not in the profile of model 'churn'" in str(
            info.value.problems[0])


def test_drift_of_the_training_rows_on_a_first_run_says_why(tables, workdir: Path) -> None:
    """Drift of the rows a run trains on compares with the version saved before; on the
    first run there is none, and the error says that, not only 'no model'."""
    before = TRAIN.replace("        partition_mb: 0.05\n",
                           "        partition_mb: 0.05\n      - op: drift\n"
                           "        model: churn\n", 1)
    with pytest.raises(ValidationFailed) as info:
        run(write_pipeline(workdir, before, "before.yaml"))
    text = str(info.value.problems[0])
    assert "drift compares the rows step 'save_model' saves 'churn' from with the version " \
           "saved before this run, and there is none yet" in text, text
    assert "run the pipeline without this drift step once" in text


@pytest.mark.parametrize("prepare", [
    "      - op: select\n        columns: [tenure, monthly_charges, churned]\n",
    "      - op: derive\n        columns: {left: \"churned == 1\"}\n",
    "      - op: drop\n        columns: [customer_id, plan, region, total_charges]\n"])
def test_the_profile_is_of_the_columns_the_saved_model_needs(tables, workdir: Path,
                                                             prepare: str) -> None:
    """The profile is of what the saved model reads, not of a label a select keeps or a
    derive derives from, nor of a column a drop drops (saved as lenient: scoring rows
    need none of them): drift of unlabelled rows without the dropped ones runs, and a
    drift in the saving run is planned with the columns the run profiles."""
    label = "left" if "derive" in prepare else "churned"
    run(write_pipeline(workdir, f"""
    pipeline: prepared
    steps:
      - op: read_parquet
        path: train
{prepare}      - op: logistic_regression
        label: {label}
        features: [tenure, monthly_charges]
      - op: save_model
        name: churn
    """))
    model = ModelStore().load("churn")
    assert sorted(model.meta["profile"]["columns"]) == sorted(model.required) == [
        "monthly_charges", "tenure"]
    scoring = pq.read_table(workdir / "scoring").select(["tenure", "monthly_charges"])
    pq.write_table(scoring, workdir / "scoring" / "s.parquet")
    record = run(write_pipeline(workdir, CHECK.format(extra=""), "check.yaml"))
    assert sorted(record["metrics"]["drift"]["psi"]) == ["monthly_charges", "tenure"]


def test_drift_in_the_saving_run_is_planned_with_the_saved_models_columns(
        tables, workdir: Path) -> None:
    """A select that keeps the label before the model reads nothing in the saved model:
    a drift of unlabelled rows in the saving run is planned without the label, as the
    run profiles it (the plan asked for 'churned')."""
    scoring = pq.read_table(workdir / "scoring").drop_columns(["churned"])
    pq.write_table(scoring, workdir / "scoring" / "s.parquet")
    record = run(write_pipeline(workdir, """
    pipeline: selected
    steps:
      - op: read_parquet
        path: train
      - op: select
        columns: [tenure, monthly_charges, churned]
      - op: logistic_regression
        label: churned
      - op: save_model
        name: churn
      - op: read_parquet
        path: scoring
      - op: drift
        model: churn
    """))
    assert sorted(record["metrics"]["drift"]["psi"]) == ["monthly_charges", "tenure"]


def shaped(derived: str, shape: str) -> str:
    """TRAIN with a derive (in the model) and a step shaping the rows (not in it) first."""
    return TRAIN.replace("        partition_mb: 0.05\n", "        partition_mb: 0.05\n"
                         f"      - op: derive\n        columns: {{{derived}}}\n"
                         f"      - op: {shape}\n")


SHAPES = {"sample": "sample\n        fraction: 0.6\n        by: [customer_id]",
          "filter": "filter\n        where: \"monthly_charges > 50\""}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_profile_is_of_the_rows_a_sample_or_filter_inside_the_model_kept(
        tables, workdir: Path, engine: Engine, shape: str) -> None:
    """A sample or filter between the model's first step (a derive) and its fits: the
    profile is of the rows the model trained on, not of the read (they were 3,000; the
    record said it trained on fewer), the same to the bit as a model trained on those
    rows alone, on every engine."""
    train, _ = tables
    pipeline = shaped("high: \"monthly_charges > 80\"", SHAPES[shape])
    record = run(write_pipeline(workdir, pipeline), engine_instance=engine)
    profile = ModelStore().load("churn").meta["profile"]
    trained = record["metrics"]["logistic_regression"]["training_rows"]
    assert profile["rows"] == trained < 3000
    assert all("rows" not in entry for entry in profile["columns"].values())
    # the kept rows, written by the same step, and a model trained on them alone
    run(write_pipeline(workdir, f"""
    pipeline: kept
    steps:
      - op: read_parquet
        path: train
      - op: {SHAPES[shape]}
      - op: write_parquet
        path: kept
    """, "kept.yaml"))
    models = workdir / "models-kept"
    run(write_pipeline(workdir, TRAIN.replace("path: train", "path: kept"), "alone.yaml"),
        models=str(models))
    alone = ModelStore(str(models)).load("churn").meta["profile"]
    assert alone["rows"] == trained
    assert json.dumps(profile, sort_keys=True) == json.dumps(alone, sort_keys=True)


def test_a_column_rewritten_before_the_sample_is_profiled_on_the_read(
        tables, workdir: Path) -> None:
    """The model's derive rewrites tenure before the sample: the profile is of tenure as
    scoring rows bring it, so of the read's rows (all of them, its count said); the other
    columns are of the sampled rows."""
    train, _ = tables
    pipeline = shaped("tenure: \"tenure + 1\"", SHAPES["sample"])
    record = run(write_pipeline(workdir, pipeline))
    profile = ModelStore().load("churn").meta["profile"]
    assert profile["rows"] == record["metrics"]["logistic_regression"]["training_rows"]
    assert profile["rows"] < 3000
    assert sorted(profile["columns"]) == ["monthly_charges", "plan", "region", "tenure",
                                          "total_charges"]
    tenure = profile["columns"]["tenure"]
    assert tenure["rows"] == 3000
    values = train["tenure"].to_numpy()  # the read's, not plus one
    edges = np.unique(np.quantile(values, np.arange(1, 10) / 10, method="lower"))
    np.testing.assert_array_equal(tenure["edges"], edges)
    assert all("rows" not in e for c, e in profile["columns"].items() if c != "tenure")
