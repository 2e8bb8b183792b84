"""Per-feature contributions of tree models: exact path-dependent TreeSHAP, on ``xp``.

What a row's contributions are (Lundberg et al.'s "path-dependent" TreeSHAP, XGBoost's
``pred_contribs``): the Shapley values of the game whose value for a set S of features
is the model's expected raw score when the features in S are the row's and the others
are unknown, an unknown feature's split sending the row down both sides weighted by the
training cover of each side. Per row they add up, with the model's expected score
(``base``, the same for every row), to the row's raw score (the margin: the sum of the
trees, or their mean for a forest).

How it is computed (vectorised over rows and leaves, no recursion): the tree game is the
sum over leaves of each leaf's game. Along a leaf's path, the splits on feature j send a
row the leaf's way or not (``o_j``: 1 when the row meets every condition on j, by the
thresholds and the default side of missing values) and carry the share ``z_j`` of the
training cover (the product of child/parent covers of those splits). The leaf's game is
``v(S) = value * prod_{j in S} o_j * prod_{j not in S} z_j``, whose Shapley values are

    phi_i = value * (o_i - z_i) * sum_k w_k q_k(i),   w_k = k! (D-1-k)! / D!

where ``q_k(i)`` are the coefficients of ``prod_{j != i} (z_j + o_j t)`` (the weight of
the sets of size k), from the product over all the path's features divided by the
factor of ``i`` (top-down when ``o_i`` is 1, which only multiplies by ``z`` <= 1:
stable). Paths are padded to the longest with features that are always met and carry
all the cover (``o = z = 1``): null players, which change no one's value.

A row's ``o`` on a leaf's path is a bit pattern, so where the tables fit
(``TABLE_ENTRIES``) the factors of every pattern of every leaf are computed once per
model and a row only looks its patterns up: ``leaves x depth`` comparisons and one
gather per (row, leaf), against ``depth^2`` products for the polynomials. Deep forests
compute the polynomials per row. Each (leaf, feature) factor times the leaf's value
goes to its feature by sums over the features' runs (a cumulative sum over the
(leaf, feature) pairs sorted by feature, differenced at the run boundaries).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from operators.arrays import to_xp
from operators.models.categories import in_set

TABLE_ENTRIES = 1 << 23
"""A model's factors are tabulated per (leaf, bit pattern, path position) while there
are at most this many (8 bytes each); deeper forests compute them per row."""
SUM_ENTRIES = 1 << 22
"""Entries (8 bytes each) of one matrix that sums the pairs' factors per feature."""
BLOCK_ENTRIES = 1 << 21
"""Contributions are computed for at most about this many (row, leaf, path position)
triples at a time."""


class Paths:
    """A tree model's leaves with their paths, as arrays (host NumPy), for ``contributions``.

    ``feature``, ``lower``, ``upper``, ``missing_ok``, ``share``: (leaves, depth) per
    path position, the feature, the interval ``lower < x <= upper`` a row's value must be
    in to take the leaf's way, whether a missing value does, and the cover share ``z``
    (padding: feature 0, (-inf, inf], missing ok, share 1); ``value``: (leaves, outputs)
    each leaf's value, already scaled as the model combines its trees; ``base``: the
    expected raw score, per output. A categorical feature's splits on the path
    (``nodes``' ``category``) leave it a set of codes instead: ``set_id`` (leaves,
    depth) its row of ``sets`` (-1 for none), the codes that take the leaf's way.
    """

    def __init__(self, nodes: dict[str, np.ndarray], n_features: int, outputs: np.ndarray,
                 scale: float, base: np.ndarray):
        feature = nodes["feature"].astype(np.int64)
        left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
        cover = np.asarray(nodes["cover"], dtype=np.float64)
        split = np.flatnonzero(feature >= 0)
        parent = np.full(len(feature), -1, dtype=np.int64)
        parent[left[split]] = split
        parent[right[split]] = split
        leaves = np.flatnonzero(feature < 0)
        category = np.asarray(nodes.get("category", np.full(len(feature), -1)), np.int64)
        # walk every leaf up to its root at once, one edge per leaf per step
        at, edges = leaves.copy(), []
        while True:
            active = np.flatnonzero(parent[at] >= 0)
            if len(active) == 0:
                break
            child, up = at[active], parent[at[active]]
            went_left = left[up] == child
            share = np.divide(cover[child], cover[up], out=np.zeros(len(up)),
                              where=cover[up] > 0)
            default_left = nodes["default_left"][up].astype(bool)
            edges.append((active, feature[up], nodes["threshold"][up], went_left,
                          default_left == went_left, share, category[up]))
            at[active] = up
        columns = list(zip(*edges, strict=True)) if edges else [[np.zeros(0)]] * 7
        leaf_of, feat, threshold, went_left, missing_ok, share, on_set = (
            np.concatenate(c) for c in columns)
        leaf_of, feat = leaf_of.astype(np.int64), feat.astype(np.int64)
        went_left, missing_ok = went_left.astype(bool), missing_ok.astype(bool)
        on_set = on_set.astype(np.int64)
        by_value = on_set < 0
        # one entry per (leaf, feature): a path may split on a feature more than once
        keys, group = np.unique(leaf_of * max(n_features, 1) + feat, return_inverse=True)
        g = len(keys)
        lower, upper = np.full(g, -np.inf), np.full(g, np.inf)
        right, left = ~went_left & by_value, went_left & by_value
        np.maximum.at(lower, group[right], threshold[right])
        np.minimum.at(upper, group[left], threshold[left])
        ok, z = np.ones(g, dtype=bool), np.ones(g)
        np.logical_and.at(ok, group, missing_ok)
        np.multiply.at(z, group, share)
        leaf_at, feat_at = keys // max(n_features, 1), keys % max(n_features, 1)
        position = np.arange(g) - np.searchsorted(leaf_at, leaf_at, side="left")
        depth = int(position.max(initial=-1)) + 1 or 1
        shape = (len(leaves), depth)
        self.feature = np.zeros(shape, dtype=np.int64)
        self.lower, self.upper = np.full(shape, -np.inf), np.full(shape, np.inf)
        self.missing_ok, self.share = np.ones(shape, dtype=bool), np.ones(shape)
        for name, values in (("feature", feat_at), ("lower", lower), ("upper", upper),
                             ("missing_ok", ok), ("share", z)):
            getattr(self, name)[leaf_at, position] = values
        self.sets: np.ndarray | None = None
        self.set_id = np.full(shape, -1, dtype=np.int64)
        if not by_value.all():  # the codes that meet every condition of the feature's
            masks = np.asarray(nodes["category_left"], dtype=bool)
            met = masks[on_set[~by_value]]
            met[~went_left[~by_value]] ^= True
            codes = np.ones((g, masks.shape[1]), dtype=bool)
            np.logical_and.at(codes, group[~by_value], met)
            with_set = np.unique(group[~by_value])
            self.sets = codes[with_set]
            set_of = np.full(g, -1, dtype=np.int64)
            set_of[with_set] = np.arange(len(with_set))
            self.set_id[leaf_at, position] = set_of
        self.real = np.zeros(shape, dtype=bool)
        self.real[leaf_at, position] = True
        self.depth, self.n_features = depth, n_features
        self.value = np.asarray(nodes["value"], dtype=np.float64)[leaves][:, outputs] * scale
        # v(no feature known): each leaf's value times the cover share of its path
        self.base = self.value.T @ np.prod(self.share, axis=1) + base
        # the (leaf, position) pairs of real features, sorted by feature: the runs
        # the contributions are summed over
        order = np.lexsort((leaf_at, feat_at))
        self.pair_leaf, self.pair_position = leaf_at[order], position[order]
        self.sums = _feature_sums(feat_at[order], self.value[self.pair_leaf], n_features)
        self.tables = self._tables() if (
            len(leaves) * (2 ** depth) * depth <= TABLE_ENTRIES) else None

    def _tables(self) -> np.ndarray:
        """Per (leaf, bit pattern of ``o``), the path positions' factors: (leaves *
        2^depth, depth)."""
        d, n_leaves = self.depth, len(self.value)
        patterns = np.arange(2 ** d)
        met = ((patterns[None, :] >> np.arange(d)[:, None]) & 1).astype(np.float64)
        met = np.broadcast_to(met[:, None, :], (d, n_leaves, 2 ** d))
        factors = shapley_factors(met, self.share.T[:, :, None], np)  # (d, leaves, 2^d)
        return np.ascontiguousarray(np.transpose(factors, (1, 2, 0)).reshape(-1, d))


def _feature_sums(pair_feature: np.ndarray, pair_value: np.ndarray, n_features: int
                  ) -> list[tuple[int, int, int, int, np.ndarray]]:
    """How the pairs' factors (sorted by feature) become each feature's contributions:
    products with matrices of the pairs' values, in groups of consecutive features and
    their run of pairs (``(first feature, end, first pair, end, matrix)``, the matrix
    (features * outputs, pairs) at most ``SUM_ENTRIES``), as BLAS does them fast."""
    k = pair_value.shape[1]
    ends = np.cumsum(np.bincount(pair_feature, minlength=n_features))
    starts = ends - np.bincount(pair_feature, minlength=n_features)
    groups, first = [], 0
    while first < n_features:
        end = first + 1
        while end < n_features and (end + 1 - first) * k * (ends[end] - starts[first]) <= (
                SUM_ENTRIES):
            end += 1
        c0, c1 = int(starts[first]), int(ends[end - 1])
        matrix = np.zeros((end - first, k, c1 - c0))
        local = pair_feature[c0:c1] - first
        matrix[local, :, np.arange(c1 - c0)] = pair_value[c0:c1]
        groups.append((first, end, c0, c1, matrix.reshape((end - first) * k, c1 - c0)))
        first = end
    return groups


def shapley_factors(met: Any, share: Any, xp: Any) -> Any:
    """``(o_i - z_i) * sum_k w_k q_k(i)`` per path position i (axis 0) of the leaves'
    product games with ``met`` = o and ``share`` = z (broadcast against each other)."""
    d = met.shape[0]
    one = met[0, ...] * 0.0 + 1.0  # one position's shape
    share = share * one
    # coefficients of prod_j (z_j + o_j t), lowest degree first
    poly = [one] + [one * 0.0 for _ in range(d)]
    for j in range(d):
        z, o = share[j, ...], met[j, ...]
        for k in range(j + 1, 0, -1):
            poly[k] = z * poly[k] + o * poly[k - 1]
        poly[0] = z * poly[0]
    weights = [math.factorial(k) * math.factorial(d - 1 - k) / math.factorial(d)
               for k in range(d)]
    out = []
    for i in range(d):
        z, o = share[i, ...], met[i, ...]
        # divided by (z + t) where o is 1: top down
        q = poly[d]
        total = weights[d - 1] * q
        for k in range(d - 1, 0, -1):
            q = poly[k] - z * q
            total = total + weights[k - 1] * q
        # divided by z where o is 0 (z = 0 there makes the factor 0: o - z = 0)
        safe = xp.where(z > 0, z, one)
        divided = sum(weights[k] * poly[k] for k in range(d)) / safe
        out.append((o - z) * xp.where(o > 0, total, divided))
    return xp.stack(out, axis=0)


def contributions(flat: Any, n: int, paths: Paths, xp: Any) -> Any:
    """Per row (of the feature-major flattened (features, rows) matrix ``flat``) and
    feature, each output's contribution: an (n, features, outputs) array of ``xp``.

    Per block of rows: the row's value of each (path position, leaf)'s feature,
    whether it takes the leaf's way there (``o``), then each (leaf, feature) pair's
    factor (looked up by the leaf's bit pattern, or from the polynomials), times the
    leaf's values, summed per feature."""
    d, n_leaves, k = paths.depth, len(paths.value), paths.value.shape[1]
    f, pairs = paths.n_features, len(paths.pair_leaf)
    if n == 0 or pairs == 0:
        return xp.zeros((n, f, k), dtype=xp.float64)
    x = xp.reshape(flat, (f, n))
    # position-major: row j * leaves + l is leaf l's position j
    pick = to_xp(paths.feature.T.reshape(-1), xp)
    lower = to_xp(paths.lower.T.reshape(-1, 1), xp)
    upper = to_xp(paths.upper.T.reshape(-1, 1), xp)
    missing_ok = to_xp(paths.missing_ok.T.reshape(-1, 1), xp)
    sums = [(a, b, c0, c1, to_xp(matrix, xp)) for a, b, c0, c1, matrix in paths.sums]
    missing = bool(xp.any(xp.isnan(x)))  # else the missing values' side is not looked at
    if paths.sets is not None:  # categorical conditions: a set of codes each
        set_id = to_xp(paths.set_id.T.reshape(-1, 1), xp)
        sets = {"masks": to_xp(paths.sets.reshape(-1), xp),
                "mask_width": paths.sets.shape[1]}
    if paths.tables is not None:
        tables = to_xp(paths.tables.reshape(-1), xp)
        ids = np.int32 if paths.tables.size < 2**31 else np.int64
        pair_leaf = to_xp(paths.pair_leaf, xp)
        # where a pair's factors start in the tables: pattern * depth + this
        at = to_xp((paths.pair_leaf * 2 ** d * d + paths.pair_position).astype(ids)[:, None],
                   xp)
        weight = [to_xp(np.array(2 ** j, dtype=ids), xp) for j in range(d)]
    else:
        share = to_xp(paths.share.T[:, :, None], xp)
        at = to_xp(paths.pair_position * n_leaves + paths.pair_leaf, xp)
    block = max(1, BLOCK_ENTRIES // max(n_leaves * d, pairs * k))
    out = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        values = xp.take(x[:, start:stop], pick, axis=0)  # (d * leaves, rows)
        met = (values > lower) & (values <= upper)
        if paths.sets is not None:
            outside = xp.isnan(values) | (set_id < 0)  # only a set's values are codes
            code = xp.astype(xp.where(outside, xp.zeros_like(values), values), xp.int64)
            met = met & (in_set(set_id, code, sets, xp) | (set_id < 0))
        if missing:
            met = xp.where(xp.isnan(values), missing_ok, met)
        met = xp.reshape(met, (d, n_leaves, stop - start))
        if paths.tables is not None:
            pattern = xp.astype(met[0, ...], at.dtype)
            for j in range(1, d):
                pattern = pattern + xp.astype(met[j, ...], at.dtype) * weight[j]
            index = xp.take(pattern, pair_leaf, axis=0) * d + at  # (pairs, rows)
            factors = xp.reshape(xp.take(tables, xp.reshape(index, (-1,))), index.shape)
        else:
            factors = shapley_factors(xp.astype(met, xp.float64), share, xp)
            factors = xp.take(xp.reshape(factors, (d * n_leaves, -1)), at, axis=0)
        summed = xp.concat([matrix @ factors[c0:c1, :] for _, _, c0, c1, matrix in sums],
                           axis=0)  # (features * k, rows)
        out.append(xp.permute_dims(xp.reshape(summed, (f, k, -1)), (2, 0, 1)))
    return out[0] if len(out) == 1 else xp.concat(out, axis=0)
