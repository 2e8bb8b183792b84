"""kmeans: k-means clustering, Lloyd's algorithm from a k-means|| start, in passes.

The fit is rounds of passes over the partitions, the way Spark MLlib trains:

1. a summary pass: the rows' weighted means and variances (``tol`` is relative to their
   mean variance, as scikit-learn's), and the first centre: the row whose key
   ``log(u) / w`` is largest, ``u`` a uniform from a hash of the row's features, weight
   and ``seed`` (a row drawn with probability proportional to its weight, the same row
   on every engine and partitioning); ``init: random`` takes the k largest keys. Copies
   of a row have one hash, so the start draws them as one row of their weight, not of
   their summed weight (a weight is a repeated row for the Lloyd passes, not for the
   start's draws): give duplicated points as one row and a weight (``op: aggregate``,
   their count) for the draws of scikit-learn's start;
2. the start (``init``):
   - ``k-means||`` (Bahmani et al., MLlib's and dask-ml's default): ``init_steps``
     passes, each drawing every row with probability ``min(1, l w d^2 / phi)`` (``d``:
     its distance to the nearest candidate so far, ``phi``: the sum of ``w d^2``,
     ``l = 2k`` as MLlib), a row drawn when its hash's uniform is below that; a pass
     weighs the candidates by the weight of the rows nearest to each (a row as near to
     several shares its weight among them); on the driver,
     weighted k-means++ (scikit-learn's greedy variant) picks k of them and a weighted
     Lloyd over the candidates polishes them (MLlib's LocalKMeans, 30 iterations); fewer
     than k candidates after ``EXTRA_ROUNDS`` more passes: k-means++ passes add the rest;
   - ``k-means++`` (Arthur and Vassilvitskii): one pass a centre, each drawing the row
     of largest ``log(u) / (w d^2)``: a draw with probability proportional to
     ``w d^2`` (of distinct rows, as above), exactly as on one machine;
   - ``random``: the k rows of the summary's keys; or the centres given as a list;
3. Lloyd passes: each row goes to its nearest centre (of centres as near, the first:
   scores within ``TIE_RTOL`` of the least tie, so a row of whole counts exactly between
   two goes to the same one whatever last bits the partitioning left in the centres and
   in the training mean); the pass sums the weighted rows, weights and counts of each
   cluster and the inertia; the driver moves each centre to its cluster's mean. A
   cluster left empty moves to the row farthest from its centre (scikit-learn's rule;
   more than one empty cluster: a pass finds as many farthest rows; a cluster that a
   move leaves of no weight goes where scikit-learn's puts it, on the heaviest cluster's
   centre). The fit stops when the centres stand still (scikit-learn's strict
   convergence: the same assignment twice) or move less than ``tol`` x the mean variance
   in all (sum of squared moves), or after ``max_iter`` passes; then, unless they stood
   still, one more pass assigns the rows to the final centres for the inertia and the
   cluster sizes (scikit-learn's last E-step).
   With ``n_init`` (scikit-learn's) steps 1 to 3 run again for each further start, from
   another summary pass, each start's draws from a seed derived from ``seed`` and the
   start's number (the first: ``seed`` itself, so ``n_init: 1`` is the fit above), and
   the start of least inertia is kept (the first of equal ones); the run record lists
   each start's inertia and Lloyd passes (``starts``). The validation split keeps
   ``seed``: every start leaves out the same rows, and only the kept start is measured
   on them.

4. with ``validation_fraction``, every pass above leaves out the rows a supervised model
   holds out (by a hash of the row's content and ``seed``; ``validation_start``: where
   the share starts), and two passes after the fit measure how the fitted centres
   cluster them: ``evaluate_clusters``' passes over the held-out rows and the cluster of
   each (the silhouette, Calinski-Harabasz and Davies-Bouldin, exactly scikit-learn's
   on those rows and clusters; with ``weight``, evaluate_clusters' with that weight:
   MLlib's weighted silhouette, and a row counted as its weight in the others, a row of
   weight 0 left out), and their inertia per row (weighted: per unit of weight), in the
   fit's ``validation`` metrics: what ``tune`` compares values of ``k`` by. Held-out
   rows in fewer than 2 clusters (or each in its own) have no silhouette: its metrics
   are NaN, and ``undefined`` says why.

Given the same starting centres the fit is scikit-learn's
``KMeans(init=centres, n_init=1, algorithm="lloyd")``: centres, labels, inertia and
iterations (with weights, ``tol`` is relative to the weighted variance, so that a weight
is a repeated row; scikit-learn's is unweighted). Distances are computed from the rows'
weighted mean (as scikit-learn subtracts the mean), which keeps float32 (docs/float32.md)
from cancelling ``|x|^2 - 2 x.c + |c|^2`` on data far from zero; the sums accumulate in
float64.

``distance_measure: cosine`` is MLlib's ``KMeans(distanceMeasure="cosine")`` (spherical
k-means): a row's distance to a centre is ``1 - cos``, a cluster's centre the unit
direction of its rows' (weighted) mean direction. For unit vectors ``|x - c|^2 = 2 - 2
cos``, so it is all of the above on the rows made unit where a pass reads them (the
matrix, the rows drawn), with the centres made unit after the start and after each move
(the driver's LocalKMeans too); ``tol`` is then relative to the unit rows' variance; the
inertia is half the squared distances, MLlib's cosine trainingCost; the validation
measures the silhouette only, evaluate_clusters' cosine one. A row of zeros has no
direction: a DataError (MLlib refuses zero vectors), in the fit and when scoring. From the
same centres (MLlib's ``initialModel``) it gives MLlib's centres to 1e-15.

A sparse column among the features (``vectorize_text`` with ``sparse: true``:
``operators.sparse``; text clustering, as scikit-learn's KMeans on a CSR matrix and
MLlib's on SparseVectors) is its terms, features ``<column>:<term>`` of the model. On
NumPy a pass reads the rows as a SciPy CSR matrix and never makes them dense: each row's
nearest centre by ``|c|^2 - 2 x.c`` (a sparse product), its squared distance summed over
its stored values (scikit-learn's sparse inertia), the clusters' sums by a sparse
product, the unit rows of cosine by scaling the stored values. Such rows are not centred
on the training mean: a CSR matrix less its mean is dense. The plain columns beside them
still are (their mean is the model's ``mean``, 0 at the terms), except with cosine, whose
unit rows are within the unit ball, with nothing to cancel (``mean`` all 0). The summary
keeps the variances only (``tol``'s; no co-moment matrix of the terms). The draws read a
few rows made dense (float64, as for plain columns), the driver's centres are dense.
Elsewhere (a GPU, the ``array_api_strict`` stand-in) a partition's rows are made dense in
the pass's matrix, checked against the memory share first. The validation passes read
the held-out rows made dense the same way (evaluate_clusters' statistics are of dense
rows), the memory share checked: a partition's held-out rows too wide for it are a
DataError that says so.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from operators.arrays import compute_dtype, get_namespace, is_cupy, is_numpy, to_numpy, to_xp
from operators.base import (
    DataError,
    Estimator,
    FitProgress,
    ParamError,
    Params,
    register,
    register_fitted,
)
from operators.evaluate.clusters import EvaluateClusters, unmeasurable
from operators.hashing import hash_rows
from operators.models.common import (
    ACCUMULATE_ROWS,
    FEATURE_HINT,
    PREDICTION,
    SCORING_HINT,
    ConvergenceWarning,
    FittedModel,
    check_features,
    check_validation_window,
    check_weight,
    chosen_features,
    combine_comoments,
    comoments,
    feature_matrix,
    held_out,
    holdout_mask,
    host_matrix,
    in_last_iteration,
    kept,
    kept_with,
    parameters,
    put_column,
    require_positive_weight,
    require_some_features,
    require_training_rows,
    row_weights,
    table_memo,
    unit_rows,
    validation_fraction_field,
    validation_start_field,
)
from operators.models.trees import _sparse_product, derived_uniform
from operators.sparse import (
    columns_of,
    csr_matrix,
    groups,
    has_sparse,
    is_sparse_type,
    issparse,
    rows_of,
    scipy_sparse,
)

DISTANCE = "distance"
LOCAL_ITERATIONS = 30
"""Lloyd iterations over the k-means|| candidates on the driver (MLlib's LocalKMeans)."""
EXTRA_ROUNDS = 10
"""k-means|| rounds past ``init_steps`` while fewer than k candidates are found."""
SCAN_CENTRES = 64
"""Up to this many centres a host pass finds each row's nearest by a comparison a
centre over a block's rows; more, by argmin along each row's scores (``_host_pass``;
250,000 rows against 8 centres: 6.4 against 11.2 ms, 64: 21 against 27, 128: 42
against 44)."""
TIE_RTOL = 2.0 ** -32
"""Scores within this of a row's least, relative to ``|x|^2 + max |c|^2`` (the size of
what its score sums), are ties, which go to the first such centre (``nearest``): a
row's exact distances to two centres tie where features are whole counts, and the
rounding that parts them depends on the last bits of the centres and of the training
mean, which depend on the order the partitions' sums were added in. Read exactly, one
partitioning sent such rows to one centre and another to the other (the centres 4.4
apart after k-means|| on 1 and 7 partitions of a count table). Far above the rounding
of a score and of centres summed from millions of rows (~1e-13), far below a distance
that means anything; in float32 64 of its epsilons (``tie_terms``)."""
FEW_ROWS = 64
"""Rows read from a partition by slices rather than a take (``_rows``)."""
_SUMMARY_SALT = 0  # the salts of the rows' uniforms: one per pass that draws rows
HELD_OUT_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
"""What evaluate_clusters measures of the held-out rows (the validation metrics); with
the cosine measure the silhouette only (the others are Euclidean indices)."""
VALIDATION_PHASES = ("validate", "validate_spread")


class KMeansParams(Params):
    k: int = Field(ge=2, description="the number of clusters")
    features: list[str] | None = Field(
        None, min_length=1,
        description="feature columns (default: every numeric column but the weight)")
    weight: str | None = Field(None, description="column of non-negative row weights "
                                                 "(scikit-learn's sample_weight)")
    init: Literal["k-means||", "k-means++", "random"] | list[list[float]] = Field(
        "k-means||", description="the starting centres: k-means|| (MLlib, dask-ml), "
                                 "k-means++ (a pass a centre), random (k rows), or k "
                                 "centres given, one list of feature values each")
    init_steps: int = Field(2, ge=1, description="k-means|| sampling passes (MLlib's "
                                                 "initSteps)")
    max_iter: int = Field(300, ge=1, description="most Lloyd passes (scikit-learn's)")
    tol: float = Field(1e-4, ge=0.0,
                       description="stop when the centres move less than tol x the mean "
                                   "variance of the features (sum of squared moves, "
                                   "scikit-learn's tol); 0: only when they stand still")
    seed: int = Field(0, description="seed of the starting centres (with the rows' content) "
                                     "and of the validation split")
    n_init: int = Field(1, ge=1, description="starts to run from (scikit-learn's n_init): "
                                             "each its own draw of the start, the one of "
                                             "least inertia kept; passes grow with it")
    distance: bool = Field(False, description="also add `distance`: each row's distance to "
                                              "its cluster's centre (Euclidean, or 1 - cos)")
    distance_measure: Literal["euclidean", "cosine"] = Field(
        "euclidean", description="euclidean, or cosine: 1 - cos between a row and a centre, "
                                 "the centres unit vectors (MLlib's distanceMeasure; "
                                 "spherical k-means, for embeddings); a row of zeros is an "
                                 "error")
    validation_fraction: float = validation_fraction_field()
    validation_start: float = validation_start_field()

    @model_validator(mode="after")
    def _given_centres(self) -> KMeansParams:
        check_validation_window(self)
        check_given_points(self.init, self.k, "centres")
        if isinstance(self.init, list) and self.n_init > 1:
            raise ParamError(f"n_init: {self.n_init} starts from the centres init gives "
                             "would all be the same fit",
                             hint="n_init: 1 with given centres, or init: k-means||")
        if (self.distance_measure == "cosine" and isinstance(self.init, list)
                and not np.all(np.any(np.asarray(self.init) != 0, axis=1))):
            raise ParamError("init: a centre of all zeros has no direction for "
                             "distance_measure: cosine", hint="give centres of some length")
        return self


def check_given_points(init: str | list[list[float]], k: int, what: str) -> None:
    """An ``init`` given as a list (``what``: centres, means): k points with one finite
    value per feature each."""
    if not isinstance(init, list):
        return
    if len(init) != k:
        raise ParamError(f"init gives {len(init)} {what} and k is {k}",
                         hint=f"give k {what}, or init: k-means||")
    if len({len(c) for c in init}) != 1 or not init[0]:
        raise ParamError(f"init: the {what} have different numbers of values",
                         hint="one value per feature, in features' order")
    if not np.isfinite(np.asarray(init, dtype=np.float64)).all():
        raise ParamError(f"init: one of the {what} has a NaN or infinite value")


def check_given_width(init: str | list[list[float]], features: list[str], what: str) -> None:
    """Plan time: an ``init`` given as a list has a value per feature."""
    if isinstance(init, list) and len(init[0]) != len(features):
        raise ParamError(f"init: the {what} have {len(init[0])} values and there are "
                         f"{len(features)} features ({', '.join(features)})",
                         hint="one value per feature, in features' order")


def require_rows_for(rows: int, heldout: int, k: int, what: str) -> None:
    """A DataError when fewer training rows than ``k`` are left (``what``: clusters,
    components)."""
    if rows < k:
        raise DataError(f"{rows} training rows for k = {k} {what}"
                        + (f" ({heldout} held out for validation)" if heldout else ""),
                        hint="lower k" + (", or validation_fraction" if heldout else ""))


# --------------------------------------------------------------------------- kernels


def tie_terms(ns: Any, dtype: Any, norms: Any) -> tuple[float, Any]:
    """``(r, s)``: a row's scores within ``r |x|^2 + s`` of its least tie, ``r`` of
    ``TIE_RTOL`` in float64 (64 epsilons in float32), ``s = r max |c|^2`` of the centres'
    squared lengths ``norms``, on their namespace ``ns``."""
    rtol = max(TIE_RTOL, 64.0 * float(ns.finfo(dtype).eps))
    return rtol, rtol * ns.max(norms)


def nearest(X: Any, centres: Any, xp: Any) -> tuple[Any, Any]:
    """Each row's nearest centre and its squared distance to it.

    The nearest by ``|c|^2 - 2 x.c`` (one matmul, as scikit-learn), the distance from the
    difference itself (no cancellation). Scores within a rounding's reach of the least
    (``TIE_RTOL``) tie, and a tie goes to the first centre: the same centre whatever
    the last bits the partitioning left in the centres. ``X`` may be a SciPy CSR matrix
    (on NumPy): ``_sparse_pass``."""
    if issparse(X):
        labels, d2, _ = _sparse_pass(X, None, centres)
        return labels, d2
    if is_numpy(xp):
        labels, d2, _ = _host_pass(X, None, centres)
        return labels, d2
    norms = xp.sum(centres * centres, axis=1)
    scores = norms[None, :] - 2.0 * (X @ centres.T)
    rtol, slack = tie_terms(xp, X.dtype, norms)
    bound = xp.min(scores, axis=1) + (rtol * xp.sum(X * X, axis=1) + slack)
    # the first centre within the bound: argmax of a 0/1 row is its first 1
    labels = xp.argmax(xp.astype(scores <= bound[:, None], xp.int8), axis=1)
    diff = X - xp.take(centres, labels, axis=0)
    # a matmul sums each row's few squares faster than a reduction along the short axis
    return labels, (diff * diff) @ xp.ones(X.shape[1], dtype=X.dtype)


def one_hot(labels: Any, k: int, dtype: Any, xp: Any) -> Any:
    """(rows, k): 1 in each row's cluster's column."""
    return xp.astype(labels[:, None] == xp.arange(k, dtype=labels.dtype)[None, :], dtype)


def block_rows(xp: Any, k: int) -> int:
    """Rows a pass takes at once against ``k`` centres: on the host 16,384, fewer past 64
    centres (the block's scores within 8 MiB), where its temporaries stay in the CPU's
    caches (a pass of 250,000 rows runs twice as fast as over the whole partition at
    once) and its few NumPy calls a block leave the GIL to the partitions on other
    threads (blocks of 4,096 rows: 1.6x the time of 16,384 for 4 partitions on 2
    threads, the same on one); a device's kernels want them many."""
    return ACCUMULATE_ROWS if is_cupy(xp) else max(256, min(1 << 14, (1 << 20) // k))


def assigned(X: Any, w: Any, centres: Any, xp: Any) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """``nearest`` of every row, and per cluster the weighted sums of the rows, the
    weights and the row counts (float64 on the host, accumulated in float64 block by
    block)."""
    if issparse(X):
        return _sparse_pass(X, w, centres)
    if is_numpy(xp) and _sparse_product() is not None:
        return _host_pass(X, w, centres)
    k, d = centres.shape
    labels, d2 = [], []
    sums = xp.zeros((k, d), dtype=xp.float64)
    weights = xp.zeros(k, dtype=xp.float64)
    counts = xp.zeros(k, dtype=xp.float64)
    step = block_rows(xp, k)
    n = X.shape[0]
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows, block_weights = X[start:stop, ...], w[start:stop]
        near, dist = nearest(rows, centres, xp)
        onehot = one_hot(near, k, X.dtype, xp)
        sums = sums + xp.astype(onehot.T @ (rows * block_weights[:, None]), xp.float64)
        weights = weights + xp.astype(block_weights @ onehot, xp.float64)
        counts = counts + xp.sum(onehot, axis=0, dtype=xp.float64)
        labels.append(near)
        d2.append(dist)
    return xp.concat(labels), xp.concat(d2), {
        "sums": to_numpy(sums), "weights": to_numpy(weights), "counts": to_numpy(counts)}


def shared_weights(X: Any, w: Any, centres: Any, xp: Any) -> np.ndarray:
    """The weight of the rows nearest each centre, on the host in float64, a row's weight
    shared equally among the centres it ties between (``nearest``'s ties): k-means||'s
    candidates are rows, all of one length where the rows are unit (TF-IDF, cosine), and
    a text sharing no term with any is at one distance from all; the first of them would
    take every such row's weight and bend the start towards itself. ``X`` may be a SciPy
    CSR matrix (on NumPy)."""
    sparse = issparse(X)
    ns = np if sparse else xp
    k, n = centres.shape[0], X.shape[0]
    dtype = X.dtype
    norms = ns.sum(centres * centres, axis=1)
    scaled = -2.0 * centres.T
    rtol, slack = tie_terms(ns, dtype, norms)
    total = ns.zeros(k, dtype=ns.float64)
    step = block_rows(ns, k)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if sparse:
            rows = X[start:stop]
            scores = np.asarray(rows @ scaled)
            squares = np.asarray(rows.multiply(rows).sum(axis=1)).reshape(-1)
        else:
            rows = X[start:stop, ...]
            scores = rows @ scaled
            squares = ns.sum(rows * rows, axis=1)
        scores = scores + norms[None, :]
        bound = ns.min(scores, axis=1) + (rtol * squares + slack)
        tied = ns.astype(scores <= bound[:, None], dtype)
        share = w[start:stop] / ns.sum(tied, axis=1)
        total = total + ns.astype(share @ tied, ns.float64)
    return to_numpy(total)


def _host_pass(X: np.ndarray, w: np.ndarray | None, centres: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``nearest`` on NumPy and, with weights ``w``, ``assigned``'s sums, a block of
    ``block_rows`` rows at a time in buffers that stay in the CPU's cache (no temporary
    of the partition's size). The same scores (``-2 c`` scales exactly), nearest centres
    and distances as ``nearest``'s; few centres: the scores are laid out a centre a row,
    and each row's nearest is the count of the centres before its first least score (a
    comparison a centre, over the block, where argmin along each short row is slower).
    The sums come from SciPy's sparse product (``trees._sparse_product``): each
    cluster's rows added in row order, in the compute dtype within a block (as the
    one-hot matmul's), the blocks in float64; the weights and counts over the partition
    by ``bincount``, in float64."""
    n, d = X.shape
    k = centres.shape[0]
    dtype = np.result_type(X, centres)
    centres = np.asarray(centres, dtype)
    step = min(block_rows(np, k), max(n, 1))  # buffers no larger than the rows
    scan = k <= SCAN_CENTRES
    scaled = -2.0 * centres
    norms = np.sum(centres * centres, axis=1)
    norms_by_centre = norms[:, None]
    rtol, slack = tie_terms(np, dtype, norms)
    ones = np.ones(d, dtype)
    labels = np.empty(n, np.int64)
    d2 = np.empty(n, dtype)
    scores_buffer = np.empty(k * step, dtype)
    rows_buffer = np.empty(step * d, dtype)
    diff_buffer = np.empty(step * d, dtype)
    least, bound = np.empty(step, dtype), np.empty(step, dtype)
    above, leading = np.empty(step, bool), np.empty(step, bool)
    counted = np.empty(step, np.uint8)
    if w is not None:
        product = _sparse_product()
        w = np.asarray(w, dtype)
        sums = np.zeros((k, d))
        block_sums = np.empty((k, d), dtype)
        starts = np.arange(step + 1, dtype=np.int64)
    for start in range(0, n, step):
        stop = min(start + step, n)
        m = stop - start
        rows = X[start:stop]
        if not rows.flags.c_contiguous or rows.dtype != dtype:  # a training matrix is F-order
            copied = rows_buffer[:m * d].reshape(m, d)
            copied[...] = rows
            rows = copied
        near = labels[start:stop]
        # each row's slack: rtol |x|^2 + slack (its squares through the diff buffer)
        squares = np.multiply(rows, rows, out=diff_buffer[:m * d].reshape(m, d))
        np.matmul(squares, ones, out=bound[:m])
        bound[:m] *= rtol
        bound[:m] += slack
        if scan:
            scores = np.matmul(scaled, rows.T, out=scores_buffer[:k * m].reshape(k, m))
            scores += norms_by_centre
            _first_least(scores, near, least[:m], bound[:m], above[:m], leading[:m],
                         counted[:m])
        else:
            scores = np.matmul(rows, scaled.T, out=scores_buffer[:k * m].reshape(m, k))
            scores += norms
            _first_within(scores, bound[:m], near)
        # mode clip: a take with "raise" buffers its output (the labels are in range)
        diff = np.take(centres, near, axis=0, out=diff_buffer[:m * d].reshape(m, d),
                       mode="clip")
        np.subtract(rows, diff, out=diff)
        np.multiply(diff, diff, out=diff)
        np.matmul(diff, ones, out=d2[start:stop])
        if w is not None:
            block_sums[...] = 0
            product(k, m, d, starts[:m + 1], near, w[start:stop], rows.reshape(-1),
                    block_sums.reshape(-1))
            sums += block_sums
    if w is None:
        return labels, d2, {}
    return labels, d2, {"sums": sums, "weights": np.bincount(labels, weights=w, minlength=k),
                        "counts": np.bincount(labels, minlength=k).astype(np.float64)}


def _sparse_pass(X: Any, w: np.ndarray | None, centres: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``_host_pass`` of a SciPy CSR matrix ``X``, never made dense: each row's nearest
    centre by ``|c|^2 - 2 x.c`` (a sparse product a block of rows, scikit-learn's
    sparse Lloyd), its squared distance ``|x - c|^2`` as scikit-learn's sparse inertia
    sums it (over the row's stored values ``(x - c)^2 - c^2``, plus ``|c|^2``: no
    ``|x|^2`` to cancel); with weights ``w`` the clusters' weighted sums of rows by a
    sparse product (one-hot weights by ``X``), in float64."""
    n = X.shape[0]
    k = centres.shape[0]
    dtype = np.result_type(X.dtype, centres.dtype)
    centres = np.asarray(centres, dtype)
    norms = np.sum(centres * centres, axis=1)
    scaled = np.ascontiguousarray(-2.0 * centres.T)
    labels = np.empty(n, np.int64)
    step = block_rows(np, k)
    rows = rows_of(X.indptr)
    rtol, slack = tie_terms(np, dtype, norms)
    bounds = np.bincount(rows, weights=np.square(X.data, dtype=np.float64), minlength=n)
    bounds = (rtol * bounds + slack).astype(dtype, copy=False)
    for start in range(0, n, step):
        stop = min(start + step, n)
        scores = np.asarray(X[start:stop] @ scaled)
        scores += norms
        _first_within(scores, bounds[start:stop], labels[start:stop])
    at = centres[labels[rows], X.indices]
    diff = X.data - at
    d2 = np.bincount(rows, weights=diff * diff - at * at, minlength=n) + norms[labels]
    d2 = np.maximum(d2, 0.0).astype(dtype, copy=False)
    if w is None:
        return labels, d2, {}
    sp = scipy_sparse()
    w = np.asarray(w, np.float64)
    onehot = sp.csr_matrix((w, (labels, np.arange(n))), shape=(k, n))
    sums = np.asarray((onehot @ X.astype(np.float64, copy=False)).toarray())
    return labels, d2, {"sums": sums, "weights": np.bincount(labels, weights=w, minlength=k),
                        "counts": np.bincount(labels, minlength=k).astype(np.float64)}


def sparse_rows(part: pa.Table, features: list[str], shift: np.ndarray | None,
                cosine: bool, dtype: Any, hint: str = FEATURE_HINT) -> Any:
    """The features of ``part`` as a SciPy CSR matrix in ``dtype``: the plain columns
    less ``shift`` (their training mean), a sparse column's positions as they are;
    ``cosine``: the rows made unit (then ``shift`` is None or zeros: unit rows are not
    centred where a sparse column is among them)."""
    X = csr_matrix(part, features, dtype, hint,
                   None if shift is None or cosine else np.asarray(shift, np.float64))
    return unit_rows(X, features, None, "kmeans (cosine)") if cosine else X


def _first_within(scores: np.ndarray, bound: np.ndarray, near: np.ndarray) -> None:
    """Into ``near``: the first centre of each row of ``scores`` (rows by centres) within
    ``bound`` of the row's least score (``nearest``'s ties)."""
    least = np.min(scores, axis=1)
    least += bound
    np.argmax(scores <= least[:, None], axis=1, out=near)


def _first_least(scores: np.ndarray, near: np.ndarray, least: np.ndarray, bound: np.ndarray,
                 above: np.ndarray, leading: np.ndarray, counted: np.ndarray) -> None:
    """Into ``near``: the first centre of each column of ``scores`` (centres by rows)
    within ``bound`` of the column's least score (``nearest``'s ties), as the count of
    the centres before it, all of greater score (counted in bytes: ``SCAN_CENTRES`` is
    below 256)."""
    np.minimum.reduce(scores, axis=0, out=least)
    least += bound
    np.greater(scores[0], least, out=leading)
    np.copyto(counted, leading.view(np.uint8))
    for j in range(1, scores.shape[0] - 1):
        np.greater(scores[j], least, out=above)
        np.logical_and(leading, above, out=leading)
        np.add(counted, leading.view(np.uint8), out=counted)
    near[...] = counted


def lloyd(points: np.ndarray, weights: np.ndarray, centres: np.ndarray, iterations: int,
          cosine: bool = False) -> np.ndarray:
    """Weighted Lloyd iterations over a few points on the driver (an empty cluster keeps
    its centre), until the centres stand still; ``cosine``: the points unit rows and the
    centres made unit after each move (MLlib's LocalKMeans with the cosine measure)."""
    xp = get_namespace("numpy")
    for _ in range(iterations):
        _, _, sums = assigned(points, weights, centres, xp)
        held = sums["weights"] > 0
        moved = centres.copy()
        moved[held] = sums["sums"][held] / sums["weights"][held, None]
        if cosine:
            moved = unit_centres(moved)
        if np.array_equal(moved, centres):
            break
        centres = moved
    return centres


def unit_centres(centres: np.ndarray) -> np.ndarray:
    """Centres (k, d) as unit vectors: the cosine measure's centre of a cluster is the
    direction of its rows' mean direction (MLlib's CosineDistanceMeasure.centroid); a
    mean of length 0 (rows that cancel out) is left as it is."""
    norms = np.sqrt(np.sum(centres * centres, axis=1))
    return centres / np.where(norms > 0, norms, 1.0)[:, None]


def plus_plus(points: np.ndarray, weights: np.ndarray, k: int,
              rng: np.random.Generator) -> np.ndarray:
    """k of ``points`` by weighted k-means++, greedy as scikit-learn's: each step draws
    ``2 + log k`` points with probability proportional to ``weight x d^2`` and keeps the
    one that lowers the weighted cost most."""
    trials = 2 + int(math.log(k))
    chosen = [int(rng.choice(len(points), p=weights / weights.sum()))]
    closest = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    for _ in range(1, k):
        mass = np.cumsum(weights * closest)
        draws = np.searchsorted(mass, rng.uniform(size=trials) * mass[-1], side="right")
        draws = np.minimum(draws, len(points) - 1)
        tried = np.minimum(closest[None, :], np.sum(
            (points[draws][:, None, :] - points[None, :, :]) ** 2, axis=2))
        best = int(np.argmin(tried @ weights))
        chosen.append(int(draws[best]))
        closest = tried[best]
    return points[chosen]


# --------------------------------------------------------------------------- rows drawn


def _uniforms(part: pa.Table, columns: list[str], seed: int, salt: int) -> np.ndarray:
    """A uniform [0, 1) per row from a hash of ``columns`` and ``seed``, one stream per
    ``salt`` (the row hashes kept with the table for the next pass)."""
    memo = table_memo(part).setdefault("kmeans_hashes", {})
    hashes = memo.get((tuple(columns), seed))
    if hashes is None:
        hashes = memo[(tuple(columns), seed)] = hash_rows(part, columns, seed)
    return derived_uniform(hashes, salt)


def _rows(part: pa.Table, features: list[str], at: np.ndarray) -> np.ndarray:
    """The features of rows ``at`` as float64 from the columns (exact, whatever the
    compute dtype; a sparse column's few rows made dense). A few rows are slices: a take
    from a table of several chunks costs about a millisecond whatever the rows (a Lloyd
    pass reads one, its farthest)."""
    at = np.asarray(at, dtype=np.int64)
    if len(at) > FEW_ROWS:
        return host_matrix(part.take(pa.array(at)), features)
    rows = part.select(columns_of(part.schema, features))
    return host_matrix(pa.concat_tables([rows.slice(0, 0)] + [rows.slice(int(i), 1) for i in at]),
                       features)


def _ordered(keys: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The order of rows by ``keys`` (the first first), then by their values: the same
    order whatever order they came in. The values are sorted by only where the keys tie
    (a sparse column's thousands of terms are as many sort keys)."""
    if not len(rows):
        return np.zeros(0, np.int64)
    order = np.lexsort(list(reversed(keys)))
    ties = np.ones(len(order) - 1, bool)
    for key in keys:
        ranked = key[order]
        ties &= ranked[1:] == ranked[:-1]
    if not ties.any():
        return order
    columns = [rows[:, j] for j in range(rows.shape[1] - 1, -1, -1)]
    return np.lexsort([*columns, *reversed(keys)])


def _distinct(order: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``order`` without a row whose values an earlier one has (-0.0 is 0.0)."""
    seen: set[bytes] = set()
    kept = []
    for i in order:
        key = (rows[i] + 0.0).tobytes()  # + 0.0: -0.0's bytes become 0.0's
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def drawn(keys: np.ndarray, rows: np.ndarray, m: int) -> dict[str, np.ndarray]:
    """The ``m`` distinct rows of largest keys (ties by value)."""
    order = _distinct(_ordered([-keys], rows), rows)[:m]
    return {"keys": keys[order], "rows": rows[order]}


def combine_drawn(a: dict[str, np.ndarray], b: dict[str, np.ndarray], m: int
                  ) -> dict[str, np.ndarray]:
    return drawn(np.concatenate([a["keys"], b["keys"]]),
                 np.concatenate([a["rows"], b["rows"]]), m)


def _top_keys(part: pa.Table, read: Any, keys: np.ndarray, m: int) -> dict[str, np.ndarray]:
    """``drawn`` of a partition by host keys (-inf: never): rows read as needed (``read``
    of their positions), in the order of the keys (largest first, ties by position),
    sorted as far as read."""
    order = _largest_first(keys, 2 * m)
    found = {"keys": np.zeros(0), "rows": read(np.zeros(0, np.int64))}
    start = 0
    while len(found["keys"]) < m:
        if start + 2 * m > len(order) and len(order) < len(keys):
            order = np.argsort(-keys, kind="stable")  # copies of rows: read on
        at = order[start:start + 2 * m]
        at = at[np.isfinite(keys[at])]  # -inf last: none after the first
        if not len(at):
            break
        found = combine_drawn(found, drawn(keys[at], read(at), m), m)
        start += 2 * m
    return found


def _largest_first(keys: np.ndarray, first: int) -> np.ndarray:
    """The start of ``argsort(-keys, kind="stable")`` that holds its ``first`` positions
    and all whose keys equal the last of them, without sorting the others (a pass's
    start draws one row of a partition's many)."""
    n = len(keys)
    if 4 * first >= n:
        return np.argsort(-keys, kind="stable")
    at = np.flatnonzero(keys >= np.partition(keys, n - first)[n - first])
    return at[np.argsort(-keys[at], kind="stable")]


# --------------------------------------------------------------------------- fitted


@register_fitted("kmeans.fitted")
class KMeansFitted(FittedModel):
    """``prediction``: the nearest centre's position (int64); ``distance`` (when asked):
    the Euclidean distance to it, or with ``cosine`` 1 - cos (the rows made unit first,
    the centres unit: half their squared distance). ``mean``: the training rows' mean,
    which distances are computed from (precision); 0 at a sparse column's positions (and
    everywhere with ``cosine`` where a sparse column is among the features): such rows
    are not centred (``KMeans``)."""

    supervised = False
    takes_sparse = True  # nearest() of a SciPy CSR matrix too

    def __init__(self, features: list[str], centres: np.ndarray, mean: np.ndarray,
                 distance: bool = False, cosine: bool = False):
        super().__init__(features)
        self.centres = np.asarray(centres, dtype=np.float64).reshape(-1, len(self.features))
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.distance = bool(distance)
        self.cosine = bool(cosine)

    def __repr__(self) -> str:
        return f"KMeansFitted(features={self.features!r}, k={len(self.centres)})"

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The columns besides ``prediction`` this model adds (score keeps them)."""
        return (DISTANCE,) if self.distance else ()

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_features(schema, self.features, fitted=True)
        return clustered_schema(schema, self.distance)

    def assign(self, part: pa.Table, xp: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each row's cluster (int64) and squared distance to its centre, on the host (on
        NumPy a sparse column's rows as they are: a SciPy CSR matrix)."""
        if is_numpy(xp) and scipy_sparse() is not None and has_sparse(part.schema,
                                                                      self.features):
            X = sparse_rows(part, self.features, self.mean, self.cosine, compute_dtype(xp),
                            SCORING_HINT)
            labels, d2 = nearest(X, parameters(self.centres - self.mean, xp), xp)
            return labels, d2.astype(np.float64)
        labels, d2 = self.nearest_of(feature_matrix(part, self.features, xp), xp)
        # one transfer back: the labels are exact in either float dtype (k < 2^24)
        both = to_numpy(xp.stack([xp.astype(labels, d2.dtype), d2]))
        return both[0].astype(np.int64), both[1].astype(np.float64)

    def nearest_of(self, X: Any, xp: Any) -> tuple[Any, Any]:
        """``nearest`` of the rows of ``X`` (the features as given, on ``xp``; with
        ``cosine``, made unit), their distances computed from the training mean."""
        X = self._directions(X, xp)
        return nearest(X - parameters(self.mean, xp), parameters(self.centres - self.mean, xp),
                       xp)

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        """The nearest centre of each row of ``X`` (the features as given)."""
        return nearest(self._directions(X, xp), parameters(self.centres, xp), xp)[0]

    def _directions(self, X: Any, xp: Any) -> Any:
        return unit_rows(X, self.features, xp, "kmeans (cosine)") if self.cosine else X

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        check_features(part.schema, self.features, fitted=True)
        labels, d2 = self.assign(part, xp)
        out = put_column(part, pa.field(PREDICTION, pa.int64()), pa.array(labels))
        if self.distance:
            out = put_column(out, pa.field(DISTANCE, pa.float64()),
                             pa.array(d2 / 2.0 if self.cosine else np.sqrt(d2)))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centres": self.centres, "mean": self.mean}

    def meta(self) -> dict[str, Any]:
        # a Euclidean model's meta as before the measure was a choice
        return {**super().meta(), "distance": self.distance,
                **({"distance_measure": "cosine"} if self.cosine else {})}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> KMeansFitted:
        return cls(list(meta["features"]), arrays["centres"], arrays["mean"],
                   bool(meta.get("distance", False)),
                   meta.get("distance_measure", "euclidean") == "cosine")


def clustered_schema(schema: pa.Schema, distance: bool) -> pa.Schema:
    """``schema`` with ``prediction`` (int64) and, when asked, ``distance`` (float64): in
    place where it has them, else at the end."""
    fields = [pa.field(PREDICTION, pa.int64())] + (
        [pa.field(DISTANCE, pa.float64())] if distance else [])
    for field in fields:
        at = schema.get_field_index(field.name)
        schema = schema.set(at, field) if at >= 0 else schema.append(field)
    return schema


# --------------------------------------------------------------------------- estimator


def start_pass_progress(started: int, starts: int, name: str, passes: int, at_most: int) -> str:
    """Where an iterative fit of several starts is: '[start 2 of 3, ]Lloyd pass 12 of
    at most 300' (``started``: the starts done; ``passes``: the start's passes done)."""
    start = f"start {started + 1} of {starts}, " if starts > 1 else ""
    return f"{start}{name} pass {passes + 1} of at most {at_most}"


@register("kmeans")
class KMeans(Estimator):
    """k-means clustering: adds `prediction`, the cluster of each row (MLlib's KMeans).

    ```yaml
    - op: standard_scale          # k-means measures plain Euclidean distances
      columns: [tenure, monthly_charges, total_charges]
    - op: kmeans
      features: [tenure, monthly_charges, total_charges]   # default: every numeric column
      k: 8
      init: k-means||             # k-means++ | random | [[...], ...] (k centres)
      max_iter: 300               # Lloyd passes at most; tol: 1.0e-4 (scikit-learn's)
      seed: 1                     # the start, drawn by row content: the same everywhere
      distance: true              # also each row's distance to its centre
      validation_fraction: 0.2    # rows held out (by row hash and seed), measured after
    ```
    With `validation_fraction` the fit leaves out the rows a supervised model would
    hold out, and its record's `validation` has how the fitted centres cluster them:
    the silhouette (squared Euclidean, as `evaluate_clusters`), calinski_harabasz,
    davies_bouldin, the inertia per row (weighted), count, clusters and cluster_sizes;
    `tune: {k: [2, 3, 4, 5, 6]}` compares values of k by them (the silhouette unless
    `tune_metric` says otherwise). Held-out rows all in one cluster (or each in its
    own) have no silhouette: NaN, and `undefined` says why (such a candidate loses).
    The run record has the inertia (scikit-learn's name; MLlib's trainingCost: the
    weighted sum of squared distances to the centres), the iterations, the cluster
    sizes and whether it converged. Clusters are numbered in the order the start chose
    them. A model of no label: `score` and `sluice serve` give its clusters; `promote`
    has nothing to compare them with. `distance_measure: cosine` clusters the rows'
    directions (embeddings; MLlib's distanceMeasure): unit centres, `distance` 1 - cos,
    the inertia the sum of 1 - cos, the held-out silhouette the cosine one; no row may be
    all zeros. A sparse column of terms among the features (`vectorize_text` with
    `sparse: true`: text clustering, scikit-learn's KMeans on a CSR matrix) is clustered
    by its terms, `<column>:<term>` in the model; on the CPU its rows are never made dense.
    """

    float32 = True  # docs/float32.md

    Params = KMeansParams
    noun = "clusters"
    """What its errors call the k things it starts (gaussian_mixture's start: components)."""
    multi_pass = True

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The columns besides ``prediction`` the fitted model adds."""
        return (DISTANCE,) if self.params.distance else ()

    @property
    def _cosine(self) -> bool:
        """Cosine: Euclidean k-means of the rows made unit, the centres made unit after
        the start and each move (``|a - c|^2 = 2 - 2 cos`` of unit vectors)."""
        return self.params.distance_measure == "cosine"

    @property
    def _cost(self) -> float:
        """A row's cost per squared distance: with cosine, 1 - cos is half the squared
        distance of unit vectors (the inertia is then MLlib's cosine trainingCost)."""
        return 0.5 if self._cosine else 1.0

    def _directions(self, X: Any, state: dict[str, Any], xp: Any) -> Any:
        """The rows of a pass's features: as read, or with cosine made unit."""
        return unit_rows(X, state["features"], xp, "kmeans (cosine)") if self._cosine else X

    def _read(self, part: pa.Table, state: dict[str, Any], at: Any) -> np.ndarray:
        """``_rows`` of the features, as a pass sees them (``_directions``)."""
        return self._directions(_rows(part, state["features"], at), state, np)

    def _features(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return chosen_features(schema, p.features, {p.weight}, sparse=True)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return (columns_of(schema, self._features(schema))
                + ([self.params.weight] if self.params.weight else []))

    def _check(self, schema: pa.Schema) -> list[str]:
        p = self.params
        features = self._features(schema)
        check_weight(schema, p.weight, p.features)
        require_some_features(features)  # after a fit that adds them: at run time
        check_features(schema, features)
        if not any(is_sparse_type(schema.field(f).type) for f in features
                   if f in schema.names):  # (a sparse column's terms not fitted yet)
            check_given_width(p.init, features, "centres")
        return features

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self._check(schema)
        return clustered_schema(schema, self.params.distance)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = self._check(schema)
        state: dict[str, Any] = {"phase": "summary", "features": features}
        sparse = [[start, stop] for column, start, stop in groups(schema, features)
                  if column is not None]
        if sparse:
            state["sparse"] = sparse
        if self.params.validation_fraction > 0:
            state["held_out"] = _measuring(features, self._cosine).init(clustered_schema(
                pa.schema([pa.field(f, pa.float64()) for f in features]), False))
        return state

    # ------------------------------------------------------------------ partitions

    def _matrix(self, part: pa.Table, state: dict[str, Any], xp: Any,
                salt: int | None = None) -> tuple[Any, Any, Any]:
        """The features (less the training mean), the weights and (with ``salt``) the
        rows' uniforms on ``xp``: one copy to the device."""
        features = state["features"]
        uniforms = None if salt is None else _uniforms(part, self._hashed(part, features),
                                                       draw_seed(self.params.seed, state), salt)
        if is_numpy(xp):
            X, w = self._host_matrix(part, state, xp)
            return X, w, None if uniforms is None else np.asarray(uniforms, compute_dtype(xp))
        extra = [row_weights(part, self.params.weight)]
        if uniforms is not None:
            extra.append(uniforms)
        data = feature_matrix(part, features, xp, extra)
        d = len(features)
        X = self._directions(data[:, :d], state, xp) - parameters(state["mean"], xp)
        return X, data[:, d], data[:, d + 1] if salt is not None else None

    def _host_matrix(self, part: pa.Table, state: dict[str, Any], xp: Any
                     ) -> tuple[np.ndarray, np.ndarray]:
        """``_matrix``'s features and weights on NumPy, kept with the table for the next
        pass (the local engine's and resident fits' passes get the same table object):
        a pass then reads the matrix instead of copying and checking the columns again.
        The summary pass keeps its matrix, which the next takes the mean from in place.
        Kept through ``kept_with`` (at most ``MEMO_FACTOR`` times the table's bytes,
        within the process's kept budget), one matrix a table (another fit's replaces
        it); exactly what a pass would make again."""
        mean = state["mean"]
        # read before kept_with, which lets another key's matrix go before it makes one
        summary = kept(part, "kmeans_matrix", self._matrix_key(state, xp, None))

        def make() -> tuple[Any, np.ndarray]:
            if "sparse" in state and not (summary is not None and not np.any(mean)):
                # a CSR matrix is not shifted in place: made again with its plain columns
                # less their means (the summary's, of none, serves where the means are 0)
                return self._features_weights(part, state, xp, shift=mean)
            if summary is not None:  # the summary pass's, taken over: shifted in place
                X, w = summary
                if not issparse(X):
                    X -= parameters(mean, xp)
                return X, w
            X, w = self._features_weights(part, state, xp)
            X -= parameters(mean, xp)
            return X, w

        return kept_with(part, "kmeans_matrix", self._matrix_key(state, xp, mean), make)

    def _features_weights(self, part: pa.Table, state: dict[str, Any], xp: Any,
                          weights: np.ndarray | None = None, shift: np.ndarray | None = None
                          ) -> tuple[Any, Any]:
        """The features and the weights (``row_weights``) on ``xp``, in one copy to it;
        on NumPy with a sparse column among the features a SciPy CSR matrix (its plain
        columns less ``shift``)."""
        if weights is None:
            weights = row_weights(part, self.params.weight)
        if "sparse" in state and is_numpy(xp) and scipy_sparse() is not None:
            dtype = compute_dtype(xp)
            return (sparse_rows(part, state["features"], shift, self._cosine, dtype),
                    np.asarray(weights, dtype))
        data = feature_matrix(part, state["features"], xp, [weights])
        d = len(state["features"])
        return self._directions(data[:, :d], state, xp), data[:, d]

    def _matrix_key(self, state: dict[str, Any], xp: Any, mean: Any) -> tuple[Any, ...]:
        """What a kept matrix is of: the features, weight, measure (unit rows or not) and
        dtype, less ``mean``."""
        return (tuple(state["features"]), self.params.weight, self._cosine,
                str(compute_dtype(xp)),
                None if mean is None else np.asarray(mean, dtype=np.float64).tobytes())

    def _hashed(self, part: pa.Table, features: list[str]) -> list[str]:
        """The columns of the rows' content: the features' (a sparse column once) and
        the weight."""
        return (columns_of(part.schema, features)
                + ([self.params.weight] if self.params.weight else []))

    def _centres(self, state: dict[str, Any], key: str, xp: Any) -> Any:
        return parameters(np.asarray(state[key]) - state["mean"], xp)

    def _training_rows(self, part: pa.Table, state: dict[str, Any]) -> pa.Table:
        """The rows the fit trains on: those ``validation_fraction`` does not hold out
        (a supervised model's split), of the columns the fit reads; kept with the table
        (``kept_with``, within its budget), so every pass gets the same table object
        (the matrix ``_host_matrix`` keeps is kept with it) and filters once. One split
        a table: a fold's replaces another's."""
        p = self.params
        if p.validation_fraction <= 0:
            return part
        columns = self._hashed(part, state["features"])
        key = (p.validation_fraction, p.seed, p.validation_start, tuple(columns))

        def make() -> pa.Table:
            mask = holdout_mask(part, p.validation_fraction, p.seed, p.validation_start)
            return part.select(columns).filter(pa.array(~mask))

        return kept_with(part, "kmeans_training", key, make)

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        phase = state["phase"]
        if phase in VALIDATION_PHASES:
            return self._validation(part, state, xp)
        whole, part = part, self._training_rows(part, state)
        if phase == "summary":
            return {**self._summary(part, state, xp), "heldout": whole.num_rows - part.num_rows}
        if part.num_rows == 0:
            return self._nothing(state)
        if phase == "sample":
            return self._sample(part, state, xp)
        if phase == "pick":
            return self._pick(part, state, xp)
        X, w, _ = self._matrix(part, state, xp)
        if phase == "weigh":
            return {"weights": shared_weights(X, w, self._centres(state, "candidates", xp),
                                             xp)}
        centres = self._centres(state, "centres", xp)
        if phase == "relocate":
            labels, d2 = nearest(X, centres, xp)
            return {"far": self._farthest(part, state, labels, d2, w, state["empty"], xp),
                    "empty": state["empty"]}
        labels, d2, out = assigned(X, w, centres, xp)
        out["inertia"] = float(xp.sum(w * d2, dtype=xp.float64))
        out["far"] = self._farthest(part, state, labels, d2, w, 1, xp)
        return out

    def _nothing(self, state: dict[str, Any]) -> dict[str, Any]:
        """The stats of an empty partition: the identity of ``combine``."""
        phase, k, d = state["phase"], self.params.k, len(state["features"])
        no_rows = np.zeros((0, d))
        if phase == "sample":
            return {"phi": 0.0, "rows": no_rows, "u": np.zeros(0), "wd2": np.zeros(0)}
        if phase == "pick":
            return {"keys": np.zeros(0), "rows": no_rows}
        if phase == "weigh":
            return {"weights": np.zeros(len(state["candidates"]))}
        far = {"d2": np.zeros(0), "rows": no_rows, "labels": np.zeros(0, np.int64),
               "weights": np.zeros(0)}
        if phase == "relocate":
            return {"far": far, "empty": state["empty"]}
        return {"sums": np.zeros((k, d)), "weights": np.zeros(k), "counts": np.zeros(k),
                "inertia": 0.0, "far": far}

    def _summary(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        features, p = state["features"], self.params
        weights = row_weights(part, p.weight)
        X, w = self._features_weights(part, state, xp, weights)
        host = is_numpy(xp)
        if host:
            kept_with(part, "kmeans_matrix", self._matrix_key(state, xp, None),
                      lambda: (X, w))
        # on the host a block of rows at a time: no temporaries of the partition's size;
        # with a sparse column the variances only (tol's), not a co-moment of its terms
        moments = comoments(X, w, xp, block_rows=1 << 12 if host else None,
                            diagonal="sparse" in state)
        out = {"rows": part.num_rows, "moments": moments}
        if isinstance(p.init, str):
            # a row with probability proportional to its weight: the largest log(u) / w
            u = _uniforms(part, self._hashed(part, features), draw_seed(p.seed, state),
                          _SUMMARY_SALT)
            with np.errstate(divide="ignore"):
                keys = np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1),
                                -np.inf)
            out["drawn"] = _top_keys(part, lambda at: self._read(part, state, at), keys,
                                     p.k if p.init == "random" else 1)
        return out

    def _sample(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        """k-means||: the partition's cost and the rows drawn, each with probability
        ``l w d^2 / phi``; the partition's own cost stands for ``phi`` (the total is
        larger), so the rows kept include every row the total will draw."""
        X, w, u = self._matrix(part, state, xp, salt=state["round"])
        _, d2 = nearest(X, self._centres(state, "candidates", xp), xp)
        wd2 = w * d2
        phi = float(xp.sum(wd2, dtype=xp.float64))
        # in float64, as the driver's test of the same u and w d^2 against the total phi:
        # rounding is monotone there, so no row the total draws is left out (in float32
        # a row within a rounding of the bound could be, on one partitioning only)
        u64, wd2_64 = xp.astype(u, xp.float64), xp.astype(wd2, xp.float64)
        at = xp.nonzero(u64 * phi < (2.0 * self.params.k) * wd2_64)[0]
        drawn_rows = {"phi": phi, "rows": self._read(part, state, to_numpy(at)),
                      "u": to_numpy(xp.take(u, at)).astype(np.float64),
                      "wd2": to_numpy(xp.take(wd2, at)).astype(np.float64)}
        return _combine_sampled(drawn_rows, self._nothing(state), 2.0 * self.params.k)

    def _pick(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        """k-means++: the partition's row of largest ``log(u) / (w d^2)``."""
        X, w, u = self._matrix(part, state, xp, salt=state["round"])
        _, d2 = nearest(X, self._centres(state, "centres", xp), xp)
        wd2 = w * d2
        drawable = wd2 > 0
        tiny = float(np.finfo(compute_dtype(xp)).tiny)
        keys = xp.where(drawable, xp.log(xp.maximum(u, tiny)) / xp.where(drawable, wd2, 1.0),
                        -xp.inf)
        top = xp.max(keys)
        at = to_numpy(xp.nonzero(drawable & (keys == top))[0])
        return {"keys": np.full(len(at), float(top)), "rows": self._read(part, state, at)}

    def _farthest(self, part: pa.Table, state: dict[str, Any], labels: Any, d2: Any,
                  w: Any, m: int, xp: Any) -> dict[str, np.ndarray]:
        """The ``m`` rows of positive weight farthest from their centres (all that tie
        with the m-th), where any is away from it."""
        dist = xp.where(w > 0, d2, -1.0)
        if m == 1:
            bound = xp.max(dist)
        else:
            ranked = xp.sort(dist)
            bound = ranked[max(ranked.shape[0] - m, 0)]
        at = xp.nonzero((dist >= bound) & (dist > 0))[0]
        return top_far({"d2": to_numpy(xp.take(dist, at)).astype(np.float64),
                        "rows": self._read(part, state, to_numpy(at)),
                        "labels": to_numpy(xp.take(labels, at)).astype(np.int64),
                        "weights": to_numpy(xp.take(w, at)).astype(np.float64)},
                       self.params.k if m == 1 else m, m == 1)

    def _validation(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        """A validation pass over the partition's held-out rows: each row's cluster by
        the fitted centres (as ``score`` gives it), then evaluate_clusters' statistics of
        the rows in those clusters, in float64; the first pass also the clusters' sizes
        and the rows' weighted squared distances to their centres."""
        measuring, first = _measuring(cosine=self._cosine), state["phase"] == "validate"
        held = held_out(part, self.params)[1]
        k, d = self.params.k, len(state["features"])
        if held.num_rows == 0:
            out = {"measured": measuring.measure(pa.array([], pa.int64()), None,
                                                 state["held_out"], xp)}
            return {**out, "sizes": np.zeros(k), "inertia": 0.0, "weight": 0.0} if first else out
        data = feature_matrix(held, state["features"], xp, [row_weights(held, self.params.weight)])
        X, w = data[:, :d], data[:, d]
        labels, d2 = self.fitted(state).nearest_of(X, xp)
        ids = to_numpy(labels).astype(np.int64)
        X = X if X.dtype == xp.float64 else xp.astype(X, xp.float64)
        weights = None
        if self.params.weight is not None:  # measured as evaluate_clusters' weight does
            weights = to_numpy(w).astype(np.float64)
            if not (weights > 0).all():  # a row of no weight is not there to measure
                kept = np.flatnonzero(weights > 0)
                weights, X = weights[kept], xp.take(X, to_xp(kept, xp), axis=0)
                ids = ids[kept]
        out = {"measured": measuring.measure(pa.array(ids), X, state["held_out"], xp, weights)}
        if first:
            out.update(sizes=np.bincount(to_numpy(labels).astype(np.int64),
                                         minlength=k).astype(np.float64),
                       inertia=float(xp.sum(w * d2, dtype=xp.float64)),
                       weight=float(xp.sum(w, dtype=xp.float64)))
        return out

    # ------------------------------------------------------------------ combine

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "measured" in a:
            out = {"measured": _measuring().combine(a["measured"], b["measured"])}
            if "sizes" in a:
                out.update({key: a[key] + b[key] for key in ("sizes", "inertia", "weight")})
            return out
        if "moments" in a:
            out = {"rows": a["rows"] + b["rows"], "heldout": a["heldout"] + b["heldout"],
                   "moments": combine_comoments(a["moments"], b["moments"])}
            if "drawn" in a:
                m = self.params.k if self.params.init == "random" else 1
                out["drawn"] = combine_drawn(a["drawn"], b["drawn"], m)
            return out
        if "phi" in a:
            return _combine_sampled(a, b, 2.0 * self.params.k)
        if "keys" in a:
            return combine_drawn(a, b, 1)
        if "sums" not in a and "far" not in a:
            return {"weights": a["weights"] + b["weights"]}
        if "sums" not in a:  # a relocate pass: the rows farthest from their centres
            return {"far": _combine_far(a["far"], b["far"], a["empty"], False),
                    "empty": a["empty"]}
        far = _combine_far(a["far"], b["far"], self.params.k, True)
        return {"sums": a["sums"] + b["sums"], "weights": a["weights"] + b["weights"],
                "counts": a["counts"] + b["counts"], "inertia": a["inertia"] + b["inertia"],
                "far": far}

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        phase = state["phase"]
        if phase in VALIDATION_PHASES:
            state = self._measured(stats, state)
            return state, state["phase"] == "done"
        if phase == "summary":
            return self._started(stats, state), False
        if phase == "sample":
            return self._sampled(stats, state), False
        if phase == "weigh":
            return self._weighed(stats, state), False
        if phase == "pick":
            return self._picked(stats, state), False
        if phase == "relocate":
            state = self._moved({**state["pass"], "far": stats["far"]}, state)
        elif state.get("final"):
            state = self._finish(stats, state)
        else:
            state = self._moved(stats, state)
        return state, state["phase"] == "done"

    def _started(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        moments = stats["moments"]
        require_training_rows(stats["rows"], stats["heldout"])
        require_rows_for(stats["rows"], stats["heldout"], p.k, self.noun)
        require_positive_weight(moments["weight"], p.weight)
        comoment = moments["comoment"]
        variance = (np.diag(comoment) if comoment.ndim == 2 else comoment) / moments["weight"]
        state = {**state, "rows": stats["rows"], "heldout": stats["heldout"],
                 "mean": self._centre_of(moments["mean"], state),
                 "tol": float(np.mean(variance)) * p.tol, "init_passes": 1}
        if isinstance(p.init, list):
            return self._lloyd(state, np.asarray(p.init, dtype=np.float64))
        first = stats["drawn"]["rows"]
        if p.init == "random":
            if len(first) < p.k:
                _too_few(len(first), p.k, self.noun)
            return self._lloyd(state, first)
        if p.init == "k-means++":
            return {**state, "phase": "pick", "round": 1, "centres": first}
        return {**state, "phase": "sample", "round": 1, "candidates": first}

    def _centre_of(self, mean: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """What the rows are centred on: their mean, but 0 at a sparse column's positions
        (a CSR matrix less its mean would be dense) and, with cosine, everywhere where a
        sparse column is among the features (unit rows, within the unit ball: nothing to
        cancel)."""
        if "sparse" not in state:
            return mean
        mean = np.array(mean, dtype=np.float64)
        if self._cosine:
            return np.zeros_like(mean)
        for start, stop in state["sparse"]:
            mean[start:stop] = 0.0
        return mean

    def _sampled(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        keep = stats["u"] * stats["phi"] < 2.0 * p.k * stats["wd2"]
        found = np.concatenate([state["candidates"], stats["rows"][keep]])
        candidates = found[np.sort(_distinct(np.arange(len(found)), found))]
        state = {**state, "candidates": candidates, "round": state["round"] + 1,
                 "init_passes": state["init_passes"] + 1}
        if state["round"] <= p.init_steps:
            return state
        if len(candidates) >= p.k:
            return {**state, "phase": "weigh"}
        if stats["phi"] == 0:  # every row is a candidate's point
            _too_few(len(candidates), p.k, self.noun)
        if state["round"] > p.init_steps + EXTRA_ROUNDS:
            # rows away from the candidates remain (copies of a row share their uniform,
            # so many copies are missed together): k-means++ draws, one distinct row a
            # pass, complete the k
            return {**state, "phase": "pick", "centres": candidates}
        return state  # another round: too few candidates for k centres

    def _weighed(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        points, weights = state["candidates"], stats["weights"]
        held = weights > 0
        points, weights = points[held], weights[held]
        if len(points) < p.k:
            _too_few(len(points), p.k, self.noun)
        centres = plus_plus(points, weights, p.k,
                            np.random.default_rng(draw_seed(p.seed, state)))
        centres = lloyd(points, weights, centres, LOCAL_ITERATIONS, self._cosine)
        state = {k: v for k, v in state.items() if k != "candidates"}
        return self._lloyd({**state, "init_passes": state["init_passes"] + 1}, centres)

    def _picked(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        if len(stats["rows"]) == 0:
            _too_few(len(state["centres"]), p.k, self.noun)
        centres = np.concatenate([state["centres"], stats["rows"][:1]])
        state = {**state, "init_passes": state["init_passes"] + 1}
        if len(centres) < p.k:
            return {**state, "centres": centres, "round": state["round"] + 1}
        return self._lloyd(state, centres)

    def _lloyd(self, state: dict[str, Any], centres: np.ndarray) -> dict[str, Any]:
        state = {k: v for k, v in state.items() if k != "round"}
        centres = np.asarray(centres, dtype=np.float64)
        if self._cosine:
            centres = unit_centres(centres)
        return {**state, "phase": "lloyd", "centres": centres, "initial": centres,
                "iterations": 0}

    def _moved(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The centres after a Lloyd pass: each cluster's mean, an empty one moved to a
        row far from its centre (scikit-learn's rule; one pass more when the pass's
        farthest row is not enough)."""
        p = self.params
        sums, weights = stats["sums"].copy(), stats["weights"].copy()
        empty = np.flatnonzero(weights == 0)
        far = stats["far"]
        if len(empty) > len(far["d2"]) and state["phase"] != "relocate":
            return {**state, "phase": "relocate", "empty": len(empty), "pass": stats}
        shift = state["mean"]  # sums are of the rows less the mean
        for cluster, row, label, weight in zip(empty, far["rows"], far["labels"],
                                               far["weights"]):
            sums[label] -= (row - shift) * weight
            weights[label] -= weight
            sums[cluster] = (row - shift) * weight
            weights[cluster] = weight
        old = state["centres"]
        held = weights > 0
        centres = old.copy()
        centres[held] = shift + sums[held] / weights[held, None]
        # a cluster still of no weight (its only row moved to an empty one, or no row
        # was away from its centre) goes where scikit-learn's _average_centers puts it:
        # on the heaviest cluster's centre, or that cluster's unaveraged sums when it
        # comes later in the order (averaged in place, it is not averaged yet)
        heaviest = int(np.argmax(weights))
        for cluster in np.flatnonzero(~held):
            centres[cluster] = (centres[heaviest] if heaviest < cluster
                                else shift + sums[heaviest])
        if self._cosine:
            centres = unit_centres(centres)
        moved = float(np.sum((centres - old) ** 2))
        iterations = state["iterations"] + 1
        state = {k: v for k, v in state.items() if k not in ("pass", "empty")}
        state = {**state, "phase": "lloyd", "centres": centres, "iterations": iterations,
                 "shift": moved}
        if moved == 0:  # the same assignment twice: this pass's figures are the final ones
            return self._finish(stats, {**state, "converged": True})
        converged = moved <= state["tol"]
        if converged or iterations >= p.max_iter:
            return {**state, "converged": converged, "final": True}
        return state

    def _finish(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """After a start's last pass: the next start (``n_init``), or the fit of least
        inertia of them all (the first of equal ones) to validate."""
        fit = {key: state[key] for key in _START_KEYS if key in state}
        fit.update(inertia=float(stats["inertia"]) * self._cost, sizes=stats["counts"],
                   cluster_weights=stats["weights"])
        best = state.get("best")
        if best is None or fit["inertia"] < best["inertia"]:
            best = fit
        starts = [*state.get("starts", []), {"inertia": fit["inertia"],
                                             "iterations": int(fit["iterations"])}]
        if len(starts) < self.params.n_init:  # the next start: its draws from the summary on
            rest = {k: v for k, v in state.items() if k not in _START_KEYS
                    and k not in ("final", "mean", "tol", "rows", "heldout")}
            return {**rest, "phase": "summary", "best": best, "starts": starts,
                    "start": len(starts)}
        state = {k: v for k, v in state.items() if k != "best"}
        state.update(best)
        if not state["converged"]:
            warnings.warn(
                f"kmeans did not converge: the centres moved {state['shift']:.3g} "
                f"{in_last_iteration(state['iterations'])} (sum of squared moves; tolerance "
                f"{state['tol']:.3g}); raise max_iter or tol", ConvergenceWarning,
                stacklevel=3)
        measure = self.params.validation_fraction > 0
        return {**state, "phase": "validate" if measure else "done", "final": False,
                "starts": starts}

    def _measured(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """After a validation pass: the held-out rows' figures, then (the second pass
        done, or none needed) the validation metrics."""
        measuring = _measuring(cosine=self._cosine)
        if state["phase"] == "validate_spread":
            held, _ = measuring.update(stats["measured"], state["held_out"])
            return self._validated(state, {**measuring.metrics(held), **state["figures"]})
        sizes = stats["sizes"]
        rows, present = int(np.sum(sizes)), int(np.count_nonzero(sizes))
        if rows == 0:
            return self._validated(state, {"count": 0})
        figures = {"inertia": stats["inertia"] * self._cost / stats["weight"]
                   if stats["weight"] > 0
                   else float("nan"),
                   "count": rows, "clusters": present,
                   "cluster_sizes": [int(n) for n in sizes]}
        problem = unmeasurable(present, rows)
        if problem is not None:
            return self._validated(state, {**dict.fromkeys(measuring.metric_names(), float("nan")),
                                           **figures, "undefined": problem})
        held, _ = measuring.update(stats["measured"], state["held_out"])
        return {**state, "phase": "validate_spread", "held_out": held, "figures": figures}

    def _validated(self, state: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
        state = {k: v for k, v in state.items() if k not in ("held_out", "figures")}
        return {**state, "phase": "done", "validation": validation}

    def fitted(self, state: dict[str, Any]) -> KMeansFitted:
        """The fitted model; before the fit is done, the model of the current centres."""
        if "centres" not in state or state["phase"] == "pick":
            raise RuntimeError("kmeans: fitted() before the start was chosen")
        return KMeansFitted(state["features"], state["centres"], state["mean"],
                            self.params.distance, self._cosine)

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        """The Lloyd pass of the start (of ``n_init``), of at most ``max_iter``: it stops
        sooner when the centres stand still, so no ETA."""
        if state.get("phase") != "lloyd":
            return None
        if state.get("final"):  # the Lloyd passes are done: the figures of the last
            return FitProgress("the start's figures (inertia, sizes)")
        return FitProgress(start_pass_progress(len(state.get("starts", [])), self.params.n_init,
                                          "Lloyd", state["iterations"], self.params.max_iter))

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("phase") != "done":
            return {}
        out: dict[str, Any] = {
            "inertia": state["inertia"], "iterations": int(state["iterations"]),
            "converged": bool(state["converged"]),
            "cluster_sizes": [int(round(n)) for n in state["sizes"]],
            "training_rows": int(state["rows"]), "validation_rows": int(state["heldout"]),
            "init_passes": int(state["init_passes"]),
        }
        if self.params.weight is not None:
            out["cluster_weights"] = [float(w) for w in state["cluster_weights"]]
        if self.params.n_init > 1:  # each start's inertia and Lloyd passes, in order
            out["starts"] = state["starts"]
        if "validation" in state:
            out["validation"] = state["validation"]
        return out


_START_KEYS = ("centres", "initial", "iterations", "converged", "shift", "init_passes")
"""What a start's fit leaves in the state (``_finish``: kept when its inertia is least)."""


def draw_seed(seed: int, state: dict[str, Any]) -> int:
    """The seed of a start's draws: ``seed`` for the first, one derived from it and the
    start's number (``state["start"]``) for the others (``n_init``; gaussian_mixture's
    starts too); the validation split keeps ``seed``."""
    start = state.get("start", 0)
    return seed if start == 0 else int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def _measuring(features: list[str] | None = None, cosine: bool = False) -> EvaluateClusters:
    """evaluate_clusters as the validation passes drive it over the held-out rows (its
    features: the fit's, named at ``init``; the other calls read them from its state),
    in the fit's measure."""
    return EvaluateClusters(features=features,
                            metrics=list(HELD_OUT_METRICS[:1] if cosine else HELD_OUT_METRICS),
                            distance_measure="cosine" if cosine else "squared_euclidean")


def _too_few(found: int, k: int, noun: str = "clusters") -> None:
    raise DataError(f"the rows have {found} distinct points to start {k} {noun} from",
                    hint="lower k, or check the features (constant or duplicated rows)")


def _combine_sampled(a: dict[str, Any], b: dict[str, Any], oversampling: float
                     ) -> dict[str, Any]:
    """Two partitions' k-means|| draws: the costs added, and of their rows those the
    larger cost still draws (the total's draws are among them)."""
    phi = a["phi"] + b["phi"]
    u, wd2 = np.concatenate([a["u"], b["u"]]), np.concatenate([a["wd2"], b["wd2"]])
    rows = np.concatenate([a["rows"], b["rows"]])
    keep = np.flatnonzero(u * phi < oversampling * wd2)
    order = keep[_ordered([u[keep]], rows[keep])]
    return {"phi": phi, "rows": rows[order], "u": u[order], "wd2": wd2[order]}


def _combine_far(a: dict[str, np.ndarray], b: dict[str, np.ndarray], m: int, ties: bool
                 ) -> dict[str, np.ndarray]:
    """The rows farthest from their centres of two partitions: the ``m`` first by
    distance (ties by value, then weight); with ``ties`` only those at the farthest
    distance (a Lloyd pass's: each partition gave its farthest only)."""
    return top_far({key: np.concatenate([a[key], b[key]]) for key in a}, m, ties)


def top_far(joined: dict[str, np.ndarray], m: int, ties: bool) -> dict[str, np.ndarray]:
    """``_combine_far`` of one partition's rows: the same order whatever the partitions."""
    rows = np.column_stack([joined["rows"], joined["weights"]])
    order = _ordered([-joined["d2"]], rows)
    if ties and len(order):
        order = order[joined["d2"][order] == joined["d2"][order[0]]]
    order = order[:m]
    return {key: value[order] for key, value in joined.items()}
