"""Docs come from the registry, so they cannot drift."""

from __future__ import annotations

import inspect

from conftest import ROOT

from operators.base import registered
from operators.expressions import function_names
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


def test_every_summary_is_a_whole_line() -> None:
    """`sluice ops` and the README's headings show a docstring's first line: a summary
    wrapped onto a second line was cut mid-sentence there ("... F of a")."""
    for name, cls in registered().items():
        first = inspect.getdoc(cls).split("\n\n", 1)[0]
        assert "\n" not in first, f"{name}'s summary runs onto a second line: {first!r}"
        assert first.endswith((".", ")")), f"{name}'s summary is no sentence: {first!r}"


def test_the_expression_steps_list_every_function() -> None:
    """`sluice ops derive` said "functions such as" nowhere: which there are was found
    only by an unknown one's error, which showed the first dozen."""
    listed = function_names()
    assert listed.startswith("abs, cast, ceil, coalesce") and listed.endswith("week, year")
    for name in ("derive", "filter"):
        assert f"functions: {listed}" in describe_operator(name), name


def test_parameter_types_read_as_values_are_written() -> None:
    """`sluice ops` and the README showed Python's spelling of a type, `Optional[Literal[
    'anova', ...]]`, `Annotated[int, Gt(gt=0)]`, `operators.features.aggregate.PivotParams
    | None`: a user of the YAML file reads the values it takes."""
    types = {(name, p["name"]): p["type"]
             for name, cls in registered().items() for p in parameters(cls)}
    for (name, param), text in types.items():
        assert not any(spelled in text for spelled in (
            "Literal", "Optional", "Union", "Annotated", "typing", "NoneType", "operators.",
            "(gt=", "(ge=")), f"{name}.{param}: {text}"
    assert types["write_parquet", "mode"] == \
        "'error' | 'overwrite' | 'append' | 'overwrite_partitions'"
    assert types["select_features", "k"] == "int > 0 | None"
    assert types["target_encode", "smooth"] == "'auto' | float >= 0"
    assert types["aggregate", "pivot"] == "mapping (column, values, format) | None"
    assert "  mode: 'error' | 'overwrite' | 'append' | 'overwrite_partitions' (default " \
           "'error')" in describe_operator("write_parquet")
