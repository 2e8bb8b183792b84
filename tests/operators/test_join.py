"""join: a small Parquet table's columns brought to each row by key, against pandas'
merge; its checks and errors."""

from __future__ import annotations

import decimal
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, lookup
from operators.features.join import Join, ShuffleJoin
from operators.hashing import hash_rows
from operators.testing.kit import assert_tables_close, shuffled, side_partials

NP = get_namespace("numpy")


def join(**params) -> Join:
    cls = lookup("join")
    op = cls(cls.Params(**params))
    assert isinstance(op, Join)
    return op


def frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


@pytest.fixture
def rows() -> pa.Table:
    rng = np.random.default_rng(3)
    n = 500
    return pa.table({
        "a": pa.array(rng.integers(0, 30, n).astype(np.int32), mask=rng.random(n) < 0.05),
        "b": pa.array(np.array(["x", "y", "z"])[rng.integers(0, 3, n)]).dictionary_encode(),
        "v": rng.standard_normal(n),
    })


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """Keys (a, b): a in 0..24 (the rows go to 29), b in x, y (the rows have z too)."""
    rng = np.random.default_rng(4)
    a, b = np.meshgrid(np.arange(25), ["x", "y"], indexing="ij")
    lookup_table = pa.table({"a": pa.array(a.ravel(), pa.int64()), "b": b.ravel(),
                             "w": rng.standard_normal(a.size),
                             "name": [f"n{i}" for i in range(a.size)]})
    order = rng.permutation(lookup_table.num_rows)
    path = tmp_path / "lookup"
    path.mkdir()
    pq.write_table(lookup_table.take(order[:20]), path / "one.parquet")
    pq.write_table(lookup_table.take(order[20:]), path / "two.parquet")
    return path


def expected(rows: pa.Table, path: Path, on: list[str], how: str) -> pd.DataFrame:
    left = frame(rows).astype({"a": "Int64", "b": "string"}).reset_index()
    right = pq.read_table(path).to_pandas().astype({"a": "Int64", "b": "string"})
    merged = left.merge(right, on=on, how=how, sort=False)
    return merged.sort_values("index").drop(columns="index").reset_index(drop=True)


@pytest.mark.parametrize("how", ["left", "inner"])
def test_two_keys_match_pandas_merge_in_the_rows_order(rows: pa.Table, table: Path,
                                                       how: str) -> None:
    out = join(path=str(table), on=["a", "b"], how=how).transform(rows, NP)
    want = expected(rows, table, ["a", "b"], how)
    assert out.column_names == ["a", "b", "v", "w", "name"]
    assert out.num_rows == len(want) < rows.num_rows + (how == "left") * rows.num_rows
    np.testing.assert_array_equal(out["v"].to_numpy(), want["v"].to_numpy())
    got_w = out["w"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(np.isnan(got_w), want["w"].isna().to_numpy())
    np.testing.assert_allclose(got_w[~np.isnan(got_w)], want["w"].dropna().to_numpy())
    assert out["name"].to_pylist() == [None if pd.isna(v) else v for v in want["name"]]
    # the input's key columns are untouched (int32, dictionary)
    assert out.schema.field("a").type == pa.int32()
    assert pa.types.is_dictionary(out.schema.field("b").type)


def test_a_null_key_matches_nothing_not_even_a_null_key_of_the_table(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": pa.array(["p", None]), "x": [1.0, 2.0]}), path)
    out = join(path=str(path), on=["k"]).transform(
        pa.table({"k": pa.array([None, "p", "q"])}), NP)
    assert out["x"].to_pylist() == [None, 1.0, None]


def test_the_output_schema_is_planned_from_the_footer(rows: pa.Table, table: Path) -> None:
    op = join(path=str(table), on={"a": "a", "b": "b"}, columns=["name"], prefix="t_")
    planned = op.output_schema(rows.schema)
    assert planned.names == ["a", "b", "v", "t_name"]
    assert op._table is None  # planning reads no rows
    assert op.transform(rows, NP).schema == planned


def test_the_table_travels_with_the_step(rows: pa.Table, table: Path, tmp_path: Path) -> None:
    """Read on the driver once: a worker's copy works with the files gone."""
    op = join(path=str(table), on=["a", "b"])
    want = op.transform(rows, NP)
    shipped = pickle.dumps(op)
    for file in table.iterdir():
        file.unlink()
    assert pickle.loads(shipped).transform(rows, NP).equals(want)


def test_a_key_on_several_rows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"k": [1, 2, 2, 3, 3, 3], "x": np.arange(6.0)}), path)
    with pytest.raises(DataError) as info:
        join(path=str(path), on=["k"]).transform(pa.table({"k": [1]}), NP)
    assert str(info.value) == (
        f"key k=2 is on 2 rows of '{path}' (and 1 other keys are repeated): a join brings "
        "the columns of one row per key (keep one row per key in the table, or choose them "
        "with filter:)")


def test_keys_of_different_kinds_fail_as_planned(rows: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": ["1", "2"], "x": [1.0, 2.0]}), path)
    with pytest.raises(SchemaError) as info:
        join(path=str(path), on=["a"]).output_schema(rows.schema)
    assert str(info.value) == (
        f"on: key 'a' is int32 in the input and string in '{path}': keys that cannot be "
        "compared (cast one side first (op: cast), so that both are numbers or both text)")
    with pytest.raises(SchemaError) as info:
        join(path=str(path), on={"v": "a"}).output_schema(rows.schema)
    assert str(info.value).startswith(
        f"on: key 'v' is double in the input and string in '{path}' (column 'a'): keys that "
        "cannot be compared")


def test_a_name_the_input_has_already_is_an_error(rows: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2], "v": [1.0, 2.0]}), path)
    with pytest.raises(SchemaError, match="columns: the input has a column 'v' already "
                                          r"\(name the columns to bring"):
        join(path=str(path), on=["a"]).output_schema(rows.schema)
    assert join(path=str(path), on=["a"], prefix="t_").output_schema(rows.schema).names[-1] == (
        "t_v")


def test_a_key_the_table_lacks_names_the_closest(rows: pa.Table, table: Path) -> None:
    with pytest.raises(SchemaError) as info:
        join(path=str(table), on={"a": "a", "b": "bb"}).output_schema(rows.schema)
    assert str(info.value) == (f"on: key column 'bb' not in '{table}'; did you mean 'b'? "
                               "(it has: a, b, w, name)")


def test_a_broadcast_table_over_max_mb_is_an_error_that_names_the_shuffle(
        rows: pa.Table, table: Path) -> None:
    with pytest.raises(DataError, match=r"takes 0 MB in memory, over max_mb 1e-06 \(join "
                                        r"it through a shuffle \(strategy: shuffle"):
        join(path=str(table), on=["a", "b"], max_mb=1e-6,
             strategy="broadcast").transform(rows, NP)


def test_many_keys_of_many_values_fold_without_overflow(tmp_path: Path) -> None:
    """Four keys of 10^5 values each: a product of their counts would overflow int64."""
    rng = np.random.default_rng(5)
    n = 100_000
    keys = {f"k{i}": rng.permutation(n) for i in range(4)}
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({**keys, "x": np.arange(n, dtype=np.float64)}), path)
    pick = rng.integers(0, n, 1000)
    rows = pa.table({name: values[pick] for name, values in keys.items()})
    rows = rows.set_column(3, "k3", pa.array(np.where(np.arange(1000) % 7 == 0, -1,
                                                      keys["k3"][pick])))
    out = join(path=str(path), on=list(keys)).transform(rows, NP)
    want = np.where(np.arange(1000) % 7 == 0, np.nan, pick.astype(np.float64))
    np.testing.assert_array_equal(out["x"].to_numpy(zero_copy_only=False), want)


def test_the_table_filter_may_use_columns_the_join_does_not_bring(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": [1, 2, 3], "x": [10.0, 20.0, 30.0],
                             "active": [True, False, True]}), path)
    op = join(path=str(path), on=["k"], columns=["x"], filter="active")
    rows = pa.table({"k": [1, 2, 3, 4]})
    assert op.output_schema(rows.schema).names == ["k", "x"]
    assert op.transform(rows, NP)["x"].to_pylist() == [10.0, None, 30.0, None]
    assert op.table().column_names == ["k", "x"]  # only what the join uses is kept


def test_an_anti_join_keeps_the_rows_without_a_match(rows: pa.Table, table: Path) -> None:
    op = join(path=str(table), on=["a", "b"], how="anti")
    assert op.output_schema(rows.schema) == rows.schema
    out = op.transform(rows, NP)
    matched = join(path=str(table), on=["a", "b"], how="inner").transform(rows, NP)
    assert out.num_rows + matched.num_rows == rows.num_rows
    a, b = out["a"].to_pylist(), out["b"].cast(pa.string()).to_pylist()
    assert all(x is None or x >= 25 or y == "z" for x, y in zip(a, b, strict=True))
    assert out.equals(rows.filter(pa.array([
        x is None or x >= 25 or y == "z" for x, y in zip(
            rows["a"].to_pylist(), rows["b"].cast(pa.string()).to_pylist(), strict=True)])))
    with pytest.raises(ParamError, match="how: anti keeps the rows without a match"):
        join(path=str(table), on=["a"], how="anti", columns=["w"])


# ---------------------------------------------------------------- through a shuffle


def shuffle_join(**params) -> ShuffleJoin:
    op = lookup("join").create(lookup("join").Params(**params, strategy="shuffle"))
    assert isinstance(op, ShuffleJoin)
    return op


def test_auto_joins_through_a_shuffle_a_table_its_footers_say_is_over_max_mb(
        table: Path) -> None:
    cls = lookup("join")
    small = cls.create(cls.Params(path=str(table), on=["a", "b"]))
    assert type(small) is Join
    large = cls.create(cls.Params(path=str(table), on=["a", "b"], max_mb=1e-3))
    assert isinstance(large, ShuffleJoin) and large.kind == "shuffle" and large.name == "join"
    # keys and brought columns at 8 bytes a value at least: 50 rows x 4 columns
    assert 1e-3 < 50 * 4 * 8 / 2**20 <= large.estimated_mb < 0.01
    # the table's problems are the plan's: auto falls back to the broadcast, which says
    assert type(cls.create(cls.Params(path=str(table / "nothing"), on=["a"]))) is Join
    with pytest.raises(ParamError, match="partitions: a broadcast join keeps its input's"):
        cls.Params(path=str(table), on=["a"], strategy="broadcast", partitions=4)


@pytest.mark.parametrize("how", ["left", "inner", "anti"])
@pytest.mark.parametrize("buckets", [1, 5])
def test_a_shuffle_join_gives_the_broadcast_rows_in_their_order_within_a_partition(
        rows: pa.Table, table: Path, how: str, buckets: int) -> None:
    want = join(path=str(table), on=["a", "b"], how=how).transform(rows, NP)
    op = shuffle_join(path=str(table), on=["a", "b"], how=how)
    parts = [rows.slice(0, 100), rows.slice(100, 0), rows.slice(100, 250), rows.slice(350)]
    got = shuffled(op, parts, buckets, seed=3)
    assert got.schema == want.schema == op.output_schema(rows.schema)
    if buckets == 1:
        assert got.equals(want)
    else:  # the same rows; each partition's in the input's order
        order = [np.argsort(hash_rows(t, t.column_names, 1), kind="stable")
                 for t in (got, want)]
        assert got.take(order[0]).equals(want.take(order[1]))


def test_a_shuffle_join_keeps_each_partitions_rows_in_the_input_order(
        rows: pa.Table, table: Path) -> None:
    """Place by place: the rows of each output partition are input rows in order."""
    from operators.hashing import hash_rows as placed_by
    from operators.testing.kit import _assert_in_input_order

    op = shuffle_join(path=str(table), on=["a", "b"])
    partials = op.partial(rows)
    where = placed_by(partials, op.key_columns(), 7) % np.uint64(4)
    (side,) = side_partials(op)
    side_where = placed_by(side, op.sides()[0].key_columns(), 7) % np.uint64(4)
    total = 0
    for b in range(4):
        out = op.finish(partials.filter(pa.array(where == b)),
                        side.filter(pa.array(side_where == b)))
        _assert_in_input_order(rows, out)
        total += out.num_rows
    assert total == rows.num_rows


def test_the_shuffled_tables_keys_compare_as_values(tmp_path: Path) -> None:
    """int32 against int64, a dictionary against text, -0.0 against 0.0 and NaN
    against NaN place and match alike (as the broadcast join matches them)."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"i": pa.array([1, 2, 3], pa.int64()), "s": ["x", "y", "z"],
                             "f": [0.0, float("nan"), 2.5], "w": [10.0, 20.0, 30.0]}), path)
    rows = pa.table({"i": pa.array([3, 1, 2, 2, None], pa.int32()),
                     "s": pa.array(["z", "x", "y", "q", "x"]).dictionary_encode(),
                     "f": [2.5, -0.0, float("nan"), float("nan"), 0.0]})
    for on in (["i"], ["s"], ["f"], ["i", "s", "f"]):
        want = join(path=str(path), on=on, columns=["w"]).transform(rows, NP)
        got = shuffled(shuffle_join(path=str(path), on=on, columns=["w"]), [rows], 1)
        assert_tables_close(got, want, 0, 0, f"on {on}")
    assert want["w"].to_pylist() == [30.0, 10.0, 20.0, None, None]
    assert join(path=str(path), on=["f"]).transform(rows, NP)["w"].to_pylist() == [
        30.0, 10.0, 20.0, 20.0, 10.0]


def test_a_key_on_several_rows_of_a_shuffled_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"k": [1, 2, 2, 3, None, None], "x": np.arange(6.0)}), path)
    with pytest.raises(DataError) as info:
        shuffled(shuffle_join(path=str(path), on=["k"]), [pa.table({"k": [1, 5]})], 1)
    assert str(info.value) == (
        f"key k=2 is on 2 rows of '{path}' (and 0 other keys are repeated in this share of "
        "the table): a join brings the columns of one row per key (keep one row per key in "
        "the table, or choose them with filter:)")


def test_a_shuffle_join_travels_without_its_table(rows: pa.Table, table: Path) -> None:
    op = shuffle_join(path=str(table), on=["a", "b"], columns=["w"])
    shipped = pickle.dumps(op)
    assert len(shipped) < 20_000
    copy = pickle.loads(shipped)
    assert copy.partial(rows).equals(op.partial(rows))
    assert shuffled(copy, [rows], 2).equals(shuffled(op, [rows], 2))


def test_uint64_keys_past_int64_join_each_other(tmp_path: Path) -> None:
    big = 2**63 + 5
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": pa.array([big, 1], pa.uint64()), "x": [1.0, 2.0]}), path)
    rows = pa.table({"k": pa.array([1, big, 7], pa.uint64())})
    for strategy in ("broadcast", "shuffle"):
        op = lookup("join").create(lookup("join").Params(path=str(path), on=["k"],
                                                         strategy=strategy))
        got = op.transform(rows, NP) if strategy == "broadcast" else shuffled(op, [rows], 3)
        assert sorted(zip(got["k"].to_pylist(), got["x"].to_pylist()), key=str) == sorted(
            [(1, 2.0), (big, 1.0), (7, None)], key=str)


def test_a_time_without_a_zone_and_one_with_are_not_compared(tmp_path: Path) -> None:
    """No zone to read the naive time in: refused, with a cast to the finer unit."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"ts": pa.array([0], pa.timestamp("ms", tz="Europe/Paris")),
                             "x": [1.0]}), path)
    with pytest.raises(SchemaError) as info:
        join(path=str(path), on=["ts"]).output_schema(pa.schema({"ts": pa.timestamp("us")}))
    assert info.value.message.endswith("keys that cannot be compared")
    assert info.value.hint == ("cast one side first (op: cast), e.g. both to "
                               "timestamp[us, tz=Europe/Paris] (a time without a zone is "
                               "taken as UTC)")


def test_a_steps_rows_as_the_table_broadcast_or_shuffled(rows: pa.Table, table: Path) -> None:
    """``table: <step>``: the step's rows, bound by the run, give the rows a Parquet
    table of the same rows gives; ``auto`` is decided from the run's estimate."""
    given = pq.read_table(table)
    from_file = join(path=str(table), on=["a", "b"])
    want = from_file.transform(rows, NP)
    op = join(table="features", on=["a", "b"])
    assert op.step_inputs() == ["features"]
    with pytest.raises(SchemaError, match="the columns of step 'features' are not known"):
        op.output_schema(rows.schema)
    op.bind_step_schema("features", given.schema)
    assert op.output_schema(rows.schema) == from_file.output_schema(rows.schema)
    # within max_mb: this broadcast join, which takes the rows the run collects
    assert op.decided(given.nbytes) is op and op.estimated_mb == given.nbytes / 2**20
    op.bind_table(given)
    assert op.transform(rows, NP).equals(want)
    assert pickle.loads(pickle.dumps(op)).transform(rows, NP).equals(want)
    # over max_mb, or no estimate: a shuffle join whose table is the step's rows
    for estimate in (2**30, None):
        other = join(table="features", on=["a", "b"])
        other.bind_step_schema("features", given.schema)
        shuffle = other.decided(estimate)
        assert isinstance(shuffle, ShuffleJoin) and shuffle.sides()[0].step == "features"
        assert shuffle.output_schema(rows.schema) == from_file.output_schema(rows.schema)
        side = shuffle.sides()[0]
        # the side's rows: the keys and the columns brought (not the step's others)
        partials = side.partial(given.append_column("other", pa.array([1] * len(given))))
        assert "other" not in partials.column_names
        # at one place (the runtime brings each key's rows of both to one of many)
        got = shuffle.finish(shuffle.partial(rows), partials)
        assert_tables_close(got, want, 0, 0, "the step's rows, shuffled")
    # broadcast and shuffle given outright are not decided again
    assert join(table="features", on=["a"], strategy="broadcast").decided(2**40).params.table
    assert isinstance(lookup("join").create(lookup("join").Params(
        table="features", on=["a"], strategy="shuffle")), ShuffleJoin)
    with pytest.raises(ParamError, match="give path .* or table"):
        join(on=["a"])


def test_keys_of_different_types_compare_in_their_common_type(tmp_path: Path) -> None:
    """As Spark SQL compares them: times in the finer unit (zoned times as instants,
    whatever the zones), float32 with float64 as float64, int32 with int64, decimals
    widened, a uint64 with a signed integer as decimal(20, 0): broadcast and shuffle
    joins find the same rows, the shuffle's across several places."""
    path = tmp_path / "t.parquet"
    ms = [1_000, 2_001, 3_002, 4_003]
    pq.write_table(pa.table({
        "ts": pa.array([v * 1_000_000 for v in ms], pa.timestamp("ns")),
        "zoned": pa.array(ms, pa.timestamp("ms", tz="Europe/Paris")),
        "f": pa.array([0.5, 1.25, -0.0, 3.0], pa.float64()),
        "i": pa.array([1, 2, 3, 2**40], pa.int64()),
        "d": pa.array([decimal.Decimal(v) for v in ("1.5000", "2.2500", "0", "9.9999")],
                      pa.decimal128(10, 4)),
        "u": pa.array([1, 2, 3, 2**63 + 5], pa.uint64()),
        "w": [10.0, 20.0, 30.0, 40.0]}), path)
    rows = pa.table({
        "ts": pa.array([4_003, 1_000, 2_000, None, 3_002], pa.timestamp("ms")),
        "zoned": pa.array([4_003_000, 1_000_000, 2_000_000, None, 3_002_000],
                          pa.timestamp("us", tz="Asia/Tokyo")),
        "f": pa.array([3.0, 0.5, 1.1, None, 0.0], pa.float32()),
        "i": pa.array([2**31 - 1, 1, 2, None, 3], pa.int32()),
        "d": pa.array([decimal.Decimal(v) for v in ("9.99", "1.50", "2.20", "0", "0.00")],
                      pa.decimal128(5, 2)),
        "u": pa.array([-1, 1, 7, None, 3], pa.int16()),
    })
    want = {"ts": [40.0, 10.0, None, None, 30.0], "zoned": [40.0, 10.0, None, None, 30.0],
            "f": [40.0, 10.0, None, None, 30.0], "i": [None, 10.0, 20.0, None, 30.0],
            "d": [None, 10.0, None, 30.0, 30.0], "u": [None, 10.0, None, None, 30.0]}
    parts = [rows.slice(0, 2), rows.slice(2)]
    for on, w in want.items():
        op = join(path=str(path), on=[on], columns=["w"])
        assert op.output_schema(rows.schema).field(on).type == rows.schema.field(on).type
        assert op.transform(rows, NP)["w"].to_pylist() == w, on
        shuffle = shuffle_join(path=str(path), on=[on], columns=["w"])
        shuffle.output_schema(rows.schema)
        got = shuffled(shuffle, parts, 5)
        assert sorted(got["w"].to_pylist(), key=str) == sorted(w, key=str), on
        assert got.schema == op.output_schema(rows.schema)
