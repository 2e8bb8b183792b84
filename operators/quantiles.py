"""Exact quantiles over partitions: the same data gives the same answer on any partitioning.

A sketch (KLL, t-digest) answers from a summary whose shape depends on how the data
was split, so two engines would disagree in the last digits. ``QuantileSearch`` instead
finds the exact order statistics numpy's ``np.quantile(..., method='linear')`` needs,
in a few counting passes that fit the Estimator contract (partial / combine / update):

* every float64 maps to a 64-bit integer key with the same order (``sortable_keys``);
* a pass counts, for each open bracket ``[lo, hi]`` of keys, the values in each of
  ``bins`` equal key ranges inside it, with the smallest and largest key of each range
  (exact integer arithmetic, no rounding), and also ships the values themselves while a
  partition holds at most ``exact_max`` of them;
* the driver narrows each target rank's bracket to the smallest and largest key of the
  bin that holds it (a bin of one distinct value answers at once); when a bracket holds
  at most ``exact_max`` values in all, they arrived in the same pass and the order
  statistic is read off them.

Each pass divides a bracket's width by at least ``bins`` (1024: 10 bits), so any
float64 data needs at most 7 passes, and typical data 2 or 3; data of at most
``exact_max`` values is done in one pass. Counts, minima and maxima combine exactly, so
the result is the same bits on any partitioning, merge order and engine. Nulls and NaN
are left out; ``inf`` counts. Integers are compared as float64 (exact up to 2**53).

``ApproxQuantiles`` is the one-pass alternative (a datasketches KLL sketch): bounded
memory and one scan, but approximate and dependent on the partitioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_SIGN = np.uint64(1 << 63)
_FULL = (0, (1 << 64) - 1)
_EMPTY_MIN = np.uint64((1 << 64) - 1)
_KLL_K = 200


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as the float64 ``values`` (no NaN): -0.0 and 0.0 are one key."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    # negative: flip every bit; positive: set the sign bit (an arithmetic shift picks which)
    return bits ^ ((bits.view(np.int64) >> 63).view(np.uint64) | _SIGN)


def key_value(key: int) -> float:
    """The float64 whose sortable key is ``key``."""
    k = np.array([key], dtype=np.uint64)
    bits = np.where(k & _SIGN, k & ~_SIGN, ~k)
    return float(bits.view(np.float64)[0])


def finite_values(values: np.ndarray) -> np.ndarray:
    """``values`` as float64 without NaN (nulls arrive as NaN from ``column_to_numpy``)."""
    values = np.asarray(values, dtype=np.float64)
    return values[~np.isnan(values)]


def linear_quantiles(order_stat: Mapping[int, float], n: int, probs: np.ndarray) -> np.ndarray:
    """numpy's 'linear' quantiles from the order statistics they need (see ``needed_ranks``)."""
    if n == 0:
        return np.full(len(probs), np.nan)
    virtual = (n - 1) * probs
    lower = np.floor(virtual)
    gamma = virtual - lower
    prev = np.where(virtual >= n - 1, n - 1, lower).astype(np.int64)
    nxt = np.minimum(prev + 1, n - 1)
    a = np.array([order_stat[int(i)] for i in prev])
    b = np.array([order_stat[int(i)] for i in nxt])
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in numpy
        diff = b - a
        return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def needed_ranks(n: int, probs: np.ndarray) -> list[int]:
    """The 0-based order statistics ``linear_quantiles`` reads, sorted, without repeats."""
    if n == 0:
        return []
    virtual = (n - 1) * probs
    prev = np.where(virtual >= n - 1, n - 1, np.floor(virtual)).astype(np.int64)
    return sorted({int(i) for i in prev} | {int(min(i + 1, n - 1)) for i in prev})


def _shift(lo: int, hi: int, bins: int) -> int:
    """Bits to drop from ``key - lo`` so that ``[lo, hi]`` falls in at most ``bins`` bins."""
    return max(0, (hi - lo).bit_length() - (bins.bit_length() - 1))


class QuantileSearch:
    """Exact quantiles of several columns as rounds of partial -> combine -> update.

    ```python
    search = QuantileSearch(["x", "y"], [0.25, 0.5])
    state = search.init()
    while True:
        stats = reduce(search.combine, [search.partial(values_of(p), state) for p in parts])
        state, done = search.update(stats, state)
        if done:
            break
    search.result(state)  # {"x": array([q25, q50]), "y": ...} as np.quantile(..., 'linear')
    ```
    ``values_of(p)`` is ``{column: float64 array}`` with NaN for nulls. State and stats
    are plain picklable data: ints, lists, dicts and numpy arrays.
    """

    def __init__(self, columns: Sequence[str], probs: Sequence[float], *, bins: int = 1024,
                 exact_max: int = 4096):
        probs_array = np.asarray(probs, dtype=np.float64)
        if probs_array.ndim != 1 or np.any((probs_array < 0) | (probs_array > 1)):
            raise ValueError(f"quantile probabilities must lie in [0, 1], got {list(probs)}")
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.columns = list(columns)
        self.probs = probs_array
        self.bins = bins
        self.exact_max = exact_max

    def init(self) -> dict[str, Any]:
        """Before the first pass: every column has one bracket, the whole key range."""
        return {"passes": 0, "columns": {
            c: {"n": None, "brackets": [_FULL], "below": [0], "found": {}}
            for c in self.columns}}

    def partial(self, values: Mapping[str, np.ndarray], state: dict[str, Any]) -> dict[str, Any]:
        """Per column and open bracket: bin counts, and the values when few enough."""
        return {c: self._column_partial(finite_values(values[c]),
                                        state["columns"][c]["brackets"]) for c in self.columns}

    def _column_partial(self, v: np.ndarray, brackets: list[tuple[int, int]]
                        ) -> list[dict[str, Any]]:
        """One scan for all of a column's brackets (they never overlap: each lies in a
        different bin of a bracket of the pass before)."""
        if not brackets:
            return []
        keys = sortable_keys(v)
        order = sorted(range(len(brackets)), key=lambda b: brackets[b][0])
        los = np.array([brackets[b][0] for b in order], dtype=np.uint64)
        his = np.array([brackets[b][1] for b in order], dtype=np.uint64)
        shifts = [_shift(lo, hi, self.bins) for lo, hi in (brackets[b] for b in order)]
        sizes = [((brackets[b][1] - brackets[b][0]) >> s) + 1 for b, s in zip(order, shifts,
                                                                              strict=True)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        which = np.searchsorted(los, keys, side="right").astype(np.intp) - 1
        inside = (which >= 0) & (keys <= np.take(his, which, mode="clip"))
        if not inside.all():
            which, keys, v = which[inside], keys[inside], v[inside]
        bins = starts[which] + ((keys - los[which])
                                >> np.array(shifts, dtype=np.uint64)[which]).astype(np.intp)
        counts = np.bincount(bins, minlength=int(starts[-1])).astype(np.int64)
        mins = np.full(int(starts[-1]), _EMPTY_MIN, dtype=np.uint64)
        maxs = np.zeros(int(starts[-1]), dtype=np.uint64)
        np.minimum.at(mins, bins, keys)
        np.maximum.at(maxs, bins, keys)
        totals = np.add.reduceat(counts, starts[:-1])
        small = totals <= self.exact_max
        picked = small[which]
        grouped = np.lexsort((v[picked] + 0.0, which[picked]))
        exact = np.split((v[picked] + 0.0)[grouped], np.cumsum(np.where(small, totals, 0))[:-1])
        entries: list[dict[str, Any]] = [{}] * len(brackets)
        for i, b in enumerate(order):
            part = slice(starts[i], starts[i + 1])
            entries[b] = {"counts": counts[part], "min": mins[part], "max": maxs[part],
                          "values": exact[i] if small[i] else None}
        return entries

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Counts add; values merge (sorted) while their total stays within ``exact_max``."""
        out: dict[str, Any] = {}
        for c in self.columns:
            merged = []
            for x, y in zip(a[c], b[c], strict=True):
                values = None
                if x["values"] is not None and y["values"] is not None and (
                        x["values"].size + y["values"].size <= self.exact_max):
                    values = np.sort(np.concatenate([x["values"], y["values"]]))
                merged.append({"counts": x["counts"] + y["counts"],
                               "min": np.minimum(x["min"], y["min"]),
                               "max": np.maximum(x["max"], y["max"]), "values": values})
            out[c] = merged
        return out

    def update(self, stats: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Narrow every open bracket to the bin holding each rank it still has to find."""
        columns: dict[str, Any] = {}
        done = True
        for c in self.columns:
            col = state["columns"][c]
            n = col["n"]
            if n is None:
                n = int(stats[c][0]["counts"].sum())
            found = dict(col["found"])
            targets = [r for r in needed_ranks(n, self.probs) if r not in found]
            brackets: list[tuple[int, int]] = []
            belows: list[int] = []
            for below, entry in zip(col["below"], stats[c], strict=True):
                counts = entry["counts"]
                cum = np.cumsum(counts)
                mine = [r for r in targets if below <= r < below + int(cum[-1])]
                if entry["values"] is not None:
                    for r in mine:
                        found[r] = float(entry["values"][r - below])
                    continue
                for r in mine:
                    j = int(np.searchsorted(cum, r - below, side="right"))
                    bracket = (int(entry["min"][j]), int(entry["max"][j]))
                    if bracket[0] == bracket[1]:  # one distinct value left: that is it
                        found[r] = key_value(bracket[0])
                        continue
                    if bracket not in brackets:
                        brackets.append(bracket)
                        belows.append(below + (int(cum[j - 1]) if j else 0))
            done = done and not brackets
            columns[c] = {"n": n, "brackets": brackets, "below": belows, "found": found}
        return {"passes": state["passes"] + 1, "columns": columns}, done

    def counts(self, state: dict[str, Any]) -> dict[str, int]:
        """Values (not null, not NaN) of each column, known after the first pass."""
        return {c: int(state["columns"][c]["n"] or 0) for c in self.columns}

    def result(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """The quantiles of each column, in ``probs`` order (NaN for a column without values)."""
        return {c: linear_quantiles(state["columns"][c]["found"], self.counts(state)[c],
                                    self.probs) for c in self.columns}


class ApproxQuantiles:
    """One-pass approximate quantiles from a KLL sketch per column (datasketches).

    Rank error about 1.3% with the default ``k=200``; the answer is one of the data's
    values (no interpolation) and may differ with the partitioning and the order in
    which partials are merged. Exact (and partition-invariant) while a column has at
    most ``k`` values.
    """

    def __init__(self, columns: Sequence[str], probs: Sequence[float], *, k: int = _KLL_K):
        self.columns = list(columns)
        self.probs = [float(p) for p in probs]
        self.k = k

    def _sketch(self, data: bytes | None) -> Any:
        from datasketches import kll_doubles_sketch

        return kll_doubles_sketch.deserialize(data) if data else kll_doubles_sketch(self.k)

    def partial(self, values: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        out = {}
        for c in self.columns:
            sketch = self._sketch(None)
            v = finite_values(values[c])
            if v.size:
                sketch.update(v)
            out[c] = sketch.serialize()
        return out

    def combine(self, a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, bytes]:
        out = {}
        for c in self.columns:
            sketch = self._sketch(a[c])
            sketch.merge(self._sketch(b[c]))
            out[c] = sketch.serialize()
        return out

    def counts(self, stats: dict[str, bytes]) -> dict[str, int]:
        return {c: int(self._sketch(stats[c]).n) for c in self.columns}

    def result(self, stats: dict[str, bytes]) -> dict[str, np.ndarray]:
        out = {}
        for c in self.columns:
            sketch = self._sketch(stats[c])
            if sketch.is_empty():
                out[c] = np.full(len(self.probs), np.nan)
            else:
                out[c] = np.array([sketch.get_quantile(p, True) for p in self.probs])
        return out


class ColumnQuantiles:
    """The quantiles ``probs`` of table columns, for an estimator's fit: exact
    (``QuantileSearch``, a few passes) or, with ``approx``, one pass of KLL sketches.

    The estimator keeps its own state as a dict; this uses its ``search`` key.
    """

    def __init__(self, columns: Sequence[str], probs: Sequence[float], approx: bool):
        self.columns = list(columns)
        self.search: QuantileSearch | ApproxQuantiles = (
            ApproxQuantiles if approx else QuantileSearch)(columns, probs)
        self.multi_pass = not approx

    def init(self) -> dict[str, Any]:
        return {"search": self.search.init()} if isinstance(self.search, QuantileSearch) else {}

    def partial(self, part: Any, state: dict[str, Any]) -> Any:
        from operators.arrays import column_to_numpy

        values = {c: column_to_numpy(part.column(c)) for c in self.columns}
        if isinstance(self.search, QuantileSearch):
            return self.search.partial(values, state["search"])
        return self.search.partial(values)

    def combine(self, a: Any, b: Any) -> Any:
        return self.search.combine(a, b)

    def update(self, stats: Any, state: dict[str, Any],
               require: Any) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        """The quantiles by column once known (else None and the state of the next
        pass); ``require(counts by column)`` checks that every column had values."""
        if isinstance(self.search, ApproxQuantiles):
            require(self.search.counts(stats))
            return self.search.result(stats), state
        found, done = self.search.update(stats, state["search"])
        require(self.search.counts(found))
        if not done:
            return None, {**state, "search": found}
        return self.search.result(found), state
