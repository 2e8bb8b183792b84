"""JSON that strict readers accept (jq, MLflow's and JavaScript's JSON.parse): what the
run records and model.json are written as.

Only the standard library: the CLI reads the run history without the operators.
"""

from __future__ import annotations

import json
import math
from typing import Any

NON_FINITE = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}
"""A number JSON cannot hold (a metric of NaN: a roc_auc of rows with no positives, an
r2 of a constant label), as a file holds it: the text Python prints it as (what `sluice
runs show` and `models show` print, and what ``float()`` reads back), never JavaScript's
bare NaN and Infinity, which strict readers refuse. Files written before have those:
Python's ``json`` reads them as the floats."""


def strict(value: Any, found: list[list[Any]] | None = None, at: tuple[Any, ...] = ()
           ) -> Any:
    """``value`` with each non-finite float as its text (``NON_FINITE``); the path of
    each (its keys and list indices from the top) appended to ``found``, if given."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(list(at))
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: strict(v, found, (*at, k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v, found, (*at, i)) for i, v in enumerate(value)]
    return value


FLOATS_KEY = "non_finite"
"""The key of a model.json that lists where its non-finite floats are (``floats_saved``)."""


def floats_saved(meta: dict[str, Any]) -> dict[str, Any]:
    """A model's metadata as strict JSON holds it (``strict``), with the paths of the
    non-finite floats it wrote as text under ``FLOATS_KEY``, so that loading gives back
    the floats (``floats_loaded``) where a field takes text too (impute's constant
    ``value`` of NaN is a float, not the text "nan")."""
    found: list[list[Any]] = []
    out = strict(meta, found)
    if found:
        out[FLOATS_KEY] = found
    return out


def floats_loaded(meta: dict[str, Any]) -> dict[str, Any]:
    """``floats_saved``'s metadata with its non-finite floats back (a path that does not
    lead to one of their texts, in a damaged file, is passed over); a file without the
    list (written before it) is as it was read."""
    paths = meta.pop(FLOATS_KEY, None)
    texts = {text: float(text) for text in NON_FINITE.values()}
    for path in paths if isinstance(paths, list) else ():
        if not isinstance(path, list) or not path:
            continue
        holder: Any = meta
        try:
            for key in path[:-1]:
                holder = holder[key]
            if holder[path[-1]] in texts:
                holder[path[-1]] = texts[holder[path[-1]]]
        except (KeyError, IndexError, TypeError):
            continue
    return meta


def dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON (``strict``)."""
    return json.dumps(strict(value), indent=indent, default=str, allow_nan=False)
