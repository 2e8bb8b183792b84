"""Cases for select_features (each test and rule)."""

from __future__ import annotations

from operators.testing.cases.models import classification_table, regression_table
from operators.testing.cases.naive_bayes import count_features_table
from operators.testing.kit import case


def _cases() -> None:
    case("select_features", {"label": "y", "k": 2}, classification_table, id="anova-k")
    case("select_features", {"label": "y", "weight": "w", "percentile": 50,
                             "features": ["x1", "x2", "x3"]},
         regression_table, id="f-regression-percentile-weighted", rtol=1e-9, atol=1e-12)
    case("select_features", {"label": "y", "test": "chi2", "fdr": 0.5},
         count_features_table, id="chi2-fdr")
    case("select_features", {"features": ["x1", "x2", "w"], "min_variance": 0.5},
         regression_table, id="variance")


_cases()
