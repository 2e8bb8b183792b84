"""``sluice score MODEL INPUT OUTPUT``: the read -> score -> write pipeline without a file,
on every engine, the same rows as load_model's; errors name the step, not a line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import SluiceError
from pipelines.datagen import generate
from pipelines.runner import ValidationFailed, run, scoring_pipeline
from pipelines.serving import load_model
from pipelines.store import ModelStore

TRAIN = """
    pipeline: train
    steps:
      - op: read_parquet
        path: {data}
        columns: [tenure, plan, region, monthly_charges, total_charges, churned]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: logistic_regression
        label: churned
        l2: 0.01
      - op: save_model
        name: churn
        aliases: [production]
"""


@pytest.fixture
def trained(workdir: Path) -> Path:
    rows = workdir / "rows"
    generate("churn", 3000, rows, files=3, seed=5)  # churn_table(3000, seed=5) in 3 files
    run(write_pipeline(workdir, TRAIN.format(data=rows), "train.yaml"))
    return rows


def _expected(rows: Path) -> dict[int, float]:
    table = pq.read_table(rows)
    scored = load_model("churn@production").score(table)
    return dict(zip(table.column("customer_id").to_pylist(),
                    scored.column("probability").to_pylist()))


def test_scoring_without_a_file_on_every_engine(workdir: Path, trained: Path,
                                                engine: Any) -> None:
    text = scoring_pipeline("churn@production", str(trained), str(workdir / "out"),
                            where="tenure >= 12", keep=["customer_id"])
    record = run("sluice score churn@production", text=text, engine_instance=engine)
    assert record["pipeline"] == "score_churn"
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["customer_id", "prediction", "probability"]
    expected = _expected(trained)
    tenure = dict(zip(pq.read_table(trained).column("customer_id").to_pylist(),
                      pq.read_table(trained).column("tenure").to_pylist()))
    assert sorted(out.column("customer_id").to_pylist()) == sorted(
        k for k, t in tenure.items() if t >= 12)
    got = dict(zip(out.column("customer_id").to_pylist(),
                   out.column("probability").to_pylist()))
    np.testing.assert_allclose([got[k] for k in sorted(got)],
                               [expected[k] for k in sorted(got)], rtol=1e-12)


def test_the_score_command(workdir: Path, trained: Path) -> None:
    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return sluice_in_process("score", *args, cwd=workdir)

    done = sluice("churn@production", str(trained), "scores")
    assert done.returncode == 0, done.stderr
    assert "run " in done.stdout and "of 'score_churn' on local: succeeded" in done.stdout
    assert "step 'score' used model churn@1" in done.stdout
    out = pq.read_table(workdir / "scores")
    assert out.column_names == [*pq.read_table(trained).column_names, "prediction",
                                "probability"]
    expected = _expected(trained)
    got = dict(zip(out.column("customer_id").to_pylist(),
                   out.column("probability").to_pylist()))
    assert got == pytest.approx(expected, rel=1e-12)

    done = sluice("churn@production", str(trained), "scores")  # exists: refused
    assert done.returncode == 1
    assert done.stderr.startswith("error: sluice score churn@production: step 'output' "
                                  "(write_parquet): output 'scores' already exists")
    assert "(set --mode overwrite to replace it" in done.stderr
    # the history keeps the failure in the command's words too
    records = [json.loads(p.read_text()) for p in (workdir / "runs" / "score_churn").glob(
        "*.json")]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["error"] == done.stderr.strip().removeprefix("error: ")
    done = sluice("churn@production", str(trained), "scores", "--mode", "overwrite",
                  "--contributions", "--keep", "customer_id")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(workdir / "scores").column_names == [
        "customer_id", "prediction", "probability", "contributions", "contribution_base"]

    done = sluice("churn", str(trained), "other", "--filter", "tenur > 3")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: sluice score churn: step 'input' (read_parquet): "
                                  "filter: unknown column 'tenur'; did you mean 'tenure'?")
    done = sluice("churn@staging", str(trained), "other")
    assert done.returncode == 1 and "has no alias 'staging'" in done.stderr
    assert not (workdir / "other").exists()
    # a model name that names nothing: a typo, said, and no run in the history
    for ref in ("churnn", "churnn@production"):
        done = sluice(ref, str(trained), "other")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(
            f"error: sluice score {ref}: step 'score' (score): no model 'churnn' in "
            f"{workdir / 'models'}; did you mean 'churn'? (train and `save_model` it first, "
            "or pass --models DIR)"), done.stderr
    assert not (workdir / "runs" / "score_churnn").exists()
    done = sluice(str(trained), "churn", "other")  # the input before the model
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"MODEL comes first, then INPUT: '{trained}' is a path and 'churn' is none "
            f"(did you mean `sluice score churn {trained} other`?)") in done.stderr
    assert not (workdir / "other").exists()


def test_scoring_into_a_partitioned_output_day_by_day(workdir: Path, trained: Path) -> None:
    """`--mode overwrite_partitions --partition-by`: a re-scored region replaces that
    region's scores only; options named as options in the errors."""
    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return sluice_in_process("score", "churn", *args, cwd=workdir)

    done = sluice(str(trained), "scores", "--partition-by", "region")
    assert done.returncode == 0, done.stderr
    before = pq.read_table(workdir / "scores")
    done = sluice(str(trained), "scores", "--filter", "region == 'north'", "--mode",
                  "overwrite_partitions", "--partition-by", "region")
    assert done.returncode == 0, done.stderr
    assert "1 partition, 1 of them replaced" in done.stdout
    after = pq.read_table(workdir / "scores")
    assert sorted(after.column("customer_id").to_pylist()) == sorted(
        before.column("customer_id").to_pylist())
    latest = json.loads((workdir / "scores" / "_SUCCESS").read_text())["run_id"]
    assert {p.parent.name for p in (workdir / "scores").rglob(f"part-{latest}-*")} == {
        "region=north"}
    assert len({p.name for p in (workdir / "scores").rglob("part-*")}) > 1
    done = sluice(str(trained), "other", "--mode", "overwrite_partitions")
    assert done.returncode == 1 and "(add --partition-by COLUMNS, or use --mode overwrite " \
        "to replace the whole output)" in done.stderr
    done = sluice(str(trained), "scores", "--mode", "append")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "partitioned by region, this step writes by no column" in done.stderr
    assert "(set --partition-by region as the output has it" in done.stderr


def test_a_model_never_needs_a_column_it_only_drops_or_selects(churn: Path, workdir: Path) -> None:
    """A `drop` before the model (an id, a date the model does not use) is saved as a
    drop of what is there: scoring rows without those columns, or with them of another
    type, gives the same scores; in a pipeline `drop` of a missing column is still an
    error (a typo), unless `missing: ignore`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pytest

    from pipelines.runner import ValidationFailed

    run(write_pipeline(workdir, """
        pipeline: dropped
        steps:
          - op: read_parquet
            path: data/churn
          - op: drop
            columns: [customer_id, signup_date, region]
          - op: impute
            columns: [total_charges]
          - op: one_hot
            columns: [plan]
          - op: logistic_regression
            label: churned
          - op: save_model
            name: dropped
        """, "dropped.yaml"))
    model = load_model("dropped", str(workdir / "models"))
    assert not {"customer_id", "signup_date", "region"} & set(model.model.required)
    rows = pq.read_table(workdir / "data" / "churn")
    full = model.score(rows)
    bare = model.score(rows.drop_columns(["customer_id", "signup_date", "region"]))
    assert bare.column("probability").equals(full.column("probability"))
    retyped = rows.set_column(rows.schema.get_field_index("signup_date"), "signup_date",
                              pc.cast(rows.column("signup_date"), "string"))
    assert model.score(retyped).column("probability").equals(full.column("probability"))
    one = model.score([{"tenure": 5, "plan": "basic", "monthly_charges": 70.0,
                        "total_charges": 350.0}])  # as `sluice serve` takes a row
    assert one[0]["prediction"] in (0, 1)

    # a select of the features and the label before the model: scoring needs no label
    run(write_pipeline(workdir, """
        pipeline: selected
        steps:
          - op: read_parquet
            path: data/churn
          - op: select
            columns: [tenure, monthly_charges, churned]
          - op: logistic_regression
            label: churned
          - op: save_model
            name: selected
        """, "selected.yaml"))
    selected = load_model("selected", str(workdir / "models"))
    assert selected.model.required == ["tenure", "monthly_charges"]
    unlabelled = rows.select(["tenure", "monthly_charges"])
    assert selected.score(unlabelled).column("probability").equals(
        selected.score(rows).column("probability"))

    # a label derived in the model's chain: scoring rows have nothing to derive it from
    run(write_pipeline(workdir, """
        pipeline: derived
        steps:
          - op: read_parquet
            path: data/churn
          - op: derive
            columns:
              left: "churned == 1"
              long: "tenure >= 24"
          - op: logistic_regression
            label: left
            features: [tenure, monthly_charges, long]
          - op: save_model
            name: derived
        """, "derived.yaml"))
    derived = load_model("derived", str(workdir / "models"))
    assert derived.model.required == ["tenure", "monthly_charges"]
    (derive,) = [s for s in derived.model.chain.every_step() if s.name == "derive"]
    assert list(derive.params.columns) == ["long"]
    assert derived.score(rows.drop_columns(["churned"])).column("probability").equals(
        derived.score(rows).column("probability"))

    typo = write_pipeline(workdir, """
        pipeline: typo
        steps:
          - op: read_parquet
            path: data/churn
          - op: drop
            columns: [customer_ud]
          - op: write_parquet
            path: out/typo
        """, "typo.yaml")
    with pytest.raises(ValidationFailed) as refused:
        run(typo)
    assert "column 'customer_ud' not in the input" in str(refused.value.problems[0])
    run(write_pipeline(workdir, typo.read_text().replace(
        "columns: [customer_ud]", "columns: [customer_ud]\n    missing: ignore"), "ok.yaml"))
    assert pq.read_schema(next((workdir / "out" / "typo").glob("*.parquet"))).names == \
        rows.schema.names


@pytest.mark.parametrize(("option", "given", "listed"), [
    ("--keep", "customer_id tenure", "customer_id,tenure"),
    ("--partition-by", "plan  region", "plan,region"),
])
def test_a_column_list_written_with_spaces_says_it_is_comma_separated(
        workdir: Path, trained: Path, option: str, given: str, listed: str) -> None:
    """`--keep "a b"` names one column 'a b': the error says the list is comma
    separated (and how), not "did you mean 'a'?"."""
    done = sluice_in_process("score", "churn", str(trained), "out", option, given,
                             cwd=workdir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (f"column '{given}' not in the input: {option} is comma separated, as in "
            f"{option} {listed} (input has: ") in done.stderr, done.stderr
    assert "did you mean" not in done.stderr and not (workdir / "out").exists()


@pytest.mark.parametrize(("column", "to", "trained_as"), [
    ("tenure", pa.string(), "int64"),   # refused by the model's scaler: needs numbers
    ("plan", pa.int64(), "string"),     # refused by its one_hot: fitted on strings
])
def test_a_column_of_another_type_than_in_training_says_to_cast_it_back(
        workdir: Path, trained: Path, column: str, to: pa.DataType, trained_as: str) -> None:
    """Not "leave 'tenure' out" (a pipeline's hint: a model's feature cannot be left out),
    but the type the model was trained on and the cast that restores it."""
    table = pq.read_table(trained)
    at = table.schema.get_field_index(column)
    values = pa.array(range(table.num_rows)) if to == pa.int64() else table.column(at)
    pq.write_table(table.set_column(at, column, values.cast(to)), workdir / "retyped.parquet")
    text = scoring_pipeline("churn", str(workdir / "retyped.parquet"), str(workdir / "out"))
    with pytest.raises(ValidationFailed) as info:
        run("sluice score churn", text=text)
    (problem,) = info.value.problems
    assert (f"(model 'churn' was trained with '{column}' as {trained_as}, not {to}: cast "
            f"it back before scoring (`op: cast`, `columns: {{{column}: {trained_as}}}`))"
            ) in str(problem)
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("to", ["struct", "list"])
def test_a_column_now_nested_says_which_rows_to_score_not_a_cast(
        workdir: Path, trained: Path, to: str) -> None:
    """A feature that became a struct or a list: no cast turns it back into the int64
    the model was trained on, so the hint is not "cast it back" but the rows to score."""
    table = pq.read_table(trained)
    at = table.schema.get_field_index("tenure")
    tenure = table.column(at).combine_chunks()
    nested = (pa.StructArray.from_arrays([tenure], ["months"]) if to == "struct" else
              pa.ListArray.from_arrays(pa.array(range(len(tenure) + 1), pa.int32()), tenure))
    pq.write_table(table.set_column(at, "tenure", nested), workdir / "retyped.parquet")
    read_as = pq.read_schema(workdir / "retyped.parquet").field("tenure").type
    text = scoring_pipeline("churn", str(workdir / "retyped.parquet"), str(workdir / "out"))
    with pytest.raises(ValidationFailed) as info:
        run("sluice score churn", text=text)
    (problem,) = info.value.problems
    assert (f"(model 'churn' was trained with 'tenure' as int64, not {read_as}: no cast "
            "turns 'tenure' back; score rows whose 'tenure' holds the numbers the model "
            "was trained on)") in str(problem), str(problem)
    assert "op: cast" not in str(problem) and not (workdir / "out").exists()


def test_nulls_in_a_feature_as_it_scores_say_what_fixes_scoring(workdir: Path,
                                                                  trained: Path) -> None:
    """A feature with nulls the model never saw: not "impute it (op: impute)", which
    `sluice score` has no step for, but the filter to score without those rows (the
    command's own --filter) or the impute to train with; then that filter scores."""
    table = pq.read_table(trained)
    at = table.schema.get_field_index("monthly_charges")
    holes = pa.array([None if i % 3 == 0 else v for i, v in
                      enumerate(table.column(at).to_pylist())], pa.float64())
    pq.write_table(table.set_column(at, "monthly_charges", holes), workdir / "holes.parquet")
    done = sluice_in_process("score", "churn", "holes.parquet", "out", cwd=workdir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (f"feature column 'monthly_charges' has {holes.null_count:,} null values (the "
            "model was trained without such values: leave those rows out before it scores "
            "(op: filter, read_parquet's filter, or `sluice score --filter 'COLUMN is not "
            "null'`), or train it again with an impute of the column before the model step "
            "(op: impute; the saved model then fills them as it scores))") in done.stderr
    filtered = sluice_in_process("score", "churn", "holes.parquet", "out", "--filter",
                                 "monthly_charges is not null", cwd=workdir)
    assert filtered.returncode == 0, filtered.stderr
    assert pq.read_table(workdir / "out").num_rows == len(holes) - holes.null_count


@pytest.mark.parametrize(("ref", "message"), [
    ("churn@7", "model 'churn' has no version 7 (versions: 1)"),
    ("churn@staging", "model 'churn' has no alias 'staging'"),
    ("churnn", "no model 'churnn'"),
])
def test_a_model_reference_that_names_nothing_is_at_the_model_line(
        workdir: Path, trained: Path, ref: str, message: str) -> None:
    """The line of `model:`, as for an unknown name: not the step's first line."""
    from pipelines.runner import plan_file

    path = write_pipeline(workdir, f"""
        pipeline: scored
        steps:
          - op: read_parquet
            path: {trained}
          - op: score
            model: {ref}
        """)
    (problem,) = plan_file(path).problems
    assert problem.line == 6 and problem.message.startswith(message), problem


def test_a_derived_label_another_step_reads_is_saved(churn: Path, workdir: Path) -> None:
    """A label (or weight) derived in the chain that a later step of the saved model
    reads (another model's feature) stays in the saved derive: the run saves its model,
    and scoring derives the column as training did. A scaler of the label or an impute
    of the weight is saved without it (below), so the derive is not saved either."""
    rows = pq.read_table(churn)
    chains = {
        "scaled": """
          - op: derive
            columns: {y: "monthly_charges * 2.0"}
          - op: standard_scale
            columns: [tenure, y]
          - op: linear_regression
            label: y
            features: [tenure]""",
        "imputed": """
          - op: derive
            columns: {w: "1.0 + tenure / 100"}
          - op: impute
            columns: [w]
          - op: logistic_regression
            label: churned
            weight: w
            features: [tenure, monthly_charges]""",
        "featured": """
          - op: derive
            columns: {y: "churned == 1"}
          - op: logistic_regression
            label: y
            features: [tenure, monthly_charges]
          - op: kmeans
            k: 2
            features: [tenure, y]""",
    }
    for name, chain in chains.items():
        text = f"pipeline: {name}\nsteps:\n  - op: read_parquet\n    path: {churn}"
        text += chain.replace("\n          ", "\n  ")
        run(write_pipeline(workdir, text + f"\n  - op: save_model\n    name: {name}\n",
                           f"{name}.yaml"))
        model = load_model(name, str(workdir / "models"))
        derives = [s for s in model.model.chain.every_step() if s.name == "derive"]
        if name == "featured":
            (derive,) = derives
            assert len(derive.params.columns) == 1, name
            assert next(iter(derive.params.columns)) not in model.model.required, name
        else:
            assert not derives, name
            assert model.model.required == ["tenure"] if name == "scaled" else \
                ["tenure", "monthly_charges"], (name, model.model.required)
        assert model.score(rows).num_rows == rows.num_rows


def test_a_derived_label_a_select_keeps_is_not_saved(churn: Path, workdir: Path) -> None:
    """A select after the derive that keeps the label reads nothing in the saved model
    (it is saved lenient): the derive of the label is left out all the same."""
    run(write_pipeline(workdir, f"""
        pipeline: kept
        steps:
          - op: read_parquet
            path: {churn}
          - op: derive
            columns: {{left: "churned == 1"}}
          - op: select
            columns: [tenure, monthly_charges, left]
          - op: logistic_regression
            label: left
          - op: save_model
            name: kept
        """, "kept.yaml"))
    model = load_model("kept", str(workdir / "models"))
    assert model.model.required == ["tenure", "monthly_charges"]
    assert "derive" not in [s.name for s in model.model.chain.every_step()]


def test_a_renamed_label_is_not_asked_of_the_scoring_rows(churn: Path, workdir: Path) -> None:
    """rename {churned: y} then a model of label y: the saved model asked for 'churned'
    (the rename's source) to score, so new rows without the label were refused. The
    saved rename keeps the renames scoring needs (a feature's)."""
    rows = pq.read_table(churn)
    run(write_pipeline(workdir, f"""
        pipeline: renamed
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, churned]
          - op: rename
            columns: {{churned: y, tenure: months}}
          - op: logistic_regression
            label: y
          - op: save_model
            name: renamed
        """, "renamed.yaml"))
    model = load_model("renamed", str(workdir / "models"))
    assert model.model.required == ["tenure", "monthly_charges"]
    (rename,) = [s for s in model.model.chain.every_step() if s.name == "rename"]
    assert rename.params.columns == {"tenure": "months"}
    scored = model.score(rows.select(["tenure", "monthly_charges"]))
    assert scored.num_rows == rows.num_rows
    only_label = write_pipeline(workdir, f"""
        pipeline: renamed_label
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, churned]
          - op: rename
            columns: {{churned: y}}
          - op: logistic_regression
            label: y
          - op: save_model
            name: label_only
        """, "label_only.yaml")
    run(only_label)
    model = load_model("label_only", str(workdir / "models"))
    assert "rename" not in [s.name for s in model.model.chain.every_step()]
    assert model.model.required == ["tenure", "monthly_charges"]


def test_a_cast_label_is_not_asked_of_the_scoring_rows(churn: Path, workdir: Path) -> None:
    """cast {churned: bool, tenure: float64} then a model of label churned: the saved cast
    asked the scoring rows for the label; it keeps the feature's cast only."""
    rows = pq.read_table(churn)
    run(write_pipeline(workdir, f"""
        pipeline: cast_label
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, churned]
          - op: cast
            columns: {{churned: bool, tenure: float64}}
            invalid: "null"
          - op: logistic_regression
            label: churned
          - op: save_model
            name: cast_label
        """, "cast_label.yaml"))
    model = load_model("cast_label", str(workdir / "models"))
    assert model.model.required == ["tenure", "monthly_charges"]
    (cast,) = [s for s in model.model.chain.every_step() if s.name == "cast"]
    assert cast.params.columns == {"tenure": "float64"} and cast.params.invalid == "null"
    scored = model.score(rows.select(["tenure", "monthly_charges"]))
    assert scored.column("prediction").type == pa.bool_()


@pytest.mark.parametrize("chain", [
    """
          - op: standard_scale
            columns: [tenure, monthly_charges]
          - op: linear_regression
            label: monthly_charges
            features: [tenure]""",
    """
          - op: robust_scale
            columns: [monthly_charges, tenure]
          - op: linear_regression
            label: monthly_charges
            features: [tenure]""",
    """
          - op: impute
            columns: [total_charges, churned]
            strategy: most_frequent
          - op: logistic_regression
            label: churned
            features: [tenure, total_charges]""",
])
def test_a_label_scaled_or_imputed_is_not_asked_of_the_scoring_rows(
        churn: Path, workdir: Path, chain: str) -> None:
    """A scaler or impute of the label (with features beside it) saved the label's
    column too, so the saved model asked the scoring rows for the label; its view keeps
    the features' columns and statistics only, and scores as the whole step did."""
    rows = pq.read_table(churn)
    text = f"pipeline: scaled\nsteps:\n  - op: read_parquet\n    path: {churn}"
    text += chain.replace("\n          ", "\n  ") + "\n  - op: save_model\n    name: s\n"
    run(write_pipeline(workdir, text, "scaled.yaml"))
    model = load_model("s", str(workdir / "models"))
    label = "churned" if "churned" in chain else "monthly_charges"
    assert label not in model.model.required
    features = [c for c in model.model.required]
    full = model.score(rows)
    scored = model.score(rows.select(features))
    assert scored.column("prediction").equals(full.column("prediction"))


def test_a_threshold_cuts_a_binary_classifiers_probability(churn: Path, workdir: Path) -> None:
    """score's threshold (and sluice score --threshold): the second class where the
    probability is at least it; a model of numbers or of three classes is refused as the
    pipeline plans."""
    run(write_pipeline(workdir, f"""
        pipeline: cut
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, churned, plan]
          - op: logistic_regression
            label: churned
            features: [tenure, monthly_charges]
          - op: save_model
            name: binary
        """, "binary.yaml"))
    done = sluice_in_process("score", "binary", str(churn), "cut", "--threshold", "0.3",
                             "--keep", "customer_id", cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "cut")
    proba = out.column("probability").to_numpy()
    assert out.column("prediction").to_pylist() == (proba >= 0.3).astype(int).tolist()
    assert (proba >= 0.3).sum() > 0 and (proba[proba >= 0.3] < 0.5).any()
    run(write_pipeline(workdir, f"""
        pipeline: plans
        steps:
          - op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges, plan]
          - op: logistic_regression
            label: plan
          - op: save_model
            name: plans
        """, "plans.yaml"))
    refused = write_pipeline(workdir, f"""
        pipeline: scored
        steps:
          - op: read_parquet
            path: {churn}
          - op: score
            model: plans
            threshold: 0.3
        """, "refused.yaml")
    assert ("threshold cuts a binary classifier's probability, and model 'plans' has 3 "
            "classes") in refusal(refused)


def refusal(path: Path) -> str:
    """The first problem of a run refused as it plans."""
    with pytest.raises(ValidationFailed) as info:
        run(path)
    return str(info.value.problems[0])


def test_a_threshold_on_a_model_of_numbers_the_run_trains_is_refused_as_it_plans(
        churn: Path, workdir: Path) -> None:
    """A model the same run saves, then scores with a threshold: one of numbers is refused
    as the pipeline plans (it was found after the fit and the save, the run failed
    there); a classifier's classes are known only once fitted, and the run says it then."""
    path = write_pipeline(workdir, f"""
        pipeline: holdout
        steps:
          - id: rows
            op: read_parquet
            path: {churn}
            columns: [tenure, monthly_charges]
          - op: linear_regression
            label: monthly_charges
          - op: save_model
            name: charges
          - op: score
            input: rows
            model: charges
            threshold: 0.3
        """)
    assert ("threshold cuts a binary classifier's probability, and model 'charges' "
            "predicts numbers") in refusal(path)
    assert not (workdir / "models" / "charges").exists()


def test_a_threshold_on_a_model_of_more_classes_the_run_trains_is_refused_as_known(
        churn: Path, workdir: Path) -> None:
    """A classifier the same run trains, then scores with a threshold: refused as the
    pipeline plans where the plan knows it has more than two classes (its class_weight
    names three); else once fitted, saying why the plan could not know, and the run
    saves no version."""
    text = f"""
        pipeline: regions
        steps:
          - id: rows
            op: read_parquet
            path: {churn}
          - op: logistic_regression
            label: region
            features: [tenure, monthly_charges]
            class_weight: {{north: 2, south: 1, east: 1}}
          - op: save_model
            name: regions
          - op: score
            input: rows
            model: regions
            threshold: 0.3
        """
    path = write_pipeline(workdir, text)
    assert ("threshold cuts a binary classifier's probability, and model 'regions' is "
            "trained on at least 3 classes (its class_weight names north, south, east)"
            ) in refusal(path)
    assert not (workdir / "models" / "regions").exists()
    unknown = write_pipeline(workdir, text.replace(
        "            class_weight: {north: 2, south: 1, east: 1}\n", ""), "unknown.yaml")
    with pytest.raises(SluiceError) as failed:
        run(unknown)
    assert ("threshold cuts a binary classifier's probability, and model 'regions' has 5 "
            "classes (this run trains it: label 'region' has them, which are known only "
            "once fitted, not as the pipeline plans)") in str(failed.value)
    assert ModelStore().versions("regions") == []
