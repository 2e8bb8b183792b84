"""Incremental reads: the files each ``read_parquet`` step with ``incremental: true`` has
read, kept per pipeline and step beside the run records, so that a scheduled re-run
reads only the files no succeeded run read (Spark's file stream checkpoint, Auto
Loader's ``availableNow``, Kedro's ``IncrementalDataset``).

``<runs>/<pipeline>/.reads/<step>.json`` lists the files read (relative to the read's
folder, so that a moved dataset keeps what was read; a state written before that lists
them whole, and is read as it is), each with its size and modification time (a file
rewritten in place is new again); it is replaced whole, only when a run succeeds, so a
failed or interrupted run's files are read again by the next.

Exactly once across crashes (Spark's file sink and commit log): before any output is
written, the run records its claim, ``<step>.pending.json`` (the files it reads, its run
id, the outputs it writes), and removes it after the state. A run killed in between
leaves the claim, and the next run of the pipeline settles it from the outputs before it
reads (``settle``): where every output of the dead run landed (a write_parquet's
``_SUCCESS`` lists files named by its run id, a save_model's model.json names it), its
files are recorded as read (``settled``); where any did not, what did land is taken out
and its files are read again (``recovered``). ``validate`` and ``plan`` say which it
will be, settling nothing (``foresee``).
A run holds ``<step>.lock`` beside it while it runs: a second run of the pipeline at once
is refused, naming the running one, before any data moves (locally a lock the kernel
drops when its process dies; on an object store an object created exclusively and
deleted at the end, which a run killed outright leaves behind, until its run record reads
lost and the next run takes it over).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators.crash import crash_point
from operators.errors import DataError, SluiceError
from operators.processes import this_process
from pipelines import runs

FOLDER = ".reads"
PENDING = ".pending.json"

try:
    import fcntl
except ImportError:  # not POSIX: runs are not kept apart locally
    fcntl = None  # type: ignore[assignment]


@dataclass
class Reads:
    """The incremental reads' state under a runs folder: read (``validate``, ``plan``),
    or, with ``run_id``, claimed for a run until ``release`` (``full_refresh``: read as if
    nothing had been read, and replaced by this run's files when it succeeds)."""

    runs_dir: str
    run_id: str | None = None
    full_refresh: bool = False
    held: dict[str, Any] = field(default_factory=dict)
    # the steps another run of the pipeline held when this one claimed them: the run
    # holding each (None: unknown)
    refused: dict[str, str | None] = field(default_factory=dict)
    # the claims of killed runs this run settled before it read, by step (``settle``)
    settled: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the steps whose lock object a lost run left, taken over by this run: that run's id
    # (``run_id``) and why it is lost (``lost``: its process gone, or its record lost)
    taken: dict[str, dict[str, str]] = field(default_factory=dict)
    # read without a run (``validate``, ``plan``): the claim another run left on each
    # step, and what the next run will do with it (``foresee``)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _where(self, pipeline: str, step_id: str, suffix: str) -> tuple[Any, str, bool]:
        fs, root, local = runs._files(self.runs_dir)
        return fs, posixpath.join(root, pipeline, FOLDER, f"{step_id}{suffix}"), local

    def shown(self, pipeline: str, step_id: str) -> str:
        """The state file, as the runs folder is spelt."""
        return f"{self.runs_dir.rstrip('/')}/{pipeline}/{FOLDER}/{step_id}.json"

    def before(self, pipeline: str, step_id: str, folder: str,
               storage_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """What earlier succeeded runs of the pipeline read in the step: ``files``, each
        ``[size, mtime_ns]`` by path (``folder``: the read's, which the state's paths are
        relative to), and ``schema``, their columns (an Arrow schema, base64); the step
        is claimed first for a run (a SluiceError naming the run that holds it), and a
        killed run's claim settled (``settle``; ``storage_options``: the write steps'
        by id, to reach their outputs)."""
        if self.run_id is not None:
            self._claim(pipeline, step_id)
            self.settle(pipeline, step_id, folder, storage_options or {})
        else:
            self.foresee(pipeline, step_id, folder, storage_options or {})
        if self.full_refresh:
            return {}
        state = self.state(pipeline, step_id)
        files = _absolute(state.get("files", {}), folder, state.get("relative", False))
        claim = self.claims.get(step_id)
        if claim is not None and claim["outcome"] == "settled":
            files.update(claim["paths"])  # the next run records them as read first
        return {**state, "files": files}

    def state(self, pipeline: str, step_id: str) -> dict[str, Any]:
        """The state as it is kept (its paths relative to the read's folder where
        ``relative``); {} where there is none."""
        shown = self.shown(pipeline, step_id)
        state = self._read(pipeline, step_id, ".json", shown)
        if state is None:
            return {}
        try:
            files = {str(k): [int(v[0]), int(v[1])] for k, v in state["files"].items()}
            schema = state.get("schema")
            return {"files": files, "schema": schema if isinstance(schema, str) else None,
                    "relative": state.get("relative") is True,
                    "run_id": state.get("run_id")}
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            raise DataError(f"'{shown}' is damaged: it is not the list of files earlier "
                            "runs read", hint="run with --full-refresh to read every file "
                                              "again and write it anew") from None

    def _read(self, pipeline: str, step_id: str, suffix: str, shown: str
              ) -> dict[str, Any] | None:
        """One of the step's JSON files, None where there is none."""
        fs, path, local = self._where(pipeline, step_id, suffix)
        try:
            raw = Path(path).read_bytes() if local else fs.cat_file(path)
        except FileNotFoundError:
            return None
        except runs._errors(local) as exc:
            raise runs._failure(exc, shown, "cannot read what earlier runs read") from None
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise DataError(f"'{shown}' is damaged: it is not JSON",
                            hint="run with --full-refresh to read every file again and "
                                 "write it anew")
        return value

    def _write(self, pipeline: str, step_id: str, suffix: str, content: dict[str, Any],
               what: str) -> None:
        """One of the step's JSON files, written whole (``what``: what a failure loses)."""
        text = json.dumps(content, indent=1)
        fs, path, local = self._where(pipeline, step_id, suffix)
        try:
            if local:
                from operators.io.fs import written_whole

                os.makedirs(os.path.dirname(path), exist_ok=True)
                with written_whole(path) as staging:
                    Path(staging).write_text(text)
            else:
                fs.pipe_file(path, text.encode())
        except runs._errors(local) as exc:
            raise runs._failure(exc, f"{self.runs_dir.rstrip('/')}/{pipeline}/{FOLDER}/"
                                     f"{step_id}{suffix}", what) from None

    def _remove(self, pipeline: str, step_id: str, suffix: str) -> None:
        fs, path, local = self._where(pipeline, step_id, suffix)
        with contextlib.suppress(FileNotFoundError):
            if local:
                os.remove(path)
            else:
                fs.rm(path)

    def commit(self, pipeline: str, step_id: str, files: dict[str, list[int]],
               schema: str, folder: str) -> None:
        """Add a succeeded run's files to what the step has read (replace it, with
        ``full_refresh``), with the columns of all of them (``schema``), written whole;
        then its claim removed."""
        self._record(pipeline, step_id, files, schema, folder, self.run_id,
                     replace=self.full_refresh)
        crash_point("after-state")
        self._remove(pipeline, step_id, PENDING)

    def _record(self, pipeline: str, step_id: str, files: dict[str, list[int]],
                schema: str | None, folder: str, run_id: str | None, replace: bool) -> None:
        state = {} if replace else self.state(pipeline, step_id)
        kept = _absolute(state.get("files", {}), folder, state.get("relative", False))
        kept.update(files)
        self._write(pipeline, step_id, ".json", {
            "pipeline": pipeline, "step": step_id, "run_id": run_id,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "schema": schema, "relative": True,
            "files": dict(sorted(_relative(kept, folder).items()))},
            "cannot record the files this run read (the next run reads them again)")

    def claim(self, pipeline: str, step_id: str, files: dict[str, list[int]], schema: str,
              folder: str, outputs: list[dict[str, Any]]) -> None:
        """Record, before any output is written, what this run reads in the step and
        what it writes (``outputs``: each a write_parquet's ``step`` and ``path``, or a
        save_model's ``step``, ``model`` and ``models``, the registry), so that the next
        run can settle it if this one is killed."""
        self._write(pipeline, step_id, PENDING, {
            "pipeline": pipeline, "step": step_id, "run_id": self.run_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "schema": schema, "files": _relative(files, folder), "outputs": outputs},
            "cannot record what this run reads (nothing was written)")

    def unclaim(self, pipeline: str, step_id: str) -> None:
        """Remove this run's claim: it ended having published nothing."""
        self._remove(pipeline, step_id, PENDING)

    def settle(self, pipeline: str, step_id: str, folder: str,
               storage_options: dict[str, dict[str, Any]]) -> None:
        """Settle the claim a killed run left on the step (this run holds it now): where
        every output it claimed landed, or its state was recorded, its files are recorded
        as read; else what landed of it is taken out of its outputs, and its files are
        left to read again. Said in ``settled``."""
        pending = self._pending(pipeline, step_id)
        if pending is None:
            return
        dead, files, outputs, schema = pending
        files = _absolute(files, folder, True)
        landed = self._landed(pipeline, step_id, dead, outputs, storage_options)
        removed: list[str] = []
        if landed:
            self._record(pipeline, step_id, files, schema, folder, dead, replace=False)
        else:
            for output in outputs:
                removed += _withdraw(output, dead, storage_options)
        self._remove(pipeline, step_id, PENDING)
        # the model versions the dead run published and that stay: its own record (left
        # running, read as lost) names none, so `runs prune` learns them from here
        models = [m for o in outputs if landed and "model" in o
                  and (m := _landed_model(o, dead)) is not None]
        # and what its writes added, where their manifests still say (``runs`` shows
        # the killed run's rows written from here)
        written = [{"step": o["step"], "path": o["path"],
                    "rows": _landed_rows(o, dead, storage_options)}
                   for o in outputs if landed and "model" not in o]
        self.settled[step_id] = {"run_id": dead, "outcome": "settled" if landed
                                 else "recovered", "files": len(files),
                                 **({"models": models} if models else {}),
                                 **({"outputs": written} if written else {}),
                                 **({} if landed else {"removed": removed})}

    def foresee(self, pipeline: str, step_id: str, folder: str,
                storage_options: dict[str, dict[str, Any]]) -> None:
        """Without a run (``validate``, ``plan``): what the next run will do with the
        claim another run left on the step, changing nothing, in ``claims``: its
        ``run_id``, its ``files`` and their ``paths``, its ``outputs`` (as shown), and
        the ``outcome``: ``running`` (its record says it runs: it holds the step),
        ``settled`` (killed after every output landed: its files recorded as read) or
        ``recovered`` (killed before: what landed taken out, its files read again)."""
        pending = self._pending(pipeline, step_id)
        if pending is None:
            return
        run_id, files, outputs, _ = pending
        landed = [o for o in outputs if _landed(o, run_id, storage_options)]
        if self._running(pipeline, run_id):
            outcome = "running"
        elif (self.state(pipeline, step_id).get("run_id") == run_id
              or outputs and len(landed) == len(outputs)):
            outcome = "settled"
        else:
            outcome = "recovered"
        self.claims[step_id] = {
            "run_id": run_id, "outcome": outcome, "files": len(files),
            "paths": _absolute(files, folder, True),
            "landed": [f"model '{o['model']}'" if "model" in o else f"'{o['path']}'"
                       for o in landed]}

    def _pending(self, pipeline: str, step_id: str
                 ) -> tuple[str, dict[str, list[int]], list[dict[str, Any]], str | None] | None:
        """The claim a run left on the step: its run id, its files (relative to the
        read's folder), its outputs and the files' columns; None where there is none."""
        shown = f"{self.runs_dir.rstrip('/')}/{pipeline}/{FOLDER}/{step_id}{PENDING}"
        pending = self._read(pipeline, step_id, PENDING, shown)
        if pending is None:
            return None
        try:
            dead = str(pending["run_id"])
            files = {str(k): [int(v[0]), int(v[1])] for k, v in pending["files"].items()}
            outputs = [dict(o) for o in pending["outputs"]]
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            raise DataError(f"'{shown}' is damaged: it is not a run's claim",
                            hint="delete it, and check the outputs of the run that left it "
                                 "for rows written twice") from None
        schema = pending.get("schema")
        return dead, files, outputs, schema if isinstance(schema, str) else None

    def _landed(self, pipeline: str, step_id: str, run_id: str,
                outputs: list[dict[str, Any]],
                storage_options: dict[str, dict[str, Any]]) -> bool:
        """Whether the run that left a claim got its files recorded as read, or every
        output it claimed landed."""
        return self.state(pipeline, step_id).get("run_id") == run_id or bool(outputs) and all(
            _landed(o, run_id, storage_options) for o in outputs)

    def _running(self, pipeline: str, run_id: str) -> bool:
        """Whether run ``run_id``'s record says it is running (not ended, not lost)."""
        try:
            history = runs.load(self.runs_dir, pipeline, run_id)
        except SluiceError:
            return False
        return any(r["run_id"] == run_id and r.get("status") == "running"
                   for r in history.records)

    def _claim(self, pipeline: str, step_id: str) -> None:
        fs, lock, local = self._where(pipeline, step_id, ".lock")
        note = json.dumps({"run_id": self.run_id, **this_process(),
                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        holder: str | None = None
        if local:
            if fcntl is None:
                return
            os.makedirs(os.path.dirname(lock), exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _run_of(os.read(fd, 4096))
                os.close(fd)
            else:
                os.ftruncate(fd, 0)
                os.write(fd, note.encode())
                self.held[lock] = fd
        else:
            holder = self._claim_on_store(fs, lock, note.encode(), pipeline, step_id)
        if lock not in self.held:
            self.refused[step_id] = holder
            gone = "" if local else (f", or delete '{lock}' if that run was killed "
                                     "outright (it is no longer running)")
            raise SluiceError(
                f"step '{step_id}' reads incrementally, and run {holder or '?'} of "
                f"pipeline '{pipeline}' is reading it now: a second run at once would read "
                "the same files", hint=f"wait for that run to end (`sluice runs show "
                                       f"{holder or '...'}`){gone}")

    def _claim_on_store(self, fs: Any, lock: str, note: bytes, pipeline: str,
                        step_id: str) -> str | None:
        """Create the step's lock object (held: in ``held``), taking over one that a run
        its record says is lost left (a run killed outright leaves its lock: the next run
        is not refused for ever; two takers at once: ``take_over_lock`` lets one in).
        The run that holds it, where this one is refused (None: unknown)."""
        from operators.io.fs import STORE_LOCK_STALE, holder_gone, take_over_lock

        holder: str | None = None
        for _ in range(5):  # each turn: created, or a holder released or taken over
            try:
                with fs.open(lock, "xb") as f:
                    f.write(note)
            except FileExistsError:
                try:
                    held = fs.cat_file(lock)
                except FileNotFoundError:
                    continue  # released between the two calls
                holder = _run_of(held)
                # its process gone from this host (a run killed before it wrote its
                # record has none to say so), or its record lost
                lost = holder_gone(held) or (self._lost(pipeline, holder) if holder else None)
                if lost is None or not take_over_lock(fs, lock, held, STORE_LOCK_STALE):
                    return holder
                self.taken[step_id] = {"run_id": str(holder), "lost": lost}
                continue
            self.held[lock] = fs
            return None
        return holder

    def check_held(self) -> None:
        """Before this run publishes: each lock object it took is its own still. One
        another run took over (this run's heartbeat stopped so long that its record read
        lost: its record's store unreachable, the process stopped) means that run reads
        the same files: this one publishes nothing (a SluiceError)."""
        for lock, handle in self.held.items():
            if isinstance(handle, int):
                continue  # a kernel lock: never taken over
            try:
                holder = _run_of(handle.cat_file(lock))
            except FileNotFoundError:
                holder = None
            if holder != self.run_id:
                step_id = posixpath.basename(lock).removesuffix(".lock")
                by = f"run {holder} took it over" if holder else "it was deleted"
                raise SluiceError(
                    f"step '{step_id}' reads incrementally, and its lock '{lock}' is no "
                    f"longer this run's ({by}): "
                    "this run's heartbeat stopped long enough for its record to read lost, "
                    "so another run may read the same files; nothing of this run was "
                    "published", hint="run it again; if its heartbeat cannot reach the runs "
                                      "folder, see why (`sluice runs show` of this run)")

    def _lost(self, pipeline: str, run_id: str) -> str | None:
        """Why the run holding a lock object cannot be alive, as its record says (None:
        it may be, or its record cannot be read: the lock's message says what to do)."""
        try:
            history = runs.load(self.runs_dir, pipeline, run_id)
        except SluiceError:
            return None
        return next((r.get("lost") for r in history.records if r["run_id"] == run_id), None)

    def holder(self, problems: list[Any]) -> str | None:
        """The run that held this one's incremental reads, where that is all that stopped
        it (every one of the plan's ``problems`` is a step another run held; "" where its
        lock names no run): what its record says it failed in; None where the pipeline
        had problems of its own."""
        if not self.refused or any(p.step not in self.refused for p in problems):
            return None
        return next((r for r in self.refused.values() if r), "")

    def release(self) -> None:
        """Let the steps go (a run's end, whatever it was)."""
        for lock, handle in self.held.items():
            with contextlib.suppress(Exception):
                if isinstance(handle, int):
                    os.close(handle)  # drops the lock; the file stays for the next run
                elif _run_of(handle.cat_file(lock)) == self.run_id:  # not taken over
                    handle.rm(lock)
        self.held.clear()


def _run_of(note: bytes) -> str | None:
    try:
        return str(json.loads(note)["run_id"])
    except (ValueError, KeyError, TypeError):
        return None


def taken_line(step_id: str, taken: dict[str, str]) -> str:
    """What a run said of the lock of a lost run it took over, in one line."""
    return (f"step '{step_id}': run {taken['run_id']} left its lock and is lost "
            f"({taken['lost']}): this run took the lock over")


def settled_line(step_id: str, settled: dict[str, Any]) -> str:
    """What a run said of a killed run's claim it settled, in one line."""
    many = settled["files"] != 1
    files = f"{settled['files']:,} file{'s' * many} {'are' if many else 'is'}"
    if settled["outcome"] == "settled":
        return (f"step '{step_id}': run {settled['run_id']} was killed after its outputs "
                f"landed: its {files} recorded as read (settled)")
    removed = settled.get("removed") or []
    taken = (f"; taken out of its outputs: {', '.join(removed[:3])}"
             f"{f' and {len(removed) - 3} more' if len(removed) > 3 else ''}"
             if removed else "")
    return (f"step '{step_id}': run {settled['run_id']} was killed before all its outputs "
            f"landed: its {files} read again (recovered){taken}")


def foreseen_line(step_id: str, claim: dict[str, Any]) -> str:
    """What the next run will do with the claim another run left on a step
    (``Reads.foresee``), in one line."""
    many = claim["files"] != 1
    files = f"{claim['files']:,} file{'s' * many}"
    if claim["outcome"] == "running":
        return (f"step '{step_id}': run {claim['run_id']} is reading {files} now (it holds "
                "the step): a run started before it ends is refused")
    if claim["outcome"] == "settled":
        return (f"step '{step_id}': run {claim['run_id']} was killed after its outputs "
                f"landed: the next run records its {files} as read (settled), and reads "
                "what is new besides")
    landed = claim["landed"]
    taken = (f", and takes out what landed of it in {', '.join(landed[:3])}"
             f"{f' and {len(landed) - 3} more' if len(landed) > 3 else ''}"
             if landed else " (nothing of it landed)")
    return (f"step '{step_id}': run {claim['run_id']} was killed before all its outputs "
            f"landed: the next run reads its {files} again (recovered){taken}")


def _relative(files: dict[str, list[int]], folder: str) -> dict[str, list[int]]:
    return {posixpath.relpath(path, folder): stamp for path, stamp in files.items()}


def _absolute(files: dict[str, list[int]], folder: str, relative: bool
              ) -> dict[str, list[int]]:
    if not relative:  # a state written before they were kept relative
        return dict(files)
    return {posixpath.normpath(posixpath.join(folder, path)): stamp
            for path, stamp in files.items()}


def _landed(output: dict[str, Any], run_id: str,
            storage_options: dict[str, dict[str, Any]]) -> bool:
    """Whether run ``run_id`` published ``output`` (a claim's entry)."""
    if "model" in output:
        from pipelines.store import ModelStore

        return ModelStore(output["models"]).version_of_run(output["model"], run_id) is not None
    from operators.io.fs import resolve
    from operators.io.parquet import published_by

    return published_by(resolve(output["path"], storage_options.get(output["step"])),
                        _write_id(output, run_id))


def _write_id(output: dict[str, Any], run_id: str) -> str:
    """The id run ``run_id`` wrote a claim's output entry under: a second write of one
    output has its own files (``part-<run id>.2-...``)."""
    write = output.get("write", 1)
    return run_id if write == 1 else f"{run_id}.{write}"


def _landed_rows(output: dict[str, Any], run_id: str,
                 storage_options: dict[str, dict[str, Any]]) -> int | None:
    """The rows run ``run_id`` added to a claim's write_parquet output, as its manifest
    says while no commit came since (None: it cannot say; no data file is read)."""
    from operators.io.fs import resolve
    from operators.io.parquet import published_rows

    return published_rows(resolve(output["path"], storage_options.get(output["step"])),
                          _write_id(output, run_id))


def _landed_model(output: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """The version of a claim's model entry run ``run_id`` published, as a run record
    names the models it saved (None: it published none)."""
    from pipelines.store import ModelStore

    store = ModelStore(output["models"])
    version = store.version_of_run(output["model"], run_id)
    if version is None:
        return None
    return {"step": output["step"], "name": output["model"], "version": version,
            "path": store.version_path(output["model"], version)}


def _withdraw(output: dict[str, Any], run_id: str,
              storage_options: dict[str, dict[str, Any]]) -> list[str]:
    """Take what run ``run_id`` published of ``output`` out; what was taken out, for
    messages (a model version an alias names stays, said so)."""
    if "model" in output:
        from operators.base import ArtifactError
        from pipelines.store import ModelStore

        store = ModelStore(output["models"])
        version = store.version_of_run(output["model"], run_id)
        if version is None:
            return []
        try:
            store.delete(output["model"], version,
                         f"run {run_id} was killed before all its outputs landed: the "
                         "next run of its pipeline took them out and read its files again")
        except ArtifactError as exc:
            return [f"{output['model']}@{version} (kept: {exc})"]
        return [f"{output['model']}@{version}"]
    from operators.io.fs import resolve
    from operators.io.parquet import withdraw

    taken = withdraw(resolve(output["path"], storage_options.get(output["step"])), run_id)
    return [posixpath.join(output["path"], f) for f in taken]
