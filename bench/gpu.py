"""The GPU against the CPU on the kernels sluice runs, side by side.

    python -m bench.gpu [--rows 1000000,10000000] [--out bench/results/gpu.json]
    python -m bench.gpu --namespace array_api_strict --rows 20000   # smoke test, no GPU

Each case calls sluice's own operator code on in-memory partitions of the ``numeric``
data set (20 float64 features and a binary label, ``pipelines.datagen``), once with
NumPy and once with the device namespace (CuPy), the way the engines call it:

* ``score``: a fitted logistic model's ``transform`` of every partition (features to
  the device, ``X @ coef``, sigmoid, the prediction columns back into Arrow);
* ``train_logistic``: a full ``logistic_regression`` fit (Newton) over the partitions
  with the driver loop of the engines and the kit (``operators.base.drive``);
* ``tree_level``: one level's histogram pass of ``gradient_boosted_trees`` (every
  partition's ``partial`` at depth ``--tree-depth`` of the first tree), the partitions
  already binned on the side's device, as in every pass of a fit after its first;
* ``train_mlp``: an ``mlp`` fit ([64, 32] relu, L-BFGS, ``--mlp-iterations``
  iterations) over the partitions;
* ``explain``: ``score`` with ``contributions: true`` (TreeSHAP) of a boosted model of
  20 depth-5 trees (fitted on the first partition, untimed) on the partitions of the
  first ``--explain-rows`` rows (at most; TreeSHAP costs ~25 us a row on one CPU core).

Both sides run the partitions on threads, as the local engine does whatever the device
(``--cpu-threads``, ``--gpu-threads``: default every core; on the CPU side the BLAS
threads are split among them): a partition's columns are gathered on the host before
its one copy to the device, and that part runs in parallel on either side.

Every side runs once untimed (warm-up: CuPy compiles its kernels, the tree case bins
the partitions), then ``--repeat`` times, the device synchronised before and after each
run; a side stops repeating once its runs have taken ``--max-side-s``. Reported: the
median, ``cpu_s / gpu_s``, and how far the two sides' results are apart
(``max_rel_diff``: the largest difference of the scores, coefficients, histograms or
weights over the CPU's largest magnitude).
The JSON is rewritten after every case, so a run cut short keeps what it measured.

Without a GPU (and ``--namespace cupy``) it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
CASES = ("score", "train_logistic", "tree_level", "train_mlp", "explain")
FEATURES = 20
# about read_parquet's default partition_mb (64) of the numeric data's 21 columns
PARTITION_ROWS = 400_000
L2 = 1e-4


@dataclass
class Side:
    """One side of the comparison: a namespace, threads over partitions, a barrier."""

    name: str
    xp: Any
    threads: int
    sync: Callable[[], None]
    blas_threads: int | None = None

    def __post_init__(self) -> None:
        # one pool for every pass, as the local engine keeps its own
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def map(self, fn: Callable[[pa.Table], Any], parts: list[pa.Table]) -> list[Any]:
        """``fn`` over the partitions, results in partition order."""
        if self.pool is None or len(parts) <= 1:
            return [fn(p) for p in parts]
        return list(self.pool.map(fn, parts))


def _cpu_side(threads: int, dtype: str) -> Side:
    from operators.arrays import get_namespace

    cores = os.cpu_count() or 1
    return Side("cpu", get_namespace("numpy", dtype=dtype), threads, lambda: None,
                max(1, cores // max(1, threads)))


def _device_side(namespace: str, threads: int, dtype: str) -> Side:
    from operators.arrays import get_namespace

    if namespace == "cupy":
        import cupy

        def sync() -> None:
            cupy.cuda.Device().synchronize()

        return Side("gpu", get_namespace("cupy", dtype=dtype), threads, sync)
    import array_api_strict as strict

    # the GPU stand-in: array_api_strict on its non-default device
    return Side("gpu", get_namespace("array_api_strict", strict.Device("device1"), dtype),
                threads, lambda: None)


def _free_device(namespace: str) -> None:
    if namespace == "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


# --------------------------------------------------------------------------- cases


def _fit(estimator: Any, parts: list[pa.Table], side: Side) -> Any:
    """The engines' driver loop (``drive`` + ``tree_reduce``) on the side's threads."""
    from operators.base import drive, tree_reduce

    def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
        return tree_reduce(side.map(lambda p: partial(p, side.xp), parts), estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state)


def _model_arrays(fitted: Any) -> np.ndarray:
    _, arrays = fitted.state()
    return np.concatenate([np.ravel(np.asarray(arrays[k], dtype=np.float64))
                           for k in sorted(arrays)])


def case_score(parts: list[pa.Table], args: argparse.Namespace) -> Callable[[Side], Any]:
    from operators.models.logistic import LogisticRegressionFitted

    rng = np.random.default_rng(7)
    model = LogisticRegressionFitted([f"x{i}" for i in range(FEATURES)], [0, 1], pa.int64(),
                                     rng.standard_normal((1, FEATURES)) / 3, np.array([0.1]))

    def run(side: Side) -> np.ndarray:
        out = side.map(lambda p: model.transform(p, side.xp), parts)
        return np.concatenate([t.column("probability").to_numpy() for t in out])

    return run


def case_train_logistic(parts: list[pa.Table], args: argparse.Namespace
                        ) -> Callable[[Side], Any]:
    from operators.models.logistic import LogisticRegression

    # float32 cannot reach the default tolerance: Newton would run to max_iter
    params = LogisticRegression.Params(label="label", l2=L2,
                                       tol=1e-8 if args.dtype == "float64" else 1e-5)
    return lambda side: _model_arrays(_fit(LogisticRegression(params), parts, side))


def case_train_mlp(parts: list[pa.Table], args: argparse.Namespace) -> Callable[[Side], Any]:
    from operators.models.mlp import MLP

    params = MLP.Params(label="label", hidden=[64, 32], solver="lbfgs", l2=1e-5,
                        max_iter=args.mlp_iterations, tol=1e-12)
    return lambda side: _model_arrays(_fit(MLP(params), parts, side))


def case_tree_level(parts: list[pa.Table], args: argparse.Namespace) -> Callable[[Side], Any]:
    """The state at depth ``--tree-depth`` is grown on the first partition with NumPy
    (untimed); each side then computes that level's histograms over all partitions."""
    from operators.arrays import get_namespace
    from operators.base import tree_reduce
    from operators.models.boosted_trees import GradientBoostedTrees
    from operators.models.trees import new_token

    est = GradientBoostedTrees(GradientBoostedTrees.Params(label="label", n_trees=1,
                                                           max_depth=args.tree_depth + 1))
    numpy = get_namespace("numpy")
    sample = parts[0]
    state, _ = est.update(est.partial(sample, est.init(sample.schema), numpy),
                          est.init(sample.schema))
    while state["phase"] == "grow" and state["level"]["depth"] < args.tree_depth:
        state, done = est.update(est.partial(sample, state, numpy), state)
        if done:
            break
    if state["phase"] != "grow":
        raise SystemExit(f"bench.gpu: the tree stopped growing before depth {args.tree_depth}")
    tokens: dict[str, dict[str, Any]] = {}

    def run(side: Side) -> np.ndarray:
        # a token per side: a partition's memo (its binned rows) belongs to one namespace
        mine = tokens.setdefault(side.name, {**state, "token": new_token()})
        stats = tree_reduce(side.map(lambda p: est.partial(p, mine, side.xp), parts),
                            est.combine)
        return np.asarray(stats["hist"], dtype=np.float64).ravel()

    return run


def case_explain(parts: list[pa.Table], args: argparse.Namespace) -> Callable[[Side], Any]:
    from operators.chain import Chain
    from operators.models.boosted_trees import GradientBoostedTrees
    from operators.score.score import Score
    from operators.testing.kit import fit

    model = fit(GradientBoostedTrees(GradientBoostedTrees.Params(
        label="label", n_trees=20, max_depth=5)), parts[:1])
    score = Score(model="bench", contributions=True)
    score.bind(Chain([model]), model.features, {"name": "bench", "version": 1})
    rows = np.cumsum([p.num_rows for p in parts])
    explained = parts[:int(np.searchsorted(rows, args.explain_rows)) + 1]

    def run(side: Side) -> np.ndarray:
        out = side.map(lambda p: score.transform(p, side.xp), explained)
        return np.concatenate([np.stack([t.column("contributions").combine_chunks().field(j)
                                         .to_numpy() for j in range(FEATURES)], axis=1)
                               for t in out])

    return run


MAKERS: dict[str, Callable[[list[pa.Table], argparse.Namespace], Callable[[Side], Any]]] = {
    "score": case_score,
    "train_logistic": case_train_logistic,
    "tree_level": case_tree_level,
    "train_mlp": case_train_mlp,
    "explain": case_explain,
}


# --------------------------------------------------------------------------- timing


def timed(run: Callable[[Side], Any], side: Side, repeat: int, max_seconds: float
          ) -> tuple[dict[str, Any], Any]:
    """Warm-up, then up to ``repeat`` timed runs; the device synchronised around each."""
    from threadpoolctl import threadpool_limits

    def once() -> tuple[float, Any]:
        side.sync()
        start = time.perf_counter()
        out = run(side)
        side.sync()
        return time.perf_counter() - start, out

    limits = (threadpool_limits(side.blas_threads, "blas") if side.blas_threads
              else None)
    try:
        first, result = once()
        runs: list[float] = []
        while len(runs) < repeat and (not runs or sum(runs) < max_seconds):
            seconds, result = once()
            runs.append(seconds)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    return {"median_s": statistics.median(runs), "runs_s": runs, "first_s": first,
            "threads": side.threads}, result


def _difference(a: Any, b: Any) -> float:
    """The largest difference between the sides' results, relative to the largest
    magnitude of the CPU's (histogram sums and probabilities alike)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _machine(namespace: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "numpy": np.__version__,
                           "namespace": namespace}
    if namespace == "cupy":
        import cupy

        out["cupy"] = cupy.__version__
        try:  # a description only: never worth losing the measurements over
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"]
            out.update(gpu=name.decode() if isinstance(name, bytes) else str(name),
                       gpu_memory_gb=round(props["totalGlobalMem"] / 2**30, 1),
                       cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                       cuda_driver=cupy.cuda.runtime.driverGetVersion())
        except Exception as exc:
            out["gpu"] = f"cupy (no description: {type(exc).__name__}: {exc})"
    return out


def _table(results: list[dict[str, Any]]) -> str:
    head = (f"{'case':<16}{'rows':>12}{'parts':>7}{'cpu s':>10}{'gpu s':>10}"
            f"{'cpu/gpu':>9}{'gpu 1st s':>11}{'max diff':>11}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['case']:<16}{r['rows']:>12,}{r['partitions']:>7}"
                     f"{r['cpu']['median_s']:>10.3f}{r['gpu']['median_s']:>10.4f}"
                     f"{r['ratio']:>8.1f}x{r['gpu']['first_s']:>11.3f}"
                     f"{r['max_rel_diff']:>11.1e}")
    return "\n".join(lines)


def _parse_rows(text: str) -> list[int]:
    try:
        rows = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {text}: comma-separated counts") from None
    if not rows or min(rows) < 2:
        raise argparse.ArgumentTypeError("--rows needs counts of at least 2")
    return rows


def _parse_cases(text: str) -> list[str]:
    cases = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; choose from {CASES}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_parse_rows, default=[1_000_000, 10_000_000],
                        help="comma-separated row counts (default 1000000,10000000)")
    parser.add_argument("--cases", type=_parse_cases, default=list(CASES),
                        help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--namespace", choices=("cupy", "array_api_strict"), default="cupy",
                        help="the device side: CuPy, or array_api_strict on its "
                             "non-default device (a smoke test without a GPU)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--max-side-s", type=float, default=30.0,
                        help="stop repeating a side once its timed runs took this long")
    parser.add_argument("--partition-rows", type=int, default=PARTITION_ROWS)
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tree-depth", type=int, default=3)
    parser.add_argument("--mlp-iterations", type=int, default=5)
    parser.add_argument("--explain-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat needs at least 1")

    if args.namespace == "cupy":
        from pipelines.device import gpu_problem

        problem = gpu_problem()
        if problem is not None:
            print(f"bench.gpu: no GPU here: {problem}", file=sys.stderr)
            return 2
    from operators.models.common import ConvergenceWarning
    from operators.testing.kit import split
    from pipelines.datagen import numeric_table

    # the MLP runs a fixed number of iterations on purpose
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    cpu = _cpu_side(args.cpu_threads, args.dtype)
    device = _device_side(args.namespace, args.gpu_threads, args.dtype)
    record: dict[str, Any] = {
        "machine": _machine(args.namespace), "dtype": args.dtype, "repeat": args.repeat,
        "partition_rows": args.partition_rows, "features": FEATURES,
        "tree_depth": args.tree_depth, "mlp_iterations": args.mlp_iterations,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": []}
    print(f"bench.gpu: {record['machine'].get('gpu', args.namespace)} ({device.threads} "
          f"threads) vs the CPU ({cpu.threads} threads), {args.dtype}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for rows in args.rows:
        start = time.perf_counter()
        table = numeric_table(rows, features=FEATURES)
        parts = split(table, max(1, -(-rows // args.partition_rows)))
        print(f"{rows:,} rows in {len(parts)} partitions, made in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        for name in args.cases:
            run = MAKERS[name](parts, args)
            cpu_times, cpu_out = timed(run, cpu, args.repeat, args.max_side_s)
            gpu_times, gpu_out = timed(run, device, args.repeat, args.max_side_s)
            _free_device(args.namespace)
            result = {"case": name, "rows": rows, "partitions": len(parts), "cpu": cpu_times,
                      "gpu": gpu_times, "ratio": cpu_times["median_s"] / gpu_times["median_s"],
                      "max_rel_diff": _difference(gpu_out, cpu_out)}
            record["results"].append(result)
            print(f"  {name:<16} cpu {cpu_times['median_s']:9.3f} s   gpu "
                  f"{gpu_times['median_s']:9.4f} s   {result['ratio']:7.1f}x   "
                  f"max diff {result['max_rel_diff']:.1e}", flush=True)
            args.out.write_text(json.dumps(record, indent=1))
        del table, parts
    print()
    print(_table(record["results"]))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
