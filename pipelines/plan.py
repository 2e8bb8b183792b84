"""Steps to a DAG: operators built from validated params, inputs resolved, cycles found,
schemas propagated from the sources' footers, before any data is read."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from operators.base import (
    Action,
    Estimator,
    MissingColumnError,
    Operator,
    SchemaError,
    Sink,
    SluiceError,
    Source,
    lookup,
    require_columns,
    suggest,
)
from operators.evaluate.drift import Drift
from operators.evaluate.evaluate import Measuring
from operators.evaluate.promote import Promote
from operators.expressions import referenced_columns, unquoted_dates
from operators.features.derive import Derive
from operators.features.rows import Filter
from operators.features.union import Union
from operators.io.fs import is_url
from operators.io.model import SaveModel
from operators.io.parquet import MANIFEST, ReadParquet, WriteParquet
from operators.io.paths import GLOB_CHARS, glob_base, local_path
from operators.score.score import Score, model_columns
from pipelines.incremental import foreseen_line
from pipelines.spec import PipelineSpec, Problem, StepSpec
from pipelines.store import parse_ref, required_columns
from pipelines.tuning import (
    Tuning,
    feature_defaults,
    feature_keys,
    plan_tuning,
    untuned_defaults,
)


@dataclass
class Step:
    spec: StepSpec
    op: Operator
    input: str | None
    schema: pa.Schema | None = None  # output schema; None where it could not be derived
    open: bool = False  # a fit upstream adds columns only known at run time
    # the steps upstream (or this one) that make ``open``: what a missing column may come from
    opened_by: tuple[Step, ...] = field(default=(), repr=False, compare=False)
    # a score step of a model this pipeline saves: the save_model step it waits for
    saved_by: str | None = None
    # a tuned model step: its candidates (the best becomes ``op`` when fitted)
    tuning: Tuning | None = None
    # a read_parquet step that also applies the condition of this filter step
    pushed_from: str | None = None
    # a feature step a model's tune varies with it: that model step's id (the feature
    # step is fitted there, once per candidate)
    tuned_by: str | None = None
    # columns an earlier problem may have left out of ``schema`` (a read's `columns:`
    # naming one the data lacks, and those it would have read instead): a later step
    # missing only these has no problem of its own
    doubt: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class Plan:
    spec: PipelineSpec
    steps: list[Step] = field(default_factory=list)  # topological order
    problems: list[Problem] = field(default_factory=list)
    # worth a line but not wrong (validate, plan and run print them as notes)
    notices: list[str] = field(default_factory=list)
    # what incremental reads read before (``pipelines.incremental.Reads``; None: every
    # file is new)
    reads: Any = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def incremental(self) -> list[Step]:
        """The read_parquet steps that read incrementally."""
        return [s for s in self.steps
                if isinstance(s.op, ReadParquet) and s.op.params.incremental]

    def nothing_new(self) -> str | None:
        """Why a run of this plan would run no step (its incremental reads have no new
        file: a run succeeds doing nothing); None where it would run."""
        steps = self.incremental()
        if not steps or any(s.op.incremental_counts()["new_files"] for s in steps):
            return None
        said = ", ".join(f"'{s.id}'" for s in steps)
        return (f"no new files: every file of step{'s' * (len(steps) > 1)} {said} was read "
                "by an earlier run")

    def consumers(self, step_id: str) -> list[Step]:
        """The steps that read ``step_id``'s rows: as their input, or besides it (a
        join's ``table:``)."""
        return [s for s in self.steps if s.input == step_id
                or step_id in s.op.step_inputs()]

    def chain_to(self, step_id: str, through_shuffles: bool = False) -> list[Step]:
        """The steps from the source (exclusive) to ``step_id`` (inclusive), in order; a
        step making new rows (an aggregate, a union) ends the walk as a source does, unless
        ``through_shuffles`` (then the walk goes on through its input); a shuffle join
        does not (its rows are its input's)."""
        path: list[Step] = []
        current: Step | None = self.step(step_id)
        while current is not None and not isinstance(current.op, Source):
            if current.op.new_rows and path and not through_shuffles:
                break
            path.append(current)
            current = self.step(current.input) if current.input else None
        return list(reversed(path))

    def upstream(self, step_id: str) -> list[Step]:
        """Every step whose rows reach ``step_id`` (through inputs and the other steps a
        step reads: a union's, a join's table), in plan order."""
        seen = _reaching({s.id: s for s in self.steps}, step_id)
        return [s for s in self.steps if s.id in seen]

    def model_input(self, save_id: str) -> pa.Schema | None:
        """The schema the steps ``save_id`` saves read: their first step's input, with
        the columns the data steps among them add (a join between two fitted steps: a
        scoring pipeline repeats it before ``score``, so the model is given its
        columns); None where a schema is not known."""
        chain = self.model_chain(save_id)
        if not chain or not chain[0].input:
            return None
        schema = self.step(chain[0].input).schema
        for s in self.data_steps_in_model(save_id):
            added = self.added_by(s)
            if schema is None or added is None:
                return None
            for f in added:
                if schema.get_field_index(f.name) < 0:
                    schema = schema.append(f)
        return schema

    def data_steps_in_model(self, save_id: str) -> list[Step]:
        """The steps among those ``save_id`` saves that the model does not keep (a join
        between two fitted steps: a scoring pipeline repeats it before ``score``)."""
        chain = self.model_chain(save_id)
        if not chain:
            return []
        kept = {s.id for s in chain}
        lineage = self.chain_to(save_id)
        return [s for s in lineage[lineage.index(chain[0]) + 1:]
                if s.id not in kept and not isinstance(s.op, Sink | Action)]

    def added_by(self, step: Step) -> list[pa.Field] | None:
        """The columns ``step`` adds to its input's, as planned (None where a schema is
        not known)."""
        before = self.step(step.input).schema if step.input else None
        if before is None or step.schema is None:
            return None
        return [f for f in step.schema if f.name not in before.names]

    def model_chain(self, save_id: str) -> list[Step]:
        """The steps a ``save_model`` step saves: those from the source to it, less
        sinks, actions and the steps that shape the data (filter, sample, join: what a
        pipeline trains on is not the model's business; scoring keeps every row it is
        given, and brings its own columns)."""
        return [s for s in self.chain_to(save_id)
                if not isinstance(s.op, Sink | Action) and getattr(s.op, "in_model", True)]


def _pydantic_problems(spec: StepSpec, file: str, exc: ValidationError,
                       cls: type[Operator]) -> list[Problem]:
    out = []
    errors = _one_per_value(exc.errors())
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        key = loc[0] if loc else None
        line = spec.line_of(key, str(err.get("msg", "")))
        # a parameter of a parameter (pivot's column) is named by its path
        name, where = (loc[-1], ".".join(loc[:-1])) if len(loc) > 1 else (key, "")
        if err["type"] == "extra_forbidden":
            public = _public_fields(cls.Params, loc[:-1])
            took = f"{where} takes" if where else f"{cls.name} takes"
            peer = cls.Params.known_as.get(name or "") if not where else None
            hint = f"; write `{peer}` here" if peer else suggest(name or "", public)
            msg = (f"unknown parameter '{'.'.join(loc)}'{hint}"
                   + (f" ({took}: {', '.join(public)})" if public else ""))
        elif err["type"] == "missing":
            msg = f"missing required parameter '{'.'.join(loc)}'"
        elif err.get("any_of"):
            shown = repr(err.get("input"))
            got = err.get("input")
            listed = isinstance(got, str) and loc and any(
                kind.startswith("list[") for kind in err["any_of"])
            msg = (f"parameter '{'.'.join(loc)}': {shown[:80]} is none of the kinds of value "
                   f"it may be ({', '.join(err['any_of'])})"
                   + (f"; write a list: `{loc[-1]}: [{got}]`" if listed else ""))
        else:
            path = ".".join(loc) if loc else "parameters"
            got = err.get("input")
            plain = dict(got) if isinstance(got, dict) else list(got) if isinstance(
                got, list) else got  # YAML's located containers shown as what they hold
            shown = repr(plain)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            text = err["msg"].removeprefix("Value error, ").rstrip(".")
            msg = f"parameter '{path}': {text} (got {shown}){_value_hint(err, loc)}"
        out.append(Problem(file, line, msg, step=spec.id, op=spec.op))
    return out


def _value_hint(err: Any, loc: list[str]) -> str:
    """What the value was likely meant to be: the closest of the values a choice takes
    (``strategy: meadian``), a one-item list (``columns: total_charges``), one value
    where a list was given (``label: [churned]``), true or false (``incremental: yes
    please``)."""
    got = err.get("input")
    if err["type"] == "literal_error" and isinstance(got, str):
        return suggest(got, re.findall(r"'([^']*)'", (err.get("ctx") or {}).get("expected",
                                                                                  "")))
    if err["type"] == "list_type" and isinstance(got, str) and loc and not loc[-1].isdigit():
        return f"; write a list: `{loc[-1]}: [{got}]`"
    if err["type"] == "string_type" and isinstance(got, list) and loc \
            and not loc[-1].isdigit():
        # `label: [churned]`, as a list of one column is written elsewhere
        return (f"; write one value, not a list: `{loc[-1]}: {got[0]}`"
                if len(got) == 1 and isinstance(got[0], str) else "; it takes one value")
    if err["type"] == "bool_parsing":
        return "; write true or false"
    return ""


def _public_fields(model: Any, path: list[str]) -> list[str]:
    """The parameter names (aliases where a field has one) of the model at ``path`` below
    ``model`` (a nested model's: ``pivot``'s), [] where there is none."""
    import typing

    for name in path:
        field = model.model_fields.get(name) or next(
            (f for f in model.model_fields.values() if f.alias == name), None)
        if field is None:
            return []
        nested = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                  if isinstance(a, type) and hasattr(a, "model_fields")]
        if not nested:
            return []
        model = nested[0]
    return [f.alias or n for n, f in model.model_fields.items()]


def _one_per_value(errors: list[Any]) -> list[Any]:
    """pydantic's errors with those of one value of a union of types (one error a type it
    tried: ``values.1.bool``, ``values.1.int``...) as one, ``any_of`` the types."""
    out: list[Any] = []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and err["type"].endswith(
                ("_type", "_parsing", "_from_datetime_inexact")):
            group = groups.get(loc[:-1])
            if group is None:
                group = groups[loc[:-1]] = {**err, "loc": loc[:-1], "any_of": []}
                out.append(group)
            group["any_of"].append(loc[-1])
            continue
        out.append(err)
    for group in groups.values():  # a single failed type is its own message
        if len(group["any_of"]) == 1:
            group.pop("any_of")
            group["loc"] = (*group["loc"],)
    return out


def build(spec: PipelineSpec, resolve_model: Any = None, reads: Any = None) -> Plan:
    """Plan a parsed pipeline; every problem found is in ``plan.problems``.

    ``resolve_model(ref) -> (chain, required_columns, info)`` loads models for ``score``;
    ``reads`` (``pipelines.incremental.Reads``) says what incremental reads read before.
    """
    plan = Plan(spec=spec, problems=list(spec.problems), reads=reads)
    file = spec.file

    def problem(s: StepSpec, message: str, param: str | None = None,
                line: int | None = None) -> None:
        plan.problems.append(Problem(file, line or s.line_of(param), message, step=s.id,
                                     op=s.op))

    built: dict[str, Step] = {}
    previous: str | None = None
    # a model's tune of a feature step's parameters (``words.max_features``): the feature
    # step is planned with the first values
    tuned_by = {step: (s.id, tuned) for s in spec.steps
                for step, tuned in feature_keys(s.tune).items()}
    for s in spec.steps:
        try:
            cls = lookup(s.op)
        except SluiceError as exc:
            problem(s, str(exc), "op")
            previous = s.id
            continue
        defaults = untuned_defaults(cls, s.params, s.tune)
        if s.id in tuned_by:
            defaults = {**defaults, **feature_defaults(cls, tuned_by[s.id][1], s.params)}
        op = _build_op(cls, s, plan, file, defaults)
        if isinstance(op, Source) or (op is None and issubclass(cls, Source)):
            if s.input is not None:
                problem(s, f"{s.op} reads data and takes no `input:`", "input")
            input_id = None
        else:
            input_id = s.input if s.input is not None else previous
            if input_id is None:
                problem(s, "the first step must read data (e.g. `op: read_parquet`)")
        tuning = None
        if op is not None and any(v is not None for v in (s.tune, s.tune_metric, s.tune_folds,
                                                          s.tune_samples)):
            tuning, found = plan_tuning(cls, s.params, s.tune, s.tune_metric, s.tune_folds,
                                        s.tune_samples, built, input_id,
                                        {p.step for p in plan.problems})
            for key, message in found:
                problem(s, message, key)
            if tuning is not None:
                op = tuning.ops[0]
                if tuning.feature is not None:
                    built[tuning.feature.step].tuned_by = s.id
        if op is not None:
            built[s.id] = Step(s, op, input_id, tuning=tuning)
        previous = s.id

    ids = {s.id for s in spec.steps}
    for s in spec.steps:
        if s.input is not None and s.input not in ids:
            problem(s, f"`input: {s.input}` names no step{suggest(s.input, ids)}", "input")
            if s.id in built:
                built[s.id].input = None
        for other in built[s.id].op.step_inputs() if s.id in built else []:
            param, line = _naming(s, other)
            if other not in ids:
                problem(s, f"{param}: '{other}' names no step{suggest(other, ids)}", param,
                        line)
            elif other == s.id:
                problem(s, f"{param}: a step cannot read its own rows", param, line)
            elif isinstance(built[s.id].op, Union) and built[s.id].input == other:
                problem(s, f"{param}: '{other}' is the step before this one, its input, "
                           "whose rows come first already (give `input:` the step whose "
                           "rows come first, and list the others)" if s.input is None else
                        f"{param}: '{other}' is this step's input, whose rows come first "
                        "already: listed again, they would come twice", param, line)
            elif s.input is None and built[s.id].input == other:
                # (a join of a step's rows to themselves, e.g. each employee's manager,
                # names it as `input:` too)
                problem(s, f"{param}: '{other}' is the step before this one, its input: its "
                           f"rows would be joined to themselves (give `input:` the rows to "
                           f"join '{other}' to; `input: {other}` too, for a join of its rows "
                           "to themselves)", param)
    _link_saved_models(built)
    plan.steps = _toposort(built, plan, file)
    for step in plan.steps:
        if step.tuned_by is not None:  # fitted by its model's tune: only that step reads it
            others = [c.id for c in plan.consumers(step.id) if c.id != step.tuned_by]
            if others:
                model = plan.step(step.tuned_by)
                plan.problems.append(Problem(
                    file, model.spec.line_of("tune"),
                    f"tune: step '{step.id}' is tuned with this one, but step "
                    f"'{others[0]}' reads its rows too, and they are only decided here "
                    f"(a fit per candidate, the best kept): give '{others[0]}' this step's "
                    f"rows (`input: {model.id}`: the best candidate's), or a feature step "
                    "of its own", step=model.id, op=model.spec.op))
    _propagate(plan, resolve_model)
    _check_outputs_outside_inputs(plan)
    if not plan.problems:
        _push_filters(plan)
    plan.problems.sort(key=lambda p: (p.file, p.line))
    return plan


def check_output(plan: Plan, step: Step) -> None:
    """A SluiceError where sink ``step`` could not write its output as the output is
    now (there already, in mode error; rows with other columns or types than an output
    appended to has), by the sink's own ``preflight``: given the rows' planned schema,
    unless a fit upstream decides columns at run time or another sink of the pipeline
    writes the same output first."""
    assert isinstance(step.op, Sink)
    path = getattr(step.op.params, "path", None)
    shared = path is not None and any(
        s is not step and isinstance(s.op, Sink) and getattr(s.op.params, "path", None) == path
        for s in plan.steps)
    step.op.preflight(None if step.open or shared else step.schema)


def output_problems(plan: Plan) -> None:
    """The problems of the outputs as they are now (``check_output``) added to
    ``plan.problems``, at each sink step's line: what ``sluice validate`` and ``plan``
    say before a run would (its preflight) refuse them."""
    for step in plan.steps:
        if not isinstance(step.op, Sink) or step.spec.unresolved:
            continue
        try:
            check_output(plan, step)
        except SluiceError as exc:
            plan.problems.append(Problem(plan.spec.file, step.spec.line_of(
                param_for(step, exc), str(exc)), str(exc), step=step.id, op=step.spec.op))
    plan.problems.sort(key=lambda p: (p.file, p.line))


def _check_outputs_outside_inputs(plan: Plan) -> None:
    """A write into a folder below one the pipeline reads (all of it, no manifest), or
    that a glob it reads matches, is a problem: the next run would read the rows written
    as input too (5,000 rows, then 10,000...). The same folder is not: overwrite replaces
    what it read, atomically."""
    reads = [(step, _local(step.op.params.path)) for step in plan.steps
             if isinstance(step.op, ReadParquet)]
    for step in plan.steps:
        out = _local(step.op.params.path) if isinstance(step.op, WriteParquet) else None
        if out is None:
            continue
        for read, path in reads:
            where = path and _reads_output(path, out, len(step.op.params.partition_by or []))
            if where:
                plan.problems.append(Problem(
                    plan.spec.file, step.spec.line_of("path"),
                    f"output '{step.op.params.path}' is {where} '{read.op.params.path}', "
                    f"which step '{read.id}' reads: the next run would read these rows as "
                    "input too (write it outside that folder)", step=step.id, op=step.spec.op))


def _local(path: str) -> str | None:
    """A local path's absolute path (a file:// URL's too); None for a URL, or for a file
    URL of another host (its read or write says what is wrong)."""
    if is_url(path):
        return None
    try:
        return local_path(path)
    except SluiceError:
        return None


def _reads_output(path: str, out: str, partitions: int) -> str | None:
    """How a read of local ``path`` would take the files a write makes in folder ``out``
    (``partitions`` folders deep): "inside" a folder it reads whole, "matched by" a glob
    that names the folder, a folder above it or its files (as ``read_parquet`` globs:
    a folder matched stands for its files); None where it would not."""
    if not GLOB_CHARS.search(path):
        inside = (os.path.isdir(path) and not os.path.exists(os.path.join(path, MANIFEST))
                  and out.startswith(os.path.abspath(path).rstrip(os.sep) + os.sep))
        return "inside" if inside else None
    from fsspec.utils import glob_translate

    if out == os.path.abspath(glob_base(path) or "."):
        return None  # the glob's own folder, overwritten in place
    try:
        matches = re.compile(glob_translate(os.path.abspath(path))).match
    except (ValueError, re.error):  # no glob fsspec takes: the read says so itself
        return None
    file = os.path.join(out, *["key=value"] * partitions,
                        "part-20260101T000000Z-000000-00000.parquet")  # a name it writes
    folders = [out]
    while os.path.dirname(folders[-1]) != folders[-1]:
        folders.append(os.path.dirname(folders[-1]))
    # a folder matched stands for its files, but one with a manifest for the files it lists
    folders = [f for f in folders if not os.path.exists(os.path.join(f, MANIFEST))]
    return "matched by" if any(matches(p) for p in [file, *folders]) else None


def _naming(s: StepSpec, other: str) -> tuple[str, int]:
    """The parameter of ``s`` that names step ``other`` (a join's ``table:``, a union's
    ``steps:``) and its line: a list's item's own where the list is one a line."""
    for key, value in s.params.items():
        if value == other:
            return key, s.line_of(key)
        if isinstance(value, list) and other in value:
            lines = getattr(value, "item_lines", [])
            at = value.index(other)
            return key, lines[at] if at < len(lines) else s.line_of(key)
    return "op", s.line_of("op")


def _push_filters(plan: Plan) -> None:
    """A ``filter`` whose input is a ``read_parquet`` step it alone reads, on the files'
    own columns (those the read's ``schema:`` declares compared as declared, as the read's
    own ``filter:`` compares them), is given to the read too: Parquet's statistics
    and the hive partitions then skip the files and row groups none of whose rows can
    pass, and the rows that cannot are never decoded. The filter step still runs (on
    rows that all pass), so every step after it gets the same rows; the read step counts
    the rows it passes on."""
    for step in plan.steps:
        if not isinstance(step.op, Filter) or step.input is None:
            continue
        source = plan.step(step.input)
        if not isinstance(source.op, ReadParquet) or [
                s.id for s in plan.consumers(source.id)] != [step.id]:
            continue
        # the plan has no problem: the read's schema is known and the condition parses
        read, where = source.op, step.op.params.where
        full = read.full_schema
        if any(full.get_field_index(c) < 0 for c in referenced_columns(where)):
            continue
        combined = where if not read.params.filter else f"({read.params.filter}) and ({where})"
        pushed = ReadParquet(read.params.model_copy(update={"filter": combined}))
        pushed.full_schema = full  # listed once, when planned
        pushed.pushed = (step.id, where, read.params.filter)
        source.op, source.pushed_from = pushed, step.id


def _build_op(cls: type[Operator], s: StepSpec, plan: Plan, file: str,
              tuned: dict[str, Any]) -> Operator | None:
    """The operator with validated params (and ``tuned``: the first value of a required
    one that only ``tune`` gives); on errors, report them all and, when the bad keys can
    be left out, still build it so that later checks (columns) run too."""
    try:
        return cls.create(cls.Params(**tuned, **s.params))
    except ValidationError as exc:
        for found in _pydantic_problems(s, file, exc, cls):
            named = [n for n in tuned if found.message.startswith(f"parameter '{n}'")]
            if named:  # a value tune lists: said as plan_tuning says a candidate's
                found = replace(found, line=s.line_of(f"tune.{named[0]}"),
                                message=f"tune: {named[0]}={tuned[named[0]]}: {found.message}")
            plan.problems.append(found)
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    except SluiceError as exc:
        plan.problems.append(Problem(file, s.line_of(_param_named(s.params, str(exc)), str(exc)),
                                     str(exc), step=s.id, op=s.op))
        return None
    try:
        return cls.create(cls.Params(**{k: v for k, v in {**tuned, **s.params}.items()
                                        if k not in bad}))
    except (ValidationError, SluiceError):
        return None


def _link_saved_models(built: dict[str, Step]) -> None:
    """A score step whose model this pipeline saves (``name`` or ``name@latest``, or an
    alias the save sets) scores with the version this run saves, after it is saved: an
    evaluation on held-out rows in the same run, as MLlib's fit then transform. A drift
    step likewise compares with that version's training rows, unless its rows go on to
    the save (the training rows' drift from the model saved before them: an earlier
    save's of the name in this run that they do not go on to, else the registry's)."""
    saves: dict[str, list[Step]] = {}
    for step in built.values():
        if isinstance(step.op, SaveModel):
            saves.setdefault(step.op.params.name, []).append(step)
    for step in built.values():
        if not isinstance(step.op, Score | Promote | Drift):
            continue
        try:
            name, selector = parse_ref(step.op.params.model)
        except SluiceError:
            continue  # reported when the model is resolved
        for save in reversed(saves.get(name, [])):  # the last save of the name
            if selector is None or selector.casefold() in (
                    "latest", *(a.casefold() for a in save.op.params.aliases)):
                if isinstance(step.op, Drift) and _feeds(built, step.id, save.id):
                    continue  # the version saved before: an earlier save's, if any
                step.saved_by = save.id
                break


def _before_its_save(plan: Plan, step: Step, exc: SluiceError) -> SluiceError:
    """A drift step's model not found, where its rows go on to a save of that name (the
    training rows compared with the version saved before: a first run has none): said
    so; any other problem as it is."""
    if not isinstance(step.op, Drift):
        return exc
    name = parse_ref(step.op.params.model)[0]
    built = {s.id: s for s in plan.steps}
    fed = [s for s in plan.steps if isinstance(s.op, SaveModel) and s.op.params.name == name
           and _feeds(built, step.id, s.id)]
    if not fed:
        return exc
    return SchemaError(f"{exc.message}: drift compares the rows step '{fed[0].id}' saves "
                       f"'{name}' from with the version saved before this run, and there "
                       "is none yet", hint="run the pipeline without this drift step once, "
                                           "or measure drift after the save (of rows that "
                                           "do not go on to it)")


def _reaching(steps: dict[str, Step], step_id: str) -> set[str]:
    """The ids of every step whose rows reach ``step_id`` (through inputs and the other
    steps a step reads: a union's, a join's table)."""
    seen: set[str] = set()
    todo = [step_id]
    while todo:
        step = steps.get(todo.pop())
        if step is None:
            continue
        for before in (step.input, *step.op.step_inputs()):
            if before and before not in seen:
                seen.add(before)
                todo.append(before)
    return seen


def _feeds(built: dict[str, Step], first: str, last: str) -> bool:
    """Whether the rows of step ``first`` reach step ``last``."""
    return first in _reaching(built, last)


def _toposort(built: dict[str, Step], plan: Plan, file: str) -> list[Step]:
    order: list[Step] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(step_id: str, trail: list[str]) -> None:
        if state.get(step_id) == 2 or step_id not in built:
            return
        if state.get(step_id) == 1:
            loop = trail[trail.index(step_id):] + [step_id]
            s = built[step_id].spec
            message = "steps form a cycle: " + " -> ".join(loop)
            param = "input"
            scorer = next((built[a] for a, b in zip(loop, loop[1:])
                           if built[a].saved_by == b), None)
            if scorer is not None:  # a score of the model this run saves, fed to it
                s, param = scorer.spec, "model"
                ref = scorer.op.params.model
                what = scorer.op.name
                verb = "score with" if what == "score" else "use"
                message = (f"{what} uses the model '{ref}' that step '{scorer.saved_by}' "
                           f"saves in this run, which is trained on the {what}'s output "
                           "(a cycle: " + " -> ".join(loop) + f"); to {verb} an earlier "
                           f"version, name it: {parse_ref(ref)[0]}@3 or an alias")
            plan.problems.append(Problem(file, s.line_of(param), message, step=s.id,
                                         op=s.op))
            return
        state[step_id] = 1
        step = built[step_id]
        for before in (step.input, step.saved_by, *step.op.step_inputs()):
            if before is not None and before != step_id:
                visit(before, [*trail, step_id])
        state[step_id] = 2
        order.append(step)

    for step_id in built:
        visit(step_id, [])
    in_cycle = {p.step for p in plan.problems if "cycle" in p.message}
    for step in order:
        if step.input in in_cycle:
            step.input = None
    return order


def _propagate(plan: Plan, resolve_model: Any) -> None:
    """Output schema of every step, in order. A step with a problem passes on the schema
    that is known all the same (a read's of the columns there are, a filter's input's, a
    fit's input's as the lower bound its fit makes it), so that later steps are checked
    too, but not for the columns that problem may have left out (``Step.doubt``); a step
    after one whose schema is not known is skipped."""
    file = plan.spec.file
    by_id = {s.id: s for s in plan.steps}

    def report(step: Step, exc: SluiceError) -> None:
        param = param_for(step, exc)
        plan.problems.append(Problem(file, step.spec.line_of(param, str(exc)), str(exc),
                                     step=step.id, op=step.spec.op))

    for step in plan.steps:
        s = step.spec
        if s.unresolved:
            continue  # its unknown ${param} is reported: a path or column with it in is not
        schema = None
        try:
            if isinstance(step.op, Source):
                # an incremental read knows the files read before as it plans: only the
                # new files' footers are read, and checked
                claimed = not (isinstance(step.op, ReadParquet) and step.op.params.incremental
                               ) or _bind_read_before(plan, step)
                if not isinstance(step.op, ReadParquet):
                    step.schema = step.op.schema()
                    continue
                step.schema, found = step.op.planned_schema()
                for exc in found:
                    report(step, exc)
                missing = [c for e in found for c in getattr(e, "columns", ())]
                if missing:  # the columns read instead of those may be the ones meant
                    step.doubt = frozenset(
                        [*missing, *step.op.full_schema.names]) - set(step.schema.names)
                _note_shadowed_columns(plan, step)
                if claimed and not found:
                    step.op.check_files()
                continue
            upstream = by_id.get(step.input) if step.input else None
            if upstream is None or upstream.schema is None:
                continue
            schema = upstream.schema
            others = [by_id.get(o) for o in step.op.step_inputs()]
            if any(o is None or o.schema is None for o in others):
                continue  # a step it reads has a problem reported
            step.doubt = upstream.doubt.union(*(o.doubt for o in others))
            for other in others:
                step.op.bind_step_schema(other.id, other.schema)
            if isinstance(step.op, Union):
                step.op.bind_input(step.input)  # the step its messages name first
            # a fit before it, or before a step it reads, decides columns at run time
            opened = upstream.open or any(o.open for o in others)
            step.open = opened or (isinstance(step.op, Estimator) and step.op.schema_from_fit)
            before_it = tuple({id(o): o for before in (upstream, *others)
                               for o in before.opened_by}.values())
            step.opened_by = before_it + ((step,) if isinstance(step.op, Estimator)
                                          and step.op.schema_from_fit else ())
            if isinstance(step.op, Promote):
                if not _bind_promoted(plan, step):
                    continue  # a step of the model's chain has a problem reported
            elif isinstance(step.op, Score) and step.saved_by is not None:
                if not _bind_planned(plan, step):
                    continue  # a step of the model's chain has a problem reported
                step.open = True  # the fitted chain's columns and types come at run time
                step.opened_by = (*before_it, step)
            elif isinstance(step.op, Drift) and step.saved_by is not None:
                if not _bind_drift_planned(plan, step):
                    continue  # a step of the model's chain has a problem reported
            elif isinstance(step.op, Score | Drift):
                if resolve_model is None:
                    raise SchemaError("no model store to load the model from")
                try:
                    step.op.bind(*resolve_model(step.op.params.model))
                except SluiceError as exc:
                    raise _before_its_save(plan, step, exc) from None
            if isinstance(step.op, SaveModel) and not any(
                    isinstance(c.op, Estimator) for c in plan.model_chain(step.id)):
                raise SchemaError("nothing is fitted before save_model",
                                  hint="put save_model after a model step")
            if isinstance(step.op, SaveModel):
                _check_fits_before_shuffles(plan, step)
                _check_data_steps_in_model(plan, step)
                _note_kept_params(plan, step)
            try:
                step.op.check_input(schema)
                step.schema = step.op.output_schema(schema)
                if isinstance(step.op, Derive):
                    _note_unquoted_dates(plan, step)
                # after a fit that decides columns the schema is a lower bound: each
                # column it names is there at run time, an identifier among them too
                _note_default_features(plan, step, schema)
                if not opened:
                    _note_measured_features(plan, step, schema)
                if isinstance(step.op, Estimator) and step.op.after_model:
                    _bind_adjusted_model(plan, step)
            except MissingColumnError as exc:
                named = list(getattr(exc, "columns", ()))
                fits = _not_from_fits(named, before_it) if opened else named
                unexplained = [c for c in fits if c not in step.doubt]
                if not opened and unexplained == named:
                    raise
                if unexplained:  # named alone: the others may come from a fit or a problem
                    require_columns(schema, unexplained)
                if fits:  # columns an earlier problem left out: said there
                    step.schema = _known_after_problem(step, schema, named)
                    continue
                # the column may come from the fit upstream: checked when the run gets there;
                # what this step adds (a kmeans' prediction) is known then too
                step.schema = schema
                if not any(o is step for o in step.opened_by):
                    step.opened_by = (*step.opened_by, step)
        except SluiceError as exc:
            report(step, exc)
            if schema is not None:
                step.schema = _known_after_problem(step, schema,
                                                   list(getattr(exc, "columns", ())))


def _known_after_problem(step: Step, schema: pa.Schema, missing: list[str]
                         ) -> pa.Schema | None:
    """The schema a step with a problem passes on, ``schema`` its input's and
    ``missing`` the columns it named that are not there: that schema where its columns
    are its input's whatever its parameters (a filter's, a sink's) or where its fit
    decides them (a lower bound, as a run's later steps wait for the fit); where it
    changes the columns it lists in place (an impute, a scaler), its output without the
    missing ones (later steps missing those have no problem of their own); None where
    what it makes cannot be known (later steps are not checked)."""
    if step.op.keeps_columns or (isinstance(step.op, Estimator) and step.op.schema_from_fit):
        return schema
    params = step.op.params
    given = {key: value for key, value in params.model_dump(by_alias=True).items()
             if isinstance(value, list) and set(missing) & set(value)}
    if not missing or not given:
        return None
    # and those an earlier problem left out (``Step.doubt``), said there
    gone = set(missing) | {c for c in step.doubt if c not in schema.names}
    kept = {key: [v for v in value if v not in gone] for key, value in given.items()}
    try:
        if all(kept.values()):
            op = type(step.op).create(type(params)(**{
                **params.model_dump(by_alias=True, exclude_unset=True), **kept}))
            op.check_input(schema)
            after = op.output_schema(schema)
        else:
            # every column a list names is missing (a scaler of none of them): what it
            # makes of them were they there, as numbers, without them
            probe = schema
            for name in sorted(gone):
                probe = probe.append(pa.field(name, pa.float64()))
            op = type(step.op).create(params)
            op.check_input(probe)
            after = pa.schema([f for f in op.output_schema(probe) if f.name not in gone])
    except (ValidationError, SluiceError):
        return None
    if not set(after.names) <= set(schema.names):
        return None  # columns it adds may be made of the missing ones
    step.doubt = step.doubt | set(missing)
    return after


def _not_from_fits(columns: list[str], fits: tuple[Step, ...]) -> list[str]:
    """The ``columns`` that no fit of ``fits`` may add as it runs (one_hot's are its
    columns' `col=value`, a model's its prediction columns)."""
    return [column for column in columns
            if not any(not isinstance(f.op, Estimator) or f.op.fit_may_add(column)
                       for f in fits)]


def _bind_read_before(plan: Plan, step: Step) -> bool:
    """An incremental read given the files earlier runs read (claimed for a run: a run
    of the pipeline going on already is a problem at the step's `incremental` line)."""
    assert isinstance(step.op, ReadParquet)
    if not step.spec.explicit_id:
        plan.notices.append(
            f"{plan.spec.file}:{step.spec.line}: step '{step.id}' reads incrementally and "
            "has no id: what it read is kept by its step id, which another read_parquet "
            "step before it would change (every file read again); give it one "
            "(`id: events`)")
    if plan.reads is None:
        return True
    try:
        before = plan.reads.before(plan.spec.name, step.id, step.op.folder,
                                   {s.id: s.op.params.storage_options for s in plan.steps
                                    if isinstance(s.op, WriteParquet)})
        step.op.bind_read_before(before.get("files", {}), before.get("schema"))
    except SluiceError as exc:
        plan.problems.append(Problem(plan.spec.file, step.spec.line_of("incremental"),
                                     str(exc), step=step.id, op=step.spec.op))
        return False
    claim = plan.reads.claims.get(step.id)
    if claim is not None:
        plan.notices.append(f"{plan.spec.file}:{step.spec.line_of('incremental')}: "
                            f"{foreseen_line(step.id, claim)}")
    return True


def _note_unquoted_dates(plan: Plan, step: Step) -> None:
    """A notice where a derive computes a date written without quotes (a ${ds} put in
    as it is): the number it subtracts to, silently, where a filter's comparison would
    have been a type error."""
    assert isinstance(step.op, Derive)
    used = step.spec.params_used.get("columns", [])
    inside = f" (a param too: date '${{{used[0]}}}')" if used else ""
    for name, text in step.op.params.columns.items():
        for date, number in unquoted_dates(text):
            plan.notices.append(
                f"{plan.spec.file}:{step.spec.line_of('columns')}: step '{step.id}' (derive): "
                f"column '{name}' computes {date} without quotes, a subtraction ({number}): "
                f"a date is written date '{date}', text '{date}'{inside}")


def _note_shadowed_columns(plan: Plan, step: Step) -> None:
    """A notice where the files hold a column their folders name too (region=north/
    with a region column): every row gets the folder's value, silently."""
    assert isinstance(step.op, ReadParquet)
    for key in step.op.shadowed_columns():
        plan.notices.append(
            f"{plan.spec.file}:{step.spec.line_of('path')}: step '{step.id}' (read_parquet): "
            f"column '{key}' is in the files and in the names of their folders ({key}=...): "
            f"each row gets its folder's value, not its own: rename the column in the "
            f"files, or the folders' key")


MODEL_OUTPUTS = ("prediction", "probability", "distance", "contribution_base")
"""Columns a model step adds: an earlier model's, where a later model's default features
would pick them up."""


def default_features(step: Step, schema: pa.Schema) -> list[str] | None:
    """The features a model step takes from ``schema`` when its ``features`` is not
    given (every numeric column but its label and weight); None where it names them or
    takes no such parameter."""
    params = step.op.params
    if (not isinstance(step.op, Estimator) or "features" not in type(params).model_fields
            or params.features is not None or "features" in step.spec.params):
        return None  # (given, even where its value was refused: not the default)
    others = {getattr(params, name, None) for name in ("label", "weight", "prediction")}
    return [c for c in step.op.input_columns(schema) if c not in others]


def _note_default_features(plan: Plan, step: Step, schema: pa.Schema) -> None:
    """A notice where a model step's default features include a column that looks like
    an identifier (an integer ``id`` or ``*_id``) or an earlier model's output: a
    clustering by customer number, a model of another model's prediction."""
    chosen = default_features(step, schema)
    if not chosen:
        return
    ids = [c for c in chosen if (c.lower() == "id" or c.lower().endswith("_id"))
           and pa.types.is_integer(schema.field(c).type)]
    outputs = [c for c in chosen if c in MODEL_OUTPUTS]
    what = [f"{c} (an identifier?)" for c in ids] + [
        f"{c} (an earlier model's output)" for c in outputs]
    if what:
        plan.notices.append(
            f"{plan.spec.file}:{step.spec.line}: step '{step.id}' ({step.op.name}) takes every "
            f"numeric column but its {left_out(step)} as features (`features` is not "
            f"given), among them {', '.join(what)}: list `features`, or drop those "
            "columns first")


def _note_measured_features(plan: Plan, step: Step, schema: pa.Schema) -> None:
    """A notice where a step that measures a model's output by default features
    (evaluate_clusters) would read others than the model step that made that output was
    given: the clusters measured on columns they were not made of."""
    chosen = default_features(step, schema)
    column = getattr(step.op.params, "prediction", None)
    if not chosen or column is None or "label" in type(step.op.params).model_fields:
        return
    for before in reversed(plan.chain_to(step.id)[:-1]):
        if column not in [f.name for f in plan.added_by(before) or []]:
            continue
        made_of = getattr(before.op.params, "features", None)
        if made_of is not None and list(made_of) != chosen:
            plan.notices.append(
                f"{plan.spec.file}:{step.spec.line}: step '{step.id}' ({step.op.name}) "
                f"measures the clusters on every numeric column but its {left_out(step)} "
                f"({', '.join(chosen)}), not on the features step '{before.id}' "
                f"({before.op.name}) clustered on ({', '.join(made_of)}): list "
                f"`features: [{', '.join(made_of)}]`")
        return


def left_out(step: Step) -> str:
    """What a step's default features leave out: a model's label and weight (a
    ranking's query too), kmeans' weight, a cluster measure's prediction and distance."""
    params = step.op.params
    if "label" not in type(params).model_fields:
        if "prediction" in type(params).model_fields:
            return "prediction and distance"
        return "weight" if "weight" in type(params).model_fields else "own columns"
    return "label, weight and query" if getattr(params, "group", None) else "label and weight"


def _bind_adjusted_model(plan: Plan, step: Step) -> None:
    """For a step that adjusts a model's predictions (calibrate): binds the operator of
    the model that made its probability column (a `score` step's saved model, or a model
    step), and notices where it sees the rows that model step was fitted on: its
    probabilities look truer there than on new rows."""
    column = getattr(step.op.params, "probability", "probability")
    for before in reversed(plan.chain_to(step.id)[:-1]):
        if isinstance(before.op, Score) and column in before.op.outputs:
            # a saved model's scores: rows it may not have seen, the user's call
            step.op.bind_model(before.op.model_kind)
            return
        if column not in [f.name for f in plan.added_by(before) or []]:
            continue
        if isinstance(before.op, Estimator):
            step.op.bind_model(before.op.name)
            plan.notices.append(
                f"{plan.spec.file}:{step.spec.line}: step '{step.id}' ({step.op.name}) "
                f"fits on the rows step '{before.id}' ({before.op.name}) was trained on, "
                "where its probabilities look truer than on new rows: save the model, "
                "`score` rows it did not train on (a `sample`'s `complement: true`) and "
                f"{step.op.name} those")
        return


def _note_kept_params(plan: Plan, save: Step) -> None:
    """A notice for each transform ``save`` keeps in the model (a derive) whose
    parameters were made with a pipeline param: the model applies it with this run's
    value (a scoring run on another day does not change it). A fit's params only shape
    what it learns, so fits are left out."""
    params = plan.spec.params
    for step in plan.model_chain(save.id):
        if isinstance(step.op, Estimator):
            continue
        for key, names in step.spec.params_used.items():
            shown = ", ".join(f"${{{n}}} = {params.get(n)!r}" for n in names)
            plan.notices.append(
                f"{plan.spec.file}:{step.spec.line_of(key)}: step '{step.id}' "
                f"({step.op.name}) is saved in the model '{save.op.params.name}' with "
                f"{key} made from {shown}: scoring applies it with these values, whatever "
                "its own params (compute what should follow the run in a step before the "
                "model: read, filter, aggregate)")


def _check_fits_before_shuffles(plan: Plan, save: Step) -> None:
    """A SchemaError when a fitted step comes before a step making new rows (aggregate,
    union) on the way to ``save``: the model starts after that step, so a scoring
    pipeline would fit the fitted one again on its own rows (a scaler's mean of the
    scoring data: skewed scores)."""
    lineage = plan.chain_to(save.id, through_shuffles=True)
    shuffles = [i for i, s in enumerate(lineage) if s.op.new_rows]
    if not shuffles:
        return
    last = lineage[shuffles[-1]]
    # every step whose rows reach it: its input's and its other steps' (a union's)
    fitted = [s for s in plan.upstream(last.id) if isinstance(s.op, Estimator)
              and getattr(s.op, "in_model", True) and not isinstance(s.op, Measuring)]
    if fitted:
        named = ", ".join(f"'{s.id}' ({s.op.name})" for s in fitted)
        raise SchemaError(
            f"{'steps' if len(fitted) > 1 else 'step'} {named} "
            f"{'are' if len(fitted) > 1 else 'is'} fitted before '{last.id}' "
            f"({last.op.name}), and the model saved here starts after it: a scoring "
            "pipeline would fit it again on the rows it scores",
            hint=f"move it after '{last.id}' (fitted on the rows it makes), or compute "
                 "it with derive (e.g. coalesce(x, 0) instead of impute)")


def _check_data_steps_in_model(plan: Plan, save: Step) -> None:
    """A SchemaError when a data step among the saved model's steps (a join after an
    impute) reads a column a model step before it wrote, and a model step after it reads
    a column it adds: scoring repeats the data step on the rows as they come, before the
    model, so it would join (or window) on other values than training did."""
    chain = plan.model_chain(save.id)
    if not chain:
        return
    kept = {s.id for s in chain}
    lineage = plan.chain_to(save.id)
    inside = lineage[lineage.index(chain[0]):]
    written: dict[str, Step] = {}  # column -> the model step that last wrote it
    for i, s in enumerate(inside):
        before = plan.step(s.input).schema if s.input else None
        if before is None or s.schema is None:
            return  # its problem is reported
        if s.id in kept:
            reads = set(s.op.input_columns(before))
            for name in s.schema.names:  # made, or read and passed on (replaced in place)
                if name not in before.names or name in reads:
                    written[name] = s
            continue
        if isinstance(s.op, Sink | Action):
            continue
        if not written:
            continue
        tainted = [c for c in s.op.input_columns(before) if c in written]
        added = [f.name for f in plan.added_by(s) or []]
        later = set()
        for after in inside[i + 1:]:
            if after.id in kept and after.input:
                later |= set(after.op.input_columns(plan.step(after.input).schema))
        if tainted and any(a in later for a in added):
            column, by = tainted[0], written[tainted[0]]
            raise SchemaError(
                f"step '{s.id}' ({s.op.name}) reads '{column}', which '{by.id}' "
                f"({by.op.name}) writes, and the model saved here reads what it adds: "
                f"'{by.id}' is in the model and '{s.id}' is not, so scoring does "
                f"'{s.id}' on the rows as they come and would use other values of "
                f"'{column}' than training did",
                hint=f"move '{s.id}' before '{by.id}', so that it reads '{column}' as the "
                     "rows come (as scoring will)")


def training_only(plan: Plan, chain: list[Step]) -> list[frozenset[str]]:
    """Per step of a saved chain, the columns only the chain's fits read: their labels,
    weights and query groups that no later step of the saved model reads otherwise (a
    scaler of the label, an impute of the weight, another model's feature): what the
    step's ``saved_view`` leaves out of what scoring needs."""
    return _saved_reads(plan, chain)[0]


def _saved_reads(plan: Plan, chain: list[Step]) -> tuple[list[frozenset[str]], set[str]]:
    """``training_only``'s sets, and the fits' columns that no step of the saved model
    reads (what a fitted model does not read: its label, weight, queries), each step as
    ``saved_view`` saves it (a select of what is there reads nothing)."""
    fits = {column for s in chain for column in _fit_columns(s.op)}
    out: list[frozenset[str]] = []
    later: set[str] = set()
    for s in reversed(chain):
        only = frozenset(fits - later)
        out.append(only)
        own = _fit_columns(s.op)
        schema = plan.step(s.input).schema if s.input else None
        view = s.op.saved_view(only)
        if schema is not None and view is not None:
            later |= set(view.input_columns(schema)) - own
    return out[::-1], fits - later


def _fit_columns(op: Operator) -> set[str]:
    """The columns a fit reads that its fitted model does not: its label, weight and
    query groups (none for a step that is no estimator)."""
    if not isinstance(op, Estimator):
        return set()
    return {value for key in ("label", "weight", "group")
            if isinstance(value := getattr(op.params, key, None), str)}


def _planned_chain(plan: Plan, save_id: str) -> tuple[list[Step], list[str]] | None:
    """The steps ``save_id`` will save and the columns the saved model will read from
    their input, as planned; None when one of them has no schema (its problem is reported)."""
    if plan.step(save_id).schema is None:
        return None  # nor a chain to walk where a step of it was not built
    chain = plan.model_chain(save_id)
    source = plan.model_input(save_id)
    troubled = {p.step for p in plan.problems}  # a step with a problem may pass a schema on
    if not chain or source is None or any(s.schema is None or s.id in troubled
                                          for s in chain):
        return None
    training, fit_only = _saved_reads(plan, chain)
    saved = [(view, s.schema) for s, only in zip(chain, training, strict=True)
             if (view := s.op.saved_view(only)) is not None]
    # a fitted model reads its features, not the label, weight or queries its fit read,
    # unless another step of the saved model reads them too (an impute of the weight)
    return chain, [c for c in required_columns([view for view, _ in saved], source,
                                               [schema for _, schema in saved])
                   if c not in fit_only]


def _bind_promoted(plan: Plan, step: Step) -> bool:
    """Bind a promote step to the chain its challenger's ``save_model`` will save (the
    columns it reads); a SchemaError when no step of the pipeline saves it, or the save
    itself sets the alias."""
    assert isinstance(step.op, Promote)
    p = step.op.params
    if step.saved_by is None:
        raise SchemaError(f"model: no save_model step of this pipeline saves '{p.model}'",
                          hint="promote compares the model the run saves (save_model's "
                               "name, or an alias it sets) with the alias's version")
    save = plan.step(step.saved_by)
    if p.alias.casefold() in (a.casefold() for a in save.op.params.aliases):
        raise SchemaError(f"alias: step '{save.id}' sets '{p.alias}' itself, whatever "
                          "the comparison says", hint=f"drop '{p.alias}' from its aliases")
    planned = _planned_chain(plan, step.saved_by)
    if planned is None:
        return False
    step.op.bind_planned(planned[1])
    return True


def _bind_drift_planned(plan: Plan, step: Step) -> bool:
    """Bind a drift step to the profile its ``save_model`` step will keep, as planned:
    the numeric and text columns the saved chain reads (the edges and shares come when
    the run saves it); a SchemaError where the save keeps none (``profile: false``)."""
    assert isinstance(step.op, Drift) and step.saved_by is not None
    save = plan.step(step.saved_by)
    if not save.op.params.profile:
        raise SchemaError(f"model: step '{save.id}' saves '{save.op.params.name}' with "
                          "profile: false, so there are no training rows to compare with",
                          hint=f"drop profile: false from step '{save.id}', or compare "
                               "with a saved version (name@3, name@ALIAS)")
    planned = _planned_chain(plan, step.saved_by)
    if planned is None or (source := plan.model_input(step.saved_by)) is None:
        return False
    step.op.bind_planned(source, [c for c in planned[1] if c in source.names],
                         _planned_info(step))
    return True


def _planned_info(step: Step) -> dict[str, Any]:
    """The registry info of the model a step (score, drift) uses that this run saves."""
    return {"name": parse_ref(step.op.params.model)[0], "ref": step.op.params.model.strip(),
            "saved_by": step.saved_by}


def _bind_planned(plan: Plan, step: Step) -> bool:
    """Bind a score step to the chain its ``save_model`` step will save, as planned:
    the columns that chain reads from its input and the prediction columns its last
    step's planned schema has (a fit may add them only at run time: the step is open);
    False when a step of that chain has no schema (its problem is reported)."""
    assert isinstance(step.op, Score) and step.saved_by is not None
    planned = _planned_chain(plan, step.saved_by)
    if planned is None:
        return False
    chain, required = planned
    last = chain[-1].schema
    fits = [s.op for s in chain if isinstance(s.op, Estimator) and not s.op.after_model]
    # no model step: the chain may score with a saved model (score, then calibrate)
    scores = [s.op for s in chain if isinstance(s.op, Score)]
    model = fits[-1] if fits else scores[-1] if scores else None
    added = [last.field(c) for c in model_columns(model) if c in last.names]
    step.op.bind_planned(required, added, _planned_info(step), model, [s.op for s in chain])
    return True


def param_for(step: Step, exc: SluiceError) -> str | None:
    """The parameter a problem is about (the one the error names, ``exc.param``), else
    the one it is most likely about, for its line number."""
    if exc.param in step.spec.params:
        return exc.param
    found = _param_named(step.spec.params, str(exc))
    if found is None and isinstance(step.op, Source) and "path" in step.spec.params:
        return "path"
    if found is None and "model" in step.spec.params and "model '" in str(exc):
        return "model"  # a version or an alias the model lacks ('churn@7': "model 'churn'")
    return found


def _param_named(params: dict[str, Any], text: str) -> str | None:
    """The parameter a message is about: the one it starts with ("contributions: ..."),
    else the first whose value (or one of its names) it quotes."""
    for key in params:
        if text.startswith(f"{key}: "):
            return key
    for key in params:
        value = params[key]
        names = list(value) if isinstance(value, list | dict) else [value]
        if any(isinstance(n, str) and f"'{n}'" in text for n in names):
            return key
    return None
