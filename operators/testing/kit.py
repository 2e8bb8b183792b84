"""The conformance kit: one ``check_*`` per promise an operator makes.

Every registered operator has at least one ``Case`` (see ``operators/testing/cases``)
and ``tests/operators/test_conformance.py`` runs every applicable check on every
case. An operator that cannot keep a promise declares it in ``Case.skip`` with
the reason; nothing is silently left out.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import jsontext
from operators.arrays import get_namespace, transfers
from operators.base import (
    Estimator,
    Operator,
    RangedShuffle,
    Shuffle,
    Sink,
    Source,
    Transform,
    drive,
    lookup,
    lookup_fitted,
    tree_reduce,
)
from operators.evaluate.evaluate import Measuring
from operators.features.union import Union


@dataclass
class Case:
    """An operator with parameters and an input on which every promise can be checked."""

    op: str
    params: dict[str, Any]
    data: Callable[[], pa.Table]
    id: str = ""
    rtol: float = 1e-9
    atol: float = 1e-12
    skip: dict[str, str] = field(default_factory=dict)  # check name -> declared reason
    # figures of the fit (``metrics``) that may differ with the partitioning, each with
    # its declared reason: present on both sides, their values not compared
    vary: dict[str, str] = field(default_factory=dict)
    # the float32 check's tolerances (docs/float32.md): float32 compute against float64
    float32_rtol: float = 1e-4
    float32_atol: float = 1e-5
    prepare: Callable[[Operator], None] | None = None  # e.g. bind a model to `score`
    # host-to-device copies of the rows one call may make: one, or one per model an
    # operator scores with (promote's challenger and champion, each its own chain)
    copies: int = 1
    # the rows of the other steps the operator reads (``step_inputs``: a union's), by
    # step id; their schemas are bound as the plan binds them
    step_rows: dict[str, Callable[[], pa.Table]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.op}[{self.id}]" if self.id else self.op

    def build(self) -> Operator:
        cls = lookup(self.op)
        op = cls.create(cls.Params(**self.params))
        for step, rows in self.step_rows.items():
            op.bind_step_schema(step, rows().schema)
        if self.prepare is not None:
            self.prepare(op)
        return op


CASES: list[Case] = []


def case(op: str, params: dict[str, Any], data: Callable[[], pa.Table], **kwargs: Any) -> Case:
    """Declare a conformance case (called at import time of a cases module)."""
    c = Case(op, params, data, **kwargs)
    CASES.append(c)
    return c


def all_cases() -> list[Case]:
    import importlib
    import pkgutil

    from operators.testing import cases as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return list(CASES)


# --------------------------------------------------------------------------- helpers

NUMPY = get_namespace("numpy")


def split(table: pa.Table, k: int, seed: int | None = None) -> list[pa.Table]:
    """``table`` in ``k`` partitions (some may be empty); shuffled order if ``seed``."""
    bounds = np.linspace(0, table.num_rows, k + 1).astype(int)
    parts = [table.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    if seed is not None:
        random.Random(seed).shuffle(parts)
    return parts


def fit(estimator: Estimator, parts: list[pa.Table], xp: Any = NUMPY) -> Transform:
    """Fit over in-memory partitions with the same driver loop the engines use."""
    return fit_measured(estimator, parts, xp)[0]


def fit_measured(estimator: Estimator, parts: list[pa.Table], xp: Any = NUMPY
                 ) -> tuple[Transform, dict[str, Any]]:
    """``fit``, and the figures the fit reports for the run record (``metrics``: an
    evaluate step's measures, a model's passes and losses)."""
    schema = parts[0].schema

    def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, schema, aggregate)
    return estimator.fitted(state), estimator.metrics(state)


def assert_close_tree(actual: Any, expected: Any, rtol: float, atol: float,
                      what: str) -> None:
    """The same figures, nested: numbers and float arrays with tolerances (NaN equal to
    NaN), the same keys, lengths, array shapes and dtypes, anything else exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"{what}: keys {sorted(actual) if isinstance(actual, dict) else actual} != "
            f"{sorted(expected)}")
        for key in expected:
            assert_close_tree(actual[key], expected[key], rtol, atol, f"{what}['{key}']")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), (
            f"{what}: {actual} != {expected}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_tree(a, e, rtol, atol, f"{what}[{i}]")
    elif isinstance(expected, np.ndarray):
        actual = np.asarray(actual)
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
            f"{what}: {actual.dtype}{actual.shape} != {expected.dtype}{expected.shape}")
        if np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                       equal_nan=True, err_msg=what)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=what)
    elif isinstance(expected, float | np.floating) and not isinstance(actual, bool):
        assert isinstance(actual, int | float | np.number), f"{what}: {actual!r} != {expected!r}"
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=what)
    else:
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"


def roundtrip(transform: Transform) -> Transform:
    """The transform rebuilt from its saved form (JSON text + npz bytes, no pickle)."""
    meta, arrays = transform.state()
    meta = jsontext.floats_loaded(json.loads(json.dumps(jsontext.floats_saved(meta),
                                                        allow_nan=False)))
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}
    return lookup_fitted(transform.name).from_state(meta, loaded)


def assert_tables_close(actual: pa.Table, expected: pa.Table, rtol: float = 1e-9,
                        atol: float = 1e-12, what: str = "") -> None:
    """Same schema and rows; floating columns compared with tolerances."""
    prefix = f"{what}: " if what else ""
    assert actual.schema == expected.schema, (
        f"{prefix}schema differs:\n{actual.schema}\n!=\n{expected.schema}")
    assert actual.num_rows == expected.num_rows, (
        f"{prefix}{actual.num_rows} rows != {expected.num_rows}")
    for name in expected.column_names:
        _assert_columns_close(actual.column(name).combine_chunks(),
                              expected.column(name).combine_chunks(), rtol, atol,
                              f"{prefix}column '{name}'")


def _assert_columns_close(a: pa.Array, e: pa.Array, rtol: float, atol: float,
                          what: str) -> None:
    """Floating values (and lists of them) with tolerances, a struct field by field,
    anything else exactly."""
    if pa.types.is_struct(e.type):
        assert a.type == e.type and a.null_count == e.null_count, f"{what} differs"
        for i in range(e.type.num_fields):
            _assert_columns_close(a.field(i), e.field(i), rtol, atol,
                                  f"{what} field '{e.type.field(i).name}'")
    elif _is_float_like(e.type):
        an, en = _float_values(a), _float_values(e)
        assert an.shape == en.shape, f"{what} shape differs"
        np.testing.assert_allclose(an, en, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=what)
        assert a.null_count == e.null_count, f"{what}: nulls differ"
    else:
        assert a.equals(e), f"{what} differs"


def _is_float_like(t: pa.DataType) -> bool:
    if pa.types.is_floating(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or
            pa.types.is_fixed_size_list(t)) and pa.types.is_floating(t.value_type)


def _float_values(column: pa.Array) -> np.ndarray:
    if pa.types.is_floating(column.type):
        return pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column)
    return pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)


def _apply(op: Operator, parts: list[pa.Table], xp: Any = NUMPY) -> tuple[Transform, pa.Table]:
    """Fit if needed, then transform every partition and concatenate in order (a
    shuffle: every partition's partial rows, finished together)."""
    transform, out, _ = _apply_measured(op, parts, xp)
    return transform, out


def _apply_measured(op: Operator, parts: list[pa.Table], xp: Any = NUMPY
                    ) -> tuple[Transform, pa.Table, dict[str, Any]]:
    """``_apply``, and the figures the fit reports (``fit_measured``; none but a fit's)."""
    if isinstance(op, Shuffle):
        return op, op.finish(pa.concat_tables([op.partial(p) for p in parts]),
                             *side_partials(op)), {}
    transform, figures = fit_measured(op, parts, xp) if isinstance(op, Estimator) else (op, {})
    out = [transform.transform(p, xp) for p in parts]
    return transform, pa.concat_tables(out), figures


# --------------------------------------------------------------------------- checks


def check_declared_schema(c: Case) -> None:
    """output_schema(schema) is exactly the schema transform returns (also empty input)."""
    op, data = c.build(), c.data()
    transform, out = _apply(op, [data])
    fitted_declared = transform.output_schema(data.schema)
    assert out.schema == fitted_declared, (
        f"the fitted transform declared {fitted_declared}\nbut produced {out.schema}")
    if isinstance(transform, Transform):
        view = transform.training_view()
        for rows in (data, data.schema.empty_table()):  # the fitting run's: same schema
            got = view.transform(rows, NUMPY)
            assert got.schema == fitted_declared == view.output_schema(data.schema), (
                f"the training view produced {got.schema}")
    declared = op.output_schema(data.schema)
    if isinstance(op, Estimator) and op.schema_from_fit:
        # the plan-time schema is a lower bound: its columns, fitted ones added or retyped
        missing = set(declared.names) - set(out.schema.names)
        assert not missing, f"plan-time schema has {sorted(missing)}, the output does not"
    else:
        assert out.schema == declared, f"declared {declared}\nbut produced {out.schema}"
    if op.keeps_columns:  # what a plan passes on past a step of it with a problem
        assert out.schema == data.schema, (
            f"{op.name} says its columns are its input's (keeps_columns), but it made "
            f"{out.schema}")


def check_no_input_mutation(c: Case) -> None:
    """The input table is unchanged by fit and transform."""
    op, data = c.build(), c.data()
    before = pa.table({n: pa.array(data.column(n).to_pylist(), data.column(n).type)
                       for n in data.column_names}, schema=data.schema)
    transform, _ = _apply(op, [data])
    if isinstance(transform, Transform):
        transform.training_view().transform(data, NUMPY)
    assert_tables_close(data, before, 0, 0, "the operator changed its input")


def check_empty_partition(c: Case) -> None:
    """An empty partition transforms to an empty table of the declared schema, and
    (for estimators) adds nothing to a fit."""
    op, data = c.build(), c.data()
    empty = data.schema.empty_table()
    transform, whole, figures = _apply_measured(op, [data])
    out = transform.transform(empty, NUMPY)
    assert out.num_rows == 0 and out.schema == transform.output_schema(data.schema)
    if isinstance(op, Estimator):
        _, with_empty, with_empty_figures = _apply_measured(c.build(), [empty, data, empty])
        assert_tables_close(with_empty, whole, c.rtol, c.atol, "with empty partitions")
        assert_same_figures(c, with_empty_figures, figures, "with empty partitions")


def assert_same_figures(c: Case, actual: dict[str, Any], expected: dict[str, Any],
                        what: str) -> None:
    """The figures a fit reports (its ``metrics``) alike, but those the case declares
    to vary (``Case.vary``), which must be there all the same."""
    for key in c.vary:
        assert key in actual and key in expected, (
            f"{c.name}: '{key}' is declared to vary but is not among the metrics {what}")
    assert_close_tree({k: v for k, v in actual.items() if k not in c.vary},
                      {k: v for k, v in expected.items() if k not in c.vary},
                      c.rtol, c.atol, f"metrics {what}")


def check_partition_invariance(c: Case) -> None:
    """1 partition, k partitions and shuffled partitions give the same result, the same
    figures (what the step puts in the run record: a model's loss and validation
    metrics, what evaluate or drift measures), and the
    same rows to the run that fitted it (``training_view``, partition by partition)."""
    op, data = c.build(), c.data()
    transform, whole, measured = _apply_measured(op, [data])
    training = transform.training_view().transform(data, NUMPY)
    for k, seed in ((3, None), (7, 1)):
        parts = split(data, k, seed)
        fitted = transform
        if isinstance(op, Estimator):
            fitted, metrics = fit_measured(c.build(), parts)
            assert_same_figures(c, metrics, measured, f"on {k} partitions")
        got = fitted.transform(data, NUMPY)
        assert_tables_close(got, whole, c.rtol, c.atol, f"fit on {k} partitions")
        view = fitted.training_view()
        got = pa.concat_tables([view.transform(p, NUMPY) for p in split(data, k)])
        assert_tables_close(got, training, c.rtol, c.atol,
                            f"fit on {k} partitions, its training rows")
        if not isinstance(op, Estimator):
            pieces = pa.concat_tables([transform.transform(p, NUMPY) for p in split(data, k)])
            assert_tables_close(pieces, whole, c.rtol, c.atol, f"{k} partitions")


def check_combine_laws(c: Case) -> None:
    """combine is associative and commutative (judged by the fitted result)."""
    op = c.build()
    if not isinstance(op, Estimator):
        return
    data = c.data()
    parts = split(data, 3)
    state = op.init(data.schema)
    p = [op.partial(x, state, NUMPY) for x in parts]

    def result(stats: Any) -> pa.Table:
        new_state, _ = op.update(stats, op.init(data.schema))
        return _first_round_view(op, new_state, data)

    left = result(op.combine(op.combine(p[0], p[1]), p[2]))
    right = result(op.combine(p[0], op.combine(p[1], p[2])))
    swapped = result(op.combine(op.combine(p[2], p[0]), p[1]))
    assert_tables_close(right, left, c.rtol, c.atol, "associativity")
    assert_tables_close(swapped, left, c.rtol, c.atol, "commutativity")


def _first_round_view(op: Estimator, state: Any, data: pa.Table) -> pa.Table:
    """Something comparable about a state after one round: the fitted output when the
    fit is one round, else the state's arrays as a table."""
    try:
        return op.fitted(state).transform(data, NUMPY)
    except Exception:  # a multi-round state may not be fittable yet
        flat = _flatten(state)
        values = [np.ravel(v).astype(float) for _, v in sorted(flat.items())]
        return pa.table({"state": np.concatenate(values) if values else np.zeros(0)})


def _flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for k, v in state.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(state, int | float | np.ndarray | np.number):
        return {prefix.rstrip("."): np.atleast_1d(np.asarray(state, dtype=float))}
    return {}


def check_state_roundtrip(c: Case) -> None:
    """The fitted state survives save/load (JSON + npz, no pickle) with the same output."""
    op, data = c.build(), c.data()
    transform, out = _apply(op, [data])
    again = roundtrip(transform).transform(data, NUMPY)
    assert_tables_close(again, out, 0, 0, "after save/load")


def check_strict_namespace(c: Case) -> None:
    """Kernels use only the array API: array_api_strict gives the same result as NumPy."""
    op, data = c.build(), c.data()
    _, expected = _apply(op, [data])
    strict = get_namespace("array_api_strict")
    _, got = _apply(c.build(), [data], strict)
    assert_tables_close(got, expected, max(c.rtol, 1e-9), max(c.atol, 1e-12), "array_api_strict")
    if isinstance(op, Measuring):
        assert_close_tree(fit_measured(c.build(), [data], strict)[1],
                             fit_measured(c.build(), [data])[1], max(c.rtol, 1e-9),
                             max(c.atol, 1e-12), "metrics with array_api_strict")


def check_strict_device(c: Case) -> None:
    """On array_api_strict's non-default device (as on a GPU) kernels make their arrays
    where the data is, never round-trip through NumPy, and move a partition's rows to
    the device at most once per call (``transform`` or ``partial``)."""
    op, data = c.build(), c.data()
    _, expected = _apply(op, [data])
    strict = get_namespace("array_api_strict")
    placed = get_namespace("array_api_strict", strict.Device("device1"))
    rows = data.num_rows
    calls: list[tuple[str, int]] = []

    def counted(what: str, fn: Callable[[], Any]) -> Any:
        with transfers() as log:
            out = fn()
        calls.append((what, sum(1 for d, shape, _ in log if d == "h2d" and rows in shape)))
        return out

    built = c.build()
    if isinstance(built, Estimator):
        def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
            return counted("partial", lambda: partial(data, placed))

        state, _ = drive(built, data.schema, aggregate)
        transform = built.fitted(state)
    else:
        transform = built
    got = counted("transform", lambda: transform.transform(data, placed))
    assert_tables_close(got, expected, max(c.rtol, 1e-9), max(c.atol, 1e-12),
                        "array_api_strict on device1")
    if rows > 1:
        many = [(what, n) for what, n in calls if n > c.copies]
        assert not many, (f"{many[0][0]} moved the partition's rows to the device "
                          f"{many[0][1]} times ({c.copies} is the contract)")


def check_float32(c: Case) -> None:
    """With a float32 compute namespace (a step's ``dtype: float32``; array_api_strict on
    its non-default device, as on a GPU) the output keeps its declared types and agrees
    with float64: within the case's float32 tolerances (docs/float32.md) for an operator
    that computes in float32 (``float32 = True``), as exactly as ever for the others."""
    op, data = c.build(), c.data()
    _, expected = _apply(op, [data])
    strict = get_namespace("array_api_strict")
    placed = get_namespace("array_api_strict", strict.Device("device1"), "float32")
    transform, got = _apply(c.build(), [data], placed)
    declared = transform.output_schema(data.schema)
    assert got.schema.remove_metadata() == declared.remove_metadata(), (
        f"float32 compute changed the output types: {got.schema} != {declared}")
    if lookup(c.op).float32:
        rtol, atol = max(c.rtol, c.float32_rtol), max(c.atol, c.float32_atol)
    else:
        rtol, atol = max(c.rtol, 1e-9), max(c.atol, 1e-12)
    assert_tables_close(got, expected, rtol, atol, "float32 on device1")


def check_source(c: Case) -> None:
    """A source's schema() is the schema of every partition it reads."""
    op = c.build()
    assert isinstance(op, Source)
    schema = op.schema()
    infos = op.partitions()
    assert infos, "a source has at least one partition"
    for info in infos:
        assert op.read(info).schema == schema, f"{info.describe()} schema differs"


def check_sink(c: Case) -> None:
    """A sink's committed output reads back as its input; abort leaves nothing."""
    op = c.build()
    assert isinstance(op, Sink)
    data = c.data()
    token = op.begin("kitrun1", data.schema)
    results = [op.write(token, p, i) for i, p in enumerate(split(data, 3))]
    op.commit(token, results)
    from operators.io.parquet import ReadParquet

    order = [(n, "ascending") for n in data.column_names]

    def written(want: pa.Table, what: str) -> None:
        back = ReadParquet(path=op.params.path).read_all()
        back = back.select(data.column_names).cast(data.schema)
        assert_tables_close(back.sort_by(order), want.sort_by(order), 0, 0, what)

    written(data, "written output")
    mode = getattr(op.params, "mode", None)
    from operators.io.parquet import MERGE_MODES

    if mode in MERGE_MODES:
        # the same rows again: appended after them, or in the place of their partitions
        token = op.begin("kitrun3", data.schema)
        op.commit(token, [op.write(token, p, i) for i, p in enumerate(split(data, 2))])
        written(pa.concat_tables([data, data]) if mode == "append" else data,
                f"output after a second {mode}")
    fresh = os.path.join(scratch_dir(), "aborted")
    aborted = lookup(c.op)(op.params.model_copy(update={"path": fresh}))
    assert isinstance(aborted, Sink)
    token = aborted.begin("kitrun2", data.schema)
    aborted.write(token, data, 0)
    aborted.abort(token)
    left = os.listdir(os.path.dirname(fresh))
    assert not left, f"an aborted write left {left}"


def side_partials(op: Shuffle) -> list[pa.Table]:
    """The partial rows of each of a shuffle's sides (a shuffle join's table): its
    source's partitions', one after the other."""
    out = []
    for side in op.sides():
        source = side.source()
        parts = [side.partial(source.read(p)) for p in source.partitions()]
        out.append(pa.concat_tables(parts) if parts
                   else side.partial_schema(source.schema()).empty_table())
    return out


def shuffled(op: Shuffle, parts: list[pa.Table], buckets: int, seed: int = 0) -> pa.Table:
    """What a runtime makes of ``parts``: each partition's partial rows, sent to
    ``buckets`` places by a hash of their keys (in a scrambled order, or in the input's
    order for a shuffle that keeps it), finished at each place with the sides' partial
    rows of the same keys (scrambled); the places' rows one after the other."""
    from operators.hashing import hash_rows

    rng = np.random.default_rng(seed)

    def placed(table: pa.Table, keys: list[str], keep_order: bool) -> list[pa.Table]:
        where = hash_rows(table, keys, 17) % np.uint64(buckets)
        order = (np.arange(table.num_rows) if keep_order
                 else rng.permutation(table.num_rows))
        return [table.take(pa.array(order[where[order] == b], pa.int64()))
                for b in range(buckets)]

    if isinstance(op, RangedShuffle) and buckets > 1:  # ranges, from every part's sample
        k = 16
        samples = [op.sample(p, k) for p in parts]
        sample = samples[0]
        for other in samples[1:]:
            sample = op.combine_samples(sample, other, k)
        op.set_bounds(sample, buckets)
        rows = pa.concat_tables([op.partial(p) for p in parts])
        where = op.place(rows, buckets)
        order = rng.permutation(rows.num_rows)
        partials = [rows.take(pa.array(order[where[order] == b], pa.int64()))
                    for b in range(buckets)]
    else:
        partials = placed(pa.concat_tables([op.partial(p) for p in parts]),
                          op.key_columns(), op.row_order == "input")
    sides = [placed(t, side.key_columns(), False)
             for side, t in zip(op.sides(), side_partials(op), strict=True)]
    return pa.concat_tables([op.finish(partials[b], *(side[b] for side in sides))
                             for b in range(buckets)])


def _by_keys(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


def _assert_in_input_order(data: pa.Table, out: pa.Table) -> None:
    """``out``'s rows are rows of ``data`` (its columns, values alike), in ``data``'s
    order: each found after the one before."""
    from operators.hashing import hash_rows

    names = data.column_names
    assert out.column_names[:len(names)] == names, "the input's columns come first"
    rows, found = hash_rows(data, names, 31), hash_rows(out.select(names), names, 31)
    at = 0
    for i, h in enumerate(found):
        while at < len(rows) and rows[at] != h:
            at += 1
        assert at < len(rows), f"output row {i} is not an input row after the one before"
        at += 1


def _by_content(table: pa.Table) -> pa.Table:
    """The rows in an order of their values only (a hash of every column: any types)."""
    from operators.hashing import hash_rows

    order = np.argsort(hash_rows(table, table.column_names, 29), kind="stable")
    return table.take(pa.array(order, pa.int64()))


def _union_branches(c: Case) -> list[tuple[str, pa.Table]]:
    """A union case's rows of each step: its input's (``data``), then each other's."""
    return [("input", c.data()), *((step, rows()) for step, rows in c.step_rows.items())]


def check_union_schema(c: Case) -> None:
    """A union's declared schema is what ``conform`` makes of every step's rows (and of
    none): their rows, their values in its types, nulls in the columns a step lacks."""
    op = c.build()
    assert isinstance(op, Union)
    branches = _union_branches(c)
    declared = op.output_schema(branches[0][1].schema)
    assert declared.names[:branches[0][1].num_columns] == branches[0][1].column_names, (
        "the input's columns come first, in its order")
    for step, rows in branches:
        out = op.conform(rows, declared, step)
        assert out.schema.equals(declared, check_metadata=True), (
            f"declared {declared}\nbut made {out.schema} of step '{step}'")
        assert out.num_rows == rows.num_rows, f"step '{step}': rows lost or added"
        for name in declared.names:
            if name in rows.column_names:
                want = rows.select([name]).cast(pa.schema([declared.field(name)]))
                assert_tables_close(out.select([name]), want, 0, 0,
                                    f"step '{step}', column '{name}'")
            else:
                assert out.column(name).null_count == rows.num_rows, (
                    f"step '{step}' has no '{name}': nulls expected")
        empty = op.conform(rows.schema.empty_table(), declared, step)
        assert empty.num_rows == 0 and empty.schema.equals(declared, check_metadata=True)


def check_union_invariance(c: Case) -> None:
    """``conform`` of a step's rows in k partitions, one after the other, is ``conform``
    of them whole (a partition's rows depend on it alone)."""
    op = c.build()
    assert isinstance(op, Union)
    branches = _union_branches(c)
    declared = op.output_schema(branches[0][1].schema)
    for step, rows in branches:
        whole = op.conform(rows, declared, step)
        for k in (3, 7):
            pieces = pa.concat_tables([op.conform(p, declared, step) for p in split(rows, k)])
            assert_tables_close(pieces, whole, 0, 0, f"step '{step}' in {k} partitions")


def check_union_no_input_mutation(c: Case) -> None:
    """Every step's rows are unchanged by ``conform``."""
    op = c.build()
    assert isinstance(op, Union)
    branches = _union_branches(c)
    declared = op.output_schema(branches[0][1].schema)
    for step, rows in branches:
        before = pa.table({n: pa.array(rows.column(n).to_pylist(), rows.column(n).type)
                           for n in rows.column_names}, schema=rows.schema)
        op.conform(rows, declared, step)
        assert_tables_close(rows, before, 0, 0, f"conform changed step '{step}''s rows")


def check_shuffle_schema(c: Case) -> None:
    """A shuffle's declared schemas are what partial and finish make (no rows too)."""
    op, data = c.build(), c.data()
    assert isinstance(op, Shuffle)
    partials = op.partial(data)
    assert partials.schema == op.partial_schema(data.schema), (
        f"partial_schema {op.partial_schema(data.schema)}\nbut partial made "
        f"{partials.schema}")
    sides = side_partials(op)
    for side, rows in zip(op.sides(), sides, strict=True):
        declared = side.partial_schema(side.source().schema())
        assert rows.schema == declared, (
            f"the side's partial_schema {declared}\nbut its partial made {rows.schema}")
    for rows, with_sides in ((partials, sides), (partials.schema.empty_table(),
                                                 [t.schema.empty_table() for t in sides])):
        out = op.finish(rows, *with_sides)
        declared = op.output_schema(data.schema)
        assert out.schema == declared, f"declared {declared}\nbut finish made {out.schema}"
        assert not op.keeps_columns or out.schema == data.schema, (
            f"{op.name} says its columns are its input's (keeps_columns), but it made "
            f"{out.schema}")
    assert op.partial(data.schema.empty_table()).num_rows == 0, (
        "an empty partition has partial rows")


def check_shuffle_invariance(c: Case) -> None:
    """The output is the same for 1, k and shuffled partitions (empty ones among them),
    partial rows split among any number of places in any order; finished rows come in
    key order (a shuffle that keeps the input's order: in that order at one place, the
    same rows at many)."""
    op, data = c.build(), c.data()
    assert isinstance(op, Shuffle)
    whole = op.finish(op.partial(data), *side_partials(op))
    if op.row_order == "sorted":
        # the places' rows one after the other are the whole order, row for row
        for k, seed, buckets in ((3, None, 1), (7, 1, 3), (5, 2, 8)):
            parts = [data.schema.empty_table(), *split(data, k, seed)]
            got = shuffled(op, parts, buckets, seed or 0)
            assert_tables_close(got, whole, c.rtol, c.atol,
                                f"{k} partitions, {buckets} ranges, in order")
        return
    if op.row_order in ("input", "groups"):
        if op.row_order == "input":
            _assert_in_input_order(data, whole)
            got = shuffled(op, [data.slice(0, 7), data.slice(7)], 1)
            assert_tables_close(got, whole, 0, 0, "rows in the input's order at one place")
        _by_rows = _by_content
        whole = _by_rows(whole)
    else:
        # the output's keys (a shuffle keyed by an internal column orders by every column)
        keys = [k for k in op.key_columns() if k in whole.column_names] or whole.column_names

        def _by_rows(table: pa.Table) -> pa.Table:
            return _by_keys(table, keys)

        assert_tables_close(whole, _by_rows(whole), 0, 0, "finished rows in key order")
    if op.splittable:
        # a key's rows finished in several places, each with the sides' whole rows (the
        # runtime splits a skewed key so): the same rows
        partials, sides = op.partial(data), side_partials(op)
        cuts = [0, partials.num_rows // 3, 2 * partials.num_rows // 3, partials.num_rows]
        got = pa.concat_tables([op.finish(partials.slice(a, b - a), *sides)
                                for a, b in zip(cuts, cuts[1:], strict=False)])
        assert_tables_close(_by_rows(got), whole, 0, 0, "a key's rows finished in 3 places")
    empty = data.schema.empty_table()
    for k, seed, buckets in ((3, None, 1), (7, 1, 3), (5, 2, 8)):
        parts = [empty, *split(data, k, seed), empty]
        buckets = 1 if op.one_place() else buckets
        got = _by_rows(shuffled(op, parts, buckets, seed or 0))
        assert_tables_close(got, whole, c.rtol, c.atol,
                            f"{k} partitions, {buckets} places")


CHECKS: dict[str, Callable[[Case], None]] = {
    "declared_schema": check_declared_schema,
    "no_input_mutation": check_no_input_mutation,
    "empty_partition": check_empty_partition,
    "partition_invariance": check_partition_invariance,
    "combine_laws": check_combine_laws,
    "state_roundtrip": check_state_roundtrip,
    "strict_namespace": check_strict_namespace,
    "strict_device": check_strict_device,
    "float32": check_float32,
    "source": check_source,
    "sink": check_sink,
    "shuffle_schema": check_shuffle_schema,
    "shuffle_invariance": check_shuffle_invariance,
    "union_schema": check_union_schema,
    "union_invariance": check_union_invariance,
    "union_no_input_mutation": check_union_no_input_mutation,
}


def applicable(c: Case) -> list[str]:
    """The checks that apply to the case's operator kind (the kind of operator its
    params make: a join can be a shuffle)."""
    cls = type(c.build())
    if issubclass(cls, Source):
        return ["source"]
    if issubclass(cls, Sink):
        return ["sink"]
    if issubclass(cls, Shuffle):
        return ["shuffle_schema", "shuffle_invariance", "no_input_mutation"]
    if issubclass(cls, Union):
        return ["union_schema", "union_invariance", "union_no_input_mutation"]
    if issubclass(cls, Estimator):
        return ["declared_schema", "no_input_mutation", "empty_partition",
                "partition_invariance", "combine_laws", "state_roundtrip", "strict_namespace",
                "strict_device", "float32"]
    if issubclass(cls, Transform):
        return ["declared_schema", "no_input_mutation", "empty_partition",
                "partition_invariance", "state_roundtrip", "strict_namespace", "strict_device",
                "float32"]
    return []


def scratch_dir() -> str:
    """A fresh temporary directory for cases that need files."""
    return tempfile.mkdtemp(prefix="sluice-kit-", dir=os.environ.get("SLUICE_KIT_TMP"))
