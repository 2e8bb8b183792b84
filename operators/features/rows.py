"""filter and sample: transforms that choose rows.

They shape what a pipeline trains on or writes, not what a model does, so neither is
ever part of a saved model (``Transform.in_model``): scoring keeps every row it
is given, and a filter belongs in the scoring pipeline when one is wanted there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from operators.base import (
    DataError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    require_columns,
)
from operators.expressions import (
    ExpressionError,
    check_filter,
    parse_filter,
    referenced_columns,
)
from operators.features.columns import arrow_message, unique_names
from operators.hashing import chosen_rows

# --------------------------------------------------------------------------- filter


class FilterParams(Params):
    where: str = Field(description="the rows to keep: a true/false expression, e.g. "
                                   "\"probability >= 0.8 and region != 'test'\"; a row "
                                   "where it is null is dropped (SQL's WHERE)")

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_filter(value)
        except ExpressionError as exc:
            raise ParamError(f"where: {exc}") from None
        return value


@register("filter")
class Filter(Transform):
    """Keep the rows where a condition holds (rows where it is null are dropped).

    The condition is the expression language of `derive` and `read_parquet`'s
    `filter` (parsed, never eval'd), over any column the step's input has, derived
    and scored ones included. Put a condition on the files' own columns in
    `read_parquet`'s `filter` instead: there it also skips files and row groups.
    Never part of a saved model.

    ```yaml
    - op: filter
      where: "probability >= 0.8 and plan != 'trial'"   # e.g. after score
    ```
    """

    numeric_kernels = False
    in_model = False

    Params = FilterParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return referenced_columns(self.params.where)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        try:
            check_filter(self.params.where, schema)
        except ExpressionError as exc:
            raise SchemaError(f"where: {exc}") from None
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        try:
            return part.filter(parse_filter(self.params.where))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DataError(f"where: {arrow_message(exc)}",
                            hint="guard the condition, e.g. with if(...) or coalesce(...)"
                            ) from None


# --------------------------------------------------------------------------- sample


class SampleParams(Params):
    fraction: float = Field(gt=0, le=1, description="share of the rows to keep, in (0, 1]")
    seed: int = Field(0, description="seed of the choice (with each row's content)")
    by: list[str] | None = Field(
        None, min_length=1,
        description="columns whose values decide (default: the whole row): e.g. "
                    "[customer_id] keeps or leaves all of a customer's rows together")
    complement: bool = Field(False, description="keep the other rows: those the same "
                                                "fraction, seed and by leave out")

    @field_validator("by")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unique_names(value, "by")
        return value


@register("sample")
class Sample(Transform):
    """Keep a share of the rows, chosen by a hash of their content and the seed.

    The same rows on every engine, partitioning and order of the files (Spark's
    `sample` and `randomSplit` depend on the partitioning); a row's fate depends
    only on its values, so two `sample` steps with the same `fraction`, `seed` and
    `by`, one with `complement: true`, split the rows in two with none in both and
    none in neither. Right before a model step, `sample` with the model's
    `validation_fraction` and `seed` keeps exactly the rows that model holds out
    for validation (and `complement: true` the rows it trains on). Never part of a
    saved model.

    ```yaml
    - id: train_rows
      op: sample
      fraction: 0.8
      seed: 7
      by: [customer_id]     # all of a customer's rows on one side
    - id: test_rows
      op: sample
      input: customers      # from the read: no fitted step sees these rows
      fraction: 0.8
      seed: 7
      by: [customer_id]
      complement: true      # the other 20%
    ```
    """

    numeric_kernels = False
    in_model = False

    Params = SampleParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.by or [])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        try:
            require_columns(schema, self.params.by or [])
        except SchemaError as exc:
            raise SchemaError(f"by: {exc.message}", hint=exc.hint) from None
        return schema

    def chosen(self, part: pa.Table) -> np.ndarray:
        """True for the rows ``fraction``, ``seed`` and ``by`` choose (before complement)."""
        p = self.params
        return chosen_rows(part, p.fraction, p.seed, p.by)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        keep = self.chosen(part)
        if self.params.complement:
            keep = ~keep
        return part.filter(pa.array(keep))
