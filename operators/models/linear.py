"""linear_regression: least squares (OLS, ridge) from one pass of centred moments.

Each partition contributes its weighted row count, means and centred co-moments of
``[features, label]``; partials combine with Chan's pairwise update (stable where raw
sums of squares would cancel), and the driver solves the normal equations of

    1/(2n) * sum_i w_i (y_i - x_i.w - b)^2 + l2/2 * |w|^2      (n = sum of weights)

by an eigendecomposition of the equilibrated matrix: a rank-deficient design gets the
minimum-norm solution, never NaN, and its rank and condition number go into the run
record. scikit-learn: ``Ridge(alpha=l2 * n)``, ``LinearRegression()`` when l2 = 0.

In a float32 step the co-moment matmuls run in float32 (summed in float64 by blocks):
the coefficients move by about 4e-8 x condition_number^2 relative (docs/float32.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import Estimator, SchemaError, register, register_fitted
from operators.models.common import (
    ConditioningWarning,
    FittedModel,
    LinearContributions,
    SupervisedParams,
    check_inputs,
    combine_comoments,
    comoments,
    feature_matrix,
    held_out,
    is_numeric,
    label_column,
    model_input_columns,
    parameters,
    require_positive_weight,
    require_training_rows,
    row_weights,
    validation_combine,
    validation_finalize,
    validation_partial,
    weighted_sums,
    with_predictions,
)
from operators.models.optimize import EPS

RCOND = 1e-12
"""Eigenvalues of the equilibrated normal matrix below RCOND x the largest count as zero
(a design whose scaled condition number exceeds 1e6 is solved as rank-deficient)."""
ILL_CONDITIONED = 1e4
"""Scaled condition numbers above this are flagged in the metrics."""


class LinearParams(SupervisedParams):
    l2: float = Field(0.0, ge=0.0,
                      description="L2 penalty on the coefficients (never the intercept): "
                                  "l2/2 * |w|^2 added to the mean loss")
    fit_intercept: bool = Field(True, description="fit an unpenalised intercept")


@register_fitted("linear_regression.fitted")
class LinearRegressionFitted(LinearContributions, FittedModel):
    """``prediction = X @ coef + intercept``; ``means``: the training rows' feature means
    (contributions' reference)."""

    def __init__(self, features: list[str], coef: np.ndarray, intercept: float,
                 means: np.ndarray | None = None):
        super().__init__(features)
        self.coef = np.asarray(coef, dtype=np.float64).reshape(-1)
        self.intercept = float(intercept)
        self._keep_means(means)

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        return X @ parameters(self.coef, xp) + self.intercept

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": np.asarray(self.intercept),
                **self._means_array()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> LinearRegressionFitted:
        return cls(list(meta["features"]), arrays["coef"], float(arrays["intercept"]),
                   arrays.get("means"))


@register("linear_regression")
class LinearRegression(Estimator):
    """Linear regression (least squares, optionally ridge) fitted in one pass.

    ```yaml
    - op: linear_regression
      label: total_charges
      features: [tenure, monthly_charges]   # default: every numeric column but the label
      l2: 0.01                              # ridge; scikit-learn Ridge(alpha = l2 * n)
      validation_fraction: 0.2              # held-out rows scored into the run record
    ```
    """

    float32 = True  # docs/float32.md
    explained = True

    Params = LinearParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        # the held-out rows are scored in a second pass
        self.multi_pass = self.params.validation_fraction > 0

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_inputs(schema, self.params)
        label_type = schema.field(self.params.label).type
        if not is_numeric(label_type):
            raise SchemaError(f"label column '{self.params.label}' is {label_type}, not numeric",
                              hint="linear_regression predicts numbers; for classes use "
                                   "logistic_regression")
        return with_predictions(schema, None, None)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"phase": "moments", "features": check_inputs(schema, self.params)}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        if state["phase"] == "validate":
            return validation_partial(self._model(state), part, self.params, xp)
        p = self.params
        train, held = held_out(part, p)
        weights = row_weights(train, p.weight)
        label = label_column(train, p.label)
        data = feature_matrix(train, state["features"], xp,
                              [_float_values(label), weights])
        out = _moments(data, len(state["features"]), xp, train.num_rows, held.num_rows)
        # the weighted feature sums in float64 whatever the compute dtype: the training
        # means, contributions' reference
        out["sums"] = weighted_sums(train, state["features"], weights)
        return out

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "metrics" in a:
            return validation_combine(a, b)
        return {**_combine_moments(a, b), "sums": a["sums"] + b["sums"]}

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "validate":
            validation = validation_finalize(self._model(state), stats)
            return {**state, "phase": "done", "validation": validation}, True
        solution = self._solve(stats, state["features"])
        if solution.get("warning"):
            warnings.warn(f"linear_regression: {solution['warning']}", ConditioningWarning,
                          stacklevel=2)
        done = self.params.validation_fraction == 0
        return {**state, **solution, "phase": "done" if done else "validate"}, done

    def _solve(self, stats: dict[str, Any], features: list[str]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        total = stats["weight"]
        require_positive_weight(total, p.weight)
        k = len(features)
        mean, comoment = stats["mean"], stats["comoment"] / total
        mx, my = mean[:k], mean[k]
        gram, cross, label_var = comoment[:k, :k], comoment[:k, k], comoment[k, k]
        if not p.fit_intercept:
            gram = gram + np.outer(mx, mx)
            cross = cross + mx * my
            label_var = label_var + my * my
        system = gram + p.l2 * np.eye(k)
        coef, rank, condition = min_norm_solve(system, cross)
        intercept = float(my - mx @ coef) if p.fit_intercept else 0.0
        # the mean squared residual from the moments: no second pass over the data
        mse = max(float(label_var - 2 * coef @ cross + coef @ gram @ coef), 0.0)
        spread = comoment[k, k]
        out: dict[str, Any] = {
            "coef": coef, "intercept": intercept, "means": stats["sums"] / total, "rank": rank,
            "condition_number": condition,
            "training_rows": int(stats["rows"]), "validation_rows": int(stats["heldout"]),
            "training_rmse": float(np.sqrt(mse)),
            "training_r2": float(1 - mse / spread) if spread > 0 else float("nan"),
        }
        if rank < k:
            out["warning"] = (f"the design is rank-deficient (rank {rank} of {k} features, "
                              "collinear or constant columns): the minimum-norm solution was "
                              "used; drop redundant features or set l2 > 0")
        elif condition > ILL_CONDITIONED:
            out["warning"] = (f"the design is ill-conditioned (scaled condition number "
                              f"{condition:.3g}): coefficients may be inaccurate; drop "
                              "near-collinear features or set l2 > 0")
        return out

    def _model(self, state: dict[str, Any]) -> LinearRegressionFitted:
        return LinearRegressionFitted(state["features"], state["coef"], state["intercept"],
                                      state.get("means"))

    def fitted(self, state: dict[str, Any]) -> LinearRegressionFitted:
        if "coef" not in state:
            raise RuntimeError("linear_regression: fitted() before the fit finished")
        return self._model(state)

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        keys = ("training_rows", "validation_rows", "rank", "condition_number",
                "training_rmse", "training_r2", "warning", "validation")
        out = {k: state[k] for k in keys if k in state}
        if "rank" in out:
            out["rank_deficient"] = out["rank"] < len(state["features"])
        return out


def _float_values(labels: pa.Array) -> np.ndarray:
    values = labels.to_numpy(zero_copy_only=False)
    return values.astype(np.float64)


def _moments(data: Any, k: int, xp: Any, rows: int, heldout: int) -> dict[str, Any]:
    """Weighted count, mean and centred co-moments of ``[features, label]`` (last column
    of ``data`` is the weight), accumulated in float64 whatever ``data``'s dtype."""
    return {"rows": rows, "heldout": heldout,
            **comoments(data[:, :k + 1], data[:, k + 1], xp)}


def _combine_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"rows": a["rows"] + b["rows"], "heldout": a["heldout"] + b["heldout"],
            **combine_comoments(a, b)}


def min_norm_solve(system: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, int, float]:
    """The minimum-norm solution of ``system @ x = rhs`` (symmetric PSD), its rank and the
    condition number of the equilibrated design (square root of the eigenvalue ratio).

    Equilibrating by the diagonal keeps features on different scales from looking
    singular; eigenvalues below ``RCOND`` x the largest are dropped, and the null-space
    component (in the original coordinates) is projected out of the solution.
    """
    k = system.shape[0]
    if k == 0:
        return np.zeros(0), 0, 1.0
    diagonal = np.clip(np.diag(system), 0.0, None)
    scale = np.sqrt(diagonal)
    constant = diagonal <= EPS * max(float(diagonal.max()), 1e-300)
    scale[constant] = 1.0
    scaled = system / scale[:, None] / scale[None, :]
    scaled[constant, :] = 0.0
    scaled[:, constant] = 0.0
    values, vectors = np.linalg.eigh(scaled)
    top = float(values.max())
    keep = values > RCOND * top if top > 0 else np.zeros(k, dtype=bool)
    inverse = np.where(keep, 1.0 / np.where(keep, values, 1.0), 0.0)
    solution = (vectors @ (inverse * (vectors.T @ (rhs / scale)))) / scale
    if not keep.all():
        basis, _ = np.linalg.qr(vectors[:, ~keep] / scale[:, None])
        solution = solution - basis @ (basis.T @ solution)
    rank = int(keep.sum())
    smallest = float(values.min())
    condition = float(np.sqrt(top / smallest)) if smallest > 0 and top > 0 else float("inf")
    return solution, rank, condition
