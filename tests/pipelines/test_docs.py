"""Docs come from the registry, so they cannot drift."""

from __future__ import annotations

from conftest import ROOT

from operators.base import registered
from pipelines.docs import describe_operator, parameters, readme_with_reference


def test_readme_operator_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert readme_with_reference(text) == text, (
        "README's operator reference is stale: run `python -m pipelines.docs`")


def test_every_operator_is_documented() -> None:
    text = (ROOT / "README.md").read_text()
    for name, cls in registered().items():
        assert f"### `{name}`" in text
        assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
        assert "```yaml" in cls.__doc__, f"{name}'s docstring has no YAML example"
        for p in parameters(cls):
            assert p["description"], f"{name}.{p['name']} has no description"
        assert describe_operator(name).startswith(f"{name} (")
