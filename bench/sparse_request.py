"""One-row scoring of a hashed-text model in this process (``load_model``): the cost a
served request pays for a sparse column of 2^20 hashed positions.

    .venv/bin/python -m bench.sparse_request [--repeat 20]

Trains ``vectorize_text`` (sparse: true, num_features: 1048576) -> multinomial
``naive_bayes`` on the committed tickets sample into a scratch folder, then times
``ScoringModel.score_table`` on one ticket: best and median of ``--repeat`` calls after one warm-up.
Run it on two checkouts to compare (it imports the sluice it is run from)."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
    pipeline: hashed_text
    steps:
      - op: read_parquet
        path: data/tickets
        columns: [text, topic]
      - op: vectorize_text
        columns: [text]
        sparse: true
        num_features: 1048576
      - op: naive_bayes
        label: topic
        model_type: multinomial
      - op: save_model
        name: hashed_text
    """


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from pipelines.runner import run
    from pipelines.serving import load_model

    with tempfile.TemporaryDirectory(prefix="sluice-sparse-request-") as scratch:
        folder = Path(scratch)
        shutil.copytree(ROOT / "data" / "tickets", folder / "data" / "tickets")
        (folder / "hashed.yaml").write_text(textwrap.dedent(PIPELINE))
        with contextlib.chdir(folder):
            run("hashed.yaml", models="models", runs_dir="runs")
            model = load_model("hashed_text", models="models")
        row = pa.table({"text": ["my refund never arrived and the courier was late"]})
        model.score_table(row)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            model.score_table(row)
            times.append(time.perf_counter() - start)
    print(f"one-row score_table of a 2^20-position hashed text model: best "
          f"{min(times) * 1e3:.2f} ms, median {statistics.median(times) * 1e3:.2f} ms "
          f"({args.repeat} calls)")


if __name__ == "__main__":
    main()
