"""Mergeable evaluation metrics: per-partition statistics that combine, then finalize.

A ``MetricAccumulator`` follows the Estimator rhythm: ``partial`` on each
partition (numeric work on the array namespace ``xp``), ``combine`` on any
tree of partials (associative, commutative; the stats of zero rows are the
identity), ``finalize`` on the driver in NumPy. Stats are plain picklable dicts
of NumPy arrays and floats.

Labels, not indices: ``y_true`` and ``y_pred`` hold class labels (any sortable
type: int, bool, str, float); they are mapped to positions in the sorted class
list. Class order is always sorted, whether the classes are given or learned
from the data, which is the order of the ``probability`` columns a model emits
(binary: a float ``P(classes[1])``; multiclass: one column per class).

When ``classes`` is not given, each partition keeps its statistics keyed by the
class values it saw (labels and predictions); ``combine`` aligns two partials on
the union of their classes. Multiclass probabilities are positional, so before
the full class set is known a partition cannot tell which probability column
belongs to a label; it keeps the few candidate columns a label can still have
(``K - n_seen + 1`` of them for ``K`` columns) and ``combine`` narrows them. At
``finalize`` the number of classes found must equal the number of probability
columns, else pass ``classes`` explicitly. Memory of the stats is bounded by the
class count, never by the rows: ``2**16 + 1`` floats per class and probability
column, times the candidates while classes are unseen (one with ``classes`` given).

Metrics that are undefined on the data (``roc_auc`` with a single class,
``log_loss`` with one class and binary probabilities) are NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from operators.arrays import get_namespace, host_buffer, segment_sums, to_numpy, to_xp
from operators.base import DataError, ParamError, suggest

REGRESSION_METRICS = ["rmse", "mse", "mae", "r2", "count", "poisson_deviance",
                      "gamma_deviance", "tweedie_deviance", "pinball_loss", "coverage"]
CLASSIFICATION_METRICS = ["accuracy", "log_loss", "roc_auc", "pr_auc", "precision", "recall",
                          "f1", "confusion_matrix", "count", "brier", "thresholds"]
DEFAULT_METRICS = {
    "regression": ["rmse", "mae", "r2", "count"],
    "classification": ["accuracy", "precision", "recall", "f1", "log_loss", "roc_auc",
                       "pr_auc", "confusion_matrix", "count"],
}
PROBABILITY_METRICS = ["log_loss", "roc_auc", "pr_auc", "brier", "thresholds"]
CURVE_POINTS = 100
"""The most thresholds ``thresholds`` lists (evenly spaced among those the scores have;
its best-F1 threshold is chosen among all of them)."""
LOWER_IS_BETTER = {"log_loss", "brier", "rmse", "mse", "mae", "poisson_deviance", "gamma_deviance",
                   "tweedie_deviance", "pinball_loss", "davies_bouldin", "inertia"}
"""The metrics of which less is better; of any other, more (the silhouette,
Calinski-Harabasz, accuracy, ...)."""
COMPARABLE = sorted((set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS) | {"ndcg"})
                    - {"count", "confusion_matrix", "coverage", "thresholds"})
"""The metrics two models of a label (tuning's candidates, promote's) can be compared by."""
CLUSTERING_COMPARABLE = ["calinski_harabasz", "davies_bouldin", "inertia", "silhouette"]
"""The metrics two clusterings of the same held-out rows (kmeans' tuning candidates) can
be compared by: ``inertia`` is the held-out rows' mean squared distance to their
centres."""
MIXTURE_COMPARABLE = ["log_likelihood"]
"""What two Gaussian mixtures' held-out rows are compared by: their mean log-likelihood
(gaussian_mixture's ``compared_by``)."""


def default_metric(values: dict[str, Any]) -> str:
    """What models are compared by when no metric is named: log_loss for classes (when
    there are probabilities), else accuracy; for numbers the loss a model minimises
    where it is measured (a quantile model's pinball_loss, a log link's deviance, a
    ranking's ndcg), else rmse; for clusters the silhouette; for a mixture its held-out
    rows' mean log-likelihood."""
    for name in ("log_loss", "accuracy", "pinball_loss", "poisson_deviance",
                 "gamma_deviance", "tweedie_deviance", "ndcg", "rmse", "silhouette",
                 "log_likelihood"):
        if name in values:
            return name
    raise ValueError(f"no comparable metric in {sorted(values)}")
METRICS = {"regression": REGRESSION_METRICS, "classification": CLASSIFICATION_METRICS}

AUC_BINS = 2 ** 16
"""Scores are binned to the grid ``k / AUC_BINS``, k = 0..AUC_BINS (``AUC_BINS + 1`` bins)."""

_EPS = float(np.finfo(np.float64).eps)  # scikit-learn's log_loss clip for float64


class MetricAccumulator:
    """Mergeable metrics for one task: ``partial`` per partition, ``combine``, ``finalize``.

    Regression: ``rmse``, ``mse``, ``mae``, ``r2`` (``1 - SSE/SST``; 1.0 or 0.0 when
    the label is constant, as scikit-learn), ``count`` (rows, unweighted); on request,
    ``poisson_deviance`` (labels >= 0) and ``gamma_deviance`` (labels > 0), the mean
    deviances of scikit-learn's ``mean_poisson_deviance`` / ``mean_gamma_deviance``
    (predictions > 0: the means of a Poisson or gamma model), ``tweedie_deviance`` at
    ``tweedie_power`` (labels >= 0; ``mean_tweedie_deviance``); ``pinball_loss``, the mean
    pinball loss at ``quantile`` (scikit-learn's ``mean_pinball_loss`` with alpha =
    quantile: the loss a quantile model minimises) and ``coverage``, the share (weight)
    of labels at most their prediction (a 0.9 quantile model's should be near 0.9).

    Classification: ``accuracy``; ``log_loss`` (probabilities clipped to
    ``[eps, 1 - eps]``, eps of float64, no renormalisation - as scikit-learn);
    ``roc_auc`` (binary: score ``P(classes[1])``; multiclass: macro one-vs-rest
    over the classes with both positives and negatives); ``pr_auc`` (the area under the
    precision-recall curve as average precision, scikit-learn's
    ``average_precision_score`` and MLlib's areaUnderPR for a rare positive class; the
    same classes and bins as ``roc_auc``, a bin one threshold); ``precision``,
    ``recall``, ``f1`` (binary: positive class ``classes[1]``; multiclass: macro
    average over all classes, a class never predicted counts 0 precision, as
    scikit-learn's ``zero_division=0``; with a single class, that class's values);
    ``confusion_matrix`` (rows true, columns predicted, sorted class order; also
    adds ``classes``); ``count``; ``brier`` (scikit-learn's ``brier_score_loss``: two
    classes' mean ``(p - y)^2``, more classes' mean of its sum over the classes, from
    each class's sums of the probability columns and the rows' sums of squares). With a
    weight, every metric but ``count`` is
    weighted (scikit-learn's ``sample_weight``).

    How exact ``roc_auc`` is: each class's scores are histogrammed on the fixed
    grid ``k / 2**16`` (a score goes to the grid point at or below it; memory is
    ``2**16 + 1`` floats per class, whatever the data size) and the
    Mann-Whitney statistic is computed over bins, pairs within one bin counting
    one half. That is exactly the trapezoidal ROC AUC of the binned scores, so:

    * it is exact (to float rounding) when every score lies on the grid
      (``k / 2**16``: e.g. scores with at most 16 binary digits);
    * otherwise the only error is pairs of a positive and a negative whose
      distinct scores share a bin, each off by at most one half:
      ``|AUC_binned - AUC| <= sum_b P_b N_b / (2 P N)`` (``P_b``, ``N_b``: positive
      and negative weight in bin b). For scores whose negative density is at most
      ``D`` that is at most ``D / 2**17``, below 1e-4 for ``D < 13``.
    """

    def __init__(self, task: str, metrics: list[str] | None = None,
                 classes: list[Any] | None = None,
                 columns: tuple[str, str] = ("y_true", "y_pred"), quantile: float = 0.5,
                 tweedie_power: float = 1.5):
        if task not in METRICS:
            raise ParamError(f"unknown task '{task}'{suggest(task, METRICS)}",
                             hint="use classification or regression")
        self.task = task
        self.explicit = metrics is not None
        self.metrics = list(metrics) if metrics is not None else list(DEFAULT_METRICS[task])
        for name in self.metrics:
            if name not in METRICS[task]:
                raise ParamError(f"unknown {task} metric '{name}'{suggest(name, METRICS[task])}",
                                 hint="known: " + ", ".join(METRICS[task]))
        if classes is not None and task == "regression":
            raise ParamError("classes are for classification", hint="drop classes")
        self.classes = None if classes is None else _sorted_classes(classes)
        self.columns = columns
        self.quantile, self.tweedie_power = quantile, tweedie_power
        self.needs_proba = [m for m in self.metrics if m in PROBABILITY_METRICS]

    # ----------------------------------------------------------------- partial

    def partial(self, y_true: np.ndarray, y_pred: np.ndarray, proba: Any | None = None,
                weight: Any | None = None, *, xp: Any = None) -> dict[str, Any]:
        """Statistics of one partition (labels as NumPy; proba/weight NumPy or ``xp``).

        The per-row numbers (labels or class positions, NumPy weights and probabilities)
        go to ``xp``'s device together, in one host-to-device copy.
        """
        xp = xp if xp is not None else get_namespace("numpy")
        n = int(np.shape(y_true)[0])
        if int(np.shape(y_pred)[0]) != n:
            raise DataError(f"{self.columns[0]} has {n} rows but {self.columns[1]} "
                            f"has {np.shape(y_pred)[0]}")
        if n == 0:
            return self.empty()
        classes = None
        if self.task == "regression":
            truth = [np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)]
        else:
            y_true, y_pred = _labels(y_true), _labels(y_pred)
            if self.classes is not None:
                classes = self.classes
            else:
                classes = np.unique(np.concatenate([np.unique(y_true), np.unique(y_pred)]))
            truth = [self._index(y_true, classes, self.columns[0]),
                     self._index(y_pred, classes, self.columns[1])]
            if proba is None and self.needs_proba and self.explicit:
                raise ParamError(f"metrics {self.needs_proba} need predicted probabilities",
                                 hint="give a probability column or drop these metrics")
        on_host = [isinstance(a, np.ndarray) for a in (weight, proba)]
        sent = _send(xp, truth + [a for a, h in zip((weight, proba), on_host) if h])
        weight = sent[2] if on_host[0] else weight
        proba = sent[-1] if on_host[1] else proba
        w = (xp.ones(n, dtype=xp.float64) if weight is None
             else xp.astype(weight, xp.float64))
        if self.task == "regression":
            return self._partial_regression(sent[0], sent[1], w, xp)
        return self._partial_classification(xp.astype(sent[0], xp.int64),
                                            xp.astype(sent[1], xp.int64), classes, proba, w, xp)

    def empty(self) -> dict[str, Any]:
        """The stats of zero rows: the identity of ``combine``."""
        if self.task == "regression":
            return {"task": "regression", "rows": 0.0, "weight": 0.0, "mean": 0.0, "m2": 0.0,
                    "sse": 0.0, "sae": 0.0, "poisson": 0.0, "gamma": 0.0, "tweedie": 0.0,
                    "pinball": 0.0,
                    "covered": 0.0,
                    "y_min": math.inf, "p_min": math.inf}
        classes = self.classes if self.classes is not None else np.asarray([])
        k = len(classes)
        return {"task": "classification", "classes": classes, "rows": 0.0, "weight": 0.0,
                "confusion": np.zeros((k, k)), "proba": None}

    def _partial_regression(self, y: Any, p: Any, w: Any, xp: Any) -> dict[str, Any]:
        total = xp.sum(w)
        mean = xp.sum(w * y) / total if float(total) > 0 else xp.asarray(0.0)
        err = y - p
        q = self.quantile
        sums = [total, mean, xp.sum(w * (y - mean) ** 2), xp.sum(w * err * err),
                xp.sum(w * xp.abs(err)), xp.min(y), xp.min(p),
                xp.sum(w * xp.where(err >= 0, q * err, (q - 1.0) * err)),
                xp.sum(xp.where(err <= 0, w, xp.zeros_like(w)))]
        deviances = [m for m in ("poisson_deviance", "gamma_deviance", "tweedie_deviance")
                     if m in self.metrics]
        if deviances:  # where they are defined (finalize refuses the rest)
            ok_p = p > 0
            mu = xp.where(ok_p, p, xp.ones_like(p))
            pos = y > 0
            ratio = xp.where(pos & ok_p, y, xp.ones_like(y)) / mu
            log_ratio = xp.where(pos & ok_p, xp.log(ratio), xp.zeros_like(y))
            sums.append(xp.sum(w * 2.0 * (y * log_ratio - (y - mu))))
            sums.append(xp.sum(w * 2.0 * (ratio - log_ratio - 1.0)))
            power, y0 = self.tweedie_power, xp.where(pos, y, xp.zeros_like(y))
            sums.append(xp.sum(w * 2.0 * (y0 ** (2.0 - power) / ((1.0 - power) * (2.0 - power))
                                          - y0 * mu ** (1.0 - power) / (1.0 - power)
                                          + mu ** (2.0 - power) / (2.0 - power))))
        values = [float(v) for v in to_numpy(xp.stack(sums))]
        poisson, gamma, tweedie = values[9:] if deviances else (0.0, 0.0, 0.0)
        return {"task": "regression", "rows": float(y.shape[0]), "weight": values[0],
                "mean": values[1], "m2": values[2], "sse": values[3], "sae": values[4],
                "poisson": poisson, "gamma": gamma, "tweedie": tweedie, "pinball": values[7],
                "covered": values[8], "y_min": values[5], "p_min": values[6]}

    def _partial_classification(self, t: Any, p: Any, classes: np.ndarray, proba: Any,
                                w: Any, xp: Any) -> dict[str, Any]:
        """Stats from the class positions ``t`` (true) and ``p`` (predicted) on ``xp``."""
        k = len(classes)
        confusion = segment_sums(xp, t * k + p, w[:, None], k * k).reshape(k, k)
        stats: dict[str, Any] = {"task": "classification", "classes": classes,
                                 "rows": float(t.shape[0]), "weight": float(xp.sum(w)),
                                 "confusion": confusion, "proba": None}
        if proba is None:
            return stats
        stats["proba"] = self._partial_proba(proba, t, k, w, xp)
        return stats

    def _partial_proba(self, proba: Any, t: Any, k: int, w: Any, xp: Any) -> dict[str, Any]:
        proba = xp.astype(proba, xp.float64)
        if proba.ndim == 2 and proba.shape[1] == 2:
            proba = proba[:, 1]
        if proba.ndim == 1:
            if k > 2:
                raise DataError(f"probability is one number per row (binary) but {k} classes "
                                "were found", hint="a multiclass probability is a list per row")
            nb = AUC_BINS + 1
            clipped = xp.clip(proba, _EPS, 1 - _EPS)
            losses = xp.stack([-xp.log(xp.clip(1 - proba, _EPS, 1 - _EPS)), -xp.log(clipped)],
                              axis=1)
            loss = segment_sums(xp, t, w[:, None] * losses, k)
            hist = segment_sums(xp, t * nb + _bins(xp, proba), w[:, None], k * nb)
            return {"width": 1, "loss": loss, "hist": hist.reshape(k, 1, nb), "hist_all": None,
                    **_brier_sums(proba[:, None], t, k, w, xp)}
        width = int(proba.shape[1])
        if k > width:
            raise DataError(f"probability has {width} entries per row but {k} classes were "
                            "found", hint="the probability list has one entry per class")
        nb = AUC_BINS + 1
        losses = -xp.log(xp.clip(proba, _EPS, 1 - _EPS))
        loss = segment_sums(xp, t, w[:, None] * losses, k)
        bins = _bins(xp, proba)
        n = proba.shape[0]
        columns = xp.reshape(xp.arange(width, dtype=xp.int64), (1, width))
        hist_all = segment_sums(xp, xp.reshape(columns * nb + bins, (-1,)),
                                 xp.reshape(xp.broadcast_to(w[:, None], (n, width)), (-1, 1)),
                                 width * nb).reshape(width, nb)
        # a label at position i of the classes seen so far owns probability column
        # i + c for one c in [0, width - k]: keep all of those candidates
        cands = width - k + 1
        offsets = xp.reshape(xp.arange(cands, dtype=xp.int64), (1, cands))
        own = xp.take_along_axis(bins, t[:, None] + offsets, axis=1)
        keys = (t[:, None] * cands + offsets) * nb + own
        hist = segment_sums(xp, xp.reshape(keys, (-1,)),
                             xp.reshape(xp.broadcast_to(w[:, None], (n, cands)), (-1, 1)),
                             k * cands * nb).reshape(k, cands, nb)
        return {"width": width, "loss": loss, "hist": hist, "hist_all": hist_all,
                **_brier_sums(proba, t, k, w, xp)}

    def _index(self, values: np.ndarray, classes: np.ndarray, column: str) -> np.ndarray:
        pos = np.searchsorted(classes, values)
        bad = pos >= len(classes)
        bad[~bad] = classes[pos[~bad]] != values[~bad]
        if bad.any():
            value = values[bad][0]
            raise DataError(f"{column} value {_plain(value)!r} is not one of the classes "
                            f"{[_plain(c) for c in classes[:20]]}",
                            hint="add it to classes, or leave classes unset to learn them")
        return pos.astype(np.int64)

    # ----------------------------------------------------------------- combine

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Merge two partials (associative, commutative; empty stats are the identity)."""
        if a["rows"] == 0:
            return b
        if b["rows"] == 0:
            return a
        if self.task == "regression":
            return _combine_regression(a, b)
        classes = (a["classes"] if np.array_equal(a["classes"], b["classes"])
                   else np.union1d(a["classes"], b["classes"]))
        a, b = align(a, classes), align(b, classes)
        if (a["proba"] is None) != (b["proba"] is None):
            raise DataError("some partitions have probabilities and some do not")
        proba = None
        if a["proba"] is not None:
            pa_, pb = a["proba"], b["proba"]
            if pa_["width"] != pb["width"]:
                raise DataError(f"probability has {pa_['width']} entries in one partition and "
                                f"{pb['width']} in another", hint="one entry per class")
            proba = {"width": pa_["width"], "loss": pa_["loss"] + pb["loss"],
                     "linear": pa_["linear"] + pb["linear"],
                     "squares": pa_["squares"] + pb["squares"],
                     "hist": pa_["hist"] + pb["hist"],
                     "hist_all": None if pa_["hist_all"] is None
                     else pa_["hist_all"] + pb["hist_all"]}
        return {"task": "classification", "classes": classes, "rows": a["rows"] + b["rows"],
                "weight": a["weight"] + b["weight"], "confusion": a["confusion"] + b["confusion"],
                "proba": proba}

    # ----------------------------------------------------------------- finalize

    def finalize(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The metrics (plain floats and lists, JSON-able) from combined stats."""
        if stats["rows"] == 0:
            raise DataError("no rows to evaluate", hint="check the input and any filter")
        if not stats["weight"] > 0:
            raise DataError("the weights sum to zero", hint="weights must be >= 0, some > 0")
        if self.task == "regression":
            values = _finalize_regression(stats)
            self._check_deviances(stats)
        else:
            values = self._finalize_classification(stats)
        return {m: values[m] for m in self.metrics if m in values} | (
            {"classes": values["classes"]} if "confusion_matrix" in self.metrics else {})

    def _check_deviances(self, stats: dict[str, Any]) -> None:
        for name, strict in (("poisson_deviance", False), ("gamma_deviance", True),
                             ("tweedie_deviance", False)):
            if name not in self.metrics:
                continue
            low = stats["y_min"]
            if (low <= 0 if strict else low < 0) or not stats["p_min"] > 0:
                need = "labels > 0" if strict else "labels >= 0"
                raise DataError(
                    f"{name} needs {need} and predictions > 0; the smallest label is "
                    f"{low:g} and the smallest prediction {stats['p_min']:g}",
                    hint="evaluate a model of that loss on its kind of label, or drop "
                         f"{name} from metrics")

    def _finalize_classification(self, stats: dict[str, Any]) -> dict[str, Any]:
        classes, conf, total = stats["classes"], stats["confusion"], stats["weight"]
        k = len(classes)
        tp = np.diag(conf)
        true_sum, pred_sum = conf.sum(axis=1), conf.sum(axis=0)
        precision = _ratio(tp, pred_sum)
        recall = _ratio(tp, true_sum)
        f1 = _ratio(2 * tp, true_sum + pred_sum)
        binary = k <= 2
        pick = (lambda v: float(v[-1])) if binary else (lambda v: float(np.mean(v)))
        weighted = not np.array_equal(conf, np.round(conf))
        out: dict[str, Any] = {
            "accuracy": float(tp.sum() / total),
            "precision": pick(precision), "recall": pick(recall), "f1": pick(f1),
            "confusion_matrix": (conf.tolist() if weighted else conf.astype(np.int64).tolist()),
            "classes": [_plain(c) for c in classes],
            "count": int(stats["rows"]),
        }
        if stats["proba"] is not None:
            out.update(_finalize_proba(stats["proba"], k, total, true_sum,
                                       "thresholds" in self.metrics))
        return out


# --------------------------------------------------------------------------- kernels


def _send(xp: Any, blocks: list[np.ndarray]) -> list[Any]:
    """Row-aligned host arrays, ``(n,)`` or ``(n, k)``, on ``xp`` in one host-to-device
    copy: the columns of one float64 host buffer, split on the device (class positions
    are exact in float64)."""
    n = int(blocks[0].shape[0])
    widths = [1 if b.ndim == 1 else int(b.shape[1]) for b in blocks]
    host = host_buffer((n, sum(widths)), xp, order="F", dtype=np.float64)
    at = 0
    for block, width in zip(blocks, widths, strict=True):
        host[:, at:at + width] = block.reshape(n, width)
        at += width
    matrix = to_xp(host, xp)
    out, at = [], 0
    for block, width in zip(blocks, widths, strict=True):
        out.append(matrix[:, at] if block.ndim == 1 else matrix[:, at:at + width])
        at += width
    return out


def _bins(xp: Any, scores: Any) -> Any:
    """The grid point ``k / AUC_BINS`` at or below each score (clipped to [0, 1]) as
    int64: a bin's rows are those at least its threshold and below the next (exactly:
    the scaling is by a power of two), score's rule of a threshold; the nearest point
    put 0.3 at 0.3000031, which the scores of 0.3 are not at least."""
    scaled = xp.floor(xp.clip(scores, 0.0, 1.0) * AUC_BINS)
    return xp.astype(scaled, xp.int64)


# --------------------------------------------------------------------------- driver side


def _sorted_classes(classes: list[Any]) -> np.ndarray:
    values = _labels(np.asarray(list(classes)))
    unique = np.unique(values)
    if len(unique) != len(values):
        raise ParamError("classes has duplicates", hint="list each class once")
    return unique


def _labels(values: np.ndarray) -> np.ndarray:
    """Labels as a sortable NumPy array (object arrays of str become str arrays)."""
    values = np.asarray(values)
    if values.dtype == object and len(values):
        return values.astype(str) if all(isinstance(v, str) for v in values[:1]) else values
    return values


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value JSON understands."""
    return value.item() if isinstance(value, np.generic) else value


def align(stats: dict[str, Any], classes: np.ndarray) -> dict[str, Any]:
    """The classification stats re-keyed on ``classes`` (a sorted superset of its own)."""
    own = stats["classes"]
    if np.array_equal(own, classes):
        return stats
    k, pos = len(classes), np.searchsorted(classes, own)
    confusion = np.zeros((k, k))
    confusion[np.ix_(pos, pos)] = stats["confusion"]
    proba = stats["proba"]
    if proba is not None:
        width = proba["width"]
        loss = np.zeros((k, proba["loss"].shape[1]))
        loss[pos] = proba["loss"]
        linear = np.zeros((k, proba["linear"].shape[1]))
        linear[pos] = proba["linear"]
        if width == 1:
            if k > 2:
                raise DataError(f"probability is one number per row (binary) but {k} classes "
                                "were found", hint="a multiclass probability is a list per row")
            hist = np.zeros((k, 1, AUC_BINS + 1))
            hist[pos] = proba["hist"]
        else:
            if k > width:
                raise DataError(f"probability has {width} entries per row but {k} classes "
                                "were found", hint="the probability list has one entry per class")
            cands = width - k + 1
            hist = np.zeros((k, cands, AUC_BINS + 1))
            # candidate c of class at new position g is column g + c; in the old stats
            # that column is candidate (g - i) + c of the class at old position i
            for i, g in enumerate(pos):
                hist[g] = proba["hist"][i, g - i:g - i + cands]
        proba = {"width": width, "loss": loss, "hist": hist, "hist_all": proba["hist_all"],
                 "linear": linear, "squares": proba["squares"]}
    return {**stats, "classes": classes, "confusion": confusion, "proba": proba}


def _combine_regression(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    # Chan et al.'s pairwise update: stable where raw sums of squares cancel
    wa, wb = a["weight"], b["weight"]
    total = wa + wb
    if total > 0:
        delta = b["mean"] - a["mean"]
        mean = (wa * a["mean"] + wb * b["mean"]) / total
        m2 = a["m2"] + b["m2"] + delta * delta * wa * wb / total
    else:
        mean, m2 = 0.0, 0.0
    sums = {k: a[k] + b[k] for k in ("rows", "sse", "sae", "poisson", "gamma", "tweedie",
                                     "pinball", "covered")}
    return {"task": "regression", **sums, "weight": total, "mean": mean, "m2": m2,
            "y_min": min(a["y_min"], b["y_min"]), "p_min": min(a["p_min"], b["p_min"])}


def _finalize_regression(stats: dict[str, Any]) -> dict[str, Any]:
    total, sse, m2 = stats["weight"], stats["sse"], stats["m2"]
    # a constant label gives 1.0 or 0.0: scikit-learn's force_finite convention
    r2 = 1.0 - sse / m2 if m2 > 0 else float(sse == 0)
    return {"mse": sse / total, "rmse": math.sqrt(sse / total), "mae": stats["sae"] / total,
            "r2": r2, "count": int(stats["rows"]), "poisson_deviance": stats["poisson"] / total,
            "gamma_deviance": stats["gamma"] / total, "tweedie_deviance": stats["tweedie"] / total,
            "pinball_loss": stats["pinball"] / total,
            "coverage": stats["covered"] / total}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, 0.0)


def _finalize_proba(proba: dict[str, Any], k: int, total: float, true_sum: np.ndarray,
                    curves: bool = False) -> dict[str, Any]:
    """The probability metrics; the ``thresholds`` curves only where ``curves`` asks
    (2 ms of bins each: every group of an evaluate ``by`` and every validation had
    paid it)."""
    width, loss, hist = proba["width"], proba["loss"], proba["hist"]
    if width == 1:
        if k < 2:
            return {"log_loss": math.nan, "roc_auc": math.nan, "pr_auc": math.nan,
                    "brier": math.nan, "thresholds": math.nan}
        # sum of w (p - y)^2 = sum w p^2 - 2 sum_{y = 1} w p + sum_{y = 1} w
        brier = proba["squares"] - 2.0 * proba["linear"][1, 0] + true_sum[1]
        return {"log_loss": float((loss[0, 0] + loss[1, 1]) / total),
                "brier": float(max(brier, 0.0) / total),
                "roc_auc": auc(hist[1, 0], hist[0, 0]),
                "pr_auc": average_precision(hist[1, 0], hist[0, 0]),
                **({"thresholds": threshold_table(hist[1, 0], hist[0, 0])} if curves
                   else {})}
    if k != width:
        raise DataError(f"probability has {width} entries per row but {k} classes are known "
                        "(given, or found in the labels and predictions)",
                        hint=f"set classes to the model's {width} classes")
    own = hist[:, 0, :]
    negatives = np.clip(proba["hist_all"] - own, 0.0, None)
    aucs = [auc(own[c], negatives[c]) for c in range(k)]
    defined = [a for a in aucs if not math.isnan(a)]
    precisions = [average_precision(own[c], negatives[c]) for c in range(k)]
    kept = [a for a in precisions if not math.isnan(a)]
    # sum of w sum_j (p_j - [y = j])^2 = sum w |p|^2 - 2 sum w p_y + sum w
    brier = proba["squares"] - 2.0 * float(np.trace(proba["linear"])) + total
    return {"log_loss": float(np.trace(loss) / total),
            "brier": float(max(brier, 0.0) / total),
            "roc_auc": float(np.mean(defined)) if defined else math.nan,
            "pr_auc": float(np.mean(kept)) if kept else math.nan}


def _brier_sums(proba: Any, t: Any, k: int, w: Any, xp: Any) -> dict[str, Any]:
    """The Brier score's sums: each class's weighted sums of every probability column
    (``linear``: k x columns) and the weighted sum of the rows' squared probabilities."""
    return {"linear": to_numpy(segment_sums(xp, t, w[:, None] * proba, k)),
            "squares": float(xp.sum(w * xp.sum(proba * proba, axis=1)))}


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC from weight histograms over ordered score bins (ties in a bin count half).

    NaN when either side has no weight.
    """
    p, n = float(positives.sum()), float(negatives.sum())
    if p <= 0 or n <= 0:
        return math.nan
    below = np.cumsum(negatives) - negatives
    return float(np.sum(positives * (below + 0.5 * negatives)) / (p * n))


def average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Average precision from weight histograms over ordered score bins: each bin a
    threshold (rows at or above it predicted positive), the precision at each weighted
    by the recall it adds (scikit-learn's ``average_precision_score``, exact where the
    scores lie on the bins' grid). NaN when there is no positive weight."""
    p = float(positives.sum())
    if p <= 0:
        return math.nan
    true = np.cumsum(positives[::-1])  # from the highest bin down
    predicted = true + np.cumsum(negatives[::-1])
    gained = positives[::-1] > 0
    precision = true[gained] / predicted[gained]
    return float(np.sum(positives[::-1][gained] * precision) / p)


def threshold_table(positives: np.ndarray, negatives: np.ndarray,
                    points: int = CURVE_POINTS) -> dict[str, Any] | float:
    """The ROC and precision-recall curves of two classes' score histograms, from the
    highest threshold down (a row is predicted positive where its score, on the bins'
    grid, is at least the threshold: scikit-learn's ``roc_curve`` and
    ``precision_recall_curve`` of the binned scores, MLlib's
    ``BinaryClassificationMetrics``), at up to ``points`` of the thresholds the scores
    have, evenly spaced, the last recalling every positive; ``best_f1`` is the
    threshold of the highest F1 among all of them (the highest of equals). NaN where a
    class has no weight."""
    p, n = float(positives.sum()), float(negatives.sum())
    if p <= 0 or n <= 0:
        return math.nan
    occupied = np.flatnonzero((positives > 0) | (negatives > 0))[::-1]
    tp, fp = np.cumsum(positives[occupied]), np.cumsum(negatives[occupied])
    precision = tp / (tp + fp)
    f1 = 2.0 * tp / (tp + fp + p)
    best = int(np.argmax(f1))
    pick = np.unique(np.round(np.linspace(0, len(occupied) - 1,
                                          min(points, len(occupied)))).astype(int))

    def listed(values: np.ndarray) -> list[float]:
        return [float(v) for v in values[pick]]

    threshold = occupied / AUC_BINS
    return {"threshold": listed(threshold), "tpr": listed(tp / p), "fpr": listed(fp / n),
            "precision": listed(precision), "f1": listed(f1),
            "best_f1": {"threshold": float(threshold[best]), "f1": float(f1[best]),
                        "precision": float(precision[best]), "recall": float(tp[best] / p)}}


def auc_bin_error_bound(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The bound ``sum_b P_b N_b / (2 P N)`` on how far ``auc`` is from the unbinned AUC."""
    p, n = float(positives.sum()), float(negatives.sum())
    if p <= 0 or n <= 0:
        return math.nan
    return float(np.sum(positives * negatives) / (2 * p * n))
