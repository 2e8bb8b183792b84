"""``sluice plan``: what a pipeline will do, as planned, without reading a row.

Per step, in the order it runs: what it reads from (its input step), what it does (the
file it reads with the filter pushed into the read, the model version a ``score`` step
resolves to, what a fit caches and how many candidates a ``tune`` fits, what a
``save_model`` saves), and how it changes the columns: added, removed, retyped, and
where a fit decides them at run time (one_hot's vocabulary). Spark's ``explain()``,
Kedro's pipeline view, for a YAML file.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from operators.base import Estimator, Shuffle, Sink, Source
from operators.evaluate.drift import Drift
from operators.evaluate.evaluate import Measuring
from operators.evaluate.promote import Promote
from operators.features.join import Join, ShuffleJoin
from operators.features.repartition import Repartition
from operators.features.sort import Sort
from operators.features.top import Top
from operators.features.union import Union
from operators.features.window import Window
from operators.io.model import SaveModel
from operators.io.parquet import ReadParquet
from operators.score.score import Score
from pipelines.plan import Plan, Step, default_features, left_out
from pipelines.shuffle import DEFAULT_PARTITION_MB


def shown_params(params: dict[str, Any] | None) -> str:
    """A step's parameters as the pipeline file would say them: k=v, k=v."""
    return ", ".join(f"{k}={_shown_param(v)}" for k, v in (params or {}).items())


def _shown_param(value: Any) -> str:
    """A parameter as the pipeline file would say it (flow-style YAML)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true, false, null
    return json.dumps(value, separators=(", ", ": ")) if isinstance(value, dict | list) else (
        str(value))


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """A step's parameters as its file gives them, as plain JSON values."""
    return json.loads(json.dumps(dict(params), default=str))


def _columns(schema: pa.Schema | None) -> list[dict[str, str]] | None:
    if schema is None:
        return None
    return [{"name": f.name, "type": type_text(f.type)} for f in schema]


def type_text(t: pa.DataType) -> str:
    """A column type as the plan shows it: Arrow's name, a sparse column's by what it
    is (``operators.sparse``)."""
    from operators.sparse import is_sparse_type

    return "sparse (each row's non-zero terms)" if is_sparse_type(t) else str(t)


def _changes(before: pa.Schema | None, after: pa.Schema | None) -> dict[str, Any]:
    """Columns added, removed and retyped from ``before`` to ``after``."""
    if before is None or after is None:
        return {}
    old = {f.name: f.type for f in before}
    new = {f.name: f.type for f in after}
    return {"added": [{"name": n, "type": type_text(t)} for n, t in new.items()
                      if n not in old],
            "removed": [n for n in old if n not in new],
            "retyped": [{"name": n, "from": type_text(old[n]), "to": type_text(t)}
                        for n, t in new.items() if n in old and old[n] != t]}


def _megabytes(mb: float) -> str:
    return f"{mb * 1024:,.0f} KB" if mb < 1 else f"{mb:,.1f} MB" if mb < 100 else (
        f"{mb:,.0f} MB")


def _notes(plan: Plan, step: Step) -> list[str]:
    op = step.op
    notes: list[str] = []
    if isinstance(op, ReadParquet):
        if step.pushed_from:  # the read's filter, as planned (its own and the step's)
            notes.append(f"reads with filter: {op.params.filter} (step "
                         f"'{step.pushed_from}''s condition pushed into the read: files "
                         "and row groups it rules out are skipped)")
        if op.params.incremental:
            counts = op.incremental_counts()
            notes.append(f"incremental: {counts['new_files']:,} new file(s) to read now, "
                         f"{counts['read_before']:,} read by earlier runs"
                         + (f", {counts['waiting']:,} left for later runs (max_files)"
                            if counts["waiting"] else ""))
    elif isinstance(op, Score | Promote | Drift):
        if step.saved_by is not None:
            notes.append(f"model: the version step '{step.saved_by}' saves in this run")
        elif getattr(op, "model_info", None):
            info = op.model_info
            notes.append(f"model: {info.get('name')}@{info.get('version')} "
                         f"({op.params.model})")
        if isinstance(op, Promote):
            notes.append(f"moves {op.params.model.split('@')[0]}@{op.params.alias} to it "
                         f"if it is better by {op.params.metric or 'the default metric'}")
        if isinstance(op, Score) and op.params.contributions:
            notes.append(f"with contributions by {op.params.contributions_by}")
    elif isinstance(op, SaveModel):
        chain = [s.id for s in plan.model_chain(step.id)]
        notes.append(f"saves {', '.join(chain)} as '{op.params.name}' (the next version)"
                     + (f", aliases {', '.join(op.params.aliases)}" if op.params.aliases
                        else ""))
    elif isinstance(op, Union):
        steps = [step.input, *op.step_inputs()]
        notes.append("appends the rows of " + ", then ".join(f"'{s}'" for s in steps[1:])
                     + f" after '{step.input}''s, columns matched by name: its partitions "
                     "are theirs in that order, each read through its own steps (no "
                     "shuffle)" + ("; a column some of them lack is null in their rows"
                                   if op.params.missing == "null" else ""))
    elif isinstance(op, Join | ShuffleJoin) and op.params.table is not None:
        table = f"step '{op.params.table}'"
        how = {"broadcast": f"broadcasts its rows: collected on the driver when {table} "
                            "has run, sent to every partition",
               "shuffle": f"shuffles: the rows and {table}'s rows by "
                          f"{', '.join(left for left, _ in op.keys)} to the same places "
                          "through the scratch folder; rows in their order within each",
               "auto": f"decided when {table} has run: a broadcast of its rows if they take "
                       f"at most max_mb {op.params.max_mb:g} (as its source estimates them, "
                       "or measured), else a shuffle"}[op.params.strategy]
        notes.append(f"joins the rows of {table} as its table; {how}")
    elif isinstance(op, Join) and (op.estimated_mb is not None
                                   or op.params.partitions is not None):
        size = (f"its footers say ~{_megabytes(op.estimated_mb)}, within max_mb "
                f"{op.params.max_mb:g}" if op.estimated_mb is not None
                else f"strategy: {op.params.strategy}")
        notes.append(f"broadcasts the table ({size}): read once on the driver, sent to "
                     "every partition" + (f"; partitions: {op.params.partitions} applies "
                                          "to a shuffle join only (strategy: shuffle)"
                                          if op.params.partitions is not None else ""))
    elif isinstance(op, Shuffle):
        parts = getattr(op.params, "partitions", None)
        mb = getattr(op.params, "partition_mb", None) or DEFAULT_PARTITION_MB
        into = (f"{parts} partitions" if parts else
                f"partitions of up to {mb:g} MB, as many as the rows need")
        if isinstance(op, ShuffleJoin):
            why = (f": its footers say ~{_megabytes(op.estimated_mb)}, over max_mb "
                   f"{op.params.max_mb:g}" if op.estimated_mb is not None else "")
            notes.append(f"shuffles: the rows and the table's rows by "
                         f"{', '.join(left for left, _ in op.keys)} to the same places "
                         f"through the scratch folder{why}, into {into}"
                         + ("" if parts else " (a key of more rows split among several)")
                         + "; rows in their order within each")
        elif isinstance(op, Repartition):
            which = (f"the rows of each {', '.join(op.params.by)} to one place"
                     if op.params.by else "the rows spread by a hash of their values")
            notes.append(f"shuffles: {which} through the scratch folder, into {into}; "
                         "rows unchanged, in their order within each")
        elif isinstance(op, Top):
            p = op.params
            which = (f"of each {', '.join(p.by)}" if p.by else "of all the rows")
            notes.append(f"keeps the first {p.n} rows by {', '.join(p.order)} {which}: each "
                         "partition's own first ones go through the scratch folder" +
                         (f" to one place per group, into {into}" if p.by
                          else " to one place, into 1 partition"))
        elif isinstance(op, Sort):
            notes.append(f"sorts by {', '.join(op.params.by)}: a pass samples the rows for "
                         "the ranges of the output partitions, then the rows go to their "
                         f"range's through the scratch folder, into {into}, one after "
                         "another in order; every row kept")
        elif isinstance(op, Window):
            order = ", ".join(op.params.order)
            if op.one_place():
                notes.append(f"shuffles: all the rows to one place (one key: no by), "
                             f"ordered by {order}, into 1 partition; every row kept")
            else:
                notes.append(f"shuffles: the rows of each {', '.join(op.params.by)} to one "
                             f"place (through the scratch folder), ordered by {order}, "
                             f"into {into}; every row kept")
        else:
            keys = getattr(op.params, "by", None)
            by = (", ".join(keys) if keys else "all the rows" if op.one_place()
                  else "distinct row")
            notes.append(f"shuffles: one row per {by}, from the rows of every partition "
                         f"(partial rows through the scratch folder), into {into}")
    if isinstance(op, Measuring):
        passes = "two passes over its cached input" if op.multi_pass else "one pass"
        notes.append(f"measures the rows in {passes} (the figures go to the run record); "
                     "rows pass on")
    elif isinstance(op, Estimator):
        passes = "passes over its cached input" if op.multi_pass else "one pass"
        notes.append(f"fits ({passes})" if step.tuned_by is None else
                     f"fits ({passes}) once per candidate of '{step.tuned_by}''s tune, on "
                     "the rows that step trains on; the best is kept")
        upstream = plan.step(step.input) if step.input else None
        if upstream is not None and upstream.schema is not None:
            # after a fit that decides columns: those the plan knows, and the fit's
            chosen = default_features(step, upstream.schema)
            fits = [f"'{s.id}'" for s in upstream.opened_by] if upstream.open else []
            if chosen:
                notes.append(f"features (every numeric column but the {left_out(step)}): "
                             f"{', '.join(chosen[:12])}"
                             + (f" ... ({len(chosen)} in all)" if len(chosen) > 12 else "")
                             + (f", and those the fit{'s' * (len(fits) > 1)} of "
                                f"step{'s' * (len(fits) > 1)} {', '.join(fits)} "
                                f"decide{'s' * (len(fits) == 1)}" if fits else ""))
        if step.tuning is not None:
            folds = len(step.tuning.folds[0]) if step.tuning.folds else 0
            count = len(step.tuning.combos)
            notes.append(f"tunes {count} combination{'s' if count != 1 else ''}"
                         + (f" by {folds}-fold cross-validation" if folds else "")
                         + (f", with step '{step.tuning.feature.step}'"
                            if step.tuning.feature is not None else ""))
        if op.schema_from_fit:
            notes.append("the fit decides columns it adds or their types (known once it "
                         "has run)")
    if text := op.plan_note():  # what an operator decided from the plan
        notes.append(text)
    if step.spec.device or step.spec.dtype:
        notes.append(", ".join(f"{k}: {v}" for k, v in (("device", step.spec.device),
                                                         ("dtype", step.spec.dtype)) if v))
    return notes


def describe(plan: Plan) -> list[dict[str, Any]]:
    """Each step, in run order: id, op, kind, input, line, notes, column changes and
    output columns (None where a fit decides them at run time)."""
    out = []
    for step in plan.steps:
        upstream = plan.step(step.input) if step.input else None
        entry: dict[str, Any] = {
            "id": step.id, "op": step.op.name, "kind": step.op.kind, "input": step.input,
            **({"reads": step.op.step_inputs()} if step.op.step_inputs() else {}),
            "line": step.spec.line, "params": _plain(step.spec.params), "notes": _notes(plan, step),
            "columns": None if step.open and not isinstance(step.op, Source)
            else _columns(step.schema),
        }
        if upstream is not None and not isinstance(step.op, Sink):
            entry.update(_changes(upstream.schema, step.schema))
            entry["open"] = step.open
        out.append(entry)
    return out


def _shown(columns: list[dict[str, str]], limit: int = 12) -> str:
    text = ", ".join(f"{c['name']} {c['type']}" for c in columns[:limit])
    return text + (f" ... ({len(columns)} in all)" if len(columns) > limit else "")


def format_plan(plan: Plan, entries: list[dict[str, Any]]) -> list[str]:
    """The lines ``sluice plan`` prints."""
    lines = [f"pipeline {plan.spec.name} ({plan.spec.file}): {len(entries)} steps, in "
             "the order they run"]
    for entry in entries:
        source = f" <- {entry['input']}" if entry["input"] else ""
        # a join's table step, a union's other steps (whose rows are its own)
        named = "" if entry["kind"] == Union.kind else "table "
        source += "".join(f", {named}{other}" for other in entry.get("reads", []))
        lines.append(f"  {entry['id']}: {entry['op']}{source}  (line {entry['line']})")
        if entry["params"]:
            lines.append(f"      given: {shown_params(entry['params'])}")
        for note in entry["notes"]:
            lines.append(f"      {note}")
        if entry["input"] is None and entry["columns"] is not None:
            lines.append(f"      columns: {_shown(entry['columns'])}")
            continue
        for column in entry.get("added", []):
            lines.append(f"      + {column['name']} {column['type']}")
        for name in entry.get("removed", []):
            lines.append(f"      - {name}")
        for column in entry.get("retyped", []):
            lines.append(f"      ~ {column['name']} {column['from']} -> {column['to']}")
    skipped = plan.nothing_new()
    if skipped is not None:  # as the run would say it, with what makes it read again
        lines.append(f"nothing to do: {skipped}: a run now runs no step (and succeeds); "
                     "it reads the next new files, or every file with --full-refresh")
    return lines


# --------------------------------------------------------------------------- the graph

SHAPES = {"source": ("cylinder", "[("), "sink": ("cylinder", "[("),
          "estimator": ("box3d", "[["), "shuffle": ("hexagon", "{{"),
          "action": ("note", ">"), "union": ("invtrapezium", "[/")}
"""A step's shape by its kind (Graphviz, Mermaid's opening bracket); others a box."""
_CLOSING = {"[(": ")]", "[[": "]]", "{{": "}}", ">": "]", "[/": "\\]", "[": "]"}


def graph(plan: Plan) -> dict[str, Any]:
    """The steps as a graph: a node a step (id, op, kind) and an edge from each step
    whose rows or model a step takes, ``kind`` rows (its input, a union's others), table
    (a join's table step) or model (the save_model whose version a score or drift of
    this run uses)."""
    nodes = [{"id": s.id, "op": s.op.name, "kind": s.op.kind} for s in plan.steps]
    edges = []
    for step in plan.steps:
        if step.input:
            edges.append({"from": step.input, "to": step.id, "kind": "rows"})
        kind = "rows" if isinstance(step.op, Union) else "table"
        edges += [{"from": other, "to": step.id, "kind": kind}
                  for other in step.op.step_inputs()]
        if step.saved_by:
            edges.append({"from": step.saved_by, "to": step.id, "kind": "model"})
    return {"pipeline": plan.spec.name, "nodes": nodes, "edges": edges}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(shape: dict[str, Any]) -> str:
    """The graph in Graphviz's DOT (``sluice plan --dot | dot -Tsvg > plan.svg``)."""
    lines = [f"digraph {_quoted(shape['pipeline'])} {{", "  rankdir=TB;",
             '  node [shape=box, fontname="Helvetica"];']
    for node in shape["nodes"]:
        label = node["id"] if node["id"] == node["op"] else f"{node['id']}\\n{node['op']}"
        form = SHAPES.get(node["kind"], ("box", "["))[0]
        lines.append(f"  {_quoted(node['id'])} [label=\"{label}\", shape={form}];")
    for edge in shape["edges"]:
        style = {"rows": "", "table": ' [label="table"]',
                 "model": ' [label="model", style=dashed]'}[edge["kind"]]
        lines.append(f"  {_quoted(edge['from'])} -> {_quoted(edge['to'])}{style};")
    return "\n".join([*lines, "}"])


def to_mermaid(shape: dict[str, Any]) -> str:
    """The graph as a Mermaid flowchart (GitHub and GitLab draw it in Markdown)."""
    names = {node["id"]: f"s{i}" for i, node in enumerate(shape["nodes"])}
    lines = ["flowchart TD"]
    for node in shape["nodes"]:
        label = node["id"] if node["id"] == node["op"] else f"{node['id']}<br/>{node['op']}"
        opening = SHAPES.get(node["kind"], ("box", "["))[1]
        text = label.replace('"', "#quot;")
        lines.append(f'  {names[node["id"]]}{opening}"{text}"{_CLOSING[opening]}')
    for edge in shape["edges"]:
        arrow = {"rows": "-->", "table": "-->|table|", "model": "-.->|model|"}[edge["kind"]]
        lines.append(f"  {names[edge['from']]} {arrow} {names[edge['to']]}")
    return "\n".join(lines)
