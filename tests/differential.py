"""Awkward tables and a runner for differential tests: the same pipeline over 1 and many
partitions and every engine, and oracles written from the documented semantics.

The tables hold what real data does: nulls in every type, NaN, -0.0 and infinities,
empty and non-ASCII text, int64 extremes, small integer types, dates, timestamps with and
without a time zone (ns too), booleans and dictionary-encoded text. Everything is drawn
from a numpy seed, so a failure names the seed that repeats it."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TEXTS = ["", "a", "A", "b", "é", "日本", "a b", "Straße", "zz", "\u00e9t\u00e9"]
FLOATS = [0.0, -0.0, 1.5, -2.25, 3.0, float("nan"), float("inf"), float("-inf"), 1e300,
          -1e-300]
INT64 = [0, 1, -1, 7, 2**63 - 1, -(2**63), 2**62, 42]
KEYS = [0, 1, 2, 3]
DAY0 = dt.date(2026, 1, 1)
INSTANT0 = dt.datetime(2026, 3, 28, 23, 30)  # a day before Paris moves its clocks
EPOCH0 = int(INSTANT0.replace(tzinfo=dt.UTC).timestamp())  # its seconds since 1970


def _pick(rng: np.random.Generator, values: list[Any], rows: int, nulls: float
          ) -> list[Any]:
    chosen = [values[i] for i in rng.integers(0, len(values), rows)]
    return [None if rng.random() < nulls else v for v in chosen]


def awkward_table(seed: int, rows: int = 60, nulls: float = 0.15) -> pa.Table:
    """``rows`` rows of every awkward kind of value, drawn from ``seed``."""
    rng = np.random.default_rng(seed)

    def pick(values: list[Any], share: float = nulls) -> list[Any]:
        return _pick(rng, values, rows, share)

    seconds = [int(s) for s in rng.integers(0, 40 * 86_400, 12)]
    instants = [INSTANT0 + dt.timedelta(seconds=s) for s in seconds]
    return pa.table({
        "k": pa.array(pick(KEYS), pa.int64()),
        "k2": pa.array(pick(["x", "y", "", "é"]), pa.string()),
        "kd": pa.array(pick(["red", "green", "日"]), pa.string()).dictionary_encode(),
        "kb": pa.array(pick([True, False]), pa.bool_()),
        "i8": pa.array(pick([-128, 127, 0, -1, 5]), pa.int8()),
        "u8": pa.array(pick([0, 255, 1, 128]), pa.uint8()),
        "i32": pa.array(pick([-(2**31), 2**31 - 1, 0, 3, -3, 1000]), pa.int32()),
        "i64": pa.array(pick(INT64), pa.int64()),
        "f": pa.array(pick(FLOATS), pa.float64()),
        "f32": pa.array(pick([0.0, -0.0, 0.1, -7.5, float("nan"), float("inf")]),
                        pa.float32()),
        "s": pa.array(pick(TEXTS), pa.string()),
        "d": pa.array(pick([DAY0 + dt.timedelta(days=int(n)) for n in
                            rng.integers(-400, 400, 8)]), pa.date32()),
        "ts": pa.array(pick(instants), pa.timestamp("us")),
        "tz": pa.array(pick(instants), pa.timestamp("ns", tz="Europe/Paris")),
        "num": pa.array(pick([str(v) for v in (1, -2, 300, 2**40)] + ["1.5", "12a", " 7",
                                                                       "", "NaN"]),
                        pa.string()),
        "dec": pa.array(pick([decimal.Decimal(v) for v in ("0.00", "-0.01", "1.50", "1.5",
                                                           "9999999999.99", "-12.34")]),
                        pa.decimal128(12, 2)),
        "u64": pa.array(pick([0, 1, 2**63, 2**64 - 1, 7]), pa.uint64()),
        "nanos": pa.array(pick([(EPOCH0 + s) * 10**9 + n for s, n in zip(
            seconds, (1, 999, 0, 7) * 3, strict=True)]), pa.timestamp("ns")),
    })


def write_files(table: pa.Table, folder: Path, files: int, row_group_rows: int) -> Path:
    """``table`` as ``files`` Parquet files of row groups of ``row_group_rows``."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, folder / f"part-{i:03d}.parquet", row_group_size=row_group_rows)
    return folder


LAYOUTS = {  # name: (files, rows a row group, partition_mb of the read)
    "one": (1, 1_000_000, 64.0),
    "many": (3, 7, 0.0001),
}


def pipeline_text(steps: str, sources: dict[str, Path], outputs: list[str],
                  partition_mb: float, out: Path) -> str:
    """A pipeline: a read step of each source (``data`` first), ``steps`` (YAML list
    items), and a write of each step of ``outputs`` to ``out``/<step>."""
    reads = "".join(f"""
  - id: {name}
    op: read_parquet
    path: {path}
    partition_mb: {partition_mb}""" for name, path in sources.items())
    writes = "".join(f"""
  - op: write_parquet
    input: {step}
    path: {out / step}""" for step in outputs)
    body = textwrap.indent(textwrap.dedent(steps).strip(), "  ")
    return f"pipeline: differential\nsteps:{reads}\n{body}{writes}\n"


def run_layouts(workdir: Path, tables: dict[str, pa.Table], steps: str, outputs: list[str],
                engines: dict[str, Any], layouts: tuple[str, ...] = ("one", "many")
                ) -> dict[str, dict[str, list[pa.Table]]]:
    """Run ``steps`` over ``tables`` (each read as a step of its name, ``data`` first) in
    each layout on each engine (name: a started engine, or None for a fresh local one);
    ``{"engine/layout": {step: its output partitions, in order}}`` for each of
    ``outputs``."""
    from pipelines.runner import run

    results: dict[str, dict[str, list[pa.Table]]] = {}
    for layout in layouts:
        files, group_rows, mb = LAYOUTS[layout]
        sources = {name: write_files(t, workdir / layout / name, files, group_rows)
                   for name, t in tables.items()}
        for name, engine in engines.items():
            out = workdir / layout / f"out-{name}"
            path = workdir / layout / f"{name}.yaml"
            path.write_text(pipeline_text(steps, sources, outputs, mb, out))
            run(path, engine_instance=engine, runs_dir=str(workdir / "runs"))
            results[f"{name}/{layout}"] = {
                step: [pq.read_table(p) for p in sorted((out / step).glob("*.parquet"))]
                for step in outputs}
    return results


def canonical(value: Any) -> Any:
    """A value as a comparable, hashable key: NaN equal to NaN, -0.0 told from 0.0."""
    if isinstance(value, float):
        if math.isnan(value):
            return ("nan",)
        return ("float", value, math.copysign(1.0, value))
    if isinstance(value, list):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, canonical(v)) for k, v in value.items())
    return value


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    """The rows, each a tuple of canonical values (dictionaries decoded)."""
    columns = [c.combine_chunks().dictionary_decode() if pa.types.is_dictionary(c.type)
               else c for c in table.columns]
    return [tuple(canonical(v) for v in row) for row in
            zip(*[c.to_pylist() for c in columns], strict=True)] if columns else []


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type)
                               else f.type) for f in schema])


def _rounded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's values but its floats: what orders rows whose float sums may differ in
    their last digits."""
    return tuple(("float",) if isinstance(v, tuple) and v[:1] == ("float",) else v
                 for v in row)


def _values_close(x: tuple[Any, ...], y: tuple[Any, ...], rel: float) -> bool:
    return len(x) == len(y) and all(
        a == b or (isinstance(a, tuple) and isinstance(b, tuple) and a[:1] == b[:1] == (
            "float",) and math.isclose(a[1], b[1], rel_tol=rel))
        for a, b in zip(x, y, strict=True))


def same_rows(a: pa.Table, b: pa.Table, ordered: bool, rel: float = 0.0) -> str | None:
    """None where ``a`` and ``b`` have the same schema (dictionaries as their values) and
    rows (in order, or as multisets), floats within ``rel`` of each other (as float sums
    over other partitionings are), else what differs."""
    if plain_schema(a.schema) != plain_schema(b.schema):
        return f"schemas differ:\n{a.schema}\n--\n{b.schema}"
    ra, rb = rows_of(a), rows_of(b)
    if not ordered:
        ra, rb = (sorted(r, key=lambda row: (repr(_rounded(row)), repr(row)))
                  for r in (ra, rb))
    if len(ra) != len(rb):
        return f"{len(ra)} rows against {len(rb)}"
    for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
        if x != y and not (rel and _values_close(x, y, rel)):
            return f"row {i} differs:\n{x}\n{y}"
    return None


# --------------------------------------------------------------------------- oracles
# Written from the README's semantics, in plain Python over each row's values: SQL's
# three-valued logic and null skipping, NaN as a value (IEEE in comparisons, above every
# number in an order, skipped by min, max and quantiles), -0.0 and 0.0 one key.


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def key_of(value: Any) -> Any:
    """A value as a key: -0.0 as 0.0, every NaN one."""
    if is_nan(value):
        return ("nan",)
    if isinstance(value, float) and value == 0:
        return 0.0
    return value


def order_key(value: Any, descending: bool = False) -> tuple[Any, ...]:
    """A value's place in an order: nulls last either way, NaN above every number."""
    if value is None:
        return (3,)
    if is_nan(value):
        return (0,) if descending else (2,)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.timestamp()
    if not descending:
        return (1, key_of(value))
    if isinstance(value, bool | int | float | decimal.Decimal):
        return (1, -value)
    if isinstance(value, dt.datetime):
        return (1, -value.timestamp())
    if isinstance(value, dt.date):
        return (1, -value.toordinal())
    return (1, tuple(-ord(c) for c in value) + (1,))  # text: the longer first on a tie


def or3(*values: bool | None) -> bool | None:
    """SQL's (Kleene's) or: true if any is, else null if any is null."""
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def and3(*values: bool | None) -> bool | None:
    """SQL's (Kleene's) and: false if any is, else null if any is null."""
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def compare(a: Any, b: Any, op: str) -> bool | None:
    """SQL's comparison: null with a null, IEEE with a NaN (every test false but !=)."""
    if a is None or b is None:
        return None
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a == b,
            "!=": a != b}[op]


def sql_sum(values: list[Any]) -> Any:
    """Null skipped (none: null); integers and decimals exact; NaN, or inf with -inf,
    make NaN."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if isinstance(present[0], decimal.Decimal):
        return sum(present)
    if not isinstance(present[0], float):
        return sum(int(v) for v in present)
    infinities = {v for v in present if math.isinf(v)}
    if any(is_nan(v) for v in present) or len(infinities) == 2:
        return float("nan")
    return infinities.pop() if infinities else math.fsum(present)


def sql_mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    total = sql_sum(present)
    return None if total is None else total / len(present)


def extreme(values: list[Any], largest: bool) -> Any:
    """min / max: nulls and NaN skipped (NaN where there is nothing else)."""
    present = [v for v in values if v is not None]
    numbers = [v for v in present if not is_nan(v)]
    if not numbers:
        return float("nan") if present else None
    return max(numbers) if largest else min(numbers)


def sample_variance(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    if len(present) < 2:
        return None
    if any(is_nan(v) or math.isinf(v) for v in present):
        return float("nan")
    mean = math.fsum(present) / len(present)
    deviations = [v - mean for v in present]  # a product past 1e308 is inf, not raised
    return math.fsum(d * d for d in deviations) / (len(present) - 1)


def quantile(values: list[Any], q: float) -> float | None:
    """Linear between the two nearest (pandas'); on a value, or between equal ones, that
    value (Spark's percentile); nulls and NaN skipped."""
    xs = sorted(float(v) for v in values if v is not None and not is_nan(v))
    if not xs:
        return None
    at = (len(xs) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(xs) - 1)
    if at == low or xs[low] == xs[high]:
        return xs[low]
    return xs[low] + (xs[high] - xs[low]) * (at - low)


def close(got: Any, want: Any, rel: float = 1e-9) -> bool:
    """Equal, NaN to NaN; floats within ``rel`` (of the larger, or 1e-12 absolute)."""
    if got is None or want is None:
        return got is None and want is None
    if isinstance(got, float) or isinstance(want, float):
        if is_nan(got) or is_nan(want):
            return is_nan(got) and is_nan(want)
        return got == want or math.isclose(got, want, rel_tol=rel, abs_tol=1e-12)
    return bool(got == want)


def groups_of(rows: list[dict[str, Any]], by: list[str]) -> dict[tuple, list[dict]]:
    """The rows of each key (``by``'s values as keys), in their order."""
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(key_of(row[c]) for c in by), []).append(row)
    return out
