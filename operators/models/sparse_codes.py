"""The tree models on a sparse column (``operators/sparse.py``): bin codes, histograms and
the bin sample of its rows as they are stored, never made dense (on NumPy with SciPy).

A sparse column's absent entry is the value 0, as scikit-learn's trees and a column per
term read it (XGBoost and LightGBM read CSR absent entries as missing instead). A
feature's code of 0 (``zero``: how many of its edges are below 0) is what most of its
rows have, so a partition keeps only the (row, feature) codes that differ from it
(``SparseCodes``, a column per term's rows too where there are plain features besides):

- histograms (``sparse_histograms``) sum the stored codes' rows by the same sparse
  product as ``trees._product_histograms``, and each (feature, node)'s bin of 0 gets
  the node's total less the feature's other bins (LightGBM's and XGBoost's way): a
  pass costs the stored entries, not rows times features;
- a row's code at a node's feature (``SparseCodes.take``) is a binary search of the
  stored (feature, row) keys, the zero code where the row has none;
- the bin sample (``sample_matrix``) is a CSR matrix of the sampled rows, and a
  feature's sorted values (``sorted_values``) count the zeros it does not store, so its
  quantiles are those of the same column made dense.

The same codes and sums as a column per term's, so the same trees; the zero bin's sums
differ from a dense pass's only by the rounding of a subtraction (within the split
search's ties, ``trees.GAIN_RTOL``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from operators.sparse import csr_parts, groups, rows_of, scipy_sparse

ENTRIES = 1 << 21
"""``sparse_histograms`` sums the stored codes of about this many entries at a time."""


class SparseCodes:
    """A partition's bin codes of ``m`` features over ``n`` rows, only those that are
    not the feature's code of 0 (``zero``) stored: row-major CSR (``indptr``,
    ``feature``, ``code``) for histograms, and the same entries sorted by the
    feature-major key ``feature * n + row`` (``keys``, ``sorted_code``) for lookups."""

    def __init__(self, n: int, m: int, indptr: np.ndarray, feature: np.ndarray,
                 code: np.ndarray, zero: np.ndarray):
        self.n, self.m, self.zero = n, m, zero
        self.indptr, self.feature, self.code = indptr, feature, code
        keys = feature.astype(np.int64) * n + rows_of(indptr)
        order = np.argsort(keys, kind="stable")
        self.keys, self.sorted_code = keys[order], code[order]

    def take(self, index: np.ndarray) -> np.ndarray:
        """The codes at the feature-major positions ``index`` (``feature * n + row``, as
        a dense partition's flat codes are read)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0 or self.n == 0:
            return np.zeros(index.shape, self.code.dtype)
        zero = self.zero[index // self.n]
        if len(self.keys) == 0:
            return zero
        at = np.minimum(np.searchsorted(self.keys, index), len(self.keys) - 1)
        return np.where(self.keys[at] == index, self.sorted_code[at], zero)


def can_read() -> bool:
    """Whether this Python can keep a sparse column sparse (SciPy and its product)."""
    return scipy_sparse() is not None and _product() is not None


def _product() -> Callable[..., None] | None:
    try:
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return getattr(_sparsetools, "csc_matvecs", None)


def find_codes(values: np.ndarray, feature: np.ndarray, edges: list[np.ndarray],
               missing: int) -> np.ndarray:
    """Each value's bin among its feature's ``edges``: ``#{edges < x}``, as
    ``trees.bin_codes`` (NaN: ``missing``), by a binary search of every value at once in
    the features' edges laid end to end."""
    lengths = np.fromiter((len(e) for e in edges), np.int64, len(edges))
    starts = np.zeros(len(edges) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    flat = np.concatenate(edges) if starts[-1] else np.zeros(1)
    first = starts[feature]
    lo, hi = first.copy(), first + lengths[feature]
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        below = flat[np.minimum(mid, len(flat) - 1)] < values
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    code = lo - first
    code[np.isnan(values)] = missing
    return code


def zero_codes(edges: list[np.ndarray], missing: int) -> np.ndarray:
    """Each feature's code of the value 0."""
    m = len(edges)
    return find_codes(np.zeros(m), np.arange(m), edges, missing).astype(np.uint8)


def _entries(table: pa.Table, features: list[str],
             values_of: Callable[[str], np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored (row, feature position, value) entries of ``features``: a sparse
    column's non-zeros (duplicate positions of a row summed, as a dense row adds
    them), a plain feature's every row (``values_of``)."""
    sp = scipy_sparse()
    n = table.num_rows
    rows, at, values = [], [], []
    for column, start, stop in groups(table.schema, features):
        if column is None:
            rows.append(np.arange(n, dtype=np.int64))
            at.append(np.full(n, start, np.int64))
            values.append(values_of(features[start]))
            continue
        indptr, positions, numbers = csr_parts(table.column(column), stop - start, column)
        X = sp.csr_matrix((numbers, positions, indptr), shape=(n, stop - start))
        X.sum_duplicates()
        rows.append(rows_of(X.indptr))
        at.append(X.indices.astype(np.int64) + start)
        values.append(X.data)
    if not rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(rows), np.concatenate(at), np.concatenate(values)


def sparse_codes(table: pa.Table, features: list[str], edges: list[np.ndarray],
                 missing: int, values_of: Callable[[str], np.ndarray]) -> SparseCodes:
    """``table``'s codes of ``features`` (``SparseCodes``): ``find_codes`` of its stored
    entries, those at their feature's code of 0 left out."""
    n, m = table.num_rows, len(features)
    rows, at, values = _entries(table, features, values_of)
    zero = zero_codes(edges, missing)
    code = find_codes(values, at, edges, missing)
    keep = code != zero[at]
    rows, at, code = rows[keep], at[keep], code[keep]
    order = np.argsort(rows * m + at, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    dtype = np.uint8 if missing < 256 else np.uint16
    return SparseCodes(n, m, indptr, at[order].astype(np.int32), code[order].astype(dtype),
                       zero.astype(dtype))


def sample_matrix(table: pa.Table, features: list[str],
                  values_of: Callable[[str], np.ndarray]) -> Any:
    """The bin sample's rows as a SciPy CSR matrix (rows, features): the non-zeros
    (NaN among them) of each feature."""
    sp = scipy_sparse()
    rows, at, values = _entries(table, features, values_of)
    keep = values != 0
    return sp.csr_matrix((values[keep], (rows[keep], at[keep])),
                         shape=(table.num_rows, len(features)))


def merged_rows(a: Any, b: Any, places: tuple[np.ndarray, ...]) -> Any:
    """Two sample matrices' rows merged as ``trees._smallest_keys`` places them (kept
    rows of a, their places, kept rows of b, theirs)."""
    sp = scipy_sparse()
    keep_a, at_a, keep_b, at_b = places
    both = sp.vstack([a[np.flatnonzero(keep_a)], b[np.flatnonzero(keep_b)]], format="csr")
    return both[np.argsort(np.concatenate([at_a, at_b]))]


def sorted_values(sample: Any, max_bins: int
                  ) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """The features of a sample matrix that store some value, and per feature its finite
    values sorted, the zeros it does not store among them: the column of the dense
    sample's ``np.sort`` (of at most ``max_bins`` distinct values, those values once
    each, all ``trees.bin_edges`` reads then)."""
    csc = sample.tocsc()
    n = sample.shape[0]

    def values(j: int) -> np.ndarray:
        stored = csc.data[csc.indptr[j]:csc.indptr[j + 1]]
        finite = np.sort(stored[np.isfinite(stored)])
        zeros = n - len(stored)
        distinct = np.unique(finite)
        if len(distinct) + (zeros > 0 and not (distinct == 0).any()) <= max_bins:
            return np.concatenate([distinct[distinct < 0], np.zeros(min(zeros, 1)),
                                   distinct[distinct >= 0]])
        cut = np.searchsorted(finite, 0.0, side="left")
        return np.concatenate([finite[:cut], np.zeros(zeros), finite[cut:]])

    return np.flatnonzero(np.diff(csc.indptr)), values


def sparse_histograms(codes: SparseCodes, rows: np.ndarray, slots: np.ndarray,
                      channels: list[np.ndarray], fold: np.ndarray | None,
                      featsel: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """``trees.histograms`` of sparse codes into ``out`` ``(m, n_slots, n_bins, C)``:
    the stored codes of the rows by the sparse product (a cell's rows in row order),
    then each (feature position, slot)'s bin of 0 set to the slot's total less the
    feature's other bins. ``featsel``: slot ``s``'s position ``j`` is feature
    ``featsel[s, j]`` (a stored code of a feature the slot does not sample is skipped)."""
    product = _product()
    m, n_slots, n_bins, width = out.shape
    if fold is not None:
        scale, values = width, np.asarray(channels[0], out.dtype)[:, None]
    else:
        scale, values = 1, np.stack([np.asarray(c, np.float64) for c in channels], axis=1)
    values = np.ascontiguousarray(values)
    target = np.zeros(out.shape, out.dtype)
    rows = np.asarray(rows, np.int64)
    slots = np.asarray(slots, np.int64)
    fold = None if fold is None else np.asarray(fold, np.int64)
    cells = m * n_slots * n_bins * scale
    index_type = np.int32 if cells < 2**31 else np.int64
    lookup = None if featsel is None else _positions(featsel, codes.m)
    starts, ends = codes.indptr[rows], codes.indptr[rows + 1]
    reach = np.cumsum(ends - starts)
    stored = np.zeros(m * n_slots, np.int64)  # per (position, slot), rows with a code stored
    a = 0
    while a < len(rows):  # rows whose stored entries come to about ENTRIES at a time
        before = int(reach[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(reach, before + ENTRIES, side="right")))
        lengths = ends[a:b] - starts[a:b]
        owner = np.repeat(np.arange(b - a), lengths)
        entry = np.repeat(starts[a:b] - np.cumsum(lengths) + lengths, lengths) + np.arange(
            len(owner))
        feature = codes.feature[entry].astype(np.int64)
        slot = slots[a:b][owner]
        if lookup is not None:
            position = lookup(slot, feature)
            kept = position >= 0
            owner, position, slot, entry = owner[kept], position[kept], slot[kept], entry[kept]
        else:
            position = feature
        cell = ((position * n_slots + slot) * n_bins + codes.code[entry]) * scale
        if fold is not None:
            cell += fold[a:b][owner]
        stored += np.bincount(position * n_slots + slot, minlength=m * n_slots)
        indptr = np.zeros(b - a + 1, index_type)
        np.cumsum(np.bincount(owner, minlength=b - a), out=indptr[1:])
        product(cells, b - a, values.shape[1], indptr, cell.astype(index_type),
                np.ones(len(cell), out.dtype), values[a:b].reshape(-1), target.reshape(-1))
        a = b
    _zero_bins(target, codes.zero, slots, values, fold, featsel, stored.reshape(m, n_slots))
    out[...] = target
    return out


def _positions(featsel: np.ndarray, n_features: int
               ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Where feature ``f`` is among slot ``s``'s sampled features (-1: not sampled)."""
    n_slots, m = featsel.shape
    keys = np.arange(n_slots, dtype=np.int64)[:, None] * n_features + featsel
    order = np.argsort(keys.reshape(-1), kind="stable")
    sorted_keys = keys.reshape(-1)[order]

    def find(slot: np.ndarray, feature: np.ndarray) -> np.ndarray:
        key = slot * n_features + feature
        at = np.minimum(np.searchsorted(sorted_keys, key), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == key, order[at] % m, -1)

    return find


def _zero_bins(target: np.ndarray, zero: np.ndarray, slots: np.ndarray, values: np.ndarray,
               fold: np.ndarray | None, featsel: np.ndarray | None, stored: np.ndarray
               ) -> None:
    """Each (feature position, slot)'s bin of 0 in ``target``: plus the slot's total
    less what the feature's bins hold (the rows whose code was not stored); exactly the
    total where no row's was (the sum a dense pass makes, in the same order), nothing
    where every row's was (no rounding left over)."""
    m, n_slots, _, width = target.shape
    totals = np.zeros((n_slots, width))
    if fold is not None:
        totals[...] = np.bincount(slots * width + fold, weights=values[:, 0].astype(np.float64),
                                  minlength=n_slots * width).reshape(n_slots, width)
    else:
        for c in range(width):
            totals[:, c] = np.bincount(slots, weights=values[:, c], minlength=n_slots)
    rest = totals[None, :, :] - target.sum(axis=2, dtype=np.float64)
    rows = np.bincount(slots, minlength=n_slots)
    rest = np.where((stored == 0)[:, :, None], totals[None, :, :], rest)
    rest[stored == rows[None, :]] = 0.0
    bins = zero[:m, None] if featsel is None else zero[featsel].T
    position, slot = np.indices((m, n_slots))
    bins = np.broadcast_to(bins, (m, n_slots))
    if target.dtype.kind == "u":  # counts: whole numbers, the rest never below 0
        target[position, slot, bins] += np.rint(rest).astype(target.dtype)
    else:
        target[position, slot, bins] += rest
