"""read_parquet and write_parquet: Parquet in, Parquet out, atomically.

Output commit protocol (also what read_parquet honours):

* every output directory gets a ``_SUCCESS`` manifest, written last, that lists
  the data files of the output (JSON: format, run id, files, rows, and the Arrow
  schema and ``partition_by`` columns, so hive partition columns read back with
  their types and places); data files are named by run id
  (``part-<run id>-<partition>.parquet``);
* on a local filesystem the output is written under a hidden staging directory
  beside the target (``.<name>.sluice-tmp-<run id>``), flushed to disk, and
  renamed into place (an atomic exchange when overwriting), so a reader sees the
  old output or the new one, never a mix; a reader that planned against the old
  output and reads after the exchange gets a clear error (the old files are
  gone), never new rows under old names. The writing process holds a lock on its
  staging directory; the kernel drops it when the process dies, however it dies,
  so every run deletes the unlocked (dead) staging directories beside its target
  before it starts;
* on object stores (no atomic rename) data files are written straight into the
  target, the manifest is written last and the previous output's files are
  deleted only after it: a reader that reads the files listed in ``_SUCCESS``
  (sluice's read_parquet does) never sees half an output. Where the target has no
  sluice manifest yet, the writer first puts one there that lists what a reader
  sees now (nothing, or the files of a foreign dataset being overwritten), so the
  new files stay invisible until the commit; a target whose manifest lists
  nothing has no committed output, and reading it is an error.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import posixpath
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from operators.base import (
    ARROW_ERRORS,
    DataError,
    Missing,
    ParamError,
    Params,
    PartitionInfo,
    SchemaError,
    Sink,
    SluiceError,
    Source,
    WriteResult,
    arrow_message,
    conformed,
    register,
    rename_hint,
    renames,
    require_columns,
    yaml_text,
)
from operators.crash import crash_point
from operators.io.fs import (
    Location,
    claim_dir,
    exchange,
    fsync_dir,
    fsync_tree,
    is_store_lock,
    locked_beside,
    locked_on_store,
    release_dir,
    remove,
    rename_noreplace,
    resolve,
    store_errors,
    store_problem,
    sweep_stale,
    written_whole,
)
from operators.io.paths import GLOB_CHARS, glob_base, this_machines

if TYPE_CHECKING:  # imported where a dataset is made (it imports pandas: ~0.15 s)
    import pyarrow.dataset as ds

MANIFEST = "_SUCCESS"
MANIFEST_FORMAT = "sluice-output/1"
STAGING_MARK = ".sluice-tmp-"
def _io_errors() -> tuple[type[BaseException], ...]:
    """What reading and writing Parquet raises for bad files and refused access: pyarrow's
    errors, OSError, ValueError, and the object-store clients' (credentials...)."""
    return store_errors(pa.ArrowException, OSError, ValueError)


# data files of a sluice run on an object store: part-<run id>-<partition>[-<i>].parquet
# a data file a sluice run names: part-<run id: 20261130T031540Z-1a2b3c>-<partition>
_RUN_FILE = re.compile(r"^part-\d{8}T\d{6}Z-[0-9a-f]{6}-\d{5}(-\d+)?\.parquet$")
_QUOTED_PATH = re.compile(r"(?:input source|schema from|local file|file) '([^']+)'")


def _pruned(prune: Callable[[], Any], unpruned: Callable[[], Any], flt: Any) -> Any:
    """``prune()``: the fragments or row groups the filter ``flt`` keeps by their
    partitions or statistics; ``unpruned()`` where there is no filter, or where Arrow's
    pruning itself fails and the file does not: it folds the filter's casts and
    arithmetic over the statistics with checked kernels (``0.5 > u64`` raised for a row
    group holding 2**64 - 1, a filter failing on any row raised as a corrupt file). The
    rows are then filtered as read, where a filter failing on them is its own error."""
    if flt is None:
        return unpruned()
    try:
        return prune()
    except ARROW_ERRORS:
        return unpruned()


def parse_type(name: str) -> pa.DataType:
    """An Arrow type from its name: int64, float64, string, date32, timestamp[us, tz=UTC],
    decimal128(10, 2), bool."""
    text = name.strip()
    m = re.fullmatch(r"decimal(128|256)?\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    if m:
        maker = pa.decimal256 if m.group(1) == "256" else pa.decimal128
        return maker(int(m.group(2)), int(m.group(3)))
    m = re.fullmatch(r"timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]", text)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    try:
        return pa.type_for_alias({"int": "int64", "date": "date32"}.get(text, text))
    except (ValueError, KeyError):
        raise ValueError(
            f"unknown type '{name}'; use e.g. int64, float64, string, bool, date32, "
            "timestamp[us], decimal128(10, 2)"
        ) from None


def read_manifest(location: Location, directory: str) -> dict[str, Any] | None:
    """The sluice manifest of an output directory, or None (absent, or Spark's empty one)."""
    path = posixpath.join(directory, MANIFEST)
    try:
        with location.filesystem.open_input_stream(path) as f:
            raw = f.read()
    except (FileNotFoundError, OSError):
        return None
    try:
        manifest = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
        return manifest
    return None


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def without_views(t: pa.DataType) -> pa.DataType:
    """``t`` with its view types as their plain ones (string_view as string, binary_view
    as binary, list_view as list, inside dictionaries, lists, maps and structs too): what
    sluice reads a column as. A file pyarrow wrote from views (Polars' tables, DuckDB's)
    stores their Arrow schema, and most Arrow kernels (take, filter, index_in,
    comparisons with a string) have none for views."""
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return pa.dictionary(t.index_type, without_views(t.value_type), t.ordered)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(without_views(t.key_type)),
                       t.item_field.with_type(without_views(t.item_type)), t.keys_sorted)
    large = pa.types.is_large_list(t) or pa.types.is_large_list_view(t)
    if large or pa.types.is_list(t) or pa.types.is_list_view(t) \
            or pa.types.is_fixed_size_list(t):
        inner = t.value_field.with_type(without_views(t.value_type))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(inner, t.list_size)
        return pa.large_list(inner) if large else pa.list_(inner)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(without_views(t.field(i).type))
                          for i in range(t.num_fields)])
    return t


def _schema_without_views(schema: pa.Schema) -> pa.Schema:
    if not any(without_views(f.type) != f.type for f in schema):
        return schema
    return pa.schema([f.with_type(without_views(f.type)) for f in schema],
                     metadata=schema.metadata)


def widens(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a file's type of a column converts to the dataset's with nothing lost in
    kind: the same values dictionary-encoded or not, or a narrower type that pyarrow's
    permissive promotion widens to the dataset's (int32 -> int64, float32 or int64 ->
    float64, timestamp[ms] -> timestamp[us]...); a value that still does not fit is a
    read-time error naming it."""
    have, want = _plain(have), _plain(want)
    return (have == want or promoted(want, have) == want
            or {have, want} in _OFFSET_WIDTHS)


# the same values with 32- or 64-bit offsets: a file may hold either where the dataset
# has the other (pyarrow writes large_string from Polars' and pandas' strings)
_OFFSET_WIDTHS = [{pa.string(), pa.large_string()}, {pa.binary(), pa.large_binary()}]


# an integer type's most digits, by its bits: signed, unsigned
_INTEGER_DIGITS = {(8, False): 3, (16, False): 5, (32, False): 10, (64, False): 19,
                   (8, True): 3, (16, True): 5, (32, True): 10, (64, True): 20}


def promoted(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type that holds both (pyarrow's permissive promotion), or None. A decimal
    beside an integer has the integer type's every digit before its point: pyarrow's is
    one short for int32, int64 and uint64 (decimal(20, 2) for decimal(5, 2) and int64),
    and Arrow casts no value of the integer type to it ('Precision is not great
    enough')."""
    try:
        merged = pa.unify_schemas([pa.schema([pa.field("c", _plain(a))]),
                                   pa.schema([pa.field("c", _plain(b))])],
                                  promote_options="permissive")
    except (pa.ArrowException, TypeError, ValueError):
        return None
    t = merged.field(0).type
    if pa.types.is_decimal(t):
        digits = t.scale + max((_INTEGER_DIGITS[x.bit_width, pa.types.is_unsigned_integer(x)]
                                for x in map(_plain, (a, b)) if pa.types.is_integer(x)),
                               default=0)
        if digits > t.precision:
            if digits > 76:
                return None
            t = (pa.decimal128 if digits <= 38 else pa.decimal256)(digits, t.scale)
    return t


def castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether pyarrow has a cast between the two types (values are checked when read)."""
    try:
        pa.array([], type=have).cast(want)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def _hidden(relative: str) -> bool:
    """Whether a path below a dataset's root is hidden from readers (as pyarrow's
    discovery hides it): any part starting with '_' or '.'."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _stamp(info: pa.fs.FileInfo) -> list[int]:
    """A file's ``[size, mtime_ns]``: what an incremental read knows it by."""
    return [int(info.size or 0), int(info.mtime_ns or 0)]


def _encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _decode_schema(text: Any) -> pa.Schema | None:
    if not isinstance(text, str):
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    except (ValueError, pa.ArrowException):
        return None


def _text_kind(filesystem: pa.fs.FileSystem, path: str) -> str | None:
    """What a file that is not Parquet is, where its first bytes are text: 'a CSV file'
    (by its name's extension), else 'text'; None for binary (a corrupt Parquet file)."""
    import codecs

    try:
        with filesystem.open_input_stream(path) as stream:
            head = stream.read(4096)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except (OSError, UnicodeDecodeError, pa.ArrowException):
        return None
    if not head.strip() or b"\0" in head:
        return None
    extension = posixpath.splitext(path)[1].lstrip(".").lower()
    return f"a {extension.upper()} file" if extension in _TEXT_FORMATS else "text"


_TEXT_FORMATS = ("csv", "tsv", "json", "jsonl", "ndjson")


class _Manifests:
    """The sluice manifests met while listing one input, each read once."""

    def __init__(self, location: Location,
                 listed: Callable[[dict[str, Any], str], list[str]]) -> None:
        self.location, self.listed = location, listed
        self.manifests: dict[str, dict[str, Any] | None] = {}
        self.files: dict[str, set[str]] = {}

    def get(self, folder: str) -> dict[str, Any] | None:
        if folder not in self.manifests:
            self.manifests[folder] = read_manifest(self.location, folder)
        return self.manifests[folder]

    def committed(self, path: str) -> bool:
        """Whether a file is data: outside any sluice output, or listed by the manifest of
        the output it lies in (however deep, and whatever path or glob reached it)."""
        folder = posixpath.dirname(path)
        while folder and folder != posixpath.dirname(folder):
            manifest = self.get(folder)
            if manifest is not None:
                if folder not in self.files:
                    self.files[folder] = set(self.listed(manifest, folder))
                return path in self.files[folder]
            folder = posixpath.dirname(folder)
        return True


class ReadParquetParams(Params):
    path: str = Field(description="file, directory, glob or URL; hive partitions become columns")
    columns: list[str] | None = Field(None, description="columns to read (default: all)")
    filter: str | None = Field(None, description="row filter, pushed down: \"a >= 0 and b != 'x'\"")
    schema_: dict[str, str] | None = Field(
        None, alias="schema",
        description="types to read columns as, e.g. {tenure: int64}; cast on read (also "
                    "where the files disagree on a column's type); `filter` compares "
                    "the declared types"
    )
    missing: Missing = Field(
        "error", description="a column some files have and others lack (added, dropped or "
                             "renamed as the data grew): error (default: the read stops as "
                             "it plans, naming a file of each) | null (every file's columns, "
                             "null in the rows of the files without one: Spark's "
                             "mergeSchema); only the columns read matter")
    incremental: bool = Field(
        False, description="read only the files no succeeded run of this pipeline read "
                           "in this step (a file is known by its path, size and "
                           "modification time: one rewritten in place is new); `sluice run "
                           "--full-refresh` reads every file again")
    max_files: int | None = Field(
        None, gt=0, description="with incremental: read at most this many new files a "
                                "run, the oldest (by modification time) first; the others "
                                "wait for the next runs (a backfill in steps)")
    partition_mb: float = Field(64, gt=0, description="target uncompressed size of a partition")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for URLs")

    known_as: ClassVar[dict[str, str]] = {
        "merge_schema": "missing: null", "mergeSchema": "missing: null",
        "max_files_per_trigger": "max_files", "maxFilesPerTrigger": "max_files"}

    @model_validator(mode="after")
    def _max_files_incremental(self) -> ReadParquetParams:
        if self.max_files is not None and not self.incremental:
            raise ParamError("max_files bounds the new files of an incremental read, and "
                             "this read is not one",
                             hint="add `incremental: true`, or leave max_files out")
        return self

    @field_validator("path")
    @classmethod
    def _this_machines(cls, value: str) -> str:
        return this_machines(value)

    @field_validator("schema_")
    @classmethod
    def _types_known(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for type_name in (value or {}).values():
            parse_type(type_name)
        return value


@register("read_parquet")
class ReadParquet(Source):
    """Read Parquet: a file, a directory (hive partitions understood), a glob or a URL.

    ```yaml
    - id: events
      op: read_parquet
      path: data/churn/ds=${ds}
      columns: [tenure, plan, churned]
      filter: "tenure >= 0 and region != 'test'"
    ```
    Columns a file stores as Arrow views (`string_view`, `binary_view`: files written
    from Polars' or DuckDB's Arrow tables) read as `string` and `binary`.
    """

    Params = ReadParquetParams

    pushed: tuple[str, str, str | None] | None = None
    """A filter step's condition given to this read (the plan's push-down): (that step,
    its ``where``, the read's own filter before it); a failure of that part on the rows
    is said as the filter step's."""

    def __getstate__(self) -> dict[str, Any]:
        # the dataset's schema travels once known: a worker reads its partitions
        # (path + row groups) without listing the dataset again on every pass
        state: dict[str, Any] = {"params": self.params}
        if self.pushed is not None:
            state["pushed"] = self.pushed
        if "full_schema" in self.__dict__:
            state["full_schema"] = self.__dict__["full_schema"]
            state["partition_types"] = self._partition_types
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = state["params"]
        if "pushed" in state:
            self.pushed = state["pushed"]
        if "full_schema" in state:
            self.full_schema = state["full_schema"]
            self.__dict__["partition_types"] = state["partition_types"]

    @property
    def _partition_types(self) -> dict[str, pa.DataType]:
        """Hive columns read as another type than their folders parse into (a sluice
        output's dictionary or decimal partition column): their output's types."""
        return self.__dict__.setdefault("partition_types", {})

    @cached_property
    def location(self) -> Location:
        return resolve(self.params.path, self.params.storage_options)

    def _shown(self, path: str) -> str:
        """A path as the user knows it: with its protocol when it is a URL."""
        loc = self.location
        if loc.local or "://" in path:
            return path
        return f"{loc.url.split('://', 1)[0]}://{path}"

    def _failure(self, exc: BaseException, path: str) -> SluiceError:
        """A one-line error naming the file pyarrow failed on and what is wrong with it
        (or the store's refusal: no credentials, access denied, no endpoint)."""
        problem = store_problem(exc, self._shown(path))
        if problem is not None:
            return problem
        first = arrow_message(exc)
        named = _QUOTED_PATH.findall(str(exc))
        if isinstance(exc, FileNotFoundError) and not named and len(first.split()) == 1:
            named = [first]  # pyarrow's FileNotFoundError says just the path
        where = self._shown(named[-1] if named else path)
        text = str(exc).lower()
        if "encrypt" in text or "decrypt" in text:
            reason, hint = "the file is encrypted", "sluice reads unencrypted Parquet only"
        elif "size is 0 bytes" in text:
            reason, hint = "the file is empty (0 bytes)", "delete it or write it again"
        elif ("magic bytes not found" in text or "minimum file footer" in text) and (
                kind := _text_kind(self.location.filesystem, named[-1] if named else path)):
            reason = f"not a Parquet file: it is {kind}"
            hint = "sluice reads Parquet only: convert it first, or move it out of the input"
        elif "magic bytes not found" in text:
            reason = "not a Parquet file (no Parquet footer: corrupt or truncated)"
            hint = "write it again, or move it out of the input"
        elif isinstance(exc, FileNotFoundError) or "no such file" in text:
            reason = "the file is gone"
            hint = "it was deleted, or replaced after the run was planned; run again"
        else:
            reason = first.rsplit("': ", 1)[-1].rstrip(" :")
            hint = "the file is corrupt or truncated; write it again, or move it out of the input"
        return DataError(f"cannot read Parquet file '{where}': {reason}", hint=hint)

    def _filtered(self, rows: pa.Table, path: str) -> pa.Table:
        """The rows of file ``path`` the filter keeps; a filter that fails on them (an
        overflow, a bad cast) is its own error, not the file's (it was reported as a
        corrupt file to write again)."""
        try:
            return rows.filter(self._filter)
        except ARROW_ERRORS as exc:
            from operators.expressions import value_failure

            if self.pushed is not None and self._own_filter_holds(rows):
                step, where, _ = self.pushed
                detail, hint = value_failure(exc, [where], rows,
                                             also=", or cast the column first")
                raise DataError(f"filter step '{step}': where {where!r} failed on the rows "
                                f"of '{self._shown(path)}' (given to the read to skip what "
                                f"it cannot keep): {detail}", hint=hint, param="where"
                                ) from None
            detail, hint = value_failure(exc, [self.params.filter], rows,
                                         also=", or cast the column first", on_read=True)
            raise DataError(f"read_parquet filter {self.params.filter!r} failed on the rows "
                            f"of '{self._shown(path)}': {detail}", hint=hint) from None

    def _own_filter_holds(self, rows: pa.Table) -> bool:
        """Whether the read's own filter (before a filter step's was given to it) runs on
        ``rows`` without an error: then the given part is the one that failed."""
        assert self.pushed is not None
        own = self.pushed[2]
        if not own:
            return True
        from operators.expressions import check_filter

        try:
            rows.filter(check_filter(own, self._filter_schema))
        except ARROW_ERRORS:
            return False
        return True

    @cached_property
    def dataset(self) -> ds.Dataset:
        loc = self.location
        try:
            return self._every_files_columns(self._discover(loc, loc.path.rstrip("/")
                                                            or loc.path))
        except SluiceError:
            raise
        except _io_errors() as exc:
            raise self._failure(exc, loc.path) from None

    def _every_files_columns(self, dataset: ds.Dataset) -> ds.Dataset:
        """The dataset with the columns of every file, not only of the first (or of its
        manifest): a column only later files have comes after the others (before the
        hive columns), in the type of the first file that has it; a column the schema
        holds as null only (an empty column) takes a file's real type. The footers are
        read side by side, once (the partitions reuse them)."""
        fragments = list(dataset.get_fragments())
        before = self.__dict__.get("schema_before")
        if len(fragments) < 2 and before is None:
            return dataset
        if before is not None and self.params.incremental:
            # the columns of the files earlier runs read are known: only new files' footers
            read = self.__dict__["read_before"]
            stamps = self.stamps(fragments)
            fragments = [f for f in fragments if read.get(f.path) != stamps[f.path]]
        footers = self._footers(fragments)
        schema = base = _schema_without_views(dataset.schema)
        held = {name for physical in footers for name in physical.names}
        held.update(before.names if before is not None else [])
        at = max((i + 1 for i, f in enumerate(schema) if f.name in held), default=0)
        added: dict[str, pa.Field] = {}
        for physical in [before, *footers] if before is not None else footers:
            for field in physical:
                i = schema.get_field_index(field.name)
                if i >= 0 and pa.types.is_null(schema.field(i).type):
                    schema = schema.set(i, schema.field(i).with_type(field.type))
                elif i < 0 and (field.name not in added
                                or pa.types.is_null(added[field.name].type)):
                    added[field.name] = field.remove_metadata()
        if not added and schema == base:
            return dataset
        for field in reversed(added.values()):
            schema = schema.insert(at, field)
        return dataset.replace_schema(schema)

    def _footers(self, fragments: list[Any]) -> list[pa.Schema]:
        """Each file's own schema (its footer; views as plain types), each read once: on
        an object store side by side, where each is a round trip."""
        known: dict[str, pa.Schema] = self.__dict__.setdefault("footer_of", {})

        def footer(fragment: Any) -> pa.Schema:
            try:
                return _schema_without_views(fragment.physical_schema)
            except _io_errors() as exc:
                raise self._failure(exc, fragment.path) from None

        unread = [f for f in fragments if f.path not in known]
        if len(unread) > 1 and not self.location.local:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(16, len(unread))) as pool:
                known.update(zip([f.path for f in unread], pool.map(footer, unread),
                                 strict=True))
        else:
            known.update((f.path, footer(f)) for f in unread)
        return [known[f.path] for f in fragments]

    def _discover(self, loc: Location, path: str) -> ds.Dataset:
        import pyarrow.dataset as ds

        manifests = _Manifests(loc, self._listed)
        if GLOB_CHARS.search(path):
            base = glob_base(path)
            files = self._glob(loc, path, base, manifests)
            if not files:
                raise DataError(f"no files match '{self.params.path}'")
            return self._files_dataset(files, base, None)
        info = loc.filesystem.get_file_info(path)
        if info.type == pa.fs.FileType.NotFound:
            raise DataError(f"no such file or directory: '{self.params.path}'",
                            hint="check the path and the params in it")
        if info.type != pa.fs.FileType.Directory:
            return ds.dataset(path, filesystem=loc.filesystem, format="parquet")
        manifest = manifests.get(path)
        if manifest is not None:
            return self._files_dataset(self._listed(manifest, path), path, manifest)
        files = self._directory_files(loc, path, manifests)
        if not files:
            raise DataError(f"no Parquet files in directory '{self.params.path}'")
        return self._files_dataset(files, path, None)

    def _directory_files(self, loc: Location, directory: str,
                         manifests: _Manifests) -> list[str]:
        """The data files below a directory that has no manifest of its own: hidden names
        ('_', '.') left out, as pyarrow's discovery does. Their sizes and times, which the
        listing says, are kept (``stamps``: an object store's listing says a thousand in
        one request)."""
        selector = pa.fs.FileSelector(directory, recursive=True)
        found = [f for f in loc.filesystem.get_file_info(selector)
                 if f.type == pa.fs.FileType.File
                 and not _hidden(posixpath.relpath(f.path, directory))
                 and manifests.committed(f.path)]
        self._listed_stamps.update((f.path, _stamp(f)) for f in found)
        return sorted(f.path for f in found)

    @property
    def _listed_stamps(self) -> dict[str, list[int]]:
        return self.__dict__.setdefault("listed_stamps", {})

    def _glob(self, loc: Location, pattern: str, base: str,
              manifests: _Manifests) -> list[str]:
        """The data files a glob names; a directory it matches stands for its data files."""
        files: list[str] = []
        try:
            found = loc.fsspec_fs.glob(pattern, detail=True)
        except ValueError as exc:  # not a pattern: no file to call corrupt
            raise DataError(f"'{self.params.path}' is not a glob read_parquet takes: {exc}",
                            hint="** stands alone between slashes (data/**/*.parquet); *, ? "
                                 "and [...] match within a name") from None
        for path, info in sorted(found.items()):
            path = path.rstrip("/")
            if _hidden(posixpath.relpath(path, base)):
                continue
            if info.get("type") != "directory":
                if manifests.committed(path):
                    files.append(path)
                continue
            manifest = manifests.get(path)
            if manifest is not None:
                files.extend(self._listed(manifest, path))
            else:
                files.extend(self._directory_files(loc, path, manifests))
        # ``**`` matches a folder and the files in it: each file is read once
        return list(dict.fromkeys(files))

    def _listed(self, manifest: dict[str, Any], directory: str) -> list[str]:
        """The data files a sluice manifest lists, checked to lie inside its directory."""
        files = manifest.get("files")
        where = self._shown(posixpath.join(directory, MANIFEST))
        if not isinstance(files, list) or not all(
            isinstance(f, str) and f and not f.startswith("/")
            and not posixpath.normpath(f).startswith("..") for f in files
        ):
            raise DataError(f"manifest '{where}' is damaged: 'files' must list relative paths",
                            hint="write the output again")
        if not files:
            raise DataError(
                f"'{self._shown(directory)}' has no committed output: a sluice run writing it "
                "has not finished, or died", hint="wait for it, or run the job that writes it")
        return [posixpath.join(directory, f) for f in files]

    def _files_dataset(self, files: list[str], base: str,
                       manifest: dict[str, Any] | None) -> ds.Dataset:
        """A dataset of listed files; a sluice manifest's schema gives column order and the
        types of hive partition columns (else they are inferred from the paths)."""
        import pyarrow.dataset as ds

        schema = _decode_schema((manifest or {}).get("schema"))
        partition_by = (manifest or {}).get("partition_by") or []
        partitioning: Any = ds.HivePartitioning.discover(infer_dictionary=False)
        if schema is not None and all(schema.get_field_index(c) >= 0 for c in partition_by):
            # a folder's value parsed as a type pyarrow parses paths into (a dictionary's
            # values, a decimal's text), then read as the manifest's type (``_casts``)
            for c in partition_by:
                field = schema.field(c)
                parsed = _plain(field.type)
                if pa.types.is_decimal(parsed):
                    parsed = pa.string()
                if parsed != field.type:
                    self._partition_types[c] = field.type
                    schema = schema.set(schema.get_field_index(c), field.with_type(parsed))
            partitioning = ds.partitioning(pa.schema([schema.field(c) for c in partition_by]),
                                           flavor="hive")
        else:
            # an incremental read's columns so far: no footer read to find them (the
            # first file's would be, and it was read before)
            schema = self.__dict__.get("schema_before") if self.params.incremental else None
            if schema is not None:
                schema = self._with_new_keys(schema, files, base, partitioning)
        return ds.dataset(files, filesystem=self.location.filesystem, format="parquet",
                          partitioning=partitioning, partition_base_dir=base, schema=schema)

    def _with_new_keys(self, schema: pa.Schema, files: list[str], base: str,
                       partitioning: Any) -> pa.Schema:
        """``schema`` (the columns of the files earlier runs read) with the hive keys of
        folders only files not read before are in (``ds=`` folders after files in the
        folder itself, a ``region=`` level added), as pyarrow's discovery of those files
        types them (a new file's footer read, as the new files' are anyway)."""
        import pyarrow.dataset as ds

        read = self.__dict__.get("read_before") or {}
        new = [f for f in files if f not in read]
        if not new:
            return schema
        try:
            found = ds.dataset(new, filesystem=self.location.filesystem, format="parquet",
                               partitioning=partitioning, partition_base_dir=base)
        except (*_io_errors(), pa.ArrowException):
            return schema  # a file that does not open: its footer's read says which
        for field in found.partitioning.schema if found.partitioning is not None else []:
            if schema.get_field_index(field.name) < 0:
                schema = schema.append(field)
        return schema

    def shadowed_columns(self) -> list[str]:
        """The hive keys of the folders (``region=north``) that the files hold as columns
        too: the folder's value is read, the files' own values of them are not."""
        try:
            first = next(iter(self.dataset.get_fragments()), None)
            if first is None:
                return []
            physical = first.physical_schema
        except (*_io_errors(), SluiceError):
            return []
        base = glob_base(self.location.path)
        if not first.path.startswith(base + "/"):
            return []  # one file: no folders of its own
        folders = posixpath.dirname(first.path[len(base) + 1:]).split("/")
        keys = [segment.split("=", 1)[0] for segment in folders if "=" in segment]
        return [key for key in dict.fromkeys(keys) if key in physical.names
                and self.full_schema.get_field_index(key) >= 0]

    @cached_property
    def full_schema(self) -> pa.Schema:
        """The dataset's schema (every column, hive partition keys included; view types
        as their plain ones: ``without_views``)."""
        return _schema_without_views(self.dataset.schema)

    @cached_property
    def _filter(self) -> Any:
        """The filter, on the columns as the step reads them: a column ``schema`` casts
        (text in the files, int64 declared) compares as the declared type."""
        if not self.params.filter:
            return None
        from operators.expressions import ExpressionError, check_filter

        try:
            return check_filter(self.params.filter, self._filter_schema)
        except ExpressionError as exc:
            listed = "the columns are:" in str(exc)  # an unknown column's message has them
            raise ParamError(f"filter: {exc}", hint=None if listed else
                             "columns: " + ", ".join(self.full_schema.names[:20])) from None

    @cached_property
    def _filter_schema(self) -> pa.Schema:
        """Every column of the dataset, each a column the read casts to another kind of
        value (not only another width or a dictionary's) as the type it is cast to."""
        full = self.full_schema
        for name, want in self._casts.items():
            i = full.get_field_index(name)
            if _plain(full.field(i).type) != _plain(want):
                full = full.set(i, full.field(i).with_type(want))
        return full

    @cached_property
    def _cast_filter_columns(self) -> frozenset[str]:
        """The columns the filter reads as another type than the files hold: what Arrow
        prunes and scans by (the files' types) leaves them out; the rows are filtered
        once cast (``read``)."""
        return frozenset(c for c in self._filter_columns
                         if self._filter_schema.field(c).type != self.full_schema.field(c).type)

    @cached_property
    def _pushed_filter(self) -> Any:
        """What of the filter the hive partitions prune by: all of it, but the parts
        reading a column the read casts (``_cast_filter_columns``)."""
        if not self._cast_filter_columns:
            return self._filter
        from operators.expressions import nan_safe_filter

        return nan_safe_filter(self.params.filter, (), self._filter_schema,
                               self._cast_filter_columns)

    @cached_property
    def _filter_columns(self) -> list[str]:
        """The columns the filter reads."""
        if self._filter is None:
            return []
        from operators.expressions import referenced_columns

        return referenced_columns(self.params.filter)

    def _nan_columns(self, physical: pa.Schema) -> frozenset[str]:
        """The columns the filter reads that can hold NaN in a file of this physical
        schema: floating-point in the dataset's schema or in the file (a file's double
        column where the first file's is int64, read with a declared `schema`)."""
        return frozenset(
            c for c in self._filter_columns for schema in (self.full_schema, physical)
            if schema.get_field_index(c) >= 0
            and pa.types.is_floating(_plain(schema.field(c).type)))

    def _row_group_filter(self, physical: pa.Schema) -> Any:
        """What of the filter a file's row-group statistics may judge: the filter itself,
        or where it reads a column that can hold NaN (whose min and max leave NaN out: a
        row group of 1.0 and NaN says min = max = 1.0, and 'x != 1' would skip its NaN
        row), its parts that a NaN cannot make true ('x > 10' of 'x > 10 and x != 12';
        ``nan_safe_filter``), or None."""
        nan_columns = self._nan_columns(physical)
        if not nan_columns and not self._cast_filter_columns:
            return self._filter
        from operators.expressions import nan_safe_filter

        return nan_safe_filter(self.params.filter, nan_columns, self._filter_schema,
                               self._cast_filter_columns)

    @cached_property
    def _casts(self) -> dict[str, pa.DataType]:
        """The declared types that differ from the data's, each checked to be castable;
        and hive columns whose folders are parsed as another type than the output's."""
        full = self.full_schema
        casts: dict[str, pa.DataType] = dict(self._partition_types)
        for name, type_name in (self.params.schema_ or {}).items():
            i = full.get_field_index(name)
            if i < 0:
                raise SchemaError(f"schema names column '{name}' that the data does not have",
                                  hint="columns: " + ", ".join(full.names[:20]))
            have, want = full.field(i).type, parse_type(type_name)
            if have == want:
                continue
            if not castable(have, want):
                raise DataError(
                    f"'{self._shown(self.location.path)}': column '{name}' is {have}, which "
                    f"cannot be cast to {want}", hint="declare a type the column converts to")
            casts[name] = want
        return casts

    def is_local(self) -> bool:
        return self.location.local

    def schema(self) -> pa.Schema:
        schema, problems = self.planned_schema()
        if problems:
            raise problems[0]
        return schema

    def planned_schema(self) -> tuple[pa.Schema, list[SluiceError]]:
        """The schema the read gives, and every problem of the parameters it is made
        from (the filter's, the declared types', the columns'), so that validate says them
        all at once: the schema then has the columns ``columns`` names that the data has
        (and the data's types where a declared one cannot be had). Raises where the data
        cannot be listed."""
        full = self.full_schema
        problems: list[SluiceError] = []
        try:
            if self.params.filter:
                self._filter  # noqa: B018 - validates the filter against the full schema
        except SluiceError as exc:
            problems.append(exc)
        filter_wrong = bool(problems)
        try:
            casts = self._casts
        except SluiceError as exc:
            problems.append(exc)
            casts = dict(self._partition_types)
        columns = self.params.columns
        if columns is not None:
            try:
                require_columns(full, columns)
            except SchemaError as exc:
                problems.append(exc)
            # a column only the filter reads is declared as the filter compares it (which
            # columns it reads is not known where the filter is wrong)
            unread = [] if filter_wrong else [c for c in self.params.schema_ or {}
                                              if c not in columns
                                              and c not in self._filter_columns]
            if unread:
                problems.append(SchemaError(
                    f"schema names column '{unread[0]}' that is not read",
                    hint="add it to `columns` (or the filter), or drop it from `schema`"))
            full = pa.schema([full.field(c) for c in columns if full.get_field_index(c) >= 0])
        for name, want in casts.items():
            i = full.get_field_index(name)
            if i >= 0:
                full = full.set(i, full.field(i).with_type(want))
        return full, problems

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return []

    @cached_property
    def _kept(self) -> list[tuple[Any, pa.Schema]]:
        """Each file the filter keeps by its hive partition, with its own schema (the
        footers, read once: ``_footers``)."""
        flt = self._pushed_filter
        try:
            # the whole filter prunes hive partitions here (a folder's value is exact, NaN
            # too), what statistics may judge of it prunes row groups in ``_pieces``
            fragments = _pruned(lambda: list(self.dataset.get_fragments(filter=flt)),
                                lambda: list(self.dataset.get_fragments()), flt)
        except _io_errors() as exc:
            raise self._failure(exc, self.location.path) from None
        if self.params.incremental and "read_before" in self.__dict__:
            fragments = self._new(fragments)
        return list(zip(fragments, self._footers(fragments) if fragments else [],
                        strict=True))

    def bind_read_before(self, files: dict[str, list[int]], schema: str | None = None
                         ) -> None:
        """For an incremental read, before it plans: the files earlier runs read
        (``[size, mtime_ns]`` by path), which it leaves (it keeps ``max_files`` of the
        others, oldest first), and the columns they had (``read_schema``), so that only
        the new files' footers are read."""
        self.__dict__["read_before"] = files
        self.__dict__["schema_before"] = _decode_schema(schema)
        for stale in ("_kept", "_files_checked", "dataset", "full_schema"):
            self.__dict__.pop(stale, None)

    def read_schema(self) -> str:
        """The columns of the files read so far, as an incremental read keeps them."""
        return _encode_schema(self.full_schema)

    def _new(self, fragments: list[Any]) -> list[Any]:
        before: dict[str, list[int]] = self.__dict__["read_before"]
        # as listed, before any row is read: a file rewritten while the run reads it
        # is recorded as it was, and read again by the next run
        stamps = self.__dict__["stamps_listed"] = self.stamps(fragments)
        new = [f for f in fragments if before.get(f.path) != stamps[f.path]]
        self.__dict__["already_read"] = len(fragments) - len(new)
        self.__dict__["waiting"] = 0
        if self.params.max_files is not None and len(new) > self.params.max_files:
            oldest = sorted(new, key=lambda f: (stamps[f.path][1], f.path))
            taken = {f.path for f in oldest[:self.params.max_files]}
            self.__dict__["waiting"] = len(new) - len(taken)
            new = [f for f in new if f.path in taken]
        return new

    def stamps(self, fragments: list[Any]) -> dict[str, list[int]]:
        """Each file's ``[size, mtime_ns]``, as its file system says: as the directory's
        listing said, else asked (a manifest's or a glob's files)."""
        listed = self._listed_stamps
        unlisted = [f.path for f in fragments if f.path not in listed]
        fs = self.location.filesystem
        try:
            if len(unlisted) > 1 and not self.location.local:
                # one listing of the folder (a thousand objects a request), not a
                # request a file
                wanted = set(unlisted)
                listed.update((i.path, _stamp(i)) for i in fs.get_file_info(
                    pa.fs.FileSelector(glob_base(self.location.path), recursive=True))
                    if i.path in wanted)
                unlisted = [p for p in unlisted if p not in listed]
            if unlisted:
                listed.update((i.path, _stamp(i)) for i in fs.get_file_info(unlisted))
        except _io_errors() as exc:
            raise self._failure(exc, self.location.path) from None
        return {f.path: listed[f.path] for f in fragments}

    @cached_property
    def folder(self) -> str:
        """The folder an incremental read's files are recorded relative to, so that a
        dataset moved with its files keeps what was read: the read's directory, a glob's
        folder before its first wildcard, a file's folder."""
        path = self.location.path.rstrip("/") or self.location.path
        if GLOB_CHARS.search(path):
            return glob_base(path)
        try:
            kind = self.location.filesystem.get_file_info(path).type
        except _io_errors() as exc:
            raise self._failure(exc, path) from None
        return posixpath.dirname(path) if kind == pa.fs.FileType.File else path

    def files_read(self) -> dict[str, list[int]]:
        """The files this read reads (``[size, mtime_ns]`` by path): what an incremental
        read records when its run succeeds."""
        kept = [fragment for fragment, _ in self._kept]
        listed = self.__dict__.get("stamps_listed") or self.stamps(kept)
        return {f.path: listed[f.path] for f in kept}

    def incremental_counts(self) -> dict[str, int]:
        """How many files the read takes, how many earlier runs read, how many wait
        (``max_files``)."""
        kept = len(self._kept)
        return {"new_files": kept, "read_before": self.__dict__.get("already_read", 0),
                "waiting": self.__dict__.get("waiting", 0)}

    def check_files(self) -> None:
        """Fail before any data moves where the files this read keeps disagree on the
        columns it reads (``missing``) or on their types (``_check_types``); the
        planner asks, and the partitions."""
        self._files_checked  # noqa: B018 - once per operator

    @cached_property
    def _files_checked(self) -> bool:
        kept = self._kept
        if self.params.missing == "error":
            self._check_columns(kept)
        self._check_types([(fragment.path, physical) for fragment, physical in kept])
        return True

    def _check_columns(self, kept: list[tuple[Any, pa.Schema]]) -> None:
        """Where some of the files read hold a column the read reads and others do not
        (a column added on day 30, dropped, renamed): a DataError naming, for each such
        column, a file that has it and one that lacks it, and how many; reading it as
        nulls is asked for with ``missing: null``, or the column is left out of
        ``columns``. A column a hive folder gives every file is not a file's."""
        import pyarrow.dataset as ds

        if not kept:
            return
        folders = [ds.get_partition_keys(f.partition_expression) for f, _ in kept]
        held = {name for _, physical in kept for name in physical.names}
        # a hive column no file holds is the folders': a file outside them reads null
        read = [name for name in dict.fromkeys([*self.schema().names, *self._filter_columns])
                if name in held or not any(name in keys for keys in folders)]
        lacking: dict[str, list[str]] = {}
        having: dict[str, list[str]] = {}
        for (fragment, physical), keys in zip(kept, folders, strict=True):
            for name in read:
                has = physical.get_field_index(name) >= 0 or name in keys
                (having if has else lacking).setdefault(name, []).append(fragment.path)
        disagree = [name for name in read if name in lacking]
        if not disagree:
            return
        total = f"{len(kept):,} file{'s' if len(kept) != 1 else ''} read"
        said = []
        for name in disagree:
            gone = lacking[name]
            if name in having:
                found = (f"'{name}' is in {len(having[name]):,} of the {total} "
                         f"(e.g. {self._shown(having[name][0])}), not in {len(gone):,} "
                         f"(e.g. {self._shown(gone[0])})")
            else:
                earlier = self._read_before_with(name)
                elsewhere = self._file_with(name, earlier)
                which = "earlier runs read" if earlier else "the filter leaves out"
                found = (f"'{name}' is in none of the {total} (e.g. "
                         f"{self._shown(gone[0])})"
                         + (f"; only in files {which}, such as {self._shown(elsewhere)}"
                            if elsewhere else
                            f"; only in files {which} (the columns they had are kept "
                            "with the files read)" if earlier else ""))
            said.append(found)
        shared = [n for n in self.schema().names if n not in lacking]
        fixes = ["set `missing: null` to read every file's columns, null in the rows of "
                 "the files without one (Spark's mergeSchema)"]
        named = ", ".join(repr(n) for n in disagree)
        if self.params.columns is not None:
            fixes.append(f"leave {named} out of `columns`")
        elif shared and len(shared) <= 12:
            fixes.append(f"read only the columns every file has: `columns: "
                         f"[{', '.join(shared)}]`")
        else:
            fixes.append(f"list the columns to read in `columns:`, without {named}")
        # a column the older files have and the newer ones have instead: renamed?
        renamed = [(a, b) for a in disagree for b in disagree
                   if a in having and b in having and set(having[a]) == set(lacking[b])
                   and set(having[b]) == set(lacking[a]) and having[a][0] < having[b][0]]
        if renamed:
            a, b = renamed[0]
            fixes.append(f"if '{a}' became '{b}' in later files: `missing: null`, then a "
                         f"derive of `{b}: coalesce({b}, {a})`")
        raise DataError("the files disagree on the columns read: " + "; ".join(said),
                        hint="; or ".join(fixes))

    def _read_before_with(self, name: str) -> bool:
        """Whether the columns of the files earlier runs read (an incremental read's
        state) hold ``name``."""
        known = self.__dict__.get("schema_before")
        return (self.params.incremental and known is not None
                and known.get_field_index(name) >= 0)

    def _file_with(self, name: str, earlier: bool, looked_at: int = 20) -> str | None:
        """For a message: a file not read that has column ``name``, among the files
        earlier runs read (``earlier``: at most ``looked_at`` of them, one that no longer
        opens passed over) or else those the filter leaves out."""
        before = self.__dict__.get("read_before", {})
        candidates = [f for f in self.dataset.get_fragments() if (f.path in before) == earlier]
        for fragment in candidates[:looked_at] if earlier else candidates:
            try:
                if fragment.physical_schema.get_field_index(name) >= 0:
                    return fragment.path
            except (*_io_errors(), pa.ArrowException):
                continue  # changed in place since (same size and time): no example
        return None

    def _pieces(self) -> Iterator[tuple[Any, pa.Schema, list[Any]]]:
        """Each file the filter keeps: its fragment, its physical schema and its row
        groups that can hold rows passing the filter (footers read once)."""
        for fragment, physical in self._kept:
            try:
                judged = self._row_group_filter(physical)
                pieces = _pruned(
                    functools.partial(fragment.split_by_row_group, judged,
                                      schema=self._file_schema(physical)),
                    fragment.split_by_row_group, judged)
            except _io_errors() as exc:
                raise self._failure(exc, fragment.path) from None
            yield fragment, physical, pieces

    def estimated_bytes(self) -> int:
        """About how much memory the rows of this read take, from the footers of the
        files and row groups the filter keeps: per column read, its uncompressed size
        in the file, at least its values' width (text: 4 bytes of offset and the mean
        length of its smallest and largest value: a dictionary-encoded text column
        decodes to far more than it takes in the file). Read once per operator (the
        plan's join probe, then the run's shuffle ask for it)."""
        return self._estimated_bytes

    @cached_property
    def _estimated_bytes(self) -> int:
        wanted = set(self.schema().names)
        total = 0
        for fragment, _, pieces in self._pieces():
            metadata = fragment.metadata
            for piece in pieces:
                group = metadata.row_group(piece.row_groups[0].id)
                for j in range(group.num_columns):
                    column = group.column(j)
                    if column.path_in_schema.split(".")[0] in wanted:
                        total += _column_bytes(column)
        return total

    def partitions(self) -> list[PartitionInfo]:
        self.check_files()
        target = self.params.partition_mb * 1024 * 1024
        out: list[PartitionInfo] = []
        for fragment, _, pieces in self._pieces():
            group: list[int] = []
            rows = size = 0
            for piece in pieces:
                rg = piece.row_groups[0]
                if group and size + rg.total_byte_size > target:
                    out.append(self._info(len(out), fragment, group, rows))
                    group, rows, size = [], 0, 0
                group.append(rg.id)
                rows += rg.num_rows
                size += rg.total_byte_size
            if group:
                out.append(self._info(len(out), fragment, group, rows))
        if not out:
            # nothing to read (empty files or everything pruned): one empty partition
            # keeps the schema flowing to the steps after
            out.append(PartitionInfo(0, "", (), 0))
        return out

    def _file_schema(self, physical: pa.Schema) -> pa.Schema:
        """The dataset's schema with a file's own type for each column the file holds in
        another: pyarrow reads (and prunes) the file by it and casts nothing; ``read``
        casts to the step's types, naming the column and the value that does not fit."""
        full = self.full_schema
        for i, field in enumerate(full):
            j = physical.get_field_index(field.name)
            if j >= 0 and physical.field(j).type != field.type:
                full = full.set(i, field.with_type(physical.field(j).type))
        return full

    def _check_types(self, files: list[tuple[str, pa.Schema]]) -> None:
        """Fail before any data moves where files disagree on a read column's type in a
        way no read could mend: a file's type that does not widen to the dataset's
        (int64 where the dataset has double is fine; double where it has int64 is not),
        or, for a column whose type ``schema`` declares, a type with no cast to it (a file
        without the column: ``_check_columns``)."""
        target = self.schema()
        declared = set(self.params.schema_ or {})
        shared: dict[pa.Schema, list[str]] = {}  # files mostly share one schema
        for path, physical in files:
            shared.setdefault(physical, []).append(path)
        by_column: dict[str, dict[pa.DataType, list[str]]] = {}
        for physical, paths in shared.items():
            for field in target:
                j = physical.get_field_index(field.name)
                if j >= 0:
                    by_type = by_column.setdefault(field.name, {})
                    by_type.setdefault(physical.field(j).type, []).extend(paths)
        problems: list[str] = []
        suggested: dict[str, str] = {}
        for name, by_type in by_column.items():
            want = target.field(name).type
            fits = castable if name in declared else widens
            bad = {t: paths for t, paths in by_type.items() if t != want and not fits(t, want)}
            if not bad:
                continue
            found = ", ".join(f"{t} in {self._shown(paths[0])}"
                              + (f" and {len(paths) - 1} more file(s)" if len(paths) > 1 else "")
                              for t, paths in bad.items())
            if name in declared:
                problems.append(f"column '{name}' is {found}, which cannot be cast to the "
                                f"declared {want}")
                continue
            like = by_type.get(want)
            problems.append(f"the files disagree on column '{name}': it is {found}, but {want} "
                            "in the dataset's schema"
                            + (f" (as in {self._shown(like[0])})" if like else ""))
            common = want
            for t in by_type:
                common = promoted(common, t) if common is not None else None
            if common is None and all(castable(t, pa.string()) for t in by_type):
                common = pa.string()
            if common is not None:
                suggested[name] = str(common)
        if not problems:
            return
        if suggested:
            hint = ("declare one type that every file's values convert to, on this "
                    "read_parquet step: `schema: {"
                    + ", ".join(f"{k}: {v}" for k, v in suggested.items()) + "}`")
        else:
            hint = "declare a type every file's column converts to, or write those files again"
        raise DataError("; ".join(problems), hint=hint)

    @staticmethod
    def _info(index: int, fragment: Any, row_groups: list[int], rows: int) -> PartitionInfo:
        return PartitionInfo(index, fragment.path, tuple(row_groups), rows,
                             fragment.partition_expression)

    def ready(self) -> None:
        # pyarrow's dataset module imports pandas: tenths of a second in a fresh worker
        import pyarrow.dataset  # noqa: F401

    def read(self, partition: PartitionInfo) -> pa.Table:
        import pyarrow.dataset as ds

        schema = self.schema()
        if not partition.path:
            return schema.empty_table()
        fmt = ds.ParquetFileFormat()
        groups = list(partition.row_groups or ())
        columns = self.params.columns
        try:
            fragment = fmt.make_fragment(partition.path, self.location.filesystem,
                                         partition_expression=partition.partition_expression,
                                         row_groups=groups)
            pieces = [fragment]
            if groups and [g.id for g in fragment.row_groups] != groups:
                # pyarrow may keep a fragment's row groups in another order than given
                # ([7, 8] as [8, 7]): one at a time, so that rows come in the file's order
                pieces = [fragment.subset(row_group_ids=[g]) for g in groups]
            file_schema = self._file_schema(_schema_without_views(fragment.physical_schema))

            def scan(columns: list[str] | None, scan_filter: Any) -> pa.Table:
                return pa.concat_tables([
                    piece.to_table(schema=file_schema, columns=columns, filter=scan_filter)
                    for piece in pieces])

            table = None
            # a filter reading a column that can hold NaN is not the scan's: the scan
            # would skip row groups by the whole filter (_row_group_filter); nor one
            # reading a column the read casts: the scan has the files' types
            if not self._nan_columns(fragment.physical_schema) \
                    and not self._cast_filter_columns:
                try:
                    table = scan(columns, self._filter)
                except ARROW_ERRORS:
                    if self._filter is None:
                        raise
                    # Arrow's pruning failed on the statistics (see _pruned), or the filter
                    # on the rows: the rows are read as they are and filtered below, so a
                    # file that fails is the file's error, a filter that fails the filter's
            if table is None:  # filtered here, not by the scan's statistics
                if columns is not None:
                    columns = list(dict.fromkeys([*columns, *self._filter_columns]))
                rows = scan(columns, None)
                if self._cast_filter_columns:  # as the filter compares them
                    rows = self._cast(rows, self._filter_schema, partition.path)
                table = self._filtered(rows, partition.path)
                if columns != self.params.columns:
                    table = table.select(self.params.columns)
        except _io_errors() as exc:
            raise self._failure(exc, partition.path) from None
        table = self._cast(table, schema, partition.path)
        if table.schema != schema:
            table = table.cast(schema)
        return table

    def _cast(self, table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
        """``table``'s columns as ``schema`` types them (a file's own type to the step's);
        a value that does not convert is a DataError naming the file and the column."""
        for i, field in enumerate(table.schema):
            want = schema.field(field.name).type
            if field.type == want:
                continue
            try:
                column = table.column(i).cast(want)
            except _io_errors() as exc:
                declared = field.name in (self.params.schema_ or {})
                raise DataError(
                    f"'{self._shown(path)}': column '{field.name}' cannot be cast "
                    f"from {field.type} to {'the declared ' if declared else ''}{want}: "
                    f"{arrow_message(exc)}",
                    hint="fix the data, or declare a type every value converts to"
                    if declared else "declare a type every value converts to on this "
                    f"read_parquet step (`schema: {{{field.name}: ...}}`)") from None
            table = table.set_column(i, field.with_type(want), column)
        return table


# modes that add to the output there is (its files are kept, listed again with the new)
WriteMode = Literal["error", "overwrite", "append", "overwrite_partitions"]
WRITE_MODES: tuple[str, ...] = get_args(WriteMode)
MERGE_MODES = ("append", "overwrite_partitions")


class WriteParquetParams(Params):
    path: str = Field(description="output directory or URL")
    mode: WriteMode = Field(
        "error", description="error: refuse an existing output; overwrite: replace it "
                             "atomically; append: add these rows to it; "
                             "overwrite_partitions: replace the hive partitions these rows "
                             "fall in, keep the others (Spark's dynamic partition overwrite)"
    )
    partition_by: list[str] | None = Field(None, description="hive partition columns")
    compression: Literal["snappy", "zstd", "gzip", "brotli", "lz4", "none"] = Field(
        "snappy", description="Parquet codec of the written files")
    row_group_rows: int = Field(1_000_000, gt=0, description="rows per row group at most")
    durable: bool = Field(
        False, description="fsync files and directories before publishing, so the output "
                           "also survives an OS crash or power loss (slower; a killed run "
                           "is safe without it)")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for URLs")

    @field_validator("path")
    @classmethod
    def _this_machines(cls, value: str) -> str:
        return this_machines(value)

    @model_validator(mode="after")
    def _partitions_named(self) -> WriteParquetParams:
        if self.mode == "overwrite_partitions" and not self.partition_by:
            raise ParamError(
                "mode overwrite_partitions replaces the hive partitions the rows fall in, "
                "and names none", hint="add `partition_by: [...]`, or use `mode: overwrite` "
                                      "to replace the whole output")
        return self


@dataclass
class _Output:
    """What readers of an output directory see now: its data files (relative to it),
    their schema and hive columns (None: not known), and the sluice manifest that lists
    them (None: a foreign dataset, read by listing)."""

    files: list[str]
    schema: pa.Schema | None
    partition_by: list[str] | None
    manifest: dict[str, Any] | None


def _partition_of(relative: str, types: dict[str, pa.DataType]) -> tuple[Any, ...]:
    """The hive partition a file lies in, as values: its folders' ``key=value`` parts,
    unescaped (pyarrow writes ``New%20York``, Spark and Hive ``New York``), the default
    partition as null, each value in its column's type where it converts (a widened
    timestamp's folder spells more digits), so that one partition spelled two ways is
    one."""
    out: list[Any] = []
    for segment in posixpath.dirname(relative).split("/"):
        if "=" not in segment:
            continue
        key, text = segment.split("=", 1)
        text = urllib.parse.unquote(text)
        value: Any = None if text == "__HIVE_DEFAULT_PARTITION__" else text
        if value is not None and key in types:
            with contextlib.suppress(pa.ArrowException, TypeError, ValueError):
                value = pa.scalar(text).cast(_plain(types[key])).as_py()
        out.append((key, value))
    return tuple(out)


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "no column"


# Staging locks this process holds, by staging path: tokens travel to workers and
# must stay picklable, so the descriptors live here, on the driver that began the write.
_STAGING_LOCKS: dict[str, int | None] = {}


@register("write_parquet")
class WriteParquet(Sink):
    """Write Parquet atomically, with a ``_SUCCESS`` manifest; optionally hive-partitioned.

    ```yaml
    - op: write_parquet
      path: data/scores/ds=${ds}
      mode: overwrite        # error (default) | overwrite | append | overwrite_partitions
      partition_by: [region]
    ```

    ``append`` adds the rows to the output there is, and ``overwrite_partitions`` replaces
    only the hive partitions the rows fall in (a daily job that rewrites yesterday's
    ``ds=`` and no other): the new files are listed with the kept ones in one new
    manifest, so a reader sees the output before or after, never between. The rows must
    have the output's columns, each of its type or one that widens to it (int32 into
    int64), and the same ``partition_by``; otherwise the run stops before any data moves.
    """

    Params = WriteParquetParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.partition_by or [])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.input_columns(schema), "partition_by column")
        return schema

    def _exists_error(self) -> DataError:
        return DataError(f"output '{self.params.path}' already exists",
                         hint="set `mode: overwrite` to replace it, or write elsewhere")

    def _io_error(self, exc: BaseException) -> SluiceError:
        problem = store_problem(exc, self.params.path)
        if problem is not None:
            return problem
        return DataError(f"cannot write Parquet to '{self.params.path}': {arrow_message(exc)}",
                         hint="check the path, its permissions and the free space")

    def preflight(self, schema: pa.Schema | None = None) -> None:
        if self.params.mode != "error":
            if schema is not None:
                self._preflight_merge(schema)
            return
        try:
            loc = resolve(self.params.path, self.params.storage_options)
            if loc.local:
                exists = self._existing(loc)
            else:
                manifest = read_manifest(loc, loc.path)
                exists = (loc.filesystem.get_file_info(loc.path).type == pa.fs.FileType.File
                          or (bool(manifest.get("files")) if manifest is not None
                              else bool(self._foreign_files(loc))))
        except SluiceError:
            return  # (begin says what is wrong with the place)
        except _io_errors():
            return
        if exists:
            raise self._exists_error()

    def _preflight_merge(self, schema: pa.Schema) -> None:
        """Rows of ``schema`` the output there is cannot take (``_check_merge``, which
        ``begin`` runs again on the rows as they come)."""
        try:
            loc = resolve(self.params.path, self.params.storage_options)
        except SluiceError:
            return  # (begin says what is wrong with the place)
        try:
            self._check_merge(loc, schema)
        except _io_errors():
            return

    def begin(self, run_id: str, schema: pa.Schema) -> dict[str, Any]:
        loc = resolve(self.params.path, self.params.storage_options)
        token: dict[str, Any] = {"run_id": run_id, "schema": schema, "local": loc.local}
        try:
            token.update(self._begin_local(loc, run_id, schema) if loc.local
                         else self._begin_remote(loc, run_id, schema))
        except SluiceError:
            raise
        except _io_errors() as exc:
            raise self._io_error(exc) from None
        return token

    def _begin_local(self, loc: Location, run_id: str, schema: pa.Schema) -> dict[str, Any]:
        target = loc.path
        parent, name = os.path.split(target)
        os.makedirs(parent, exist_ok=True)
        # staging directories of runs that died (nobody holds their lock any more)
        sweep_stale(parent, f".{name}{STAGING_MARK}")
        if self.params.mode == "error" and self._existing(loc):
            raise self._exists_error()
        into = self._check_merge(loc, schema)
        staging = os.path.join(parent, f".{name}{STAGING_MARK}{run_id}")
        _STAGING_LOCKS[staging] = claim_dir(staging)
        return {"target": target, "staging": staging, "schema": into}

    @staticmethod
    def _existing(loc: Location) -> bool:
        """A local target exists unless it is absent or an empty directory."""
        info = loc.filesystem.get_file_info(loc.path)
        if info.type == pa.fs.FileType.NotFound:
            return False
        if info.type != pa.fs.FileType.Directory:
            return True
        return bool(loc.filesystem.get_file_info(pa.fs.FileSelector(loc.path)))

    def _begin_remote(self, loc: Location, run_id: str, schema: pa.Schema
                      ) -> dict[str, Any]:
        fs = loc.filesystem
        # an object at the target's own key: readers see it until the commit deletes it
        replaces_file = fs.get_file_info(loc.path).type == pa.fs.FileType.File
        manifest = read_manifest(loc, loc.path)
        foreign = [] if manifest is not None else self._foreign_files(loc)
        committed = bool(manifest.get("files")) if manifest is not None else bool(foreign)
        if self.params.mode == "error" and (committed or replaces_file):
            raise self._exists_error()
        into = self._check_merge(loc, schema)
        fs.create_dir(loc.path, recursive=True)
        if manifest is None:
            # a manifest listing what readers see now (nothing, or the files of a foreign
            # dataset being overwritten) keeps the files of this run out of their sight
            _write_manifest(fs, loc.path, {"format": MANIFEST_FORMAT, "run_id": run_id,
                                           "files": foreign, "pending": not foreign})
        return {"target": loc.path, "staging": loc.path, "replaces_file": replaces_file,
                "schema": into}

    @staticmethod
    def _foreign_files(loc: Location) -> list[str]:
        """The data files a reader finds in a target that has no sluice manifest (as
        read_parquet lists a directory: every file but hidden ones). No sluice run leaves
        files where there is no manifest: a local run stages elsewhere, and on a store
        it writes a manifest before its first file."""
        if loc.filesystem.get_file_info(loc.path).type != pa.fs.FileType.Directory:
            return []
        out = []
        for f in loc.filesystem.get_file_info(pa.fs.FileSelector(loc.path, recursive=True)):
            rel = posixpath.relpath(f.path, loc.path)
            if f.type == pa.fs.FileType.File and not _hidden(rel):
                out.append(rel)
        return sorted(out)

    def _filesystem(self, token: dict[str, Any]) -> pa.fs.FileSystem:
        if token["local"]:
            return pa.fs.LocalFileSystem()
        return resolve(self.params.path, self.params.storage_options).filesystem

    def _store_fs(self, token: dict[str, Any]) -> Any:
        """An object store's fsspec filesystem (``token["target"]`` is a path in it)."""
        return resolve(self.params.path, self.params.storage_options).fsspec_fs

    def write(self, token: dict[str, Any], part: pa.Table, index: int) -> WriteResult:
        if part.num_rows == 0:
            return WriteResult()
        if self.params.mode in MERGE_MODES and part.schema != token["schema"]:
            part = self._in_output_types(part, token["schema"])
        try:
            written = self._write_files(token, part, f"part-{token['run_id']}-{index:05d}")
        except SluiceError:
            raise
        except _io_errors() as exc:
            raise self._io_error(exc) from None
        return WriteResult(files=sorted(written), rows=part.num_rows, bytes=part.nbytes)

    def _in_output_types(self, part: pa.Table, schema: pa.Schema) -> pa.Table:
        """The rows in the output's types (an append's): a value that does not fit (a
        uint64 over int64's range) is an error before anything is published."""
        def failure(field: pa.Field, have: pa.DataType, exc: BaseException) -> SluiceError:
            return DataError(
                f"cannot {self._into()}: column '{field.name}' holds a value its type "
                f"there ({field.type}) cannot hold: {arrow_message(exc)}",
                hint="filter or cast those rows first, or set `mode: overwrite` to replace "
                     "the output")

        return conformed(part, schema, failure)

    def _write_files(self, token: dict[str, Any], part: pa.Table, stem: str) -> list[str]:
        import pyarrow.dataset as ds

        fs = self._filesystem(token)
        compression = None if self.params.compression == "none" else self.params.compression
        staging = token["staging"]
        written: list[str] = []
        if self.params.partition_by:
            def visit(f: Any) -> None:
                written.append(posixpath.relpath(f.path, staging))

            ds.write_dataset(
                part, staging, filesystem=fs, format="parquet",
                partitioning=self.params.partition_by, partitioning_flavor="hive",
                basename_template=stem + "-{i}.parquet",
                existing_data_behavior="overwrite_or_ignore", file_visitor=visit,
                # rows in each file in the partition's order (a sort's, a window's): the
                # writer's threads otherwise put its batches in any order
                preserve_order=True,
                file_options=ds.ParquetFileFormat().make_write_options(compression=compression),
                max_rows_per_group=self.params.row_group_rows,
                min_rows_per_group=min(self.params.row_group_rows, part.num_rows),
            )
            return written
        name = stem + ".parquet"
        with fs.open_output_stream(posixpath.join(staging, name)) as sink:
            pq.write_table(part, sink, compression=compression or "none",
                           row_group_size=self.params.row_group_rows)
        return [name]

    def _check_merge(self, loc: Location, schema: pa.Schema) -> pa.Schema:
        """The schema the rows are written in: an append or partition overwrite writes
        them in the output's types (so that its hive folders are spelled as the
        output's, and a value that does not fit fails before anything is published);
        rows the output cannot take stop here, before any data moves (the commit checks
        again, against the output then)."""
        if self.params.mode in MERGE_MODES:
            current = self._current(loc)
            if current is not None:
                return self._merged_schema(current, schema)
        return schema

    def commit(self, token: dict[str, Any], results: list[WriteResult]) -> dict[str, Any]:
        fs = self._filesystem(token)
        files = [f for r in results for f in r.files]
        rows = sum(r.rows for r in results)
        replaced: list[str] = []
        merged = False
        try:
            # writers publishing into one output take turns (a lock file locally, a
            # lock object created exclusively on a store)
            with (locked_beside(token["target"]) if token["local"]
                  else locked_on_store(self._store_fs(token), token["target"])):
                current = (self._current(resolve(self.params.path, self.params.storage_options))
                           if self.params.mode in MERGE_MODES else None)
                # (an empty result into a store's new output still makes one: the
                # schema's; a local target with nothing in it is current None)
                merged = current is not None and bool(current.files or files
                                                      or token["local"])
                if merged and not files and not current.files:
                    # no rows into a folder of no data: an output of the schema still
                    files = [self._empty_file(token)]
                if merged:
                    entry, replaced = self._merge(token, current, files, rows)
                else:
                    entry = self._commit_whole(token, files, rows)
        except BaseException as exc:
            # nothing was published: the previous output (or none) stays as it was
            self.abort(token)
            if isinstance(exc, SluiceError) or not isinstance(exc, _io_errors()):
                raise
            raise self._io_error(exc) from None
        # published: what is left to delete is no reader's any more
        for name in replaced:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_file(posixpath.join(token["target"], name))
            folder = posixpath.dirname(name)
            while token["local"] and folder:  # a replaced partition's folder, now empty
                try:
                    os.rmdir(os.path.join(token["target"], folder))
                except OSError:
                    break  # not empty (its new files, another partition's): kept
                folder = posixpath.dirname(folder)
        if not token["local"] and not merged:
            # the previous output's files, under the lock again: what a run committed
            # since (its manifest's) and another run's files in flight are kept
            with locked_on_store(self._store_fs(token), token["target"]):
                self._drop_unlisted(fs, token, set(entry.pop("listed")),
                                    resolve(self.params.path, self.params.storage_options))
            if token.get("replaces_file"):
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(token["target"])
        entry.pop("listed", None)
        return entry

    def _manifest(self, token: dict[str, Any], files: list[str], rows: int | None,
                  schema: pa.Schema, run_rows: int | None = None) -> dict[str, Any]:
        """The ``_SUCCESS`` of a commit: its files and ``rows`` in all, and ``run_rows``,
        the rows this commit added (what a killed run's settling reads: ``published_rows``)."""
        return {"format": MANIFEST_FORMAT, "run_id": token["run_id"], "files": files,
                "rows": rows, **({"run_rows": run_rows} if run_rows is not None else {}),
                "partition_by": list(self.params.partition_by or []),
                "schema": _encode_schema(schema), "mode": self.params.mode,
                "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _commit_whole(self, token: dict[str, Any], files: list[str], rows: int
                      ) -> dict[str, Any]:
        """A whole new output: the manifest in the staging directory, then the directory
        in the target's place (local), or the manifest last (object stores)."""
        fs = self._filesystem(token)
        if not files:  # an empty result is still a readable output with the right schema
            files = [self._empty_file(token)]
        if not token["local"]:
            self._check_own_files(token, files)
        crash_point("after-parts")
        _write_manifest(fs, token["staging"], self._manifest(token, files, rows,
                                                             token["schema"], rows))
        if token["local"]:
            self._publish_local(token)
        return {"path": self.params.path, "rows": rows, "files": len(files), "listed": files,
                **self._folders(files)}

    def _folders(self, files: list[str]) -> dict[str, int]:
        """How many hive partition folders a partitioned write's files went into."""
        if not self.params.partition_by:
            return {}
        return {"folders": len({posixpath.dirname(f) for f in files})}

    def _empty_file(self, token: dict[str, Any]) -> str:
        """A file of no rows in the schema, staged; its name."""
        empty = f"part-{token['run_id']}-00000.parquet"
        with self._filesystem(token).open_output_stream(
                posixpath.join(token["staging"], empty)) as sink:
            pq.write_table(token["schema"].empty_table(), sink)
        return empty

    def _current(self, loc: Location) -> _Output | None:
        """The output readers see at the target now; None where there is none (nothing
        there, or an empty local directory)."""
        import pyarrow.dataset as ds

        fs = loc.filesystem
        info = fs.get_file_info(loc.path)
        if info.type == pa.fs.FileType.NotFound or (loc.local and not self._existing(loc)):
            return None
        if info.type != pa.fs.FileType.Directory:
            raise DataError(f"output '{self.params.path}' is a file, not a directory of "
                            f"Parquet files: there is nothing to {self.params.mode} to",
                            hint="write elsewhere, or set `mode: overwrite` to replace it")
        manifest = read_manifest(loc, loc.path)
        if manifest is None:
            files = self._foreign_files(loc)
        else:
            files = manifest.get("files")
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise DataError(f"manifest '{posixpath.join(self.params.path, MANIFEST)}' "
                                "is damaged: 'files' must list relative paths",
                                hint="set `mode: overwrite` to write the output again")
        schema = _decode_schema((manifest or {}).get("schema"))
        partition_by = (manifest or {}).get("partition_by") if schema is not None else None
        if schema is None and files:
            # a foreign dataset (or a manifest that lists one): its types as a reader
            # of the files finds them, hive columns from the paths
            schema = ds.dataset([posixpath.join(loc.path, f) for f in files], filesystem=fs,
                                format="parquet", partition_base_dir=loc.path,
                                partitioning=ds.HivePartitioning.discover(
                                    infer_dictionary=False)).schema
            partition_by = [key for key, _ in _partition_of(files[0], {})]
        return _Output(files, schema, partition_by, manifest)

    def _into(self) -> str:
        """What a merge does, for messages: append to / overwrite the partitions of."""
        doing = ("append to" if self.params.mode == "append"
                 else "overwrite the partitions of")
        return f"{doing} output '{self.params.path}'"

    def _merged_schema(self, current: _Output, schema: pa.Schema) -> pa.Schema:
        """The output's schema with these rows added: its own, where the rows' types
        widen to it; a foreign dataset's types (read from files and paths) promoted to
        hold both. A DataError saying what differs and how to line the rows up."""
        where = self._into()
        want_by = list(self.params.partition_by or [])
        if current.partition_by is not None and current.files and current.partition_by != want_by:
            if current.partition_by:
                hint = (f"set `partition_by: [{', '.join(current.partition_by)}]` as the "
                        "output has it, or `mode: overwrite` to replace it")
            elif self.params.mode == "append":
                hint = "leave `partition_by` out, as the output has none"
            else:
                hint = ("it has no partitions to replace: `mode: append` without "
                        "`partition_by` adds the rows, `mode: overwrite` replaces it")
            raise DataError(
                f"cannot {where}: it is partitioned by "
                f"{_names(current.partition_by)}, this step writes by {_names(want_by)}",
                hint=hint)
        if current.schema is None:
            return schema
        have = current.schema
        lacking = [n for n in have.names if n not in schema.names]
        extra = [n for n in schema.names if n not in have.names]
        if lacking or extra:
            said = ([f"the rows lack its column(s) {', '.join(lacking)}"] if lacking else []) + (
                [f"it has no column(s) {', '.join(extra)}"] if extra else [])
            pairs = renames(extra, lacking)
            raise DataError(f"cannot {where}: {'; '.join(said)}",
                            hint=(f"{rename_hint(pairs)}, " if pairs else "")
                            + "give the rows the output's columns (`select`, `derive`, "
                              "`drop`), or set `mode: overwrite` to replace it")
        fields = []
        for field in have:
            new = schema.field(field.name).type
            if pa.types.is_null(field.type):  # a column of nulls only so far takes any
                kept: pa.DataType | None = new
            elif current.manifest is not None and current.manifest.get("schema"):
                kept = field.type if widens(new, field.type) else None
            else:
                kept = promoted(field.type, new)
            if kept is None:
                raise DataError(
                    f"cannot {where}: column '{field.name}' is {new} in the rows "
                    f"and {field.type} in the output",
                    hint=f"cast it first (`op: cast`, `columns: {{{field.name}: "
                         f"{yaml_text(str(field.type))}}}`), or set `mode: overwrite` to "
                         "replace the output")
            fields.append(field.with_type(kept))
        return pa.schema(fields, metadata=have.metadata)

    def _merge(self, token: dict[str, Any], current: _Output, files: list[str], rows: int
               ) -> tuple[dict[str, Any], list[str]]:
        """Add this run's files to the output there is (``append``), or put them in the
        place of the files of the hive partitions they fall in (``overwrite_partitions``):
        one new manifest lists the kept files and the new. Returns the record's entry and
        the files it replaced (the caller deletes them: no reader's any more)."""
        target, mode = token["target"], self.params.mode
        schema = self._merged_schema(current, token["schema"])
        types = {f.name: f.type for f in schema}
        written = {_partition_of(f, types) for f in files}
        replaced = [f for f in current.files if _partition_of(f, types) in written] \
            if mode == "overwrite_partitions" else []
        listing = [f for f in current.files if f not in set(replaced)] + files
        total = self._rows_after(token, current, replaced, rows)
        if files:
            manifest = self._manifest(token, listing, total, schema, rows)
            if token["local"]:
                self._move_in(token, current, files)
                crash_point("after-parts")
                _replace_manifest(target, manifest, self.params.durable)
            else:
                self._check_own_files(token, files)
                crash_point("after-parts")
                _write_manifest(self._filesystem(token), target, manifest)
        if token["local"]:
            remove(token["staging"])
            release_dir(_STAGING_LOCKS.pop(token["staging"], None))
            self._sweep_unlisted(target, set(listing if files else current.files))
        entry = {"path": self.params.path, "rows": rows, "files": len(files), "mode": mode,
                 "output_rows": total, "output_files": len(listing), **self._folders(files)}
        if mode == "overwrite_partitions":
            before = {_partition_of(f, types) for f in current.files}
            entry.update(partitions=len(written),
                         partitions_replaced=len(written & before))
        return entry, replaced

    def _rows_after(self, token: dict[str, Any], current: _Output, replaced: list[str],
                    rows: int) -> int | None:
        """The output's rows after the merge: its manifest's count, less the replaced
        files' (their footers), plus the new; None where the output never counted them."""
        if not current.files:
            return rows
        before = (current.manifest or {}).get("rows")
        if not isinstance(before, int):
            return None
        fs = self._filesystem(token)
        for name in replaced:
            with fs.open_input_file(posixpath.join(token["target"], name)) as f:
                before -= pq.ParquetFile(f).metadata.num_rows
        return before + rows

    def _move_in(self, token: dict[str, Any], current: _Output, files: list[str]) -> None:
        """This run's files from the staging directory into the local target, where no
        reader lists them until the new manifest does (a foreign dataset first gets a
        manifest listing what readers see now)."""
        staging, target = token["staging"], token["target"]
        if current.manifest is None:
            _replace_manifest(target, self._manifest(token, current.files, None,
                                                     current.schema or token["schema"]),
                              self.params.durable)
        if self.params.durable:
            fsync_tree(staging)
        folders = set()
        for name in files:
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            rename_noreplace(os.path.join(staging, name), os.path.join(target, name))
            folder = posixpath.dirname(name)
            while folder:  # each folder up to the target: a new one's entry too
                folders.add(folder)
                folder = posixpath.dirname(folder)
        if self.params.durable:
            for folder in sorted(folders, key=lambda f: -f.count("/")):  # deepest first
                fsync_dir(os.path.join(target, folder))

    @staticmethod
    def _sweep_unlisted(target: str, listed: set[str]) -> None:
        """Delete the files of runs that died while moving theirs in (named as a run's,
        listed by no manifest): under the output's lock no live run has any there."""
        for folder, _, names in os.walk(target):
            for name in names:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, target).replace(os.sep, "/")
                if _RUN_FILE.match(name) and rel not in listed and not _hidden(rel):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)

    def _publish_local(self, token: dict[str, Any]) -> None:
        staging, target = token["staging"], token["target"]
        if self.params.durable:
            # on disk before the rename, so that no OS crash can publish files it did
            # not keep (a killed process needs none of this: the page cache survives it)
            fsync_tree(staging)
        try:
            rename_noreplace(staging, target)
        except FileExistsError:
            self._replace_local(staging, target)
        release_dir(_STAGING_LOCKS.pop(staging, None))
        if self.params.durable:
            fsync_dir(os.path.dirname(target))

    def _replace_local(self, staging: str, target: str) -> None:
        if self.params.mode != "overwrite":
            with contextlib.suppress(OSError):
                os.rmdir(target)  # an empty directory is no output: take its place
            try:
                rename_noreplace(staging, target)
                return
            except FileExistsError:
                raise DataError(f"output '{self.params.path}' appeared while writing",
                                hint="another run wrote it; set `mode: overwrite`") from None
        if exchange(staging, target):
            remove(staging)  # now holds the previous output
            return
        # no atomic exchange on this platform: for a moment the target is absent
        old = staging + ".old"
        os.rename(target, old)
        os.rename(staging, target)
        remove(old)

    def _check_own_files(self, token: dict[str, Any], files: list[str]) -> None:
        """Before a store's manifest lists this run's files: each is there (another
        run's overwrite of the output, committed while this one wrote, deletes what its
        manifest does not list), else a DataError and nothing committed."""
        fs = self._filesystem(token)
        there = {posixpath.relpath(i.path, token["target"])
                 for i in fs.get_file_info(pa.fs.FileSelector(token["target"], recursive=True))
                 if i.type == pa.fs.FileType.File}
        gone = [f for f in files if f not in there]
        if gone:
            raise DataError(f"{len(gone)} of the {len(files)} files this run wrote to "
                            f"'{self.params.path}' were deleted before it committed "
                            f"('{gone[0]}'): another run overwrote the output meanwhile; "
                            "nothing of this run was committed",
                            hint="run it again; runs that write one output at once should "
                                 "append, not overwrite")

    @staticmethod
    def _drop_unlisted(fs: pa.fs.FileSystem, token: dict[str, Any], keep: set[str],
                       loc: Location) -> None:
        """After an overwrite on a store: delete the files its manifest does not list
        (the previous output's, a foreign dataset's, dead runs'), but those the manifest
        there now lists: a run that committed after this one (an append) keeps its
        files. (A run still writing loses its files, and its commit says so: ``_check_
        own_files``.)"""
        target = token["target"]
        keep = keep | {MANIFEST}
        now = read_manifest(loc, target) or {}
        if now.get("run_id") != token["run_id"]:
            keep |= {f for f in now.get("files") or [] if isinstance(f, str)}
        for info in fs.get_file_info(pa.fs.FileSelector(target, recursive=True)):
            rel = posixpath.relpath(info.path, target)
            if info.type == pa.fs.FileType.File and rel not in keep and not is_store_lock(rel):
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(info.path)

    def abort(self, token: dict[str, Any]) -> None:
        if token["local"]:
            remove(token["staging"])
            release_dir(_STAGING_LOCKS.pop(token["staging"], None))
            return
        fs = self._filesystem(token)
        prefix = f"part-{token['run_id']}-"
        with contextlib.suppress(FileNotFoundError, OSError):
            for info in fs.get_file_info(pa.fs.FileSelector(token["target"], recursive=True)):
                if info.base_name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError, OSError):
                        fs.delete_file(info.path)
            loc = resolve(self.params.path, self.params.storage_options)
            manifest = read_manifest(loc, token["target"])
            if (manifest is not None and manifest.get("pending")
                    and manifest.get("run_id") == token["run_id"]):
                fs.delete_file(posixpath.join(token["target"], MANIFEST))



def _of_run(run_id: str) -> Callable[[str], bool]:
    """Whether a data file (a relative path) is one a run wrote: its first write of an
    output ``part-<run id>-...``, a second write of it ``part-<run id>.2-...``."""
    prefixes = (f"part-{run_id}-", f"part-{run_id}.")
    return lambda name: posixpath.basename(name).startswith(prefixes)


def published_by(location: Location, run_id: str) -> bool:
    """Whether the output at ``location`` has a commit of run ``run_id``: its ``_SUCCESS``
    lists a file the run wrote."""
    manifest = read_manifest(location, location.path) or {}
    files = manifest.get("files")
    return isinstance(files, list) and any(isinstance(f, str) and _of_run(run_id)(f)
                                           for f in files)


def published_rows(location: Location, run_id: str) -> int | None:
    """The rows run ``run_id``'s commit added to the output at ``location``, as its
    ``_SUCCESS`` says while it is the last commit there (None: another commit since, or
    a manifest from before it said)."""
    manifest = read_manifest(location, location.path) or {}
    rows = manifest.get("run_rows")
    return rows if manifest.get("run_id") == run_id and isinstance(rows, int) else None


def withdraw(location: Location, run_id: str) -> list[str]:
    """Take the files of run ``run_id`` (one that died) out of the output at ``location``:
    its ``_SUCCESS`` rewritten without them (the rows counted less theirs), or, where it
    listed nothing else (a new output, an overwrite), the output removed; then the run's
    files deleted, listed or not, and its dead staging folder beside a local output.
    Under the output's lock, as a commit. The files withdrawn from the listing."""
    fs, target = location.filesystem, location.path.rstrip("/")
    ours = _of_run(run_id)
    if location.local:
        parent, name = os.path.split(target)
        sweep_stale(parent, f".{name}{STAGING_MARK}")
    if fs.get_file_info(target).type != pa.fs.FileType.Directory:
        return []
    with (locked_beside(target) if location.local
          else locked_on_store(location.fsspec_fs, target)):
        manifest = read_manifest(location, target)
        listed = [f for f in (manifest or {}).get("files") or [] if isinstance(f, str)]
        dropped = [f for f in listed if ours(f)]
        kept = [f for f in listed if not ours(f)]
        if manifest is not None and dropped and not kept:
            if location.local:
                remove(target)
                return dropped
            for info in fs.get_file_info(pa.fs.FileSelector(target, recursive=True)):
                if info.type == pa.fs.FileType.File and not is_store_lock(info.path):
                    fs.delete_file(info.path)
            return dropped
        if dropped:
            rows = manifest.get("rows")
            for name in dropped if isinstance(rows, int) else []:
                with fs.open_input_file(posixpath.join(target, name)) as f:
                    rows -= pq.ParquetFile(f).metadata.num_rows
            # the rows the committing run added no longer stand where its files went
            rewritten = {**{k: v for k, v in manifest.items() if k != "run_rows"},
                         "files": kept, "rows": rows}
            if location.local:
                _replace_manifest(target, rewritten, durable=False)
            else:
                _write_manifest(fs, target, rewritten)
        for info in fs.get_file_info(pa.fs.FileSelector(target, recursive=True)):
            if info.type == pa.fs.FileType.File and ours(info.base_name):
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(info.path)
    return dropped

_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 8}


def _column_bytes(column: Any) -> int:
    """A column chunk's size in memory, about: its uncompressed size in the file, at
    least its values' width (text and bytes: an offset and the mean length of its
    smallest and largest value, from the statistics)."""
    width = _WIDTH.get(column.physical_type)
    if width is None:
        stats = column.statistics
        width = 8.0
        if stats is not None and stats.has_min_max:
            # a logical type whose statistics are not text (a decimal) keeps 8 bytes
            with contextlib.suppress(TypeError):
                width = 4 + (len(stats.min) + len(stats.max)) / 2
    return int(max(column.total_uncompressed_size, column.num_values * width))


def _write_manifest(fs: pa.fs.FileSystem, directory: str, manifest: dict[str, Any]) -> None:
    with fs.open_output_stream(posixpath.join(directory, MANIFEST)) as f:
        f.write(json.dumps(manifest, indent=1).encode())


def _replace_manifest(directory: str, manifest: dict[str, Any], durable: bool) -> None:
    """A local output's manifest replaced at once (a reader reads the old or the new)."""
    with written_whole(os.path.join(directory, MANIFEST)) as staging, open(staging, "wb") as f:
        f.write(json.dumps(manifest, indent=1).encode())
        if durable:
            f.flush()
            os.fsync(f.fileno())
    if durable:
        fsync_dir(directory)
