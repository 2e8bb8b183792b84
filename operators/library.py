"""Imports every built-in operator module so that their ``@register`` runs."""

from __future__ import annotations

import importlib
import pkgutil

PACKAGES = ("operators.io", "operators.features", "operators.models", "operators.score",
            "operators.evaluate")

for _package_name in PACKAGES:
    _package = importlib.import_module(_package_name)
    for _module in pkgutil.iter_modules(_package.__path__):
        if not _module.name.startswith("_"):
            importlib.import_module(f"{_package_name}.{_module.name}")
