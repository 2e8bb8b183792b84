"""Runs end to end on the engines: fits, outputs, the run record, failures located."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, exploding_pipeline, refused, sluice_in_process, started, write_pipeline

from operators.base import SluiceError
from pipelines.datagen import churn_table, generate
from pipelines.engines.base import Engine, StepFailure
from pipelines.runner import ValidationFailed, run
from pipelines.store import ModelStore

TRAIN = """
    pipeline: center
    params: {folder: data/churn}
    steps:
      - id: events
        op: read_parquet
        path: ${folder}
        columns: [customer_id, tenure, monthly_charges, plan]
        filter: "tenure >= 1"
        partition_mb: 1
      - id: center
        op: sluice_testops.CenterColumns
        columns: [tenure, monthly_charges]
      - op: save_model
        name: centre
      - op: write_parquet
        path: out/centered
    """


def expected_means(rows: int = 5000) -> np.ndarray:
    table = churn_table(rows).filter(pc.field("tenure") >= 1)
    return np.array([np.mean(table["tenure"].to_numpy()),
                     np.mean(table["monthly_charges"].to_numpy())])


def test_train_save_write_and_record(churn: Path, workdir: Path, engine: Engine) -> None:
    path = write_pipeline(workdir, TRAIN)
    record = run(path, engine_instance=engine)
    means = expected_means()
    assert record["status"] == "succeeded"
    np.testing.assert_allclose(record["metrics"]["center"]["means"], means, rtol=1e-12)
    n = int(np.sum(churn_table(5000)["tenure"].to_numpy() >= 1))
    assert record["steps"]["events"]["rows"] == n
    assert record["steps"]["write_parquet"]["rows"] == n
    assert record["outputs"] == [{"step": "write_parquet", "path": "out/centered", "rows": n,
                                  "files": record["outputs"][0]["files"]}]
    assert record["models"][0]["name"] == "centre" and record["models"][0]["version"] == 1
    on_disk = json.loads(Path(record["record_path"]).read_text())
    assert on_disk["run_id"] == record["run_id"] and on_disk["status"] == "succeeded"
    assert on_disk["engine"]["name"] == engine.name

    out = pq.read_table(workdir / "out" / "centered")
    assert out.num_rows == n
    np.testing.assert_allclose(np.mean(out["tenure"].to_numpy()), 0, atol=1e-9)

    model = ModelStore().load("centre")
    assert model.version == 1 and model.required == ["tenure", "monthly_charges"]
    np.testing.assert_allclose(model.chain.steps[0].means, means, rtol=1e-12)
    assert model.meta["pipeline"] == "center" and model.meta["run_id"] == record["run_id"]

    with pytest.raises(SluiceError, match="already exists") as refused:
        run(path, engine_instance=engine)
    assert ModelStore().versions("centre") == [1]  # the write refused: no model
    # said before any step ran (no fit for an hour to stop at the write), at its line
    assert "step 'write_parquet'" in str(refused.value)
    records = [json.loads(p.read_text()) for p in (workdir / "runs" / "center").glob("*.json")]
    [record] = [r for r in records if r["status"] == "failed"]
    assert "step 'write_parquet'" in record["error"]
    assert "center" not in record["metrics"]  # the fit never ran


def test_a_date_param_yaml_reads_as_a_date_saves_its_model(churn: Path,
                                                          workdir: Path) -> None:
    """`params: {ds: 2026-11-28}` unquoted: the run trains, saves and records its model
    (YAML's date used to reach the model's JSON and fail the run as it published)."""
    path = write_pipeline(workdir, TRAIN.replace("params: {folder: data/churn}",
                                                 "params: {folder: data/churn, ds: 2026-11-28}")
                          .replace("name: centre", "name: centre_${ds}"))
    record = run(path)
    assert record["status"] == "succeeded", record.get("error")
    assert record["params"]["ds"] == "2026-11-28"
    model = ModelStore().load("centre_2026-11-28")
    assert model.meta["params"]["ds"] == "2026-11-28"


def test_a_runs_folder_that_cannot_be_written_fails_the_run_before_it_starts(
        churn: Path, workdir: Path) -> None:
    """--runs where no record can be written: said before any data moves (as an MLflow
    that cannot be used is), not after an hour's fit whose outputs and model are then
    published by a run that exits 1."""
    (workdir / "a_file").write_text("")
    path = write_pipeline(workdir, TRAIN)
    with pytest.raises(SluiceError, match="cannot write the run record to ") as refused:
        run(path, runs_dir=str(workdir / "a_file" / "runs"))
    assert "a_file/runs/center" in str(refused.value)
    assert not (workdir / "out" / "centered").exists()
    assert ModelStore().versions("centre") == []


def test_partitioning_does_not_change_the_model(workdir: Path, engine: Engine) -> None:
    table = churn_table(5000)
    one = workdir / "one"
    one.mkdir()
    pq.write_table(table, one / "all.parquet")
    generate("churn", 5000, workdir / "many", files=5, row_group_rows=333)
    models = []
    for folder in ("one", "many"):
        path = write_pipeline(workdir, TRAIN.replace("out/centered", f"out/{folder}"))
        record = run(path, {"folder": folder}, engine_instance=engine)
        models.append(np.array(record["metrics"]["center"]["means"]))
    np.testing.assert_allclose(models[0], models[1], rtol=1e-12)


def test_user_error_in_a_partition_is_located(workdir: Path, engine: Engine) -> None:
    table = churn_table(3000)
    folder = workdir / "nan"
    folder.mkdir()
    pq.write_table(table.slice(0, 1000), folder / "a.parquet")
    bad = table.slice(1000).set_column(4, "monthly_charges",
                                       pc.multiply(table.slice(1000)["monthly_charges"],
                                                   float("nan")))
    pq.write_table(bad, folder / "b.parquet")
    path = write_pipeline(workdir, TRAIN)
    with pytest.raises(SluiceError) as info:
        run(path, {"folder": "nan"}, engine_instance=engine)
    text = str(info.value)
    assert text.startswith(f"{path}:10: step 'center', partition "), text
    assert "b.parquet" in text and "NaN in" in text and "impute first" in text
    assert not (workdir / "out").exists()
    records = list((workdir / "runs" / "center").glob("*.json"))
    (record,) = [json.loads(p.read_text()) for p in records]
    assert record["status"] == "failed" and "NaN" in record["error"]
    assert ModelStore().versions("centre") == []


def test_bug_in_an_operator_names_step_and_partition(churn: Path, workdir: Path,
                                                     engine: Engine) -> None:
    path = exploding_pipeline(workdir, 4000)
    with pytest.raises(StepFailure) as info:
        run(path, engine_instance=engine)
    assert info.value.step == "explode" and "part-00002.parquet" in info.value.where
    assert isinstance(info.value.error, ZeroDivisionError)
    assert not (workdir / "out").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]


def test_of_several_failures_the_first_partition_is_reported(churn: Path, workdir: Path,
                                                            engine: Engine) -> None:
    # the first partition fails last: a user reading the error sees the same partition
    # however the partitions were scheduled
    path = write_pipeline(workdir, """
        pipeline: boom
        steps:
          - op: read_parquet
            path: data/churn
          - id: explode
            op: sluice_testops.FailingLate
            after: {10: 1.5, 4000: 0.0}
          - op: write_parquet
            path: out
        """)
    with pytest.raises(StepFailure) as info:
        run(path, engine_instance=engine)
    assert info.value.step == "explode" and "part-00000.parquet" in info.value.where
    assert str(info.value.error) == "boom at 10"
    assert not (workdir / "out").exists()


def test_invalid_pipeline_runs_nothing(churn: Path, workdir: Path, engine: Engine) -> None:
    path = write_pipeline(workdir, TRAIN.replace("columns: [tenure, monthly_charges]",
                                                 "columns: [tenure, monthly]"))
    with pytest.raises(ValidationFailed) as info:
        run(path, engine_instance=engine)
    assert "column 'monthly' not in the input" in str(info.value.problems[0])
    record = refused(workdir / "runs", "validation")
    assert record["engine"] == {"name": engine.name} and not (workdir / "out").exists()
    assert "column 'monthly' not in the input" in record["error"]


def test_empty_input_after_filter(churn: Path, workdir: Path, engine: Engine) -> None:
    path = write_pipeline(workdir, """
        pipeline: none
        steps:
          - op: read_parquet
            path: data/churn
            filter: "tenure > 1000"
          - op: write_parquet
            path: out
        """)
    record = run(path, engine_instance=engine)
    assert record["outputs"][0]["rows"] == 0
    out = pq.read_table(workdir / "out")
    assert out.num_rows == 0 and "tenure" in out.column_names


def test_the_boosted_example_pipeline_weighs_classes_and_keeps_its_constraint(
        workdir: Path) -> None:
    """conf/pipelines/churn_boosted_train.yaml (class weights, a monotonic constraint,
    features per tree, early stopping, the plan and region as categories) on the
    committed sample: it stops early, and its churn risk never falls as the monthly
    charges rise."""
    import pyarrow as pa

    from operators.arrays import get_namespace
    from pipelines.runner import run
    from pipelines.store import ModelStore

    (workdir / "data").symlink_to(ROOT / "data")
    record = run(ROOT / "conf" / "pipelines" / "churn_boosted_train.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    assert record["status"] == "succeeded"
    metrics = record["metrics"]["model"]
    assert metrics["stopped_early"] and metrics["rounds"] < 300
    store = ModelStore(str(workdir / "models"))
    trained = store.read_meta("churn_boosted", 1)["trained_with"]["model"]
    assert trained["op"] == "gradient_boosted_trees"
    assert trained["params"] == {  # what the pipeline file says, defaults given included
        "label": "churned", "n_trees": 300, "max_depth": 4, "learning_rate": 0.1,
        "class_weight": "balanced", "monotonic": {"monthly_charges": 1}, "tree_features": 0.8,
        "validation_fraction": 0.2, "early_stopping": True, "categorical": ["plan", "region"]}
    model = store.load("churn_boosted")
    assert model.chain.steps[-1].categories["plan"].to_pylist() == ["basic", "standard",
                                                                   "premium"]
    sample = pq.read_table(ROOT / "data" / "churn" / "ds=2026-11-28").slice(0, 40)
    charges = np.linspace(10.0, 150.0, 57)
    risks = []
    for row in sample.to_pylist():
        grid = pa.Table.from_pylist([{**row, "monthly_charges": c} for c in charges],
                                    schema=sample.schema)
        out = model.chain.transform(grid, get_namespace("numpy"))
        risks.append(np.asarray(out.column("probability")))
    assert (np.diff(np.array(risks), axis=1) >= 0).all()
    assert np.ptp(np.array(risks), axis=1).max() > 0.01  # the charges do move the risk


BAKED = """
    pipeline: baked
    params: {ds: "2026-11-28", l2: 0.001}
    steps:
      - op: read_parquet
        path: data/churn
      - op: derive
        columns:
          age_days: "days_between(signup_date, date '${ds}')"
      - op: logistic_regression
        label: churned
        features: [tenure, age_days]
        l2: ${l2}
      - op: save_model
        name: baked
"""


def test_a_param_a_saved_model_keeps_is_a_note(churn: Path, workdir: Path) -> None:
    """A derive the model keeps was made with the training run's ${ds}: scoring on another
    day applies that value. Said as the file plans (a note, not a problem); a fit's own
    params (l2) and the read's path are not kept that way and are not mentioned."""
    from conftest import sluice_in_process

    path = write_pipeline(workdir, BAKED)
    notes: list[str] = []
    run(path, notify=notes.append)
    assert notes == [
        f"{path}:7: step 'derive' (derive) is saved in the model 'baked' with columns made "
        "from ${ds} = '2026-11-28': scoring applies it with these values, whatever its own "
        "params (compute what should follow the run in a step before the model: read, "
        "filter, aggregate)"]
    done = sluice_in_process("validate", str(path), cwd=workdir)
    assert done.returncode == 0 and done.stderr == f"note: {notes[0]}\n"
    plain = write_pipeline(workdir, BAKED.replace("date '${ds}'", "date '2026-11-28'"),
                           "plain.yaml")
    quiet: list[str] = []
    run(plain, notify=quiet.append)
    assert quiet == []


def test_the_segments_example_pipeline_clusters_without_a_label(workdir: Path) -> None:
    """conf/pipelines/churn_segments.yaml (impute with an indicator, robust_scale, pca,
    kmeans of k tuned by cross-validated silhouette) on the committed sample: a
    label-free model whose segments, scored again, are the fit's own assignments, and
    whose saved chain repeats every step."""
    from operators.arrays import get_namespace
    from pipelines.runner import run
    from pipelines.store import ModelStore

    (workdir / "data").symlink_to(ROOT / "data")
    record = run(ROOT / "conf" / "pipelines" / "churn_segments.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    assert record["status"] == "succeeded"
    metrics = record["metrics"]["segments"]
    tuning = metrics["tuning"]
    assert list(tuning["candidates"]) == ["k=3", "k=4", "k=5", "k=6"]
    k = int(tuning["best"].removeprefix("k="))
    assert tuning["candidates"][tuning["best"]]["silhouette"] == max(
        c["silhouette"] for c in tuning["candidates"].values())
    assert metrics["converged"] and len(metrics["cluster_sizes"]) == k
    assert sum(metrics["cluster_sizes"]) == record["steps"]["customers"]["rows"]
    quality = record["metrics"]["quality"]  # evaluate_clusters of the same clusters
    assert list(quality["cluster_sizes"].values()) == metrics["cluster_sizes"]
    assert 0 < quality["silhouette"] <= 1 and quality["davies_bouldin"] > 0
    model = ModelStore(str(workdir / "models")).load("churn_segments")
    assert [s.name for s in model.chain.steps] == [
        "impute.fitted", "robust_scale.fitted", "pca.fitted", "kmeans.fitted"]
    rows = pq.read_table(ROOT / "data" / "churn" / "ds=2026-11-28")
    scored = model.chain.transform(rows, get_namespace("numpy"))
    sizes = np.bincount(scored.column("prediction").to_numpy(), minlength=k)
    assert sizes.tolist() == metrics["cluster_sizes"]


def test_default_features_that_look_wrong_are_a_note(churn: Path, workdir: Path) -> None:
    """A model step whose `features` is not given takes every numeric column but its label
    and weight: an id column or an earlier model's prediction among them is said as the
    file plans (a note), and `sluice plan` lists the features it takes."""
    from conftest import sluice_in_process

    text = """
        pipeline: defaults
        steps:
          - op: read_parquet
            path: data/churn
            columns: [customer_id, tenure, monthly_charges, total_charges, churned]
          - op: impute
            columns: [total_charges]
          - op: linear_regression
            label: monthly_charges
          - op: kmeans
            k: 3
          - op: save_model
            name: defaults
    """
    path = write_pipeline(workdir, text)
    notes: list[str] = []
    run(path, notify=notes.append)
    assert notes == [
        f"{path}:8: step 'linear_regression' (linear_regression) takes every numeric "
        "column but its label and weight as features (`features` is not given), among them "
        "customer_id (an identifier?): list `features`, or drop those columns first",
        f"{path}:10: step 'kmeans' (kmeans) takes every numeric column but its weight as "
        "features (`features` is not given), among them customer_id (an "
        "identifier?), prediction (an earlier model's output): list `features`, or drop "
        "those columns first"]
    done = sluice_in_process("plan", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert ("features (every numeric column but the label and weight): customer_id, tenure, "
            "total_charges, churned\n") in done.stdout
    named = write_pipeline(workdir, text.replace(
        "label: monthly_charges", "label: monthly_charges\n            features: [tenure]")
        .replace("k: 3", "k: 3\n            features: [tenure, total_charges]"), "named.yaml")
    quiet: list[str] = []
    run(named, notify=quiet.append)
    assert quiet == []
    # features given but refused (an empty list): its error, no note that it was not given
    from pipelines.runner import plan_file

    refused = plan_file(write_pipeline(workdir, text.replace("k: 3", "k: 3\n            "
                                                             "features: []"), "empty.yaml"))
    assert [p.message for p in refused.problems] == [
        "parameter 'features': List should have at least 1 item after validation, not 0 "
        "(got [])"]
    assert not any("kmeans" in n and "is not given" in n for n in refused.notices)


SAVE_SCORE_THEN_FAIL = """
    pipeline: train_score
    steps:
      - id: rows
        op: read_parquet
        path: data/churn
      - op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
      - op: save_model
        name: churn
        aliases: [production]
      - input: rows
        op: score
        model: churn
      - op: sluice_testops.FailingLate
        after: {{{fail}: 0.0}}
      - op: write_parquet
        path: out
        mode: overwrite
    """



def test_default_features_after_a_fit_that_decides_columns_are_noted_too(
        churn: Path, workdir: Path) -> None:
    """After one_hot (or a classifier), whose fit decides the columns it adds, the planned
    schema is a lower bound: an id in it is still among the default features, and said;
    `sluice plan` lists the features it knows and the fits that add the others."""
    from conftest import sluice_in_process

    path = write_pipeline(workdir, """
        pipeline: opened
        steps:
          - op: read_parquet
            path: data/churn
            columns: [customer_id, tenure, plan, churned]
          - op: one_hot
            columns: [plan]
          - op: logistic_regression
            label: churned
          - op: kmeans
            k: 3
          - op: save_model
            name: opened
    """)
    notes: list[str] = []
    record = run(path, notify=notes.append)
    assert notes == [
        f"{path}:8: step 'logistic_regression' (logistic_regression) takes every numeric "
        "column but its label and weight as features (`features` is not given), among them "
        "customer_id (an identifier?): list `features`, or drop those columns first",
        f"{path}:10: step 'kmeans' (kmeans) takes every numeric column but its weight as "
        "features (`features` is not given), among them customer_id (an identifier?), "
        "prediction (an earlier model's output), probability (an earlier model's output): "
        "list `features`, or drop those columns first"]
    # the note is true: the fitted model does take the id
    assert record["status"] == "succeeded"
    fitted = ModelStore().load("opened").chain.steps[1]
    assert fitted.features[:2] == ["customer_id", "tenure"]
    done = sluice_in_process("plan", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert ("features (every numeric column but the label and weight): customer_id, tenure, "
            "and those the fit of step 'one_hot' decides\n") in done.stdout
    assert ("features (every numeric column but the weight): customer_id, tenure, churned, "
            "prediction, probability, and those the fits of steps 'one_hot', "
            "'logistic_regression' decide\n") in done.stdout


def test_a_run_failing_after_save_model_leaves_no_new_version(churn: Path, workdir: Path,
                                                              engine: Engine) -> None:
    """The model version a run saves is published with its outputs: a run failing in a
    step after save_model (after a score step used the version, as saved in the run)
    leaves no new version, moves no alias, and its number is never given to another."""
    passing = write_pipeline(workdir, SAVE_SCORE_THEN_FAIL.format(fail=-1), "pass.yaml")
    failing = write_pipeline(workdir, SAVE_SCORE_THEN_FAIL.format(fail=7), "fail.yaml")
    store = ModelStore()
    assert run(passing, engine_instance=engine)["models"][0]["version"] == 1
    first = pq.read_table(workdir / "out")
    with pytest.raises(StepFailure, match="boom at 7"):
        run(failing, engine_instance=engine)
    assert store.versions("churn") == [1] and store.aliases("churn") == {"production": 1}
    assert store.load("churn").version == 1
    assert pq.read_table(workdir / "out").equals(first)
    records = [json.loads(p.read_text()) for p in (workdir / "runs").glob("*/*.json")]
    assert [r["models"] for r in records if r["status"] == "failed"] == [[]]
    record = run(passing, engine_instance=engine)
    assert record["models"] == [{"step": "save_model", "name": "churn", "version": 3,
                                 "path": store.path_of(store.load("churn@3")),
                                 "aliases": ["production"]}]
    assert store.versions("churn") == [1, 3] and store.aliases("churn") == {"production": 3}


EXPRESSIONS = """
    pipeline: expressions
    steps:
      - op: read_parquet
        path: data/churn
      - op: derive
        columns:
          months: "tenure + 1"
          code: "{derive}"
      - op: filter
        where: "{where}"
      - op: aggregate
        by: [region]
        columns:
          n: "count(*)"
          total: "{total}"
      - op: write_parquet
        path: out/expressions
    """
FINE = {"derive": "tenure * 2", "where": "tenure >= 0", "total": "sum(tenure)"}
FAILING = "cast(plan as int64)"  # a plan is no int64: fails on the rows, not as it plans


@pytest.mark.parametrize(("param", "line", "said"), [
    ("derive", 8, "step 'derive', partition "),
    ("where", 10, "step 'filter', partition "),
    ("total", 15, "step 'aggregate', partition "),
])
def test_an_expression_failing_on_the_rows_is_at_its_line(
        churn: Path, workdir: Path, engine: Engine, param: str, line: int, said: str) -> None:
    """A derive column's, a filter's `where` or an aggregate column's expression that
    fails on a partition's values is at the line of that expression (the entry's, the
    key's), not the step's, on every engine."""
    given = {**FINE, param: f"{FAILING} > 1" if param == "where" else
             f"sum({FAILING})" if param == "total" else FAILING}
    path = write_pipeline(workdir, EXPRESSIONS.format(**given))
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=engine)
    assert str(info.value).startswith(f"{path}:{line}: {said}"), str(info.value)
    assert "as a scalar of type int64" in str(info.value) and not (workdir / "out").exists()


@pytest.mark.parametrize(("param", "line", "said"), [
    ("derive", 8, "step 'derive' (derive): derive column 'code': column 'nosuch' not in "
                  "the input"),
    ("where", 10, "step 'filter' (filter): column 'nosuch' not in the input"),
])
def test_a_column_an_expression_lacks_is_at_its_line(churn: Path, workdir: Path, param: str,
                                                    line: int, said: str) -> None:
    """As the pipeline plans: a derive column or a `where` that reads a column the input
    lacks is at that expression's line."""
    path = write_pipeline(workdir, EXPRESSIONS.format(**{**FINE, param: "nosuch + 1 > 0"}))
    with pytest.raises(ValidationFailed) as info:
        run(path)
    assert [str(p).split(" (input has")[0] for p in info.value.problems] == [
        f"{path}:{line}: {said}"]


def test_a_label_a_derive_left_null_points_at_the_derive(churn: Path, workdir: Path,
                                                         engine: Engine) -> None:
    """A label the pipeline derives, null for some rows: the hint names the derive column
    that made it (and the filter that keeps the labelled rows after it), not a read
    filter."""
    path = write_pipeline(workdir, """
        pipeline: derived_label
        steps:
          - op: read_parquet
            path: data/churn
          - op: derive
            columns:
              months: "tenure + 1"
              stayed: "if(tenure > 10, churned, cast(null as int64))"
          - op: logistic_regression
            label: stayed
            features: [months]
        """)
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=engine)
    text = str(info.value)
    assert text.startswith(f"{path}:9: step 'logistic_regression', partition "), text
    assert "label column 'stayed' has " in text and "read_parquet filter" not in text
    assert (f"(step 'derive' (derive, {path}:8) makes it: `if(tenure > 10, churned, "
            "cast(null as int64))` is not a value for those rows; give it one there") in text
    assert text.endswith('(op: filter, where: "stayed is not null"))'), text


def test_a_fit_that_does_not_converge_is_a_warning_of_the_run(churn: Path,
                                                              workdir: Path) -> None:
    """A fit's ConvergenceWarning is the run's: one `warning:` line at the step's line,
    counted in the status and kept in the record, not Python's warning with sluice's
    source line (which a scheduled job's log showed, and the status did not count)."""
    path = write_pipeline(workdir, """
        pipeline: unconverged
        steps:
          - op: read_parquet
            path: data/churn
            columns: [tenure, monthly_charges, churned]
          - id: model
            op: logistic_regression
            label: churned
            max_iter: 1
    """)
    done = sluice_in_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "ConvergenceWarning" not in done.stderr, done.stderr
    (warned,) = done.stderr.splitlines()
    assert warned.startswith(f"warning: {path}:6: step 'model' (logistic_regression): "
                             "logistic_regression did not converge: max_iter=1 reached"), warned
    assert ": succeeded, 1 warning in " in done.stdout.splitlines()[0]
    (record,) = (workdir / "runs" / "unconverged").glob("*.json")
    assert json.loads(record.read_text())["warnings"] == [warned.removeprefix("warning: ")]


SHAPED = """
    pipeline: shaped
    steps:
      - id: events
        op: read_parquet
        path: data/churn
        partition_mb: 0.02
      - id: plus
        op: derive
        columns: {tenure: "tenure + 1"}
      - id: spread
        op: repartition
        partitions: 16
      - id: kept
        op: filter
        where: "monthly_charges > 50"
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
      - id: save
        op: save_model
        name: shaped
      - id: spare
        op: derive
        input: kept
        columns: {double: "monthly_charges * 2"}
    """


@pytest.mark.parametrize("engine_name", ["local", "dask"])
def test_each_step_s_rows_are_the_rows_it_puts_out_whatever_passes_it_makes(
        churn: Path, workdir: Path, shared_engines: dict[str, Any], engine_name: str
        ) -> None:
    """A step's own passes over rows are its work, not its rows: save_model profiles the
    model's rows at two points (tenure, which the model's derive rewrites, on the read's
    9 partitions; monthly_charges on the filter's 16) and its rows are still its input's,
    the rows the model trained on (they were the last pass's, or a mix of the two
    passes' partitions); a transform no step reads is counted by a pass of its own, and
    its rows and partitions are those it put out."""
    record = run(write_pipeline(workdir, SHAPED), engine_instance=started(shared_engines,
                                                                         engine_name))
    steps = record["steps"]
    read, kept, save, spare = (steps[s] for s in ("events", "kept", "save", "spare"))
    trained = record["metrics"]["model"]["training_rows"]
    profile = ModelStore().load("shaped").meta["profile"]
    assert (read["rows"], read["partitions"]) == (5000, 9)
    assert (kept["rows_in"], kept["partitions"]) == (5000, 16)
    assert profile["rows"] == trained == kept["rows"] == steps["model"]["rows"] < 5000
    assert profile["columns"]["tenure"]["rows"] == 5000  # a pass over the read's rows
    assert save["rows"] == trained and "partitions" not in save and "device" not in save
    assert save["compute_seconds"] > 0  # the profile's passes: the save's work
    assert (spare["rows"], spare["rows_in"], spare["partitions"]) == (trained, trained, 16)
