"""A third-party operator package, as a user would write one, named by dotted path
(``op: sluice_testops.CenterColumns``) in the runtime tests."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.arrays import table_to_matrix, to_numpy
from operators.base import DataError, Estimator, Params, Transform, require_columns


class CenterParams(Params):
    columns: list[str] = Field(description="numeric columns to centre")


class Centered(Transform):
    """Subtract fitted means (the fitted form of CenterColumns)."""

    Params = CenterParams

    def __init__(self, params: Any, means: np.ndarray | None = None):
        super().__init__(params)
        self.means = means

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        for c in self.params.columns:
            schema = schema.set(schema.get_field_index(c), pa.field(c, pa.float64()))
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        x = to_numpy(table_to_matrix(part, self.params.columns, xp)) - self.means
        out = part
        for j, c in enumerate(self.params.columns):
            out = out.set_column(out.schema.get_field_index(c), pa.field(c, pa.float64()),
                                 pa.array(x[:, j]))
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump()}, {"means": self.means}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Centered:
        return cls(CenterParams(**meta["params"]), arrays["means"])


class CenterColumns(Estimator):
    """Centre columns on their mean (one pass of sums and counts)."""

    Params = CenterParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        return Centered(self.params).output_schema(schema)

    def init(self, schema: pa.Schema) -> Any:
        return None

    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any:
        x = table_to_matrix(part, self.params.columns, xp)
        if bool(xp.any(xp.isnan(x))):
            raise DataError(f"NaN in {self.params.columns}", hint="impute first")
        return {"n": part.num_rows, "sum": to_numpy(xp.sum(x, axis=0))}

    def combine(self, a: Any, b: Any) -> Any:
        return {"n": a["n"] + b["n"], "sum": a["sum"] + b["sum"]}

    def update(self, stats: Any, state: Any) -> tuple[Any, bool]:
        if stats["n"] == 0:
            raise DataError("no rows to fit on")
        return stats["sum"] / stats["n"], True

    def fitted(self, state: Any) -> Transform:
        return Centered(self.params, state)

    def metrics(self, state: Any) -> dict[str, Any]:
        return {"means": [float(m) for m in state]}


class ExplodingParams(Params):
    at_partition_with: int = Field(description="fail on the partition holding this id")


class Exploding(Transform):
    """Fails with a bug-like error on one partition (to test failure reporting)."""

    Params = ExplodingParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        ids = part.column("customer_id").to_pylist()
        if self.params.at_partition_with in ids:
            raise ZeroDivisionError("boom")
        return part


class FailingLateParams(Params):
    after: dict[int, float] = Field(
        description="customer_id -> seconds: the partition holding that id fails after "
                    "that long")


class FailingLate(Transform):
    """Fails (a bug-like error naming its id) on the partitions holding the given ids,
    each after its own delay (to test which of several failures is reported)."""

    Params = FailingLateParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        import time

        ids = set(part.column("customer_id").to_pylist())
        for at, seconds in self.params.after.items():
            if at in ids:
                time.sleep(seconds)
                raise ZeroDivisionError(f"boom at {at}")
        return part


class ThreePassParams(Params):
    column: str = Field(description="numeric column")


class ThreePass(Estimator):
    """Mean, then variance around it, then the largest deviation: three passes."""

    Params = ThreePassParams
    multi_pass = True

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [self.params.column]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def init(self, schema: pa.Schema) -> Any:
        return {"pass": 0}

    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any:
        x = table_to_matrix(part, [self.params.column], xp)[:, 0]
        if state["pass"] == 0:
            return {"n": part.num_rows, "v": float(xp.sum(x))}
        if state["pass"] == 1:
            return {"n": part.num_rows, "v": float(xp.sum((x - state["mean"]) ** 2))}
        return {"n": part.num_rows,
                "v": float(xp.max(xp.abs(x - state["mean"]))) if part.num_rows else 0.0}

    def combine(self, a: Any, b: Any) -> Any:
        if self._last_pass:
            return {"n": a["n"] + b["n"], "v": max(a["v"], b["v"])}
        return {"n": a["n"] + b["n"], "v": a["v"] + b["v"]}

    _last_pass = False

    def update(self, stats: Any, state: Any) -> tuple[Any, bool]:
        step = state["pass"]
        if step == 0:
            return {"pass": 1, "mean": stats["v"] / stats["n"]}, False
        if step == 1:
            self._last_pass = True
            return {**state, "pass": 2, "var": stats["v"] / stats["n"]}, False
        return {**state, "pass": 3, "maxdev": stats["v"]}, True

    def fitted(self, state: Any) -> Transform:
        return Passthrough({})

    def metrics(self, state: Any) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k != "pass"}


class Passthrough(Transform):
    """Returns its input."""

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return part


class TouchParams(Params):
    folder: str = Field(description="where each partition leaves a file named by its first id")
    seconds: float = Field(0.0, description="how long each partition takes after that")


class Touch(Transform):
    """Leaves a mark per partition computed, then takes its time; a partition holding a
    row with ``bad`` true is a user error (for fail-fast tests)."""

    Params = TouchParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        import os
        import time

        if part.num_rows:
            first = part.column("id")[0].as_py()
            open(os.path.join(self.params.folder, str(first)), "w").close()
        if any(part.column("bad").to_pylist()):
            raise DataError("a bad row", hint="leave it out")
        time.sleep(self.params.seconds)
        return part


class CountParams(Params):
    path: str = Field(description="the file a line is added to per partition computed")


class Count(Transform):
    """Adds a line to a file each time it computes a partition (O_APPEND: whole lines
    from any process): how often the steps before a fit run."""

    Params = CountParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        with open(self.params.path, "a") as f:
            f.write(f"{part.num_rows}\n")
        return part


class FailingPassParams(Params):
    at_pass: int = Field(description="the pass (0, 1, ...) that fails")
    at_partition_with: int = Field(description="on the partition holding this customer_id")
    kind: Literal["user", "bug", "exit"] = Field(
        description="a DataError, a ZeroDivisionError, or the process exits")
    once: str | None = Field(None, description="a file: fail only if it does not exist yet "
                                               "(and create it)")


class _CustomerPasses(Estimator):
    """A multi-pass fit that reads ``customer_id`` and changes no column."""

    multi_pass = True

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return ["customer_id"]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def init(self, schema: pa.Schema) -> Any:
        return {"pass": 0}


class FailingPass(_CustomerPasses):
    """Counts rows in ``at_pass + 1`` passes, failing in pass ``at_pass`` on one
    partition (to test failures in the middle of a multi-pass fit)."""

    Params = FailingPassParams

    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any:
        if (state["pass"] == self.params.at_pass
                and self.params.at_partition_with in part.column("customer_id").to_pylist()):
            if self.params.once is not None:
                if os.path.exists(self.params.once):
                    return part.num_rows
                open(self.params.once, "w").close()
            if self.params.kind == "user":
                raise DataError(f"a bad row in pass {state['pass']}",
                                hint="fix the row")
            if self.params.kind == "bug":
                raise ZeroDivisionError(f"boom in pass {state['pass']}")
            os._exit(3)
        return part.num_rows

    def combine(self, a: Any, b: Any) -> Any:
        return a + b

    def update(self, stats: Any, state: Any) -> tuple[Any, bool]:
        done = state["pass"] >= self.params.at_pass
        return {"pass": state["pass"] + 1, "rows": stats}, done

    def fitted(self, state: Any) -> Transform:
        return Passthrough({})


class KeptBudget(_CustomerPasses):
    """One pass: the process of each partition and the bytes it may keep of what fits
    derive (``operators.processes.cache_budget``)."""

    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any:
        from operators.processes import cache_budget

        return {(os.getpid(), cache_budget())}

    def combine(self, a: Any, b: Any) -> Any:
        return a | b

    def update(self, stats: Any, state: Any) -> tuple[Any, bool]:
        return {"processes": len({pid for pid, _ in stats}),
                "budgets": sorted({budget for _, budget in stats})}, True

    def fitted(self, state: Any) -> Transform:
        return Passthrough({})

    def metrics(self, state: Any) -> dict[str, Any]:
        return dict(state)
