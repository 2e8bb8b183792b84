"""Learning to rank: LightGBM's lambdarank gradients and NDCG, per query.

A query (the rows of one value of the ``group`` column) is ranked by its rows' scores.
Its gradients need all of its rows, so a query must lie in one partition: the summary
pass collects each partition's query keys and the combine refuses a key two partitions
hold (``combine_keys``). The rows of a query may come in any order: ties of score are
broken by a hash of the row's content, never by its place in the partition; scores
are compared at float32 precision (``rank_key``).

The gradients are LightGBM's ``lambdarank`` (``LambdarankNDCG::GetGradientsForOneQuery``):
for every pair of a query's rows with different labels of which one ranks in the top
``truncation`` places by the current scores, the pairwise logistic loss's gradient
(sigma 1) weighted by ``|delta NDCG|``, the change of the query's NDCG@truncation that
swapping the two would make (gain ``2^label - 1``, discount ``1 / log2(1 + rank)``, over
the query's ideal DCG at ``truncation``); hessians ``rho (1 - rho) |delta NDCG|``. With
``normalize`` (LightGBM's ``lambdarank_norm``), ``|delta NDCG|`` is divided by ``0.01 +``
the pair's score difference (when the query's scores are not all equal) and the query's
gradients and hessians are scaled by ``log2(1 + S) / S``, S the sum of its pairs'
``2 |lambda|``. They are computed in NumPy on the host: sorting within queries is no
array-API kernel.

NDCG@k (validation, ``evaluate``) uses the same gain and discount; a query without a
relevant row (ideal DCG 0) counts 1, as LightGBM's metric; rows of tied scores (``rank_key``) share
the discounts of the places they tie over (scikit-learn's ``ndcg_score``, whose gain is
the label itself: it equals ours on labels ``2^label - 1`` for queries with a relevant
row, and counts 0 for the others).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import DataError, SchemaError

RELEVANCE_MAX = 30
"""The highest relevance label: LightGBM's default ``label_gain`` holds gains of 0..30."""
PAIRS_PER_BLOCK = 1 << 20
"""Gradients are summed a block of whole queries at a time, of about this many pairs (a
few tens of float64 arrays of them at once: about 100 MB); a query of more pairs, this
many of its pairs at a time."""


def check_group_column(schema: pa.Schema, group: str, role: str = "group") -> None:
    """Plan time: the query column is there and holds integers or text."""
    if group not in schema.names:
        raise SchemaError(f"{role} column '{group}' is not in the input",
                          hint="columns: " + ", ".join(schema.names[:20]))
    t = schema.field(group).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise SchemaError(f"{role} column '{group}' is {t}: a query id is an integer or a "
                          "string", hint="cast it to int64 or string")


def _keys(table: pa.Table, group: str) -> pa.Array:
    column = table.column(group)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if column.null_count:
        raise DataError(f"group column '{group}' has {column.null_count} null values",
                        hint="give every row a query id, or filter those rows out")
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def query_keys(table: pa.Table, group: str) -> pa.Array:
    """The distinct query ids of a partition (for ``combine_keys``)."""
    return pc.unique(_keys(table, group))


def combine_keys(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partials' ``keys`` (their partitions' query ids) and ``span`` (a query id seen
    in two partitions, or None) merged: a key in both is a query that spans them."""
    span = a["span"] if a["span"] is not None else b["span"]
    if span is None and len(a["keys"]) and len(b["keys"]):
        both = pc.is_in(b["keys"], value_set=a["keys"])
        if pc.any(both).as_py():
            span = b["keys"].filter(both)[0].as_py()
    if span is not None:  # the fit fails: no need to carry every key further
        return {"keys": a["keys"].slice(0, 0), "queries": 0, "span": span}
    return {"keys": pa.concat_arrays([a["keys"], b["keys"]]),
            "queries": a["queries"] + b["queries"], "span": None}


def span_error(group: str, key: Any) -> DataError:
    return DataError(f"query {key!r} of group column '{group}' has rows in more than one "
                     "partition: a query's gradients need all its rows in one",
                     hint=f"add `- op: repartition` with `by: [{group}]` before the step")


def query_codes(table: pa.Table, group: str) -> np.ndarray:
    """Each row's query as an int64 code local to the table."""
    return np.asarray(pc.dictionary_encode(_keys(table, group)).indices,
                      dtype=np.int64)


def check_relevance(labels: np.ndarray, label: str) -> None:
    """Relevance labels are whole numbers in [0, RELEVANCE_MAX] (a DataError naming the
    label column otherwise)."""
    bad = ~np.isfinite(labels) | (labels < 0) | (labels > RELEVANCE_MAX) | (
        labels != np.floor(labels))
    if bad.any():
        raise DataError(f"label column '{label}' holds {labels[bad][0]!r}: lambdarank's "
                        f"labels are relevance grades, whole numbers 0 to {RELEVANCE_MAX}",
                        hint="map the label to grades (0 irrelevant, higher more relevant)")


def _discount(positions: np.ndarray) -> np.ndarray:
    """``1 / log2(2 + position)``, positions from 0."""
    return 1.0 / np.log2(2.0 + positions)


def rank_key(score: np.ndarray) -> np.ndarray:
    """What orders rows: the score at float32 precision. Scores a float64 sum's last
    bits apart (that noise differs by engine, partitioning and array namespace) are ties;
    they are common, not rare: the first round's leaves of rows that win every pair all
    get ``-G/H = 2`` times the learning rate, each summed in its own order."""
    return score.astype(np.float32)


def _gain(labels: np.ndarray) -> np.ndarray:
    return np.exp2(labels) - 1.0


def _order(queries: np.ndarray, keys: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Rows sorted by query, then ``keys`` (last one first, as lexsort), each row's
    place within its query, each query's first sorted row and size."""
    order = np.lexsort((*keys, queries))
    sorted_queries = queries[order]
    n = len(order)
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_queries[1:] != sorted_queries[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    place = np.arange(n) - np.repeat(starts, sizes)
    return order, sorted_queries, place, starts, sizes


def ideal_dcg(labels: np.ndarray, queries: np.ndarray, k: int, n_queries: int) -> np.ndarray:
    """Per query code, the DCG@k of its rows in the order of their labels."""
    order, sorted_queries, place, _, _ = _order(queries, [-labels])
    kept = place < k
    terms = _gain(labels[order][kept]) * _discount(place[kept])
    return np.bincount(sorted_queries[kept], terms, minlength=n_queries)


def lambdarank_gradients(score: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                         tiebreak: np.ndarray, truncation: int = 30, normalize: bool = True,
                         cache: dict[str, Any] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM's lambdarank gradient and hessian of every row (float64, the rows'
    order); ``queries``: int64 query codes, ``tiebreak``: what orders rows of equal
    score (the row hashes). ``cache``: a dict kept with these rows across rounds, for
    what does not change with the scores (each query's ideal DCG)."""
    n = len(score)
    grad, hess = np.zeros(n), np.zeros(n)
    if n == 0:
        return grad, hess
    n_queries = int(queries.max()) + 1
    inverse_max = None if cache is None else cache.get(("inverse_max", truncation))
    if inverse_max is None:
        ideal = ideal_dcg(labels, queries, truncation, n_queries)
        inverse_max = np.divide(1.0, ideal, out=np.zeros(n_queries), where=ideal > 0)
        if cache is not None:
            cache[("inverse_max", truncation)] = inverse_max
    key = rank_key(score)
    order, sorted_queries, place, starts, sizes = _order(queries, [tiebreak, -key])
    s, y = score[order], labels[order]
    gain, discount = _gain(y), _discount(place)
    spread = np.zeros(n_queries, dtype=bool)  # whether a query's scores differ
    ordered = key[order]
    spread[sorted_queries[starts]] = (np.maximum.reduceat(ordered, starts)
                                      != np.minimum.reduceat(ordered, starts))
    # a row among a query's first ``truncation`` pairs with every row after it
    partners = np.where(place < truncation, np.repeat(sizes, sizes) - 1 - place, 0)
    pairs_to = np.cumsum(partners)
    query_pairs = pairs_to[starts + sizes - 1]
    lam_sum = np.zeros(n_queries)
    g_sorted, h_sorted = np.zeros(n), np.zeros(n)
    first = 0
    while first < len(starts):  # blocks of whole queries
        before = query_pairs[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(query_pairs, before + PAIRS_PER_BLOCK,
                                                  side="right")))
        lo, hi = int(starts[first]), int(starts[last - 1] + sizes[last - 1])
        counts = partners[lo:hi]
        total = int(counts.sum())
        if total:  # the block's rows [lo, hi) and queries [q_lo, q_hi), from 0
            q_lo, q_hi = int(sorted_queries[lo]), int(sorted_queries[hi - 1]) + 1
            ends = np.cumsum(counts)
            # the rows' sums as pairs ranked above and below, and the queries' 2 |lambda|
            sums = [np.zeros(hi - lo) for _ in range(4)] + [np.zeros(q_hi - q_lo)]
            # a block of pairs at a time: one query may hold many (10,000 rows at
            # truncation 10,000: 50 million)
            for p0 in range(0, total, PAIRS_PER_BLOCK):
                i, j = _block_pairs(counts, ends, p0, min(p0 + PAIRS_PER_BLOCK, total))
                _pair_sums(i, j, s[lo:hi], y[lo:hi], gain[lo:hi], discount[lo:hi],
                           sorted_queries[lo:hi] - q_lo, inverse_max[q_lo:q_hi],
                           spread[q_lo:q_hi], normalize, sums, total <= PAIRS_PER_BLOCK)
            above, below, h_above, h_below, lam = sums
            g_sorted[lo:hi] += above - below
            h_sorted[lo:hi] += h_above + h_below
            lam_sum[q_lo:q_hi] += lam
        first = last
    if normalize:
        factor = np.divide(np.log2(1.0 + lam_sum), lam_sum, out=np.ones(n_queries),
                           where=lam_sum > 0)
        g_sorted *= factor[sorted_queries]
        h_sorted *= factor[sorted_queries]
    grad[order], hess[order] = g_sorted, h_sorted
    return grad, hess


def _block_pairs(counts: np.ndarray, ends: np.ndarray, p0: int, p1: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A block's pairs ``p0`` to ``p1`` (numbered row by row: a row's ``counts`` pairs
    end at ``ends``), as their rows ``i`` and ``j``: a row's k-th pair (from 0) is with
    the row k + 1 after it."""
    if p0 == 0 and p1 == int(ends[-1]):
        rows = np.arange(len(counts))
        i = np.repeat(rows, counts)
        return i, np.arange(p1) + np.repeat(rows + 1 - (ends - counts), counts)
    pair = np.arange(p0, p1)
    i = np.searchsorted(ends, pair, side="right")
    return i, pair - (ends[i] - counts[i]) + i + 1


def _pair_sums(i: np.ndarray, j: np.ndarray, s: np.ndarray, y: np.ndarray,
               gain: np.ndarray, discount: np.ndarray, queries: np.ndarray,
               inverse_max: np.ndarray, spread: np.ndarray, normalize: bool,
               sums: list[np.ndarray], alone: bool) -> None:
    """Adds the pairs ``(i, j)`` (sorted rows, ``i`` ranked above ``j``) to ``sums``: the
    rows' gradients as the pair's upper and its lower row, their hessians likewise, and
    their queries' sums of ``2 |lambda|`` (``alone``: the block's only pairs)."""
    y_i, y_j = y[i], y[j]
    differ = y_i != y_j
    i, j = i[differ], j[differ]
    # +1 where i, ranked above j, is the more relevant (the pair's "high" row), else -1
    sign = np.where(y_i[differ] > y_j[differ], 1.0, -1.0)
    q = queries[i]
    delta = sign * (s[i] - s[j])  # high's score minus low's
    ndcg = np.abs(gain[i] - gain[j]) * (discount[i] - discount[j]) * inverse_max[q]
    if normalize:
        ndcg = np.where(spread[q], ndcg / (0.01 + np.abs(delta)), ndcg)
    rho = 1.0 / (1.0 + np.exp(delta))
    lam = -rho * ndcg  # high's gradient; low's is its opposite
    curvature = rho * (1.0 - rho) * ndcg
    signed = sign * lam
    # added in the pairs' order, from 0: a row's sum is the same in any block, and
    # np.add.at goes on where the last block of pairs stopped, as one bincount would
    for total, at, values in zip(sums, (i, j, i, j, q),
                                 (signed, signed, curvature, curvature, -2.0 * lam)):
        if alone:
            total += np.bincount(at, values, minlength=len(total))
        else:
            np.add.at(total, at, values)


def ndcg_sums(score: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int,
              weights: np.ndarray | None = None) -> tuple[float, float]:
    """The sum of the queries' NDCG@k and their number (ties of score share their
    places' discounts; a query of no relevant row counts 1); with row ``weights``, the
    sum of each query's NDCG times its weight, the mean of its rows' (LightGBM's query
    weight), and the sum of those weights."""
    if len(score) == 0:
        return 0.0, 0
    n_queries = int(queries.max()) + 1
    rows = np.bincount(queries, minlength=n_queries)
    present = rows > 0
    ideal = ideal_dcg(labels, queries, k, n_queries)
    key = rank_key(score)
    order, sorted_queries, place, starts, sizes = _order(queries, [-key])
    s = key[order]
    # tie blocks: runs of one query and one score
    new = np.ones(len(s), dtype=bool)
    new[1:] = (sorted_queries[1:] != sorted_queries[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new) - 1
    block_start = place[new]
    block_size = np.bincount(block)
    top = int(sizes.max())
    reach = np.concatenate([[0.0], np.cumsum(np.where(np.arange(top) < k,
                                                      _discount(np.arange(top)), 0.0))])
    shared = (reach[block_start + block_size] - reach[block_start]) / block_size
    dcg = np.bincount(sorted_queries, _gain(labels[order]) * shared[block],
                      minlength=n_queries)
    ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 1.0)
    if weights is None:
        return float(ndcg[present].sum()), int(present.sum())
    weight = np.bincount(queries, weights, minlength=n_queries)[present] / rows[present]
    return float((ndcg[present] * weight).sum()), float(weight.sum())
