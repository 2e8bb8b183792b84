"""Paths and URLs a step is given: an unknown protocol says what to do."""

from __future__ import annotations

import pytest

from operators.errors import SluiceError
from operators.io.fs import resolve


@pytest.mark.parametrize(("url", "hint"), [
    ("s4://bucket/data", "did you mean 's3://'?"),            # a typo of a known one
    ("gss://bucket/data", "did you mean 'gs://'?"),
    ("zzz://bucket/data", "install the fsspec package for 'zzz://'"),  # nothing near
])
def test_an_unknown_protocol_gets_the_closest_or_what_to_install(url: str, hint: str) -> None:
    with pytest.raises(SluiceError) as caught:
        resolve(url)
    assert caught.value.message.startswith(f"cannot open '{url}'")
    assert caught.value.hint.startswith(hint)
