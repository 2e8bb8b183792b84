"""`sluice package`: one archive and one entry script that take a pipeline to a Spark cluster.

    sluice package --out dist          # or: python -m pipelines.package --out dist
    spark-submit --master spark://HOST:7077 --py-files dist/sluice.zip \\
        dist/sluice_submit.py run conf/pipelines/churn_train.yaml

The workers (and the spark-submit driver) need only Python, pyspark, numpy and
pyarrow. The archive holds sluice's own code and every package it depends on
besides those (pydantic, PyYAML, click, fsspec, lark, datasketches...), taken from
the environment that builds it, but SciPy: the tree histograms use it where the
cluster has it, and NumPy's bincount (the same sums, about twice the time) where not.

Some of those packages are compiled (pydantic_core, datasketches, PyYAML's
``_yaml``), and Python cannot import compiled modules from a zip on ``sys.path``.
So the first thing sluice code does on the driver (the entry script) and on every
executor (``run_in_executor``, the function shipped to ``mapInArrow``) is
``ensure_importable()``: it finds the archive on ``sys.path`` (spark-submit and
``addPyFile`` put it there), extracts it once per machine and archive content into
a private temporary directory, and puts that directory first on ``sys.path``; only
then are operators unpickled. The compiled files come from the building machine,
so the cluster must run the same Python minor version on the same platform
(``sluice-archive.json`` in the archive says which; a mismatch is a clear error).

This module imports only the standard library at the top: it is the first sluice
module an executor imports, possibly from the zip, before anything else can be.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import pickle
import re
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHIVE_NAME = "sluice.zip"
ENTRY_NAME = "sluice_submit.py"
MARKER = "sluice-archive.json"
FORMAT = "sluice-archive/1"
# what a bare Spark node has: these stay out of the archive; and SciPy (over 100 MB,
# and only the tree histograms' kernel: where a node lacks it, NumPy's bincount gives
# the same sums, more slowly)
PROVIDED = frozenset({"pyarrow", "numpy", "pyspark", "py4j", "scipy"})
SLUICE_PACKAGES = ("pipelines", "operators")
_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same archive

ENTRY_SCRIPT = '''\
"""Run sluice under spark-submit (written by `sluice package`).

    spark-submit --master spark://HOST:7077 --py-files sluice.zip sluice_submit.py \\\\
        run PIPELINE.yaml [--param k=v ...] [--models DIR] [--runs DIR]

`run` uses the Spark engine unless --engine says otherwise; the session is the one
spark-submit configures (its --master and --conf win over conf/engines/spark.yaml).
"""

import sys

from pipelines.package import ensure_importable, submit_main

ensure_importable()
from pipelines.cli import exit_now  # noqa: E402

exit_now(submit_main(sys.argv[1:]))
'''


class ArchiveError(RuntimeError):
    """The archive cannot be built, or cannot be used on this machine."""


@dataclass(frozen=True)
class Archive:
    """What ``build`` wrote."""

    path: Path
    entry: Path
    digest: str
    files: int
    distributions: tuple[str, ...]

    def command(self, pipeline: str = "PIPELINE.yaml", master: str = "spark://HOST:7077") -> str:
        return (f"spark-submit --master {master} --py-files {self.path} {self.entry} "
                f"run {pipeline}")


# --------------------------------------------------------------------------- building


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """The distributions ``dist`` needs at run time (extras left out). Requirements with
    other environment markers count when they are installed here."""
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def dependency_closure(root: str = "sluice", provided: Iterable[str] = PROVIDED
                       ) -> list[metadata.Distribution]:
    """Every installed distribution ``root`` needs, transitively, except ``provided``."""
    skip = {_normal(p) for p in provided}
    seen: dict[str, metadata.Distribution] = {}
    todo = _requirement_names(metadata.distribution(root))
    while todo:
        name = _normal(todo.pop())
        if name in seen or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen[name] = dist
        todo.extend(_requirement_names(dist))
    return [seen[k] for k in sorted(seen)]


def _distribution_files(dist: metadata.Distribution) -> Iterator[tuple[str, Path]]:
    """(name in the archive, file on disk) for an installed distribution: what lies in
    site-packages, without byte code and console scripts."""
    if dist.files is None:
        raise ArchiveError(f"'{dist.metadata['Name']}' has no file list (RECORD); reinstall it")
    for entry in dist.files:
        name = entry.as_posix()
        if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
            continue
        path = Path(dist.locate_file(entry))
        if path.is_file():
            yield name, path


def _tree_files(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{prefix}/{path.relative_to(root).as_posix()}", path


def _package_dir(name: str) -> Path:
    """The folder of sluice's own package ``name``: beside the running ``pipelines``
    (find_spec takes a folder of that name without ``__init__.py`` that comes first on
    sys.path, a namespace package: a tests/operators folder, and the archive held it)."""
    beside = Path(__file__).resolve().parent.parent / name
    if (beside / "__init__.py").is_file():
        return beside
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ArchiveError(f"package '{name}' is not importable here")
    return Path(next(iter(spec.submodule_search_locations)))


def _include_files(path: Path) -> Iterator[tuple[str, Path]]:
    """A user module (file.py) or package (a directory) shipped beside sluice."""
    if path.is_file():
        yield path.name, path
    elif path.is_dir():
        yield from _tree_files(path, path.name)
    else:
        raise ArchiveError(f"--include '{path}': no such file or directory")


def _sluice_version() -> str:
    try:
        return metadata.version("sluice")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class _Contents:
    files: dict[str, Path]
    blobs: dict[str, bytes]
    marker: dict[str, Any]


def _contents(include: Iterable[str | Path]) -> _Contents:
    files: dict[str, Path] = {}
    for package in SLUICE_PACKAGES:
        files.update(_tree_files(_package_dir(package), package))
    dists = dependency_closure()
    for dist in dists:
        files.update(_distribution_files(dist))
    for extra in include:
        files.update(_include_files(Path(extra)))
    version = _sluice_version()
    # sluice's own metadata, so that `sluice --version` works from the archive
    blobs = {f"sluice-{version}.dist-info/METADATA":
             f"Metadata-Version: 2.1\nName: sluice\nVersion: {version}\n".encode()}
    digest = hashlib.sha256()
    for arcname in sorted(files):
        digest.update(arcname.encode() + b"\0" + files[arcname].read_bytes() + b"\0")
    for arcname, data in blobs.items():
        digest.update(arcname.encode() + b"\0" + data + b"\0")
    marker = {
        "format": FORMAT,
        "sluice": version,
        "python": _PYTHON,
        "implementation": sys.implementation.name,
        "platform": sysconfig.get_platform(),
        "digest": digest.hexdigest()[:20],
        "distributions": [f"{d.metadata['Name']}=={d.version}" for d in dists],
    }
    blobs[MARKER] = json.dumps(marker, indent=1).encode()
    return _Contents(files, blobs, marker)


def _zip_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _ZIP_TIME)
    info.external_attr = (mode & 0o777) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _marker_of(path: Path) -> dict[str, Any] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(MARKER))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        return None


def build(out: str | Path, include: Iterable[str | Path] = (),
          name: str = ARCHIVE_NAME) -> Archive:
    """Write ``out/sluice.zip`` (sluice, its dependencies but pyspark/numpy/pyarrow, and
    ``include``) and ``out/sluice_submit.py`` (the spark-submit entry script). An archive
    already there with the same contents is kept as it is."""
    from operators.io.fs import written_whole

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    contents = _contents(include)
    target = out / name
    existing = _marker_of(target) if target.exists() else None
    if existing is None or existing.get("digest") != contents.marker["digest"]:
        # built again at will: no need to flush it to disk
        with (written_whole(target, durable=False) as staging, open(staging, "wb") as raw,
              zipfile.ZipFile(raw, "w") as archive):
            for arcname in sorted(contents.files):
                path = contents.files[arcname]
                archive.writestr(_zip_entry(arcname, path.stat().st_mode),
                                 path.read_bytes(), compresslevel=6)
            for arcname, data in sorted(contents.blobs.items()):
                archive.writestr(_zip_entry(arcname, 0o644), data, compresslevel=6)
    entry = out / ENTRY_NAME
    if not entry.exists() or entry.read_text() != ENTRY_SCRIPT:
        entry.write_text(ENTRY_SCRIPT)
    marker = contents.marker
    return Archive(target, entry, marker["digest"], len(contents.files) + len(contents.blobs),
                   tuple(marker["distributions"]))


def cached_build(include: Iterable[str | Path] = ()) -> Archive:
    """An archive of this environment in a private temporary directory, rewritten only
    when the code changed (what the Spark engine ships to a non-local master)."""
    return build(_private_dir() / "build", include)


# --------------------------------------------------------------------------- using


_ACTIVE: dict[str, Any] = {}


def _private_dir() -> Path:
    """A directory only this user can write (extracted code must not be planted)."""
    root = Path(os.environ.get("SLUICE_ARCHIVE_DIR")
                or Path(tempfile.gettempdir()) / f"sluice-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ArchiveError(f"'{root}' is not private to this user; set SLUICE_ARCHIVE_DIR")
    return root


def _find_archive() -> tuple[str, dict[str, Any]] | None:
    for entry in sys.path:
        if not entry.endswith(".zip") or not os.path.isfile(entry):
            continue
        try:
            with zipfile.ZipFile(entry) as archive:
                if MARKER in archive.namelist():
                    return entry, json.loads(archive.read(MARKER))
        except (OSError, zipfile.BadZipFile, ValueError):
            continue
    return None


def _check_compatible(path: str, marker: dict[str, Any]) -> None:
    here = {"python": _PYTHON, "implementation": sys.implementation.name,
            "platform": sysconfig.get_platform()}
    wrong = [f"{k} {marker.get(k)} (here {v})" for k, v in here.items() if marker.get(k) != v]
    if wrong:
        raise ArchiveError(
            f"sluice archive '{path}' was built for {', '.join(wrong)}: its compiled modules "
            "cannot load here; build it with `sluice package` on the Python and platform "
            "the cluster runs")


def _extract(path: str, digest: str) -> Path:
    root = _private_dir()
    final = root / f"code-{digest}"
    if (final / MARKER).is_file():
        return final
    staging = Path(tempfile.mkdtemp(prefix=f".code-{digest}-", dir=root))
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(staging)
        try:
            os.rename(staging, final)  # atomic: concurrent executors race for one name
        except OSError:
            if not (final / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_importable() -> str | None:
    """Make the sluice archive on ``sys.path`` (if any) importable, compiled modules
    included; returns the directory it lives in, or None when there is no archive
    (sluice is installed). Cheap after the first call in a process."""
    if "dir" in _ACTIVE:
        return _ACTIVE["dir"]
    if _ACTIVE.get("searched") == sys.path:
        return None  # looked already, and nothing was added to the path since
    found = _find_archive()
    if found is None:
        _ACTIVE["searched"] = list(sys.path)
        return None
    path, marker = found
    _check_compatible(path, marker)
    folder = str(_extract(path, str(marker["digest"])))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()
    _ACTIVE.update(dir=folder, archive=path)
    return folder


def active_archive() -> str | None:
    """The archive this process runs sluice from (under spark-submit), if any."""
    ensure_importable()
    return _ACTIVE.get("archive")


_LOADED: OrderedDict[bytes, Callable[[Iterator[Any]], Iterator[Any]]] = OrderedDict()
_LOADED_MAX = 4


def run_in_executor(payload: bytes, batches: Iterator[Any]) -> Iterator[Any]:
    """What the Spark engine ships to ``mapInArrow``: make sluice importable, then
    unpickle the task (operators included) and run it. A worker process runs many
    tasks; the unpickled task is kept for the next task of the same job."""
    ensure_importable()
    key = hashlib.sha1(payload).digest()
    task = _LOADED.get(key)
    if task is None:
        task = pickle.loads(payload)
        _LOADED[key] = task
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return task(batches)


def submit_main(argv: list[str]) -> int:
    """The spark-submit entry: the ``sluice`` command, ``run`` on the Spark engine."""
    args = list(argv)
    if args and args[0] == "run" and not any(a == "--engine" or a.startswith("--engine=")
                                             for a in args):
        args[1:1] = ["--engine", "spark"]
    from pipelines.cli import main

    try:
        main(args=args, prog_name="sluice")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.package",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--include", action="append", default=[], metavar="PATH",
                        help="a module file or package folder of your own operators")
    args = parser.parse_args(argv)
    archive = build(args.out, args.include)
    size = archive.path.stat().st_size / 2**20
    print(f"wrote {archive.path} ({size:.1f} MiB, {archive.files} files) and {archive.entry}")
    print(f"  {archive.command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
