"""Differential tests of the data-shaping steps: one pipeline of derive, filter, cast,
aggregate (pivot too), window, sort, deduplicate, top, join, union, sample and
repartition over seeded tables of awkward values (tests/differential.py), run over 1
and many partitions on the local engine, on Dask and on Spark, and compared with each
other and with oracles written from the README's semantics in plain Python.

The seeds are fixed: a failure names the seed (``awkward_table(seed)``) that repeats it."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from differential import (
    and3,
    awkward_table,
    close,
    compare,
    extreme,
    groups_of,
    is_nan,
    key_of,
    or3,
    order_key,
    quantile,
    rows_of,
    run_layouts,
    same_rows,
    sample_variance,
    sql_mean,
    sql_sum,
)

from pipelines.engines.base import Engine

SEEDS = (0, 1, 2)

STEPS = """
- id: derived
  op: derive
  input: data
  columns:
    twice: "i32 * 2"
    first: "coalesce(i64, i32, -1)"
    sign: "if(f > 0, 'pos', s)"
    size: "length(s) + 1"
    not_two: "nullif(k, 2)"
    near: "f between -1 and 2"
    parsed: "try_cast(num as int64)"
    month: "year(d) * 100 + month(d)"
    rest: "i8 % 3"
    low: "lower(k2)"
    later: "coalesce(nanos, timestamp '2026-04-01 00:00:00')"
    before: "tz < timestamp '2026-04-10 00:00:00Z'"
    upper_half: "u64 > 9223372036854775807"
- id: kept
  op: filter
  input: data
  where: "(f > 0 or s = '') and not (i8 in (1, 5, null)) or k is null"
- id: typed
  op: cast
  input: data
  columns: {num: int64, u8: int8}
  invalid: null
- id: groups
  op: aggregate
  input: data
  by: [k, k2]
  partitions: 2
  columns:
    n: count()
    nf: count(f)
    total: sum(f)
    mean: mean(f)
    least: min(f)
    most: max(f)
    var: var(f)
    sd: std(f)
    distinct: count_distinct(f)
    median: median(f)
    q9: "quantile(f, 0.9)"
    some: any(kb)
    every: all(kb)
    latest_s: "max_by(s, i64)"
    earliest_s: "min_by(s, i64)"
    small_sum: sum(i32)
    positive: "count_if(f > 0)"
    first_text: min(s)
    last_day: max(d)
    texts: count_distinct(s)
    last_zoned: max(tz)
    first_nanos: min(nanos)
    text_at_last: "max_by(s, tz)"
    decimals: sum(dec)
- id: pivoted
  op: aggregate
  input: data
  by: [kd]
  pivot: {column: k2, values: [x, y, "", null]}
  columns: {n: count(), small: sum(i8)}
- id: windowed
  op: window
  input: data
  by: [k]
  order: [ts]
  partitions: 2
  columns:
    rn: row_number()
    rk: rank()
    dr: dense_rank()
    pr: percent_rank()
    cd: cume_dist()
    nt: ntile(3)
    fv: first_value(s)
    lv: last_value(s)
    lg: lag(f)
    ld: "lead(i64, 2)"
    cs: cum_sum(f)
    cc: cum_count(f)
    cm: cum_mean(f)
    cmn: cum_min(s)
    cmx: cum_max(f)
    rs: "rolling_sum(f, '3 days')"
    rm: "rolling_mean(i32, 3)"
    rx: "rolling_max(f, '2 days')"
    rc: "rolling_count(f, 2)"
    ns: "next_sum(i8, '5 days')"
- id: sorted
  op: sort
  input: data
  by: [k2, "f desc", ts]
  partitions: 3
- id: latest
  op: deduplicate
  input: data
  by: [k, kd]
  order: f
- id: distinct
  op: deduplicate
  input: data
- id: firsts
  op: top
  input: data
  by: [kd]
  order: ["f desc", s]
  n: 3
- id: joined
  op: join
  input: data
  table: groups
  on: [k, k2]
  columns: [n]
  prefix: g_
- id: matched
  op: join
  input: data
  table: latest
  on: [k, kd]
  columns: [f]
  prefix: latest_
  how: inner
  strategy: shuffle
  partitions: 2
- id: both
  op: union
  input: data
  steps: [other]
  missing: null
- id: half
  op: sample
  input: data
  fraction: 0.5
  seed: 3
- id: other_half
  op: sample
  input: data
  fraction: 0.5
  seed: 3
  complement: true
- id: spread
  op: repartition
  input: data
  partitions: 3
"""
OUTPUTS = ["derived", "kept", "typed", "groups", "pivoted", "windowed", "sorted", "latest",
           "distinct", "firsts", "joined", "matched", "both", "half", "other_half", "spread"]
# steps whose output order is defined (the rows' own order, or an order they make)
ORDERED = {"derived", "kept", "typed", "sorted", "joined", "both", "half", "other_half"}


def other_table(seed: int) -> pa.Table:
    """The union's other step: the columns in narrower or other types (int32 keys, plain
    text for a dictionary, milliseconds, whole numbers for decimals), and a column of
    its own."""
    t = awkward_table(seed + 1000, rows=25)
    return pa.table({"k": t["k"].cast(pa.int32()), "k2": t["k2"], "f": t["f"],
                     "kd": t["kd"].cast(pa.string()), "ts": t["ts"].cast(pa.timestamp("ms")),
                     "dec": t["i64"], "only": t["i8"]})


def run_all(workdir: Path, seed: int, engines: dict[str, Any]
            ) -> dict[str, dict[str, list[pa.Table]]]:
    return run_layouts(workdir, {"data": awkward_table(seed), "other": other_table(seed)},
                       STEPS, OUTPUTS, engines)


def whole(parts: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(parts)


def rows(parts: list[pa.Table]) -> list[dict[str, Any]]:
    return whole(parts).to_pylist()


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory
               ) -> dict[int, dict[str, dict[str, list[pa.Table]]]]:
    """Every seed's outputs on the local engine, over 1 and many partitions."""
    return {seed: run_all(tmp_path_factory.mktemp(f"seed{seed}"), seed, {"local": None})
            for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_one_partition_and_many_give_the_same_rows(local_runs: dict, seed: int) -> None:
    one, many = local_runs[seed]["local/one"], local_runs[seed]["local/many"]
    for step in OUTPUTS:
        found = same_rows(whole(one[step]), whole(many[step]), ordered=step in ORDERED,
                          rel=1e-12)  # float sums: up to their rounding (README)
        assert found is None, f"seed {seed}, step {step}: {found}"


def test_rows_in_another_order_give_the_same_rows(local_runs: dict, tmp_path: Path) -> None:
    """The input's rows shuffled: every step gives the same rows (the sort the same
    order; the window's lags and ranks, deduplicate's and top's choices and sample's rows
    follow the rows' values, never their places)."""
    seed = SEEDS[0]
    data = awkward_table(seed)
    shuffled = data.take(np.random.default_rng(seed).permutation(data.num_rows))
    runs = run_layouts(tmp_path, {"data": shuffled, "other": other_table(seed)}, STEPS,
                       OUTPUTS, {"local": None}, layouts=("many",))
    for step in OUTPUTS:
        found = same_rows(whole(local_runs[seed]["local/many"][step]),
                          whole(runs["local/many"][step]), ordered=step == "sorted",
                          rel=1e-12)
        assert found is None, f"step {step}: {found}"


def _wrap32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


APRIL_10 = dt.datetime(2026, 4, 10, tzinfo=dt.UTC)
PARSED = {"1": 1, "-2": -2, "300": 300, str(2**40): 2**40}  # the rest do not parse


@pytest.mark.parametrize("seed", SEEDS)
def test_derive_filter_and_cast_are_the_oracles(local_runs: dict, seed: int) -> None:
    data = awkward_table(seed).to_pylist()
    out = local_runs[seed]["local/many"]
    for row, got in zip(data, rows(out["derived"]), strict=True):
        f, s = row["f"], row["s"]
        sign = compare(f, 0, ">")
        want = {
            "twice": None if row["i32"] is None else _wrap32(row["i32"] * 2),
            "first": next((v for v in (row["i64"], row["i32"]) if v is not None), -1),
            "sign": None if sign is None else "pos" if sign else s,
            "size": None if s is None else len(s) + 1,
            "not_two": None if row["k"] == 2 else row["k"],
            "near": and3(compare(f, -1, ">="), compare(f, 2, "<=")),
            "parsed": None if row["num"] is None else PARSED.get(row["num"]),
            "month": None if row["d"] is None else row["d"].year * 100 + row["d"].month,
            "rest": None if row["i8"] is None else row["i8"] % 3,
            "low": None if row["k2"] is None else row["k2"].lower(),
            "later": row["nanos"] if row["nanos"] is not None else pd.Timestamp(2026, 4, 1),
            "before": compare(row["tz"], APRIL_10, "<"),
            "upper_half": compare(row["u64"], 2**63 - 1, ">"),
        }
        for name, value in want.items():
            assert close(got[name], value), (seed, name, row, got[name], value)

    def keeps(row: dict[str, Any]) -> bool:
        listed = None if row["i8"] is None else True if row["i8"] in (1, 5) else None
        test = or3(and3(or3(compare(row["f"], 0, ">"),
                                              compare(row["s"], "", "=")),
                                    None if listed is None else not listed),
                         row["k"] is None)
        return test is True

    kept = pa.Table.from_pylist([r for r in data if keeps(r)], schema=awkward_table(0).schema)
    assert same_rows(whole(out["kept"]), kept, ordered=True) is None, seed
    typed = rows(out["typed"])
    assert [r["num"] for r in typed] == [
        None if r["num"] is None else PARSED.get(r["num"]) for r in data]
    assert [r["u8"] for r in typed] == [
        None if r["u8"] is None or r["u8"] > 127 else r["u8"] for r in data]


AGGREGATES = {  # output column: (oracle of a key's rows)
    "n": len,
    "nf": lambda rs: sum(r["f"] is not None for r in rs),
    "total": lambda rs: sql_sum([r["f"] for r in rs]),
    "mean": lambda rs: sql_mean([r["f"] for r in rs]),
    "least": lambda rs: extreme([r["f"] for r in rs], largest=False),
    "most": lambda rs: extreme([r["f"] for r in rs], largest=True),
    "var": lambda rs: sample_variance([r["f"] for r in rs]),
    "sd": lambda rs: (lambda v: None if v is None else math.sqrt(v))(
        sample_variance([r["f"] for r in rs])),
    "distinct": lambda rs: len({key_of(r["f"]) for r in rs if r["f"] is not None}),
    "median": lambda rs: quantile([r["f"] for r in rs], 0.5),
    "q9": lambda rs: quantile([r["f"] for r in rs], 0.9),
    "some": lambda rs: (lambda v: any(v) if v else None)(
        [r["kb"] for r in rs if r["kb"] is not None]),
    "every": lambda rs: (lambda v: all(v) if v else None)(
        [r["kb"] for r in rs if r["kb"] is not None]),
    "latest_s": lambda rs: _by_order(rs, largest=True),
    "earliest_s": lambda rs: _by_order(rs, largest=False),
    "small_sum": lambda rs: sql_sum([r["i32"] for r in rs]),
    "positive": lambda rs: sum(compare(r["f"], 0, ">") is True for r in rs),
    "first_text": lambda rs: extreme([r["s"] for r in rs], largest=False),
    "last_day": lambda rs: extreme([r["d"] for r in rs], largest=True),
    "texts": lambda rs: len({r["s"] for r in rs if r["s"] is not None}),
    "last_zoned": lambda rs: extreme([r["tz"] for r in rs], largest=True),
    "first_nanos": lambda rs: extreme([r["nanos"] for r in rs], largest=False),
    "text_at_last": lambda rs: _by_order(rs, largest=True, order="tz"),
    "decimals": lambda rs: sql_sum([r["dec"] for r in rs]),
}


def _by_order(rs: list[dict[str, Any]], largest: bool, order: str = "i64") -> Any:
    """max_by / min_by(s, order): s on the row of the largest (smallest) order; ties: the
    largest (smallest) s; rows without an order skipped."""
    ordered = [(r[order], r["s"]) for r in rs if r[order] is not None]
    if not ordered:
        return None
    pick = max if largest else min
    best = pick(o for o, _ in ordered)
    values = [v for o, v in ordered if o == best and v is not None]
    return pick(values) if values else None


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_is_the_oracle(local_runs: dict, seed: int) -> None:
    data = awkward_table(seed).to_pylist()
    groups = groups_of(data, ["k", "k2"])
    got = rows(local_runs[seed]["local/many"]["groups"])
    assert len(got) == len(groups)
    for row in got:
        rs = groups[(key_of(row["k"]), key_of(row["k2"]))]
        for name, oracle in AGGREGATES.items():
            assert close(row[name], oracle(rs)), (seed, name, row["k"], row["k2"],
                                                  [r["f"] for r in rs], row[name])
    pivoted = groups_of(rows(local_runs[seed]["local/many"]["pivoted"]), ["kd"])
    by_kd = groups_of(data, ["kd"])
    assert set(pivoted) == set(by_kd)
    for (kd,), rs in by_kd.items():
        (row,) = pivoted[(kd,)]
        for value in ("x", "y", "", None):
            mine = [r for r in rs if r["k2"] == value]
            name = "null" if value is None else value
            assert row[f"n_{name}"] == len(mine)
            assert row[f"small_{name}"] == sql_sum([r["i8"] for r in mine])


def _window_oracle(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's window columns from its key's rows ``rs`` in their output order (rows
    of one order tie in an order the oracle does not choose: it takes sluice's)."""
    n = len(rs)
    places = [order_key(r["ts"]) for r in rs]
    out = []
    for i, r in enumerate(rs):
        ts = r["ts"]
        upto = rs[:i + 1]
        rank = 1 + sum(p < places[i] for p in places)

        def since(days: int, upto: list[dict[str, Any]] = upto, ts: Any = ts) -> list | None:
            return None if ts is None else [x for x in upto if x["ts"] is not None
                                            and x["ts"] > ts - dt.timedelta(days=days)]
        size, extra = divmod(n, 3)
        bounds = [sum(size + (b < extra) for b in range(j + 1)) for j in range(3)]
        recent, two_days = since(3), since(2)
        strings = [x["s"] for x in upto if x["s"] is not None]
        out.append({
            "rn": i + 1, "rk": rank, "dr": 1 + len({p for p in places if p < places[i]}),
            "pr": 0.0 if n == 1 else (rank - 1) / (n - 1),
            "cd": sum(p <= places[i] for p in places) / n,
            "nt": 1 + sum(i >= b for b in bounds),
            "fv": rs[0]["s"], "lv": rs[-1]["s"],
            "lg": rs[i - 1]["f"] if i else None,
            "ld": rs[i + 2]["i64"] if i + 2 < n else None,
            "cs": sql_sum([x["f"] for x in upto]),
            "cc": sum(x["f"] is not None for x in upto),
            "cm": sql_mean([x["f"] for x in upto]),
            "cmn": min(strings) if strings else None,
            "cmx": (float("nan") if any(is_nan(x["f"]) for x in upto)
                    else extreme([x["f"] for x in upto], largest=True)),
            "rs": None if recent is None else sql_sum([x["f"] for x in recent]),
            "rm": sql_mean([x["i32"] for x in rs[max(0, i - 2):i + 1]]),
            "rx": None if two_days is None else (
                float("nan") if any(is_nan(x["f"]) for x in two_days)
                else extreme([x["f"] for x in two_days], largest=True)),
            "rc": sum(x["f"] is not None for x in rs[max(0, i - 1):i + 1]),
            "ns": None if ts is None else sql_sum(
                [x["i8"] for x in rs if x["ts"] is not None
                 and ts < x["ts"] < ts + dt.timedelta(days=5)]),
        })
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_window_is_the_oracle(local_runs: dict, seed: int) -> None:
    for part in local_runs[seed]["local/many"]["windowed"]:
        for key, rs in groups_of(part.to_pylist(), ["k"]).items():
            places = [order_key(r["ts"]) for r in rs]
            assert places == sorted(places), (seed, key)
            for i, (row, want) in enumerate(zip(rs, _window_oracle(rs), strict=True)):
                for name, value in want.items():
                    assert close(row[name], value), (seed, key, i, name, row[name], value)


def _order(row: dict[str, Any], by: list[str]) -> list[tuple[Any, ...]]:
    return [order_key(row[c.split()[0]], c.endswith(" desc")) for c in by]


@pytest.mark.parametrize("seed", SEEDS)
def test_sort_dedup_and_top_are_the_oracles(local_runs: dict, seed: int) -> None:
    data = awkward_table(seed).to_pylist()
    out = local_runs[seed]["local/many"]
    by = ["k2", "f desc", "ts"]
    places = [_order(r, by) for r in rows(out["sorted"])]
    assert places == sorted(places) and len(places) == len(data)
    # deduplicate: the row of the largest f (null and NaN lose), one of the key's rows
    latest = groups_of(rows(out["latest"]), ["k", "kd"])
    schema = whole(out["latest"]).schema
    groups = groups_of(data, ["k", "kd"])
    assert set(latest) == set(groups)
    for key, rs in groups.items():
        (kept,) = latest[key]
        numbers = [r["f"] for r in rs if r["f"] is not None and not is_nan(r["f"])]
        if numbers:
            assert kept["f"] == max(numbers), (seed, key)
        assert rows_of(pa.Table.from_pylist([kept], schema))[0] in rows_of(
            pa.Table.from_pylist(rs, schema))
    distinct = {tuple(key_of(v) for v in r.values()) for r in data}
    assert sorted(map(repr, distinct)) == sorted(
        repr(tuple(key_of(v) for v in r.values())) for r in rows(out["distinct"]))
    # top: each kd's 3 first rows by f descending then s
    firsts = groups_of(rows(out["firsts"]), ["kd"])
    for key, rs in groups_of(data, ["kd"]).items():
        want = sorted(_order(r, ["f desc", "s"]) for r in rs)[:3]
        assert [_order(r, ["f desc", "s"]) for r in firsts[key]] == want, (seed, key)


@pytest.mark.parametrize("seed", SEEDS)
def test_join_union_and_sample_are_the_oracles(local_runs: dict, seed: int) -> None:
    data = awkward_table(seed).to_pylist()
    out = local_runs[seed]["local/many"]
    groups = groups_of(data, ["k", "k2"])
    joined = rows(out["joined"])
    assert len(joined) == len(data)
    for row in joined:  # a null key matches nothing
        matched = row["k"] is not None and row["k2"] is not None
        assert row["g_n"] == (len(groups[(key_of(row["k"]), key_of(row["k2"]))])
                              if matched else None)
    latest = {key: r["f"] for key, (r,) in groups_of(rows(out["latest"]), ["k", "kd"]).items()}
    matched = rows(out["matched"])
    assert len(matched) == sum(r["k"] is not None and r["kd"] is not None for r in data)
    for row in matched:
        assert close(row["latest_f"], latest[(key_of(row["k"]), row["kd"])])
    both = whole(out["both"])
    other = other_table(seed)
    assert both.schema.names == [*awkward_table(seed).schema.names, "only"]
    first = awkward_table(seed)
    first = first.set_column(first.schema.get_field_index("kd"), "kd",
                             first["kd"].cast(pa.string()))
    # pyarrow's own promotion makes decimal(12, 2) and int64 a decimal(20, 2) no int64
    # casts to: the oracle casts each step to the union's type, and checks that type
    assert both.schema.field("dec").type == pa.decimal128(21, 2)
    first = first.append_column("only", pa.nulls(len(data), pa.int8()))
    want = pa.concat_tables([
        pa.table({n: part[n].cast(both.schema.field(n).type) if n in part.column_names
                  else pa.nulls(part.num_rows, both.schema.field(n).type)
                  for n in both.schema.names}) for part in (first, other)])
    assert same_rows(both, want, ordered=True) is None
    half, rest = rows_of(whole(out["half"])), rows_of(whole(out["other_half"]))
    assert sorted(half + rest, key=repr) == sorted(rows_of(awkward_table(seed)), key=repr)
    assert not set(half) & set(rest) and 0 < len(half) < len(data)


def _same_partitions(a: dict[str, list[pa.Table]], b: dict[str, list[pa.Table]],
                     where: str) -> None:
    for step in OUTPUTS:
        assert len(a[step]) == len(b[step]), (where, step)
        for i, (x, y) in enumerate(zip(a[step], b[step], strict=True)):
            assert x.schema == y.schema, (where, step, i, x.schema, y.schema)
            # rows_of: NaN equal to NaN (Table.equals holds them unequal), -0.0 not 0.0
            assert rows_of(x) == rows_of(y), (where, step, i, same_rows(x, y, ordered=True))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_dask_and_spark_give_the_local_engines_partitions(
        local_runs: dict, seed: int, dask_engine: Engine, spark: Engine,
        tmp_path: Path) -> None:
    """The same partitions, rows in the same order, the same types, on every engine."""
    runs = run_all(tmp_path, seed, {"dask": dask_engine, "spark": spark})
    for name in ("dask", "spark"):
        for layout in ("one", "many"):
            _same_partitions(local_runs[seed][f"local/{layout}"], runs[f"{name}/{layout}"],
                             f"seed {seed}, {name}/{layout}")


def test_the_oracles_hold_the_readme_s_words() -> None:
    """The oracles' own rules, each as the README states it."""
    assert order_key(float("nan")) > order_key(1e308) and order_key(None) > order_key(
        float("nan"))
    assert order_key(float("nan"), True) < order_key(1.0, True) < order_key(None, True)
    assert sql_sum([None, None]) is None and is_nan(sql_sum([1.0, float("nan")]))
    assert extreme([float("nan"), 2.0, None], largest=True) == 2.0
    assert quantile([1.0, float("inf"), float("inf")], 0.5) == float("inf")
    assert compare(float("nan"), 0, ">") is False and compare(None, 0, "=") is None
    assert or3(None, True) is True and and3(None, False) is False
