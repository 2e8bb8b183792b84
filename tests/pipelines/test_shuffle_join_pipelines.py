"""join through a shuffle in pipelines: the broadcast join's rows on every engine (and
the same bytes on each), chosen by the table's size when asked to, a model trained on
its rows that a scoring pipeline with either kind of join repeats, and errors that name
the step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import DataError
from operators.io.parquet import ReadParquet
from pipelines.describe import _megabytes
from pipelines.engines.base import Engine
from pipelines.runner import plan_file, run
from pipelines.store import ModelStore

BY_ID = [("customer_id", "ascending")]


@pytest.fixture
def customers(churn: Path, workdir: Path) -> Path:
    """A customer table in 3 files: 4,000 of the churn data's 5,000 customers (a segment
    with nulls, a lifetime value) and 500 customers the data lacks."""
    ids = pq.read_table(churn, columns=["customer_id"])["customer_id"].to_numpy()
    rng = np.random.default_rng(11)
    known = np.concatenate([rng.permutation(ids)[:4000], np.arange(10**9, 10**9 + 500)])
    n = known.size
    table = pa.table({
        "customer_id": known,
        "segment": pa.array(rng.choice(["smb", "mid", "ent"], n), mask=rng.random(n) < 0.05),
        "lifetime_value": rng.gamma(2.0, 500.0, n),
    }).take(rng.permutation(n))
    out = workdir / "data" / "customers"
    out.mkdir(parents=True)
    for i in range(3):
        pq.write_table(table.slice(i * 1500, 1500), out / f"part-{i}.parquet")
    return out


BRANCHES = """
    pipeline: enrich
    steps:
      - id: rows
        op: read_parquet
        path: data/churn
        partition_mb: 0.05
      - id: shuffled
        op: join
        input: rows
        path: data/customers
        on: [customer_id]
        strategy: shuffle
        partitions: 4
      - op: write_parquet
        path: out/shuffled
      - id: broadcast
        op: join
        input: rows
        path: data/customers
        on: [customer_id]
        strategy: broadcast
      - op: write_parquet
        path: out/broadcast
      - id: unmatched
        op: join
        input: rows
        path: data/customers
        on: [customer_id]
        how: anti
        strategy: shuffle
      - op: write_parquet
        path: out/unmatched
"""


def test_a_shuffle_join_gives_the_broadcast_rows_on_every_engine(
        customers: Path, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = workdir / "scratch"
    monkeypatch.setenv("SLUICE_SCRATCH", str(scratch))
    path = write_pipeline(workdir, BRANCHES)
    record = run(path, engine_instance=engine)
    got = ds.dataset(workdir / "out" / "shuffled").to_table()
    want = ds.dataset(workdir / "out" / "broadcast").to_table()
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows == 5000
    assert got.sort_by(BY_ID).equals(want.sort_by(BY_ID))
    assert got["segment"].null_count > 1000  # the 1,000 customers not in the table
    step = record["steps"]["shuffled"]
    assert step["kind"] == "shuffle" and record["steps"]["broadcast"]["kind"] == "transform"
    assert step["rows"] == 5000
    # 3 input partitions and 3 table files written, 4 places, table rows with keys
    inputs = len(ds.dataset(workdir / "data" / "churn").files)
    assert step["shuffle"]["partitions"] == 4 and step["shuffle"]["table_rows"] == 4500
    assert step["shuffle"]["files"] >= inputs + 3
    unmatched = ds.dataset(workdir / "out" / "unmatched").to_table()
    assert unmatched.num_rows == 1000 == record["steps"]["unmatched"]["rows"]
    assert unmatched.column_names == pq.read_schema(
        next((workdir / "data" / "churn").glob("*.parquet"))).names
    # the same output partitions hold the same rows in the same order on every engine
    local = run(write_pipeline(workdir, BRANCHES.replace("out/", "local/"), "local.yaml"))
    assert local["steps"]["shuffled"]["shuffle"] == step["shuffle"]
    assert got.equals(ds.dataset(workdir / "local" / "shuffled").to_table())
    assert not list(scratch.glob("*")), "a run left its shuffle files"


def test_rows_keep_their_order_within_each_output_partition(customers: Path,
                                                            workdir: Path) -> None:
    record = run(write_pipeline(workdir, BRANCHES))
    order = {v: i for i, v in enumerate(
        ds.dataset(workdir / "data" / "churn").to_table()["customer_id"].to_pylist())}
    files = sorted((workdir / "out" / "shuffled").glob("*.parquet"))
    assert len(files) == record["steps"]["shuffled"]["shuffle"]["partitions"] == 4
    for file in files:
        ids = pq.read_table(file)["customer_id"].to_pylist()
        assert [order[i] for i in ids] == sorted(order[i] for i in ids)


AUTO = """
    pipeline: auto
    steps:
      - op: read_parquet
        path: data/churn
        partition_mb: 0.05
      - op: join
        path: data/customers
        on: [customer_id]
        columns: [segment]
        max_mb: {max_mb}
      - op: write_parquet
        path: out/auto
"""


def test_auto_shuffles_a_table_over_max_mb_and_the_plan_says_so(customers: Path,
                                                                workdir: Path) -> None:
    small_path = write_pipeline(workdir, AUTO.format(max_mb=256).replace(
        "max_mb: 256", "max_mb: 256\n        partitions: 4"), "small.yaml")
    small = plan_file(small_path)
    assert small.step("join").op.kind == "transform"
    # the table's columns the join reads (its key and segment), from the footers
    size = _megabytes(ReadParquet(path=str(customers), columns=[
        "customer_id", "segment"]).estimated_bytes() / 2**20)
    assert size.endswith(" KB") and float(size[:-3].replace(",", "")) > 10
    assert (f"broadcasts the table (its footers say ~{size}, within max_mb 256): read once "
            "on the driver, sent to every partition; partitions: 4 applies to a shuffle "
            "join only (strategy: shuffle)") in sluice_in_process("plan", str(small_path),
                                                                  cwd=workdir, check=True).stdout
    path = write_pipeline(workdir, AUTO.format(max_mb=0.01), "big.yaml")
    big = plan_file(path)
    assert big.step("join").op.kind == "shuffle"
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("shuffles: the rows and the table's rows by customer_id to the same places "
            f"through the scratch folder: its footers say ~{size}, over max_mb 0.01, into "
            "partitions of up to 64 MB, as many as the rows need (a key of more rows split "
            "among several); rows in their order within each") in shown
    as_json = json.loads(sluice_in_process("plan", str(path), "--json", cwd=workdir,
                                           check=True).stdout)
    (joined,) = [s for s in as_json["steps"] if s["id"] == "join"]
    assert joined["kind"] == "shuffle"
    record = run(path)
    # 6 input partitions of 0.3 MB in all: one bucket (a quarter of partition_mb holds
    # them), one output partition: the input's rows in the input's order, as a
    # broadcast join keeps them
    assert len(ReadParquet(path="data/churn", partition_mb=0.05).partitions()) > 3
    assert record["steps"]["join"]["shuffle"]["buckets"] == 1
    assert record["steps"]["join"]["shuffle"]["partitions"] == 1
    out = ds.dataset(workdir / "out" / "auto").to_table()
    churn = ds.dataset(workdir / "data" / "churn").to_table()
    assert out["customer_id"].equals(churn["customer_id"])


TRAIN = """
    pipeline: train_enriched
    steps:
      - op: read_parquet
        path: data/churn
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: join
        path: data/customers
        on: [customer_id]
        strategy: {strategy}
      - op: derive
        columns: {{value: "coalesce(lifetime_value, 0.0)", ent: "segment == 'ent'"}}
      - op: logistic_regression
        label: churned
        features: [tenure, total_charges, value]
      - op: save_model
        name: enriched
"""

SCORE = """
    pipeline: score_enriched
    steps:
      - op: read_parquet
        path: data/churn
      - op: join
        path: data/customers
        on: [customer_id]
        strategy: {strategy}
      - op: derive
        columns: {{value: "coalesce(lifetime_value, 0.0)"}}
      - op: score
        model: enriched
      - op: write_parquet
        path: out/{strategy}
"""


def test_a_model_trained_after_a_shuffle_join_keeps_the_fits_before_it(
        customers: Path, workdir: Path) -> None:
    """A join's rows are its input's: the impute fitted before it stays in the model (as
    with a broadcast join), and scoring with either kind of join gives the same scores."""
    record = run(write_pipeline(workdir, TRAIN.format(strategy="shuffle")))
    model = ModelStore().load("enriched")
    assert [s.name for s in model.chain.steps] == [
        "impute.fitted", "derive", "logistic_regression.fitted"]
    assert [s["step"] for s in model.meta["data_steps"]] == ["join"]
    # the join's columns are the model's input too: a scoring pipeline brings them
    assert model.required == ["total_charges", "lifetime_value", "segment", "tenure"]
    assert model.input_schema.field("lifetime_value").type == pa.float64()
    run(write_pipeline(workdir, TRAIN.format(strategy="broadcast"), "broadcast.yaml"))
    twin = ModelStore().load("enriched")
    a, b = (m.chain.steps[-1].state()[1] for m in (model, twin))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)
    assert record["metrics"]
    for strategy in ("shuffle", "broadcast"):
        run(write_pipeline(workdir, SCORE.format(strategy=strategy), f"{strategy}.yaml"))
    shuffled, broadcast = (ds.dataset(workdir / "out" / s).to_table().sort_by(BY_ID)
                           for s in ("shuffle", "broadcast"))
    np.testing.assert_allclose(shuffled["probability"].to_numpy(),
                               broadcast["probability"].to_numpy(), rtol=1e-12)


def test_a_key_on_several_rows_of_the_table_names_the_step(
        customers: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = workdir / "scratch"
    monkeypatch.setenv("SLUICE_SCRATCH", str(scratch))
    doubled = pq.read_table(customers / "part-0.parquet").slice(0, 5)
    pq.write_table(doubled, customers / "part-3.parquet")
    path = write_pipeline(workdir, BRANCHES)
    with pytest.raises(DataError) as info:
        run(path)
    text = str(info.value)
    assert f"{path}:7: step 'shuffled', partition " in text and "(bucket " in text, text
    assert "is on 2 rows of 'data/customers' (and " in text
    assert "in this share of the table): a join brings the columns of one row per key " \
           "(keep one row per key in the table" in text
    assert not list(scratch.glob("*")), "the failed run left its shuffle files"


DICTIONARIES = """
    pipeline: dictionaries
    steps:
      - op: read_parquet
        path: data/rows
      - op: join
        path: data/table
        on: [k]
        strategy: shuffle
        partitions: 7
      - op: write_parquet
        path: out/joined
      - op: deduplicate
        input: read_parquet
        by: [k]
        partitions: 7
      - op: write_parquet
        path: out/deduplicated
"""


def test_dictionary_columns_with_other_dictionaries_in_each_file_shuffle(
        workdir: Path) -> None:
    """Each file's (and the table's) dictionary columns have dictionaries of their own;
    a partition's empty buckets must not replace them (the IPC file format refuses a
    replaced dictionary)."""
    rows, table = workdir / "data" / "rows", workdir / "data" / "table"
    rows.mkdir(parents=True)
    table.mkdir(parents=True)
    for i, words in enumerate((["a", "b", "c"], ["x", "y"], ["b", "z"])):
        pq.write_table(pa.table({
            "k": pa.array(np.arange(i * 10, i * 10 + 10), pa.int64()),
            "word": pa.array([words[j % len(words)] for j in range(10)]).dictionary_encode(),
            "tag": pa.array([f"t{i}"] * 10).dictionary_encode()}), rows / f"{i}.parquet")
        pq.write_table(pa.table({
            "k": pa.array(np.arange(i * 10, i * 10 + 8) * 1, pa.int32()),
            "label": pa.array([words[0]] * 8).dictionary_encode()}), table / f"{i}.parquet")
    record = run(write_pipeline(workdir, DICTIONARIES))
    assert record["steps"]["join"]["shuffle"]["partitions"] == 7
    joined = ds.dataset(workdir / "out" / "joined").to_table().sort_by("k")
    assert joined.num_rows == 30 == joined["label"].null_count + 24
    assert joined["word"].to_pylist()[10:13] == ["x", "y", "x"]
    assert joined["label"].to_pylist()[:8] == ["a"] * 8
    unique = ds.dataset(workdir / "out" / "deduplicated").to_table().sort_by("k")
    assert unique["tag"].to_pylist() == [f"t{i // 10}" for i in range(30)]


MIXED_KEYS = """
    pipeline: mixed_keys
    steps:
      - id: rows
        op: read_parquet
        path: data/rows
      - id: shuffled
        op: join
        input: rows
        path: data/table
        on: [ts, f, i, d]
        columns: [w]
        strategy: shuffle
        partitions: 5
      - op: write_parquet
        path: out/shuffled
      - id: broadcast
        op: join
        input: rows
        path: data/table
        on: [ts, f, i, d]
        columns: [w]
        strategy: broadcast
      - op: write_parquet
        path: out/broadcast
"""


def test_keys_of_different_types_join_in_their_common_type_on_every_engine(
        workdir: Path, engine: Engine) -> None:
    """Times of two units and zones, float32 and float64, int32 and int64, decimals of
    two scales, together: compared in their common type (as Spark SQL compares them), the
    shuffle hashing both sides' keys in it (5 places, 3 input files), on every engine
    alike (each pair alone: tests/operators/test_join.py)."""
    import decimal

    rows_dir, table_dir = workdir / "data" / "rows", workdir / "data" / "table"
    rows_dir.mkdir(parents=True)
    table_dir.mkdir(parents=True)
    n = 60
    ms = np.arange(n, dtype=np.int64) * 1_001
    table = pa.table({
        "ts": pa.array(ms * 1_000_000, pa.timestamp("ns", tz="Europe/Paris")),
        "f": pa.array(np.arange(n) / 4, pa.float64()),
        "i": pa.array(np.arange(n), pa.int64()),
        "d": pa.array([decimal.Decimal(v) / 4 for v in range(n)], pa.decimal128(12, 4)),
        "w": pa.array(np.arange(n) * 10.0)})
    pq.write_table(table.slice(0, 30), table_dir / "0.parquet")
    pq.write_table(table.slice(30), table_dir / "1.parquet")
    # every other key of the table, and as many the table lacks
    picked = np.concatenate([np.arange(0, n, 2), np.arange(n, n + 30)])
    rows = pa.table({
        "ts": pa.array(picked * 1_001, pa.timestamp("ms", tz="Asia/Tokyo")),
        "f": pa.array(picked / 4, pa.float32()),
        "i": pa.array(picked, pa.int32()),
        "d": pa.array([decimal.Decimal(int(v)) / 4 for v in picked], pa.decimal128(6, 2)),
        "n": pa.array(np.arange(picked.size))})
    for i in range(3):
        pq.write_table(rows.slice(i * 20, 20), rows_dir / f"{i}.parquet")
    record = run(write_pipeline(workdir, MIXED_KEYS), engine_instance=engine)
    assert record["steps"]["shuffled"]["shuffle"]["partitions"] == 5
    got, want = (ds.dataset(workdir / "out" / out).to_table().sort_by("n")
                 for out in ("shuffled", "broadcast"))
    assert got.equals(want)
    # a key of one type that did not meet its table's would match no row
    assert got["w"].to_pylist() == [10.0 * v if v < n else None for v in picked]
    assert got.schema.field("d").type == pa.decimal128(6, 2)


ON_A_FITTED_COLUMN = """
    pipeline: fitted_key
    steps:
      - op: read_parquet
        path: data/rows
      - op: one_hot                   # plan=a: a column known once the fit has run
        columns: [plan]
      - op: join
        path: data/flags
        on: {plan=a: flag}
        strategy: shuffle
        partitions: 3
      - op: write_parquet
        path: out/joined
"""


def test_a_shuffle_join_on_a_column_a_fit_makes_binds_its_key_types_on_every_engine(
        workdir: Path, engine: Engine) -> None:
    """The key is one_hot's (float64, known once it has fitted), the table's int32: the
    table's side, read on the workers, hashes its keys in the type the run binds."""
    (workdir / "data" / "rows").mkdir(parents=True)
    (workdir / "data" / "flags").mkdir(parents=True)
    pq.write_table(pa.table({"plan": ["a", "b", "a", "c"] * 5, "x": np.arange(20)}),
                   workdir / "data" / "rows" / "0.parquet")
    pq.write_table(pa.table({"flag": pa.array([0, 1], pa.int32()), "w": [1.5, 2.5]}),
                   workdir / "data" / "flags" / "0.parquet")
    run(write_pipeline(workdir, ON_A_FITTED_COLUMN), engine_instance=engine)
    joined = ds.dataset(workdir / "out" / "joined").to_table().sort_by("x")
    assert joined["w"].to_pylist() == [2.5, 1.5, 2.5, 1.5] * 5
