"""Engine profiles (``conf/engines/*.yaml``) and how ``--engine`` finds one.

``--engine local|dask|spark`` picks the engine, which reads its own default profile
(``conf/engines/dask.yaml``...). Any other name is a profile: ``--engine gpu`` reads
``conf/engines/gpu.yaml``, ``--engine path/to/file.yaml`` that file; the profile's
``engine:`` key says which engine it configures, and the rest are that engine's keys
plus the device keys every engine understands (``pipelines.device.DeviceProfile``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from operators.base import SluiceError, suggest
from pipelines.device import DeviceProfile
from pipelines.spec import Located, load_yaml

ENGINES = ("local", "dask", "spark")
FOLDER = Path("conf") / "engines"


class LocalProfile(DeviceProfile):
    """``conf/engines/local.yaml`` (or a profile with ``engine: local``)."""

    workers: int | None = Field(
        None, gt=0, description="partitions computed at once (null: one per core it "
                                   "may use: a container's CPU quota counts)")
    resident_fits: Literal["auto", "always", "never"] = Field(
        "auto", description="multi-pass CPU fits in `workers` processes that keep their "
                            "partitions (a pass's Python code holds the GIL: its share of "
                            "the threads' time grows with their number); auto: with 4 "
                            "workers or more and at least resident_rows rows (on 2 cores "
                            "the threads are faster); always; never: threads")
    resident_rows: int = Field(
        500_000, ge=0, description="auto resident fits: the fewest rows worth starting "
                                   "processes for")


def read(path: str | Path, what: str) -> dict[str, Any]:
    """A profile file's settings as a mapping that knows the line of each key
    (``pipelines.spec.Located``); unreadable, not YAML or not a mapping is an error at
    the file's line, as a pipeline's problems are."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SluiceError(f"{what} profile '{where}' does not exist",
                          hint="fix the path, or create the file") from None
    raw, problems = load_yaml(text, where) if text.strip() else (Located(), [])
    if problems:
        first = problems[0]
        raise SluiceError(f"{what} profile: {first.message.splitlines()[0]}",
                          where=f"{where}:{first.line}" if first.line else where)
    if not isinstance(raw, dict):
        raise SluiceError(f"{what} profile must be a mapping of settings",
                          where=f"{where}:{getattr(raw, 'line', 0) or 1}")
    return raw


def line_of(raw: dict[str, Any], keys: tuple[Any, ...]) -> int:
    """The line of the innermost of ``keys`` (a path into ``raw``) the file has, else of
    the mapping (0: not known)."""
    line = getattr(raw, "line", 0)
    value: Any = raw
    for key in keys:
        lines = getattr(value, "key_lines", None)
        if not lines or str(key) not in lines:
            break
        line, value = lines[str(key)], value[str(key)]
    return line


def validated(model: type[DeviceProfile], raw: dict[str, Any], where: str,
              what: str) -> Any:
    """``raw`` as ``model``; the first wrong key is a one-line error at its file:line."""
    try:
        return model(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key" + suggest(key, model.model_fields)
        line = line_of(raw, tuple(first["loc"]))
        raise SluiceError(f"{what} profile: '{key}': {message}",
                          where=f"{where}:{line}" if line else where,
                          hint="keys: " + ", ".join(model.model_fields)) from None


def locate(name: str) -> tuple[str, str | None]:
    """``--engine NAME``: the engine and the profile file (None: the engine's default)."""
    if name in ENGINES:
        return name, None
    named = name.endswith((".yaml", ".yml")) or "/" in name
    path = Path(name) if named else FOLDER / f"{name}.yaml"
    if not path.is_file():
        profiles = sorted(p.stem for p in FOLDER.glob("*.yaml")) if FOLDER.is_dir() else []
        close = "" if named else suggest(name, [*ENGINES, *profiles])
        # profiles are the working directory's (the repository's conf/engines/ holds
        # gpu, dask-gpu and spark-gpu): run from elsewhere, `--engine gpu` finds none
        device = "; --device gpu alone runs the steps on a GPU" if "gpu" in name else ""
        raise SluiceError(
            f"unknown engine '{name}'" + (f": {path} does not exist" if named else
                                           f": not {', '.join(ENGINES)}, and no {path} in "
                                           f"{Path.cwd()}")
            + close,
            hint="use --engine local, dask or spark, or a profile in conf/engines/ of the "
                 f"working directory (copy the sluice repository's){device}")
    raw = read(path, "engine")
    kind = raw.get("engine")
    if kind not in ENGINES:
        line = line_of(raw, ("engine",)) or 1
        raise SluiceError(f"engine profile: `engine:` must be one of "
                          f"{', '.join(ENGINES)}" + (f", not '{kind}'" if kind else ""),
                          where=f"{path}:{line}", hint="say which engine the profile "
                                                       "configures")
    return kind, str(path)


def load_local(path: str | None) -> LocalProfile:
    """The local engine's profile: ``path``, else ``conf/engines/local.yaml`` if present."""
    if path is None:
        default = FOLDER / "local.yaml"
        if not default.is_file():
            return LocalProfile()
        path = str(default)
    return validated(LocalProfile, read(path, "local"), path, "local")
