"""deduplicate: one row per key, the latest (or earliest) by an order column, the same
row whatever the partitioning; exact duplicates without keys; clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from operators.base import MissingColumnError, ParamError, SchemaError
from operators.features.deduplicate import Deduplicate
from operators.sparse import from_csr, sparse_field, sparse_names
from operators.testing.cases.features import updates_table
from operators.testing.kit import shuffled, split


def dedupe(table: pa.Table, parts: int = 6, places: int = 3, seed: int = 2,
           **params) -> pd.DataFrame:
    op = Deduplicate(**params)
    return shuffled(op, split(table, parts, seed), places, seed).to_pandas()


@pytest.mark.parametrize("keep", ["last", "first"])
def test_each_key_keeps_a_row_of_its_extreme_order(keep: str) -> None:
    table = updates_table(2000)
    got = dedupe(table, by=["customer"], order="version", keep=keep)
    df = table.to_pandas()
    assert got["customer"].isna().sum() == 1  # null is a key
    assert len(got) == df["customer"].nunique(dropna=False)
    extreme = df.groupby("customer", dropna=False)["version"].agg(
        "max" if keep == "last" else "min")
    for row in got.itertuples():
        best = extreme.loc[row.customer] if not pd.isna(row.customer) else extreme.loc[np.nan]
        assert (pd.isna(best) and pd.isna(row.version)) or row.version == best
    # a kept row is one of the input's rows, whole (ids are unique but for repeated rows)
    by_id = df.drop_duplicates("id").set_index("id")
    for column in ("customer", "version", "x", "plan", "ts"):
        want = by_id.loc[got["id"], column].to_numpy()
        have = got[column].to_numpy()
        same = [(pd.isna(a) and pd.isna(b)) or a == b for a, b in zip(have, want)]
        assert all(same), column


def test_ties_keep_the_same_row_whatever_the_partitioning_and_order() -> None:
    table = pa.table({"k": [1, 1, 1, 2, 2], "version": [3, 3, 1, None, None],
                      "note": ["b", "a", "c", "x", "y"]})
    outcomes = set()
    for seed in range(8):
        shuffled_rows = table.take(np.random.default_rng(seed).permutation(5))
        got = dedupe(shuffled_rows, parts=5, places=2, seed=seed, by=["k"], order="version")
        outcomes.add(tuple(got.sort_values("k")["note"]))
    assert len(outcomes) == 1
    (notes,) = outcomes
    assert notes[0] in ("a", "b") and notes[1] in ("x", "y")  # the versions' ties


def test_without_keys_rows_equal_in_every_column_are_one() -> None:
    table = updates_table(800)
    got = dedupe(table)
    df = table.to_pandas()
    df["region"] = df["region"].astype(str)
    assert len(got) == len(df.drop_duplicates()) < len(df)


def test_mistakes_are_named() -> None:
    with pytest.raises(ParamError, match="keep: first or last by what"):
        Deduplicate(by=["k"], keep="first")
    schema = pa.schema({"k": pa.int64(), "tags": pa.list_(pa.string()),
                        "when": pa.duration("s")})
    with pytest.raises(SchemaError, match="order: 'when' is duration"):
        Deduplicate(by=["k"], order="when").output_schema(schema)
    with pytest.raises(SchemaError, match="by: 'tags' is list"):
        Deduplicate().output_schema(schema)
    with pytest.raises(SchemaError, match="by: 'half' is halffloat.*cast 'half' to float32"):
        Deduplicate(by=["half"]).output_schema(schema.append(pa.field("half", pa.float16())))
    with pytest.raises(MissingColumnError, match="'versoin'.*'version'"):
        Deduplicate(by=["k"], order="versoin").output_schema(
            pa.schema({"k": pa.int64(), "version": pa.int64()}))


def test_a_nan_order_is_no_order_whatever_the_partitioning() -> None:
    """NaN orders lose to any number, as nulls do: a key of NaN and null orders keeps one
    of its rows, the same one however its rows are split (Arrow's max skips NaN, and a
    comparison with NaN is never true: such a key kept no row)."""
    nan = float("nan")
    table = pa.table({"k": [1, 1, 2, 2, 3, 3], "o": [nan, nan, nan, None, nan, 2.0],
                      "v": [1, 2, 3, 4, 5, 6]})
    outcomes = set()
    for parts in (1, 2, 6):
        got = dedupe(table, parts=parts, places=2, by=["k"], order="o")
        outcomes.add(tuple(got.sort_values("k")["v"]))
    assert len(outcomes) == 1
    (kept,) = outcomes
    assert kept[0] in (1, 2) and kept[1] in (3, 4) and kept[2] == 6


def test_the_kept_row_of_a_tie_is_the_same_when_rows_differ_by_the_sign_of_a_zero() -> None:
    """Two rows of one key and order that differ only in -0.0 against 0.0: the same one
    is kept whatever the cut (the row hash that breaks ties tells them apart)."""
    from operators.base import lookup

    table = pa.table({"k": [1, 1, 2, 2], "v": [5, 5, 7, 7], "x": [0.0, -0.0, -0.0, 0.0]})
    cls = lookup("deduplicate")
    op = cls(cls.Params(by=["k"], order="v"))
    kept = {}
    for seed in range(6):
        got = shuffled(op, split(table, 4, seed), 2, seed).sort_by("k")
        kept.setdefault(tuple(np.signbit(got["x"].to_numpy())), []).append(seed)
    assert len(kept) == 1, kept


def test_a_sparse_term_column_keeps_its_terms() -> None:
    """A column's field metadata (a sparse column's terms: a model reads them as its
    features) passes through, in the planned schema and in the rows."""
    field = sparse_field("words", 3, ["late", "parcel", "refund"])
    words = from_csr(np.array([0, 1, 3, 3]), np.array([2, 0, 1]), np.array([1.0, 2.0, 1.0]))
    table = pa.Table.from_arrays([pa.array([1, 1, 2]), words],
                                 schema=pa.schema([pa.field("id", pa.int64()), field]))
    op = Deduplicate(by=["id"])
    assert op.output_schema(table.schema).field("words").equals(field, check_metadata=True)
    got = shuffled(op, split(table, 2, 0), 2, 0)
    assert got.schema.field("words").equals(field, check_metadata=True)
    assert sparse_names(got.schema.field("words")) == ["words:late", "words:parcel",
                                                       "words:refund"]
