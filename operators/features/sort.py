"""``sort``: the rows in an order across every partition (Spark's ``orderBy``), through a
range shuffle: a sample of the rows sets the bounds of each output partition, every
partition's rows go to the partition of their range, and each sorts its own; partition
B's rows all come before partition B+1's.

Ties (rows equal in every ``by`` column) follow a hash of the row's values, so the order,
the sample and the bounds depend on the rows only: the same output on every engine and
partitioning, and a value shared by many rows is spread over several partitions instead
of making one partition hold them all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators.base import (
    Params,
    RangedShuffle,
    register,
    require_columns,
)
from operators.features.grouping import (
    INTERNAL,
    check_order,
    one_partitioning,
    order_direction,
    order_keys,
    partition_mb_field,
    partitions_field,
    run_first,
    sorted_order,
    unique_order,
)
from operators.hashing import content_hash, mix

_TIE = f"{INTERNAL}tie"  # a hash of the row's values: the last key of the order
_BOUND = f"{INTERNAL}bound"  # in place(): 0 for a row, 1 for a bound (after equal rows)
_DRAW = f"{INTERNAL}draw"  # a sampled row's draw (sample)
_SEED = 0x5027


class SortParams(Params):
    by: list[str] = Field(min_length=1, description="the columns that order the rows, "
                                                    "first to last: [region, \"amount "
                                                    "desc\"]; nulls last either way, NaN "
                                                    "above every number")
    partitions: int | None = partitions_field(
        "as the rows need: partitions of up to partition_mb, in order",
        how="rows go by ranges of the order, set from a sample")
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)

    _unique = field_validator("by")(lambda cls, value: unique_order(value, "by"))

    @property
    def ordering(self) -> list[tuple[str, bool]]:
        """(column, descending) per ``by`` entry."""
        return [order_direction(entry) for entry in self.by]


@register("sort")
class Sort(RangedShuffle):
    """Order the rows across every partition (Spark's `orderBy`), one partition after another.

    A range shuffle, on any engine: one pass samples the rows (those of the smallest hash
    of their values: the same sample however the rows are cut) to set each output
    partition's range, then every partition sends its rows to the partition of their
    range through the scratch folder, where each is sorted. Nulls come last and NaN
    above every number (first when descending), as in `window`; rows equal in every
    `by` column follow a hash of their values, so the output is the same on every engine
    and partitioning. Every row and column is kept; a sort is data preparation, not part
    of a saved model.

    ```yaml
    - op: sort
      by: [region, "spend desc"]
    - op: write_parquet             # files in order: part 0's rows before part 1's
      path: data/report
    ```
    """

    keeps_columns = True
    numeric_kernels = False
    in_model = False
    new_rows = False
    Params = SortParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.bounds: pa.Table | None = None  # the rows at the ranges' ends (set_bounds)

    def key_columns(self) -> list[str]:
        return [_TIE]

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [name for name, _ in self.params.ordering]

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.input_columns(schema), "by: column")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        check_order(schema, [], self.params.ordering, what="by")
        return schema

    # ------------------------------------------------------------------ shuffle

    def partial(self, part: pa.Table) -> pa.Table:
        """Every row, with the hash of its values that orders ties: rows alike in every
        column (copies) have one, and only they (the hash takes -0.0 as 0.0, as keys
        compare: a row with -0.0 has its own, or two rows that differ would be copies)."""
        tie = content_hash(part, _SEED) if part.num_rows else np.zeros(0, np.uint64)
        return part.append_column(_TIE, pa.array(tie, pa.uint64()))

    def _order(self, rows: pa.Table, extra: list[tuple[str, Any]] = ()
               ) -> tuple[pa.Table, list[tuple[str, str]]]:
        """The sort columns of ``rows`` (with their tie hash) and their keys; ``extra``
        (name, column)s sort last."""
        table, keys = order_keys(rows, self.params.ordering)
        for name, column in [(_TIE, rows.column(_TIE)), *extra]:
            table = table.append_column(name, column)
            keys.append((name, "ascending"))
        return table, keys

    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        if partials.num_rows == 0:
            return partials.drop_columns([_TIE])
        table, keys = self._order(partials)
        at = sorted_order(table, keys, "at_end")
        return partials.take(pa.array(at)).drop_columns([_TIE]).combine_chunks()

    def sample(self, part: pa.Table, k: int) -> pa.Table:
        """The ``by`` columns and tie hash of the ``k`` rows of smallest draw: a scramble
        of the tie hash and the row's number among its copies in the partition (the same
        values: the same tie hash), so that a row on many rows is as many in the sample
        (drawn by the tie alone, copies would crowd it out: all or none of them)."""
        rows = self.partial(part).select([*self.input_columns(part.schema), _TIE])
        tie = rows.column(_TIE).to_numpy()
        draw = mix(tie ^ mix(_copy_number(tie) + np.uint64(1)))
        return _smallest(rows.append_column(_DRAW, pa.array(draw, pa.uint64())), k)

    def combine_samples(self, a: pa.Table, b: pa.Table, k: int) -> pa.Table:
        return _smallest(pa.concat_tables([a, b]), k)

    def set_bounds(self, sample: pa.Table, buckets: int) -> None:
        """The sample's rows at each range's end, of ``buckets`` ranges of as many rows."""
        if sample.num_rows == 0 or buckets < 2:
            self.bounds = sample.slice(0, 0)
            return
        sample = sample.drop_columns([_DRAW])
        table, keys = self._order(sample)
        ordered_sample = sample.take(pa.array(sorted_order(table, keys, "at_end")))
        ends = np.unique((np.arange(1, buckets) * sample.num_rows) // buckets)
        self.bounds = ordered_sample.take(pa.array(ends))

    def place(self, partials: pa.Table, buckets: int) -> np.ndarray:
        """Each row's range: how many bounds come before it in the order (a row equal to
        a bound, which is a row too, goes before it); copies of a row that is several
        bounds (a row on many rows) are spread over the ranges those bounds delimit, by
        their number among the partition's copies: they are alike, so any split of them
        gives the same order."""
        n = partials.num_rows
        if self.bounds is None or self.bounds.num_rows == 0 or n == 0:
            return np.zeros(n, dtype=np.int64)
        names = [*self.input_columns(partials.schema), _TIE]
        both = pa.concat_tables([partials.select(names), self.bounds.select(names)])
        marks = np.zeros(both.num_rows, dtype=np.int8)
        marks[n:] = 1
        table, keys = self._order(both, [(_BOUND, pa.array(marks))])
        at = sorted_order(table, keys, "at_end")
        before = np.cumsum(marks[at]) - marks[at]  # bounds before each position
        out = np.empty(both.num_rows, dtype=np.int64)
        out[at] = before
        out = out[:n]
        tie = partials.column(_TIE).to_numpy()
        values, first, copies = np.unique(self.bounds.column(_TIE).to_numpy(),
                                          return_index=True, return_counts=True)
        alike = np.flatnonzero(np.isin(tie, values))
        if alike.size:
            at = np.searchsorted(values, tie[alike])
            out[alike] = first[at] + _copy_number(tie[alike]) % (copies[at] + 1)
        return np.minimum(out, buckets - 1)


def _copy_number(tie: np.ndarray) -> np.ndarray:
    """Each row's number (0, 1, ...) among the rows of its tie hash, in their order."""
    order = np.argsort(tie, kind="stable")
    ordered = tie[order]
    starts = np.ones(len(tie), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    out = np.empty(len(tie), dtype=np.uint64)
    out[order] = (np.arange(len(tie)) - run_first(starts)).astype(np.uint64)
    return out


def _smallest(rows: pa.Table, k: int) -> pa.Table:
    """The ``k`` rows of ``rows`` of smallest draw (all when fewer), in that order. The
    draw is scrambled: the smallest tie hashes themselves would be the first of every
    run of ties, and bounds made of them would send all the ties after."""
    pick = rows.column(_DRAW).to_numpy()
    if len(pick) > k:
        keep = np.argpartition(pick, k - 1)[:k]
        rows, pick = rows.take(pa.array(keep)), pick[keep]
    return rows.take(pa.array(np.argsort(pick, kind="stable")))


