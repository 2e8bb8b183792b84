"""hash_encode (stateless one-hot of hashed values) and bucketize (values to bucket indices)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators.arrays import table_to_matrix, to_numpy, to_xp
from operators.base import (
    DataError,
    Estimator,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    register_fitted,
    require_columns,
)
from operators.features.columns import (
    null_mask,
    replace_columns,
    replace_field,
    require_numeric,
    unique_names,
)
from operators.hashing import hash_column
from operators.quantiles import ColumnQuantiles


def _no_clash(schema: pa.Schema, names: list[str], op: str) -> None:
    for name in names:
        if name in schema.names:
            raise SchemaError(f"{op} adds column '{name}' that the input already has",
                              hint="rename or drop it first")


# --------------------------------------------------------------------------- hash_encode


class HashEncodeParams(Params):
    columns: list[str] = Field(min_length=1, description="columns whose values to hash")
    buckets: int = Field(ge=2, le=1 << 16, description="output columns per input column")
    seed: int = Field(0, description="hash seed: another seed, another assignment")
    drop: bool = Field(True, description="true: the new columns replace the source column; "
                                         "false: keep it and add them at the end")


@register("hash_encode")
class HashEncode(Transform):
    """One-hot of hash(value) % buckets: columns `<col>#0` .. `<col>#<buckets-1>` (float64).

    Stateless (no vocabulary): the same value gets the same bucket on every engine and
    partitioning (operators/hashing.py); a null is all zeros.

    ```yaml
    - op: hash_encode
      columns: [zip_code]
      buckets: 64
      seed: 0
    ```
    """

    numeric_kernels = False

    Params = HashEncodeParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def names(self, name: str) -> list[str]:
        return [f"{name}#{i}" for i in range(self.params.buckets)]

    def derived_from(self) -> dict[str, list[str]]:
        return {new: [name] for name in self.params.columns for new in self.names(name)}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        for name in self.params.columns:
            new = self.names(name)
            fields = [pa.field(n, pa.float64()) for n in new]
            if self.params.drop:
                _no_clash(schema.remove(schema.get_field_index(name)), new, "hash_encode")
                schema = replace_field(schema, name, fields)
            else:
                _no_clash(schema, new, "hash_encode")
                for f in fields:
                    schema = schema.append(f)
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        n = self.params.buckets
        out = part
        for name in self.params.columns:
            column = part.column(name)
            bucket = (hash_column(column, self.params.seed) % np.uint64(n)).astype(np.intp)
            valid = ~null_mask(column)
            matrix = np.zeros((part.num_rows, n), dtype=np.float64, order="F")
            matrix[np.flatnonzero(valid), bucket[valid]] = 1.0
            fields = [pa.field(c, pa.float64()) for c in self.names(name)]
            arrays = [pa.array(matrix[:, j]) for j in range(n)]
            if self.params.drop:
                out = replace_columns(out, name, fields, arrays)
            else:
                for f, a in zip(fields, arrays, strict=True):
                    out = out.append_column(f, a)
        return out


# --------------------------------------------------------------------------- bucketize


class BucketizeParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to bucket")
    boundaries: list[float] | None = Field(
        None, description="increasing split points; bucket i holds boundaries[i-1] <= x < "
                          "boundaries[i] (0 below the first, len(boundaries) from the last)")
    quantiles: int | None = Field(
        None, ge=2, description="learn split points: this many buckets of (about) equal "
                                "counts per column (exact quantiles, numpy's 'linear')")
    suffix: str | None = Field(None, min_length=1, description="keep the column and add "
                                                               "`<col><suffix>` at the end")
    approx: bool = Field(False, description="quantiles from a one-pass KLL sketch: "
                                            "approximate and not partition-invariant")

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one boundary")
            if not all(np.isfinite(value)):
                raise ValueError("boundaries must be finite numbers")
            if any(b <= a for a, b in zip(value, value[1:], strict=False)):
                raise ValueError("boundaries must increase strictly")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> BucketizeParams:
        if (self.boundaries is None) == (self.quantiles is None):
            raise ParamError("give either `boundaries` or `quantiles`",
                             hint="boundaries: [0, 10, 100], or quantiles: 4")
        if self.approx and self.quantiles is None:
            raise ParamError("`approx` applies to `quantiles`, not to `boundaries`")
        return self


def bucketized_schema(params: BucketizeParams, schema: pa.Schema) -> pa.Schema:
    require_numeric(schema, params.columns, "bucketize")
    if params.suffix is None:
        for name in params.columns:
            schema = replace_field(schema, name, [pa.field(name, pa.int32())])
        return schema
    new = [f"{name}{params.suffix}" for name in params.columns]
    _no_clash(schema, new, "bucketize")
    for name in new:
        schema = schema.append(pa.field(name, pa.int32()))
    return schema


@register("bucketize")
class Bucketize(Estimator):
    """Replace numbers by the index of their bucket (int32, 0..n); null and NaN give null.

    Split points are given (``boundaries``), or learned as ``quantiles`` over all
    partitions; repeated quantiles (many equal values) merge, so a column may get
    fewer buckets. A value equal to a split point goes to the bucket above it.

    ```yaml
    - op: bucketize
      columns: [tenure]
      boundaries: [6, 12, 24, 48]     # 5 buckets: 0..4
    - op: bucketize
      columns: [monthly_charges]
      quantiles: 4                    # quartiles learned from the data
      suffix: _quartile               # keep monthly_charges, add monthly_charges_quartile
    ```
    """

    Params = BucketizeParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        unique_names(p.columns, "columns")
        self.search = None
        if p.quantiles is not None:
            probs = np.linspace(0.0, 1.0, p.quantiles + 1)[1:-1]
            self.search = ColumnQuantiles(p.columns, probs, p.approx)
        self.multi_pass = self.search is not None and self.search.multi_pass

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return bucketized_schema(self.params, schema)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return self.search.init() if self.search is not None else {}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> Any:
        return {} if self.search is None else self.search.partial(part, state)

    def combine(self, a: Any, b: Any) -> Any:
        return {} if self.search is None else self.search.combine(a, b)

    def update(self, stats: Any, state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        p = self.params
        if self.search is None:
            assert p.boundaries is not None
            return {"boundaries": {c: list(p.boundaries) for c in p.columns}}, True
        result, state = self.search.update(stats, state, self._require)
        if result is None:
            return state, False
        return {"boundaries": {c: np.unique(v).tolist() for c, v in result.items()}}, True

    @staticmethod
    def _require(counts: dict[str, int]) -> None:
        for name, n in counts.items():
            if not n:
                raise DataError(f"column '{name}' has no values to learn quantiles from "
                                "(all null or NaN)", hint="give `boundaries` instead")

    def fitted(self, state: dict[str, Any]) -> BucketizeFitted:
        if "boundaries" not in state:
            raise ValueError("bucketize is not fitted yet")
        return BucketizeFitted(self.params, {c: np.asarray(v, dtype=np.float64)
                                             for c, v in state["boundaries"].items()})

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"buckets": {c: len(v) + 1 for c, v in state.get("boundaries", {}).items()}}


@register_fitted("bucketize.fitted")
class BucketizeFitted(Transform):
    """Bucket indices from fitted split points, searched on ``xp``."""

    Params = BucketizeParams

    def derived_from(self) -> dict[str, list[str]]:
        suffix = self.params.suffix
        return {} if suffix is None else {f"{c}{suffix}": [c] for c in self.boundaries}

    def __init__(self, params: BucketizeParams, boundaries: dict[str, np.ndarray]):
        super().__init__(params)
        self.boundaries = boundaries

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return bucketized_schema(self.params, schema)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        columns = self.params.columns
        if part.num_rows:
            # float64 whatever the compute dtype: a value rounded to float32 could
            # cross a boundary (boundaries are often data values)
            x = table_to_matrix(part, columns, xp, dtype=np.float64)
            missing = to_numpy(xp.isnan(x))
            buckets = []
            for j, name in enumerate(columns):
                edges = to_xp(self.boundaries[name], xp)
                index = xp.astype(xp.searchsorted(edges, x[:, j], side="right"), xp.int32)
                buckets.append(to_numpy(index))
        else:
            missing = np.zeros((0, len(columns)), dtype=bool)
            buckets = [np.zeros(0, dtype=np.int32) for _ in columns]
        out = part
        for j, name in enumerate(columns):
            values = pa.array(buckets[j], pa.int32(), mask=missing[:, j])
            if self.params.suffix is None:
                out = out.set_column(out.schema.get_field_index(name),
                                     pa.field(name, pa.int32()), values)
            else:
                out = out.append_column(pa.field(f"{name}{self.params.suffix}", pa.int32()),
                                        values)
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"params": self.params.model_dump(mode="json"), "columns": list(self.boundaries)}
        arrays = {f"boundaries_{i}": v for i, v in enumerate(self.boundaries.values())}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> BucketizeFitted:
        return cls(BucketizeParams(**meta["params"]),
                   {c: arrays[f"boundaries_{i}"] for i, c in enumerate(meta["columns"])})
