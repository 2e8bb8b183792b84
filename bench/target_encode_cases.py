"""Benchmark sides for ``target_encode``: sluice against scikit-learn's ``TargetEncoder``.

Rows of a binary label and three text columns of very different cardinality: ``merchant``
(50,000 names, Zipf-skewed: a long tail of rare ones, what target encoding is for),
``zip`` (5,000) and ``device`` (12), each category with an effect of its own on the
label, and an amount. Both sides read the same Parquet files, encode the three columns
cross-fitted (5 folds; ``smooth: auto``) as a training run does, write the rows out,
and keep the encodings of a fit on every row (sluice: its model store; scikit-learn:
``encodings_`` of the same ``fit_transform``). The check, after the runs, compares those
(the folds differ: sluice's are by a hash of each row's content, scikit-learn's by
``KFold``'s shuffled indices, so the cross-fitted rows are alike in distribution only):

* ``target_encode``: ``target_encode`` on the local engine against ``TargetEncoder(cv=5)``
  ``.fit_transform`` on the files read with pyarrow, then written with pyarrow.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.category_cases import BLOCK, write_blocks

CATEGORIES = {"merchant": 50_000, "zip": 5_000, "device": 12}
COLUMNS = list(CATEGORIES)
SEED = 31


def _block(block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    shape = np.random.default_rng(SEED)
    effects = {name: shape.standard_normal(k) for name, k in CATEGORIES.items()}
    rng = np.random.default_rng([SEED, block])
    logit = np.full(BLOCK, -1.0)
    columns = {}
    for name, k in CATEGORIES.items():
        code = np.minimum(rng.zipf(1.2, BLOCK) - 1, k - 1)
        code = np.random.default_rng([SEED, k]).permutation(k)[code]
        logit += effects[name][code]
        columns[name] = pa.array(np.char.add(f"{name}-", code.astype(str)))
    columns["amount"] = pa.array(rng.lognormal(3, 1, BLOCK))
    columns["label"] = pa.array(rng.random(BLOCK) < 1 / (1 + np.exp(-logit)))
    return pa.table(columns)


def merchants(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def target_encode_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run

    out = scratch / "target_encode_sluice"
    path = scratch / "target_encode.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: target_encode
        steps:
          - op: read_parquet
            path: {data}
          - op: target_encode
            columns: [{", ".join(COLUMNS)}]
            label: label
            folds: 5
          - op: write_parquet
            path: {out}
            mode: overwrite
          - op: save_model
            name: target_encode
        """))
    run(path, models=str(scratch / "target_encode_models"), runs_dir=str(scratch / "runs"))


def target_encode_sklearn(data: Path, scratch: Path) -> None:
    from sklearn.preprocessing import TargetEncoder

    table = pq.read_table(data)
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS])
    encoder = TargetEncoder(cv=5, target_type="binary")
    encoded = encoder.fit_transform(X, table.column("label").to_numpy(zero_copy_only=False))
    for j, name in enumerate(COLUMNS):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(encoded[:, j]))
    out = scratch / "target_encode_reference"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-0.parquet")
    np.savez(scratch / "target_encode_reference.npz",
             **{f"categories_{j}": np.asarray(c, dtype=str)
                for j, c in enumerate(encoder.categories_)},
             **{f"encodings_{j}": e for j, e in enumerate(encoder.encodings_)})


def check_target_encode(data: Path, scratch: Path) -> None:
    """The encodings a fit on every row gives, sluice's against scikit-learn's."""
    from pipelines.store import ModelStore

    fitted = ModelStore(str(scratch / "target_encode_models")).load("target_encode")
    ours = fitted.chain.steps[0]
    reference = np.load(scratch / "target_encode_reference.npz")
    worst = 0.0
    for j, name in enumerate(COLUMNS):
        categories, values = ours.encoded[name]
        mine = dict(zip(categories.to_pylist(), values[:, 0], strict=True))
        theirs = dict(zip(reference[f"categories_{j}"].tolist(),
                          reference[f"encodings_{j}"], strict=True))
        if mine.keys() != theirs.keys():
            raise SystemExit(f"target_encode: the categories of '{name}' differ")
        gap = max(abs(mine[k] - theirs[k]) for k in mine)
        worst = max(worst, gap)
    rows = pq.read_table(scratch / "target_encode_sluice").num_rows
    if rows != pq.read_table(scratch / "target_encode_reference").num_rows:
        raise SystemExit("target_encode: the sides wrote different numbers of rows")
    if worst > 1e-12:
        raise SystemExit(f"target_encode: encodings differ by {worst:.3g}")
    print(f"  target_encode check: {sum(len(ours.encoded[c][0]) for c in COLUMNS)} "
          f"categories, largest gap to scikit-learn's encodings {worst:.2g}; {rows} rows")
