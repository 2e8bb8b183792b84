"""The model registry: ``<root>/<name>/<version>/model.json + arrays.npz``, no pickle.

Versions are 1, 2, ... A save claims the next version number: locally by making
``<version>/`` (which fails if another run made it), on object stores by creating
``<version>/.claim`` exclusively (S3 ``If-None-Match: *``, fsspec mode ``"xb"``),
moving on to the next number if another writer holds it, so concurrent saves never
collide; only the holder writes that directory, ``model.json`` last and whole. A
version without ``model.json`` (a run's model staged until the run publishes it, a
writer that died, a run that failed) is not a model and its number is never reused.

Aliases (``churn@production``) name a version: ``<name>/aliases/<alias>.json`` holds
its number, written whole (a rename locally, one PUT on object stores), so a scoring
job that reads ``churn@production`` sees the old version or the new, never a mix;
promoting or rolling back is pointing the alias elsewhere (``sluice models alias``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from operators import jsontext
from operators.base import ArtifactError, SluiceError, Transform, suggest
from operators.chain import Chain, dump_chain, load_chain
from operators.crash import crash_point
from operators.io.fs import (
    Location,
    resolve,
    store_errors,
    store_problem,
    written_whole,
)
from operators.io.model import ALIAS, ALIAS_RULE, MODEL_NAME, MODEL_NAME_RULE, is_alias

FORMAT = "sluice-model"
FORMAT_VERSION = 1
CLAIM = ".claim"
ALIASES = "aliases"  # <root>/<name>/aliases/<alias>.json: {"version": 3, ...}
DELETED = "DELETED"  # <root>/<name>/<version>/DELETED: a deleted version's number, kept
_REF = re.compile(rf"^(?P<name>{MODEL_NAME}?)(?:@(?P<version>latest|\d+|{ALIAS}))?$")


F = TypeVar("F", bound=Callable[..., Any])


def _store_access(method: F) -> F:
    """A registry method whose store refuses access (no credentials, access denied, an
    endpoint it cannot reach) raises that as a user error naming the registry."""
    import functools

    @functools.wraps(method)
    def wrapper(self: ModelStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except SluiceError:
            raise
        except store_errors(OSError) as exc:
            problem = store_problem(exc, self.root)
            if problem is None and isinstance(exc, OSError) and self.location.local:
                # no such parent folder, a file where a folder goes, a full disk...
                at = f" ('{exc.filename}')" if exc.filename else ""
                problem = SluiceError(
                    f"the model registry '{self.root}' cannot be used: "
                    f"{exc.strerror or exc}{at}",
                    hint="--models DIR (or $SLUICE_MODELS) names a folder this user can "
                         "create, read and write")
            if problem is None:
                raise
            raise problem from None

    return wrapper  # type: ignore[return-value]


def default_root() -> str:
    return os.environ.get("SLUICE_MODELS") or "data/models"


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """Readable fields plus the exact Arrow schema (IPC bytes, base64)."""
    return {
        "fields": [{"name": f.name, "type": str(f.type)} for f in schema],
        "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


def schema_from_json(data: dict[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["arrow"])))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """A model reference as (name, what follows the @: latest, a version, an alias, or
    None); a SluiceError when it is none of name, name@latest, name@3, name@ALIAS."""
    m = _REF.match(ref.strip())
    if not m:
        raise SluiceError(f"'{ref}' is not a model reference",
                          hint=f"use name, name@latest, name@3 or name@ALIAS; a name is "
                               f"{MODEL_NAME_RULE}")
    return m.group("name"), m.group("version")


def required_columns(steps: list[Any], schema: pa.Schema,
                     schemas: list[pa.Schema] | None = None) -> list[str]:
    """Input columns the chain reads that come from the input (not made by a step);
    ``schemas``: each step's output schema, where the plan has them already."""
    needed: list[str] = []
    original = set(schema.names)
    produced: set[str] = set()
    for i, step in enumerate(steps):
        for column in step.input_columns(schema):
            if column in original and column not in produced and column not in needed:
                needed.append(column)
        after = schemas[i] if schemas is not None else step.output_schema(schema)
        produced |= set(after.names) - set(schema.names)
        schema = after
    return needed


@dataclass
class Model:
    name: str
    version: int
    chain: Chain
    meta: dict[str, Any]

    @property
    def input_schema(self) -> pa.Schema:
        return schema_from_json(self.meta["input_schema"])

    @property
    def required(self) -> list[str]:
        return list(self.meta["required_columns"])

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def binding(model: Model, ref: str, path: str) -> tuple[Chain, list[str], dict[str, Any]]:
    """What a step that scores with ``model`` is bound to (``Score.bind``, promote's,
    drift's): its chain, the columns it needs, and its registry info (``ref``: how the
    step named it; ``path``: where the version lives)."""
    return model.chain, model.required, {"name": model.name, "version": model.version,
                                         "ref": ref.strip(), "path": path, "meta": model.meta}


class ModelStore:
    """Saves and loads fitted chains under a root path or URL."""

    def __init__(self, root: str | None = None, storage_options: dict[str, Any] | None = None):
        self.root = root or default_root()
        self.location: Location = resolve(self.root, storage_options)

    def _path(self, *parts: str) -> str:
        return self.location.join(*parts)

    def path_of(self, model: Model) -> str:
        """Where a model version lives (its folder, or its URL on an object store)."""
        return self.version_path(model.name, model.version)

    def version_path(self, name: str, version: int) -> str:
        """Where version ``version`` of ``name`` lives (``path_of``)."""
        if self.location.local:
            return self._path(name, str(version))
        return "/".join([self.root.rstrip("/"), name, str(version)])

    # ------------------------------------------------------------------ reading

    @_store_access
    def names(self) -> list[str]:
        fs = self.location.fsspec_fs
        if not self.location.local:
            fs.invalidate_cache(self.location.path)
        if not fs.exists(self.location.path):
            return []
        out = []
        for entry in fs.ls(self.location.path, detail=True):
            name = posixpath.basename(entry["name"].rstrip("/"))
            if entry["type"] == "directory" and not name.startswith(".") and self.versions(name):
                out.append(name)
        return sorted(out)

    @_store_access
    def versions(self, name: str) -> list[int]:
        """The complete versions of ``name`` (those with a model.json), as they are now:
        one listing, never a cached one (another run may have saved since)."""
        fs = self.location.fsspec_fs
        base = self._path(name)
        if not self.location.local:
            fs.invalidate_cache(base)
        found = set()
        for path in fs.glob(posixpath.join(base, "*", "model.json")):
            tail = posixpath.basename(posixpath.dirname(path.rstrip("/")))
            if tail.isdigit():
                found.add(int(tail))
        return sorted(found)

    def version_of_run(self, name: str, run_id: str) -> int | None:
        """The version of ``name`` run ``run_id`` published (None: none), the newest
        looked at first."""
        return next((v for v in reversed(self.versions(name))
                     if self.read_meta(name, v).get("run_id") == run_id), None)

    def resolve(self, ref: str) -> tuple[str, int]:
        """``name``, ``name@latest``, ``name@3`` or ``name@ALIAS`` to (name, version)."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise ArtifactError(f"no model '{name}' in {self.root}{suggest(name, self.names())}",
                                hint="train and `save_model` it first, or pass --models DIR")
        if version is None or version.casefold() == "latest":
            return name, versions[-1]
        if not version.isdigit():
            return name, self._aliased(name, version, versions)
        if int(version) not in versions:
            raise ArtifactError(f"model '{name}' has no version {version}"
                                f"{self._deleted(name, int(version))}",
                                hint=f"versions: {', '.join(map(str, versions))}")
        return name, int(version)

    def _deleted(self, name: str, version: int) -> str:
        """', deleted 2026-12-02T08:00:00Z (why)' where the version's folder holds a
        ``DELETED`` note, else ''."""
        try:
            with self.location.fsspec_fs.open(self._path(name, str(version), DELETED),
                                              "rb") as f:
                note = json.loads(f.read())
        except (OSError, ValueError):
            return ""
        if not isinstance(note, dict):
            return ""
        said = " ".join(str(part) for part in (
            note.get("deleted_at"), f"({note['why']})" if note.get("why") else None) if part)
        return f": it was deleted {said}".rstrip()

    def _aliased(self, name: str, alias: str, versions: list[int]) -> int:
        """The version alias ``alias`` of ``name`` points at (an existing one)."""
        aliases = self.aliases(name)
        spelt = _spelt(alias, aliases)
        if spelt is None:
            known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
            raise ArtifactError(
                f"model '{name}' has no alias '{alias}'{suggest(alias, list(aliases))}",
                hint=f"aliases: {known}; set one with `sluice models alias {name}@VERSION "
                     f"{alias}`")
        alias, version = spelt, aliases[spelt]
        if version not in versions:
            raise ArtifactError(
                f"alias {name}@{alias} points at version {version}, which is not in the "
                "registry (any more)",
                hint=f"point it at one of {', '.join(map(str, versions))}: `sluice models "
                     f"alias {name}@VERSION {alias}`")
        return version

    @_store_access
    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of ``name`` and the versions they point at, as they are now."""
        fs = self.location.fsspec_fs
        folder = self._path(name, ALIASES)
        if not self.location.local:
            fs.invalidate_cache(folder)
        out: dict[str, int] = {}
        for path in fs.glob(posixpath.join(folder, "*.json")):
            alias = posixpath.basename(path)[:-len(".json")]
            try:
                with fs.open(path, "rb") as f:
                    version = json.loads(f.read()).get("version")
            except FileNotFoundError:  # removed meanwhile
                continue
            except ValueError:
                raise ArtifactError(f"alias {name}@{alias}: {path} is not JSON",
                                    hint="set the alias again") from None
            if isinstance(version, int):
                out[alias] = version
        return out

    @_store_access
    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``name@alias`` at ``version`` (which must exist); the version it pointed
        at before, or None. One object written whole (a rename locally), so a reader
        sees the old version or the new, never a mix."""
        if not is_alias(alias):
            raise SluiceError(f"'{alias}' cannot be an alias", hint=ALIAS_RULE)
        if version not in self.versions(name):
            raise ArtifactError(f"model '{name}' has no version {version}")
        aliases = self.aliases(name)
        _same_spelling(name, alias, aliases)
        previous = aliases.get(alias)
        body = json.dumps({"version": version, "set_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        path = self._path(name, ALIASES, f"{alias}.json")
        if self.location.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with written_whole(path) as staging, open(staging, "wb") as f:
                f.write(body)
        else:
            self.location.fsspec_fs.pipe_file(path, body)
        return previous

    @_store_access
    def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``name@alias`` (spelt in any case); the version it pointed at."""
        return self.remove_alias_spelt(name, alias)[1]

    @_store_access
    def remove_alias_spelt(self, name: str, alias: str) -> tuple[str, int]:
        """``remove_alias``, and the alias as it was stored (``Production`` removes
        ``production``)."""
        aliases = self.aliases(name)
        spelt = _spelt(alias, aliases)
        if spelt is None:
            raise ArtifactError(f"model '{name}' has no alias '{alias}'")
        self.location.fsspec_fs.rm(self._path(name, ALIASES, f"{spelt}.json"))
        return spelt, aliases[spelt]

    def check_alias(self, name: str, alias: str) -> None:
        """Before a run points ``name@alias`` at the version it saves: an ArtifactError
        where the model has an alias of that name spelt in another case."""
        _same_spelling(name, alias, self.aliases(name))

    @_store_access
    def delete(self, name: str, version: int, why: str | None = None) -> None:
        """Delete version ``version`` of ``name``: its model.json first (from then on it
        is no model: no listing or reference finds it), then its arrays. Its folder
        stays with a ``DELETED`` note (when, and ``why``), so that its number is never
        given to another model (a reference to churn@3 never means two things) and a
        reference to it says what became of it. A version an alias names is refused."""
        if version not in self.versions(name):
            raise ArtifactError(f"model '{name}' has no version {version}")
        named = sorted(a for a, v in self.aliases(name).items() if v == version)
        if named:
            shown = ", ".join(f"{name}@{a}" for a in named)
            raise ArtifactError(f"{name}@{version} is named by {shown}",
                                hint="point the alias at another version, or remove it "
                                     "(sluice models alias ... --delete), first")
        fs = self.location.fsspec_fs
        note = json.dumps({"deleted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           **({"why": why} if why else {})}).encode()
        fs.pipe_file(self._path(name, str(version), DELETED), note)
        for leftover in ("model.json", "arrays.npz"):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(self._path(name, str(version), leftover))

    def prune(self, name: str, keep: int, dry_run: bool = False) -> list[int]:
        """Delete the versions of ``name`` older than its newest ``keep``, except those
        an alias names; the versions deleted (or that would be, ``dry_run``)."""
        if keep < 1:
            raise SluiceError("keep must be at least 1", hint="the newest version stays")
        versions = self.versions(name)
        if not versions:
            raise ArtifactError(f"no model '{name}' in {self.root}"
                                f"{suggest(name, self.names())}")
        named = set(self.aliases(name).values())
        doomed = [v for v in versions[:-keep] if v not in named]
        if not dry_run:
            for version in doomed:
                self.delete(name, version, "sluice models prune")
        return doomed

    @_store_access
    def read_meta(self, name: str, version: int) -> dict[str, Any]:
        path = self._path(name, str(version), "model.json")
        try:
            with self.location.fsspec_fs.open(path, "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise store_problem(exc, self.root) or ArtifactError(
                f"model {name}@{version}: model.json is unreadable ({exc})",
                hint="the artifact is damaged; re-train or use another version") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArtifactError(f"model {name}@{version}: model.json is not a sluice model")
        meta = jsontext.floats_loaded(meta)
        fv = meta.get("format_version")
        if not isinstance(fv, int) or fv > FORMAT_VERSION:
            raise ArtifactError(
                f"model {name}@{version} has format version {fv}, this sluice reads up to "
                f"{FORMAT_VERSION}", hint="upgrade sluice to load it")
        return meta

    @_store_access
    def load(self, ref: str) -> Model:
        name, version = self.resolve(ref)
        meta = self.read_meta(name, version)
        path = self._path(name, str(version), "arrays.npz")
        try:
            with self.location.fsspec_fs.open(path, "rb") as f:
                raw = f.read()
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise store_problem(exc, self.root) or ArtifactError(
                f"model {name}@{version}: arrays.npz is unreadable ({exc})",
                hint="the artifact is damaged; re-train or use another version") from None
        try:
            steps = load_chain(meta["steps"], arrays)
        except KeyError as exc:
            raise ArtifactError(f"model {name}@{version}: model.json lacks {exc}") from None
        except ArtifactError as exc:
            raise exc.located(f"model {name}@{version}") from None
        return Model(name, version, Chain(steps), meta)

    # ------------------------------------------------------------------ writing

    @_store_access
    def save(self, name: str, steps: list[Transform], input_schema: pa.Schema,
             info: dict[str, Any] | None = None) -> Model:
        """Store a fitted chain as the next version of ``name`` (``stage``, then
        ``publish``)."""
        model = self.stage(name, steps, input_schema, info)
        try:
            self.publish(model)
        except BaseException:
            self.discard(model)
            raise
        return model

    @_store_access
    def stage(self, name: str, steps: list[Transform], input_schema: pa.Schema,
              info: dict[str, Any] | None = None) -> Model:
        """Take the next version number of ``name`` and write the chain's arrays there,
        but not its model.json: no listing or reference finds the version until
        ``publish`` (a run publishes its models with its outputs, once every step has
        run), and ``discard`` removes it. The number is the version's from now on, so
        that a step of the same run can score with it, and a model of that model
        (calibrate) name it."""
        chain = Chain(steps)
        entries, arrays = dump_chain(steps)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": None,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input_schema": schema_to_json(input_schema),
            "required_columns": required_columns(steps, input_schema),
            "output_schema": schema_to_json(chain.output_schema(input_schema)),
            "steps": entries,
            **(info or {}),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        version = self._claim(name)
        meta["version"] = version
        model = Model(name, version, chain, meta)
        try:
            with self.location.fsspec_fs.open(self._path(name, str(version), "arrays.npz"),
                                              "wb") as f:
                f.write(buffer.getvalue())
        except BaseException:
            self.discard(model)
            raise
        return model

    @_store_access
    def publish(self, model: Model) -> None:
        """Make a staged version a model: its model.json, written whole (a rename
        locally, one PUT on an object store), after its arrays."""
        path = self._path(model.name, str(model.version), "model.json")
        # strict JSON: a NaN metric as "nan", never a bare NaN other tools refuse (and
        # where those are, so that loading gives back the floats)
        body = json.dumps(jsontext.floats_saved(model.meta), indent=1,
                          allow_nan=False).encode()
        if self.location.local:
            with written_whole(path) as staging, open(staging, "wb") as f:
                f.write(body)
        else:
            with self.location.fsspec_fs.open(path, "wb") as f:
                f.write(body)

    def discard(self, model: Model) -> None:
        """Remove a staged version's files (a run that failed or was stopped); its
        number stays taken (its claim), never given to another model."""
        for leftover in ("model.json", "arrays.npz"):
            with contextlib.suppress(Exception):  # best effort; the first error matters
                self.location.fsspec_fs.rm(self._path(model.name, str(model.version),
                                                      leftover))

    def _claim(self, name: str) -> int:
        """Take the next free version number of ``name``: locally by making its folder
        (which fails when another run made it first), on an object store by creating its
        ``.claim`` exclusively. A number once taken is never taken again."""
        fs = self.location.fsspec_fs
        base = self._path(name)
        taken = [0]
        if fs.exists(base):
            fs.invalidate_cache(base)
            taken += [int(t) for t in (posixpath.basename(e.rstrip("/"))
                                       for e in fs.ls(base, detail=False)) if t.isdigit()]
        version = max(taken) + 1
        if self.location.local:
            os.makedirs(base, exist_ok=True)
            while True:
                try:
                    os.mkdir(self._path(name, str(version)))
                    return version
                except FileExistsError:
                    version += 1
        token = uuid.uuid4().hex.encode()
        while True:
            claim = self._path(name, str(version), CLAIM)
            try:
                with fs.open(claim, "xb") as f:
                    f.write(token)
                return version
            except FileExistsError:
                version += 1
            except (NotImplementedError, ValueError) as exc:
                raise ArtifactError(
                    f"cannot save to the model registry {self.root}: its file system "
                    f"({type(fs).__name__}) has no exclusive create ({exc}), so two runs "
                    "could take the same version number",
                    hint="keep the registry (--models) on a local path or on s3://, gs:// or abfs://"
                ) from None


def _spelt(alias: str, aliases: dict[str, int]) -> str | None:
    """The alias of ``aliases`` that ``alias`` names: aliases are case-insensitive
    (``Production`` names ``production``), as a person reads them and as a file system
    that ignores case (macOS, Windows) stores them."""
    if alias in aliases:
        return alias
    return next((a for a in aliases if a.casefold() == alias.casefold()), None)


def _same_spelling(name: str, alias: str, aliases: dict[str, int]) -> None:
    """An ArtifactError where ``alias`` is new but one of ``aliases`` differs from it in
    case only: two aliases a reference could not tell apart."""
    spelt = _spelt(alias, aliases)
    if spelt is not None and spelt != alias:
        raise ArtifactError(
            f"model '{name}' has alias '{spelt}' (version {aliases[spelt]}), which differs "
            f"from '{alias}' in case only: aliases are case-insensitive, so '{alias}' would "
            f"name it too",
            hint=f"spell it '{spelt}' to point it elsewhere, or choose another name")


class StagedModel:
    """A run's saved model version, staged (``ModelStore.stage``) until the run
    publishes its outputs: ``publish`` makes it a model and then points ``aliases`` at
    it (the save's, a promotion's); ``discard`` removes it (a run that failed or was
    stopped), so no alias or ``latest`` ever names a model of a run with no outputs."""

    def __init__(self, store: ModelStore, model: Model, aliases: list[str]):
        self.store, self.model, self.aliases = store, model, aliases

    def publish(self) -> dict[str, int | None]:
        """The aliases moved, each with the version it named before (None: new)."""
        self.store.publish(self.model)
        crash_point("after-model")
        moved: dict[str, int | None] = {}
        for alias in self.aliases:
            previous = self.store.set_alias(self.model.name, alias, self.model.version)
            moved.setdefault(alias, previous)
        return moved

    def discard(self) -> None:
        self.store.discard(self.model)
