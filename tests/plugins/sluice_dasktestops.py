"""Operators for the Dask engine's tests (a plugin package, importable by the workers):
a slow multi-pass fit that signals its passes, a transform that tallies its calls, and
a bug whose exception does not pickle."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field
from sluice_testops import ThreePass, ThreePassParams

from operators.base import Params, Transform


class SlowThreePassParams(ThreePassParams):
    sleep: float = Field(0.0, ge=0, description="seconds every partial sleeps")
    signal_dir: str | None = Field(
        None, description="where a file pass-<n> appears when pass n (from 0) starts")


class SlowThreePass(ThreePass):
    """ThreePass, slowly, telling the test which pass runs."""

    Params = SlowThreePassParams

    def partial(self, part: pa.Table, state: Any, xp: Any) -> Any:
        if self.params.signal_dir:
            Path(self.params.signal_dir, f"pass-{state['pass']}").touch()
        time.sleep(self.params.sleep)
        return super().partial(part, state, xp)


class TallyParams(Params):
    log: str = Field(description="file that gets one line per call: the rows seen")


class Tally(Transform):
    """Passes its input through and appends the partition's row count to a file."""

    Params = TallyParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        fd = os.open(self.params.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{part.num_rows}\n".encode())
        finally:
            os.close(fd)
        return part


class Grumpy(Exception):
    """An exception that cannot be unpickled (its constructor wants two arguments)."""

    def __init__(self, what: str, code: int):
        super().__init__(f"{what} (code {code})")
        self.code = code


class GrumpyParams(Params):
    at_partition_with: int = Field(description="fail on the partition holding this id")


class GrumpyFailure(Transform):
    """Fails with an exception that does not survive pickling."""

    Params = GrumpyParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        if self.params.at_partition_with in part.column("customer_id").to_pylist():
            raise Grumpy("grumpy", 7)
        return part
