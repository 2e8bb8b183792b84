"""The built-in operators' table (operators.library.MODULES): a pipeline imports the
modules of the operators it names, so the table must name every one, where it is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from operators import library
from operators.base import _FITTED, ParamError, lookup, lookup_fitted, registered


def builtins() -> dict[str, str]:
    """Every operator the built-in packages register, and the module defining it."""
    return {name: cls.__module__ for name, cls in registered().items()
            if cls.__module__.startswith(library.PACKAGES)}


def test_the_table_names_every_builtin_where_it_is_defined() -> None:
    assert builtins() == library.MODULES


def test_a_fitted_transform_is_defined_beside_its_operator() -> None:
    registered()
    for name, cls in _FITTED.items():
        assert name.endswith(".fitted"), name
        assert library.MODULES[name.removesuffix(".fitted")] == cls.__module__, name


def imported_after(code: str) -> set[str]:
    """The modules of sluice's operator packages a fresh interpreter has imported once
    ``code`` ran."""
    script = (f"import sys\n{code}\nimport json\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.startswith(\n"
              f"    {library.PACKAGES!r}))))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_lookup_imports_only_the_operator_it_names() -> None:
    got = imported_after("from operators.base import lookup, lookup_fitted\n"
                         "lookup('top')\nlookup_fitted('one_hot.fitted')")
    assert {"operators.features.top", "operators.features.one_hot"} <= got
    unused = {"operators.features.aggregate", "operators.features.window",
              "operators.models.trees", "operators.models.mlp"}
    assert not got & unused


def test_unknown_names_still_get_the_closest_builtin() -> None:
    with pytest.raises(ParamError, match="did you mean 'one_hot'"):
        lookup("one_hat")
    assert lookup_fitted("standard_scale.fitted").__module__ == "operators.features.scale"
