"""deduplicate: one row per key, the latest (or earliest) by an order column, from the
rows of every partition (a shuffle, ``operators.base.Shuffle``).

Which row a key keeps depends only on the rows: the one of the largest ``order`` (for
``keep: last``; nulls lose to any value), ties broken by the smallest hash of the row's
values, so that the same row is kept whatever the partitioning, the order of the rows or
the engine (Spark's ``dropDuplicates`` keeps an arbitrary one).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import ParamError, Params, SchemaError, Shuffle, register, require_columns
from operators.features.grouping import (
    INTERNAL,
    Grouper,
    at_extreme,
    distinct_keys,
    key_problem,
    normalized,
    one_partitioning,
    ordered,
    partition_mb_field,
    partitions_field,
    plain,
    sorted_order,
)
from operators.hashing import content_hash, hash_rows

_HASH = f"{INTERNAL}hash"  # each row's hash of its values: the tie-break
_SEED = 0x0DED


class DeduplicateParams(Params):
    by: list[str] = Field(default_factory=list,
                          description="the key columns: one row per distinct combination "
                                      "(null is a value); default: every column (rows "
                                      "that are equal in every column are one)")
    order: str | None = Field(None, description="the column that says which row of a key "
                                                "is kept (an update time, a version)")
    keep: Literal["last", "first"] = Field(
        "last", description="last: the row of the largest order; first: the smallest")
    partitions: int | None = partitions_field()
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)

    _distinct_keys = field_validator("by")(distinct_keys)

    @model_validator(mode="after")
    def _order_for_keep(self) -> DeduplicateParams:
        if self.order is None and "keep" in self.model_fields_set:
            raise ParamError("keep: first or last by what? give `order`",
                             hint="e.g. order: updated_at")
        return self


@register("deduplicate")
class Deduplicate(Shuffle):
    """One row per key (`by`): the latest by `order`, from the rows of every partition.

    The latest snapshot of each customer from a table of updates, or events delivered
    twice:

    ```yaml
    - op: deduplicate
      by: [customer_id]
      order: updated_at      # keep: last (default) or first
    ```

    Ties (and no `order`) keep the row with the smallest hash of its values: the same
    row on every engine and partitioning. Rows whose order is null (or NaN) lose to any
    other.
    Without `by`, rows equal in every column are one. The output has the input's
    columns (dictionaries as their values), in key order within each output partition.
    """

    Params = DeduplicateParams

    def key_columns(self) -> list[str]:
        # without `by`, rows equal in every column have equal hashes: they meet by it
        return list(self.params.by) or [_HASH]

    def _keys(self, schema: pa.Schema) -> list[str]:
        return list(self.params.by) or [n for n in schema.names if n != _HASH]

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [*self.params.by, *([self.params.order] if self.params.order else [])]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.input_columns(schema), "column")
        for name in self._keys(schema):
            found = key_problem(schema, name, f"by: '{name}'")
            if found is not None:
                if not self.params.by:  # every column is a key: name the keys instead
                    found.hint = "name the key columns in by"
                raise found
        order = self.params.order
        if order is not None and not ordered(schema.field(order).type):
            raise SchemaError(f"order: '{order}' is {schema.field(order).type}, which has "
                              "no order here", hint="numbers, text, dates and times order")
        return self.finish(self.partial(schema.empty_table())).schema

    def partial(self, part: pa.Table) -> pa.Table:
        table = pa.table({n: plain(part.column(n)) for n in part.column_names},
                         schema=pa.schema([f.with_type(f.type.value_type) if
                                           pa.types.is_dictionary(f.type) else f
                                           for f in part.schema]))
        if not self.params.by:  # whole rows: equal rows meet by their hash (placement only)
            table = table.append_column(_HASH, pa.array(
                hash_rows(table, seed=_SEED, fast_text=True), pa.uint64()))
        return self._kept(table)

    def finish(self, partials: pa.Table) -> pa.Table:
        kept = self._kept(partials)
        keys = self._keys(kept.schema)
        if kept.num_rows > 1:
            kept = kept.take(sorted_order(kept, [(k, "ascending") for k in keys], "at_end"))
        return kept.drop_columns([c for c in (_HASH,) if c in kept.column_names])

    def _kept(self, table: pa.Table) -> pa.Table:
        """The row each key keeps: of its rows at the best order (all, without one; NaN
        and null are none), the one of the smallest hash of its values (hashed only where
        a key has several such rows)."""
        keys = self._keys(table.schema)
        inner = {f"{INTERNAL}k{j}": normalized(plain(table.column(k)))
                 for j, k in enumerate(keys)}
        grouper = Grouper(pa.table(inner), list(inner))
        grouper.numbered = True
        groups, _, gid = grouper.run()
        assert gid is not None
        count = groups.num_rows
        eligible = np.ones(table.num_rows, dtype=bool)
        if self.params.order is not None:
            best, at_best = at_extreme(gid, count, table.column(self.params.order),
                                       self.params.keep == "first")
            none = pc.is_null(best).to_numpy(zero_copy_only=False)  # keys of no order
            eligible = at_best | none[gid]
        candidates = np.flatnonzero(eligible)
        several = np.bincount(gid[candidates], minlength=count)[gid[candidates]] > 1
        kept = [candidates[~several]]
        tied = candidates[several]
        if tied.size:
            values = table.take(pa.array(tied)).drop_columns(
                [c for c in (_HASH,) if c in table.column_names])
            hashes = content_hash(values, _SEED)
            smallest = np.full(count, np.iinfo(np.uint64).max, dtype=np.uint64)
            np.minimum.at(smallest, gid[tied], hashes)
            chosen = tied[hashes == smallest[gid[tied]]]
            _, first = np.unique(gid[chosen], return_index=True)  # equal rows: one of them
            kept.append(chosen[first])
        return table.take(pa.array(np.sort(np.concatenate(kept))))
