"""derive: new columns from expressions over the existing ones (operators/expressions.py)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from operators.base import (
    ARROW_ERRORS,
    DataError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    require_expression_columns,
)
from operators.expressions import (
    ExpressionError,
    expression_type,
    function_names,
    parse_expression,
    referenced_columns,
    value_failure,
    with_projected,
)


class DeriveParams(Params):
    columns: dict[str, str] = Field(
        min_length=1, description="new column: expression, in order; a later expression may "
                                  "use an earlier new column; an existing name is replaced; "
                                  f"functions: {function_names()}")

    @field_validator("columns")
    @classmethod
    def _parses(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, text in value.items():
            try:
                parse_expression(text)
            except ExpressionError as exc:
                raise ParamError(f"derive column '{name}': {exc}") from None
        return value


@register("derive")
class Derive(Transform):
    """Add (or replace) columns computed by safe SQL-like expressions, in order.

    Expressions are parsed, never eval'd; see operators/expressions.py for the language.
    A new column that has the name of an existing one replaces it in place; others are
    added at the end.

    ```yaml
    - op: derive
      columns:
        charge_per_month: "total_charges / greatest(tenure, 1)"
        log_charge: "log1p(charge_per_month)"
        is_long: "tenure >= 24"
        zip_code: "try_cast(zip_text as int32)"   # null where it is no int32, as Spark SQL
    ```
    """

    numeric_kernels = False

    Params = DeriveParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        made: set[str] = set()
        used: list[str] = []
        for name, text in self.params.columns.items():
            for column in referenced_columns(text):
                if column not in made and column not in used:
                    used.append(column)
            made.add(name)
        return used

    def check_input(self, schema: pa.Schema) -> None:
        made: set[str] = set()
        for name, text in self.params.columns.items():
            try:
                require_expression_columns(schema, [c for c in referenced_columns(text)
                                                    if c not in made])
            except SchemaError as exc:
                # the entry's line, not the step's (``StepSpec.line_of``)
                exc.message, exc.param = f"derive column '{name}': {exc.message}", "columns"
                exc.args = (exc.message,)
                raise
            made.add(name)

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Derive | None:
        """Without the columns only training reads (a label derived here: scoring rows
        have no status to derive it from), unless a later expression of the step uses
        them; None where none is left."""
        kept: list[str] = []
        used: set[str] = set()
        for name, text in reversed(self.params.columns.items()):
            if name not in training_only or name in used:
                kept.append(name)
                used |= set(referenced_columns(text))
        if len(kept) == len(self.params.columns):
            return self
        columns = {name: text for name, text in self.params.columns.items() if name in kept}
        return Derive(columns=columns) if columns else None

    def derived_from(self) -> dict[str, list[str]]:
        return {name: referenced_columns(text) for name, text in self.params.columns.items()}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        for name, text in self.params.columns.items():
            try:
                t = expression_type(text, schema)
            except ExpressionError as exc:
                raise SchemaError(f"derive column '{name}': {exc}") from None
            if pa.types.is_null(t):
                raise SchemaError(f"derive column '{name}': the expression is always null",
                                  hint="cast it, e.g. cast(null as float64)")
            field = pa.field(name, t)
            i = schema.get_field_index(name)
            schema = schema.set(i, field) if i >= 0 else schema.append(field)
        return schema

    def _batches(self) -> list[dict[str, str]]:
        """Expressions in groups that can be evaluated in one projection: a group ends
        before an expression that reads a column the group makes."""
        batches: list[dict[str, str]] = [{}]
        for name, text in self.params.columns.items():
            if any(c in batches[-1] for c in referenced_columns(text)) or name in batches[-1]:
                batches.append({})
            batches[-1][name] = text
        return batches

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        out = part
        for batch in self._batches():
            try:
                out = with_projected(out, {name: parse_expression(text, out.schema)
                                           for name, text in batch.items()})
            except ARROW_ERRORS as exc:
                failed = self._failing(out, batch)
                detail, hint = value_failure(exc, [batch[failed]], out)
                raise DataError(f"derive column '{failed}' ({batch[failed]}): {detail}",
                                hint=hint, param="columns") from None
        return out

    @staticmethod
    def _failing(part: pa.Table, batch: dict[str, str]) -> str:
        """The first expression of ``batch`` that fails on ``part`` alone."""
        import pyarrow.dataset as ds

        for name, text in batch.items():
            try:
                ds.dataset(part).to_table(columns={name: parse_expression(text, part.schema)})
            except ARROW_ERRORS:
                return name
        return next(iter(batch))

