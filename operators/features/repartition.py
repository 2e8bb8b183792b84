"""``repartition``: the same rows in other partitions (Spark's ``repartition``). With
``by``, each key's rows go to one output partition: written with ``partition_by`` the
same columns, each hive partition is then one file, not one from every input partition.
Without ``by``, each partition's rows are spread evenly by their place in it (Spark's
round robin; copies of a row too): a few large partitions split, or many small ones put
together, into as many as ``partitions`` says or ``partition_mb`` needs. Rows are not
changed, and within an output partition they come in the input's order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators.base import Params, Shuffle, register, require_columns
from operators.features.grouping import (
    ByKeys,
    check_order,
    distinct_keys,
    one_partitioning,
    partition_mb_field,
    partitions_field,
)


class RepartitionParams(Params):
    by: list[str] = Field(default_factory=list, description=(
        "keys whose rows go to one output partition (each key's rows together); "
        "default: each partition's rows spread evenly, by their place in it"))
    partitions: int | None = partitions_field(
        how="each key's rows to one, or each partition's rows spread evenly")
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)
    _distinct_keys = field_validator("by")(distinct_keys)


@register("repartition")
class Repartition(ByKeys, Shuffle):
    """The same rows in other partitions: each `by` key's rows together, or spread evenly.

    Spark's `repartition(cols)` / `repartition(n)`. Before a `write_parquet` with
    `partition_by: [ds]`, `repartition` `by: [ds]` writes each day as one file instead
    of one from every input partition (a key's rows stay together, however many: a
    day is one file whatever its size); without `by`, each partition's rows spread
    evenly by their place in it (Spark's round robin), so many small input files become
    fewer output partitions of about `partition_mb` (or exactly `partitions`), and a few
    large ones more. The rows pass unchanged, in the input's order within each output
    partition; data preparation, not part of a saved model.

    ```yaml
    - op: repartition
      by: [ds]
    - op: write_parquet
      path: data/events
      partition_by: [ds]
    ```
    """

    keeps_columns = True
    numeric_kernels = False
    in_model = False
    new_rows = False
    row_order = "input"
    Params = RepartitionParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.by)

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.params.by, "by: key column")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        check_order(schema, self.params.by, [])
        return schema

    def one_place(self) -> bool:
        return False  # without keys the rows spread; they do not meet in one place

    def partial(self, part: pa.Table) -> pa.Table:
        return self.partial_at(part, 0)

    def partial_at(self, part: pa.Table, index: int) -> pa.Table:
        """The rows with what places them: their keys (as keys compare), or a number of
        their own, partition ``index``'s rows numbered from a start of their own (the
        runtime hashes it: each partition's rows spread evenly over the output
        partitions, copies of one row too, and partitions of a row or two spread as
        well, as Spark's round robin from a start per partition)."""
        if self.params.by:
            return self.keyed(part)
        start = np.uint64(index) << np.uint64(32)  # a partition holds < 2**32 rows
        return part.append_column(
            self._KEYED, pa.array(start + np.arange(part.num_rows, dtype=np.uint64)))

    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        return partials.drop_columns(self.key_columns())
