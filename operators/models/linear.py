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

``loss: poisson | gamma | tweedie`` fits a generalised linear model with a log link, the
prediction ``exp(X w + b)``, minimising

    sum_i w_i d(y_i, exp(x_i.w + b)) / (2 n) + l2/2 * |w|^2      (n = sum of weights)

with ``d`` the Poisson, gamma or Tweedie (``tweedie_power``) unit deviance (``log_link``):
scikit-learn's ``PoissonRegressor``, ``GammaRegressor`` and ``TweedieRegressor(power,
link="log")`` with ``alpha = l2``, exactly (their objective is this one). That fit is
iterative, as logistic regression's: a summary pass (row counts, the labels' minimum and
weighted mean: ``w = 0``, ``b = log(mean)``, the best intercept-only model), then passes
evaluating the loss, gradient and (Newton) Hessian at the point the driver-side optimiser
asks for (``optimize.py``), then a pass scoring the held-out rows when
``validation_fraction`` > 0. A trial step whose ``exp`` overflows has an infinite loss and
the line search steps back, silently. A row whose ``X w + b`` is past 709 (88 in float32)
is predicted ``inf``, as scikit-learn's (serve answers it as null).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import (
    DataError,
    Estimator,
    FitProgress,
    ParamError,
    SchemaError,
    register,
    register_fitted,
)
from operators.models.common import (
    ConditioningWarning,
    FittedModel,
    LinearContributions,
    SupervisedParams,
    check_inputs,
    combine_comoments,
    combine_loss_sums,
    comoments,
    feature_matrix,
    held_out,
    is_numeric,
    kept_design,
    label_column,
    loss_sums,
    model_input_columns,
    no_loss_sums,
    optimizer_metrics,
    optimizer_progress,
    parameters,
    penalised,
    precision,
    require_positive_weight,
    require_training_rows,
    row_weights,
    validation_combine,
    validation_finalize,
    validation_partial,
    warn_unconverged,
    weighted_sums,
    with_predictions,
)
from operators.models.log_link import (
    LOSS_DESCRIPTION,
    check_tweedie_power,
    deviance_metric,
    half_deviance,
    half_deviance_derivatives,
    start_score,
    tweedie_power_field,
)
from operators.models.optimize import (
    EPS,
    lbfgs_start,
    lbfgs_tell,
    newton_start,
    newton_tell,
)
from operators.sparse import groups, past_memory_share

RCOND = 1e-12
"""Eigenvalues of the equilibrated normal matrix below RCOND x the largest count as zero
(a design whose scaled condition number exceeds 1e6 is solved as rank-deficient)."""
ILL_CONDITIONED = 1e4
"""Scaled condition numbers above this are flagged in the metrics."""


NEWTON_MAX_PARAMETERS = 500
"""``solver: auto`` uses Newton up to this many coefficients (K x (features + 1)): its
per-pass Hessian costs rows x parameters^2, L-BFGS's gradient rows x parameters."""
SOLVER_PARAMS = ("max_iter", "tol", "solver")
"""The optimiser's parameters: a least-squares fit (one pass) has no use for them."""


def penalty_advice(l2: float) -> str:
    """A penalty where the fit has none, a larger one where it has one (advising
    `set l2 > 0` to a fit of l2=0.1 sends its user looking for a setting that is there)."""
    return "set l2 > 0" if l2 == 0 else "raise l2"


def unconverged_advice(l2: float) -> str:
    """What to try when a linear or logistic fit of penalty ``l2`` stops unconverged."""
    return f"raise max_iter, standardise the features (op: standard_scale) or " \
           f"{penalty_advice(l2)}"


class LinearParams(SupervisedParams):
    l2: float = Field(0.0, ge=0.0,
                      description="L2 penalty on the coefficients (never the intercept): "
                                  "l2/2 * |w|^2 added to the mean loss")
    fit_intercept: bool = Field(True, description="fit an unpenalised intercept")


class SolverParams(LinearParams):
    max_iter: int = Field(100, ge=1, description="most optimiser iterations (accepted steps)")
    tol: float = Field(1e-8, gt=0.0,
                       description="stop when |gradient| <= tol x |gradient at the start|")
    solver: Literal["auto", "newton", "lbfgs"] = Field(
        "auto", description="newton (gradient + Hessian per pass), lbfgs (gradient per "
                            "pass), auto: newton up to 500 coefficients")


class LinearRegressionParams(SolverParams):
    loss: Literal["squared_error", "poisson", "gamma", "tweedie"] = Field(
        "squared_error", description="squared_error (least squares, one pass); "
                                     + LOSS_DESCRIPTION + " X w + b (scikit-learn's "
                                     "PoissonRegressor, GammaRegressor, TweedieRegressor "
                                     "with alpha = l2), fitted by the solver in passes")
    tweedie_power: float = tweedie_power_field()


def start_optimizer(params: SolverParams, x0: np.ndarray, precision: float
                    ) -> tuple[str, dict[str, Any]]:
    """The solver ``params`` choose for ``x0``'s parameters, and its fresh state."""
    solver = params.solver
    if solver == "auto":
        solver = "newton" if x0.size <= NEWTON_MAX_PARAMETERS else "lbfgs"
    # a sparse column's terms (no 10,000-term cap) make a Hessian of any size
    past = past_memory_share(8.0 * x0.size * x0.size) if solver == "newton" else None
    if past is not None:
        raise DataError(f"solver: newton's Hessian of {x0.size:,} coefficients takes a "
                        f"{x0.size:,} x {x0.size:,} matrix a partition: {past}",
                        hint="solver: lbfgs (or auto, which takes it past "
                             f"{NEWTON_MAX_PARAMETERS} coefficients), or fewer features")
    start = newton_start if solver == "newton" else lbfgs_start
    return solver, start(x0, tol=params.tol, max_iter=params.max_iter, precision=precision)


@register_fitted("linear_regression.fitted")
class LinearRegressionFitted(LinearContributions, FittedModel):
    """``prediction = X @ coef + intercept``, or its exp (``link: exp``, the log-link
    losses); ``means``: the training rows' feature means (contributions' reference:
    contributions add up to the raw score, the log of an exp link's prediction);
    ``deviance``: the deviance a log-link model minimises, as the boosted trees'."""

    def __init__(self, features: list[str], coef: np.ndarray, intercept: float,
                 means: np.ndarray | None = None, link: str = "identity",
                 deviance: dict[str, Any] | None = None):
        super().__init__(features)
        self.coef = np.asarray(coef, dtype=np.float64).reshape(-1)
        self.intercept = float(intercept)
        self._keep_means(means)
        self.link = link
        self.deviance = None if deviance is None else dict(deviance)

    # X @ coef of a SciPy CSR matrix too (its fit makes a sparse column's rows dense a
    # partition at a time: the normal equations' and the GLM's passes)
    takes_sparse = True

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        raw = X @ parameters(self.coef, xp) + self.intercept
        return xp.exp(raw) if self.link == "exp" else raw

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": np.asarray(self.intercept),
                **self._means_array()}

    def meta(self) -> dict[str, Any]:
        out = {**super().meta(), "link": self.link}
        if self.deviance is not None:
            out["deviance"] = self.deviance
        return out

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> LinearRegressionFitted:
        # models saved before the log links have no link: least squares
        return cls(list(meta["features"]), arrays["coef"], float(arrays["intercept"]),
                   arrays.get("means"), meta.get("link", "identity"), meta.get("deviance"))


def _require_normal_equations_room(schema: pa.Schema, features: list[str]) -> None:
    """A DataError, before any pass, where a sparse column's terms make the normal
    equations' (features + 2)^2 float64 matrix (every partition's, then their sums)
    ``past_memory_share``."""
    made = [(column, stop - start) for column, start, stop in groups(schema, features)
            if column is not None]
    width = len(features) + 2
    past = past_memory_share(8.0 * width * width) if made else None
    if past is None:
        return
    name, terms = max(made, key=lambda m: m[1])
    raise DataError(
        f"linear_regression's normal equations on {len(features):,} features ({terms:,} "
        f"terms of the sparse column '{name}') take a {width:,} x {width:,} matrix a "
        f"partition: {past}",
        hint="fewer terms: vectorize_text's max_features (e.g. max_features: 5000) or a "
             "higher min_df")


@register("linear_regression")
class LinearRegression(Estimator):
    """Linear regression: least squares (ridge) in one pass, or Poisson, gamma, Tweedie (log link).

    ```yaml
    - op: linear_regression
      label: total_charges
      features: [tenure, monthly_charges]   # default: every numeric column but the label
      l2: 0.01                              # ridge; scikit-learn Ridge(alpha = l2 * n)
      validation_fraction: 0.2              # held-out rows scored into the run record
    - op: linear_regression                 # claim frequency: exp(X w + b)
      label: frequency                      # claims / exposure (derive it)
      weight: exposure                      # years insured
      loss: poisson                         # gamma | tweedie (tweedie_power: 1.5)
      l2: 0.001                             # scikit-learn PoissonRegressor(alpha = l2)
    ```
    """

    float32 = True  # docs/float32.md
    explained = True

    Params = LinearRegressionParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        check_tweedie_power(p)
        self.glm = p.loss != "squared_error"
        set_solver = sorted(set(SOLVER_PARAMS) & p.model_fields_set)
        if set_solver and not self.glm:
            raise ParamError(f"{', '.join(set_solver)} {'sets' if len(set_solver) == 1 else 'set'}"
                             " the optimiser of loss: poisson, gamma or tweedie, and loss: "
                             "squared_error (the default) is solved exactly in one pass",
                             hint=f"leave {'it' if len(set_solver) == 1 else 'them'} out, "
                                  "or set loss: poisson, gamma or tweedie")
        # the held-out rows are scored in a pass after the fit; a log link's fit is passes
        self.multi_pass = self.glm or p.validation_fraction > 0

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params, sparse=True)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_inputs(schema, self.params, sparse=True)
        label_type = schema.field(self.params.label).type
        if not is_numeric(label_type):
            raise SchemaError(f"label column '{self.params.label}' is {label_type}, not numeric",
                              hint="linear_regression predicts numbers; for classes use "
                                   "logistic_regression")
        return with_predictions(schema, None, None)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = check_inputs(schema, self.params, sparse=True)
        if not self.glm:
            _require_normal_equations_room(schema, features)
        return {"phase": "summary" if self.glm else "moments", "features": features}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        if state["phase"] == "validate":
            return validation_partial(self._model(state), part, self.params, xp)
        if self.glm:
            return self._glm_partial(part, state, xp)
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
        if a.get("kind") == "evaluate":
            return combine_loss_sums(a, b)
        if a.get("kind") == "summary":
            return {"kind": "summary", "rows": a["rows"] + b["rows"],
                    "heldout": a["heldout"] + b["heldout"], "weight": a["weight"] + b["weight"],
                    "label_sum": a["label_sum"] + b["label_sum"],
                    "label_min": min(a["label_min"], b["label_min"]),
                    "label_max": max(a["label_max"], b["label_max"]),
                    "precision": max(a["precision"], b["precision"]),
                    "sums": a["sums"] + b["sums"]}
        return {**_combine_moments(a, b), "sums": a["sums"] + b["sums"]}

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "validate":
            validation = validation_finalize(self._model(state), stats)
            return {**state, "phase": "done", "validation": validation}, True
        if state["phase"] == "summary":
            return self._glm_start(stats, state), False
        if state["phase"] == "optimize":
            return self._glm_step(stats, state)
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
                              f"used; drop redundant features or {penalty_advice(p.l2)}")
        elif condition > ILL_CONDITIONED:
            out["warning"] = (f"the design is ill-conditioned (scaled condition number "
                              f"{condition:.3g}): coefficients may be inaccurate; drop "
                              f"near-collinear features or {penalty_advice(p.l2)}")
        return out

    # ------------------------------------------------------------------ log links

    def _glm_partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p = self.params
        train, held = held_out(part, p, keep=True)
        if state["phase"] == "summary":
            weights = row_weights(train, p.weight)
            label = _float_values(label_column(train, p.label))
            # the weighted feature sums: the training means, contributions' reference;
            # the held-out rows' labels are checked too (their deviance needs them valid)
            held_labels = _float_values(label_column(held, p.label))
            return {"kind": "summary", "rows": train.num_rows, "heldout": held.num_rows,
                    "weight": float(weights.sum()), "label_sum": float(weights @ label),
                    "label_min": float(min(label.min(initial=np.inf),
                                           held_labels.min(initial=np.inf))),
                    "label_max": float(max(label.max(initial=-np.inf),
                                           held_labels.max(initial=-np.inf))),
                    "precision": precision(xp),
                    "sums": weighted_sums(train, state["features"], weights)}
        newton = state["solver"] == "newton"
        theta = state["opt"]["point"]
        if train.num_rows == 0:
            return no_loss_sums(theta.size, newton)

        def design() -> Any:
            extra = ([np.ones(train.num_rows)] if p.fit_intercept else []) + [
                _float_values(label_column(train, p.label)), row_weights(train, p.weight)]
            return feature_matrix(train, state["features"], xp, extra)

        # each pass of the optimiser reads the partition's columns once
        data = kept_design(part, "glm_design", p, state, xp, design, p.fit_intercept)
        width = theta.size
        X, y, w = data[:, :width], data[:, width], data[:, width + 1]
        raw = X @ parameters(theta, xp)
        # a trial step too long for exp gives an infinite loss, which the line search
        # steps back from: expected, not a warning for the user
        with np.errstate(over="ignore", invalid="ignore"):
            g, h = half_deviance_derivatives(raw, y, p.loss, p.tweedie_power, xp)
            return loss_sums(X, w * half_deviance(raw, y, p.loss, p.tweedie_power, xp),
                             w * g, w * h if newton else None, xp)

    def _glm_start(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        total = stats["weight"]
        require_positive_weight(total, p.weight)
        base = start_score(p.loss, stats["label_min"], stats["label_max"],
                           stats["label_sum"] / total, p.label, p.tweedie_power)
        k = len(state["features"])
        theta = np.zeros(k + int(p.fit_intercept))
        mask = np.ones_like(theta)
        if p.fit_intercept:
            # log of the labels' mean: the best intercept-only model (scikit-learn's start)
            theta[-1], mask[-1] = base, 0.0
        solver, opt = start_optimizer(p, theta, stats["precision"])
        return {**state, "phase": "optimize", "weight": total, "means": stats["sums"] / total,
                "rows": stats["rows"], "heldout": stats["heldout"], "solver": solver,
                "penalised": mask, "opt": opt}

    def _glm_step(self, stats: dict[str, Any], state: dict[str, Any]
                  ) -> tuple[dict[str, Any], bool]:
        opt, newton = state["opt"], state["solver"] == "newton"
        loss, grad, hess = penalised(stats, state["weight"], self.params.l2,
                                     state["penalised"], opt["point"], newton)
        opt = newton_tell(opt, loss, grad, hess) if newton else lbfgs_tell(opt, loss, grad)
        state = {**state, "opt": opt}
        if not opt["done"]:
            return state, False
        warn_unconverged("linear_regression", opt, unconverged_advice(self.params.l2))
        state = {**state, **self._glm_coefficients(opt["x"])}
        done = self.params.validation_fraction == 0
        return {**state, "phase": "done" if done else "validate"}, done

    def _glm_coefficients(self, point: np.ndarray) -> dict[str, Any]:
        if self.params.fit_intercept:
            return {"coef": point[:-1].copy(), "intercept": float(point[-1])}
        return {"coef": point.copy(), "intercept": 0.0}

    # ------------------------------------------------------------------ model

    def _model(self, state: dict[str, Any]) -> LinearRegressionFitted:
        p = self.params
        return LinearRegressionFitted(state["features"], state["coef"], state["intercept"],
                                      state.get("means"), "exp" if self.glm else "identity",
                                      deviance_metric(p.loss, p.tweedie_power))

    def fitted(self, state: dict[str, Any]) -> LinearRegressionFitted:
        """The fitted model; for a log link before the fit is done, the model at the
        current iterate."""
        if "coef" not in state:
            if "opt" not in state:
                raise RuntimeError("linear_regression: fitted() before the fit finished")
            opt = state["opt"]
            state = {**state, **self._glm_coefficients(opt.get("x", opt["point"]))}
        return self._model(state)

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        return optimizer_progress(state)

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if self.glm:
            return optimizer_metrics(state) if "opt" in state else {}
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
