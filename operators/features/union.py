"""union: the rows of other steps after the input's (Spark's ``unionByName``, pandas'
``concat``).

Columns are matched by name: the output has the input's columns in its order, then (with
``missing: null``) those only the other steps have, in the order they first appear. A
column's type is the one every step has, or the type pyarrow's permissive promotion
widens them all to (int32 and int64: int64; int64 and float64: float64; timestamp[ms]
and timestamp[us]: timestamp[us]; dictionary-encoded and plain text: plain text); types
with no such type are a planning error naming the column and each step's type. No row
moves: the runtime reads the union's partitions as the input's then each step's, each
through its own steps, and ``conform`` makes each to the union's columns. Preparing data,
not a model: a union is never part of a saved model (a model saved after it starts after
it), so a scoring pipeline repeats it.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from operators.base import (
    DataError,
    MissingColumnError,
    Operator,
    Params,
    SchemaError,
    SluiceError,
    arrow_message,
    conformed,
    register,
    rename_hint,
    renames,
    yaml_null,
    yaml_text,
)
from operators.io.parquet import castable, promoted


class UnionParams(Params):
    steps: list[str] = Field(
        min_length=1, description="the other steps whose rows come after the input's, in "
                                  "this order")
    missing: Literal["error", "null"] = Field(
        "error", description="error: every step has the same columns; null: a column "
                             "some steps lack is null in their rows (Spark's "
                             "allowMissingColumns)")

    _null = field_validator("missing", mode="before")(lambda cls, value: yaml_null(value))

    @field_validator("steps")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"step '{name}' is listed twice: its rows would come twice")
            seen.add(name)
        return value


@register("union")
class Union(Operator):
    """Append the rows of other steps after the input's, columns matched by name.

    Spark's `unionByName` (pandas' `concat`): the output has the input's rows, then each
    of `steps`' in turn, in their order, with no shuffle (its partitions are theirs, each
    read through its own steps). Columns are matched by name, in the input's order; a
    type the steps disagree on is widened where pyarrow's permissive promotion does
    (int32 and int64, int64 and float64, timestamp units, dictionary and plain text),
    else the plan fails naming the column and each step's type (cast it first). A column
    some steps lack is an error, or with `missing: null` null in their rows (it comes
    after the input's columns). Never part of a saved model: a scoring pipeline does the
    union too.

    ```yaml
    - id: events
      op: union
      input: web                    # default: the step before
      steps: [app]                  # their rows come after the input's, in this order
      missing: null                 # error (default): every step has the same columns
    ```
    """

    kind = "union"
    numeric_kernels = False
    in_model = False
    new_rows = True
    Params = UnionParams
    # the step whose rows come first (its input), as messages name it
    input_step: str | None = None

    def step_inputs(self) -> list[str]:
        return list(self.params.steps)

    def bind_input(self, step_id: str | None) -> None:
        """The id of the step's input (whose rows come first), for messages."""
        self.input_step = step_id

    def _named(self, schema: pa.Schema) -> list[tuple[str, pa.Schema]]:
        """Each step's name as messages give it, with its schema: the input's first."""
        first = f"step '{self.input_step}'" if self.input_step else "the input"
        schemas = getattr(self, "step_schemas", {})
        out = [(first, schema)]
        for step in self.params.steps:
            if step not in schemas:
                raise SchemaError(f"steps: the columns of step '{step}' are not known yet",
                                  hint="fix that step's problem first")
            out.append((f"step '{step}'", schemas[step]))
        return out

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        named = self._named(schema)
        found: dict[str, list[tuple[str, pa.Field]]] = {}  # in order of appearance
        for label, each in named:
            for field in each:
                found.setdefault(field.name, []).append((label, field))
        lacking = {name: [label for label, each in named if each.get_field_index(name) < 0]
                   for name in found}
        lacking = {name: labels for name, labels in lacking.items() if labels}
        if lacking and self.params.missing == "error":
            shown = "; ".join(f"'{name}' is not in {_listed(labels)}"
                              for name, labels in list(lacking.items())[:5])
            more = f" (and {len(lacking) - 5} more columns)" if len(lacking) > 5 else ""
            # a column a step names otherwise than the input (userid for user_id)
            first = named[0][1]
            fixes = []
            for label, each in named[1:]:
                pairs = renames([n for n in each.names if first.get_field_index(n) < 0],
                                [n for n in first.names if each.get_field_index(n) < 0])
                if pairs:
                    fixes.append(f"in {label}, {rename_hint(pairs)}")
            raise MissingColumnError(
                f"steps: columns are matched by name and every step must have the same "
                f"ones: {shown}{more}",
                hint="".join(f"{fix}; " for fix in fixes)
                + "missing: null makes a column null in the rows of the steps that lack "
                  "it (Spark's allowMissingColumns), or select the shared columns in a "
                  "step before the union (op: select)")
        fields = []
        for name, fields_of in found.items():
            wanted = _common_type(name, fields_of)
            nullable = name in lacking or any(f.nullable for _, f in fields_of)
            fields.append(fields_of[0][1].with_type(wanted).with_nullable(nullable))
        return pa.schema(fields, metadata=schema.metadata)

    def conform(self, part: pa.Table, schema: pa.Schema, step: str) -> pa.Table:
        """``part`` (rows of ``step``) with the union's columns ``schema``: in its order, in
        its types, null where the step has no such column. A new table; ``part`` is left
        as it is."""
        def failure(field: pa.Field, have: pa.DataType, exc: BaseException) -> SluiceError:
            return DataError(
                f"column '{field.name}' of step '{step}' does not fit the union's type: "
                f"{have} to {field.type}: {arrow_message(exc)}",
                hint=f"cast it in a step before the union (op: cast), or keep out the rows "
                     f"whose '{field.name}' does not fit")

        return conformed(part, schema, failure)


def _listed(labels: list[str]) -> str:
    """"step 'a'", "steps 'a', 'b'" (or "the input, step 'b'" where a step has no id)."""
    if len(labels) > 1 and all(label.startswith("step ") for label in labels):
        return "steps " + ", ".join(label.removeprefix("step ") for label in labels)
    return ", ".join(labels)


def _common_type(name: str, fields: list[tuple[str, pa.Field]]) -> pa.DataType:
    """The type every step's column ``name`` has, else the one pyarrow's permissive
    promotion widens them all to; a SchemaError naming each step's type where there is
    none."""
    types = [f.type for _, f in fields]
    if all(t == types[0] for t in types):
        return types[0]
    common: pa.DataType | None = types[0]
    for t in types[1:]:
        common = promoted(common, t) if common is not None else None
    if common is not None:
        return common
    first = types[0]
    shown = ", ".join(f"{f.type} in {label}" for label, f in fields)
    others = [label for label, f in fields if f.type != first]
    fits = all(castable(f.type, first) for _, f in fields)
    target = first if fits else pa.string()
    after = " and ".join(others) if fits else "each step"
    raise SchemaError(
        f"steps: column '{name}' is {shown}: types with no common one to widen to",
        hint=f"cast it to one type first: a step `op: cast` with `columns: {{{name}: "
             f"{yaml_text(str(target))}}}` after {after}, which the union reads instead")
