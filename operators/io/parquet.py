"""read_parquet and write_parquet: Parquet in, Parquet out, atomically.

Output commit protocol (also what read_parquet honours):

* every output directory gets a ``_SUCCESS`` manifest, written last, that lists
  the data files of the output (JSON: format, run id, files, rows);
* on a local filesystem the output is written under a hidden staging directory
  beside the target and renamed into place (an atomic exchange when overwriting),
  so a reader sees the old output or the new one, never a mix;
* on object stores (no atomic rename) data files are named by run id and written
  straight into the target, the manifest is written last and the previous
  output's files are deleted only after it: a reader that reads the files listed
  in ``_SUCCESS`` (sluice's read_parquet does) never sees half an output.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import time
from functools import cached_property
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from operators.base import (
    DataError,
    PartitionInfo,
    Params,
    SchemaError,
    SluiceError,
    Sink,
    Source,
    WriteResult,
    register,
    require_columns,
)
from operators.io.fs import Location, exchange, rename_noreplace, resolve

MANIFEST = "_SUCCESS"
MANIFEST_FORMAT = "sluice-output/1"
_GLOB_CHARS = re.compile(r"[*?\[]")
_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)


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


def _friendly(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.removeprefix("Invalid: ")


class ReadParquetParams(Params):
    path: str = Field(description="file, directory, glob or URL; hive partitions become columns")
    columns: list[str] | None = Field(None, description="columns to read (default: all)")
    filter: str | None = Field(None, description="row filter, pushed down: \"a >= 0 and b != 'x'\"")
    schema_: dict[str, str] | None = Field(
        None, alias="schema", description="expected types, e.g. {tenure: int64}; cast on read"
    )
    partition_mb: int = Field(64, gt=0, description="target uncompressed size of a partition")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for URLs")

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
    """

    Params = ReadParquetParams

    def __getstate__(self) -> dict[str, Any]:
        return {"params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = state["params"]

    @cached_property
    def location(self) -> Location:
        return resolve(self.params.path, self.params.storage_options)

    @cached_property
    def dataset(self) -> ds.Dataset:
        loc = self.location
        fs = loc.filesystem
        path = loc.path
        hive = ds.HivePartitioning.discover(infer_dictionary=False)
        try:
            if _GLOB_CHARS.search(path):
                files = sorted(loc.fsspec_fs.glob(path))
                files = [f for f in files if not posixpath.basename(f).startswith(("_", "."))]
                if not files:
                    raise DataError(f"no files match '{self.params.path}'")
                base = _GLOB_CHARS.split(path, 1)[0].rsplit("/", 1)[0]
                return ds.dataset(files, filesystem=fs, format="parquet", partitioning=hive,
                                  partition_base_dir=base)
            info = fs.get_file_info(path)
            if info.type == pa.fs.FileType.NotFound:
                raise DataError(f"no such file or directory: '{self.params.path}'",
                                hint="check the path and the params in it")
            if info.type == pa.fs.FileType.Directory:
                manifest = read_manifest(loc, path)
                if manifest is not None:
                    files = [posixpath.join(path, f) for f in manifest["files"]]
                    return ds.dataset(files, filesystem=fs, format="parquet",
                                      partitioning=hive, partition_base_dir=path)
                found = ds.dataset(path, filesystem=fs, format="parquet", partitioning=hive)
                if not found.files:
                    raise DataError(f"no Parquet files in directory '{self.params.path}'")
                return found
            return ds.dataset(path, filesystem=fs, format="parquet")
        except SluiceError:
            raise
        except _ARROW_ERRORS as exc:
            raise DataError(f"cannot read Parquet at '{self.params.path}': {_friendly(exc)}",
                            hint="is it a valid, unencrypted Parquet file?") from None

    @cached_property
    def _filter(self) -> Any:
        if not self.params.filter:
            return None
        from operators.expressions import check_filter

        return check_filter(self.params.filter, self.dataset.schema)

    def schema(self) -> pa.Schema:
        full = self.dataset.schema
        if self.params.filter:
            self._filter  # noqa: B018 - validates the filter against the full schema
        columns = self.params.columns
        if columns is not None:
            require_columns(full, columns)
            full = pa.schema([full.field(c) for c in columns])
        for name, type_name in (self.params.schema_ or {}).items():
            i = full.get_field_index(name)
            if i < 0:
                raise SchemaError(f"schema names column '{name}' that the data does not have")
            full = full.set(i, full.field(i).with_type(parse_type(type_name)))
        return full

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return []

    def partitions(self) -> list[PartitionInfo]:
        target = self.params.partition_mb * 1024 * 1024
        out: list[PartitionInfo] = []
        for fragment in self.dataset.get_fragments():
            try:
                pieces = (fragment.split_by_row_group(self._filter) if self._filter is not None
                          else fragment.split_by_row_group())
            except _ARROW_ERRORS as exc:
                raise DataError(f"cannot read Parquet file '{fragment.path}': {_friendly(exc)}",
                                hint="the file is corrupt, truncated or encrypted") from None
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

    @staticmethod
    def _info(index: int, fragment: Any, row_groups: list[int], rows: int) -> PartitionInfo:
        return PartitionInfo(index, fragment.path, tuple(row_groups), rows,
                             fragment.partition_expression)

    def read(self, partition: PartitionInfo) -> pa.Table:
        schema = self.schema()
        if not partition.path:
            return schema.empty_table()
        fmt = ds.ParquetFileFormat()
        try:
            fragment = fmt.make_fragment(partition.path, self.location.filesystem,
                                         partition_expression=partition.partition_expression,
                                         row_groups=list(partition.row_groups or ()))
            table = fragment.to_table(schema=self.dataset.schema, columns=self.params.columns,
                                      filter=self._filter)
        except _ARROW_ERRORS as exc:
            raise DataError(f"cannot read Parquet file '{partition.path}': {_friendly(exc)}",
                            hint="the file is corrupt, truncated or encrypted") from None
        if table.schema != schema:
            try:
                table = table.cast(schema)
            except _ARROW_ERRORS as exc:
                raise DataError(f"'{partition.path}': cannot cast to the declared schema: "
                                f"{_friendly(exc)}") from None
        return table


class WriteParquetParams(Params):
    path: str = Field(description="output directory or URL")
    mode: Literal["error", "overwrite"] = Field(
        "error", description="error: refuse an existing output; overwrite: replace it atomically"
    )
    partition_by: list[str] | None = Field(None, description="hive partition columns")
    compression: Literal["snappy", "zstd", "gzip", "brotli", "lz4", "none"] = "snappy"
    row_group_rows: int = Field(1_000_000, gt=0, description="rows per row group at most")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for URLs")


@register("write_parquet")
class WriteParquet(Sink):
    """Write Parquet atomically, with a ``_SUCCESS`` manifest; optionally hive-partitioned.

    ```yaml
    - op: write_parquet
      path: data/scores/ds=${ds}
      mode: overwrite        # error (default) | overwrite
      partition_by: [region]
    ```
    """

    Params = WriteParquetParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.partition_by or [])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.input_columns(schema), "partition_by column")
        return schema

    def _existing(self, loc: Location) -> bool:
        info = loc.filesystem.get_file_info(loc.path)
        if info.type == pa.fs.FileType.NotFound:
            return False
        if info.type == pa.fs.FileType.File:
            return True
        return bool(loc.filesystem.get_file_info(pa.fs.FileSelector(loc.path)))

    def begin(self, run_id: str, schema: pa.Schema) -> dict[str, Any]:
        loc = resolve(self.params.path, self.params.storage_options)
        token: dict[str, Any] = {"run_id": run_id, "schema": schema, "local": loc.local}
        if loc.local:
            target = loc.path
            if self.params.mode == "error" and self._existing(loc):
                raise DataError(f"output '{self.params.path}' already exists",
                                hint="set `mode: overwrite` to replace it, or write elsewhere")
            parent, name = os.path.split(target)
            os.makedirs(parent, exist_ok=True)
            staging = os.path.join(parent, f".{name}.sluice-tmp-{run_id}")
            os.makedirs(staging)
            token.update(target=target, staging=staging)
        else:
            manifest = read_manifest(loc, loc.path)
            if self.params.mode == "error" and (manifest is not None or self._has_data(loc)):
                raise DataError(f"output '{self.params.path}' already exists",
                                hint="set `mode: overwrite` to replace it, or write elsewhere")
            loc.filesystem.create_dir(loc.path, recursive=True)
            token.update(target=loc.path, staging=loc.path)
        return token

    def _has_data(self, loc: Location) -> bool:
        """True if a remote target holds files other than debris of an uncommitted run."""
        if loc.filesystem.get_file_info(loc.path).type == pa.fs.FileType.NotFound:
            return False
        selector = pa.fs.FileSelector(loc.path, recursive=True)
        debris = re.compile(r"part-[0-9a-z]+-\d{5}(-\d+)?\.parquet$")
        return any(
            f.type == pa.fs.FileType.File and not debris.search(f.base_name)
            for f in loc.filesystem.get_file_info(selector)
        )

    def _filesystem(self, token: dict[str, Any]) -> pa.fs.FileSystem:
        if token["local"]:
            return pa.fs.LocalFileSystem()
        return resolve(self.params.path, self.params.storage_options).filesystem

    def write(self, token: dict[str, Any], part: pa.Table, index: int) -> WriteResult:
        if part.num_rows == 0:
            return WriteResult()
        fs = self._filesystem(token)
        stem = f"part-{index:05d}" if token["local"] else f"part-{token['run_id']}-{index:05d}"
        compression = None if self.params.compression == "none" else self.params.compression
        written: list[str] = []
        staging = token["staging"]
        if self.params.partition_by:
            def visit(f: Any) -> None:
                written.append(posixpath.relpath(f.path, staging))

            ds.write_dataset(
                part, staging, filesystem=fs, format="parquet",
                partitioning=self.params.partition_by, partitioning_flavor="hive",
                basename_template=stem + "-{i}.parquet",
                existing_data_behavior="overwrite_or_ignore", file_visitor=visit,
                file_options=ds.ParquetFileFormat().make_write_options(compression=compression),
                max_rows_per_group=self.params.row_group_rows,
                min_rows_per_group=min(self.params.row_group_rows, part.num_rows),
            )
        else:
            name = stem + ".parquet"
            with fs.open_output_stream(posixpath.join(staging, name)) as sink:
                pq.write_table(part, sink, compression=compression or "none",
                               row_group_size=self.params.row_group_rows)
            written.append(name)
        return WriteResult(files=sorted(written), rows=part.num_rows, bytes=part.nbytes)

    def commit(self, token: dict[str, Any], results: list[WriteResult]) -> dict[str, Any]:
        fs = self._filesystem(token)
        files = [f for r in results for f in r.files]
        rows = sum(r.rows for r in results)
        if not files:
            # an empty result is still a readable output with the right schema
            empty = ("part-00000.parquet" if token["local"]
                     else f"part-{token['run_id']}-00000.parquet")
            with fs.open_output_stream(posixpath.join(token["staging"], empty)) as sink:
                pq.write_table(token["schema"].empty_table(), sink)
            files = [empty]
        manifest = {"format": MANIFEST_FORMAT, "run_id": token["run_id"], "files": files,
                    "rows": rows, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())}
        with fs.open_output_stream(posixpath.join(token["staging"], MANIFEST)) as f:
            f.write(json.dumps(manifest, indent=1).encode())
        if token["local"]:
            self._publish_local(token)
        else:
            self._drop_unlisted(fs, token["target"], set(files))
        return {"path": self.params.path, "rows": rows, "files": len(files)}

    def _publish_local(self, token: dict[str, Any]) -> None:
        staging, target = token["staging"], token["target"]
        try:
            rename_noreplace(staging, target)
            return
        except FileExistsError:
            if self.params.mode == "error":
                shutil.rmtree(staging, ignore_errors=True)
                raise DataError(f"output '{self.params.path}' appeared while writing",
                                hint="another run wrote it; set `mode: overwrite`") from None
        if exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
            return
        # no atomic exchange here: move the old output aside, then the new one in
        old = staging + ".old"
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _drop_unlisted(fs: pa.fs.FileSystem, target: str, keep: set[str]) -> None:
        keep = keep | {MANIFEST}
        for info in fs.get_file_info(pa.fs.FileSelector(target, recursive=True)):
            rel = posixpath.relpath(info.path, target)
            if info.type == pa.fs.FileType.File and rel not in keep:
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(info.path)

    def abort(self, token: dict[str, Any]) -> None:
        if token["local"]:
            shutil.rmtree(token["staging"], ignore_errors=True)
        else:
            fs = self._filesystem(token)
            prefix = f"part-{token['run_id']}-"
            for info in fs.get_file_info(pa.fs.FileSelector(token["target"], recursive=True)):
                if info.base_name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError, OSError):
                        fs.delete_file(info.path)
