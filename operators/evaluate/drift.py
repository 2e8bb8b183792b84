"""drift: how far the rows a model scores have moved from the rows it was trained on.

A saved model keeps a profile of its training rows' input columns (``profile_*``, made
by ``save_model`` in one pass): per numeric column ten equal-frequency bins (the edges
and each bin's share), per text column the shares of its 50 most frequent values and of
the rest, and the share of missing values, all from a sample of 20,000 rows chosen by a
hash of their content (the same sample, hence the same profile, on every engine and
partitioning). ``drift`` counts the rows it sees in those bins and values, in one pass,
and reports each column's population stability index (PSI: ``sum (a - e) ln(a / e)``
over the bins, missing values a bin of their own, shares floored at 1e-4), the measure
credit-risk and model-monitoring teams use (below 0.1 stable, 0.1-0.25 moving, above
0.25 a shift); ``max_psi`` stops the run past it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import (
    DataError,
    Params,
    SchemaError,
    register,
    register_fitted,
    require_columns,
)
from operators.evaluate.evaluate import Measured, Measuring
from operators.hashing import hash_rows
from operators.models.common import is_numeric

PROFILE_ROWS = 20_000
"""Rows of the sample a training profile is made from."""
LEAD_COLUMNS = 4
"""The sample's order is a hash of this many columns first (ties: of all of them)."""
BINS = 10
"""Equal-frequency bins of a numeric column's profile."""
TOP_VALUES = 50
"""A text column's profile keeps the shares of this many most frequent values (of those
seen more than once in the sample)."""
FREE_TEXT = 0.5
"""A text column whose repeated values are less than this share of its sample's values
is free text (a ticket, a review): profiled by its lengths, never its values (no text of
a training row is kept in the model, and a share of values never seen again says
nothing)."""
FLOOR = 1e-4
"""Shares below this count as this in the PSI (an empty bin would make it infinite)."""


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if is_numeric(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return None  # dates, lists...: not profiled


def profiled_columns(schema: pa.Schema, columns: list[str]) -> list[str]:
    return [c for c in columns if _kind(schema.field(c).type) is not None]


def profile_partial(part: pa.Table, columns: list[str]) -> dict[str, Any]:
    """A partition's row count and its ``PROFILE_ROWS`` rows first in the order of a
    hash of their first ``LEAD_COLUMNS`` columns, then of all of them (only the rows
    that can be first are hashed whole: a fraction of the cost of hashing every row's
    every column, and the same rows)."""
    rows = part.num_rows
    lead = hash_rows(part, columns[:LEAD_COLUMNS], 0)
    if rows > PROFILE_ROWS:
        cut = np.partition(lead, PROFILE_ROWS - 1)[PROFILE_ROWS - 1]
        candidates = np.flatnonzero(lead <= cut)
        part = part.take(pa.array(candidates))
        lead = lead[candidates]
    part = part.select(columns)
    tie = hash_rows(part, columns, 1)
    order = np.lexsort((tie, lead))[:PROFILE_ROWS]
    return {"rows": rows, "lead": lead[order], "tie": tie[order],
            "sample": part.take(pa.array(order))}


def profile_combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    lead = np.concatenate([a["lead"], b["lead"]])
    tie = np.concatenate([a["tie"], b["tie"]])
    sample = pa.concat_tables([a["sample"], b["sample"]], promote_options="permissive")
    order = np.lexsort((tie, lead))[:PROFILE_ROWS]
    return {"rows": a["rows"] + b["rows"], "lead": lead[order], "tie": tie[order],
            "sample": sample.take(pa.array(order))}


def _values(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column (a dictionary too) as float64 with missing values as NaN."""
    return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()


def _texts(column: pa.ChunkedArray) -> pa.Array:
    """A text column (a dictionary too) as one string array."""
    return column.cast(pa.string()).combine_chunks()


def profile_finish(stats: dict[str, Any]) -> dict[str, Any]:
    """The JSON profile of the merged partials: per column its bins (numeric: inner
    edges; text: values, the last bin the others) and their shares, the last share
    that of the missing values."""
    sample = stats["sample"]
    n = sample.num_rows
    columns: dict[str, Any] = {}
    for name in sample.column_names:
        column = sample.column(name)
        if _kind(column.type) == "numeric":
            columns[name] = {"kind": "numeric", **_binned(_values(column), n)}
            continue
        texts = _texts(column)
        counted = [c for c in pc.value_counts(texts.drop_null()).to_pylist()
                   if c["counts"] > 1]
        counted.sort(key=lambda c: (-c["counts"], c["values"]))
        top = counted[:TOP_VALUES]
        known = len(texts) - texts.null_count
        kept = sum(c["counts"] for c in top)
        if known and kept < FREE_TEXT * known:
            columns[name] = {"kind": "text", "measure": "length", **_binned(_lengths(texts), n)}
            continue
        columns[name] = {"kind": "text", "values": [c["values"] for c in top],
                         "shares": _shares(np.array([c["counts"] for c in top]
                                                    + [known - kept]), texts.null_count, n)}
    return {"rows": int(stats["rows"]), "sample_rows": n, "columns": columns}


def _lengths(texts: pa.Array) -> np.ndarray:
    """Each text's length in characters, NaN for a null."""
    return pc.fill_null(pc.utf8_length(texts).cast(pa.float64()), np.nan).to_numpy(
        zero_copy_only=False)


def _binned(values: np.ndarray, n: int) -> dict[str, Any]:
    """Equal-frequency bins of the values (NaN: missing): inner edges and shares."""
    known = values[~np.isnan(values)]
    edges = (np.unique(np.quantile(known, np.arange(1, BINS) / BINS, method="lower"))
             if known.size else np.zeros(0))
    return {"edges": edges.tolist(), "shares": _shares(_bin_counts(edges, known),
                                                       n - known.size, n)}


def _bin_counts(edges: Any, known: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    return np.bincount(np.searchsorted(edges, known, side="left"), minlength=len(edges) + 1)


def _shares(counts: np.ndarray, missing: int, n: int) -> list[float]:
    return (np.append(counts, missing) / max(n, 1)).tolist()


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of two share vectors (floored at ``FLOOR``)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


# --------------------------------------------------------------------------- the step


class DriftParams(Params):
    model: str = Field(description="the model whose training rows are the reference: "
                                   "name, name@3, name@ALIAS (its saved profile)")
    columns: list[str] | None = Field(
        None, description="columns to compare (default: every column the model's profile "
                          "has)")
    max_psi: float | None = Field(
        None, gt=0, description="stop the run when a column's PSI passes this (0.25: a "
                                "shift); default: report only")


@register("drift")
class Drift(Measuring):
    """Measure how far the rows have moved from the rows a saved model was trained on.

    One pass: each column's population stability index (PSI) against the model's
    training profile (kept by `save_model`), in the run record's metrics (`psi` per
    column, `max_psi`, `drifted`: the columns past 0.25). With `max_psi` the run stops
    past it, before the steps after this one run: a scheduled scoring job does not
    write scores of data the model has not seen the like of. The rows pass through.

    ```yaml
    - op: drift
      model: churn@production
      max_psi: 0.25               # stop past it (default: report only)
    ```
    """

    numeric_kernels = False
    in_model = False

    Params = DriftParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.profile: dict[str, Any] | None = None
        self.model_info: dict[str, Any] = {}

    def bind(self, chain: Any, required: list[str], info: dict[str, Any]) -> None:
        """Attach the registry model's profile (the plan resolves ``model``)."""
        info = dict(info)
        meta = info.pop("meta", {}) or {}
        self.model_info = info
        self.profile = meta.get("profile")

    def bind_planned(self, schema: pa.Schema, required: list[str], info: dict[str, Any]
                     ) -> None:
        """Attach a model this run saves before the step, as planned: the columns its
        profile will have (of ``required``, read from ``schema``) and their kinds; the
        profile itself is bound when the run has saved it."""
        self.model_info = dict(info)
        self.profile = {"rows": 0, "planned": True, "columns": {
            c: {"kind": _kind(schema.field(c).type)}
            for c in profiled_columns(schema, required)}}

    @property
    def _columns(self) -> dict[str, Any]:
        if self.profile is None:
            raise SchemaError(
                f"model '{self.params.model}' has no training profile (saved by an older "
                "sluice, or with profile: false)", hint="save it again to compare with it")
        profiled = self.profile["columns"]
        if self.params.columns is None:
            return profiled
        missing = [c for c in self.params.columns if c not in profiled]
        if missing:
            raise SchemaError(f"columns: '{missing[0]}' is not in the profile of model "
                              f"'{self.params.model}'",
                              hint="profiled: " + ", ".join(profiled))
        return {c: profiled[c] for c in self.params.columns}

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self._columns) if self.profile is not None else []

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, list(self._columns),
                        f"column the model '{self.params.model}' was trained with:")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        columns = self._columns
        self.check_input(schema)
        for name, entry in columns.items():
            kind = _kind(schema.field(name).type)
            if kind != entry["kind"]:
                raise SchemaError(f"column '{name}' is {schema.field(name).type} here, "
                                  f"{entry['kind']} in the training rows",
                                  hint="cast it as it was (op: cast)")
        return schema

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"columns": self._columns}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        counts = {}
        for name, entry in state["columns"].items():
            column = part.column(name)
            if entry["kind"] == "numeric" or entry.get("measure") == "length":
                values = (_values(column) if entry["kind"] == "numeric"
                          else _lengths(_texts(column)))
                known = values[~np.isnan(values)]
                counts[name] = np.append(_bin_counts(entry["edges"], known),
                                         values.size - known.size).astype(np.int64)
            else:
                texts = _texts(column)
                at = pc.index_in(texts, value_set=pa.array(entry["values"], pa.string()))
                found = at.drop_null().to_numpy(zero_copy_only=False)
                top = np.bincount(found, minlength=len(entry["values"]))
                rest = len(texts) - texts.null_count - found.size
                counts[name] = np.append(top, [rest, texts.null_count]).astype(np.int64)
        return {"rows": part.num_rows, "counts": counts}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {"rows": a["rows"] + b["rows"],
                "counts": {k: a["counts"][k] + b["counts"][k] for k in a["counts"]}}

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        rows = stats["rows"]
        values = {name: psi(entry["shares"], stats["counts"][name] / rows) if rows else 0.0
                  for name, entry in state["columns"].items()}
        worst = max(values.values(), default=0.0)
        out = {"psi": values, "max_psi": worst, "rows": rows,
               "reference_rows": self.profile["rows"] if self.profile else 0,
               "drifted": sorted((c for c, v in values.items() if v > 0.25),
                                 key=lambda c: -values[c])}
        if "version" in self.model_info:
            out["model"] = f"{self.model_info.get('name')}@{self.model_info['version']}"
        limit = self.params.max_psi
        if limit is not None and worst > limit:
            over = sorted((c for c, v in values.items() if v > limit), key=lambda c: -values[c])
            shown = ", ".join(f"{c} (PSI {values[c]:.3g})" for c in over[:5])
            raise DataError(
                f"{len(over)} column{'s' if len(over) > 1 else ''} moved past max_psi "
                f"{limit:g} from the training rows of model '{self.params.model}': {shown}",
                hint="look at what changed in the data; retrain on recent rows, or raise "
                     "max_psi if the change is expected")
        return {**state, "metrics_values": out}, True


@register_fitted("drift.fitted")
class DriftFitted(Measured):
    """The rows, unchanged; carries the drift it measured."""

    Params = DriftParams
