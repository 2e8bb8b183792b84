"""A shuffle step (``operators.base.Shuffle``, e.g. ``aggregate``) on any engine.

Two stages, each an ordinary job of the engine:

1. every partition of the step's input is reduced to partial rows (``op.partial``),
   which are split by a hash of their keys into the output partitions ("buckets") and
   written as one Arrow IPC file, ``<scratch>/<run id>/<step>/part-P.arrow``, whose batch
   B holds bucket B's rows (empty where it has none): a ``Sink`` (``ShuffleWrite``),
   written where the engine runs the partition, one file a partition (not one a
   partition and bucket: on an object store every file is a request);
2. a ``Source`` (``ShuffledSource``) whose partition B reads batch B of every file and
   combines them (``op.finish``): the steps after read it as they read Parquet.

A shuffle with sides (a shuffle join's table) writes each side's partitions the same
way, by the same hash of keys of the same types, under ``<step>/<side name>/``; bucket B
of the output finishes the input's bucket B with each side's bucket B. Files are read
in partition order and a bucket's rows keep their order in the file, so the rows of a
bucket come in the input's order.

The scratch folder must be one every worker sees (on one machine, a temporary folder;
on a cluster, a shared path or an object store: ``--scratch``). The run removes it at
the end, whatever happened; on a local disk it holds a lock on it meanwhile, and the
next run removes the folders of runs that died (``claim_scratch``).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from operators.base import (
    PartitionInfo,
    Shuffle,
    ShuffleSide,
    Sink,
    SluiceError,
    Source,
    WriteResult,
)
from operators.hashing import hash_rows
from operators.io.fs import (
    claim_dir,
    is_url,
    resolve,
    store_errors,
    store_problem,
    sweep_stale,
)

MAX_DEFAULT_BUCKETS = 200
_SEED = 0x5EED  # the buckets' hash: the same on every engine and machine
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def default_scratch(profile: str | None = None) -> str:
    """``$SLUICE_SCRATCH``, else the engine profile's ``scratch``, else a folder of this
    machine's temporary directory."""
    return (os.environ.get("SLUICE_SCRATCH") or profile
            or os.path.join(tempfile.gettempdir(), "sluice-scratch"))


def bucket_count(op: Shuffle, input_partitions: int) -> int:
    if op.one_place():
        return 1  # e.g. one row for all the rows
    wanted = getattr(op.params, "partitions", None)
    if wanted:
        return int(wanted)
    return max(1, min(MAX_DEFAULT_BUCKETS, input_partitions))


def buckets_of(partials: pa.Table, keys: list[str], buckets: int) -> np.ndarray:
    """The output partition of each partial row: a hash of its keys' values."""
    if buckets == 1:
        return np.zeros(partials.num_rows, dtype=np.int64)
    return (hash_rows(partials, keys, _SEED, fast_text=True) % np.uint64(buckets)).astype(
        np.int64)


def _problem(exc: BaseException, url: str, doing: str) -> SluiceError:
    found = store_problem(exc, url)
    if found is not None:
        return found
    return SluiceError(f"cannot {doing} the shuffle files at '{url}': {exc}",
                       hint="give --scratch (or SLUICE_SCRATCH) a folder every worker can "
                            "write and read, with room for the partial rows")


class ShuffleWrite(Sink):
    """Stage 1: a partition's partial rows in one file, a record batch a bucket (of a
    shuffle's input, or of one of its sides)."""

    name = "shuffle_write"

    def __init__(self, op: Shuffle | ShuffleSide, url: str, buckets: int,
                 storage_options: dict[str, Any] | None = None):
        super().__init__()
        self.op, self.url, self.buckets = op, url, buckets
        self.storage_options = storage_options

    def begin(self, run_id: str, schema: pa.Schema) -> dict[str, Any]:
        return {"url": self.url}

    def write(self, token: Any, part: pa.Table, index: int) -> WriteResult:
        partials = self.op.partial(part)
        result = ShuffleResult(rows=partials.num_rows)
        if partials.num_rows == 0:
            return result
        where = buckets_of(partials, self.op.key_columns(), self.buckets)
        counts = np.bincount(where, minlength=self.buckets)
        # a stable sort of small integers is a radix sort (8x faster than of int64s)
        small = where.astype(np.uint16) if self.buckets <= 2**16 else where
        partials = partials.take(pa.array(np.argsort(small, kind="stable"))).combine_chunks()
        loc = resolve(self.url, self.storage_options)
        path = f"{loc.path.rstrip('/')}/part-{index:06d}.arrow"
        # an empty bucket's batch is a slice of the rows' own columns: a new empty
        # dictionary would be a dictionary replacement, which the IPC file format refuses
        empty = pa.record_batch([c.chunk(0).slice(0, 0) for c in partials.columns],
                                schema=partials.schema)
        # on a disk, written under another name and renamed whole: an attempt killed
        # mid-write (or a lost one still writing) never leaves a torn file under the name
        # a reader takes (an object store shows an object only once it is all there)
        writing = f"{path}.{uuid.uuid4().hex}.tmp" if loc.local else path
        try:
            loc.filesystem.create_dir(loc.path, recursive=True)
            with loc.filesystem.open_output_stream(writing) as sink, ipc.new_file(
                    sink, partials.schema, options=_OPTIONS) as writer:
                start = 0
                for n in counts:  # batch B: bucket B's rows
                    piece = partials.slice(start, int(n)).to_batches()
                    writer.write_batch(piece[0] if piece else empty)
                    start += int(n)
            if writing != path:
                loc.filesystem.move(writing, path)
        except store_errors(OSError, pa.ArrowException) as exc:
            raise _problem(exc, self.url, "write") from None
        result.files.append(path)
        result.buckets = {int(b): int(counts[b]) for b in np.flatnonzero(counts)}
        return result

    def commit(self, token: Any, results: list[WriteResult]) -> dict[str, Any]:
        rows = [0] * self.buckets
        for result in results:
            for bucket, n in getattr(result, "buckets", {}).items():
                rows[bucket] += n
        return {"partial_rows": sum(r.rows for r in results),
                "files": sum(len(r.files) for r in results), "bucket_rows": rows}

    def abort(self, token: Any) -> None:
        remove_scratch(self.url, self.storage_options)


class ShuffleResult(WriteResult):
    """What one partition wrote: besides files and rows, the rows of each bucket."""

    def __init__(self, rows: int = 0):
        super().__init__(files=[], rows=rows)
        self.buckets: dict[int, int] = {}


class ShuffledSource(Source):
    """Stage 2: output partition B is bucket B's partial rows, combined (with each
    side's bucket B)."""

    name = "shuffled"

    def __init__(self, op: Shuffle, url: str, input_schema: pa.Schema, written: dict[str, Any],
                 storage_options: dict[str, Any] | None = None,
                 sides: list[tuple[str, pa.Schema, dict[str, Any]]] = ()):
        super().__init__()
        self.op, self.url, self.input_schema = op, url, input_schema
        self.rows, self.files = written["bucket_rows"], written["files"]
        self.storage_options = storage_options
        self._schema = op.output_schema(input_schema)
        self._partial_schema = op.partial_schema(input_schema)
        # each side: (its folder, its partial rows' schema, what its write returned)
        self.sides = list(sides)

    def schema(self) -> pa.Schema:
        return self._schema

    def partitions(self) -> list[PartitionInfo]:
        return [PartitionInfo(index=b, path=f"{self.url} (bucket {b})", rows=n)
                for b, n in enumerate(self.rows)]

    def read(self, partition: PartitionInfo) -> pa.Table:
        b = partition.index
        partials = self._bucket(self.url, self.files, self.rows[b], b, self._partial_schema)
        return self.op.finish(partials, *(
            self._bucket(url, written["files"], written["bucket_rows"][b], b, schema)
            for url, schema, written in self.sides))

    def _bucket(self, url: str, files: int, rows: int, b: int, schema: pa.Schema) -> pa.Table:
        """Batch ``b`` of every file in ``url`` (``files`` of them, in partition order)."""
        if not rows:
            return schema.empty_table()
        tables = []
        loc = resolve(url, self.storage_options)
        try:
            listed = sorted(f.path for f in loc.filesystem.get_file_info(
                pa.fs.FileSelector(loc.path, allow_not_found=True))
                if f.path.endswith(".arrow"))
            if len(listed) != files:
                raise SluiceError(
                    f"the shuffle files are not all here: {len(listed)} of {files} in "
                    f"'{url}' (written by other tasks)",
                    hint="--scratch (or SLUICE_SCRATCH) must be a folder every worker "
                         "sees: a shared file system or an object store "
                         "(s3://bucket/tmp), not a worker's own disk")
            for path in listed:
                with loc.filesystem.open_input_file(path) as f:
                    batch = ipc.open_file(f).get_batch(b)
                if batch.num_rows:
                    tables.append(pa.Table.from_batches([batch]))
        except store_errors(OSError, pa.ArrowException) as exc:
            raise _problem(exc, url, "read") from None
        return pa.concat_tables(tables) if tables else schema.empty_table()


def elsewhere(hosts: set[str]) -> list[str]:
    """Of ``hosts`` (an engine's workers'), those that are not this machine."""
    import socket

    here = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
    try:
        name = socket.gethostname()
        here |= {name, socket.getfqdn(), *socket.gethostbyname_ex(name)[2]}
    except OSError:
        pass
    return sorted(h for h in hosts if h not in here and not h.startswith("127."))


def scratch_note(scratch: str, hosts: set[str]) -> str | None:
    """A line for a run whose scratch folder is a path of this machine while workers
    run on others (a shared mount at the same path is fine: said, not refused)."""
    if is_url(scratch):
        return None
    others = elsewhere(hosts)
    if not others:
        return None
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3
                                     else "")
    return (f"the shuffle steps write to '{scratch}', a path on this machine, and workers "
            f"run on {shown}: they must see it at the same path (a shared mount), or give "
            "--scratch an object store (s3://bucket/tmp)")


_RUN_FOLDER = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")  # a run id (pipelines.runner)


def claim_scratch(folder: str) -> int | None:
    """Create a run's scratch folder on this machine's disks and lock it for the run (the
    lock dies with the process); folders of runs that died without removing theirs (no
    live lock) are removed first. Returns the lock for ``release_scratch``; nothing on an
    object store (no locks there: a dead run's folder stays)."""
    if is_url(folder):
        return None
    root, name = os.path.split(os.path.abspath(folder.removeprefix("file://")))
    try:
        os.makedirs(root, exist_ok=True)
        sweep_stale(root, "", _RUN_FOLDER)
        return claim_dir(os.path.join(root, name))
    except OSError as exc:
        raise _problem(exc, root, "create") from None


def remove_scratch(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove a scratch folder and what is in it (nothing if it is not there)."""
    try:
        loc = resolve(url, storage_options)
        info = loc.filesystem.get_file_info(loc.path)
        if info.type != pa.fs.FileType.NotFound:
            loc.filesystem.delete_dir(loc.path)
    except (*store_errors(OSError), pa.ArrowException, SluiceError):
        pass  # best effort: a temporary folder
