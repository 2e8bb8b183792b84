"""A shuffle step (``operators.base.Shuffle``, e.g. ``aggregate``) on any engine.

Two stages, each an ordinary job of the engine:

1. every partition of the step's input is reduced to partial rows (``op.partial``),
   which are split by a hash of their keys into the output partitions ("buckets") and
   written as one Arrow IPC file, ``<scratch>/<run id>/<step>/part-P.arrow``, whose batch
   B holds bucket B's rows (empty where it has none): a ``Sink`` (``ShuffleWrite``),
   written where the engine runs the partition, one file a partition (not one a
   partition and bucket: on an object store every file is a request);
2. a ``Source`` (``ShuffledSource``) whose partitions ("pieces") each read a run of
   buckets, batches lo..hi of every file, and combine them (``op.finish``): the steps
   after read it as they read Parquet.

How many buckets, and which make a piece (Spark's adaptive coalescing, decided from what
stage 1 wrote; ``pieces``): a step's ``partitions: N`` is N buckets and a piece each.
Otherwise there is a bucket a quarter of ``partition_mb`` of input as its sources
estimate it (``Dataset.estimated_bytes``), or without an estimate one an input partition
(at most ``MAX_BUCKETS``), and
neighbouring buckets are put together while their rows take at most ``partition_mb`` in
memory (at least a quarter of it, unless the input's partitions average more), so that an
output partition is neither a sliver nor larger than that, whatever the data's size. A
bucket larger than ``partition_mb`` of a shuffle whose keys may be split
(``Shuffle.splittable``: a join, whose rows are each looked up on their own) is split by
the files that wrote it, each piece with the sides' whole bucket (Spark's skew join). The
pieces depend on the data and the input's partitioning only, never on the engine: the
same files on every engine.

A shuffle with sides (a shuffle join's table) writes each side's partitions the same
way, by the same hash of keys of the same types, under ``<step>/<side name>/``; bucket B
of the output finishes the input's bucket B with each side's bucket B. Files are read
in partition order and a bucket's rows keep their order in the file, so the rows of a
bucket come in the input's order; a shuffle that keeps the input's order
(``row_order = "input"``) and may put buckets together also writes each row's place in
its partition, by which a piece's rows from one file are put back in order.

The scratch folder must be one every worker sees (on one machine, a temporary folder;
on a cluster, a shared path or an object store: ``--scratch``). The run removes it at
the end, whatever happened; on a local disk it holds a lock on it meanwhile, and the
next run removes the folders of runs that died (``claim_scratch``).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from operators.base import (
    PartitionInfo,
    RangedShuffle,
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
from operators.io.paths import local_path

MAX_BUCKETS = 1024  # buckets by default: one an input partition, at most this many
SAMPLE_PER_BUCKET = 20  # a ranged shuffle's sample: rows a bucket (at least 1,000)
DEFAULT_PARTITION_MB = 64.0  # a piece's rows in memory, by default (read_parquet's too)
POSITION = "\x00position"  # a row's place in its partition (an internal column)
_SEED = 0x5EED  # the buckets' hash: the same on every engine and machine
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def default_scratch(profile: str | None = None) -> str:
    """``$SLUICE_SCRATCH``, else the engine profile's ``scratch``, else a folder of this
    machine's temporary directory."""
    return (os.environ.get("SLUICE_SCRATCH") or profile
            or os.path.join(tempfile.gettempdir(), "sluice-scratch"))


def exact(op: Shuffle) -> bool:
    """True when the step's buckets are its output partitions as they are: ``partitions:
    N`` given, or one place for all the rows."""
    return op.one_place() or bool(getattr(op.params, "partitions", None))


def bucket_count(op: Shuffle, input_partitions: int, input_bytes: float | None = None) -> int:
    """The step's ``partitions``; else a bucket a quarter of ``partition_mb`` of the
    input's rows as its sources estimate them, or, without an estimate, one an input
    partition; at most ``MAX_BUCKETS``. By the size: an output partition of at most
    ``partition_mb`` however large the input's partitions, and not a million record
    batches (~40 us each to write and to read: each bucket is one of every stage-1 file)
    for a thousand small partitions whose result fits in one."""
    if op.one_place():
        return 1  # e.g. one row for all the rows
    wanted = getattr(op.params, "partitions", None)
    if wanted:
        return int(wanted)
    count = (input_partitions if input_bytes is None
             else math.ceil(input_bytes / (partition_bytes(op) / 4)))
    return max(1, min(MAX_BUCKETS, count))


def partition_bytes(op: Shuffle) -> float:
    """The most a piece's rows should take in memory (the step's ``partition_mb``)."""
    return float(getattr(op.params, "partition_mb", None) or DEFAULT_PARTITION_MB) * 2**20


@dataclass(frozen=True)
class Piece:
    """An output partition: buckets ``lo`` to ``hi`` (excluded) of every file, or, for a
    split bucket, of ``files`` only (names in the step's folder, in partition order)."""

    lo: int
    hi: int
    files: tuple[str, ...] | None = None
    rows: int = 0
    bytes: int = 0


def pieces(op: Shuffle, written: dict[str, Any], sides: list[dict[str, Any]],
           input_partitions: int) -> list[Piece]:
    """The output partitions of a shuffle whose stage 1 wrote ``written`` (``sides``: what
    each side's wrote): see the module's notes."""
    rows = np.asarray(written["bucket_rows"], dtype=np.int64)
    own = np.asarray(written["bucket_bytes"], dtype=np.float64)
    theirs = sum((np.asarray(s["bucket_bytes"], dtype=np.float64) for s in sides),
                 np.zeros(len(own)))
    size = own + theirs
    if exact(op):
        return [Piece(b, b + 1, rows=int(rows[b]), bytes=int(size[b]))
                for b in range(len(rows))]
    cap = partition_bytes(op)
    # at least a quarter of the cap, unless the input's partitions average more
    target = min(cap, max(float(size.sum()) / max(1, input_partitions), cap / 4))
    out: list[Piece] = []
    lo, held = 0, 0.0

    def close(hi: int) -> None:
        if hi > lo:
            out.append(Piece(lo, hi, rows=int(rows[lo:hi].sum()), bytes=int(size[lo:hi].sum())))

    for b in range(len(rows)):
        # split only past partition_mb itself: a bucket over the target by the hash's
        # chance is not worth reading the sides' share twice for
        if op.splittable and size[b] > cap:
            split = _split(b, written["file_buckets"], max(target - theirs[b], target / 4),
                           int(theirs[b]))
            if len(split) > 1:
                close(b)
                out.extend(split)
                lo, held = b + 1, 0.0
                continue
        if held and size[b] and held + size[b] > target:  # (an empty bucket joins)
            close(b)
            lo, held = b, 0.0
        held += size[b]
    close(len(rows))
    return out or [Piece(0, len(rows))]


def oversized_note(op: Shuffle, chosen: list[Piece]) -> str | None:
    """A line when an output partition is more than twice ``partition_mb`` (a bucket
    that could not be split: its keys meet in one place; a ranged shuffle's, four times:
    its ranges come from a sample), saying what would spread it."""
    cap = partition_bytes(op)
    large = max(chosen, key=lambda p: p.bytes)
    ranged = isinstance(op, RangedShuffle)
    if large.bytes <= (4 if ranged else 2) * cap:
        return None
    where = _buckets(large)
    mb = large.bytes / 2**20
    shown = f"{mb * 1024:,.0f} KB" if mb < 1 else f"{mb:,.0f} MB"
    buckets = max(p.hi for p in chosen)
    if ranged:
        return (f"one output partition ({where}) holds {shown} of rows, over partition_mb "
                f"{cap / 2**20:g}: the ranges a sample of the rows set are uneven there "
                f"(partitions: N, more than the {buckets} ranges there were, narrows them)")
    if not op.key_columns() or not getattr(op.params, "by", True):
        return (f"one output partition ({where}) holds {shown} of rows, over partition_mb "
                f"{cap / 2**20:g}: too few buckets share the rows (partitions: N, more than "
                f"the {buckets} buckets there were, spreads them)")
    return (f"one output partition ({where}) holds {shown} of rows, over partition_mb "
            f"{cap / 2**20:g}: a key's rows meet in one place, so either one key has that "
            "many (a hot key: give `by` a finer key) or too few buckets share the keys "
            f"(partitions: N, more than the {buckets} buckets there were, spreads them)")


def _split(b: int, files: list[tuple[str, dict[int, int], dict[int, int]]],
           budget: float, side_bytes: int) -> list[Piece]:
    """Bucket ``b`` as runs of the files that wrote rows to it, each run's rows taking
    at most ``budget`` bytes (a file at least)."""
    out: list[Piece] = []
    names: list[str] = []
    rows = held = 0

    def close() -> None:
        if names:
            out.append(Piece(b, b + 1, tuple(names), rows=rows, bytes=held + side_bytes))

    for name, counts, sizes in files:
        if b not in counts:
            continue
        if names and held + sizes[b] > budget:
            close()
            names, rows, held = [], 0, 0
        names.append(name)
        rows += counts[b]
        held += sizes[b]
    close()
    return out


def bucket_bytes(table: pa.Table, counts: np.ndarray) -> np.ndarray:
    """The bytes each bucket's rows take in memory (``table``: sorted by bucket, a chunk a
    column; ``counts``: each bucket's rows): fixed widths by the rows, text and bytes by
    their values' lengths, other types by the column's mean width. Depends on the rows
    only, not on how the table was cut."""
    ends = np.cumsum(counts)
    starts = ends - counts
    out = np.zeros(len(counts), dtype=np.int64)
    for column in table.columns:
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        t = array.type
        if pa.types.is_dictionary(t):
            t = t.index_type
        if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(
                t) or pa.types.is_large_binary(t):
            wide = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)
            offsets = offsets[array.offset:array.offset + len(array) + 1]
            out += offsets[ends] - offsets[starts] + counts * (8 if wide else 4)
            continue
        try:
            width = max(1, t.bit_width // 8)
        except ValueError:  # nested and other variable-width types
            width = array.nbytes // max(1, len(array))
        out += counts * width
    return out


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
                 storage_options: dict[str, Any] | None = None, positions: bool = False):
        super().__init__()
        self.op, self.url, self.buckets = op, url, buckets
        self.storage_options = storage_options
        # write each row's place in its partition (``POSITION``)
        self.positions = positions

    def begin(self, run_id: str, schema: pa.Schema) -> dict[str, Any]:
        return {"url": self.url}

    def write(self, token: Any, part: pa.Table, index: int) -> WriteResult:
        partials = self.op.partial_at(part, index)
        result = ShuffleResult(rows=partials.num_rows)
        if partials.num_rows == 0:
            return result
        if isinstance(self.op, RangedShuffle):  # by ranges of an order (a sort)
            where = self.op.place(partials, self.buckets)
        else:
            where = buckets_of(partials, self.op.key_columns(), self.buckets)
        counts = np.bincount(where, minlength=self.buckets)
        if self.positions:  # a partition holds far fewer than 2**32 rows
            partials = partials.append_column(
                POSITION, pa.array(np.arange(partials.num_rows, dtype=np.uint32)))
        # a stable sort of small integers is a radix sort (8x faster than of int64s)
        small = where.astype(np.uint16) if self.buckets <= 2**16 else where
        partials = partials.take(pa.array(np.argsort(small, kind="stable"))).combine_chunks()
        sizes = bucket_bytes(partials, counts)
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
        result.sizes = {b: int(sizes[b]) for b in result.buckets}
        return result

    def commit(self, token: Any, results: list[WriteResult]) -> dict[str, Any]:
        rows = [0] * self.buckets
        sizes = [0] * self.buckets
        files = []  # (name, rows and bytes of each bucket it has), in partition order
        for result in results:
            for bucket, n in getattr(result, "buckets", {}).items():
                rows[bucket] += n
                sizes[bucket] += result.sizes[bucket]
            for path in result.files:
                files.append((path.rsplit("/", 1)[-1], result.buckets, result.sizes))
        files.sort(key=lambda f: f[0])
        return {"partial_rows": sum(r.rows for r in results), "files": len(files),
                "bucket_rows": rows, "bucket_bytes": sizes, "file_buckets": files}

    def abort(self, token: Any) -> None:
        remove_scratch(self.url, self.storage_options)


class ShuffleResult(WriteResult):
    """What one partition wrote: besides files and rows, the rows of each bucket."""

    def __init__(self, rows: int = 0):
        super().__init__(files=[], rows=rows)
        self.buckets: dict[int, int] = {}  # rows
        self.sizes: dict[int, int] = {}  # bytes in memory


class ShuffledSource(Source):
    """Stage 2: each output partition is a piece's partial rows (a run of buckets),
    combined (with each side's same buckets)."""

    name = "shuffled"

    def __init__(self, op: Shuffle, url: str, input_schema: pa.Schema, written: dict[str, Any],
                 storage_options: dict[str, Any] | None = None,
                 sides: list[tuple[str, pa.Schema, dict[str, Any]]] = (),
                 pieces: list[Piece] | None = None, positions: bool = False):
        super().__init__()
        self.op, self.url, self.input_schema = op, url, input_schema
        self.files = written["files"]
        # default: a piece a bucket
        self.pieces = pieces if pieces is not None else [
            Piece(b, b + 1, rows=n) for b, n in enumerate(written["bucket_rows"])]
        self.storage_options = storage_options
        self._schema = op.output_schema(input_schema)
        self._partial_schema = op.partial_schema(input_schema)
        self.positions = positions  # the files have ``POSITION``
        # each side: (its folder, its partial rows' schema, its files and rows a bucket)
        self.sides = [(side_url, schema, written["files"], written["bucket_rows"])
                      for side_url, schema, written in sides]

    def schema(self) -> pa.Schema:
        return self._schema

    def estimated_bytes(self) -> int:
        """About how much memory the output takes: its partial rows' (a group-by's
        output rows are fewer)."""
        return sum(p.bytes for p in self.pieces)

    def partitions(self) -> list[PartitionInfo]:
        return [PartitionInfo(index=i, path=f"{self.url} ({_buckets(p)})", rows=p.rows)
                for i, p in enumerate(self.pieces)]

    def read(self, partition: PartitionInfo) -> pa.Table:
        piece = self.pieces[partition.index]
        schema = self._partial_schema
        if self.positions:
            schema = schema.append(pa.field(POSITION, pa.uint32()))
        partials = self._rows(self.url, self.files, piece, piece.rows, schema)
        if self.positions:
            partials = partials.drop_columns([POSITION])
        return self.op.finish(partials, *(
            self._rows(side_url, files, Piece(piece.lo, piece.hi),
                       sum(bucket_rows[piece.lo:piece.hi]), side_schema)
            for side_url, side_schema, files, bucket_rows in self.sides))

    def _rows(self, url: str, files: int, piece: Piece, rows: int,
              schema: pa.Schema) -> pa.Table:
        """Batches ``piece.lo`` to ``piece.hi`` of every file in ``url`` (``files`` of
        them, in partition order), or of the piece's own files; a file's rows in their
        place's order when there are places (``POSITION``)."""
        if not rows:
            return schema.empty_table()
        tables = []
        loc = resolve(url, self.storage_options)
        try:
            if piece.files is None:
                listed = sorted(f.path for f in loc.filesystem.get_file_info(
                    pa.fs.FileSelector(loc.path, allow_not_found=True))
                    if f.path.endswith(".arrow"))
            else:
                folder = loc.path.rstrip("/")
                listed = [f"{folder}/{name}" for name in piece.files]
                found = loc.filesystem.get_file_info(listed)
                files = len(listed)
                listed = [f.path for f in found if f.type == pa.fs.FileType.File]
            if len(listed) != files:
                raise SluiceError(
                    f"the shuffle files are not all here: {len(listed)} of {files} in "
                    f"'{url}' (written by other tasks)",
                    hint="--scratch (or SLUICE_SCRATCH) must be a folder every worker "
                         "sees: a shared file system or an object store "
                         "(s3://bucket/tmp), not a worker's own disk")
            for path in listed:
                with loc.filesystem.open_input_file(path) as f:
                    reader = ipc.open_file(f)
                    batches = [batch for batch in map(reader.get_batch,
                                                      range(piece.lo, piece.hi))
                               if batch.num_rows]
                if len(batches) > 1 and self.positions and POSITION in schema.names:
                    # several buckets of one partition: back in the partition's order
                    table = pa.Table.from_batches(batches).combine_chunks()
                    order = np.argsort(table.column(POSITION).chunk(0).to_numpy(),
                                       kind="stable")
                    tables.append(table.take(pa.array(order)))
                elif batches:
                    tables.append(pa.Table.from_batches(batches))
        except store_errors(OSError, pa.ArrowException) as exc:
            raise _problem(exc, url, "read") from None
        return pa.concat_tables(tables) if tables else schema.empty_table()


def _buckets(piece: Piece) -> str:
    where = (f"bucket {piece.lo}" if piece.hi == piece.lo + 1
             else f"buckets {piece.lo}-{piece.hi - 1}")
    return where + (f", {len(piece.files)} files" if piece.files is not None else "")


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
    root, name = os.path.split(local_path(folder))
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
