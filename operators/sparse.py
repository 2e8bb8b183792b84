"""Sparse feature columns: many numeric features in one column, only the non-zeros kept.

A text's term weights are mostly zeros: 2,000 terms where a row has a dozen. As a float64
column per term a row takes 16 KB where its text took a hundred bytes; scikit-learn's
``CountVectorizer`` returns a sparse matrix and MLlib's a ``SparseVector`` for that reason.
sluice's sparse column is Arrow's CSR layout of one row's vector:

    struct<indices: list<int32>, values: list<float64>>

the positions of a row's non-zeros (ascending) and their values (Spark's ``SparseVector``
without its per-row size). The field's metadata (``sluice.sparse``) says how many
positions there are and their names (terms); the features a model reads of column
``words`` are named ``words:<term>`` (``words:#<i>`` where terms are hashed), in position
order, as the dense columns are. Those names are the model's feature names (in
``model.json``, contributions, ``runs show``); the data keeps one column.

A model that reads such a column (naive_bayes, logistic_regression, linear_regression,
kmeans, decision_tree, random_forest, gradient_boosted_trees, mlp, isolation_forest;
evaluate_clusters, select_features and pca too) takes it whole: its features are the
column's positions, in order.
Where it can, a model computes on the CSR matrix itself (SciPy's ``csr_matrix``: NumPy on
the CPU; the trees on the bin codes of the stored entries, ``models/sparse_codes.py``, an
absent entry the value 0 as scikit-learn's trees read it); elsewhere (a GPU, the
``array_api_strict`` stand-in, a Python without SciPy) a partition's rows are made dense
in the model's matrix as they are read, never as columns of the table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import DataError, SchemaError

META = b"sluice.sparse"
"""The field metadata key of a sparse column: JSON ``{"size": n, "terms": [...] | null}``."""


def sparse_type() -> pa.DataType:
    """The Arrow type of a sparse column."""
    return pa.struct([pa.field("indices", pa.list_(pa.int32())),
                      pa.field("values", pa.list_(pa.float64()))])


def is_sparse_type(t: pa.DataType) -> bool:
    """Whether ``t`` is a sparse column's type (as written, or read back from Parquet or
    Spark, which may make the lists large)."""
    if not pa.types.is_struct(t) or t.num_fields != 2:
        return False
    names = {t.field(i).name: t.field(i).type for i in range(2)}
    lists = (pa.types.is_list, pa.types.is_large_list)
    index, value = names.get("indices"), names.get("values")
    return (index is not None and value is not None
            and any(test(index) for test in lists) and any(test(value) for test in lists)
            and pa.types.is_integer(index.value_type)
            and pa.types.is_floating(value.value_type))


def sparse_field(name: str, size: int, terms: list[str] | None) -> pa.Field:
    """A sparse column's field: ``size`` positions, named by ``terms`` (None: hashed
    positions ``#0 ... #size-1``)."""
    meta = json.dumps({"size": size, "terms": terms}, ensure_ascii=False)
    return pa.field(name, sparse_type(), metadata={META: meta.encode()})


def pending_field(name: str) -> pa.Field:
    """A sparse column's field before its step is fitted: its terms are not known yet
    (``sparse_names`` None), as ``terms_lost`` tells apart from a field that lost them."""
    return pa.field(name, sparse_type(), metadata={META: b'{"size": null, "terms": null}'})


def terms_lost(field: pa.Field) -> bool:
    """Whether ``field`` is a sparse column's type without the metadata naming its
    positions (a file another tool wrote, an operator that dropped the field's
    metadata): a model cannot name the features it reads."""
    return (is_sparse_type(field.type)
            and (not field.metadata or META not in field.metadata))


def sparse_names(field: pa.Field) -> list[str] | None:
    """The feature names of a sparse column's positions (``<column>:<term>``), or None
    where ``field`` is no sparse column that says its size (its step not fitted yet, or
    a struct of this shape whose metadata was lost on the way: an engine that keeps no
    field metadata)."""
    if not is_sparse_type(field.type) or not field.metadata or META not in field.metadata:
        return None
    meta = json.loads(field.metadata[META])
    if meta.get("size") is None:
        return None
    terms = meta.get("terms")
    if terms is None:
        return [f"{field.name}:#{i}" for i in range(int(meta["size"]))]
    return [f"{field.name}:{t}" for t in terms]


def expand(schema: pa.Schema, features: list[str]) -> list[str]:
    """``features`` with each sparse column (of ``schema``) as its positions' names, in
    order; a SchemaError where a listed name is one position of a sparse column (a model
    reads such a column whole)."""
    out: list[str] = []
    columns = set(schema.names)
    for name in features:
        i = schema.get_field_index(name)
        names = sparse_names(schema.field(i)) if i >= 0 else None
        if i >= 0 and terms_lost(schema.field(i)):
            raise SchemaError(
                f"sparse column '{name}' does not name its terms: its field has no "
                f"'{META.decode()}' metadata (the terms vectorize_text found), so a model "
                "cannot name the features it reads",
                hint="make the column with vectorize_text (sparse: true) in this pipeline, "
                     "before the model, or read it from a Parquet file sluice wrote (Arrow "
                     "field metadata kept)")
        if names is not None:
            clash = next((n for n in names if n in columns), None)
            if clash is not None:  # a model's features name one thing each
                raise SchemaError(
                    f"feature '{clash}' of the sparse column '{name}' (its term "
                    f"'{clash[len(name) + 1:]}') is also the name of a column",
                    hint=f"rename the column '{clash}' (rename), or drop it")
            out.extend(names)
            continue
        if i < 0:
            owner = _owner(schema, name)
            if owner is not None:
                raise SchemaError(
                    f"feature '{name}' is one position of the sparse column '{owner}'",
                    hint=f"list the column '{owner}' (a model reads all of its terms), or "
                         "make its terms columns (vectorize_text without sparse: true) to "
                         "pick some")
        out.append(name)
    if len(set(out)) < len(out):  # two sparse columns naming one feature (a:x's q, a's x:q)
        twice = next(n for n, count in Counter(out).items() if count > 1)
        raise SchemaError(f"two of the features are named '{twice}' (the terms of two "
                          "sparse columns, or a column listed twice)",
                          hint="rename one of the columns (rename) before the text step, so "
                               "that their terms' names differ")
    return out


def _owner(schema: pa.Schema, name: str) -> str | None:
    """The sparse column of ``schema`` whose positions' names include ``name``."""
    for field in schema:
        names = sparse_names(field)
        if names is not None and name.startswith(field.name + ":") and name in names:
            return field.name
    return None


def sparse_columns(schema: pa.Schema) -> list[str]:
    """The sparse columns of ``schema`` (by their type: metadata or not)."""
    return [f.name for f in schema if is_sparse_type(f.type)]


# groups' answers by (the features list, its length, the columns, the sparse ones): a
# fitted model hands the same list for every partition and request it scores, and a
# hashed column's million positions took 0.1 s a walk, three walks a partition
_GROUPS: dict[tuple[Any, ...], tuple[list[str], tuple[tuple[str | None, int, int], ...]]] = {}
_GROUPS_HELD = 32


def groups(schema: pa.Schema, features: list[str]
           ) -> tuple[tuple[str | None, int, int], ...]:
    """``features`` as runs over the columns a table has: ``(None, j, j + 1)`` for a
    feature that is a column, ``(column, start, stop)`` for a sparse column's positions
    ``features[start:stop]`` (a name not a column, prefixed ``<column>:`` of a sparse
    column of ``schema``). Found by name and type alone: an engine may lose the field
    metadata between steps. A name found nowhere is ``(None, j, j + 1)`` (the caller's
    missing-column error names it). Remembered for the same list object (of the same
    length) over the same columns: a list is not changed once a step holds it."""
    present = tuple(schema.names)
    sparse = tuple(sparse_columns(schema))
    key = (id(features), len(features), present, sparse)
    held = _GROUPS.get(key)
    if held is not None and held[0] is features:
        return held[1]
    found = tuple(_groups(features, set(present), set(sparse)))
    if len(_GROUPS) >= _GROUPS_HELD:
        _GROUPS.clear()
    _GROUPS[key] = (features, found)  # the list held: its id is not another's meanwhile
    return found


def _groups(features: list[str], present: set[str], sparse: set[str]
            ) -> list[tuple[str | None, int, int]]:
    """``groups`` of ``features`` over the ``present`` columns, ``sparse`` of them sparse."""
    out: list[tuple[str | None, int, int]] = []
    j = 0
    while j < len(features):
        name = features[j]
        owner = None if name in present else owner_of(name, sparse)
        if owner is None:
            out.append((None, j, j + 1))
            j += 1
            continue
        stop = _run_end(features, j, owner, present, sparse)
        out.append((owner, j, stop))
        j = stop
    return out


def _run_end(features: list[str], j: int, owner: str, present: set[str],
             sparse: set[str]) -> int:
    """Where the run of ``owner``'s positions that starts at ``features[j]`` ends: at
    the first name not prefixed ``<owner>:`` (a column, or another sparse column's).
    Found by one regular-expression scan of the names joined (a hashed column has a
    million positions: a Python step a name took a second a partition, and a request)."""
    prefix = owner + ":"
    rest = features[j + 1:]
    joined = "\n".join(rest)
    nested = any(c.startswith(prefix) for c in (present | sparse) - {owner})
    if nested or joined.count("\n") != max(len(rest) - 1, 0):  # (or names with \n)
        stop = j + 1
        while (stop < len(features) and features[stop] not in present
               and owner_of(features[stop], sparse) == owner):
            stop += 1
        return stop
    if not rest or not rest[0].startswith(prefix):
        return j + 1
    found = re.compile(r"\n(?!" + re.escape(prefix) + ")").search(joined)
    if found is None:
        return len(features)
    return j + 2 + joined.count("\n", 0, found.start())


def owner_of(name: str, sparse: Collection[str]) -> str | None:
    """The sparse column (of ``sparse``) whose prefix ``<column>:`` ``name`` has (the
    longest): the column a feature name is a position of."""
    best = None
    for column in sparse:
        if name.startswith(column + ":") and (best is None or len(column) > len(best)):
            best = column
    return best


def columns_of(schema: pa.Schema, features: list[str]) -> list[str]:
    """The table columns ``features`` read: each sparse column once, for its positions."""
    out: list[str] = []
    for column, start, _ in groups(schema, features):
        name = features[start] if column is None else column
        if name not in out:
            out.append(name)
    return out


def has_sparse(schema: pa.Schema, features: list[str]) -> bool:
    """Whether some of ``features`` are a sparse column's positions."""
    return any(column is not None for column, _, _ in groups(schema, features))


def csr_parts(column: pa.ChunkedArray | pa.Array, size: int, name: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sparse column's rows as CSR arrays ``(indptr, indices, values)`` (int64, int32,
    float64); a null row has no non-zeros. A DataError names the column where a row's
    lists differ in length, a position is outside ``[0, size)``, or a value is null, NaN
    or infinite."""
    if isinstance(column, pa.ChunkedArray):
        column = (column.chunk(0) if column.num_chunks == 1 else
                  column.combine_chunks() if column.num_chunks else
                  pa.array([], column.type))
    index_lists, value_lists = column.flatten()  # the struct's nulls on both lists
    lengths = pc.list_value_length(index_lists).fill_null(0).to_numpy(zero_copy_only=False)
    counts = pc.list_value_length(value_lists).fill_null(0).to_numpy(zero_copy_only=False)
    if not np.array_equal(lengths, counts):
        row = int(np.flatnonzero(lengths != counts)[0])
        raise DataError(f"sparse column '{name}' has {lengths[row]} positions and "
                        f"{counts[row]} values in row {row}",
                        hint="a sparse column's indices and values are of one length a row")
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = index_lists.flatten()
    values = value_lists.flatten()
    if indices.null_count or values.null_count:
        raise DataError(f"sparse column '{name}' has null positions or values",
                        hint="a sparse column keeps only its non-zeros: leave a zero out")
    at = indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    low, high = (int(at.min()), int(at.max())) if len(at) else (0, -1)
    if low < 0 or high >= size:
        bad = high if high >= size else low
        raise DataError(f"sparse column '{name}' has position {bad}, outside the {size:,} "
                        "the model was fitted with",
                        hint="score with the feature step saved with the model (its "
                             "vocabulary), not with columns made by another one")
    numbers = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if len(numbers) and not np.isfinite(numbers).all():
        raise DataError(f"sparse column '{name}' has NaN or infinite values",
                        hint="filter or fix those rows before the step")
    return indptr, at, numbers


def rows_of(indptr: np.ndarray) -> np.ndarray:
    """The row of each stored value of CSR arrays."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def indptr_of(rows: np.ndarray, n: int) -> np.ndarray:
    """CSR row offsets (int64) of stored values in ``rows`` (ascending) of ``n`` rows."""
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr


def from_csr(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> pa.Array:
    """A sparse column of CSR arrays (each row's positions ascending)."""
    offsets = pa.array(indptr.astype(np.int32, copy=False))
    return pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(indices.astype(np.int32, copy=False))),
         pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float64, copy=False)))],
        fields=list(sparse_type()))


def select_positions(column: pa.ChunkedArray, size: int, renumbered: np.ndarray, name: str
                     ) -> pa.Array:
    """A sparse column with only the positions ``renumbered`` keeps (``renumbered[p]``:
    position p's new position, -1 to drop it), in their rows."""
    indptr, at, values = csr_parts(column, size, name)
    new = renumbered[at]
    keep = new >= 0
    return from_csr(indptr_of(rows_of(indptr)[keep], len(indptr) - 1), new[keep],
                    values[keep])


def scipy_sparse() -> Any:
    """``scipy.sparse``, or None where SciPy is missing (the spark-submit archive): the
    models then make the rows dense."""
    try:
        import scipy.sparse
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return scipy.sparse


def matrix_bytes(X: Any) -> int:
    """The bytes of a dense matrix or of a SciPy CSR matrix (its values, positions and
    row offsets)."""
    if issparse(X):
        return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    return X.nbytes


def issparse(X: Any) -> bool:
    """Whether ``X`` is a SciPy sparse matrix (``csr_matrix``'s)."""
    sp = scipy_sparse()
    return sp is not None and sp.issparse(X)


def csr_matrix(part: pa.Table, features: list[str], dtype: Any = np.float64,
               hint: str | None = None, shift: np.ndarray | None = None) -> Any:
    """``features`` of ``part`` as one SciPy CSR matrix (rows, features): a sparse
    column's positions as they are, a plain column's values (checked finite by
    ``finite_column``, its error with ``hint``; less ``shift`` at its position, where
    given: a sparse column's positions are never shifted, which would make them dense)
    as a dense block made sparse. None without SciPy."""
    sp = scipy_sparse()
    if sp is None:
        return None
    from operators.models.common import FEATURE_HINT, finite_column

    blocks = []
    n = part.num_rows
    for column, start, stop in groups(part.schema, features):
        if column is None:
            values = finite_column(part.column(features[start]), f"feature column "
                                   f"'{features[start]}'", hint or FEATURE_HINT)
            if shift is not None:
                values = values - shift[start]
            blocks.append(sp.csr_matrix(values.astype(dtype, copy=False)[:, None]))
            continue
        indptr, at, numbers = csr_parts(part.column(column), stop - start, column)
        blocks.append(sp.csr_matrix((numbers.astype(dtype, copy=False), at, indptr),
                                    shape=(n, stop - start)))
    if len(blocks) == 1:
        return blocks[0]
    return sp.hstack(blocks, format="csr")


def past_memory_share(need: float) -> str | None:
    """Where ``need`` bytes are more of the memory here (``usable_memory``) than
    vectorize_text lets its term columns take, the words that say so (None where they
    are not)."""
    from operators.features import text  # (it imports this module)

    limit = text.dense_limit()
    if need <= limit:
        return None
    return (f"{need / 2**30:,.1f} GiB, over {text.MEMORY_SHARE:.0%} of the memory here "
            f"({limit / text.MEMORY_SHARE / 2**30:,.1f} GiB)")


def require_dense_room(rows: int, width: int, columns: list[tuple[str, int]]) -> None:
    """A DataError, before anything is allocated, where a partition's matrix of ``width``
    float64 columns, the sparse ``columns`` (name, terms) among them made dense, is past
    ``past_memory_share``."""
    past = past_memory_share(8.0 * rows * width)
    if past is None:
        return
    name, terms = max(columns, key=lambda c: c[1])
    raise DataError(
        f"a partition of {rows:,} rows with the {terms:,} terms of the sparse column "
        f"'{name}' made dense (this step's matrix) takes {past}",
        hint="make partitions smaller (read_parquet's partition_mb), or fewer terms "
             "(vectorize_text's max_features, num_features); on the CPU naive_bayes "
             "(multinomial, complement, bernoulli), logistic_regression with solver: "
             "lbfgs and kmeans (but for its held-out rows) read the rows as they are")


def fill_dense(out: np.ndarray, column: pa.ChunkedArray, size: int, name: str) -> None:
    """Write a sparse column's rows into ``out`` (rows, size), zeros elsewhere."""
    indptr, at, numbers = csr_parts(column, size, name)
    out[...] = 0
    rows = rows_of(indptr)
    # positions within a row are distinct as vectorize_text writes them; add duplicates
    # (a sum, as SciPy's CSR products do) only where some row repeats one
    if len(at) and _repeats(rows, at, size):
        np.add.at(out, (rows, at), numbers)
    else:
        out[rows, at] = numbers


def _repeats(rows: np.ndarray, at: np.ndarray, size: int) -> bool:
    keys = rows.astype(np.int64) * size + at
    return bool((np.diff(keys) <= 0).any()) and len(np.unique(keys)) < len(keys)
