"""Pipeline files: parsing, params, and `validate` reporting every problem in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_pipeline

from pipelines.runner import plan_file
from pipelines.spec import parse


def problems(path: Path, **overrides: str) -> list[str]:
    return [str(p) for p in plan_file(path, overrides).problems]


def test_valid_pipeline_plans_with_schemas(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: copy
        params: {cols: 2}
        steps:
          - id: events
            op: read_parquet
            path: data/churn
            columns: [tenure, plan]
            filter: "tenure >= 0 and plan != 'test'"
          - op: write_parquet
            path: out
        """)
    plan = plan_file(path)
    assert plan.ok, plan.problems
    assert [s.id for s in plan.steps] == ["events", "write_parquet"]
    assert plan.steps[0].schema.names == ["tenure", "plan"]
    assert plan.steps[1].input == "events"


def test_every_problem_in_one_pass_with_file_line_and_step(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: bad
        params: {ds: "2026-11-28"}
        steps:
          - id: events
            op: read_parquet
            path: data/churn
            columns: [tenur, plan]
            colums: [x]
          - op: write_parqet
            path: out
          - id: w
            op: write_parquet
            input: evnts
            path: ${dss}
            mode: sometimes
          - id: a
            op: write_parquet
            input: b
            path: x
          - id: b
            op: write_parquet
            input: a
            path: y
          - id: c
            op: write_parquet
        """)
    found = problems(path)
    f = str(path)
    expected = [
        (f"{f}:7: step 'events' (read_parquet): column 'tenur'", "did you mean 'tenure'?"),
        (f"{f}:8: step 'events' (read_parquet): unknown parameter 'colums'",
         "did you mean 'columns'?"),
        (f"{f}:9: step 'write_parqet' (write_parqet): unknown operator 'write_parqet'",
         "did you mean 'write_parquet'?"),
        (f"{f}:13: step 'w' (write_parquet): `input: evnts` names no step",
         "did you mean 'events'?"),
        (f"{f}:14: step 'w' (write_parquet): unknown param '${{dss}}'", "did you mean 'ds'?"),
        (f"{f}:15: step 'w' (write_parquet): parameter 'mode'", "'sometimes'"),
        (f"{f}:18: step 'a' (write_parquet): steps form a cycle: a -> b -> a", ""),
        (f"{f}:24: step 'c' (write_parquet): missing required parameter 'path'", ""),
    ]
    assert len(found) == len(expected), "\n".join(found)
    for (start, contains), got in zip(expected, found):
        assert got.startswith(start), got
        assert contains in got, got


def test_mistakes_down_a_chain_are_all_said_without_their_follow_ons(churn: Path,
                                                                     workdir: Path) -> None:
    """A problem does not hide the next: each step goes on with the schema that is known
    (a read's of the columns there are; a filter's input's; a fit's input's; an impute's
    of the columns it has), and a column an earlier problem left out ('plan', for the
    read's 'plann') is no problem of a later step's."""
    path = write_pipeline(workdir, """
        pipeline: chain
        steps:
          - id: events
            op: read_parquet
            path: data/churn
            columns: [tenure, plann, region, monthly_charges, total_charges, churned]
            filter: "tenur >= 0"
          - op: filter
            where: "monthly_charge > 0"
          - op: impute
            columns: [total_charge, monthly_charges]
          - op: one_hot
            columns: [plan, regoin]
          - op: standard_scale
            columns: [tenure, monthly_charges, total_charge]
          - op: logistic_regression
            label: churnd
          - op: save_model
            name: churn
        """)
    found = [(p.line, p.step, p.message) for p in plan_file(path).problems]
    expected = [
        (6, "events", "column 'plann' not in the input; did you mean 'plan'?"),
        (7, "events", "filter: unknown column 'tenur'; did you mean 'tenure'?"),
        (9, "filter", "column 'monthly_charge' not in the input; did you mean "
                       "'monthly_charges'?"),
        (11, "impute", "column 'total_charge' not in the input; did you mean "
                       "'total_charges'?"),
        (13, "one_hot", "column 'regoin' not in the input; did you mean 'region'?"),
        (17, "logistic_regression", "column 'churnd' not in the input; did you mean "
                                    "'churned'?"),
    ]
    assert len(found) == len(expected), "\n".join(map(str, found))
    for (line, step, start), got in zip(expected, found, strict=True):
        assert got[:2] == (line, step) and got[2].startswith(start), got


def test_a_step_of_none_of_the_columns_it_names_does_not_hide_the_next(churn: Path,
                                                                        workdir: Path) -> None:
    """An in-place step (a scaler, an impute) whose every column is missing passes its
    input's schema on, so the later steps are checked too; a later step naming one of
    those columns has no problem of its own (said once, where it was named first)."""
    path = write_pipeline(workdir, """
        pipeline: chain
        steps:
          - op: read_parquet
            path: data/churn
          - op: standard_scale
            columns: [tenur, monthly_charge]
          - op: impute
            columns: [total_charge, tenur]
          - op: logistic_regression
            label: churnd
        """)
    found = [(p.line, p.step, p.message) for p in plan_file(path).problems]
    expected = [
        (6, "standard_scale", "columns 'tenur', 'monthly_charge' not in the input"),
        (8, "impute", "column 'total_charge' not in the input; did you mean "
                      "'total_charges'?"),
        (10, "logistic_regression", "column 'churnd' not in the input; did you mean "
                                    "'churned'?"),
    ]
    assert len(found) == len(expected), "\n".join(map(str, found))
    for (line, step, start), got in zip(expected, found, strict=True):
        assert got[:2] == (line, step) and got[2].startswith(start), got


def test_params_substitute_and_override(churn: Path, workdir: Path) -> None:
    text = """
        pipeline: p
        params: {folder: churn, rows: 3, flag: false}
        steps:
          - op: read_parquet
            path: data/${folder}
            partition_mb: ${rows}
        """
    path = write_pipeline(workdir, text)
    plan = plan_file(path)
    assert plan.ok
    read = plan.steps[0].op
    assert read.params.path == "data/churn" and read.params.partition_mb == 3
    plan = plan_file(path, {"rows": "5", "flag": "true"})
    assert plan.ok and plan.steps[0].op.params.partition_mb == 5
    assert plan.spec.params == {"folder": "churn", "rows": 5, "flag": True}
    bad = problems(path, rows="many", color="red")
    assert any("--param rows: expected a whole number, as the default 3 is, got 'many'" in p
               for p in bad), bad
    assert any("--param rows: expected a whole number, as the default 3 is, got '2.5'" in p
               for p in problems(path, rows="2.5")), bad
    assert any("--param color: the pipeline has no param 'color'" in p for p in bad), bad


def test_an_empty_param_value_for_a_default_that_is_not_is_refused(churn: Path,
                                                                   workdir: Path) -> None:
    """`--param folder=` (a shell variable that was not set) is no value for a param
    whose default has one; a param whose default is empty takes it."""
    path = write_pipeline(workdir, """
        pipeline: p
        params: {folder: churn, rows: 3, suffix: ""}
        steps:
          - op: read_parquet
            path: data/${folder}${suffix}
            partition_mb: ${rows}
        """)
    for name, default in (("folder", "'churn'"), ("rows", "3")):
        for empty in ("", "  "):
            said = [p for p in problems(path, **{name: empty}) if f"--param {name}" in p]
            assert said == [
                f"{path}:2: --param {name}: the value is empty, and the param's default is "
                f"{default}: an unset shell variable (--param NAME=$VAR) reads so; pass a "
                "value, or make the default empty in the file to run with none"], said
    plan = plan_file(path, {"suffix": ""})
    assert plan.ok and plan.spec.params["suffix"] == ""


def test_a_date_param_yaml_reads_as_a_date_is_the_text_written(churn: Path,
                                                               workdir: Path) -> None:
    """`ds: 2026-11-28` unquoted (as a scheduler's ds is written) is a date to YAML 1.1:
    the param is the text written, as `--param ds=...` gives it, so that a run record or
    a model's JSON holds it; a time too, in its own spelling."""
    path = write_pipeline(workdir, """
        pipeline: p
        params: {ds: 2026-11-28, at: 2026-11-28T06:00:00Z, n: 2026}
        steps:
          - op: read_parquet
            path: data/churn
            filter: "signup_date <= date '${ds}'"
        """)
    plan = plan_file(path)
    assert plan.ok, plan.problems
    assert plan.spec.params == {"ds": "2026-11-28", "at": "2026-11-28T06:00:00Z", "n": 2026}
    assert plan.steps[0].op.params.filter == "signup_date <= date '2026-11-28'"
    assert plan_file(path, {"ds": "2026-11-29"}).spec.params["ds"] == "2026-11-29"


def test_a_date_param_put_in_an_expression_without_quotes_is_said(churn: Path,
                                                                  workdir: Path) -> None:
    """`derive: {day: "${ds}"}` computes 2026 - 11 - 28, silently: a note says so, where
    the filter's comparison of that number with a date is a problem that says it too."""
    path = write_pipeline(workdir, """
        pipeline: p
        params: {ds: "2026-11-28"}
        steps:
          - op: read_parquet
            path: data/churn
          - op: derive
            columns:
              day: "${ds}"
              fine: "date '${ds}'"
          - op: filter
            where: "signup_date <= ${ds}"
        """)
    plan = plan_file(path)
    assert plan.notices == [
        f"{path}:7: step 'derive' (derive): column 'day' computes 2026-11-28 without quotes, "
        "a subtraction (1987): a date is written date '2026-11-28', text '2026-11-28' (a "
        "param too: date '${ds}')"]
    [problem] = [str(p) for p in plan.problems]
    assert problem.startswith(f"{path}:11: step 'filter' (filter): where: cannot compare "
                              "date32[day] and int64 with '<=' (2026-11-28 without quotes is "
                              "a subtraction (1987): a date is written date '2026-11-28', "
                              "text '2026-11-28')"), problem


def test_an_undeclared_param_says_how_to_declare_it(churn: Path, workdir: Path) -> None:
    """${ds} without `params:` (and --param ds=... for it) says how to declare it; the
    path with ${ds} left in is not also reported missing; a --param nothing uses says so."""
    path = write_pipeline(workdir, """
        pipeline: p
        steps:
          - op: read_parquet
            path: data/churn/ds=${ds}
          - op: select
            columns: [tenure]
        """)
    declare = "declare it with a default: `params: {ds: ...}`, which `--param ds=VALUE` " \
              "overrides"
    assert problems(path) == [f"{path}:4: step 'read_parquet' (read_parquet): unknown param "
                              f"'${{ds}}' (params: none; {declare})"]
    assert problems(path, ds="2026-11-28", color="red") == [
        f"{path}: --param ds: the pipeline has no param 'ds' ({declare})",
        f"{path}: --param color: the pipeline has no param 'color' (nothing in the "
        "pipeline uses ${color})",
        f"{path}:4: step 'read_parquet' (read_parquet): unknown param '${{ds}}' (params: "
        f"none; {declare})"]


def test_a_param_reference_cut_short_is_a_problem_at_its_line(workdir: Path) -> None:
    """``${ds`` without its ``}`` was read as text: a run looked for a folder named
    ``ds=${ds``; it is said where it is written, a list's item too."""
    path = write_pipeline(workdir, """
        pipeline: p
        params: {ds: "2026-11-28"}
        steps:
          - op: read_parquet
            path: data/churn/ds=${ds
          - op: select
            columns: [tenure, "${ds"]
        """)
    assert problems(path) == [
        f"{path}:5: step 'read_parquet' (read_parquet): path: '${{' without its '}}' in "
        "'data/churn/ds=${ds' (a param is written ${name})",
        f"{path}:7: step 'select' (select): columns: '${{' without its '}}' in '${{ds' (a "
        "param is written ${name})"]
    fixed = path.read_text().replace("${ds\n", "${ds}\n").replace('"${ds"', '"${ds}"')
    path.write_text(fixed)
    assert not any("without its" in p for p in problems(path))

def test_list_and_mapping_params_override_in_yaml_flow_style(churn: Path,
                                                             workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: p
        params: {keep: [tenure, plan], types: {tenure: double}}
        steps:
          - op: read_parquet
            path: data/churn
            columns: ${keep}
          - op: cast
            columns: ${types}
        """)
    plan = plan_file(path, {"keep": "[tenure, region, churned]", "types": "{tenure: float}"})
    assert plan.ok, plan.problems
    assert plan.steps[0].op.params.columns == ["tenure", "region", "churned"]
    assert plan.spec.params["types"] == {"tenure": "float"}
    bad = problems(path, keep="tenure", types="[a, b]")
    assert any("--param keep: expected a list such as [a, b], got 'tenure'" in p
               for p in bad), bad
    assert any("--param types: expected a mapping such as {a: 1, b: 2}" in p
               for p in bad), bad
    assert any("expected a list" in p and "got '[a, b'" in p
               for p in problems(path, keep="[a, b")), problems(path, keep="[a, b")
    # keys read as in a file: on, yes and 2024 stay names
    plan = plan_file(path, {"types": "{on: double, 2024: float}"})
    assert plan.spec.params["types"] == {"on": "double", "2024": "float"}


def test_yaml_errors_are_located(workdir: Path) -> None:
    path = write_pipeline(workdir, "pipeline: x\nsteps:\n  - op: read_parquet\n    path: [a\n")
    (p,) = plan_file(path).problems
    assert p.line in (4, 5) and "not valid YAML" in p.message


HEAD = "pipeline: x\nsteps:\n  - op: read_parquet\n"


@pytest.mark.parametrize(("body", "line", "said"), [
    ("\tpath: data\n", 4, "found character '\\t' that cannot start any token (indent with "
                           "spaces, not tabs)"),
    ('    path: "data\n  - op: select\n', 4,
     "the quoted value that starts on line 4, column 11 is not closed"),
    ("    path: data\n   - op: select\n", 5, "expected the end of the block, but found a "
                                              "list item (check the indentation of the block "
                                              "that starts on line 3)"),
    # a step's key at the indentation of its list's `-`: PyYAML's "found '?'"
    ("  path: data\n    columns: [a]\n", 4, "expected the end of the block, but found a key "
                                          "(check the indentation of the block that starts "
                                          "on line 3)"),
    ("    columns: [a, b\n  - op: select\n", 5,
     "expected ',' or ']', but got ':' (in the [ on line 4, column 14)"),
    ('    filter: "a > 3" and b == "x"\n', 4, "text after the quoted part of a value: "
                                             "quote all of it, in filter: '\"a > 3\" and "
                                             "b == \"x\"'"),
    # a trailing comment stays out of the suggested quotes ('#' inside them stays in)
    ('    filter: "a > 3" and b == "#x"  # keep the big ones\n', 4,
     "text after the quoted part of a value: quote all of it, in filter: '\"a > 3\" and "
     "b == \"#x\"'"),
    # both quotes in the value: the suggestion's quotes doubled, as YAML reads them
    ("  - path: 'data' + \"x\" + 'y'\n", 4, "text after the quoted part of a value: quote "
                                            "all of it, in path: \"'data' + \\\"x\\\" + "
                                            "'y'\""),
])
def test_yaml_errors_say_where_the_construct_starts_in_words(
        body: str, line: int, said: str) -> None:
    """Not PyYAML's tokens ('<block end>', '<scalar>') or the end of the file for an
    unclosed quote: the line it starts on, and the usual fix."""
    (problem,) = parse(HEAD + body, "f.yaml").problems
    assert (problem.line, problem.message) == (line, f"not valid YAML: {said}")


def test_a_file_that_is_no_pipeline_text_is_a_problem_not_a_traceback(
        churn: Path, workdir: Path) -> None:
    """A Parquet file passed for the pipeline, a file in another encoding, a misspelt
    name: one line each (a UnicodeDecodeError's traceback before)."""
    (workdir / "latin1.yaml").write_bytes("pipeline: caf\xe9\n".encode("latin-1"))
    (workdir / "train.yaml").write_text("pipeline: x\n")
    parquet = next((workdir / "data" / "churn").rglob("*.parquet"))
    assert problems(parquet) == [f"{parquet}: a Parquet file, not a pipeline file (YAML): "
                                 "pass the pipeline that reads it"]
    assert problems(workdir / "latin1.yaml") == [
        f"{workdir / 'latin1.yaml'}: cannot read the file: not UTF-8 text (invalid "
        "continuation byte at byte 13): a pipeline file is YAML, saved as UTF-8"]
    assert problems(workdir / "trian.yaml") == [
        f"{workdir / 'trian.yaml'}: cannot read the file: No such file or directory; did you "
        f"mean '{workdir / 'train.yaml'}'?"]
    # the path to give, in the folder given (not the name alone, which is not there)
    (workdir / "conf").mkdir()
    (workdir / "conf" / "churn_train.yaml").write_text("pipeline: x\n")
    assert problems(Path("conf/churn_tran.yaml")) == [
        "conf/churn_tran.yaml: cannot read the file: No such file or directory; did you mean "
        "'conf/churn_train.yaml'?"]


def test_unsafe_yaml_tags_are_refused(workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: !!python/object/apply:os.system ["echo pwned > pwned"]
        """)
    assert plan_file(path).problems
    assert not (workdir / "pwned").exists()


def test_structure_problems(workdir: Path) -> None:
    assert "empty" in problems(write_pipeline(workdir, ""))[0]
    found = problems(write_pipeline(workdir, """
        pipeline: x
        stepz: []
        """))
    assert any("unknown key 'stepz'; did you mean 'steps'?" in p for p in found), found
    assert any("`steps:` must be a non-empty list" in p for p in found), found
    found = problems(write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: write_parquet
            path: out
          - id: w
            op: write_parquet
            path: o2
          - id: w
            op: write_parquet
            path: o3
        """))
    assert any("the first step must read data" in p for p in found), found
    assert any("step id 'w' is used twice" in p for p in found), found


@pytest.mark.parametrize("name", ["../../escape", "churn/daily", "a\nb", "..", "a\\b"])
def test_a_pipeline_name_that_cannot_be_a_folder_is_a_problem(churn: Path, workdir: Path,
                                                              name: str) -> None:
    """The name is its run records' folder: '../../escape' wrote them outside the runs
    folder, 'a\\nb' into a folder with a line break. Spaces and accents are names."""
    def found(name: str) -> list[str]:
        return problems(write_pipeline(workdir, f"""
            pipeline: {json.dumps(name)}
            steps:
              - op: read_parquet
                path: data/churn
            """))

    assert found(name) == [
        f"{workdir / 'pipeline.yaml'}:1: `pipeline:` {name!r} cannot be a folder's name (its "
        "run records' folder: runs/<pipeline>/): no '/', '\\', line breaks or other control "
        "characters, not '.' or '..' (e.g. churn_train)"]
    assert found("churn train é") == []


@pytest.mark.parametrize(("written", "read"), [("2026", "2026 as int"),
                                              ("2026_11", "202611 as int"),
                                              ("yes", "True as bool"), ("1.5", "1.5 as float")])
def test_a_pipeline_name_yaml_reads_as_no_text_says_to_quote_it(
        workdir: Path, written: str, read: str) -> None:
    """Not "`pipeline:` is required" for a name that is there."""
    path = write_pipeline(workdir, f"pipeline: {written}\nsteps:\n  - op: read_parquet\n"
                                   "    path: data/churn\n")
    (problem,) = parse(path.read_text(), str(path)).problems
    assert (problem.line, problem.message) == (
        1, f"`pipeline:` is a name, and YAML reads {read}: quote it (pipeline: \"...\") or "
           "start it with a letter (e.g. churn_train)")


@pytest.mark.parametrize("step_id", ["rows\n", "a b", "1st", ""])
def test_a_step_id_that_is_no_name_is_a_problem(churn: Path, workdir: Path,
                                                step_id: str) -> None:
    """Not a name: refused at its line. A trailing newline ("rows\\n", a block scalar) was
    taken, and broke the summary's table and `plan --mermaid`'s node."""
    found = problems(write_pipeline(workdir, f"""
        pipeline: x
        steps:
          - id: {json.dumps(step_id)}
            op: read_parquet
            path: data/churn
        """))
    assert found == [f"{workdir / 'pipeline.yaml'}:3: step id {step_id!r} must be a name "
                     "(letters, digits, _ . -)"], found


def test_a_model_name_that_cannot_be_one_says_what_can(churn: Path, workdir: Path) -> None:
    """The rule in words, not the pattern a name must match."""
    found = problems(write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
          - op: logistic_regression
            label: churned
            features: [tenure]
          - op: save_model
            name: modèle
        """))
    assert found == [f"{workdir / 'pipeline.yaml'}:9: step 'save_model' (save_model): "
                     "parameter 'name': a model name is a letter or digit, then letters, "
                     "digits, '_', '.' or '-' (ASCII only) (got 'modèle')"], found


def test_a_misspelt_choice_and_a_name_for_a_list_say_what_was_meant(churn: Path,
                                                                   workdir: Path) -> None:
    found = problems(write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
          - op: impute
            columns: total_charges
            strategy: meadian
        """))
    assert [p.split("(impute): ", 1)[1] for p in found] == [
        "parameter 'columns': Input should be a valid list (got 'total_charges'); write a "
        "list: `columns: [total_charges]`",
        "parameter 'strategy': Input should be 'mean', 'median', 'most_frequent' or "
        "'constant' (got 'meadian'); did you mean 'median'?"], found


def test_a_list_for_one_value_and_a_word_for_a_flag_say_what_to_write(churn: Path,
                                                                    workdir: Path) -> None:
    """`label: [churned]` (a list of one column, as `columns:` takes) and `incremental:
    sometimes` said only pydantic's "Input should be a valid string / boolean"."""
    found = problems(write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
            incremental: sometimes
          - op: logistic_regression
            label: [churned]
            weight: [a, b]
        """))
    assert [p.split("): ", 1)[1] for p in found] == [
        "parameter 'incremental': Input should be a valid boolean, unable to interpret "
        "input (got 'sometimes'); write true or false",
        "parameter 'label': Input should be a valid string (got ['churned']); write one "
        "value, not a list: `label: churned`",
        "parameter 'weight': Input should be a valid string (got ['a', 'b']); it takes one "
        "value"], found


def test_one_key_named_for_a_list_or_a_mapping_says_to_write_a_list(churn: Path,
                                                                    workdir: Path) -> None:
    """join's `on: customer_id` (a list or a mapping): "none of the kinds of value it may
    be" said nothing of the brackets that make it one, as a plain list's error does."""
    (found,) = problems(write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
          - op: join
            path: data/churn
            on: customer_id
        """))
    assert found.endswith(
        "(join): parameter 'on': 'customer_id' is none of the kinds of value it may be "
        "(list[str], dict[str,str]); write a list: `on: [customer_id]`"), found


def test_a_tree_parameter_by_a_peer_s_name_says_ours(churn: Path, workdir: Path) -> None:
    """XGBoost's, LightGBM's, scikit-learn's and MLlib's names of a boosting or forest
    parameter (n_estimators, eta, num_leaves, numTrees...) say which one to write here,
    not only the closest spelling."""
    path = write_pipeline(workdir, """
        pipeline: p
        steps:
          - op: read_parquet
            path: data/churn
          - op: gradient_boosted_trees
            label: churned
            features: [tenure, monthly_charges]
            n_estimators: 300
            eta: 0.05
            num_leaves: 31
            colsample_bytree: 0.8
            reg_lambda: 1.0
          - op: random_forest
            input: read_parquet
            label: churned
            features: [tenure]
            numTrees: 50
            maxDepth: 5
        """)
    said = problems(path)
    for step, name, ours in [
            ("gradient_boosted_trees", "n_estimators", "n_trees"),
            ("gradient_boosted_trees", "eta", "learning_rate"),
            ("gradient_boosted_trees", "num_leaves", "max_leaves"),
            ("gradient_boosted_trees", "colsample_bytree", "tree_features"),
            ("gradient_boosted_trees", "reg_lambda", "l2"),
            ("random_forest", "numTrees", "n_trees"),
            ("random_forest", "maxDepth", "max_depth")]:
        assert any(f"step '{step}' ({step}): unknown parameter '{name}'; write `{ours}` "
                   "here (" in p for p in said), (name, said)
    # every operator's peers' names lead to a parameter it has, and are none of its own
    from operators.base import registered
    for op, cls in registered().items():
        for peer, written in cls.Params.known_as.items():
            assert peer not in cls.Params.model_fields, (op, peer)
            assert written.split(":")[0] in cls.Params.model_fields, (op, peer, written)


def test_duplicate_keys_are_problems() -> None:
    spec = parse("pipeline: x\nsteps:\n  - op: read_parquet\n    path: a\n    path: b\n", "f.yaml")
    assert any("key 'path' appears twice" in str(p) for p in spec.problems)


def test_a_key_yaml_1_1_reads_as_a_boolean_is_the_name_written() -> None:
    """`on:` (join's keys), `yes:`, `no:`... are names, not True and False."""
    spec = parse("""
pipeline: x
steps:
  - op: read_parquet
    path: a
  - op: join
    path: t.parquet
    on: [k]
  - op: rename
    columns: {no: country_no, yes: answer}
""", "f.yaml")
    assert spec.steps[1].params["on"] == ["k"]
    assert dict(spec.steps[2].params["columns"]) == {"no": "country_no", "yes": "answer"}


def test_default_step_ids_are_unique() -> None:
    spec = parse("""
pipeline: x
steps:
  - op: read_parquet
    path: a
  - op: write_parquet
    path: o
  - op: write_parquet
    path: o2
""", "f.yaml")
    assert [s.id for s in spec.steps] == ["read_parquet", "write_parquet", "write_parquet_2"]


def test_dotted_path_operator_and_its_errors(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
          - op: sluice_testops.CenterColumns
            columns: [tenure, monthly_charges]
          - op: sluice_testops.CenterColumnz
            columns: [tenure]
          - op: no_such_pkg.Op
          - op: sluice_testops.CenterParams
        """)
    found = problems(path)
    assert len(found) == 3, found
    assert "has no 'CenterColumnz'; did you mean 'CenterColumns'?" in found[0]
    assert "cannot import module 'no_such_pkg'" in found[1]
    assert "is not a sluice operator" in found[2]


@pytest.mark.parametrize("filter_text", ["tenure >>= 3", "tenur > 3", "plan + 1"])
def test_bad_filters_are_plan_time_problems(churn: Path, workdir: Path, filter_text: str) -> None:
    path = write_pipeline(workdir, f"""
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
            filter: "{filter_text}"
        """)
    (p,) = problems(path)
    assert p.startswith(f"{path}:5: step 'read_parquet' (read_parquet): "), p


def test_a_bare_word_in_an_expression_is_said_to_want_quotes(churn: Path,
                                                            workdir: Path) -> None:
    """`plan = basic` reads `basic` as a column: each expression step says that a text
    value goes in quotes (a read's filter listed the columns twice), where a name near a
    column's is still a misspelling."""
    path = write_pipeline(workdir, """
        pipeline: x
        steps:
          - op: read_parquet
            path: data/churn
            filter: "plan = basic"
          - op: filter
            where: "region = north"
          - op: derive
            columns: {premium: "if(plan = premium, 1, 0)"}
          - op: expect
            rules: {real: "region != test"}
          - op: derive
            columns: {ratio: "total_charges / monthly_charge"}
        """)
    read, *steps = [p.split("(read_parquet): ")[-1] for p in problems(path)]
    assert read == ("filter: unknown column 'basic' (a text value goes in quotes: 'basic'); "
                    "the columns are: customer_id, tenure, plan, region, monthly_charges, "
                    "total_charges, signup_date, churned at column 8 in 'plan = basic'")
    path.write_text(path.read_text().replace("plan = basic", "plan = 'basic'"))
    # a filter's columns are its input's: the step after it is checked in the same pass;
    # a derive's are not known where it is wrong: the steps after it wait
    first, second = problems(path)
    assert first.endswith("; a text value goes in quotes: 'north')"), first
    assert second.endswith("; a text value goes in quotes: 'premium')"), second
    for bare in ("region = north", "plan = premium"):
        quoted = bare.replace(bare.split()[-1], f"'{bare.split()[-1]}'")
        path.write_text(path.read_text().replace(bare, quoted))
    expect, derive = problems(path)  # an expect's columns are its input's too
    assert expect.endswith("; a text value goes in quotes: 'test')"), expect
    assert "column 'monthly_charge' not in the input; did you mean 'monthly_charges'?" in derive
    assert "quotes" not in derive


def test_missing_data_is_a_plan_time_problem(workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: x
        params: {ds: "2026-11-28"}
        steps:
          - op: read_parquet
            path: data/none/ds=${ds}
        """)
    (p,) = problems(path)
    assert "no such file or directory: 'data/none/ds=2026-11-28'" in p and ":5:" in p


@pytest.mark.parametrize("uses", ["score", "drift", "promote"])
def test_a_step_using_a_model_whose_chain_has_a_bad_step(churn: Path, workdir: Path,
                                                          uses: str) -> None:
    """A score, drift or promote of the model the run saves, where a step of its chain
    has a problem of its own (that step is not built): that problem is reported, not a
    crash of the plan (StopIteration walking the chain)."""
    label = "\n            label: churned\n            alias: prod" if uses == "promote" else ""
    path = write_pipeline(workdir, f"""
        pipeline: broken
        steps:
          - op: read_parquet
            path: data/churn
          - op: derive
            columns: {{w: "tenure *"}}
          - op: kmeans
            k: 3
            features: [tenure, monthly_charges]
          - op: save_model
            name: m
          - op: read_parquet
            path: data/churn
          - op: {uses}
            model: m{label}
        """)
    found = problems(path)
    assert len(found) == 1 and "step 'derive' (derive): derive column 'w'" in found[0], found


def test_a_feature_no_fit_can_add_is_a_plan_time_problem_after_one_hot(churn: Path,
                                                                      workdir: Path) -> None:
    """After one_hot (whose columns are known once it has fitted), a model's misspelt
    feature, a column one_hot replaced, or its label among its features is found as the
    pipeline plans, not after the fits before it have run; `plan=basic`, which one_hot
    may add, still waits for the run."""
    def model(features: str, label: str = "churned") -> list[str]:
        path = write_pipeline(workdir, f"""
            pipeline: onehot_then_model
            steps:
              - op: read_parquet
                path: data/churn
                columns: [tenure, plan, monthly_charges, churned]
              - op: one_hot
                columns: [plan]
              - op: logistic_regression
                label: {label}
                features: [{features}]
              - op: evaluate
                label: churned
            """)
        return problems(path)

    assert model("tenure, plan=basic, plan=premium") == []
    (typo,) = model("tenur, plan=basic")
    assert "pipeline.yaml:10: step 'logistic_regression'" in typo, typo
    assert "column 'tenur' not in the input; did you mean 'tenure'?" in typo, typo
    assert "plan=basic" not in typo.split("(input has")[0], typo
    (replaced,) = model("tenure, plan")
    assert "column 'plan' not in the input" in replaced, replaced
    (label,) = model("tenure, monthly_charges, plan=basic", label="monthly_charges")
    assert ("the label column 'monthly_charges' is also listed in features "
            "(remove 'monthly_charges' from features)") in label, label


def test_unsupervised_steps_whose_numbers_all_come_from_a_fit_plan_and_run(
        churn: Path, workdir: Path) -> None:
    """kmeans, gaussian_mixture, isolation_forest and evaluate_clusters of default
    features after a fit that makes every numeric column (one_hot of text columns, a
    vectorize_text of term columns) were refused at plan ("no numeric feature columns"),
    as the supervised models were not: planned, they run; with no such fit before them
    the plan still says so."""
    from pipelines.runner import run

    def pipeline(encode: str) -> Path:
        return write_pipeline(workdir, f"""
            pipeline: encoded
            steps:
              - id: rows
                op: read_parquet
                path: data/churn
                columns: [plan, region]
              {encode}
              - id: clusters
                op: kmeans
                k: 3
              - op: evaluate_clusters
              - op: gaussian_mixture
                input: encoded
                k: 2
              - op: isolation_forest
                input: encoded
                n_trees: 5
            """)

    path = pipeline("- {id: encoded, op: one_hot, columns: [plan, region]}")
    assert problems(path) == []
    assert run(path)["status"] == "succeeded"
    found = problems(pipeline("- {id: encoded, op: select, columns: [plan, region]}"))
    assert len(found) == 3, found
    assert all("no numeric feature columns" in p for p in found), found


def test_evaluate_before_any_model_says_so_not_a_near_column(churn: Path,
                                                             workdir: Path) -> None:
    """No prediction yet (evaluate before the model, or its `input:` a step before it)
    said "column 'prediction' not in the input; did you mean 'region'?"."""
    path = write_pipeline(workdir, """
        pipeline: x
        steps:
          - id: rows
            op: read_parquet
            path: data/churn
          - op: logistic_regression
            label: churned
            features: [tenure]
          - op: evaluate
            input: rows
            label: churned
        """)
    (found,) = problems(path)
    assert found.endswith(
        "step 'evaluate' (evaluate): its input has no 'prediction' column: evaluate measures "
        "the predictions of a model step or a score step before it (put evaluate after the "
        "model step or an `op: score` (check its `input:`), or name the column of "
        "predictions (prediction: COLUMN))"), found
    assert "did you mean" not in found
    path.write_text(path.read_text().replace("input: rows", "prediction: tenure"))
    assert problems(path) == []
    path.write_text(path.read_text().replace("prediction: tenure", "prediction: predicted"))
    (found,) = problems(path)
    assert "column 'predicted' not in the input" in found, found
