"""Quantiles of values per group over partitions, exact, in a few passes.

Boosting with the absolute error or the pinball (quantile) loss sets each leaf to a
quantile of its rows' residuals (scikit-learn's HistGradientBoosting, XGBoost's
adaptive trees, LightGBM's leaf renewal), and starts from a quantile of the label. A
partition holds a share of a group's rows, so the driver finds each quantile by
narrowing, as a selection over a cluster does:

1. ``summarise``: per group the rows, their mass (weight, or 1 a row), the smallest
   and largest value (``start_from`` skips this pass where the rows and masses are
   known, a tree's leaves', from the values' overall spread).
2. ``start``: a query per group for the order statistics wanted (weighted: the
   smallest value whose cumulative weight reaches ``level`` of the group's, as
   scikit-learn's weighted percentile, "inverted CDF"; unweighted: the two rows around
   the linear position ``level * (n - 1)``, NumPy's default percentile, the median for
   0.5), with the value interval ``[lo, hi]`` of the rows that may hold them and the
   mass below it.
3. ``search_partial`` / ``search_update``: each partition counts its rows inside each
   query's interval in bins (``(v - lo) / (hi - lo)`` scaled: monotone in the
   value, so a bin is a value range) with each bin's mass and smallest and largest value;
   the driver keeps the bins that reach the query's ranks, whose smallest and largest
   values are the new interval (one value: found). Once an interval holds at most
   ``LIST_ROWS`` rows the partitions send those rows, and the driver sorts them. A
   partition may keep just the rows inside the intervals between passes (``narrow``):
   intervals only narrow.

Every pass leaves out at least one of the interval's extreme values (the first bin
holds ``lo``, the last ``hi``; two ranks in two bins are the first's last row and the
second's first), so the search ends; typical residuals take a summary pass, one
or two binned passes and a listing pass. Counts are integers and a row's value is the
same in every partitioning, so unweighted quantiles are the same bit for bit however the
rows are partitioned; weighted ones add weights in float64, whose last bits depend on
the order (a rank falling within rounding of a boundary between two values is the only
case that can differ).

The partition side works on any array namespace ``xp`` (the values, groups and masses
stay on the device; small per-bin sums come back); the driver side is NumPy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from operators.arrays import is_numpy, segment_sums, to_numpy, to_xp

BIN_ROWS = 32
"""A binned pass cuts a query's interval into about its rows over this many bins (a
power of two from ``MIN_BINS`` to ``MAX_BINS``): most bins then hold few enough rows to
be listed in the next pass."""
MIN_BINS, MAX_BINS = 16, 4096
RANK_RTOL = 1e-12
"""A weighted running sum within this fraction of the group's weight of a rank reaches
it (fractional weights summed in another order differ in their last bits)."""
WINDOW = 4.0
"""The first binned pass of a group cuts its mean +- this many standard deviations."""
LIST_ROWS = 2048
"""An interval holding at most this many rows is sent as its rows."""
MAX_BINNED = 24
"""Binned passes of a query before its rows are sent whatever their number (a spread
of values no real data has: each pass narrows the value range at least ``MIN_BINS``-fold)."""

HIST, LIST, FOUND = 0, 1, 2


# --------------------------------------------------------------------------- segments


def _segment_sums(xp: Any, keys: Any, values: Any, length: int) -> np.ndarray:
    """``out[k] = sum of values[keys == k]`` on the host, float64: bincount where the
    namespace has one (NumPy, CuPy), else ``arrays.segment_sums``."""
    if is_numpy(xp):
        return np.bincount(np.asarray(keys), weights=np.asarray(values, np.float64),
                           minlength=length)
    values = xp.astype(values, xp.float64)
    bincount = getattr(xp, "bincount", None)
    if bincount is not None:  # CuPy
        return to_numpy(bincount(keys, weights=values, minlength=length))
    return segment_sums(xp, keys, values, length)


def _edges(xp: Any, sorted_keys: Any, length: int) -> Any:
    return xp.searchsorted(sorted_keys, xp.arange(length + 1, dtype=sorted_keys.dtype))


def _segment_extremes(xp: Any, keys: Any, values: Any, length: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per key the smallest and largest value (inf and -inf where a key has none)."""
    if is_numpy(xp):
        keys, values = np.asarray(keys), np.asarray(values)
        low, high = np.full(length, np.inf), np.full(length, -np.inf)
        np.minimum.at(low, keys, values)
        np.maximum.at(high, keys, values)
        return low, high
    # sorted by value, then (stably) by key: each key's rows in value order
    by_value = xp.argsort(values, stable=True)
    order = xp.take(by_value, xp.argsort(xp.take(keys, by_value), stable=True))
    edges = to_numpy(_edges(xp, xp.take(keys, order), length))
    ordered = to_numpy(xp.take(values, order))
    low, high = np.full(length, np.inf), np.full(length, -np.inf)
    full = edges[1:] > edges[:-1]
    low[full] = ordered[edges[:-1][full]]
    high[full] = ordered[edges[1:][full] - 1]
    return low, high


# --------------------------------------------------------------------------- summary


def summarise(xp: Any, groups: Any, values: Any, mass: Any | None, n_groups: int,
              moments: bool = True) -> dict[str, np.ndarray]:
    """A partition's rows per group (``groups`` in ``[0, n_groups)``, one per row of
    ``values``; ``mass`` None: a row weighs 1): rows, mass, smallest, largest value, and
    (``moments``) the sum and sum of squares of the values (where the first binned pass
    puts its bins)."""
    keys = xp.astype(groups, xp.int64)
    values = xp.astype(values, xp.float64)
    count = _segment_sums(xp, keys, xp.ones(keys.shape, dtype=xp.float64), n_groups)
    weight = count if mass is None else _segment_sums(xp, keys, mass, n_groups)
    low, high = _segment_extremes(xp, keys, values, n_groups)
    out = {"count": count.astype(np.int64), "mass": weight, "min": low, "max": high}
    if moments:
        with np.errstate(over="ignore", invalid="ignore"):  # past float64: no window
            out["sum"] = _segment_sums(xp, keys, values, n_groups)
            out["sumsq"] = _segment_sums(xp, keys, values * values, n_groups)
    return out


def combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partitions' summaries or search statistics as one (associative and
    commutative: sums, extremes, and the listed rows)."""
    out = {"count": a["count"] + b["count"], "mass": a["mass"] + b["mass"],
           "min": np.minimum(a["min"], b["min"]), "max": np.maximum(a["max"], b["max"])}
    if "sum" in a:
        with np.errstate(over="ignore", invalid="ignore"):
            out.update(sum=a["sum"] + b["sum"], sumsq=a["sumsq"] + b["sumsq"])
    if "listed" in a:
        out["listed"] = {k: np.concatenate([a["listed"][k], b["listed"][k]])
                         for k in a["listed"]}
    return out


def start(summary: dict[str, np.ndarray], level: float, weighted: bool,
          median: bool = False, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """The queries for the ``level`` quantile of every group with rows (one a group);
    ``median``: unweighted, the median as NumPy's ``median`` takes it (the mean of the
    two middle rows, where ``percentile`` interpolates: the last bit may differ);
    ``window``: where every group's first binned pass cuts finely (else its mean +-
    ``WINDOW`` standard deviations, from the summary's moments)."""
    count, mass = summary["count"], summary["mass"]
    group = np.flatnonzero(count > 0)
    if weighted:
        # scikit-learn's weighted percentile: the level as a percent, divided by 100
        rank = rank2 = (100 * level) / 100 * mass[group]
        frac = np.zeros(len(group))
    else:
        # as np.percentile(values, 100 * level) computes it, to its last bit
        q, n = (100 * level) / 100, count[group].astype(np.float64)
        h = (n - 1) * q
        k = np.floor(h)
        frac = h - k
        rank, rank2 = k + 1, np.minimum(k + 1, n - 1) + 1  # 1-based ranks of both rows
    size = len(group)
    lo, hi = summary["min"][group], summary["max"][group]
    # the first binned pass cuts the mean +- WINDOW standard deviations finely and puts
    # the rest in a bin on either side: residuals' long tails do not widen its bins
    if window is not None:
        a, b = np.full(size, window[0]), np.full(size, window[1])
    else:
        a, b = _window(count[group], summary["sum"][group], summary["sumsq"][group])
        a, b = np.maximum(lo, a), np.minimum(hi, b)
    usable = np.isfinite(a) & np.isfinite(b) & (a < b)
    queries = {"group": group.astype(np.int64), "rank": np.asarray(rank, np.float64),
               "a": np.where(usable, a, lo), "b": np.where(usable, b, hi),
               "rank2": np.asarray(rank2, np.float64), "lo": lo.copy(), "hi": hi.copy(),
               "below": np.zeros(size),
               "count": count[group].astype(np.int64), "value": np.full(size, np.nan),
               "value2": np.full(size, np.nan), "stage": np.full(size, HIST, np.int8),
               "passes": np.zeros(size, np.int64),
               "frac": frac, "groups": len(count), "weighted": bool(weighted),
               "median": bool(median and not weighted),
               # a running weight this close to a rank reaches it: sums of fractional
               # weights added in another order (another partitioning) cannot part a tie
               "slack": RANK_RTOL * mass[group] if weighted else np.zeros(size)}
    _advance(queries)
    return queries


UNKNOWN_ROWS = 1 << 40
"""The rows of a group known by its weight only (``start_from`` with weights)."""


def start_from(count: np.ndarray | None, mass: np.ndarray, moments: np.ndarray,
               level: float, weighted: bool, median: bool = False) -> dict[str, Any] | None:
    """``start`` without a summary pass: each group's rows (``count``; None: unknown)
    and mass known already (a tree's leaves: its histograms summed them), and
    ``moments`` (rows, sum and sum of squares of all groups' values together) placing
    the first binned pass's window; None when they place none (one value). Groups of
    at most ``LIST_ROWS`` known rows are listed at once; every interval starts
    unbounded (the first pass's outer bins hold the tails)."""
    a, b = (float(v) for v in _window(*np.asarray(moments, np.float64)))
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        return None
    rows = count if count is not None else np.where(mass > 0, UNKNOWN_ROWS, 0)
    summary = {"count": np.asarray(rows, np.int64), "mass": np.asarray(mass, np.float64),
               "min": np.full(len(mass), -np.inf), "max": np.full(len(mass), np.inf)}
    return start(summary, level, weighted, median, window=(a, b))


def _window(n: Any, total: Any, squares: Any) -> tuple[Any, Any]:
    """The mean +- ``WINDOW`` standard deviations of values of these counts, sums and
    sums of squares (NaN or inf where they place none)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        n = np.asarray(n, np.float64)
        mean = total / n
        sd = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        return mean - WINDOW * sd, mean + WINDOW * sd


def _advance(q: dict[str, Any]) -> None:
    """Queries whose interval holds one value are found; small ones are listed."""
    open_ = q["stage"] != FOUND
    same = open_ & (q["lo"] == q["hi"])
    q["value"][same] = q["value2"][same] = q["lo"][same]
    q["stage"][same] = FOUND
    small = (q["stage"] == HIST) & ((q["count"] <= LIST_ROWS) | (q["passes"] >= MAX_BINNED))
    q["stage"][small] = LIST


def done(queries: dict[str, Any]) -> bool:
    return bool((queries["stage"] == FOUND).all())


def values(queries: dict[str, Any]) -> np.ndarray:
    """Per group its quantile (NaN for a group without rows), once ``done``."""
    out = np.full(queries["groups"], np.nan)
    a, b, t = queries["value"], queries["value2"], queries["frac"]
    if queries["median"]:  # NumPy's median: the middle row, or the mean of the two
        out[queries["group"]] = np.where(t == 0, a, (a + b) / 2)
        return out
    # NumPy's lerp: from the nearer end, so that t = 0 and t = 1 give a and b exactly
    out[queries["group"]] = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return out


# --------------------------------------------------------------------------- search


def broadcast(queries: dict[str, Any]) -> dict[str, Any]:
    """What a partition needs of the queries (the rest stays on the driver)."""
    open_ = queries["stage"] != FOUND
    query_of = np.full(queries["groups"], -1, dtype=np.int64)
    query_of[queries["group"][open_]] = np.flatnonzero(open_)
    lo, hi, a, b = queries["lo"], queries["hi"], queries["a"], queries["b"]
    with np.errstate(over="ignore"):
        wide = ~np.isfinite(b - a)  # a range past float64's: cut by halves
        span = np.where(wide, b / 2 - a / 2, b - a)
    wanted = np.ceil(np.maximum(queries["count"], 1) / BIN_ROWS)
    bins = np.clip(2 ** np.ceil(np.log2(wanted)), MIN_BINS, MAX_BINS).astype(np.int64)
    bins[queries["stage"] != HIST] = 0
    start = np.concatenate([[0], np.cumsum(bins)])
    return {"query_of": query_of, "lo": lo, "hi": hi, "a": a,
            "span": np.where(span > 0, span, 1.0),
            "wide": wide, "stage": queries["stage"], "bins": bins, "start": start}


def narrow(xp: Any, groups: Any, values: Any, mass: Any | None, sent: dict[str, Any]
           ) -> tuple[Any, Any, Any | None]:
    """The rows inside their group's open query's interval (their groups, float64
    values and masses): the only rows this pass and the later ones count."""
    groups, values = xp.astype(groups, xp.int64), xp.astype(values, xp.float64)
    qid = xp.take(to_xp(sent["query_of"], xp), groups)
    safe = xp.where(qid >= 0, qid, xp.zeros_like(qid))
    lo, hi = xp.take(to_xp(sent["lo"], xp), safe), xp.take(to_xp(sent["hi"], xp), safe)
    rows = xp.nonzero((qid >= 0) & (values >= lo) & (values <= hi))[0]
    return (xp.take(groups, rows), xp.take(values, rows),
            None if mass is None else xp.take(mass, rows))


def search_partial(xp: Any, groups: Any, values: Any, mass: Any | None,
                   sent: dict[str, Any]) -> dict[str, Any]:
    """A partition's rows (``narrow``ed: inside their query's interval) counted: per
    (query, bin) rows, mass, smallest and largest value for binned queries, the rows
    themselves (query, value, mass) for listed ones."""
    cells = int(sent["start"][-1])
    out = {"count": np.zeros(cells, np.int64), "mass": np.zeros(cells),
           "min": np.full(cells, np.inf), "max": np.full(cells, -np.inf)}
    listed = {"query": np.zeros(0, np.int64), "value": np.zeros(0), "mass": np.zeros(0)}
    q = xp.take(to_xp(sent["query_of"], xp), groups)
    kind = xp.take(to_xp(sent["stage"].astype(np.int64), xp), q)
    binned = xp.nonzero(kind == HIST)[0]
    if binned.shape[0]:
        qb, vb = xp.take(q, binned), xp.take(values, binned)
        low = xp.take(to_xp(sent["a"], xp), qb)
        with np.errstate(over="ignore"):  # NumPy's warning of the branch not taken
            offset = xp.where(xp.take(to_xp(sent["wide"], xp), qb), vb / 2 - low / 2,
                              vb - low)
        bins = xp.astype(xp.take(to_xp(sent["bins"], xp), qb), xp.float64)
        # [a, b) in the inner bins, below a in the first, b and above in the last
        inner = xp.floor(offset / xp.take(to_xp(sent["span"], xp), qb) * (bins - 2))
        cell = xp.clip(inner + 1, 0, bins - 1)
        cell = xp.astype(cell, xp.int64) + xp.take(to_xp(sent["start"][:-1], xp), qb)
        out = summarise(xp, cell, vb, None if mass is None else xp.take(mass, binned),
                        cells, moments=False)
    chosen = xp.nonzero(kind == LIST)[0]
    if chosen.shape[0]:
        listed = {"query": to_numpy(xp.take(q, chosen)).astype(np.int64),
                  "value": to_numpy(xp.take(values, chosen)).astype(np.float64),
                  "mass": (np.ones(chosen.shape[0]) if mass is None else
                           to_numpy(xp.astype(xp.take(mass, chosen), xp.float64)))}
    return {**out, "listed": listed}


def _first_reaching(running: np.ndarray, rank: float, full: np.ndarray, slack: float
                    ) -> int:
    """The first position whose running mass reaches ``rank`` (within ``slack``) among
    ``full`` ones (the last full one when rounding leaves the total just short)."""
    reached = np.flatnonzero((running >= rank - slack) & full)
    return int(reached[0]) if len(reached) else int(np.flatnonzero(full)[-1])


def search_update(queries: dict[str, Any], sent: dict[str, Any], stats: dict[str, Any]
                  ) -> dict[str, Any]:
    """The queries narrowed by the partitions' combined ``search_partial``s of the
    pass that was ``sent``."""
    q = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in queries.items()}
    mass_all = stats["mass"] if q["weighted"] else stats["count"].astype(np.float64)
    for i in np.flatnonzero(q["stage"] == HIST):
        cut = slice(int(sent["start"][i]), int(sent["start"][i + 1]))
        count, mass = stats["count"][cut], mass_all[cut]
        running = q["below"][i] + np.cumsum(mass)
        full = count > 0
        a = _first_reaching(running, q["rank"][i], full, q["slack"][i])
        b = _first_reaching(running, q["rank2"][i], full, q["slack"][i])
        if a != b:  # unweighted ranks k and k + 1 apart: bin a's last row, b's first
            q["value"][i], q["value2"][i] = stats["max"][cut][a], stats["min"][cut][b]
            q["stage"][i] = FOUND
            continue
        q["below"][i] = running[a] - mass[a]
        q["lo"][i], q["hi"][i] = stats["min"][cut][a], stats["max"][cut][a]
        q["a"][i], q["b"][i] = q["lo"][i], q["hi"][i]
        q["count"][i] = count[a]
        q["passes"][i] += 1
    listed = stats["listed"]
    for i in np.flatnonzero(q["stage"] == LIST):
        mine = listed["query"] == i
        v, w = listed["value"][mine], listed["mass"][mine]
        order = np.lexsort((w, v))  # by value, then mass: the same sums in any partitioning
        v, w = v[order], w[order]
        running = q["below"][i] + np.cumsum(w)
        full = np.ones(len(v), bool)
        q["value"][i] = v[_first_reaching(running, q["rank"][i], full, q["slack"][i])]
        q["value2"][i] = v[_first_reaching(running, q["rank2"][i], full, q["slack"][i])]
        q["stage"][i] = FOUND
    _advance(q)
    return q

