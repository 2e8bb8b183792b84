"""join of another step's rows (``table: <step>``): an aggregate's features joined to a
customer table in one pipeline, broadcast or shuffled (chosen when the step has run), the
same rows as pandas on every engine; a model trained on them and scored by a pipeline
that repeats the steps; and the plan's problems, each at its line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import DataError
from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, plan_file, run
from pipelines.store import ModelStore

CUSTOMERS = 1000


@pytest.fixture
def shop(workdir: Path) -> Path:
    """Events of 900 of 1,000 customers in 4 files (each customer's spend tells whether
    they churn); the customer table in 2 files."""
    rng = np.random.default_rng(8)
    n = 20_000
    customer = rng.integers(0, 900, n)
    kind = rng.choice(["buy", "refund", "view"], n, p=[0.5, 0.1, 0.4])
    events = pa.table({"customer_id": customer, "amount": rng.gamma(2.0, 10.0, n),
                       "kind": pa.array(kind).dictionary_encode()})
    (workdir / "data" / "events").mkdir(parents=True)
    for i in range(4):
        pq.write_table(events.slice(i * 5000, 5000),
                       workdir / "data" / "events" / f"part-{i}.parquet")
    refunds = np.bincount(customer[kind == "refund"], minlength=CUSTOMERS)
    churned = (rng.random(CUSTOMERS) < 1 / (1 + np.exp(-(refunds - 2.0)))).astype(np.int64)
    customers = pa.table({"customer_id": rng.permutation(CUSTOMERS),
                          "tenure": rng.integers(0, 72, CUSTOMERS)})
    customers = customers.append_column(
        "churned", pa.array(churned[customers["customer_id"].to_numpy()]))
    (workdir / "data" / "customers").mkdir(parents=True)
    for i in range(2):
        pq.write_table(customers.slice(i * 500, 500),
                       workdir / "data" / "customers" / f"part-{i}.parquet")
    return workdir / "data"


ENRICH = """
    pipeline: enrich
    steps:
      - id: events
        op: read_parquet
        path: data/events
        partition_mb: 0.05
      - id: activity
        op: aggregate
        by: [customer_id]
        columns: {{events: count(), refunds: count_if(kind == 'refund'),
                   spend: sum(amount)}}
      - id: customers
        op: read_parquet
        path: data/customers
      - id: joined
        op: join
        table: activity
        on: [customer_id]{extra}
      - op: write_parquet
        path: out/{out}
"""


def pandas_join(data: Path) -> pd.DataFrame:
    events = ds.dataset(data / "events").to_table().to_pandas()
    events["refund"] = (events["kind"].astype(str) == "refund").astype(np.int64)
    activity = events.groupby("customer_id").agg(
        events=("amount", "size"), refunds=("refund", "sum"),
        spend=("amount", "sum")).reset_index()
    customers = ds.dataset(data / "customers").to_table().to_pandas()
    return customers.merge(activity, on="customer_id", how="left")


def check(got: pa.Table, want: pd.DataFrame) -> None:
    """``got`` is ``want`` in the customer table's order (customers without events: nulls)."""
    frame = got.to_pandas()
    assert list(frame.columns) == list(want.columns)
    assert list(frame["customer_id"]) == list(want["customer_id"])
    for name in ("events", "refunds"):
        assert frame[name].isna().sum() == CUSTOMERS - 900
        assert list(frame[name].fillna(-1)) == list(want[name].fillna(-1)), name
    np.testing.assert_allclose(frame["spend"].fillna(-1), want["spend"].fillna(-1),
                               rtol=1e-12)


def test_a_steps_rows_join_as_pandas_merge_on_every_engine_either_way(
        shop: Path, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = workdir / "scratch"
    monkeypatch.setenv("SLUICE_SCRATCH", str(scratch))
    want = pandas_join(shop)
    outputs = {}
    for out, extra, strategy in (
            ("auto", "", "broadcast"),  # 0.03 MB of features: within max_mb
            ("big", "\n        max_mb: 0.001", "shuffle"),  # auto, over max_mb
            ("shuffle", "\n        strategy: shuffle", "shuffle"),
            ("broadcast", "\n        strategy: broadcast", "broadcast")):
        record = run(write_pipeline(workdir, ENRICH.format(out=out, extra=extra),
                                    f"{out}.yaml"), engine_instance=engine)
        step = record["steps"]["joined"]
        assert step["rows"] == CUSTOMERS
        if "strategy:" not in extra:
            assert step["strategy"] == strategy and step["estimated_mb"] > 0.01
            assert step["kind"] == ("shuffle" if strategy == "shuffle" else "transform")
        if strategy == "shuffle":
            assert step["shuffle"]["table_rows"] == 900
        outputs[out] = ds.dataset(workdir / "out" / out).to_table()
        # one output partition: the customer table's order, as the broadcast keeps it
        check(outputs[out], want)
    assert all(t.equals(outputs["auto"]) for t in outputs.values())
    assert not list(scratch.glob("*")), "a run left its shuffle files"


TRAIN = """
    pipeline: train_activity
    steps:
      - op: read_parquet
        path: data/events
      - id: activity
        op: aggregate
        by: [customer_id]
        columns: {{events: count(), refunds: count_if(kind == 'refund')}}
      - id: customers
        op: read_parquet
        path: data/customers
      - op: join
        table: activity
        on: [customer_id]
        strategy: {strategy}
      - op: derive
        columns: {{refunds: "coalesce(refunds, 0)", events: "coalesce(events, 0)"}}
      - op: logistic_regression
        label: churned
        features: [refunds, events, tenure]
      - op: save_model
        name: activity
"""

SCORE = """
    pipeline: score_activity
    steps:
      - op: read_parquet
        path: data/events
      - id: activity
        op: aggregate
        by: [customer_id]
        columns: {events: count(), refunds: count_if(kind == 'refund')}
      - id: customers
        op: read_parquet
        path: data/customers
        columns: [customer_id, tenure]
      - op: join
        table: activity
        on: [customer_id]
      - op: score
        model: activity
      - op: write_parquet
        path: out/scores
"""


def test_a_model_on_joined_features_and_a_scoring_pipeline_that_repeats_them(
        shop: Path, workdir: Path) -> None:
    """Customers without events are kept (a left join, zeros by derive) and the model
    learns from the refunds; the model starts after the join (its rows are the
    customer table's), and scoring repeats the aggregate and the join."""
    run(write_pipeline(workdir, TRAIN.format(strategy="shuffle"), "shuffle.yaml"))
    shuffled = ModelStore().load("activity")
    run(write_pipeline(workdir, TRAIN.format(strategy="broadcast"), "broadcast.yaml"))
    model = ModelStore().load("activity")
    assert [s.name for s in model.chain.steps] == ["derive", "logistic_regression.fitted"]
    a, b = (m.chain.steps[-1].state()[1] for m in (shuffled, model))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)
    record = run(write_pipeline(workdir, SCORE, "score.yaml"))
    assert record["steps"]["join"]["strategy"] == "broadcast"
    scores = ds.dataset(workdir / "out" / "scores").to_table().to_pandas()
    assert len(scores) == CUSTOMERS
    want = pandas_join(shop).set_index("customer_id")
    scores = scores.set_index("customer_id").loc[want.index]
    assert scores["refunds"].isna().sum() == CUSTOMERS - 900  # as joined, before derive
    refunds = want["refunds"].fillna(0).to_numpy()
    # the more refunds, the likelier churn (the data's own rule)
    assert np.corrcoef(refunds, scores["probability"].to_numpy())[0, 1] > 0.5


def test_the_plan_says_how_and_each_problem_is_at_its_line(shop: Path,
                                                           workdir: Path) -> None:
    path = write_pipeline(workdir, ENRICH.format(out="auto", extra=""))
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("joins the rows of step 'activity' as its table; decided when step 'activity' "
            "has run: a broadcast of its rows if they take at most max_mb 256 (as its "
            "source estimates them, or measured), else a shuffle") in shown
    assert "joined: join <- customers, table activity  (line 15)" in shown
    planned = json.loads(sluice_in_process("plan", str(path), "--json", cwd=workdir,
                                           check=True).stdout)
    order = [s["id"] for s in planned["steps"]]
    assert order.index("activity") < order.index("joined")
    cases = {
        "table: activty": ("table: 'activty' names no step; did you mean 'activity'?", 17),
        "table: joined": ("table: a step cannot read its own rows", 17),
        "table: activity\n        path: data/customers": (
            "give path (a Parquet table) or table (a step of this pipeline), not both", 15),
        "table: activity\n        filter: \"tenure > 3\"": (
            "filter: applies to a table read from path", 18),
        "table: activity\n        columns: [spent]": (
            "columns: column 'spent' not in step 'activity'; did you mean 'spend'?", 18),
    }
    for given, (message, line) in cases.items():
        text = ENRICH.format(out="x", extra="").replace("table: activity", given)
        bad = write_pipeline(workdir, text, "bad.yaml")
        plan = plan_file(bad)
        found = [p for p in plan.problems if message in p.message]
        assert found, (given, [p.message for p in plan.problems])
        assert found[0].line == line, (given, found[0].line)
    # a table step that reads the join's own rows: a cycle, named
    looped = ENRICH.format(out="x", extra="").replace(
        "op: aggregate", "op: aggregate\n        input: joined")
    with pytest.raises(ValidationFailed) as caught:
        run(write_pipeline(workdir, looped, "loop.yaml"))
    (problem,) = caught.value.problems
    assert problem.message.startswith("steps form a cycle: "), problem.message
    assert "activity" in problem.message and "joined" in problem.message


def test_a_key_twice_in_the_steps_rows_names_the_step(shop: Path, workdir: Path) -> None:
    """A table step with a key on two rows (a deduplicate forgotten): the error names the
    step and the key, with either strategy."""
    twice = ENRICH.format(out="twice", extra="").replace("by: [customer_id]",
                                                        "by: [customer_id, kind]")
    for strategy in ("broadcast", "shuffle"):
        shutil.rmtree(workdir / "out", ignore_errors=True)
        text = twice.replace("on: [customer_id]",
                             f"on: [customer_id]\n        strategy: {strategy}")
        with pytest.raises(DataError) as caught:
            run(write_pipeline(workdir, text, f"{strategy}.yaml"))
        assert "rows of step 'activity'" in str(caught.value), strategy
        assert "step 'joined'" in str(caught.value)
        assert caught.value.hint.startswith("keep one row per key in step 'activity''s "
                                            "rows (a deduplicate by the key before it")


WIDENED = """
    pipeline: widened
    steps:
      - id: base
        op: read_parquet
        path: data/base
      - id: wide                  # base and a 2 kB text column a row: ~4 MB
        op: join
        path: data/blobs
        on: [customer_id]
      - id: customers
        op: read_parquet
        path: data/customers
      - id: joined
        op: join
        table: wide
        on: [customer_id]
        max_mb: 1
      - op: write_parquet
        path: out/joined
"""


def test_auto_measures_a_table_step_that_widens_its_read(workdir: Path) -> None:
    """The read's footers say 0.03 MB, the step's rows take 4 MB: auto measures them (a
    pass) and shuffles, where trusting the read chose a broadcast that then failed."""
    n = 2000
    for name, extra in (("base", {"x": np.ones(n)}),
                        ("blobs", {"blob": pa.array(["z" * 2000] * n)}),
                        ("customers", {"y": np.ones(n)})):
        (workdir / "data" / name).mkdir(parents=True)
        pq.write_table(pa.table({"customer_id": np.arange(n), **extra}),
                       workdir / "data" / name / "part-0.parquet")
    record = run(write_pipeline(workdir, WIDENED))
    step = record["steps"]["joined"]
    assert step["strategy"] == "shuffle" and 3.5 < step["estimated_mb"] < 5
    joined = ds.dataset(workdir / "out" / "joined").to_table()
    assert joined.num_rows == n and set(joined["blob"].to_pylist()) == {"z" * 2000}


ENCODED = """
    pipeline: encoded
    steps:
      - id: segments
        op: read_parquet
        path: data/segments
      - id: encoded
        op: one_hot
        columns: [segment]
      - id: customers
        op: read_parquet
        path: data/customers
      - op: join
        table: encoded
        on: [customer_id]{extra}
      - op: write_parquet
        path: out/{strategy}
"""


def test_a_table_steps_columns_from_a_fit_come_either_way(shop: Path, workdir: Path) -> None:
    """one_hot's columns are known once it has fitted: the join plans open (a later step
    may name them) and brings them, broadcast or shuffled."""
    rng = np.random.default_rng(2)
    (workdir / "data" / "segments").mkdir()
    pq.write_table(pa.table({"customer_id": np.arange(CUSTOMERS),
                             "segment": rng.choice(["smb", "ent"], CUSTOMERS)}),
                   workdir / "data" / "segments" / "part-0.parquet")
    columns = {}
    for strategy in ("broadcast", "shuffle"):
        extra = (f"\n        strategy: {strategy}\n        columns: [segment=ent]"
                 if strategy == "shuffle" else f"\n        strategy: {strategy}")
        path = write_pipeline(workdir, ENCODED.format(strategy=strategy, extra=extra),
                              f"{strategy}.yaml")
        plan = plan_file(path)
        assert plan.ok, plan.problems
        assert plan.step("join").open
        run(path)
        columns[strategy] = ds.dataset(workdir / "out" / strategy).to_table().column_names
    assert columns["broadcast"] == ["customer_id", "tenure", "churned", "segment=ent",
                                    "segment=smb"]
    assert columns["shuffle"] == ["customer_id", "tenure", "churned", "segment=ent"]


def test_a_join_of_a_steps_rows_to_themselves_is_asked_for_by_name(workdir: Path) -> None:
    """The step just before a join is its input: `table:` naming it too is refused,
    unless `input:` names it as well (each employee's manager)."""
    (workdir / "data" / "staff").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "manager": [None, 1, 1, 2],
                             "name": ["ada", "bo", "cy", "di"]}),
                   workdir / "data" / "staff" / "part-0.parquet")
    text = """
        pipeline: managers
        steps:
          - id: staff
            op: read_parquet
            path: data/staff
          - op: join{input}
            table: staff
            on: {{manager: id}}
            columns: [name]
            prefix: manager_
          - op: write_parquet
            path: out/managers
        """
    plan = plan_file(write_pipeline(workdir, text.format(input=""), "implicit.yaml"))
    (problem,) = plan.problems
    assert problem.line == 7 and problem.message.startswith(
        "table: 'staff' is the step before this one, its input: its rows would be joined "
        "to themselves (give `input:` the rows to join 'staff' to; `input: staff` too")
    run(write_pipeline(workdir, text.format(input="\n            input: staff"),
                       "explicit.yaml"))
    got = ds.dataset(workdir / "out" / "managers").to_table().to_pylist()
    assert [r["manager_name"] for r in got] == [None, "ada", "ada", "bo"]
