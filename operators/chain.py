"""A fitted chain of transforms, and its artifact form: JSON entries + named arrays.

Loading an artifact never runs code from it: each entry names a registered
transform and carries plain JSON and arrays (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from operators.base import ArtifactError, Transform, lookup_fitted


class Chain(Transform):
    """Transforms applied in order; what ``save_model`` stores and ``score`` applies."""

    name = "chain"

    def __init__(self, steps: list[Transform]):
        super().__init__({})
        self.steps = list(steps)

    def __repr__(self) -> str:
        return f"Chain({self.steps!r})"

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        for step in self.steps:
            schema = step.output_schema(schema)
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        for step in self.steps:
            part = step.transform(part, xp)
        return part

    def every_step(self) -> list[Transform]:
        """The steps, each followed by those of the chain it scores with (a saved
        ``score`` step's model: a model of a model, calibrated), depth first."""
        out: list[Transform] = []
        for step in self.steps:
            out.append(step)
            inner = getattr(step, "chain", None)
            if isinstance(inner, Chain):
                out.extend(inner.every_step())
        return out

    def found(self, name: str) -> Any:
        """The first step's ``name`` that is not None (a model's ``quantile``, its
        ``deviance``), or None."""
        return next((v for v in (getattr(s, name, None) for s in self.steps)
                     if v is not None), None)


def dump_chain(steps: list[Transform]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Entries for model.json and arrays for arrays.npz (keys ``<step>.<name>``)."""
    entries: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for i, step in enumerate(steps):
        meta, step_arrays = step.state()
        name = step.name or f"{type(step).__module__}.{type(step).__qualname__}"
        entries.append({"op": name, "state": meta, "arrays": sorted(step_arrays)})
        for key, value in step_arrays.items():
            arrays[f"{i}.{key}"] = np.asarray(value)
    return entries, arrays


def load_chain(entries: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> list[Transform]:
    """Rebuild the transforms of ``dump_chain``; a missing array or op is an ArtifactError."""
    steps: list[Transform] = []
    for i, entry in enumerate(entries):
        try:
            cls = lookup_fitted(entry["op"])
            step_arrays = {key: arrays[f"{i}.{key}"] for key in entry.get("arrays", [])}
            steps.append(cls.from_state(entry["state"], step_arrays))
        except ArtifactError:
            raise
        except Exception as exc:  # a damaged artifact can fail in any constructor
            raise ArtifactError(f"step {i} ('{entry.get('op')}') cannot be loaded: {exc}") from None
    return steps
