"""Local paths and ``file:`` URLs (standard library only: the run history reads its
folder without importing pyarrow or fsspec)."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from operators.errors import ParamError, SluiceError

GLOB_CHARS = re.compile(r"[*?\[]")


def glob_base(path: str) -> str:
    """The folder a read's files lie under: its path, or a glob's folder before its
    first wildcard ("" for a glob of the working directory's files)."""
    path = path.rstrip("/") or path
    return GLOB_CHARS.split(path, 1)[0].rsplit("/", 1)[0] if GLOB_CHARS.search(path) \
        else path


def local_path(path: str) -> str:
    """The absolute local path of a path or a ``file://`` URL, as RFC 8089 reads one:
    ``file:///abs/path`` and ``file://localhost/abs/path`` are ``/abs/path``, its
    percent-escapes decoded (``file:///tmp/a%20b`` is ``/tmp/a b``, as urllib and
    fsspec read it; a path is taken as it is); a URL naming another host is an error
    (its files are not this machine's)."""
    if not path.startswith("file://"):
        return os.path.abspath(path)
    host, _, inner = path.removeprefix("file://").partition("/")
    inner = unquote(inner)
    if host and host.lower() != "localhost":
        raise SluiceError(
            f"'{path}' names a file on host '{host}': sluice opens file:// URLs of this "
            "machine only (file:///path, or file://localhost/path)",
            hint=f"for this machine's /{inner}: file:///{inner}; for a file on "
                 f"'{host}': a URL of a store that reaches it (hdfs://, s3://...), or "
                 "mount it here and give its path")
    return os.path.abspath("/" + inner)


def this_machines(path: str | None) -> str | None:
    """A step's ``path`` as given, once it is known not to be a ``file://`` URL of
    another host (a ParamError naming the parameter: refused as the pipeline plans)."""
    if path is not None and path.startswith("file://"):
        try:
            local_path(path)
        except SluiceError as exc:
            raise ParamError(f"path: {exc.message}", hint=exc.hint) from None
    return path
