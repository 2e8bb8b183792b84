"""score: apply a saved model's fitted chain and add its predictions to the input."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from operators.base import Params, SchemaError, Transform, register, require_columns
from operators.chain import Chain

PREDICTION_COLUMNS = ("prediction", "probability")


class ScoreParams(Params):
    model: str = Field(description="registry reference: name (latest), name@latest, name@3, "
                                   "name@ALIAS; a model a save_model step of the same "
                                   "pipeline saves (name, name@latest or an alias it sets) "
                                   "is the version this run saves")


@register("score")
class Score(Transform):
    """Score rows with a saved model: adds `prediction` and, for classifiers, `probability`.

    ```yaml
    - op: score
      model: churn@3
    ```
    The runtime loads the model when the pipeline is planned (``bind``); input
    columns pass through unchanged. A model the same pipeline trains and saves is
    scored as the version this run saves, once saved (MLlib's fit, then transform):
    train on one `sample` of the rows and `evaluate` on the rest in one run.
    """

    float32 = True  # docs/float32.md

    Params = ScoreParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.chain: Chain | None = None
        self.model_info: dict[str, Any] = {}
        self.required: list[str] = []
        self.planned: list[pa.Field] | None = None

    def bind(self, chain: Chain, required: list[str], info: dict[str, Any]) -> None:
        """Attach the loaded model: its chain, the columns it needs, its registry info."""
        self.chain, self.required, self.model_info = chain, list(required), dict(info)
        self.planned = None

    def bind_planned(self, required: list[str], added: list[pa.Field],
                     info: dict[str, Any]) -> None:
        """Attach a model the pipeline saves before this step, as planned: the columns it
        will need and the prediction columns the plan knows of (the fitted chain is
        bound when the run gets here)."""
        self.chain, self.required, self.model_info = None, list(required), dict(info)
        self.planned = list(added)

    def _bound(self) -> Chain:
        if self.chain is None:
            raise SchemaError(f"model '{self.params.model}' is not loaded")
        return self.chain

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.required)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        planned = self.chain is None and self.planned is not None
        chain = None if planned else self._bound()
        require_columns(schema, self.required, f"column the model '{self.params.model}' needs:")
        if chain is None:
            added = list(self.planned or [])
        else:
            produced = chain.output_schema(schema)
            added = [produced.field(c) for c in PREDICTION_COLUMNS if c in produced.names]
            if not added:
                raise SchemaError(f"model '{self.params.model}' has no predicting step",
                                  hint="the saved chain must end in a model step")
        kept = pa.schema([f for f in schema if f.name not in PREDICTION_COLUMNS],
                         metadata=schema.metadata)
        for field in added:
            kept = kept.append(field)
        return kept

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        scored = self._bound().transform(part, xp)
        out = part.drop_columns([c for c in PREDICTION_COLUMNS if c in part.column_names])
        for name in PREDICTION_COLUMNS:
            if name in scored.column_names:
                out = out.append_column(scored.schema.field(name), scored.column(name))
        return out
