"""pca: principal component analysis from one pass of centred co-moments.

Each partition contributes its (weighted) row count, column means and centred co-moment
(scatter) matrix, computed on ``xp`` and accumulated in float64; partials combine by
Chan's pairwise update for matrices (``C = Ca + Cb + d d' na nb / n``), so the
covariance is as accurate on a thousand partitions as on one. The driver
eigen-decomposes the covariance (ddof 1), sorts the components by variance and fixes
each one's sign as scikit-learn's PCA does (``svd_flip(u_based_decision=False)``: the
largest loading of a component is positive), so the components are scikit-learn's
``PCA(svd_solver="full")``'s, not just up to sign.

A sparse column (``vectorize_text`` with ``sparse: true``) among ``columns`` is its
positions (terms), as the models read it. On NumPy its rows stay sparse: a partition's
co-moments are its weighted Gram matrix less ``W m m'`` for the sparse positions (their
zeros are not stored, so not centred), the plain columns centred exactly, and the cross
terms from the centred plain block (scikit-learn's PCA of a sparse matrix centres
implicitly the same way); scoring is a sparse product less the mean's. Off NumPy (a GPU,
the strict stand-in) the rows are made dense as they are read. The covariance of d
positions is d x d: a column of more terms than the memory share holds is refused before
the first pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from operators.arrays import is_numpy, to_numpy
from operators.base import (
    DataError,
    Estimator,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    register_fitted,
)
from operators.features.columns import require_numeric, unique_names
from operators.models.common import (
    combine_comoments,
    comoments,
    feature_matrix,
    host_matrix,
    parameters,
    require_features,
    row_weights,
)
from operators.sparse import (
    csr_matrix,
    expand,
    groups,
    has_sparse,
    is_sparse_type,
    past_memory_share,
    scipy_sparse,
    sparse_columns,
    sparse_names,
)

ROLE = "pca input column"
SIGN_TIE = 1e-9
"""Loadings within this relative distance of a component's largest count as tied for
its sign, and the first of them decides: a tie that rounding breaks one way or the other
(two standardised columns give loadings of +-1/sqrt(2)) then gives the same sign on
every partitioning. scikit-learn takes whichever rounding made larger."""


class PCAParams(Params):
    columns: list[str] = Field(min_length=1, description="numeric columns to analyse (a "
                                                         "sparse column: its terms)")
    k: int | float = Field(
        description="components to keep: a number from 1 to the columns' count (a sparse "
                    "column's terms counted), or a fraction in "
                    "(0, 1): the fewest components whose explained variance ratio adds up "
                    "to more than it (scikit-learn's float n_components)")
    whiten: bool = Field(False, description="scale each component to unit variance "
                                            "(a component of zero variance to 0)")
    prefix: str = Field("pca_", min_length=1,
                        description="output columns <prefix>0 .. <prefix>{k-1}")
    keep: bool = Field(False, description="keep the input columns (default: the "
                                          "components replace them)")
    weight: str | None = Field(None, description="column of row weights (frequencies: a "
                                                 "weight of 2 counts a row twice) for the "
                                                 "mean and covariance")

    @field_validator("k", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("k must be a number of components or a fraction, not a boolean")
        return value

    @field_validator("k")
    @classmethod
    def _in_range(cls, k: int | float, info: ValidationInfo) -> int | float:
        if isinstance(k, float) and not 0 < k < 1:
            raise ValueError(f"a fractional k must be in (0, 1), got {k}; a number of "
                             "components is an integer")
        n = len(info.data.get("columns", []))
        if isinstance(k, int) and k < 1:
            raise ValueError(f"k must be from 1 to the number of columns ({n}), got {k}")
        # the upper bound is the features' count: a sparse column's terms are known
        # from the schema (``check_k``)
        return k


def _flip_signs(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` signed so that each one's largest loading (the first of those
    tied within ``SIGN_TIE``) is positive: scikit-learn's ``svd_flip`` on ``Vt``."""
    magnitude = np.abs(vectors)
    largest = magnitude.max(axis=1, keepdims=True)
    first = np.argmax(magnitude >= largest * (1 - SIGN_TIE), axis=1)
    signs = np.sign(vectors[np.arange(len(vectors)), first])
    return vectors * signs[:, None]


def principal_components(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variances (descending) and components (rows) of a covariance matrix.

    Eigenvalues within rounding of zero (``p * eps`` of the largest) are 0: the rank
    deficiency of constant or collinear columns, or of fewer rows than columns."""
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    top = max(float(values[0]), 0.0)
    values = np.where(values > len(values) * np.finfo(np.float64).eps * top, values, 0.0)
    null = values == 0
    if null.sum() > 1:
        # any basis of the null space is an eigenbasis of the covariance, and the solver
        # returns whichever rounding leads it to: the eigenvectors of a fixed diagonal of
        # distinct weights within the null space are a basis fixed by the space alone
        basis = vectors[:, null]
        weights = 2.0 + np.sqrt(np.arange(len(values)))
        _, rotation = np.linalg.eigh(basis.T @ (weights[:, None] * basis))
        vectors = vectors.copy()
        vectors[:, null] = basis @ rotation
    return values, _flip_signs(vectors.T)


def kept_components(ratio: np.ndarray, k: int | float) -> int:
    """How many components ``k`` keeps: ``k`` itself, or for a fraction the fewest whose
    ratios add up to more than it (scikit-learn's ``searchsorted(..., side="right")``)."""
    if isinstance(k, int):
        return k
    return min(int(np.searchsorted(np.cumsum(ratio), k, side="right")) + 1, len(ratio))


def pca_features(schema: pa.Schema, params: PCAParams, room: bool = False) -> list[str]:
    """The features ``columns`` names: a sparse column as its positions; a SchemaError
    for a column neither numeric nor sparse, and for a k past the features' count;
    ``room``: a DataError where their covariance is past the memory share."""
    sparse = set(sparse_columns(schema))
    require_numeric(schema, [c for c in params.columns if c not in sparse], "pca")
    features = expand(schema, list(params.columns)) if sparse else list(params.columns)
    k, n = params.k, len(features)
    # a sparse column whose step is not fitted yet (as planned) has no count of terms
    counted = all(sparse_names(schema.field(c)) is not None
                  for c in params.columns if c in sparse)
    if isinstance(k, int) and k > n and counted:
        what = (f"features ({n}: the sparse columns' terms counted)"
                if len(params.columns) < n else f"columns ({n})")
        raise SchemaError(f"pca k must be from 1 to the number of {what}, got {k}",
                          hint="ask for fewer components, or a fraction of the variance "
                               "(k: 0.95)")
    if room and len(features) > len(params.columns):
        past = past_memory_share(3 * 8.0 * n * n)
        if past is not None:
            wide = max((c for c in params.columns if c in sparse),
                       key=lambda c: sum(f.startswith(c + ":") for f in features))
            raise DataError(f"pca of the {n:,} features of sparse column '{wide}' "
                            f"needs their {n:,} x {n:,} covariance: {past}",
                            hint="fewer terms (vectorize_text's max_features, min_df, "
                                 "num_features)")
    return features


def sparse_comoments(part: pa.Table, features: list[str], weights: np.ndarray | None
                     ) -> dict[str, Any]:
    """``comoments`` of ``features`` (some a sparse column's) from the CSR rows: the
    sparse positions' block ``S'WS - W m m'``, the plain columns' centred exactly, and
    the cross block ``S'W(P - m_P)`` (exact: the centred plain columns sum to 0)."""
    d = len(features)
    runs = groups(part.schema, features)
    plain = np.array([j for column, j, _ in runs if column is None], dtype=np.int64)
    spread = np.array([i for column, j, stop in runs if column is not None
                       for i in range(j, stop)], dtype=np.int64)
    n = part.num_rows
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    total = float(w.sum())
    if not total > 0:
        return {"weight": 0.0, "mean": np.zeros(d), "comoment": np.zeros((d, d))}
    mean, comoment = np.zeros(d), np.zeros((d, d))
    S = csr_matrix(part, [features[i] for i in spread])
    weighted = scipy_sparse().diags(w) @ S
    m_s = np.asarray(weighted.sum(axis=0)).ravel() / total
    mean[spread] = m_s
    gram = (S.T @ weighted).toarray()
    comoment[np.ix_(spread, spread)] = gram - total * np.outer(m_s, m_s)
    if len(plain):
        P = host_matrix(part, [features[j] for j in plain], role=ROLE)
        moments = comoments(P, w if weights is not None else None, np)
        mean[plain] = moments["mean"]
        comoment[np.ix_(plain, plain)] = moments["comoment"]
        cross = np.asarray(weighted.T @ (P - moments["mean"]))
        comoment[np.ix_(spread, plain)] = cross
        comoment[np.ix_(plain, spread)] = cross.T
    return {"weight": total, "mean": mean, "comoment": comoment}


def component_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def components_schema(schema: pa.Schema, params: PCAParams, n: int) -> pa.Schema:
    """``schema`` with the inputs removed (unless ``keep``) and ``n`` components appended."""
    out = schema
    if not params.keep:
        for name in params.columns:
            out = out.remove(out.get_field_index(name))
    for name in component_names(params.prefix, n):
        if out.get_field_index(name) >= 0:
            raise SchemaError(f"pca output column '{name}' is already in the input",
                              hint="choose another `prefix`, or drop or rename that column")
        out = out.append(pa.field(name, pa.float64()))
    return out


@register("pca")
class PCA(Estimator):
    """Principal component analysis: project numeric columns on their top k components.

    The components are scikit-learn's ``PCA(svd_solver="full")``'s, signs included;
    null, NaN or infinite inputs are an error (impute first), when fitting and scoring.
    A sparse column (``vectorize_text`` with ``sparse: true``) is its terms, kept sparse
    on the CPU (scikit-learn's PCA of a sparse matrix, centred implicitly): LSA of TF-IDF
    rows before ``kmeans``; its terms x terms covariance must fit the memory share.

    ```yaml
    - op: pca
      columns: [tenure, monthly_charges, total_charges]
      k: 2                 # or 0.95: the fewest components explaining over 95%
      whiten: false
      prefix: pca_         # output columns pca_0, pca_1; they replace the inputs
    ```
    """

    float32 = True  # docs/float32.md

    Params = PCAParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        unique_names(p.columns, "columns")
        if p.weight is not None and p.weight in p.columns:
            raise ParamError(f"weight column '{p.weight}' is also in `columns`",
                             hint="a row's weight is not one of the values it analyses")
        # a fraction's number of components is known once the fit has the variances
        self.schema_from_fit = isinstance(p.k, float)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return list(p.columns) + ([p.weight] if p.weight else [])

    def fit_may_add(self, column: str) -> bool:
        return column.startswith(self.params.prefix)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        p = self.params
        if p.weight:
            require_numeric(schema, [p.weight], self.name)
        pca_features(schema, p)
        return components_schema(schema, p, p.k if isinstance(p.k, int) else 1)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"features": pca_features(schema, self.params, room=True)}

    def partial(self, part: pa.Table, state: Any, xp: Any) -> dict[str, Any]:
        p = self.params
        features = state["features"]
        if (is_numpy(xp) and scipy_sparse() is not None
                and has_sparse(part.schema, features)):
            weights = row_weights(part, p.weight) if p.weight else None
            return {"rows": part.num_rows, **sparse_comoments(part, features, weights)}
        extra = [row_weights(part, p.weight)] if p.weight else None
        data = feature_matrix(part, features, xp, extra, ROLE)
        n = len(features)
        weights = data[:, n] if p.weight else None
        return {"rows": part.num_rows, **comoments(data[:, :n], weights, xp)}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {"rows": a["rows"] + b["rows"], **combine_comoments(a, b)}

    def update(self, stats: dict[str, Any], state: Any) -> tuple[dict[str, Any], bool]:
        p = self.params
        if stats["rows"] < 2:
            raise DataError(f"pca needs at least 2 rows to fit, got {stats['rows']}",
                            hint="check the input and its filter")
        total = stats["weight"]
        if p.weight and not total > 1:
            raise DataError(f"the weights in column '{p.weight}' sum to {total:g}; pca "
                            "needs more than 1 (weights count rows)",
                            hint="weights are frequencies: scale them up")
        variance, components = principal_components(stats["comoment"] / (total - 1))
        spread = float(variance.sum())
        if not spread > 0:
            raise DataError(f"pca columns {', '.join(p.columns)} have no variance "
                            "(every one is constant)", hint="leave constant columns out")
        ratio = variance / spread
        n = kept_components(ratio, p.k)
        return {"rows": int(stats["rows"]), "features": state["features"],
                "mean": stats["mean"],
                "components": components[:n], "explained_variance": variance[:n],
                "explained_variance_ratio": ratio[:n],
                "rank": int((variance > 0).sum())}, True

    def fitted(self, state: dict[str, Any]) -> PCAFitted:
        return PCAFitted(self.params, {k: state[k] for k in FITTED_ARRAYS},
                         state["features"])

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        ratio = state["explained_variance_ratio"]
        return {"rows": state["rows"], "components": len(ratio), "rank": state["rank"],
                "explained_variance_ratio": [float(r) for r in ratio],
                "explained_variance_ratio_total": float(ratio.sum())}


FITTED_ARRAYS = ("mean", "components", "explained_variance", "explained_variance_ratio")


@register_fitted("pca.fitted")
class PCAFitted(Transform):
    """``(x - mean) @ components.T``, divided by the components' standard deviations when
    whitening; float64 output columns."""

    Params = PCAParams

    def __init__(self, params: PCAParams, arrays: dict[str, np.ndarray],
                 features: list[str] | None = None):
        super().__init__(params)
        # a sparse column's positions; a model saved before sparse columns: the columns
        self.features = list(params.columns if features is None else features)
        # one memory layout, fitted or loaded: a product's rounding depends on it
        self.arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.float64)
                       for k in FITTED_ARRAYS}
        variance = self.arrays["explained_variance"]
        self.names = component_names(params.prefix, len(variance))
        scale = np.sqrt(variance)
        # a component of zero variance is rounding noise: whitened it is 0, where
        # scikit-learn divides the noise by eps
        self.factor = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def derived_from(self) -> dict[str, list[str]]:
        return {name: list(self.params.columns) for name in self.names}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        p = self.params
        require_numeric(schema, [c for c in p.columns
                                 if c not in schema.names
                                 or not is_sparse_type(schema.field(c).type)], "pca")
        require_features(schema, self.features)
        return components_schema(schema, p, len(self.names))

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        p = self.params
        projection = self.arrays["components"].T
        if p.whiten:
            projection = projection * self.factor
        mean = self.arrays["mean"]
        if is_numpy(xp) and scipy_sparse() is not None and has_sparse(part.schema,
                                                                       self.features):
            # (x - m) P as the sparse product x P less m P: the plain columns shifted
            # by their means first (exact), the sparse positions' means after
            runs = groups(part.schema, self.features)
            plain = np.zeros(len(mean), bool)
            plain[[j for column, j, _ in runs if column is None]] = True
            x = csr_matrix(part, self.features, shift=np.where(plain, mean, 0.0))
            y = np.asarray(x @ projection) - np.where(plain, 0.0, mean) @ projection
        else:
            x = feature_matrix(part, self.features, xp, role=ROLE)
            y = to_numpy((x - parameters(mean, xp)) @ parameters(projection, xp))
        out = part if p.keep else part.drop_columns(p.columns)
        for j, name in enumerate(self.names):
            out = out.append_column(pa.field(name, pa.float64()),
                                    pa.array(np.asarray(y[:, j], dtype=np.float64)))
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta: dict[str, Any] = {"params": self.params.model_dump(mode="json")}
        if self.features != list(self.params.columns):
            meta["features"] = self.features
        return meta, dict(self.arrays)

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PCAFitted:
        return cls(PCAParams(**meta["params"]), arrays, meta.get("features"))

