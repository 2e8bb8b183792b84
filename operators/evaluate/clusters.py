"""evaluate_clusters: how well rows are clustered, without a label (MLlib's
``ClusteringEvaluator``; scikit-learn's ``silhouette_score``, ``calinski_harabasz_score``
and ``davies_bouldin_score``), exactly over any partitioning.

The first pass collects each cluster's rows, mean and sum of squared distances to its
mean (``within``), combined by Chan's parallel formula. That is all Calinski-Harabasz
needs. The silhouette and Davies-Bouldin take a second pass over the rows, with every
cluster's mean on hand:

- the sum of a row's squared distances to the rows of a cluster ``C`` is
  ``n_C |x - mean_C|^2 + within_C``, so each row's silhouette (squared Euclidean
  distances, MLlib's default measure) is exact in O(clusters) work a row, not O(rows);
- Davies-Bouldin's cluster spread is the mean Euclidean distance of its rows to its mean.

With row weights the sizes are the clusters' weights, the means and spreads weighted;
a row's own cluster's mean distance is over the weight of its others, ``W_C - w``
(MLlib's ``ClusteringEvaluator`` with ``weightCol``).

With ``distance_measure: cosine`` both passes take the rows made unit: a row's mean cosine
distance to a cluster's rows is ``1 - x.S_C / W_C`` (``S_C`` the sum of their unit
vectors, MLlib's CosineSilhouette), half its mean squared distance to them as unit
vectors, so the silhouette, a ratio of such means, is the same sums' squared-Euclidean
one. Calinski-Harabasz and Davies-Bouldin are Euclidean indices (scikit-learn has them
only so): refused with cosine; ``within_ss`` is then the rows' sum of cosine distances to
their cluster's direction, ``W_C (1 - |mean_C|)``.

With ``by`` each group of rows (a value of the columns) is measured as its rows alone
would be, in the same passes: the first keeps each group's clusters beside all the rows',
the second measures a group's rows against its own clusters' means. A partition's rows
are put in their groups' order on the host first, so that the features go to the device
once and each group's are a slice of them. A group of one cluster (or of as many clusters
as rows) has no silhouette, Calinski-Harabasz or Davies-Bouldin: NaN, as evaluate's
metrics undefined on a group's rows are, where all the rows' are an error.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.arrays import to_numpy
from operators.base import (
    DataError,
    MissingColumnError,
    ParamError,
    Params,
    SchemaError,
    register,
    register_fitted,
    require_columns,
)
from operators.evaluate.evaluate import (
    ByGroups,
    Measured,
    Measuring,
    by_field,
    max_groups_field,
    require_groupable,
    value_type,
)
from operators.features.columns import unique_names
from operators.models.common import (
    check_role,
    chosen_features,
    feature_matrix,
    is_numeric,
    row_weights,
    unit_rows,
)
from operators.sparse import columns_of, groups, is_sparse_type

Metric = Literal["silhouette", "calinski_harabasz", "davies_bouldin", "within_ss", "count",
                 "clusters", "cluster_sizes"]
METRICS: tuple[str, ...] = ("silhouette", "calinski_harabasz", "davies_bouldin", "within_ss",
                            "count", "clusters", "cluster_sizes")
SECOND_PASS = frozenset(["silhouette", "davies_bouldin"])
EUCLIDEAN_ONLY = ("calinski_harabasz", "davies_bouldin")
SKIPPED = ("distance",)  # kmeans' distance to the centre: an output, not a feature
BLOCK_VALUES = 2**20
"""The most row-to-mean distances the second pass holds at once (8 MB)."""


class EvaluateClustersParams(Params):
    features: list[str] | None = Field(
        None, min_length=1,
        description="the columns the rows were clustered on (default: every numeric column "
                    "but the prediction and a kmeans step's distance): give the clustering "
                    "step's own when it named them")
    prediction: str = Field("prediction", description="the column of cluster ids")
    metrics: list[Metric] | None = Field(
        None, min_length=1,
        description="metrics to compute (default: all): silhouette (squared Euclidean, "
                    "MLlib's), calinski_harabasz, davies_bouldin, within_ss, count, clusters, "
                    "cluster_sizes")
    weight: str | None = Field(
        None, description="column of positive row weights (MLlib's weightCol): a row's "
                          "silhouette weighs its weight, distances to a cluster's rows are "
                          "weighted means, and the other metrics count a row as that many")
    distance_measure: Literal["squared_euclidean", "cosine"] = Field(
        "squared_euclidean",
        description="the silhouette's distance (MLlib's distanceMeasure): squared_euclidean, "
                    "or cosine (1 - cos, for a kmeans of distance_measure: cosine; a row of "
                    "zeros is an error): then no calinski_harabasz or davies_bouldin, and "
                    "within_ss sums the rows' cosine distances to their cluster's direction")
    by: list[str] | None = by_field()
    max_groups: int = max_groups_field()


@register("evaluate_clusters")
class EvaluateClusters(Measuring):
    """How well rows are clustered, without a label: silhouette and more, in the run record.

    The rows pass through.

    ```yaml
    - op: kmeans
      k: 6
    - op: evaluate_clusters       # silhouette, calinski_harabasz, davies_bouldin, ...
      # features: [tenure, monthly_charges]   prediction: prediction   by: [region]
    ```
    `silhouette` is MLlib's `ClusteringEvaluator` (squared Euclidean distances) and
    scikit-learn's `silhouette_score(metric="sqeuclidean")`: from -1 to 1, higher is
    better; a row alone in its cluster counts 0. `calinski_harabasz` (higher is better)
    and `davies_bouldin` (lower is better, 0 at best) are scikit-learn's. `within_ss` is
    the sum of squared distances of the rows to their cluster's mean (kmeans' inertia once
    it has converged). Exact over any partitioning: two passes, each row's silhouette from
    every cluster's size, mean and spread, not from every other row. Compare clusterings
    by them on the same features, scaled the same way (a `standard_scale` before kmeans).
    With `weight` (positive), the silhouette is MLlib's with `weightCol` (a row's mean
    distance to its own cluster's others over their weight, the rows' silhouettes
    averaged by weight) and the other metrics count a row as its weight; `count` and
    `cluster_sizes` stay rows. With `by: [region]` the same metrics of each region's rows
    too, as if measured alone (its clusters' sizes and means), under `groups` in the run
    record (a null is a group of its own); a region whose rows are all in one cluster has
    no silhouette, calinski_harabasz or davies_bouldin (NaN). A number column in `by`
    stays among the default features, as the clustering step's default took it.
    """

    Params = EvaluateClustersParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.by or [], "by")
        self._by = ByGroups(self.name, self.params.by or [], self.params.max_groups)
        metrics = self.params.metrics or []
        if len(set(metrics)) != len(metrics):
            raise ParamError("metrics lists a metric twice", hint="list each once")
        euclidean_only = [m for m in metrics if m in EUCLIDEAN_ONLY]
        if self._cosine and euclidean_only:
            verb = "measures" if len(euclidean_only) == 1 else "measure"
            raise ParamError(f"metrics: {', '.join(euclidean_only)} {verb} Euclidean "
                             "distances, and distance_measure is cosine",
                             hint="leave them out of metrics (the silhouette is the cosine "
                                  "one), or measure with distance_measure: squared_euclidean")
        # the silhouette and Davies-Bouldin read the rows again: the runtime caches them
        self.multi_pass = bool(SECOND_PASS & set(self.metric_names()))

    @property
    def _cosine(self) -> bool:
        return self.params.distance_measure == "cosine"

    def metric_names(self) -> list[str]:
        """The metrics measured: those listed, else all the measure has."""
        if self.params.metrics:
            return list(self.params.metrics)
        return [m for m in METRICS if not (self._cosine and m in EUCLIDEAN_ONLY)]

    # ----------------------------------------------------------------- plan time

    def _features(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return chosen_features(schema, p.features, {p.prediction, p.weight, *SKIPPED} - {None},
                               sparse=True)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return [*columns_of(schema, self._features(schema)), p.prediction,
                *([p.weight] if p.weight else []), *(p.by or [])]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self._plan(schema)
        return schema

    def _plan(self, schema: pa.Schema) -> list[str]:
        p = self.params
        require_columns(schema, [p.prediction], "prediction column")
        kind = value_type(schema.field(p.prediction).type)
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind)
                or pa.types.is_large_string(kind) or pa.types.is_boolean(kind)):
            raise SchemaError(f"prediction '{p.prediction}' has type {kind}: cluster ids are "
                              "integers or text", hint="is `prediction:` the clustering "
                                                       "step's column?")
        check_role("weight", p.weight, p.features)
        if p.by:
            require_groupable(schema, p.by)
        if p.weight:
            require_columns(schema, [p.weight], "weight column")
            if not is_numeric(value_type(schema.field(p.weight).type)):
                raise SchemaError(f"weight column '{p.weight}' has type "
                                  f"{schema.field(p.weight).type}, not a number",
                                  hint="cast it to float64")
        features = self._features(schema)
        if not features:  # (after a fit that adds them, such as one_hot: at run time)
            raise MissingColumnError("no numeric feature columns to measure the clusters on",
                                     hint="set features: the columns the rows were "
                                          "clustered on")
        require_columns(schema, columns_of(schema, features), "feature column")
        for column, start, _ in groups(schema, features):
            name = features[start]
            if column is None and not (is_numeric(value_type(schema.field(name).type))
                                       or is_sparse_type(schema.field(name).type)):
                raise SchemaError(f"feature column '{name}' has type "
                                  f"{schema.field(name).type}: distances need numbers",
                                  hint="cast it, or leave it out of features")
        return features

    # ----------------------------------------------------------------- fit

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"features": self._plan(schema), "metrics": self.metric_names(),
                "phase": "clusters"}

    def _rows(self, part: pa.Table, state: dict[str, Any], xp: Any) -> tuple[pa.Array, Any]:
        """The partition's cluster ids and feature matrix (a null either way: an error)."""
        ids = part.column(self.params.prediction).combine_chunks()
        if pa.types.is_dictionary(ids.type):
            ids = ids.cast(ids.type.value_type)
        if ids.null_count:
            raise DataError(f"prediction '{self.params.prediction}' has {ids.null_count} "
                            "null values", hint="cluster every row, or filter those out")
        X = feature_matrix(part, state["features"], xp)  # the metrics in float64, always
        return ids, X if X.dtype == xp.float64 else xp.astype(X, xp.float64)

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        by = self.params.by
        if part.num_rows == 0:
            out = self.measure(pa.array([], pa.int64()), None, state, xp)
            return {**out, "groups": {}} if by else out
        grouped = self._by.rows(part) if by else []
        if by:  # each group's rows together: a slice of the one matrix sent to the device
            part = part.take(pa.array(np.concatenate([rows for _, rows in grouped])))
        ids, X = self._rows(part, state, xp)
        w = None
        if self.params.weight:
            w = row_weights(part, self.params.weight)
            if (w <= 0).any():
                raise DataError(f"weight column '{self.params.weight}' has "
                                f"{int((w <= 0).sum())} values of 0: a row of no weight "
                                "has no silhouette", hint="filter those rows out")
        if self._cosine:
            X = unit_rows(X, state["features"], xp, "evaluate_clusters (cosine)")
        out = self._stats(ids, X, state, xp, w)
        if not by:
            return out
        out["groups"], start = {}, 0
        for key, rows in grouped:
            stop = start + len(rows)
            mine = state if state["phase"] == "clusters" else {**state,
                                                              **state["groups"][key]}
            out["groups"][key] = self._stats(ids.slice(start, stop - start),
                                             X[start:stop, :], mine, xp,
                                             None if w is None else w[start:stop])
            start = stop
        return out

    def measure(self, ids: pa.Array, X: Any, state: dict[str, Any], xp: Any,
                w: np.ndarray | None = None) -> dict[str, Any]:
        """``partial``'s statistics of rows given as their cluster ids (no nulls) and
        their features, a float64 matrix on ``xp`` (None for no rows), and their positive
        weights (None: each 1): a clustering step measuring its own held-out rows
        (kmeans' validation) calls this."""
        if self._cosine and X is not None:
            X = unit_rows(X, state["features"], xp, "evaluate_clusters (cosine)")
        return self._stats(ids, X, state, xp, w)

    def _stats(self, ids: pa.Array, X: Any, state: dict[str, Any], xp: Any,
               w: np.ndarray | None) -> dict[str, Any]:
        """``measure``'s statistics of rows already made unit where the measure is cosine."""
        if state["phase"] == "clusters":
            return _clusters(ids, X, len(state["features"]), xp, w)
        return _spread(ids, X, state, xp, w)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "silhouette" in a:
            out = {"silhouette": a["silhouette"] + b["silhouette"],
                   "distance": a["distance"] + b["distance"]}
        else:
            out = _combine_clusters(a, b)
        if "groups" in a:
            out["groups"] = self._by.merged(a["groups"], b["groups"], self.combine)
        return out

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "clusters":
            problem = unmeasurable(len(stats["ids"]), int(np.sum(stats["rows"])))
            if problem is not None:
                raise DataError(f"{problem} (scikit-learn's rule)",
                                hint="check the prediction column and the rows given")
            state = {**state, **_clusters_of(stats)}
            if "groups" in stats:
                state["groups"] = {key: _clusters_of(group)
                                   for key, group in stats["groups"].items()}
            if SECOND_PASS & set(state["metrics"]):
                return {**state, "phase": "spread"}, False
            return {**state, "metrics_values": self._figures(state, None)}, True
        return {**state, "metrics_values": self._figures(state, stats)}, True

    def _figures(self, state: dict[str, Any], spread: dict[str, Any] | None
                 ) -> dict[str, Any]:
        """The metrics of all the rows and, with ``by``, of each group's."""
        values = self._values(state, spread)
        if "groups" in state:
            values["groups"] = {
                self._by.label(key): self._values(
                    {**state, **state["groups"][key]},
                    None if spread is None else spread["groups"][key])
                for key in self._by.ordered(state["groups"])}
        return values

    def _values(self, state: dict[str, Any], spread: dict[str, Any] | None
                ) -> dict[str, Any]:
        rows, means, within = state["rows"], state["means"], state["within"]
        weight = state["weight"]  # the rows' counts without weights
        n, k = float(np.sum(weight)), len(rows)
        total_within = float(np.sum(within))
        everything = {"count": int(np.sum(rows)), "clusters": k,
                      "cluster_sizes": {str(i): int(r) for i, r in zip(state["ids"], rows,
                                                                       strict=True)},
                      "within_ss": total_within}
        if self._cosine:  # the unit rows' cosine distances to their cluster's direction
            everything["within_ss"] = float(weight @ (1.0 - np.sqrt(np.sum(means ** 2,
                                                                           axis=1))))
        if unmeasurable(k, int(np.sum(rows))) is not None:  # a by group's (all rows': an error)
            everything.update(silhouette=math.nan, calinski_harabasz=math.nan,
                              davies_bouldin=math.nan)
            return {m: everything[m] for m in METRICS if m in state["metrics"]}
        mean = weight @ means / n
        between = float(weight @ np.sum((means - mean) ** 2, axis=1))
        everything["calinski_harabasz"] = (1.0 if total_within == 0 else
                                           between * (n - k) / (total_within * (k - 1)))
        if spread is not None:
            everything["silhouette"] = spread["silhouette"] / n
            everything["davies_bouldin"] = davies_bouldin(spread["distance"] / weight, means)
        return {m: everything[m] for m in METRICS if m in state["metrics"]}


def _clusters_of(stats: dict[str, Any]) -> dict[str, Any]:
    """The first pass's clusters (ids, rows, weight, means, within) of combined stats."""
    return {key: stats[key] for key in ("ids", "rows", "weight", "means", "within")}


def _clusters(ids: pa.Array, X: Any, d: int, xp: Any, w: np.ndarray | None = None
              ) -> dict[str, Any]:
    """Each cluster's rows, weight (its rows without weights), mean and within sum of
    squares among the rows (weighted)."""
    if len(ids) == 0:
        return {"ids": [], "rows": np.zeros(0), "weight": np.zeros(0),
                "means": np.zeros((0, d)), "within": np.zeros(0)}
    found = pc.unique(ids).sort()
    index = pc.index_in(ids, value_set=found).to_numpy(zero_copy_only=False)
    order = np.argsort(index, kind="stable")  # each cluster's rows together, one take
    ends = np.cumsum(np.bincount(index, minlength=len(found)))
    grouped = xp.take(X, xp.asarray(order), axis=0)
    weights = None if w is None else xp.asarray(w[order], dtype=X.dtype)
    rows, weight, means, within = [], [], [], []
    for c in range(len(found)):
        start, stop = int(ends[c - 1]) if c else 0, int(ends[c])
        members = grouped[start:stop, :]
        if weights is None:
            mean = xp.mean(members, axis=0)
            within.append(float(xp.sum((members - mean) ** 2)))
            weight.append(float(members.shape[0]))
        else:
            mine = weights[start:stop]
            total = float(xp.sum(mine))
            mean = xp.sum(mine[:, None] * members, axis=0) / total
            within.append(float(xp.sum(mine[:, None] * (members - mean) ** 2)))
            weight.append(total)
        rows.append(members.shape[0])
        means.append(to_numpy(mean))
    return {"ids": found.to_pylist(), "rows": np.asarray(rows, dtype=np.float64),
            "weight": np.asarray(weight, dtype=np.float64),
            "means": np.asarray(means, dtype=np.float64).reshape(-1, d),
            "within": np.asarray(within)}


def _spread(ids: pa.Array, X: Any, state: dict[str, Any], xp: Any,
            w: np.ndarray | None = None) -> dict[str, Any]:
    """The sums of the rows' silhouettes and of their distances to their cluster's mean
    (per cluster; weighted), a block of rows at a time: a block's distances to every
    mean are ``BLOCK_VALUES`` numbers at most, however many clusters there are."""
    k, n = len(state["ids"]), len(ids)
    if n == 0:
        return {"silhouette": 0.0, "distance": np.zeros(k)}
    value_set = pa.array(state["ids"], ids.type)
    own = pc.index_in(ids, value_set=value_set).to_numpy(zero_copy_only=False)
    means = xp.asarray(np.asarray(state["means"], dtype=np.float64), dtype=X.dtype)
    step = max(1, BLOCK_VALUES // k)
    silhouette, distance = 0.0, np.zeros(k)
    for start in range(0, n, step):
        stop = min(start + step, n)  # the array API has no stop past the end
        mine = None if w is None else w[start:stop]
        s, near = _silhouettes(X[start:stop, :], own[start:stop], means,
                               state["weight"], state["within"], xp, mine)
        if mine is None:
            silhouette += float(np.sum(s))
            distance += np.bincount(own[start:stop], weights=np.sqrt(near), minlength=k)
        else:
            silhouette += float(np.sum(mine * s))
            distance += np.bincount(own[start:stop], weights=mine * np.sqrt(near),
                                    minlength=k)
    return {"silhouette": silhouette, "distance": distance}


def unmeasurable(clusters: int, rows: int) -> str | None:
    """Why the silhouette, Calinski-Harabasz and Davies-Bouldin of ``rows`` rows in
    ``clusters`` clusters are undefined (scikit-learn's rule: 2 to rows - 1 clusters),
    None when they are defined."""
    if 2 <= clusters < rows:
        return None
    need = (f"2 to {rows - 1} clusters" if rows >= 3 else
            "3 rows at least (2 clusters, fewer than the rows)")
    return f"{rows} rows in {clusters} clusters: the metrics need {need}"


def _silhouettes(X: Any, own: np.ndarray, means: Any, rows: np.ndarray,
                 within: np.ndarray, xp: Any, w: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The rows' silhouettes and their squared distances to their own cluster's mean;
    ``rows``: each cluster's weight (its rows without weights), ``w`` the rows' (MLlib's:
    a row's own cluster's mean over the others' weight, ``W_C - w``)."""
    k, n = len(rows), X.shape[0]
    # each row's squared distance to every cluster's mean (one cluster at a time: the
    # difference, not |x|^2 - 2 x.m + |m|^2, whose cancellation loses tight clusters)
    d2 = np.column_stack([to_numpy(xp.sum((X - means[c, :]) ** 2, axis=1))
                          for c in range(k)]).astype(np.float64)
    at = np.arange(n)
    near = d2[at, own]
    others = rows[own] - (1.0 if w is None else w)  # the weight of its cluster's others
    alone = others <= 0 if w is not None else rows[own] == 1
    # mean squared distance to the other rows of its own cluster, and to each other's
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (rows[own] * near + within[own]) / others
    d2 += within / rows  # now each other cluster's mean squared distance
    d2[at, own] = np.inf
    b = d2.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    # scikit-learn's: 0 alone, 0 / 0 -> 0
    return np.where(alone | ~np.isfinite(s), 0.0, s), near


def davies_bouldin(spread: np.ndarray, means: np.ndarray) -> float:
    """scikit-learn's ``davies_bouldin_score`` from each cluster's mean distance to its
    mean and the means (0 where every spread or every pair of means is 0); the means'
    distances one cluster at a time (k x k numbers, not k x k x features)."""
    apart = np.stack([np.sqrt(np.sum((means - m) ** 2, axis=1)) for m in means])
    if np.allclose(spread, 0) or np.allclose(apart, 0):
        return 0.0
    apart[apart == 0] = np.inf
    ratio = (spread[:, None] + spread[None, :]) / apart
    return float(np.mean(np.max(ratio, axis=1)))


def _combine_clusters(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partitions' clusters as one's: Chan's parallel formula for each cluster both
    saw, in the sorted order of the ids."""
    ids = sorted(set(a["ids"]) | set(b["ids"]), key=_order)
    d = a["means"].shape[1]
    rows, means, within = np.zeros(len(ids)), np.zeros((len(ids), d)), np.zeros(len(ids))
    weight = np.zeros(len(ids))
    where = {value: i for i, value in enumerate(ids)}
    for side in (a, b):
        for j, value in enumerate(side["ids"]):
            i = where[value]
            n_a, n_b = weight[i], side["weight"][j]
            total = n_a + n_b
            delta = side["means"][j] - means[i]
            means[i] = means[i] + delta * (n_b / total)
            within[i] += side["within"][j] + float(delta @ delta) * n_a * n_b / total
            weight[i] = total
            rows[i] += side["rows"][j]
    return {"ids": ids, "rows": rows, "weight": weight, "means": means, "within": within}


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, bool | int) else (1, str(value))


@register_fitted("evaluate_clusters.fitted")
class EvaluateClustersFitted(Measured):
    """The evaluated rows, unchanged; carries the metrics it measured."""

    Params = EvaluateClustersParams
