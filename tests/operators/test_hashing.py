"""Hashes of values and rows (``operators.hashing``): the numbers themselves are a
contract. Hold-out splits, bootstrap counts, subsamples, bin samples and hash encoding
all derive from them, so a change of any value here changes every model trained with a
hold-out or a seed; these were computed by the first version and must not move."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pytest
from conftest import lines_run

from operators.base import ParamError
from operators.hashing import hash_column, hash_rows, mix
from operators.models import common
from operators.models.common import split_rows
from operators.sparse import from_csr, sparse_type

ROWS = {
    0: [
        11725382082979160766, 151180662756038081, 9932418396926428370,
        204942035580211684, 17215921386595417085, 14519177934641982112,
        16414804956702287827, 13252108662852493475,
    ],
    7: [
        2224378855761724773, 1346660303446167931, 17498598100302345844,
        13218679399817370770, 9644220012027494372, 10371061651280382196,
        16143206729830178925, 4793402115335438508,
    ],
}
COLUMNS = {
    "f": [
        15474746157786732217, 15474746157786732217, 3328791188098574381,
        7640891576956012809, 13667554082332069926, 5727998916833555093,
        4713867205906421101, 10863791524748755917,
    ],
    "g": [
        991579890906427441, 12374897427768901914, 7640891576956012809,
        15474746157786732217, 3298247157346588151, 7079658974828480551,
        7889019837628906235, 13667554082332069926,
    ],
    "i": [
        15474746157786732217, 12829775716370249571, 3387641458074945810,
        7640891576956012809, 6480866302467822589, 92374782809612671,
        9070648369610446970, 17374504100766670266,
    ],
    "s": [
        12306885336155590709, 15984574750479625493, 7640891576956012809,
        11975716265168276695, 12306885336155590709, 4572569125843619615,
        3933710485265604293, 6423891878849703250,
    ],
    "b": [
        13460325667611053546, 15474746157786732217, 7640891576956012809,
        13460325667611053546, 13460325667611053546, 15474746157786732217,
        15474746157786732217, 13460325667611053546,
    ],
    "t": [
        2351582800863309768, 7640891576956012809, 17066659319595215544,
        17557401448520823362, 4013402692273808822, 3477200417595842233,
        15368802048372847312, 3220855130831284342,
    ],
    "d": [
        15845680303652373797, 469255515867386025, 15845680303652373797,
        7640891576956012809, 469255515867386025, 15845680303652373797,
        6356078082990741989, 6356078082990741989,
    ],
}


def table() -> pa.Table:
    """Every kind of value: -0.0, NaN, infinities and nulls among floats of both
    widths, large and negative integers, strings (empty, non-ASCII), booleans,
    timestamps and a dictionary column."""
    return pa.table({
        "f": pa.array([0.0, -0.0, 1.5, None, float("nan"), float("inf"), -2.25e300, 3.0],
                      pa.float64()),
        "g": pa.array([1.0, 2.0, None, -0.0, 5.5, float("-inf"), 7.0, float("nan")],
                      pa.float32()),
        "i": pa.array([0, -1, 2**40, None, 7, 8, -9, 10], pa.int64()),
        "s": pa.array(["a", "", None, "churn", "a", "\u00e9", "b", "c"]),
        "b": pa.array([True, False, None, True, True, False, False, True]),
        "t": pa.array([datetime.datetime(2026, 11, 29, 9, 30), None]
                      + [datetime.datetime(2020, 1, k) for k in range(1, 7)],
                      pa.timestamp("us")),
        "d": pa.array(["x", "y", "x", None, "y", "x", "z", "z"]).dictionary_encode(),
    })


@pytest.mark.parametrize("seed", sorted(ROWS))
def test_row_hashes_are_the_first_versions(seed: int) -> None:
    assert hash_rows(table(), None, seed).tolist() == ROWS[seed]


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_value_hashes_are_the_first_versions(name: str) -> None:
    column = table().column(name)
    assert hash_column(column, 3).tolist() == COLUMNS[name]
    # one chunk or several, the same hashes
    chunked = pa.chunked_array([column.combine_chunks().slice(0, 3),
                                column.combine_chunks().slice(3)])
    assert hash_column(chunked, 3).tolist() == COLUMNS[name]


def test_zero_and_nan_hash_one_way() -> None:
    values = pa.array([0.0, -0.0, float("nan"), -float("nan"),
                       np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), np.float64)[0]])
    hashed = hash_column(values)
    assert hashed[0] == hashed[1] and hashed[2] == hashed[3] == hashed[4]
    assert hashed[0] != hashed[2]


def test_mix_leaves_its_input_alone() -> None:
    x = np.arange(5, dtype=np.uint64)
    mixed = mix(x)
    assert x.tolist() == list(range(5)) and mixed.tolist() != x.tolist()


def test_a_tables_holdout_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass of a multi-pass fit splits the same table: its rows are hashed once
    (per fraction and seed), and the kept mask cannot be changed by a caller."""
    calls = []
    real = common.chosen_rows
    monkeypatch.setattr(common, "chosen_rows",
                        lambda *args, **kw: calls.append(args) or real(*args, **kw))
    part = pa.table({"x": np.arange(1000.0), "y": np.arange(1000) % 2})
    first = split_rows(part, 0.25, 0)
    again = split_rows(part, 0.25, 0)
    assert len(calls) == 1
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    assert 150 < first[1].num_rows < 350
    other = split_rows(part, 0.25, 1)
    assert len(calls) == 2 and not other[1].equals(first[1])
    # an equal table that is another object is hashed again, to the same split
    assert split_rows(pa.table(part.columns, names=part.column_names), 0.25, 0)[1].equals(
        first[1])
    assert len(calls) == 3
    mask = common.holdout_mask(part, 0.25, 0)
    with pytest.raises(ValueError):
        mask[0] = not mask[0]


def test_folds_of_the_hash_order_split_the_rows_in_k() -> None:
    """validation_start: the held-out windows [i/k, (i+1)/k) of k folds are disjoint and
    together every row (tune_folds' cross-validation)."""
    from operators.models.common import SupervisedParams, held_out

    part = pa.table({"a": np.arange(5000), "b": np.arange(5000) % 7})
    k = 4
    masks = [common.holdout_mask(part, 1 / k, 3, i / k) for i in range(k)]
    assert np.all(np.sum(masks, axis=0) == 1)
    assert all(900 < m.sum() < 1600 for m in masks)
    assert np.array_equal(masks[0], common.holdout_mask(part, 1 / k, 3))
    params = SupervisedParams(label="a", validation_fraction=0.25, validation_start=0.5, seed=3)
    assert held_out(part, params)[1].num_rows == masks[2].sum()
    with pytest.raises(ParamError, match="validation_start 0.8 \\+ validation_fraction 0.3 "
                                         "is over 1"):
        SupervisedParams(label="a", validation_fraction=0.3, validation_start=0.8)


def test_text_hash_is_the_bytes_hash_whatever_the_layout() -> None:
    """A shuffle's buckets: the same hash for the same bytes in string, large_string or
    binary, sliced or chunked; null apart from ''; spread evenly."""
    from operators.hashing import text_hash

    values = ["a", None, "", "abc", "ab", "größe", "x" * 300]
    plain = text_hash(pa.array(values))
    assert plain is not None and len(set(plain.tolist())) == len(values)
    for other in (pa.array(values, pa.large_string()),
                  pa.array([None if v is None else v.encode() for v in values], pa.binary()),
                  pa.chunked_array([pa.array(values[:3]), pa.array(values[3:])])):
        np.testing.assert_array_equal(text_hash(other), plain)
    longer = pa.array(["zz", *values])
    np.testing.assert_array_equal(text_hash(longer.slice(1)), plain)
    assert text_hash(pa.array([1, 2])) is None
    spread = text_hash(pa.array([f"customer-{i}" for i in range(64_000)])) % np.uint64(16)
    counts = np.bincount(spread.astype(np.int64), minlength=16)
    assert counts.min() > 3_600 and counts.max() < 4_400


def test_uint64_values_past_int64_hash_as_their_bits() -> None:
    from operators.hashing import hash_column

    big = pa.array([2**64 - 1, 5, None], pa.uint64())
    hashed = hash_column(big)
    np.testing.assert_array_equal(hashed[1:], hash_column(pa.array([5, None], pa.int64())))
    assert hashed[0] == hash_column(pa.array([-1], pa.int64()))[0]


def test_a_sparse_term_column_hashes_by_its_values_at_a_float_columns_pace() -> None:
    """A sparse column (a row hash for validation_fraction, sample, deduplicate): the
    same hash for the same positions and values however the column is sliced, chunked or
    typed (large lists after Parquet or Spark), another for another order or value; and
    all rows at once (each row's Python repr before: hundreds of times a float column of
    its values, every pass of a fit that holds rows out)."""
    rows = [{"indices": [0, 1], "values": [1.0, 2.0]}, {"indices": [1, 0], "values": [1.0, 2.0]},
            {"indices": [0, 1], "values": [2.0, 1.0]}, {"indices": [], "values": []}, None,
            {"indices": [0], "values": [1.0]}, {"indices": [1], "values": [1.0]},
            {"indices": [0, 1], "values": [1.0, 2.0]}]
    column = pa.array(rows, sparse_type())
    hashed = hash_column(column, 0)
    assert len(set(hashed[:7].tolist())) == 7 and hashed[0] == hashed[7]
    assert hash_column(column, 1)[0] != hashed[0]
    large = column.cast(pa.struct([pa.field("indices", pa.large_list(pa.int64())),
                                   pa.field("values", pa.large_list(pa.float64()))]))
    np.testing.assert_array_equal(hash_column(large, 0), hashed)
    np.testing.assert_array_equal(hash_column(column.slice(2), 0), hashed[2:])
    np.testing.assert_array_equal(
        hash_column(pa.chunked_array([column.slice(0, 3), column.slice(3)]), 0), hashed)

    # no Python step a row: the lines Python runs hashing 20,000 rows counted (a test
    # asserts no speed; bench/ measures it)
    n, k = 20_000, 20
    values = np.random.default_rng(0).random(n * k)
    terms = from_csr(np.arange(0, n * k + 1, k), np.tile(np.arange(k), n), values)
    lines = lines_run(lambda: hash_column(terms, 0))
    assert 0 < lines < 2_000, lines
