"""A shuffle's output partitions ("pieces", ``pipelines/shuffle.py``): neighbouring buckets
put together up to ``partition_mb``, a join's skewed bucket split by the files that wrote
it, the bytes each bucket's rows take, and a skewed join on every engine."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import ParamError
from operators.features.aggregate import Aggregate
from operators.features.join import Join, ShuffleJoin
from operators.features.window import Window
from operators.io.parquet import ReadParquet
from pipelines.engines.base import Engine
from pipelines.runner import run
from pipelines.shuffle import Piece, ShuffledSource, ShuffleWrite, bucket_bytes, pieces

MB = 2**20


def written(sizes: list[float], files: list[dict[int, float]] | None = None) -> dict[str, Any]:
    """What a stage 1 that wrote buckets of ``sizes`` MB (in ``files``: each file's MB
    a bucket) returns."""
    files = files if files is not None else [{b: s for b, s in enumerate(sizes) if s}]
    return {"bucket_rows": [int(s * 1000) for s in sizes],
            "bucket_bytes": [int(s * MB) for s in sizes],
            "file_buckets": [(f"part-{i:06d}.arrow", {b: int(s * 1000) for b, s in f.items()},
                              {b: int(s * MB) for b, s in f.items()})
                             for i, f in enumerate(files)]}


def covers(chosen: list[Piece], buckets: int) -> None:
    """The pieces are runs of buckets in order, each bucket in one run (a split bucket in
    several pieces one after the other)."""
    at = 0
    for piece in chosen:
        if piece.files is not None and piece.lo == at - 1:
            continue  # the next share of a split bucket
        assert piece.lo == at and piece.hi > piece.lo, chosen
        at = piece.hi
    assert at == buckets


def test_neighbouring_buckets_are_put_together_up_to_partition_mb() -> None:
    op = Aggregate(by=["k"], columns={"n": "count()"}, partition_mb=10)
    sizes = [1, 2, 3, 9, 0, 0, 4, 12, 2, 2]
    chosen = pieces(op, written(sizes), [], input_partitions=1)
    covers(chosen, len(sizes))
    assert [(p.lo, p.hi) for p in chosen] == [(0, 3), (3, 6), (6, 7), (7, 8), (8, 10)]
    assert [p.bytes / MB for p in chosen] == [6, 9, 4, 12, 4]
    assert [p.rows for p in chosen] == [6000, 9000, 4000, 12000, 4000]
    # empty buckets after a large one join it: no piece of no rows
    after = pieces(op, written([12, 0, 0, 0]), [], input_partitions=1)
    assert [(p.lo, p.hi) for p in after] == [(0, 4)]
    # a bucket over partition_mb stays whole: a key's rows meet in one place
    assert all(p.files is None for p in chosen)
    # partitions: N is N buckets, a piece each, however small
    exact = Aggregate(by=["k"], columns={"n": "count()"}, partitions=10)
    assert [(p.lo, p.hi) for p in pieces(exact, written(sizes), [], 10)] == [
        (b, b + 1) for b in range(10)]


def test_the_input_partitions_size_wins_over_a_quarter_of_partition_mb() -> None:
    """Buckets as large as the input's partitions stay apart (each one a piece, as the
    input was cut); smaller than a quarter of partition_mb, they are put together."""
    op = Aggregate(by=["k"], columns={"n": "count()"})  # 64 MB
    big = [20.0] * 8
    assert len(pieces(op, written(big), [], input_partitions=8)) == 8
    small = [1.0] * 40  # 40 MB of 40 partitions: pieces of 16 MB
    chosen = pieces(op, written(small), [], input_partitions=40)
    assert [p.hi - p.lo for p in chosen] == [16, 16, 8]
    assert len(pieces(op, written([0.0] * 5), [], input_partitions=5)) == 1  # no rows


def test_a_joins_skewed_bucket_is_split_by_files_each_with_the_whole_table_share() -> None:
    op = ShuffleJoin(path="t.parquet", on=["k"], strategy="shuffle", partition_mb=8)
    assert op.splittable and not Window(by=["k"], order=["t"],
                                        columns={"n": "row_number()"}).splittable
    files = [{0: 1, 1: 3}, {1: 3, 2: 1}, {1: 3}, {1: 3, 2: 1}, {0: 1}]
    sizes = [2, 12, 2]
    table = {"bucket_bytes": [0, 1 * MB, 0]}  # the table's rows of each bucket
    chosen = pieces(op, written(sizes, files), [table], input_partitions=1)
    covers(chosen, 3)
    # bucket 1 (12 MB and 1 MB of table): pieces of at most 8 - 1 MB of input rows
    split = [p for p in chosen if p.files is not None]
    assert [p.files for p in split] == [("part-000000.arrow", "part-000001.arrow"),
                                        ("part-000002.arrow", "part-000003.arrow")]
    assert [p.rows for p in split] == [6000, 6000]
    assert [p.bytes / MB for p in split] == [7, 7]
    assert [(p.lo, p.hi) for p in chosen if p.files is None] == [(0, 1), (2, 3)]
    # over the target (here the input partitions' average, 4 MB) by the hash's chance,
    # but within partition_mb: whole
    assert all(p.files is None for p in pieces(op, written([4, 6, 2], files), [], 4))
    # a bucket of a window (a key meets in one place) is never split
    window = Window(by=["k"], order=["t"], columns={"n": "row_number()"}, partition_mb=8)
    assert [(p.lo, p.hi, p.files) for p in pieces(window, written(sizes, files), [], 5)] == [
        (0, 1, None), (1, 2, None), (2, 3, None)]


def test_bucket_bytes_are_the_rows_bytes_whatever_the_cut() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    words = [("x" * int(k)) for k in rng.integers(0, 30, n)]
    table = pa.table({
        "i": pa.array(rng.integers(0, 9, n), pa.int32()),
        "f": rng.random(n),
        "flag": pa.array(rng.random(n) < 0.5),
        "word": pa.array(words),
        "big": pa.array(words, pa.large_string()),
        "tag": pa.array(rng.choice(["a", "b"], n)).dictionary_encode(),
        "list": pa.array([[1, 2]] * n),
    })
    counts = np.array([0, 300, 1, 0, 699])
    got = bucket_bytes(table, counts)
    lengths = np.array([len(w) for w in words])
    ends = np.cumsum(counts)
    for b, (start, end) in enumerate(zip(ends - counts, ends, strict=True)):
        rows = end - start
        text = int(lengths[start:end].sum())
        fixed = rows * (4 + 8 + 1 + 4 + 8 + 4)  # int32, double, bool, offsets, index
        lists = rows * (table["list"].nbytes // n)
        assert got[b] == fixed + 2 * text + lists, b
    # a table cut another way (a slice of the column) counts the same
    assert list(bucket_bytes(table.slice(300), np.array([1, 699]))) == [got[2], got[4]]


def test_a_piece_reads_its_buckets_and_only_its_files(tmp_path: Path) -> None:
    op = Aggregate(by=["k"], columns={"n": "count()"})
    table = pa.table({"k": np.arange(200) % 20, "v": np.ones(200)})
    url = str(tmp_path / "features")
    sink = ShuffleWrite(op, url, buckets=4)
    token = sink.begin("run", table.schema)
    made = sink.commit(token, [sink.write(token, table.slice(i * 50, 50), i)
                               for i in range(4)])
    assert [f[0] for f in made["file_buckets"]] == [f"part-{i:06d}.arrow" for i in range(4)]
    assert sum(made["bucket_bytes"]) == sum(sum(f[2].values()) for f in made["file_buckets"])
    whole = ShuffledSource(op, url, table.schema, made,
                           pieces=[Piece(0, 2, rows=sum(made["bucket_rows"][:2])),
                                   Piece(2, 4, rows=sum(made["bucket_rows"][2:]))])
    parts = [whole.read(p) for p in whole.partitions()]
    assert sorted(k for p in parts for k in p["k"].to_pylist()) == list(range(20))
    assert all(n == 10 for p in parts for n in p["n"].to_pylist())
    assert "buckets 0-1" in whole.partitions()[0].path
    # a share of one bucket: the rows of its files only
    b = int(np.flatnonzero(made["bucket_rows"])[0])
    share = ShuffledSource(op, url, table.schema, made,
                           pieces=[Piece(b, b + 1, ("part-000001.arrow",), rows=1)])
    (info,) = share.partitions()
    assert "1 files" in info.path
    assert set(share.read(info)["n"].to_pylist()) <= {2, 3}  # 50 rows of 20 keys
    (tmp_path / "features" / "part-000001.arrow").unlink()
    from operators.base import SluiceError

    with pytest.raises(SluiceError, match="not all here: 0 of 1"):
        share.read(info)


def test_a_joins_rows_of_several_buckets_come_back_in_input_order(tmp_path: Path) -> None:
    """Each partition's rows are written sorted by bucket, with their places: a piece of
    several buckets puts each partition's back in order (a join keeps the input's)."""
    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"k": np.arange(50), "w": np.arange(50) * 10}), table)
    op = ShuffleJoin(path=str(table), on=["k"], strategy="shuffle")
    rows = pa.table({"id": np.arange(600), "k": np.arange(600) * 7 % 60})
    url = str(tmp_path / "joined")
    for positions in (True, False):
        sink = ShuffleWrite(op, url + str(positions), buckets=5, positions=positions)
        token = sink.begin("run", rows.schema)
        made = sink.commit(token, [sink.write(token, rows.slice(i * 200, 200), i)
                                   for i in range(3)])
        side = op.sides()[0]
        side_sink = ShuffleWrite(side, url + str(positions) + "/table", buckets=5)
        side_token = side_sink.begin("run", pa.schema([]))
        side_made = side_sink.commit(side_token, [side_sink.write(
            side_token, side.source().read(p), p.index) for p in side.source().partitions()])
        source = ShuffledSource(
            op, url + str(positions), rows.schema, made, positions=positions,
            sides=[(url + str(positions) + "/table",
                    side.partial_schema(side.source().schema()), side_made)],
            pieces=[Piece(0, 3, rows=sum(made["bucket_rows"][:3])),
                    Piece(3, 5, rows=sum(made["bucket_rows"][3:]))])
        parts = [source.read(p) for p in source.partitions()]
        ids = [p["id"].to_numpy() for p in parts]
        assert sum(len(i) for i in ids) == 600
        in_order = all((np.diff(i) > 0).all() for i in ids)
        assert in_order == positions  # without the places: bucket by bucket
        for part in parts:
            k = part["k"].to_numpy()
            w = part["w"].to_numpy(zero_copy_only=False)
            np.testing.assert_array_equal(np.where(k < 50, k * 10.0, np.nan), w)


def test_partitions_and_partition_mb_are_one_or_the_other() -> None:
    with pytest.raises(ParamError, match="partitions and partition_mb: give one"):
        Aggregate(by=["k"], columns={"n": "count()"}, partitions=3, partition_mb=4)
    with pytest.raises(ParamError, match="partition_mb: a broadcast join keeps"):
        Join(path="t.parquet", on=["k"], strategy="broadcast", partition_mb=4)


SKEWED = """
    pipeline: skewed
    steps:
      - id: orders
        op: read_parquet
        path: data/orders
        partition_mb: 0.02
      - id: joined
        op: join
        path: data/customers
        on: [customer_id]
        strategy: shuffle
        partition_mb: 0.05
      - op: write_parquet
        path: {out}
      - id: plain
        op: join
        input: orders
        path: data/customers
        on: [customer_id]
        strategy: broadcast
      - op: write_parquet
        path: {out}_broadcast
"""


@pytest.fixture
def orders(workdir: Path) -> Path:
    """8,000 orders in 8 files, 40% of them of customer 7; 500 customers."""
    rng = np.random.default_rng(4)
    n = 8000
    customer = np.where(rng.random(n) < 0.4, 7, rng.integers(0, 600, n))
    table = pa.table({"order_id": np.arange(n), "customer_id": customer,
                      "amount": rng.gamma(2.0, 10.0, n)})
    folder = workdir / "data" / "orders"
    folder.mkdir(parents=True)
    for i in range(8):
        pq.write_table(table.slice(i * 1000, 1000), folder / f"part-{i}.parquet")
    customers = workdir / "data" / "customers"
    customers.mkdir(parents=True)
    pq.write_table(pa.table({"customer_id": np.arange(500),
                             "segment": rng.choice(["smb", "ent"], 500)}),
                   customers / "part-0.parquet")
    return folder


def test_a_skewed_key_is_split_among_output_partitions_on_every_engine(
        orders: Path, workdir: Path, engine: Engine) -> None:
    record = run(write_pipeline(workdir, SKEWED.format(out="out/joined")),
                 engine_instance=engine)
    shuffle = record["steps"]["joined"]["shuffle"]
    # a bucket a quarter of 0.05 MB of the orders' and the table's rows (as their
    # footers say): more than the 8 input partitions
    inputs = (ReadParquet(path=str(orders), partition_mb=0.02).estimated_bytes()
              + ReadParquet(path=str(workdir / "data" / "customers")).estimated_bytes())
    assert shuffle["buckets"] == math.ceil(inputs / (0.05 * 2**20 / 4)) > 8
    assert shuffle["split_buckets"] == 1
    got = ds.dataset(workdir / "out" / "joined").to_table()
    want = ds.dataset(workdir / "out" / "joined_broadcast").to_table()
    by_id = [("order_id", "ascending")]
    assert got.sort_by(by_id).equals(want.sort_by(by_id))
    # customer 7's rows are in several output partitions, each in the input's order
    files = sorted((workdir / "out" / "joined").glob("*.parquet"))
    assert len(files) == shuffle["partitions"]
    holding = 0
    for file in files:
        part = pq.read_table(file)
        ids = part["order_id"].to_numpy()
        assert (np.diff(ids) > 0).all() or len(ids) < 2
        holding += 7 in part["customer_id"].to_pylist()
    assert holding > 1
    # the same output partitions on every engine
    if engine.name != "local":
        shutil.rmtree(workdir / "out", ignore_errors=True)
        local = run(write_pipeline(workdir, SKEWED.format(out="out/local"), "local.yaml"))
        assert local["steps"]["joined"]["shuffle"] == shuffle
        assert got.equals(ds.dataset(workdir / "out" / "local").to_table())


HOT_WINDOW = """
    pipeline: hot
    steps:
      - op: read_parquet
        path: data/orders
        partition_mb: 0.02
      - id: history
        op: window
        by: [customer_id]
        order: [order_id]
        columns: {n: row_number()}
        partition_mb: 0.02
      - op: write_parquet
        path: out/history
"""


def test_a_hot_key_of_a_window_stays_whole_and_the_run_says_so(orders: Path,
                                                               workdir: Path) -> None:
    lines: list[str] = []
    path = write_pipeline(workdir, HOT_WINDOW)
    record = run(path, notify=lines.append)
    shuffle = record["steps"]["history"]["shuffle"]
    assert "split_buckets" not in shuffle and shuffle["largest_mb"] > 0.04
    (line,) = [ln for ln in lines if "one output partition" in ln]
    assert line.startswith(f"{path}:6: step 'history': one output partition (bucket ")
    assert "over partition_mb 0.02: a key's rows meet in one place" in line
    assert f"more than the {shuffle['buckets']} buckets there were" in line
    # customer 7's rows: one output partition, numbered 1.. in order
    sevens = [pq.read_table(f, filters=ds.field("customer_id") == 7)
              for f in sorted((workdir / "out" / "history").glob("*.parquet"))]
    held = [t for t in sevens if t.num_rows]
    orders_of_7 = ds.dataset(orders).to_table(filter=ds.field("customer_id") == 7)
    assert len(held) == 1 and held[0].num_rows == orders_of_7.num_rows > 3000
    assert held[0]["n"].to_pylist() == list(range(1, held[0].num_rows + 1))
    assert held[0]["order_id"].equals(orders_of_7["order_id"])


def test_a_datasets_size_is_its_sources_only_where_that_bounds_it(orders: Path) -> None:
    """The bucket count trusts a source's estimate through steps that keep some of its
    rows and columns as they are, not through one that adds or changes a column."""
    from operators.features.columns import Select
    from operators.features.derive import Derive
    from pipelines.engines.base import Dataset

    read = ReadParquet(path=str(orders))
    data = Dataset(source=read, source_step="read", schema=read.schema())
    listed = read.partitions()
    assert data.estimated_bytes(listed) == read.estimated_bytes() > 0
    kept = Select(columns=["customer_id", "amount"])
    narrower = data.then("select", kept, kept.output_schema(data.schema))
    assert narrower.estimated_bytes(listed) == read.estimated_bytes()
    # a derive's number: 8 bytes a row more (the read's 8,000 rows)
    derive = Derive(columns={"big": "amount * 2"})
    wider = narrower.then("derive", derive, derive.output_schema(narrower.schema))
    assert wider.estimated_bytes(listed) == read.estimated_bytes() + 8 * 8000
    # a derive's text: no bound
    text = Derive(columns={"label": "cast(customer_id as string)"})
    worded = wider.then("text", text, text.output_schema(wider.schema))
    assert worded.estimated_bytes(listed) is None
