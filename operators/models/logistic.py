"""logistic_regression: binary and multinomial logistic regression, Newton or L-BFGS.

The fit is rounds of passes over the partitions, the way Spark MLlib trains:

1. a summary pass: the classes (sorted), their weights, the row counts; the intercept
   starts at the log class priors (the best intercept-only model);
2. optimisation passes, each evaluating the loss and gradient (and, for Newton, the
   Hessian) at the point the driver-side optimiser asks for (``optimize.py``); a line
   search costs a further pass only when the full step is not good enough;
3. when ``validation_fraction`` > 0, one pass scoring the held-out rows.

The objective is ``mean log-loss + l2/2 * |W|^2`` (weighted mean with ``weight``; the
intercept is never penalised; no hidden standardisation); scikit-learn:
``LogisticRegression(C=1/(l2*n))``, ``C=inf`` when l2 = 0. With K > 2 classes the model is
a softmax over K coefficient vectors, all penalised, as scikit-learn's multinomial; the
softmax is unchanged by adding a constant to every class's intercept, so the saved
intercepts are centred (they sum to zero).

In a float32 step each pass's products run in float32 and its sums accumulate in float64;
the optimiser stops where float32 can no longer tell points apart (docs/float32.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from operators.arrays import is_numpy, to_numpy
from operators.base import Estimator, FitProgress, register, register_fitted
from operators.models.common import (
    ClassWeight,
    FittedModel,
    LinearContributions,
    PlannedPredictions,
    by_class,
    check_inputs,
    class_weight_field,
    class_weights,
    classifier_label_type,
    combine_loss_sums,
    encode_classes,
    feature_matrix,
    held_out,
    kept_design,
    label_column,
    loss_sums,
    merge_class_weights,
    model_input_columns,
    no_loss_sums,
    optimizer_metrics,
    optimizer_progress,
    parameters,
    penalised,
    precision,
    require_positive_weight,
    require_training_rows,
    row_products,
    row_weights,
    sigmoid,
    softmax,
    sparse_matrix,
    validation_combine,
    validation_finalize,
    validation_partial,
    warn_unconverged,
    weigh_classes,
    weighted_sums,
    with_ones,
    with_predictions,
)
from operators.models.linear import SolverParams, start_optimizer, unconverged_advice
from operators.models.optimize import lbfgs_tell, newton_tell

HESSIAN_CHUNK = 1 << 22
"""Elements of the per-row Kronecker block built at once for a multinomial Hessian."""


class LogisticParams(SolverParams):
    class_weight: ClassWeight = class_weight_field()


@register_fitted("logistic_regression.fitted")
class LogisticRegressionFitted(LinearContributions, FittedModel):
    """Class probabilities ``sigmoid(X @ coef.T + intercept)`` (binary: P(classes[1])) or
    ``softmax(X @ coef.T + intercept)``; ``prediction`` is the most probable class.
    ``means``: the training rows' feature means (contributions' reference)."""

    def __init__(self, features: list[str], classes: list[Any], label_type: pa.DataType,
                 coef: np.ndarray, intercept: np.ndarray, means: np.ndarray | None = None):
        super().__init__(features, classes, label_type)
        self.coef = np.asarray(coef, dtype=np.float64).reshape(-1, len(self.features))
        self.intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
        self._keep_means(means)

    takes_sparse = True  # X @ coef.T of a SciPy CSR matrix too

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        z = X @ parameters(self.coef, xp).T + parameters(self.intercept, xp)
        if len(self.classes) == 2:
            p = sigmoid(z[:, 0], xp)
            return xp.stack([1.0 - p, p], axis=1)
        return softmax(z, xp)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, **self._means_array()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> LogisticRegressionFitted:
        return cls(**cls.meta_args(meta), coef=arrays["coef"], intercept=arrays["intercept"],
                   means=arrays.get("means"))


@register("logistic_regression")
class LogisticRegression(PlannedPredictions, Estimator):
    """Logistic regression (binary, or multinomial softmax for more than two classes).

    ```yaml
    - op: logistic_regression
      label: churned            # integer, boolean or string classes
      l2: 0.001                 # scikit-learn LogisticRegression(C = 1 / (l2 * n))
      solver: auto              # newton | lbfgs
      validation_fraction: 0.2  # held-out rows scored into the run record
    ```
    The plan-time schema assumes two classes (``probability`` float64) unless the fit
    finds more: the number of classes is only known from the data.
    """

    float32 = True  # docs/float32.md
    explained = True

    Params = LogisticParams
    multi_pass = True
    schema_from_fit = True  # probability is float64 for 2 classes, list<double> for more

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params, sparse=True)

    def _label_type(self, schema: pa.Schema) -> pa.DataType:
        return classifier_label_type(schema, self.params.label, "logistic_regression")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_inputs(schema, self.params, sparse=True)
        label_type = self._label_type(schema)
        return with_predictions(schema, [False, True], label_type)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = check_inputs(schema, self.params, sparse=True)
        return {"phase": "summary", "features": features,
                "label_type": str(self._label_type(schema))}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p = self.params
        if state["phase"] == "validate":
            return validation_partial(self._model(state), part, p, xp)
        train, held = held_out(part, p, keep=True)
        if state["phase"] == "summary":
            weights = row_weights(train, p.weight)
            classes, totals = class_weights(label_column(train, p.label), weights)
            # the weighted feature sums: the training means, contributions' reference
            sums = weighted_sums(train, state["features"], weights)
            return {"kind": "summary", "rows": train.num_rows, "heldout": held.num_rows,
                    "classes": classes, "weights": totals, "precision": precision(xp),
                    "sums": sums}
        theta = state["opt"]["point"].reshape(state["shape"])
        newton = state["solver"] == "newton"
        sparse = None if newton else self._sparse_design(part, train, state, xp)
        if sparse is not None:  # a sparse column's rows as they are (L-BFGS: no Hessian)
            X, index, weights = sparse
            return _evaluate_rows(X, index, weights, theta, False, xp)
        return _evaluate(self._dense_design(part, train, state, xp), theta, newton, xp)

    def _target(self, train: pa.Table, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The training rows' class positions and their weights with the class weights."""
        p = self.params
        index = encode_classes(label_column(train, p.label), state["classes"],
                               pa.type_for_alias(state["label_type"]))
        return index, by_class(row_weights(train, p.weight), index, state.get("class_factor"))

    def _dense_design(self, part: pa.Table, train: pa.Table, state: dict[str, Any], xp: Any
                      ) -> Any:
        """The training rows' design (features, the intercept's ones), class positions
        and weights as one matrix on ``xp``; on NumPy kept with the partition's table for
        the next pass (``kept_design``: each Newton or L-BFGS pass reads the columns
        once)."""
        def make() -> Any:
            index, weights = self._target(train, state)
            ones = [np.ones(train.num_rows)] if self.params.fit_intercept else []
            return feature_matrix(train, state["features"], xp, [*ones, index, weights])

        return kept_design(part, "logistic_dense", self.params, state, xp, make,
                           self.params.fit_intercept)

    def _sparse_design(self, part: pa.Table, train: pa.Table, state: dict[str, Any], xp: Any
                       ) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """The training rows' design (features, then the intercept's ones) as a SciPy
        CSR matrix where some features are a sparse column's, with the rows' class
        positions (float64) and weights; None where no feature is sparse. Kept with the
        partition's table for the next pass (``kept_design``): an L-BFGS fit's passes
        read it, not the column, again. NumPy only (a device's passes make a dense
        matrix)."""
        if not is_numpy(xp):
            return None
        p = self.params

        def make() -> tuple[Any, np.ndarray, np.ndarray] | None:
            X = sparse_matrix(train, state["features"], xp)
            if X is None:
                return None
            index, weights = self._target(train, state)
            return (with_ones(X) if p.fit_intercept else X), index.astype(np.float64), weights

        return kept_design(part, "logistic_sparse", p, state, xp, make, p.fit_intercept)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "metrics" in a:
            return validation_combine(a, b)
        if a["kind"] == "summary":
            classes, totals = merge_class_weights((a["classes"], a["weights"]),
                                                  (b["classes"], b["weights"]))
            return {"kind": "summary", "rows": a["rows"] + b["rows"],
                    "heldout": a["heldout"] + b["heldout"], "classes": classes,
                    "weights": totals, "precision": max(a["precision"], b["precision"]),
                    "sums": a["sums"] + b["sums"]}
        return combine_loss_sums(a, b)

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "summary":
            return self._start(stats, state), False
        if state["phase"] == "validate":
            validation = validation_finalize(self._model(state), stats)
            return {**state, "phase": "done", "validation": validation}, True
        state = {**state, "opt": self._tell(stats, state)}
        if not state["opt"]["done"]:
            return state, False
        state = self._finish(state)
        done = self.params.validation_fraction == 0
        return {**state, "phase": "done" if done else "validate"}, done

    def _start(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        classes, totals = stats["classes"], stats["weights"]
        totals, factor = weigh_classes(p.class_weight, classes, totals, p.label)
        total = float(totals.sum())
        require_positive_weight(total, p.weight)
        k = 1 if len(classes) == 2 else len(classes)
        n_features = len(state["features"])
        width = n_features + int(p.fit_intercept)
        theta = np.zeros((k, width))
        if p.fit_intercept:
            # log class priors: a zero intercept gradient from the first pass
            logs = np.log(np.maximum(totals, np.finfo(np.float64).tiny))
            theta[:, -1] = [logs[1] - logs[0]] if k == 1 else logs - logs.mean()
        mask = np.ones((k, width))
        if p.fit_intercept:
            mask[:, -1] = 0.0
        solver, opt = start_optimizer(p, theta.reshape(-1), stats["precision"])
        raw = float(stats["weights"].sum())  # the rows' own weights, before class_weight
        means = stats["sums"] / raw if raw > 0 else np.zeros(len(stats["sums"]))
        return {**state, "phase": "optimize", "classes": classes, "weight": total,
                "means": means,
                "class_factor": factor,
                "rows": stats["rows"], "heldout": stats["heldout"], "solver": solver,
                "shape": (k, width), "penalised": mask.reshape(-1), "opt": opt}

    def _tell(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        opt, newton = state["opt"], state["solver"] == "newton"
        loss, grad, hess = penalised(stats, state["weight"], self.params.l2,
                                     state["penalised"], opt["point"], newton)
        if not newton:
            return lbfgs_tell(opt, loss, grad)
        k, width = state["shape"]
        if k > 1:
            # the softmax loss is flat along "add the same vector to every class"; the
            # iterates and gradients stay orthogonal to those directions, so adding a
            # multiple of the projector onto them leaves the Newton step unchanged and
            # makes the matrix invertible
            projector = np.kron(np.full((k, k), 1.0 / k), np.eye(width))
            hess = hess + (np.trace(hess) / hess.shape[0]) * projector
        return newton_tell(opt, loss, grad, hess)

    def _finish(self, state: dict[str, Any]) -> dict[str, Any]:
        opt = state["opt"]
        warn_unconverged("logistic_regression", opt,
                         unconverged_advice(self.params.l2))
        return {**state, **self._coefficients(state, opt["x"])}

    def _coefficients(self, state: dict[str, Any], point: np.ndarray) -> dict[str, np.ndarray]:
        k, width = state["shape"]
        theta = point.reshape(k, width)
        n_features = len(state["features"])
        coef = theta[:, :n_features].copy()
        intercept = theta[:, n_features].copy() if self.params.fit_intercept else np.zeros(k)
        if k > 1:
            intercept -= intercept.mean()
            if self.params.l2 == 0:
                coef -= coef.mean(axis=0)
        return {"coef": coef, "intercept": intercept}

    def _model(self, state: dict[str, Any]) -> LogisticRegressionFitted:
        return LogisticRegressionFitted(state["features"], state["classes"],
                                        pa.type_for_alias(state["label_type"]),
                                        state["coef"], state["intercept"], state.get("means"))

    def fitted(self, state: dict[str, Any]) -> LogisticRegressionFitted:
        """The fitted model; before the fit is done, the model at the current iterate."""
        if "coef" not in state:
            if "opt" not in state:
                raise RuntimeError("logistic_regression: fitted() before the summary pass")
            state = {**state, **self._coefficients(state, state["opt"]["x"]
                                                   if "x" in state["opt"]
                                                   else state["opt"]["point"])}
        return self._model(state)

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        return optimizer_progress(state)

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if "opt" not in state:
            return {}
        return {**optimizer_metrics(state), "classes": len(state["classes"])}


def _evaluate(data: Any, theta: np.ndarray, hessian: bool, xp: Any) -> dict[str, Any]:
    """Weighted sums of the log-loss, its gradient and (for Newton) its Hessian at
    ``theta`` (classes x columns) over one partition's training rows.

    ``data`` holds the design columns (features, then the intercept's ones), the label
    as a class position, and the weight.
    """
    k, width = theta.shape
    if data.shape[0] == 0:
        return no_loss_sums(k * width, hessian)
    return _evaluate_rows(data[:, :width], data[:, width], data[:, width + 1], theta,
                          hessian, xp)


def _evaluate_rows(X: Any, y: Any, w: Any, theta: np.ndarray, hessian: bool, xp: Any
                   ) -> dict[str, Any]:
    """``_evaluate`` of the design ``X`` (dense on ``xp``, or a SciPy CSR matrix without
    ``hessian``), the class positions ``y`` and the weights ``w``."""
    k, width = theta.shape
    size = k * width
    if X.shape[0] == 0:
        return no_loss_sums(size, hessian)
    z = X @ parameters(theta, xp).T
    if k == 1:
        z = z[:, 0]
        p = sigmoid(z, xp)
        # log(1 + exp(z)) - y z, stable for large |z|
        return loss_sums(X, w * (xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))) - y * z),
                         w * (p - y), w * p * (1.0 - p) if hessian else None, xp)
    onehot = xp.astype(y[:, None] == xp.arange(k, dtype=z.dtype)[None, :], z.dtype)
    top = xp.max(z, axis=1, keepdims=True)
    log_norm = top + xp.log(xp.sum(xp.exp(z - top), axis=1, keepdims=True))
    loss = xp.sum(w * xp.sum(onehot * (log_norm - z), axis=1), dtype=xp.float64)
    proba = xp.exp(z - log_norm)
    grad = row_products((proba - onehot) * w[:, None], X, xp)
    out = {**no_loss_sums(size, False), "loss": float(loss),
           "grad": to_numpy(grad).reshape(-1)}
    if hessian:
        out["hess"] = _multinomial_hessian(X, proba, w, xp)
    return out


def _multinomial_hessian(X: Any, proba: Any, w: Any, xp: Any) -> np.ndarray:
    """sum_i w_i (diag(p_i) - p_i p_i') kron x_i x_i', parameters ordered class-major.

    The ``p_i kron x_i`` rows are built in chunks so memory stays bounded.
    """
    n, width = X.shape
    k = proba.shape[1]
    size = k * width
    step = max(1, HESSIAN_CHUNK // size)
    outer = None
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = stop - start
        kron = xp.reshape(proba[start:stop, :, None] * X[start:stop, None, :], (rows, size))
        part = row_products(kron, kron * w[start:stop, None], xp)
        outer = part if outer is None else outer + part
    hess = -to_numpy(outer)
    for c in range(k):
        block = row_products(X, X * (w * proba[:, c])[:, None], xp)
        hess[c * width:(c + 1) * width, c * width:(c + 1) * width] += to_numpy(block)
    return hess
