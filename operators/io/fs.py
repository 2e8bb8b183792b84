"""Paths and URLs to filesystems: local paths natively, everything else through fsspec.

``s3://``, ``gs://``, ``hdfs://``... work wherever fsspec has the protocol's
package installed (s3fs, gcsfs...). Credentials and endpoints come from the usual
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...) or ``storage_options``.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import errno
import glob
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from operators.errors import DataError, SluiceError, causes
from operators.io.paths import local_path
from operators.processes import process_gone, this_process


@dataclass(frozen=True)
class Location:
    """A resolved path: the pyarrow filesystem, the fsspec one, the path inside both."""

    url: str
    path: str
    filesystem: pafs.FileSystem
    remote_fs: Any  # a URL's fsspec filesystem; None for a local path
    local: bool

    @property
    def fsspec_fs(self) -> Any:
        """The fsspec filesystem: a URL's, or fsspec's local one (imported when a local
        path first needs it: most local runs never do)."""
        if self.remote_fs is not None:
            return self.remote_fs
        import fsspec

        return fsspec.filesystem("file")

    def join(self, *names: str) -> str:
        return "/".join([self.path.rstrip("/"), *names])


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve a path or URL to a Location; an unknown protocol gets a clear error."""
    if not is_url(path):
        local = local_path(path)
        return Location(path, local, pafs.LocalFileSystem(), None, True)
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        protocol = path.split("://", 1)[0]
        known = fsspec.available_protocols()
        close = difflib.get_close_matches(protocol, known, n=1, cutoff=0.5)
        hint = (f"did you mean '{close[0]}://'?" if protocol not in known and close else
                f"install the fsspec package for '{protocol}://' (s3fs for s3, gcsfs for gs)")
        raise SluiceError(f"cannot open '{path}': {exc}", hint=hint) from None
    except OSError as exc:
        problem = hadoop_problem(exc, path) or store_problem(exc, path)
        if problem is None:
            raise
        raise problem from None
    _forget_listings(fs, inner)
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Location(path, inner, handler, fs, False)


def hadoop_problem(exc: BaseException, path: str) -> SluiceError | None:
    """pyarrow's HDFS client (``hdfs://``) failing to load, as one error: what it needs
    and what to set (pyarrow's own message lists each of the ~80 folders it looked in for
    the JVM); None for another failure. What is missing is read from the environment
    (pyarrow says only "Prior attempt to load libhdfs failed" after a first failure)."""
    if not re.search(r"load (libjvm|libhdfs)", str(exc)):
        return None
    env = os.environ
    needs, sets = [], []
    java_home = env.get("JAVA_HOME")
    if not java_home or not glob.glob(os.path.join(java_home, "**", "libjvm.so"),
                                      recursive=True):
        needs.append("a Java runtime (" + (f"JAVA_HOME '{java_home}' has no libjvm.so"
                                           if java_home else "JAVA_HOME is not set") + ")")
        java = shutil.which("java")
        found = os.path.dirname(os.path.dirname(os.path.realpath(java))) if java else None
        sets.append("JAVA_HOME to a JDK's folder" + (f" (the java on PATH is {found}'s)"
                                                     if found else ""))
    folder = env.get("ARROW_LIBHDFS_DIR") or (
        os.path.join(env["HADOOP_HOME"], "lib", "native") if env.get("HADOOP_HOME") else None)
    if folder is None or not os.path.isfile(os.path.join(folder, "libhdfs.so")):
        needs.append("Hadoop's libhdfs.so (" + (f"'{folder}' has none" if folder else
                                               "neither HADOOP_HOME nor ARROW_LIBHDFS_DIR "
                                               "is set") + ")")
        sets.append("HADOOP_HOME to a Hadoop install (libhdfs.so in its lib/native), or "
                    "ARROW_LIBHDFS_DIR to the folder that has libhdfs.so")
    if not (env.get("CLASSPATH") or env.get("HADOOP_HOME") or shutil.which("hadoop")):
        needs.append("the Hadoop jars (CLASSPATH is not set)")
        sets.append("CLASSPATH to `hadoop classpath --glob`")
    first = (str(exc).strip().splitlines() or ["it did not load"])[0]
    return SluiceError(
        f"cannot open '{path}': pyarrow's HDFS client needs "
        + " and ".join([", ".join(needs[:-1]), needs[-1]] if len(needs) > 1 else needs)
        if needs else f"cannot open '{path}': pyarrow's HDFS client did not load ({first})",
        hint=("set " + "; ".join(sets) if sets else
              "check JAVA_HOME, HADOOP_HOME (or ARROW_LIBHDFS_DIR) and CLASSPATH")
        + "; or read it over webhdfs:// (HTTP: no JVM)")


# the base classes of the errors object-store clients raise besides OSError (credentials,
# endpoints, authentication), by module; counted only once their package is imported
_CLIENT_ERRORS = {
    "botocore.exceptions": ("BotoCoreError",),
    "google.auth.exceptions": ("GoogleAuthError",),
    "azure.core.exceptions": ("AzureError",),
}
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                   "DefaultCredentialsError", "RefreshError", "ClientAuthenticationError",
                   "CredentialUnavailableError")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServiceRequestError", "ReadTimeoutError")
_CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or "
          "storage_options: {anon: true} for a public bucket",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default "
          "login`, or storage_options: {token: anon} for a public bucket",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a connection "
          "string), or give them in storage_options",
}
_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "adl": "az"}


def store_errors(*base: type[BaseException]) -> tuple[type[BaseException], ...]:
    """``base`` and the error classes of the object-store clients already imported:
    an ``except store_errors(OSError) as exc`` clause also catches a missing credential
    or an unreachable endpoint (``store_problem`` then says which)."""
    import sys

    extra = []
    for module, names in _CLIENT_ERRORS.items():
        loaded = sys.modules.get(module)
        extra += [getattr(loaded, n) for n in names if loaded is not None and hasattr(loaded, n)]
    return (*base, *extra)


def store_problem(exc: BaseException, path: str) -> SluiceError | None:
    """A file system refusing sluice access to ``path`` (no credentials, access denied,
    an endpoint it cannot reach) as a user error naming the path and what to do; None
    for any other error. The exception's causes are looked at too."""
    protocol = path.split("://", 1)[0].lower() if is_url(path) else "file"
    protocol = _ALIASES.get(protocol, protocol)
    for error in causes(exc):
        name, text = type(error).__name__, str(error)
        first = (text.strip().splitlines() or [name])[0][:300]
        if name in _NO_CREDENTIALS or "Unable to locate credentials" in text:
            return SluiceError(
                f"no credentials to access '{path}': {first}",
                hint=_CREDENTIAL_HINTS.get(protocol, "give the file system's credentials in "
                                                     "storage_options or its environment"))
        if isinstance(error, PermissionError) or "AccessDenied" in text or \
                "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            return SluiceError(
                f"access denied to '{path}': {first}",
                hint="the credentials in use may not read or write there: check them, and "
                     "their permissions on the path")
        if name in _UNREACHABLE:
            return SluiceError(
                f"cannot reach the store of '{path}': {first}",
                hint="check the endpoint (AWS_ENDPOINT_URL or storage_options' "
                     "client_kwargs) and the network")
    return None


def _forget_listings(fs: Any, inner: str) -> None:
    """Drop what fsspec remembers of listings at and below ``inner``.

    fsspec shares one filesystem instance per protocol and options, and s3fs keeps
    directory listings (with file sizes) without expiry: in a long-lived process
    another process's output, or a rewritten ``_SUCCESS``, would be missed or read
    short. Resolving a path is where a read or a write starts, so it starts fresh.
    """
    fixed = re.split(r"[*?\[]", inner, maxsplit=1)[0]  # a glob: all below its fixed part
    with contextlib.suppress(Exception):  # a cache is an optimisation, never an error
        fs.invalidate_cache(fixed.rstrip("/") or fixed)
        cache = getattr(fs, "dircache", None)
        if cache is not None:
            prefix = fixed if fixed != inner else inner.rstrip("/") + "/"
            for key in [k for k in list(cache) if k.startswith(prefix)]:
                cache.pop(key, None)


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


@contextlib.contextmanager
def written_whole(path: str | os.PathLike[str], durable: bool = True) -> Iterator[str]:
    """A fresh path beside local ``path`` for the block to write; renamed over ``path``
    when the block ends without error (a reader sees the old file or the new, never
    part of one), removed when it fails or is interrupted.

    ``durable``: the new contents are flushed to disk before the rename, and the rename
    after it, so that once the block has ended an OS crash or a power cut leaves the new
    file whole, not empty or the old one (two fsyncs, about a millisecond: right for
    records, models and state; bulk data is durable on request, as write_parquet's)."""
    folder, name = os.path.split(os.fspath(path))
    staging = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        yield staging
        if durable:
            _fsync(staging, os.O_RDONLY)
        os.replace(staging, path)
        if durable:
            fsync_dir(folder or os.curdir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


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


def remove(path: str) -> None:
    """Delete a file or a directory tree, whichever ``path`` is; absent is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def fsync_tree(root: str) -> None:
    """Flush every file and directory under ``root`` to disk, so that a rename published
    after it cannot survive a power cut that its contents did not."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(os.path.join(folder, name), os.O_RDONLY)
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        # some filesystems cannot fsync a directory; the data files were flushed
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# Staging directories are claimed with an advisory lock (flock) held by the process
# that writes them, from creation until publish or abort. The kernel drops the lock
# when that process dies, however it dies (SIGKILL included), so an unlocked staging
# directory is the debris of a dead run and any later run may delete it; a live
# writer's directory, however old, is never touched.
try:
    import fcntl
except ImportError:  # not POSIX: no locks, so staging debris is never swept
    fcntl = None  # type: ignore[assignment]


def claim_dir(path: str) -> int | None:
    """Create directory ``path`` (it must not exist) and lock it for this process.

    Returns the descriptor holding the lock (pass it to ``release_dir``), or None where
    the filesystem has no locks (then ``sweep_stale`` never deletes it either).
    """
    while True:
        os.mkdir(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # swept between mkdir and open (it was not locked yet): again
        if fcntl is None:
            os.close(fd)
            return None
        try:
            # blocks only while a sweeper that found the directory unlocked deletes it
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return None
        if _same_inode(path, fd):
            return fd
        os.close(fd)  # swept between mkdir and lock: create it again


def release_dir(fd: int | None) -> None:
    """Drop the lock ``claim_dir`` took."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def sweep_stale(parent: str, prefix: str, pattern: re.Pattern[str] | None = None) -> list[str]:
    """Delete the entries of ``parent`` named ``prefix*`` (and matching ``pattern``) that no
    live process holds locked; returns the paths deleted."""
    if fcntl is None:
        return []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)
                 and (pattern is None or pattern.fullmatch(n))]
    except OSError:
        return []
    swept = []
    for name in names:
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held by a live writer, or locks unsupported: keep it
            if _same_inode(path, fd):
                remove(path)
                swept.append(path)
        finally:
            os.close(fd)
    return swept


def _same_inode(path: str, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def modified_at(info: dict[str, Any]) -> float | None:
    """When an fsspec listing's file was last written (seconds since the epoch), as its
    file system says it (``mtime``, S3's ``LastModified``...); None where it does not."""
    from datetime import datetime

    when = info.get("mtime", info.get("LastModified", info.get("created")))
    if isinstance(when, datetime):
        return when.timestamp()
    return float(when) if isinstance(when, int | float) else None


STORE_LOCK_STALE = 600.0
"""Seconds after which a lock object on a store counts as its dead writer's: a commit
holds it for a manifest's read and write (and the footers of replaced files)."""


def is_store_lock(name: str) -> bool:
    """Whether the object ``name`` (a path) is a lock of ``locked_on_store`` or a claim on
    one: what an overwrite that deletes the objects its manifest does not list keeps (a
    bucket root's lock is inside the output, and its holder may be another writer)."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and ".sluice-lock" in base


@contextlib.contextmanager
def locked_on_store(fs: Any, target: str, stale: float | None = None) -> Iterator[None]:
    """Hold a lock on ``target`` of an object store for the block: a lock object beside
    it (``.<name>.sluice-lock``) created exclusively (fsspec's ``"xb"``: S3's
    ``If-None-Match: *``, the registry's version claims use the same), deleted after. A
    writer finding it waits; one whose process is gone from this host, or older than
    ``stale`` seconds, is a dead writer's and is taken over (two takers at once:
    ``take_over_lock`` lets one delete it). A store with no exclusive create is written
    without the lock, as before there was one."""
    import json

    stale = STORE_LOCK_STALE if stale is None else stale
    folder, _, name = target.rstrip("/").rpartition("/")
    # beside it, as locally; a bucket itself: inside it (readers skip hidden names)
    lock = f"{folder}/.{name}.sluice-lock" if folder else f"{name}/.sluice-lock"
    owner = uuid.uuid4().hex
    delay = 0.02
    while True:
        note = json.dumps({"owner": owner, "at": time.time(), **this_process()}).encode()
        try:
            with fs.open(lock, "xb") as f:
                f.write(note)
            break
        except FileExistsError:
            try:
                held = fs.cat_file(lock)
            except FileNotFoundError:
                continue  # released between the two calls
            if (_age(held) > stale or holder_gone(held)) and take_over_lock(
                    fs, lock, held, stale):
                continue
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except (NotImplementedError, ValueError):
            yield  # no exclusive create on this store
            return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # ours still (not taken over as stale)
            if json.loads(fs.cat_file(lock)).get("owner") == owner:
                fs.rm(lock)


def _age(note: bytes) -> float:
    """Seconds since a lock's (or a claim's) note was written; infinite for no note a
    live writer leaves (half written, or foreign)."""
    import json

    try:
        return time.time() - float(json.loads(note)["at"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def holder_gone(note: bytes) -> str | None:
    """Where a lock's note (``this_process``) names a process on this host that is gone,
    the reason, said so (a writer killed in its commit: the next one need not wait for
    the lock to go stale); else None."""
    import json

    try:
        holder = json.loads(note)
    except ValueError:
        return None
    if isinstance(holder, dict) and process_gone(holder) is True:
        return f"process {holder['pid']} on this host is gone"
    return None


def take_over_lock(fs: Any, lock: str, note: bytes, stale: float) -> bool:
    """Delete the dead writer's ``lock`` that held ``note``, unless another writer is
    taking it over: whether this one did. Its takers race to create a claim named by the
    note, exclusively; the one that makes it deletes the lock only if it holds that note
    still (a taker that read it before another took it over and locked would delete the
    new holder's lock: both would write). A claim left by a taker that died is cleared
    once stale."""
    import hashlib
    import json

    claim = f"{lock}.{hashlib.sha256(note).hexdigest()[:16]}"
    try:
        with fs.open(claim, "xb") as f:
            f.write(json.dumps({"at": time.time()}).encode())
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if _age(fs.cat_file(claim)) > stale:
                fs.rm(claim)
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            if fs.cat_file(lock) == note:
                fs.rm(lock)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(claim)
    return True


@contextlib.contextmanager
def locked_beside(target: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on local ``target`` (a hidden lock file beside it,
    ``.<name>.sluice-lock``) for the block: the writers that publish into one output take
    turns. The kernel drops the lock when its process dies, however it dies. A writer that
    waits more than ``timeout`` seconds gives up with an error naming the target."""
    if fcntl is None:
        yield
        return
    folder, name = os.path.split(target.rstrip("/"))
    fd = os.open(os.path.join(folder, f".{name}.sluice-lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataError(
                        f"output '{target}' is held by another run's commit for more than "
                        f"{timeout:.0f}s", hint="wait for that run, or stop it") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # drops the lock
