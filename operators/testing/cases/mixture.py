"""Cases for gaussian_mixture, and score with a bound Gaussian mixture."""

from __future__ import annotations

from functools import cache

from operators.chain import Chain
from operators.models.gaussian_mixture import GaussianMixture, GaussianMixtureFitted
from operators.testing.cases.models import blobs_table
from operators.testing.kit import case, fit, split


@cache
def _mixture() -> GaussianMixtureFitted:
    model = fit(GaussianMixture(k=3, features=["x1", "x2", "x3"], covariance="diag", seed=1),
                split(blobs_table(seed=9), 3))
    assert isinstance(model, GaussianMixtureFitted)
    return model


def _cases() -> None:
    case("gaussian_mixture", {"k": 3}, blobs_table, id="full", rtol=1e-9, atol=1e-9)
    case("gaussian_mixture", {"k": 3, "weight": "w", "covariance": "diag", "seed": 4,
                              "init": "kmeans"},
         blobs_table, id="diag-weighted-kmeans", rtol=1e-9, atol=1e-9)
    case("gaussian_mixture", {"k": 2, "features": ["x1", "x2"], "covariance": "tied",
                              "init": [[0.0, 0.0], [5.0, 5.0]], "tol": 1e-6},
         blobs_table, id="tied-given-means", rtol=1e-9, atol=1e-9)
    case("gaussian_mixture", {"k": 3, "weight": "w", "covariance": "spherical",
                              "validation_fraction": 0.25, "seed": 5},
         blobs_table, id="spherical-validation", rtol=1e-9, atol=1e-9)
    case("gaussian_mixture", {"k": 3, "n_init": 3, "init": "kmeans", "covariance": "diag",
                              "seed": 2}, blobs_table, id="n-init", rtol=1e-9, atol=1e-9)
    case("gaussian_mixture", {"k": 1, "features": ["x1", "x2"]}, blobs_table, id="one",
         rtol=1e-9, atol=1e-9)
    case("score", {"model": "m"}, blobs_table, id="gaussian-mixture",
         prepare=lambda op: op.bind(Chain([_mixture()]), _mixture().features,
                                    {"name": "m", "version": 1}))


_cases()
