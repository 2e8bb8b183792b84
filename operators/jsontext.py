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


def strict(value: Any) -> Any:
    """``value`` with each non-finite float as its text (``NON_FINITE``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON (``strict``)."""
    return json.dumps(strict(value), indent=indent, default=str, allow_nan=False)
