"""Engine equivalence and partition invariance: every engine, 1 and many partitions,
gives the local engine's fitted state (allclose) and scores."""

from __future__ import annotations

import functools
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ENGINES, ROOT, started, write_pipeline

from operators.arrays import STANDIN_ENV
from operators.testing.kit import assert_tables_close
from pipelines.datagen import churn_table
from pipelines.runner import make_engine, run
from pipelines.store import ModelStore

# one worker runs the module under pytest-xdist (-n 2): the reference (every case on the
# local engine, one file) is fitted once, not once a worker
pytestmark = pytest.mark.xdist_group("equivalence")

# the model zoo: every model family and feature step on the churn data
ZOO = {
    "logistic_multiclass": """
      - op: drop
        columns: [customer_id]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: derive
        columns: {charge_ratio: "total_charges / (tenure + 1)", log_tenure: "log1p(tenure)",
                  tenure_years: "coalesce(try_cast(tenure / 12 as uint8), 0)"}
      - op: one_hot
        columns: [region]
      - op: bucketize
        columns: [monthly_charges]
        quantiles: 4
      - op: standard_scale
        columns: [tenure, total_charges, charge_ratio, log_tenure]
      - op: logistic_regression
        label: plan
        l2: 0.01
        solver: newton
    """,
    "mlp_lbfgs": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: mlp
        label: churned
        hidden: [6]
        activation: tanh
        l2: 0.01
        tol: 1.0e-9
        max_iter: 1000
        validation_fraction: 0.2
    """,
    "forest": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: one_hot
        columns: [plan, region]
      - op: random_forest
        label: churned
        n_trees: 5
        max_depth: 4
        seed: 3
        class_weight: balanced
    """,
    "tree_entropy": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: most_frequent
      - op: decision_tree
        label: region
        categorical: [plan]
        criterion: entropy
        max_depth: 5
        min_samples_leaf: 20
    """,
    "boosted_categories": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: gradient_boosted_trees
        label: churned
        categorical: [plan, region]
        n_trees: 6
        max_depth: 3
        min_samples_leaf: 10
        validation_fraction: 0.2
    """,
    "boosted_quantile": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: gradient_boosted_trees
        label: monthly_charges
        loss: quantile
        quantile: 0.9
        categorical: [plan, region]
        n_trees: 6
        max_depth: 4
        grow_policy: lossguide
        max_leaves: 7
        subsample: 0.8
        validation_fraction: 0.2
        early_stopping: true
        n_iter_no_change: 2
    """,
    "boosted_lambdarank": """
      - op: drop
        columns: [signup_date, plan]
      - op: repartition
        by: [region]
      - op: gradient_boosted_trees
        label: churned
        loss: lambdarank
        group: region
        features: [tenure, monthly_charges, total_charges]
        n_trees: 5
        max_depth: 3
        min_samples_leaf: 10
        truncation: 20
    """,
    "boosted_regression": """
      - op: drop
        columns: [customer_id, signup_date, plan, region]
      - op: gradient_boosted_trees
        label: monthly_charges
        n_trees: 8
        max_depth: 3
        subsample: 0.8
        tree_features: 0.7
        max_features: 0.6
        monotonic: {tenure: 1}
        interactions: [[tenure, churned]]
    """,
    "sampled_logistic": """
      - op: sample
        fraction: 0.7
        seed: 5
        by: [customer_id]
      - op: filter
        where: "tenure > 2 or plan = 'premium'"
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: mean
      - op: one_hot
        columns: [plan, region]
      - op: logistic_regression
        label: churned
        l2: 0.01
    """,
    "calibrated_boosted": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: one_hot
        columns: [plan, region]
      - op: gradient_boosted_trees
        label: churned
        n_trees: 5
        max_depth: 3
      - op: calibrate
        label: churned
    """,
    "calibrated_multiclass": """
      - op: drop
        columns: [customer_id, signup_date, region]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: logistic_regression
        label: plan
        l2: 0.01
      - op: calibrate
        label: plan
        method: sigmoid
    """,
    "target_encoded": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: target_encode
        columns: [plan, region]
        label: churned
        folds: 4
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: robust_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: logistic_regression
        label: churned
        l2: 0.01
    """,
    "pca_logistic": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: pca
        columns: [tenure, monthly_charges, total_charges, "plan=basic", "plan=premium"]
        k: 0.9
        whiten: true
      - op: logistic_regression
        label: churned
        l2: 0.01
    """,
    "kmeans": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: normalize
        columns: [tenure, monthly_charges, total_charges]
      - op: kmeans
        features: [tenure, monthly_charges, total_charges, "plan=basic", "plan=premium"]
        k: 5
        seed: 3
        distance: true
    """,
    "kmeans_tuned": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: kmeans
        features: [tenure, monthly_charges, total_charges]
        seed: 3
        n_init: 2
        validation_fraction: 0.2
        tune:
          k: [4, 3]
    """,
    "kmeans_cosine": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: kmeans
        features: [tenure, monthly_charges, total_charges]
        k: 4
        seed: 2
        distance: true
        distance_measure: cosine
        validation_fraction: 0.2
    """,
    "gaussian_mixture": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: derive
        columns: {w: "1 + churned"}
      - op: gaussian_mixture
        features: [tenure, monthly_charges, total_charges, "plan=basic"]
        weight: w
        k: 3
        seed: 4
        n_init: 2
        tol: 1.0e-6
        validation_fraction: 0.2
    """,
    "naive_bayes": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [region]
      - op: derive
        columns: {w: "1 + 0.5 * tenure / 72"}
      - op: naive_bayes
        label: plan
        features: [tenure, monthly_charges, total_charges, "region=north"]
        weight: w
        validation_fraction: 0.2
    """,
    "select_features": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: derive
        columns: {w: "1 + 0.5 * tenure / 72"}
      - op: select_features
        label: churned
        weight: w
        k: 4
      - op: logistic_regression
        label: churned
        weight: w
        l2: 0.01
    """,
    "naive_bayes_multinomial": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: one_hot
        columns: [plan, region]
      - op: naive_bayes
        label: churned
        model_type: multinomial
        features: [tenure, "plan=basic", "plan=premium", "region=north", "region=south"]
        smoothing: 0.5
    """,
    "isolation_forest": """
      - op: drop
        columns: [customer_id, signup_date]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: isolation_forest
        n_trees: 30
        max_samples: 128
        max_features: 0.8
        contamination: 0.02
        seed: 5
    """,
    "linear_weighted": """
      - op: drop
        columns: [signup_date, customer_id]
      - op: impute
        columns: [total_charges]
        strategy: mean
      - op: hash_encode
        columns: [region]
        buckets: 4
      - op: one_hot
        columns: [plan]
        min_frequency: 10
      - op: min_max_scale
        columns: [tenure]
      - op: derive
        columns: {w: "1 + churned"}
      - op: linear_regression
        label: monthly_charges
        weight: w
        features: [tenure, total_charges, "plan=basic", "plan=premium", "region#0", "region#1"]
        l2: 0.1
        validation_fraction: 0.25
    """,
    "linear_poisson_weighted": """
      - op: drop
        columns: [signup_date, customer_id]
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [monthly_charges]
      - op: derive
        columns: {w: "1 + churned"}
      - op: max_abs_scale
        columns: [churned]
      - op: linear_regression
        label: tenure
        weight: w
        features: [monthly_charges, churned, "plan=basic", "plan=premium", "region=east"]
        loss: poisson
        l2: 0.001
        validation_fraction: 0.25
    """,
}


@functools.cache
def zoo_rows() -> pa.Table:
    """The 6,000 rows every case trains on (made once: about 200 layouts take them)."""
    return churn_table(6000, seed=7)


def layout(folder: Path, files: int) -> Path:
    """The same 6,000 rows as 1 file or as `files` files of small row groups."""
    table = zoo_rows()
    folder.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]),
                       folder / f"part-{i}.parquet", row_group_size=400)
    return folder


def train_and_score(workdir: Path, engine, steps: str, files: int, tag: str,
                    device: str | None = None) -> tuple[dict[str, np.ndarray], pa.Table]:
    data = layout(workdir / f"data-{tag}", files)
    body = textwrap.indent(textwrap.dedent(steps).strip(), "  ")
    train = workdir / f"train-{tag}.yaml"
    train.write_text(f"pipeline: zoo\nsteps:\n  - op: read_parquet\n    path: {data}\n"
                     f"    partition_mb: 0.05\n{body}\n  - op: save_model\n    name: m{tag}\n")
    run(train, engine_instance=engine, device=device)
    # scores come with their contributions (TreeSHAP, linear), the MLP's, kmeans', the
    # Gaussian mixture's and the isolation forest's without
    trees = not any(f"op: {name}" in steps
                    for name in ("mlp", "kmeans", "gaussian_mixture", "isolation_forest"))
    score = write_pipeline(workdir, f"""
        pipeline: zoo_score
        steps:
          - op: read_parquet
            path: {data}
            partition_mb: 0.05
          - op: score
            model: m{tag}
            contributions: {str(trees).lower()}
          - op: write_parquet
            path: {workdir / f"scores-{tag}"}
        """, f"score-{tag}.yaml")
    run(score, engine_instance=engine, device=device)
    model = ModelStore().load(f"m{tag}")
    arrays = {}
    for i, step in enumerate(model.chain.steps):
        _, values = step.state()
        arrays.update({f"{i}.{k}": np.asarray(v) for k, v in values.items()})
    scores = pq.read_table(workdir / f"scores-{tag}").sort_by("customer_id")
    return arrays, scores


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The local engine on one partition: what every engine and layout must match."""
    out = {}
    local = make_engine("local")
    with local, pytest.MonkeyPatch.context() as mp:
        for name, steps in ZOO.items():
            folder = tmp_path_factory.mktemp(f"ref-{name}")
            mp.setenv("SLUICE_MODELS", str(folder / "models"))
            mp.setenv("SLUICE_RUNS", str(folder / "runs"))
            out[name] = train_and_score(folder, local, steps, 1, "ref")
    return out


def assert_same(got: tuple, expected: tuple, rtol: float) -> None:
    arrays, scores = got
    ref_arrays, ref_scores = expected
    assert arrays.keys() == ref_arrays.keys()
    for key, value in ref_arrays.items():
        if value.dtype.kind in "fc":
            np.testing.assert_allclose(arrays[key], value, rtol=rtol, atol=1e-9, err_msg=key)
        else:
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    assert_tables_close(scores, ref_scores, rtol=rtol, atol=1e-9, what="scores")


# every engine on 1 file and on 5, but the local engine on 1 file: the reference itself
LAYOUTS = [(engine, files) for engine in ENGINES for files in (1, 5)
           if (engine, files) != ("local", 1)]


@pytest.mark.parametrize(("engine_name", "files"), LAYOUTS,
                         ids=[f"{engine}-{files}" for engine, files in LAYOUTS])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_matches_local_one_partition(workdir: Path, shared_engines: dict, reference: dict,
                                         name: str, engine_name: str, files: int) -> None:
    engine = started(shared_engines, engine_name)
    got = train_and_score(workdir, engine, ZOO[name], files, f"{name}{files}")
    assert_same(got, reference[name], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_on_the_gpu_stand_in_matches_the_cpu(workdir: Path, reference: dict, name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model family, its feature steps and scoring on the GPU path (the stand-in
    device: a kernel that slips into NumPy fails), over 5 files."""
    monkeypatch.setenv(STANDIN_ENV, "array_api_strict")
    with make_engine("local") as local:
        got = train_and_score(workdir, local, ZOO[name], 5, f"{name}gpu", device="gpu")
    assert_same(got, reference[name], rtol=1e-6)


def test_demo_pipelines_match_across_engines(workdir: Path, engine) -> None:
    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    results = {}
    for label, eng in (("local", make_engine("local")), ("engine", engine)):
        own = label == "local"
        if own:
            eng.start()
        try:
            models = workdir / f"models-{label}"
            run(ROOT / "conf" / "pipelines" / "churn_train.yaml", models=str(models),
                engine_instance=eng)
            record = run(ROOT / "conf" / "pipelines" / "churn_score.yaml", models=str(models),
                         engine_instance=eng)
        finally:
            if own:
                eng.close()
        scores = pq.read_table(workdir / "data" / "scores" / "ds=2026-11-28")
        results[label] = (ModelStore(str(models)).load("churn"), scores.sort_by("customer_id"),
                          record["metrics"]["evaluate"])
    local, other = results["local"], results["engine"]
    for a, b in zip(local[0].chain.steps, other[0].chain.steps):
        for key, value in a.state()[1].items():
            np.testing.assert_allclose(b.state()[1][key], value, rtol=1e-7, err_msg=key)
    assert_tables_close(other[1], local[1], rtol=1e-7, atol=1e-10, what="scores")
    for key, value in local[2].items():
        if isinstance(value, float):
            assert other[2][key] == pytest.approx(value, rel=1e-7), key
    assert list(other[2]["groups"]) == list(local[2]["groups"]) == [  # evaluate by region
        "region=east", "region=north", "region=south", "region=test", "region=west"]
    for group, values in local[2]["groups"].items():
        for key, value in values.items():
            if isinstance(value, float):
                assert other[2]["groups"][group][key] == pytest.approx(value, rel=1e-7), key
