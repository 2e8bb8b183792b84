"""Operator contracts: Transform, Estimator, Source, Sink; the registry; errors.

An operator sees one partition (a ``pyarrow.Table``) at a time and never knows
which engine runs it. Parameters are a pydantic model (``Params``) validated when
the pipeline is planned, so a bad pipeline fails before any data moves.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, BeforeValidator, ConfigDict

from operators.errors import (  # noqa: F401 - every operator imports its errors from here
    ArtifactError,
    DataError,
    MissingColumnError,
    ParamError,
    SchemaError,
    SluiceError,
    causes,
    suggest,
)

# --------------------------------------------------------------------------- errors


# what Arrow's kernels and conversions raise for values or types they cannot take
ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def arrow_message(exc: BaseException) -> str:
    """The first line of an Arrow error, without its 'Invalid: ' prefix."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).removeprefix("Invalid: ")


def conformed(part: pa.Table, schema: pa.Schema,
              failure: Callable[[pa.Field, pa.DataType, BaseException], SluiceError]
              ) -> pa.Table:
    """``part`` with ``schema``'s columns, in its order and types (cast safely; a column
    ``part`` lacks: nulls); ``failure(field, its type in part, error)`` is what a value
    that does not fit raises. A new table; ``part`` is left as it is."""
    if part.schema.equals(schema, check_metadata=True):
        return part
    columns = []
    for wanted in schema:
        at = part.schema.get_field_index(wanted.name)
        if at < 0:
            columns.append(pa.nulls(part.num_rows, wanted.type))
            continue
        column = part.column(at)
        if column.type != wanted.type:
            try:
                column = column.cast(wanted.type, safe=True)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise failure(wanted, column.type, exc) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def yaml_text(text: str) -> str:
    """``text`` as a YAML flow value in a hint: quoted where YAML would read it otherwise
    (``timestamp[ms, tz=UTC]``, ``decimal128(20, 2)``)."""
    return json.dumps(text) if re.search(r"[\[\]{},:#\s]", text) else text


def renames(have: Iterable[str], want: Iterable[str], cutoff: float = 0.75) -> dict[str, str]:
    """The names of ``have`` that look like one of ``want`` (``userid`` and ``user_id``),
    each with the one it looks most like: what a ``rename`` step would line up."""
    wanted = list(want)
    out = {}
    for name in have:
        close = difflib.get_close_matches(name, wanted, n=1, cutoff=cutoff)
        if close:
            out[name] = close[0]
            wanted.remove(close[0])
    return out


def rename_hint(pairs: dict[str, str]) -> str:
    """'rename userid to user_id (`op: rename`, `columns: {userid: user_id}`)'."""
    shown = ", ".join(f"{a}: {b}" for a, b in pairs.items())
    return (f"rename {', '.join(f'{a} to {b}' for a, b in pairs.items())} "
            f"(`op: rename`, `columns: {{{shown}}}`)")


def _suggest_each(missing: list[str], have: list[str], asked: list[str]) -> str:
    """'; did you mean 'x'?' for one missing column, or "; did you mean 'x' for 'y', 'z'
    for 'w'?" for several: each one's closest column of ``have``, or ''. A column the
    step asks for as well is offered only when nearly the same name (a label `churnd`
    among the features: `churned`): otherwise it is needed too, no misspelling of
    another (a model's 'total_charges' is not its 'monthly_charges')."""
    pairs = renames(missing, [c for c in have if c not in set(asked)], cutoff=0.6)
    rest = [c for c in missing if c not in pairs]
    pairs.update(renames(rest, [c for c in have if c in set(asked)], cutoff=0.85))
    pairs = {name: pairs[name] for name in missing if name in pairs}
    if len(missing) == 1:
        return f"; did you mean '{pairs[missing[0]]}'?" if pairs else ""
    shown = ", ".join(f"'{close}' for '{name}'" for name, close in pairs.items())
    return f"; did you mean {shown}?" if pairs else ""


def require_columns(schema: pa.Schema, columns: Iterable[str], what: str = "column",
                    where: str = "the input", close: bool = True) -> None:
    """Raise SchemaError naming every column of ``columns`` that ``schema`` (of
    ``where``) lacks, each with its closest name there unless not ``close`` (the caller
    knows why they are missing)."""
    columns = list(columns)
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if not missing:
        return
    have = schema.names
    names = ", ".join(f"'{c}'" for c in missing)
    if len(missing) > 1:  # "feature column" -> "feature columns", "label" -> "labels"
        what = what.replace("column", "columns", 1) if "column" in what else what + "s"
    error = MissingColumnError(
        f"{what} {names} not in {where}"
        + (_suggest_each(missing, have, columns) if close else ""),
        hint=("input has: " if where == "the input" else "it has: ") + ", ".join(have[:20])
        + (" ..." if len(have) > 20 else ""),
    )
    error.columns = tuple(missing)
    raise error


def require_expression_columns(schema: pa.Schema, columns: Iterable[str]) -> None:
    """``require_columns`` for the names an expression reads as columns: a bare word no
    column's name is near (`plan = basic`) is most likely a text value without its
    quotes, which the hint says."""
    try:
        require_columns(schema, columns)
    except MissingColumnError as exc:
        words = [c for c in getattr(exc, "columns", ()) if not renames([c], schema.names,
                                                                          cutoff=0.6)]
        if words:
            exc.hint = f"{exc.hint}; a text value goes in quotes: '{words[0]}'"
        raise


# --------------------------------------------------------------------------- contracts




class Params(BaseModel):
    """Base of every operator's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # the names peers give a parameter (Spark's mergeSchema), as written here: what an
    # unknown parameter of that name is told to write instead of the closest spelling
    known_as: ClassVar[dict[str, str]] = {}


def yaml_null(value: object) -> object:
    """A choice named ``null`` (``missing: null``, ``invalid: null``) as YAML reads it:
    None, which is the choice ``"null"``."""
    return "null" if value is None else value


ErrorOrNull = Annotated[Literal["error", "null"], BeforeValidator(yaml_null)]
"""A parameter whose choices are ``error`` and ``null`` (cast's ``invalid``), YAML's
``null`` (None) taken as the choice ``null``."""
Missing = ErrorOrNull
"""What to do with a column some of the inputs lack (a union's steps, a read's files):
``error``, or ``null`` in their rows."""


class Operator(ABC):  # noqa: B024 - a base of the four kinds, not instantiated
    """What every registered operator has: a name, a kind, validated params."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    # False: the operator works on Arrow on the host and never touches ``xp``, so a
    # step asking for a GPU runs it on the CPU (no device to wait for or run out of)
    numeric_kernels: ClassVar[bool] = True
    # True: the step's rows are new rows, not its input's with columns changed (a
    # group-by's, a union's of other steps too), so a saved model's steps start after it
    new_rows: ClassVar[bool] = False
    # True: a step's ``dtype: float32`` makes the operator compute in float32, within
    # docs/float32.md's tolerances; False: it computes exactly whatever the dtype (the
    # conformance kit's float32 check holds both)
    float32: ClassVar[bool] = False
    # True: the output's columns are the input's, whatever the parameters (a filter, a
    # sort, a sink), so a plan goes on past a step whose parameters are wrong
    keeps_columns: ClassVar[bool] = False

    def __init__(self, params: Params | dict[str, Any] | None = None, **kwargs: Any):
        if params is None or isinstance(params, dict):
            params = self.Params(**{**(params or {}), **kwargs})
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def create(cls, params: Params) -> Operator:
        """The operator a step with ``params`` runs: an instance of this class, or of
        another of its kind's choosing (``join`` becomes a shuffle join for a table too
        large to send to every partition)."""
        return cls(params)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        """Columns of the input this operator reads (checked at plan time)."""
        return []

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Operator | None:
        """What ``save_model`` saves for this step (None: nothing): itself, but where
        scoring needs less than a run. ``training_only``: the columns only the chain's
        fits read (their labels, weights, query groups), which scoring has no use for.
        drop and select save a drop or select of what is there (a model never asks for a
        column only to drop it, nor for the label a select kept); derive saves the columns
        scoring needs (not the label it derived), rename and cast the renames and casts
        it needs (not the label's)."""
        return self

    def plan_note(self) -> str | None:
        """A line ``sluice plan`` shows about what the operator decided from the plan
        (calibrate: what its sigmoid is fitted to); None for nothing to say."""
        return None

    def step_inputs(self) -> list[str]:
        """Other steps of the pipeline whose rows this one reads besides its input (a
        join's ``table:``): they run first, and their schemas are bound before this
        step plans (``bind_step_schema``)."""
        return []

    def bind_step_schema(self, step_id: str, schema: pa.Schema) -> None:
        """The schema of ``step_id``, one of ``step_inputs()``: as planned, then as the
        step made it when the run gets there (``step_schemas``)."""
        self.step_schemas = {**getattr(self, "step_schemas", {}), step_id: schema}

    def check_input(self, schema: pa.Schema) -> None:
        """MissingColumnError naming the columns this step reads that ``schema`` lacks
        (checked as the pipeline plans)."""
        require_columns(schema, self.input_columns(schema))


def columns_without(params: Params, training_only: frozenset[str]
                    ) -> tuple[Params | None, list[int]] | None:
    """For the ``saved_view`` of a step of ``columns`` (a list, or a mapping by column):
    None where none of them is ``training_only``'s; else its params without those (None
    where none is left) and the positions of the columns kept (a fitted step's arrays
    by column keep those rows)."""
    columns = params.columns
    names = list(columns)
    keep = [i for i, name in enumerate(names) if name not in training_only]
    if len(keep) == len(names):
        return None
    if not keep:
        return None, []
    kept = ({names[i]: columns[names[i]] for i in keep} if isinstance(columns, dict)
            else [names[i] for i in keep])
    return params.model_copy(update={"columns": kept}), keep


def columns_view(op: Operator, training_only: frozenset[str]) -> Operator | None:
    """The ``saved_view`` of a step of ``columns`` built from its params alone (a cast,
    a scaler or impute before its fit): the same step without the columns only training
    reads; None where none is left."""
    cut = columns_without(op.params, training_only)
    if cut is None:
        return op
    return type(op)(cut[0]) if cut[0] is not None else None


class Transform(Operator):
    """A function of one partition: ``output_schema(schema)``, ``transform(part, xp)``.

    A transform is also what a fitted estimator becomes; its state round-trips
    through ``state()`` / ``from_state()`` as JSON metadata plus numpy arrays.
    """

    kind = "transform"
    # False: the transform shapes the data a pipeline trains on or writes (filter and
    # sample choose rows, join brings a table's columns) and is never part of a saved
    # model: a scoring pipeline does its own data preparation
    in_model: ClassVar[bool] = True

    @abstractmethod
    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The schema ``transform`` returns for an input of ``schema``."""

    def derived_from(self) -> dict[str, list[str]]:
        """The input columns each column this transform makes under a new name comes
        from (one_hot's ``plan=basic`` from ``plan``); a column not named keeps its
        name's input column. What score's ``contributions_by: inputs`` sums by."""
        return {}

    @abstractmethod
    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        """Return a new table; never mutate ``part``."""

    def transform_counted(self, part: pa.Table, xp: Any) -> tuple[pa.Table, Counts | None]:
        """``transform``, and what it counted on the partition for the run record's
        metrics (expect: each rule's failed and checked rows; None: nothing). Counts of
        partitions add up (``add_counts``)."""
        return self.transform(part, xp), None

    def warning(self, counts: Counts) -> str | None:
        """What the run's counts (every partition's, added) leave worth a warning line
        (expect with on_failure: warn: the rows that failed a rule); None: nothing."""
        return None

    def training_view(self) -> Transform:
        """The transform a fitted estimator applies to the rows of the run that fitted
        it (target_encode's cross-fitted encodings of its own training rows); itself
        for every other. What is saved, and scores new rows, is the transform itself."""
        return self

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and named arrays that rebuild this transform."""
        return {"params": self.params.model_dump(mode="json")}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Transform:
        return cls(cls.Params(**meta["params"]))


class Estimator(Operator):
    """A fit over partitions, as rounds of partial -> combine -> update.

    ``init(schema) -> state``; per partition ``partial(part, state, xp) -> stats``;
    ``combine(a, b) -> stats`` (associative and commutative); on the driver
    ``update(stats, state) -> (state, done)``, repeated until done;
    ``fitted(state) -> Transform``. ``partial`` of an empty partition returns
    stats that combine as an identity.
    """

    kind = "estimator"
    multi_pass: ClassVar[bool] = False  # True: the runtime caches the input for the passes
    # True: the fitted model has per-feature contributions (score's contributions: true)
    explained: ClassVar[bool] = False
    # True when the fit decides output columns or types (one_hot's vocabulary, the
    # probability type of a classifier with 2 or more classes): the plan-time schema
    # after it is a lower bound, and later steps' column checks wait for the run
    schema_from_fit: ClassVar[bool] = False
    # True: the fit adjusts the predictions of the model before it (calibrate) and is no
    # model of its own: what a score step asks of a chain's model (its contributions, its
    # columns) it asks of that one
    after_model: ClassVar[bool] = False

    def fit_may_add(self, column: str) -> bool:
        """Plan time, for a step ``schema_from_fit``: whether its fit may add a column of
        this name that the planned schema after it lacks (a later step's check of such a
        column waits for the run; of any other, it is a problem as the pipeline plans).
        True unless the operator knows the names it adds."""
        return True

    def bind_model(self, model: str | None) -> None:
        """Plan time, for a step ``after_model``: the operator name of the model whose
        predictions it reads (``logistic_regression``...; None where the plan cannot
        tell: a column read from files)."""

    @abstractmethod
    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """Schema of the fitted transform's output for an input of ``schema``."""

    @abstractmethod
    def init(self, schema: pa.Schema) -> Any: ...

    @abstractmethod
    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any: ...

    @abstractmethod
    def combine(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def update(self, stats: Any, state: Any) -> tuple[Any, bool]: ...

    @abstractmethod
    def fitted(self, state: Any) -> Transform: ...

    def metrics(self, state: Any) -> dict[str, Any]:
        """Numbers worth a line in the run record (iterations, convergence...)."""
        return {}

    def partial_state(self, state: Any) -> Any:
        """What ``partial`` reads of ``state``: the part engines send to the partitions
        every pass (the rest, such as histograms kept for the next level, stays on the
        driver for ``update``)."""
        return state

    def progress(self, state: Any) -> FitProgress | None:
        """Where an iterative fit is before its next pass, for the progress line (tree 6
        of 60; Lloyd pass 12 of at most 300); None: nothing more than the pass number."""
        return None


Counts = dict[str, Any]
"""What a transform counted on a partition: numbers by name, or nested counts."""


def add_counts(a: Counts | None, b: Counts | None) -> Counts | None:
    """Two partitions' counts added, name by name (nested ones too)."""
    if a is None or b is None:
        return a if b is None else b
    out = dict(a)
    for name, value in b.items():
        out[name] = (add_counts(out[name], value) if isinstance(value, dict)
                     else out.get(name, 0) + value)
    return out


@dataclass(frozen=True)
class FitProgress:
    """Where an iterative fit is (``Estimator.progress``): ``where`` in words ("tree 6
    of 60"), and ``done``, the share of the fit done (0 to 1) that a fit ETA is drawn
    from, None where it cannot be told (a fit that stops when it converges)."""

    where: str
    done: float | None = None


@dataclass
class FitClock:
    """How a fit goes, as ``drive`` runs it: the pass about to run (``passes``, from
    1) and where the estimator says it is then (``progress``), the seconds it spent in
    the driver (``driver_seconds``: init, update, and what the engine adds: the combine
    of the partitions' partials), and the time left (``left``), from when the estimator
    first told how much of the fit was done (``paced``: the time, by ``now``, and that
    share)."""

    estimator: Estimator
    passes: int = 0
    progress: FitProgress | None = None
    driver_seconds: float = 0.0
    now: Callable[[], float] = time.perf_counter
    paced: tuple[float, float] | None = None

    def at_pass(self, passes: int, progress: FitProgress | None) -> None:
        """Pass ``passes`` is about to run, the fit where ``progress`` says."""
        self.passes, self.progress = passes, progress
        if self.paced is None and progress is not None and progress.done is not None:
            self.paced = (self.now(), progress.done)

    def left(self) -> float | None:
        """Seconds the fit has left at the pace of its passes since ``paced`` (those
        before, a summary of the data or workers starting, go at another pace); None
        where that cannot be told yet."""
        progress = self.progress
        if progress is None or progress.done is None or self.paced is None:
            return None
        at, first = self.paced
        if progress.done <= first:
            return None
        return (self.now() - at) * (1 - progress.done) / (progress.done - first)


def drive(estimator: Estimator, schema: pa.Schema,
          aggregate: Callable[[Callable[[pa.Table, Any], Any]], Any],
          clock: FitClock | None = None) -> tuple[Any, int]:
    """The driver loop of every fit: rounds of ``aggregate(partial)`` then ``update``.

    ``aggregate(fn)`` runs ``fn(part, xp)`` on every partition and combines the
    results with ``estimator.combine``; engines and the conformance kit supply it.
    ``clock`` (engines': a progress line, the run record's driver seconds) is told each
    pass before it runs and the time spent outside ``aggregate``.
    Returns the final state and the number of passes.
    """
    clock = clock or FitClock(estimator)
    t0 = time.perf_counter()
    state = estimator.init(schema)
    rounds = 0
    while True:
        current = estimator.partial_state(state)

        def partial(part: pa.Table, xp: Any, current: Any = current) -> Any:
            return estimator.partial(part, current, xp)

        clock.at_pass(rounds + 1, estimator.progress(state))
        clock.driver_seconds += time.perf_counter() - t0
        stats = aggregate(partial)
        t0 = time.perf_counter()
        state, done = estimator.update(stats, state)
        rounds += 1
        if done:
            clock.driver_seconds += time.perf_counter() - t0
            return state, rounds


def tree_reduce(values: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Pairwise combine in a fixed order, so the result does not depend on timing.

    Consumes ``values``: each pair leaves the list as it is combined, so partials
    (a level's histograms, say) are freed as they go, not held until the end."""
    if not values:
        raise ValueError("nothing to combine")
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values) - 1, 2):
            a, b = values[i], values[i + 1]
            values[i] = values[i + 1] = None
            nxt.append(combine(a, b))
            del a, b
        if len(values) % 2:
            nxt.append(values[-1])
        values[:] = nxt
    return values.pop()


def tree_blocks(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Some of ``tree_reduce``'s value positions as ``[start, stop)`` blocks that are
    whole subtrees of its tree, each as large as it can be: ``2**k`` positions from a
    multiple of ``2**k``, all among ``positions``; single positions otherwise."""
    held = set(positions)
    ordered = sorted(held)
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(ordered):
        start, size = ordered[i], 1
        while start % (2 * size) == 0 and all(
                p in held for p in range(start + size, start + 2 * size)):
            size *= 2
        out.append((start, start + size))
        i += size
    return out


def tree_reduce_blocks(blocks: dict[tuple[int, int], Any], n: int,
                       combine: Callable[[Any, Any], Any]) -> Any:
    """``tree_reduce`` of ``n`` values given as ``blocks``, whole subtrees of its tree
    already combined (``tree_blocks``, each ``tree_reduce`` of its values in order):
    the same combines in the same order, so the same result, bit for bit. Consumes
    ``blocks``."""
    if n < 1:
        raise ValueError("nothing to combine")
    top = 1
    while top < n:
        top *= 2

    def node(start: int, size: int) -> Any:
        end = min(start + size, n)
        if (start, end) in blocks:
            return blocks.pop((start, end))
        half = size // 2
        if start + half >= n:  # tree_reduce carries a lone last value up a level
            return node(start, half)
        left = node(start, half)
        return combine(left, node(start + half, half))

    return node(0, top)


@dataclass(frozen=True)
class PartitionInfo:
    """One unit of work a Source can read on any machine: plain data, picklable."""

    index: int
    path: str
    row_groups: tuple[int, ...] | None = None
    rows: int | None = None
    partition_expression: Any = None  # pyarrow Expression of hive partition values

    def describe(self) -> str:
        where = self.path
        if self.row_groups is not None and len(self.row_groups) > 0:
            first, last = self.row_groups[0], self.row_groups[-1]
            where += f" row groups {first}-{last}" if first != last else f" row group {first}"
        return f"partition {self.index} ({where})"


class Source(Operator):
    """Where a pipeline's data comes from: a schema and independently readable partitions."""

    kind = "source"

    @abstractmethod
    def schema(self) -> pa.Schema:
        """The schema of every partition, known before any data is read."""

    @abstractmethod
    def partitions(self) -> list[PartitionInfo]: ...

    @abstractmethod
    def read(self, partition: PartitionInfo) -> pa.Table: ...

    def ready(self) -> None:
        """Import what ``read`` imports on first use, in the process about to read: the
        engines call it before a partition's clock starts, so that a fresh worker's
        imports are no step's work (as an array namespace's first import is not)."""

    def is_local(self) -> bool:
        """True when partitions are read from this machine's disks (cheap to read again);
        engines may re-read such a source instead of caching it."""
        return False

    def read_all(self) -> pa.Table:
        """Every partition in order, as one table (tests and small data)."""
        return pa.concat_tables([self.read(p) for p in self.partitions()])


@dataclass
class WriteResult:
    """What one partition's write produced (returned to the driver for the commit)."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0


class Sink(Operator):
    """Where data goes: ``begin`` on the driver, ``write`` per partition, ``commit`` once.

    ``abort`` is called instead of ``commit`` when any partition failed; a run
    killed before ``commit`` leaves the previous output (or none) readable.
    """

    kind = "sink"
    keeps_columns = True

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def preflight(self, schema: pa.Schema | None = None) -> None:
        """Before any step of the run (and as ``sluice validate`` and ``plan`` check a
        pipeline): a cheap look for what would make ``begin`` refuse (an output that
        exists where the mode forbids it; with ``schema``, the rows' schema as planned,
        rows the output cannot take), so that a run does not train for an hour to stop
        at its write. Nothing where it cannot tell (``begin`` checks again)."""

    @abstractmethod
    def begin(self, run_id: str, schema: pa.Schema) -> Any:
        """Prepare the staging area; returns a picklable token for ``write``."""

    @abstractmethod
    def write(self, token: Any, part: pa.Table, index: int) -> WriteResult: ...

    @abstractmethod
    def commit(self, token: Any, results: list[WriteResult]) -> dict[str, Any]:
        """Publish atomically; returns the run-record entry of this output."""

    @abstractmethod
    def abort(self, token: Any) -> None: ...


class PartialRows(ABC):
    """What a shuffle's input and its sides share: ``partial`` rows of a partition."""

    @abstractmethod
    def partial(self, part: pa.Table) -> pa.Table: ...

    def partial_at(self, part: pa.Table, index: int) -> pa.Table:
        """``partial`` of the input's partition number ``index`` (what the runtime calls:
        a shuffle that places rows by their partition, as a round robin does, overrides
        it; the rows and their keys are the same for any index)."""
        return self.partial(part)

    def partial_schema(self, schema: pa.Schema) -> pa.Schema:
        return self.partial(schema.empty_table()).schema


class ShuffleSide(PartialRows):
    """Another table a shuffle brings to the same places as its input, by the same keys
    (a shuffle join's table): read by ``source()``, each of its partitions turned into
    partial rows by ``partial``, hashed by ``key_columns()`` (in the same types as the
    input's partial keys, so that equal keys meet)."""

    name: str = "side"

    @property
    def step(self) -> str | None:
        """The step of the pipeline whose rows are this side (the runtime takes them as
        that step made them), or None: ``source()`` reads it."""
        return None

    @abstractmethod
    def source(self) -> Source: ...

    @abstractmethod
    def key_columns(self) -> list[str]: ...

    @abstractmethod
    def partial(self, part: pa.Table) -> pa.Table: ...


class Shuffle(PartialRows, Operator):
    """Rows made from the rows of every partition that share keys (a group-by).

    ``partial(part)`` turns one partition into partial rows (one per key, with the
    ``key_columns()``); the runtime brings the partial rows of each key from every
    partition to one place (by a hash of the keys) and ``finish(partials)`` makes the
    output rows of the keys it is given, in key order. Partials of the same key from
    different partitions combine in any order: the output does not depend on the
    partitioning, the engine or the order of the rows.

    A shuffle with ``sides()`` (a shuffle join) has other tables' partial rows brought
    to the same places by the same keys: ``finish(partials, *side_partials)``.
    """

    kind = "shuffle"
    numeric_kernels = False
    # True (``Operator.new_rows``): the output rows are a group-by's; False: each output
    # row is an input row with columns added (a join), and a model's chain goes through
    # the step as through a transform that is not in the model (``in_model``)
    new_rows: ClassVar[bool] = True
    # "keys": finish returns rows in key order; "input": in the order the partial rows
    # came (the runtime brings them in the input's order: partition by partition);
    # "groups": each key's rows together, in an order of the operator's own; "sorted":
    # in an order of the operator's own across the output partitions (RangedShuffle)
    row_order: ClassVar[str] = "keys"
    # True: a key's partial rows may be finished in several places, each given the
    # sides' whole rows of the key (a join looks each row up on its own), so that the
    # runtime may split a key with too many rows (skew); False: a key meets in one place
    splittable: ClassVar[bool] = False

    @abstractmethod
    def output_schema(self, schema: pa.Schema) -> pa.Schema: ...

    @abstractmethod
    def key_columns(self) -> list[str]:
        """The columns of the partial rows that say where they go (the group keys)."""

    @abstractmethod
    def partial(self, part: pa.Table) -> pa.Table:
        """One partition's partial rows (an empty partition: an empty table)."""

    @abstractmethod
    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        """The output rows of ``partials`` (the partial rows of some keys from any number
        of partitions, in any order), ordered by key; ``sides``: the partial rows of
        each of ``sides()`` with the same keys."""


    def sides(self) -> list[ShuffleSide]:
        """Other tables shuffled with the input by the same keys (none for a group-by)."""
        return []

    def one_place(self) -> bool:
        """True when every partial row must be finished in one place (an aggregate of
        all the rows: ``finish`` of no partial rows is still its one row)."""
        return False


class RangedShuffle(Shuffle):
    """A shuffle whose rows go to the output partitions by ranges of an order, not by a
    hash (a sort): the runtime first combines every partition's ``sample(part, k)`` with
    ``combine_samples``, gives it to ``set_bounds(sample, buckets)``, then places each
    partition's partial rows by ``place(partials, buckets)``; bucket B's rows all come
    before bucket B+1's."""

    row_order = "sorted"

    @abstractmethod
    def sample(self, part: pa.Table, k: int) -> pa.Table:
        """At most ``k`` of a partition's rows, chosen by their content only."""

    @abstractmethod
    def combine_samples(self, a: pa.Table, b: pa.Table, k: int) -> pa.Table:
        """Two samples as one of at most ``k`` rows (associative, commutative)."""

    @abstractmethod
    def set_bounds(self, sample: pa.Table, buckets: int) -> None:
        """Ranges for ``buckets`` output partitions, from the combined sample."""

    @abstractmethod
    def place(self, partials: pa.Table, buckets: int) -> np.ndarray:
        """Each partial row's bucket (0..buckets-1) by the ranges set."""


class Action(Operator):
    """A driver-side step the runtime carries out (save_model); data passes through."""

    kind = "action"
    keeps_columns = True

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Operator]] = {}
_FITTED: dict[str, type[Transform]] = {}


def register(name: str) -> Callable[[type[Operator]], type[Operator]]:
    """Class decorator: make an operator available as ``op: <name>`` in pipelines.

    ```python
    @register("standard_scale")
    class StandardScale(Estimator): ...
    ```
    """

    def wrap(cls: type[Operator]) -> type[Operator]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"operator '{name}' registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def register_fitted(name: str) -> Callable[[type[Transform]], type[Transform]]:
    """Class decorator for a fitted transform that model artifacts refer to by name."""

    def wrap(cls: type[Transform]) -> type[Transform]:
        if name in _FITTED and _FITTED[name] is not cls:
            raise ValueError(f"fitted transform '{name}' registered twice")
        cls.name = name
        _FITTED[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type[Operator]]:
    """Every operator a pipeline can name, by name (every built-in module imported)."""
    from operators import library

    library.load_all()
    return dict(sorted(_REGISTRY.items()))


def lookup(op: str) -> type[Operator]:
    """The operator class for ``op``: a registered name or a dotted path ``pkg.mod.Class``
    (a built-in's module is imported here, the first time a pipeline names it)."""
    from operators import library

    if op not in _REGISTRY:
        library.load(op)
    if op in _REGISTRY:
        return _REGISTRY[op]
    if "." in op:
        module_name, _, attr = op.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ParamError(
                f"operator '{op}': cannot import module '{module_name}' ({exc})",
                hint="is the package installed in this environment?",
            ) from None
        cls = getattr(module, attr, None)
        if cls is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise ParamError(f"operator '{op}': module '{module_name}' has no '{attr}'"
                             f"{suggest(attr, names)}")
        if not (isinstance(cls, type) and issubclass(cls, Operator)):
            raise ParamError(
                f"operator '{op}' is not a sluice operator",
                hint="subclass operators.base.Transform, Estimator, Source or Sink",
            )
        if not cls.name:
            cls.name = op
        return cls
    known = sorted(set(_REGISTRY) | set(library.MODULES))
    raise ParamError(f"unknown operator '{op}'{suggest(op, known)}",
                     hint="`sluice ops` lists them")


def lookup_fitted(name: str) -> type[Transform]:
    """The class a saved model's step names (built-in fitted, registered or dotted)."""
    from operators import library

    if name not in _FITTED:
        library.load(name)
    if name in _FITTED:
        return _FITTED[name]
    cls = lookup(name)
    if not issubclass(cls, Transform):
        raise ArtifactError(f"step '{name}' in the model is not a transform")
    return cls
