"""filter, sample and expect: the rows they keep, worked out here, and their errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, lookup, tree_reduce
from operators.expressions import failure_hint
from operators.models.common import holdout_mask
from operators.testing.kit import split

NP = get_namespace("numpy")


def build(op: str, **params: Any) -> Any:
    cls = lookup(op)
    return cls(cls.Params(**params))


def table(rows: int = 4000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "customer": pa.array(rng.integers(0, rows // 8, rows)),
        "amount": pa.array(rng.standard_normal(rows), mask=rng.random(rows) < 0.1),
        "plan": pa.array(np.array(["basic", "plus", "trial"])[rng.integers(0, 3, rows)]),
        "churned": pa.array(rng.random(rows) < 0.3),
    })


def run_on(op: Any, data: pa.Table, parts: int = 1) -> pa.Table:
    return pa.concat_tables([op.transform(p, NP) for p in split(data, parts)])


# --------------------------------------------------------------------------- filter


def test_filter_keeps_the_rows_where_the_condition_is_true_and_drops_null() -> None:
    data = table()
    out = run_on(build("filter", where="amount > 0.5 and plan != 'trial'"), data, 5)
    amount = data["amount"].to_pylist()
    plan = data["plan"].to_pylist()
    keep = [a is not None and a > 0.5 and p != "trial" for a, p in zip(amount, plan)]
    assert out.schema == data.schema
    assert out.num_rows == sum(keep) > 0
    assert out.equals(data.filter(pa.array(keep)))
    nulls = run_on(build("filter", where="amount is null or not churned"), data)
    expected = [a is None or not c for a, c in zip(amount, data["churned"].to_pylist())]
    assert nulls.num_rows == sum(expected)


def test_filter_conditions_that_are_not_true_or_false_fail_when_planned() -> None:
    schema = table().schema
    with pytest.raises(ParamError, match="where: filter must be true/false, got a number; "
                                         "compare it, e.g. 'amount \\+ 1 > 0'"):
        build("filter", where="amount + 1")
    with pytest.raises(SchemaError, match=r"where: filter must be true/false, got double"):
        build("filter", where="amount").output_schema(schema)
    with pytest.raises(SchemaError, match="did you mean 'amount'"):
        build("filter", where="amout > 0").output_schema(schema)
    assert build("filter", where="amount > 0 and churned").input_columns(schema) == [
        "amount", "churned"]


def test_filter_a_value_that_fails_at_run_time_is_a_data_error() -> None:
    op = build("filter", where="cast(plan as int64) > 0")
    op.output_schema(table().schema)
    with pytest.raises(DataError, match=r"where \(cast\(plan as int64\) > 0\): Failed to "
                                        "parse string: '[a-z]+' as a scalar of type "
                                        "int64") as info:
        op.transform(table(), NP)
    assert "try_cast(x as type) gives null" in str(info.value)
    assert "guard the condition" in str(info.value)
    # where it casts nothing, the guard alone
    assert failure_hint(["amount > 0 and churned"], "condition") == (
        "guard the condition, e.g. with if(...) or coalesce(...)")


# --------------------------------------------------------------------------- sample


def test_sample_keeps_about_the_fraction_the_same_rows_however_partitioned() -> None:
    data = table(20000)
    op = build("sample", fraction=0.3, seed=5)
    whole = op.transform(data, NP)
    # binomial: 3 standard deviations of 20000 * 0.3 * 0.7
    assert abs(whole.num_rows - 6000) < 3 * np.sqrt(20000 * 0.21)
    for parts in (3, 7):
        assert run_on(op, data, parts).equals(whole)
    shuffled = data.take(np.random.default_rng(1).permutation(data.num_rows))
    again = op.transform(shuffled, NP)
    key = ["customer", "amount", "plan", "churned"]
    assert again.sort_by([(k, "ascending") for k in key]).equals(
        whole.sort_by([(k, "ascending") for k in key]))
    other = build("sample", fraction=0.3, seed=6).transform(data, NP)
    assert not other.equals(whole)
    assert build("sample", fraction=1.0).transform(data, NP).equals(data)


def test_sample_and_its_complement_split_the_rows_in_two() -> None:
    data = table().append_column("row", pa.array(np.arange(4000)))
    kept = build("sample", fraction=0.8, seed=2).transform(data, NP)["row"].to_pylist()
    rest = build("sample", fraction=0.8, seed=2, complement=True).transform(
        data, NP)["row"].to_pylist()
    assert not set(kept) & set(rest)
    assert sorted(kept + rest) == list(range(4000))


def test_sample_by_keeps_or_leaves_all_of_a_group_rows_together() -> None:
    data = table()
    kept = build("sample", fraction=0.5, seed=1, by=["customer"]).transform(data, NP)
    rest = build("sample", fraction=0.5, seed=1, by=["customer"], complement=True).transform(
        data, NP)
    inside, outside = set(kept["customer"].to_pylist()), set(rest["customer"].to_pylist())
    assert inside and outside and not inside & outside
    assert kept.num_rows + rest.num_rows == data.num_rows
    # the whole row would split a customer's rows between the sides
    whole = set(build("sample", fraction=0.5, seed=1).transform(data, NP)["customer"].to_pylist())
    whole_rest = set(build("sample", fraction=0.5, seed=1, complement=True).transform(
        data, NP)["customer"].to_pylist())
    assert whole & whole_rest


def test_sample_right_before_a_model_keeps_the_rows_it_holds_out() -> None:
    """The same fraction and seed as a model's validation_fraction: the held-out rows."""
    data = table().drop_columns(["plan", "amount"])
    out = build("sample", fraction=0.25, seed=9).transform(data, NP)
    assert out.equals(data.filter(pa.array(holdout_mask(data, 0.25, 9))))
    rest = build("sample", fraction=0.25, seed=9, complement=True).transform(data, NP)
    model = build("logistic_regression", label="churned", validation_fraction=0.25, seed=9)
    state, _ = drive(model, data.schema,
                     lambda partial: tree_reduce([partial(p, NP) for p in split(data, 3)],
                                                 model.combine))
    metrics = model.metrics(state)
    assert (metrics["validation_rows"], metrics["training_rows"]) == (
        out.num_rows, rest.num_rows)


def test_sample_parameters_are_checked() -> None:
    schema = table().schema
    for fraction in (0, -0.1, 1.5):
        with pytest.raises(ValidationError, match="fraction"):
            build("sample", fraction=fraction)
    with pytest.raises(ParamError, match="'customer' is listed twice in `by`"):
        build("sample", fraction=0.5, by=["customer", "customer"])
    with pytest.raises(SchemaError, match="by: column 'custmer' not in the input; did you "
                                          "mean 'customer'"):
        build("sample", fraction=0.5, by=["custmer"]).output_schema(schema)


# --------------------------------------------------------------------------- expect


def test_expect_passes_rows_that_meet_every_rule_through_unchanged() -> None:
    data = table()
    op = build("expect", rules={"known_plan": "plan in ('basic', 'plus', 'trial')",
                                "customer_ok": "customer >= 0"}, not_null=["plan"])
    assert op.output_schema(data.schema) == data.schema
    assert op.input_columns(data.schema) == ["plan", "customer"]
    assert run_on(op, data, 4).equals(data)


def test_expect_fails_with_the_rule_the_count_and_a_failing_row() -> None:
    data = table()
    amount = data["amount"].to_pylist()
    op = build("expect", rules={"known_plan": "plan != 'gold'",
                                "positive": "amount > -1.5"})
    with pytest.raises(DataError) as info:
        op.transform(data, NP)
    failing = [i for i, a in enumerate(amount) if a is None or a <= -1.5]
    first = data.slice(failing[0], 1).to_pylist()[0]
    assert str(info.value) == (
        f"{len(failing):,} of 4,000 rows fail 'positive' (amount > -1.5), e.g. the row "
        f"amount={'null' if first['amount'] is None else repr(first['amount'])}, "
        f"customer={first['customer']!r}, plan={first['plan']!r}, "
        f"churned={first['churned']!r} (fix the data; or on_failure: drop to go on with "
        "the rows that pass, or on_failure: warn to go on with every row and a warning)")
    nulls = data.filter(pa.array([a is None for a in amount]))
    with pytest.raises(DataError, match=rf"^{nulls.num_rows} of {nulls.num_rows} rows fail "
                                        r"not_null\(amount\), e.g. the row amount=null, "
                                        "customer="):
        build("expect", not_null=["amount"]).transform(nulls, NP)


def test_expect_drop_keeps_the_rows_that_pass_every_rule() -> None:
    data = table()
    op = build("expect", rules={"positive": "amount > -1.5"}, not_null=["plan"],
               on_failure="drop")
    out = run_on(op, data, 3)
    keep = [a is not None and a > -1.5 for a in data["amount"].to_pylist()]
    assert out.equals(data.filter(pa.array(keep)))


def test_expect_rules_are_checked_when_planned() -> None:
    schema = table().schema
    with pytest.raises(ParamError, match="expect checks nothing"):
        build("expect")
    with pytest.raises(ParamError, match="rules: 'p': filter must be true/false, got a "
                                         "number"):
        build("expect", rules={"p": "amount + 1"})
    with pytest.raises(SchemaError, match="rules: 'p': .*did you mean 'amount'"):
        build("expect", rules={"p": "amout > 0"}).output_schema(schema)
    with pytest.raises(SchemaError, match="not_null: column 'pln' not in the input; did "
                                          "you mean 'plan'"):
        build("expect", not_null=["pln"]).output_schema(schema)
    with pytest.raises(ValidationError, match="on_failure"):
        build("expect", not_null=["plan"], on_failure="warning")
