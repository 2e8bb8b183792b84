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
