"""``sluice plan``: each step in run order with what it reads, fits, scores and saves and
how the columns change, from the plan alone (no row read); problems as validate's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
from conftest import sluice_in_process, write_pipeline

from pipelines.datagen import churn_table
from pipelines.describe import describe, graph
from pipelines.runner import plan_file, run

TRAIN = """
    pipeline: train
    steps:
      - id: rows
        op: read_parquet
        path: {data}
        columns: [customer_id, tenure, plan, region, monthly_charges, total_charges, churned]
      - id: recent
        op: filter
        where: "tenure >= 3"
      - op: one_hot
        columns: [plan]
      - op: cast
        columns: {{tenure: double}}
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges, plan=basic]
        validation_fraction: 0.2
        tune:
          l2: [0.01, 0.1, 1.0]
      - op: save_model
        name: churn
      - id: scores
        op: score
        input: recent
        model: churn@1
      - id: check
        op: evaluate
        label: churned
      - op: write_parquet
        input: scores
        path: out
"""


def _rows(workdir: Path) -> Path:
    folder = workdir / "rows"
    folder.mkdir()
    pq.write_table(churn_table(500, seed=2), folder / "part-0.parquet")
    return folder


def _plan(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sluice_in_process("plan", *args, cwd=workdir)


def test_plan_says_what_each_step_does_and_how_the_columns_change(workdir: Path) -> None:
    data = _rows(workdir)
    first = write_pipeline(workdir, TRAIN.format(data=data).replace(
        "        model: churn@1\n", "        model: churn\n"), "first.yaml")
    run(first)  # churn@1 exists now: the score step of TRAIN resolves to it
    shutil.rmtree(workdir / "out")
    path = write_pipeline(workdir, TRAIN.format(data=data), "train.yaml")
    done = _plan(workdir, str(path))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"pipeline train ({path}): 9 steps, in the order they run")
    expected = [
        "  rows: read_parquet  (line 3)",
        f'      given: path={data}, columns=["customer_id", ',  # not the pushed filter
        "      reads with filter: tenure >= 3 (step 'recent''s condition pushed into the read",
        "      columns: customer_id int64, tenure int64, plan string, region string, "
        "monthly_charges double, total_charges double, churned int64",
        "  recent: filter <- rows  (line 7)",
        '      given: where=tenure >= 3',
        "  one_hot: one_hot <- recent  (line 10)",
        "      the fit decides columns it adds or their types (known once it has run)",
        "      - plan",
        "  cast: cast <- one_hot  (line 12)",
        "      ~ tenure int64 -> double",
        "  model: logistic_regression <- cast  (line 14)",
        "      given: label=churned, features=[\"tenure\", \"monthly_charges\", "
        "\"plan=basic\"], validation_fraction=0.2",
        "      fits (passes over its cached input)",
        "      tunes 3 combinations",
        "  save_model: save_model <- model  (line 21)",
        "      saves one_hot, cast, model as 'churn' (the next version)",
        "  scores: score <- recent  (line 23)",
        "      model: churn@1 (churn@1)",
        "      + probability double",
        "  check: evaluate <- scores  (line 27)",
        "      measures the rows in one pass (the figures go to the run record); rows pass on",
        "  write_parquet: write_parquet <- scores  (line 30)",
        "      given: path=out",
    ]
    lines = text.splitlines()
    for line in expected:
        assert any(got.startswith(line) for got in lines), (line, text)
    # the order of the lines is the run's
    at = [next(i for i, got in enumerate(lines) if got.startswith(line)) for line in expected]
    assert at == sorted(at)
    assert not (workdir / "out").exists()  # nothing ran

    as_json = json.loads(_plan(workdir, str(path), "--json").stdout)
    steps = {s["id"]: s for s in as_json["steps"]}
    assert list(steps) == ["rows", "recent", "one_hot", "cast", "model", "save_model",
                           "scores", "check", "write_parquet"]
    assert steps["cast"]["retyped"] == [{"name": "tenure", "from": "int64", "to": "double"}]
    assert steps["scores"]["added"] == [{"name": "prediction", "type": "int64"},
                                        {"name": "probability", "type": "double"}]
    assert steps["one_hot"]["columns"] is None  # decided by the fit
    assert steps["rows"]["params"]["path"] == str(data)
    assert steps == {s["id"]: s for s in describe(plan_file(path))}


def test_plan_of_a_pipeline_with_problems_reports_them(workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: broken
        steps:
          - op: read_parquet
            path: nowhere
          - op: one_hot
            colums: [plan]
    """)
    done = _plan(workdir, str(path))
    assert done.returncode == 1 and done.stdout == ""
    assert "unknown parameter 'colums'; did you mean 'columns'" in done.stderr
    assert "Traceback" not in done.stderr
    # ended as validate ends (a plan runs nothing: no "nothing ran")
    errors = done.stderr.strip().splitlines()
    said = sum(line.startswith(f"error: {path}:") for line in errors)
    assert said > 1 and errors[-1] == f"error: {said} problem(s) in 1 file(s)", errors


GRAPH = """
    pipeline: graph
    steps:
      - id: old
        op: read_parquet
        path: rows
        filter: "tenure < 12"
      - id: new
        op: read_parquet
        path: rows
        filter: "tenure >= 12"
      - id: both
        op: union
        input: old
        steps: [new]
      - id: profile
        op: read_parquet
        path: rows
        columns: [customer_id, region]
      - id: joined
        op: join
        input: both
        table: profile
        on: [customer_id]
        columns: [region]
        prefix: profile_
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
      - id: saved
        op: save_model
        name: churn
      - id: scores
        op: score
        input: both
        model: churn
      - id: out
        op: write_parquet
        input: scores
        path: out
"""


def test_plan_as_a_graph_in_dot_and_mermaid(workdir: Path) -> None:
    """--dot and --mermaid draw the steps and where each takes its rows from: an input,
    a union's other steps, a join's table step (table) and the save whose version a
    score of the run uses (model, dashed)."""
    _rows(workdir)
    path = write_pipeline(workdir, GRAPH, "graph.yaml")
    plan = plan_file(path)
    assert plan.ok, plan.problems
    shape = graph(plan)
    assert [(n["id"], n["op"], n["kind"]) for n in shape["nodes"]][:3] == [
        ("old", "read_parquet", "source"), ("new", "read_parquet", "source"),
        ("both", "union", "union")]
    assert sorted((e["from"], e["to"], e["kind"]) for e in shape["edges"]) == sorted([
        ("old", "both", "rows"), ("new", "both", "rows"), ("both", "joined", "rows"),
        ("profile", "joined", "table"), ("joined", "model", "rows"),
        ("model", "saved", "rows"), ("both", "scores", "rows"),
        ("saved", "scores", "model"), ("scores", "out", "rows")])

    dot = _plan(workdir, "graph.yaml", "--dot")
    assert dot.returncode == 0, dot.stderr
    lines = dot.stdout.splitlines()
    assert lines[0] == 'digraph "graph" {' and lines[-1] == "}"
    assert '  "model" [label="model\\nlogistic_regression", shape=box3d];' in lines
    assert '  "profile" -> "joined" [label="table"];' in lines
    assert '  "saved" -> "scores" [label="model", style=dashed];' in lines
    assert sum("->" in line for line in lines) == len(shape["edges"])

    mermaid = _plan(workdir, "graph.yaml", "--mermaid")
    assert mermaid.returncode == 0, mermaid.stderr
    lines = mermaid.stdout.splitlines()
    names = {n["id"]: f"s{i}" for i, n in enumerate(shape["nodes"])}
    assert lines[0] == "flowchart TD"
    assert f'  {names["both"]}[/"both<br/>union"\\]' in lines
    assert f"  {names['profile']} -->|table| {names['joined']}" in lines
    assert f"  {names['saved']} -.->|model| {names['scores']}" in lines
    assert sum("-->" in line or "-.->" in line for line in lines) == len(shape["edges"])

    both = _plan(workdir, "graph.yaml", "--dot", "--json")
    assert both.returncode == 2 and "give one of --json, --dot and --mermaid" in both.stderr
