"""Shared fixtures: a scratch project directory, the engine as a parametrized fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory as the working directory, with its own models and runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLUICE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("SLUICE_RUNS", str(tmp_path / "runs"))
    return tmp_path




@pytest.fixture(params=["local"])
def engine_name(request: pytest.FixtureRequest) -> str:
    """Every engine the test matrix covers (dask and spark join when they exist)."""
    return request.param


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


@pytest.fixture
def churn(workdir: Path) -> Path:
    """5,000 churn rows in 3 files of several row groups under workdir/data/churn."""
    from pipelines.datagen import generate

    out = workdir / "data" / "churn"
    generate("churn", 5000, out, files=3, row_group_rows=700)
    return out
