"""The log-link losses (Poisson, gamma, Tweedie half deviances) that gradient-boosted trees
and linear regression share: their parameters, the labels they accept, and each row's
loss, gradient and hessian in the raw score (the log of the prediction).

The losses are scikit-learn's ``HalfPoissonLoss``, ``HalfGammaLoss`` and
``HalfTweedieLoss(power)`` without their terms of the label alone (which move no
minimiser): ``exp(z) - y z``, ``z + y exp(-z)`` and ``exp((2-p) z)/(2-p) - y exp((1-p)
z)/(1-p)`` at the raw score ``z``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from operators.base import DataError, ParamError
from operators.expressions import quote_name

LOG_LINK = ("poisson", "gamma", "tweedie")
"""The losses whose prediction is the exp of the raw score."""

LOSS_DESCRIPTION = ("poisson (counts), gamma (positive amounts) or tweedie (amounts with "
                    "many zeros, such as claims: `tweedie_power`), these three with a log "
                    "link: the prediction is the exp of")


def tweedie_power_field() -> Any:
    """The ``tweedie_power`` parameter of a model with ``loss: tweedie``."""
    return Field(1.5, gt=1.0, lt=2.0,
                 description="the variance power of loss: tweedie, between Poisson (1) and "
                             "gamma (2) (XGBoost's and LightGBM's tweedie_variance_power, "
                             "scikit-learn's power)")


def check_tweedie_power(params: Any) -> None:
    """A ParamError when ``tweedie_power`` is set and the loss is not tweedie."""
    if "tweedie_power" in params.model_fields_set and params.loss != "tweedie":
        raise ParamError(f"tweedie_power: {params.tweedie_power:g} is the power of "
                         f"loss: tweedie, and the loss is "
                         f"{params.loss or 'squared_error (the default)'}",
                         hint="add loss: tweedie, or leave tweedie_power out")


def deviance_metric(loss: str, power: float) -> dict[str, Any] | None:
    """The deviance metric a model of ``loss`` minimises (its validation metric and what
    promote and tune compare such models by); None for a loss without a log link."""
    if loss not in LOG_LINK:
        return None
    out: dict[str, Any] = {"metric": f"{loss}_deviance"}
    if loss == "tweedie":
        out["tweedie_power"] = power
    return out


LARGEST_GRADIENT = 1e100
"""The largest label ** (2 - power) a fit takes (power 1 for poisson, 2 for gamma): a
row's gradient grows as it, and sums of them, squared, stay far inside float64 (past
some 1e150 they overflowed, and the fit stopped at zero coefficients, no split)."""


def start_score(loss: str, low: float, high: float, mean: float, label: str,
                power: float) -> float:
    """The best constant raw score, the log of the labels' (weighted) mean; a DataError
    when ``low`` (their minimum) or ``mean`` is outside what ``loss`` accepts, or
    ``high`` (their maximum) past what its gradients can sum."""
    if low < 0 or (loss == "gamma" and low <= 0) or not mean > 0:
        need = "positive" if loss == "gamma" else "non-negative, not all zero"
        raise DataError(
            f"loss: {loss} needs {need} labels; '{label}' has "
            f"{low:g} (its mean is {mean:g})",
            hint="filter those rows out, or choose another loss")
    growth = {"poisson": 1.0, "gamma": 0.0}.get(loss, 2.0 - power)
    if growth > 0 and not high ** growth <= LARGEST_GRADIENT:
        raise DataError(
            f"label column '{label}' has values up to {high:g}, too large for loss: "
            f"{loss} (its gradients' sums would overflow float64; labels up to "
            f"{LARGEST_GRADIENT ** (1 / growth):g} fit)",
            hint=f"derive the label in larger units, e.g. \"{quote_name(label)} / "
                 f"1e{math.ceil(math.log10(high))}\", and scale the predictions back"
                 # gamma takes positive labels only: no choice for labels with zeros
                 + ("; or choose loss: gamma, which fits labels of any size" if low > 0
                    else ""))
    return math.log(mean)


def half_deviance(raw: Any, y: Any, loss: str, power: float, xp: Any) -> Any:
    """Each row's half deviance at raw score ``raw`` (elementwise), up to terms of the
    label alone."""
    if loss == "poisson":
        return xp.exp(raw) - y * raw
    if loss == "gamma":
        return raw + y * xp.exp(-raw)
    return (xp.exp((2.0 - power) * raw) / (2.0 - power)
            - y * xp.exp((1.0 - power) * raw) / (1.0 - power))


def half_deviance_derivatives(raw: Any, y: Any, loss: str, power: float, xp: Any
                              ) -> tuple[Any, Any]:
    """The first and second derivatives of ``half_deviance`` in ``raw`` (elementwise);
    both losses' second derivatives are positive for 1 < power < 2."""
    if loss == "poisson":  # exp(raw) - y raw
        mean = xp.exp(raw)
        return mean - y, mean
    if loss == "gamma":  # raw + y exp(-raw)
        ratio = y * xp.exp(-raw)
        return 1.0 - ratio, ratio
    # exp((2 - p) raw) / (2 - p) - y exp((1 - p) raw) / (1 - p)
    low, high = y * xp.exp((1.0 - power) * raw), xp.exp((2.0 - power) * raw)
    return high - low, (2.0 - power) * high - (1.0 - power) * low
