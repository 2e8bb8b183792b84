"""union: the schema rules (columns by name, types widened as pyarrow's permissive
promotion, missing columns an error or nulls) against pyarrow's own concat_tables, and
its messages."""

from __future__ import annotations

import decimal
import pickle

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.base import DataError, MissingColumnError, SchemaError, lookup
from operators.features.union import Union
from operators.testing.kit import assert_tables_close, split


def union(schemas: dict[str, pa.Schema], input_step: str = "web", **params) -> Union:
    """A union of ``input_step`` and ``params['steps']``, their schemas bound as the plan
    binds them."""
    cls = lookup("union")
    op = cls(cls.Params(**params))
    assert isinstance(op, Union)
    op.bind_input(input_step)
    for step in op.step_inputs():
        op.bind_step_schema(step, schemas[step])
    return op


def appended(op: Union, tables: dict[str, pa.Table], order: list[str]) -> pa.Table:
    schema = op.output_schema(tables[order[0]].schema)
    return pa.concat_tables([op.conform(tables[step], schema, step) for step in order])


@pytest.fixture
def web() -> pa.Table:
    rng = np.random.default_rng(1)
    n = 300
    return pa.table({
        "id": pa.array(np.arange(n, dtype=np.int32)),
        "amount": pa.array(rng.gamma(2.0, 10.0, n), mask=rng.random(n) < 0.1),
        "ts": pa.array(np.arange(n).astype("datetime64[ms]"), pa.timestamp("ms")),
        "kind": pa.array(rng.choice(["buy", "view"], n)),
    })


@pytest.fixture
def app() -> pa.Table:
    """web's columns in another order and wider types (int64, timestamp[us])."""
    rng = np.random.default_rng(2)
    n = 120
    return pa.table({
        "kind": pa.array(rng.choice(["buy", "refund"], n)),
        "ts": pa.array((np.arange(n) + 10**6).astype("datetime64[us]"), pa.timestamp("us")),
        "amount": rng.gamma(2.0, 10.0, n),
        "id": pa.array(np.arange(n, dtype=np.int64) + 10**10),
    })


def test_columns_are_matched_by_name_and_widened_as_pyarrow_does(web, app) -> None:
    op = union({"app": app.schema}, steps=["app"])
    schema = op.output_schema(web.schema)
    assert schema.names == web.column_names  # the input's order
    assert schema.field("id").type == pa.int64()
    assert schema.field("ts").type == pa.timestamp("us")
    got = appended(op, {"web": web, "app": app}, ["web", "app"])
    want = pa.concat_tables([web, app.select(web.column_names)],
                            promote_options="permissive")
    assert got.schema == want.schema
    assert_tables_close(got, want, 0, 0)
    assert got.column("id").to_pylist()[web.num_rows] == 10**10  # no overflow


def test_integers_and_floats_widen_to_float64_and_a_dictionary_to_its_text(web) -> None:
    other = pa.table({"id": pa.array([1.5, None]), "amount": pa.array([1, 2], pa.int64()),
                      "ts": pa.array([0, 1], pa.timestamp("ms")),
                      "kind": pa.array(["buy", None]).dictionary_encode()})
    op = union({"app": other.schema}, steps=["app"])
    schema = op.output_schema(web.schema)
    assert [str(t) for t in schema.types] == ["double", "double", "timestamp[ms]", "string"]
    got = appended(op, {"web": web, "app": other}, ["web", "app"])
    assert got.column("id").to_pylist()[-2:] == [1.5, None]
    assert got.column("kind").to_pylist()[-2:] == ["buy", None]


def test_equal_types_are_kept_a_dictionary_too(web) -> None:
    encoded = web.set_column(3, "kind", web.column("kind").dictionary_encode())
    op = union({"app": encoded.schema}, steps=["app"])
    schema = op.output_schema(encoded.schema)
    assert schema == encoded.schema
    part = encoded.slice(0, 10)
    assert op.conform(part, schema, "web") is part  # nothing to do: no copy


def test_missing_null_appends_the_others_columns_in_order_of_appearance(web) -> None:
    app = pa.table({"device": ["ios", "android"], "id": pa.array([7, 8], pa.int32()),
                    "amount": [1.0, 2.0]})
    store = pa.table({"till": pa.array([3], pa.int16()), "device": ["pos"],
                      "kind": ["buy"], "id": pa.array([9], pa.int32())})
    op = union({"app": app.schema, "store": store.schema}, steps=["app", "store"],
               missing="null")
    schema = op.output_schema(web.schema)
    assert schema.names == ["id", "amount", "ts", "kind", "device", "till"]
    got = appended(op, {"web": web, "app": app, "store": store}, ["web", "app", "store"])
    want = pa.concat_tables([web, app, store], promote_options="permissive")
    assert got.schema == want.schema and got.equals(want)
    assert got.column("ts").null_count == 3 and got.column("device").null_count == 300


def test_missing_null_is_what_yaml_reads_missing_null_as() -> None:
    assert lookup("union").Params(steps=["a"], missing=None).missing == "null"


def test_a_missing_column_names_it_and_the_steps_that_lack_it(web) -> None:
    app = web.drop_columns(["kind", "ts"]).append_column("device", pa.array(["x"] * 300))
    store = web.drop_columns(["kind"])
    op = union({"app": app.schema, "store": store.schema}, steps=["app", "store"])
    with pytest.raises(MissingColumnError) as caught:
        op.output_schema(web.schema)
    assert caught.value.message == (
        "steps: columns are matched by name and every step must have the same ones: "
        "'ts' is not in step 'app'; 'kind' is not in steps 'app', 'store'; 'device' is "
        "not in steps 'web', 'store'")
    assert caught.value.hint.startswith("missing: null makes a column null in the rows of "
                                        "the steps that lack it")
    assert "(op: select)" in caught.value.hint


def test_types_with_no_common_one_name_the_column_each_step_and_the_cast(web) -> None:
    app = web.set_column(3, "kind", pa.array(np.arange(300)))  # a number, not text
    op = union({"app": app.schema}, steps=["app"])
    with pytest.raises(SchemaError) as caught:
        op.output_schema(web.schema)
    assert caught.value.message == ("steps: column 'kind' is string in step 'web', int64 "
                                    "in step 'app': types with no common one to widen to")
    assert caught.value.hint == ("cast it to one type first: a step `op: cast` with "
                                 "`columns: {kind: string}` after step 'app', which the "
                                 "union reads instead")
    zoned = web.set_column(2, "ts", web.column("ts").cast(pa.timestamp("ms", tz="UTC")))
    op = union({"app": zoned.schema}, steps=["app"])
    with pytest.raises(SchemaError, match="column 'ts' is timestamp\\[ms\\] in step 'web', "
                                          "timestamp\\[ms, tz=UTC\\] in step 'app'"):
        op.output_schema(web.schema)


def test_a_value_that_does_not_fit_the_widened_type_names_the_step_and_column() -> None:
    first = pa.table({"n": pa.array([1, 2], pa.int64())})
    second = pa.table({"n": pa.array([2**63 + 5], pa.uint64())})
    op = union({"big": second.schema}, input_step="small", steps=["big"])
    schema = op.output_schema(first.schema)
    assert schema.field("n").type == pa.int64()  # pyarrow's permissive promotion
    with pytest.raises(DataError) as caught:
        op.conform(second, schema, "big")
    assert caught.value.message.startswith(
        "column 'n' of step 'big' does not fit the union's type: uint64 to int64")


def test_a_decimal_beside_an_integer_holds_every_value_of_the_integer() -> None:
    """pyarrow widens decimal(5, 2) and int64 to decimal(20, 2), one digit short of an
    int64's 19 before the point, and Arrow then cast no int64 to it ('Precision is not
    great enough'): every row of the integer step stopped the run, as a value that "does
    not fit". The union's type holds every value (int32 and uint64 likewise)."""
    first = pa.table({"d": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2))})
    for t, want in ((pa.int64(), pa.decimal128(21, 2)), (pa.int32(), pa.decimal128(12, 2)),
                    (pa.uint64(), pa.decimal128(22, 2))):
        second = pa.table({"d": pa.array([3, 2**31 - 1], t)})
        op = union({"ints": second.schema}, input_step="decimals", steps=["ints"])
        got = appended(op, {"decimals": first, "ints": second}, ["decimals", "ints"])
        assert got.schema.field("d").type == want
        assert got["d"].to_pylist() == [decimal.Decimal("1.25"), None, 3, 2**31 - 1]


def test_a_step_listed_twice_or_none_is_refused() -> None:
    cls = lookup("union")
    with pytest.raises(ValidationError, match="step 'app' is listed twice"):
        cls.Params(steps=["app", "store", "app"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        cls.Params(steps=[])
    with pytest.raises(ValidationError, match="'error' or 'null'"):
        cls.Params(steps=["app"], missing="fill")


def test_conform_keeps_rows_in_order_and_travels(web, app) -> None:
    op = union({"app": app.schema}, steps=["app"])
    schema = op.output_schema(web.schema)
    whole = op.conform(app, schema, "app")
    again = pickle.loads(pickle.dumps(op))  # as a worker gets it
    parts = pa.concat_tables([again.conform(p, schema, "app") for p in split(app, 4)])
    assert_tables_close(parts, whole, 0, 0)
    assert whole.column("id").to_pylist() == app.column("id").to_pylist()
    assert op.conform(app.schema.empty_table(), schema, "app").schema == schema


def test_a_cast_hint_is_yaml_that_reads_as_the_type() -> None:
    """The hint's `columns: {...}` parses as YAML to the type it names (a type with
    brackets, commas or a zone is quoted)."""
    import yaml

    from operators.base import yaml_text

    for text in ("timestamp[ms, tz=UTC]", "decimal128(20, 2)", "timestamp[us]", "int64"):
        assert yaml.safe_load(f"{{c: {yaml_text(text)}}}") == {"c": text}


def test_a_column_a_step_names_otherwise_gets_the_rename() -> None:
    op = Union(steps=["app"])
    op.bind_input("web")
    op.bind_step_schema("app", pa.schema([("userid", pa.int64()), ("v", pa.float64())]))
    with pytest.raises(MissingColumnError) as info:
        op.output_schema(pa.schema([("user_id", pa.int64()), ("v", pa.float64())]))
    assert info.value.hint.startswith("in step 'app', rename userid to user_id (`op: rename`, "
                                      "`columns: {userid: user_id}`); missing: null")
