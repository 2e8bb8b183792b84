"""read_parquet reads every Parquet file pyarrow reads, and fails on a broken one in one line.

The oracle is pyarrow itself: every read is compared with ``pq.read_table`` of the same
file (or the same table filtered with pyarrow.compute), never with hard-coded results.
"""

from __future__ import annotations

import base64
import decimal
import functools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.base import DataError, ParamError, PartitionInfo, SchemaError, SluiceError
from operators.expressions import parse_filter
from operators.io.parquet import MANIFEST, ReadParquet

N = 60


def every_type_table(rows: int = N, seed: int = 0) -> pa.Table:
    """One column of each Arrow type Parquet can hold, with nulls where a type has them."""
    rng = np.random.default_rng(seed)
    mask = rng.random(rows) < 0.2
    idx = np.arange(rows)
    cols: dict[str, pa.Array] = {}
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
              pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
        dtype = t.to_pandas_dtype()
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, rows, dtype=dtype, endpoint=True)
        values[:2] = [info.min, info.max]  # the extremes of each width survive
        cols[str(t)] = pa.array(values, mask=mask)
    cols["float16"] = pa.array(rng.standard_normal(rows).astype(np.float16), pa.float16())
    cols["float32"] = pa.array(rng.standard_normal(rows).astype(np.float32), mask=mask)
    cols["float64"] = pa.array(np.r_[-np.inf, np.inf, rng.standard_normal(rows - 2)])
    cols["decimal128"] = pa.array([decimal.Decimal(f"{i - 30}.{i % 100:02d}") for i in idx],
                                  pa.decimal128(10, 2))
    cols["decimal256"] = pa.array(
        [decimal.Decimal(f"{i}{'9' * 60}.5") for i in idx], pa.decimal256(70, 1))
    days = (idx * 97 - 3000).astype("datetime64[D]")
    cols["date32"] = pa.array(days, pa.date32(), mask=mask)
    cols["date64"] = pa.array(days.astype("datetime64[ms]"), pa.date64())
    cols["time32_s"] = pa.array((idx * 1000 % 86400).astype(np.int32), pa.time32("s"))
    cols["time32_ms"] = pa.array((idx * 12345).astype(np.int32), pa.time32("ms"))
    cols["time64_us"] = pa.array(idx * 1_234_567, pa.time64("us"))
    cols["time64_ns"] = pa.array(idx * 1_234_567_891, pa.time64("ns"))
    for unit in ("s", "ms", "us", "ns"):
        stamps = rng.integers(-(10**9), 10**9, rows) * {"s": 1, "ms": 10**3, "us": 10**6,
                                                         "ns": 10**9}[unit]
        cols[f"timestamp_{unit}"] = pa.array(stamps, pa.timestamp(unit), mask=mask)
        cols[f"timestamp_{unit}_tz"] = pa.array(stamps, pa.timestamp(unit, tz="Asia/Kolkata"))
    cols["string"] = pa.array([f"s{i}é" for i in idx], mask=mask)
    cols["large_string"] = pa.array([str(i) * (i % 4) for i in idx], pa.large_string())
    cols["binary"] = pa.array([bytes([i % 256]) * (i % 7) for i in idx], pa.binary())
    cols["large_binary"] = pa.array([b"\x00" * i for i in idx], pa.large_binary())
    cols["fixed_size_binary"] = pa.array([int(i).to_bytes(4, "little") for i in idx],
                                         pa.binary(4))
    cols["bool"] = pa.array(rng.random(rows) < 0.5, mask=mask)
    cols["dictionary"] = pa.array(np.array(["north", "south", "east"])[idx % 3],
                                  mask=mask).dictionary_encode()
    cols["list"] = pa.array([[int(i), None] if i % 3 else None for i in idx],
                            pa.list_(pa.int64()))
    cols["large_list"] = pa.array([[float(i)] * (i % 3) for i in idx],
                                  pa.large_list(pa.float64()))
    cols["fixed_size_list"] = pa.array([[i, -i] for i in idx], pa.list_(pa.int32(), 2))
    cols["struct"] = pa.array([{"x": int(i), "y": str(i)} if i % 5 else None for i in idx],
                              pa.struct([("x", pa.int64()), ("y", pa.string())]))
    cols["map"] = pa.array([[("k", int(i)), ("j", None)] for i in idx],
                           pa.map_(pa.string(), pa.int64()))
    cols["nested"] = pa.array([[{"a": [int(i)], "b": {"c": "z"}}] for i in idx],
                              pa.list_(pa.struct([("a", pa.list_(pa.int64())),
                                                  ("b", pa.struct([("c", pa.string())]))])))
    cols["null"] = pa.nulls(rows)
    cols["all_null_int64"] = pa.nulls(rows, pa.int64())
    cols["all_null_string"] = pa.nulls(rows, pa.string())
    return pa.table(cols)


def assert_same(got: pa.Table, want: pa.Table) -> None:
    """Equal tables, with the first differing column named when they are not."""
    assert got.schema == want.schema, f"schemas differ:\n{got.schema}\n---\n{want.schema}"
    for name in want.column_names:
        assert got[name].equals(want[name]), f"column '{name}' differs"
    assert got.equals(want)


def read(path: str | Path, **params: object) -> ReadParquet:
    return ReadParquet(path=str(path), **params)


def check_reads_like_pyarrow(path: Path, **params: object) -> ReadParquet:
    """Schema, partitions and data of a sluice read match pyarrow's own read of the file."""
    op = read(path, **params)
    want = pq.read_table(path)
    assert op.schema() == want.schema
    parts = op.partitions()
    for info in parts:
        assert op.read(info).schema == want.schema
    assert sum(p.rows for p in parts) == want.num_rows
    assert_same(op.read_all(), want)
    return op


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize("int96", [False, True], ids=["int64-timestamps", "int96-timestamps"])
def test_every_arrow_type_reads_as_pyarrow_reads_it(workdir: Path, int96: bool) -> None:
    path = workdir / "types.parquet"
    pq.write_table(every_type_table(), path, row_group_size=17,
                   use_deprecated_int96_timestamps=int96)
    physical = {c.name: c.physical_type for c in pq.ParquetFile(path).schema}
    assert (physical["timestamp_ms"] == "INT96") == int96  # the file is what the test claims
    assert physical["float16"] == "FIXED_LEN_BYTE_ARRAY"
    check_reads_like_pyarrow(path, partition_mb=1)


def _as_views(t: pa.DataType) -> pa.DataType:
    """``t`` with its strings and binaries as views (as Polars and DuckDB hand them over)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string_view()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.binary_view()
    return t  # pyarrow 26 writes no views inside lists and structs ("Slicing not
    # implemented for StringView"); ``without_views`` maps those too


def test_a_file_written_from_views_reads_as_plain_strings(workdir: Path) -> None:
    """A file pyarrow wrote from string_view and binary_view columns keeps that Arrow
    schema; sluice reads them as string and binary (most
    Arrow kernels have no view kernels), filters on them, and the values are pyarrow's."""
    table = every_type_table().select(["int64", "string", "large_string", "binary",
                                       "list", "struct"])
    views = table.cast(pa.schema([f.with_type(_as_views(f.type)) for f in table.schema]))
    path = workdir / "views.parquet"
    pq.write_table(views, path, row_group_size=13)
    assert pq.read_table(path).schema.field("string").type == pa.string_view()  # as written
    plain = pa.schema([f.with_type(pa.string() if f.name == "large_string" else
                                   pa.binary() if f.name == "binary" else f.type)
                       for f in table.schema])
    op = read(path, filter="string != 's3é' and large_string >= '1'")
    assert op.schema() == plain
    want = table.cast(plain)
    want = want.filter(pc.fill_null(pc.and_(pc.not_equal(want["string"], "s3é"),
                                            pc.greater_equal(want["large_string"], "1")),
                                    False))
    got = op.read_all()
    assert_same(got, want)
    assert all(op.read(info).schema == plain for info in op.partitions())


def test_nested_columns_pass_through_projection_and_filter(workdir: Path) -> None:
    path = workdir / "nested.parquet"
    table = every_type_table()
    pq.write_table(table, path, row_group_size=10)
    op = read(path, columns=["int64", "struct", "map", "nested"], filter="int32 > 0")
    mask = pc.fill_null(pc.greater(table["int32"], 0), False)
    want = table.select(["int64", "struct", "map", "nested"]).filter(mask)
    assert_same(op.read_all(), want)


ENCODED_COLUMNS = {
    "DELTA_BINARY_PACKED": ("i64", "i32"),
    "DELTA_LENGTH_BYTE_ARRAY": ("s",),
    "DELTA_BYTE_ARRAY": ("s",),
    "BYTE_STREAM_SPLIT": ("f64", "f32", "i64", "i32", "fsb"),
    "PLAIN": ("i64", "f64", "s", "b"),
}


def encodings_table(rows: int = 5000) -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table({
        "i64": pa.array(np.cumsum(rng.integers(-5, 50, rows)), mask=rng.random(rows) < 0.1),
        "i32": pa.array(rng.integers(-1000, 1000, rows).astype(np.int32)),
        "f64": pa.array(rng.standard_normal(rows)),
        "f32": pa.array(rng.standard_normal(rows).astype(np.float32)),
        "s": pa.array([f"prefix-{i // 3:06d}" for i in range(rows)]),
        "fsb": pa.array([int(i).to_bytes(8, "big") for i in range(rows)], pa.binary(8)),
        "b": pa.array(rng.random(rows) < 0.3),
    })


@pytest.mark.parametrize("encoding", sorted(ENCODED_COLUMNS))
def test_every_encoding_reads_as_pyarrow_reads_it(workdir: Path, encoding: str) -> None:
    path = workdir / f"{encoding}.parquet"
    columns = ENCODED_COLUMNS[encoding]
    pq.write_table(encodings_table(), path, use_dictionary=False, row_group_size=1500,
                   column_encoding={c: encoding for c in columns})
    meta = pq.ParquetFile(path).metadata
    for i, name in enumerate(meta.schema.names):
        used = meta.row_group(0).column(i).encodings
        assert (encoding in used) == (name in columns or encoding == "PLAIN"), (name, used)
    check_reads_like_pyarrow(path)


@pytest.mark.parametrize("how", ["dictionary", "use_byte_stream_split"])
def test_dictionary_and_byte_stream_split_flags(workdir: Path, how: str) -> None:
    path = workdir / f"{how}.parquet"
    table = encodings_table()
    if how == "dictionary":
        table = table.set_column(4, "s", table["s"].dictionary_encode())
        pq.write_table(table, path, use_dictionary=True, row_group_size=2000)
        wanted = {"RLE_DICTIONARY"}
    else:
        pq.write_table(table, path, use_dictionary=False, use_byte_stream_split=["f64", "f32"])
        wanted = {"BYTE_STREAM_SPLIT"}
    used = set(pq.ParquetFile(path).metadata.row_group(0).column(2).encodings)
    assert wanted <= used
    check_reads_like_pyarrow(path)


CODECS = ["snappy", "gzip", "brotli", "zstd", "lz4", "none"]


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_reads_as_pyarrow_reads_it(workdir: Path, codec: str) -> None:
    if codec != "none" and not pa.Codec.is_available(codec):
        pytest.skip(f"this pyarrow has no {codec} codec")
    path = workdir / f"{codec}.parquet"
    pq.write_table(every_type_table(200), path, compression=codec, row_group_size=64)
    written = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
    assert written.lower().startswith(codec.replace("none", "uncompressed"))
    check_reads_like_pyarrow(path)


# --------------------------------------------------------------------------- shapes


def test_empty_file_and_zero_row_row_groups(workdir: Path) -> None:
    table = encodings_table(30)
    pq.write_table(table.slice(0, 0), workdir / "empty.parquet")
    op = check_reads_like_pyarrow(workdir / "empty.parquet")
    assert [p.rows for p in op.partitions()] == [0]  # one empty partition keeps the schema

    path = workdir / "zero_groups.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        for piece in (table.slice(0, 0), table.slice(0, 10), table.slice(0, 0), table.slice(10)):
            writer.write_table(piece)
    groups = [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(4)]
    assert groups == [0, 10, 0, 20]
    check_reads_like_pyarrow(path, partition_mb=1)


def test_many_row_groups_split_into_bounded_partitions(workdir: Path) -> None:
    path = workdir / "many.parquet"
    rows = 120_000
    table = pa.table({"x": np.arange(rows, dtype=np.float64), "y": np.arange(rows) % 7})
    pq.write_table(table, path, row_group_size=500, compression="none")
    op = check_reads_like_pyarrow(path, partition_mb=1)
    parts = op.partitions()
    meta = pq.ParquetFile(path).metadata
    assert len(parts) > 1
    assert [g for p in parts for g in p.row_groups] == list(range(meta.num_row_groups))
    for p in parts:
        size = sum(meta.row_group(g).total_byte_size for g in p.row_groups)
        assert size <= 1024 * 1024 or len(p.row_groups) == 1


def test_a_partitions_row_groups_come_in_the_files_order(workdir: Path) -> None:
    """pyarrow's fragment of row groups [7, 8] (the last one smaller) scans 8 first: each
    partition's rows come in the file's order all the same."""
    path = workdir / "tail.parquet"
    pq.write_table(pa.table({"i": np.arange(1912)}), path, row_group_size=231)
    op = check_reads_like_pyarrow(path, partition_mb=0.0027)
    parts = op.partitions()
    assert any(len(p.row_groups) > 1 for p in parts)
    read = [op.read(p)["i"].to_numpy() for p in parts]
    np.testing.assert_array_equal(np.concatenate(read), np.arange(1912))


def test_directory_of_files_with_different_row_group_sizes(workdir: Path) -> None:
    folder = workdir / "mixed"
    folder.mkdir()
    table = encodings_table(3000)
    pieces = [table.slice(0, 1000), table.slice(1000, 1500), table.slice(2500)]
    for i, (piece, group) in enumerate(zip(pieces, (7, 333, 10_000))):
        pq.write_table(piece, folder / f"f{i}.parquet", row_group_size=group)
    op = read(folder, partition_mb=1)
    assert_same(op.read_all(), pq.read_table(folder))
    assert_same(op.read_all(), table)
    assert sum(p.rows for p in op.partitions()) == 3000


def hive_dataset(root: Path) -> pa.Table:
    """Two levels of hive partitions (string, int), several row groups per file."""
    table = pa.table({"x": np.arange(2000), "g": np.array(["a", "b"])[np.arange(2000) % 2]})
    for region in ("north", "south"):
        for year in (2024, 2025):
            sub = root / f"region={region}" / f"year={year}"
            sub.mkdir(parents=True)
            pq.write_table(table, sub / "part.parquet", row_group_size=100)
    return table


def decoded(table: pa.Table) -> pa.Table:
    """pq.read_table gives hive columns as dictionaries; sluice gives their value type."""
    fields = [pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def test_hive_directory_becomes_columns(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    op = read(workdir / "hive")
    want = decoded(pq.read_table(workdir / "hive"))
    assert op.schema().names == ["x", "g", "region", "year"]
    assert_same(op.read_all(), want)
    for info in op.partitions():  # every partition carries its hive values
        part = op.read(info)
        assert len(pc.unique(part["region"])) == 1 and len(pc.unique(part["year"])) == 1


def test_filter_prunes_hive_partitions_and_row_groups(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    full = decoded(pq.read_table(workdir / "hive"))
    op = read(workdir / "hive", filter="x >= 1850 and region = 'south' and g != 'b'")
    parts = op.partitions()
    assert {Path(p.path).parent.parent.name for p in parts} == {"region=south"}
    assert all(p.row_groups == (18, 19) for p in parts)  # statistics pruned groups 0-17
    mask = pc.and_(pc.and_(pc.greater_equal(full["x"], 1850), pc.equal(full["region"], "south")),
                   pc.not_equal(full["g"], "b"))
    assert_same(op.read_all(), full.filter(mask))
    everything = read(workdir / "hive").partitions()
    assert sum(len(p.row_groups) for p in everything) == 4 * 20


def test_filter_that_matches_nothing_gives_one_empty_partition(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    op = read(workdir / "hive", filter="x > 5000")
    parts = op.partitions()
    assert len(parts) == 1 and parts[0].rows == 0
    got = op.read_all()
    assert got.num_rows == 0 and got.schema == op.schema()


def test_bad_filter_is_a_one_line_param_error(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    for text in ("x >= 'a'", "nope > 1", "x +"):
        with pytest.raises(ParamError) as info:
            read(workdir / "hive", filter=text).schema()
        assert "\n" not in str(info.value) and "filter" in str(info.value)


def test_a_filter_that_fails_on_the_rows_is_the_filters_error_not_a_corrupt_file(
        workdir: Path) -> None:
    """A pushed filter that fails on a file's values (a cast past int32's range) was
    reported as the file being corrupt; the file reads without it, so the error names
    the filter and how to guard it."""
    pq.write_table(pa.table({"n": pa.array([1, 2_000_000_000], pa.int64())}),
                   workdir / "n.parquet")
    op = read(workdir / "n.parquet", filter="cast(n * 2 as int32) > 0")
    with pytest.raises(DataError) as info:
        op.read_all()
    text = str(info.value)
    assert "filter 'cast(n * 2 as int32) > 0' failed on the rows of" in text
    assert "corrupt" not in text and "guard the expression" in info.value.hint


def test_columns_projection(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    op = read(workdir / "hive", columns=["year", "x"])
    want = decoded(pq.read_table(workdir / "hive", columns=["year", "x"]))
    assert op.schema().names == ["year", "x"]
    assert_same(op.read_all(), want)
    with pytest.raises(SchemaError, match="'nope'"):
        read(workdir / "hive", columns=["x", "nope"]).schema()


def test_glob_of_files_and_of_directories(workdir: Path) -> None:
    hive_dataset(workdir / "hive")
    (workdir / "hive" / "region=north" / ".hidden.parquet").write_bytes(b"junk")
    (workdir / "hive" / "region=north" / "_junk.parquet").write_bytes(b"junk")
    want = decoded(pq.read_table(workdir / "hive"))
    north = want.filter(pc.equal(want["region"], "north"))
    # hive columns are the key=value directories below the glob's fixed part
    for pattern, expected in (("hive/region=north/*/*.parquet", north.drop(["region"])),
                              ("hive/region=north/*", north.drop(["region"])),
                              ("hive/region=n*", north),
                              ("hive/*/year=202?/part.parquet", want),
                              # ** matches the folders and the files in them: each file once
                              ("hive/**", want), ("hive/region=north/**", north.drop(["region"]))):
        assert_same(read(pattern).read_all(), expected)
    with pytest.raises(DataError, match="no files match"):
        read("hive/*/nothing-*.parquet").schema()
    # a pattern fsspec refuses is said to be one, not a corrupt file to write again
    with pytest.raises(DataError, match=r"'hive/\*\*\*' is not a glob read_parquet takes: "
                                        "Invalid pattern") as error:
        read("hive/***").schema()
    assert "** stands alone between slashes" in (error.value.hint or "")


def test_fsspec_url(workdir: Path) -> None:
    import fsspec

    table = encodings_table(500)
    fs = fsspec.filesystem("memory")
    with fs.open("memory://sluice-read-test/one.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=100)
    with fs.open("memory://sluice-read-test/two.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=100)
    try:
        assert_same(read("memory://sluice-read-test/one.parquet").read_all(), table)
        both = pa.concat_tables([table, table])
        assert_same(read("memory://sluice-read-test").read_all(), both)
        assert_same(read("memory://sluice-read-test/*.parquet", filter="i32 > 0").read_all(),
                    both.filter(pc.greater(both["i32"], 0)))
    finally:
        fs.rm("memory://sluice-read-test", recursive=True)


def test_missing_path_is_a_data_error(workdir: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory: 'nowhere'"):
        read("nowhere").schema()
    (workdir / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        read("empty_dir").schema()


# --------------------------------------------------------------------------- declared schema


def test_declared_schema_casts(workdir: Path) -> None:
    path = workdir / "t.parquet"
    table = pa.table({"n": pa.array([1, 2, None], pa.int32()),
                      "d": ["2026-11-28", "2026-01-01", None], "x": [1.5, 2.5, 3.5]})
    pq.write_table(table, path)
    op = read(path, schema={"n": "int64", "d": "date32", "x": "decimal128(10, 2)"})
    want = table.cast(pa.schema({"n": pa.int64(), "d": pa.date32(),
                                 "x": pa.decimal128(10, 2)}))
    assert op.schema() == want.schema
    assert_same(op.read_all(), want)
    projected = read(path, columns=["d"], schema={"d": "date32"})
    assert_same(projected.read_all(), want.select(["d"]))


def declared_text_numbers(folder: Path) -> pa.Table:
    """Two files of several row groups whose numbers are text (a CSV's export), as
    a declared `schema: {code: int64, amount: double}` reads them."""
    folder.mkdir()
    codes = [str(v) for v in (9, 10, 100, 7, 55, 300, 49, 50, 51, 1000, 2, 60)]
    amounts = ["1.5", "2.25", "10", "0.5", "3", "20.5", "2", "2.0", "7.75", "1", "4", "0"]
    for i in range(2):
        half = slice(6 * i, 6 * i + 6)
        pq.write_table(pa.table({"code": codes[half], "amount": amounts[half],
                                 "x": [float(v) for v in range(6 * i, 6 * i + 6)]}),
                       folder / f"part-{i}.parquet", row_group_size=2)
    return pa.table({"code": codes, "amount": amounts,
                     "x": [float(v) for v in range(12)]}).cast(
        pa.schema({"code": pa.int64(), "amount": pa.float64(), "x": pa.float64()}))


TYPED_FILTERS = [
    ("code > 50", pc.field("code") > 50),
    ("code > 50 and x >= 2", (pc.field("code") > 50) & (pc.field("x") >= 2)),
    ("amount >= 2 or code in (7, 9)",
     (pc.field("amount") >= 2) | pc.field("code").isin([7, 9])),
    ("not (code between 10 and 100)", ~((pc.field("code") >= 10) & (pc.field("code") <= 100))),
]


@pytest.mark.parametrize(("where", "expected"), TYPED_FILTERS)
def test_a_filter_compares_a_declared_column_as_its_declared_type(
        workdir: Path, where: str, expected: pc.Expression) -> None:
    """A filter on a column ``schema`` casts (text in the files, int64 declared) compares
    numbers, as the step declares them, not the files' text ('9' > '50')."""
    want = declared_text_numbers(workdir / "d")
    declared = {"code": "int64", "amount": "double"}
    op = read(workdir / "d", schema=declared, filter=where)
    assert_same(op.read_all(), want.filter(expected))
    # a column only the filter reads is declared for it
    only_filtered = {c: t for c, t in declared.items() if c in where}
    projected = read(workdir / "d", columns=["x"], schema=only_filtered, filter=where)
    assert_same(projected.read_all(), want.filter(expected).select(["x"]))


def test_a_filter_on_declared_columns_reads_the_same_on_every_engine(workdir: Path,
                                                                     engine: Any) -> None:
    from pipelines.runner import run

    want = declared_text_numbers(workdir / "d")
    path = workdir / "typed.yaml"
    path.write_text(textwrap.dedent("""
        pipeline: typed
        steps:
          - op: read_parquet
            path: d
            schema: {code: int64, amount: double}
            filter: "code > 50 and amount >= 2"
          - op: write_parquet
            path: out
        """))
    record = run(path, engine_instance=engine)
    assert record["steps"]["read_parquet"]["rows"] == 4
    got = pq.read_table(workdir / "out")
    assert_same(got.sort_by("x"), want.filter((pc.field("code") > 50)
                                              & (pc.field("amount") >= 2)))


def test_declared_schema_that_cannot_apply(workdir: Path) -> None:
    path = workdir / "t.parquet"
    pq.write_table(pa.table({"s": ["1", "x"], "l": [[1], [2]], "n": [1, 2]}), path)
    with pytest.raises(DataError) as info:  # no cast from a list to a number: plan time
        read(path, schema={"l": "int64"}).schema()
    text = str(info.value)
    assert "t.parquet" in text and "'l'" in text and "\n" not in text
    op = read(path, schema={"s": "int64"})  # a value that does not parse: read time
    assert op.schema().field("s").type == pa.int64()
    with pytest.raises(DataError) as info:
        op.read_all()
    text = str(info.value)
    assert "t.parquet" in text and "'s'" in text and "\n" not in text
    with pytest.raises(SchemaError, match="'nope'"):
        read(path, schema={"nope": "int64"}).schema()
    with pytest.raises(SchemaError, match="not read"):
        read(path, columns=["s"], schema={"n": "float64"}).schema()


# --------------------------------------------------------------------------- types across files


def write_files(root: Path, *tables: pa.Table) -> Path:
    """One file per table, read in this order (the first one's schema is the dataset's)."""
    root.mkdir()
    for i, table in enumerate(tables):
        pq.write_table(table, root / f"p{i}.parquet")
    return root


def cast_each(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables])


WIDENING = [  # (the first file's type, a later file's type): the later widens to the first
    (pa.int64(), pa.int32()), (pa.int64(), pa.uint16()), (pa.float64(), pa.float32()),
    (pa.float64(), pa.int64()), (pa.large_string(), pa.string()),
    (pa.string(), pa.large_string()),
    (pa.string(), pa.dictionary(pa.int32(), pa.string())),
    (pa.dictionary(pa.int32(), pa.string()), pa.string()),
    (pa.timestamp("us"), pa.timestamp("ms")),
]


@pytest.mark.parametrize("first,later", WIDENING, ids=[f"{a}<-{b}" for a, b in WIDENING])
def test_a_file_whose_type_widens_to_the_datasets_reads_as_the_dataset_type(
        workdir: Path, first: pa.DataType, later: pa.DataType) -> None:
    values = {"int": [1, 2, None], "uin": [1, 2, None], "flo": [1.5, -2.0, None],
              "dou": [1.5, -2.0, None], "str": ["a", "b", None], "lar": ["a", "b", None],
              "dic": ["a", "b", None], "tim": [0, 1_700_000_000_000, None]}
    plain = later.value_type if pa.types.is_dictionary(later) else later
    raw = values[str(plain)[:3]] if str(plain)[:3] in values else values["int"]
    tables = [pa.table({"c": pa.array(raw, later), "k": [1, 2, 3]}),
              pa.table({"c": pa.array(raw, later).cast(first), "k": [4, 5, 6]})][::-1]
    root = write_files(workdir / "d", *tables)
    op = read(root, filter="k >= 2")
    want = cast_each(tables, pa.schema({"c": first, "k": pa.int64()}))
    assert op.schema() == want.schema
    got = op.read_all()
    assert got.schema == want.schema
    # dictionaries compare by their values (a filtered chunk keeps the file's dictionary)
    assert_same(decoded(got), decoded(want.filter(pc.field("k") >= 2)))


def test_files_that_disagree_on_a_type_fail_at_planning_with_the_type_to_declare(
        workdir: Path) -> None:
    ints = pa.table({"a": pa.array([1, 2], pa.int64()), "s": ["x", "y"], "k": [1, 2]})
    doubles = pa.table({"a": [1.5, 2.5], "s": ["z", "w"], "k": [3, 4]})
    texts = pa.table({"a": pa.array([3, 4], pa.int32()), "s": pa.array([5, 6]), "k": [5, 6]})
    root = write_files(workdir / "d", ints, doubles, texts, doubles)
    op = read(root)
    assert op.schema().field("a").type == pa.int64()  # the first file's, as pyarrow's
    with pytest.raises(DataError) as info:
        op.partitions()
    text = str(info.value)
    assert "\n" not in text
    assert ("column 'a': it is double in " + str(root / "p1.parquet") + " and 1 more file(s)"
            in text)
    assert f"int64 in the dataset's schema (as in {root / 'p0.parquet'})" in text
    assert f"column 's': it is int64 in {root / 'p2.parquet'}" in text
    assert "p2.parquet" not in text.split("column 's'")[0]  # its int32 'a' widens
    assert "`schema: {a: double, s: string}`" in text
    # what the message says to declare reads every file
    declared = read(root, schema={"a": "double", "s": "string"})
    want = cast_each([ints, doubles, texts, doubles],
                     pa.schema({"a": pa.float64(), "s": pa.string(), "k": pa.int64()}))
    assert_same(declared.read_all(), want)
    # columns that are not read do not matter
    assert_same(read(root, columns=["k"]).read_all(), want.select(["k"]))


def test_a_declared_type_a_file_cannot_take(workdir: Path) -> None:
    root = write_files(workdir / "d", pa.table({"a": [1, 2]}), pa.table({"a": [[1], [2]]}))
    with pytest.raises(DataError) as info:
        read(root, schema={"a": "float64"}).partitions()
    text = str(info.value)
    assert f"column 'a' is list<element: int64> in {root / 'p1.parquet'}" in text, text
    assert "cannot be cast to the declared double" in text


def test_a_value_that_does_not_convert_is_named_with_its_file_and_column(
        workdir: Path) -> None:
    root = write_files(workdir / "d", pa.table({"a": [1.0, 2.0]}), pa.table({"a": [2**60]}))
    op = read(root)  # int64 widens to double at planning; this value does not fit in one
    parts = op.partitions()
    assert op.read(parts[0]).column("a").to_pylist() == [1.0, 2.0]
    with pytest.raises(DataError) as info:
        op.read(parts[1])
    text = str(info.value)
    assert f"'{root / 'p1.parquet'}': column 'a' cannot be cast from int64 to double" in text
    assert "corrupt" not in text and "`schema: {a: ...}`" in text
    # declared as int64, every value here converts (1.0 too)
    assert read(root, schema={"a": "int64"}).read_all().column("a").to_pylist() == [1, 2, 2**60]
    with pytest.raises(DataError) as info:  # a declared type: the hint is about the data
        read(write_files(workdir / "e", pa.table({"a": [1.5]})), schema={"a": "int64"}
             ).read_all()
    assert "to the declared int64" in str(info.value) and "fix the data" in str(info.value)


def test_cli_files_that_disagree_fail_before_any_output(workdir: Path) -> None:
    write_files(workdir / "d", pa.table({"a": [1, 2]}), pa.table({"a": ["x", "y"]}))
    line = copy_fails_in_one_line(workdir, "d")
    assert "column 'a'" in line and "`schema: {a: string}`" in line, line


# --------------------------------------------------------------------------- broken files


class _ToyKms:
    """An in-memory KMS: 'wraps' a data key with base64 (keys never leave the test)."""

    @staticmethod
    def factory(config: object) -> object:
        import pyarrow.parquet.encryption as pe

        class Client(pe.KmsClient):
            def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> bytes:
                return base64.b64encode(master_key_identifier.encode() + b":" + key_bytes)

            def unwrap_key(self, wrapped_key: bytes, master_key_identifier: str) -> bytes:
                return base64.b64decode(wrapped_key).split(b":", 1)[1]

        return Client()


def write_encrypted(path: Path, table: pa.Table, plaintext_footer: bool) -> None:
    pe = pytest.importorskip("pyarrow.parquet.encryption")
    kms = pe.KmsConnectionConfig(custom_kms_conf={"footer": "0" * 16, "col": "1" * 16})
    config = pe.EncryptionConfiguration(footer_key="footer", column_keys={"col": ["a"]},
                                        plaintext_footer=plaintext_footer)
    props = pe.CryptoFactory(_ToyKms.factory).file_encryption_properties(kms, config)
    with pq.ParquetWriter(path, table.schema, encryption_properties=props) as writer:
        writer.write_table(table)
    with pytest.raises(OSError):  # really encrypted: pyarrow cannot read it without keys
        pq.read_table(path)


def good_table() -> pa.Table:
    return pa.table({"a": np.arange(5000), "s": np.array(["x", "yy"])[np.arange(5000) % 2]})


def make_broken(path: Path, kind: str) -> None:
    """Write a Parquet file broken in the way ``kind`` names."""
    if kind == "garbage":
        path.write_bytes(os.urandom(3000))
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        pq.write_table(good_table(), path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "encrypted":
        write_encrypted(path, good_table(), plaintext_footer=False)
    elif kind == "encrypted_plaintext_footer":
        write_encrypted(path, good_table(), plaintext_footer=True)
    elif kind == "damaged_page":  # intact footer, garbage in a data page of row group 2
        pq.write_table(good_table(), path, row_group_size=1000, compression="none")
        raw = bytearray(path.read_bytes())
        start = pq.ParquetFile(path).metadata.row_group(2).column(0).data_page_offset
        raw[start:start + 400] = bytes(b ^ 0x5A for b in raw[start:start + 400])
        path.write_bytes(bytes(raw))


FOOTER_BROKEN = ["garbage", "zero_bytes", "truncated", "encrypted"]
PAGE_BROKEN = ["encrypted_plaintext_footer", "damaged_page"]


def assert_one_line_naming(exc: pytest.ExceptionInfo[SluiceError], name: str) -> None:
    assert exc.type is DataError
    text = str(exc.value)
    assert name in text and "\n" not in text, text


@pytest.mark.parametrize("kind", FOOTER_BROKEN + PAGE_BROKEN)
def test_broken_file_is_a_one_line_data_error(workdir: Path, kind: str) -> None:
    path = workdir / f"{kind}.parquet"
    make_broken(path, kind)
    if kind in FOOTER_BROKEN:
        for step in ("schema", "partitions", "read_all"):
            with pytest.raises(SluiceError) as info:
                getattr(read(path), step)()
            assert_one_line_naming(info, path.name)
        return
    op = read(path)
    assert op.schema() == pq.read_schema(path)  # the footer is readable ...
    with pytest.raises(SluiceError) as info:  # ... the pages are not
        op.read_all()
    assert_one_line_naming(info, path.name)


@pytest.mark.parametrize("kind", FOOTER_BROKEN + PAGE_BROKEN)
def test_broken_file_in_a_directory_is_named(workdir: Path, kind: str) -> None:
    folder = workdir / "data"
    folder.mkdir()
    pq.write_table(good_table(), folder / "a-good.parquet")
    make_broken(folder / "b-broken.parquet", kind)
    op = read(folder)
    with pytest.raises(SluiceError) as info:  # a broken footer as the read plans
        op.schema()
        for part in op.partitions():
            op.read(part)
    assert_one_line_naming(info, "b-broken.parquet")


@pytest.mark.parametrize(("name", "kind"), [("a.csv", "a CSV file"), ("notes", "text"),
                                             ("README.txt", "text")])
def test_a_text_file_is_said_to_be_one_not_a_corrupt_parquet_file(
        workdir: Path, name: str, kind: str) -> None:
    """A CSV read as Parquet (or a README in the folder): convert it, not write it again."""
    (workdir / "data").mkdir()
    pq.write_table(good_table(), workdir / "data" / "0-good.parquet")
    (workdir / "data" / name).write_text("a,s\n1,x\n")
    with pytest.raises(DataError) as alone:
        read(workdir / "data" / name).schema()
    op = read(workdir / "data")
    with pytest.raises(DataError) as among:
        for part in op.partitions():
            op.read(part)
    for info in (alone, among):
        assert str(info.value) == (
            f"cannot read Parquet file '{workdir / 'data' / name}': not a Parquet file: it is "
            f"{kind} (sluice reads Parquet only: convert it first, or move it out of the "
            "input)")


def test_file_broken_after_planning_fails_at_read(workdir: Path) -> None:
    path = workdir / "t.parquet"
    pq.write_table(good_table(), path, row_group_size=1000)
    op = read(path)
    parts = op.partitions()
    make_broken(path, "truncated")
    with pytest.raises(SluiceError) as info:
        op.read(parts[-1])
    assert_one_line_naming(info, "t.parquet")
    path.unlink()
    with pytest.raises(SluiceError) as info:
        op.read(PartitionInfo(0, str(path), (0,), 1000))
    assert_one_line_naming(info, "t.parquet")


def run_cli(workdir: Path, text: str) -> subprocess.CompletedProcess[str]:
    pipeline = workdir / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent(text).lstrip())
    env = {**os.environ, "CI": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(pipeline)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def copy_fails_in_one_line(workdir: Path, source: str) -> str:
    """``sluice run`` of a copy from ``source`` to ``out``: exit 1, one error line (which it
    returns), no traceback, and nothing of the output, not even its staging."""
    done = run_cli(workdir, f"""
        pipeline: copy
        steps:
          - op: read_parquet
            path: {source}
          - op: write_parquet
            path: out
        """)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not [p for p in workdir.iterdir() if p.name.startswith((".out", "out"))]
    return lines[0]


@pytest.mark.parametrize("kind", ["garbage", "truncated", "zero_bytes", "encrypted"])
def test_cli_broken_file_at_plan_time(workdir: Path, kind: str) -> None:
    make_broken(workdir / f"broken-{kind}.parquet", kind)
    done = run_cli(workdir, f"""
        pipeline: broken
        steps:
          - op: read_parquet
            path: broken-{kind}.parquet
          - op: write_parquet
            path: out
        """)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and f"broken-{kind}.parquet" in lines[0], lines
    # the CLI adds a summary line after validation problems (see the report)
    assert all(line.startswith("error: ") for line in lines) and len(lines) <= 2, lines
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("kind", ["truncated", "damaged_page"])
def test_cli_broken_file_at_run_time(workdir: Path, kind: str) -> None:
    (workdir / "data").mkdir()
    pq.write_table(good_table(), workdir / "data" / "a.parquet")
    make_broken(workdir / "data" / f"b-{kind}.parquet", kind)
    assert f"b-{kind}.parquet" in copy_fails_in_one_line(workdir, "data")


def test_a_broken_file_a_fit_reads_is_the_reads_error_at_its_line(
        workdir: Path, engine: Any) -> None:
    """A broken file (its footer is read as the read plans) is the read step's problem,
    at the read step's line: not the fitting step's, with the read's named inside it;
    nothing runs."""
    from conftest import write_pipeline

    from pipelines.runner import ValidationFailed, run

    (workdir / "data").mkdir()
    pq.write_table(good_table(), workdir / "data" / "a.parquet")
    make_broken(workdir / "data" / "b-truncated.parquet", "truncated")
    path = write_pipeline(workdir, """
        pipeline: fit
        steps:
          - id: rows
            op: read_parquet
            path: data
          - op: standard_scale
            columns: [a]
        """)
    with pytest.raises(ValidationFailed) as info:
        run(path, engine_instance=engine)
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:5: step 'rows' (read_parquet): cannot read "
                                   "Parquet file "), str(problem)


# --------------------------------------------------------------------------- manifests


def test_sluice_manifest_lists_exactly_what_is_read(workdir: Path) -> None:
    folder = workdir / "out"
    (folder / "k=1").mkdir(parents=True)
    table = good_table()
    pq.write_table(table.slice(0, 100), folder / "k=1" / "part-a.parquet")
    pq.write_table(table.slice(100, 50), folder / "part-b.parquet")
    make_broken(folder / "part-stray.parquet", "garbage")  # not listed: never opened
    pq.write_table(table, folder / "k=1" / "part-stray2.parquet")
    manifest = {"format": "sluice-output/1", "run_id": "r1", "rows": 150,
                "files": ["k=1/part-a.parquet", "part-b.parquet"]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    got = read(folder).read_all()
    assert got.num_rows == 150
    assert got.column("a").to_pylist() == list(range(150))
    # a glob into a sluice output sees only what its manifest lists
    assert read(folder / "*.parquet").read_all().column("a").to_pylist() == list(range(100, 150))
    assert read(folder / "k=1" / "*").read_all().column("a").to_pylist() == list(range(100))
    assert read(folder / "k=1").read_all().column("a").to_pylist() == list(range(100))


def test_spark_empty_success_reads_every_data_file(workdir: Path) -> None:
    folder = workdir / "spark"
    folder.mkdir()
    table = good_table()
    pq.write_table(table.slice(0, 10), folder / "part-00000-c000.snappy.parquet")
    pq.write_table(table.slice(10, 20), folder / "part-00001-c000.snappy.parquet")
    (folder / MANIFEST).write_bytes(b"")
    (folder / "._SUCCESS.crc").write_bytes(b"crc")
    assert_same(read(folder).read_all(), table.slice(0, 30))


@pytest.mark.parametrize("files,message", [
    ([], "no committed output"),
    (["../escape.parquet"], "damaged"),
    (["/abs.parquet"], "damaged"),
    ("part.parquet", "damaged"),
    (["missing.parquet"], "missing.parquet"),
])
def test_bad_manifest_is_a_data_error(workdir: Path, files: object, message: str) -> None:
    folder = workdir / "out"
    folder.mkdir()
    pq.write_table(good_table(), folder / "part.parquet")
    (folder / MANIFEST).write_text(json.dumps({"format": "sluice-output/1", "files": files}))
    with pytest.raises(SluiceError) as info:
        op = read(folder)
        op.schema()
        for part in op.partitions():
            op.read(part)
    assert info.type is DataError and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_shipped_source_reads_without_listing_the_dataset_again(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines pickle the source to their workers once per pass: the dataset's schema
    goes with it, so a worker reads its partitions without discovering the dataset."""
    import pickle

    import pyarrow.dataset as ds

    hive_dataset(workdir / "hive")
    op = read(workdir / "hive", filter="x >= 1000 and region = 'south'",
              schema={"x": "float64"})
    infos = op.partitions()
    want = [op.read(info) for info in infos]
    shipped = pickle.loads(pickle.dumps(op))

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was discovered again")

    monkeypatch.setattr(ds, "dataset", no_listing)
    for info, expected in zip(infos, want, strict=True):
        assert_same(shipped.read(info), expected)
    assert shipped.schema() == op.schema()
    fresh = pickle.loads(pickle.dumps(read(workdir / "hive")))  # nothing known yet
    with pytest.raises(AssertionError, match="discovered again"):
        fresh.schema()


def test_a_filter_arrows_statistics_pass_fails_on_reads_the_rows(workdir: Path) -> None:
    """Arrow prunes row groups by folding the filter over their statistics with checked
    casts: 'id > 0.5' of an id past 2**53 (the filter converts it to float64 unchecked)
    failed there, reported as a corrupt file, though the rows pass it as a filter step
    does. Such a file's row groups are read and filtered as read."""
    pq.write_table(pa.table({"id": pa.array([0, 2**60, -3], pa.int64()),
                             "u": pa.array([0, 2**64 - 1, 3], pa.uint64())}),
                   workdir / "ids.parquet")
    assert read(workdir / "ids.parquet", filter="id > 0.5").read_all().column(
        "id").to_pylist() == [2**60]
    assert read(workdir / "ids.parquet", filter="u < 2.5", columns=["id"]).read_all(
        ).to_pydict() == {"id": [0]}
    # a filter that fails on the rows too is the filter's error, not a corrupt file
    op = read(workdir / "ids.parquet", filter="cast(u as int64) > 0")
    with pytest.raises(DataError) as info:
        op.read_all()
    assert "filter 'cast(u as int64) > 0' failed on the rows of" in str(info.value)
    assert "corrupt" not in str(info.value)


# --------------------------------------------------------------------------- filters and NaN

NAN, INF = float("nan"), float("inf")
# two rows a row group: Parquet's min and max leave NaN out ([NaN, 3] says min = max = 3;
# [NaN, NaN] has none), a reader that skips row groups by them reasons as if none held NaN
FLOAT_GROUPS = [[1.0, 2.0], [NAN, 3.0], [10.0, 11.0], [None, 20.0], [NAN, NAN], [-0.0, 0.0],
                [-INF, INF]]


def float_groups_file(path: Path) -> pa.Table:
    table = pa.table({"x": pa.array([v for g in FLOAT_GROUPS for v in g], pa.float64()),
                      "n": pa.array(range(2 * len(FLOAT_GROUPS)), pa.int64())})
    pq.write_table(table, path, row_group_size=2)
    return table


def kept_groups(op: ReadParquet) -> set[int]:
    return {g for p in op.partitions() for g in p.row_groups}


@pytest.mark.parametrize(("where", "groups"), [
    ("x > 10", {2, 3, 4, 6}),
    ("x >= 10.5 and n >= 0", {2, 3, 4, 6}),
    ("x = 3", {1, 4, 6}),
    ("not (x != 3)", {1, 4, 6}),
    ("x between 1 and 2", {0, 4, 6}),
    ("x in (1, 2)", {0, 4, 6}),
    ("x < 0", {4, 6}),
    ("x is null", {3, 4}),
    ("x > 10 and x != 20", {2, 3, 4, 6}),  # skipped by 'x > 10', then filtered whole
    ("x > 10 and not is_nan(x)", {2, 3, 4, 6}),
    ("x > 10 or n = 0", {0, 2, 3, 4, 6}),
    ("not (x != 11 or n < 0)", {2, 4, 6}),  # 'x = 11 and n >= 0'
    # values that carry NaN through: [NaN, 3] says x = 3, and 3 fails them
    ("x * 2 + 1 > 10", {0, 2, 3, 4, 6}),
    ("coalesce(x, 0) > 10", {0, 2, 3, 4, 6}),
    ("if(n > 100, 0, x) > 10", {0, 2, 3, 4, 6}),
    ("x % 2 = 0.5", {0, 2, 3, 4, 6}),
])
def test_a_filter_nan_cannot_make_true_skips_float_row_groups(workdir: Path, where: str,
                                                                 groups: set[int]) -> None:
    """A row group whose statistics rule a filter out is skipped on a float column too,
    where NaN cannot make the filter true (NaN > 10 is false): no more than the groups
    whose min and max allow it are read (those without statistics, [NaN, NaN], always),
    and the rows are those the filter keeps in memory, NaN and null as they come."""
    table = float_groups_file(workdir / "f.parquet")
    op = read(workdir / "f.parquet", filter=where)
    assert kept_groups(op) <= groups
    assert op.read_all()["n"].to_pylist() == table.filter(parse_filter(where))["n"].to_pylist()


@pytest.mark.parametrize("where", [
    "x != 3", "x <> 3", "not (x <= 1)", "x not in (1, 2)", "not (x between 1 and 2)",
    "is_nan(x)", "not (x = 3 and n = 2)", "x > 10 or x != 3", "not (x >= 0) and n >= 0",
    # values that turn NaN into a number, which [NaN, 3]'s statistics (x = 3) fail
    "cast(x as int) < 0", "least(x, 5) = 5", "greatest(x, -5) = -5", "if(x > 5, 1, 0) = 0",
    "if(is_nan(x), 0, x) = 0",
])
def test_a_filter_nan_can_make_true_reads_the_row_groups_holding_nan(
        workdir: Path, where: str) -> None:
    """Where a NaN can make the filter true (NaN != 3), the row groups holding NaN are
    read whatever their min and max say, and their NaN rows kept."""
    table = float_groups_file(workdir / "f.parquet")
    op = read(workdir / "f.parquet", filter=where)
    assert {1, 4} <= kept_groups(op)
    want = table.filter(parse_filter(where))["n"].to_pylist()
    assert {2, 8, 9} & set(want)  # a NaN row passes: the test means something
    assert op.read_all()["n"].to_pylist() == want


@pytest.mark.parametrize("where", ["1 / x > 0", "-1 / x < 0", "exp(1 / x) > 1"])
def test_a_filter_that_tells_the_zeros_apart_reads_their_row_groups(
        workdir: Path, where: str) -> None:
    """A row group of 0.0 says min = -0.0, max = 0.0, which Arrow takes for 'x = -0.0':
    a filter dividing by x (1 / 0.0 is inf, 1 / -0.0 is -inf) was judged for -0.0 alone
    and the group of 0.0 skipped. pyarrow's own filtered read loses those rows."""
    table = pa.table({"x": pa.array([0.0, 0.0, -0.0, -0.0, 3.0, 3.0]), "n": [0, 1, 2, 3, 4, 5]})
    pq.write_table(table, workdir / "z.parquet", row_group_size=2)
    want = table.filter(parse_filter(where))["n"].to_pylist()
    assert {0, 1} <= set(want)
    assert read(workdir / "z.parquet", filter=where).read_all()["n"].to_pylist() == want


def test_a_column_that_is_float_in_one_file_only_keeps_its_nan_rows(workdir: Path) -> None:
    """The first file's int64 column is double in another (read with a declared type):
    a NaN there is judged by that file's type, not the dataset's (its row group was
    skipped by 'y != 1', its min and max being 1)."""
    pq.write_table(pa.table({"y": pa.array([1, 2], pa.int64()), "id": [0, 1]}),
                   workdir / "a.parquet")
    pq.write_table(pa.table({"y": pa.array([NAN, 1.0]), "id": [2, 3]}), workdir / "b.parquet")
    for where in ("y != 1", "not (y <= 1)"):
        got = read(workdir, filter=where, schema={"y": "float64"}).read_all()
        assert got["id"].to_pylist() == [1, 2], where


FLOAT_VALUES = [NAN, None, INF, -INF, -0.0, 0.0, 1.0, -1.0, 2.5, 3.0, 10.0]
NUMBER_LITERALS = ["0", "1", "-1", "2.5", "-0.0", "10", "1e400", "-1e400"]
# what a filter makes of a column c (with another column d, a literal v): values that
# carry its NaN through (arithmetic, coalesce, if on another condition), and values that
# turn it into a number (least, greatest, **, if on it, a cast to int), tell -0.0 from
# 0.0 (dividing by it) or make null of its zeros (% by it)
VALUES = ["{c}", "-{c}", "abs({c})", "floor({c})", "sqrt({c})", "({c} + {v})", "({c} * {d})",
          "({c} / {v})", "({v} / {c})", "({c} % {v})", "({v} % {c})", "pow({c}, {v})",
          "({v} ** {c})", "coalesce({c}, {d})", "least({c}, {v})", "greatest({c}, {d})",
          "if(is_nan({c}), {v}, {c})", "if({c} > {v}, {d}, {v})", "if(n > {v}, {c}, {d})",
          "cast({c} as int)", "cast({c} as float32)", "({c} + {d}) * {v}"]
COLUMN = st.sampled_from(["x", "y", "n"])
LITERAL = st.sampled_from(NUMBER_LITERALS)
VALUE = st.builds(lambda shape, c, d, v: shape.format(c=c, d=d, v=v),
                  st.sampled_from(VALUES), COLUMN, COLUMN, LITERAL)


@functools.cache
def predicates(depth: int) -> st.SearchStrategy[str]:
    """Filters of every shape: comparisons, between, in, null and NaN tests of VALUES,
    and their negations and combinations."""
    items = st.lists(st.sampled_from([*NUMBER_LITERALS, "null"]), min_size=1, max_size=3)
    compared = st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="])
    tests = st.one_of(
        st.builds("{} {} {}".format, VALUE, compared, LITERAL),
        st.builds("{} {} {}".format, VALUE, compared, VALUE),
        st.builds("{} {}between {} and {}".format, VALUE, st.sampled_from(["", "not "]),
                  st.one_of(LITERAL, VALUE), st.one_of(LITERAL, VALUE)),
        st.builds("{} {}in ({})".format, VALUE, st.sampled_from(["", "not "]),
                  items.map(", ".join)),
        st.builds("{} is {}null".format, VALUE, st.sampled_from(["", "not "])),
        st.builds("is_nan({})".format, VALUE),
    )
    if depth == 0:
        return tests
    sub = predicates(depth - 1)
    return st.one_of(
        tests,
        st.builds("not ({})".format, sub),
        st.builds("({}) {} ({})".format, sub, st.sampled_from(["and", "or"]), sub),
    )


@st.composite
def float_files(draw: st.DrawFn) -> list[tuple[list[tuple[Any, Any, Any]], int]]:
    """1 to 3 files of x (float64), y (float32) and n (int64), each with row groups of 1
    to 4 rows; a file's floats come from a few values, so that a row group often holds
    one number and NaN, whose statistics then say 'x is that number'."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        palette = draw(st.lists(st.sampled_from(FLOAT_VALUES), min_size=1, max_size=3))
        palette = st.sampled_from(palette + [NAN] * draw(st.integers(0, 1)))
        rows = draw(st.lists(st.tuples(palette, palette, st.sampled_from([None, -1, 0, 1, 3])),
                             min_size=1, max_size=10))
        out.append((rows, draw(st.integers(1, 4))))
    return out


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(files=float_files(), wheres=st.lists(predicates(2), min_size=1, max_size=4),
       project=st.booleans())
def test_a_filter_on_float_columns_keeps_the_rows_it_keeps_in_memory(
        files: list[tuple[list[tuple[Any, Any, Any]], int]], wheres: list[str],
        project: bool) -> None:
    """Differential: NaN, null, infinities and -0.0 in several row groups of several
    files; whatever the filter (negations, '!=', 'not in', 'or', values that can turn a
    NaN into a number), read_parquet keeps exactly the rows the filter keeps of all the
    rows in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        tables = []
        for i, (rows, group_rows) in enumerate(files):
            x, y, n = zip(*rows, strict=True)
            first = sum(t.num_rows for t in tables)
            table = pa.table({"id": pa.array(range(first, first + len(rows)), pa.int64()),
                              "x": pa.array(x, pa.float64()), "y": pa.array(y, pa.float32()),
                              "n": pa.array(n, pa.int64())})
            pq.write_table(table, Path(tmp) / f"part-{i}.parquet", row_group_size=group_rows)
            tables.append(table)
        everything = pa.concat_tables(tables)
        for where in wheres:
            try:
                want = everything.filter(parse_filter(where, everything.schema))
            except pa.ArrowException:
                # a filter that fails on some value (a cast past a range): whether the read
                # meets that value depends on what it skips, so there is nothing to compare
                continue
            got = read(tmp, filter=where, columns=["id"] if project else None).read_all()
            assert sorted(got["id"].to_pylist()) == sorted(want["id"].to_pylist()), where


def test_without_views_maps_views_inside_every_container() -> None:
    from operators.io.parquet import without_views

    nested = pa.struct([("a", pa.list_(pa.string_view())),
                        ("b", pa.large_list(pa.binary_view())),
                        ("c", pa.list_(pa.string_view(), 2)),
                        ("d", pa.dictionary(pa.int32(), pa.string_view()))])
    assert without_views(nested) == pa.struct([
        ("a", pa.list_(pa.string())), ("b", pa.large_list(pa.binary())),
        ("c", pa.list_(pa.string(), 2)), ("d", pa.dictionary(pa.int32(), pa.string()))])
    assert without_views(pa.large_string()) == pa.large_string()  # not a view: kept


def test_a_pipeline_on_files_written_from_views(workdir: Path, engine: Any) -> None:
    """The demo's training pipeline on its sample written from string_view columns (a
    filter on text, one_hot, the model) gives the model and metrics it gives on the
    sample as it is, on every engine."""
    from conftest import ROOT

    from pipelines.runner import run

    source = pq.read_table(ROOT / "data" / "churn")
    views = source.cast(pa.schema([f.with_type(_as_views(f.type)) for f in source.schema]))
    assert pa.string_view() in views.schema.types
    for name, table in (("plain", source), ("views", views)):
        (workdir / name).mkdir()
        pq.write_table(table, workdir / name / "part.parquet", row_group_size=1000)
    text = (ROOT / "conf" / "pipelines" / "churn_train.yaml").read_text()
    records = {}
    for name in ("plain", "views"):
        pipeline = workdir / f"{name}.yaml"
        pipeline.write_text(text.replace("data/churn/ds=${ds}", name))
        assert name in pipeline.read_text()
        records[name] = run(pipeline, engine_instance=engine,
                            models=str(workdir / f"models-{name}"))
    plain, viewed = (records[n]["metrics"] for n in ("plain", "views"))
    assert json.dumps(viewed, sort_keys=True) == json.dumps(plain, sort_keys=True)


def test_views_inside_maps_and_list_views_read_as_plain_types(workdir: Path) -> None:
    """A map of string_view keys (DuckDB's maps with string views) read as it was: its
    first filter failed (Arrow's take has no string_view kernel); list views (DuckDB's
    arrow_output_list_view) read as lists."""
    from operators.io.parquet import without_views

    table = pa.table({
        "n": pa.array([1, 2, 3], pa.int64()),
        "m": pa.array([{"a": 1}, {"b": 2}, {"c": 3}], pa.map_(pa.string_view(), pa.int64())),
        "l": pa.array([["x"], ["y", "z"], []], pa.list_view(pa.string_view())),
    })
    path = workdir / "views.parquet"
    pq.write_table(table, path)
    op = read(path, filter="n >= 2")
    assert op.schema().field("m").type == pa.map_(pa.string(), pa.int64())
    assert op.schema().field("l").type == pa.list_(pa.string())
    got = op.read_all()
    assert got.column("m").to_pylist() == [[("b", 2)], [("c", 3)]]
    assert got.column("l").to_pylist() == [["y", "z"], []]
    assert without_views(pa.large_list_view(pa.binary_view())) == pa.large_list(pa.binary())


def test_a_column_the_folders_name_too_is_a_notice(workdir: Path) -> None:
    """region=north/ of files with a region column: every row reads north, silently
    before; said as the file is planned. Not where the folder is the one read (its name
    is no column then), nor for sluice's own partitioned output (no such column in it)."""
    from conftest import write_pipeline

    from pipelines.runner import plan_file

    table = good_table()
    (workdir / "data" / "s=x").mkdir(parents=True)
    pq.write_table(table, workdir / "data" / "s=x" / "a.parquet")

    def notices(path: str) -> list[str]:
        return plan_file(write_pipeline(workdir, f"""
            pipeline: p
            steps:
              - id: rows
                op: read_parquet
                path: "{path}"
            """)).notices

    said = (f"{workdir / 'pipeline.yaml'}:5: step 'rows' (read_parquet): column 's' is in "
            "the files and in the names of their folders (s=...): each row gets its "
            "folder's value, not its own: rename the column in the files, or the folders' "
            "key")
    assert notices("data") == [said] == notices("data/s*/*.parquet")
    assert read(workdir / "data").read_all().column("s").unique().to_pylist() == ["x"]
    assert notices("data/s=x") == [] == notices("data/s=x/a.parquet")
    done = run_cli(workdir, """
        pipeline: copy
        steps:
          - op: read_parquet
            path: data/s=x
          - op: write_parquet
            path: out
            partition_by: [s]
        """)
    assert done.returncode == 0, done.stderr
    assert notices("out") == []


def test_file_urls_of_localhost_are_read_and_written_and_other_hosts_refused(
        workdir: Path) -> None:
    """file://localhost/abs/path is /abs/path (RFC 8089): read and written there, not in
    a folder 'localhost' below the working directory; file://otherhost/... is refused as
    the pipeline plans, at its line, for the read, the write and a join's table."""
    from conftest import write_pipeline

    from pipelines.runner import ValidationFailed, plan_file, run

    (workdir / "data").mkdir()
    pq.write_table(pa.table({"k": [1, 2, 3]}), workdir / "data" / "rows.parquet")
    text = f"""
        pipeline: urls
        steps:
          - op: read_parquet
            path: file://localhost{workdir}/data/rows.parquet
          - op: join
            path: file://localhost{workdir}/data/rows.parquet
            on: [k]
          - op: write_parquet
            path: file://localhost{workdir}/out
    """
    record = run(write_pipeline(workdir, text))
    assert record["outputs"][0]["rows"] == 3
    assert pq.read_table(workdir / "out")["k"].to_pylist() == [1, 2, 3]
    assert not (workdir / "localhost").exists()
    path = write_pipeline(workdir, text.replace("file://localhost", "file://otherhost"),
                          "other.yaml")
    problems = plan_file(path).problems
    assert [(p.line, p.step) for p in problems] == [
        (4, "read_parquet"), (6, "join"), (9, "write_parquet")]
    assert all(f"path: 'file://otherhost{workdir}/" in p.message
               and "names a file on host 'otherhost'" in p.message for p in problems)
    with pytest.raises(ValidationFailed):
        run(path)
    assert not (workdir / "otherhost").exists()


def test_file_urls_are_percent_decoded_for_reads_writes_and_run_folders(
        workdir: Path) -> None:
    """file:///tmp/a%20b/x.parquet is /tmp/a b/x.parquet (RFC 8089, as urllib and fsspec
    read it): the read, the write, the run records' and the models' folders are there,
    not in folders named with the escapes; a plain path is taken as it is."""
    from conftest import write_pipeline

    from operators.io.paths import local_path
    from pipelines.runner import run

    assert local_path("file:///tmp/a%20b/x.parquet") == "/tmp/a b/x.parquet"
    assert local_path("file://localhost/tmp/100%25") == "/tmp/100%"
    assert local_path("/tmp/a%20b") == "/tmp/a%20b"
    (workdir / "in data").mkdir()
    pq.write_table(pa.table({"k": [1, 2, 3], "y": [0, 1, 0]}),
                   workdir / "in data" / "rows.parquet")
    url = f"file://{str(workdir).replace(' ', '%20')}"
    record = run(write_pipeline(workdir, f"""
        pipeline: spaced
        steps:
          - op: read_parquet
            path: {url}/in%20data/rows.parquet
          - op: standard_scale
            columns: [y]
          - op: save_model
            name: spaced
          - op: write_parquet
            path: {url}/out%20put
        """), runs_dir=f"{url}/run%20records", models=f"{url}/my%20models")
    assert pq.read_table(workdir / "out put")["k"].to_pylist() == [1, 2, 3]
    assert record["record_path"] == str(workdir / "run records" / "spaced"
                                        / f"{record['run_id']}.json")
    assert (workdir / "my models" / "spaced" / "1" / "model.json").is_file()
    assert not [p.name for p in workdir.iterdir() if "%" in p.name]


def test_a_partitioned_output_read_without_its_partition_column(workdir: Path) -> None:
    """A sluice output partitioned by a column whose folders are parsed as another type
    (a decimal's text) reads with `columns:` that leave that column out: its type is
    the manifest's, no `schema:` of the user's that names a column not read."""
    from conftest import write_pipeline

    from pipelines.runner import run

    pq.write_table(pa.table({"d": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2.25")],
                                           pa.decimal128(5, 2)), "x": [1, 2]}),
                   workdir / "in.parquet")
    run(write_pipeline(workdir, """
        pipeline: w
        steps:
          - op: read_parquet
            path: in.parquet
          - op: write_parquet
            path: out
            partition_by: [d]
        """, "w.yaml"))
    assert sorted(read(workdir / "out", columns=["x"]).read_all()["x"].to_pylist()) == [1, 2]
    both = read(workdir / "out", columns=["x", "d"]).read_all().sort_by("x")
    assert both["d"].type == pa.decimal128(5, 2)
    # a filter on it compares decimals, as the column reads, not the folders' text
    assert read(workdir / "out", columns=["x"], filter="d > 2").read_all()[
        "x"].to_pylist() == [2]
