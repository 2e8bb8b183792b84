"""Deterministic hashes of values and rows: randomness tied to row content, not to
partitioning or engine (validation splits, bootstrap weights, hash encoding).

A value's hash depends only on the value and the seed: integers (any width),
booleans, dates and timestamps hash by their integer value, floats by their
float64 bits (-0.0 as 0.0, one NaN), strings and binaries by their bytes (BLAKE2b),
nulls by a fixed constant.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.sparse import is_sparse_type

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6A09E667F3BCC909)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NAN_BITS = np.array([np.nan]).view(np.uint64)[0]


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (a bijection that spreads bits)."""
    return _mix_in_place(np.array(x, dtype=np.uint64, copy=True))


def _mix_in_place(x: np.ndarray, spare: np.ndarray | None = None) -> np.ndarray:
    """``mix`` of a uint64 array, written over it; ``spare``: a buffer of its shape
    (one temporary for the three shifts, where the expression form makes five)."""
    spare = np.empty_like(x) if spare is None else spare
    with np.errstate(over="ignore"):
        for shift, factor in ((30, _M1), (27, _M2), (31, None)):
            np.right_shift(x, np.uint64(shift), out=spare)
            x ^= spare
            if factor is not None:
                x *= factor
    return x


def _bytes_hash(values: list[bytes | str | None], seed: int) -> np.ndarray:
    key = seed.to_bytes(8, "little", signed=True)
    out = np.empty(len(values), dtype=np.uint64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = _NULL
            continue
        data = v.encode() if isinstance(v, str) else v
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "little")
    return out


def hash_column(column: pa.Array | pa.ChunkedArray, seed: int = 0,
                spare: np.ndarray | None = None) -> np.ndarray:
    """One uint64 per value, depending only on the value and ``seed`` (``spare``: a
    uint64 scratch buffer of the column's length, where the caller has one)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    n = len(column)
    if pa.types.is_dictionary(t):
        return hash_column(column.dictionary_decode(), seed)
    if is_sparse_type(t):
        return _sparse_hash(column, seed)
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_string_view(t)):
        encoded = pc.dictionary_encode(column)
        uniques = _bytes_hash(encoded.dictionary.to_pylist(), seed)
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
        out = np.full(n, _NULL, dtype=np.uint64)
        out[valid] = uniques[idx[valid].astype(np.int64)]
        return out
    if pa.types.is_floating(t):
        values = pc.cast(column, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        bits = np.add(values, 0.0).view(np.uint64)  # -0.0 + 0.0 is 0.0; the rest as is
        nan = np.isnan(values)
        if nan.any():
            bits[nan] = _NAN_BITS
    elif (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t)
          or pa.types.is_decimal(t)):
        if pa.types.is_temporal(t):
            as_int = column.view(pa.int64()) if t.bit_width == 64 else pc.cast(
                column.view(pa.int32()), pa.int64())
        elif pa.types.is_decimal(t):
            return _bytes_hash([None if v is None else str(v) for v in column.to_pylist()], seed)
        elif pa.types.is_uint64(t):  # the same bits as int64 (values past 2**63 too)
            as_int = column.view(pa.int64())
        else:
            as_int = pc.cast(column, pa.int64())
        bits = as_int.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).view(
            np.uint64)
    else:
        return _bytes_hash([None if v is None else repr(v) for v in column.to_pylist()], seed)
    with np.errstate(over="ignore"):
        salt = mix(np.array([seed], dtype=np.int64).view(np.uint64) + _GOLDEN)
    out = bits  # a copy of the values' bits either way: mixed where it is
    out ^= salt
    _mix_in_place(out, spare)
    if column.null_count:
        out[np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)] = _NULL
    return out


def _sparse_hash(column: pa.Array, seed: int) -> np.ndarray:
    """``hash_column`` of a sparse term column (``operators.sparse``): each row's
    positions and values, in order, over all rows at once (a Python ``repr`` of each
    row took half a minute for 200,000 rows, every pass of a fit that holds rows out);
    list and large_list alike."""
    n = len(column)
    out = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, lists in enumerate(column.flatten()):  # the struct's nulls on both
            lengths = pc.list_value_length(lists).fill_null(0).to_numpy(
                zero_copy_only=False).astype(np.int64)
            items = hash_column(lists.flatten(), seed)  # int or float: vectorised
            starts = np.cumsum(lengths) - lengths
            place = np.arange(len(items), dtype=np.int64) - np.repeat(starts, lengths)
            items += (place.astype(np.uint64) + np.uint64(1)) * _GOLDEN
            _mix_in_place(items)
            sums = np.zeros(n, dtype=np.uint64)
            filled = lengths > 0
            if filled.any():
                sums[filled] = np.add.reduceat(items, starts[filled])
            sums += (lengths.astype(np.uint64) + np.uint64(j + 1)) * _GOLDEN
            out ^= _mix_in_place(sums)
            _mix_in_place(out)
    if column.null_count:
        out[np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)] = _NULL
    return out


_FNV_BASIS = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def text_hash(column: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """FNV-1a of each string's (or binary's) bytes, mixed, vectorised over the column
    (one NumPy pass a byte position, not a Python call a value); None for other types.
    Not ``hash_column``'s hash: for spreading rows (a shuffle's buckets), never for the
    row hashes models and samples are tied to."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        width = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        width = np.int64
    else:
        return None
    n = len(column)
    out = np.full(n, _FNV_BASIS, dtype=np.uint64)
    if n:
        buffers = column.buffers()
        offsets = np.frombuffer(buffers[1], dtype=width)[column.offset:column.offset + n + 1]
        data = (np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None
                else np.zeros(0, dtype=np.uint8))
        starts = offsets[:-1].astype(np.int64)
        lengths = np.diff(offsets).astype(np.int64)
        live = np.flatnonzero(lengths > 0)
        with np.errstate(over="ignore"):
            for i in range(int(lengths.max(initial=0))):
                live = live[lengths[live] > i]
                out[live] ^= data[starts[live] + i].astype(np.uint64)
                out[live] *= _FNV_PRIME
    out = _mix_in_place(out)
    if column.null_count:
        out[np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)] = _NULL
    return out


def hash_rows(table: pa.Table, columns: list[str] | None = None, seed: int = 0,
              fast_text: bool = False) -> np.ndarray:
    """One uint64 per row from the values of ``columns`` (default: all), in order;
    ``fast_text``: strings by ``text_hash`` (to spread rows, not to tie anything to)."""
    names = table.column_names if columns is None else columns
    h = np.full(table.num_rows, mix(np.array([seed + 1], dtype=np.uint64))[0], dtype=np.uint64)
    spare = np.empty_like(h)
    with np.errstate(over="ignore"):
        for i, name in enumerate(names):
            hashed = text_hash(table.column(name)) if fast_text else None
            if hashed is None:
                hashed = hash_column(table.column(name), seed, spare)
            hashed += np.uint64(i + 1) * _GOLDEN
            h ^= hashed
            _mix_in_place(h, spare)
    return h


def content_hash(table: pa.Table, seed: int) -> np.ndarray:
    """One uint64 per row from all its values, that only rows alike in every column
    share: as ``hash_rows``, which takes -0.0 as 0.0 (as keys compare), with a mark of
    its own for each float column holding -0.0 (the order of ties: two rows that differ
    there are not copies, whose order would not matter)."""
    h = hash_rows(table, None, seed)
    with np.errstate(over="ignore"):
        for i, column in enumerate(table.columns):
            if pa.types.is_float32(column.type) or pa.types.is_float64(column.type):
                x = column.to_numpy(zero_copy_only=False)
                negative_zero = np.signbit(x) & (x == 0)
                if negative_zero.any():
                    mark = mix(np.array([seed + i + 1], dtype=np.uint64))[0]
                    h = h ^ np.where(negative_zero, mark, np.uint64(0))
    return h


def salted_keys(hashes: np.ndarray, salt: int, out: np.ndarray | None = None,
                spare: np.ndarray | None = None) -> np.ndarray:
    """One uint64 per row hash for each ``salt`` (a tree's draw): ``mix(hashes ^
    mix(salt))``, the stream whose top 53 bits ``trees.derived_uniform`` makes its
    uniforms of; ordered as those (ties finer), written into ``out`` (and ``spare``:
    scratch of the same shape) where the caller has buffers, no temporaries."""
    salted = mix(np.array([salt], dtype=np.uint64))[0]
    out = np.empty_like(hashes) if out is None else out
    np.bitwise_xor(hashes, salted, out=out)
    return _mix_in_place(out, spare)


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Hashes as float64 uniformly spread over [0, 1)."""
    return (hashes >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def positions(table: pa.Table, seed: int, columns: list[str] | None = None) -> np.ndarray:
    """Each row's place in [0, 1): the hash of its ``columns`` (default: all) and
    ``seed``."""
    return unit_interval(hash_rows(table, columns, seed))


def chosen_rows(table: pa.Table, fraction: float, seed: int,
                columns: list[str] | None = None, start: float = 0.0) -> np.ndarray:
    """True for about ``fraction`` of the rows: those whose place (``positions``) falls
    in [start, start + fraction) (the validation hold-out, a cross-validation fold,
    ``sample``)."""
    return window(positions(table, seed, columns), fraction, start)


def window(position: np.ndarray, fraction: float, start: float = 0.0) -> np.ndarray:
    """True where ``position`` (in [0, 1)) falls in [start, start + fraction)."""
    if start == 0:
        return position < fraction
    return (position >= start) & (position < start + fraction)


_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _scramble(k: np.ndarray) -> np.ndarray:
    return _rotl(k * _C1, 15) * _C2


def murmur3_32(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """MurmurHash3 x86 32-bit of each string's UTF-8 bytes (uint32; a null hashes as the
    empty string): scikit-learn's ``murmurhash3_32`` (seed 0 in its HashingVectorizer)
    and Spark's ``Murmur3_x86_32.hashUnsafeBytes2`` (seed 42 in MLlib's HashingTF), all
    strings at once, a 4-byte block a step."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.large_string()) if not pa.types.is_large_string(values.type) \
        else values
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + n + 1]
    data = values.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if values.null_count:
        lengths = np.where(values.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    h = np.full(n, seed & 0xFFFFFFFF, np.uint32)

    def byte(at: np.ndarray) -> np.ndarray:
        return raw[at].astype(np.uint32)

    blocks = lengths // 4
    # the strings by their blocks, most first: step b works on those still running (a
    # prefix), so one long string costs its own blocks, not every string's
    longest = np.argsort(-blocks, kind="stable")
    running = np.searchsorted(-blocks[longest], -np.arange(int(blocks.max()) if n else 0),
                              side="left")
    for b, count in enumerate(running):
        rows = longest[:count]
        at = starts[rows] + 4 * b
        k = byte(at) | byte(at + 1) << np.uint32(8) | byte(at + 2) << np.uint32(16) \
            | byte(at + 3) << np.uint32(24)
        x = _rotl(h[rows] ^ _scramble(k), 13)
        h[rows] = x * np.uint32(5) + np.uint32(0xE6546B64)
    tail = lengths & 3
    rows = np.flatnonzero(tail)
    if len(rows):
        at = starts[rows] + 4 * blocks[rows]
        k = np.zeros(len(rows), np.uint32)
        for i in (2, 1, 0):
            has = tail[rows] > i
            k[has] ^= byte(at[has] + i) << np.uint32(8 * i)
        h[rows] ^= _scramble(k)
    h ^= lengths.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h
