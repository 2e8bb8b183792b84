"""gaussian_mixture: a mixture of k Gaussians fitted by EM in passes (scikit-learn's and
MLlib's ``GaussianMixture``).

The fit is rounds of passes over the partitions, one pass an EM iteration:

1. the start (``init``), kmeans' own passes (``operators.models.kmeans``, the same rows
   held out, the same start on every engine and partitioning):
   - ``k-means||`` (the default): the k centres kmeans' k-means|| start chooses (its
     summary pass, ``init_steps`` sampling passes, the weighing pass and the driver's
     k-means++ and local Lloyd over the candidates), with no Lloyd pass over the rows;
   - ``kmeans``: those centres moved by kmeans' Lloyd passes to convergence (300 passes
     at most, kmeans' ``tol``): scikit-learn's default ``init_params='kmeans'``;
   - k means given, one list of feature values each;

   then one pass assigns each row to its nearest centre (a responsibility of 1 there, 0
   elsewhere: how scikit-learn's ``init_params='kmeans'`` builds its first
   responsibilities from KMeans' labels), and the driver's M-step makes the first
   weights, means and covariances of those (the weights: each component's share of the
   rows' weight). scikit-learn's ``init_params='k-means++'`` is not this: it gives a
   responsibility of 1 to the k seed rows alone, so each component starts as one row
   and ``reg_covar``;
2. EM passes: each row's log density under each component, ``log w_j - d/2 log(2 pi) +
   log det(P_j) - |(x - mu_j) P_j|^2 / 2`` with ``P_j`` the Cholesky factor of the
   component's precision (scikit-learn's ``precisions_cholesky_``), their log-sum-exp
   (the row's log-likelihood) and the responsibilities; the pass sums, per component,
   ``N_j = sum w r``, ``sum w r (x - mu_j)`` and ``sum w r (x - mu_j)(x - mu_j)'`` (its
   diagonal for ``diag`` and ``spherical``), centred on the means the pass evaluated
   (no cancellation far from the origin), and ``sum w log-likelihood``, in float64;
   ``combine`` adds them. The driver's M-step is scikit-learn's
   ``_estimate_gaussian_parameters`` (``N_j`` plus ``10 eps``, ``reg_covar`` added to
   the diagonal, the weights ``N_j / sum N``) from those sums, then the precisions'
   Cholesky factors as scikit-learn computes them. The pass's mean log-likelihood (of
   the parameters it evaluated: scikit-learn's lower bound) is compared with the last
   pass's: the fit stops when it changes less than ``tol``, or after ``max_iter``
   passes, with the parameters of the last M-step (scikit-learn's ``n_iter_`` and
   ``lower_bound_``);
   with ``n_init`` (scikit-learn's) steps 1 and 2 again for each further start, kmeans'
   start drawing from a seed derived from ``seed`` and the start's number (the first:
   ``seed``'s, so ``n_init: 1`` is the fit above), and the start of largest lower bound
   kept (the first of equal ones); the run record lists each start's lower bound, EM
   passes and convergence (``starts``);
3. one pass more scores every row under the fitted parameters (the kept start's): the
   training rows' mean log-likelihood (scikit-learn's ``score``; its ``bic`` and ``aic``)
   and, with ``validation_fraction``, the held-out rows' (what compares values of ``k``).

A weight is a repeated row (MLlib's ``weightCol``): a row of weight 3 counts as three
copies in every sum, the lower bound and the first weights. Given the same start
(``weights_init``, ``means_init``, ``precisions_init``) the fit is scikit-learn's, to
rounding. The rows are taken from their weighted mean first (kmeans' summary pass) and
every kernel computes in float64 whatever the step's dtype.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Literal, NoReturn

import numpy as np
import pyarrow as pa
import scipy.linalg
from pydantic import Field, model_validator

from operators.arrays import in_float64, to_numpy, to_xp
from operators.base import (
    DataError,
    Estimator,
    FitProgress,
    ParamError,
    Params,
    register,
    register_fitted,
)
from operators.evaluate.metrics import MIXTURE_COMPARABLE
from operators.models.common import (
    PREDICTION,
    PROBABILITY,
    ConvergenceWarning,
    FittedModel,
    _put_field,
    check_features,
    check_validation_window,
    chosen_features,
    feature_matrix,
    holdout_mask,
    host_matrix,
    in_last_iteration,
    parameters,
    probability_array,
    put_column,
    require_positive_weight,
    require_training_rows,
    row_weights,
    validation_fraction_field,
    validation_start_field,
)
from operators.models.kmeans import (
    KMeans,
    block_rows,
    check_given_points,
    check_given_width,
    nearest,
    one_hot,
    require_rows_for,
    start_pass_progress,
)

LOG_LIKELIHOOD = "log_likelihood"
START_PHASES = ("summary", "sample", "weigh", "pick", "lloyd", "relocate")
"""kmeans' phases: the passes of the start."""
EPS10 = 10 * float(np.finfo(np.float64).eps)
"""What scikit-learn adds to each component's weight (no component of weight 0)."""
Covariance = Literal["full", "diag", "tied", "spherical"]


class GaussianMixtureParams(Params):
    k: int = Field(ge=1, description="the number of components")
    features: list[str] | None = Field(
        None, min_length=1,
        description="feature columns (default: every numeric column but the weight)")
    weight: str | None = Field(None, description="column of non-negative row weights: a row "
                                                 "of weight w counts as w copies (MLlib's "
                                                 "weightCol)")
    covariance: Covariance = Field(
        "full", description="each component's covariance: full (a matrix each), diag (a "
                            "variance per feature each), tied (one matrix for all), "
                            "spherical (one variance each); scikit-learn's covariance_type")
    init: Literal["k-means||", "kmeans"] | list[list[float]] = Field(
        "k-means||", description="the starting means, each row then assigned to the "
                                 "nearest for the first M-step: k-means|| (kmeans' start, "
                                 "no Lloyd pass), kmeans (kmeans' start and Lloyd passes: "
                                 "scikit-learn's init_params='kmeans'), or k means given, "
                                 "one list of feature values each")
    init_steps: int = Field(2, ge=1, description="k-means|| sampling passes of the start")
    max_iter: int = Field(100, ge=1, description="most EM passes (scikit-learn's)")
    tol: float = Field(1e-3, ge=0.0, description="stop when the mean log-likelihood (the "
                                                 "lower bound) changes less than tol in a "
                                                 "pass (scikit-learn's tol)")
    reg_covar: float = Field(1e-6, ge=0.0, description="added to the diagonal of every "
                                                       "covariance (scikit-learn's)")
    seed: int = Field(0, description="seed of the start (with the rows' content, as kmeans') "
                                     "and of the validation split")
    n_init: int = Field(1, ge=1, description="starts to run EM from (scikit-learn's n_init): "
                                             "each its own kmeans start, the one of largest "
                                             "lower bound kept; passes grow with it")
    validation_fraction: float = validation_fraction_field()
    validation_start: float = validation_start_field()

    @model_validator(mode="after")
    def _given_means(self) -> GaussianMixtureParams:
        check_validation_window(self)
        check_given_points(self.init, self.k, "means")
        if isinstance(self.init, list) and self.n_init > 1:
            raise ParamError(f"n_init: {self.n_init} starts from the means init gives "
                             "would all be the same fit",
                             hint="n_init: 1 with given means, or init: k-means||")
        return self


# --------------------------------------------------------------------------- kernels


def log_densities(X: Any, means: Any, factors: Any, offsets: Any, diagonal: bool, xp: Any
                  ) -> tuple[Any, list[Any]]:
    """(rows, k): each row's log density under each component plus the log of its weight
    (``offsets``: ``log w_j + log det P_j - d/2 log(2 pi)``), and each component's
    ``X - mu_j``. ``factors``: the precisions' Cholesky factors, (k, d, d), or (k, d) of
    a diagonal one (``diagonal``)."""
    columns, centred = [], []
    for j in range(means.shape[0]):
        y = X - means[j, :]
        z = y * factors[j, :] if diagonal else y @ factors[j, ...]
        columns.append(xp.sum(z * z, axis=1))
        centred.append(y)
    return offsets - 0.5 * xp.stack(columns, axis=1), centred


def log_sum_exp(logp: Any, xp: Any) -> Any:
    """Each row's log of the sum of the exponentials, its largest taken out first."""
    top = xp.max(logp, axis=1)
    return top + xp.log(xp.sum(xp.exp(logp - top[:, None]), axis=1))


def component_sums(centred: list[Any], w: Any, resp: Any, full: bool, xp: Any
                   ) -> tuple[Any, Any, Any]:
    """Per component ``j``: ``sum w r_j``, ``sum w r_j y_j`` and ``sum w r_j y_j y_j'``
    (its diagonal unless ``full``) of ``y_j = centred[j]``, in float64 on ``xp``."""
    weighted = resp * w[:, None]
    sums, scatter = [], []
    for j, y in enumerate(centred):
        r = weighted[:, j]
        sums.append(r @ y)
        scatter.append(y.T @ (y * r[:, None]) if full else r @ (y * y))
    return xp.sum(weighted, axis=0), xp.stack(sums), xp.stack(scatter)


def em_sums(X: Any, w: Any, means: Any, factors: Any, offsets: Any, diagonal: bool,
            full: bool, xp: Any) -> dict[str, Any]:
    """An E-step over the rows of ``X`` (float64): the sums of ``component_sums`` with
    the responsibilities, centred on ``means``, and ``sum w log-likelihood``; a block of
    rows at a time (no temporary of the partition's size on the host)."""
    k, d = means.shape
    nk = xp.zeros(k, dtype=xp.float64)
    sums = xp.zeros((k, d), dtype=xp.float64)
    scatter = xp.zeros((k, d, d) if full else (k, d), dtype=xp.float64)
    ll = xp.zeros((), dtype=xp.float64)
    n, step = X.shape[0], block_rows(xp, k)
    for start in range(0, n, step):
        rows, weights = X[start:min(start + step, n), ...], w[start:min(start + step, n)]
        logp, centred = log_densities(rows, means, factors, offsets, diagonal, xp)
        lse = log_sum_exp(logp, xp)
        block = component_sums(centred, weights, xp.exp(logp - lse[:, None]), full, xp)
        nk, sums, scatter = nk + block[0], sums + block[1], scatter + block[2]
        ll = ll + xp.sum(weights * lse)
    return {"nk": to_numpy(nk), "sums": to_numpy(sums), "scatter": to_numpy(scatter),
            "ll": float(to_numpy(ll))}


def assigned_sums(X: Any, w: Any, centres: Any, full: bool, xp: Any) -> dict[str, Any]:
    """``em_sums``' sums of each row given wholly to its nearest centre (kmeans'
    ``nearest``), centred on the centres."""
    k, d = centres.shape
    nk = xp.zeros(k, dtype=xp.float64)
    sums = xp.zeros((k, d), dtype=xp.float64)
    scatter = xp.zeros((k, d, d) if full else (k, d), dtype=xp.float64)
    n, step = X.shape[0], block_rows(xp, k)
    for start in range(0, n, step):
        rows, weights = X[start:min(start + step, n), ...], w[start:min(start + step, n)]
        labels, _ = nearest(rows, centres, xp)
        centred = [rows - centres[j, :] for j in range(k)]
        block = component_sums(centred, weights, one_hot(labels, k, rows.dtype, xp), full, xp)
        nk, sums, scatter = nk + block[0], sums + block[1], scatter + block[2]
    return {"nk": to_numpy(nk), "sums": to_numpy(sums), "scatter": to_numpy(scatter)}


# --------------------------------------------------------------------------- driver maths


def m_step(stats: dict[str, Any], centres: np.ndarray, covariance: str, reg_covar: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ``_estimate_gaussian_parameters`` from a pass's sums centred on
    ``centres``: the unnormalised weights ``N + 10 eps``, the means and the covariances
    (in scikit-learn's shapes for ``covariance``)."""
    count, sums, scatter = stats["nk"], stats["sums"], stats["scatter"]
    nk = count + EPS10
    means = (sums + count[:, None] * centres) / nk[:, None]
    shift = means - centres
    d = centres.shape[1]
    if covariance in ("full", "tied"):
        # sum w r (x - mu)(x - mu)' from the sums about the centres, exactly
        spread = (scatter - np.einsum("ki,kj->kij", sums, shift)
                  - np.einsum("ki,kj->kij", shift, sums)
                  + count[:, None, None] * np.einsum("ki,kj->kij", shift, shift))
        if covariance == "full":
            covariances = spread / nk[:, None, None]
            covariances[:, np.arange(d), np.arange(d)] += reg_covar
        else:
            covariances = spread.sum(axis=0) / nk.sum()
            covariances[np.arange(d), np.arange(d)] += reg_covar
        return nk, means, covariances
    variances = (scatter - 2.0 * shift * sums + count[:, None] * shift * shift) / nk[:, None]
    variances += reg_covar
    return nk, means, variances if covariance == "diag" else variances.mean(axis=1)


def precision_cholesky(covariances: np.ndarray, covariance: str, reg_covar: float
                       ) -> np.ndarray:
    """scikit-learn's ``_compute_precision_cholesky``: the upper factor ``U`` of each
    precision ``U U'`` (the inverse of the covariance's lower Cholesky factor,
    transposed), or ``1 / sqrt`` of a variance; a DataError where a covariance is not
    positive definite."""
    if covariance in ("diag", "spherical"):
        bad = np.flatnonzero(np.atleast_2d(covariances.T).T.min(axis=-1) <= 0)
        if len(bad):
            _singular(int(bad[0]), covariance, reg_covar)
        return 1.0 / np.sqrt(covariances)
    stack = covariances[None] if covariance == "tied" else covariances
    out = np.empty_like(stack)
    eye = np.eye(stack.shape[-1])
    for j, matrix in enumerate(stack):
        try:
            lower = scipy.linalg.cholesky(matrix, lower=True)
        except (np.linalg.LinAlgError, ValueError):
            _singular(j, covariance, reg_covar)
        out[j] = scipy.linalg.solve_triangular(lower, eye, lower=True).T
    return out[0] if covariance == "tied" else out


def _singular(component: int, covariance: str, reg_covar: float) -> NoReturn:
    which = "the tied covariance" if covariance == "tied" else f"component {component}'s covariance"
    if covariance in ("diag", "spherical"):  # a variance of zero: no other covariance helps
        why = ("its rows are copies of one row" if covariance == "spherical" else
               "a feature constant over its rows: a constant feature, copies of one row")
        fix, features = "", "the constant features"
    else:
        why = ("its rows lie on a lower-dimensional subspace: a constant or duplicated "
               "feature, copies of one row, or too few rows for the features")
        fix, features = " use covariance: diag,", "the constant or duplicated features"
    raise DataError(f"{which} is singular even after reg_covar = {reg_covar:g} ({why})",
                    hint=f"raise reg_covar (1e-3 of the features' variance, say),{fix} "
                         f"lower k, or drop {features}")


def kernel_parameters(weights: np.ndarray, precisions_cholesky: np.ndarray, covariance: str,
                      k: int, d: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The factors ``log_densities`` takes, (k, d, d) or (k, d) for a diagonal, and the
    offsets ``log w_j + log det P_j - d/2 log(2 pi)``."""
    diagonal = covariance in ("diag", "spherical")
    if covariance == "spherical":
        factors = np.repeat(precisions_cholesky[:, None], d, axis=1)
    elif covariance == "tied":
        factors = np.broadcast_to(precisions_cholesky, (k, d, d))
    else:
        factors = precisions_cholesky
    log_det = (np.sum(np.log(factors), axis=1) if diagonal
               else np.sum(np.log(np.diagonal(factors, axis1=1, axis2=2)), axis=1))
    offsets = np.log(weights) + log_det - 0.5 * d * math.log(2 * math.pi)
    return np.ascontiguousarray(factors), offsets, diagonal


def parameter_count(covariance: str, k: int, d: int) -> int:
    """Free parameters of the mixture (scikit-learn's ``_n_parameters``: BIC and AIC)."""
    spread = {"full": k * d * (d + 1) // 2, "diag": k * d, "tied": d * (d + 1) // 2,
              "spherical": k}[covariance]
    return spread + k * d + k - 1


# --------------------------------------------------------------------------- fitted


@register_fitted("gaussian_mixture.fitted")
class GaussianMixtureFitted(FittedModel):
    """``prediction``: the component of the largest weighted density (int64, scikit-
    learn's ``predict``); ``probability``: the k responsibilities (``predict_proba``);
    ``log_likelihood``: the row's log density under the mixture (``score_samples``).
    ``shift``: the training rows' mean, which the densities are computed from
    (precision)."""

    supervised = False
    extra_columns = (LOG_LIKELIHOOD,)

    def __init__(self, features: list[str], covariance: str, weights: np.ndarray,
                 means: np.ndarray, covariances: np.ndarray,
                 precisions_cholesky: np.ndarray, shift: np.ndarray):
        super().__init__(features)
        d = len(self.features)
        self.covariance = covariance
        self.weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        k = len(self.weights)
        self.means = np.asarray(means, dtype=np.float64).reshape(k, d)
        self.covariances = np.asarray(covariances, dtype=np.float64)
        self.precisions_cholesky = np.asarray(precisions_cholesky, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64).reshape(d)
        self._factors, self._offsets, self._diagonal = kernel_parameters(
            self.weights, self.precisions_cholesky, covariance, k, d)

    def __repr__(self) -> str:
        return (f"GaussianMixtureFitted(features={self.features!r}, k={len(self.weights)}, "
                f"covariance={self.covariance!r})")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_features(schema, self.features, fitted=True)
        return mixture_schema(schema)

    def densities(self, X: Any, xp: Any) -> Any:
        """(rows, k) weighted log densities of the float64 rows ``X`` less ``shift``."""
        means = parameters(self.means - self.shift, xp)
        return log_densities(X, means, parameters(self._factors, xp),
                             parameters(self._offsets, xp), self._diagonal, xp)[0]

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        """The responsibilities of the rows of ``X`` (the features as given)."""
        xp = in_float64(xp)
        logp = self.densities(xp.astype(X, xp.float64) - parameters(self.shift, xp), xp)
        return xp.exp(logp - log_sum_exp(logp, xp)[:, None])

    def scored(self, part: pa.Table, xp: Any) -> np.ndarray:
        """(rows, k + 2) on the host: each row's log-likelihood, component, then its
        responsibilities (one copy each way)."""
        xp = in_float64(xp)
        X = to_xp(host_matrix(part, self.features), xp) - parameters(self.shift, xp)
        logp = self.densities(X, xp)
        lse = log_sum_exp(logp, xp)
        label = xp.astype(xp.argmax(logp, axis=1), xp.float64)
        return to_numpy(xp.concat([lse[:, None], label[:, None],
                                   xp.exp(logp - lse[:, None])], axis=1))

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        check_features(part.schema, self.features, fitted=True)
        out = self.scored(part, xp)
        table = put_column(part, pa.field(PREDICTION, pa.int64()),
                           pa.array(out[:, 1].astype(np.int64)))
        table = put_column(table, pa.field(PROBABILITY, pa.list_(pa.float64())),
                           probability_array(np.ascontiguousarray(out[:, 2:]), True))
        return put_column(table, pa.field(LOG_LIKELIHOOD, pa.float64()),
                          pa.array(np.ascontiguousarray(out[:, 0])))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances,
                "precisions_cholesky": self.precisions_cholesky, "shift": self.shift}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "covariance": self.covariance}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> GaussianMixtureFitted:
        return cls(list(meta["features"]), meta["covariance"], arrays["weights"],
                   arrays["means"], arrays["covariances"], arrays["precisions_cholesky"],
                   arrays["shift"])


def mixture_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with ``prediction`` (int64), ``probability`` (list<double>) and
    ``log_likelihood`` (float64): in place where it has them, else at the end."""
    for field in (pa.field(PREDICTION, pa.int64()), pa.field(PROBABILITY, pa.list_(pa.float64())),
                  pa.field(LOG_LIKELIHOOD, pa.float64())):
        schema = _put_field(schema, field)
    return schema


# --------------------------------------------------------------------------- estimator


@register("gaussian_mixture")
class GaussianMixture(Estimator):
    """Gaussian mixture by EM: adds `prediction`, `probability` and `log_likelihood`.

    ```yaml
    - op: standard_scale
      columns: [tenure, monthly_charges, total_charges]
    - op: gaussian_mixture
      features: [tenure, monthly_charges, total_charges]   # default: every numeric column
      k: 4
      covariance: full            # diag | tied | spherical (scikit-learn's covariance_type)
      init: k-means||             # kmeans (Lloyd passes first) | [[...], ...] (k means)
      max_iter: 100               # EM passes at most; tol: 1.0e-3 (the lower bound's change)
      reg_covar: 1.0e-6           # added to every covariance's diagonal
      seed: 1                     # the start, drawn by row content: the same everywhere
    ```
    The soft clustering of scikit-learn's and MLlib's GaussianMixture, one EM iteration a
    pass. `prediction` is the most likely component (int64), `probability` the k
    responsibilities (a list<double> in component order), `log_likelihood` the row's log
    density under the mixture (scikit-learn's `score_samples`): low values are
    anomalies. The run record has the iterations, whether it converged, the lower bound
    (scikit-learn's `lower_bound_`: the mean log-likelihood before the last M-step),
    the weights, the training rows' mean log-likelihood under the fitted mixture, BIC
    and AIC; with `validation_fraction`, the held-out rows' mean log-likelihood
    (`validation`): `tune: {k: [2, 3, 4, 5]}` picks k by it (higher is better). A model
    of no label, like kmeans.
    """

    Params = GaussianMixtureParams
    multi_pass = True
    compared_by = tuple(MIXTURE_COMPARABLE)
    """What ``tune`` compares candidates by: the held-out rows' mean log-likelihood."""

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The columns besides ``prediction`` and ``probability`` the fitted model adds."""
        return (LOG_LIKELIHOOD,)

    @functools.cached_property
    def _start(self) -> KMeans:
        """kmeans as the start runs it: its passes, its rows (held out as this step's)
        and the matrix it keeps with a partition."""
        p = self.params
        init = p.init if isinstance(p.init, list) and p.k >= 2 else "k-means||"
        start = KMeans(k=max(p.k, 2), features=p.features, weight=p.weight, init=init,
                       init_steps=p.init_steps, seed=p.seed,
                       validation_fraction=p.validation_fraction,
                       validation_start=p.validation_start)
        start.noun = "components"
        return start

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return self._start.input_columns(schema)

    def _check(self, schema: pa.Schema) -> list[str]:
        # kmeans (the start) reads a sparse column; the EM passes' matrices are dense
        chosen_features(schema, self.params.features, {self.params.weight})
        check_given_width(self.params.init, self._start._features(schema), "means")
        return self._start._check(schema)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self._check(schema)
        return mixture_schema(schema)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = self._check(schema)
        kmeans = self._start.init(schema)
        return {"phase": "start", "features": features, "kmeans": kmeans, "fresh": kmeans}

    def partial_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in state.items()
                if key not in ("initial", "fresh", "best")}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        xp = in_float64(xp)
        start = self._start
        if state["phase"] == "start":
            return {"kmeans": start.partial(part, state["kmeans"], xp)}
        if state["phase"] == "score":
            return self._scores(part, state, xp)
        part = start._training_rows(part, state)
        full = self.params.covariance in ("full", "tied")
        if part.num_rows == 0:
            return self._nothing(state)
        X, w, _ = start._matrix(part, state, xp)
        if state["phase"] == "assign":
            return assigned_sums(X, w, parameters(state["centres"], xp), full, xp)
        factors, offsets, diagonal = self._kernel(state)
        return em_sums(X, w, parameters(state["means"], xp), parameters(factors, xp),
                       parameters(offsets, xp), diagonal, full, xp)

    def _kernel(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
        k, d = self.params.k, len(state["features"])
        return kernel_parameters(state["weights"], state["precisions_cholesky"],
                                 self.params.covariance, k, d)

    def _nothing(self, state: dict[str, Any]) -> dict[str, Any]:
        """The stats of a partition without training rows: the identity of ``combine``."""
        k, d = self.params.k, len(state["features"])
        full = self.params.covariance in ("full", "tied")
        out = {"nk": np.zeros(k), "sums": np.zeros((k, d)),
               "scatter": np.zeros((k, d, d) if full else (k, d))}
        return out if state["phase"] == "assign" else {**out, "ll": 0.0}

    def _scores(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        """The last pass: the log-likelihood sums of the training and the held-out rows
        under the fitted mixture (one copy of the partition's rows)."""
        p = self.params
        weights = row_weights(part, p.weight)
        data = feature_matrix(part, state["features"], xp, [weights])
        d = len(state["features"])
        X = data[:, :d] - parameters(state["mean"], xp)
        factors, offsets, diagonal = self._kernel(state)
        logp = log_densities(X, parameters(state["means"], xp), parameters(factors, xp),
                             parameters(offsets, xp), diagonal, xp)[0]
        lse = to_numpy(log_sum_exp(logp, xp))
        held = holdout_mask(part, p.validation_fraction, p.seed, p.validation_start)
        return {"ll": float(weights[~held] @ lse[~held]),
                "held_ll": float(weights[held] @ lse[held]),
                "held_weight": float(weights[held].sum()), "held_rows": int(held.sum())}

    # ------------------------------------------------------------------ combine

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "kmeans" in a:
            return {"kmeans": self._start.combine(a["kmeans"], b["kmeans"])}
        return {key: a[key] + b[key] for key in a}

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        phase = state["phase"]
        if phase == "start":
            return self._started(stats["kmeans"], state), False
        if phase == "assign":
            return self._assigned(stats, state), False
        if phase == "em":
            return self._iterated(stats, state), False
        return self._scored(stats, state), True

    def _started(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """A pass of kmeans' start; its centres, once chosen, to the assignment pass."""
        p = self.params
        kmeans = state["kmeans"]
        if kmeans["phase"] == "summary" and stats["rows"] > 0:
            require_rows_for(stats["rows"], stats["heldout"], p.k, "components")
        if kmeans["phase"] == "summary" and p.k == 1:
            # one component: every row is its own, from its mean (not kmeans' start, of
            # two clusters: it asks for two rows)
            require_training_rows(stats["rows"], stats["heldout"])
            moments = stats["moments"]
            require_positive_weight(moments["weight"], p.weight)
            start = {"mean": moments["mean"], "rows": stats["rows"],
                     "heldout": stats["heldout"], "init_passes": 1}
            return self._assigning(state, start, moments["mean"][None, :])
        kmeans, _ = self._start.update(stats, kmeans)
        lloyd = kmeans["phase"] == "lloyd" and kmeans["iterations"] == 0
        if (p.init != "kmeans" and lloyd) or kmeans["phase"] in ("validate", "done"):
            return self._assigning(state, kmeans, kmeans["centres"])
        return {**state, "kmeans": kmeans}

    def _assigning(self, state: dict[str, Any], kmeans: dict[str, Any], centres: np.ndarray
                   ) -> dict[str, Any]:
        passes = kmeans["init_passes"] + kmeans.get("iterations", 0)
        starts = {key: state[key] for key in ("fresh", "best", "starts") if key in state}
        return {"phase": "assign", "features": state["features"], "mean": kmeans["mean"],
                "rows": kmeans["rows"], "heldout": kmeans["heldout"], "init_passes": passes,
                "centres": np.asarray(centres, dtype=np.float64) - kmeans["mean"], **starts}

    def _assigned(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The first M-step, of the rows given to their nearest centres; its weights are
        the components' shares of the rows' weight (scikit-learn's ``_initialize``)."""
        total = float(np.sum(stats["nk"]))
        if not total > 0:
            raise DataError(f"the weights in column '{self.params.weight}' sum to zero",
                            hint="give some training rows a positive weight")
        nk, means, covariances = m_step(stats, state["centres"], self.params.covariance,
                                        self.params.reg_covar)
        state = {k: v for k, v in state.items() if k != "centres"}
        state = self._parameters({**state, "weight": total, "iterations": 0,
                                  "lower_bound": -math.inf, "init_passes":
                                  state["init_passes"] + 1}, nk / total, means, covariances)
        return {**state, "phase": "em", "initial": {
            "weights": state["weights"], "means": state["means"] + state["mean"],
            "precisions_cholesky": state["precisions_cholesky"]}}

    def _parameters(self, state: dict[str, Any], weights: np.ndarray, means: np.ndarray,
                    covariances: np.ndarray) -> dict[str, Any]:
        p = self.params
        return {**state, "weights": weights, "means": means, "covariances": covariances,
                "precisions_cholesky": precision_cholesky(covariances, p.covariance,
                                                          p.reg_covar)}

    def _iterated(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """An EM pass: the lower bound of the parameters it evaluated, the M-step."""
        p = self.params
        lower_bound = stats["ll"] / state["weight"]
        change = lower_bound - state["lower_bound"]
        nk, means, covariances = m_step(stats, state["means"], p.covariance, p.reg_covar)
        iterations = state["iterations"] + 1
        state = self._parameters({**state, "iterations": iterations,
                                  "lower_bound": lower_bound, "change": change},
                                 nk / nk.sum(), means, covariances)
        converged = abs(change) < p.tol
        if converged or iterations >= p.max_iter:
            return self._chosen({**state, "converged": converged})
        return state

    def _chosen(self, state: dict[str, Any]) -> dict[str, Any]:
        """After a start's last EM pass: the next start (``n_init``: kmeans' start again,
        its draws from the next seed, ``kmeans.draw_seed``), or the start of largest
        lower bound (the first of equal ones, as scikit-learn's) to score."""
        p = self.params
        fit = {key: value for key, value in state.items()
               if key not in ("fresh", "best", "starts", "initial", "phase")}
        fit["initial"] = state["initial"]
        best = state.get("best")
        if best is None or fit["lower_bound"] > best["lower_bound"]:
            best = fit
        starts = [*state.get("starts", []), {"lower_bound": float(fit["lower_bound"]),
                                             "iterations": int(fit["iterations"]),
                                             "converged": bool(fit["converged"])}]
        if len(starts) < p.n_init:
            return {"phase": "start", "features": state["features"], "fresh": state["fresh"],
                    "kmeans": {**state["fresh"], "start": len(starts)}, "best": best,
                    "starts": starts}
        if not best["converged"]:
            warnings.warn(
                f"gaussian_mixture did not converge: the lower bound changed "
                f"{best['change']:.3g} {in_last_iteration(best['iterations'])} "
                f"(tol {p.tol:g}); raise max_iter or tol, or try another start (seed, init, "
                "n_init)", ConvergenceWarning, stacklevel=4)
        return {**best, "phase": "score", "starts": starts}

    def _scored(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        n, d = state["weight"], len(state["features"])
        mean_ll = stats["ll"] / n
        free = parameter_count(p.covariance, p.k, d)
        state = {**state, "phase": "done", "log_likelihood": mean_ll,
                 "bic": -2.0 * mean_ll * n + free * math.log(n),
                 "aic": -2.0 * mean_ll * n + 2.0 * free}
        if p.validation_fraction > 0:
            held = stats["held_weight"]
            state["validation"] = {
                "log_likelihood": stats["held_ll"] / held if held > 0 else float("nan"),
                "count": int(stats["held_rows"])}
        return state

    def fitted(self, state: dict[str, Any]) -> GaussianMixtureFitted:
        """The fitted model; before the fit is done, the model of the current parameters."""
        if "weights" not in state:
            raise RuntimeError("gaussian_mixture: fitted() before the start was made")
        return GaussianMixtureFitted(state["features"], self.params.covariance,
                                     state["weights"], state["means"] + state["mean"],
                                     state["covariances"], state["precisions_cholesky"],
                                     state["mean"])

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        """The EM pass of the start (of ``n_init``), of at most ``max_iter``: it stops
        sooner when the lower bound stands still, so no ETA."""
        if state.get("phase") != "em":
            return None
        return FitProgress(start_pass_progress(len(state.get("starts", [])), self.params.n_init,
                                          "EM", state["iterations"], self.params.max_iter))

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("phase") != "done":
            return {}
        out: dict[str, Any] = {
            "iterations": int(state["iterations"]), "converged": bool(state["converged"]),
            "lower_bound": float(state["lower_bound"]),
            "log_likelihood": float(state["log_likelihood"]),
            "bic": float(state["bic"]), "aic": float(state["aic"]),
            "weights": [float(w) for w in state["weights"]],
            "training_rows": int(state["rows"]), "validation_rows": int(state["heldout"]),
            "init_passes": int(state["init_passes"]),
        }
        if self.params.n_init > 1:  # each start's lower bound and EM passes, in order
            out["starts"] = state["starts"]
        if "validation" in state:
            out["validation"] = state["validation"]
        return out
