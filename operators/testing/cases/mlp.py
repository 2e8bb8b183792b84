"""Cases for mlp: L-BFGS binary, multiclass and regression (small networks that converge,
so other partitionings reach the same minimum), and adam (not partition-invariant)."""

from __future__ import annotations

from operators.testing.cases.models import (
    classification_table,
    regression_table,
    string_multiclass_table,
)
from operators.testing.kit import case

ADAM_NOT_INVARIANT = ("adam averages per-partition mini-batch steps once per epoch: another "
                      "partitioning gives another (equally good) model, by design; same "
                      "partitioning -> same model is tested in tests/operators/test_mlp.py")


# an L-BFGS net's probabilities in float32 against float64's at the same minimum: the
# tolerance docs/float32.md states for them (measured up to 1e-4; 4.3e-5 for the weighted
# multiclass case on one machine, 1.6e-5 on another: float32 sums differ by CPU)
LBFGS_FLOAT32 = {"float32_atol": 1e-3}
# tol 1e-9 asks more than the loss can resolve: the last iterations move it by rounding
# alone, so how many there are (and the loss curve's length) follows the summation order
ROUNDING = ("tol 1e-9 ends in iterations that change the loss by rounding only, as many "
            "as the summation order makes")
LBFGS_VARY = {"iterations": ROUNDING, "loss_curve": ROUNDING}


def _cases() -> None:
    case("mlp", {"label": "y", "hidden": [4], "activation": "tanh", "l2": 0.01, "tol": 1e-9,
                 "max_iter": 500},
         classification_table, id="lbfgs-binary", rtol=1e-6, atol=1e-8, vary=LBFGS_VARY,
         **LBFGS_FLOAT32)
    case("mlp", {"label": "y", "hidden": [5, 3], "activation": "tanh", "weight": "w",
                 "l2": 0.01, "tol": 1e-9, "max_iter": 500, "validation_fraction": 0.2},
         string_multiclass_table, id="lbfgs-multiclass-weighted", rtol=1e-6,
         atol=1e-8, vary=LBFGS_VARY, **LBFGS_FLOAT32)
    case("mlp", {"label": "y", "features": ["x1", "x2", "x3"], "hidden": [3],
                 "activation": "sigmoid", "l2": 0.01, "tol": 1e-9, "max_iter": 500},
         regression_table, id="lbfgs-regression", rtol=1e-6, atol=1e-8,
         vary=LBFGS_VARY)
    case("mlp", {"label": "y", "hidden": [4], "solver": "adam", "max_iter": 60,
                 "batch_size": 32, "learning_rate": 0.01, "early_stopping": True,
                 "n_iter_no_change": 2,
                 "validation_fraction": 0.2},
         lambda: classification_table(classes=3, seed=4), id="adam-early-stopping",
         rtol=1e-9, atol=1e-12, skip={"partition_invariance": ADAM_NOT_INVARIANT})


_cases()
