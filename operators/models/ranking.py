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
``2 |lambda|``. They are computed in NumPy on the host (sorting within queries is no
array-API kernel) with no gather a pair: the queries are grouped by width (a query's
size, rounded up past 8 rows to one of 8 widths an octave: ``_widths``), a group's
queries laid out a row each, ranked, in a ``[queries, width]`` array (a sort of each
row), and the pairs' terms computed by broadcasting as ``[queries, upper rows, width]``:
the top ``truncation`` rows against every row, places where ``j`` is not below ``i`` or
is padding weighing 0; a block of whole queries at a time, or of some upper rows of a
query too large for one (``PAIRS_PER_BLOCK``). A row's sums run in an order that its
query's size alone fixes (over the rows below it as NumPy sums a row of the width, over
those above one after another, whatever the blocks), so a query's gradients are the
same bits in any partition, beside any other queries.

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
PAIRS_PER_BLOCK = 1 << 16
"""Pairs are worked out a block of about this many places (a row above, a row below) at
a time: the whole queries of one width that fit, or some upper rows of one query that
does not (10,000 rows at truncation 10,000: 100 million places). Four float64 arrays of
a block live at once: 2 MB, within the processor's caches, and what bounds the memory of
any one query. A block is some 25 NumPy calls whose Python and GIL handovers are paid
a block: on 2 cores with both threads computing gradients, a call on 100k rows (queries
of 5-60 rows, truncation 30) took 368 ms in blocks of 2^12 places, 138 ms in 2^13, 90 ms
in 2^14, 72 ms in 2^16, 66-70 ms in 2^17-2^18 (one thread: 56-65 ms in 2^14, 49 ms in
2^16)."""
WIDTH_STEPS = 3
"""A query of ``m`` rows is laid out ``m`` wide up to ``2 ** WIDTH_STEPS`` rows, and
above that in ``2 ** WIDTH_STEPS`` widths an octave (at most 1/8 of its places pad)."""


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
    what does not change with the scores (the queries' layout and ideal DCG)."""
    n = len(score)
    grad, hess = np.zeros(n + 1), np.zeros(n + 1)  # the last: where padding goes
    if n == 0:
        return grad[:n], hess[:n]
    buckets = None if cache is None else cache.get(("layout", truncation))
    if buckets is None:
        buckets = _layout(labels, queries, tiebreak, truncation)
        if cache is not None:
            cache[("layout", truncation)] = buckets
    key = np.append(_descending(rank_key(score)), np.uint64(0xFFFFFFFF))  # padding last
    score = np.append(score, 0.0)
    gain = np.append(_gain(labels), 0.0)
    with np.errstate(over="ignore"):  # exp of a pair's score difference past 709: rho 0
        for bucket in buckets:
            rows, g, h = _bucket_gradients(bucket, score, gain, key, truncation, normalize)
            grad[rows], hess[rows] = g, h
    return grad[:n], hess[:n]


def _widths(sizes: np.ndarray) -> np.ndarray:
    """The padded width of queries of these sizes: a query's own size's alone, never
    its neighbours' (its sums are the same in any partition)."""
    step = np.left_shift(1, np.maximum(np.frexp(sizes - 1)[1] - WIDTH_STEPS, 0))
    return -(-sizes // step) * step


def _descending(key: np.ndarray) -> np.ndarray:
    """Float32 keys as unsigned integers ordered the other way (the largest key
    first; -0.0 and 0.0 equal, as they compare), below 2^32 - 1."""
    bits = (key + np.float32(0.0)).view(np.uint32)
    ascending = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    return (~ascending).astype(np.uint64)


def _layout(labels: np.ndarray, queries: np.ndarray, tiebreak: np.ndarray,
            truncation: int) -> list[dict[str, Any]]:
    """The queries grouped by padded width (``_widths``), a bucket per width: its
    queries' rows ``[queries, width]`` (in tie-break order, then padded with the
    row index n), sizes and ``1 / ideal DCG@truncation`` (0 for a query of no gain)."""
    n_queries = int(queries.max()) + 1
    ideal = ideal_dcg(labels, queries, truncation, n_queries)
    inverse_max = np.divide(1.0, ideal, out=np.zeros(n_queries), where=ideal > 0)
    order = np.lexsort((tiebreak, queries))  # a query's rows by tie-break, then place
    sizes = np.bincount(queries, minlength=n_queries)
    starts = np.cumsum(sizes) - sizes
    widths = _widths(sizes)
    buckets = []
    for width in np.unique(widths[sizes > 1]):  # a query of one row has no pair
        members = np.flatnonzero(widths == width)
        m = sizes[members]
        place = np.arange(width)
        rows = np.where(place < m[:, None],
                        order[np.minimum(starts[members][:, None] + place,
                                         len(order) - 1)], len(order))
        buckets.append({"rows": rows, "sizes": m, "inverse_max": inverse_max[members],
                        "padded": bool((m < width).any())})
    return buckets


def _bucket_gradients(bucket: dict[str, Any], score: np.ndarray, gain: np.ndarray,
                      key: np.ndarray, truncation: int, normalize: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One width's queries ranked (a sort of each query's rows) and their pairs summed:
    the rows' gradients and hessians, as ``(rows, gradients, hessians)``, ``[queries,
    width]`` each in ranked order."""
    rows, sizes = bucket["rows"], bucket["sizes"]
    n_queries, width = rows.shape
    upper = min(truncation, width - 1)  # the rows that pair with every row below
    shift = np.uint64(int(width - 1).bit_length())
    ranked = (key[rows] << shift) | np.arange(width, dtype=np.uint64)
    ranked.sort(axis=1)  # by key, ties by tie-break order: each query's values unique
    top, bottom = ranked[:, 0] >> shift, ranked[np.arange(n_queries), sizes - 1] >> shift
    spread = top != bottom  # whether a query's scores differ
    place = (ranked & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.intp)
    rows = np.take_along_axis(rows, place, axis=1)
    s, g = score[rows], gain[rows]
    discount = _discount(np.arange(width))
    valid = (np.arange(width) < sizes[:, None]).astype(np.float64) if bucket["padded"] \
        else None
    # sums over the pairs of row i above row j: of i as the upper row ([queries,
    # upper]), a's for the norm, and of j as the lower ([queries, width], in i's order)
    above, h_above, a_above = (np.empty((n_queries, upper)) for _ in range(3))
    below, h_below = np.zeros((n_queries, width)), np.zeros((n_queries, width))
    per, tall = PAIRS_PER_BLOCK // (upper * width), max(1, PAIRS_PER_BLOCK // width)
    # blocks of whole queries, or of some upper rows of one query that does not fit
    blocks = ([(slice(q, q + per), slice(0, upper)) for q in range(0, n_queries, per)]
              if per else [(slice(q, q + 1), slice(i, min(i + tall, upper)))
                           for q in range(n_queries) for i in range(0, upper, tall)])
    whole = _drop(discount, slice(0, upper)) if per else None
    for q, i in blocks:
        above[q, i], h_above[q, i], a_above[q, i] = _pair_sums(
            s[q], g[q], None if valid is None else valid[q], spread[q],
            _drop(discount, i) if whole is None else whole, i, normalize, below[q],
            h_below[q])
    scale = bucket["inverse_max"]  # factored out of every pair's |delta NDCG|
    if normalize:
        lam = 2.0 * scale * a_above.sum(axis=1)  # the query's sum of 2 |lambda|
        scale = scale * np.divide(np.log2(1.0 + lam), lam, out=np.ones(n_queries),
                                  where=lam > 0)
    below[:, :upper] -= above
    h_below[:, :upper] += h_above
    return rows, below * scale[:, None], h_below * scale[:, None]


def _drop(discount: np.ndarray, i: slice) -> np.ndarray:
    """``discount[i] - discount[j]`` of the upper rows ``i`` and every row ``j``, 0
    where ``j`` is not below ``i``: ``[rows i, width]``."""
    upper = np.arange(i.start, i.stop)[:, None]
    return np.where(np.arange(len(discount)) > upper, discount[upper] - discount, 0.0)


def _pair_sums(s: np.ndarray, g: np.ndarray, valid: np.ndarray | None, spread: np.ndarray,
               drop: np.ndarray, i: slice, normalize: bool, below: np.ndarray,
               h_below: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of the ranked rows ``i`` above every row ``j`` of queries
    ``[queries, width]`` (scores ``s``, gains ``g``), as ``[queries, rows i, width]``:
    a pair's ``a = rho |delta NDCG|`` over its query's ``inverse_max`` (0 where the
    labels are equal, ``j`` is not below ``i`` or is padding), its ``c = sign(g_i -
    g_j) a`` and its hessian ``a (1 - rho)``. Returns the sums over j of ``c``, the
    hessians and ``a``; adds the sums over i of ``c`` and the hessians to ``below`` and
    ``h_below``, a row i after another: the same bits whatever the blocks."""
    difference = s[:, i, None] - s[:, None, :]
    sign = g[:, i, None] - g[:, None, :]
    a = np.abs(sign)
    np.sign(sign, out=sign)
    rho = np.multiply(difference, sign)  # delta: the higher label's score minus the other's
    np.exp(rho, out=rho)
    rho += 1.0
    np.divide(1.0, rho, out=rho)  # 1 / (1 + exp(delta))
    a *= drop
    if valid is not None:
        a *= valid[:, None, :]
    if normalize:
        np.abs(difference, out=difference)
        difference += 0.01
        if spread.all():
            a /= difference
        else:
            np.divide(a, difference, out=a, where=spread[:, None, None])
    a *= rho
    np.subtract(1.0, rho, out=rho)
    rho *= a  # the hessians
    sign *= a  # c
    sums = sign.sum(axis=2), rho.sum(axis=2), a.sum(axis=2)
    sign[:, 0] += below  # the earlier rows' sums first, then this block's rows in order
    rho[:, 0] += h_below
    sign.sum(axis=1, out=below)
    rho.sum(axis=1, out=h_below)
    return sums


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
