"""Paths and URLs a step is given: an unknown protocol says what to do; a file:// URL
is this machine's file, or refused."""

from __future__ import annotations

import os

import pytest

from operators.errors import SluiceError
from operators.io.fs import resolve
from operators.io.paths import local_path


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


@pytest.mark.parametrize(("url", "path"), [
    ("file:///data/x.parquet", "/data/x.parquet"),
    ("file://localhost/data/x.parquet", "/data/x.parquet"),  # RFC 8089: this machine
    ("file://LocalHost/data/", "/data"),
    ("relative/x", os.path.abspath("relative/x")),
])
def test_a_file_url_of_this_machine_is_its_local_path(url: str, path: str) -> None:
    assert local_path(url) == path
    assert resolve(url).path == path and resolve(url).local


def test_a_file_url_of_another_host_is_refused_not_read_as_a_relative_path() -> None:
    for call in (local_path, resolve):
        with pytest.raises(SluiceError) as caught:
            call("file://otherhost/data/x")
        assert caught.value.message == (
            "'file://otherhost/data/x' names a file on host 'otherhost': sluice opens "
            "file:// URLs of this machine only (file:///path, or file://localhost/path)")
        assert caught.value.hint.startswith("for this machine's /data/x: file:///data/x; ")
