"""A run: validate, plan, execute on an engine, write the run record.

Estimators are fitted here with ``operators.base.drive``, the same loop on every
engine: ``init`` -> (``partial`` on every partition -> ``combine`` -> ``update``)
until done -> ``fitted``. Engines only schedule partitions.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from operators.base import (
    Action,
    Estimator,
    Operator,
    RangedShuffle,
    Shuffle,
    Sink,
    SluiceError,
    Source,
    Transform,
)
from operators.crash import crash_point
from operators.evaluate.drift import (
    profile_combine,
    profile_finish,
    profile_partial,
    profiled_columns,
)
from operators.evaluate.promote import Promote
from operators.expressions import quote_name
from operators.features.derive import Derive
from operators.features.join import Join, ShuffleJoin
from operators.features.union import Union
from operators.io.fs import release_dir, resolve
from operators.io.model import SaveModel
from operators.io.parquet import ReadParquet, WriteParquet
from operators.models.common import ConditioningWarning, ConvergenceWarning, query_column
from operators.processes import this_process
from pipelines import profiles, runs
from pipelines import spec as spec_module
from pipelines.device import CPU, Placement
from pipelines.device import resolve as resolve_device
from pipelines.engines.base import Dataset, Engine, StagedSink, interruption, on_interrupt
from pipelines.incremental import Reads, settled_line, taken_line
from pipelines.lineage import ENDS, Lineage, run_uuid
from pipelines.lineage import datasets as lineage_datasets
from pipelines.plan import Plan, Step, build, check_output, param_for, training_only
from pipelines.runs import STAMP_FORMAT, default_runs_dir
from pipelines.shuffle import (
    SAMPLE_PER_BUCKET,
    ShuffledSource,
    ShuffleWrite,
    bucket_count,
    claim_scratch,
    default_scratch,
    exact,
    oversized_note,
    pieces,
    remove_scratch,
    scratch_note,
)
from pipelines.spec import Problem
from pipelines.store import Model, ModelStore, StagedModel, binding, required_columns
from pipelines.tracking import Tracker, log_quietly
from pipelines.tuning import (
    HeldOutView,
    HoldoutPositions,
    TrainingRows,
    ViewParams,
    candidate_warnings,
    chosen_unconverged,
    label_of,
)
from pipelines.union import UnionSource

ENGINES = ("local", "dask", "spark")


class ValidationFailed(SluiceError):
    """The pipeline has problems; nothing ran."""

    def __init__(self, problems: list[Problem]):
        super().__init__(f"{len(problems)} problem(s) in the pipeline")
        self.problems = problems


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM: Ctrl-C, a scheduler's kill or
    timeout), raised in the main thread like Ctrl-C's KeyboardInterrupt, so that the
    engine cancels its jobs and closes what it started, sinks discard what they had not
    committed, and the run record says ``interrupted``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM and SIGINT raise ``Interrupted``
    (a signal the process ignores, as nohup's SIGINT, stays ignored); a second signal
    during the clean-up raises again, stopping it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        on_interrupt()  # e.g. Spark's job, which pyspark waits for before it lets go
        raise Interrupted(signum)

    previous = {}
    for signum, default in ((signal.SIGTERM, signal.SIG_DFL),
                            (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def given_params(op: Any) -> dict[str, Any] | None:
    """An operator's parameters as its step set them, as JSON (None where an operator of
    one's own holds a value JSON cannot say)."""
    try:
        return op.params.model_dump(mode="json", by_alias=True, exclude_unset=True)
    except (ValueError, TypeError):  # pydantic's serialization errors are ValueErrors
        return None


def _names_in(value: Any) -> set[str]:
    """Every text in a step's parameters (a dict's keys too): the columns it may name."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {k for k in value if isinstance(k, str)} | {
            n for v in value.values() for n in _names_in(v)}
    if isinstance(value, list | tuple | set):
        return {n for v in value for n in _names_in(v)}
    return set()


def new_run_id() -> str:
    return time.strftime(STAMP_FORMAT, time.gmtime()) + "-" + secrets.token_hex(3)


def make_engine(name: str, *, scheduler: str | None = None, master: str | None = None,
                progress: bool = False) -> Engine:
    """The engine ``name`` names, configured from the CLI options: local, dask or spark
    (with its default profile), or a profile (``gpu`` for ``conf/engines/gpu.yaml``,
    or a path to a YAML file) that says which engine it configures."""
    kind, profile = profiles.locate(name)
    if kind == "local":
        from pipelines.engines.local import LocalEngine

        return LocalEngine(progress=progress, profile=profile)
    if kind == "dask":
        from pipelines.engines.dask import DaskEngine

        return DaskEngine(scheduler=scheduler, progress=progress, profile=profile)
    from pipelines.engines.spark import SparkEngine

    return SparkEngine(master=master, progress=progress, profile=profile)


def placements(plan: Plan, engine: Engine, device: str | None = None,
               dtype: str | None = None, notify: Callable[[str], None] | None = None
               ) -> dict[str, Placement]:
    """Where each step runs, and in which dtype: the step's keys > the command line >
    the pipeline's keys > the engine profile's > cpu, float64. A GPU that is asked for
    and missing fails here, before any data moves; ``auto`` without one falls back to
    the CPU with one notice."""
    profile = engine.profile

    def wanted(step: Step) -> str:
        if not step.op.numeric_kernels and not step.spec.device:
            return "cpu"  # Arrow on the host: no GPU to wait for
        return step.spec.device or device or plan.spec.device or profile.device or "cpu"

    requested = {step.id: wanted(step) for step in plan.steps}
    # a cluster's GPU workers may still be joining: worth waiting for when a step must
    # have a GPU, not when `auto` would run on the CPU anyway
    wait = "gpu" in requested.values()
    reasons: dict[str, str | None] = {}

    def problem() -> str | None:
        if "gpu" not in reasons:
            reasons["gpu"] = engine.gpu_problem(wait=wait)
        return reasons["gpu"]

    out: dict[str, Placement] = {}
    notices: list[str] = []
    for step in plan.steps:
        where = ""
        if step.spec.device:
            line = step.spec.param_lines.get("device", step.spec.line)
            where = f"{plan.spec.file}:{line}: step '{step.id}'"
        chosen, notice = resolve_device(requested[step.id], problem, where)
        if notice and notice not in notices:
            notices.append(notice)
        chosen_dtype = (step.spec.dtype or dtype or plan.spec.dtype or profile.dtype
                        or "float64")
        out[step.id] = Placement(chosen, chosen_dtype)
    for line in notices:
        if notify:
            notify(line)
    return out


def scoring_pipeline(model: str, source: str, output: str, *, mode: str = "error",
                     where: str | None = None, keep: list[str] | None = None,
                     contributions: bool = False, contributions_by: str = "features",
                     models: str | None = None, partition_by: list[str] | None = None,
                     threshold: float | None = None) -> str:
    """The pipeline ``sluice score`` runs, as YAML: read ``source`` (``where`` pushed
    into the read), score with ``model``, keep the ``keep`` input columns and the
    model's (all the input's when None), write ``output`` (``mode``, hive columns
    ``partition_by``)."""
    read: dict[str, Any] = {"id": "input", "op": "read_parquet", "path": source}
    if where:
        read["filter"] = where
    score: dict[str, Any] = {"id": "score", "op": "score", "model": model}
    if contributions:
        score.update(contributions=True, contributions_by=contributions_by)
    if threshold is not None:
        score["threshold"] = threshold
    steps = [read, score]
    if keep is not None:
        from pipelines.serving import load_model

        added = load_model(model, models).output_fields(contributions, contributions_by)
        steps.append({"id": "keep", "op": "select",
                      "columns": [*keep, *(f.name for f in added)]})
    write: dict[str, Any] = {"id": "output", "op": "write_parquet", "path": output,
                             "mode": mode}
    if partition_by:
        write["partition_by"] = partition_by
    steps.append(write)
    name = model.split("@", 1)[0].strip()
    return yaml.safe_dump({"pipeline": f"score_{name}", "steps": steps}, sort_keys=False)


def plan_file(path: str | Path, overrides: dict[str, str] | None = None,
              store: ModelStore | None = None, text: str | None = None,
              reads: Reads | None = None) -> Plan:
    """Parse and plan a pipeline file (``text``: its contents, ``path`` only naming it
    in messages); problems are in ``plan.problems``. ``reads``: what its incremental
    reads read before (default: as the runs folder says, unclaimed)."""
    spec = spec_module.load(path, overrides) if text is None else spec_module.parse(
        text, str(path), overrides)
    store = store or ModelStore()

    def resolve_model(ref: str) -> tuple[Any, list[str], dict[str, Any]]:
        model = store.load(ref)
        return binding(model, ref, store.path_of(model))

    return build(spec, resolve_model=resolve_model,
                 reads=reads if reads is not None else Reads(default_runs_dir()))


# what a fit warns of that is the run's warning (its status, its record), not Python's
FIT_WARNINGS = (ConvergenceWarning, ConditioningWarning)


def fit(engine: Engine, data: Dataset, step_id: str, estimator: Estimator,
        placement: Placement = CPU, warned: Callable[[str], None] | None = None
        ) -> tuple[Transform, dict[str, Any], Dataset]:
    """Fit an estimator over the engine's partitions (``Engine.fit``: the same driver
    loop on every engine, run where the engine says).

    ``warned`` is told what the fit warns of (it did not converge, its design matrix is
    ill-conditioned), as the run's warnings; without it, they are Python warnings.
    Returns the fitted transform, the fit's metrics and the (possibly persisted) input.
    """
    with warnings.catch_warnings(record=warned is not None) as caught:
        for category in FIT_WARNINGS if warned is not None else ():
            warnings.simplefilter("always", category)
        try:
            state, rounds, data = engine.fit(data, step_id, estimator, placement)
        except SluiceError as exc:
            if (exc.where or "").startswith("step '"):
                raise  # an upstream step failed while the fit pulled its rows: that step's
            raise exc.located(f"step '{step_id}'") from None
        t0 = time.perf_counter()  # the finish (a solver's last solve, the trees' arrays)
        try:
            metrics = {"passes": rounds, **estimator.metrics(state)}
            fitted = estimator.fitted(state)
        finally:
            engine.driver_time(step_id, time.perf_counter() - t0)
    for said in caught or []:
        if warned is not None and issubclass(said.category, FIT_WARNINGS):
            warned(str(said.message))
        else:  # another library's: as it would have been shown
            warnings.warn_explicit(said.message, said.category, said.filename, said.lineno)
    return fitted, metrics, data


@dataclass
class Run:
    plan: Plan
    engine: Engine
    store: ModelStore
    run_id: str
    record: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    fitted: dict[str, Transform] = field(default_factory=dict)
    placements: dict[str, Placement] = field(default_factory=dict)
    saved: dict[str, Model] = field(default_factory=dict)  # save_model step -> its model
    # a step's output as a multi-pass fit cached it: later passes over it (save_model's
    # profile) read the cache, not the source
    cached: dict[str, Dataset] = field(default_factory=dict)
    # where shuffle steps (aggregate) leave their partial rows for the run: removed at
    # its end (``pipelines/shuffle.py``)
    scratch: str = ""
    # where lines worth a person's attention go as the run finds them (the CLI: stderr)
    notify: Callable[[str], None] | None = None
    # the write steps' outputs and the save_model steps' versions, written and staged:
    # published once every step has run (``publish``), so a run failing after a write
    # or a save publishes none (``discard``): the files of an incremental read are read
    # again by the next run, and their rows must not be in an output already; a model
    # trained on rows whose outputs were never published is no model of the registry
    staged: list[tuple[Step, StagedSink | StagedModel]] = field(default_factory=list)
    # how many writes of each output the run made (``_publish_into``)
    written: dict[Any, int] = field(default_factory=dict)

    def placement(self, step: Step) -> Placement:
        return self.placements.get(step.id, CPU)

    def preflight(self) -> None:
        """An output the run may not write, or an alias it may not set, said before
        anything runs (an engine started, a model fitted for an hour)."""
        for step in self.plan.steps:
            try:
                if isinstance(step.op, Sink):
                    check_output(self.plan, step)
                for name, alias in self._aliases_set(step):
                    self.store.check_alias(name, alias)
            except SluiceError as exc:
                # at the line validate says the same problem at (``output_problems``)
                exc.param = exc.param or param_for(step, exc)
                raise self._locate(step, exc) from None

    def _aliases_set(self, step: Step) -> list[tuple[str, str]]:
        """The (model name, alias) pairs a step may point at the version the run saves."""
        if isinstance(step.op, SaveModel):
            return [(step.op.params.name, a) for a in step.op.params.aliases]
        if isinstance(step.op, Promote) and step.saved_by is not None:
            save = next(s for s in self.plan.steps if s.id == step.saved_by)
            assert isinstance(save.op, SaveModel)
            return [(save.op.params.name, step.op.params.alias)]
        return []

    def execute(self) -> None:
        for step in self.plan.steps:
            t0 = time.perf_counter()
            before = {s: stats.seconds for s, stats in self.engine.stats.items()}
            try:
                self._step(step)
            except SluiceError as exc:
                raise self._locate(step, exc) from None
            entry = self.record["steps"][step.id]
            entry["wall_seconds"] = round(time.perf_counter() - t0, 6)
            # the lazy steps before it whose partitions it computed (a read, a transform
            # pulled by a fit): in its wall time, their work theirs
            ran = [s.id for s in self.plan.steps if s.id != step.id and s.id in
                   self.engine.stats and self.engine.stats[s.id].seconds > before.get(s.id, 0)]
            if ran:
                entry["wall_includes"] = ran
        for step in self.plan.steps:
            if not self.plan.consumers(step.id) and isinstance(step.op, Transform | Union):
                # a dangling transform (or union) still runs, so that its rows are counted
                # (by the step's own partitions: the count's CPU pass is its work only)
                self.engine.aggregate(self.datasets[step.id], part_of(step.id, "count"),
                                      lambda part, xp: part.num_rows, lambda a, b: a + b,
                                      label=f"{step.id}: count", placement=CPU)

    def publish(self, count: int | None = None) -> None:
        """Commit the staged outputs and model versions (the first ``count``), in the
        order the steps made them."""
        for _ in range(len(self.staged) if count is None else count):
            step, staged = self.staged.pop(0)
            try:
                output = staged.publish()
            except SluiceError as exc:
                raise self._locate(step, exc) from None
            if isinstance(staged, StagedModel):
                self._published_model(step, staged, output)
                continue
            self.record["outputs"].append({"step": step.id, **output})
            self._say(step, small_files_note(output,
                                             getattr(step.op.params, "partition_by", None)))

    def _publish_into(self, sink: Sink) -> str:
        """Publish the staged outputs that ``sink`` writes into too (a pipeline writing
        one output twice): its write finds their rows there, as written in that order.
        The id its files are named by: the run's, and for a second write of one output
        in the run the run's and ``.2`` (the first one's files keep their names)."""
        where = _target_of(sink)
        if where is None:
            return self.run_id
        for step, staged in list(self.staged):
            if isinstance(staged, StagedSink) and _target_of(staged.sink) == where:
                self.staged.remove((step, staged))
                self.staged.insert(0, (step, staged))
                self.publish(1)
        self.written[where] = self.written.get(where, 0) + 1
        times = self.written[where]
        return self.run_id if times == 1 else f"{self.run_id}.{times}"

    def discard(self) -> None:
        """Abort the outputs and model versions still staged (a run that failed, or was
        stopped)."""
        while self.staged:
            with contextlib.suppress(Exception):
                self.staged.pop(0)[1].discard()

    def _locate(self, step: Step, exc: SluiceError) -> SluiceError:
        """Prefix file:line of the step the error names (an upstream step's partition
        can fail while a later step pulls it), else of the step being run; one that
        names its file:line already (a tune candidate's, ``_candidate_failure``) as it is."""
        if exc.where and exc.where.startswith(f"{self.plan.spec.file}:"):
            return exc
        self._derived_label(step, exc)
        for named in self.plan.steps:
            if exc.where and exc.where.startswith(f"step '{named.id}'"):
                exc.where = f"{self.plan.spec.file}:{self._line(named, exc)}: {exc.where}"
                return exc
        here = f"{self.plan.spec.file}:{self._line(step, exc)}"
        return exc.located(f"{here}: step '{step.id}' ({step.op.name})")

    def _derived_label(self, step: Step, exc: SluiceError) -> None:
        """A model step's label that is null or NaN where a derive made it (a division by
        zero, an `if` without an else): the hint names that derive's column, not a read
        filter the rows never went through."""
        label = getattr(step.op.params, "label", None)
        if not isinstance(label, str) or not exc.message.startswith(
                f"label column '{label}' has "):
            return
        made = [s for s in self.plan.chain_to(step.id)[:-1]
                if isinstance(s.op, Derive) and label in s.op.params.columns]
        if not made:
            return
        derive = made[-1]
        text = derive.op.params.columns[label]
        kept = (f"abs({quote_name(label)}) < 1e308" if "NaN" in exc.message else
                f"{quote_name(label)} is not null")
        exc.hint = (f"step '{derive.id}' (derive, {self.plan.spec.file}:"
                    f"{derive.spec.line_of('columns', f'derive column {label!r}')}) makes it: "
                    f"`{text}` is not a value for those rows; give it one there (an else "
                    f"of its if, coalesce(..., 0), a divisor that is not 0), or keep the "
                    f"rows with a label after it (op: filter, where: \"{kept}\")")

    def _line(self, step: Step, exc: SluiceError) -> int:
        """The line of the parameter ``exc`` names (a filter's `where`, a derive's
        column: ``SluiceError.param``; a filter step's `where` that failed in the read
        it was given to: that step's), else the step's."""
        if step.pushed_from is not None and exc.param == "where":
            step = self.plan.step(step.pushed_from)
        param = exc.param if exc.param in step.spec.params else None
        return step.spec.line_of(param, str(exc))

    def _step(self, step: Step) -> None:
        if step.tuned_by is not None:
            return  # a feature step its model's tune fits, once per candidate (``_tune``)
        if isinstance(step.op, Join | ShuffleJoin) and step.op.params.table is not None:
            self._join_step_table(step)
        op = step.op
        data = self.datasets.get(step.input) if step.input else None
        if isinstance(op, Source):
            self.datasets[step.id] = self.engine.read(op, step.id, step.schema)
        elif isinstance(op, Estimator):
            if isinstance(op, Promote):
                self._bind_promote(step)
            elif step.saved_by is not None:  # drift
                self._bind_saved(step)
            if step.tuning is not None:
                transform, metrics, data = self._tune(step, data)
            else:
                transform, metrics, data = fit(self.engine, data, step.id, op,
                                               self.placement(step),
                                               lambda said, step=step: self._warn(step, said))
            if data.cache_key is not None and step.input is not None:
                self.cached[step.input] = data
            self.fitted[step.id] = transform
            self.record["metrics"][step.id] = metrics
            self._say(step, metrics.get("note"))
            if isinstance(op, Promote):
                self._promote(step, metrics)
            # the fitted schema can differ from the plan's (one_hot's columns come from
            # the vocabulary), so the steps after see the real one
            schema = transform.output_schema(data.schema)
            # what scores new rows is ``transform``; the rows it was fitted on may differ
            self.datasets[step.id] = self.engine.map(data, step.id, transform.training_view(),
                                                     schema, self.placement(step))
        elif isinstance(op, Shuffle):
            self.datasets[step.id] = self._shuffle(step, data)
        elif isinstance(op, Union):
            self.datasets[step.id] = self._union(step, data)
        elif isinstance(op, Sink):
            named = self._publish_into(op)
            staged = StagedSink(op)
            output = self.engine.write(data, step.id, staged, named)  # type: ignore[arg-type]
            self.staged.append((step, staged))
            self.record["steps"][step.id]["rows"] = output["rows"]
            self.datasets[step.id] = data
        elif isinstance(op, SaveModel):
            self._save_model(step)
            self.datasets[step.id] = data
        elif isinstance(op, Action):
            raise SluiceError(f"step '{step.id}': no runtime support for action '{op.name}'")
        else:
            if step.saved_by is not None:
                self._bind_saved(step)
            self.fitted[step.id] = op
            schema = op.output_schema(data.schema)
            self.datasets[step.id] = self.engine.map(data, step.id, op, schema,
                                                     self.placement(step))

    def _join_step_table(self, step: Step) -> None:
        """A join of a table step's rows (``table:``), given their columns as the step
        made them; with ``auto``, a shuffle join instead of a broadcast when the rows are
        over ``max_mb``; a broadcast collects them on the driver."""
        op = step.op
        table = self.datasets[op.params.table]
        # the columns as the step made them (a fit's, known only now)
        op.bind_step_schema(op.params.table, table.schema)
        if isinstance(op, ShuffleJoin):
            self.record["steps"][step.id]["strategy"] = "shuffle"
            return
        estimate = table.estimated_bytes(self.engine.partitions(table))
        if estimate is None and op.params.strategy == "auto":
            # not known from its source (a step after the read adds columns): measured,
            # one pass over the table step's rows
            wanted = op.table_columns(table.schema)
            estimate = self.engine.aggregate(
                table, part_of(step.id, "table size"),
                lambda part, xp: part.select(wanted).nbytes,
                lambda a, b: a + b, label=f"{step.id}: size of {op.params.table}",
                placement=CPU)
        chosen = op.decided(estimate)
        entry = self.record["steps"][step.id]
        entry["strategy"] = "broadcast" if isinstance(chosen, Join) else "shuffle"
        if chosen.estimated_mb is not None:
            entry["estimated_mb"] = round(chosen.estimated_mb, 3)
        entry["kind"] = chosen.kind
        if isinstance(chosen, Join):
            chosen.bind_table(self.engine.collect(table))
        step.op = chosen

    def _union(self, step: Step, data: Dataset) -> Dataset:
        """A union: a source whose partitions are its input's, then each step's, each
        read through its own steps and made to the union's columns as the steps made
        theirs (a fit's, known only now); no row moves (``pipelines/union.py``)."""
        op = step.op
        assert isinstance(op, Union)
        for other in op.step_inputs():
            op.bind_step_schema(other, self.datasets[other].schema)
        schema = op.output_schema(data.schema)
        names = [step.input, *op.step_inputs()]
        branches = [self.datasets[name] for name in names]
        source = UnionSource(op, step.id, names, branches,
                             [self.engine.partitions(b) for b in branches], schema)
        return self.engine.read(source, step.id, schema)

    def _shuffle(self, step: Step, data: Dataset) -> Dataset:
        """A shuffle step: every partition's partial rows written to the scratch folder
        by a hash of their keys, then read back as a source whose partitions combine
        them (``pipelines/shuffle.py``)."""
        op = step.op
        assert isinstance(op, Shuffle)
        # planned again on the columns as the steps before made them (a fit's, known only
        # now): what the partial rows take from them is bound before any is made (the
        # type a join's keys are compared in, which its table's side hashes them in too)
        op.output_schema(data.schema)
        # a side (a shuffle join's table) is a step's rows, or read as a source of its own,
        # under its own name in the engine's figures
        sides = [(side, self.datasets[side.step] if side.step is not None else
                  self.engine.read(side.source(), part_of(step.id, side.name),
                                   side.source().schema())) for side in op.sides()]
        datasets = [data, *(d for _, d in sides)]
        listed = [self.engine.partitions(d) for d in datasets]
        inputs = max(len(partitions) for partitions in listed)
        # the input's size sets the buckets, unless the step says how many (no footers
        # read for nothing)
        estimates = [None] if exact(op) else [
            d.estimated_bytes(partitions) for d, partitions in zip(datasets, listed,
                                                                   strict=True)]
        buckets = bucket_count(op, inputs, None if None in estimates else sum(estimates))
        if isinstance(op, RangedShuffle) and buckets > 1:
            # the ranges' bounds from a sample of the rows (a pass: those of the smallest
            # hash of their values, however the rows are cut)
            k = max(1000, SAMPLE_PER_BUCKET * buckets)
            sample = self.engine.aggregate(
                data, part_of(step.id, "sample"), lambda part, xp: op.sample(part, k),
                lambda a, b: op.combine_samples(a, b, k), label=f"{step.id}: sample",
                placement=CPU)
            op.set_bounds(sample, buckets)
        url = f"{self.scratch.rstrip('/')}/{step.id}"
        # rows of several buckets of one partition are put back in order by their places
        positions = op.row_order == "input" and not exact(op)
        written = self.engine.write(data, step.id, ShuffleWrite(op, url, buckets,
                                                                positions=positions),
                                    self.run_id)
        figures = {"partial_rows": written["partial_rows"], "files": written["files"]}
        side_urls, side_written = [], []
        for side, side_data in sides:
            side_url = f"{url}/{side.name}"
            made = self.engine.write(side_data, part_of(step.id, side.name),
                                     ShuffleWrite(side, side_url, buckets), self.run_id)
            figures[f"{side.name}_rows"] = made["partial_rows"]
            figures["files"] += made["files"]
            side_urls.append((side_url, side.partial_schema(side_data.schema), made))
            side_written.append(made)
        chosen = pieces(op, written, side_written, inputs)
        split = sorted({p.lo for p in chosen if p.files is not None})
        figures.update({
            "partitions": len(chosen), "buckets": buckets,
            "largest_mb": round(max(p.bytes for p in chosen) / 2**20, 3),
            **({"split_buckets": len(split)} if split else {})})
        self.record["steps"][step.id]["shuffle"] = figures
        self._say(step, oversized_note(op, chosen))
        source = ShuffledSource(op, url, data.schema, written, sides=side_urls,
                                pieces=chosen, positions=positions)
        return self.engine.read(source, step.id, source.schema())

    def _tune(self, step: Step, data: Dataset) -> tuple[Transform, dict[str, Any], Dataset]:
        """Fit every candidate of a tuned step on the same rows (the input is cached after
        the first) and keep the best on the held-out rows; the step's operator becomes
        the best's, so that the saved model says how it was trained."""
        tuning = step.tuning
        assert tuning is not None
        feature = tuning.feature
        if feature is not None:  # its feature step, fitted for each candidate
            fstep = self.plan.step(feature.step)
            marked = self._positions(step, fstep)

        def fit_candidate(i: int, candidate: Estimator, data: Dataset,
                          warned: Callable[[Step, str], None]) -> tuple[Any, ...]:
            if feature is None:
                return (*fit(self.engine, data, step.id, candidate, self.placement(step),
                             lambda said: warned(step, said)), None)
            return self._fit_through(fstep, feature.build(i), marked, step, candidate, warned)

        # each candidate fit's warnings (its label, what it said), said as the run's
        # warnings once the fits are done, alike ones in one line; the model's own fit's
        # (the best values fitted again, or without folds the best candidate's) as a
        # plain fit's
        said: list[tuple[str, Step, str]] = []
        model_fit = None  # the label of the candidate fit that is the model
        fits = []
        fitted_count = unconverged = 0  # candidate fits made, and those that did not converge
        try:
            for i, combo in enumerate(tuning.combos):
                result: dict[str, Any] = {"params": combo, "passes": 0}
                candidates = tuning.folds[i] if tuning.folds else [tuning.ops[i]]
                for f, candidate in enumerate(candidates):
                    which = label_of(combo) + (f" (fold {f + 1} of {len(candidates)})"
                                               if tuning.folds else "")

                    def candidate_warned(at: Step, message: str, which: str = which) -> None:
                        said.append((which, at, message))

                    try:
                        transform, metrics, data, fitted = fit_candidate(
                            i, candidate, data, candidate_warned)
                        name, value = tuning.score(metrics)
                    except SluiceError as exc:
                        raise self._candidate_failure(exc, step, which) from None
                    fitted_count += 1
                    unconverged += metrics.get("converged") is False
                    tuning.metric = name  # every candidate by the first one's metric
                    result["metric"] = name
                    result.setdefault("folds", []).append(value)
                    result["passes"] += metrics["passes"]
                    if said and said[-1][0] == which:
                        result["warned"] = result.get("warned", 0) + 1
                    undefined = metrics["validation"].get("undefined")
                    if value != value and undefined:  # no value: it loses, and why
                        result.setdefault("note", f"{which}: {undefined}")
                result["value"] = float(np.mean(result["folds"]))
                tuning.results.append(result)
                fits.append((transform, metrics, fitted))
            try:
                best = tuning.best()
            except SluiceError as exc:
                raise exc.located(f"step '{step.id}'") from None
            if not tuning.folds:
                model_fit = label_of(tuning.combos[best])
        finally:
            for line in candidate_warnings([
                    (w, m if at is step else f"step '{at.id}' ({at.op.name}): {m}")
                    for w, at, m in said if w != model_fit], fitted_count):
                self._warn(step, line)
        for which, at, message in said:
            if which == model_fit:  # named: the tune's other fits are counted apart
                self._warn(at, f"tune candidate {which}, chosen (its fit is the model): "
                               f"{message}")
        if fitted_count and unconverged == fitted_count:
            self._warn(step, chosen_unconverged(label_of(tuning.combos[best]), fitted_count,
                                                step.spec.tune))
        step.op = tuning.ops[best]
        self._record_params(step)
        if tuning.folds:  # the best values, fitted as the step says
            transform, metrics, data, fitted = fit_candidate(best, step.op, data, self._warn)
        else:
            transform, metrics, fitted = fits[best]
        if feature is not None:  # the best feature step's, as if it had run on its turn
            ftransform, fmetrics = fitted
            fstep.op = feature.build(best)
            self._record_params(fstep)
            self.fitted[fstep.id] = ftransform
            self.record["metrics"][fstep.id] = fmetrics
            self._say(fstep, fmetrics.get("note"))
            # the rows the model trained on, the position no longer needed
            view = self._held_out_view(ftransform, step.op, drop=True)
            data = self.engine.map(marked, fstep.id, view, view.output_schema(marked.schema),
                                   self.placement(fstep))
            self.datasets[fstep.id] = data
        name = tuning.results[best]["metric"]
        candidates = {}
        for r in tuning.results:
            entry = {name: r["value"], "passes": r["passes"]}
            if tuning.folds:
                entry["folds"] = r["folds"]
            for key in ("warned", "note"):
                if key in r:
                    entry[key] = r[key]
            candidates[label_of(r["params"])] = entry
        metrics = {**metrics, "tuning": {"metric": name, "best": label_of(tuning.combos[best]),
                                         "folds": len(tuning.folds[0]) if tuning.folds else 0,
                                         "candidates": candidates}}
        return transform, metrics, data

    def _candidate_failure(self, exc: SluiceError, step: Step, which: str) -> SluiceError:
        """A tune candidate's failure, named by its values (``which``). One in the feature
        step the tune varies is its values' doing mostly (a min_df no term reaches: "lower
        min_df"), so it is said at the tune's line of that step's values, where the value
        to change is, with the feature step named in the message."""
        feature = step.tuning.feature if step.tuning is not None else None
        if feature is None or not (exc.where or "").startswith(f"step '{feature.step}'"):
            exc.message = f"tune candidate {which}: {exc.message}"
            return exc.located(f"step '{step.id}'")
        line = next((step.spec.line_of(f"tune.{k}") for k in step.spec.tune
                     if k.startswith(f"{feature.step}.")), step.spec.line_of("tune"))
        exc.message = f"tune candidate {which}: {exc.where}: {exc.message}"
        exc.where = f"{self.plan.spec.file}:{line}: step '{step.id}' ({step.op.name})"
        return exc

    def _say(self, step: Step, line: str | None) -> None:
        """A line worth a person's attention, at its step's line (none: nothing)."""
        if line and self.notify:
            self.notify(f"{self.plan.spec.file}:{step.spec.line}: step '{step.id}': {line}")

    def _warn(self, step: Step, said: str) -> None:
        """A warning of the run (a fit that did not converge), at its step's line: printed
        as the run ends, counted in its status (``succeeded, 1 warning``)."""
        self.record.setdefault("warnings", []).append(
            f"{self.plan.spec.file}:{step.spec.line}: step '{step.id}' ({step.op.name}): {said}")

    def _record_params(self, step: Step) -> None:
        """A tuned step's parameters in the record as the best candidate's (they were the
        first's, as the step was planned): what MLflow and `runs compare` show."""
        given = given_params(step.op)
        if given:
            self.record["steps"][step.id]["params"] = given

    def _positions(self, step: Step, fstep: Step) -> Dataset:
        """The feature step's input rows with each one's place in the model's hold-out
        (``HoldoutPositions``), kept for every candidate's fits."""
        source = self.datasets[fstep.input]
        op = HoldoutPositions(seed=step.op.params.seed, by=query_column(step.op.params))
        return self.engine.persist(self.engine.map(source, fstep.id, op,
                                                   op.output_schema(source.schema)))

    def _fit_through(self, fstep: Step, fop: Operator, marked: Dataset, step: Step,
                     op: Estimator, warned: Callable[[Step, str], None]) -> tuple[Any, ...]:
        """A candidate of a model tuned with its feature step: the feature step fitted on
        the rows the model trains on, then the model on its transform of every row (the
        held-out rows where ``marked`` places them); ``warned`` is told what each fit
        warns of, and of which step."""
        p = op.params
        train = marked if not p.validation_fraction else self.engine.map(
            marked, fstep.id, TrainingRows(fraction=p.validation_fraction,
                                           start=p.validation_start), marked.schema)
        ftransform, fmetrics, _ = fit(self.engine, train, fstep.id, fop, self.placement(fstep),
                                      lambda said: warned(fstep, said))
        view = self._held_out_view(ftransform, op)
        rows = self.engine.map(marked, fstep.id, view, view.output_schema(marked.schema),
                               self.placement(fstep))
        transform, metrics, kept = fit(self.engine, rows, step.id, op, self.placement(step),
                                       lambda said: warned(step, said))
        if kept.cache_key is not None and kept.cache_key != marked.cache_key:
            self.engine.release(kept)  # this candidate's rows: the next one's need the room
        return transform, metrics, rows, (ftransform, fmetrics)

    @staticmethod
    def _held_out_view(ftransform: Transform, op: Operator, drop: bool = False
                       ) -> HeldOutView:
        """The feature step's fitted transform of the rows as model ``op`` holds them out
        (``HeldOutView``)."""
        p = op.params
        return HeldOutView(ViewParams(fraction=p.validation_fraction or 0.0,
                                      start=p.validation_start, drop=drop), fitted=ftransform)

    def _bind_promote(self, step: Step) -> None:
        """Bind a promote step to the model this run saved (the challenger) and to the
        version its alias names now (the champion; none when the alias is new)."""
        assert isinstance(step.op, Promote)
        model = self.saved[step.saved_by]
        alias = step.op.params.alias
        champion = None
        if alias in self.store.aliases(model.name):
            ref = f"{model.name}@{alias}"
            named = self.store.load(ref)
            champion = binding(named, ref, self.store.path_of(named))
        step.op.bind(binding(model, step.op.params.model, self.store.path_of(model)),
                     champion)

    def _promote(self, step: Step, decision: dict[str, Any]) -> None:
        """Move the alias to the challenger when promote decided so."""
        assert isinstance(step.op, Promote)
        model = self.saved[step.saved_by]
        alias = step.op.params.alias
        entry = {"step": step.id, "name": model.name, "alias": alias,
                 "version": model.version, "promoted": bool(decision.get("promoted")),
                 "reason": decision.get("reason")}
        if entry["promoted"]:  # moved when the run publishes the challenger
            entry["was"] = None
            self._staged_model(step.saved_by).aliases.append(alias)
        self.record.setdefault("promotions", []).append(entry)

    def _staged_model(self, save_id: str) -> StagedModel:
        return next(s for st, s in self.staged
                    if st.id == save_id and isinstance(s, StagedModel))

    def _bind_saved(self, step: Step) -> None:
        """Bind a score step to the model this run saved at ``step.saved_by``."""
        model = self.saved[step.saved_by]
        ref = step.op.params.model.strip()
        chain, required, info = binding(model, ref, self.store.path_of(model))
        step.op.bind(chain, required, info)
        self.record["models_used"].append({"step": step.id, **{
            k: v for k, v in info.items() if k != "meta"}})

    def _data_steps(self, save_id: str, chain: list[Step]) -> list[dict[str, Any]]:
        kept = {s.id for s in chain}
        out = []
        # every step whose rows reach the save: a union's other steps and a join's table
        # step too (a scoring pipeline repeats them)
        for s in self.plan.upstream(save_id):
            if s.id in kept or isinstance(s.op, Sink | Action) or s.input is None:
                continue
            out.append({"step": s.id, "op": s.op.name, "params": given_params(s.op),
                        "added_columns": [f.name for f in self.plan.added_by(s) or []]})
        return out

    def _profile(self, step: Step, chain: list[Step], saved: list[Operator]
                 ) -> dict[str, Any]:
        """The training rows' profile (``operators/evaluate/drift.py``): one pass over
        the model's input (cached by the fits, mostly) for the numeric and text columns
        the saved model (``saved``: its steps) reads."""
        where = chain[0].input
        data = self._rows_at(where)
        if data is None or data.schema is None:
            return {"rows": 0, "sample_rows": 0, "columns": {}}
        needed = required_columns(saved, self.plan.model_input(step.id) or data.schema)
        at = self._profiled_at(step.id, chain, [c for c in needed if c in data.schema.names])
        # the rows that reached the model's fits first (they set the profile's count);
        # a column a step in between rewrote, on the rows before that step
        order = [where] + [s.id for s in self.plan.chain_to(step.id)]
        profile: dict[str, Any] | None = None
        for point in sorted(set(at.values()), key=order.index, reverse=True):
            part = self._profile_of(self._rows_at(point), step.id,
                                    [c for c, p in at.items() if p == point])
            if profile is None:
                profile = part
                continue
            for entry in part["columns"].values():
                entry["rows"] = part["rows"]
            profile["columns"].update(part["columns"])
        assert profile is not None
        profile["columns"] = {c: profile["columns"][c] for c in at if c in profile["columns"]}
        # a column a data step among the model's adds (a join between two fitted steps)
        # is profiled on that step's rows, in a pass of its own
        for s in self.plan.data_steps_in_model(step.id):
            made = {f.name for f in self.plan.added_by(s) or []}
            added = [c for c in needed if c in made and c not in profile["columns"]]
            if added and s.id in self.datasets:
                profile["columns"].update(self._profile_of(self.datasets[s.id], step.id,
                                                           added)["columns"])
        return profile

    def _rows_at(self, step_id: str | None) -> Dataset | None:
        """The rows a step made in this run (those a fit cached, where it did)."""
        if step_id is None:
            return None
        return self.cached.get(step_id) or self.datasets.get(step_id)

    def _profiled_at(self, save_id: str, chain: list[Step], columns: list[str]
                     ) -> dict[str, str]:
        """The step whose rows each of ``columns`` (the model's input columns) is profiled
        on: the last of the steps shaping the data between the model's first step and its
        last fit (a sample, a filter: the training rows are theirs, not the read's) up to
        which no step rewrote the column; the model's input where none shapes the rows.
        A step rewrites a column it makes, changes the type of, drops, or names in its
        parameters (impute's, scale's ``columns``): the profile is of the input's values."""
        where = chain[0].input
        assert where is not None
        at = dict.fromkeys(columns, where)
        lineage = self.plan.chain_to(save_id)
        fits = [i for i, s in enumerate(lineage) if s in chain and isinstance(s.op, Estimator)]
        if not fits:
            return at
        between = lineage[lineage.index(chain[0]):fits[-1]]
        kept = {s.id for s in chain}
        shaped = [i for i, s in enumerate(between)
                  if s.id not in kept and not isinstance(s.op, Sink | Action)]
        if not shaped:
            return at
        live = set(columns)
        for s in between[:shaped[-1] + 1]:
            if not isinstance(s.op, Sink | Action):
                live -= self._rewritten(s, live)
            for c in live:
                at[c] = s.id
        return at

    def _rewritten(self, step: Step, columns: set[str]) -> set[str]:
        """Which of ``columns`` ``step`` may have rewritten in this run (see
        ``_profiled_at``); all of them where its rows' schemas are not known."""
        before, after = self._rows_at(step.input), self._rows_at(step.id)
        if before is None or after is None or before.schema is None or after.schema is None:
            return set(columns)
        op = self.fitted.get(step.id, step.op)
        # a shuffle (repartition, a shuffle join) derives no column under a new name
        derived = op.derived_from() if isinstance(op, Transform) else {}
        named = set(derived) | _names_in(step.op.params.model_dump())
        return {c for c in columns
                if c in named or c not in after.schema.names or c not in before.schema.names
                or after.schema.field(c).type != before.schema.field(c).type}

    def _profile_of(self, data: Dataset, step_id: str, wanted: list[str]) -> dict[str, Any]:
        columns = profiled_columns(data.schema, wanted)
        if not columns:
            return {"rows": 0, "sample_rows": 0, "columns": {}}
        # the passes over the rows at each point (the model's input, a sample's): the
        # save's work, not its rows, which are its input's
        stats = self.engine.aggregate(data, part_of(step_id, "profile"),
                                      lambda part, xp: profile_partial(part, columns),
                                      profile_combine, label=f"{step_id}: profile")
        return profile_finish(stats)

    def _save_model(self, step: Step) -> None:
        chain = self.plan.model_chain(step.id)
        source_schema = self.plan.model_input(step.id)
        steps = [view for s, only in zip(chain, training_only(self.plan, chain), strict=True)
                 if (view := self.fitted[s.id].saved_view(only)) is not None]
        info = {
            "pipeline": self.plan.spec.name,
            "run_id": self.run_id,
            "params": self.plan.spec.params,
            "steps_from": [s.id for s in chain],
            # what each fitted step was given (as the pipeline file said it): with the run
            # record, the model says how it was trained
            "trained_with": {s.id: {"op": s.op.name, "params": given_params(s.op)}
                             for s in chain if isinstance(s.op, Estimator)},
            # the steps that shaped the training data and are not in the model (filter,
            # sample, join), with the columns they added: what a scoring pipeline repeats
            "data_steps": self._data_steps(step.id, chain),
            "metrics": {s.id: self.record["metrics"].get(s.id) for s in chain
                        if s.id in self.record["metrics"]},
        }
        if step.op.params.description:
            info["description"] = step.op.params.description
        if step.op.params.profile:
            info["profile"] = self._profile(step, chain, steps)
        # staged: the version's number is taken and later steps score with it, but it is
        # a model of the registry (and its aliases move) only when the run publishes
        model = self.store.stage(step.op.params.name, steps, source_schema, info)
        self.saved[step.id] = model
        self.staged.append((step, StagedModel(self.store, model,
                                              list(step.op.params.aliases))))

    def _published_model(self, step: Step, staged: StagedModel,
                         moved: dict[str, int | None]) -> None:
        """The run record's entries of a model version the run published: the models it
        saved, and the promotions that moved an alias to it (``was``: where it was)."""
        model = staged.model
        self.record["models"].append({"step": step.id, "name": model.name,
                                      "version": model.version,
                                      "path": self.store.path_of(model),
                                      **({"aliases": list(step.op.params.aliases)}
                                         if step.op.params.aliases else {})})
        for entry in self.record.get("promotions", []):
            if entry["promoted"] and entry["version"] == model.version \
                    and entry["name"] == model.name:
                entry["was"] = moved.get(entry["alias"])


def _target_of(sink: Any) -> str | None:
    """Where a write step writes (its path, resolved), None for a sink without one."""
    params = getattr(sink, "params", None)
    path = getattr(params, "path", None)
    if not isinstance(path, str):
        return None
    location = resolve(path, getattr(params, "storage_options", None) or {})
    return location.path if location.local else location.url


def small_files_note(output: dict[str, Any], partition_by: list[str] | None) -> str | None:
    """A line when a hive-partitioned write made many small files: every input partition
    writes a file into each partition folder its rows fall in (Spark's small-files
    problem); a ``repartition`` by the same columns makes one file a folder."""
    files, folders = output.get("files", 0), output.get("folders", 0)
    if not partition_by or not folders or files < 20 or files < 4 * folders:
        return None
    keys = ", ".join(partition_by)
    return (f"wrote {files:,} files into {folders:,} partition folders ({files / folders:.0f} "
            f"each, a file from every input partition): a `repartition` step with `by: "
            f"[{keys}]` before the write makes one file a folder")


PART = " ("


def part_of(step_id: str, part: str) -> str:
    """The name a step's pass of its own is counted under in the engine's figures (a
    shuffle's sample, a save's profile): its time is the step's work; its rows,
    partitions and device are not the step's, which are those of the rows it puts out."""
    return f"{step_id}{PART}{part})"


def _record_head(plan: Plan, path: str | Path, run_id: str, started: float,
                 engine: dict[str, Any]) -> dict[str, Any]:
    """What every run record starts with: the run, its pipeline and params, its engine
    and start, and what it made (none yet)."""
    return {"run_id": run_id, "pipeline": plan.spec.name, "file": str(path),
            "params": plan.spec.params, "engine": engine, **this_process(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            # to the microsecond: the order of runs started in one second (an object
            # store's files say when they were written to the second only)
            "started_unix": round(started, 6),
            "outputs": [], "models": [], "metrics": {}}


def _refused(plan: Plan, path: str | Path, run_id: str, started: float, engine: str,
             exc: SluiceError, stage: str, runs_dir: str, tracker: Any = None,
             source: str | None = None, notify: Callable[[str], None] | None = None,
             held_by: str | None = None) -> None:
    """The record of a run that stopped before it started (its plan's problems, no
    device for it, another run holding its incremental reads: ``held_by``, that run's
    id): status failed, ``failed_in`` the stage, every problem, the steps the file
    declares (``_declared``; none known where it did not parse: ``steps_unknown`` says
    why); logged to MLflow too where the run would have been (``tracker``)."""
    if not plan.spec.raw_text.strip():
        return  # no pipeline there (a path mistyped, a Parquet file): no run to record
    found = list(getattr(exc, "problems", []))
    problems = [str(p) for p in found]
    error = (f"{problems[0]}" + (f" (and {len(problems) - 1} more problem(s))"
                                 if len(problems) > 1 else "")) if problems else str(exc)
    record = {
        **_record_head(plan, path, run_id, started, {"name": engine}), "status": "failed",
        "failed_in": stage, **({"held_by": held_by} if held_by else {}),
        "steps": _declared(plan, found), "models_used": [], "error": error,
        **({"problems": problems} if problems else {}),
        "seconds": round(time.time() - started, 6)}
    if not plan.spec.steps:
        record["steps_unknown"] = ("the file did not parse as a pipeline: "
                                   f"{(plan.spec.problems or found or [exc])[0]}")
    if tracker is not None and plan.spec.name:
        record["mlflow"] = log_quietly(tracker, record, source, notify)
    _write_record(record, runs_dir, quiet=True)


def _lineage_event(lineage: Lineage, kind: str, plan: Plan, record: dict[str, Any],
                   notify: Callable[[str], None] | None) -> None:
    """Send the run's OpenLineage event of ``kind``; where it is not taken, a note (the
    run goes on as it would)."""
    inputs, outputs = lineage_datasets(plan, record, ended=kind != "START")
    problem = lineage.send(lineage.event(kind, record, inputs, outputs))
    if problem and notify:
        notify(f"the run's OpenLineage {kind} event was not sent: {problem}")


def _write_record(record: dict[str, Any], runs_dir: str, quiet: bool = False) -> str:
    """Write the run record under ``runs_dir``; a SluiceError naming the folder where it
    cannot (``quiet``: nothing, for a run whose own error is the one to show)."""
    try:
        return runs.write(record, runs_dir)
    except SluiceError:
        if quiet:
            return ""
        raise


def _record_work(record: dict[str, Any], plan: Plan, eng: Engine) -> None:
    """Each step's work into the run record: its rows (and a transform's rows in and
    partitions), its partitions' task time (``compute_seconds``) and a fit's time in the
    driver (``driver_seconds``), its share of the run's work (``work_share``; the run's
    ``work_seconds``); what a transform counted (expect's rules) as its metrics, and the
    warnings its counts leave (``warnings``: a line each, for the run's summary)."""
    steps = record["steps"]
    work: dict[str, list[float]] = {}
    for name, stats in eng.stats.items():
        # a step's own figures, and those of its parts under names of their own (a
        # shuffle's sample, a shuffle join's table side): their time is the step's work
        step_id = name if name in steps else name.split(PART, 1)[0]
        if step_id not in steps:
            continue
        seconds = work.setdefault(step_id, [0.0, 0.0])
        seconds[0] += stats.seconds
        seconds[1] += stats.driver_seconds
        if name == step_id:
            if stats.rows_by_partition:  # a write's rows are its sink's count
                steps[step_id]["rows"] = stats.rows
            steps[step_id].update(stats.describe())
    for step_id, (compute, driver) in work.items():
        steps[step_id]["compute_seconds"] = round(compute, 6)
        if driver:
            steps[step_id]["driver_seconds"] = round(driver, 6)
    said = list(record.get("warnings", []))  # the fits' (``Run._warn``)
    for step in plan.steps:
        entry = steps[step.id]
        if "rows" not in entry and isinstance(step.op, Estimator | Action) and step.input:
            rows = steps[step.input].get("rows")  # a fit or an action sees its input's
            if rows is not None:
                entry["rows"] = rows
        counts = eng.stats[step.id].counts() if step.id in eng.stats else None
        if counts is not None and isinstance(step.op, Transform):
            record["metrics"][step.id] = counts
            warning = step.op.warning(counts)
            if warning:
                said.append(f"{plan.spec.file}:{step.spec.line_of(None, warning)}: step "
                            f"'{step.id}' ({step.op.name}): {warning}")
    total = sum(e.get("compute_seconds", 0) + e.get("driver_seconds", 0)
                for e in steps.values())
    record["work_seconds"] = round(total, 6)
    for entry in steps.values():
        if "compute_seconds" in entry and total:
            entry["work_share"] = round(
                (entry["compute_seconds"] + entry.get("driver_seconds", 0)) / total, 4)
    if said:
        record["warnings"] = said


def run(path: str | Path, overrides: dict[str, str] | None = None, *,
        full_refresh: bool = False, **options: Any) -> dict[str, Any]:
    """Validate, plan and execute a pipeline file (``_run``'s options): its incremental
    reads claimed for the run, and released at its end whatever it was
    (``full_refresh``: they read every file, as if no run had read any)."""
    reads = Reads(options.get("runs_dir") or default_runs_dir(), full_refresh=full_refresh)
    try:
        return _run(path, overrides, reads=reads, **options)
    finally:
        reads.release()


def _read_entry(reads: Reads, plan: Plan, step: Step) -> dict[str, Any]:
    """What an incremental read takes, for the run record: how many new files (the
    first and last by name), read before, waiting for later runs; the state's file."""
    assert isinstance(step.op, ReadParquet)
    files = sorted(step.op.files_read())
    return {**step.op.incremental_counts(),
            **({"first": files[0], "last": files[-1]} if files else {}),
            **({"full_refresh": True} if reads.full_refresh else {}),
            # a killed run's claim this run settled first (``Reads.settle``)
            **({"claim": reads.settled[step.id]} if step.id in reads.settled else {}),
            # a lost run's lock object this run took over (``Reads.taken``)
            **({"lock_taken": reads.taken[step.id]} if step.id in reads.taken else {}),
            "state": reads.shown(plan.spec.name, step.id)}


def _claimed_outputs(plan: Plan, store: ModelStore) -> list[dict[str, Any]]:
    """What a run claims to write, for its incremental reads' claims: each write_parquet's
    output and each save_model's model (``Reads.claim``); a second write of one output in
    the run says which (``write``: its files are named ``part-<run id>.<write>-...``,
    ``Run._publish_into``)."""
    registry = store.location.path if store.location.local else store.root
    claimed: list[dict[str, Any]] = []
    writes: dict[str | None, int] = {}
    for step in plan.steps:
        if isinstance(step.op, WriteParquet):
            target = _target_of(step.op)
            writes[target] = times = writes.get(target, 0) + 1
            claimed.append({"step": step.id, "path": target,
                            **({"write": times} if times > 1 else {})})
        elif isinstance(step.op, SaveModel):
            claimed.append({"step": step.id, "model": step.op.params.name,
                            "models": registry})
    return claimed


def _planned(step: Step) -> dict[str, Any]:
    """A step's entry in a run record before it runs: its operator and the parameters the
    pipeline gave it."""
    given = given_params(step.op)
    return {"op": step.op.name, "kind": step.op.kind, **({"params": given} if given else {})}


def _declared(plan: Plan, problems: list[Problem]) -> dict[str, Any]:
    """The steps a refused run's file declares, in its order: a step that planned as it
    would have run (``_planned``), one that did not by its ``op`` as written; each with
    the count of its ``problems``."""
    planned = {s.id: s for s in plan.steps}
    out: dict[str, Any] = {}
    for spec in plan.spec.steps:
        said = sum(p.step == spec.id for p in problems)
        out.setdefault(spec.id, {
            **(_planned(planned[spec.id]) if spec.id in planned else {"op": spec.op}),
            **({"problems": said} if said else {})})
    return out


def _appended_again(plan: Plan, reading: set[str]) -> list[str]:
    """The lines a --full-refresh run says of each write_parquet with ``mode: append``
    that an incremental read reaches: every row it appended before is appended again."""
    lines = []
    for step in plan.steps:
        if not (isinstance(step.op, WriteParquet) and step.op.params.mode == "append"):
            continue
        sources = [s.id for s in plan.upstream(step.id) if s.id in reading]
        if sources:
            lines.append(
                f"{plan.spec.file}:{step.spec.line_of('mode')}: --full-refresh: step "
                f"'{sources[0]}' reads every file again, and step '{step.id}' appends "
                f"(mode: append) to {step.op.params.path}: the rows earlier runs appended "
                "are appended again; write that output with mode: overwrite for a full "
                "refresh")
    return lines


def _nothing_new(plan: Plan, path: str | Path, run_id: str, started: float, engine: str,
                 reads: Reads, runs_dir: str, tracker: Tracker | None = None,
                 source: str | None = None, notify: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """The record of a run whose incremental reads have no new file: succeeded, no step
    run, nothing written, trained or saved (logged to MLflow where the run would be: a
    scheduled job's night there too)."""
    reading = {s.id for s in plan.incremental()}
    record = {**_record_head(plan, path, run_id, started, {"name": engine}),
              "status": "succeeded", "models_used": [], "skipped": plan.nothing_new(),
              # every step as planned, none run: its params are the run's, as compared
              "steps": {s.id: {**_planned(s), **({"incremental": _read_entry(reads, plan, s)}
                                                 if s.id in reading else {})}
                        for s in plan.steps},
              "seconds": round(time.time() - started, 6)}
    if tracker is not None:
        record["mlflow"] = log_quietly(tracker, record, source, notify)
    record["record_path"] = _write_record(record, runs_dir)
    return record


def _run(path: str | Path, overrides: dict[str, str] | None = None, *, engine: str = "local",
        models: str | None = None, runs_dir: str | None = None, scheduler: str | None = None,
        master: str | None = None, progress: bool = False, device: str | None = None,
        dtype: str | None = None, engine_instance: Engine | None = None,
        notify: Callable[[str], None] | None = None, text: str | None = None,
        scratch: str | None = None,
        explain: Callable[[SluiceError], None] | None = None,
        mlflow: str | None = None, mlflow_experiment: str | None = None,
        openlineage: str | None = None, reads: Reads) -> dict[str, Any]:
    """Validate, plan and execute a pipeline file (or ``text``, a pipeline ``path``
    names); returns the run record. ``explain`` rewords a failure (a command that
    writes the pipeline names its options, not the file's keys) before it is recorded.
    ``mlflow``: an MLflow tracking URI the run is logged to (``pipelines.tracking``),
    in ``mlflow_experiment`` (default: the pipeline's name); one that cannot be used
    fails the run before any data moves. ``openlineage``: a lineage server the run's
    START and end events go to (``pipelines.lineage``; default ``$OPENLINEAGE_URL``).

    Raises ValidationFailed (nothing ran) or SluiceError (the run failed; the
    record, with status ``failed``, is written all the same).
    """
    store = ModelStore(models)
    started = time.time()
    run_id = reads.run_id = new_run_id()
    plan = plan_file(path, overrides, store, text, reads)
    tracker = Tracker(mlflow, mlflow_experiment) if mlflow else None
    source = None if text is not None else str(path)  # the pipeline file, an artifact
    asked = engine_instance.name if engine_instance is not None else engine
    if not plan.ok:
        # a scheduled run refused before any data moved (today's input not there yet)
        # is a failed run in the history too (``sluice runs list --status failed``)
        exc = ValidationFailed(plan.problems)
        if explain:
            explain(exc)
        # refused because another run of the pipeline holds its incremental reads: a
        # run to wait for, not a problem of the pipeline
        held_by = reads.holder(plan.problems)
        _refused(plan, path, run_id, started, asked, exc,
                 "validation" if held_by is None else "lock", runs_dir or default_runs_dir(),
                 tracker, source, notify, held_by)
        raise exc
    # where its record cannot be written: said before any data moves, not after the
    # fits (the run's outputs and models published by a run that then fails)
    runs.check_writable(runs_dir or default_runs_dir(), plan.spec.name)
    beat_every = runs.heartbeat_seconds()
    if tracker is not None:
        try:
            tracker.connect(plan.spec.name)
        except SluiceError as exc:
            _refused(plan, path, run_id, started, asked, exc, "tracking",
                     runs_dir or default_runs_dir())
            raise
    for line in plan.notices:
        if notify:
            notify(line)
    for step_id, taken in reads.taken.items():
        if notify:
            notify(taken_line(step_id, taken))
    for step_id, settled in reads.settled.items():
        if notify:
            notify(settled_line(step_id, settled))
    incremental = plan.incremental()
    reading = {s.id for s in incremental}
    if reads.full_refresh and not incremental and notify:
        notify(f"--full-refresh: no read_parquet step of pipeline '{plan.spec.name}' reads "
               "incrementally (incremental: true), so every read reads all its files, as "
               "always")
    notes = _appended_again(plan, reading) if reads.full_refresh else []
    for line in notes:
        if notify:
            notify(line)
    if plan.nothing_new() is not None:
        return _nothing_new(plan, path, run_id, started, asked, reads,
                            runs_dir or default_runs_dir(), tracker, source, notify)
    eng = engine_instance or make_engine(engine, scheduler=scheduler, master=master,
                                         progress=progress)
    try:
        placed = placements(plan, eng, device, dtype, notify)
    except BaseException as exc:
        if engine_instance is None:
            eng.close()
        if isinstance(exc, SluiceError):  # no usable GPU for `device: gpu`...
            if explain:
                explain(exc)
            _refused(plan, path, run_id, started, eng.name, exc, "placement",
                     runs_dir or default_runs_dir(), tracker, source, notify)
        raise
    record: dict[str, Any] = {
        **_record_head(plan, path, run_id, started, eng.describe()),
        "status": "running",
        "device": ", ".join(sorted({p.device for p in placed.values()})),
        "steps": {s.id: {**_planned(s),
                         **({"dtype": "float32"} if placed[s.id].dtype == "float32" else {}),
                         **({"filter_from": s.pushed_from} if s.pushed_from else {}),
                         **({"incremental": _read_entry(reads, plan, s)}
                            if s.id in reading else {})}
                  for s in plan.steps},
        "models_used": [{"step": s.id, **s.op.model_info} for s in plan.steps
                        if getattr(s.op, "model_info", None) and s.saved_by is None],
        **({"notes": notes} if notes else {}),
    }
    current = Run(plan, eng, store, run_id, record, placements=placed,
                  scratch=f"{(scratch or default_scratch(eng.profile.scratch)).rstrip('/')}"
                          f"/{run_id}", notify=notify)
    scratch_lock = None  # held while the run's scratch folder is in use
    # the record, running, from now until the final one replaces it: a run killed
    # outright leaves it, which readers then show as lost
    heartbeat = runs.Heartbeat(record, runs_dir or default_runs_dir(), beat_every)
    lineage = Lineage.configured(openlineage)
    if lineage is None and openlineage and notify:
        # the clients' kill switch wins over a flag, as in every OpenLineage client: said
        notify("OPENLINEAGE_DISABLED is set, so --openlineage sends no events (unset it "
               "to send them)")
    if lineage is not None:
        record["openlineage"] = {"url": lineage.url, "namespace": lineage.namespace,
                                 "run_id": run_uuid(run_id)}
        if notify and (problem := lineage.parent_problem()):
            notify(problem)
        _lineage_event(lineage, "START", plan, record, notify)
    try:
        heartbeat.start()
        current.preflight()
        if any(isinstance(s.op, Shuffle) for s in plan.steps):
            scratch_lock = claim_scratch(current.scratch)
        if engine_instance is None:
            eng.start()
        if notify and any(isinstance(s.op, Shuffle) for s in plan.steps):
            # a scratch folder on this machine's disk, workers on others: said before any
            # data moves (the second stage would not find the first's files)
            note = scratch_note(current.scratch, eng.worker_hosts())
            if note:
                notify(note)
        eng.begin_run()
        record["engine"] = eng.describe()
        outputs = _claimed_outputs(plan, store)
        for step in incremental:  # a run killed from here on is settled by the next
            reads.claim(plan.spec.name, step.id, step.op.files_read(), step.op.read_schema(),
                        step.op.folder, outputs)
        crash_point("before-write")
        current.execute()
        reads.check_held()  # not taken over meanwhile: another run would read its files
        current.publish()
        crash_point("after-write")
        for step in incremental:  # only now: a failed run's files are read again
            reads.commit(plan.spec.name, step.id, step.op.files_read(),
                         step.op.read_schema(), step.op.folder)
        record["status"] = "succeeded"
    except BaseException as exc:
        current.discard()
        if not record["outputs"] and not record["models"]:
            # nothing of it landed: no claim to settle (one that published an output and
            # then failed leaves it, and the next run takes that output out)
            for step in incremental:
                with contextlib.suppress(Exception):  # best effort: the run's error matters
                    reads.unclaim(plan.spec.name, step.id)
        record["status"] = "failed"
        interrupt = interruption(exc)
        if interrupt is not None:
            record["status"] = "interrupted"
            record["error"] = (f"interrupted by "
                               f"{interrupt.args[0] if interrupt.args else 'SIGINT'}")
            if interrupt is not exc:  # what a library raised while it was interrupted
                raise interrupt from None
        elif isinstance(exc, SluiceError):
            if explain:
                explain(exc)
            record["error"] = str(exc)
        else:
            record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        heartbeat.stop()
        if engine_instance is None:
            eng.close()
        remove_scratch(current.scratch)
        release_dir(scratch_lock)
        _record_work(record, plan, eng)
        record["seconds"] = round(time.time() - started, 6)
        if lineage is not None:
            _lineage_event(lineage, ENDS[record["status"]], plan, record, notify)
        if tracker is not None:
            record["mlflow"] = log_quietly(tracker, record, source, notify)
        try:
            record["record_path"] = _write_record(record, runs_dir or default_runs_dir())
        except SluiceError:
            if record["status"] == "succeeded":
                raise
            # the run's own failure is what the person needs to see, not the record's
    return record
