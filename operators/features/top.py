"""``top``: the first ``n`` rows in an order, of all the rows or of each group (``by``):
the latest 5 events of each customer, the 100 biggest orders. A shuffle whose partial
rows are each partition's own first ``n`` of each group, so only those travel; the rows
of a group are finished in one place (all of them in one without ``by``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators.base import (
    ParamError,
    Params,
    Shuffle,
    register,
    require_columns,
)
from operators.features.grouping import (
    INTERNAL,
    ByKeys,
    check_order,
    distinct_keys,
    one_partitioning,
    order_direction,
    order_keys,
    partition_mb_field,
    partitions_field,
    run_first,
    run_starts,
    sorted_order,
    unique_order,
)
from operators.hashing import content_hash

_TIE = f"{INTERNAL}tie"  # a hash of the row's values: the last key of the order
_SEED = 0x70B


class TopParams(Params):
    n: int = Field(ge=1, le=10_000_000, description="rows to keep: of each `by` group, or "
                                                   "of all the rows")
    order: list[str] = Field(min_length=1, description="the columns that say which rows "
                                                       "come first: [\"ts desc\"] for the "
                                                       "latest; nulls last either way, NaN "
                                                       "above every number")
    by: list[str] = Field(default_factory=list, description="groups: n rows of each "
                                                            "(default: n of all the rows)")
    partitions: int | None = partitions_field()
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)
    _distinct_keys = field_validator("by")(distinct_keys)

    _unique = field_validator("order")(lambda cls, value: unique_order(value, "order"))

    @model_validator(mode="after")
    def _one_place(self) -> TopParams:
        if not self.by and self.partitions not in (None, 1):
            raise ParamError("partitions: without `by` the n rows are one group (one "
                             "partition)", hint="leave partitions out, or give `by` keys")
        return self

    @property
    def ordering(self) -> list[tuple[str, bool]]:
        """(column, descending) per ``order`` entry."""
        return [order_direction(entry) for entry in self.order]


@register("top")
class Top(ByKeys, Shuffle):
    """The first `n` rows in `order`, of all or of each `by` group (each customer's last 5 events).

    Each partition keeps its own first `n` rows of each group and only those go through
    the scratch folder to the group's place, where the first `n` of them are kept (SQL's
    `row_number() <= n` over a window, without sending every row). Rows are kept whole,
    in group then `order` within each output partition; nulls last, NaN above every
    number (first when descending); rows equal in every `order` column follow a hash of
    their values, so the same rows are kept on every engine and partitioning. Without
    `by` the `n` rows are one output partition. Data preparation, not part of a saved
    model.

    ```yaml
    - op: top
      by: [customer_id]
      order: ["ts desc"]
      n: 5
    ```
    """

    keeps_columns = True
    numeric_kernels = False
    in_model = False
    new_rows = False
    row_order = "groups"
    Params = TopParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [*self.params.by, *(c for c, _ in self.params.ordering
                                   if c not in self.params.by)]

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.params.by, "by: key column")
        require_columns(schema, [c for c, _ in self.params.ordering], "order: column")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        check_order(schema, self.params.by, self.params.ordering)
        return schema

    def partial(self, part: pa.Table) -> pa.Table:
        """A partition's first ``n`` rows of each group, with their group's keys (as keys
        compare) and the hash that orders ties."""
        rows = self.keyed(part)
        tie = content_hash(part, _SEED) if part.num_rows else np.zeros(0, np.uint64)
        return self._first(rows.append_column(_TIE, pa.array(tie, pa.uint64())))

    def _first(self, rows: pa.Table) -> pa.Table:
        """The first ``n`` rows of each group of ``rows`` (partial rows), in group then
        order."""
        if rows.num_rows == 0:
            return rows
        keys = self.key_columns()
        table, sort_keys = order_keys(rows, self.params.ordering,
                                      [(k, rows.column(k)) for k in keys])
        table = table.append_column(_TIE, rows.column(_TIE))
        sort_keys.append((_TIE, "ascending"))
        at = sorted_order(table, sort_keys, "at_end")
        starts = run_starts(table.take(pa.array(at)), keys)
        first = run_first(starts)
        kept = at[np.arange(len(at)) - first < self.params.n]
        return rows.take(pa.array(kept))

    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        return self._first(partials).drop_columns(
            [*self.key_columns(), _TIE]).combine_chunks()
