"""standard_scale, min_max_scale, max_abs_scale, robust_scale and normalize, on ``xp``.

standard_scale and min_max_scale fit the same statistics per column (count, mean, sum
of squared deviations, minimum, maximum) in one pass, computed on a partition with the
array namespace ``xp`` and combined with Chan et al.'s parallel formula, so the variance
is as accurate on a thousand partitions as on one (no naive sum of squares). In a
float32 step (docs/float32.md) the per-row arithmetic is float32 and every sum
accumulates in float64. robust_scale fits each column's median and two percentiles,
exactly over all partitions (``operators.quantiles``).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.arrays import compute_dtype, table_to_matrix, to_numpy, to_xp
from operators.base import (
    DataError,
    Estimator,
    ParamError,
    Params,
    Transform,
    columns_view,
    columns_without,
    register,
    register_fitted,
)
from operators.features.columns import null_mask, replace_field, require_numeric, unique_names
from operators.models.common import feature_matrix
from operators.quantiles import ColumnQuantiles

MOMENTS = ("count", "mean", "m2", "min", "max")


def empty_moments(k: int) -> dict[str, np.ndarray]:
    """The moments of no values: the identity of ``combine_moments``."""
    return {"count": np.zeros(k), "mean": np.zeros(k), "m2": np.zeros(k),
            "min": np.full(k, np.inf), "max": np.full(k, -np.inf)}


def moments(part: pa.Table, columns: list[str], xp: Any,
            dtype: Any = None) -> dict[str, np.ndarray]:
    """count, mean, m2 (sum of squared deviations), min and max of each column on ``xp``,
    computed in its compute dtype (or ``dtype``).

    Nulls and NaN are left out; an infinite value is a DataError naming the column.
    """
    if part.num_rows == 0:
        return empty_moments(len(columns))
    x = table_to_matrix(part, columns, xp, dtype)
    valid = ~xp.isnan(x)
    # the per-row arrays stay in the compute dtype; every sum accumulates in float64
    require_finite(columns, to_numpy(xp.sum(xp.astype(xp.isinf(x), x.dtype), axis=0,
                                            dtype=xp.float64)))
    count = xp.sum(xp.astype(valid, x.dtype), axis=0, dtype=xp.float64)
    mean = xp.sum(xp.where(valid, x, 0.0), axis=0, dtype=xp.float64) / xp.maximum(count, 1.0)
    # deviations from the mean rounded to the compute dtype: in float32 that adds
    # count * (mean - rounded)^2 <= count * (6e-8 * mean)^2 to m2, nothing at float32's
    # own resolution of the values
    deviation = xp.where(valid, x - xp.astype(mean, x.dtype), 0.0)
    return {
        "count": to_numpy(count),
        "mean": to_numpy(mean),
        "m2": to_numpy(xp.sum(deviation * deviation, axis=0, dtype=xp.float64)),
        "min": to_numpy(xp.astype(xp.min(xp.where(valid, x, xp.inf), axis=0), xp.float64)),
        "max": to_numpy(xp.astype(xp.max(xp.where(valid, x, -xp.inf), axis=0), xp.float64)),
    }


def require_finite(columns: list[str], infinite: Any) -> None:
    """DataError naming the first column with infinite values (``infinite``: their
    count per column), which no scaler can scale."""
    for name, n in zip(columns, infinite, strict=True):
        if n:
            raise DataError(f"column '{name}' has {int(n)} infinite values",
                            hint="clip or filter them out first")


def combine_moments(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chan et al.'s pairwise update, written symmetrically so that it commutes exactly."""
    na, nb = a["count"], b["count"]
    n = na + nb
    safe_n = np.maximum(n, 1.0)
    delta = b["mean"] - a["mean"]
    mean = np.where(na == 0, b["mean"], np.where(nb == 0, a["mean"],
                                                 (na * a["mean"] + nb * b["mean"]) / safe_n))
    m2 = np.where((na == 0) | (nb == 0), a["m2"] + b["m2"],
                  a["m2"] + b["m2"] + delta * delta * (na * nb / safe_n))
    return {"count": n, "mean": mean, "m2": m2, "min": np.minimum(a["min"], b["min"]),
            "max": np.maximum(a["max"], b["max"])}


def require_values(columns: list[str], count: np.ndarray, op: str) -> None:
    """DataError naming the first column that had no value to fit on (where none had
    one, most likely no rows came: said first)."""
    for name, n in zip(columns, count, strict=True):
        if n == 0:
            fix = f"impute it first, or leave '{name}' out"
            if not np.any(count):
                fix = f"no rows may reach this step: check the filters before it; else {fix}"
            raise DataError(f"column '{name}' has no values (all null or NaN) to fit {op} on",
                            hint=fix)


def scale_columns(part: pa.Table, columns: list[str], offset: np.ndarray, factor: np.ndarray,
                  shift: np.ndarray, xp: Any, clip: tuple[float, float] | None = None
                  ) -> pa.Table:
    """``(x - offset) * factor + shift`` per column on ``xp`` in its compute dtype, as
    float64 columns in place; nulls stay."""
    if part.num_rows == 0:
        out = part
        for name in columns:
            i = out.schema.get_field_index(name)
            out = out.set_column(i, pa.field(name, pa.float64()), pa.array([], pa.float64()))
        return out
    x = table_to_matrix(part, columns, xp)
    dtype = compute_dtype(xp)
    offset, factor, shift = (to_xp(np.asarray(v, dtype=dtype), xp) for v in (offset, factor, shift))
    y = (x - offset) * factor + shift
    if clip is not None:
        y = xp.clip(y, clip[0], clip[1])
    return put_floats(part, columns, to_numpy(y))


def put_floats(part: pa.Table, columns: list[str], host: np.ndarray) -> pa.Table:
    """``part`` with each of ``columns`` replaced by its column of ``host`` as float64,
    in place; the column's nulls stay."""
    out = part
    for j, name in enumerate(columns):
        i = out.schema.get_field_index(name)
        values = pa.array(np.asarray(host[:, j], dtype=np.float64), pa.float64(),
                          mask=null_mask(part.column(name)))
        out = out.set_column(i, pa.field(name, pa.float64()), values)
    return out


def scaled_schema(schema: pa.Schema, columns: list[str], what: str) -> pa.Schema:
    require_numeric(schema, columns, what)
    for name in columns:
        schema = replace_field(schema, name, [pa.field(name, pa.float64())])
    return schema


def _moments_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(arrays[k], dtype=np.float64) for k in MOMENTS}


class _MomentsEstimator(Estimator):
    """One pass of column moments; subclasses say what the fitted transform does."""

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Estimator | None:
        """Without the columns only training reads (a label scaled here: scoring rows
        have none); None where none is left."""
        return columns_view(self, training_only)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return scaled_schema(schema, self.params.columns, self.name)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {}

    def partial(self, part: pa.Table, state: Any, xp: Any) -> dict[str, np.ndarray]:
        return moments(part, self.params.columns, xp)

    def combine(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        return combine_moments(a, b)

    def update(self, stats: dict[str, np.ndarray], state: Any
               ) -> tuple[dict[str, np.ndarray], bool]:
        require_values(self.params.columns, stats["count"], self.name)
        return stats, True

    def metrics(self, state: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"rows": int(state["count"].max(initial=0))}


class _ScaledFitted(Transform):
    """A fitted scaler of the column moments: its columns in place as float64; its
    state is the moments (subclasses turn them into an offset and a factor)."""

    def __init__(self, params: Any, stats: dict[str, np.ndarray]):
        super().__init__(params)
        self.stats = stats

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> _ScaledFitted | None:
        """Without the columns only training reads (a label scaled here: scoring rows have
        none), and their moments; None where none is left."""
        cut = columns_without(self.params, training_only)
        if cut is None:
            return self
        params, keep = cut
        if params is None:
            return None
        return type(self)(params, {k: np.asarray(v)[keep] for k, v in self.stats.items()})

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return scaled_schema(schema, self.params.columns, self.name.removesuffix(".fitted"))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json")}, dict(self.stats)

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Transform:
        return cls(cls.Params(**meta["params"]), _moments_state(arrays))


# --------------------------------------------------------------------------- standard_scale


class StandardScaleParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to scale")
    with_mean: bool = Field(True, description="subtract the mean")
    with_std: bool = Field(True, description="divide by the population standard deviation")


def is_constant(count: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Variances that are rounding noise around zero (scikit-learn's test)."""
    eps = np.finfo(np.float64).eps
    return var <= count * eps * var + (count * mean * eps) ** 2


@register("standard_scale")
class StandardScale(_MomentsEstimator):
    """Standardise numeric columns: (x - mean) / std, population std (as scikit-learn).

    Nulls and NaN are left out of the fit and stay as they are; the output is float64;
    a constant column becomes 0.

    ```yaml
    - op: standard_scale
      columns: [tenure, monthly_charges, total_charges]
      with_mean: true
      with_std: true
    ```
    """

    float32 = True  # docs/float32.md

    Params = StandardScaleParams

    def fitted(self, state: dict[str, np.ndarray]) -> StandardScaleFitted:
        return StandardScaleFitted(self.params, _moments_state(state))


@register_fitted("standard_scale.fitted")
class StandardScaleFitted(_ScaledFitted):
    """(x - mean) / scale with the fitted mean and scale (1 for a constant column)."""

    Params = StandardScaleParams

    def __init__(self, params: StandardScaleParams, stats: dict[str, np.ndarray]):
        super().__init__(params, stats)
        count, mean, var = stats["count"], stats["mean"], stats["m2"] / np.maximum(
            stats["count"], 1.0)
        constant = (stats["min"] == stats["max"]) | is_constant(count, mean, var)
        # a constant column's mean is its value exactly, so it scales to exactly 0
        self.mean = np.where(stats["min"] == stats["max"], stats["min"], mean)
        self.scale = np.where(constant, 1.0, np.sqrt(var))

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        k = len(self.params.columns)
        offset = self.mean if self.params.with_mean else np.zeros(k)
        factor = 1.0 / self.scale if self.params.with_std else np.ones(k)
        return scale_columns(part, self.params.columns, offset, factor, np.zeros(k), xp)


# --------------------------------------------------------------------------- min_max_scale


class MinMaxScaleParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to scale")
    feature_range: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] the fitted minimum and maximum map to")
    clip: bool = Field(False, description="clip scored values outside the fitted range")

    @field_validator("feature_range")
    @classmethod
    def _increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"low must be below high, got [{value[0]}, {value[1]}]")
        return value


@register("min_max_scale")
class MinMaxScale(_MomentsEstimator):
    """Scale numeric columns linearly so that the fitted minimum and maximum map to a range.

    Nulls and NaN are left out of the fit and stay; the output is float64; a constant
    column maps to the low end of the range.

    ```yaml
    - op: min_max_scale
      columns: [tenure, monthly_charges]
      feature_range: [0, 1]
    ```
    """

    float32 = True  # docs/float32.md

    Params = MinMaxScaleParams

    def fitted(self, state: dict[str, np.ndarray]) -> MinMaxScaleFitted:
        return MinMaxScaleFitted(self.params, _moments_state(state))


@register_fitted("min_max_scale.fitted")
class MinMaxScaleFitted(_ScaledFitted):
    """low + (x - min) * (high - low) / (max - min); 0 slope for a constant column."""

    Params = MinMaxScaleParams

    def __init__(self, params: MinMaxScaleParams, stats: dict[str, np.ndarray]):
        super().__init__(params, stats)
        low, high = params.feature_range
        width = stats["max"] - stats["min"]
        self.factor = np.where(width > 0, (high - low) / np.where(width > 0, width, 1.0), 0.0)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        low, high = self.params.feature_range
        k = len(self.params.columns)
        return scale_columns(part, self.params.columns, self.stats["min"], self.factor,
                             np.full(k, low), xp, (low, high) if self.params.clip else None)


# --------------------------------------------------------------------------- max_abs_scale


class MaxAbsScaleParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to scale")


@register("max_abs_scale")
class MaxAbsScale(_MomentsEstimator):
    """Scale numeric columns by their largest absolute value, to [-1, 1], without shifting.

    scikit-learn's MaxAbsScaler and MLlib's: zeros stay zeros (sparse-like columns keep
    their zeros), a column of zeros stays 0. Nulls and NaN are left out of the fit and
    stay; the output is float64.

    ```yaml
    - op: max_abs_scale
      columns: [clicks, spend]
    ```
    """

    float32 = True  # docs/float32.md

    Params = MaxAbsScaleParams

    def fitted(self, state: dict[str, np.ndarray]) -> MaxAbsScaleFitted:
        return MaxAbsScaleFitted(self.params, _moments_state(state))


@register_fitted("max_abs_scale.fitted")
class MaxAbsScaleFitted(_ScaledFitted):
    """x / max|x| with the fitted largest absolute value (1 for a column of zeros)."""

    Params = MaxAbsScaleParams

    def __init__(self, params: MaxAbsScaleParams, stats: dict[str, np.ndarray]):
        super().__init__(params, stats)
        largest = np.maximum(np.abs(stats["min"]), np.abs(stats["max"]))
        self.scale = np.where(largest > 0, largest, 1.0)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        k = len(self.params.columns)
        return scale_columns(part, self.params.columns, np.zeros(k), 1.0 / self.scale,
                             np.zeros(k), xp)


# --------------------------------------------------------------------------- normalize


class NormalizeParams(Params):
    columns: list[str] = Field(min_length=2, description="numeric columns: each row's "
                                                         "values as one vector")
    norm: Literal["l1", "l2", "max"] = Field(
        "l2", description="l1 (sum of absolute values), l2 (Euclidean length) or max (the "
                          "largest absolute value)")


@register("normalize")
class Normalize(Transform):
    """Each row's values of `columns` divided by their norm: rows as unit vectors.

    scikit-learn's Normalizer and MLlib's (p = 1, 2, inf): a row of zeros stays zeros;
    a row with a null or NaN among the columns is a DataError naming the column (impute
    first). The output is float64. Nothing is fitted: each row on its own.

    ```yaml
    - op: normalize
      columns: [views, clicks, buys]   # counts as shares of a customer's activity
      norm: l1
    ```
    """

    float32 = True  # docs/float32.md

    Params = NormalizeParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return scaled_schema(schema, self.params.columns, "normalize")

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        columns = self.params.columns
        if part.num_rows == 0:
            return scale_columns(part, columns, np.zeros(0), np.zeros(0), np.zeros(0), xp)
        # a row's norm needs every value: a null, NaN or inf is the models' DataError
        x = feature_matrix(part, columns, xp, role="column")
        size = xp.abs(x)
        if self.params.norm == "l1":
            norm = xp.sum(size, axis=1)
        elif self.params.norm == "l2":
            norm = xp.sqrt(xp.sum(x * x, axis=1))
        else:
            norm = xp.max(size, axis=1)
        y = x / xp.where(norm > 0, norm, xp.ones_like(norm))[:, None]
        return put_floats(part, columns, to_numpy(y))


# --------------------------------------------------------------------------- robust_scale


class RobustScaleParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to scale")
    quantile_range: tuple[float, float] = Field(
        (25.0, 75.0), description="[low, high] percentiles whose distance is the scale "
                                  "(scikit-learn's quantile_range; MLlib's lower, upper x 100)")
    with_centering: bool = Field(True, description="subtract the median")
    with_scaling: bool = Field(True, description="divide by the distance between the "
                                                 "quantile_range's percentiles")
    unit_variance: bool = Field(False, description="scale so that normally distributed "
                                                   "values get a variance of 1")
    approx: bool = Field(False, description="quantiles from a one-pass KLL sketch: "
                                            "approximate and not partition-invariant "
                                            "(huge data)")

    @field_validator("quantile_range")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError(f"need 0 <= low < high <= 100 (percentiles), got "
                             f"[{value[0]}, {value[1]}]")
        return value

    @model_validator(mode="after")
    def _normal_range(self) -> RobustScaleParams:
        low, high = self.quantile_range
        if self.unit_variance and not 0 < low < high < 100:
            raise ParamError(f"unit_variance divides by the normal distribution's distance "
                             f"between the percentiles {low:g} and {high:g}, and the 0th "
                             "and 100th are infinite",
                             hint="a quantile_range inside (0, 100), e.g. [25, 75]")
        return self


@register("robust_scale")
class RobustScale(Estimator):
    """Scale numeric columns by statistics outliers cannot move: (x - median) / (q75 - q25).

    scikit-learn's RobustScaler (MLlib's with centering): the median and the percentiles
    of `quantile_range` are exact over all partitions (NumPy's linear percentiles, a few
    passes), or one-pass sketches with `approx`. Nulls and NaN are left out of the fit
    and stay; the output is float64; a column whose percentiles coincide keeps a scale
    of 1.

    ```yaml
    - op: robust_scale
      columns: [monthly_charges, total_charges]
      quantile_range: [25, 75]
    ```
    """

    float32 = True  # docs/float32.md: exact quantiles, the scaling in float32

    Params = RobustScaleParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        unique_names(p.columns, "columns")
        low, high = p.quantile_range
        self.search = ColumnQuantiles(p.columns, [0.5, low / 100, high / 100], p.approx)
        self.multi_pass = self.search.multi_pass

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Estimator | None:
        """Without the columns only training reads (a label scaled here: scoring rows
        have none); None where none is left."""
        return columns_view(self, training_only)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return scaled_schema(schema, self.params.columns, self.name)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return self.search.init()

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> Any:
        columns = [part.column(name) for name in self.params.columns]
        require_finite(self.params.columns, [
            pc.sum(pc.is_inf(c)).as_py() or 0 if pa.types.is_floating(c.type) else 0
            for c in columns])
        return self.search.partial(part, state)

    def combine(self, a: Any, b: Any) -> Any:
        return self.search.combine(a, b)

    def update(self, stats: Any, state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        columns = self.params.columns

        def require(counts: dict[str, int]) -> None:
            require_values(columns, np.array([counts[c] for c in columns]), self.name)

        found, state = self.search.update(stats, state, require)
        if found is None:
            return state, False
        quantiles = np.array([np.asarray(found[c], dtype=np.float64) for c in columns])
        return {"quantiles": quantiles}, True

    def fitted(self, state: dict[str, Any]) -> RobustScaleFitted:
        return RobustScaleFitted(self.params, state["quantiles"])

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        q = state["quantiles"]
        return {"median": dict(zip(self.params.columns, q[:, 0].tolist(), strict=True)),
                "scale": dict(zip(self.params.columns, (q[:, 2] - q[:, 1]).tolist(),
                                  strict=True))}


@register_fitted("robust_scale.fitted")
class RobustScaleFitted(Transform):
    """(x - median) / scale with the fitted median and percentiles' distance (1 where
    they coincide), divided by the standard normal's distance between the same
    percentiles with ``unit_variance``."""

    Params = RobustScaleParams

    def saved_view(self, training_only: frozenset[str] = frozenset()
                   ) -> RobustScaleFitted | None:
        """Without the columns only training reads, and their quantiles."""
        cut = columns_without(self.params, training_only)
        if cut is None:
            return self
        params, keep = cut
        return None if params is None else RobustScaleFitted(params, self.quantiles[keep])

    def __init__(self, params: RobustScaleParams, quantiles: np.ndarray):
        super().__init__(params)
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        width = self.quantiles[:, 2] - self.quantiles[:, 1]
        scale = np.where(width > 0, width, 1.0)  # scikit-learn's _handle_zeros_in_scale
        if params.unit_variance:
            low, high = (NormalDist().inv_cdf(q / 100) for q in params.quantile_range)
            scale = scale / (high - low)
        self.scale = scale

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return scaled_schema(schema, self.params.columns, "robust_scale")

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        p, k = self.params, len(self.params.columns)
        offset = self.quantiles[:, 0] if p.with_centering else np.zeros(k)
        factor = 1.0 / self.scale if p.with_scaling else np.ones(k)
        return scale_columns(part, p.columns, offset, factor, np.zeros(k), xp)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json")}, {"quantiles": self.quantiles}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> RobustScaleFitted:
        return cls(RobustScaleParams(**meta["params"]), arrays["quantiles"])
