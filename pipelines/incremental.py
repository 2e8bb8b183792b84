"""Incremental reads: the files each ``read_parquet`` step with ``incremental: true`` has
read, kept per pipeline and step beside the run records, so that a scheduled re-run
reads only the files no succeeded run read (Spark's file stream checkpoint, Auto
Loader's ``availableNow``, Kedro's ``IncrementalDataset``).

``<runs>/<pipeline>/.reads/<step>.json`` lists the files read, each with its size and
modification time (a file rewritten in place is new again); it is replaced whole, only
when a run succeeds, so a failed or interrupted run's files are read again by the next.
A run holds ``<step>.lock`` beside it while it runs: a second run of the pipeline at once
is refused, naming the running one, before any data moves (locally a lock the kernel
drops when its process dies; on an object store an object created exclusively and
deleted at the end, which a run killed outright leaves behind).
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

from operators.errors import DataError, SluiceError
from pipelines import runs

FOLDER = ".reads"

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

    def _where(self, pipeline: str, step_id: str, suffix: str) -> tuple[Any, str, bool]:
        fs, root, local = runs._files(self.runs_dir)
        return fs, posixpath.join(root, pipeline, FOLDER, f"{step_id}{suffix}"), local

    def shown(self, pipeline: str, step_id: str) -> str:
        """The state file, as the runs folder is spelt."""
        return f"{self.runs_dir.rstrip('/')}/{pipeline}/{FOLDER}/{step_id}.json"

    def before(self, pipeline: str, step_id: str) -> dict[str, Any]:
        """What earlier succeeded runs of the pipeline read in the step: ``files``, each
        ``[size, mtime_ns]`` by path, and ``schema``, their columns (an Arrow schema,
        base64); the step is claimed first for a run (a SluiceError naming the run that
        holds it)."""
        if self.run_id is not None:
            self._claim(pipeline, step_id)
        if self.full_refresh:
            return {}
        return self.state(pipeline, step_id)

    def state(self, pipeline: str, step_id: str) -> dict[str, Any]:
        fs, path, local = self._where(pipeline, step_id, ".json")
        try:
            raw = Path(path).read_bytes() if local else fs.cat_file(path)
        except FileNotFoundError:
            return {}
        except runs._errors(local) as exc:
            raise runs._failure(exc, self.shown(pipeline, step_id),
                                "cannot read what earlier runs read") from None
        try:
            state = json.loads(raw)
            files = {str(k): [int(v[0]), int(v[1])] for k, v in state["files"].items()}
            schema = state.get("schema")
            return {"files": files, "schema": schema if isinstance(schema, str) else None}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise DataError(f"'{self.shown(pipeline, step_id)}' is damaged: it is not the "
                            "list of files earlier runs read",
                            hint="run with --full-refresh to read every file again and "
                                 "write it anew") from None

    def commit(self, pipeline: str, step_id: str, files: dict[str, list[int]],
               schema: str) -> None:
        """Add a succeeded run's files to what the step has read (replace it, with
        ``full_refresh``), with the columns of all of them (``schema``), written whole."""
        kept = {} if self.full_refresh else self.state(pipeline, step_id).get("files", {})
        kept.update(files)
        text = json.dumps({"pipeline": pipeline, "step": step_id, "run_id": self.run_id,
                           "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "schema": schema, "files": dict(sorted(kept.items()))}, indent=1)
        fs, path, local = self._where(pipeline, step_id, ".json")
        try:
            if local:
                from operators.io.fs import written_whole

                os.makedirs(os.path.dirname(path), exist_ok=True)
                with written_whole(path) as staging:
                    Path(staging).write_text(text)
            else:
                fs.pipe_file(path, text.encode())
        except runs._errors(local) as exc:
            raise runs._failure(exc, self.shown(pipeline, step_id),
                                "cannot record the files this run read (the next run "
                                "reads them again)") from None

    def _claim(self, pipeline: str, step_id: str) -> None:
        fs, lock, local = self._where(pipeline, step_id, ".lock")
        note = json.dumps({"run_id": self.run_id, "pid": os.getpid(),
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
            try:
                with fs.open(lock, "xb") as f:
                    f.write(note.encode())
                self.held[lock] = fs
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    holder = _run_of(fs.cat_file(lock))
        if lock not in self.held:
            self.refused[step_id] = holder
            lost = None if local or not holder else self._lost(pipeline, holder)
            gone = "" if local else (f", or delete '{lock}' if that run was killed "
                                     "outright (it is no longer running)")
            if lost is not None:
                gone = (f"; its run record says it is lost ({lost}): if so, delete "
                        f"'{lock}' and run again")
            raise SluiceError(
                f"step '{step_id}' reads incrementally, and run {holder or '?'} of "
                f"pipeline '{pipeline}' is reading it now: a second run at once would read "
                "the same files", hint=f"wait for that run to end (`sluice runs show "
                                       f"{holder or '...'}`){gone}")

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
                else:
                    handle.rm(lock)
        self.held.clear()


def _run_of(note: bytes) -> str | None:
    try:
        return str(json.loads(note)["run_id"])
    except (ValueError, KeyError, TypeError):
        return None
