"""Exact quantiles over partitions (operators/quantiles.py) against np.quantile."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from operators.base import tree_reduce
from operators.quantiles import (
    ApproxQuantiles,
    QuantileSearch,
    key_value,
    linear_quantiles,
    needed_ranks,
    sortable_keys,
)

PROBS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.5001, 0.75, 0.9, 0.99, 1.0]


def pieces(values: np.ndarray, k: int, seed: int | None = None) -> list[np.ndarray]:
    """``values`` cut into ``k`` partitions of random sizes (some empty), shuffled."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(values) + 1, k - 1)) if seed is not None else (
        np.linspace(0, len(values), k + 1)[1:-1].astype(int))
    parts = np.split(values, cuts)
    if seed is not None:
        rng.shuffle(parts)
    return parts


def search(parts: list[dict[str, np.ndarray]], probs: list[float], **kwargs: int
           ) -> tuple[dict[str, np.ndarray], int, QuantileSearch]:
    """The driver loop over in-memory partitions: (result, passes, search)."""
    s = QuantileSearch(list(parts[0]), probs, **kwargs)
    state = s.init()
    passes = 0
    while True:
        stats = tree_reduce([s.partial(p, state) for p in parts], s.combine)
        state, done = s.update(stats, state)
        passes += 1
        if done:
            return s.result(state), passes, s
        assert passes < 100, "the search does not end"


def quantiles_of(values: np.ndarray, k: int = 1, seed: int | None = None,
                 probs: list[float] = PROBS, **kwargs: int) -> tuple[np.ndarray, int]:
    result, passes, _ = search([{"v": p} for p in pieces(values, k, seed)], probs, **kwargs)
    return result["v"], passes


def expected(values: np.ndarray, probs: list[float] = PROBS) -> np.ndarray:
    clean = values[~np.isnan(values)]
    return np.quantile(clean, probs) if clean.size else np.full(len(probs), np.nan)


def test_keys_sort_like_floats() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-300, 300, 500),
                             [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 1.0, -1.0]])
    keys = sortable_keys(values)
    assert np.array_equal(np.sort(values), values[np.argsort(keys, kind="stable")])
    assert sortable_keys(np.array([0.0]))[0] == sortable_keys(np.array([-0.0]))[0]
    assert [key_value(int(k)) for k in keys[:50]] == list(values[:50] + 0.0)


@pytest.mark.parametrize("dist", ["normal", "lognormal-wide", "integers", "uniform-tiny"])
@pytest.mark.parametrize("rows", [1, 2, 17, 5000, 40_000])
def test_matches_numpy_on_any_partitioning(dist: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    values = {
        "normal": lambda: rng.standard_normal(rows),
        "lognormal-wide": lambda: np.exp(rng.standard_normal(rows) * 40),
        "integers": lambda: rng.integers(-3, 4, rows).astype(float),
        "uniform-tiny": lambda: rng.random(rows) * 1e-300,
    }[dist]()
    want = expected(values)
    first, _ = quantiles_of(values)
    np.testing.assert_allclose(first, want, rtol=1e-12)
    for k, seed in ((3, None), (8, 1), (31, 2)):
        got, _ = quantiles_of(values, k, seed)
        np.testing.assert_array_equal(got, first)  # the same bits on every partitioning


def test_passes_are_few() -> None:
    rng = np.random.default_rng(1)
    _, small = quantiles_of(rng.standard_normal(4000), 4)
    assert small == 1, "data within exact_max is done in one pass"
    _, normal = quantiles_of(rng.standard_normal(200_000), 4)
    assert 2 <= normal <= 3
    # a value spread over the whole float64 range, no two in the same binade
    adversarial = np.ldexp(1.0, np.arange(-1070, 1020, 1)) * rng.choice([-1, 1], 2090)
    got, passes = quantiles_of(np.repeat(adversarial, 3), 5, 3)
    np.testing.assert_array_equal(got, expected(np.repeat(adversarial, 3)))
    assert passes <= 7


def test_tiny_bins_and_exact_max_still_exact() -> None:
    rng = np.random.default_rng(2)
    values = np.round(rng.standard_normal(3000), 2)
    got, passes = quantiles_of(values, 5, 4, bins=2, exact_max=1)
    np.testing.assert_allclose(got, expected(values), rtol=1e-12)
    assert passes > 7


def test_duplicates_all_equal_single_and_empty() -> None:
    heavy = np.concatenate([np.full(30_000, 2.5), np.arange(10.0)])
    np.testing.assert_array_equal(quantiles_of(heavy, 6, 0)[0], expected(heavy))
    same = np.full(10_000, -7.25)
    got, passes = quantiles_of(same, 4, 1)
    assert np.all(got == -7.25) and passes <= 2
    assert np.all(quantiles_of(np.array([3.0]), 3)[0] == 3.0)
    nothing, passes = quantiles_of(np.array([np.nan, np.nan]), 2)
    assert np.all(np.isnan(nothing)) and passes == 1
    assert np.all(np.isnan(quantiles_of(np.array([]), 1)[0]))


def test_nan_null_and_infinity() -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(20_000)
    values[rng.random(20_000) < 0.2] = np.nan  # nulls arrive as NaN from column_to_numpy
    values[:5] = np.inf
    values[5:8] = -np.inf
    probs = [0.0, 0.5, 1.0]
    got, _ = quantiles_of(values, 7, 5, probs=probs)
    with np.errstate(invalid="ignore"):  # numpy's 0 and 1 quantiles are NaN: inf - inf
        want = expected(values, probs)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got[1])


def test_several_columns_finish_independently() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(30_000), np.round(rng.random(30_000) * 3)
    parts = [{"a": x, "b": y} for x, y in zip(pieces(a, 5), pieces(b, 5), strict=True)]
    result, _, s = search(parts, [0.3, 0.5])
    np.testing.assert_array_equal(result["a"], np.quantile(a, [0.3, 0.5]))
    np.testing.assert_array_equal(result["b"], np.quantile(b, [0.3, 0.5]))


def test_combine_is_exact_and_state_is_plain_data() -> None:
    rng = np.random.default_rng(5)
    values = rng.standard_normal(50_000)
    s = QuantileSearch(["v"], [0.5])
    state = s.init()
    for _ in range(2):  # the laws hold on the first pass and on a narrowed one
        p = [s.partial({"v": x}, state) for x in pieces(values, 3)]
        left = s.combine(s.combine(p[0], p[1]), p[2])
        right = s.combine(p[0], s.combine(p[2], p[1]))
        assert pickle.loads(pickle.dumps(left)).keys() == left.keys()
        for x, y in zip(left["v"], right["v"], strict=True):
            for key in ("counts", "min", "max"):
                np.testing.assert_array_equal(x[key], y[key])
        state, _ = s.update(left, state)
        assert pickle.loads(pickle.dumps(state)) == state


@settings(max_examples=60, deadline=None)
@given(values=arrays(np.float64, st.integers(0, 300),
                     elements=st.floats(allow_nan=True, allow_infinity=False, width=64)),
       k=st.integers(1, 6), seed=st.integers(0, 10),
       probs=st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_property_any_floats(values: np.ndarray, k: int, seed: int, probs: list[float]
                             ) -> None:
    values = np.clip(values, -1e300, 1e300)  # np.quantile itself overflows past that
    got, _ = quantiles_of(values, k, seed, probs, exact_max=20, bins=8)
    np.testing.assert_allclose(got, expected(values, probs), rtol=1e-12, atol=0)


def test_interpolation_matches_numpy_rules() -> None:
    values = np.array([1.0, 2.0, 4.0, 8.0, 1e300])
    probs = np.linspace(0, 1, 41)
    ranks = needed_ranks(5, probs)
    got = linear_quantiles({r: values[r] for r in ranks}, 5, probs)
    np.testing.assert_array_equal(got, np.quantile(values, probs))


def test_probabilities_and_bins_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QuantileSearch(["v"], [1.5])
    with pytest.raises(ValueError, match="power of two"):
        QuantileSearch(["v"], [0.5], bins=1000)


def test_approx_is_close_and_exact_when_small() -> None:
    rng = np.random.default_rng(6)
    values = rng.standard_normal(100_000)
    approx = ApproxQuantiles(["v"], [0.1, 0.5, 0.9])
    stats = tree_reduce([approx.partial({"v": x}) for x in pieces(values, 8)], approx.combine)
    ranks = np.searchsorted(np.sort(values), approx.result(stats)["v"]) / values.size
    np.testing.assert_allclose(ranks, [0.1, 0.5, 0.9], atol=0.02)
    assert approx.counts(stats) == {"v": 100_000}
    small = rng.standard_normal(101)
    one = tree_reduce([approx.partial({"v": x}) for x in pieces(small, 4, 0)], approx.combine)
    other = tree_reduce([approx.partial({"v": x}) for x in pieces(small, 3, 1)], approx.combine)
    assert approx.result(one)["v"][1] == approx.result(other)["v"][1] == np.median(small)
    empty = approx.partial({"v": np.array([np.nan])})
    assert np.all(np.isnan(approx.result(empty)["v"]))
