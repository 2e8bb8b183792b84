"""Online scoring side by side: ``sluice serve`` against ``mlflow models serve``.

    .venv/bin/python -m bench.serve [--requests 2000] [--repeat 3] [--concurrency 4]
                                    [--workers 1] [--mlflow-stack same|plain] [--only SIDE]

Both servers serve the same model: ``conf/pipelines/churn_train.yaml`` (median imputation,
one-hot, standard scaling, logistic regression with l2 = 0.001) trained by sluice, and its
scikit-learn twin (SimpleImputer, OneHotEncoder, StandardScaler, LogisticRegression with
C = 1/(l2*n); the preparation fitted on the same rows, the regression on the same training
rows: sluice's validation hold-out, replayed from the saved chain, is left out), fitted by
``bench/serve_mlflow.py``, saved by ``mlflow.sklearn.save_model(...,
pyfunc_predict_fn="predict_proba")`` and served by ``mlflow models serve --env-manager
local``. The MLflow side lives in its own venv, ``data/generated/mlflow-venv`` (git-ignored;
neither the tests nor CI need it), made on first use with the pinned
``MLFLOW_REQUIREMENTS`` (and topped up when they change); by hand::

    python3 -m venv data/generated/mlflow-venv && data/generated/mlflow-venv/bin/pip install \\
        mlflow-skinny==3.17.2 fastapi==0.165.0 uvicorn==0.54.0 scikit-learn==1.9.1 \\
        pandas==3.1.1 pyarrow==26.0.1 skops==0.16.0 uvloop==0.23.0 httptools==0.9.0

Both run on uvicorn; by default both on uvloop + httptools (sluice's venv has them), so the
comparison is of what each does with a request. ``--mlflow-stack plain`` serves MLflow on
asyncio + h11, as a bare ``pip install mlflow`` does.

Each repeat starts each server fresh (one at a time, on 127.0.0.1), warms it up (50
single-row requests and every batch kind) and measures, with pre-encoded request bodies
made of the rows of ``data/churn`` the pipeline reads (88 null ``total_charges`` included):

1. sequential: ``--requests`` single-row ``dataframe_split`` requests over one keep-alive
   connection (``http.client``): p50 / p90 / p99 latency and requests/s;
2. concurrent: the same number of single-row requests from ``--concurrency`` threads, each
   with its own keep-alive connection: requests/s and p99;
3. batch: ``dataframe_split`` requests of 100 and of 10,000 rows: p50 and rows/s; for sluice
   also the 10,000 rows as an Arrow IPC stream (``application/vnd.apache.arrow.stream``),
   which MLflow has no equivalent of;
4. memory: the peak RSS (VmHWM) of the server's process tree, summed (``mlflow models
   serve`` is a launcher process plus the uvicorn process it execs; ``--workers`` > 1 adds
   worker processes on both sides);
5. correctness: the P(churned) of both servers on the same 1000 rows (max abs difference;
   over 1e-2 stops the benchmark with an error: the models would not be equivalent); on
   each side, every single-row answer (sequential and concurrent) against that row in an
   all-rows request, and sluice's Arrow answer against its JSON answer.

The table shows the median over repeats (memory: the largest) and the ratio sluice /
MLflow, always as time, below 1 = sluice better: latency and memory ratios, and for
throughputs MLflow's rate / sluice's rate (time per request or per row).
``bench/results/serve.json`` holds every repeat's numbers (``--only``: serve_SIDE.json).
The client runs on the same machine as the servers: on a 2-core machine it competes with
the server for the CPUs, equally for both sides. The default run takes about 2.5 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "data" / "generated" / "bench" / "serve"
RESULTS = ROOT / "bench" / "results"
MLFLOW_VENV = ROOT / "data" / "generated" / "mlflow-venv"
MLFLOW_REQUIREMENTS = [
    "mlflow-skinny==3.17.2", "fastapi==0.165.0", "uvicorn==0.54.0", "scikit-learn==1.9.1",
    "pandas==3.1.1", "pyarrow==26.0.1", "skops==0.16.0",
    # uvicorn's fast loop and HTTP parser, as in sluice's venv: the same HTTP stack for both
    # (`pip install mlflow` alone serves on asyncio + h11: --mlflow-stack plain)
    "uvloop==0.23.0", "httptools==0.9.0",
]
PIPELINE = ROOT / "conf" / "pipelines" / "churn_train.yaml"
DATA = ROOT / "data" / "churn" / "ds=2026-11-28"
FEATURES = ["tenure", "plan", "region", "monthly_charges", "total_charges"]
LABEL = "churned"
L2 = 0.001
VALIDATION_FRACTION, SEED = 0.2, 0  # the model step's validation_fraction and seed
WARMUP = 50
CHECK_ROWS = 1000
AGREE, DISAGREE = 1e-3, 1e-2
JSON_TYPE = "application/json"
ARROW_TYPE = "application/vnd.apache.arrow.stream"


def log(message: str) -> None:
    print(f"bench.serve: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def ensure_mlflow_venv() -> Path:
    """The MLflow venv's python, made (and said so) when missing."""
    python = MLFLOW_VENV / "bin" / "python"
    if (MLFLOW_VENV / "bin" / "mlflow").exists():
        check = ("import importlib.metadata as m, sys\n"
                 "for r in sys.argv[1:]:\n"
                 "    name, version = r.split('==')\n"
                 "    try:\n"
                 "        ok = m.version(name) == version\n"
                 "    except m.PackageNotFoundError:\n"
                 "        ok = False\n"
                 "    if not ok:\n"
                 "        print(r)\n")
        missing = subprocess.run([str(python), "-c", check, *MLFLOW_REQUIREMENTS],
                                 capture_output=True, text=True, check=True).stdout.split()
        if missing:
            log(f"adding {' '.join(missing)} to {MLFLOW_VENV.relative_to(ROOT)}")
            subprocess.run([str(python), "-m", "pip", "install", "-q", *missing], check=True)
        return python
    log(f"creating the MLflow venv {MLFLOW_VENV.relative_to(ROOT)} (once): "
        + " ".join(MLFLOW_REQUIREMENTS))
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(MLFLOW_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *MLFLOW_REQUIREMENTS],
                   check=True)
    return python


def sluice_command() -> list[str]:
    exe = Path(sys.executable).parent / "sluice"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("sluice")
    if found:
        return [found]
    raise SystemExit("bench.serve: no `sluice` command: run with the project's venv, "
                     ".venv/bin/python -m bench.serve")


def train_sluice(models: Path) -> dict[str, int]:
    """Train ``churn`` into a fresh registry; its training and validation row counts."""
    if models.exists():
        shutil.rmtree(models)
    result = subprocess.run([*sluice_command(), "run", str(PIPELINE), "--models", str(models)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench.serve: sluice run failed:\n{result.stdout}{result.stderr}")
    counts = {k: int(v) for k, v in re.findall(r"\b(training_rows|validation_rows)=(\d+)",
                                               result.stdout + result.stderr)}
    if set(counts) != {"training_rows", "validation_rows"}:
        raise SystemExit("bench.serve: sluice run did not report training_rows and "
                         f"validation_rows:\n{result.stdout}{result.stderr}")
    return counts


def read_rows() -> Any:
    """The rows churn_train.yaml reads (its columns, its read filter), as a pyarrow Table."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    return ds.dataset(DATA, format="parquet", partitioning="hive").to_table(
        columns=[*FEATURES, LABEL],
        filter=(pc.field("tenure") >= 0) & (pc.field("region") != "test"))


def training_mask(models: Path, rows: Any, counts: dict[str, int]) -> Any:
    """True for the rows sluice's logistic regression trained on (not held out).

    The hold-out is a hash of the row as the model step sees it (after the fitted
    preparation), so the saved chain's preparation is replayed on the rows read."""
    import numpy as np

    from operators.hashing import chosen_rows
    from pipelines.store import ModelStore

    chain = ModelStore(str(models)).load("churn").chain
    part = rows
    for step in chain.steps[:-1]:
        part = step.transform(part, np)
    train = ~chosen_rows(part, VALIDATION_FRACTION, SEED)
    if int(train.sum()) != counts["training_rows"] or len(train) - int(train.sum()) != counts[
            "validation_rows"]:
        raise SystemExit(f"bench.serve: replayed split has {int(train.sum())} training rows of "
                         f"{len(train)}, sluice reported {counts}: churn_train.yaml changed? "
                         "(update FEATURES, the read filter or VALIDATION_FRACTION here)")
    return train


def train_mlflow(python: Path, rows: Any, train: Any, out: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = WORK / "rows.parquet"
    pq.write_table(rows.append_column("_train", pa.array(train)), path)
    result = subprocess.run([str(python), str(ROOT / "bench" / "serve_mlflow.py"), str(path),
                             str(out), "--l2", str(L2)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench.serve: MLflow training failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- payloads


@dataclass
class Payloads:
    single: list[bytes]
    batch100: list[bytes]
    batch10k: bytes
    arrow10k: bytes
    check: bytes
    all_rows: bytes
    rows10k: int


def split_body(columns: list[str], rows: list[list[Any]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def make_payloads(rows: Any) -> Payloads:
    import pyarrow as pa

    table = rows.select(FEATURES)
    records = [list(r.values()) for r in table.to_pylist()]
    n = len(records)
    batch100 = [split_body(FEATURES, [records[(i * 100 + j) % n] for j in range(100)])
                for i in range(max(1, n // 100))]
    reps = -(-10_000 // n)
    big = pa.concat_tables([table] * reps).slice(0, 10_000)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, big.schema) as writer:
        writer.write_table(big)
    return Payloads(
        single=[split_body(FEATURES, [r]) for r in records],
        batch100=batch100,
        batch10k=split_body(FEATURES, [records[i % n] for i in range(10_000)]),
        arrow10k=sink.getvalue(),
        check=split_body(FEATURES, records[:CHECK_ROWS]),
        all_rows=split_body(FEATURES, records),
        rows10k=10_000,
    )


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def peak_rss(pid: int) -> dict[str, Any]:
    """VmHWM (MiB) of each process of the tree under pid, and their sum."""
    procs = {}
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if m:
            procs[p] = {"peak_rss_mb": int(m.group(1)) / 1024, "cmd": cmd.strip()}
    return {"total_mb": sum(v["peak_rss_mb"] for v in procs.values()),
            "processes": list(procs.values())}


class Server:
    """A server process (its own process group), stopped by SIGTERM then SIGKILL."""

    name = ""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def died(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"bench.serve: {self.name} exited with {self.proc.returncode}:\n"
                             + self.log_text()[-4000:])

    def wait_ping(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.died()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"bench.serve: {self.name} not ready on port {self.port}:\n"
                         + self.log_text()[-4000:])

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        pgid = self.proc.pid  # the session leader: the group holds only what it started
        try:
            if self.proc.poll() is None:
                os.killpg(pgid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log(f"{self.name} ignored SIGTERM for {timeout:g} s: killing it")
                    os.killpg(pgid, signal.SIGKILL)
                    self.proc.wait(timeout)
            # children (uvicorn under mlflow's launcher, forked workers) get the same time
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                log(f"{self.name}: processes left in group {pgid}: killing them")
                os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            self.log_file.close()
        return self.proc.returncode


class SluiceServer(Server):
    name = "sluice"

    def start(self, models: Path, workers: int, timeout: float = 60) -> None:
        self.spawn([*sluice_command(), "serve", "churn", "--models", str(models),
                    "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)])
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"serving (\S+)[^\n]*? on http://127\.0\.0\.1:(\d+)")
        while time.monotonic() < deadline:
            m = pattern.search(self.log_text())
            if m:
                self.port = int(m.group(2))
                self.ref = m.group(1)
                break
            self.died()
            time.sleep(0.05)
        else:
            raise SystemExit("bench.serve: sluice serve printed no 'serving ... on http://...' "
                             f"line in {timeout:g} s:\n{self.log_text()[-4000:]}")
        self.wait_ping(deadline)


class MlflowServer(Server):
    name = "mlflow"

    def start(self, python: Path, model: Path, workers: int, stack: str,
              timeout: float = 120) -> None:
        self.port = free_port()
        bin_dir = str(python.parent)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        env.pop("VIRTUAL_ENV", None)
        if stack == "plain":  # what `pip install mlflow` serves on: no uvloop, no httptools
            env.update(UVICORN_LOOP="asyncio", UVICORN_HTTP="h11")
        self.spawn([str(python.parent / "mlflow"), "models", "serve", "-m", str(model),
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port),
                    "-w", str(workers)], env=env)
        self.wait_ping(time.monotonic() + timeout)


# --------------------------------------------------------------------------- client


class Client:
    """One keep-alive connection; counts the times the server closed it."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.closed = 0

    def post(self, body: bytes, content_type: str = JSON_TYPE) -> tuple[bytes, str]:
        self.conn.request("POST", "/invocations", body,
                          {"Content-Type": content_type, "Content-Length": str(len(body))})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.closed += 1
        if resp.status != 200:
            raise SystemExit(f"bench.serve: POST /invocations ({content_type}, {len(body)} "
                             f"bytes) -> {resp.status}: {data[:2000]!r}\nrequest: {body[:300]!r}")
        return data, resp.getheader("Content-Type", "")

    def close(self) -> None:
        self.conn.close()


def timed(client: Client, bodies: list[bytes], count: int, content_type: str = JSON_TYPE,
          offset: int = 0, answers: list[tuple[int, bytes]] | None = None
          ) -> tuple[list[float], float]:
    """Latencies (s) of ``count`` requests cycling through ``bodies``, and the wall time;
    ``answers`` collects (index of the body, response body)."""
    lat = []
    perf = time.perf_counter
    start = perf()
    for i in range(count):
        j = (offset + i) % len(bodies)
        t0 = perf()
        data, _ = client.post(bodies[j], content_type)
        lat.append(perf() - t0)
        if answers is not None:
            answers.append((j, data))
    return lat, perf() - start


def check_answers(name: str, phase: str, answers: list[tuple[int, bytes]],
                  expected: list[float]) -> None:
    """Every single-row answer is the row's probability in the all-rows answer."""
    for j, data in answers:
        got = json_probabilities(data)
        if len(got) != 1 or abs(got[0] - expected[j]) > 1e-9:
            raise SystemExit(f"bench.serve: {name}, {phase}: row {j} scored {got}, "
                             f"{expected[j]} in the all-rows request")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def latency_stats(lat: list[float], wall: float, rows: int = 1) -> dict[str, float]:
    return {"p50_ms": pct(lat, 50) * 1e3, "p90_ms": pct(lat, 90) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "requests_per_s": len(lat) / wall,
            "rows_per_s": rows * len(lat) / wall, "requests": len(lat)}


def concurrent(port: int, bodies: list[bytes], total: int, threads: int,
               answers: list[tuple[int, bytes]]) -> tuple[dict[str, float], int]:
    per = total // threads
    clients = [Client(port) for _ in range(threads)]
    for c in clients:
        c.post(bodies[0])  # connect before the clock starts
    results: list[list[float]] = [[] for _ in range(threads)]
    mine: list[list[tuple[int, bytes]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        try:
            barrier.wait()
            results[k], _ = timed(clients[k], bodies, per, offset=k * per,
                                  answers=mine[k])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    closed = sum(c.closed for c in clients)
    for c in clients:
        c.close()
    if errors:
        raise errors[0]
    for m in mine:
        answers.extend(m)
    return latency_stats([x for r in results for x in r], wall), closed


def json_probabilities(data: bytes) -> list[float]:
    """P(churned) from either server's JSON answer."""
    preds = json.loads(data)["predictions"]
    if preds and isinstance(preds[0], dict):  # sluice: [{"prediction":..,"probability":..}]
        return [float(p["probability"]) for p in preds]
    if preds and isinstance(preds[0], list):  # mlflow predict_proba: [[P(0), P(1)], ...]
        return [float(p[1]) for p in preds]
    raise SystemExit(f"bench.serve: unexpected predictions: {data[:300]!r}")


def measure(name: str, port: int, payloads: Payloads, requests: int, threads: int,
            arrow: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client = Client(port)
    try:
        # warm-up: every path once or more, then 50 single rows
        client.post(payloads.batch10k)
        client.post(payloads.batch100[0])
        if arrow:
            client.post(payloads.arrow10k, ARROW_TYPE)
        timed(client, payloads.single, WARMUP, offset=len(payloads.single) // 2)

        expected = json_probabilities(client.post(payloads.all_rows)[0])
        check = json_probabilities(client.post(payloads.check)[0])
        if len(expected) != len(payloads.single) or len(check) != CHECK_ROWS or max(
                abs(a - b) for a, b in zip(check, expected, strict=False)) > 1e-9:
            raise SystemExit(f"bench.serve: {name} answered {len(expected)} predictions for "
                             f"{len(payloads.single)} rows, {len(check)} for {CHECK_ROWS} "
                             "(or the two disagree)")
        out["check_probabilities"] = check
        closed = client.closed
        answers: list[tuple[int, bytes]] = []
        lat, wall = timed(client, payloads.single, requests, answers=answers)
        out["sequential"] = latency_stats(lat, wall)
        out["sequential"]["connection_closes"] = client.closed - closed
        check_answers(name, "sequential", answers, expected)
    finally:
        client.close()
    # a fresh connection per phase: an idle one may have timed out (uvicorn: 5 s)
    answers = []
    out["concurrent"], closes = concurrent(port, payloads.single, requests, threads, answers)
    out["concurrent"]["connection_closes"] = closes
    check_answers(name, "concurrent", answers, expected)
    phases: list[tuple[str, list[bytes], int, int, str]] = [
        ("batch100", payloads.batch100, max(20, requests // 10), 100, JSON_TYPE),
        ("batch10k", [payloads.batch10k], max(5, requests // 200), payloads.rows10k, JSON_TYPE),
    ]
    if arrow:
        phases.append(("arrow10k", [payloads.arrow10k], max(5, requests // 200),
                       payloads.rows10k, ARROW_TYPE))
    for phase, bodies, count, rows, content_type in phases:
        client = Client(port)
        try:
            client.post(bodies[-1], content_type)
            lat, wall = timed(client, bodies, count, content_type)
            out[phase] = latency_stats(lat, wall, rows)
            if phase == "arrow10k":
                out["arrow_check"] = check_arrow(client, payloads)
        finally:
            client.close()
    return out


def check_arrow(client: Client, payloads: Payloads) -> dict[str, Any]:
    """sluice's Arrow answer for the 10,000 rows against its JSON answer for them."""
    import pyarrow as pa

    data, content_type = client.post(payloads.arrow10k, ARROW_TYPE)
    table = pa.ipc.open_stream(data).read_all()
    if table.num_rows != payloads.rows10k or "probability" not in table.column_names:
        raise SystemExit(f"bench.serve: sluice's Arrow answer has {table.num_rows} rows, "
                         f"columns {table.column_names}")
    via_json = json_probabilities(client.post(payloads.batch10k)[0])
    diff = max(abs(a - b) for a, b in zip(table.column("probability").to_pylist(), via_json,
                                          strict=True))
    if diff > 1e-9:
        raise SystemExit(f"bench.serve: sluice's Arrow and JSON answers differ by {diff:g}")
    return {"content_type": content_type, "columns": table.column_names,
            "max_abs_diff_vs_json": diff}


def run_server(server: Server, start: Callable[[], None], payloads: Payloads,
               args: argparse.Namespace, arrow: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        start()
        ready = time.perf_counter() - t0
        log(f"{server.name} ready on port {server.port} in {ready:.1f} s; measuring")
        out = measure(server.name, server.port, payloads, args.requests, args.concurrency,
                      arrow)
        out["memory"] = peak_rss(server.proc.pid)  # type: ignore[union-attr]
        out["startup_s"] = ready
    finally:
        rc = server.stop()
    out["exit_code"] = rc
    return out


# --------------------------------------------------------------------------- report

ROWS = [  # key, label, kind: "time" (ratio = sluice / mlflow) or "rate" (mlflow / sluice)
    ("sequential.p50_ms", "1 row, sequential  p50 ms", "time"),
    ("sequential.p90_ms", "1 row, sequential  p90 ms", "time"),
    ("sequential.p99_ms", "1 row, sequential  p99 ms", "time"),
    ("sequential.requests_per_s", "1 row, sequential  req/s", "rate"),
    ("concurrent.requests_per_s", "1 row, {c} threads   req/s", "rate"),
    ("concurrent.p99_ms", "1 row, {c} threads   p99 ms", "time"),
    ("batch100.p50_ms", "100 rows JSON      p50 ms", "time"),
    ("batch100.rows_per_s", "100 rows JSON      rows/s", "rate"),
    ("batch10k.p50_ms", "10k rows JSON      p50 ms", "time"),
    ("batch10k.rows_per_s", "10k rows JSON      rows/s", "rate"),
    ("arrow10k.p50_ms", "10k rows Arrow     p50 ms", "time"),
    ("arrow10k.rows_per_s", "10k rows Arrow     rows/s", "rate"),
    ("memory.total_mb", "peak RSS MiB (tree)", "time"),
    ("startup_s", "start-up s", "time"),
]


def get(run: dict[str, Any], key: str) -> float | None:
    value: Any = run
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value)


def summarize(runs: list[dict[str, Any]], key: str, kind: str) -> float | None:
    values = [v for v in (get(r, key) for r in runs) if v is not None]
    if not values:
        return None
    return max(values) if key.startswith("memory") else statistics.median(values)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def in_project_venv() -> None:
    """Run again with the project's venv when this python lacks sluice (``python -m``)."""
    import importlib.util

    venv_python = ROOT / ".venv" / "bin" / "python"
    if importlib.util.find_spec("pyarrow") is None and venv_python.exists() and (
            Path(sys.executable) != venv_python):
        log(f"re-running with {venv_python.relative_to(ROOT)} (this python has no pyarrow)")
        os.execv(str(venv_python), [str(venv_python), "-m", "bench.serve", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        in_project_venv()
    parser = argparse.ArgumentParser(prog="python -m bench.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="single-row requests per phase (default 2000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh starts of each server; medians reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="client threads of the concurrent phase (default 4)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes, both servers (default 1)")
    parser.add_argument("--mlflow-stack", choices=["same", "plain"], default="same",
                        help="MLflow's uvicorn on uvloop + httptools as sluice's (same, the "
                             "default) or on asyncio + h11, as `pip install mlflow` has it")
    parser.add_argument("--only", choices=["sluice", "mlflow"],
                        help="measure one server alone (no ratios, no agreement check)")
    args = parser.parse_args(argv)
    if args.requests < args.concurrency or args.repeat < 1:
        parser.error("--requests must be at least --concurrency, --repeat at least 1")

    began = time.perf_counter()
    python = ensure_mlflow_venv()
    WORK.mkdir(parents=True, exist_ok=True)
    models = WORK / "models"
    mlflow_model = WORK / "mlflow-model"
    log("training churn with sluice and its scikit-learn twin for MLflow")
    counts = train_sluice(models)
    rows = read_rows()
    train = training_mask(models, rows, counts)
    twin = train_mlflow(python, rows, train, mlflow_model)
    payloads = make_payloads(rows)

    runs: dict[str, list[dict[str, Any]]] = {"sluice": [], "mlflow": []}
    for r in range(args.repeat):
        log(f"repeat {r + 1}/{args.repeat}")
        if args.only != "mlflow":
            s = SluiceServer(WORK / "sluice.log")
            runs["sluice"].append(run_server(
                s, lambda s=s: s.start(models, args.workers), payloads, args, arrow=True))
        if args.only != "sluice":
            m = MlflowServer(WORK / "mlflow.log")
            runs["mlflow"].append(run_server(
                m, lambda m=m: m.start(python, mlflow_model, args.workers, args.mlflow_stack),
                payloads, args, arrow=False))

    # correctness: the same 1000 rows, both servers
    diffs = [] if args.only else [
        max(abs(a - b) for a, b in zip(sr["check_probabilities"], mr["check_probabilities"],
                                       strict=True))
        for sr, mr in zip(runs["sluice"], runs["mlflow"], strict=True)]
    max_diff = max(diffs) if diffs else float("nan")
    for side in runs.values():
        for run in side:
            run.pop("check_probabilities")

    table = []
    for key, label, kind in ROWS:
        ours, ref = summarize(runs["sluice"], key, kind), summarize(runs["mlflow"], key, kind)
        ratio = None
        if ours is not None and ref is not None and ours > 0 and ref > 0:
            ratio = ours / ref if kind == "time" else ref / ours
        table.append({"metric": key, "label": label.format(c=args.concurrency),
                      "sluice": ours, "mlflow": ref, "ratio": ratio})

    print(f"online scoring, churn model: sluice serve vs mlflow models serve "
          f"({args.requests} requests/phase, {args.concurrency} threads, {args.workers} "
          f"worker(s), MLflow HTTP stack {args.mlflow_stack}, median of {args.repeat})")
    print(f"  {'':<28} {'sluice':>10} {'MLflow':>10} {'ratio':>8}")
    for row in table:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        if row["mlflow"] is None and row["sluice"] is not None:
            ratio = "(sluice only)"
        print(f"  {row['label']:<28} {fmt(row['sluice']):>10} {fmt(row['mlflow']):>10} "
              f"{ratio:>8}")
    print("  ratio = sluice time / MLflow time (latency, memory: sluice / MLflow; rates: "
          "MLflow rate / sluice rate); below 1: sluice better")
    if diffs:
        verdict = "agree" if max_diff <= AGREE else "DIFFER"
        print(f"  P(churned) on the same {CHECK_ROWS} rows: max abs difference {max_diff:.2e} "
              f"({verdict}; tolerance {AGREE:g})")
    closes = {side: sum(int(get(run, f"{p}.connection_closes") or 0) for run in rs
                        for p in ("sequential", "concurrent")) for side, rs in runs.items()}
    for side, n in closes.items():
        if n:
            print(f"  note: {side} closed the keep-alive connection {n} times")

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "case": "serve",
        "requests": args.requests, "repeat": args.repeat, "concurrency": args.concurrency,
        "workers": args.workers, "mlflow_stack": args.mlflow_stack,
        "table": table,
        "max_abs_probability_diff": max_diff, "probability_diffs": diffs,
        "runs": runs,
        "models": {"sluice_training": counts, "mlflow_twin": twin},
        "mlflow_requirements": MLFLOW_REQUIREMENTS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.perf_counter() - began,
    }
    out = RESULTS / ("serve.json" if args.only is None else f"serve_{args.only}.json")
    out.write_text(json.dumps(record, indent=1))
    log(f"wrote {out.relative_to(ROOT)} in {record['seconds']:.0f} s")
    if max_diff > DISAGREE:
        raise SystemExit(f"bench.serve: the two servers' probabilities differ by {max_diff:g} "
                         f"(over {DISAGREE:g}): the models are not equivalent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
