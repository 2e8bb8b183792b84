"""filter, sample and expect: transforms that choose (or check) rows.

They shape what a pipeline trains on or writes, not what a model does, so neither is
ever part of a saved model (``Transform.in_model``): scoring keeps every row it
is given, and a filter belongs in the scoring pipeline when one is wanted there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import (
    ARROW_ERRORS,
    DataError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    require_columns,
    require_expression_columns,
)
from operators.expressions import (
    ExpressionError,
    check_filter,
    function_names,
    parse_filter,
    quote_name,
    referenced_columns,
    value_failure,
)
from operators.features.columns import unique_names
from operators.hashing import chosen_rows

# --------------------------------------------------------------------------- conditions
# filter's `where` and expect's rules: parsed with the step's parameters, checked against
# the input as the pipeline plans, evaluated on each partition


def _parsed(text: str, what: str) -> str:
    """``text`` when it parses as a true/false condition, else a ParamError."""
    try:
        parse_filter(text)
    except ExpressionError as exc:
        raise ParamError(f"{what}: {exc}") from None
    return text


def _checked(text: str, schema: pa.Schema, what: str) -> None:
    """A SchemaError when the condition is not true/false over ``schema``'s columns."""
    try:
        check_filter(text, schema)
    except ExpressionError as exc:
        raise SchemaError(f"{what}: {exc}") from None


def _failed(exc: BaseException, what: str, texts: Iterable[str], part: pa.Table,
            param: str) -> DataError:
    """Conditions ``texts`` (of parameter ``param``) that Arrow could not evaluate on the
    values of ``part``."""
    detail, hint = value_failure(exc, texts, part, "condition")
    return DataError(f"{what}: {detail}", hint=hint, param=param)


# --------------------------------------------------------------------------- filter


class FilterParams(Params):
    where: str = Field(description="the rows to keep: a true/false expression, e.g. "
                                   "\"probability >= 0.8 and region != 'test'\"; a row "
                                   "where it is null is dropped (SQL's WHERE); functions: "
                                   f"{function_names()}")

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str) -> str:
        return _parsed(value, "where")


@register("filter")
class Filter(Transform):
    """Keep the rows where a condition holds (rows where it is null are dropped).

    The condition is the expression language of `derive` and `read_parquet`'s
    `filter` (parsed, never eval'd), over any column the step's input has, derived
    and scored ones included. Right after the `read_parquet` it alone reads, on the
    files' own columns, it is given to the read too, where it skips files and row
    groups. Never part of a saved model.

    ```yaml
    - op: filter
      where: "probability >= 0.8 and plan != 'trial'"   # e.g. after score
    ```
    """

    keeps_columns = True
    numeric_kernels = False
    in_model = False

    Params = FilterParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return referenced_columns(self.params.where)

    def check_input(self, schema: pa.Schema) -> None:
        try:
            require_expression_columns(schema, self.input_columns(schema))
        except SchemaError as exc:
            exc.param = "where"
            raise

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        _checked(self.params.where, schema, "where")
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        try:
            return part.filter(parse_filter(self.params.where, part.schema))
        except ARROW_ERRORS as exc:
            raise _failed(exc, f"where ({self.params.where})", [self.params.where],
                          part, "where") from None


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

    keeps_columns = True
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


# --------------------------------------------------------------------------- expect


class ExpectParams(Params):
    rules: dict[str, str] = Field(
        default_factory=dict,
        description="name: a true/false condition every row must meet, e.g. "
                    "{positive_charges: \"monthly_charges > 0\"}; false or null fails")
    not_null: list[str] = Field(default_factory=list,
                                description="columns that must have a value in every row")
    on_failure: Literal["fail", "drop", "warn"] = Field(
        "fail", description="fail: stop the run at the first partition with a failing row, "
                            "naming the rule, the count and a failing row (an output is "
                            "never half written); drop: keep only the rows that pass; "
                            "warn: keep every row, the run going on with a warning line "
                            "that counts the rows failing each rule")

    @field_validator("rules")
    @classmethod
    def _rules_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _parsed(text, f"rules: '{name}'")
        return value

    @field_validator("not_null")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        unique_names(value, "not_null")
        return value

    @model_validator(mode="after")
    def _something(self) -> ExpectParams:
        if not self.rules and not self.not_null:
            raise ParamError("expect checks nothing",
                             hint="give rules: {name: condition} and/or not_null: [columns]")
        return self


EXAMPLE_COLUMNS = 8
"""A failing row is shown with at most this many columns (the rule's first)."""


@register("expect")
class Expect(Transform):
    """Check every row against rules before it goes on: data quality in the pipeline.

    Each rule is a true/false condition in the expression language of `filter` (a row
    fails it where it is false or null); `not_null` lists columns that must have a value.
    `on_failure: fail` (the default) stops the run at the first partition with a
    failing row, with the rule, how many of the partition's rows fail it and one of
    them: a scheduled job stops before it writes or trains on bad data (a write is
    atomic: no half output). `on_failure: drop` keeps the rows that pass every rule
    (the run record's row counts show how many went). `on_failure: warn` keeps every
    row: the run goes on, and ends with a warning line counting the failing rows (dbt's
    `severity: warn`). Every rule's rows checked and failed are the step's metrics
    (`<step>.<rule>.failed`, `.checked`). Never part of a saved model.

    ```yaml
    - op: expect
      rules:
        positive_charges: "monthly_charges > 0"
        known_plan: "plan in ('basic', 'standard', 'premium')"
      not_null: [customer_id, churned]
    ```
    """

    keeps_columns = True
    numeric_kernels = False
    in_model = False

    Params = ExpectParams

    @property
    def checks(self) -> dict[str, str]:
        """Every check by name: the rules, then ``not_null(column)`` for each column."""
        out = dict(self.params.rules)
        for column in self.params.not_null:
            out[f"not_null({column})"] = f"{quote_name(column)} is not null"
        return out

    def input_columns(self, schema: pa.Schema) -> list[str]:
        used = list(self.params.not_null)
        for text in self.params.rules.values():
            used += [c for c in referenced_columns(text) if c not in used]
        return used

    def check_input(self, schema: pa.Schema) -> None:
        require_expression_columns(schema, self.input_columns(schema))

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        try:
            require_columns(schema, self.params.not_null)
        except SchemaError as exc:
            raise SchemaError(f"not_null: {exc.message}", hint=exc.hint) from None
        for name, text in self.params.rules.items():
            _checked(text, schema, f"rules: '{name}'")
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return self.transform_counted(part, xp)[0]

    def transform_counted(self, part: pa.Table, xp: Any) -> tuple[pa.Table, dict[str, Any]]:
        """The rows that go on, and each check's rows ``checked`` and ``failed``."""
        import pyarrow.dataset as ds

        checks = self.checks
        try:
            met = ds.dataset(part).to_table(
                columns={name: parse_filter(text, part.schema)
                         for name, text in checks.items()})
        except ARROW_ERRORS as exc:
            raise _failed(exc, "rules", checks.values(), part, "rules") from None
        passed = None
        counts = {}
        for name in checks:
            ok = pc.fill_null(met.column(name), False)
            failing = part.num_rows - pc.sum(ok).as_py() if part.num_rows else 0
            if failing and self.params.on_failure == "fail":
                raise self._failure(part, name, checks[name], ok, failing)
            counts[name] = {"checked": part.num_rows, "failed": failing}
            passed = ok if passed is None else pc.and_(passed, ok)
        kept = part.filter(passed) if self.params.on_failure == "drop" and passed is not None \
            else part
        return kept, counts

    def warning(self, counts: dict[str, Any]) -> str | None:
        failed = {name: c for name, c in counts.items() if c["failed"]}
        if self.params.on_failure != "warn" or not failed:
            return None
        checks = self.checks
        said = "; ".join(f"{c['failed']:,} of {c['checked']:,} rows fail "
                         f"{_rule(name, checks[name])}" for name, c in failed.items())
        return f"{said} (on_failure: warn: the run went on with every row)"

    def _failure(self, part: pa.Table, name: str, text: str, ok: pa.ChunkedArray,
                 failing: int) -> DataError:
        first = pc.index(ok, False).as_py()
        shown = referenced_columns(text)
        shown += [c for c in part.column_names if c not in shown]
        row = part.slice(first, 1).select(shown[:EXAMPLE_COLUMNS]).to_pylist()[0]
        example = ", ".join(f"{k}={_value(v)}" for k, v in row.items())
        return DataError(
            f"{failing:,} of {part.num_rows:,} rows fail {_rule(name, text)}, e.g. the row "
            f"{example}",
            hint="fix the data; or on_failure: drop to go on with the rows that pass, or "
                 "on_failure: warn to go on with every row and a warning")


def _rule(name: str, text: str) -> str:
    """A check as a message names it: not_null(column), or 'name' (its condition)."""
    return name if name.startswith("not_null(") else f"'{name}' ({text})"


def _value(value: Any) -> str:
    """A value as a failing row shows it: text quoted, null as null, others as written
    (2023-06-30, not datetime.date(2023, 6, 30))."""
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str | bytes) else str(value)
