"""isolation_forest: unsupervised anomaly detection (Liu, Ting and Zhou 2008), as
scikit-learn's ``IsolationForest``: trees grown on small subsamples, every row scored.

The fit is a pass or a few over the partitions:

1. (``max_samples`` a fraction only) a count of the rows, for the subsample's size;
2. the subsamples: tree ``t`` draws the ``max_samples`` rows of smallest key
   ``mix(row hash ^ mix(salt + t))``, the row hash of the features and ``seed``
   (``operators.hashing``): a draw without replacement of exactly that many rows, the
   same rows on every engine and partitioning. Bottom-k merges: a partition keeps its
   k smallest keys per tree, ``combine`` the k smallest of both (ties by the rows'
   values). Copies of a row share their keys, so they enter a tree together (up to k):
   a row repeated m times is drawn about as often as scikit-learn draws each copy, in
   one clump. The draws, ``n_trees`` x ``max_samples`` rows of every feature (float64),
   are held whole by each partition's task and the driver (a merge holds two and its
   result): past the memory share (``operators.sparse.past_memory_share``) the fit stops
   before the pass that draws them, with their size and what lowers it;
3. on the driver, each tree grows on its subsample as scikit-learn's (an
   ``ExtraTreeRegressor`` of ``max_features=1``): at each node a feature drawn among
   those not constant in the node, a threshold uniform between the node's least and
   greatest value (the greatest drawn: the least), ``x <= threshold`` to the left (a
   feature spanning at most ``CONSTANT_RANGE`` in the node is constant there),
   down to the height limit ``ceil(log2(max_samples))``; its randomness is NumPy's
   PCG64 seeded by ``(seed, t)``: the same trees on every engine. ``max_features``
   below 1 gives each tree a subset of the features, drawn from the same stream.
   scikit-learn rounds the features to float32 for its trees; here they stay float64
   (a value within a float32 rounding of a threshold can go the other way);
4. ``contamination`` a fraction: the score's quantile over the training rows, exact
   (``operators.quantiles.QuantileSearch``: numpy's linear quantile, as scikit-learn's
   ``np.percentile``; no sketch error), in a few passes that score the rows; then one
   pass counts the training rows flagged (for the run record).

A sparse column (``vectorize_text`` with ``sparse: true``, ``operators.sparse``) among the
features is its terms ``<col>:<term>``, as the other models read it: the sample pass keeps
its rows a CSR matrix and makes dense only the rows drawn; scoring makes dense only the
terms the trees split on (feature-major, as the walk reads them), on every namespace. Its
row hash is of the column as stored, so the draws differ from those of the same terms as
columns; where every row is drawn (``max_samples`` at least the rows, or 1.0) the trees
are the same as on the term columns (a tree's splits depend on its rows as a set), and a
fitted model scores a sparse row as it scores the same terms as columns.

A row's path length in a tree is the depth of its leaf plus ``c(n)`` for the ``n``
subsample rows the leaf holds (the average path length of an unsuccessful search in a
binary search tree of n keys, scikit-learn's ``_average_path_length``); its anomaly
score is ``2 ** (-mean path length / c(max_samples))``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from operators.arrays import to_numpy, to_xp
from operators.base import DataError, Estimator, ParamError, Params, register, register_fitted
from operators.hashing import hash_rows, salted_keys
from operators.models.common import (
    PREDICTION,
    FittedModel,
    check_features,
    chosen_features,
    finite_column,
    host_matrix,
    put_column,
    require_features,
    require_some_features,
    require_training_rows,
    table_memo,
)
from operators.models.trees import (
    coded_walk,
    feature_columns,
    leaf_sums,
    projected_walk,
    split_features,
)
from operators.quantiles import QuantileSearch
from operators.sparse import (
    columns_of,
    csr_matrix,
    groups,
    has_sparse,
    issparse,
    past_memory_share,
)

ANOMALY_SCORE = "anomaly_score"
AUTO_OFFSET = -0.5
"""scikit-learn's offset with ``contamination='auto'``: a row is an outlier when its
anomaly score is above 0.5 (the original paper's rule)."""
_SUBSAMPLE_SALT = 6 << 40  # clear of trees.py's salts
CONSTANT_RANGE = 1e-7
"""A feature whose values in a node span no more than this is constant there: not split
on (scikit-learn's tree splitters' ``FEATURE_THRESHOLD``)."""


class IsolationForestParams(Params):
    features: list[str] | None = Field(
        None, min_length=1, description="feature columns (default: every numeric column)")
    n_trees: int = Field(100, ge=1, le=100_000,
                         description="trees in the forest (scikit-learn's n_estimators)")
    max_samples: Literal["auto"] | int | float = Field(
        "auto", description="rows each tree is grown on: a count, or a fraction in (0, 1] "
                            "of the rows; auto: 256, or every row when fewer")
    max_features: int | float = Field(
        1.0, description="features each tree may split on: a count, or a fraction in "
                         "(0, 1] of the features (scikit-learn's max_features)")
    contamination: Literal["auto"] | float = Field(
        "auto", description="the share of outliers expected in the training rows, in "
                            "(0, 0.5]: the threshold is that quantile of their scores; "
                            "auto: anomaly_score above 0.5 (scikit-learn's offset -0.5)")
    seed: int = Field(0, description="seed of the subsamples (with the rows' content) "
                                     "and of the trees' splits")

    @model_validator(mode="after")
    def _ranges(self) -> IsolationForestParams:
        for name in ("max_samples", "max_features"):
            value = getattr(self, name)
            if isinstance(value, bool):
                raise ParamError(f"{name} must be a count or a fraction, got {value}")
            if isinstance(value, int) and value < 1:
                raise ParamError(f"{name} must be a count >= 1 or a fraction in (0, 1], "
                                 f"got {value}")
            if isinstance(value, float) and not 0.0 < value <= 1.0:
                raise ParamError(f"{name} must be a fraction in (0, 1] or a count, got "
                                 f"{value}", hint=f"{name}: 256 (rows) or 0.1 (a share)")
        c = self.contamination
        if not isinstance(c, str) and not 0.0 < c <= 0.5:
            raise ParamError(f"contamination must be auto or a fraction in (0, 0.5], got {c}")
        return self


# --------------------------------------------------------------------------- trees


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """``c(n)``: the average path length of an unsuccessful search in a binary search
    tree of ``n`` keys (0 for n <= 1, 1 for n = 2), scikit-learn's
    ``_average_path_length``, value for value."""
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))
    out = np.zeros(n.shape)
    two = n == 2
    many = n > 2
    out[two] = 1.0
    m = n[many]
    out[many] = 2.0 * (np.log(m - 1.0) + np.euler_gamma) - 2.0 * (m - 1.0) / m
    return out


def height_limit(max_samples: int) -> int:
    """scikit-learn's ``max_depth`` of each tree: ``ceil(log2(max(max_samples, 2)))``."""
    return int(math.ceil(np.log2(max(max_samples, 2))))


def tree_rng(seed: int, tree: int) -> np.random.Generator:
    """Tree ``tree``'s random stream: PCG64 seeded by the seed and the tree's position."""
    return np.random.default_rng(np.random.SeedSequence([seed % (1 << 64), tree]))


def tree_features(rng: np.random.Generator, n_features: int, used: int) -> np.ndarray:
    """The features a tree may split on: all, or ``used`` of them drawn from its stream."""
    if used >= n_features:
        return np.arange(n_features)
    return np.sort(rng.choice(n_features, size=used, replace=False))


def grow_tree(X: np.ndarray, rng: np.random.Generator, features: np.ndarray,
              limit: int) -> dict[str, np.ndarray]:
    """An isolation tree on the subsample ``X`` (rows, features), depth first, nodes
    numbered in pre-order (scikit-learn's order): per node its feature (-1: a leaf),
    threshold, children (-1 at a leaf), subsample rows and depth."""
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    samples: list[int] = []
    depth: list[int] = []

    def node(rows: np.ndarray, level: int) -> int:
        at = len(feature)
        feature.append(-1)
        threshold.append(0.0)
        left.append(-1)
        right.append(-1)
        samples.append(len(rows))
        depth.append(level)
        if level >= limit or len(rows) < 2:
            return at
        values = X[np.ix_(rows, features)]
        low, high = values.min(axis=0), values.max(axis=0)
        varying = np.flatnonzero(high > low + CONSTANT_RANGE)
        if not len(varying):  # copies of one row: nothing isolates them
            return at
        j = int(varying[rng.integers(len(varying))])
        cut = float(rng.uniform(low[j], high[j]))
        if cut == high[j]:  # the draw rounded up to the greatest value (scikit-learn's rule)
            cut = float(low[j])
        goes_left = values[:, j] <= cut
        feature[at], threshold[at] = int(features[j]), cut
        left[at] = node(rows[goes_left], level + 1)
        right[at] = node(rows[~goes_left], level + 1)
        return at

    node(np.arange(len(X)), 0)
    return {"feature": np.asarray(feature, np.int32), "threshold": np.asarray(threshold),
            "left": np.asarray(left, np.int32), "right": np.asarray(right, np.int32),
            "samples": np.asarray(samples, np.int64), "depth": np.asarray(depth, np.int32)}


def forest_arrays(trees: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The trees' nodes as one set of arrays, children as positions in it;
    ``tree_start``: where each tree's nodes start (and the end)."""
    sizes = [len(t["feature"]) for t in trees]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    out = {key: np.concatenate([t[key] for t in trees]) for key in
           ("feature", "threshold", "samples", "depth")}
    for key in ("left", "right"):
        out[key] = np.concatenate([np.where(t[key] >= 0, t[key] + start, -1)
                                   for t, start in zip(trees, starts[:-1], strict=True)]
                                  ).astype(np.int64)
    out["tree_start"] = starts
    return out


# --------------------------------------------------------------------------- fitted


@register_fitted("isolation_forest.fitted")
class IsolationForestFitted(FittedModel):
    """``anomaly_score``: the paper's ``s(x) = 2 ** (-E[h(x)] / c(max_samples))`` in (0, 1]
    (higher: more anomalous; scikit-learn's ``score_samples`` is its negative);
    ``prediction``: 1 for an outlier (``-anomaly_score - offset < 0``, scikit-learn's
    ``predict`` of -1), else 0 (int64)."""

    supervised = False
    extra_columns = (ANOMALY_SCORE,)
    takes_sparse = True  # predict_matrix of a SciPy CSR matrix too: its split features
    NODES = ("feature", "threshold", "left", "right", "samples", "depth", "tree_start")

    def __init__(self, features: list[str], nodes: dict[str, np.ndarray], max_samples: int,
                 offset: float):
        super().__init__(features)
        self.nodes = {key: np.asarray(nodes[key]) for key in self.NODES}
        self.max_samples = int(max_samples)
        self.offset = float(offset)
        feature = self.nodes["feature"].astype(np.int64)
        leaf = feature < 0
        own = np.arange(len(feature))
        # a leaf's path length as scikit-learn adds it: its depth (root 1) plus c(n) less 1
        value = (self.nodes["depth"] + 1.0 + average_path_length(self.nodes["samples"])) - 1.0
        # the rows leaf_sums walks (trees.TreeModelFitted's): feature, threshold, left,
        # right, default side of a missing value (none reach here), the leaf's value;
        # leaves point at themselves, so that every row takes the same number of steps
        self._walk = np.stack([np.where(leaf, 0, feature), self.nodes["threshold"],
                               np.where(leaf, own, self.nodes["left"]),
                               np.where(leaf, own, self.nodes["right"]),
                               np.zeros(len(feature)), np.where(leaf, value, 0.0)])
        self.depth = int(self.nodes["depth"].max(initial=0))

    def __repr__(self) -> str:
        return (f"IsolationForestFitted(features={self.features!r}, "
                f"trees={self.n_trees}, max_samples={self.max_samples})")

    @property
    def n_trees(self) -> int:
        return len(self.nodes["tree_start"]) - 1

    @functools.cached_property
    def forest_id(self) -> str:
        """A digest of the trees: what scores kept with a table are of."""
        return hashlib.blake2b(b"".join(self.nodes[key].tobytes() for key in self.NODES),
                               digest_size=16).hexdigest()

    @functools.cached_property
    def _coded(self) -> dict[str, np.ndarray] | None:
        return coded_walk(self._walk, len(self.features))

    @functools.cached_property
    def _split_features(self) -> np.ndarray:
        """The features the trees split on: all that scoring reads of a sparse column."""
        return split_features(self.nodes["feature"])

    @functools.cached_property
    def _projected(self) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """The walk and coded walk on ``_split_features`` only: the same decisions."""
        walk = projected_walk(self._walk, self._split_features)
        return walk, coded_walk(walk, len(self._split_features))

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_features(schema, self.features, fitted=True)
        return anomaly_schema(schema)

    def path_lengths(self, flat: Any, n: int, xp: Any, projected: bool = False) -> Any:
        """Each row's summed path length over the trees (float64, on ``xp``), from the
        feature-major flattened float64 matrix ``flat`` (of ``_split_features`` only,
        ``projected``)."""
        walk, coded = self._projected if projected else (self._walk, self._coded)
        sums = leaf_sums(flat, n, walk, self.nodes["tree_start"][:-1], self.depth, xp, coded)
        return sums[:, 0]

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        """The anomaly scores of a (rows, features) matrix, or of a SciPy CSR matrix (its
        columns the trees split on made dense, the rest never read)."""
        if issparse(X):
            used = X[:, self._split_features].toarray().astype(np.float64, copy=False)
            flat = to_xp(np.ascontiguousarray(used.T).reshape(-1), xp)
            return self._scores(self.path_lengths(flat, X.shape[0], xp, projected=True))
        flat = xp.reshape(xp.permute_dims(xp.astype(X, xp.float64), (1, 0)), (-1,))
        return self._scores(self.path_lengths(flat, X.shape[0], xp))

    def _scores(self, sums: Any) -> Any:
        scale = self.n_trees * float(average_path_length(self.max_samples)[0])
        return 2.0 ** (-sums / scale)

    def anomaly_scores(self, part: pa.Table, xp: Any) -> np.ndarray:
        """The rows' anomaly scores on the host (float64), kept with the table: the fit's
        passes over the training rows and the run's scoring of them after the fit (the
        local engine hands them the same table) score each row once. The features go
        to ``xp`` in float64 whatever its compute dtype: they are only compared with the
        thresholds, and a value rounded to float32 could cross one (another leaf,
        another score)."""
        memo = table_memo(part)
        key = ("isolation_forest", self.forest_id, tuple(self.features))
        held = memo.get(key)
        if held is None:
            held = memo[key] = self._anomaly_scores(part, xp)
            held.flags.writeable = False
        return held

    def _anomaly_scores(self, part: pa.Table, xp: Any) -> np.ndarray:
        require_features(part.schema, self.features)
        if has_sparse(part.schema, self.features):
            # a sparse column's rows: only the features the trees split on made dense
            # (feature-major), on every namespace; the plain columns checked as host_matrix
            # checks them, the sparse one's values by csr_parts
            for column, j, _ in groups(part.schema, self.features):
                if column is None:
                    finite_column(part.column(self.features[j]),
                                  f"feature column '{self.features[j]}'")
            host = feature_columns(part, self.features, None, None, self._split_features)
            flat = to_xp(host.reshape(-1), xp)
            lengths = self.path_lengths(flat, part.num_rows, xp, projected=True)
        else:
            host = host_matrix(part, self.features)  # (rows, features) in F order: checked
            flat = to_xp(np.ascontiguousarray(host.T).reshape(-1), xp)
            lengths = self.path_lengths(flat, part.num_rows, xp)
        return to_numpy(self._scores(lengths)).astype(np.float64, copy=False)

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """True for an outlier: scikit-learn's ``decision_function < 0``."""
        return (-scores - self.offset) < 0

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        check_features(part.schema, self.features, fitted=True)
        scores = self.anomaly_scores(part, xp)
        out = put_column(part, pa.field(PREDICTION, pa.int64()),
                         pa.array(self.flagged(scores).astype(np.int64)))
        return put_column(out, pa.field(ANOMALY_SCORE, pa.float64()), pa.array(scores))

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.nodes)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "max_samples": self.max_samples, "offset": self.offset}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> IsolationForestFitted:
        return cls(list(meta["features"]), arrays, int(meta["max_samples"]),
                   float(meta["offset"]))


def anomaly_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with ``prediction`` (int64) and ``anomaly_score`` (float64): in place
    where it has them, else at the end."""
    for field in (pa.field(PREDICTION, pa.int64()), pa.field(ANOMALY_SCORE, pa.float64())):
        at = schema.get_field_index(field.name)
        schema = schema.set(at, field) if at >= 0 else schema.append(field)
    return schema


# --------------------------------------------------------------------------- subsamples


def smallest_rows(keys: np.ndarray, values: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per tree (first axis) the ``k`` rows of smallest key, ties by their values: the
    same rows whatever order they came in. ``keys``: (trees, rows) uint64, ``values``:
    (trees, rows, features)."""
    trees, rows = keys.shape
    m = min(rows, k)
    kept_keys = np.empty((trees, m), np.uint64)
    kept = np.empty((trees, m, values.shape[2]))
    for t in range(trees):
        columns = [values[t, :, j] + 0.0 for j in range(values.shape[2] - 1, -1, -1)]
        order = np.lexsort([*columns, keys[t]])[:m]
        kept_keys[t], kept[t] = keys[t, order], values[t, order]
    return kept_keys, kept


def dense_rows(X: Any, at: np.ndarray | slice) -> np.ndarray:
    """Rows ``at`` of ``X`` as a dense float64 array (of a SciPy CSR matrix: those rows
    alone made dense)."""
    return X[at].toarray() if issparse(X) else X[at]


def merged_rows(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``smallest_rows`` of two draws (keys, values) together, a tree at a time: only one
    tree's rows of both are copied side by side, never all of both draws at once (the
    merge holds the two draws and its result)."""
    (a_keys, a_values), (b_keys, b_values) = a, b
    trees = a_keys.shape[0]
    m = min(a_keys.shape[1] + b_keys.shape[1], k)
    kept_keys = np.empty((trees, m), np.uint64)
    kept = np.empty((trees, m, a_values.shape[2]))
    for t in range(trees):
        keys, values = smallest_rows(np.concatenate([a_keys[t], b_keys[t]])[None, :],
                                     np.concatenate([a_values[t], b_values[t]])[None], k)
        kept_keys[t], kept[t] = keys[0], values[0]
    return kept_keys, kept


SAMPLE_COPIES = 3
"""How many times over the subsamples are held at once: a merge's two draws and its
result (``merged_rows``); a partition's draw, each tree's rows picked, stacked and trimmed."""


def require_sample_room(n_trees: int, k: int, features: list[str],
                        sparse: list[tuple[str, int]]) -> None:
    """A DataError, before the pass that draws them, where the subsamples the trees grow on
    (``n_trees`` x ``k`` rows x the features, float64, ``SAMPLE_COPIES`` times over) are
    past ``past_memory_share``: every partition's task and the driver hold them whole;
    ``sparse``: the sparse columns among the features (name, terms), which the hint names."""
    d = len(features)
    past = past_memory_share(SAMPLE_COPIES * 8.0 * n_trees * k * d)
    if past is None:
        return
    fewer = "fewer features (features:)"
    if sparse:
        name, terms = max(sparse, key=lambda c: c[1])
        fewer = (f"fewer features (the sparse column '{name}' gives {terms:,} of them: "
                 "vectorize_text's max_features, min_df or num_features)")
    raise DataError(
        f"the subsamples the trees grow on, {n_trees:,} trees x {k:,} rows x {d:,} features "
        f"(float64, held {SAMPLE_COPIES} times over as partitions' draws merge), take {past}",
        hint=f"lower max_samples (the rows each tree draws) or n_trees, or {fewer}; "
             "max_features does not lower it (a tree's rows keep every feature)")


def partition_sample(X: Any, hashes: np.ndarray, n_trees: int, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A partition's ``smallest_rows`` of each tree's keys, from its rows ``X`` (rows,
    features; a SciPy CSR matrix of a sparse column's rows too) and their hashes; the
    partition's other rows are never copied (nor made dense)."""
    n = len(hashes)
    if n <= k:
        keys = np.stack([salted_keys(hashes, _SUBSAMPLE_SALT + t) for t in range(n_trees)]
                        ) if n_trees else np.zeros((0, n), np.uint64)
        rows = dense_rows(X, slice(None))
        return smallest_rows(keys, np.broadcast_to(rows, (n_trees, *rows.shape)), k)
    key, spare = np.empty_like(hashes), np.empty_like(hashes)
    picked_keys, picked_rows = [], []
    for t in range(n_trees):
        salted_keys(hashes, _SUBSAMPLE_SALT + t, key, spare)
        bound = np.partition(key, k - 1)[k - 1]
        at = np.flatnonzero(key <= bound)  # the k smallest and any that tie with the k-th
        picked_keys.append(key[at])
        picked_rows.append(dense_rows(X, at))
    most = max(len(a) for a in picked_keys)
    if any(len(a) != most for a in picked_keys):  # ties at the k-th: trim each to k first
        trimmed = [smallest_rows(a[None, :], r[None, :, :], k)
                   for a, r in zip(picked_keys, picked_rows, strict=True)]
        picked_keys = [a[0] for a, _ in trimmed]
        picked_rows = [r[0] for _, r in trimmed]
    return smallest_rows(np.stack(picked_keys), np.stack(picked_rows), k)


# --------------------------------------------------------------------------- estimator


@register("isolation_forest")
class IsolationForest(Estimator):
    """Anomalies by isolation forest (scikit-learn's): adds `anomaly_score` and `prediction`.

    ```yaml
    - op: isolation_forest
      features: [amount, hour, merchant_risk]   # default: every numeric column
      n_trees: 100                # scikit-learn's n_estimators
      max_samples: 256            # rows each tree grows on: a count or a fraction; auto: 256
      contamination: 0.01         # flag the 1% most anomalous training rows; auto: score > 0.5
      seed: 7                     # subsamples by row content, splits by tree: the same everywhere
    ```
    `anomaly_score` is the paper's score in (0, 1], higher for rows isolated in fewer splits
    (scikit-learn's `score_samples` is its negative, `decision_function` its negative less
    the offset); `prediction` is 1 for an outlier (where scikit-learn's `predict` gives -1),
    else 0. The score is a probability-like number for `evaluate` (`probability:
    anomaly_score` for roc_auc against a known label). Each tree grows on `max_samples` rows
    drawn by a hash of their content and the seed (exactly that many; copies of a row are
    drawn together), the splits from the seed and the tree: the same trees on every engine
    and partitioning. With `contamination` a fraction the threshold is that exact quantile
    of the training rows' scores (a few more passes). Rows have no weights (scikit-learn's
    sample_weight only weighs its draws). Features may not be null, NaN or infinite: impute
    them first. More `max_samples` than rows: every row, said in the run's note line.
    The run record has the trees, the rows each grew on, the height limit, the offset and
    threshold, and the share of training rows flagged. The subsamples, `n_trees` x
    `max_samples` rows of every feature, are held whole on the driver and in each task:
    where three copies would take over a quarter of the memory here, the fit stops
    before drawing them and says how large they are and what lowers them. A sparse column
    (vectorize_text with `sparse: true`) among the features gives its terms as features
    (`<col>:<term>`), its rows never made dense but for those drawn and the terms the trees
    split on; its rows are drawn by a hash of the column as stored, so not as the same
    terms as columns are (the same trees where every row is drawn: max_samples at least
    the rows).
    """

    Params = IsolationForestParams
    multi_pass = True
    extra_columns = (ANOMALY_SCORE,)

    def _features(self, schema: pa.Schema) -> list[str]:
        return chosen_features(schema, self.params.features, (), sparse=True)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return columns_of(schema, self._features(schema))

    def _check(self, schema: pa.Schema) -> list[str]:
        features = self._features(schema)
        require_some_features(features)  # after a fit that adds them: at run time
        check_features(schema, features)
        return features

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self._check(schema)
        return anomaly_schema(schema)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = self._check(schema)
        phase = "count" if isinstance(self.params.max_samples, float) else "sample"
        k = 256 if self.params.max_samples == "auto" else self.params.max_samples
        sparse = [(column, stop - start) for column, start, stop in groups(schema, features)
                  if column is not None]
        if phase == "sample":
            require_sample_room(self.params.n_trees, k, features, sparse)
        return {"phase": phase, "features": features, "k": k, "sparse": sparse}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        phase = state["phase"]
        if phase == "count":
            return {"rows": part.num_rows}
        if phase == "sample":
            return self._sample(part, state)
        model = self.fitted(state)
        scores = model.anomaly_scores(part, xp)
        if phase == "threshold":  # scikit-learn's score_samples: the negated scores
            return self._search().partial({"score": -scores}, state["search"])
        flagged = int(model.flagged(scores).sum())
        return {"flagged": flagged, "rows": part.num_rows}

    def _sample(self, part: pa.Table, state: dict[str, Any]) -> dict[str, Any]:
        """The partition's rows and each tree's k rows of smallest key. On the host: the
        row hashes are NumPy's, and a selection of the k smallest (``np.partition``) has
        no array API equivalent but a full sort. A sparse column's rows stay a CSR
        matrix (SciPy's), only those drawn made dense; its row hash is of the column as
        stored (its positions and values), not of a column per term."""
        features, k, n_trees = state["features"], state["k"], self.params.n_trees
        # the features checked: no null, NaN or inf
        X = csr_matrix(part, features) if has_sparse(part.schema, features) else None
        X = host_matrix(part, features) if X is None else X
        hashes = hash_rows(part, columns_of(part.schema, features), self.params.seed)
        keys, rows = partition_sample(X, hashes, n_trees, k)
        return {"rows": part.num_rows, "k": k, "keys": keys, "values": rows}

    def _search(self) -> QuantileSearch:
        """The exact quantile of the scores (scikit-learn's ``score_samples``) at
        ``contamination``: the offset."""
        return QuantileSearch(["score"], [float(self.params.contamination)])

    # ------------------------------------------------------------------ combine

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "keys" in a:
            keys, values = merged_rows((a["keys"], a["values"]), (b["keys"], b["values"]),
                                       a["k"])
            return {"rows": a["rows"] + b["rows"], "k": a["k"], "keys": keys,
                    "values": values}
        if "flagged" in a:
            return {"flagged": a["flagged"] + b["flagged"], "rows": a["rows"] + b["rows"]}
        if "rows" in a:
            return {"rows": a["rows"] + b["rows"]}
        return self._search().combine(a, b)

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        phase = state["phase"]
        if phase == "count":
            require_training_rows(stats["rows"], 0)
            k = max(1, int(self.params.max_samples * stats["rows"]))
            require_sample_room(self.params.n_trees, k, state["features"], state["sparse"])
            return {**state, "phase": "sample", "k": k}, False
        if phase == "sample":
            return self._grown(stats, state), False
        if phase == "threshold":
            found, done = self._search().update(stats, state["search"])
            state = {**state, "search": found, "threshold_passes": found["passes"]}
            if not done:
                return state, False
            offset = float(self._search().result(found)["score"][0])
            return {**state, "phase": "flagged", "offset": offset}, False
        return {**state, "phase": "done", "flagged": stats["flagged"]}, True

    def _grown(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        n = stats["rows"]
        require_training_rows(n, 0)
        k = state["k"]
        note = None
        if n < k:
            if p.max_samples != "auto":
                # (the run says it in a note line: the fit's metrics' note)
                note = (f"max_samples ({k}) is more than the {n} training rows: every row "
                        f"is used (max_samples {n})")
            k = n
        limit = height_limit(k)
        d = len(state["features"])
        used = p.max_features if isinstance(p.max_features, int) else max(
            1, int(p.max_features * d))
        if used > d:
            raise DataError(f"max_features is {used} and there are {d} features",
                            hint="lower max_features, or give it as a fraction")
        trees = []
        for t in range(p.n_trees):
            rng = tree_rng(p.seed, t)
            trees.append(grow_tree(stats["values"][t], rng, tree_features(rng, d, used), limit))
        state = {**state, "k": k, "rows": n, "height_limit": limit,
                 "nodes": forest_arrays(trees), "note": note}
        if p.contamination == "auto":
            return {**state, "phase": "flagged", "offset": AUTO_OFFSET}
        return {**state, "phase": "threshold", "offset": AUTO_OFFSET,
                "search": self._search().init(), "threshold_passes": 0}

    def fitted(self, state: dict[str, Any]) -> IsolationForestFitted:
        if "nodes" not in state:
            raise RuntimeError("isolation_forest: fitted() before the trees were grown")
        return IsolationForestFitted(state["features"], state["nodes"], state["k"],
                                     state["offset"])

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("phase") != "done":
            return {}
        nodes = state["nodes"]
        out: dict[str, Any] = {
            "trees": self.params.n_trees, "max_samples": int(state["k"]),
            "height_limit": int(state["height_limit"]),
            "nodes": int(len(nodes["feature"])),
            "offset": float(state["offset"]), "threshold": -float(state["offset"]),
            "flagged": int(state["flagged"]),
            "flagged_share": state["flagged"] / state["rows"],
            "training_rows": int(state["rows"]),
        }
        if self.params.contamination != "auto":
            out["threshold_passes"] = int(state["threshold_passes"])
        if state.get("note"):
            out["note"] = state["note"]
        return out


