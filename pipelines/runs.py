"""The run history: the run records under a runs folder, selected, summarised and
compared, as plain data (``sluice runs list|show|compare|metric`` prints it).

Every run writes ``<runs>/<pipeline>/<run id>.json`` (``pipelines.runner``; the runs
folder may be a URL, ``s3://bucket/runs``: a Kubernetes CronJob's pod keeps nothing);
this module reads them (and ``prune`` deletes them). A file that is not a whole run
record is skipped and said, never fatal.

A run writes its record as it starts, status ``running``, and rewrites it every
``$SLUICE_HEARTBEAT_SECONDS`` (30) with a heartbeat (``Heartbeat``) until the final
record replaces it, so a run killed outright (SIGKILL, out of memory, its node lost)
leaves a trace. A reader shows a running record whose run cannot be alive as ``lost``
(``lost_because``): on this host, its process is gone; elsewhere, no heartbeat for
``LOST_AFTER_BEATS`` intervals and at least ``LOST_AFTER_SECONDS``.
"""

from __future__ import annotations

import calendar
import contextlib
import glob
import json
import math
import os
import posixpath
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from operators import jsontext
from operators.crash import crash_point
from operators.errors import SluiceError, suggest
from operators.io.paths import local_path
from operators.jsontext import NON_FINITE
from operators.processes import process_gone

STATUSES = ("succeeded", "failed", "interrupted", "running", "lost")
"""A run's status: how it ended, ``running`` (its record written as it started, and
kept fresh by its heartbeat), or ``lost`` (a running record whose run cannot be
alive: a reader's verdict, never written)."""
HEARTBEAT_ENV = "SLUICE_HEARTBEAT_SECONDS"
HEARTBEAT_SECONDS = 30.0
LOST_AFTER_BEATS = 10
LOST_AFTER_SECONDS = 300.0

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "pipeline": str, "status": str, "started_at": str,
    "seconds": (int, float), "engine": dict, "params": dict, "steps": dict,
    "outputs": list, "models": list, "metrics": dict,
}
"""What a run record has, and of which JSON type (what the summaries read)."""

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
"""A run id starts with the second its run started, in UTC (``runner.new_run_id``)."""
STAMP = len("20261128T060000Z")
"""The length of that start: run ids of this length order by start."""

_ITEM_KEYS = {"steps": ("op",), "outputs": ("path", "rows"), "models": ("name", "version", "path")}

def dumps(record: dict[str, Any], indent: int | None = None) -> str:
    """A run record (or a summary of one) as strict JSON (``operators.jsontext``)."""
    return jsontext.dumps(record, indent)


@dataclass
class History:
    """The run records under ``root`` (each with ``record_path``: its file), newest first,
    and a line for each file skipped as not a whole run record."""

    root: str
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pipelines: list[str] = field(default_factory=list)
    """Every pipeline folder under ``root`` (not only the one loaded)."""
    ids: list[str] = field(default_factory=list)
    """The run id of every record file looked at (read or not: ``prefix``)."""
    exists: bool = False
    """Whether the runs folder is there."""


def default_runs_dir() -> str:
    """Where run records go and are read from: ``$SLUICE_RUNS``, else data/runs."""
    return os.environ.get("SLUICE_RUNS") or "data/runs"


def load(runs_dir: str | None = None, pipeline: str | None = None,
         prefix: str = "", since: str = "") -> History:
    """The run records of ``pipeline`` (else of every pipeline) under ``runs_dir`` (else
    ``$SLUICE_RUNS``, else data/runs; a folder or a URL), newest first; only those whose
    run id starts with ``prefix`` are read (a record file is named by its run id), and
    with ``since`` (a run id) only those of runs started in its second or later."""
    root = runs_dir or default_runs_dir()
    history = History(root)
    fs, path, local = _files(root)
    try:
        history.exists = fs.isdir(path)
        if not history.exists:
            return history
        folders = {posixpath.basename(f["name"].rstrip("/")): f["name"]
                   for f in fs.ls(path, detail=True) if f["type"] == "directory"}
        history.pipelines = sorted(n for n in folders if not n.startswith("."))
        wanted: list[tuple[str, dict[str, Any]]] = []  # (as shown, its listing)
        for name in [pipeline] if pipeline is not None else history.pipelines:
            if name not in folders:
                continue
            for info in fs.ls(folders[name], detail=True):
                file = posixpath.basename(info["name"])
                # a record being written (written_whole's staging) starts with a dot
                if info["type"] != "file" or not file.endswith(".json") or file.startswith("."):
                    continue
                history.ids.append(file.removesuffix(".json"))
                if file.startswith(prefix) and file[:STAMP] >= since[:STAMP]:
                    wanted.append((_record_path(root, local, name, file), info))
        # every record in one call: an object store's are fetched side by side
        contents = fs.cat([info["name"] for _, info in wanted], on_error="return") \
            if wanted else {}
    except _errors(local) as exc:
        raise _failure(exc, root, f"cannot read the run records in '{root}'") from None
    found = []
    for shown, info in wanted:
        record, problem = _parsed(contents.get(info["name"]))
        if problem is not None:
            history.skipped.append(f"skipped {shown}: {problem}")
            continue
        record["record_path"] = shown
        if record["status"] == "running":
            judge_running(record)
        when = record.get("started_unix")  # older records: when written
        found.append(((record["run_id"][:STAMP],
                       when if isinstance(when, int | float) else _written(info),
                       record["run_id"]), record))
    # a run id starts with its second; runs started in the same second go by their
    # start to the microsecond (an older record's: when it was written)
    found.sort(key=lambda item: item[0], reverse=True)
    history.records = [record for _, record in found]
    killed = {r["pipeline"] for r in history.records if r["status"] in ("running", "lost")}
    if killed:  # the later runs that settled their claims: read too, where not read here
        # (a run settles a claim of a run started before it: the records from the first
        # killed run's start on, less an hour for the clocks of other hosts, not a
        # scheduled pipeline's whole history)
        first = {name: _earlier(min(r["run_id"] for r in history.records if r["pipeline"]
                                    == name and r["status"] in ("running", "lost")), 3600)
                 for name in killed}
        known = history.records if not prefix else [
            r for name in sorted(killed) for r in load(root, name, since=first[name]).records]
        _mark_settled(history.records, settlements(known))
    return history


def _earlier(run_id: str, seconds: float) -> str:
    """The stamp of a run id started ``seconds`` before ``run_id`` ("" for an id that
    does not start with its stamp: every record is later)."""
    try:
        start = calendar.timegm(time.strptime(run_id[:STAMP], STAMP_FORMAT))
    except ValueError:
        return ""
    return time.strftime(STAMP_FORMAT, time.gmtime(start - seconds))


def settlements(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """How later runs settled the incremental claims killed runs left, by the killed
    run's id, from the records of the runs that settled them (``Reads.settle``): ``by``
    (that run's id), ``outcome`` (``settled``: every output of it landed, its files
    recorded as read; ``recovered``: its files read again, what landed taken out),
    ``files`` (read in its claimed steps), ``outputs`` (each write's ``step``, ``path``
    and ``rows`` added, None where uncounted), ``models`` and ``removed`` (taken out)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        for entry in record.get("steps", {}).values():
            claim = (entry.get("incremental") or {}).get("claim") or {}
            if "run_id" not in claim:
                continue
            dead = str(claim["run_id"])
            said = out.setdefault(dead, {"by": record["run_id"], "outcome": "settled",
                                         "files": 0, "outputs": [], "models": [],
                                         "removed": []})
            if claim.get("outcome") != "settled":
                said["outcome"] = "recovered"
            said["files"] += claim.get("files") or 0
            # a run's outputs and models are claimed by each of its incremental reads
            for key in ("outputs", "models", "removed"):
                said[key] += [item for item in claim.get(key) or [] if item not in said[key]]
    return out


def _mark_settled(records: list[dict[str, Any]], settled: dict[str, dict[str, Any]]) -> None:
    """Each record of a killed run that a later run settled, as a reader shows it:
    ``settled_by`` (``settlements``), and ``lost`` where its record still read running
    (another host's, before its heartbeat went stale: the later run proves it dead)."""
    for record in records:
        found = settled.get(record["run_id"])
        if found is None or record["status"] not in ("running", "lost"):
            continue
        record["settled_by"] = found
        if record["status"] == "running":
            record["status"] = "lost"
            record["lost"] = f"run {found['by']} settled its incremental claim"


def settled_said(settled: dict[str, Any]) -> str:
    """A killed run's settling, in words: 'settled by run Y: its outputs landed'."""
    if settled["outcome"] == "settled":
        return f"settled by run {settled['by']}: its outputs landed"
    return (f"recovered by run {settled['by']}: its files read again, "
            + ("what landed taken out" if settled["removed"] else "nothing of it had landed"))


def outputs_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """What a run wrote (``outputs``); a killed run's record has none, and where a later
    run settled it, its outputs landed: each as that run found it (``rows`` None: not
    counted)."""
    settled = record.get("settled_by")
    if record["outputs"] or not settled or settled["outcome"] != "settled":
        return record["outputs"]
    # its path as the run's file gave it (the settling run found it resolved), where kept
    return [{**o, "path": ((record["steps"].get(o["step"]) or {}).get("params") or {}).get(
        "path", o["path"])} for o in settled["outputs"]]


def _written(info: dict[str, Any]) -> float:
    """When a listed file was last written (seconds), as its filesystem says (0: it
    does not say)."""
    when = info.get("mtime")
    if isinstance(when, int | float):  # a local file's
        return float(when)
    from operators.io.fs import modified_at

    return modified_at(info) or 0.0


def _files(root: str) -> tuple[Any, str, bool]:
    """The file system of a runs folder, the folder's path in it and whether it is
    local: a folder through ``os`` (``sluice runs`` imports neither fsspec nor pyarrow
    for one), a URL through fsspec."""
    if "://" not in root or root.startswith("file://"):
        return _LocalFiles(), local_path(root), True
    from operators.io.fs import resolve

    loc = resolve(root)
    return loc.fsspec_fs, loc.path, False


def _errors(local: bool) -> tuple[type[BaseException], ...]:
    """What reading or deleting run records raises: OSError, and a store's client's."""
    if local:
        return (OSError,)
    from operators.io.fs import store_errors

    return store_errors(OSError)


class _LocalFiles:
    """The part of fsspec's file system interface the run history uses, over ``os``."""

    @staticmethod
    def isdir(path: str) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def ls(path: str, detail: bool = True) -> list[dict[str, Any]]:
        out = []
        with os.scandir(path) as entries:
            for entry in entries:
                kind = ("directory" if entry.is_dir() else "file" if entry.is_file()
                        else "other")
                out.append({"name": entry.path, "type": kind,
                            "mtime": entry.stat().st_mtime if kind == "file" else None})
        return out

    @staticmethod
    def cat(paths: list[str], on_error: str = "return") -> dict[str, bytes | OSError]:
        out: dict[str, bytes | OSError] = {}
        for path in paths:
            try:
                out[path] = Path(path).read_bytes()
            except OSError as exc:
                out[path] = exc
        return out

    @staticmethod
    def rm(path: str) -> None:
        os.remove(path)


def _parsed(content: bytes | BaseException | None) -> tuple[dict[str, Any], str | None]:
    """The record a file held (its bytes, or the error reading it), or why it is not a
    whole run record."""
    if content is None:
        content = FileNotFoundError("gone while read")
    if isinstance(content, BaseException):
        return {}, f"cannot read it ({getattr(content, 'strerror', None) or content})"
    try:
        record = json.loads(content, parse_constant=NON_FINITE.__getitem__)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"not JSON ({exc})"
    if not isinstance(record, dict):
        return {}, "not a run record (not a JSON object)"
    for key, kind in _FIELDS.items():
        if key not in record:
            return {}, f"not a whole run record (no '{key}')"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return {}, f"not a whole run record ('{key}' is {type(record[key]).__name__})"
    if "name" not in record["engine"]:
        return {}, "not a whole run record (the engine has no name)"
    for key, needed in _ITEM_KEYS.items():
        items = record[key].values() if isinstance(record[key], dict) else record[key]
        if not all(isinstance(item, dict) and all(k in item for k in needed) for item in items):
            return {}, f"not a whole run record (an entry of '{key}' lacks {', '.join(needed)})"
    return record, None


def write(record: dict[str, Any], runs_dir: str) -> str:
    """Write a run record as ``<runs_dir>/<pipeline>/<run id>.json`` (whole or not at
    all: a local file through a staging file, an object in one put); its path or URL.
    A SluiceError naming the folder where the file system refuses."""
    from operators.io.fs import written_whole

    fs, path, local = _files(runs_dir)
    text = dumps(record, indent=1)
    name = f"{record['run_id']}.json"
    try:
        if local:
            folder = Path(path) / record["pipeline"]
            folder.mkdir(parents=True, exist_ok=True)
            with written_whole(folder / name) as staging:
                Path(staging).write_text(text)
                if record["status"] != "running":
                    crash_point("in-record")
        else:
            fs.pipe_file(f"{path.rstrip('/')}/{record['pipeline']}/{name}", text.encode())
    except _errors(local) as exc:
        raise _unwritable(exc, runs_dir, record["pipeline"]) from None
    return _record_path(runs_dir, local, record["pipeline"], name)


def lost_because(record: dict[str, Any]) -> str | None:
    """Why the run of a ``running`` record cannot be alive, or None (it may be): on this
    host, its process is gone; elsewhere, its heartbeat stopped ``LOST_AFTER_BEATS``
    intervals and ``LOST_AFTER_SECONDS`` ago or more."""
    gone = process_gone(record)
    if gone is not None:
        return f"process {record['pid']} on this host is gone" if gone else None
    beat = record.get("heartbeat_unix", record.get("started_unix"))
    interval = record.get("heartbeat_seconds")
    if not is_number(beat):
        return None
    if not is_number(interval) or interval <= 0:
        interval = HEARTBEAT_SECONDS
    silent = time.time() - beat
    if silent < max(LOST_AFTER_BEATS * interval, LOST_AFTER_SECONDS):
        return None
    since = record.get("heartbeat_at") or record["started_at"]
    return (f"no heartbeat since {since} ({format_duration(silent)} ago; it beats every "
            f"{interval:g}s)")


def judge_running(record: dict[str, Any]) -> None:
    """A loaded ``running`` record as a reader shows it: ``lost`` with the reason
    (``lost``) where its run cannot be alive; else how long it has run so far
    (``seconds``)."""
    reason = lost_because(record)
    if reason is not None:
        record["status"], record["lost"] = "lost", reason
    elif is_number(record.get("started_unix")):
        record["seconds"] = round(max(time.time() - record["started_unix"],
                                      record["seconds"]), 6)


def heartbeat_seconds() -> float:
    """How often a running run rewrites its record: ``$SLUICE_HEARTBEAT_SECONDS``, else
    30; a SluiceError for a value that is not a number of seconds above 0."""
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return HEARTBEAT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise SluiceError(f"${HEARTBEAT_ENV} is '{text}', not a number of seconds above 0",
                          hint=f"set it to how often a running run's record is rewritten "
                               f"(default {HEARTBEAT_SECONDS:g}), or unset it")
    return seconds


class Heartbeat:
    """A run's record as it runs: written ``running`` at ``start``, then rewritten with
    a fresh heartbeat every ``interval`` seconds by a daemon thread until ``stop`` (the
    caller then writes the final record over it). The thread writes a copy of the record
    as it was at ``start``: the run's own record changes under it meanwhile. A heartbeat
    that cannot be written is tried again at the next (the run goes on; a reader
    elsewhere may see it lost if the store stays out of reach)."""

    def __init__(self, record: dict[str, Any], runs_dir: str, interval: float):
        self.record = json.loads(dumps(record), parse_constant=NON_FINITE.__getitem__)
        self.record.update(status="running", heartbeat_seconds=interval)
        self.runs_dir, self.interval = runs_dir, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sluice-heartbeat",
                                        daemon=True)

    def _write(self) -> None:
        now = time.time()
        self.record.update(heartbeat_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                           heartbeat_unix=round(now, 6),
                           seconds=round(now - self.record["started_unix"], 6))
        write(self.record, self.runs_dir)

    def start(self) -> None:
        """Write the running record (a SluiceError where it cannot be) and start beating."""
        self._write()
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            with contextlib.suppress(SluiceError, OSError):
                self._write()

    def stop(self) -> None:
        """Stop beating; when this returns, no heartbeat write is under way."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()


def check_writable(runs_dir: str, pipeline: str) -> None:
    """Before a run: that its record can be written under ``runs_dir``, a SluiceError
    as ``write``'s where not (a local folder is made, and a file made and removed in it;
    an object store is not probed: a put would leave an object behind)."""
    _, path, local = _files(runs_dir)
    if not local:
        return
    folder = Path(path) / pipeline
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        raise _unwritable(exc, runs_dir, pipeline) from None


def _unwritable(exc: BaseException, runs_dir: str, pipeline: str) -> SluiceError:
    shown = f"{runs_dir.rstrip('/')}/{pipeline}"
    return _failure(exc, shown, f"cannot write the run record to '{shown}'",
                    hint="--runs DIR (or $SLUICE_RUNS) names a folder (or URL) this user "
                         "can write")


def _record_path(root: str, local: bool, pipeline: str, file: str) -> str:
    """A record file's path as said and deleted: under a folder (a file:// URL's as its
    path: a Path of the URL would be a folder named 'file:'), or a URL."""
    if local:
        return str(Path(local_path(root)) / pipeline / file)
    return f"{root.rstrip('/')}/{pipeline}/{file}"


def delete(record: dict[str, Any]) -> None:
    """Delete a loaded record's file (``record_path``); gone already is fine. A
    SluiceError naming the file where the store refuses (a bucket that keeps its
    objects)."""
    shown = record["record_path"]
    fs, path, local = _files(shown)
    try:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
        if local:  # a rewrite of it its run was killed in (written_whole's staging)
            folder, name = os.path.split(path)
            for left in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
                left.unlink(missing_ok=True)
    except _errors(local) as exc:
        raise _failure(exc, shown, f"cannot delete the run record '{shown}'") from None


def _failure(exc: BaseException, path: str, what: str, hint: str | None = None
             ) -> SluiceError:
    """A store's error at ``path`` as a user's: access, credentials or reach said as
    such (``store_problem``), else ``what`` failed and why."""
    from operators.io.fs import store_problem

    return store_problem(exc, path) or SluiceError(
        f"{what}: {getattr(exc, 'strerror', None) or exc}", hint=hint)


def parse_since(text: str) -> datetime:
    """``--since``'s date or time (2026-11-01, 2026-11-01T06:00, UTC unless it says)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SluiceError(f"'{text}' is not a date or time",
                          hint="give a date, 2026-11-01, or a UTC time, 2026-11-01T06:00"
                          ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def started(record: dict[str, Any]) -> datetime | None:
    """When the run started (its record's ``started_at``), or None if it cannot say."""
    try:
        when = datetime.fromisoformat(record["started_at"])
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def select(records: list[dict[str, Any]], *, status: str | None = None,
           since: datetime | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """The records (newest first) of that status, started at or after ``since``; of
    those, the newest ``last``."""
    chosen = [r for r in records if status is None or r["status"] == status]
    if since is not None:
        chosen = [r for r in chosen if (started(r) or since) >= since]
    return chosen if last is None else chosen[:last]


def prunable(records: list[dict[str, Any]], *, keep: int | None = None,
             before: datetime | None = None, status: str | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records (newest first) ``sluice runs prune`` deletes: of each pipeline's runs
    of ``status`` (any), those past its newest ``keep`` and started before ``before``
    (a run whose start cannot be read is kept); and those it keeps only because they
    saved a model version that is still in the registry (its provenance: `sluice models
    show` names the run). A running run is not done: never deleted, nor counted among
    the newest ``keep`` (a lost one is done, as a failed one)."""
    by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["status"] == "running":
            continue
        if status is None or record["status"] == status:
            by_pipeline.setdefault(record["pipeline"], []).append(record)
    doomed: list[dict[str, Any]] = []
    spared: list[dict[str, Any]] = []
    for chosen in by_pipeline.values():
        for record in chosen[keep or 0:]:
            if before is not None and (started(record) or before) >= before:
                continue
            (spared if _saved_model_kept(models_of(record)) else doomed).append(record)
    order = {id(r): i for i, r in enumerate(records)}
    return (sorted(doomed, key=lambda r: order[id(r)]),
            sorted(spared, key=lambda r: order[id(r)]))


def models_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The model versions a run saved; a killed run's record names none, and where a
    later run settled it, those that run found it published."""
    return [*record["models"], *(record.get("settled_by") or {}).get("models", [])]


def _saved_model_kept(models: list[dict[str, Any]]) -> bool:
    """Whether one of ``models`` (versions a run saved) is still there: its folder holds
    its model.json (a deleted version's keeps a note alone); one on an object store,
    which this does not look up, counts as there."""
    return any("://" in str(m["path"]) or (Path(m["path"]) / "model.json").exists()
               for m in models)


def first_line(error: Any) -> str | None:
    """A failure's first line, stripped; None for no error."""
    if not error:
        return None
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else None


def step_work(entry: dict[str, Any]) -> float | None:
    """A step's own work in a run: its partitions' task time and its time in the driver
    (None: a record from before the work was recorded)."""
    if "compute_seconds" not in entry:
        return None
    return entry["compute_seconds"] + entry.get("driver_seconds", 0)


def status_said(record: dict[str, Any]) -> str:
    """A run's status, and its warnings where it has some: 'succeeded, 1 warning'; a run
    that had nothing to do (its incremental reads had no new file) says so, 'succeeded,
    nothing to do', so that a scheduled job's history tells the nights that did nothing
    from those that did; a killed run a later run settled says how ('lost; settled by
    run Y: its outputs landed')."""
    n = len(record.get("warnings") or [])
    settled = record.get("settled_by")
    return record["status"] + (", nothing to do" if record.get("skipped") else "") + (
        f", {n} warning{'s' * (n != 1)}" if n else "") + (
        f"; {settled_said(settled)}" if settled else "")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A run in one flat dict: what ``sluice runs list`` shows a line of."""
    outputs = outputs_of(record)
    counted = [o["rows"] for o in outputs]
    return {
        "run_id": record["run_id"],
        "pipeline": record["pipeline"],
        "status": record["status"],
        "started_at": record["started_at"],
        "seconds": record["seconds"],
        "engine": record["engine"]["name"],
        # None where nothing was written, or a killed run's landed rows were not counted
        "rows_written": sum(counted) if counted and None not in counted else None,
        # a killed run's claim as a later run settled it (its outputs landed, or not)
        "settled_by": record.get("settled_by"),
        "models": [f"{m['name']}@{m['version']}" for m in models_of(record)],
        "error": first_line(record.get("error") or record.get("lost")),
        "warnings": len(record.get("warnings") or []),
        "skipped": record.get("skipped"),
        "params": record["params"],
        "record_path": record.get("record_path"),
    }


def nothing_found(history: History, pipeline: str | None = None,
                  selected_by: str = "") -> str:
    """The one line that says no run was found, and where it looked."""
    if not history.exists:
        return f"no run records: {history.root} does not exist (each run writes its record " \
               "there; --runs DIR or $SLUICE_RUNS name another folder)"
    skipped = f"; {len(history.skipped)} damaged record file(s) skipped" if history.skipped \
        else ""
    if history.records:
        of = f" of '{pipeline}'" if pipeline is not None else ""
        return f"no runs {selected_by or 'selected'} among the {len(history.records)} " \
               f"runs{of} in {history.root}{skipped}"
    if pipeline is not None and history.pipelines:
        return f"no runs of '{pipeline}' in {history.root}{skipped} (runs of " \
               f"{', '.join(history.pipelines)}{suggest(pipeline, history.pipelines)})"
    return f"no run records in {history.root}{skipped}"


def resolve(history: History, prefix: str) -> dict[str, Any]:
    """The one record whose run id starts with ``prefix`` (a whole id, or enough of it
    to name one run, as git takes a commit's); ``history`` may be loaded with that
    prefix, so that only the records it could name are read."""
    wanted = prefix.strip()
    if not wanted:
        raise SluiceError("an empty run id names no run",
                          hint="give a run id, or its first characters")
    matches = [r for r in history.records if r["run_id"].startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if not history.ids:
            raise SluiceError(f"no run '{wanted}': {nothing_found(history)}")
        damaged = [i for i in history.ids if i.startswith(wanted)]
        if damaged:
            raise SluiceError(f"run '{wanted}' has no whole record: "
                              f"{', '.join(damaged[:SHOWN_CANDIDATES])} skipped as damaged",
                              hint="the warning above says what is wrong with the file")
        if wanted in history.pipelines:  # a pipeline's name where its run's id goes
            raise SluiceError(
                f"no run '{wanted}': that is a pipeline's name, and a run is named by its "
                f"run id", hint=f"`sluice runs list {wanted} --last 1` shows its newest run")
        raise SluiceError(
            f"no run '{wanted}' among the {len(history.ids)} runs in {history.root}"
            + suggest(wanted, history.ids),
            hint="`sluice runs list` shows them; --runs DIR looks in another folder")
    shown = ", ".join(f"{r['run_id']} ({r['pipeline']})" for r in matches[:SHOWN_CANDIDATES])
    more = f" and {len(matches) - SHOWN_CANDIDATES} more" \
        if len(matches) > SHOWN_CANDIDATES else ""
    raise SluiceError(f"run id '{wanted}' is ambiguous: {len(matches)} runs start with it: "
                      f"{shown}{more}", hint="give more of the run id")


SHOWN_CANDIDATES = 8


def flat_metrics(record: dict[str, Any], lists: bool = False) -> dict[str, Any]:
    """Each scalar metric of a run by its dotted name, ``step.metric`` (and
    ``step.group.metric`` for nested ones: ``model.validation.roc_auc``), as the run's
    summary labels them; lists (a confusion matrix, a loss curve) only with ``lists``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(f"{prefix}.{key}", value)
            elif value is None or isinstance(value, bool | int | float | str) or (
                    lists and isinstance(value, list)):
                flat[f"{prefix}.{key}"] = value

    for step_id, metrics in record["metrics"].items():
        walk(step_id, metrics if isinstance(metrics, dict) else {})
    return flat


def run_params(record: dict[str, Any]) -> dict[str, Any]:
    """What a run was asked to do: the pipeline's params by name and each step's
    parameters as the step set them, ``<step>.<parameter>`` (``model.l2``); a list or a
    mapping is one value."""
    params = dict(record["params"])
    for step_id, entry in record["steps"].items():
        given = entry.get("params") if isinstance(entry, dict) else None
        for name, value in (given if isinstance(given, dict) else {}).items():
            params[f"{step_id}.{name}"] = value
    return params


def is_number(value: Any) -> bool:
    """A finite number (a metric of NaN, as a metric of no positives records it, is not
    one to draw, difference or divide)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def change(values: list[Any]) -> tuple[float | None, float | None]:
    """The difference last - first and the ratio last / first of numeric values (None
    where either is not a number, or the first is 0 for the ratio)."""
    first, last = values[0], values[-1]
    if not (is_number(first) and is_number(last)):
        return None, None
    return last - first, (last / first if first else None)


def _row(name: str, values: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "values": values, "changed": any(v != values[0] for v in values),
            **extra}


def _names(dicts: list[dict[str, Any]], shared: bool) -> list[str]:
    """The keys of every dict (in first-seen order), or only those all of them have."""
    names = list(dict.fromkeys(k for d in dicts for k in d))
    return [n for n in names if all(n in d for d in dicts)] if shared else names


def compare(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs side by side, in the order given: each row has a value per run (None: the run
    has none) and ``changed`` (the values differ); metric rows add the difference and
    ratio from the first run to the last. Runs of different pipelines compare only the
    params, metrics, steps, outputs and models they all have (``shared_only``). Where a
    run read incrementally, two rows say which run was a --full-refresh and how many
    files each read."""
    pipelines = list(dict.fromkeys(r["pipeline"] for r in records))
    shared = len(pipelines) > 1
    seconds = [r["seconds"] for r in records]
    runs = [
        _row("pipeline", [r["pipeline"] for r in records]),
        _row("status", [r["status"] + (f"; {settled_said(r['settled_by'])}"
                                       if r.get("settled_by") else "") for r in records]),
        # when and how long: measurements, never a change of the run
        {"name": "started", "values": [r["started_at"] for r in records], "changed": False},
        {"name": "seconds", "values": seconds, "changed": False, "ratio": change(seconds)[1]},
        # the steps' tasks and fits' driver time (None: a record from before it was kept)
        {"name": "work", "values": (work := [r.get("work_seconds") for r in records]),
         "changed": False, "ratio": change(work)[1]},
        _row("engine", [r["engine"]["name"] for r in records]),
        _row("file", [r.get("file") for r in records]),
        _row("error", [first_line(r.get("error") or r.get("lost")) for r in records]),
    ]
    reads = [[e["incremental"] for e in r["steps"].values() if e.get("incremental")]
             for r in records]
    if any(reads):  # what each read: a --full-refresh run's every file, or the new ones
        runs += [
            _row("full refresh", [("yes" if any(i.get("full_refresh") for i in read)
                                   else "no") if read else None for read in reads]),
            _row("files read", [sum(i.get("new_files", 0) for i in read) if read else None
                                for read in reads])]

    params = [run_params(r) for r in records]
    metrics = [flat_metrics(r) for r in records]
    steps = [r["steps"] for r in records]
    metric_rows = []
    for name in _names(metrics, shared):
        values = [m.get(name) for m in metrics]
        difference, ratio = change(values)
        metric_rows.append(_row(name, values, difference=difference, ratio=ratio))
    step_rows = []
    for step_id in _names(steps, shared):
        entries = [s.get(step_id) or {} for s in steps]
        rows = [e.get("rows") for e in entries]
        work = [step_work(e) for e in entries]
        step_rows.append({"name": step_id, "op": next(e["op"] for e in entries if e),
                          "rows": rows, "seconds": [e.get("wall_seconds") for e in entries],
                          "work": work, "work_share": [e.get("work_share") for e in entries],
                          "work_ratio": change(work)[1],
                          "changed": any(n != rows[0] for n in rows)})

    def by_step(items: Any, shown: Any) -> list[dict[str, Any]]:
        found = [{item["step"]: shown(item) for item in items(r) if "step" in item}
                 for r in records]
        return [_row(step_id, [f.get(step_id) for f in found])
                for step_id in _names(found, shared)]

    return {
        "run_ids": [r["run_id"] for r in records],
        "pipelines": pipelines,
        "shared_only": shared,
        "runs": runs,
        "params": [_row(n, [p.get(n) for p in params]) for n in _names(params, shared)],
        "metrics": metric_rows,
        "steps": step_rows,
        "outputs": by_step(outputs_of, lambda o: f"{o['rows']:,} rows to {o['path']}"
                           if o["rows"] is not None else f"landed in {o['path']}"),
        "models": by_step(models_of, lambda m: f"{m['name']}@{m['version']}"),
    }


def metric_history(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The value of metric ``name`` (``step.metric``, as ``flat_metrics`` names it) in
    each run that has it, oldest first: run_id, started_at, status, value."""
    points, known = [], {}
    for record in reversed(records):
        metrics = flat_metrics(record)
        known.update(dict.fromkeys(metrics))
        if name in metrics:
            points.append({"run_id": record["run_id"], "started_at": record["started_at"],
                           "status": record["status"], "value": metrics[name]})
    if points:
        return points
    pipelines = sorted({r["pipeline"] for r in records})
    group = sorted(k for k in known if k.startswith(f"{name}."))
    if group:
        raise SluiceError(f"'{name}' is a group of metrics, not one",
                          hint="name one of " + ", ".join(group[:SHOWN_CANDIDATES])
                               + (", ..." if len(group) > SHOWN_CANDIDATES else ""))
    step = name.split(".", 1)[0]
    in_step = sorted(k for k in known if k.startswith(f"{step}."))
    raise SluiceError(
        f"no metric '{name}' in the {len(records)} runs of {', '.join(pipelines)}"
        + suggest(name, known),
        hint=(f"step '{step}' has " + ", ".join(in_step[:12])
              + (", ..." if len(in_step) > 12 else "")) if in_step else
             "metrics are named step.metric: `sluice runs show RUN_ID` prints a run's")


def format_duration(seconds: float) -> str:
    """A run's length for a person: 0.13s, 12.4s, 3m05s, 2h07m."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[Any]) -> str:
    """The numeric values as a line of bars, lowest ▁ to highest █ (not a number: a
    space); equal values sit mid-height."""
    numbers = [v for v in values if is_number(v)]
    if not numbers:
        return ""
    low, high = min(numbers), max(numbers)
    top = len(SPARKS) - 1

    def bar(value: Any) -> str:
        if not is_number(value):
            return " "
        if high == low:
            return SPARKS[top // 2]
        return SPARKS[round((value - low) / (high - low) * top)]

    return "".join(bar(v) for v in values)
