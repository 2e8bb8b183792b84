"""Resident fits: a multi-pass fit whose tasks keep their partitions.

Run one job per pass, and every pass pays the cluster's scheduling and reads (or
deserialises) its partitions again; an estimator's per-partition memo
(``common.fit_memo``) never survives a pass either. A resident fit starts one
task per slot, all at once (Spark's barrier mode: all or none), each computing its
share of the partitions once and holding them. The tasks connect to the driver, which
runs the estimator's driver loop (``operators.base.drive``) as on every engine: each
pass, it sends the pass's ``partial`` to every task over that connection, receives
each partition's partial and combines them in partition order (``tree_reduce``), so
the model is the one per-pass jobs give, bit for bit. A task combines the partials of
the whole subtrees of that reduction among its partitions before it replies
(``merged``): the driver receives and adds one partial per block, not one per
partition (a task holding 8 partitions sends one pass's histograms once). XGBoost's
and Horovod's Spark integrations run the same way: one barrier stage whose tasks stay
for the whole fit.
The local engine runs the same tasks as worker processes (a pass's Python code holds
the GIL: on many cores, threads wait for it; processes do not).

A task proves it belongs to the fit with a secret the driver put in the task;
nothing from a connection without it is read further. Messages: one kind byte, an
8-byte length, the payload (pickles of the driver's own objects and of the tasks').
"""

from __future__ import annotations

import contextlib
import hmac
import io
import pickle
import socket
import struct
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from operators.base import (
    Estimator,
    FitClock,
    PartitionInfo,
    SluiceError,
    drive,
    tree_blocks,
    tree_reduce,
    tree_reduce_blocks,
)
from pipelines.device import Placement
from pipelines.engines.base import (
    Dataset,
    StepFailure,
    compute_partition,
    located,
    placed_action,
)
from pipelines.engines.progress import fit_label, progress_bar

HELLO, READY, WORK, REPLY, STOP = 1, 2, 3, 4, 5
_HEADER = struct.Struct("!BQ")
_RANK = struct.Struct("!I")
# how long the driver waits for the tasks to connect once the job is running, and how
# often it looks whether the job failed meanwhile
CONNECT_TIMEOUT_S = 600.0
POLL_S = 0.2

# a task's answer to a pass for the partitions [index, stop): (index, failure or None,
# value, stop): one partition's partial, or a whole subtree of ``tree_reduce``'s combined
Answer = tuple[int, BaseException | None, Any, int]
# per-step records of a task: (step, partition, rows, seconds, device)
Records = list[tuple[Any, ...]]


class Closed(ConnectionError):
    """The other side of a resident fit's connection closed it."""


def send(sock: socket.socket, kind: int, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)))
    if payload:
        sock.sendall(payload)


def receive(sock: socket.socket) -> tuple[int, bytes]:
    kind, size = _HEADER.unpack(_exactly(sock, _HEADER.size))
    return kind, _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise Closed("the other side of a resident fit's connection closed it")
        got += n
    return bytes(buffer)


def _expect(sock: socket.socket, kind: int) -> bytes:
    got, payload = receive(sock)
    if got != kind:
        raise ConnectionError(f"resident fit: message {got} where {kind} was due")
    return payload


class Hub:
    """The driver's side: a listening socket, then one connection per task."""

    def __init__(self, host: str, secret: bytes, port: int = 0):
        self.secret = secret
        self.server = socket.create_server((host, port))
        self.tasks: list[socket.socket] = []

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])

    def accept(self, count: int, check: Callable[[], None],
               timeout: float | None = None) -> None:
        """Wait for ``count`` tasks, ordered by rank (``timeout`` seconds at most,
        default ``CONNECT_TIMEOUT_S``); ``check()`` raises if the job failed meanwhile.
        A connection without the secret is dropped unread."""
        timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        self.server.settimeout(POLL_S)
        by_rank: dict[int, socket.socket] = {}
        try:
            self._accept(count, check, timeout, by_rank)
        except BaseException:
            for conn in by_rank.values():  # the tasks that did connect see it closed
                conn.close()
            raise
        self.tasks = [by_rank[r] for r in sorted(by_rank)]

    def _accept(self, count: int, check: Callable[[], None], timeout: float,
                by_rank: dict[int, socket.socket]) -> None:
        deadline = time.monotonic() + timeout
        while len(by_rank) < count:
            check()
            if time.monotonic() > deadline:
                raise ConnectionError(f"{count - len(by_rank)} of {count} tasks did not "
                                      f"connect in {timeout:.0f} s")
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            conn.settimeout(30.0)
            try:
                kind, size = _HEADER.unpack(_exactly(conn, _HEADER.size))
                if kind != HELLO or size != len(self.secret) + _RANK.size:
                    raise ConnectionError("not a task of this fit")
                payload = _exactly(conn, size)
            except (OSError, ConnectionError, struct.error):
                conn.close()
                continue
            secret, rank = payload[:-_RANK.size], _RANK.unpack(payload[-_RANK.size:])[0]
            if not hmac.compare_digest(secret, self.secret) or rank in by_rank:
                conn.close()
                continue
            conn.settimeout(None)  # a pass takes what it takes
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            by_rank[rank] = conn

    def ready(self, on_records: Callable[[Records], None]) -> None:
        """Every task has computed its partitions: raise the failure of the lowest
        partition if any did not."""
        failures: dict[int, BaseException] = {}
        for task in self.tasks:
            failure, records = pickle.loads(_expect(task, READY))
            on_records(records)
            if failure is not None:
                failures[failure[0]] = failure[1]
        raise_lowest(failures)

    def gather(self, work: bytes, on_records: Callable[[Records], None],
               on_answer: Callable[[int], None] | None = None
               ) -> dict[tuple[int, int], Any]:
        """One pass: ``work`` to every task; the values by the partitions they answer
        for (``by_partition``), or the failure of the lowest partition."""
        for task in self.tasks:
            send(task, WORK, work)
        return by_partition((pickle.loads(_expect(task, REPLY)) for task in self.tasks),
                            on_records, on_answer)

    def close(self) -> None:
        for task in self.tasks:
            with contextlib.suppress(OSError):  # a task already gone needs no stop
                send(task, STOP)
            task.close()
        self.tasks = []
        self.server.close()


def connect(host: str, port: int, secret: bytes, rank: int,
            timeout: float = 60.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send(sock, HELLO, secret + _RANK.pack(rank))
    sock.settimeout(None)
    return sock


# arrays of at least this many bytes go by ``PassWriter``'s references
SHARED_ARRAY_BYTES = 1 << 10
_ARRAY, _AGAIN = "sluice-array", "sluice-array-again"


class PassWriter:
    """The driver's side of what each pass sends: the pass's work pickled with
    ``pickler`` (a cloudpickle ``Pickler`` the tasks can load), where each large NumPy
    array that repeats, changes a few rows of or extends the array at the same place in
    the previous pass's pickle (a fit's state: bin edges, a forest's node arrays, which
    grow by a level a pass and fill in the split nodes) goes as those rows only. The
    tasks keep what the previous pass sent (``PassReader``); every task reads every
    pass, in order, so all keep the same. The 602 passes of a boosting fit of 100
    trees sent 246 MB to every task before, 3.5 MB now."""

    def __init__(self, pickler: type) -> None:
        writer = self

        class Delta(pickler):  # type: ignore[misc, valid-type]
            def __init__(self, file: io.BytesIO) -> None:
                super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
                self.now: list[np.ndarray] = []
                self.at: dict[int, int] = {}

            def persistent_id(self, value: Any) -> Any:
                if (type(value) is not np.ndarray or value.ndim == 0 or value.dtype.hasobject
                        or value.nbytes < SHARED_ARRAY_BYTES):
                    return None
                if id(value) in self.at:  # the same object again in this pickle
                    return (_AGAIN, self.at[id(value)])
                index = self.at[id(value)] = len(self.now)
                value = np.ascontiguousarray(value)
                self.now.append(value.copy())  # the state may change later
                old = writer.sent[index] if index < len(writer.sent) else None
                keep, changed = _kept_rows(old, value)
                return (_ARRAY, index, keep, changed.tobytes(), value[changed].tobytes(),
                        value.dtype, value.shape, value[keep:].tobytes())

        self.pickler = Delta
        self.sent: list[np.ndarray] = []

    def dumps(self, obj: Any) -> bytes:
        out = io.BytesIO()
        pickler = self.pickler(out)
        pickler.dump(obj)
        self.sent = pickler.now
        return out.getvalue()


_NONE = np.zeros(0, np.intp)


def _kept_rows(old: np.ndarray | None, new: np.ndarray) -> tuple[int, np.ndarray]:
    """How many leading rows of C-contiguous ``new`` can come from ``old`` (the rows of
    ``old``, or 0), and which of those rows differ from ``old``'s, bit for bit."""
    if (old is None or old.dtype != new.dtype or old.shape[1:] != new.shape[1:]
            or old.shape[0] > new.shape[0] or old.shape[0] == 0):
        return 0, _NONE
    rows = old.shape[0]
    # compared as the widest unsigned words a row's bytes split into (a row of one word:
    # one compare a row, no reduction along it; ~20x faster for a forest's node arrays)
    width = new.itemsize * new[:1].size
    word = np.dtype(f"u{next(w for w in (8, 4, 2, 1) if width % w == 0)}")
    unequal = (new[:rows].view(np.uint8).reshape(-1).view(word)
               != old.view(np.uint8).reshape(-1).view(word))
    per_row = width // word.itemsize
    if per_row == 1:
        changed = np.flatnonzero(unequal)
    else:  # the rows of the words that differ (sorted: each row once)
        changed = np.flatnonzero(unequal.reshape(rows, per_row).any(axis=1))
    if 2 * len(changed) > rows:
        return 0, _NONE
    return rows, changed


class PassReader:
    """A task's side of ``PassWriter``: unpickles each pass with the arrays the
    previous one sent. The work gets its own copies (it may write them)."""

    def __init__(self) -> None:
        self.kept: list[np.ndarray] = []

    def loads(self, blob: bytes) -> Any:
        kept, now, given = self.kept, [], []

        def array(pid: Any) -> np.ndarray:
            if pid[0] == _AGAIN:
                return given[pid[1]]
            _, index, keep, changed, patch, dtype, shape, tail = pid
            whole = np.empty(shape, dtype)
            if keep:
                whole[:keep] = kept[index]
                rows = np.frombuffer(changed, np.intp)
                whole[rows] = np.frombuffer(patch, dtype).reshape(len(rows), *shape[1:])
            whole[keep:] = np.frombuffer(tail, dtype).reshape(shape[0] - keep, *shape[1:])
            now.append(whole)
            given.append(now[-1].copy())
            return given[-1]

        reader = pickle.Unpickler(io.BytesIO(blob))
        reader.persistent_load = array  # type: ignore[method-assign]
        obj = reader.load()
        self.kept = now
        return obj


def answers(work: Callable[[pa.Table, PartitionInfo], Any],
            held: list[tuple[PartitionInfo, pa.Table]],
            locate: Callable[[PartitionInfo, BaseException], BaseException]) -> list[Answer]:
    """``work`` on every held partition; a failure is located and ends the pass here
    (the fit fails anyway)."""
    out: list[Answer] = []
    for info, table in held:
        try:
            out.append((info.index, None, work(table, info), info.index + 1))
        except Exception as exc:
            out.append((info.index, locate(info, exc), None, info.index + 1))
            break
    return out


def merged(found: list[Answer], combine: Callable[[Any, Any], Any]) -> list[Answer]:
    """A task's answers with each whole subtree of the driver's ``tree_reduce`` among
    them combined here, as the driver would (``tree_blocks``): a task holding partitions
    0-3 sends one partial for them, not four (a pass's histograms, say), and the model
    is the same, bit for bit. Answers with a failure go as they are."""
    if any(failure is not None for _, failure, _, _ in found):
        return found
    values = {index: value for index, _, value, _ in found}
    found.clear()  # each partial goes as it is combined
    out: list[Answer] = []
    for start, stop in tree_blocks(values):
        out.append((start, None, tree_reduce([values.pop(i) for i in range(start, stop)],
                                             combine), stop))
    return out


def serve(sock: socket.socket, ready: bytes, answer: Callable[[Any], bytes]) -> bool:
    """A task's side once connected: say READY (``ready``: the pickled failure and
    records), then answer every pass the driver sends until it says stop (True) or
    hangs up (False: it was interrupted, or gave the fit up; its own error says why,
    and a task's stack would only hide it). ``answer(work)``: the pickled reply to one
    pass (``work`` unpickled, with the arrays of the passes before: ``PassReader``)."""
    reader = PassReader()
    try:
        send(sock, READY, ready)
        while True:
            kind, payload = receive(sock)
            if kind == STOP:
                return True
            if kind != WORK:
                raise ConnectionError(
                    f"resident fit: unexpected message {kind} from the driver")
            send(sock, REPLY, answer(reader.loads(payload)))
    except (Closed, BrokenPipeError, ConnectionResetError):
        return False


def portable(exc: BaseException, label: str = "executor") -> BaseException:
    """A failure ready to cross to the driver, from any engine's worker: a bug keeps its
    traceback as a note (``<label> traceback (most recent call last):``, once), an
    exception that does not pickle becomes a RuntimeError naming its type (module and
    name) with its text and notes, and a sluice error that does not pickle keeps its
    message, hint and place."""
    if isinstance(exc, StepFailure):
        error = exc.error
        text = "".join(traceback.format_exception(error)).rstrip()
        if text and not any(n.startswith(f"{label} traceback") for n in
                            getattr(error, "__notes__", [])):
            error.add_note(f"{label} traceback (most recent call last):\n{text}")
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        pass
    if isinstance(exc, StepFailure):
        plain = RuntimeError(_named(exc.error))
        for note in getattr(exc.error, "__notes__", []):
            plain.add_note(note)
        return StepFailure(exc.step, exc.where, plain)
    if isinstance(exc, SluiceError):
        return SluiceError(exc.message, hint=exc.hint, where=exc.where)
    return RuntimeError(_named(exc))


def _named(exc: BaseException) -> str:
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}: {exc}"


class Task:
    """A task's side of a resident fit: compute its partitions once (``hold``), then,
    connected to the driver, say READY and answer every pass (``answer``)."""

    def __init__(self, data: Dataset, infos: list[PartitionInfo], step: str,
                 label: str = "executor"):
        self.data, self.infos, self.step, self.label = data, infos, step, label
        self.records: Records = []
        self.held: list[tuple[PartitionInfo, pa.Table]] = []
        self.failure: tuple[int, BaseException] | None = None

    def record(self, *row: Any) -> None:
        self.records.append(row)

    def taken(self) -> Records:
        out = list(self.records)
        self.records.clear()
        return out

    def hold(self) -> None:
        for info in self.infos:
            try:
                self.held.append((info, compute_partition(self.data, info, self.record)))
            except (SluiceError, StepFailure) as exc:
                self.failure = (info.index, portable(exc, self.label))
                return

    def answer(self, sock: socket.socket) -> None:
        """Say READY, then answer every pass until the driver says stop or hangs up
        (``serve``)."""

        def locate(info: PartitionInfo, exc: BaseException) -> BaseException:
            return portable(located(self.step, info, exc), self.label)

        def reply(work: placed_action) -> bytes:
            done = merged(answers(lambda t, i: work(t, i, self.record), self.held, locate),
                          work.combine)
            return pickle.dumps((done, self.taken()))

        # a task whose partitions failed answers nothing, until the driver says stop
        serve(sock, pickle.dumps((self.failure, self.taken())),
              reply if self.failure is None else lambda work: b"")

    def run(self, host: str, port: int, secret: bytes, rank: int,
            unreachable: Callable[[OSError], BaseException] | None = None) -> None:
        """A task's whole life in a resident fit: hold its partitions, connect to the
        driver's hub (``unreachable`` makes the error when it cannot), answer every pass."""
        self.hold()
        try:
            sock = connect(host, port, secret, rank)
        except OSError as exc:
            if unreachable is None:
                raise
            raise unreachable(exc) from None
        try:
            self.answer(sock)
        finally:
            sock.close()


def raise_lowest(failures: dict[int, BaseException],
                 locate: Callable[[int, BaseException], BaseException] | None = None) -> None:
    """Raise the failure of the lowest partition, if any: the same error whichever task
    finished first (``locate`` may say where it happened)."""
    if failures:
        first = min(failures)
        raise failures[first] if locate is None else locate(first, failures[first])


def by_partition(replies: Iterable[tuple[list[Answer], Records]],
                 on_records: Callable[[Records], None],
                 on_answer: Callable[[int], None] | None = None
                 ) -> dict[tuple[int, int], Any]:
    """A pass's replies (each task's answers and records) as the values by the
    partitions ``[index, stop)`` they answer for; the records go to ``on_records``,
    each answered partition to ``on_answer``; the failure of the lowest partition is
    raised."""
    values: dict[tuple[int, int], Any] = {}
    failures: dict[int, BaseException] = {}
    for found, records in replies:
        on_records(records)
        for index, failure, value, stop in found:
            if failure is not None:
                failures[index] = failure
            values[(index, stop)] = value
            if on_answer is not None:
                for answered in range(index, stop):
                    on_answer(answered)
    raise_lowest(failures)
    return values


def drive_passes(estimator: Estimator, schema: pa.Schema, infos: list[PartitionInfo],
                 step: str, placement: Placement,
                 gather: Callable[[bytes], dict[tuple[int, int], Any]],
                 pickler: type, clock: FitClock) -> tuple[Any, int]:
    """The estimator's driver loop over resident partitions: each pass pickled
    (``PassWriter`` with ``pickler``, a cloudpickle the tasks can load), ``gather``-ed
    from every task (the values by the partitions they answer for: ``merged``) and
    combined in partition order (``tree_reduce_blocks``: as ``tree_reduce``; its time
    the ``clock``'s driver time)."""
    if [i.index for i in infos] != list(range(len(infos))):
        raise RuntimeError("a resident fit's partitions must be numbered 0, 1, ... in order")
    writer = PassWriter(pickler)

    def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
        work = placed_action(step, placement, partial, estimator.combine)
        answers = gather(writer.dumps(work))
        t0 = time.perf_counter()
        try:
            return tree_reduce_blocks(answers, len(infos), estimator.combine)
        finally:
            clock.driver_seconds += time.perf_counter() - t0

    return drive(estimator, schema, aggregate, clock)


def fit(hub: Hub, estimator: Estimator, schema: pa.Schema, infos: list[PartitionInfo],
        step: str, placement: Placement, on_records: Callable[[Records], None],
        pickler: type, clock: FitClock, progress: bool = False) -> tuple[Any, int]:
    """The driver's side once every task connected: READY, then ``drive_passes`` with
    each pass sent over the hub (``progress``: a bar a pass, as the fit's label says)."""
    hub.ready(on_records)
    return drive_passes(estimator, schema, infos, step, placement,
                        shown_passes(progress, step, clock, infos,
                                     lambda work, advance: hub.gather(work, on_records,
                                                                      advance)),
                        pickler, clock)


def shown_passes(progress: bool, step: str, clock: FitClock, infos: list[PartitionInfo],
                 gather: Callable[[bytes, Callable[[int], None]], Any]
                 ) -> Callable[[bytes], Any]:
    """``gather(work, advance)`` of each pass under a progress bar of the pass
    (``fit_label``), advanced as each partition answers (``progress``: else none)."""
    rows = {i.index: i.rows or 0 for i in infos}

    def shown(work: bytes) -> Any:
        with progress_bar(progress, fit_label(step, clock), len(infos)) as bar:
            return gather(work, lambda index: bar.advance(rows[index]))

    return shown
