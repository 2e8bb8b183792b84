"""Paths and URLs to filesystems: local paths natively, everything else through fsspec.

``s3://``, ``gs://``, ``hdfs://``... work wherever fsspec has the protocol's
package installed (s3fs, gcsfs...). Credentials and endpoints come from the usual
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...) or ``storage_options``.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs

from operators.base import SluiceError


@dataclass(frozen=True)
class Location:
    """A resolved path: the pyarrow filesystem, the fsspec one, the path inside both."""

    url: str
    path: str
    filesystem: pafs.FileSystem
    fsspec_fs: Any
    local: bool

    def join(self, *names: str) -> str:
        return "/".join([self.path.rstrip("/"), *names])


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve a path or URL to a Location; an unknown protocol gets a clear error."""
    if not is_url(path):
        local = os.path.abspath(path.removeprefix("file://"))
        return Location(path, local, pafs.LocalFileSystem(), fsspec.filesystem("file"), True)
    try:
        fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        protocol = path.split("://", 1)[0]
        raise SluiceError(
            f"cannot open '{path}': {exc}",
            hint=f"install the fsspec package for '{protocol}://' (s3fs for s3, gcsfs for gs)",
        ) from None
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Location(path, inner, handler, fs, False)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_libc = None


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """Linux renameat2; returns False where the kernel or filesystem lacks it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - probe that the symbol exists
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    rc = _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with FileExistsError if dst exists."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists", dst) from None
        raise
    # no renameat2: a directory rename onto a non-empty directory fails; onto an
    # existing empty one or a file it would succeed, so check first (small race)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", dst)
    os.rename(src, dst)


def exchange(src: str, dst: str) -> bool:
    """Swap two existing paths atomically; False where the platform cannot."""
    return _renameat2(src, dst, _RENAME_EXCHANGE)
