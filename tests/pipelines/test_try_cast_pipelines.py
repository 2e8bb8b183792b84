"""try_cast in pipeline steps: codes typed by hand (a text column with some junk) become
numbers and nulls, where cast stops the run and its error advises try_cast."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import SluiceError
from pipelines.runner import run

CODES = pa.table({
    "code": ["12", "x7", None, "0x1F", "7.5", "", "300", "-4"],
    "amount": [1.5, 1e20, 2.0, float("nan"), -3.9, 4.0, 5.0, 6.0],
})

PIPELINE = """
    pipeline: codes
    steps:
      - op: read_parquet
        path: data/codes
      - op: derive
        columns:
          code_number: "try_cast(code as int64)"
          small: "coalesce(try_cast(code as uint8), 0)"
          cents: "try_cast(amount * 100 as int32)"
      - op: filter
        where: "try_cast(code as int64) > 0 or code is null"
      - op: write_parquet
        path: out/codes
"""


@pytest.fixture
def codes(workdir: Path) -> Path:
    folder = workdir / "data" / "codes"
    folder.mkdir(parents=True)
    pq.write_table(CODES, folder / "part-0.parquet")
    return folder


def test_derive_and_filter_with_try_cast_on_the_local_engine(codes: Path, workdir: Path
                                                             ) -> None:
    record = run(write_pipeline(workdir, PIPELINE))
    assert record["status"] == "succeeded"
    out = pq.read_table(workdir / "out" / "codes")
    # kept: 12, null, 0x1F, 300 (the others are no positive integer: null or false)
    assert out.column("code").to_pylist() == ["12", None, "0x1F", "300"]
    assert out.column("code_number").to_pylist() == [12, None, 31, 300]
    assert out.column("small").to_pylist() == [12, 0, 31, 0]   # 300 is no uint8
    assert out.column("cents").to_pylist() == [150, 200, None, 500]  # NaN: null
    assert out.schema.field("code_number").type == pa.int64()
    assert out.schema.field("small").type == pa.uint8()
    assert out.schema.field("cents").type == pa.int32()


def test_a_failed_cast_advises_try_cast(codes: Path, workdir: Path) -> None:
    text = PIPELINE.replace("try_cast(code as int64)\"\n", "cast(code as int64)\"\n", 1)
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, text))
    message = str(info.value)
    assert "derive column 'code_number' (cast(code as int64)): Failed to parse string" in message
    assert "try_cast(x as type) gives null where a value does not convert" in message
    assert not (workdir / "out" / "codes").exists()


def test_a_cast_step_takes_invalid_null_as_the_readme_writes_it(codes: Path, workdir: Path
                                                                 ) -> None:
    """`invalid: null` unquoted, as the README's example has it, is YAML's null: it was
    refused as the file planned ("Input should be 'error' or 'null' (got None)")."""
    record = run(write_pipeline(workdir, """
        pipeline: codes
        steps:
          - op: read_parquet
            path: data/codes
          - op: cast
            columns: {code: int64}
            invalid: null
          - op: write_parquet
            path: out/codes
        """))
    assert record["status"] == "succeeded"
    out = pq.read_table(workdir / "out" / "codes")
    assert out.column("code").to_pylist() == [12, None, None, 31, None, None, 300, -4]
