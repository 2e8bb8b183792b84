"""aggregate in pipelines: pandas' group-by on every engine, the same rows whatever the
partitioning, features for a model that a scoring pipeline repeats, errors that name the
step and the partition, and a scratch folder that does not outlive the run."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import SluiceError
from operators.features.aggregate import Aggregate
from operators.io.parquet import ReadParquet
from pipelines.engines.base import Engine
from pipelines.runner import ValidationFailed, run
from pipelines.shuffle import ShuffledSource, ShuffleWrite
from pipelines.store import ModelStore

CUSTOMERS = 600


@pytest.fixture
def events(workdir: Path) -> Path:
    """24,000 events of 600 customers (and some of no customer) in 4 files; a label
    table with each customer's churn, which depends on their events."""
    rng = np.random.default_rng(5)
    rows = 24_000
    customer = rng.integers(0, CUSTOMERS, rows)
    kind = rng.choice(["buy", "refund", "view"], rows, p=[0.5, 0.1, 0.4])
    amount = np.round(rng.gamma(2.0, 20.0, rows) * (1 + customer % 3), 2)
    table = pa.table({
        "customer_id": pa.array(customer, pa.int64(), mask=rng.random(rows) < 0.01),
        "kind": pa.array(kind).dictionary_encode(),
        "amount": pa.array(amount, mask=rng.random(rows) < 0.05),
        "plan": pa.array(rng.choice(["basic", "standard", "premium"], rows)),
        "ts": pa.array(rng.integers(0, 10**6, rows).astype("datetime64[s]")),
    })
    folder = workdir / "data" / "events"
    folder.mkdir(parents=True)
    for i in range(4):
        pq.write_table(table.slice(i * rows // 4, rows // 4), folder / f"part-{i}.parquet",
                       row_group_size=1500)
    frame = table.to_pandas()
    refunds = frame[frame["kind"] == "refund"].groupby("customer_id").size()
    refunds = refunds.reindex(range(CUSTOMERS), fill_value=0)
    churned = (rng.random(CUSTOMERS) < 1 / (1 + np.exp(-(refunds.to_numpy() - 4)))).astype(int)
    pq.write_table(pa.table({"customer_id": np.arange(CUSTOMERS), "churned": churned}),
                   workdir / "data" / "labels.parquet")
    return folder


FEATURES = """
      - id: features
        op: aggregate
        by: [customer_id]{partitions}
        columns:
          events: count()
          spend: sum(amount)
          refunds: count_if(kind == 'refund')
          avg_amount: mean(amount)
          sd_amount: std(amount)
          biggest: max(amount)
          plans: count_distinct(plan)
          last_plan: max_by(plan, ts)
          first_seen: min(ts)
"""

AGGREGATE = """
    pipeline: customer_features
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.02
""" + FEATURES + """
      - op: write_parquet
        path: out/features
"""


def pandas_features(events: Path) -> pd.DataFrame:
    frame = ds.dataset(events).to_table().to_pandas()
    frame["kind"] = frame["kind"].astype(str)
    g = frame.groupby("customer_id", dropna=False)

    def last_plan(d: pd.DataFrame) -> str:
        return d[d["ts"] == d["ts"].max()]["plan"].max()

    return pd.DataFrame({
        "events": g.size(), "spend": g["amount"].sum(min_count=1),
        "refunds": g["kind"].apply(lambda s: int((s == "refund").sum())),
        "avg_amount": g["amount"].mean(), "sd_amount": g["amount"].std(),
        "biggest": g["amount"].max(), "plans": g["plan"].nunique(),
        "last_plan": g.apply(last_plan), "first_seen": g["ts"].min()})


def check_features(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.set_index("customer_id")
    assert got.index.isna().sum() == 1  # the events of no customer are a row too
    got.index, want.index = got.index.fillna(-1), want.index.fillna(-1)
    got, want = got.sort_index(), want.sort_index()
    assert list(got.index) == list(want.index)
    for column in ("events", "refunds", "plans"):
        np.testing.assert_array_equal(got[column], want[column], err_msg=column)
    for column in ("spend", "avg_amount", "sd_amount", "biggest"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-10, err_msg=column)
    assert list(got["last_plan"]) == list(want["last_plan"])
    assert list(got["first_seen"]) == list(want["first_seen"])


def test_an_aggregate_is_pandas_group_by_on_every_engine(events: Path, workdir: Path,
                                                         engine: Engine) -> None:
    scratch = workdir / "scratch"
    record = run(write_pipeline(workdir, AGGREGATE.format(
        partitions="\n        partition_mb: 0.5")), engine_instance=engine, scratch=str(scratch))
    out = workdir / "out" / "features"
    check_features(ds.dataset(out).to_table().to_pandas(), pandas_features(events))
    step = record["steps"]["features"]
    assert step["rows"] == CUSTOMERS + 1 and step["kind"] == "shuffle"
    assert record["steps"]["read_parquet"]["rows"] == 24_000
    # a partition of the input per row group (16), each sending its partial rows (one
    # per customer it has) to the bucket of their key: a bucket a quarter of 0.5 MB of
    # the input (as its footers say), fewer than the 16 input partitions; neighbouring
    # buckets put together into output partitions of at most 0.5 MB
    shuffle = step["shuffle"]
    estimate = ReadParquet(path=str(events), partition_mb=0.02).estimated_bytes()
    assert shuffle["buckets"] == math.ceil(estimate / (0.5 * 2**20 / 4)) < 16
    assert 2 < shuffle["partitions"] <= shuffle["buckets"]
    assert shuffle["largest_mb"] <= 0.5
    assert shuffle["files"] == 16  # one a partition, a record batch a bucket
    assert CUSTOMERS < shuffle["partial_rows"] <= 16 * (CUSTOMERS + 1)
    # each output partition holds its keys in order, and a key is in one only
    files = sorted(out.glob("*.parquet"))
    assert len(files) == shuffle["partitions"]
    seen: set[int] = set()
    for file in files:
        keys = pq.read_table(file)["customer_id"].to_pylist()
        known = [k for k in keys if k is not None]
        assert known == sorted(known) and not seen & set(keys)
        seen |= set(keys)
    assert not list(scratch.glob("*")), "the run left its shuffle files"


PIVOT = """
    pipeline: spend_by_kind
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.02
      - id: by_kind
        op: aggregate
        by: [customer_id]
        pivot:
          column: kind
          values: [buy, refund, view, gift]
        columns:
          spend: sum(amount)
          n: count()
      - op: write_parquet
        path: out/by_kind
"""


def test_a_pivot_is_pandas_pivot_table_on_every_engine(events: Path, workdir: Path,
                                                     engine: Engine) -> None:
    """Spend and events of each kind, a column each (a kind no row has: 0 and null),
    as pandas' pivot_table gives them, the same on every engine."""
    record = run(write_pipeline(workdir, PIVOT), engine_instance=engine)
    assert record["steps"]["by_kind"]["rows"] == CUSTOMERS + 1
    got = ds.dataset(workdir / "out" / "by_kind").to_table().to_pandas()
    assert list(got.columns) == ["customer_id", *(f"{m}_{k}" for m in ("spend", "n")
                                                  for k in ("buy", "refund", "view", "gift"))]
    got = got.set_index(got["customer_id"].fillna(-1)).sort_index()
    frame = ds.dataset(events).to_table().to_pandas()
    frame["kind"] = frame["kind"].astype(str)
    frame["customer_id"] = frame["customer_id"].fillna(-1)
    spend = frame.pivot_table(index="customer_id", columns="kind", values="amount",
                              aggfunc=lambda s: s.sum(min_count=1), dropna=False)
    count = frame.pivot_table(index="customer_id", columns="kind", values="ts",
                              aggfunc="size", fill_value=0)
    for kind in ("buy", "refund", "view"):
        np.testing.assert_allclose(got[f"spend_{kind}"], spend[kind].reindex(got.index),
                                   rtol=1e-10, err_msg=kind)
        np.testing.assert_array_equal(got[f"n_{kind}"],
                                      count[kind].reindex(got.index, fill_value=0))
    assert (got["n_gift"] == 0).all() and got["spend_gift"].isna().all()
    if engine.name != "local":
        local = run(write_pipeline(workdir, PIVOT.replace("out/by_kind", "out/local"),
                                   "local.yaml"))
        assert local["steps"]["by_kind"]["shuffle"] == record["steps"]["by_kind"]["shuffle"]
        assert ds.dataset(workdir / "out" / "local").to_table().equals(
            ds.dataset(workdir / "out" / "by_kind").to_table())


def test_every_engine_and_partitioning_gives_the_same_rows(events: Path, workdir: Path,
                                                           engine: Engine) -> None:
    """The same output partitions give the same table, value for value, on every engine
    (partitions given, or put together from the buckets by size); other output
    partitions the same rows in another order."""
    for given, count in (("partitions: 5", 5), ("partition_mb: 0.5", None)):
        for made in ("features", "local", "whole"):
            shutil.rmtree(workdir / "out" / made, ignore_errors=True)
        path = write_pipeline(workdir, AGGREGATE.format(partitions=f"\n        {given}"))
        record = run(path, engine_instance=engine)
        got = ds.dataset(workdir / "out" / "features").to_table()
        local = run(write_pipeline(workdir, path.read_text().replace(
            "out/features", "out/local"), "local.yaml"))
        assert local["steps"]["features"]["shuffle"] == record["steps"]["features"]["shuffle"]
        if count:
            assert record["steps"]["features"]["shuffle"]["partitions"] == count
        else:  # more than one, to tell the engines' apart
            assert record["steps"]["features"]["shuffle"]["partitions"] > 3
        assert got.equals(ds.dataset(workdir / "out" / "local").to_table())
        # 4 input partitions, local engine; the default partition_mb: 1 MB of input, one
        # bucket
        text = path.read_text().replace("partition_mb: 0.02", "partition_mb: 64").replace(
            "out/features", "out/whole")
        text = "".join(line for line in text.splitlines(keepends=True) if given not in line)
        whole = run(write_pipeline(workdir, text, "whole.yaml"))
        assert whole["steps"]["features"]["shuffle"]["buckets"] == 1
        assert whole["steps"]["features"]["shuffle"]["partitions"] == 1
        whole = ds.dataset(workdir / "out" / "whole").to_table()
        order = [("customer_id", "ascending")]
        a, b = got.sort_by(order), whole.sort_by(order)
        for name in got.column_names:
            if pa.types.is_floating(got.schema.field(name).type):
                np.testing.assert_allclose(a[name].to_numpy(zero_copy_only=False),
                                           b[name].to_numpy(zero_copy_only=False),
                                           rtol=1e-12)
            else:
                assert a[name].equals(b[name]), name


OVERALL = """
    pipeline: totals
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.02
      - op: filter
        where: "kind == '{kind}'"
      - op: aggregate
        by: []
        columns: {{events: count(), spend: sum(amount), buyers: count_distinct(customer_id)}}
      - op: write_parquet
        path: out/{kind}
"""


def test_no_keys_is_one_row_even_of_no_rows(events: Path, workdir: Path,
                                            engine: Engine) -> None:
    frame = ds.dataset(events).to_table().to_pandas()
    for kind in ("refund", "nothing"):
        record = run(write_pipeline(workdir, OVERALL.format(kind=kind), f"{kind}.yaml"),
                     engine_instance=engine)
        assert record["steps"]["aggregate"]["shuffle"]["partitions"] == 1
        got = ds.dataset(workdir / "out" / kind).to_table().to_pylist()
        rows = frame[frame["kind"] == kind]
        assert len(got) == 1 and got[0]["events"] == len(rows)
        assert got[0]["buyers"] == rows["customer_id"].nunique()
        if kind == "nothing":
            assert got[0]["spend"] is None
        else:
            assert got[0]["spend"] == pytest.approx(rows["amount"].sum(), rel=1e-12)


TRAIN = """
    pipeline: churn_from_events
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.02
""" + FEATURES.format(partitions="") + """
      - op: join
        path: data/labels.parquet
        on: [customer_id]
        how: inner
      - op: standard_scale
        columns: [events, spend, refunds, avg_amount]
      - op: logistic_regression
        label: churned
        features: [events, spend, refunds, avg_amount]
      - op: save_model
        name: churn_events
"""

SCORE = """
    pipeline: score_events
    steps:
      - op: read_parquet
        path: data/events
{features}      - op: score
        model: churn_events
      - op: write_parquet
        path: out/scores
"""


def test_features_from_an_aggregate_train_a_model_that_scoring_repeats(
        events: Path, workdir: Path, engine: Engine) -> None:
    record = run(write_pipeline(workdir, TRAIN), engine_instance=engine)
    assert record["steps"]["join"]["rows"] == CUSTOMERS  # the null customer has no label
    model = ModelStore().load("churn_events")
    # the model starts after the aggregate (its rows are new rows) and the join
    assert [s.name for s in model.chain.steps] == ["standard_scale.fitted",
                                                   "logistic_regression.fitted"]
    made = [d for d in model.meta["data_steps"] if d["step"] == "features"]
    assert made and "refunds" in made[0]["added_columns"]
    fitted = model.chain.steps[-1]
    coef = dict(zip(fitted.features, fitted.coef[0]))
    assert coef["refunds"] > 0.5  # the label follows the refunds
    bare = write_pipeline(workdir, SCORE.format(features=""), "bare.yaml")
    with pytest.raises(ValidationFailed) as info:
        run(bare, engine_instance=engine)
    (problem,) = info.value.problems
    assert ("columns the model 'churn_events' needs: 'events', 'spend', 'refunds', "
            "'avg_amount' not in the input (the model's training pipeline added 'events', "
            "'spend', 'refunds', 'avg_amount' in step 'features' (aggregate), which a model "
            "does not keep: repeat that step before this one)") in str(problem)
    scored = run(write_pipeline(workdir, SCORE.format(features=FEATURES.format(
        partitions="")), "score.yaml"), engine_instance=engine)
    assert scored["steps"]["write_parquet"]["rows"] == CUSTOMERS + 1
    scores = ds.dataset(workdir / "out" / "scores").to_table()
    assert {"customer_id", "events", "probability", "prediction"} <= set(scores.column_names)


def test_a_failing_partition_names_the_step_and_leaves_nothing(events: Path, workdir: Path,
                                                               engine: Engine) -> None:
    text = AGGREGATE.format(partitions="").replace("spend: sum(amount)",
                                                    "spend: sum(cast(plan as int64))")
    scratch = workdir / "scratch"
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, text), engine_instance=engine, scratch=str(scratch))
    message = str(info.value)
    # at the line of the aggregate column that failed (the step's line is 7)
    lines = (workdir / "pipeline.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines, 1) if "spend: sum(cast(plan" in line)
    assert at != 7
    assert message.startswith(f"{workdir / 'pipeline.yaml'}:{at}: step 'features', partition ")
    assert ("aggregate column 'spend' (sum(cast(plan as int64))): Failed to parse string: "
            in message)
    assert "guard the expression" in message and "try_cast(x as type)" in message
    assert not (workdir / "out" / "features").exists()
    assert not list(scratch.glob("*")), "the failed run left its shuffle files"


def test_shuffle_files_a_worker_cannot_see_are_a_clear_error(tmp_path: Path) -> None:
    op = Aggregate(by=["k"], columns={"n": "count()"})
    table = pa.table({"k": np.arange(100), "v": np.ones(100)})
    url = str(tmp_path / "scratch" / "features")
    sink = ShuffleWrite(op, url, buckets=1)
    token = sink.begin("run", table.schema)
    results = [sink.write(token, table.slice(i * 50, 50), i) for i in range(2)]
    written = sink.commit(token, results)
    assert written["files"] == 2 and written["partial_rows"] == 100
    source = ShuffledSource(op, url, table.schema, written)
    (info,) = source.partitions()
    assert source.read(info).num_rows == 100
    # a torn file of an attempt that died mid-write is not one of them
    assert sorted(p.name for p in Path(url).iterdir()) == ["part-000000.arrow",
                                                           "part-000001.arrow"]
    (Path(url) / "part-000001.arrow.3f2a.tmp").write_bytes(b"ARROW1 torn")
    assert source.read(info).num_rows == 100
    Path(results[1].files[0]).unlink()  # written on a machine this one cannot see
    with pytest.raises(SluiceError) as caught:
        source.read(info)
    assert "the shuffle files are not all here: 1 of 2" in str(caught.value)
    assert "--scratch" in caught.value.hint


def test_the_command_line_plans_and_runs_an_aggregate(events: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, AGGREGATE.format(partitions="\n        partitions: 3"))
    plan = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert "shuffles: one row per customer_id, from the rows of every partition" in plan
    assert "into 3 partitions" in plan and "+ refunds int64" in plan
    scratch = workdir / "elsewhere"
    done = sluice_in_process("run", str(path), "--scratch", str(scratch), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert f"features                 aggregate                       {CUSTOMERS + 1} rows" \
        in done.stdout
    assert scratch.is_dir() and not list(scratch.iterdir())
    ops = sluice_in_process("ops", "aggregate", cwd=workdir, check=True).stdout
    assert "max_by" in ops and "count_distinct" in ops


def test_the_activity_example_pipeline(workdir: Path) -> None:
    """conf/pipelines/churn_activity_train.yaml on the committed samples: the events'
    aggregate finds the churners' refunds and support calls (the generator's signal),
    and conf/pipelines/churn_activity_score.yaml, which repeats it, scores every
    customer."""
    import shutil

    from conftest import ROOT

    from pipelines.datagen import EVENTS_CUSTOMERS, events_table

    for folder in ("churn", "events"):
        shutil.copytree(ROOT / "data" / folder, workdir / "data" / folder)
    committed = ds.dataset(workdir / "data" / "events").to_table()
    assert committed.equals(events_table(committed.num_rows).cast(committed.schema))
    record = run(ROOT / "conf" / "pipelines" / "churn_activity_train.yaml")
    assert record["steps"]["activity"]["rows"] == EVENTS_CUSTOMERS
    metrics = record["metrics"]["model"]
    assert metrics["validation"]["roc_auc"] > 0.8
    importance = metrics["feature_importances"]
    assert importance["support_share"] > importance["channels"]
    assert importance["refund_share"] > importance["channels"]
    scored = run(ROOT / "conf" / "pipelines" / "churn_activity_score.yaml")
    assert scored["steps"]["write_parquet"]["rows"] == EVENTS_CUSTOMERS
    scores = ds.dataset(workdir / "data" / "scores" / "activity").to_table()
    assert scores.column_names == ["customer_id", "prediction", "probability"]


def test_a_fit_before_an_aggregate_of_a_saved_model_is_refused_as_planned(
        events: Path, workdir: Path) -> None:
    """The model starts after the aggregate: a scaler before it would be fitted again by
    every scoring pipeline on the rows it scores."""
    text = TRAIN.replace("""        partition_mb: 0.02
""", """        partition_mb: 0.02
      - id: scaled
        op: standard_scale
        columns: [amount]
""")
    path = write_pipeline(workdir, text)
    with pytest.raises(ValidationFailed) as info:
        run(path)
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:33: step 'save_model' (save_model): step 'scaled' "
                                   "(standard_scale) is fitted before 'features' (aggregate)")
    assert "move it after 'features'" in str(problem)


LATEST = """
    pipeline: latest_event
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.02
      - id: latest
        op: deduplicate
        by: [customer_id]
        order: ts
      - op: write_parquet
        path: {out}
"""


def test_deduplicate_keeps_each_keys_latest_row_the_same_on_every_engine(
        events: Path, workdir: Path, engine: Engine) -> None:
    record = run(write_pipeline(workdir, LATEST.format(out="out/latest")),
                 engine_instance=engine)
    got = ds.dataset(workdir / "out" / "latest").to_table()
    frame = ds.dataset(events).to_table().to_pandas()
    latest = frame.groupby("customer_id", dropna=False)["ts"].max()
    assert got.num_rows == len(latest) == record["steps"]["latest"]["rows"] == CUSTOMERS + 1
    assert got.schema.field("kind").type == pa.string()  # a dictionary, as its values
    kept = got.to_pandas().set_index("customer_id")
    kept.index, latest.index = kept.index.fillna(-1), latest.index.fillna(-1)
    assert (kept["ts"].sort_index() == latest.sort_index()).all()
    run(write_pipeline(workdir, LATEST.format(out="out/local"), "local.yaml"))
    assert got.equals(ds.dataset(workdir / "out" / "local").to_table())


def test_the_scratch_folder_of_a_run_that_died_is_removed_by_the_next(
        events: Path, workdir: Path) -> None:
    """A run killed outright (no cleanup) leaves its folder; the next run that shuffles
    removes it, as nobody holds its lock, and leaves alone a live run's and other files."""
    from operators.io.fs import claim_dir

    scratch = workdir / "scratch"
    dead = scratch / "20261129T010203Z-abcdef"
    (dead / "features").mkdir(parents=True)
    (dead / "features" / "part-000000.arrow").write_bytes(b"left over")
    live = scratch / "20261129T010204Z-123456"
    lock = claim_dir(str(live))  # a run still going, in this process
    (scratch / "notes.txt").write_text("not a run's")
    try:
        run(write_pipeline(workdir, AGGREGATE.format(partitions="")), scratch=str(scratch))
        assert sorted(p.name for p in scratch.iterdir()) == [live.name, "notes.txt"]
    finally:
        os.close(lock)


def test_the_plan_says_what_each_shuffle_keys_by(events: Path, workdir: Path) -> None:
    from pipelines.describe import describe, format_plan
    from pipelines.runner import plan_file

    path = write_pipeline(workdir, """
        pipeline: shuffles
        steps:
          - op: read_parquet
            path: data/events
          - id: once
            op: deduplicate
          - id: latest
            op: deduplicate
            by: [customer_id]
            order: ts
            partitions: 4
          - id: totals
            op: aggregate
            by: []
            columns: {n: count()}
        """)
    plan = plan_file(path)
    lines = "\n".join(format_plan(plan, describe(plan)))
    assert "shuffles: one row per distinct row, from the rows of every partition" in lines
    assert "shuffles: one row per customer_id, from the rows of every partition (partial " \
           "rows through the scratch folder), into 4 partitions" in lines
    assert "shuffles: one row per all the rows" in lines


def test_a_scratch_folder_that_cannot_be_made_is_one_error(events: Path, workdir: Path) -> None:
    (workdir / "a_file").write_text("not a folder")
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, AGGREGATE.format(partitions="")),
            scratch=str(workdir / "a_file" / "scratch"))
    assert str(info.value).startswith(
        f"cannot create the shuffle files at '{workdir / 'a_file' / 'scratch'}'")
    assert "--scratch" in info.value.hint
    assert not (workdir / "out").exists()


def test_a_pivot_mistake_is_named_by_its_path(events: Path, workdir: Path) -> None:
    """A parameter of `pivot:` is named as pivot.column, with the pivot's own parameters
    to choose from; a value of no kind it may be is one problem, not one a kind."""
    from pipelines.runner import plan_file

    path = write_pipeline(workdir, """
        pipeline: wrong_pivot
        steps:
          - op: read_parquet
            path: data/events
          - op: aggregate
            by: [customer_id]
            pivot: {colum: kind, values: [buy, [1]]}
            columns: {n: count()}
        """)
    messages = sorted(p.message for p in plan_file(path).problems)
    assert messages == sorted([
        "missing required parameter 'pivot.column'",
        "unknown parameter 'pivot.colum'; did you mean 'column'? (pivot takes: column, "
        "values, format)",
        "parameter 'pivot.values.1': [1] is none of the kinds of value it may be (bool, int, "
        "float, str, date, datetime, time)"])
