"""save_model: the runtime stores the fitted chain leading to this step in the registry."""

from __future__ import annotations

from pydantic import Field

from operators.base import Action, Params, register


class SaveModelParams(Params):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="registry name; each save adds version 1, 2, ...")
    description: str | None = Field(None, description="free text kept in model.json")


@register("save_model")
class SaveModel(Action):
    """Save the fitted chain from the first step after the read up to here as a new version.

    ```yaml
    - op: save_model
      name: churn          # data/models/churn/<version>/model.json + arrays.npz
    ```
    """

    Params = SaveModelParams
