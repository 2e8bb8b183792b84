"""The ``sluice`` command: run, validate, models, runs, ops, datagen."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import click

from operators.errors import SluiceError
from pipelines import runs

# The choices of --device, --dtype and --mode, spelled here so that `sluice --help` and
# the commands that run nothing (`runs`, `ops`) do not import the engines and operators
# they come from; tests/pipelines/test_startup.py checks them against their sources
# (pipelines.device.DEVICES, operators.arrays.DTYPES, operators.io.parquet.WRITE_MODES).
DEVICES = ("cpu", "gpu", "auto")
DTYPES = ("float64", "float32")
WRITE_MODES = ("error", "overwrite", "append", "overwrite_partitions")


def _err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not k=v (--param {key or 'NAME'}=VALUE)",
                                     param_hint="--param")
        if out.get(key, value) != value:  # a cron line edited twice: which day is meant?
            raise click.BadParameter(f"'{key}' is given twice ({out[key]} and {value})",
                                     param_hint="--param")
        out[key] = value
    return out


def _progress_wanted(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def _fail(exc: BaseException) -> None:
    """One line for user errors; a traceback, then one line, for bugs."""
    from pipelines.engines.base import StepFailure
    from pipelines.runner import ValidationFailed

    if isinstance(exc, ValidationFailed):
        for problem in exc.problems:
            _err(str(problem))
        if len(exc.problems) > 1:
            _err(f"{len(exc.problems)} problems; nothing ran")
    elif isinstance(exc, StepFailure):
        traceback.print_exception(exc.error, file=sys.stderr)
        _err(f"{exc} (this looks like a bug in an operator; please report it)")
    elif isinstance(exc, SluiceError):
        _err(str(exc))
    else:
        raise exc
    sys.exit(1)


models_option = click.option(
    "--models", "models", metavar="DIR", default=None,
    help="model store root (default: $SLUICE_MODELS, else data/models)")


runs_option = click.option(
    "--runs", "runs_dir", metavar="DIR", default=None,
    help="run records folder or URL (default: $SLUICE_RUNS, else data/runs)")


mlflow_option = click.option(
    "--mlflow", metavar="URI", envvar="SLUICE_MLFLOW", default=None,
    help="log the run to this MLflow tracking server (http://host:5000, databricks, "
         "sqlite:///mlflow.db with the full mlflow; default: $SLUICE_MLFLOW; needs "
         "sluice[mlflow])")
mlflow_experiment_option = click.option(
    "--mlflow-experiment", metavar="NAME", envvar="SLUICE_MLFLOW_EXPERIMENT", default=None,
    help="the MLflow experiment (default: $SLUICE_MLFLOW_EXPERIMENT, else the pipeline's "
         "name)")


class _Commands(click.Group):
    """Every command's user errors are one line (and exit 1), wherever they are raised
    (a step's failure, which only running a pipeline raises: ``_run_and_print``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SluiceError as exc:
            _fail(exc)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sluice")
def main() -> None:
    """Declarative ML pipelines over Parquet: local, Dask or Spark, same results."""


def _engine_choice(value: str) -> str:
    """``--engine`` names an engine or an existing profile: else a usage error."""
    from pipelines import profiles

    try:
        profiles.locate(value)
    except SluiceError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _engine_options(command: Any) -> Any:
    """The options of a command that runs a pipeline (``run``, ``score``)."""
    options = [
        click.option("--engine", default="local", show_default=True, metavar="NAME|PROFILE",
                     callback=lambda ctx, param, value: _engine_choice(value),
                     help="local, dask, spark, or an engine profile: a name in "
                          "conf/engines/ (gpu: conf/engines/gpu.yaml) or a path to a .yaml "
                          "file"),
        models_option,
        runs_option,
        click.option("--scratch", metavar="DIR|URL", default=None,
                     help="where aggregate steps leave partial rows during the run (every "
                          "worker must see it; default: $SLUICE_SCRATCH, else the engine "
                          "profile's scratch, else this machine's temporary folder)"),
        click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
                     help="Dask scheduler to attach to"),
        click.option("--master", metavar="URL", default=None, help="Spark master URL"),
        click.option("--device", type=click.Choice(DEVICES), default=None,
                     help="where numeric kernels run (a step's `device:` wins; default: "
                          "the pipeline's `device:`, else the engine profile's, else cpu)"),
        click.option("--dtype", type=click.Choice(DTYPES), default=None,
                     help="compute dtype of numeric kernels (a step's `dtype:` wins; "
                          "default: the pipeline's, else the engine profile's, else "
                          "float64)"),
        click.option("--progress/--no-progress", default=None,
                     help="progress bar (default: on a terminal, off in CI and pipes)"),
        mlflow_option,
        mlflow_experiment_option,
        click.option("--openlineage", metavar="URL", default=None,
                     help="send the run's OpenLineage events (what it read and wrote) to "
                          "this lineage server (default: $OPENLINEAGE_URL)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cluster_options_fit(engine: str, scheduler: str | None, master: str | None) -> None:
    """--scheduler and --master only with the engine they address: with another they
    were ignored, and a job meant for the cluster ran on this machine."""
    from pipelines import profiles

    kind = profiles.locate(engine)[0]
    on = f"the {kind} engine" if engine == kind else f"--engine {engine}, a {kind} profile"
    for option, value, wanted in (("--scheduler", scheduler, "dask"),
                                  ("--master", master, "spark")):
        if value is not None and kind != wanted:
            raise click.UsageError(f"{option} {value} is for the {wanted} engine, and this "
                                   f"run is on {on}: add --engine {wanted} (or a {wanted} "
                                   "profile)")


def _run_and_print(path: str, params: dict[str, str], progress: bool | None,
                   text: str | None = None, before: Callable[[], None] | None = None,
                   **options: Any) -> None:
    """Run a pipeline as `sluice run` does: the summary, or one line and the exit
    status of a failure or a signal. ``before``: a check of the command's own, once its
    options are known to fit, before the run (and its record)."""
    from pipelines.engines.base import StepFailure
    from pipelines.runner import Interrupted, run, stopping_on_signals

    _cluster_options_fit(options["engine"], options.get("scheduler"), options.get("master"))
    if before is not None:
        before()

    try:
        with stopping_on_signals():
            record = run(path, params, progress=_progress_wanted(progress), text=text,
                         notify=lambda line: click.echo(f"note: {line}", err=True),
                         **options)
    except StepFailure as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _err(f"interrupted by {signal.Signals(signum).name}: stopped; what the run had not "
             "committed was discarded (its run record says interrupted)")
        sys.exit(128 + signum)
    for line in record.get("warnings", []):
        click.echo(f"warning: {line}", err=True)
    _print_record(record)


@main.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--param", "params", multiple=True, metavar="K=V", help="override a param")
@click.option("--full-refresh", is_flag=True,
              help="incremental reads read every file, as if no run had read any (what "
                   "they read is then this run's files only)")
@_engine_options
def run_command(file: str, params: tuple[str, ...], progress: bool | None,
                **options: Any) -> None:
    """Validate and run a pipeline file.

    Exit status: 0 succeeded (also when its incremental reads had no new file: nothing
    run, one line says so), 1 failed (one error line; a bug also prints its traceback),
    130 / 143 stopped by SIGINT / SIGTERM (the engine's jobs cancelled, what was not
    committed discarded, the run record's status ``interrupted``)."""
    _run_and_print(file, _parse_params(params), progress, **options)


@main.command("score")
@click.argument("model")
@click.argument("source", metavar="INPUT")
@click.argument("output")
@click.option("--mode", type=click.Choice(WRITE_MODES), default="error",
              show_default=True, help="what to do with an existing OUTPUT (write_parquet's "
                                      "mode)")
@click.option("--partition-by", "partition_by", metavar="COLUMNS", default=None,
              help="hive partition columns of OUTPUT, comma separated (overwrite_partitions "
                   "replaces those the rows fall in)")
@click.option("--filter", "where", metavar="CONDITION", default=None,
              help="score only the rows where it holds (pushed into the read)")
@click.option("--keep", metavar="COLUMNS", default=None,
              help="input columns to write beside the model's, comma separated "
                   "(default: every input column)")
@click.option("--contributions", is_flag=True, help="add per-feature contributions")
@click.option("--contributions-by", type=click.Choice(["features", "inputs"]),
              default="features", show_default=True)
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="a binary classifier's cut: the second class where its probability is "
                   "at least this (evaluate's thresholds.best_f1 suggests one)")
@_engine_options
def score_command(model: str, source: str, output: str, mode: str,
                  partition_by: str | None, where: str | None, keep: str | None,
                  contributions: bool, contributions_by: str, threshold: float | None,
                  progress: bool | None, **options: Any) -> None:
    """Score the Parquet at INPUT with MODEL (churn, churn@3, churn@production) into
    OUTPUT, on any engine: the pipeline read -> score -> write, without a file (MLflow's
    `models predict`). Atomic as every write; the summary and the run record as `run`'s.

        sluice score churn@production data/churn/ds=2026-11-29 data/scores/ds=2026-11-29
    """
    from pipelines.runner import ValidationFailed, scoring_pipeline

    if _local_path(model) and _local_path(source) is False:
        raise click.UsageError(f"MODEL comes first, then INPUT: '{model}' is a path and "
                               f"'{source}' is none (did you mean `sluice score {source} "
                               f"{model} {output}`?)")
    text = scoring_pipeline(model, source, output, mode=mode, where=where,
                            keep=_listed(keep), partition_by=_listed(partition_by),
                            contributions=contributions, contributions_by=contributions_by,
                            models=options["models"], threshold=threshold)
    label = f"sluice score {model}"

    def as_options(text: str) -> str:
        """The pipeline's keys as this command's options."""
        text = re.sub(r"`mode: (\w+)`", r"--mode \1", text)
        return re.sub(r"`partition_by: \[([^\]]*)\]`", lambda m: "--partition-by " + (
            "COLUMNS" if m[1] == "..." else m[1].replace(" ", "")), text).replace(
            "`partition_by`", "--partition-by")

    # a column named with spaces ('tenure plan'): a list written with spaces for commas
    spaced = {name: option for option, given in (("--keep", keep),
                                                  ("--partition-by", partition_by))
              for name in _listed(given) or [] if len(name.split()) > 1}

    def comma_hint(message: str) -> str:
        """``message`` with, where it names a column of spaces, how to list columns."""
        for name, option in spaced.items():
            fix = f"{option} is comma separated, as in {option} {','.join(name.split())}"
            said, found = re.subn(rf"'{re.escape(name)}' not in the input"
                                  r"(; did you mean '[^']*'\?)?",
                                  lambda m, fix=fix: f"{m[0].split(';')[0]}: {fix}", message)
            if found:
                return said
            if f"'{name}'" in message:
                return f"{message} ({fix})"
        return message

    def explain(exc: SluiceError) -> None:
        """The failure in this command's words (also in the run record)."""
        if isinstance(exc, ValidationFailed):  # the lines of a file nobody wrote
            exc.problems[:] = [dataclasses.replace(p, line=0, message=comma_hint(
                as_options(p.message))) for p in exc.problems]
            return
        exc.where = re.sub(rf"^{re.escape(label)}:\d+", label, exc.where or "") or None
        if exc.hint:
            exc.hint = as_options(exc.hint)

    _run_and_print(label, {}, progress, text=text, explain=explain,
                   before=lambda: _model_named(model, options["models"], label), **options)


def _model_named(ref: str, models: str | None, label: str) -> None:
    """That the registry has a model of the name ``sluice score`` was given, said before
    the run where not: a name that names nothing is a typo, as a mistyped pipeline path
    is, and leaves no run record (a version or alias the model lacks is the run's
    failure, recorded)."""
    from pipelines.store import ModelStore, parse_ref

    try:
        name, _ = parse_ref(ref)
    except SluiceError:
        return  # the run says what is wrong with the reference
    store = ModelStore(models)
    try:
        store.resolve(ref)
    except SluiceError as exc:
        if not store.versions(name):
            raise exc.located(f"{label}: step 'score' (score)") from None


def _local_path(text: str) -> bool | None:
    """Whether ``text`` names a path on this machine that exists (None: a URL, which is
    not looked at)."""
    return None if "://" in text else Path(text).exists()


def _listed(text: str | None) -> list[str] | None:
    """A comma-separated option's names; None when not given."""
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]




def _read_incrementally(step_id: str, read: dict[str, Any], record: dict[str, Any]) -> str:
    """'step 'events' read 2 new files (first ..., last ...); 4 read by earlier runs;
    1 waits (max_files)'; a run that did not end claimed them (a later run that settled
    it recorded them as read, or read them again)."""
    new = read.get("new_files", 0)
    verb = {"running": "is reading", "lost": "claimed"}.get(record["status"], "read")
    if (record.get("settled_by") or {}).get("outcome") == "settled":
        verb = "read"  # recorded as read by the run that settled it
    text = f"step '{step_id}' {verb} {new:,} new file{'s' * (new != 1)}"
    if read.get("first"):
        text += (f" ({read['first']})" if read["first"] == read["last"]
                 else f" (first {read['first']}, last {read['last']})")
    text += "; every file (--full-refresh)" if read.get("full_refresh") else (
        f"; {read.get('read_before', 0):,} read by earlier runs")
    if read.get("waiting"):
        text += f"; {read['waiting']:,} wait for the next runs (max_files)"
    settled = record.get("settled_by")
    if settled:
        text += (f"; recorded as read by run {settled['by']}" if settled["outcome"] == "settled"
                 else f"; read again by run {settled['by']}, nothing of it kept")
    return text


def _print_record(record: dict[str, Any], details: bool = False) -> None:
    """A run's summary, as `sluice run` ends; ``details`` adds its file, params and error
    (`sluice runs show`)."""
    status = record["status"]
    took = {"running": "running for", "lost": "lost after"}.get(
        status, f"{runs.status_said(record)} in")
    work = record.get("work_seconds")
    click.echo(f"run {record['run_id']} of '{record['pipeline']}' on {record['engine']['name']}: "
               f"{took} {record['seconds']:.2f}s"
               + (f" (work {work:.3f}s: the steps' tasks and fits' driver time)"
                  if work else ""))
    if status == "lost":
        click.echo(f"  lost: {record['lost']}")
    if record.get("settled_by"):
        click.echo(f"  {runs.settled_said(record['settled_by'])}")
    elif status == "running":
        click.echo(f"  heartbeat: {record.get('heartbeat_at', '?')} (every "
                   f"{record.get('heartbeat_seconds', '?')}s), process {record.get('pid', '?')}"
                   f" on {record.get('host', '?')}")
    on_gpu = "gpu" in record.get("device", "")
    if record.get("failed_in"):
        _print_declared(record)
    elif record["steps"] and work is not None:
        click.echo(f"  {'STEP':<24} {'OP':<22} {'ROWS':>17}  {'TASKS':>8}  {'DRIVER':>8}  "
                   f"{'WORK':>6}  {'WALL':>8}")
    for step_id, entry in record["steps"].items() if not record.get("failed_in") else ():
        rows = entry.get("rows")
        shown = f"{rows:>12,} rows" if rows is not None else " " * 17
        where = ""
        if entry.get("wall_includes"):  # its own wall ran the lazy steps before it
            where += f"  (wall with {', '.join(entry['wall_includes'])})"
        if on_gpu:
            where += f"  {entry.get('device', '')}"
        if entry.get("dtype"):
            where += f" {entry['dtype']}"
        if work is None:  # a running or lost run's, a skipped one's, or an old record
            # a step that has not ended has no time: blank, not a step of 0 seconds
            click.echo(f"  {step_id:<24} {entry['op']:<22} {shown}  "
                       f"{_seconds(entry.get('wall_seconds')):>9}{where}".rstrip())
            continue
        click.echo(f"  {step_id:<24} {entry['op']:<22} {shown}  "
                   f"{_seconds(entry.get('compute_seconds')):>8}  "
                   f"{_seconds(entry.get('driver_seconds')):>8}  "
                   f"{_share(entry.get('work_share')):>6}  "
                   f"{_seconds(entry.get('wall_seconds')):>8}{where}".rstrip())
    for step_id, entry in record["steps"].items():
        mode = entry.get("fit_mode", "")
        if mode.startswith("one job a pass ("):  # resident was possible, and fell back
            click.echo(f"  step '{step_id}': fitted {mode}")
        for split in entry.get("device_splits", []):
            click.echo(f"  step '{step_id}', partition {split['partition']}: split in "
                       f"{split['pieces']} pieces to fit in device memory")
        for fallback in entry.get("device_fallbacks", []):
            click.echo(f"  step '{step_id}', partition {fallback['partition']}: ran on the "
                       f"CPU ({fallback['reason']})")
    if record.get("skipped"):
        click.echo(f"  nothing to do: {record['skipped']}")
    for step_id, entry in record["steps"].items():
        read = entry.get("incremental")
        if read is not None:
            click.echo(f"  {_read_incrementally(step_id, read, record)}")
            if read.get("lock_taken"):  # a lost run's lock object this run took over
                from pipelines.incremental import taken_line

                click.echo(f"  {taken_line(step_id, read['lock_taken'])}")
            if read.get("claim"):  # a killed run's claim this run settled first
                from pipelines.incremental import settled_line

                click.echo(f"  {settled_line(step_id, read['claim'])}")
    for output in record["outputs"]:
        click.echo(f"  {_written(output)}")
    for output in runs.outputs_of(record) if not record["outputs"] else ():
        counted = f"{output['rows']:,} rows" if output["rows"] is not None \
            else "its rows (not counted)"
        click.echo(f"  landed: {counted} in {output['path']} (step '{output['step']}', as "
                   f"run {record['settled_by']['by']} found them)")
    for taken in (record.get("settled_by") or {}).get("removed", []):
        click.echo(f"  taken out by run {record['settled_by']['by']}: {taken}")
    for model in record.get("models_used", []):
        ref = model.get("ref", "")
        alias = f", as {ref}" if "@" in ref and not ref.endswith(f"@{model['version']}") else ""
        click.echo(f"  step '{model['step']}' used model {model['name']}@{model['version']} "
                   f"({model['path']}{alias})")
    for model in runs.models_of(record):
        aliases = "".join(f", {model['name']}@{a}" for a in model.get("aliases", []))
        click.echo(f"  saved model {model['name']}@{model['version']} ({model['path']}"
                   f"{aliases})")
    for promotion in record.get("promotions", []):
        target = f"{promotion['name']}@{promotion['alias']}"
        if promotion["promoted"]:
            was = promotion.get("was")
            click.echo(f"  promoted {promotion['name']}@{promotion['version']} to {target}"
                       f"{'' if was is None else f' (was version {was})'}: "
                       f"{promotion['reason']}")
        else:
            click.echo(f"  kept {target}: {promotion['reason']}")
    _print_metrics(record["metrics"], notes=details)
    _print_tracking(record.get("mlflow"))
    if details:
        from pipelines.describe import shown_params

        click.echo(f"  file: {record.get('file', '?')}")
        click.echo(f"  params: {shown_params(record['params']) or 'none'}")
        # what `sluice run` said of the run: its notes as it started, its warnings
        for note in record.get("notes", []):
            click.echo(f"  note: {note}")
        for warning in record.get("warnings", []):
            click.echo(f"  warning: {warning}")
        if record.get("failed_in"):
            held = (f"run {record['held_by']} of the pipeline held its incremental reads; "
                    if record.get("held_by") else "")
            click.echo(f"  failed in: {record['failed_in']} ({held}before any step ran)")
        problems = record.get("problems") or []
        if len(problems) > 1:
            for problem in problems:
                click.echo(f"  problem: {problem}")
        elif record.get("error"):
            click.echo(f"  error: {record['error']}")
    click.echo(f"  record: {record['record_path']}")


def _print_declared(record: dict[str, Any]) -> None:
    """A refused run's steps as its file declares them (none ran), with how many of its
    problems each has; where the file did not parse, why no step is known."""
    if record.get("steps_unknown"):
        click.echo(f"  steps: none known, {record['steps_unknown']}")
        return
    steps = record["steps"]
    counted = any(entry.get("problems") for entry in steps.values())
    if steps:
        click.echo(f"  {'STEP':<24} {'OP':<22} {'PROBLEMS' if counted else ''}".rstrip())
    for step_id, entry in steps.items():
        click.echo(f"  {step_id:<24} {entry['op']:<22} {entry.get('problems') or ''}".rstrip())


def _seconds(value: float | None) -> str:
    """A step's seconds in its summary line ('' for none)."""
    return "" if value is None else f"{value:.3f}s"


def _share(value: float | None) -> str:
    """A step's share of the run's work in its summary line: 41.2% ('' for none)."""
    return "" if value is None else f"{value:.1%}"


def _print_tracking(entry: dict[str, Any] | None) -> None:
    """Where the run went in MLflow (a run that could not be logged was said as it
    ended, in a note)."""
    if entry and "run_id" in entry:
        click.echo(f"  mlflow: run {entry['run_id']} in experiment {entry['experiment_id']} "
                   f"at {entry['uri']}")


def _written(output: dict[str, Any]) -> str:
    """What a write did to its output, in a line."""
    rows, path, mode = f"{output['rows']:,} rows", output["path"], output.get("mode")
    total = output.get("output_rows")
    after = f" ({total:,} rows in all)" if total is not None else ""
    if mode == "append":
        return f"appended {rows} to {path}{after}"
    if mode == "overwrite_partitions":
        n, replaced = output["partitions"], output["partitions_replaced"]
        return (f"wrote {rows} to {path}: {n} partition{'s' * (n != 1)}, {replaced} of them "
                f"replaced{after}")
    return f"wrote {rows} to {path}"


SHOWN_GROUPS = 20  # evaluate's groups (by) shown in a run's summary; all are in the record
SHOWN_ITEMS = 20  # figures on a summary line (select_features' ranking of 500 features)


def _print_metrics(by_step: dict[str, Any], notes: bool = True) -> None:
    """One line per step (and per nested group: validation, evaluate's groups by value)
    of scalar metrics; a fit's note on a line of its own (none where ``notes`` is False:
    the run said it at its step)."""

    def show(label: str, values: dict[str, Any]) -> None:
        items = [f"{k}={_fmt_list(v) if isinstance(v, list) else _fmt(v)}"
                 for k, v in values.items()
                 if not isinstance(v, dict) and not _long(v) and k != "note"]
        if len(items) > SHOWN_ITEMS:  # a statistic per feature of wide data: the first
            items = [*items[:SHOWN_ITEMS], f"{len(items) - SHOWN_ITEMS} more in the run "
                                           "record"]
        if items:
            click.echo(f"  metrics {label}: {', '.join(items)}")
        if notes and isinstance(values.get("note"), str):
            click.echo(f"  note {label}: {values['note']}")
        for key, value in values.items():
            if key == "groups" and isinstance(value, dict):
                for group in list(value)[:SHOWN_GROUPS]:
                    show(f"{label}.{group}", value[group])
                if len(value) > SHOWN_GROUPS:
                    click.echo(f"  metrics {label}: {len(value) - SHOWN_GROUPS} more groups "
                               "in the run record")
            elif isinstance(value, dict):
                show(f"{label}.{key}", value)

    for step_id, metrics in by_step.items():
        show(step_id, metrics or {})


SHOWN_LIST = 12
"""A list metric of at most this many plain values is shown in the summary (drift's
drifted columns, a tuning candidate's folds, evaluate's classes); others are in the
run record only (a confusion matrix)."""


def _long(value: Any) -> bool:
    return isinstance(value, list) and (len(value) > SHOWN_LIST or any(
        isinstance(v, list | dict) for v in value))


def _fmt_list(values: list[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--param", "params", multiple=True, metavar="K=V", help="override a param")
@models_option
@runs_option
def validate(files: tuple[str, ...], params: tuple[str, ...], models: str | None,
             runs_dir: str | None) -> None:
    """Check pipeline files without running them; report every problem (exit 1 if any).
    An incremental read is checked against what the runs under --runs read before."""
    from pipelines.plan import output_problems
    from pipelines.runner import plan_file
    from pipelines.store import ModelStore

    overrides = _parse_params(params)
    store = ModelStore(models)
    total = wrong = 0
    for file in files:
        plan = plan_file(file, overrides, store, reads=_reads(runs_dir))
        output_problems(plan)
        _report(plan)
        total += len(plan.problems)
        wrong += not plan.ok
        if plan.ok:
            click.echo(f"{file}: ok ({len(plan.steps)} steps)")
    if total:
        _problems_found(total, wrong, len(files))


def _report(plan: Any) -> None:
    """A plan's problems (each located) and notes, as validate and plan print them."""
    for problem in plan.problems:
        _err(str(problem))
    for line in plan.notices:
        click.echo(f"note: {line}", err=True)


def _problems_found(total: int, wrong: int, files: int) -> None:
    """The last line of a check that found problems (validate's, plan's); exit 1."""
    of = f"{wrong} of {files}" if wrong < files else f"{wrong}"
    _err(f"{total} problem(s) in {of} file(s)")
    sys.exit(1)


def _reads(runs_dir: str | None) -> Any:
    """What the incremental reads read before, as the runs under ``runs_dir`` (else
    $SLUICE_RUNS, else data/runs) say: the state `sluice run --runs` reads."""
    from pipelines.incremental import Reads
    from pipelines.runs import default_runs_dir

    return Reads(runs_dir or default_runs_dir())


@main.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--param", "params", multiple=True, metavar="K=V", help="override a param")
@models_option
@runs_option
@click.option("--json", "as_json", is_flag=True, help="the plan as JSON, for tools")
@click.option("--dot", "as_dot", is_flag=True,
              help="the steps as a Graphviz graph (| dot -Tsvg > plan.svg)")
@click.option("--mermaid", "as_mermaid", is_flag=True,
              help="the steps as a Mermaid flowchart (drawn in GitHub Markdown)")
def plan_command(file: str, params: tuple[str, ...], models: str | None,
                 runs_dir: str | None, as_json: bool, as_dot: bool, as_mermaid: bool) -> None:
    """What a pipeline will do, without reading a row: each step in the order it runs,
    what it reads (an incremental read: the files the runs under --runs have not read),
    fits, scores (the model version) or writes, and how it changes the columns. Problems
    are reported as `validate` does (exit 1)."""
    from pipelines.describe import describe, format_plan, graph, to_dot, to_mermaid
    from pipelines.plan import output_problems
    from pipelines.runner import plan_file
    from pipelines.store import ModelStore

    if as_json + as_dot + as_mermaid > 1:
        raise click.UsageError("give one of --json, --dot and --mermaid")
    plan = plan_file(file, _parse_params(params), ModelStore(models), reads=_reads(runs_dir))
    output_problems(plan)
    _report(plan)
    if not plan.ok:
        _problems_found(len(plan.problems), 1, 1)
    if as_dot or as_mermaid:
        click.echo((to_dot if as_dot else to_mermaid)(graph(plan)))
        return
    entries = describe(plan)
    if as_json:
        click.echo(json.dumps({"pipeline": plan.spec.name, "file": str(plan.spec.file),
                               "steps": entries, "notes": plan.notices,
                               "skipped": plan.nothing_new()}, indent=1))
        return
    for line in format_plan(plan, entries):
        click.echo(line)


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@models_option
def models_list(models: str | None) -> None:
    """Every model with its versions."""
    from pipelines.store import ModelStore

    store = ModelStore(models)
    names = store.names()
    if not names:
        if models and _local_path(models) and Path(models).is_file():
            raise click.UsageError(f"--models {models} is a file, not a model folder")
        click.echo(f"no models in {store.root}")
        return
    for name in names:
        versions = store.versions(name)
        meta = store.read_meta(name, versions[-1])
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(store.aliases(name).items()))
        click.echo(f"{name:<24} versions {', '.join(map(str, versions)):<16} latest "
                   f"{meta.get('created_at', '?')} from {meta.get('pipeline', '?')}"
                   + (f"  aliases {aliases}" if aliases else ""))


@models.command("show")
@click.argument("ref")
@models_option
@click.option("--json", "as_json", is_flag=True, help="print model.json as it is")
def models_show(ref: str, models: str | None, as_json: bool) -> None:
    """One model version: where it came from, what it needs, its steps and metrics."""
    from pipelines.describe import shown_params
    from pipelines.store import ModelStore

    store = ModelStore(models)
    name, version = store.resolve(ref)
    meta = store.read_meta(name, version)
    store.load(f"{name}@{version}")  # proves the arrays load too
    if as_json:
        click.echo(json.dumps(meta, indent=1))
        return
    aliases = sorted(a for a, v in store.aliases(name).items() if v == version)
    click.echo(f"{name}@{version}  created {meta.get('created_at')}  pipeline "
               f"{meta.get('pipeline')}  run {meta.get('run_id')}"
               + (f"  aliases {', '.join(aliases)}" if aliases else ""))
    if meta.get("description"):
        click.echo(f"  {meta['description']}")
    click.echo("  needs columns: " + ", ".join(meta.get("required_columns", [])))
    click.echo("  steps:")
    for entry in meta["steps"]:
        click.echo(f"    - {entry['op']}{_scores_with(entry)}")
    for step_id, trained in (meta.get("trained_with") or {}).items():
        given = shown_params(trained["params"])
        click.echo(f"  trained {step_id} ({trained['op']}): {given or 'the defaults'}")
    for data_step in meta.get("data_steps") or []:  # not in the model: scoring repeats them
        added = data_step.get("added_columns") or []
        click.echo(f"  data {data_step['step']} ({data_step['op']}): "
                   f"{shown_params(data_step['params'])}"
                   + (f"; added {', '.join(added)}" if added else ""))
    profile = meta.get("profile")
    if profile:  # what drift compares scored rows with
        click.echo(f"  profile: {profile['rows']:,} training rows ({profile['sample_rows']:,} "
                   f"sampled): " + ", ".join(profile["columns"]))
    out = [f["name"] + ": " + f["type"] for f in meta["output_schema"]["fields"]]
    click.echo("  output: " + ", ".join(out[-3:]))
    _print_metrics(meta.get("metrics") or {})


def _scores_with(entry: dict[str, Any]) -> str:
    """What a saved score step scores with (score, then calibrate: the model it was
    fitted on, frozen in this one): ``: churn@3 (its steps)``, else nothing."""
    inner = (entry.get("state") or {}).get("model")
    if not isinstance(inner, dict):
        return ""
    info = inner.get("info") or {}
    ref = f"{info.get('name', '?')}@{info.get('version', '?')}"
    return f": {ref} (" + ", ".join(step["op"] for step in inner.get("steps", [])) + ")"


@models.command("alias")
@click.argument("ref")
@click.argument("alias")
@models_option
@click.option("--delete", is_flag=True, help="remove the alias (REF: the model's name)")
def models_alias(ref: str, alias: str, models: str | None, delete: bool) -> None:
    """Point ALIAS of a model at the version REF names (churn@3, churn@staging, churn:
    the latest), or remove it with --delete. A pipeline then scores with churn@ALIAS;
    promoting or rolling back is pointing the alias elsewhere."""
    from pipelines.store import ModelStore

    store = ModelStore(models)
    if delete:
        name = ref.split("@", 1)[0]
        spelt, was = store.remove_alias_spelt(name, alias)
        click.echo(f"removed {name}@{spelt} (it pointed at version {was})")
        return
    name, version = store.resolve(ref)
    was = store.set_alias(name, alias, version)
    moved = "" if was is None else (" (unchanged)" if was == version else f" (was {was})")
    click.echo(f"{name}@{alias} -> version {version}{moved}")


@main.command()
@click.argument("ref")
@models_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="port to listen on (0: any free port, printed)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="server processes sharing the port (each loads the model)")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="requests a process scores at once (more pays only for large batches, "
                   "where NumPy lets go of Python's lock; --workers for more cores)")
@click.option("--refresh", type=click.FloatRange(min=0), default=0, show_default=True,
              metavar="SECONDS", help="look this often whether REF names another version "
              "(an alias moved, a new latest) and serve it; 0: never")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="where the model's kernels run")
@click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True)
@click.option("--max-rows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="rows one request may carry (413 past it)")
@click.option("--max-mb", type=click.FloatRange(min=0, min_open=True), default=100.0,
              show_default=True, help="size of one request's body (413 past it)")
@click.option("--drift-window", type=click.IntRange(min=0), default=10_000, show_default=True,
              metavar="ROWS", help="the input columns' PSI against the training rows over "
              "windows of this many scored rows, in /metrics and /metadata (0: none)")
@click.option("--log-rows", metavar="DIR", default=None,
              help="append the scored rows (inputs, prediction, when, which version, "
                   "which request) to Parquet under DIR/date=YYYY-MM-DD/, for drift and "
                   "evaluation pipelines to read")
@click.option("--log-every", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, metavar="SECONDS", help="how often --log-rows writes a file")
@click.option("--log-file-rows", type=click.IntRange(min=1), default=100_000,
              show_default=True, help="rows that make --log-rows write a file at once")
@click.option("--canary", metavar="REF:PERCENT", default=None,
              help="another model (churn@candidate:10) that answers this share of the "
                   "requests, chosen by their X-Request-Id (a retry meets the same model)")
@click.option("--shadow", metavar="REF", default=None,
              help="another model that scores every request after its answer is sent: "
                   "into --log-rows and /metrics' disagreement count, never answered")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="a file holding a token every request but /ping and /health must send "
                   "as `Authorization: Bearer <token>` (or $SLUICE_SERVE_TOKEN)")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False), default=None,
              help="serve HTTPS with this certificate (PEM) ...")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False), default=None,
              help="... and its private key (PEM)")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="a log line per request")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info",
                                                 "debug"]), default="info", show_default=True)
def serve(ref: str, models: str | None, host: str, port: int, workers: int, threads: int,
          refresh: float, device: str, dtype: str, max_rows: int, max_mb: float,
          drift_window: int, log_rows: str | None, log_every: float, log_file_rows: int,
          canary: str | None, shadow: str | None, token_file: str | None,
          ssl_certfile: str | None, ssl_keyfile: str | None, access_log: bool,
          log_level: str) -> None:
    """Serve the model REF (churn, churn@3, churn@production) over HTTP.

    POST /invocations scores the rows of a request with the chain the `score` step
    applies: MLflow's JSON formats (dataframe_split, dataframe_records, inputs,
    instances), CSV, or an Arrow IPC stream (answered in Arrow). JSON `params` (or the
    query string): contributions, contributions_by, keep (columns of the request to
    echo). GET /ping, /health, /metadata (inputs, outputs, version), /metrics
    (Prometheus), /version.
    SIGINT / SIGTERM stop it once the requests in flight are answered (exit status 130 /
    143); a problem with the model or the port stops it before it listens (exit 1)."""
    from pipelines.serving import Settings
    from pipelines.serving import serve as start

    token = os.environ.get("SLUICE_SERVE_TOKEN") or None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise SluiceError(f"cannot read --token-file {token_file}: "
                              f"{exc.strerror or exc}") from None
        if not token:
            raise SluiceError(f"--token-file {token_file} is empty",
                              hint="put the token in it")
    canary_ref, percent = None, 0.0
    if canary is not None:
        canary_ref, _, share = canary.rpartition(":")
        try:
            percent = float(share)
        except ValueError:
            percent = -1.0
        if not canary_ref or not 0 < percent <= 100:
            raise click.BadParameter(f"'{canary}' is not REF:PERCENT (churn@candidate:10, "
                                     "a share above 0 and at most 100)",
                                     param_hint="--canary")
    settings = Settings(ref=ref, models=models, device=device, dtype=dtype, threads=threads,
                        token=token, canary=canary_ref, canary_percent=percent,
                        shadow=shadow,
                        max_rows=max_rows, max_mb=max_mb, refresh=refresh,
                        drift_window=drift_window,
                        log_rows=log_rows, log_every=log_every, log_file_rows=log_file_rows)

    def ready(url: str, model: Any) -> None:
        asked = "" if model.asked == model.ref else f" ({model.asked})"
        click.echo(f"serving {model.ref}{asked} on {url}: POST /invocations; "
                   f"GET /ping, /metadata", err=True)

    start(settings, host=host, port=port, workers=workers, access_log=access_log,
          log_level=log_level, ready=ready, certfile=ssl_certfile, keyfile=ssl_keyfile)


@models.command("export")
@click.argument("ref")
@click.option("--mlflow", metavar="URI", envvar="SLUICE_MLFLOW", required=True,
              help="the MLflow tracking server (default: $SLUICE_MLFLOW)")
@click.option("--registered-name", metavar="NAME", default=None,
              help="the MLflow registered model (default: the model's name)")
@click.option("--register/--no-register", default=True, show_default=True,
              help="make it a version of the registered model, or only log it")
@mlflow_experiment_option
@models_option
@runs_option
def models_export(ref: str, mlflow: str, registered_name: str | None, register: bool,
                  mlflow_experiment: str | None, models: str | None,
                  runs_dir: str | None) -> None:
    """Put a model version (churn@3, churn@production) in MLflow: an MLflow model of the
    run that trained it (`mlflow.pyfunc.load_model`, its `spark_udf`, `mlflow models
    serve`), registered as a version of the registered model of its name, with the
    aliases the version has here (models:/churn@production). The training run is
    logged first where it is not in MLflow yet; exporting again registers nothing new
    (and moves the aliases as they are here now)."""
    from pipelines.store import ModelStore
    from pipelines.tracking import Tracker, described

    tracker = Tracker(mlflow, mlflow_experiment)
    store = ModelStore(models)
    history = runs.load(runs_dir)
    try:
        done = tracker.export_model(store, ref, history, register, registered_name)
    except SluiceError:
        raise
    except Exception as exc:  # the server's, the network's
        raise SluiceError(f"exporting {ref} to MLflow at {mlflow} failed: {described(exc)}",
                          hint="check the URI and that the server answers, then export "
                               "again") from None
    line = (f"exported {done['model']} to MLflow at {mlflow}: run {done['run_id']}, "
            f"{done['artifact']}")
    if register:
        how = "already registered as" if done["existed"] else "registered as"
        line += f"; {how} '{done['registered']}' version {done['version']}"
        if done["aliases"]:
            line += " (aliases " + ", ".join(f"@{a}" for a in done["aliases"]) + ")"
    click.echo(line)


@models.command("delete")
@click.argument("ref")
@models_option
def models_delete(ref: str, models: str | None) -> None:
    """Delete one version (REF: churn@3, a number: never an alias or latest). Its number
    is never given to another model; a version an alias names is refused."""
    from pipelines.store import ModelStore, parse_ref

    name, version = parse_ref(ref)
    if version is None or not version.isdigit():
        raise SluiceError(f"'{ref}' names no version number",
                          hint=f"delete takes {name}@N; `sluice models show {ref}` says "
                               "which version it is")
    ModelStore(models).delete(name, int(version), "sluice models delete")
    click.echo(f"deleted {name}@{version}")


@models.command("prune")
@click.argument("name")
@click.option("--keep", type=click.IntRange(min=1), required=True,
              help="how many of the newest versions to keep")
@click.option("--dry-run", is_flag=True, help="say what would be deleted, delete nothing")
@models_option
def models_prune(name: str, keep: int, dry_run: bool, models: str | None) -> None:
    """Delete the versions of NAME older than its newest --keep, except those an alias
    names (a scheduled retraining saves a version a run)."""
    from pipelines.store import ModelStore

    doomed = ModelStore(models).prune(name, keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    shown = ", ".join(f"{name}@{v}" for v in doomed) or "nothing"
    click.echo(f"{verb} {shown}")


@main.group("runs")
def runs_group() -> None:
    """The run history: every run's record (data/runs, --runs DIR or $SLUICE_RUNS)."""


def _history(runs_dir: str | None, pipeline: str | None = None,
             prefix: str = "") -> runs.History:
    """The run records, each damaged file said in one line on stderr."""
    history = runs.load(runs_dir, pipeline, prefix)
    for line in history.skipped:
        click.echo(f"warning: {line}", err=True)
    if pipeline is not None and history.pipelines and pipeline not in history.pipelines:
        # a name no run ever had (a typo, as a script's exit status must say), not one
        # whose runs were selected away or pruned
        raise SluiceError(runs.nothing_found(history, pipeline))
    return history


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    try:
        return None if value is None else runs.parse_since(value)
    except SluiceError as exc:
        raise click.BadParameter(str(exc)) from None


SHOWN_TEXT = 100  # characters of a value in a runs table (an error's first line); --json,
# `runs show` have it all
STATUS_STYLES = {"succeeded": "green", "failed": "red", "interrupted": "yellow",
                 "running": "cyan", "lost": "magenta"}
SHOWN_LAST = 20  # characters a terminal too narrow for a table still shows of its last column
TRAILING_BLANKS = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")  # before any closing colour codes


def _table(headers: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()) -> None:
    """Aligned columns (rich): each row on one line, in colour on a terminal, where the
    last column is cut to fit (in a pipe it is whole)."""
    import io
    import shutil

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cells = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]
    terminal = sys.stdout.isatty()
    if terminal and cells:
        before = sum(max(len(h), *(len(row[i]) for row in cells)) + 2
                     for i, h in enumerate(headers[:-1]))
        room = max(SHOWN_LAST, shutil.get_terminal_size().columns - before)
        for row in cells:
            row[-1].truncate(room, overflow="ellipsis")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in right else "left", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=100_000, force_terminal=terminal, highlight=False,
            color_system="auto" if terminal else None).print(table)
    for line in out.getvalue().splitlines():
        # the last column's padding would wrap a narrow terminal's line into a blank one
        click.echo(TRAILING_BLANKS.sub(r"\1", line))


def _status(status: str, warnings: int = 0, skipped: str | None = None,
            settled_by: dict[str, Any] | None = None) -> Any:
    """A run's status in a runs table, in its colour (and its warnings: 'succeeded, 2
    warnings'; 'succeeded, nothing to do' where it was ``skipped``; 'lost; settled by run
    Y: its outputs landed' where a later run settled it)."""
    from rich.text import Text

    return Text(runs.status_said({"status": status, "warnings": [None] * warnings,
                                  "skipped": skipped, "settled_by": settled_by}),
                style=STATUS_STYLES.get(status, ""))


def _shown(value: Any) -> str:
    """A value in a runs table: '-' for none, a long one cut (an error's first line)."""
    if value is None:
        return "-"
    text = _fmt(value) if isinstance(value, float) else str(value)
    return text if len(text) <= SHOWN_TEXT else text[:SHOWN_TEXT - 1] + "…"


def _selected_by(status: str | None, since: Any) -> str:
    """How the runs were chosen, in words (for the line that says none were)."""
    return " and ".join(filter(None, [
        status and f"that {status}",
        since and f"started since {since.astimezone(UTC):%Y-%m-%d %H:%M}Z"]))


def _selection_options(command: Any) -> Any:
    """--status, --since and --last: which runs a command takes (``runs.select``)."""
    options = [
        click.option("--status", type=click.Choice(runs.STATUSES, case_sensitive=False),
                     default=None, help="only the runs of that status (running: not ended "
                                        "yet; lost: killed outright, as its record says)"),
        click.option("--since", metavar="DATE", default=None, callback=_since,
                     help="only the runs started at or after it (2026-11-01, "
                          "2026-11-01T06:00; UTC)"),
        click.option("--last", type=click.IntRange(min=1), default=None, metavar="N",
                     help="only the newest N runs (of those selected)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@runs_group.command("list")
@click.argument("pipeline", required=False)
@_selection_options
@click.option("--json", "as_json", is_flag=True,
              help="a JSON line of each run's summary, for scripts")
@runs_option
def runs_list(pipeline: str | None, status: str | None, since: Any, last: int | None,
              as_json: bool, runs_dir: str | None) -> None:
    """The runs of PIPELINE (else of every pipeline), newest first: status, start,
    duration, engine, rows written, models saved, and why a failed run failed."""
    history = _history(runs_dir, pipeline)
    chosen = runs.select(history.records, status=status, since=since, last=last)
    if not chosen:
        click.echo(runs.nothing_found(history, pipeline, _selected_by(status, since)),
                   err=as_json)
        return
    summaries = [runs.summary(r) for r in chosen]
    if as_json:
        for entry in summaries:
            click.echo(runs.dumps(entry))
        return
    rows = []
    for entry in summaries:
        rows.append([entry["run_id"], entry["pipeline"],
                     _status(entry["status"], entry["warnings"], entry["skipped"],
                             entry["settled_by"]),
                     entry["started_at"].replace("T", " "),
                     runs.format_duration(entry["seconds"]), entry["engine"],
                     "landed" if entry["rows_written"] is None
                     and (entry["settled_by"] or {}).get("outcome") == "settled"
                     else _shown(entry["rows_written"] and f"{entry['rows_written']:,}"),
                     ", ".join(entry["models"]) or "-", _shown(entry["error"] or "")])
    _table(["RUN", "PIPELINE", "STATUS", "STARTED", "DURATION", "ENGINE", "ROWS WRITTEN",
            "MODELS", "ERROR"], rows, right=(4, 6))


@runs_group.command("prune")
@click.argument("pipeline", required=False)
@click.option("--keep", type=click.IntRange(min=0), default=None, metavar="N",
              help="keep the newest N runs of each pipeline (of --status, if given)")
@click.option("--before", metavar="DATE", default=None, callback=_since,
              help="delete only runs started before it (2026-09-01, 2026-09-01T06:00; UTC)")
@click.option("--status", type=click.Choice(runs.STATUSES, case_sensitive=False), default=None,
              help="only runs that ended so (failed: clear out failed attempts; a running "
                   "run is never deleted)")
@click.option("--dry-run", is_flag=True, help="say what would be deleted, delete nothing")
@runs_option
def runs_prune(pipeline: str | None, keep: int | None, before: Any, status: str | None,
               dry_run: bool, runs_dir: str | None) -> None:
    """Delete the run records of PIPELINE (else of every pipeline) past the newest --keep
    and started before --before (a scheduled job writes one a run); a run that saved a
    model version still in the registry is kept (the model's provenance), and a running
    run is neither deleted nor counted (a lost one is deleted as a failed one)."""
    if keep is None and before is None:
        raise click.UsageError("say which runs to delete: --keep N (the newest N of each "
                               "pipeline stay), --before DATE, or both")
    history = _history(runs_dir, pipeline)
    doomed, spared = runs.prunable(history.records, keep=keep, before=before, status=status)
    if not dry_run:
        for record in doomed:
            runs.delete(record)
    verb = "would delete" if dry_run else "deleted"
    shown = ", ".join(f"{r['run_id']} ({r['pipeline']})" for r in doomed)
    click.echo(f"{verb} {len(doomed)} run record(s)" + (f": {shown}" if shown else ""))
    if spared:
        kept = ", ".join(f"{r['run_id']} ({', '.join(runs.summary(r)['models'])})"
                         for r in spared)
        click.echo(f"kept {len(spared)} run(s) that saved a model version still in the "
                   f"registry: {kept} (`sluice models prune` first)")


@runs_group.command("export")
@click.argument("pipeline", required=False)
@click.option("--mlflow", metavar="URI", envvar="SLUICE_MLFLOW", required=True,
              help="the MLflow tracking server to log them to (default: $SLUICE_MLFLOW)")
@mlflow_experiment_option
@_selection_options
@runs_option
def runs_export(pipeline: str | None, mlflow: str, mlflow_experiment: str | None,
                status: str | None, since: Any, last: int | None,
                runs_dir: str | None) -> None:
    """Log the runs of PIPELINE (else of every pipeline) to MLflow, oldest first, as
    `sluice run --mlflow` logs a run: params, metrics, tags and the run record. A run
    already there (its `sluice.run_id` tag) is left as it is, so exporting again adds
    only the new runs."""
    from pipelines.tracking import Tracker, described

    history = _history(runs_dir, pipeline)
    chosen = runs.select(history.records, status=status, since=since, last=last)
    if not chosen:
        click.echo(runs.nothing_found(history, pipeline, _selected_by(status, since)))
        return
    # a running run is logged once it has ended: logged now, it would stay as it is now
    running = [r["run_id"] for r in chosen if r["status"] == "running"]
    chosen = [r for r in chosen if r["status"] != "running"]
    tracker = Tracker(mlflow, mlflow_experiment)
    logged, there = [], []
    for record in reversed(chosen):  # oldest first: MLflow lists the newest on top
        try:
            tracker.connect(record["pipeline"])
            if tracker.find(record) is not None:
                there.append(record["run_id"])
                continue
            tracker.log(record)
        except Exception as exc:  # the server lost on the way: what is logged stays
            if isinstance(exc, SluiceError) and not (logged or there):
                raise  # the first connect: the server's own error and hint
            raise SluiceError(
                f"logging run {record['run_id']} to MLflow at {mlflow} failed: "
                f"{described(exc)}",
                hint=f"{len(logged)} run(s) were logged before it"
                     + (f", {len(there)} were there already" if there else "")
                     + f", {len(chosen) - len(logged) - len(there)} not; export again once "
                     "the server answers to log the rest, each run once") from None
        logged.append(record["run_id"])
    click.echo(f"logged {len(logged)} run(s) to MLflow at {mlflow}"
               + (f"; {len(there)} already there" if there else "")
               + (f"; {len(running)} still running, not logged (export again once "
                  f"{'it has' if len(running) == 1 else 'they have'} ended): "
                  f"{', '.join(running)}" if running else ""))


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="print the run record as it is")
@runs_option
def runs_show(run_id: str, as_json: bool, runs_dir: str | None) -> None:
    """One run (RUN_ID, or enough of its first characters to name one run): the summary
    `sluice run` ends with, its params, its error, its record file."""
    record = runs.resolve(_history(runs_dir, prefix=run_id.strip()), run_id)
    if as_json:
        click.echo(runs.dumps({k: v for k, v in record.items() if k != "record_path"},
                              indent=1))
        return
    _print_record(record, details=True)


@runs_group.command("compare")
@click.argument("run_ids", metavar="RUN_A RUN_B [RUN...]", nargs=-1, required=True)
@runs_option
def runs_compare(run_ids: tuple[str, ...], runs_dir: str | None) -> None:
    """Runs side by side (ids or their first characters): status and time, the params
    that differ, every scalar metric with its change from the first run to the last,
    each step's rows and seconds, outputs and models. '*' marks what changed."""
    if len(run_ids) < 2:
        raise click.UsageError("compare takes two runs or more")
    table = runs.compare([runs.resolve(_history(runs_dir, prefix=r.strip()), r)
                          for r in run_ids])
    ids = table["run_ids"]
    if table["shared_only"]:
        click.echo(f"{len(ids)} runs of different pipelines ({', '.join(table['pipelines'])}):"
                   " only the params, metrics, steps, outputs and models they all have are "
                   "compared; * marks what changed")
    else:
        click.echo(f"{len(ids)} runs of {table['pipelines'][0]}; * marks what changed")

    def mark(row: dict[str, Any]) -> str:
        return "*" if row["changed"] else " "  # a blank keeps every section's indent

    def ratio(value: float | None) -> str:
        return "" if value is None else f"{value:.3g}x"

    def section(title: str, rows: list[list[Any]], right: tuple[int, ...] = (),
                empty: str | None = None) -> None:
        """A table of ``rows``; without rows, a line of the title and ``empty`` (default:
        none, or none in common)."""
        click.echo("")
        if rows:
            _table(["", title, *ids, "CHANGE"], rows, right)
        else:
            click.echo(f"{title}: " + (empty or "none" + (" in common" if table["shared_only"]
                                                          else "")))

    section("RUN", [[mark(r), r["name"],
                     *(runs.format_duration(v) if r["name"] in ("seconds", "work")
                       and v is not None else _shown(v) for v in r["values"]),
                     ratio(r.get("ratio"))] for r in table["runs"]])
    changed = [r for r in table["params"] if r["changed"]]
    same = len(table["params"]) - len(changed)
    common = " they all have" if table["shared_only"] else ""
    section(f"PARAMS ({same} the same)" if same and changed else "PARAMS",
            [["*", r["name"], *map(_shown, r["values"]), ""] for r in changed],
            empty=None if not same else f"the one{common} is the same" if same == 1 else
            f"all {same}{common} are the same")
    section("METRICS", [[mark(r), r["name"], *map(_shown, r["values"]),
                         _difference(r["difference"], r["ratio"]) if r["changed"] else ""]
                        for r in table["metrics"]],
            right=tuple(range(2, 2 + len(ids))))
    section("STEP ROWS, WORK, WALL",
            [[mark(r), f"{r['name']} ({r['op']})",
              *(f"{'-' if n is None else f'{n:,}'}  "
                f"{'-' if w is None else f'{w:.3f}s'} {_share(share) or '-':>6}  "
                f"{'-' if s is None else f'{s:.3f}s'}"
                for n, w, share, s in zip(r["rows"], r["work"], r["work_share"],
                                          r["seconds"])),
              ratio(r.get("work_ratio"))]
             for r in table["steps"]], right=tuple(range(2, 2 + len(ids))))
    section("OUTPUTS", [[mark(r), r["name"], *map(_shown, r["values"]), ""]
                        for r in table["outputs"]])
    section("MODELS SAVED", [[mark(r), r["name"], *map(_shown, r["values"]), ""]
                             for r in table["models"]])


@runs_group.command("metric")
@click.argument("pipeline")
@click.argument("name", metavar="STEP.METRIC")
@click.option("--last", type=click.IntRange(min=1), default=None, metavar="N",
              help="only the newest N runs")
@runs_option
def runs_metric(pipeline: str, name: str, last: int | None, runs_dir: str | None) -> None:
    """A metric of PIPELINE's runs over time, oldest first (model.validation.roc_auc:
    did it drift down across retrains?), with a sparkline."""
    history = _history(runs_dir, pipeline)
    chosen = runs.select(history.records, last=last)
    if not chosen:
        click.echo(runs.nothing_found(history, pipeline))
        return
    points = runs.metric_history(chosen, name)
    _table(["RUN", "STARTED", "STATUS", name],
           [[p["run_id"], p["started_at"].replace("T", " "), _status(p["status"]),
             _shown(p["value"])] for p in points], right=(3,))
    values = [p["value"] for p in points]
    missing = len(chosen) - len(points)
    line = f"{len(points)} run{'s' * (len(points) != 1)}"
    if missing:
        line += f" ({missing} more without it)"
    numbers = [v for v in values if runs.is_number(v)]
    if numbers:
        line += (f"  {runs.sparkline(values)}  min {_fmt(min(numbers))}, max "
                 f"{_fmt(max(numbers))}, last - first {_difference(*runs.change(numbers))}")
    click.echo(line)


def _difference(difference: float | None, ratio: float | None) -> str:
    """A change from one run's value to another's: +0.0121 (1.02x)."""
    if difference is None:
        return ""
    return f"{difference:+.6g}" + ("" if ratio is None else f" ({ratio:.4g}x)")


@main.command()
@click.argument("name", required=False)
def ops(name: str | None) -> None:
    """The registered operators, their parameters and docs (from the registry itself)."""
    from pipelines.docs import describe_operator, operator_summaries

    if name:
        click.echo(describe_operator(name))
        return
    for line in operator_summaries():
        click.echo(line)


@main.command()
@click.argument("kind", type=click.Choice(["churn", "numeric", "events", "searches",
                                           "transactions", "tickets"]))
@click.option("--rows", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--files", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--row-group-rows", type=click.IntRange(min=1), default=100_000, show_default=True)
def datagen(kind: str, rows: int, out: str, files: int, seed: int, row_group_rows: int) -> None:
    """Write synthetic data with a known signal (deterministic by seed): churn
    (customers), events (what the churn sample's 5,000 customers did), numeric,
    searches (shop searches' products and grades, for ranking), transactions (card
    transactions with planted fraud, for anomaly detection), tickets (support tickets'
    text and topic, for text classification). Written again into the same
    --out, the new files replace all those an earlier datagen wrote there."""
    from pipelines.datagen import foreign_files, generate

    others = foreign_files(out)
    if others:
        raise SluiceError(f"--out '{out}' holds Parquet files datagen did not write "
                          f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}): "
                          "a read of the folder would mix their rows with the new ones",
                          hint="pass an empty or new folder as --out")
    try:
        written = generate(kind, rows, out, files=files, seed=seed,
                           row_group_rows=row_group_rows)
    except OSError as exc:
        at = f" ('{exc.filename}')" if exc.filename else ""
        raise SluiceError(f"cannot write to --out '{out}': {exc.strerror or exc}{at}",
                          hint="pass a folder this user can create and write") from None
    click.echo(f"wrote {rows:,} {kind} rows to {len(written)} file(s) in {out}")


@main.command("package")
@click.option("--out", type=click.Path(file_okay=False), default="dist", show_default=True,
              help="folder for sluice.zip and sluice_submit.py")
@click.option("--include", "include", multiple=True, type=click.Path(exists=True),
              metavar="PATH", help="a module file or package folder of your own operators")
def package_command(out: str, include: tuple[str, ...]) -> None:
    """Build the archive and entry script that run pipelines under spark-submit."""
    from pipelines.package import ArchiveError, build

    try:
        archive = build(out, include)
    except ArchiveError as exc:
        _err(str(exc))
        sys.exit(1)
    size = archive.path.stat().st_size / 2**20
    click.echo(f"wrote {archive.path} ({size:.1f} MiB, {archive.files} files) and "
               f"{archive.entry}")
    click.echo(f"  {archive.command()}")


def exit_now(code: int) -> None:
    """Leave the process with ``code`` once its work is done, as a normal exit does less
    the interpreter's finalization: non-daemon threads joined and the ``atexit`` hooks
    run (logging flushed, clusters and sessions stopped, temporary files removed), the
    standard streams flushed, then ``os._exit``. Finalization tears native libraries down
    while their threads may still run (an abandoned Arrow scan, a pool's worker), and
    ``std::terminate`` then turns a run that succeeded into a SIGABRT, exit -6: seen from
    ``sluice run``, a scheduler's job marked failed after its output was published."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what a normal exit does first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe (sluice ... | head): nothing more can be said
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def exit_code(exc: SystemExit) -> int:
    """A SystemExit's status as the process's: None is 0, a message (printed) is 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def entry(args: list[str] | None = None) -> None:
    """The ``sluice`` command as a process (the console script, ``python -m
    pipelines.cli``, a spark-submit driver): ``main``, then ``exit_now`` with its status.
    A bug's traceback leaves through the normal exit, as it would have."""
    try:
        main(args=args, prog_name="sluice")
    except SystemExit as exc:
        exit_now(exit_code(exc))
    exit_now(0)  # main in standalone mode always raises SystemExit; for the type checker


if __name__ == "__main__":
    entry()
