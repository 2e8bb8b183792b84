"""Shared fixtures: a scratch project directory, the engine as a parametrized fixture."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# the JVM options of the Spark drivers and executors the tests start (every session and
# spark-submit reads spark-defaults.conf from here; see the file)
os.environ.setdefault("SPARK_CONF_DIR", str(ROOT / "tests" / "spark-conf"))

# The property tests draw the same examples every run (a seed from each test's name):
# a run, CI's included, cannot pass or fail by the luck of its seed. To look further,
# `SLUICE_HYPOTHESIS=explore pytest ...` draws new ones (`--hypothesis-seed=N` repeats a
# failure found so).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("SLUICE_HYPOTHESIS", "repeatable"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory as the working directory, with its own models and runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLUICE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("SLUICE_RUNS", str(tmp_path / "runs"))
    return tmp_path




ENGINES = ("local", "dask", "spark")


def refused(runs: Path, stage: str) -> dict[str, Any]:
    """The one record of a run refused before it started (``stage``: validation, or
    placement: no device for it): failed, its steps as the file declares them but none
    ran, nothing written or saved."""
    import json

    records = list(runs.glob("*/*.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    assert (record["status"], record["failed_in"]) == ("failed", stage), record
    assert record["steps"] and all(set(entry) <= {"op", "kind", "params", "problems"}
                                   for entry in record["steps"].values()), record["steps"]
    assert record["outputs"] == [] and record["models"] == []
    return record


@pytest.fixture(scope="session")
def shared_engines() -> Iterator[dict[str, Any]]:
    """One started engine per name for the whole test session (a Spark session takes
    seconds to start); each is closed at the end."""
    started: dict[str, Any] = {}
    yield started
    for engine in started.values():
        engine.close()


def started(shared_engines: dict[str, Any], name: str) -> Any:
    """The session's engine ``name``, started on first use and shared by every test."""
    from pipelines.runner import make_engine

    if name not in shared_engines:
        instance = make_engine(name)
        instance.start()
        shared_engines[name] = instance
    return shared_engines[name]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, shared_engines: dict[str, Any]) -> Any:
    """Every engine of the test matrix, started once and shared (tests pass it to
    ``run(..., engine_instance=engine)``)."""
    return started(shared_engines, request.param)


@pytest.fixture
def spark(shared_engines: dict[str, Any]) -> Any:
    """The session's shared Spark engine (the same one the engine matrix uses)."""
    return started(shared_engines, "spark")


@pytest.fixture
def dask_engine(shared_engines: dict[str, Any]) -> Any:
    """The session's LocalCluster engine (the one the engine matrix uses)."""
    return started(shared_engines, "dask")


@pytest.fixture(autouse=True)
def _kit_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_KIT_TMP", str(tmp_path_factory.getbasetemp()))


PLUGINS = ROOT / "tests" / "plugins"


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Third-party operators for the tests live in tests/plugins (dotted-path ops)."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p))


def write_pipeline(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    """Write a pipeline file (dedented) and return its path."""
    import textwrap

    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def kept_budget_fit(folder: Path, engine: Any) -> dict[str, Any]:
    """A run on ``engine`` of a one-pass fit whose partitions say their process and its
    budget of what fits keep (``sluice_testops.KeptBudget``): its record."""
    from pipelines.runner import run

    return run(write_pipeline(folder, """
        pipeline: budget
        steps:
          - op: read_parquet
            path: data/churn
            partition_mb: 0.02
          - id: fit
            op: sluice_testops.KeptBudget
        """), engine_instance=engine)


def exploding_pipeline(folder: Path, at_partition_with: int) -> Path:
    """read data/churn -> a step ``explode`` that fails with a bug (ZeroDivisionError) on
    the partition holding row ``at_partition_with`` -> write ``out``."""
    return write_pipeline(folder, f"""
        pipeline: boom
        steps:
          - op: read_parquet
            path: data/churn
          - id: explode
            op: sluice_testops.Exploding
            at_partition_with: {at_partition_with}
          - op: write_parquet
            path: out
        """)


def touch_pipeline(folder: Path, name: str, files: int, seconds: float,
                   bad_file: int | None = None) -> tuple[Path, Path]:
    """``files`` Parquet files of 100 ids each under folder/parts (the rows of file
    ``bad_file`` marked bad), and a pipeline ``name`` reading them through a step
    ``touch`` (``sluice_testops.Touch``: a mark per partition started in folder/marks,
    then ``seconds`` of work) into ``out``; (pipeline path, marks folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "parts").mkdir()
    for i in range(files):
        pq.write_table(pa.table({"id": list(range(i * 100, (i + 1) * 100)),
                                 "bad": [i == bad_file] * 100}),
                       folder / "parts" / f"p{i:02d}.parquet")
    marks = folder / "marks"
    marks.mkdir()
    return write_pipeline(folder, f"""
        pipeline: {name}
        steps:
          - op: read_parquet
            path: parts
          - id: touch
            op: sluice_testops.Touch
            folder: {marks}
            seconds: {seconds}
          - op: write_parquet
            path: out
        """), marks


@pytest.fixture(scope="session")
def _churn_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn fixture's files, generated once: datagen writes the same bytes for the
    same arguments, and over two hundred tests take a copy."""
    from pipelines.datagen import generate

    out = tmp_path_factory.mktemp("churn-source") / "churn"
    generate("churn", 5000, out, files=3, row_group_rows=700)
    return out


@pytest.fixture
def churn(workdir: Path, _churn_files: Path) -> Path:
    """5,000 churn rows in 3 files of several row groups under workdir/data/churn (a
    test's own copy: it may change or remove them)."""
    import shutil

    out = workdir / "data" / "churn"
    out.mkdir(parents=True)
    for path in sorted(_churn_files.iterdir()):  # written in datagen's order, as it does
        shutil.copyfile(path, out / path.name)
    return out


SLUICE = str(Path(sys.executable).parent / "sluice")


def sluice_in_process(*args: str, cwd: Path, env: dict[str, str] | None = None,
                      check: bool = False) -> Any:
    """`sluice ARGS` in ``cwd`` (``env`` added to this environment), run in this process
    by click's CliRunner: a ``subprocess.CompletedProcess`` with the command's exit
    status, stdout and stderr, without the half second a new interpreter spends
    importing. As in a new interpreter, warnings print on its stderr under Python's
    default filters (pytest would record them away, unseen by the test); an exception
    that escapes the command is raised here (the console script would print its
    traceback and exit 1); ``check``: a non-zero status raises CalledProcessError, as
    subprocess.run's. The console script itself runs as a process in
    tests/pipelines/test_cli.py."""
    import contextlib
    import subprocess
    import warnings

    from click.testing import CliRunner

    from pipelines.cli import main

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.chdir(cwd), warnings.catch_warnings():
        warnings.resetwarnings()  # a new interpreter's filters: these four ignored
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.showwarning = show
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    done = subprocess.CompletedProcess(["sluice", *args], result.exit_code, result.stdout,
                                       result.stderr)
    if check:
        done.check_returncode()
    return done


def terminal_env() -> dict[str, str]:
    """The environment of a person at a terminal: no CI variable, a real TERM."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TERM"] = "xterm"
    return env


def sluice_on_terminal(args: list[str], cwd: Path, columns: int | None = None,
                       stdout: Path | None = None) -> tuple[int, str]:
    """Run `sluice ARGS` on a pseudo-terminal, as a person would; exit code and screen.
    ``columns``: the terminal's width (as a window of that size sets it, no COLUMNS);
    ``stdout``: sluice's standard output goes to that file (`> FILE`), not the screen."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: sluice with the pty as its terminal
        os.chdir(cwd)
        env = terminal_env()
        if columns is not None:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
            env.pop("COLUMNS", None)
        if stdout is not None:
            os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.execve(SLUICE, [SLUICE, *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal closes when sluice exits
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def split_gain(criterion: Any, left: Any, total: Any, min_leaf: float) -> float | None:
    """A candidate split's gain by the definition (one node's channel sums: ``left``, the
    node's ``total``), None where the split is not allowed (a child under ``min_leaf`` or
    without weight, or one the criterion refuses): the split searches' brute force."""
    right = total - left
    lw, rw = (criterion.weight(s[:, None])[0] for s in (left, right))
    if lw < min_leaf or rw < min_leaf or lw <= 0 or rw <= 0:
        return None
    if not (all(bool(v) for v in np.atleast_1d(criterion.allowed(left[:, None])))
            and all(bool(v) for v in np.atleast_1d(criterion.allowed(right[:, None])))):
        return None
    return float((criterion.score(left[:, None]) + criterion.score(right[:, None])
                  - criterion.score(total[:, None]))[0])


def lines_run(call: Any) -> int:
    """The lines of Python ``call()`` runs (``sys.settrace``): how a test says a kernel
    takes no Python step a row, deterministically, where timing it would assert a speed
    (bench/ measures those)."""
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return lines
