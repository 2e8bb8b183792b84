"""Pipeline files: safe YAML with line numbers, ``${param}`` substitution, step specs.

Every problem is collected, not raised, so ``sluice validate`` reports them all in
one pass; each names the file, the line and the step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from operators.arrays import DTYPES
from operators.base import suggest
from pipelines.device import DEVICES

TOP_LEVEL_KEYS = ("pipeline", "description", "params", "device", "dtype", "steps")
STEP_KEYS = ("id", "op", "input", "device", "dtype", "tune", "tune_metric", "tune_folds",
             "tune_samples")
# where a pipeline's or a step's numeric kernels run, and in which dtype
PLACEMENT_KEYS = {"device": DEVICES, "dtype": DTYPES}
_PARAM_REF = re.compile(r"\$\{([^}]*)\}")
_UNCLOSED = re.compile(r"\$\{(?![^}]*\})")
"""A ``${`` with no ``}`` after it (``path: data/ds=${ds``)."""
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline, located."""

    file: str
    line: int
    message: str
    step: str | None = None
    op: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.step:
            where += f": step '{self.step}'" + (f" ({self.op})" if self.op else "")
        return f"{where}: {self.message}"


class Located(dict):
    """A YAML mapping that remembers its line and the line of each key (1-based), and the
    text of each value YAML 1.1 reads as a date or a time (``ds: 2026-11-28``)."""

    line: int = 0
    key_lines: dict[str, int]
    written: dict[str, str]


class LocatedList(list):
    line: int = 0
    item_lines: list[int]


@dataclass
class StepSpec:
    id: str
    op: str
    input: str | None
    params: dict[str, Any]
    line: int
    param_lines: dict[str, int]
    index: int
    explicit_id: bool = False
    device: str | None = None
    dtype: str | None = None
    # a model step's values to try (pipelines/tuning.py) and the metric that compares them
    tune: Any = None
    tune_metric: Any = None
    tune_folds: Any = None
    tune_samples: Any = None
    # parameter -> the pipeline params its value was made with (``${ds}``)
    params_used: dict[str, list[str]] = field(default_factory=dict)
    # a value names a ${param} the pipeline lacks: left as written, not to be checked
    unresolved: bool = False

    def line_of(self, param: str | None, text: str = "") -> int:
        """The line of parameter ``param`` (the step's without one); where its value is
        a mapping of named entries (an aggregate's or a window's columns) and ``text``
        is about one of them ("window column 'spend': ..."), that entry's line. A key of
        a mapping is named by its path (``tune.max_depth``, ``tune.words.max_features``)."""
        if not param:
            return self.line
        head, dot, key = param.partition(".")
        if dot and param not in self.param_lines:
            mapping = self.tune if head == "tune" else self.params.get(head)
            return getattr(mapping, "key_lines", {}).get(key) or self.line_of(head)
        value = self.params.get(param)
        lines = getattr(value, "key_lines", None)
        if text and lines:
            # "window column 'spend'", "aggregate column 'spend'", "columns: 'spend'":
            # not a bare "column 'spend' not in the input" (an input column's name)
            found = [(m.start(), k) for k in lines for m in [re.search(
                r"(?:\b[a-z_]+ column|\bcolumns:) '" + re.escape(k) + "'", text)] if m]
            if found:
                return lines[min(found)[1]]
        return self.param_lines.get(param, self.line)


@dataclass
class PipelineSpec:
    file: str
    name: str
    params: dict[str, Any]
    steps: list[StepSpec]
    description: str | None = None
    device: str | None = None
    dtype: str | None = None
    raw_text: str = ""
    problems: list[Problem] = field(default_factory=list)


def _to_python(loader: yaml.SafeLoader, node: yaml.Node, problems: list[Problem],
               file: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = Located()
        out.line = line
        out.key_lines = {}
        out.written = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, bool) and isinstance(key_node, yaml.ScalarNode):
                # a name as written: YAML 1.1 reads a key `on` (join's), `yes` or `no`
                # as a boolean
                key = key_node.value
            elif not isinstance(key, str):
                key = str(key)
            key_line = key_node.start_mark.line + 1
            if key in out:
                problems.append(Problem(file, key_line,
                                        f"key '{key}' appears twice (first on line "
                                        f"{out.key_lines[key]})"))
            out[key] = _to_python(loader, value_node, problems, file)
            out.key_lines[key] = key_line
            if value_node.tag == _TIMESTAMP:
                out.written[key] = value_node.value
        return out
    if isinstance(node, yaml.SequenceNode):
        items = LocatedList()
        items.line = line
        items.item_lines = []
        for child in node.value:
            items.append(_to_python(loader, child, problems, file))
            items.item_lines.append(child.start_mark.line + 1)
        return items
    return loader.construct_object(node, deep=True)


_YAML_TOKENS = {"<block end>": "the end of the block", "'<scalar>'": "a value",
                "'<block sequence start>'": "a list item", "'<block mapping start>'": "a key",
                "'<block mapping end>'": "the end of the block",
                "'?'": "a key"}  # a key token (a step's key indented as the list's `-`)


def _yaml_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    """The line and the words of a YAML syntax error: PyYAML's, with its parser's tokens
    said in words and where the construct it was in starts (the unclosed quote or [, the
    block whose indentation is off)."""
    what = exc.problem or str(exc)
    for token, words in _YAML_TOKENS.items():
        what = what.replace(token, words)
    mark, start = exc.problem_mark, exc.context_mark
    line = mark.line + 1 if mark else start.line + 1 if start else 0
    context = exc.context or ""
    if r"'\t'" in what:
        return line, f"{what} (indent with spaces, not tabs)"
    if start is None or mark is None:
        return line, what
    at = f"line {start.line + 1}, column {start.column + 1}"
    if "quoted scalar" in context:
        return start.line + 1, f"the quoted value that starts on {at} is not closed"
    if "flow sequence" in context or "flow mapping" in context:
        return line, f"{what} (in the {'[' if 'sequence' in context else '{'} on {at})"
    if "block" not in context:
        return line, what
    lines = text.splitlines()
    source = lines[mark.line] if mark.line < len(lines) else ""
    key, _, value = source.partition(": ")
    value = _without_comment(value).strip()
    if value[:1] in ("'", '"') and what.endswith("a value"):
        # the whole value in the other quotes, escaped as YAML reads them back
        quoted = ("'" + value.replace("'", "''") + "'" if value[0] == '"' else
                  '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        return line, (f"text after the quoted part of a value: quote all of it, in "
                      f"{key.strip().removeprefix('- ')}: {quoted}")
    return line, f"{what} (check the indentation of the block that starts on line " \
                 f"{start.line + 1})"


def _without_comment(value: str) -> str:
    """A YAML line's value without its trailing ``# comment`` (a ``#`` after a space,
    outside quotes), which a suggested quoting must not take in."""
    quote = None
    for i, char in enumerate(value):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in ("'", '"'):
            quote = char
        elif char == "#" and (i == 0 or value[i - 1].isspace()):
            return value[:i]
    return value


def load_yaml(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Parse YAML safely (no tags that build objects) keeping line numbers."""
    problems: list[Problem] = []
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [Problem(file, 1, "the file is empty")]
        return _to_python(loader, node, problems, file), problems
    except yaml.MarkedYAMLError as exc:
        line, what = _yaml_problem(exc, text)
        return None, [Problem(file, line, f"not valid YAML: {what}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, f"not valid YAML: {exc}")]
    finally:
        loader.dispose()


def coerce_override(value: str, default: Any) -> Any:
    """A ``--param k=v`` string as the type of the param's default (int, float, bool; a
    list or a mapping written in YAML's flow style: ``[a, b]``, ``{a: 1}``). An empty
    value where the default is not empty is refused: it is most often a shell variable
    that was not set (``--param ds=$DS``), which would run the pipeline on nothing."""
    if not value.strip() and default not in (None, "", [], {}):
        raise ValueError(f"the value is empty, and the param's default is {default!r}: "
                         "an unset shell variable (--param NAME=$VAR) reads so; pass a "
                         "value, or make the default empty in the file to run with none")
    if isinstance(default, list | dict):
        kind = "list" if isinstance(default, list) else "mapping"
        example = "[a, b]" if kind == "list" else "{a: 1, b: 2}"
        parsed, problems = load_yaml(value, "--param")  # keys as in a file: on, 2024
        if problems:
            first = problems[0].message.splitlines()[0]
            raise ValueError(f"expected a {kind} such as {example}, got '{value}' "
                             f"({first})")
        if not isinstance(parsed, list if kind == "list" else dict):
            raise ValueError(f"expected a {kind} such as {example}, got '{value}'")
        return parsed
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got '{value}'")
    if isinstance(default, int | float):
        try:
            return type(default)(value)
        except ValueError:
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise ValueError(f"expected {kind}, as the default {default} is, got '{value}'"
                             ) from None
    return value


def substitute(value: Any, params: dict[str, Any], on_unknown: Any,
               used: set[str] | None = None) -> Any:
    """Replace ``${name}`` in strings; a string that is only ``${name}`` takes its type;
    ``used`` collects the names replaced."""
    if isinstance(value, str):
        whole = _PARAM_REF.fullmatch(value.strip())
        if whole and whole.group(1).strip() in params:
            if used is not None:
                used.add(whole.group(1).strip())
            return params[whole.group(1).strip()]

        def one(m: re.Match[str]) -> str:
            name = m.group(1).strip()
            if name not in params:
                on_unknown(name)
                return m.group(0)
            if used is not None:
                used.add(name)
            return str(params[name])

        return _PARAM_REF.sub(one, value)
    if isinstance(value, list):
        out = LocatedList(substitute(v, params, on_unknown, used) for v in value)
        out.line = getattr(value, "line", 0)
        out.item_lines = getattr(value, "item_lines", [])
        return out
    if isinstance(value, dict):
        out = Located({k: substitute(v, params, on_unknown, used) for k, v in value.items()})
        out.line = getattr(value, "line", 0)
        out.key_lines = getattr(value, "key_lines", {})
        return out
    return value


def unclosed(value: Any) -> str | None:
    """The first string in ``value`` (a string, or one in its lists and mappings) with a
    ``${`` that no ``}`` closes: a param reference cut short, else read as text."""
    if isinstance(value, str):
        return value if _UNCLOSED.search(value) else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = unclosed(item)
        if found is not None:
            return found
    return None


def _declare(name: str, known: str, text: str | None = None) -> str:
    """The hint for a param the pipeline does not declare: a ${name} in it, or a --param
    (``text``: the pipeline's, which may use no ${name} at all)."""
    said = f"{known}; " if known else ""
    if text is not None and f"${{{name}}}" not in text:
        return f"{said}nothing in the pipeline uses ${{{name}}}"
    return (f"{said}declare it with a default: `params: {{{name}: ...}}`, which "
            f"`--param {name}=VALUE` overrides")


def parse(text: str, file: str, overrides: dict[str, str] | None = None) -> PipelineSpec:
    """Parse a pipeline file's text into a spec; problems are in ``spec.problems``."""
    doc, problems = load_yaml(text, file)
    spec = PipelineSpec(file=file, name=Path(file).stem, params={}, steps=[], raw_text=text,
                        problems=problems)
    if doc is None:
        return spec
    if not isinstance(doc, dict):
        problems.append(Problem(file, 1, "a pipeline file is a mapping with `pipeline:` and "
                                         "`steps:`"))
        return spec
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem(file, doc.key_lines[key],
                                    f"unknown key '{key}'{suggest(key, TOP_LEVEL_KEYS)}",))
    name = doc.get("pipeline")
    if name is not None and not isinstance(name, str | list | dict):
        # YAML reads `pipeline: 2026` (or 2026_11, yes) as a number or a boolean
        problems.append(Problem(file, doc.key_lines["pipeline"],
                                f"`pipeline:` is a name, and YAML reads {name!r} as "
                                f"{type(name).__name__}: quote it (pipeline: \"...\") or "
                                "start it with a letter (e.g. churn_train)"))
    elif not isinstance(name, str) or not name:
        problems.append(Problem(file, doc.key_lines.get("pipeline", 1),
                                "`pipeline:` (the pipeline's name) is required"))
    elif name in (".", "..") or re.search(r"[/\\\x00-\x1f\x7f]", name):
        # the name is the folder of its run records (runs/<pipeline>/): '../x' wrote them
        # outside the runs folder, a newline into a folder no listing showed
        problems.append(Problem(file, doc.key_lines["pipeline"],
                                f"`pipeline:` {name!r} cannot be a folder's name (its run "
                                "records' folder: runs/<pipeline>/): no '/', '\\', line "
                                "breaks or other control characters, not '.' or '..' "
                                "(e.g. churn_train)"))
    else:
        spec.name = name
    spec.description = doc.get("description")
    spec.device, spec.dtype = _placement(doc, file, problems)

    params = doc.get("params") or {}
    if not isinstance(params, dict):
        problems.append(Problem(file, doc.key_lines.get("params", 1),
                                "`params:` must be a mapping of name: default"))
        params = {}
    # a date as written, as `--param ds=2026-11-29` gives it: `ds: 2026-11-28` unquoted is
    # a date to YAML 1.1, which ${ds} would print alike but no run record or model's JSON
    # could hold
    params = {str(k): getattr(params, "written", {}).get(k, v) for k, v in params.items()}
    for key, value in (overrides or {}).items():
        if key not in params:
            close = suggest(key, params)
            known = f"params: {', '.join(params)}" if params else ""
            problems.append(Problem(file, doc.key_lines.get("params", 0),
                                    f"--param {key}: the pipeline has no param '{key}'{close}"
                                    f" ({known if close else _declare(key, known, text)})"))
            continue
        try:
            params[key] = coerce_override(value, params[key])
        except ValueError as exc:
            problems.append(Problem(file, doc.key_lines.get("params", 0),
                                    f"--param {key}: {exc}"))
    spec.params = params

    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append(Problem(file, doc.key_lines.get("steps", 1),
                                "`steps:` must be a non-empty list of steps"))
        return spec
    spec.steps = _parse_steps(steps, params, file, problems)
    return spec


def _parse_steps(steps: LocatedList, params: dict[str, Any], file: str,
                 problems: list[Problem]) -> list[StepSpec]:
    out: list[StepSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(steps):
        line = steps.item_lines[index]
        if not isinstance(raw, dict):
            problems.append(Problem(file, line, f"step {index + 1} must be a mapping with `op:`"))
            continue
        op = raw.get("op")
        explicit = "id" in raw
        step_id = raw.get("id")
        if not isinstance(op, str) or not op:
            label = step_id if isinstance(step_id, str) else f"#{index + 1}"
            problems.append(Problem(file, line, "`op:` is required", step=label))
            continue
        if explicit:
            if not isinstance(step_id, str) or not _ID.fullmatch(step_id):
                problems.append(Problem(file, raw.key_lines["id"],
                                        f"step id {step_id!r} must be a name (letters, digits, "
                                        "_ . -)", op=op))
                step_id = f"{op.rsplit('.', 1)[-1]}_{index + 1}"
        else:
            step_id = op.rsplit(".", 1)[-1]
            n = 2
            while step_id in seen:
                step_id = f"{op.rsplit('.', 1)[-1]}_{n}"
                n += 1
        if step_id in seen and explicit:
            problems.append(Problem(file, raw.key_lines["id"],
                                    f"step id '{step_id}' is used twice (also on line "
                                    f"{seen[step_id]})", step=step_id, op=op))
        seen[step_id] = line

        def unknown(name: str, step_id: str = step_id, op: str = op, line: int = line) -> None:
            known = f"params: {', '.join(params) or 'none'}"
            close = suggest(name, params)
            problems.append(Problem(file, line, f"unknown param '${{{name}}}'{close} "
                                    f"({known if close else _declare(name, known)})",
                                    step=step_id, op=op))

        body = {k: v for k, v in raw.items() if k not in STEP_KEYS}
        key_lines = dict(raw.key_lines)
        used: dict[str, set[str]] = {}
        reported = len(problems)
        for key, value in body.items():
            cut = unclosed(value)
            if cut is not None:
                problems.append(Problem(file, key_lines[key],
                                        f"{key}: '${{' without its '}}' in {cut!r} (a param "
                                        "is written ${name})", step=step_id, op=op))
            body[key] = substitute(value, params,
                                   lambda name, line=key_lines[key]: unknown(name, line=line),
                                   used.setdefault(key, set()))
        unresolved = len(problems) > reported
        input_id = raw.get("input")
        if input_id is not None and not isinstance(input_id, str):
            problems.append(Problem(file, key_lines["input"], "`input:` must be a step id",
                                    step=step_id, op=op))
            input_id = None
        device, dtype = _placement(raw, file, problems, step=step_id, op=op)
        tune = raw.get("tune")
        if tune is not None:
            tune = substitute(tune, params,
                              lambda name, line=key_lines["tune"]: unknown(name, line=line))
        out.append(StepSpec(id=step_id, op=op, input=input_id, params=body, line=line,
                            param_lines=key_lines, index=index, explicit_id=explicit,
                            device=device, dtype=dtype, tune=tune,
                            params_used={k: sorted(v) for k, v in used.items() if v},
                            unresolved=unresolved,
                            tune_metric=raw.get("tune_metric"),
                            tune_folds=raw.get("tune_folds"),
                            tune_samples=raw.get("tune_samples")))
    return out


def _placement(doc: Any, file: str, problems: list[Problem], **where: Any
               ) -> tuple[str | None, str | None]:
    """The ``device:`` and ``dtype:`` of the pipeline or of a step; bad values are problems."""
    out: list[str | None] = []
    for key, allowed in PLACEMENT_KEYS.items():
        value = doc.get(key)
        if value is not None and value not in allowed:
            problems.append(Problem(file, doc.key_lines[key],
                                    f"`{key}: {value}` must be {', '.join(allowed[:-1])} or "
                                    f"{allowed[-1]}", **where))
            value = None
        out.append(value)
    return out[0], out[1]


def load(path: str | Path, overrides: dict[str, str] | None = None) -> PipelineSpec:
    """Read and parse a pipeline file; an unreadable file is a problem, not an exception."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        spec = PipelineSpec(file=file, name=Path(file).stem, params={}, steps=[])
        close = ""
        if isinstance(exc, FileNotFoundError) and Path(path).parent.is_dir():
            # the closest name, said as the path to give (in the folder given)
            beside = {p.name: str(Path(path).parent / p.name)
                      for p in Path(path).parent.iterdir() if p.suffix in (".yaml", ".yml")}
            close = suggest(Path(path).name, beside, beside)
        spec.problems.append(Problem(file, 0, f"cannot read the file: "
                                              f"{exc.strerror or exc}{close}"))
        return spec
    except UnicodeDecodeError as exc:
        spec = PipelineSpec(file=file, name=Path(file).stem, params={}, steps=[])
        parquet = exc.object[:4] == b"PAR1"
        spec.problems.append(Problem(file, 0, (
            "a Parquet file, not a pipeline file (YAML): pass the pipeline that reads it"
            if parquet else f"cannot read the file: not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start}): a pipeline file is YAML, saved as UTF-8")))
        return spec
    return parse(text, file, overrides)
