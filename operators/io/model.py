"""save_model: the runtime stores the fitted chain leading to this step in the registry."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from operators.base import Action, Params, register

# what names a model in the registry, and what names one of its versions (an alias)
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
ALIAS = r"[A-Za-z][A-Za-z0-9_-]*"
ALIAS_RULE = "a letter, then letters, digits, '_' or '-' (not 'latest')"
MODEL_NAME_RULE = "a letter or digit, then letters, digits, '_', '.' or '-' (ASCII only)"


def is_alias(name: str) -> bool:
    """Whether ``name`` can be an alias (``latest`` always means the newest version)."""
    return name.casefold() != "latest" and re.fullmatch(ALIAS, name) is not None


class SaveModelParams(Params):
    name: str = Field(description="registry name; each save adds version 1, 2, ...")
    description: str | None = Field(None, description="free text kept in model.json")
    aliases: list[str] = Field(
        default_factory=list,
        description="aliases to point at the saved version (e.g. [candidate]); score with "
                    "name@alias")
    profile: bool = Field(True, description="keep a profile of the training rows' input "
                                            "columns (one pass over a sample of them), "
                                            "what `drift` compares scored rows with")

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if re.fullmatch(MODEL_NAME, value) is None:
            raise ValueError(f"a model name is {MODEL_NAME_RULE}")
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not is_alias(alias):
                raise ValueError(f"'{alias}' cannot be an alias: {ALIAS_RULE}")
        return value


@register("save_model")
class SaveModel(Action):
    """Save the fitted chain from the first step after the read up to here as a new version.

    ```yaml
    - op: save_model
      name: churn          # data/models/churn/<version>/model.json + arrays.npz
      aliases: [candidate] # optional: churn@candidate now names this version
    ```
    """

    Params = SaveModelParams
