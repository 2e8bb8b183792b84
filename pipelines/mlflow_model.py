"""A sluice model version as an MLflow model (``sluice models export --mlflow``), so that
MLflow's tools take it: ``mlflow.pyfunc.load_model("models:/churn/3")``, its
``spark_udf``, ``mlflow models serve``, a registry's stages and approvals.

The MLflow model is a ``python_function`` model whose loader is this module
(``loader_module``: no pickle, as sluice's own models hold none): its data is the version's
``model.json`` and ``arrays.npz`` in a one-version registry folder, and ``predict`` scores a
pandas DataFrame (or a pyarrow Table, a dict of columns, a list of row dicts) as
``sluice serve`` does, answering the model's columns: ``prediction``, and ``probability`` for
a classifier (a list per row for several classes). Where it is loaded, sluice must be
installed (the model's requirements name this version of it).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

DATA = "sluice_model"
"""The MLflow model's data folder: a registry of the one version."""


class SluiceModel:
    """What ``mlflow.pyfunc.load_model`` gives for a sluice model (its
    ``_model_impl``): ``predict`` answers the model's columns of each row."""

    def __init__(self, path: str):
        from pipelines.serving import ScoringModel
        from pipelines.store import ModelStore

        store = ModelStore(path)
        (name,) = store.names()
        self.model = ScoringModel(store.load(name), path=path)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The model's columns for each row of ``model_input`` (``params``:
        ``contributions``, ``contributions_by``, ``threshold`` as ``sluice serve`` takes
        them)."""
        options = {k: v for k, v in (params or {}).items() if v is not None}
        scored = self.model.score(model_input, **options)
        outputs = list(self.model.outputs(options.get("contributions", False),
                                          options.get("contributions_by", "features")))
        if hasattr(scored, "columns") and hasattr(scored, "loc"):  # pandas
            return scored[outputs]
        if hasattr(scored, "select"):  # a pyarrow Table
            return scored.select(outputs)
        if isinstance(scored, dict):
            return {k: scored[k] for k in outputs}
        return [{k: row[k] for k in outputs} for row in scored]

    def unwrap_python_model(self) -> Any:
        return self.model


def _load_pyfunc(data_path: str) -> SluiceModel:
    """MLflow's entry (``loader_module``): the model in ``data_path``."""
    return SluiceModel(data_path)


def _copy_version(source: str, name: str, version: int, into: Path) -> None:
    """A version's two files (in its folder, or under its URL on an object store) into
    ``into`` as a registry of that one version."""
    from operators.io.fs import resolve

    folder = into / name / str(version)
    folder.mkdir(parents=True)
    location = resolve(source)
    for file in ("model.json", "arrays.npz"):
        with location.fsspec_fs.open(location.join(file), "rb") as f:
            (folder / file).write_bytes(f.read())


def present(source: str) -> bool:
    """Whether the version in ``source`` (its folder or URL) is still there (a version
    pruned since the run that saved it is not)."""
    from operators.io.fs import resolve

    location = resolve(source)
    return bool(location.fsspec_fs.exists(location.join("model.json")))


def save(source: str, name: str, version: int, path: Path) -> None:
    """The MLflow model of the sluice model version in ``source`` (its folder or URL),
    written to ``path``."""
    import mlflow.pyfunc
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from pipelines.package import _sluice_version

    # MLflow passes ``predict`` the params its signature declares, and drops any other
    params = ParamSchema([ParamSpec("contributions", "boolean", False),
                          ParamSpec("contributions_by", "string", "features"),
                          ParamSpec("threshold", "double", None)])

    with tempfile.TemporaryDirectory() as scratch:
        registry = Path(scratch) / DATA
        _copy_version(source, name, version, registry)
        with warnings.catch_warnings():  # the rows' columns are the model's own business
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            mlflow.pyfunc.save_model(
                str(path), loader_module=__name__, data_path=str(registry),
                pip_requirements=[f"sluice=={_sluice_version()}"],
                signature=ModelSignature(params=params),
                metadata={"sluice_model": f"{name}@{version}"})


def log(client: Any, run_id: str, source: str, name: str, version: int,
        artifact_path: str) -> str:
    """Log the sluice model version in ``source`` as an MLflow model under a run's
    ``artifact_path``; its artifact URI."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model"
        save(source, name, version, path)
        client.log_artifacts(run_id, str(path), artifact_path)
    return artifact_uri(client, run_id, artifact_path)


def artifact_uri(client: Any, run_id: str, artifact_path: str) -> str:
    """Where a run's artifact at ``artifact_path`` lives (a model version's source)."""
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def register(client: Any, name: str, source: str, run_id: str, ref: str
             ) -> tuple[str, bool]:
    """The version of the registered model ``name`` holding the sluice model ``ref``:
    one already tagged with it, else a new one from ``source``; its number, and whether
    it was there."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="a sluice model")
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("sluice.model") == ref:
            return str(version.version), True
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={"sluice.model": ref})
    return str(version.version), False

