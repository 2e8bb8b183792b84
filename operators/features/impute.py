"""impute: fill missing values with a fitted mean, median or most frequent value, or a constant."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.arrays import is_text
from operators.base import (
    DataError,
    Estimator,
    ParamError,
    Params,
    SchemaError,
    Transform,
    columns_view,
    columns_without,
    register,
    register_fitted,
    require_columns,
)
from operators.features.columns import (
    is_numeric,
    merge_counts,
    plain,
    replace_columns,
    replace_field,
    unique_names,
    value_counts,
)
from operators.features.scale import combine_moments, moments
from operators.quantiles import ColumnQuantiles

Strategy = Literal["mean", "median", "most_frequent", "constant"]
Scalar = bool | int | float | str


class ImputeParams(Params):
    columns: list[str] = Field(min_length=1, description="columns whose missing values to fill")
    strategy: Strategy = Field("mean", description="mean | median | most_frequent | constant")
    value: Scalar | None = Field(None, description="the fill value of strategy constant")
    approx: bool = Field(False, description="median from a one-pass KLL sketch: approximate "
                                            "and not partition-invariant (huge data)")
    add_indicator: bool = Field(False, description="also a boolean column `<col>_missing` "
                                                   "after each, true where the value was "
                                                   "missing (scikit-learn's add_indicator): "
                                                   "a model can learn from the missingness")

    @model_validator(mode="after")
    def _consistent(self) -> ImputeParams:
        if self.strategy == "constant" and self.value is None:
            raise ParamError("strategy constant needs a `value`",
                             hint="e.g. value: 0, or value: unknown")
        if self.strategy != "constant" and self.value is not None:
            raise ParamError(f"`value` is only used by strategy constant, not {self.strategy}",
                             hint="remove `value`, or set strategy: constant")
        if self.approx and self.strategy != "median":
            raise ParamError(f"`approx` applies to strategy median, not {self.strategy}")
        return self


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def output_type(params: ImputeParams, name: str, t: pa.DataType) -> pa.DataType:
    """The column's type after imputation; a SchemaError / ParamError if it cannot be filled.

    mean and median make integer columns float64; most_frequent keeps every type;
    a constant keeps the type when the value fits it, and makes an integer column
    float64 when the value is a float.
    """
    value_t = _value_type(t)
    if params.strategy in ("mean", "median"):
        if not is_numeric(t):
            raise SchemaError(f"column '{name}' is {t}; strategy {params.strategy} needs numbers",
                              hint="use strategy most_frequent or constant")
        return t if pa.types.is_floating(t) else pa.float64()
    if params.strategy == "most_frequent":
        if not (is_numeric(value_t) or pa.types.is_boolean(value_t) or is_text(value_t)):
            raise SchemaError(f"column '{name}' is {t}; strategy most_frequent takes numbers, "
                              "booleans and strings", hint="use strategy constant")
        return t
    value = params.value
    if pa.types.is_integer(value_t) and isinstance(value, float):
        return pa.float64()
    if isinstance(value, str) != is_text(value_t) or (
            isinstance(value, bool) != pa.types.is_boolean(value_t)):
        raise ParamError(f"value {value!r} does not suit column '{name}' of type {t}",
                         hint="give a value of the column's type")
    try:
        pa.scalar(value).cast(value_t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        raise ParamError(f"value {value!r} does not fit column '{name}' of type {t}",
                         hint="give a value of the column's type") from None
    return t


def indicator(name: str) -> str:
    """The name of column ``name``'s missingness indicator (``add_indicator``)."""
    return f"{name}_missing"


def imputed_schema(params: ImputeParams, schema: pa.Schema) -> pa.Schema:
    require_columns(schema, params.columns)
    for name in params.columns:
        i = schema.get_field_index(name)
        field = schema.field(i)
        fields = [field.with_type(output_type(params, name, field.type))]
        if params.add_indicator:
            if indicator(name) in schema.names:
                raise SchemaError(f"impute's indicator '{indicator(name)}' is already a "
                                  "column of the input", hint="rename or drop that column")
            fields.append(pa.field(indicator(name), pa.bool_(), nullable=False))
        schema = replace_field(schema, name, fields)
    return schema


@register("impute")
class Impute(Estimator):
    """Fill nulls (and NaN in floating columns) with a value fitted per column.

    mean and median skip missing values and make integer columns float64 (an integer
    column imputed with its mean becomes float64); most_frequent takes the value seen
    most often (ties: the smallest), for numbers, booleans and strings; constant fills
    ``value``. The fitted values are in the model's state. A column with no value at
    all to fit on is an error.

    ```yaml
    - op: impute
      columns: [total_charges]
      strategy: median          # mean | median | most_frequent | constant
    - op: impute
      columns: [region]
      strategy: constant
      value: unknown
    ```
    """

    Params = ImputeParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")
        p = self.params
        self.search = (ColumnQuantiles(p.columns, [0.5], p.approx)
                       if p.strategy == "median" else None)
        self.multi_pass = self.search is not None and self.search.multi_pass

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Impute | None:
        """Without the columns only training reads (a label or weight imputed here:
        scoring rows have none); None where none is left."""
        return columns_view(self, training_only)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return imputed_schema(self.params, schema)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return self.search.init() if self.search is not None else {}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> Any:
        p = self.params
        if p.strategy == "mean":
            # float64 whatever the compute dtype: the mean is a value written into the
            # data, exactly as on the CPU
            return moments(part, p.columns, xp, np.float64)
        if p.strategy == "most_frequent":
            return {c: value_counts(part.column(c)) for c in p.columns}
        if self.search is not None:
            return self.search.partial(part, state)
        return {}

    def combine(self, a: Any, b: Any) -> Any:
        p = self.params
        if p.strategy == "mean":
            return combine_moments(a, b)
        if p.strategy == "most_frequent":
            return {c: merge_counts(a[c], b[c]) for c in p.columns}
        if self.search is not None:
            return self.search.combine(a, b)
        return {}

    def update(self, stats: Any, state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        p = self.params
        if p.strategy == "constant":
            return {"fill": {c: p.value for c in p.columns}}, True
        if p.strategy == "mean":
            self._require(dict(zip(p.columns, stats["count"].tolist(), strict=True)))
            return {"fill": dict(zip(p.columns, stats["mean"].tolist(), strict=True))}, True
        if p.strategy == "most_frequent":
            self._require({c: len(stats[c]["values"]) for c in p.columns})
            return {"fill": {c: _most_frequent(stats[c]) for c in p.columns}}, True
        assert self.search is not None
        found, state = self.search.update(stats, state, self._require)
        if found is None:
            return state, False
        return {"fill": {c: float(v[0]) for c, v in found.items()}}, True

    def _require(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            if not n:
                fix = "use strategy constant with a `value`"
                if not any(counts.values()):  # as the scalers say it (require_values)
                    fix = f"no rows may reach this step: check the filters before it; else {fix}"
                raise DataError(f"column '{name}' has no values to compute its "
                                f"{self.params.strategy.replace('_', ' ')} (all null or NaN)",
                                hint=fix)

    def fitted(self, state: dict[str, Any]) -> ImputeFitted:
        if "fill" not in state:
            raise ValueError("impute is not fitted yet")
        return ImputeFitted(self.params, state["fill"])

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"fill": dict(state.get("fill", {}))}


def _most_frequent(counts: dict[str, Any]) -> Any:
    """The value counted most often; ties go to the smallest (values are sorted)."""
    return counts["values"][int(np.argmax(counts["counts"]))]


@register_fitted("impute.fitted")
class ImputeFitted(Transform):
    """Fill nulls (and NaN) with the fitted value of each column."""

    Params = ImputeParams

    def __init__(self, params: ImputeParams, fill: dict[str, Any]):
        super().__init__(params)
        self.fill = dict(fill)

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> ImputeFitted | None:
        """Without the columns only training reads, and their fill values."""
        cut = columns_without(self.params, training_only)
        if cut is None:
            return self
        params = cut[0]
        return None if params is None else ImputeFitted(
            params, {name: self.fill[name] for name in params.columns})

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return imputed_schema(self.params, schema)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        out = part
        for name in self.params.columns:
            i = out.schema.get_field_index(name)
            field = out.schema.field(i)
            target = output_type(self.params, name, field.type)
            column = plain(out.column(i))
            value_t = _value_type(target)
            if column.type != value_t:
                column = pc.cast(column, value_t)
            if pa.types.is_floating(value_t):
                column = pc.if_else(pc.is_nan(column), pa.scalar(None, value_t), column)
            filled = pc.fill_null(column, pa.scalar(self.fill[name]).cast(value_t))
            if filled.type != target:
                filled = pc.cast(filled, target)
            fields, arrays = [field.with_type(target)], [filled]
            if self.params.add_indicator:
                fields.append(pa.field(indicator(name), pa.bool_(), nullable=False))
                arrays.append(pc.is_null(column))
            out = replace_columns(out, name, fields, arrays)
        return out

    def derived_from(self) -> dict[str, list[str]]:
        if not self.params.add_indicator:
            return {}
        return {indicator(name): [name] for name in self.params.columns}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json"), "fill": self.fill}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ImputeFitted:
        return cls(ImputeParams(**meta["params"]), meta["fill"])
