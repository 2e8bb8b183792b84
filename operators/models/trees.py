"""Histogram trees over partitions: what decision_tree, random_forest and
gradient_boosted_trees share (Spark MLlib, XGBoost ``hist`` and LightGBM train this way).

A fit is rounds of passes over the partitions:

1. summary: the classes (or label sums), row counts, and a sample of the training rows
   for the bin edges: the ``BIN_SAMPLE_ROWS`` rows with the smallest row-content hash
   (a bottom-k sample, as scikit-learn's and LightGBM's 200,000-row binning samples).
   The sample is a function of the rows and the seed only, so every partitioning and
   engine gets the same edges, in one pass (``operators/quantiles.py``'s exact search
   needs 3 or 4 passes and ~100 MB of partials per partition for 254 quantiles of 20
   columns); with at most ``BIN_SAMPLE_ROWS`` training rows the edges are exact.
   Each feature gets at most ``max_bins`` value bins: the midpoints between its
   distinct values when there are few, else quantiles; NaN and null go to
   the missing bin after the value bins of the widest feature, so a code fits in a
   uint8 and histograms are no wider than the data needs.
2. level passes: each partition bins its training rows (a branch-free binary search of
   the edges per feature, ``bin_codes``), finds the node of every row in every tree
   being grown, and sums per (node, feature, bin) the statistics of the criterion
   (``histograms``: on NumPy a sparse product that releases the GIL, so the threads
   of a pass share the cores; a classifier's class counts, with no weight column, as
   integers, shipped in the smallest unsigned type that holds them: exactly the float
   sums, in an eighth to a half of the bytes); the driver adds the partitions' histograms and
   finds every pending node's best split (each threshold, missing values sent left and
   right; the left side only repeats the right when no node has missing values, and is
   then skipped). All trees of a level grow in the same pass; the level's nodes are split
   into several passes when their histograms would pass ``max_histogram_mb``. Where
   nodes use every feature, a pass sums only the smaller child of each split and the
   driver derives its sibling as parent minus child. With ``max_leaves`` a level's
   candidate splits wait on the driver until its last pass, where the best gains of
   all its nodes take the trees' room: passes are memory, never a choice of splits.
   Boosting keeps every row's node in
   the round's trees (``node_tables``, ``walk_step``: one lookup per row and level).
3. a validation pass when ``validation_fraction`` > 0.

A sparse column's positions are features as the others, kept sparse on NumPy: its
sample, codes and histograms are of the stored entries (``sparse_codes.py``), scoring
reads only the features the trees split on.

Nothing a partition computes depends on how the rows are split into partitions:
bootstrap counts and subsamples come from a hash of the row's content (features, label,
weight) and the seed. Histogram sums are floating point, so their last bits depend on
the order partials are added; split choices treat gains within ``GAIN_RTOL`` of the best
as ties (the lowest feature, then bin, wins) so that such noise cannot flip a split.

A partition cannot keep state between passes, but an engine that caches partitions (the
local engine) hands the same table object to every pass. ``fit_memo`` keeps the
derived arrays (bin codes, each tree's rows and their nodes, boosting scores and
gradients) in a weakly keyed memo of that object for the fit that made them; everything
in it is recomputed exactly when it is missing, with the same operations in the same
order, so it only saves time. The trees' rows and nodes and boosting's walks, the
memo's largest part, are kept within the process's kept budget (``memo_take``: that of
``kept_with``, ``SLUICE_CACHE_MB``); past it a pass moves the rows down from the roots.

The fitted model is arrays (``TreeModelFitted.arrays``): per node the feature (-1 for a
leaf), threshold (``x <= threshold`` goes left), children, default direction of missing
values, value, cover (training weight) and gain, per tree the root; no pickle. Scoring is
level-by-level gathers over all trees at once on any array namespace.
"""

from __future__ import annotations

import functools
import heapq
import math
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.arrays import (
    column_to_numpy,
    get_namespace,
    host_buffer,
    is_numpy,
    segment_sums,
    to_numpy,
    to_xp,
)
from operators.base import (
    DataError,
    Estimator,
    FitProgress,
    ParamError,
    SchemaError,
    require_columns,
)
from operators.hashing import hash_rows, mix
from operators.models.categories import (
    categories_from_meta,
    categories_meta,
    category_codes,
    category_type,
    check_categorical,
    choose_categories,
    in_set,
    normalized,
    scoring_type_error,
)
from operators.models.common import (
    ClassWeight,
    FittedModel,
    PlannedPredictions,
    SupervisedParams,
    by_class,
    check_class_weight,
    check_features,
    check_inputs,
    class_label_type,
    class_weight_field,
    class_weights,
    encode_classes,
    fit_memo,
    held_out,
    is_classification,
    label_column,
    memo_release,
    memo_take,
    merge_class_weights,
    model_input_columns,
    require_positive_weight,
    require_training_rows,
    row_weights,
    sigmoid,
    softmax,
    validation_combine,
    validation_finalize,
    validation_partial,
    weigh_classes,
    with_predictions,
)
from operators.models.explain import Paths, contributions
from operators.models.sparse_codes import (
    SparseCodes,
    can_read,
    merged_rows,
    sample_matrix,
    sorted_values,
    sparse_codes,
    sparse_histograms,
)
from operators.sparse import (
    columns_of,
    csr_parts,
    groups,
    has_sparse,
    issparse,
    past_memory_share,
    require_dense_room,
    rows_of,
)

BIN_SAMPLE_ROWS = 200_000
"""Training rows sampled (by smallest row hash) for the bin edges; below this the edges
are exact."""
GAIN_RTOL = 1e-9
"""Split gains within this fraction of the node's gain scale are ties (floating-point
noise of histogram sums added in another order must not change a split)."""
PARENT_HISTOGRAM_MB = 16.0
"""Histograms of split nodes kept (in the state) for the next level, where the larger
child of a node gets its parent's histogram minus its sibling's instead of a pass's
sums (LightGBM's subtraction trick: a pass sums the smaller children only)."""
ROW_BATCH = 1 << 21
"""A pass sums the histograms of about this many (tree, row) pairs at a time."""
SCORING_BLOCK = 1 << 20
"""Scoring traverses at most this many (row, tree) pairs at a time."""
TABLE_ENTRIES = 1 << 20
"""``node_tables`` moves rows down by one lookup per (node, code) while the nodes times
the codes are at most this many; above, by comparisons."""

PENDING, SPLIT, LEAF = 0, 1, 2

_SAMPLE_SALT = 1 << 40
_BOOTSTRAP_SALT = 2 << 40
_SUBSAMPLE_SALT = 3 << 40
_FEATURE_SALT = 4 << 40
_TREE_FEATURE_SALT = 5 << 40
_SAMPLE_KEY = mix(np.array([_SAMPLE_SALT], dtype=np.uint64))[0]
# splitmix64's multipliers (operators/hashing.py's mix), for mixing row hashes on a device
_MIX_M1, _MIX_M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


class TreeParams(SupervisedParams):
    """Parameters every tree model has."""

    # the names XGBoost, LightGBM, scikit-learn and Spark MLlib give these parameters
    known_as: ClassVar[dict[str, str]] = {
        "maxDepth": "max_depth", "maxBins": "max_bins", "max_bin": "max_bins",
        "minInstancesPerNode": "min_samples_leaf", "min_data_in_leaf": "min_samples_leaf",
        "min_child_samples": "min_samples_leaf", "num_leaves": "max_leaves",
        "max_leaf_nodes": "max_leaves", "monotone_constraints": "monotonic",
        "monotonic_cst": "monotonic", "categorical_feature": "categorical",
        "random_state": "seed", "labelCol": "label", "featuresCol": "features",
        "weightCol": "weight"}

    seed: int = Field(0, description="seed of the validation split, the bootstrap, feature "
                                     "draws and subsamples (with each row's content)")
    task: Literal["classification", "regression"] | None = Field(
        None, description="classification or regression (default: classification for an "
                          "integer, boolean or string label, regression for a float one)")
    max_depth: int = Field(
        10, ge=0, le=30, description="levels of splits (0: a single leaf, the class "
                                     "frequencies or the mean, as Spark MLlib)")
    min_samples_leaf: float = Field(
        1.0, gt=0, description="smallest training weight of a leaf (rows when there is no "
                               "weight column; a forest's bootstrap copies count)")
    max_bins: int = Field(255, ge=2, le=255,
                          description="value bins per feature (a bin for missing values "
                                      "comes on top)")
    max_histogram_mb: float = Field(
        64.0, gt=0, description="histogram memory per pass; a level whose nodes need more "
                                "is grown in several passes")
    class_weight: ClassWeight = class_weight_field()
    monotonic: dict[str, Literal[-1, 1]] | None = Field(
        None, description="features the prediction may only rise (1) or only fall (-1) "
                          "with, e.g. {tenure: -1} (regression and two classes; "
                          "scikit-learn's monotonic_cst, XGBoost's monotone_constraints)")
    max_leaves: int | None = Field(
        None, ge=2, description="leaves per tree at most: a level's nodes split best gain "
                                "first while the tree has room, the same splits however "
                                "many passes max_histogram_mb divides the level into "
                                "(XGBoost's max_leaves, LightGBM's num_leaves, grown "
                                "level by level; see grow_policy)")
    grow_policy: Literal["depthwise", "lossguide"] = Field(
        "depthwise", description="depthwise: level by level (max_leaves: a level's best "
                                 "gains first); lossguide: the splits leaf-wise growth "
                                 "makes (LightGBM's default, XGBoost's lossguide): the "
                                 "best split of any leaf next, until max_leaves (needed); "
                                 "grown level by level to max_depth, then cut to those, "
                                 "so max_depth bounds how deep a branch goes")
    categorical: list[str] | None = Field(
        None, description="features split by sets of their values, not thresholds "
                          "(strings, integers, booleans; a string feature always is): "
                          "the max_bins most frequent values are categories, others and "
                          "nulls are missing; listed columns are features when features "
                          "is left out (LightGBM's categorical_feature, XGBoost's "
                          "enable_categorical)")


# --------------------------------------------------------------------------- plan time


def categorical_names(schema: pa.Schema, params: TreeParams) -> list[str]:
    """The features split by category: those ``categorical`` lists, then the text
    columns ``features`` lists (a text feature can only be categorical)."""
    listed = list(params.categorical or [])
    text = [name for name in params.features or []
            if name in schema.names and category_type(schema.field(name).type) == pa.string()]
    return listed + [name for name in text if name not in listed]


def check_categorical_features(schema: pa.Schema, params: TreeParams, features: list[str],
                               categorical: list[str]) -> None:
    """Plan-time checks of the categorical features (``categorical_names``)."""
    listed = params.categorical or []
    for name in listed:
        role = "label" if name == params.label else "weight" if name == params.weight else None
        if role is not None:
            raise ParamError(f"categorical names '{name}', the {role} column",
                             hint=f"leave '{name}' out of categorical: the {role} is no "
                                  f"feature")
        if listed.count(name) > 1:
            raise ParamError(f"categorical names '{name}' twice", hint="list it once")
    require_columns(schema, categorical, "categorical column")
    for name in listed:
        if name not in features:
            raise ParamError(f"categorical names '{name}', which is not a feature",
                             hint=f"add '{name}' to features, or leave it out of categorical")
    for name in categorical:
        check_categorical(schema, name, "categorical column")
        if name in (params.monotonic or {}):
            raise ParamError(f"'{name}' is categorical: its values have no order to be "
                             f"monotonic in", hint=f"leave '{name}' out of monotonic")


def tree_label_type(schema: pa.Schema, params: TreeParams, op: str) -> tuple[bool, pa.DataType]:
    """(is classifier, label value type); a label that cannot be what the task needs is
    a SchemaError."""
    label = params.label
    t = schema.field(label).type
    classify = is_classification(t, params.task)
    value_type = class_label_type(t)
    if pa.types.is_dictionary(t):
        t = t.value_type
    if classify:
        if value_type is None and not pa.types.is_floating(t):
            raise SchemaError(f"label column '{label}' is {t}: {op} needs class labels",
                              hint="cast it to int64 or string")
        return True, value_type or t
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise SchemaError(f"label column '{label}' is {t}: a regression label is a number",
                          hint="use task: classification to predict classes")
    return False, pa.float64()


# --------------------------------------------------------------------------- rows


def model_hashes(table: pa.Table, params: SupervisedParams, features: list[str]) -> np.ndarray:
    """One uint64 per row from its features (a sparse column's rows as stored), label
    and weight: bootstrap, subsample and bin sample streams are derived from it."""
    columns = (columns_of(table.schema, features) + [params.label]
               + ([params.weight] if params.weight else []))
    return hash_rows(table, columns, params.seed)


def derived_uniform(hashes: Any, salt: int, xp: Any = None) -> Any:
    """An independent uniform [0, 1) per row for each ``salt`` (bootstrap of tree t,
    subsample of round r): one mix of the row hashes (uint64 on ``xp``, where the rows
    are), no re-hashing of the columns.

    ``operators.hashing``'s ``mix`` and ``unit_interval`` in array API operations (exact
    integer arithmetic), so every namespace draws the same numbers (NumPy's unless
    ``xp`` says).
    """
    xp = get_namespace("numpy") if xp is None else xp
    x = hashes ^ _u64(int(mix(np.array([salt], dtype=np.uint64))[0]), xp)
    x = x ^ (x >> _u64(30, xp))
    x = x * _u64(_MIX_M1, xp)
    x = x ^ (x >> _u64(27, xp))
    x = x * _u64(_MIX_M2, xp)
    x = x ^ (x >> _u64(31, xp))
    return xp.astype(x >> _u64(11, xp), xp.float64) * (1.0 / (1 << 53))


def _u64(value: int, xp: Any) -> Any:
    # a 0-d uint64 operand: a Python int above 2**63 is no int64, and mixed with one an
    # unsigned array could be promoted to float
    return xp.asarray(value, dtype=xp.uint64)


_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])


def poisson_counts(uniform: Any, xp: Any = None) -> Any:
    """Poisson(1) draws by the inverse CDF of the uniforms (bootstrap copies of a row),
    uint8 on ``xp`` (NumPy's unless it says); a uniform past the table's last entry (mass
    ~1e-19) counts 20."""
    xp = get_namespace("numpy") if xp is None else xp
    counts = xp.searchsorted(to_xp(_POISSON_CDF, xp), uniform, side="right")
    return xp.astype(counts, xp.uint8)


def bootstrap_salt(tree: int) -> int:
    return _BOOTSTRAP_SALT + tree


def subsample_salt(round_: int) -> int:
    return _SUBSAMPLE_SALT + round_


def feature_values(table: pa.Table, name: str,
                   categories: dict[str, pa.Array] | None) -> np.ndarray:
    """A feature's values as float64: a number as it is (null NaN, inf stays), a
    categorical feature's (one ``categories`` names) code (``category_codes``)."""
    kept = None if categories is None else categories.get(name)
    if kept is None:
        return column_to_numpy(table.column(name))
    return category_codes(table.column(name), kept)


def feature_columns(table: pa.Table, features: list[str], xp: Any = None,
                    categories: dict[str, pa.Array] | None = None,
                    which: np.ndarray | None = None) -> np.ndarray:
    """The features (those at the sorted positions ``which``, where given) as a
    (features, rows) float64 host array (``feature_values``); a sparse column's
    positions made dense (``fill_features``).

    Float64 whatever ``xp``'s compute dtype: values are only compared with the bin
    edges, and the codes that travel on are one byte each.
    """
    which = np.arange(len(features)) if which is None else which
    shape = (len(which), table.num_rows)
    host = (np.empty(shape, np.float64) if xp is None
            else host_buffer(shape, xp, order="C", dtype=np.float64))
    fill_features(host, table, features, categories, which)
    return host


def fill_features(out: np.ndarray, table: pa.Table, features: list[str],
                  categories: dict[str, pa.Array] | None,
                  which: np.ndarray | None = None) -> None:
    """``out[i]``: the values of feature ``which[i]`` (sorted; default: every feature),
    a sparse column's positions as its rows' values, 0 where a row stores none (checked
    to fit the memory share where all its positions are made dense)."""
    which = np.arange(len(features)) if which is None else which
    runs = groups(table.schema, features)
    dense = [(column, stop - start) for column, start, stop in runs if column is not None]
    if dense and len(which) == len(features):
        require_dense_room(table.num_rows, len(features), dense)
    for column, start, stop in runs:
        lo, hi = np.searchsorted(which, [start, stop]).tolist()
        if lo == hi:
            continue
        if column is None:
            out[lo] = feature_values(table, features[start], categories)
            continue
        indptr, at, values = csr_parts(table.column(column), stop - start, column)
        place = np.full(stop - start, -1, np.int64)  # a position's row of out
        place[which[lo:hi] - start] = np.arange(lo, hi)
        out[lo:hi] = 0.0
        keep = place[at] >= 0
        np.add.at(out, (place[at[keep]], rows_of(indptr)[keep]), values[keep])


# --------------------------------------------------------------------------- bins


def bin_edges(sample: np.ndarray, max_bins: int) -> list[np.ndarray]:
    """Per feature (columns of ``sample``), at most ``max_bins - 1`` increasing edges.

    Few distinct values: the midpoints between them (every value its own bin); else the
    quantiles at ``k / max_bins``, each the average of at most two values (numpy's
    ``averaged_inverted_cdf``: scikit-learn's HistGradientBoosting rule).
    A value ``x`` falls in bin ``#{edges < x}``; NaN and inf never become edges.
    """
    if issparse(sample):  # a sparse column's sample: each feature's zeros counted
        stored, sorted_of = sorted_values(sample, max_bins)
        out = [np.zeros(0)] * sample.shape[1]  # a feature of zeros only: no edge
        for j in stored.tolist():
            out[j] = _edges(sorted_of(j), max_bins)
        return out
    edges = []
    for j in range(sample.shape[1]):
        values = sample[:, j]
        # sorted once: np.unique's own way to the distinct values, and np.percentile
        # selects from a sorted array ~7 times faster (the same values)
        edges.append(_edges(np.sort(values[np.isfinite(values)]), max_bins))
    return edges


def _edges(values: np.ndarray, max_bins: int) -> np.ndarray:
    """``bin_edges`` of one feature's finite values, sorted."""
    distinct = values[np.concatenate([[True], values[1:] != values[:-1]])[:len(values)]]
    if len(distinct) <= max_bins:
        cut = distinct[:-1] / 2 + distinct[1:] / 2
    else:
        percents = np.linspace(0.0, 100.0, max_bins + 1)[1:-1]
        cut = np.unique(np.percentile(values, percents, method="averaged_inverted_cdf"))
    return np.asarray(cut, dtype=np.float64)


def threshold_of(edges: np.ndarray, bin_: int) -> float:
    """The threshold of a split after value bin ``bin_`` (+inf after the last bin: a
    split on missing or not)."""
    return float(edges[bin_]) if bin_ < len(edges) else math.inf


def missing_bin(edges: list[np.ndarray]) -> int:
    """The code of a missing value: after the value bins of the widest feature."""
    return max((len(e) for e in edges), default=0) + 1


def bin_codes(values: Any, edges: list[np.ndarray], missing: int, xp: Any,
              dtype: Any = None) -> Any:
    """The (features, rows) values as flat uint8 (or ``dtype``) bin codes, feature-major
    (code of row i in feature f at ``f * rows + i``); NaN gets ``missing``.

    A code is ``#{edges < x}`` (``searchsorted(edges, x, side="left")``), found by a
    branch-free binary search: each feature's edges padded with +inf to a power of two,
    a value steps down halves of it together with all the others (a gather and a
    comparison per halving; several times faster than NumPy's searchsorted, whose
    branches the unsorted values mispredict)."""
    dtype = xp.uint8 if dtype is None else dtype
    if not edges:
        return xp.zeros((0,), dtype=dtype)
    size = 1 << max(len(cut) for cut in edges).bit_length()
    padded = np.full((len(edges), size), np.inf)
    for j, cut in enumerate(edges):
        padded[j, :len(cut)] = cut
    table = to_xp(padded, xp)  # every feature's edges in one copy
    n = values.shape[1]
    codes = []
    for j in range(len(edges)):
        x = values[j, :]
        code = xp.zeros((n,), dtype=xp.int64)
        step = size // 2
        while step >= 1:
            below = xp.take(table[j, :], code + (step - 1)) < x
            code = code + xp.astype(below, xp.int64) * step
            step //= 2
        code = xp.where(xp.isnan(x), xp.asarray(missing, dtype=code.dtype), code)
        codes.append(xp.astype(code, dtype))
    return xp.concat(codes)


# --------------------------------------------------------------------------- memo

def new_token() -> str:
    """Names one fit's memo entries."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- criteria


class Criterion(ABC):
    """What a split optimises, from per-node channel sums (channel first: ``stats[c]``).

    ``gain = score(left) + score(right) - score(parent)``; for the impurity criteria it
    is the weighted impurity decrease ``W_p i_p - W_l i_l - W_r i_r`` (scikit-learn's,
    times the root weight).
    """

    channels: int = 1

    def weight(self, stats: np.ndarray) -> np.ndarray:
        return stats[0]

    @abstractmethod
    def score(self, stats: np.ndarray) -> np.ndarray: ...

    def allowed(self, stats: np.ndarray) -> np.ndarray | bool:
        """Extra condition on a child (boosting: enough hessian)."""
        return True

    def splittable(self, stats: np.ndarray) -> np.ndarray:
        """Whether a node with these sums could gain from a split (not pure)."""
        return np.ones(stats.shape[1:], dtype=bool)

    @abstractmethod
    def value(self, stats: np.ndarray) -> np.ndarray:
        """Leaf values, channel first."""

    def clean(self, stats: np.ndarray) -> np.ndarray:
        """Sums that cannot be negative clipped at 0 (differences of float sums), in place."""
        return np.maximum(stats, 0.0, out=stats)

    clips_to_bounds = False
    """Monotonic constraints: whether node values are clipped to the bounds (boosting, as
    HistGradientBoosting), or a split whose children's values leave them is not taken
    (the impurity criteria, as scikit-learn's trees)."""

    @abstractmethod
    def constrained_value(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        """The value monotonic constraints order: the mean, or the second class's share
        (boosting: the leaf value within [lower, upper])."""

    def category_order(self, stats: np.ndarray, total: np.ndarray) -> np.ndarray:
        """What a node's categories are ordered by (``stats``: channel first, the
        categories on the last axis; ``total``: the node's sums): their rows' value,
        in which the best split is a prefix (Fisher's ordering)."""
        return self.constrained_value(stats, -np.inf, np.inf)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den <= 0."""
    positive = den > 0
    return np.where(positive, num / np.where(positive, den, 1.0), 0.0)


def _channel_sum(stats: np.ndarray) -> np.ndarray:
    # a sum over a short leading axis as adds of whole slices: NumPy's reduction over a
    # short axis is many times slower
    total = stats[0].copy()
    for k in range(1, stats.shape[0]):
        total += stats[k]
    return total


class Gini(Criterion):
    """Class weights per channel; ``score = sum c_k^2 / W``."""

    def __init__(self, n_classes: int):
        self.channels = n_classes

    def weight(self, stats: np.ndarray) -> np.ndarray:
        return _channel_sum(stats)

    def score(self, stats: np.ndarray) -> np.ndarray:
        return _ratio(_channel_sum(stats * stats), _channel_sum(stats))

    def splittable(self, stats: np.ndarray) -> np.ndarray:
        w = _channel_sum(stats)
        return _channel_sum((stats > GAIN_RTOL * w).astype(np.int64)) >= 2

    def constrained_value(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        return _ratio(stats[1], _channel_sum(stats))

    def category_order(self, stats: np.ndarray, total: np.ndarray) -> np.ndarray:
        # two classes: the second's share (a best split is a prefix); more: the share of
        # the node's most frequent class (a heuristic, as LightGBM's one-vs-rest trees
        # and Spark MLlib's ordering by one centroid)
        # (classes within GAIN_RTOL of the most frequent tie, the first wins: balanced
        # class weights make them equal up to the noise of the sums' order)
        near = total >= total.max(axis=0) - GAIN_RTOL * _channel_sum(total)
        top = np.argmax(near, axis=0)[..., None]                        # (...,) -> (..., 1)
        chosen = np.take_along_axis(np.moveaxis(stats, 0, -1), top[..., None], axis=-1)
        return _ratio(chosen[..., 0], _channel_sum(stats))

    def value(self, stats: np.ndarray) -> np.ndarray:
        # a class whose weight is a rounding residue (a sibling's sums are its parent's
        # minus its own) is absent, as ``splittable`` counts it: its share is 0, not the
        # 5e-16 another engine's or partitioning's sums would not have
        stats = np.where(stats > GAIN_RTOL * _channel_sum(stats), stats, 0.0)
        w = _channel_sum(stats)
        return np.where(w > 0, stats / np.where(w > 0, w, 1.0), 1.0 / stats.shape[0])


class Entropy(Gini):
    """Class weights per channel; ``score = sum c_k log c_k - W log W`` (= -W H)."""

    def score(self, stats: np.ndarray) -> np.ndarray:
        w = _channel_sum(stats)
        plogp = _channel_sum(np.where(stats > 0, stats * np.log(np.where(stats > 0, stats, 1.0)),
                                      0.0))
        return plogp - np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)


class Variance(Criterion):
    """Channels (weight, weight * y); ``score = (sum w y)^2 / W``."""

    channels = 2

    def score(self, stats: np.ndarray) -> np.ndarray:
        return _ratio(stats[1] * stats[1], stats[0])

    def value(self, stats: np.ndarray) -> np.ndarray:
        return _ratio(stats[1], stats[0])[None]

    def constrained_value(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        return _ratio(stats[1], stats[0])

    def clean(self, stats: np.ndarray) -> np.ndarray:
        np.maximum(stats[0], 0.0, out=stats[0])
        return stats


class Newton(Criterion):
    """Boosting: channels (gradient, hessian, weight); ``score = T(G)^2 / (H + l2) / 2``,
    leaf value ``-learning_rate T(G) / (H + l2)``, where ``T`` shrinks the gradient sum
    towards 0 by ``l1`` (XGBoost's ``alpha``; ``T(G) = G`` without it): XGBoost's gain
    and weights, scikit-learn's HistGradientBoosting's without ``l1``. A child needs a
    hessian sum of ``min_hessian`` (XGBoost's ``min_child_weight``)."""

    channels = 3
    MIN_HESSIAN = 1e-3

    def __init__(self, l2: float, learning_rate: float, n_outputs: int, l1: float = 0.0,
                 min_hessian: float = MIN_HESSIAN):
        self.l2, self.learning_rate, self.n_outputs = l2, learning_rate, n_outputs
        self.l1, self.min_hessian = l1, max(min_hessian, self.MIN_HESSIAN)

    def weight(self, stats: np.ndarray) -> np.ndarray:
        return stats[2]

    def _shrunk(self, gradient: np.ndarray) -> np.ndarray:
        """``T(G)``: the gradient sum moved towards 0 by ``l1``, 0 within it."""
        if not self.l1:
            return gradient
        return np.sign(gradient) * np.maximum(np.abs(gradient) - self.l1, 0.0)

    def hessian(self, stats: np.ndarray) -> np.ndarray:
        """The hessian sums ``H`` (channel 1)."""
        return stats[1]

    def score(self, stats: np.ndarray) -> np.ndarray:
        # 0.5 * _ratio(T(G)^2, H + l2), with fewer temporaries (it scores every candidate)
        den = self.hessian(stats) + self.l2
        g = self._shrunk(stats[0])
        out = np.asarray(g * g)  # an array even for one node's sums
        positive = den > 0
        np.divide(out, den, out=out, where=positive)
        np.copyto(out, 0.0, where=~positive)
        out *= 0.5
        return out

    def allowed(self, stats: np.ndarray) -> np.ndarray | bool:
        return self.hessian(stats) >= self.min_hessian

    def value(self, stats: np.ndarray) -> np.ndarray:
        return (-self.learning_rate * _ratio(self._shrunk(stats[0]),
                                             self.hessian(stats) + self.l2))[None]

    clips_to_bounds = True

    def constrained_value(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        return self.bounded_value(stats, lower, upper)

    def bounded_value(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        """The leaf value before shrinkage, ``-T(G) / (H + l2)``, within [lower, upper]
        (monotonic constraints: scikit-learn's and XGBoost's bounds)."""
        return np.clip(-_ratio(self._shrunk(stats[0]), self.hessian(stats) + self.l2),
                       lower, upper)

    def bounded_score(self, stats: np.ndarray, lower: Any, upper: Any) -> np.ndarray:
        """``score`` at the bounded value ``v``: the loss decrease ``-(G v + (H + l2) v^2
        / 2 + l1 |v|)``, which is ``score`` where ``v`` is within the bounds (XGBoost's
        gain given a weight)."""
        v = self.bounded_value(stats, lower, upper)
        out = -(stats[0] * v + 0.5 * (self.hessian(stats) + self.l2) * v * v)
        if self.l1:
            out -= self.l1 * np.abs(v)
        return out

    def clean(self, stats: np.ndarray) -> np.ndarray:
        np.maximum(stats[1:], 0.0, out=stats[1:])
        return stats


# --------------------------------------------------------------------------- histograms


def histograms(xp: Any, codes: Any, n: int, rows: Any, slots: Any, channels: list[Any],
               fold: Any | None, fold_size: int, featsel: np.ndarray | None,
               n_features: int, n_slots: int, n_bins: int,
               by_row: np.ndarray | None = None, out: np.ndarray | None = None
               ) -> np.ndarray:
    """Sums per (feature position, slot, bin, channel), a host array of shape
    ``(m, n_slots, n_bins, C)``: ``out`` when given (a view of a pass's histograms, so
    that a batch's sums need no array of their own and no copy; uint32 for counts, whose
    sums are whole numbers), else a new float64 one.

    Row ``rows[i]`` (distinct, increasing indices of ``n`` binned rows; ``codes``
    feature-major) adds ``channels[c][i]`` at its slot and its bin of each feature
    position ``j``: feature ``j``, or ``featsel[slot, j]`` when nodes sample their
    features. With ``fold`` (the class of a row) the single channel goes to channel
    ``fold[i]`` of ``fold_size``. NumPy sums by a sparse product that releases the GIL
    (``_product_histograms``; ``by_row``: the same codes as a row-major
    ``(n, features)`` array, whose rows gather faster), CuPy by bincount, others by
    sorting; the product and bincount add a bin's rows in row order.
    """
    m = n_features if featsel is None else featsel.shape[1]
    width = fold_size if fold is not None else len(channels)
    shape = (m, n_slots, n_bins, width)
    if out is None:
        out = np.empty(shape)
    elif out.shape != shape:
        raise ValueError(f"histograms of shape {shape} cannot go to an array of {out.shape}")
    if rows.shape[0] == 0 or m == 0:
        out[...] = 0.0
        return out
    if isinstance(codes, SparseCodes):
        return sparse_histograms(codes, rows, slots, channels, fold, featsel, out)
    product = _sparse_product() if isinstance(codes, np.ndarray) else None
    if product is not None:
        return _product_histograms(product, codes, n, rows, slots, channels, fold, featsel,
                                   out, by_row)
    if fold is not None:  # counts (integers) summed as float64: exact, then stored in ``out``
        channels = [xp.astype(channels[0], xp.float64, copy=False)]
    slots = xp.astype(slots, xp.int64)
    rows = xp.astype(rows, xp.int64)
    scale = fold_size if fold is not None else 1
    # key = (slot * n_bins + code) * scale + fold: all but the code once for every j
    base = slots * (n_bins * scale)
    if fold is not None:
        base = base + xp.astype(fold, xp.int64)
    block = n_slots * n_bins * scale

    # where each slot's j-th feature starts in the codes, every j in one copy
    offsets = None if featsel is None else to_xp(featsel.astype(np.int64) * n, xp)

    def keys_of(j: int) -> Any:
        index = rows + j * n if offsets is None else xp.take(offsets[:, j], slots) + rows
        code = xp.astype(xp.take(codes, index), xp.int64)
        return base + (code * scale if scale > 1 else code)

    bincount = getattr(xp, "bincount", None)
    if bincount is not None:
        for j in range(m):
            key = keys_of(j)
            if fold is not None:
                sums = bincount(key, weights=channels[0], minlength=block)
                out[j] = to_numpy(sums).reshape(n_slots, n_bins, fold_size)
            else:
                for c, weights in enumerate(channels):
                    sums = bincount(key, weights=weights, minlength=block)
                    out[j, :, :, c] = to_numpy(sums).reshape(n_slots, n_bins)
        return out
    keys = xp.concat([keys_of(j) + j * block for j in range(m)])
    values = xp.stack(channels[:1] if fold is not None else channels, axis=1)
    values = xp.concat([values] * m, axis=0)
    out[...] = segment_sums(xp, keys, values, m * block).reshape(shape)
    return out


def narrow_counts(hist: np.ndarray) -> np.ndarray:
    """Histograms whose sums are counts (whole numbers, below 2**53) in the smallest
    unsigned integer type that holds them: the same numbers in an eighth to a half of
    the bytes, for the partials a pass holds and combines (float64 again, they are
    exactly the sums)."""
    return hist.astype(_count_type(float(hist.max(initial=0.0))), copy=False)


def add_histograms(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """The sum of two partitions' histograms (None: none); counts stay integers, in a
    type that holds the sum, and mixed with float64 sums they add exactly as floats."""
    if a is None or b is None:
        return b if a is None else a
    if a.dtype.kind == "u" and b.dtype.kind == "u":
        return np.add(a, b, dtype=_count_type(int(a.max(initial=0)) + int(b.max(initial=0))))
    return np.add(a, b, dtype=np.float64)


def _count_type(top: float) -> type:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return dtype
    return np.float64


PRODUCT_ENTRIES = 1 << 19
"""``_product_histograms`` makes the sparse matrix of about this many (row, feature)
entries at a time (13 to 17 bytes each, in buffers each thread keeps)."""

_scratch = threading.local()


def _scratch_array(name: str, size: int, dtype: Any) -> np.ndarray:
    """A buffer of this thread's, grown on demand and reused: a pass's partitions on
    several threads allocating (and faulting in) fresh megabytes per batch scale far
    worse than the arithmetic."""
    held = getattr(_scratch, name, None)
    if held is None or held.size < size or held.dtype != dtype:
        held = np.empty(max(size, PRODUCT_ENTRIES), dtype)
        setattr(_scratch, name, held)
    return held[:size]


_ONES: dict[Any, np.ndarray] = {}


def _ones(size: int, dtype: Any) -> np.ndarray:
    """Read-only ones, shared by every thread: the sparse matrices' values."""
    held = _ONES.get(dtype)
    if held is None or held.size < size:
        held = np.ones(max(size, PRODUCT_ENTRIES), dtype)
        held.flags.writeable = False
        _ONES[dtype] = held
    return held[:size]


def _sparse_product() -> Callable[..., None] | None:
    """SciPy's kernel ``Y += A @ X`` for a CSC matrix ``A`` and dense ``X``, ``Y``
    (``csc_matvecs``, behind ``scipy.sparse``'s products): called directly, the sums go
    straight into the histograms, with no matrix object (which would copy its arrays);
    None where this SciPy has no such kernel (NumPy's bincount serves then)."""
    try:
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return getattr(_sparsetools, "csc_matvecs", None)


def _product_histograms(product: Callable[..., None], codes: np.ndarray, n: int,
                        rows: np.ndarray, slots: np.ndarray, channels: list[np.ndarray],
                        fold: np.ndarray | None, featsel: np.ndarray | None,
                        out: np.ndarray, by_row: np.ndarray | None) -> np.ndarray:
    """``histograms`` on NumPy, into ``out``, as a sparse product.

    The rows' codes are a sparse matrix with a 1 per (row, feature position ``j``) in
    the row of its cell ``(j, slot, bin, fold)``; that matrix times the rows' channels
    (dense, ``(rows, C)``) is the histograms, in ``out``'s layout. The product adds a
    cell's rows in row order (the same sums as bincount's, bit for bit), in ``out``'s
    type (float64, or uint32 for counts: whole numbers, exact), and releases the GIL, so
    a pass's partitions share the cores on threads (``np.add.at`` and ``np.bincount``
    hold the GIL). The matrix is made ``PRODUCT_ENTRIES`` entries at a time, in buffers
    the thread keeps: a batch costs a few bytes a row on top of its arrays.
    """
    m, n_slots, n_bins, width = out.shape
    total = rows.shape[0]
    if fold is not None:  # one channel; a row's class picks the last index of its cell
        scale, values = width, np.asarray(channels[0], out.dtype)[:, None]
    else:
        scale, values = 1, np.stack([np.asarray(c, np.float64) for c in channels], axis=1)
    # a pass's histograms of some slots (a batch's) are a view, contiguous per feature:
    # then one product per feature, each into its own part
    by_feature = not out.flags.c_contiguous and out[0].flags.c_contiguous
    target = out if out.flags.c_contiguous or by_feature else np.empty(out.shape, out.dtype)
    target[...] = 0
    cells = m * n_slots * n_bins * scale
    index_type = np.int32 if cells < 2**31 else np.int64
    # the cell of (row, j): ((j * n_slots + slot) * n_bins + code) * scale + fold
    columns = np.arange(m, dtype=index_type) * index_type(n_slots * n_bins * scale)
    base = None
    if n_slots > 1 or fold is not None:
        base = slots.astype(index_type)
        base *= n_bins * scale
        if fold is not None:
            base += fold
    whole = featsel is None and base is None and total == n
    step = max(1, PRODUCT_ENTRIES // m)
    size = min(step, total)
    ones = _ones(size * m, out.dtype)
    starts = np.arange(0, size * (1 if by_feature else m) + 1, 1 if by_feature else m,
                       dtype=index_type)
    flat_codes = codes.reshape(-1) if by_row is None else by_row.reshape(-1)
    for a in range(0, total, step):
        b = min(a + step, total)
        k = b - a
        if featsel is not None:  # slot s's j-th code is feature featsel[s, j]'s
            where = _scratch_array("where", k * m, np.intp).reshape(k, m)
            feature = featsel[slots[a:b]]
            if by_row is None:
                np.multiply(feature, n, out=where, dtype=np.intp)
                where += rows[a:b, None]
            else:
                np.add(feature, rows[a:b, None] * by_row.shape[1], out=where, dtype=np.intp)
            bins = np.take(flat_codes, where,
                           out=_scratch_array("bins", k * m, codes.dtype).reshape(k, m))
        elif whole:
            bins = by_row[a:b] if by_row is not None else codes.reshape(m, n)[:, a:b].T
        elif by_row is not None:
            bins = np.take(by_row, rows[a:b], axis=0,
                           out=_scratch_array("bins", k * m, by_row.dtype).reshape(k, m))
        else:
            bins = codes.reshape(m, n)[:, rows[a:b]].T
        if by_feature:
            index = _scratch_array("index", k, index_type)
            for j in range(m):
                np.multiply(bins[:, j], scale, out=index, dtype=index_type)
                if base is not None:
                    index += base[a:b]
                product(n_slots * n_bins * scale, k, values.shape[1], starts[:k + 1], index,
                        ones[:k], values[a:b].reshape(-1), target[j].reshape(-1))
            continue
        index = _scratch_array("index", k * m, index_type).reshape(k, m)
        if scale > 1:
            np.multiply(bins, scale, out=index, dtype=index_type)
            index += columns
        else:
            np.add(bins, columns, out=index, dtype=index_type)
        if base is not None:
            index += base[a:b, None]
        product(cells, k, values.shape[1], starts[:k + 1], index.reshape(-1), ones[:k * m],
                values[a:b].reshape(-1), target.reshape(-1))
    if target is not out:
        out[...] = target
    return out


# --------------------------------------------------------------------------- splits


def best_splits(hist: np.ndarray, criterion: Criterion, min_leaf: float,
                min_gain: np.ndarray, chunk: int = 256, slots: np.ndarray | None = None,
                allowed: np.ndarray | None = None, monotonic: np.ndarray | None = None,
                bounds: np.ndarray | None = None, categorical: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """The best split of each slot of ``hist`` ``(m, S, bins, C)``, whose last bin holds
    the missing values; of the ``slots`` only (their order) when given, gathered a
    chunk at a time (no copy of the histograms); on the feature positions ``allowed``
    ``(S, m)`` only, when given.

    ``monotonic`` ``(S, m)``: per slot and feature position 1 (the left child's value
    may not pass the right's), -1 (the reverse) or 0, with the slot's ``bounds``
    ``(S, 2)`` on its children's values: ``Newton`` scores and orders the values within
    the bounds (HistGradientBoosting's and XGBoost's constraints), the impurity criteria
    take no split whose children's values leave them (scikit-learn's trees).

    Candidates: after each value bin, missing values left or right; both children need
    weight >= ``min_leaf`` and the criterion's consent; the gain must pass ``min_gain``
    (per slot) and the noise floor. Among gains within ``GAIN_RTOL`` of the best the
    first (feature position, missing right before left, bin) wins. Where a node had no
    missing values they go to the heavier child. Stats come back channel last.

    ``categorical`` ``(S, m)``: the positions whose bins are categories. Their bins are
    taken in the order of ``Criterion.category_order`` (float32, so that the noise of
    sums added in another order cannot swap two categories; then by code; categories
    without rows last) and a split sends the categories before its cut left:
    ``categories`` ``(slots, bins)`` says which, for a split on one.
    """
    m, n_slots, n_bins1, width = hist.shape
    if slots is not None:
        n_slots = len(slots)
    n_bins = n_bins1 - 1
    out = {"found": np.zeros(n_slots, dtype=bool), "position": np.zeros(n_slots, dtype=np.int64),
           "bin": np.zeros(n_slots, dtype=np.int64),
           "missing_left": np.zeros(n_slots, dtype=bool), "gain": np.zeros(n_slots),
           "left": np.zeros((n_slots, width)), "right": np.zeros((n_slots, width))}
    if categorical is not None:
        out["categories"] = np.zeros((n_slots, n_bins), dtype=bool)
    if n_bins == 0:
        return out
    for start in range(0, n_slots, chunk):
        stop = min(start + chunk, n_slots)
        s = stop - start
        # channel first, then slot, feature position, bin: (C, s, m, B1), so that the
        # candidates of a slot come in the order of choice, each bin's prefix sums along
        # the last axis
        chosen = slice(start, stop) if slots is None else slots[start:stop]
        part = hist[:, chosen]
        h = np.ascontiguousarray(np.transpose(part, (3, 1, 0, 2)))
        rank = None
        if categorical is not None and categorical[chosen].any():
            h, rank = _by_category_order(h, criterion, categorical[chosen])
        missing = h[..., n_bins]                                         # (C,s,m)
        # with no missing value in the chunk, "missing left" repeats "missing right"
        # (the same sums, later in the order), so it is left out: the same choice
        sides = 2 if missing.any() else 1
        left = np.empty((width, s, m, sides, n_bins))
        np.cumsum(h[..., :n_bins], axis=-1, out=left[:, :, :, 0])
        if sides == 2:
            np.add(left[:, :, :, 0], missing[..., None], out=left[:, :, :, 1])
        total = left[:, :, :, 0, -1] + missing                           # (C,s,m)
        right = criterion.clean(total[..., None, None] - left)
        criterion.clean(left)
        criterion.clean(total)
        if monotonic is not None:
            assert bounds is not None
            lo, hi = bounds[chosen, 0], bounds[chosen, 1]
            lo4, hi4 = lo[:, None, None, None], hi[:, None, None, None]
        if monotonic is None or not criterion.clips_to_bounds:
            s_left, s_right = criterion.score(left), criterion.score(right)
            s_total = criterion.score(total)[..., None, None]
        else:
            assert isinstance(criterion, Newton)
            s_left = criterion.bounded_score(left, lo4, hi4)
            s_right = criterion.bounded_score(right, lo4, hi4)
            s_total = criterion.bounded_score(total, lo[:, None], hi[:, None])[..., None, None]
        gain = s_left + s_right
        gain -= s_total                                                  # (s,m,sides,B)
        w_left, w_right = criterion.weight(left), criterion.weight(right)
        valid = w_left >= min_leaf
        valid &= w_right >= min_leaf
        if not min_leaf > 0:
            valid &= (w_left > 0) & (w_right > 0)
        for consent in (criterion.allowed(left), criterion.allowed(right)):
            if consent is not True:
                valid &= consent
        if allowed is not None:
            valid &= allowed[chosen][:, :, None, None]
        tied = getattr(criterion, "tie_score", None)
        unordered = valid.copy() if tied is not None else valid
        if monotonic is not None:  # the children's values in the constraint's order
            direction = monotonic[chosen][:, :, None, None]
            v_left = criterion.constrained_value(left, lo4, hi4)
            v_right = criterion.constrained_value(right, lo4, hi4)
            valid &= direction * (v_right - v_left) >= 0
            if not criterion.clips_to_bounds:  # and within the node's bounds
                valid &= (v_left >= lo4) & (v_left <= hi4) & (v_right >= lo4) & (v_right <= hi4)
        invalid = ~valid
        best, pick, found = _best_candidates(gain, s_left, s_right, s_total, invalid)
        found &= best >= min_gain[start:stop]
        if tied is not None:
            # nodes whose every candidate gains the same (all their rows' gradients equal)
            # split by the criterion's second measure; their gain stays 0. Their
            # children's values are equal but for rounding, so a constraint orders the
            # second measure's values (``tie_value``) instead
            blind = ~found & criterion.blind(total[:, :, 0])
            if blind.any():
                if monotonic is not None:
                    unordered &= direction * (criterion.tie_value(right)
                                              - criterion.tie_value(left)) >= 0
                t_left, t_right = tied(left), tied(right)
                t_total = tied(total)[..., None, None]
                second = t_left + t_right - t_total
                _, second_pick, second_found = _best_candidates(second, t_left, t_right,
                                                                t_total, ~unordered)
                use = blind & second_found
                found |= use
                pick = np.where(use, second_pick, pick)
                best = np.where(use, 0.0, best)
        position, rest = np.divmod(pick, sides * n_bins)
        direction, bin_ = np.divmod(rest, n_bins)
        rows = np.arange(s)
        lft = left[:, rows, position, direction, bin_]                  # (C, s)
        rgt = right[:, rows, position, direction, bin_]
        # a missing-value weight that is a rounding residue (a sibling's histogram is its
        # parent's minus its own) is none
        no_missing = _weightless(criterion, missing[:, rows, position],
                                 total[:, rows, position])
        heavier_left = criterion.weight(lft) >= criterion.weight(rgt)
        sl = slice(start, stop)
        out["found"][sl] = found
        out["position"][sl] = position
        out["bin"][sl] = bin_
        out["missing_left"][sl] = np.where(no_missing, heavier_left, direction == 1)
        out["gain"][sl] = np.where(found, best, 0.0)
        out["left"][sl] = lft.T
        out["right"][sl] = rgt.T
        if rank is not None:  # a category goes left when it comes before the cut
            on = categorical[chosen][rows, position]
            out["categories"][sl] = (rank[rows, position] <= bin_[:, None]) & on[:, None]
    return out


def _best_candidates(gain: np.ndarray, s_left: np.ndarray, s_right: np.ndarray,
                     s_total: np.ndarray, invalid: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot of ``gain`` ``(s, m, sides, B)``: the best gain, the first candidate in
    (feature position, side, bin) order within the noise floor of it (GAIN_RTOL times
    the largest ``|s_left| + |s_right| + |s_total|``), and whether it passes that floor.
    ``gain`` and the scores are overwritten."""
    s = gain.shape[0]
    scale = np.abs(s_left, out=s_left)
    scale += np.abs(s_right, out=s_right)
    scale += np.abs(s_total)
    np.copyto(gain, -np.inf, where=invalid)
    np.copyto(scale, 0.0, where=invalid)
    best = gain.reshape(s, -1).max(axis=1)
    tol = GAIN_RTOL * scale.reshape(s, -1).max(axis=1)
    near = gain.reshape(s, -1) >= (best - tol)[:, None]
    return best, np.argmax(near, axis=1), best > tol


def _weightless(criterion: Criterion, stats: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Where sums hold no rows: a weight that is at most a rounding residue of the
    node's (a sibling's histogram is its parent's minus its own), which the sums of
    another engine or partitioning may not have."""
    return criterion.weight(stats) <= GAIN_RTOL * criterion.weight(total)


def _by_category_order(h: np.ndarray, criterion: Criterion, categorical: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's histograms ``(C, s, m, bins + 1)`` with the bins of the categorical
    positions ``(s, m)`` in the criterion's order (``best_splits``), and each bin's
    rank in its position's order ``(s, m, bins)``."""
    n_bins = h.shape[-1] - 1
    values = h[..., :n_bins]
    total = h.sum(axis=-1)
    key = criterion.category_order(values, total).astype(np.float32)
    # no rows here (or a residue of them): last, so right
    key[_weightless(criterion, values, total[..., None])] = np.inf
    key[~categorical] = np.arange(n_bins, dtype=np.float32)  # numbers keep their bins
    order = np.argsort(key, axis=-1, kind="stable")
    ordered = np.empty_like(h)
    ordered[..., :n_bins] = np.take_along_axis(values, order[None], axis=-1)
    ordered[..., n_bins] = h[..., n_bins]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_bins)[None, None, :], axis=-1)
    return ordered, rank


def _at_positions(per_feature: np.ndarray | None, featsel: np.ndarray | None
                  ) -> np.ndarray | None:
    """Per node and feature ``(nodes, n_features)``, as per node and histogram position
    (the features ``featsel`` gives each node's positions)."""
    if per_feature is None or featsel is None:
        return per_feature
    return np.take_along_axis(per_feature, featsel.astype(np.intp), axis=1)


def _feature_draws(ids: np.ndarray, n_features: int, seed: int, salt: int) -> np.ndarray:
    """A random uint64 per (id, feature), from a hash of the seed and the id (a node's or
    a tree's): the same on every engine."""
    key = mix(np.array([salt + (seed & 0xFFFFFFFF)], dtype=np.uint64))[0]
    ids = ids.astype(np.uint64)[:, None] * np.uint64(n_features) + np.arange(
        n_features, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        return mix(mix(ids ^ key))


def _drawn(ids: np.ndarray, n_features: int, m: int, seed: int, salt: int) -> np.ndarray:
    """``m`` of ``n_features`` features per id, sorted (``_feature_draws``' smallest)."""
    chosen = np.argsort(_feature_draws(ids, n_features, seed, salt), axis=1,
                        kind="stable")[:, :m]
    return np.sort(chosen, axis=1).astype(np.int32)


def node_keys(forest: dict[str, np.ndarray], nodes: np.ndarray) -> np.ndarray:
    """What keys a node's random draws: its tree and its place in the tree (the same
    however many passes a level takes, which number nodes in their own order)."""
    return (forest["tree"][nodes].astype(np.uint64) << np.uint64(31)) | forest["place"][
        nodes].astype(np.uint64)


def sample_features(keys: np.ndarray, n_features: int, m: int, seed: int) -> np.ndarray:
    """``m`` of ``n_features`` features per node (sorted), drawn from a hash of the seed
    and the node's key (``node_keys``): the same on every engine and partitioning."""
    return _drawn(keys, n_features, m, seed, _FEATURE_SALT)


def fraction_of_features(value: str | float) -> str | float:
    """A ``max_features`` choice's check: a number must be a fraction in (0, 1]."""
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"a fraction of the features must lie in (0, 1], got {value}")
    return value


def features_fraction(choice: str | float, n: int, classify: bool) -> int:
    """How many of ``n`` features a ``max_features`` choice keeps: sqrt, log2, all, a
    fraction in (0, 1], or auto (sqrt for classification, all for regression); at
    least one."""
    if choice == "auto":
        choice = "sqrt" if classify else "all"
    if choice == "sqrt":
        return max(1, int(math.sqrt(n)))
    if choice == "log2":
        return max(1, int(math.log2(n)))
    if choice == "all":
        return n
    return max(1, min(n, int(float(choice) * n)))


def tree_features(trees: np.ndarray, n_features: int, m: int, seed: int) -> np.ndarray:
    """``m`` of ``n_features`` features per tree (sorted), drawn from a hash of the seed
    and the tree's id: the same on every engine."""
    ids, which = np.unique(trees, return_inverse=True)
    return _drawn(ids, n_features, m, seed, _TREE_FEATURE_SALT)[which]


def allowed_features(keys: np.ndarray, trees: np.ndarray, n_features: int,
                     per_tree: int, per_node: Callable[[int], int], seed: int
                     ) -> np.ndarray | None:
    """Which features each node may split on, ``(nodes, n_features)``, or None for all:
    ``per_tree`` of them drawn for each tree (XGBoost's ``colsample_bytree``), and
    ``per_node(per_tree)`` of those for each node (``colsample_bynode``, scikit-learn's
    ``max_features``): by hashes of the seed and the tree's id or the node's key
    (``node_keys``), so the same on every engine, partitioning and number of passes."""
    n_node = per_node(per_tree)
    if per_tree >= n_features and n_node >= n_features:
        return None
    allowed = np.ones((len(keys), n_features), dtype=bool)
    if per_tree < n_features:
        allowed = np.zeros_like(allowed)
        np.put_along_axis(allowed, tree_features(trees, n_features, per_tree, seed), True,
                          axis=1)
    if n_node < per_tree:
        draws = _feature_draws(keys, n_features, seed, _FEATURE_SALT)
        draws[~allowed] = np.iinfo(np.uint64).max  # the tree's features come first
        order = np.argsort(draws, axis=1, kind="stable")
        allowed = np.zeros_like(allowed)
        np.put_along_axis(allowed, order[:, :n_node], True, axis=1)
    return allowed


# --------------------------------------------------------------------------- forest arrays


def new_forest(width: int) -> dict[str, np.ndarray]:
    """Empty node arrays (driver side; every tree's nodes in creation order)."""
    return {"tree": np.zeros(0, np.int32), "depth": np.zeros(0, np.int32),
            "status": np.zeros(0, np.int8), "feature": np.zeros(0, np.int32),
            "bin": np.zeros(0, np.int32), "threshold": np.zeros(0),
            "missing_left": np.zeros(0, bool), "left": np.zeros(0, np.int32),
            "right": np.zeros(0, np.int32), "value": np.zeros((0, width)),
            "weight": np.zeros(0), "gain": np.zeros(0), "lower": np.zeros(0),
            "upper": np.zeros(0), "category": np.zeros(0, np.int32),
            "place": np.zeros(0, np.int64),
            "roots": np.zeros(0, np.int32), "masks": np.zeros((0, 0), bool)}


FOREST_WIDE = ("roots", "masks")
"""Forest arrays not indexed by node: each tree's root, and the categories each
categorical split sends left (a row per such split, ``category`` its node's)."""


def add_nodes(forest: dict[str, np.ndarray], tree: np.ndarray, depth: np.ndarray,
              status: np.ndarray, value: np.ndarray, weight: np.ndarray,
              place: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The forest with new nodes appended (not split yet) and their ids; ``place``: each
    node's place in its tree (root 0, children ``2i + 1`` and ``2i + 2``: what keys a
    node's random draws, whatever ids the passes give it; roots when None)."""
    k = len(tree)
    start = len(forest["tree"])
    fresh = {"tree": tree.astype(np.int32), "depth": depth.astype(np.int32),
             "status": status.astype(np.int8), "feature": np.full(k, -1, np.int32),
             "bin": np.full(k, -1, np.int32), "threshold": np.full(k, np.nan),
             "missing_left": np.zeros(k, bool), "left": np.full(k, -1, np.int32),
             "right": np.full(k, -1, np.int32), "value": value.reshape(k, forest["value"].shape[1]),
             "weight": weight.astype(np.float64), "gain": np.zeros(k),
             "lower": np.full(k, -np.inf), "upper": np.full(k, np.inf),
             "category": np.full(k, -1, np.int32),
             "place": np.zeros(k, np.int64) if place is None else place.astype(np.int64)}
    out = {name: np.concatenate([forest[name], fresh[name]]) for name in fresh}
    out.update({name: forest[name] for name in FOREST_WIDE})
    return out, np.arange(start, start + k)


def add_roots(forest: dict[str, np.ndarray], trees: np.ndarray, width: int
              ) -> dict[str, np.ndarray]:
    """One pending root per tree of ``trees`` (their values come with the first pass)."""
    k = len(trees)
    forest, ids = add_nodes(forest, trees, np.zeros(k), np.full(k, PENDING),
                            np.zeros((k, width)), np.zeros(k))
    forest["roots"] = np.concatenate([forest["roots"], ids.astype(np.int32)])
    return forest


def truncate(forest: dict[str, np.ndarray], n_trees: int) -> dict[str, np.ndarray]:
    """The forest without the trees from ``n_trees`` on (their nodes come last)."""
    if n_trees >= len(forest["roots"]):
        return forest
    end = int(forest["roots"][n_trees])
    out = {k: v[:end] for k, v in forest.items() if k not in FOREST_WIDE}
    out["roots"] = forest["roots"][:n_trees]
    out["masks"] = forest["masks"]  # rows of the dropped trees' splits stay, unused
    return out


class Level:
    """The pending nodes of a level and the node groups (passes) they are split into."""

    @staticmethod
    def start(forest: dict[str, np.ndarray], group_size: int,
              featsel: Callable[[np.ndarray], np.ndarray | None],
              siblings: dict[str, np.ndarray] | None = None) -> dict[str, Any] | None:
        """The level of the pending nodes; those ``siblings`` derives need no pass."""
        pending = np.flatnonzero(forest["status"] == PENDING)
        if len(pending) == 0:
            return None
        nodes = pending if siblings is None else np.setdiff1d(pending, siblings["large"])
        # by tree, so that each tree's nodes are consecutive slots of a pass's histogram
        nodes = nodes[np.lexsort((nodes, forest["tree"][nodes]))]
        # pending nodes are the children of the last level's splits: all of one depth
        return {"nodes": nodes, "start": 0, "size": max(1, group_size),
                "featsel": featsel(nodes), "depth": int(forest["depth"][pending[0]])}

    @staticmethod
    def group(level: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        sl = slice(level["start"], level["start"] + level["size"])
        featsel = level["featsel"]
        return level["nodes"][sl], None if featsel is None else featsel[sl]

    @staticmethod
    def advance(level: dict[str, Any]) -> dict[str, Any] | None:
        """The next group of the level, or None when the level is done."""
        nxt = level["start"] + level["size"]
        return {**level, "start": nxt} if nxt < len(level["nodes"]) else None

    @staticmethod
    def where(level: dict[str, Any], max_depth: int) -> str:
        """The level in words, for the progress line: 'level 4 of at most 6'."""
        return f"level {level['depth'] + 1} of at most {max_depth}"

    @staticmethod
    def done(level: dict[str, Any], max_depth: int) -> float:
        """The share of the trees' growth done before the level's next pass, as if every
        tree grows to ``max_depth`` and a level takes as long as the last: the levels
        grown, and of this one the share of its node groups (passes) done."""
        return ((level["depth"] + level["start"] / max(len(level["nodes"]), 1))
                / max(max_depth, 1))  # max_depth 0: the root's one level

    @staticmethod
    def rank(level: dict[str, Any], forest: dict[str, np.ndarray],
             siblings: dict[str, np.ndarray] | None, pairs: bool) -> np.ndarray:
        """Per node of ``forest``, its place among the level's nodes in the order one pass
        takes them when every parent's histogram was kept (``pairs``: the estimator keeps
        them): by tree and node, then the larger of each two pending siblings, in the
        order of the smaller (``add_siblings``). Splits made in this order get the same
        node ids however many passes the level took and parents were kept."""
        nodes = level["nodes"]
        if pairs:
            pending = nodes if siblings is None else np.union1d(nodes, siblings["large"])
            parents = np.flatnonzero((forest["status"] == SPLIT)
                                     & (forest["depth"] == level["depth"] - 1))
            left, right = forest["left"][parents], forest["right"][parents]
            both = np.isin(left, pending) & np.isin(right, pending)
            small, large = _smaller_first(forest, left[both], right[both])
            first = np.setdiff1d(pending, large)
            first = first[np.lexsort((first, forest["tree"][first]))]
            at = np.full(len(forest["tree"]), -1, dtype=np.int64)
            at[first] = np.arange(len(first))
            nodes = np.concatenate([first, large[np.argsort(at[small], kind="stable")]])
        rank = np.full(len(forest["tree"]), -1, dtype=np.int64)
        rank[nodes] = np.arange(len(nodes))
        return rank


def keep_parents(forest: dict[str, np.ndarray], nodes: np.ndarray, hist: np.ndarray,
                 kept: dict[str, np.ndarray] | None, limit: float) -> dict[str, np.ndarray] | None:
    """``kept`` plus the histograms of the ``nodes`` just split whose children are both
    pending (while they fit in ``limit`` bytes), keyed by the smaller child."""
    status = forest["status"]
    split = status[nodes] == SPLIT
    left = np.where(split, forest["left"][nodes], 0)
    right = np.where(split, forest["right"][nodes], 0)
    both = np.flatnonzero(split & (status[left] == PENDING) & (status[right] == PENDING))
    used = 0 if kept is None else kept["hist"].nbytes
    room = int(max(0.0, limit - used) // max(hist[:, 0].nbytes, 1))
    both = both[:room]
    if len(both) == 0:
        return kept
    small, large = _smaller_first(forest, left[both], right[both])
    parents = np.moveaxis(hist[:, both], 1, 0)
    if kept is None:
        return {"small": small, "large": large, "hist": np.ascontiguousarray(parents)}
    return {"small": np.concatenate([kept["small"], small]),
            "large": np.concatenate([kept["large"], large]),
            "hist": np.concatenate([kept["hist"], parents])}


def _smaller_first(forest: dict[str, np.ndarray], left: np.ndarray, right: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Two siblings' ids as (the smaller by weight, the larger; left where equal)."""
    lighter = forest["weight"][left] <= forest["weight"][right]
    return np.where(lighter, left, right), np.where(lighter, right, left)


def add_siblings(nodes: np.ndarray, hist: np.ndarray, siblings: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The group's nodes and histograms with the larger siblings of its nodes added:
    parent minus smaller child."""
    order = np.argsort(siblings["small"])
    small = siblings["small"][order]
    at = np.minimum(np.searchsorted(small, nodes), len(small) - 1)
    match = small[at] == nodes
    which = order[at[match]]
    derived = siblings["hist"][which] - np.moveaxis(hist[:, match], 1, 0)
    return (np.concatenate([nodes, siblings["large"][which]]),
            np.concatenate([hist, np.moveaxis(derived, 0, 1)], axis=1))


def split_candidates(forest: dict[str, np.ndarray], nodes: np.ndarray,
                     featsel: np.ndarray | None, hist: np.ndarray, criterion: Criterion, *,
                     max_depth: int, min_leaf: float, min_gain_fraction: float,
                     empty_value: np.ndarray, min_gain: float = 0.0,
                     allowed: np.ndarray | None = None, monotonic: np.ndarray | None = None,
                     categorical: np.ndarray | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The best split of each of the group's pending ``nodes`` from their histograms, on
    the feature positions ``allowed`` (per node, all when None); the forest with its
    roots' values and weights, and the nodes that cannot split or found no split leaves.
    ``categorical`` (per node and feature position): the positions whose bins are
    categories. ``monotonic`` (per node and feature position: 1, -1 or 0;
    ``best_splits``) keeps each node's children's values within its bounds
    (``forest["lower"]``, ``["upper"]``).

    A split per found node, in the nodes' order: ``node``, ``feature``, ``bin``,
    ``missing_left``, ``gain``, the children's stats ``left`` and ``right`` ``(k, C)``;
    with ``categorical``, ``on`` (a split on a category) and ``categories`` (the set it
    sends left); with ``monotonic``, the node's ``bounds`` and the feature's
    ``direction``. A node's split depends on no other node of its level: ``grow_level``
    makes a level's splits pass by pass, or (``max_leaves``) all at its last pass."""
    forest = {k: v.copy() for k, v in forest.items()}
    totals = criterion.clean(np.ascontiguousarray(hist[0].sum(axis=1).T))   # (C, S)
    roots = forest["depth"][nodes] == 0
    if roots.any():
        values = criterion.value(totals[:, roots]).T
        empty = criterion.weight(totals[:, roots]) <= 0
        values[empty] = empty_value  # an empty bootstrap sample predicts the priors
        forest["value"][nodes[roots]] = _placed(forest, forest["tree"][nodes[roots]], values)
        forest["weight"][nodes[roots]] = criterion.weight(totals[:, roots])
    weight = forest["weight"][nodes]
    depth = forest["depth"][nodes]
    can = ((depth < max_depth) & (weight >= 2 * min_leaf) & (weight > 0)
           & criterion.splittable(totals))
    root_weight = forest["weight"][forest["roots"][forest["tree"][nodes]]]
    min_gain = min_gain_fraction * root_weight + min_gain
    width = hist.shape[3]
    splits = {"node": np.zeros(0, np.int64), "feature": np.zeros(0, np.int64),
              "bin": np.zeros(0, np.int64), "missing_left": np.zeros(0, bool),
              "gain": np.zeros(0), "left": np.zeros((0, width)), "right": np.zeros((0, width))}
    if can.any():
        bounds = None
        if monotonic is not None:
            bounds = np.stack([forest["lower"][nodes], forest["upper"][nodes]], axis=1)
        chosen = best_splits(hist, criterion, min_leaf, min_gain[can],
                             slots=None if can.all() else np.flatnonzero(can),
                             allowed=allowed, monotonic=monotonic, bounds=bounds,
                             categorical=categorical)
        hit = chosen["found"]
        position = chosen["position"][hit]
        feature = position if featsel is None else (
            featsel[can][hit][np.arange(len(position)), position])
        splits = {"node": nodes[can][hit], "feature": feature, "bin": chosen["bin"][hit],
                  "missing_left": chosen["missing_left"][hit], "gain": chosen["gain"][hit],
                  "left": chosen["left"][hit], "right": chosen["right"][hit]}
        if categorical is not None:
            splits["on"] = categorical[can][hit][np.arange(len(position)), position]
            splits["categories"] = chosen["categories"][hit]
        if monotonic is not None:
            rows = np.flatnonzero(can)[hit]
            splits["bounds"] = bounds[rows]
            splits["direction"] = monotonic[rows, position]
    forest["status"][np.setdiff1d(nodes, splits["node"])] = LEAF
    return forest, splits


def grow_level(forest: dict[str, np.ndarray], splits: dict[str, np.ndarray],
               criterion: Criterion, edges: list[np.ndarray], *, max_depth: int,
               min_leaf: float, max_leaves: int | None = None) -> dict[str, np.ndarray]:
    """The forest with the candidate ``splits`` of a level (``split_candidates``) made:
    two new children each, pending unless they cannot split; with ``max_leaves``, the
    best gains first while their trees have room (``_within_leaves``), the others' nodes
    leaves. A split on a category sends a set of them left (a row of ``forest["masks"]``).

    A split on a monotonic constrained feature bounds its children's subtrees at the
    middle of their two values, the left below and the right above it for 1
    (scikit-learn's rule), so that the model's output only rises (1) or falls (-1) with
    that feature."""
    forest = {k: v.copy() for k, v in forest.items()}
    if max_leaves is not None:
        keep = _within_leaves(forest, splits["node"], splits["gain"], max_leaves)
        forest["status"][splits["node"][~keep]] = LEAF
        splits = {k: v[keep] for k, v in splits.items()}
    split_nodes, feature, bins = splits["node"], splits["feature"], splits["bin"]
    forest["feature"][split_nodes] = feature
    forest["bin"][split_nodes] = bins
    forest["threshold"][split_nodes] = [threshold_of(edges[f], b)
                                        for f, b in zip(feature, bins, strict=True)]
    if "on" in splits:
        on = splits["on"]
        sets = splits["categories"][on]
        if forest["masks"].shape[1] != sets.shape[1]:  # the fit's first such split
            forest["masks"] = np.zeros((0, sets.shape[1]), dtype=bool)
        at = len(forest["masks"])
        forest["masks"] = np.concatenate([forest["masks"], sets])
        forest["category"][split_nodes[on]] = np.arange(at, at + len(sets))
        forest["bin"][split_nodes[on]] = -1
        forest["threshold"][split_nodes[on]] = np.nan
    forest["missing_left"][split_nodes] = splits["missing_left"]
    forest["gain"][split_nodes] = splits["gain"]
    forest["status"][split_nodes] = SPLIT
    limits = None
    if "bounds" in splits:
        limits = _child_bounds(criterion, splits["left"], splits["right"], splits["bounds"],
                               splits["direction"])
    return _add_children(forest, split_nodes, splits["left"], splits["right"], criterion,
                         max_depth, min_leaf, limits)


def _within_leaves(forest: dict[str, np.ndarray], nodes: np.ndarray, gain: np.ndarray,
                   max_leaves: int) -> np.ndarray:
    """Which splits of ``nodes`` (one each) their trees have room for: a split adds a
    leaf, a tree holds ``max_leaves``; the best gains first (in float32, so that the
    noise of sums cannot reorder two equal ones; then the node), as many as fit."""
    trees = forest["tree"][nodes]
    leaves = np.bincount(forest["tree"][forest["status"] != SPLIT],
                         minlength=len(forest["roots"]))
    room = max_leaves - leaves[trees]
    order = np.lexsort((nodes, -gain.astype(np.float32), trees))
    ranked = np.empty(len(nodes), dtype=np.int64)
    first = np.searchsorted(trees[order], trees[order], side="left")
    ranked[order] = np.arange(len(order)) - first
    return ranked < room


def best_first(forest: dict[str, np.ndarray], first: int, max_leaves: int
               ) -> dict[str, np.ndarray]:
    """The trees of the nodes from ``first`` on (grown to the end) cut to the splits
    best-first growth makes with ``max_leaves`` leaves a tree: from the root, the split
    of greatest gain among the leaves so far, then the next, until the tree has
    ``max_leaves`` leaves or no leaf can split (LightGBM's leaf-wise growth, XGBoost's
    ``lossguide``). A node's best split depends on its rows only, so the fully grown
    tree holds every split that growth can make. Gains are compared in float32 (the
    noise of sums cannot reorder two equal ones), ties by the node's place in the tree
    (shallower, then further left: the same in any partitioning). The nodes the cut
    leaves out are dropped; a split node that stays unsplit becomes a leaf with its
    value."""
    made, keep = _best_first_kept(forest, first, max_leaves)
    new_id = np.cumsum(keep) - 1
    out = {k: v[keep] for k, v in forest.items() if k not in FOREST_WIDE}
    cut = made[keep]
    out["status"] = np.where(cut, SPLIT, np.where(out["status"] == SPLIT, LEAF,
                                                  out["status"])).astype(np.int8)
    for name, empty in (("feature", -1), ("bin", -1), ("threshold", np.nan),
                        ("missing_left", False), ("gain", 0.0), ("category", -1)):
        out[name] = np.where(cut, out[name], empty).astype(out[name].dtype)
    out["left"] = np.where(cut, new_id[np.maximum(out["left"], 0)], -1).astype(np.int32)
    out["right"] = np.where(cut, new_id[np.maximum(out["right"], 0)], -1).astype(np.int32)
    out["roots"] = new_id[forest["roots"]].astype(np.int32)
    out["masks"] = forest["masks"]  # rows of the dropped splits stay, unused
    return out


def _best_first_kept(forest: dict[str, np.ndarray], first: int, max_leaves: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per node: whether ``best_first`` keeps its split (the nodes before ``first``
    keep theirs), and whether it keeps the node."""
    made = _best_first_splits(forest, first, max_leaves)
    made[:first] = forest["status"][:first] == SPLIT
    keep = np.zeros(len(made), dtype=bool)
    keep[:first] = True
    keep[forest["roots"][forest["roots"] >= first]] = True
    keep[forest["left"][made]] = keep[forest["right"][made]] = True
    return made, keep


def cut_places(forest: dict[str, np.ndarray], first: int, max_leaves: int) -> np.ndarray:
    """Where ``best_first``'s cut puts the rows of each node from ``first`` on (local ids,
    ``node - first``, before and after): a kept node's rows stay at it, a dropped node's
    go to its nearest kept ancestor (a leaf of the cut tree, whose split was dropped).
    The rows' nodes after a walk of ``d`` levels of the grown trees, looked up here, are
    their nodes after ``d`` levels of the cut trees: no walk from the roots again."""
    _, keep = _best_first_kept(forest, first, max_leaves)
    local = keep[first:]
    at = np.cumsum(keep)[first:] - 1 - first
    split = first + np.flatnonzero(forest["status"][first:] == SPLIT)
    parent = np.full(len(local), -1, dtype=np.int64)
    parent[forest["left"][split] - first] = parent[forest["right"][split] - first] = split - first
    for node in np.flatnonzero(~local).tolist():  # children come after their parents
        at[node] = at[parent[node]]
    return at


def _best_first_splits(forest: dict[str, np.ndarray], first: int, max_leaves: int
                       ) -> np.ndarray:
    """Which split nodes (of the trees from ``first`` on) best-first growth makes with
    ``max_leaves`` leaves a tree, among the splits the forest has (``best_first``'s
    order: gains in float32, ties to the shallower, then further left node)."""
    size = len(forest["tree"])
    split = forest["status"] == SPLIT
    left, right, place = forest["left"], forest["right"], forest["place"]
    gain = forest["gain"].astype(np.float32)
    made = np.zeros(size, dtype=bool)
    for root in forest["roots"][forest["roots"] >= first].tolist():
        frontier = [(-float(gain[root]), int(place[root]), root)] if split[root] else []
        leaves = 1
        while frontier and leaves < max_leaves:
            _, _, node = heapq.heappop(frontier)
            made[node] = True
            leaves += 1
            for child in (int(left[node]), int(right[node])):
                if split[child]:
                    heapq.heappush(frontier, (-float(gain[child]), int(place[child]), child))
    return made


def best_first_pending(forest: dict[str, np.ndarray], first: int, max_leaves: int
                       ) -> dict[str, np.ndarray]:
    """The forest with the pending nodes best-first growth can never split made leaves:
    those whose parent it does not split even if no pending node were ever split (split
    pending nodes could only take the room first), so that lossguide grows only what
    its cut can keep."""
    made = _best_first_splits(forest, first, max_leaves)
    split = np.flatnonzero(forest["status"] == SPLIT)
    split = split[split >= first]
    dropped = np.concatenate([forest["left"][split[~made[split]]],
                              forest["right"][split[~made[split]]]])
    dropped = dropped[forest["status"][dropped] == PENDING]
    if len(dropped) == 0:
        return forest
    status = forest["status"].copy()
    status[dropped] = LEAF
    return {**forest, "status": status}


def _placed(forest: dict[str, np.ndarray], tree: np.ndarray, values: np.ndarray
            ) -> np.ndarray:
    """Node values as wide as the forest's: a boosted tree's single value goes to the
    output column of its class (trees of a round take the classes in turn)."""
    width = forest["value"].shape[1]
    if values.shape[1] == width:
        return values
    full = np.zeros((len(values), width))
    full[np.arange(len(values)), tree % width] = values[:, 0]
    return full


def _child_bounds(criterion: Criterion, left: np.ndarray, right: np.ndarray,
                  bounds: np.ndarray, direction: np.ndarray) -> dict[str, np.ndarray]:
    """The bounds of the children's own children, and (boosting) the children's values
    (shrunk) within their parent's ``bounds``; left and right interleaved
    (``_add_children``'s order)."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    v_left = criterion.constrained_value(left.T, lo, hi)
    v_right = criterion.constrained_value(right.T, lo, hi)
    mid = 0.5 * (v_left + v_right)
    rising, falling = direction > 0, direction < 0
    k = len(lo)
    value, lower, upper = np.empty(2 * k), np.empty(2 * k), np.empty(2 * k)
    value[0::2], value[1::2] = v_left, v_right
    lower[0::2] = np.where(falling, mid, lo)
    upper[0::2] = np.where(rising, mid, hi)
    lower[1::2] = np.where(rising, mid, lo)
    upper[1::2] = np.where(falling, mid, hi)
    out = {"lower": lower, "upper": upper}
    if isinstance(criterion, Newton):
        out["value"] = criterion.learning_rate * value
    return out


def _add_children(forest: dict[str, np.ndarray], parents: np.ndarray, left: np.ndarray,
                  right: np.ndarray, criterion: Criterion, max_depth: int, min_leaf: float,
                  limits: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    k = len(parents)
    stats = np.empty((left.shape[1], 2 * k))
    stats[:, 0::2], stats[:, 1::2] = left.T, right.T
    tree = np.repeat(forest["tree"][parents], 2)
    depth = np.repeat(forest["depth"][parents] + 1, 2)
    weight = criterion.weight(stats)
    pending = _can_split(criterion, stats, depth, max_depth, min_leaf)
    raw = criterion.value(stats).T if limits is None or "value" not in limits else (
        limits["value"][:, None])
    value = _placed(forest, tree, raw)
    place = np.repeat(2 * forest["place"][parents], 2) + np.tile([1, 2], k)
    forest, ids = add_nodes(forest, tree, depth, np.where(pending, PENDING, LEAF), value,
                            weight, place)
    if limits is not None:
        forest["lower"][ids], forest["upper"][ids] = limits["lower"], limits["upper"]
    forest["left"][parents] = ids[0::2]
    forest["right"][parents] = ids[1::2]
    return forest


def _can_split(criterion: Criterion, stats: np.ndarray, depth: np.ndarray, max_depth: int,
               min_leaf: float) -> np.ndarray:
    """Whether new nodes of ``stats`` ``(C, k)`` at ``depth`` may split (are pending)."""
    return ((depth < max_depth) & (criterion.weight(stats) >= 2 * min_leaf)
            & criterion.splittable(stats))


def gather_splits(gathered: dict[str, Any] | None, forest: dict[str, np.ndarray],
                  splits: dict[str, np.ndarray], nodes: np.ndarray, hist: np.ndarray | None,
                  limit: float, criterion: Criterion, max_depth: int, min_leaf: float
                  ) -> dict[str, Any]:
    """A level's candidate splits (``split_candidates``) so far, ``gathered``, with a
    pass's ``splits`` added; and the histograms of the pass's ``nodes`` (``hist``; None:
    none is kept) whose splits would leave both children pending, while they fit in
    ``limit`` bytes (``keep_parents`` keeps those of the nodes split, once the level's
    splits are made)."""
    if gathered is None:
        gathered = {"splits": splits, "parents": np.zeros(0, np.int64), "hist": None}
    elif len(gathered["splits"]["node"]) == 0:  # (it may lack the categories' keys)
        gathered = {**gathered, "splits": splits}
    elif len(splits["node"]):
        ahead = gathered["splits"]
        gathered = {**gathered, "splits": {k: np.concatenate([ahead[k], v])
                                           for k, v in splits.items()}}
    if hist is None or not len(splits["node"]):
        return gathered
    depth = forest["depth"][splits["node"]] + 1
    both = (_can_split(criterion, splits["left"].T, depth, max_depth, min_leaf)
            & _can_split(criterion, splits["right"].T, depth, max_depth, min_leaf))
    at = np.flatnonzero(np.isin(nodes, splits["node"][both]))
    held = gathered["hist"]
    room = max(0.0, limit - (0 if held is None else held.nbytes)) // max(hist[:, 0].nbytes, 1)
    at = at[:int(room)]
    if len(at) == 0:
        return gathered
    if held is None:
        return {**gathered, "parents": nodes[at], "hist": hist[:, at]}
    return {**gathered, "parents": np.concatenate([gathered["parents"], nodes[at]]),
            "hist": np.concatenate([held, hist[:, at]], axis=1)}


def forest_stats(forest: dict[str, np.ndarray]) -> dict[str, int]:
    status = forest["status"]
    leaves = status == LEAF
    return {"trees": int(len(forest["roots"])), "nodes": int(len(status)),
            "leaves": int(leaves.sum()),
            "depth": int(forest["depth"].max(initial=0))}


def importances(forest: dict[str, np.ndarray], n_features: int) -> np.ndarray:
    """Split gain per feature: normalised per tree, averaged over the trees that split,
    normalised (scikit-learn's mean decrease in impurity)."""
    split = forest["status"] == SPLIT
    n_trees = len(forest["roots"])
    if not split.any() or n_trees == 0:
        return np.zeros(n_features)
    per_tree = np.zeros((n_trees, n_features))
    np.add.at(per_tree, (forest["tree"][split], forest["feature"][split]),
              forest["gain"][split])
    sums = per_tree.sum(axis=1, keepdims=True)
    used = sums[:, 0] > 0
    mean = (per_tree[used] / sums[used]).mean(axis=0)
    total = mean.sum()
    return mean / total if total > 0 else mean


# --------------------------------------------------------------------------- traversal


_WALKED = ("feature", "bin", "missing_left", "left", "right", "status", "category")


def forest_on(forest: dict[str, np.ndarray], xp: Any, slot_of: np.ndarray | None = None
              ) -> dict[str, Any]:
    """The arrays a partition walks (and ``slot_of``, each node's slot in a pass's
    histograms, -1 for none) on ``xp``: one int64 host array, one copy (and the
    categorical splits' sets, ``masks``, in another)."""
    names = _WALKED + (() if slot_of is None else ("slot_of",))
    host = np.empty((len(names), len(forest["tree"])), dtype=np.int64)
    for i, name in enumerate(names):
        host[i] = forest[name] if name != "slot_of" else slot_of
    packed = to_xp(host, xp)
    out = {name: packed[i, :] for i, name in enumerate(names)}
    out["missing_left"] = out["missing_left"] != 0
    out.update(_masks_on(forest["masks"], xp))
    return out


def _masks_on(masks: np.ndarray, xp: Any) -> dict[str, Any]:
    """The categorical splits' sets as ``goes_left`` reads them (none: nothing)."""
    if len(masks) == 0:
        return {}
    return {"masks": to_xp(masks.reshape(-1), xp), "mask_width": masks.shape[1]}


def goes_left(code: Any, pos: Any, arrays: dict[str, Any], missing: int, xp: Any) -> Any:
    """Whether rows with bin ``code`` at the nodes ``pos`` go left: the missing code to
    the node's missing side; at a categorical split (``arrays`` has ``masks``) when the
    node's set holds the code, else when the code is at most the node's bin."""
    left = code <= xp.take(arrays["bin"], pos)
    if "masks" in arrays:
        category = xp.take(arrays["category"], pos)
        left = xp.where(category >= 0, in_set(category, code, arrays, xp), left)
    return xp.where(code == missing, xp.take(arrays["missing_left"], pos), left)


def descend(pos: Any, rows: Any, codes: Any, n: int, arrays: dict[str, Any], missing: int,
            xp: Any, steps: int | None = None) -> Any:
    """Each row's node moved down split nodes until it is at a pending node or a leaf
    (at most ``steps`` levels down when the number is known)."""
    step = 0
    while steps is None or step < steps:
        step += 1
        feature = xp.take(arrays["feature"], pos)
        inner = feature >= 0
        if steps is None and not bool(xp.any(inner)):
            return pos
        feature = xp.where(inner, feature, xp.zeros_like(feature))
        code = xp.astype(take_codes(codes, feature * n + rows, xp), xp.int64)
        go_left = goes_left(code, pos, arrays, missing, xp)
        child = xp.where(go_left, xp.take(arrays["left"], pos), xp.take(arrays["right"], pos))
        pos = xp.where(inner, child, pos)
    return pos


def child_table(width: int, bin_: np.ndarray, missing_left: np.ndarray, left: np.ndarray,
                right: np.ndarray, category: np.ndarray | None = None,
                masks: np.ndarray | None = None) -> np.ndarray:
    """Per (node, code) the node a row with that code goes to, ``(nodes, width)``: left
    for codes up to the node's ``bin_`` (at a categorical split, ``category`` >= 0, the
    codes of its row of ``masks``), the last code (missing values) to the node's
    missing side (training's ``node_tables`` and scoring's ``coded_walk``)."""
    code = np.arange(width)[None, :]
    below = code <= bin_[:, None]
    if masks is not None and len(masks):
        on = np.flatnonzero(category >= 0)
        sets = np.zeros((len(on), width), dtype=bool)
        sets[:, :min(width, masks.shape[1])] = masks[category[on], :width]
        below[on] = sets
    go_left = np.where(code == width - 1, missing_left[:, None], below)
    return np.where(go_left, left[:, None], right[:, None])


def node_tables(forest: dict[str, np.ndarray], first: int, end: int, missing: int, n: int,
                xp: Any, nodes: np.ndarray | None = None) -> dict[str, Any]:
    """What moves rows down the nodes ``[first, end)`` (the trees of one boosting round:
    children come after their parents), indexed by the node's local id ``node - first``,
    on ``xp`` in one copy.

    ``offset``: where a row at the node reads its code (split feature times ``n``);
    ``child``: per (node, code) the node a row goes to, a node that is not split keeping
    its rows (or ``bin``, ``missing_left``, ``left``, ``right`` to compare with, for many
    nodes); ``slot``: the node's position in ``nodes`` (a pass's histograms), -1 for none.
    """
    size = end - first
    local = np.arange(size)
    split = forest["status"][first:end] == SPLIT
    left = np.where(split, forest["left"][first:end] - first, local)
    right = np.where(split, forest["right"][first:end] - first, local)
    slot = np.full(size, -1, dtype=np.int64)
    if nodes is not None:
        slot[np.asarray(nodes) - first] = np.arange(len(nodes))
    width = missing + 1
    columns = [np.where(split, forest["feature"][first:end], 0) * n, slot]
    category = np.where(split, forest["category"][first:end], -1)
    if size * width <= TABLE_ENTRIES:
        columns.append(child_table(width, forest["bin"][first:end],
                                   forest["missing_left"][first:end], left, right,
                                   category, forest["masks"]))
    else:
        columns += [forest["bin"][first:end], forest["missing_left"][first:end], left, right,
                    category]
    host = np.empty((size, sum(1 if c.ndim == 1 else c.shape[1] for c in columns)), np.int64)
    at = 0
    for c in columns:
        wide = 1 if c.ndim == 1 else c.shape[1]
        host[:, at:at + wide] = c.reshape(size, wide)
        at += wide
    packed = to_xp(host, xp)
    out = {"offset": packed[:, 0], "slot": packed[:, 1], "width": width, "missing": missing}
    if size * width <= TABLE_ENTRIES:
        out["child"] = xp.reshape(packed[:, 2:], (-1,))
    else:
        out.update(bin=packed[:, 2], missing_left=packed[:, 3] != 0, left=packed[:, 4],
                   right=packed[:, 5], category=packed[:, 6], **_masks_on(forest["masks"], xp))
    return out


def walk_step(pos: Any, rows: Any, codes: Any, tables: dict[str, Any], xp: Any) -> Any:
    """The local nodes ``pos`` of the rows ``rows`` one level down (``node_tables``)."""
    code = xp.astype(take_codes(codes, xp.take(tables["offset"], pos) + rows, xp), xp.int64)
    if "child" in tables:
        return xp.take(tables["child"], pos * tables["width"] + code)
    go_left = goes_left(code, pos, tables, tables["missing"], xp)
    return xp.where(go_left, xp.take(tables["left"], pos), xp.take(tables["right"], pos))


def take_codes(codes: Any, index: Any, xp: Any) -> Any:
    """The codes at the feature-major positions ``index`` of a partition's flat codes,
    or of its ``SparseCodes``."""
    if isinstance(codes, SparseCodes):
        return codes.take(index)
    return xp.take(codes, index)


def drop_leaves(rows: Any, pos: Any, extra: Any | None, arrays: dict[str, Any], xp: Any
                ) -> tuple[Any, Any, Any | None]:
    """The rows (and their nodes, extra) not at a leaf: at a pending node, or at a node
    an earlier group of this level split (its rows go down at the next level)."""
    keep = xp.nonzero(xp.take(arrays["status"], pos) != LEAF)[0]
    if keep.shape[0] == rows.shape[0]:
        return rows, pos, extra
    return (xp.take(rows, keep), xp.take(pos, keep),
            None if extra is None else xp.take(extra, keep))


# --------------------------------------------------------------------------- estimator base


class TreeEstimator(PlannedPredictions, Estimator):
    """What the tree estimators share: the summary pass, the level passes, validation.

    Subclasses say which trees a pass grows (``_start`` builds the forest), the rows and
    multipliers of each tree (``_initial_rows``, ``_row_weights``), the channels
    (``_channels``) and what happens when no node is pending (``_finish_growth``).
    """

    multi_pass = True
    schema_from_fit = True  # probability is float64 for 2 classes, list<double> for more
    explained = True

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params, categorical_names(schema, self.params),
                                   sparse=True)

    def _check(self, schema: pa.Schema) -> tuple[list[str], bool, pa.DataType]:
        categorical = categorical_names(schema, self.params)
        features = check_inputs(schema, self.params, categorical, sparse=True)
        check_categorical_features(schema, self.params, features, categorical)
        classify, label_type = self._label_type(schema)
        self._check_params(classify)
        self._check_features(features)
        return features, classify, label_type

    def _label_type(self, schema: pa.Schema) -> tuple[bool, pa.DataType]:
        """(is classifier, label value type) of the input (``tree_label_type``)."""
        return tree_label_type(schema, self.params, self.name)

    def _check_params(self, classify: bool) -> None:
        """Parameter combinations that depend on the task."""
        check_class_weight(self.params.class_weight, classify, self.params.label)
        if self.params.grow_policy == "lossguide" and self.params.max_leaves is None:
            raise ParamError("grow_policy: lossguide grows leaf by leaf up to max_leaves, "
                             "and max_leaves is not set",
                             hint="add max_leaves: 31 (LightGBM's num_leaves default), or "
                                  "leave grow_policy out")

    def _check_features(self, features: list[str]) -> None:
        """Parameters that name features (checked when the plan is made)."""
        unknown = [name for name in self.params.monotonic or {} if name not in features]
        if unknown:
            raise SchemaError(f"monotonic names '{unknown[0]}', which is not a feature",
                              hint="features: " + ", ".join(features[:20]))

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        _, classify, label_type = self._check(schema)
        return with_predictions(schema, [False, True] if classify else None,
                                label_type if classify else None)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features, classify, label_type = self._check(schema)
        # the categorical features' kept types, until the summary finds their categories
        kept = {name: category_type(schema.field(name).type)
                for name in categorical_names(schema, self.params)}
        sparse = [(column, stop - start) for column, start, stop in groups(schema, features)
                  if column is not None]  # (name, positions) of each sparse column read
        return {"phase": "summary", "token": new_token(), "features": features,
                "sparse": sparse, "classify": classify, "label_type": str(label_type),
                "categories": {name: pa.array([], type=t) for name, t in kept.items()}}

    # ------------------------------------------------------------------ partitions

    def partial_state(self, state: dict[str, Any]) -> dict[str, Any]:
        # the parents' histograms kept for sibling subtraction (up to PARENT_HISTOGRAM_MB)
        # serve the driver's update only: partitions need not receive them every pass
        return {k: v for k, v in state.items() if k not in ("siblings", "kept", "gathered")}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        if state["phase"] == "validate":
            return validation_partial(self._model(state), part, self.params, xp)
        if state["phase"] == "summary":
            return self._summary_partial(part, state)
        return self._level_partial(part, state, xp)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "metrics" in a:
            return validation_combine(a, b)
        if a["kind"] == "summary":
            return _combine_summary(a, b)
        return self._combine_level(a, b)

    def _summary_partial(self, part: pa.Table, state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        train, held = held_out(part, p)
        weights = row_weights(train, p.weight)
        labels = label_column(train, p.label)
        out: dict[str, Any] = {"kind": "summary", "rows": train.num_rows,
                               "heldout": held.num_rows}
        if state["classify"]:
            out["classes"], out["class_weights"] = class_weights(labels, weights)
        else:
            y = _float_labels(labels)
            out["sums"] = np.array([weights.sum(), weights @ y])
            # the held-out rows' labels too: a log link's validation deviance needs them
            held_y = _float_labels(label_column(held, p.label))
            out["label_min"] = float(min(y.min(initial=np.inf), held_y.min(initial=np.inf)))
            out["label_max"] = float(max(y.max(initial=-np.inf),
                                         held_y.max(initial=-np.inf)))
            out["label_zero_one"] = bool(np.all((y == 0) | (y == 1))
                                         and np.all((held_y == 0) | (held_y == 1)))
        features = state["features"]
        keys = mix(model_hashes(train, p, features) ^ _SAMPLE_KEY)
        order = np.argsort(keys, kind="stable")[:BIN_SAMPLE_ROWS]
        out["sample_keys"] = keys[order]
        taken = train.take(pa.array(order))
        # a categorical feature's codes are NaN until the summary finds its categories:
        # its sample is its values
        if has_sparse(taken.schema, features) and can_read():
            out["sample"] = sample_matrix(
                taken, features, lambda name: feature_values(taken, name, state["categories"]))
        else:
            out["sample"] = np.ascontiguousarray(
                feature_columns(taken, features, categories=state["categories"]).T)
        out["sample_values"] = {name: normalized(taken.column(name), kept.type, name)
                                for name, kept in state["categories"].items()}
        return out

    def _prepared(self, part: pa.Table, state: dict[str, Any], memo: dict[str, Any],
                  xp: Any) -> dict[str, Any]:
        """The partition's training rows binned, with labels, weights (and row hashes)."""
        prep = memo.get("prep")
        if prep is None:
            train = held_out(part, self.params)[0]
            prep = prepare_rows([train], state, self.params, xp, self._row_hash())[0]
            memo["prep"] = prep
        return prep

    def _row_hash(self) -> bool:
        """Whether the rows' hashes go to the device (bootstrap counts, subsamples)."""
        return False

    def _level_partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        memo = fit_memo(part, state["token"])
        prep = self._prepared(part, state, memo, xp)
        out = self._pass_extras(part, prep, state, memo, xp)
        nodes, featsel = Level.group(state["level"])
        forest = state["forest"]
        slot_of = np.full(len(forest["tree"]), -1, dtype=np.int64)
        slot_of[nodes] = np.arange(len(nodes))
        arrays = forest_on(forest, xp, slot_of)
        crit = self._criterion(state)
        trees, first = np.unique(forest["tree"][nodes], return_index=True)
        ends = np.append(first[1:], len(nodes))
        hist: np.ndarray | None = None
        counts = self._counts(state)
        # counts are summed as integers while no bin can pass 2**32 (a row counts at most
        # 255 times): the same sums as in float64, in half the bytes
        dtype = np.uint32 if counts and prep["n"] * 255 < 2**32 else np.float64
        batch: list[tuple[Any, Any, Any]] = []
        batch_rows, batch_start = 0, 0
        for t, (tree, end) in enumerate(zip(trees.tolist(), ends.tolist(), strict=True)):
            rows, pos, extra = self._tree_rows(prep, state, memo, arrays, int(tree), xp)
            slots = xp.take(arrays["slot_of"], pos)
            inside = xp.nonzero(slots >= 0)[0]
            # a batch holds 9 bytes a row (int32 row and slot, as the memo; the extra):
            # weights and channels come with its histograms
            batch.append((xp.astype(xp.take(rows, inside), xp.int32),
                          xp.astype(xp.take(slots, inside), xp.int32),
                          None if extra is None else xp.take(extra, inside)))
            batch_rows += int(batch[-1][0].shape[0])
            if batch_rows >= ROW_BATCH or t == len(trees) - 1:
                # the batch's trees own the slots [start of its first tree, end)
                lo = int(first[batch_start])
                if batch_rows:
                    if hist is None:
                        m = len(state["features"]) if featsel is None else featsel.shape[1]
                        hist = np.zeros((m, len(nodes), state["missing"] + 1, crit.channels),
                                        dtype=dtype)
                    rows, slots, extra = _concat_batch(batch, xp)
                    batch = []  # the trees' pieces go before the histograms' temporaries
                    self._batch_histograms(prep, state, rows, slots - lo, extra,
                                           None if featsel is None else featsel[lo:end],
                                           crit, hist[:, lo:end], xp)
                    del rows, slots, extra  # not alive while the next tree's rows are found
                batch, batch_rows, batch_start = [], 0, t + 1
        if hist is not None and counts:
            hist = narrow_counts(hist)
        out.update({"kind": "level", "hist": hist})
        return out

    def _counts(self, state: dict[str, Any]) -> bool:
        """Whether the histograms' sums are counts (whole numbers): the rows' classes,
        each row weighing 1 (or its bootstrap copies; not when classes are weighed)."""
        return (bool(state["classify"]) and self.params.weight is None
                and state.get("class_factor") is None)

    def _batch_histograms(self, prep: dict[str, Any], state: dict[str, Any], rows: Any,
                          slots: Any, extra: Any | None, featsel: np.ndarray | None,
                          crit: Criterion, out: np.ndarray, xp: Any) -> None:
        """Histograms of a batch of trees' ``rows`` (their ``slots`` among the batch's,
        per-row extra) into ``out``, the pass's histograms of the batch's slots;
        ``featsel``: the batch's slots' features; integer ``out``: the rows' counts."""
        if out.dtype.kind == "u":
            mult = self._row_counts(rows, extra, xp)
        else:
            mult = self._row_weights(prep, rows, extra, xp)
        channels, fold = self._channels(prep, state, rows, mult, xp)
        histograms(xp, prep["codes"], prep["n"], rows, slots, channels, fold,
                   crit.channels if fold is not None else 1, featsel,
                   len(state["features"]), out.shape[1], state["missing"] + 1,
                   prep.get("by_row"), out=out)

    def _tree_rows(self, prep: dict[str, Any], state: dict[str, Any], memo: dict[str, Any],
                   arrays: dict[str, Any], tree: int, xp: Any) -> tuple[Any, Any, Any]:
        """The tree's rows not at a leaf, their nodes at this level's depth and per-row
        extra (bootstrap counts); from the memo, moved down the levels split since, or
        from the root."""
        trees = memo.setdefault("trees", {})
        held = trees.pop(tree, None)
        depth = state["level"]["depth"]
        if held is None:
            rows, extra = self._initial_rows(prep, state, tree, xp)
            root = int(state["forest"]["roots"][tree])
            pos = xp.full(rows.shape, root, dtype=xp.int64)
            steps = depth
        else:
            rows, pos, extra, size, at = held
            memo_release(memo, size)
            rows, pos = xp.astype(rows, xp.int64), xp.astype(pos, xp.int64)
            steps = depth - at
        pos = descend(pos, rows, prep["codes"], prep["n"], arrays, state["missing"], xp, steps)
        rows, pos, extra = drop_leaves(rows, pos, extra, arrays, xp)
        size = int(rows.shape[0]) * (8 + (0 if extra is None else 1))
        if memo_take(memo, size):
            trees[tree] = (xp.astype(rows, xp.int32), xp.astype(pos, xp.int32), extra, size,
                           depth)
        return rows, pos, extra

    def _initial_rows(self, prep: dict[str, Any], state: dict[str, Any], tree: int, xp: Any
                      ) -> tuple[Any, Any | None]:
        """Rows a tree learns from (positive weight) and their extra (None)."""
        return xp.nonzero(prep["w"] > 0)[0], None

    def _row_weights(self, prep: dict[str, Any], rows: Any, extra: Any | None, xp: Any) -> Any:
        return xp.take(prep["w"], rows)

    def _row_counts(self, rows: Any, extra: Any | None, xp: Any) -> Any:
        """``_row_weights`` as uint32 where every row weighs 1 (``_counts``)."""
        return xp.ones(rows.shape, dtype=xp.uint32)

    def _pass_extras(self, part: pa.Table, prep: dict[str, Any], state: dict[str, Any],
                     memo: dict[str, Any], xp: Any) -> dict[str, Any]:
        """More per-pass statistics (boosting: the validation loss)."""
        return {}

    def _channels(self, prep: dict[str, Any], state: dict[str, Any], rows: Any, mult: Any,
                  xp: Any) -> tuple[list[Any], Any | None]:
        """Histogram channels of a batch's rows: classes folded, or (w, w y)."""
        if state["classify"]:
            return [mult], xp.take(prep["y"], rows)
        return [mult, mult * xp.take(prep["y"], rows)], None

    def _combine_level(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {**a, "hist": add_histograms(a["hist"], b["hist"])}

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "summary":
            return self._start(self._summarise(stats, state)), False
        if state["phase"] == "validate":
            validation = validation_finalize(self._model(state), stats)
            return {**state, "phase": "done", "validation": validation}, True
        state = self._before_level(stats, state)
        if state["phase"] != "grow":
            return self._after_growth(state)
        return self._level_update(stats, state)

    def _summarise(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        edges = bin_edges(stats["sample"], p.max_bins)
        categories = {name: choose_categories(values, p.max_bins)
                      for name, values in stats["sample_values"].items()}
        for j, name in enumerate(state["features"]):
            if name in categories:  # a category's code is its bin
                edges[j] = np.arange(len(categories[name]) - 1) + 0.5
        out = {**state, "rows": int(stats["rows"]), "heldout": int(stats["heldout"]),
               "edges": edges, "missing": missing_bin(edges), "categories": categories}
        if state["classify"]:
            classes, totals = stats["classes"], stats["class_weights"]
            if p.monotonic and len(classes) > 2:
                raise DataError(
                    f"monotonic constraints need a numeric label or two classes; "
                    f"'{p.label}' has {len(classes)} classes",
                    hint="leave monotonic out, or fit one model per class (a 0/1 label each)")
            totals, factor = weigh_classes(p.class_weight, classes, totals, p.label)
            total = float(totals.sum())
            out.update(classes=classes, prior=totals / total if total > 0 else totals,
                       class_factor=factor)
        else:
            total = float(stats["sums"][0])
            out["mean"] = float(stats["sums"][1] / total) if total > 0 else 0.0
            out["label_min"] = float(stats["label_min"])
            out["label_max"] = float(stats["label_max"])
            out["label_zero_one"] = bool(stats["label_zero_one"]) and (
                out["label_min"] < out["label_max"])
        require_positive_weight(total, p.weight)
        out["total_weight"] = total
        return out

    def _group_size(self, state: dict[str, Any], m: int) -> int:
        width = self._criterion(state).channels
        slot_bytes = m * (state["missing"] + 1) * width * 8
        return int(self.params.max_histogram_mb * 2**20 // slot_bytes)

    def _featsel(self, state: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray | None]:
        return lambda nodes: None

    def _require_histogram_room(self, state: dict[str, Any]) -> None:
        """A DataError where one node's histograms (its features' bins, made for every
        position of a sparse column, however few rows store one) are past the memory
        share: a pass could not hold one node."""
        sparse = state.get("sparse")
        if not sparse:
            return
        m = self._n_sampled(state)
        need = m * (state["missing"] + 1) * self._criterion(state).channels * 8.0
        past = past_memory_share(need)
        if past is None:
            return
        name, positions = max(sparse, key=lambda c: c[1])
        raise DataError(
            f"{self.name}: a node's histograms of {m:,} features ({positions:,} the "
            f"positions of the sparse column '{name}') x {state['missing'] + 1} bins take "
            f"{past}",
            hint="fewer terms (vectorize_text's min_df or max_features; num_features where "
                 "terms are hashed), or fewer bins (max_bins)")

    children_share_features = False
    """Whether a node's children sum the histograms of the features the node did (then a
    child's sibling may come from its parent's), as every node does when none samples."""

    def _directions(self, state: dict[str, Any]) -> np.ndarray | None:
        """Per feature: 1, -1 (constrained) or 0; None when no feature is."""
        constraints = self.params.monotonic
        if not constraints:
            return None
        return np.array([constraints.get(f, 0) for f in state["features"]], np.int8)

    def _monotonic(self, state: dict[str, Any], nodes: np.ndarray) -> np.ndarray | None:
        """Per node and feature: 1, -1 (constrained) or 0; None when no feature is."""
        direction = self._directions(state)
        if direction is None:
            return None
        return np.broadcast_to(direction, (len(nodes), len(direction)))

    def _allowed(self, state: dict[str, Any], nodes: np.ndarray) -> np.ndarray | None:
        """Which features each node may split on, ``(nodes, features)`` (None: all); the
        level maps them to its histograms' positions. Boosting's per-node draws and
        interaction constraints decide here, on histograms that hold every feature of the
        tree, so that a child's sibling still comes from its parent's."""
        return None

    def _n_sampled(self, state: dict[str, Any]) -> int:
        return len(state["features"])

    def _next_level(self, state: dict[str, Any]) -> dict[str, Any]:
        self._require_histogram_room(state)
        level = Level.start(state["forest"], self._group_size(state, self._n_sampled(state)),
                            self._featsel(state), state.get("siblings"))
        return {**state, "level": level, "phase": "grow" if level is not None else "grown"}

    def _before_level(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """Look at the pass's extra statistics before growing (boosting: stop early)."""
        return state

    def _level_update(self, stats: dict[str, Any], state: dict[str, Any]
                      ) -> tuple[dict[str, Any], bool]:
        p = self.params
        nodes, featsel = Level.group(state["level"])
        crit = self._criterion(state)
        m = self._n_sampled(state) if featsel is None else featsel.shape[1]
        hist = stats["hist"]
        if hist is None:
            hist = np.zeros((m, len(nodes), state["missing"] + 1, crit.channels))
        else:  # counts come as integers (``narrow_counts``): the same sums
            hist = np.asarray(hist, dtype=np.float64)
        if state.get("siblings") is not None:
            nodes, hist = add_siblings(nodes, hist, state["siblings"])
            if featsel is not None:  # the derived siblings' features: their parents'
                featsel = self._featsel(state)(nodes)
        forest, splits = split_candidates(
            state["forest"], nodes, featsel, hist, crit, max_depth=p.max_depth,
            min_leaf=p.min_samples_leaf, min_gain_fraction=self._min_gain_fraction(state),
            min_gain=self._min_gain(state), empty_value=self._empty_value(state),
            allowed=_at_positions(self._allowed(state, nodes), featsel),
            monotonic=_at_positions(self._monotonic(state, nodes), featsel),
            categorical=_at_positions(_categorical(state, len(nodes)), featsel))
        keeps = featsel is None or self.children_share_features
        limit = min(PARENT_HISTOGRAM_MB, p.max_histogram_mb) * 2**20
        kept, gathered = state.get("kept"), state.get("gathered")
        level = Level.advance(state["level"])
        if p.max_leaves is None or p.grow_policy == "lossguide":  # lossguide: cut when grown
            forest = grow_level(forest, splits, crit, state["edges"], max_depth=p.max_depth,
                                min_leaf=p.min_samples_leaf)
            if keeps:
                kept = keep_parents(forest, nodes, hist, kept, limit)
        else:
            # a capped level's splits wait for its last pass, so that the trees' room goes
            # to the level's best gains however max_histogram_mb divides it into passes
            gathered = gather_splits(gathered, forest, splits, nodes, hist if keeps else None,
                                     limit, crit, p.max_depth, p.min_samples_leaf)
            if level is None:
                splits = gathered["splits"]
                rank = Level.rank(state["level"], forest, state.get("siblings"), keeps)
                order = np.argsort(rank[splits["node"]])
                forest = grow_level(forest, {k: v[order] for k, v in splits.items()}, crit,
                                    state["edges"], max_depth=p.max_depth,
                                    min_leaf=p.min_samples_leaf, max_leaves=p.max_leaves)
                if gathered["hist"] is not None:
                    kept = keep_parents(forest, gathered["parents"], gathered["hist"], kept,
                                        limit)
                gathered = None
        if level is None and p.grow_policy == "lossguide":
            # what best-first growth cannot split stops growing (and its kept parents go)
            forest = best_first_pending(forest, self._growing_from(state), p.max_leaves)
            if kept is not None:
                live = forest["status"][kept["small"]] == PENDING
                kept = {k: v[live] for k, v in kept.items()} if live.any() else None
        state = {**state, "forest": forest, "kept": kept, "gathered": gathered,
                 "histogram_passes": state.get("histogram_passes", 0) + 1}
        if level is not None:
            return {**state, "level": level}, False
        state = self._next_level({**state, "siblings": kept, "kept": None})
        if state["phase"] == "grow":
            return state, False
        return self._after_growth(state)

    def _after_growth(self, state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        state = self._finish_growth(state)
        if state["phase"] != "grown":  # more passes: the next round, boosting's leaves
            return state, False
        done = self.params.validation_fraction == 0
        return {**state, "phase": "done" if done else "validate"}, done

    def _finish_growth(self, state: dict[str, Any]) -> dict[str, Any]:
        """No node is pending: the fit is grown (boosting: start the next round)."""
        return self._cut(state, 0)

    def _growing_from(self, state: dict[str, Any]) -> int:
        """The first node of the trees being grown (boosting: the round's)."""
        return 0

    def _cut(self, state: dict[str, Any], first: int) -> dict[str, Any]:
        """``grow_policy: lossguide``: the trees of the nodes from ``first`` on cut to the
        splits best-first growth makes (``best_first``); ``cuts`` counts the cuts."""
        if self.params.grow_policy != "lossguide":
            return state
        forest = best_first(state["forest"], first, int(self.params.max_leaves))
        return {**state, "forest": forest, "cuts": state.get("cuts", 0) + 1}

    def _min_gain_fraction(self, state: dict[str, Any]) -> float:
        """The gain a split needs, as a fraction of its tree's root weight."""
        return 0.0

    def _min_gain(self, state: dict[str, Any]) -> float:
        """The gain a split needs, in the criterion's units (boosting's loss decrease)."""
        return 0.0

    def _empty_value(self, state: dict[str, Any]) -> np.ndarray:
        return state["prior"] if state["classify"] else np.array([state["mean"]])

    @abstractmethod
    def _criterion(self, state: dict[str, Any]) -> Criterion: ...

    @abstractmethod
    def _start(self, state: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def _model(self, state: dict[str, Any]) -> TreeModelFitted: ...

    def fitted(self, state: dict[str, Any]) -> TreeModelFitted:
        if state["phase"] not in ("validate", "done"):
            raise RuntimeError(f"{self.name}: fitted() before the trees are grown")
        return self._model(state)

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        """The level the trees grow, of at most ``max_depth``, with the fit ETA of
        ``Level.done`` (trees whose branches stop sooner, where no split pays, end it
        sooner)."""
        if state.get("phase") != "grow" or state.get("level") is None:
            return None
        return FitProgress(Level.where(state["level"], self.params.max_depth),
                           Level.done(state["level"], self.params.max_depth))

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if "forest" not in state:
            return {}
        out: dict[str, Any] = {**forest_stats(state["forest"]),
                               "training_rows": state["rows"],
                               "validation_rows": state["heldout"],
                               "histogram_passes": state.get("histogram_passes", 0)}
        if state["classify"]:
            out["classes"] = len(state["classes"])
        weights = importances(state["forest"], len(state["features"]))
        out["feature_importances"] = {f: float(v) for f, v in
                                      zip(state["features"], weights, strict=True)}
        if "validation" in state:
            out["validation"] = state["validation"]
        note = self._regression_of_classes_note(state)
        if note:
            out["note"] = note
        return out

    def _regression_of_classes_note(self, state: dict[str, Any]) -> str | None:
        """A floating label of only 0 and 1, its task not given: a regression, where a
        scikit-learn user (whose RandomForestClassifier takes 0.0 and 1.0 as classes) or a
        label read as double from CSV meant a classifier."""
        p = self.params
        if (state["classify"] or not state.get("label_zero_one") or p.task is not None
                or getattr(p, "loss", None) is not None):
            return None
        return (f"the label '{p.label}' is {state['label_type']} of only 0 and 1: "
                f"{self.name} fitted a regression, as for any floating label (its prediction "
                "is a number, evaluate gives rmse); for a classifier of the two classes, set "
                "`task: classification`, or cast the label to int64 (op: cast)")


def _categorical(state: dict[str, Any], n_nodes: int) -> np.ndarray | None:
    """Per node and feature whether the feature is categorical (None: none is)."""
    if not state["categories"]:
        return None
    flags = np.array([f in state["categories"] for f in state["features"]])
    return np.broadcast_to(flags, (n_nodes, len(flags)))


def _concat_batch(batch: list[tuple[Any, Any, Any]], xp: Any) -> tuple[Any, Any, Any]:
    """A pass's batch of trees' (rows, slots, extra) as three arrays (extra: None when
    the trees have none)."""
    rows, slots, extra = zip(*batch, strict=True)
    return (xp.concat(list(rows)), xp.concat(list(slots)),
            None if extra[0] is None else xp.concat(list(extra)))


def _float_labels(labels: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(labels.type):
        return np.asarray(labels.to_numpy(zero_copy_only=False), dtype=np.float64)
    return labels.to_numpy(zero_copy_only=False).astype(np.float64)


def _combine_summary(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": "summary", "rows": a["rows"] + b["rows"],
           "heldout": a["heldout"] + b["heldout"]}
    if "classes" in a:
        out["classes"], out["class_weights"] = merge_class_weights(
            (a["classes"], a["class_weights"]), (b["classes"], b["class_weights"]))
    else:
        out["sums"] = a["sums"] + b["sums"]
        out["label_min"] = min(a["label_min"], b["label_min"])
        out["label_max"] = max(a["label_max"], b["label_max"])
        out["label_zero_one"] = a["label_zero_one"] and b["label_zero_one"]
    (out["sample_keys"], out["sample"]), places = _smallest_keys(
        a["sample_keys"], a["sample"], b["sample_keys"], b["sample"], BIN_SAMPLE_ROWS)
    out["sample_values"] = {name: _merged(values, b["sample_values"][name], places)
                            for name, values in a["sample_values"].items()}
    return out


def _smallest_keys(keys_a: np.ndarray, rows_a: np.ndarray, keys_b: np.ndarray,
                   rows_b: np.ndarray, limit: int
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
    """The ``limit`` rows of smallest key of two samples, each sorted by key: a merge
    (a's rows before b's on equal keys, as a stable sort of a then b), written straight
    into the result with no concatenation of the rows (megabytes per partition); and
    where each sample's rows went (kept a, their places, kept b, their places)."""
    at_a = np.arange(len(keys_a)) + np.searchsorted(keys_b, keys_a, side="left")
    at_b = np.arange(len(keys_b)) + np.searchsorted(keys_a, keys_b, side="right")
    keep_a, keep_b = at_a < limit, at_b < limit
    size = int(keep_a.sum() + keep_b.sum())
    places = (keep_a, at_a[keep_a], keep_b, at_b[keep_b])
    keys = np.empty(size, dtype=np.result_type(keys_a, keys_b))
    keys[at_a[keep_a]], keys[at_b[keep_b]] = keys_a[keep_a], keys_b[keep_b]
    if issparse(rows_a):  # a sparse column's sample (``sample_matrix``)
        return (keys, merged_rows(rows_a, rows_b, places)), places
    rows = np.empty((size, *rows_a.shape[1:]), dtype=np.result_type(rows_a, rows_b))
    rows[at_a[keep_a]], rows[at_b[keep_b]] = rows_a[keep_a], rows_b[keep_b]
    return (keys, rows), places


def _merged(a: pa.Array, b: pa.Array, places: tuple[np.ndarray, ...]) -> pa.Array:
    """Two samples' values of a column merged as ``_smallest_keys`` merged their rows."""
    keep_a, at_a, keep_b, at_b = places
    both = pa.concat_arrays([a.filter(pa.array(keep_a)), b.filter(pa.array(keep_b))])
    return both.take(pa.array(np.argsort(np.concatenate([at_a, at_b]))))


def prepare_rows(tables: list[pa.Table], state: dict[str, Any], params: SupervisedParams,
                 xp: Any, row_hash: bool = False) -> list[dict[str, Any]]:
    """Each table's rows binned (feature-major uint8 codes on ``xp``) with label, weight
    and (``row_hash``) the uint64 row hash, from one host-to-device copy for all tables.

    The copy is one float64 host buffer, a column per row (the tables' rows one after
    another): the row's features, label (class position or value), weight and the two
    32-bit halves of its hash (a uint64 is not exact in float64; its halves are). The
    device splits it and keeps the codes and copies of the label, weight and hash only.
    A sparse column on NumPy (with SciPy) stays sparse: the rows' codes are
    ``SparseCodes``, the buffer holds the rest; elsewhere its positions are made dense in
    the buffer (within the memory share).
    """
    features, classify = state["features"], state["classify"]
    codes_apart = (is_numpy(xp) and bool(tables) and has_sparse(tables[0].schema, features)
                   and can_read())
    f = 0 if codes_apart else len(features)
    starts = np.cumsum([0] + [t.num_rows for t in tables]).tolist()
    host = host_buffer((f + (4 if row_hash else 2), starts[-1]), xp, order="C",
                       dtype=np.float64)
    for table, a, b in zip(tables, starts[:-1], starts[1:], strict=True):
        block = host[:, a:b]
        if not codes_apart:
            fill_features(block, table, features, state["categories"])
        labels = label_column(table, params.label)
        if classify:
            index = encode_classes(labels, state["classes"],
                                   pa.type_for_alias(state["label_type"]))
            block[f] = index
            block[f + 1] = by_class(row_weights(table, params.weight), index,
                                    state.get("class_factor"))
        else:
            block[f] = _float_labels(labels)
            block[f + 1] = row_weights(table, params.weight)
        if row_hash:
            hashes = model_hashes(table, params, features)
            block[f + 2] = hashes >> np.uint64(32)
            block[f + 3] = hashes & np.uint64(0xFFFFFFFF)
    matrix = to_xp(host, xp)
    out = []
    for table, a, b in zip(tables, starts[:-1], starts[1:], strict=True):
        block = matrix[:, a:b]
        if codes_apart:
            codes = sparse_codes(table, features, state["edges"], state["missing"],
                                 lambda name, t=table: feature_values(t, name,
                                                                      state["categories"]))
        else:
            codes = bin_codes(block, state["edges"], state["missing"], xp)
        prep = {"n": b - a, "codes": codes,
                "y": xp.astype(block[f, :], xp.int64 if classify else xp.float64),
                "w": xp.astype(block[f + 1, :], xp.float64), "hash": None}
        if isinstance(prep["codes"], np.ndarray):  # for ``histograms``' row gathers
            prep["by_row"] = np.ascontiguousarray(prep["codes"].reshape(f, -1).T)
        if row_hash:
            high, low = (xp.astype(block[f + k, :], xp.uint64) for k in (2, 3))
            prep["hash"] = (high << _u64(32, xp)) | low
        out.append(prep)
    return out


# --------------------------------------------------------------------------- fitted model


class TreeModelFitted(FittedModel):
    """Trees as arrays; scores are the mean (forest) or the sum plus a base (boosting) of
    the trees' leaf values, mapped by ``link`` (identity, exp, sigmoid or softmax)."""

    ARRAYS = ("feature", "threshold", "left", "right", "default_left", "value", "cover",
              "gain", "tree_start", "importances", "base")

    def __init__(self, features: list[str], classes: list[Any] | None,
                 label_type: pa.DataType | None, *, combine: str, link: str, depth: int,
                 arrays: dict[str, np.ndarray],
                 categories: dict[str, pa.Array] | None = None,
                 quantile: float | None = None, deviance: dict[str, Any] | None = None,
                 ranking: dict[str, Any] | None = None):
        super().__init__(features, classes, label_type)
        self.combine, self.link, self.depth = combine, link, int(depth)
        self.quantile = quantile  # the quantile a model of loss quantile predicts
        # the deviance a model of a log link (poisson, gamma, tweedie) minimises:
        # {"metric": "tweedie_deviance", "tweedie_power": 1.5}
        self.deviance = None if deviance is None else dict(deviance)
        # a ranking model's queries and NDCG cut-off: {"group": "query", "ndcg_at": 10}
        self.ranking = None if ranking is None else dict(ranking)
        self.categories = dict(categories or {})
        self.nodes = {k: np.asarray(arrays[k]) for k in self.ARRAYS}
        # a categorical split's row of category_left (-1: none) and the codes each such
        # split sends left (models saved before categorical features have neither)
        n_nodes = len(self.nodes["feature"])
        self.nodes["category"] = np.asarray(arrays.get("category",
                                                       np.full(n_nodes, -1, np.int32)))
        self.nodes["category_left"] = np.asarray(arrays.get("category_left",
                                                            np.zeros((0, 0), bool)))
        feature = self.nodes["feature"].astype(np.int64)
        own = np.arange(len(feature))
        leaf = feature < 0
        value = self.nodes["value"]
        # what scoring walks, as the rows of one float64 array (one copy to a device; node
        # ids and flags are exact): feature, threshold, left, right, default_left, then
        # the value columns. Leaves point at themselves, so every row can take the same
        # number of steps
        self._walk = np.empty((5 + value.shape[1], len(feature)))
        self._walk[0] = np.where(leaf, 0, feature)
        self._walk[1] = self.nodes["threshold"]
        self._walk[2] = np.where(leaf, own, self.nodes["left"])
        self._walk[3] = np.where(leaf, own, self.nodes["right"])
        self._walk[4] = self.nodes["default_left"]
        self._walk[5:] = value.T

    @property
    def feature_importances(self) -> dict[str, float]:
        return {f: float(v) for f, v in zip(self.features, self.nodes["importances"],
                                            strict=True)}

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        """Scores of a (rows, features) matrix: a categorical feature's column holds its
        codes (``feature_values``)."""
        return self._scores(xp.reshape(xp.permute_dims(X, (1, 0)), (-1,)), X.shape[0], xp)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_features(schema, [f for f in self.features if f not in self.categories], fitted=True)
        for name, kept in self.categories.items():
            require_columns(schema, [name], "feature column")
            error = scoring_type_error(schema, name, kept.type)
            if error is not None:
                raise error
        return with_predictions(schema, self.classes, self.label_type)

    @functools.cached_property
    def _sets(self) -> dict[str, np.ndarray] | None:
        """The categorical splits (``leaf_sums``' ``sets``; None: the model has none)."""
        masks = self.nodes["category_left"]
        if len(masks) == 0:
            return None
        return {"category": self.nodes["category"], "masks": masks,
                "sizes": np.array([len(self.categories.get(f, ())) for f in self.features])}

    @functools.cached_property
    def _coded(self) -> dict[str, np.ndarray] | None:
        """The walk on codes (``coded_walk``), made when the model first scores."""
        return coded_walk(self._walk, len(self.features), self._sets)

    @functools.cached_property
    def _split_features(self) -> np.ndarray:
        """The features the trees split on (``split_features``): all that scoring reads
        of a sparse column's rows."""
        return split_features(self.nodes["feature"])

    @functools.cached_property
    def _projected(self) -> tuple[np.ndarray, dict[str, np.ndarray] | None,
                                  dict[str, np.ndarray] | None]:
        """The walk, coded walk and sets of the model on ``_split_features`` only (a
        node's feature its place among them): the same decisions on fewer columns."""
        used = self._split_features
        walk = projected_walk(self._walk, used)
        sets = self._sets
        if sets is not None:
            sets = {**sets, "sizes": sets["sizes"][used]}
        return walk, coded_walk(walk, len(used), sets), sets

    def _scores(self, flat: Any, n: int, xp: Any, projected: bool = False) -> Any:
        """``predict_matrix`` of the feature-major flattened matrix ``flat`` (of
        ``_split_features`` only, ``projected``)."""
        walk, coded, sets = (self._projected if projected
                             else (self._walk, self._coded, self._sets))
        sums = leaf_sums(flat, n, walk, self.nodes["tree_start"][:-1], self.depth, xp,
                         coded, sets)
        n_trees = len(self.nodes["tree_start"]) - 1
        if self.combine == "mean":
            scores = sums / max(n_trees, 1)
        else:
            scores = sums + to_xp(self.nodes["base"], xp)
        if self.link == "sigmoid":
            p = sigmoid(scores[:, 0], xp)
            return xp.stack([1.0 - p, p], axis=1)
        if self.link == "softmax":
            return softmax(scores, xp)
        if self.link == "exp":  # Poisson and gamma losses
            return xp.exp(scores[:, 0])
        if self.is_classifier:
            return scores
        return scores[:, 0]

    def outputs(self, part: pa.Table, xp: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """As ``FittedModel.outputs``, with missing and infinite feature values allowed."""
        require_columns(part.schema, columns_of(part.schema, self.features), "feature column")
        if has_sparse(part.schema, self.features):  # only the columns the trees split on
            flat = feature_columns(part, self.features, xp, self.categories,
                                   self._split_features)
            return self.outputs_of(self._scores(to_xp(flat.reshape(-1), xp), part.num_rows,
                                                xp, projected=True))
        flat = to_xp(feature_columns(part, self.features, xp, self.categories).reshape(-1), xp)
        return self.outputs_of(self._scores(flat, part.num_rows, xp))

    @functools.cached_property
    def _paths(self) -> Paths:
        """The leaves' paths for ``explain``: the raw-score outputs explained (the
        positive class's for a binary forest, as ``probability``), scaled as combined."""
        width = self.nodes["value"].shape[1]
        outputs = np.arange(width) if self.explains_classes or width == 1 else np.array([1])
        if self.combine == "mean":
            scale, base = 1.0 / max(len(self.nodes["tree_start"]) - 1, 1), np.zeros(len(outputs))
        else:
            scale, base = 1.0, np.asarray(self.nodes["base"], dtype=np.float64)[outputs]
        return Paths(self.nodes, len(self.features), outputs, scale, base)

    def explains(self) -> str | None:
        return None

    def contributions(self, part: pa.Table, xp: Any
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """TreeSHAP (``operators/models/explain.py``) from the same copy of the features
        to the device as the scores; a sparse column's positions made dense, each row's
        contributions are (within the memory share)."""
        made = [(column, stop - start) for column, start, stop
                in groups(part.schema, self.features) if column is not None]
        if made:
            require_dense_room(part.num_rows, len(self.features) * self.nodes["value"].shape[1],
                               made)
        flat = to_xp(feature_columns(part, self.features, xp, self.categories).reshape(-1), xp)
        n = part.num_rows
        predicted, proba = self.outputs_of(self._scores(flat, n, xp))
        paths = self._paths
        return predicted, proba, to_numpy(contributions(flat, n, paths, xp)), paths.base

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.nodes)

    def meta(self) -> dict[str, Any]:
        out = {**super().meta(), "combine": self.combine, "link": self.link,
               "depth": self.depth}
        if self.categories:
            out["categories"] = categories_meta(self.categories)
        if self.quantile is not None:
            out["quantile"] = self.quantile
        if self.deviance is not None:
            out["deviance"] = self.deviance
        if self.ranking is not None:
            out["ranking"] = self.ranking
        return out

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TreeModelFitted:
        return cls(**cls.meta_args(meta), combine=meta["combine"], link=meta["link"],
                   depth=meta["depth"], arrays=arrays,
                   categories=categories_from_meta(meta.get("categories")),
                   quantile=meta.get("quantile"), deviance=meta.get("deviance"),
                   ranking=meta.get("ranking"))


CODED_ENTRIES = 1 << 24
"""Scoring walks a model's codes (``coded_walk``) while its child table has at most
this many entries (4 bytes each)."""


def coded_walk(walk: np.ndarray, n_features: int, sets: dict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray] | None:
    """What scoring needs to walk a model on codes instead of values (None where the
    table would pass ``CODED_ENTRIES``): per feature, the sorted distinct thresholds its
    nodes split at (``edges``); a row's code of a value is how many of them are below it
    (``bin_codes``: ``x <= t`` exactly when its code is at most ``t``'s position), NaN
    the last code, ``width - 1``; and per (node, code) the node a row goes
    to (``child``; a leaf keeps its rows), so that a step is two lookups. The same
    decisions as the thresholds', so the same scores, bit for bit. A categorical
    feature's values are its codes already (``sets``: ``leaf_sums``'), and its code is
    the value; a categorical split's row of the table its set's."""
    feature, threshold = walk[0].astype(np.int64), walk[1]
    left, right = walk[2].astype(np.int64), walk[3].astype(np.int64)
    split = (left != np.arange(walk.shape[1])) | (right != np.arange(walk.shape[1]))
    edges, position = [], np.zeros(walk.shape[1], np.int64)
    category = masks = None
    if sets is not None:
        category, masks = np.where(split, sets["category"], -1), sets["masks"]
    for j in range(n_features):
        on = split & (feature == j)
        if sets is not None and sets["sizes"][j]:
            edges.append(np.arange(sets["sizes"][j] - 1) + 0.5)
            continue
        edges.append(np.unique(threshold[on]))
        position[on] = np.searchsorted(edges[-1], threshold[on])
    width = max((len(e) for e in edges), default=0) + 2
    if walk.shape[1] * width > CODED_ENTRIES or width > 2**15:
        return None
    child = child_table(width, position, walk[4] != 0, left, right, category,
                        masks).astype(np.int32)
    return {"edges": edges, "child": child.reshape(-1), "feature": feature.astype(np.int32),
            "width": np.array(width)}


def split_features(feature: np.ndarray) -> np.ndarray:
    """The features nodes split on (``feature``: per node, -1 at a leaf), sorted; feature
    0 where none is (a table of one column to walk)."""
    used = np.unique(feature[feature >= 0]).astype(np.int64)
    return used if len(used) else np.zeros(1, np.int64)


def projected_walk(walk: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``leaf_sums``' ``walk`` on the features ``used`` only (``split_features``): each
    node's feature its place among them (a leaf's, never read, a valid one)."""
    walk = walk.copy()
    walk[0] = np.searchsorted(used, walk[0].astype(np.int64))
    return walk


def leaf_sums(flat: Any, n: int, walk: np.ndarray, roots: np.ndarray, depth: int,
              xp: Any, coded: dict[str, np.ndarray] | None = None,
              sets: dict[str, np.ndarray] | None = None) -> Any:
    """Per row, the sum over trees of the value of the leaf the row reaches: ``depth``
    steps of gathers for every (row, tree) pair, a block of rows at a time. ``walk``:
    ``TreeModelFitted``'s rows of node arrays; ``coded`` (``coded_walk``): walk on the
    rows' codes, two lookups a step instead of comparing values; ``sets``: the
    categorical splits (per node its row of ``masks``, -1 for none; per feature its
    number of categories, 0 for a number), whose features' values are codes."""
    width = walk.shape[0] - 5
    n_trees = len(roots)
    if n == 0 or n_trees == 0:
        return xp.zeros((n, width), dtype=xp.float64)
    if coded is not None:
        step, ids = _coded_step(flat, n, coded, xp)
    else:
        step, ids = _compared_step(flat, n, walk, xp, sets), np.int64
    value = xp.permute_dims(to_xp(walk[5:, :], xp), (1, 0))
    root = to_xp(roots.astype(ids), xp)
    block = max(1, SCORING_BLOCK // n_trees)
    out = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = xp.arange(start, stop, dtype=root.dtype)
        size = (stop - start) * n_trees
        row = xp.reshape(xp.broadcast_to(rows[:, None], (stop - start, n_trees)), (size,))
        node = xp.reshape(xp.broadcast_to(root[None, :], (stop - start, n_trees)), (size,))
        for _ in range(depth):
            node = step(node, row)
        leaf = xp.take(value, node, axis=0)
        out.append(xp.sum(xp.reshape(leaf, (stop - start, n_trees, width)), axis=1))
    return out[0] if len(out) == 1 else xp.concat(out, axis=0)


def _compared_step(flat: Any, n: int, walk: np.ndarray, xp: Any,
                   sets: dict[str, np.ndarray] | None = None) -> Callable[[Any, Any], Any]:
    """One step down for ``leaf_sums``, comparing each row's value with its node's
    threshold, or looking its code up in a categorical split's set (NaN takes the
    node's default side)."""
    packed = to_xp(walk, xp)
    feature = xp.astype(packed[0, :], xp.int64)
    threshold, default_left = packed[1, :], packed[4, :] != 0
    left, right = xp.astype(packed[2, :], xp.int64), xp.astype(packed[3, :], xp.int64)
    arrays = None if sets is None else {
        "category": to_xp(sets["category"].astype(np.int64), xp),
        **_masks_on(sets["masks"], xp)}

    def step(node: Any, row: Any) -> Any:
        x = xp.take(flat, xp.take(feature, node) * n + row)
        missing = xp.isnan(x)
        go_left = x <= xp.take(threshold, node)
        if arrays is not None:
            category = xp.take(arrays["category"], node)
            # only a categorical split's values are codes (a number may not fit int64)
            code = xp.astype(xp.where(missing | (category < 0), xp.zeros_like(x), x), xp.int64)
            go_left = xp.where(category >= 0, in_set(category, code, arrays, xp), go_left)
        go_left = xp.where(missing, xp.take(default_left, node), go_left)
        return xp.where(go_left, xp.take(left, node), xp.take(right, node))

    return step


def _coded_step(flat: Any, n: int, coded: dict[str, np.ndarray], xp: Any
                ) -> tuple[Callable[[Any, Any], Any], type]:
    """One step down for ``leaf_sums`` on the rows' codes (``bin_codes`` of the
    values, once): the code of the node's feature, then the child table; and the
    integer type of node and row ids (int32 where every index fits)."""
    codes = bin_codes(xp.reshape(flat, (len(coded["edges"]), n)), coded["edges"],
                      int(coded["width"]) - 1, xp, xp.int16)
    width = int(coded["width"])
    child = to_xp(coded["child"], xp)  # int32: nodes x codes is under CODED_ENTRIES
    ids = np.int64 if n * max(1, len(coded["edges"])) >= 2**31 else np.int32
    # where a node's feature starts in the codes
    at = to_xp((coded["feature"].astype(np.int64) * n).astype(ids), xp)

    def step(node: Any, row: Any) -> Any:
        code = xp.take(codes, xp.take(at, node) + row)
        return xp.take(child, node * width + xp.astype(code, xp.int32))

    return step, ids


def model_arrays(forest: dict[str, np.ndarray], n_features: int,
                 base: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The artifact arrays of a grown forest (each tree's nodes contiguous, root first)
    and its depth."""
    order = np.lexsort((np.arange(len(forest["tree"])), forest["tree"]))
    new_id = np.empty(len(order), dtype=np.int64)
    new_id[order] = np.arange(len(order))
    split = forest["status"][order] == SPLIT

    def child(ids: np.ndarray) -> np.ndarray:
        return np.where(split, new_id[np.maximum(ids, 0)], -1).astype(np.int32)

    counts = np.bincount(forest["tree"], minlength=len(forest["roots"]))
    arrays = {
        "feature": np.where(split, forest["feature"][order], -1).astype(np.int32),
        "threshold": np.where(split, forest["threshold"][order], np.nan),
        "left": child(forest["left"][order]),
        "right": child(forest["right"][order]),
        "default_left": forest["missing_left"][order] & split,
        "value": forest["value"][order],
        "cover": forest["weight"][order],
        "gain": np.where(split, forest["gain"][order], 0.0),
        "tree_start": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "importances": importances(forest, n_features),
        "base": np.zeros(forest["value"].shape[1]) if base is None else np.asarray(base),
    }
    # the categorical splits' sets, one row each in the nodes' order
    category = np.where(split, forest["category"][order], -1)
    on = category >= 0
    arrays["category"] = np.full(len(order), -1, dtype=np.int32)
    arrays["category"][on] = np.arange(int(on.sum()))
    arrays["category_left"] = forest["masks"][category[on]]
    return arrays, int(forest["depth"].max(initial=0))

