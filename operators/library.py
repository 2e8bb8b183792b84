"""Where each built-in operator is defined, by the name a pipeline gives it.

``lookup`` imports an operator's module when a pipeline names it, not every operator
module at once: most of a short run's start-up was importing operators it did not use.
A built-in's fitted transform (``one_hot.fitted``) is defined beside its operator.
``load_all`` imports them all, so that ``@register`` runs for every one (``sluice ops``,
the docs). tests/operators/test_library.py checks that ``MODULES`` names every operator
the packages below register, each where it is defined.
"""

from __future__ import annotations

import importlib
import pkgutil

PACKAGES = ("operators.io", "operators.features", "operators.models", "operators.score",
            "operators.evaluate")

MODULES: dict[str, str] = {
    "aggregate": "operators.features.aggregate",
    "bucketize": "operators.features.encode",
    "calibrate": "operators.models.calibrate",
    "cast": "operators.features.columns",
    "decision_tree": "operators.models.forest",
    "deduplicate": "operators.features.deduplicate",
    "derive": "operators.features.derive",
    "drift": "operators.evaluate.drift",
    "drop": "operators.features.columns",
    "evaluate": "operators.evaluate.evaluate",
    "evaluate_clusters": "operators.evaluate.clusters",
    "expect": "operators.features.rows",
    "filter": "operators.features.rows",
    "gaussian_mixture": "operators.models.gaussian_mixture",
    "gradient_boosted_trees": "operators.models.boosted_trees",
    "hash_encode": "operators.features.encode",
    "impute": "operators.features.impute",
    "isolation_forest": "operators.models.isolation_forest",
    "join": "operators.features.join",
    "kmeans": "operators.models.kmeans",
    "linear_regression": "operators.models.linear",
    "logistic_regression": "operators.models.logistic",
    "max_abs_scale": "operators.features.scale",
    "min_max_scale": "operators.features.scale",
    "mlp": "operators.models.mlp",
    "naive_bayes": "operators.models.naive_bayes",
    "normalize": "operators.features.scale",
    "one_hot": "operators.features.one_hot",
    "pca": "operators.features.pca",
    "promote": "operators.evaluate.promote",
    "random_forest": "operators.models.forest",
    "read_parquet": "operators.io.parquet",
    "rename": "operators.features.columns",
    "robust_scale": "operators.features.scale",
    "repartition": "operators.features.repartition",
    "sample": "operators.features.rows",
    "save_model": "operators.io.model",
    "score": "operators.score.score",
    "select": "operators.features.columns",
    "select_features": "operators.features.select_features",
    "sort": "operators.features.sort",
    "standard_scale": "operators.features.scale",
    "target_encode": "operators.features.target_encode",
    "top": "operators.features.top",
    "union": "operators.features.union",
    "vector_columns": "operators.features.vectors",
    "vectorize_text": "operators.features.text",
    "window": "operators.features.window",
    "write_parquet": "operators.io.parquet",
}


def load(name: str) -> None:
    """Import the module that defines the built-in operator ``name`` or its fitted
    transform (``name.fitted``); nothing for a name that is not a built-in's."""
    module = MODULES.get(name.removesuffix(".fitted"))
    if module is not None:
        importlib.import_module(module)


def load_all() -> None:
    """Import every built-in operator module."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")
