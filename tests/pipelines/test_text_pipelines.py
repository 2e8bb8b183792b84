"""vectorize_text in pipelines: text to a naive Bayes or logistic model on every engine
(scikit-learn's CountVectorizer + MultinomialNB / TfidfVectorizer on the same rows),
saved and scored on new text by `sluice score` and served with each term's contribution;
errors that name the step."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SLUICE, sluice_in_process, write_pipeline
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.naive_bayes import MultinomialNB

from operators.arrays import STANDIN_ENV, get_namespace
from pipelines.runner import plan_file, run
from pipelines.serving import load_model
from pipelines.store import ModelStore

STOP = ["the", "a", "and", "is", "it"]


def tickets(rows: int = 1200, seed: int = 0) -> pa.Table:
    """Support tickets: the topic (the label) shifts which words a ticket uses."""
    rng = np.random.default_rng(seed)
    common = ["the", "a", "and", "is", "it", "please", "help", "thanks", "app", "account"]
    topic_words = {"billing": ["refund", "charge", "invoice", "price", "card", "paid"],
                   "bug": ["crash", "error", "slow", "freeze", "login", "update"],
                   "delivery": ["late", "parcel", "courier", "address", "tracking", "box"]}
    topics = np.array(sorted(topic_words))[rng.integers(0, 3, rows)]
    texts = []
    for topic in topics:
        n = int(rng.integers(2, 12))
        own = rng.random(n) < 0.45
        words = [rng.choice(topic_words[topic]) if o else
                 rng.choice(common + [w for ws in topic_words.values() for w in ws])
                 for o in own]
        words = [w.capitalize() if rng.random() < 0.2 else w for w in words]
        texts.append(" ".join(words) + rng.choice([".", "!", "", "?!"]))
    return pa.table({"ticket_id": np.arange(rows), "text": texts, "topic": topics})


@pytest.fixture
def ticket_files(workdir: Path) -> Path:
    folder = workdir / "data" / "tickets"
    folder.mkdir(parents=True)
    table = tickets()
    for i, at in enumerate(range(0, table.num_rows, 300)):
        pq.write_table(table.slice(at, 300), folder / f"part-{i}.parquet", row_group_size=100)
    return folder


TRAIN = """
    pipeline: tickets
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: drop
        columns: [ticket_id]
      - id: words
        op: vectorize_text
        columns: [text]
        stop_words: [the, a, and, is, it]
        min_df: 3
      - id: nb
        op: naive_bayes
        label: topic
        model_type: multinomial
      - op: save_model
        name: tickets
"""


def test_text_to_naive_bayes_is_scikit_learns_on_every_engine(workdir: Path, engine,
                                                              ticket_files: Path) -> None:
    record = run(write_pipeline(workdir, TRAIN.format(data=ticket_files)),
                 engine_instance=engine)
    table = tickets()
    docs = table.column("text").to_pylist()
    vectorizer = CountVectorizer(stop_words=STOP, min_df=3).fit(docs)
    counts = vectorizer.transform(docs)
    sk = MultinomialNB().fit(counts, table.column("topic").to_pylist())
    words = record["metrics"]["words"]
    assert words["terms"] == {"text": len(vectorizer.vocabulary_)}
    model = ModelStore().load("tickets")
    fitted = model.chain.steps[-2]
    assert fitted.vocabulary["text"]["terms"] == sorted(vectorizer.vocabulary_)
    # the model's features are the text's columns (no features given: every numeric one)
    nb = model.chain.steps[-1]
    assert nb.features == [f"text:{t}" for t in sorted(vectorizer.vocabulary_)]
    new = ["Refund my card please, the charge is wrong", "app crash after update!!",
           "courier lost my parcel", "", "completely unseen words"]
    scored = load_model("tickets").score([{"text": t} for t in new])
    np.testing.assert_allclose([r["probability"] for r in scored],
                               sk.predict_proba(vectorizer.transform(new)), rtol=1e-9)
    assert [r["prediction"] for r in scored] == list(sk.predict(vectorizer.transform(new)))


def test_scored_by_sluice_score_and_served_with_each_terms_contribution(
        workdir: Path, ticket_files: Path) -> None:
    run(write_pipeline(workdir, TRAIN.format(data=ticket_files)))
    pq.write_table(pa.table({"id": [7, 8], "text": ["late parcel, wrong address", None]}),
                   workdir / "new.parquet")
    done = subprocess.run([SLUICE, "score", "tickets", str(workdir / "new.parquet"), "out",
                           "--keep", "id"], capture_output=True, text=True, timeout=300,
                          cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column_names == ["id", "prediction", "probability"]
    assert out.column("prediction").to_pylist()[0] == "delivery"
    served = load_model("tickets")
    explained = served.score([{"text": "late parcel, wrong address"}], contributions=True)[0]
    contributions = explained["contributions"]
    assert "text:parcel" in contributions and "text:late" in contributions
    ranked = sorted(contributions, key=lambda k: -abs(np.asarray(contributions[k]).sum()))
    assert ranked[0] in {"text:parcel", "text:late", "text:address"}


def test_tfidf_to_logistic_regression_matches_across_partitionings(
        workdir: Path, ticket_files: Path) -> None:
    """The fitted idf and the model are the same from 1 file as from 4."""
    one = workdir / "one"
    one.mkdir()
    pq.write_table(tickets(), one / "all.parquet")
    pipeline = TRAIN.replace("      - id: nb\n        op: naive_bayes\n        label: topic\n"
                             "        model_type: multinomial\n",
                             "      - id: nb\n        op: logistic_regression\n"
                             "        label: topic\n        l2: 0.01\n").replace(
        "min_df: 3", "min_df: 3\n        ngram_range: [1, 2]\n        idf: smooth\n"
                     "        norm: l2")
    states = []
    for folder, name in ((one, "one"), (ticket_files, "four")):
        run(write_pipeline(workdir, pipeline.format(data=folder).replace(
            "name: tickets", f"name: {name}"), f"{name}.yaml"))
        model = ModelStore().load(name)
        states.append([step.state() for step in model.chain.steps])
    (meta1, _), (meta4, _) = states[0][-2], states[1][-2]
    assert meta1["vocabulary"]["text"]["terms"] == meta4["vocabulary"]["text"]["terms"]
    np.testing.assert_allclose(meta1["vocabulary"]["text"]["idf"],
                               meta4["vocabulary"]["text"]["idf"], rtol=1e-15)
    for key, value in states[0][-1][1].items():
        np.testing.assert_allclose(states[1][-1][1][key], value, rtol=1e-7, atol=1e-10,
                                   err_msg=key)


def test_a_number_column_is_refused_at_its_line(workdir: Path, ticket_files: Path) -> None:
    path = write_pipeline(workdir, TRAIN.format(data=ticket_files).replace(
        "columns: [text]", "columns: [text, ticket_id]").replace(
        "      - op: drop\n        columns: [ticket_id]\n", ""))
    found = [str(p) for p in plan_file(path).problems]
    assert len(found) == 1
    assert "pipeline.yaml:8: step 'words' (vectorize_text): column 'ticket_id' is int64" \
        in found[0]
    assert "cast 'ticket_id' to string" in found[0]


def test_on_the_gpu_stand_in_the_model_is_the_cpus(workdir: Path, ticket_files: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The text is split on the host (a host-only step in a GPU run) and the model fitted
    on the stand-in device: the same state as on the CPU."""
    run(write_pipeline(workdir, TRAIN.format(data=ticket_files)))
    cpu = ModelStore().load("tickets").chain.steps[-1].state()[1]
    monkeypatch.setenv(STANDIN_ENV, "array_api_strict")
    record = run(write_pipeline(workdir, TRAIN.format(data=ticket_files), "gpu.yaml"),
                 device="gpu")
    assert record["steps"]["words"]["device"] == "cpu"
    assert record["steps"]["nb"]["device"] == "gpu:standin"
    gpu = ModelStore().load("tickets").chain.steps[-1].state()[1]
    assert gpu.keys() == cpu.keys()
    for key, value in cpu.items():
        np.testing.assert_allclose(gpu[key], value, rtol=1e-12, err_msg=key)


def test_a_vocabulary_much_wider_than_its_text_is_a_note(
        workdir: Path, ticket_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Terms of a few bytes each become 8 bytes a row each: the run says how much wider
    the partitions grow, and what to lower, where the columns add up to much (here: over
    1 MB, where the run's own threshold is 1 GiB); a narrow vocabulary says nothing, nor
    a wide one of few rows."""
    import operators.features.text as text

    notes: list[str] = []
    run(write_pipeline(workdir, TRAIN.format(data=ticket_files).replace(
        "min_df: 3", "min_df: 1\n        ngram_range: [1, 3]"), "few.yaml"),
        notify=notes.append)
    assert not [n for n in notes if "step 'words'" in n]  # 1,200 rows: under 1 GiB
    monkeypatch.setattr(text, "NOTE_BYTES", 1 << 20)
    run(write_pipeline(workdir, TRAIN.format(data=ticket_files).replace(
        "min_df: 3", "min_df: 1\n        ngram_range: [1, 3]")), notify=notes.append)
    wide = [n for n in notes if "step 'words'" in n]
    assert len(wide) == 1 and "grows" in wide[0] and "partition_mb" in wide[0]
    assert "pipeline.yaml:" in wide[0]
    notes.clear()
    run(write_pipeline(workdir, TRAIN.format(data=ticket_files).replace(
        "min_df: 3", "min_df: 3\n        max_features: 2"), "narrow.yaml"), notify=notes.append)
    assert not [n for n in notes if "step 'words'" in n]


def test_the_models_profile_keeps_no_text_and_drift_sees_longer_texts(
        workdir: Path, ticket_files: Path) -> None:
    """A free-text column is profiled by its lengths: the saved model holds none of the
    training texts, and drift flags texts twice as long, not the same kind of texts."""
    import json

    run(write_pipeline(workdir, TRAIN.format(data=ticket_files)))
    path = ModelStore().path_of(ModelStore().load("tickets"))
    meta = json.loads((Path(path) / "model.json").read_text())
    profile = meta["profile"]["columns"]["text"]
    assert profile["kind"] == "text" and profile["measure"] == "length"
    assert "values" not in profile
    written = (Path(path) / "model.json").read_text()
    assert not [t for t in tickets().column("text").to_pylist() if t in written]
    fresh = tickets(rows=600, seed=9)
    longer = fresh.set_column(1, "text", pa.array(
        [f"{t} {t}" for t in fresh.column("text").to_pylist()]))
    for name, rows in (("same", fresh), ("longer", longer)):
        pq.write_table(rows, workdir / f"{name}.parquet")
    drift = """
        pipeline: watch
        steps:
          - op: read_parquet
            path: {path}
          - id: drift
            op: drift
            model: tickets
            columns: [text]
    """
    psi = {}
    for name in ("same", "longer"):
        record = run(write_pipeline(workdir, drift.format(path=workdir / f"{name}.parquet"),
                                    f"{name}.yaml"))
        psi[name] = record["metrics"]["drift"]["psi"]["text"]
    assert psi["same"] < 0.1 < 0.25 < psi["longer"]


def test_the_tickets_example_routes_tickets_by_topic(workdir: Path) -> None:
    """conf/pipelines/tickets_topics.yaml on the committed sample (the ``tickets``
    generator's first 10,000 rows): the vocabulary's size tuned with the smoothing, the
    held-out tickets routed right far above chance (four topics: 25%), and the saved
    model routes raw text."""
    import pyarrow.dataset as ds
    from conftest import ROOT

    from pipelines.datagen import tickets_table

    (workdir / "data").symlink_to(ROOT / "data")
    committed = ds.dataset(ROOT / "data" / "tickets").to_table()
    assert committed.equals(tickets_table(committed.num_rows).cast(committed.schema))
    record = run(ROOT / "conf" / "pipelines" / "tickets_topics.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    assert record["status"] == "succeeded"
    tuning = record["metrics"]["topics"]["tuning"]
    assert len(tuning["candidates"]) == 4
    assert record["metrics"]["topics"]["validation"]["accuracy"] > 0.85
    assert record["metrics"]["words"]["terms"]["text"] == int(tuning["best"].split("=")[-1])
    served = load_model("tickets_topics", models=str(workdir / "models"))
    routed = served.score([{"text": "I was charged twice, please refund my card"},
                           {"text": "The courier lost my parcel, tracking says delivered"},
                           {"text": "App crashes after the update, screen freezes"},
                           {"text": "Cannot login, password reset email never came"}])
    assert [r["prediction"] for r in routed] == ["billing", "delivery", "bug", "account"]


def test_the_tickets_clusters_example_finds_the_topics_without_them(workdir: Path) -> None:
    """conf/pipelines/tickets_clusters.yaml on the committed sample: k-means of the
    sparse TF-IDF column, k chosen by the held-out silhouette, finds the four topics the
    tickets were written about without reading them (adjusted Rand index against the
    topics; chance is 0), and the saved model groups raw text as the run did."""
    import pyarrow.dataset as ds
    from conftest import ROOT
    from sklearn.metrics import adjusted_rand_score

    (workdir / "data").symlink_to(ROOT / "data")
    record = run(ROOT / "conf" / "pipelines" / "tickets_clusters.yaml",
                 models=str(workdir / "models"), runs_dir=str(workdir / "runs"))
    assert record["status"] == "succeeded"
    assert record["metrics"]["groups"]["tuning"]["best"] == "k=4"
    tickets = ds.dataset(ROOT / "data" / "tickets").to_table()
    served = load_model("tickets_clusters", models=str(workdir / "models"))
    groups = served.score_table(tickets.select(["text"])).column("prediction").to_pylist()
    assert adjusted_rand_score(tickets.column("topic").to_pylist(), groups) > 0.8
    sizes = sorted(record["metrics"]["groups"]["cluster_sizes"])
    assert sizes[0] > 0.15 * sum(sizes)  # no group of a few odd tickets


def test_a_partition_too_large_for_its_term_columns_names_the_step(
        workdir: Path, ticket_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import operators.features.text as text
    from operators.base import SluiceError

    monkeypatch.setattr(text, "dense_limit", lambda: 4096.0)
    with pytest.raises(SluiceError) as info:
        run(write_pipeline(workdir, TRAIN.format(data=ticket_files)))
    said = str(info.value)
    assert "pipeline.yaml:" in said and "step 'words'" in said
    assert "term columns (dense float64)" in said and "partition_mb" in said


SPARSE = TRAIN.replace("min_df: 3", "min_df: 3\n        sparse: true")


TERMS = """
    pipeline: terms
    steps:
      - op: read_parquet
        path: {data}
      - op: vectorize_text
        columns: [text]
        sparse: true
        stop_words: [the, a, and, is, it]
        min_df: 3
      - op: write_parquet
        path: {out}
"""


def test_a_sparse_term_column_trains_scikit_learns_model_on_every_engine(
        workdir: Path, engine, ticket_files: Path) -> None:
    """``sparse: true``: one column of each row's terms through every engine, the same
    model as the term columns (scikit-learn's on its sparse matrix); saved, scored by
    `sluice score` on new text, explained term by term, written as a struct column."""
    record = run(write_pipeline(workdir, SPARSE.format(data=ticket_files)),
                 engine_instance=engine)
    assert record["status"] == "succeeded"
    table = tickets()
    docs = table.column("text").to_pylist()
    vectorizer = CountVectorizer(stop_words=STOP, min_df=3).fit(docs)
    sk = MultinomialNB().fit(vectorizer.transform(docs), table.column("topic").to_pylist())
    model = ModelStore().load("tickets")
    nb = model.chain.steps[-1]
    assert nb.features == [f"text:{t}" for t in sorted(vectorizer.vocabulary_)]
    np.testing.assert_allclose(nb.feature_log_prob, sk.feature_log_prob_, rtol=1e-12)
    new = ["Refund my card please, the charge is wrong", "app crash after update!!",
           "courier lost my parcel", "", "completely unseen words"]
    served = load_model("tickets")
    scored = served.score([{"text": t} for t in new])
    np.testing.assert_allclose([r["probability"] for r in scored],
                               sk.predict_proba(vectorizer.transform(new)), rtol=1e-9)
    explained = served.score([{"text": "late parcel, wrong address"}],
                             contributions=True)[0]["contributions"]
    assert "text:parcel" in explained and "text:late" in explained
    # a pipeline that writes the column: Parquet keeps its type
    run(write_pipeline(workdir, TERMS.format(data=ticket_files, out=workdir / "terms")),
        engine_instance=engine)
    out = pq.read_table(workdir / "terms")
    assert pa.types.is_struct(out.schema.field("text").type)
    assert out.num_rows == table.num_rows
    assert sum(len(r["indices"]) for r in out.column("text").to_pylist()) == \
        vectorizer.transform(docs).nnz


def test_sluice_score_takes_text_through_a_sparse_model(workdir: Path,
                                                         ticket_files: Path) -> None:
    run(write_pipeline(workdir, SPARSE.format(data=ticket_files)))
    pq.write_table(pa.table({"id": [7, 8], "text": ["late parcel, wrong address", None]}),
                   workdir / "new.parquet")
    done = sluice_in_process("score", "tickets", str(workdir / "new.parquet"), "out",
                             "--keep", "id", cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(workdir / "out")
    assert out.column("prediction").to_pylist()[0] == "delivery"


def test_a_model_that_reads_no_sparse_column_is_refused_at_plan(
        workdir: Path, ticket_files: Path) -> None:
    path = write_pipeline(workdir, SPARSE.format(data=ticket_files).replace(
        "op: naive_bayes\n        label: topic\n        model_type: multinomial",
        "op: gaussian_mixture\n        k: 2"))
    done = sluice_in_process("plan", str(path), cwd=workdir)
    assert done.returncode != 0
    assert "sparse column" in done.stderr and "step 'nb'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_plan_says_the_text_becomes_a_sparse_column(workdir: Path,
                                                        ticket_files: Path) -> None:
    path = write_pipeline(workdir, SPARSE.format(data=ticket_files))
    done = sluice_in_process("plan", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "~ text string -> sparse (each row's non-zero terms)" in done.stdout


def test_chi2_keeps_the_best_terms_of_a_sparse_column_on_every_engine(
        workdir: Path, engine, ticket_files: Path) -> None:
    """TF-IDF terms -> SelectKBest(chi2) -> MultinomialNB, scikit-learn's pipeline, as
    one sparse column end to end."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.feature_selection import SelectKBest, chi2

    pipeline = SPARSE.replace("      - id: nb\n", "      - id: pick\n        op: select_features\n"
                              "        label: topic\n        test: chi2\n        k: 10\n"
                              "      - id: nb\n").replace("min_df: 3\n",
                                                           "min_df: 3\n        idf: smooth\n"
                                                           "        norm: l2\n")
    run(write_pipeline(workdir, pipeline.format(data=ticket_files)), engine_instance=engine)
    table = tickets()
    docs, labels = table.column("text").to_pylist(), table.column("topic").to_pylist()
    vectorizer = TfidfVectorizer(stop_words=STOP, min_df=3).fit(docs)
    weights = vectorizer.transform(docs)
    pick = SelectKBest(chi2, k=10).fit(weights, labels)
    sk = MultinomialNB().fit(pick.transform(weights), labels)
    model = ModelStore().load("tickets")
    names = vectorizer.get_feature_names_out()[pick.get_support()]
    assert model.chain.steps[-1].features == [f"text:{t}" for t in names]
    new = ["Refund my card please, the charge is wrong", "courier lost my parcel", ""]
    scored = load_model("tickets").score([{"text": t} for t in new])
    np.testing.assert_allclose([r["probability"] for r in scored],
                               sk.predict_proba(pick.transform(vectorizer.transform(new))),
                               rtol=1e-9)

def test_a_sparse_column_that_lost_its_terms_is_refused_at_plan(workdir: Path,
                                                                ticket_files: Path) -> None:
    """A struct<indices, values> column read from a file without the field metadata
    naming its terms (another tool wrote it): the model cannot name its features, which
    the plan says (a TypeError in the fit before)."""
    words = pa.array([{"indices": [0, 2], "values": [1.0, 2.0]},
                      {"indices": [1], "values": [3.0]}] * 10,
                     pa.struct([pa.field("indices", pa.list_(pa.int32())),
                                pa.field("values", pa.list_(pa.float64()))]))
    pq.write_table(pa.table({"text": words, "topic": ["a", "b"] * 10}),
                   workdir / "terms.parquet")
    path = write_pipeline(workdir, f"""
    pipeline: lost
    steps:
      - op: read_parquet
        path: {workdir / 'terms.parquet'}
      - id: nb
        op: naive_bayes
        label: topic
        features: [text]
    """)
    done = sluice_in_process("validate", str(path), cwd=workdir)
    assert done.returncode != 0
    assert "sparse column 'text' does not name its terms" in done.stderr
    assert "step 'nb'" in done.stderr and "vectorize_text" in done.stderr
    assert "Traceback" not in done.stderr
    # the step's own column, planned before its terms are fitted, is no such column
    done = sluice_in_process("validate", str(write_pipeline(workdir, SPARSE.format(
        data=ticket_files))), cwd=workdir)
    assert done.returncode == 0, done.stderr


def test_spark_udf_takes_a_model_of_one_sparse_column_by_its_column(
        workdir: Path, ticket_files: Path, spark) -> None:
    """A model trained on a sparse column written by another pipeline takes that one
    column: ``score(*score.columns)`` gives it (a struct itself, it was taken for a
    struct of the model's columns: 'text' not in the input) as ``F.struct`` does."""
    from pyspark.sql import functions as F

    from pipelines.serving import spark_udf

    run(write_pipeline(workdir, TERMS.format(data=ticket_files, out=workdir / "terms")))
    run(write_pipeline(workdir, f"""
    pipeline: on_terms
    steps:
      - op: read_parquet
        path: {workdir / 'terms'}
      - op: naive_bayes
        label: topic
        features: [text]
      - op: save_model
        name: on_terms
    """))
    rows = pq.read_table(workdir / "terms")
    want = dict(zip(rows.column("ticket_id").to_pylist(),
                    load_model("on_terms").score(rows).column("probability").to_pylist()))
    score = spark_udf("on_terms")
    assert score.columns == ["text"]
    df = spark.spark.read.parquet(str(workdir / "terms"))
    for argument in (score.columns, [F.struct(*score.columns)]):
        got = {r.ticket_id: r.p for r in df.select("ticket_id", score(*argument)
                                                   .alias("p")).collect()}
        ids = sorted(want)
        assert sorted(got) == ids
        np.testing.assert_allclose([got[i] for i in ids], [want[i] for i in ids],
                                   rtol=1e-12)


def vectorized_tickets(drop: list[str], rows: int = 1200) -> tuple[pa.Table, Any, pa.Table]:
    """The first ``rows`` tickets less ``drop``, the TF-IDF step the pipelines here fit on
    them (in process, one partition) and its sparse rows."""
    from operators.base import drive
    from operators.features.text import VectorizeText

    table = tickets(rows).drop_columns(drop)
    step = VectorizeText(columns=["text"], sparse=True, stop_words=STOP, min_df=3,
                         idf="smooth", norm="l2")
    state, _ = drive(step, table.schema,
                     lambda partial: partial(table, get_namespace("numpy")))
    vectorized = step.fitted(state)
    return table, vectorized, vectorized.transform(table, None)


TOPICS = """
    pipeline: topics
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: drop
        columns: [ticket_id, topic]
      - id: words
        op: vectorize_text
        columns: [text]
        sparse: true
        stop_words: [the, a, and, is, it]
        min_df: 3
        idf: smooth
        norm: l2
      - id: clusters
        op: kmeans
        k: 3
        seed: 4
        distance: true
        validation_fraction: 0.2
      - op: save_model
        name: topics
      - id: quality
        op: evaluate_clusters
        input: clusters
        features: [text]
"""


def test_tfidf_rows_cluster_into_one_kmeans_model_on_every_engine(
        workdir: Path, engine, ticket_files: Path) -> None:
    """kmeans on a sparse TF-IDF column (text clustering) through every engine and its
    partitions: the model of one partition fitted in process; saved, its centres named by
    term, scored from text by `sluice score` and load_model."""
    from operators.base import drive, tree_reduce
    from operators.models.kmeans import KMeans

    record = run(write_pipeline(workdir, TOPICS.format(data=ticket_files)),
                 engine_instance=engine)
    assert record["status"] == "succeeded"
    metrics = record["metrics"]["clusters"]
    assert metrics["validation"]["count"] > 0
    model = ModelStore().load("topics")
    words, clusters = model.chain.steps[-2:]
    table, _, rows = vectorized_tickets(["ticket_id", "topic"])
    np_ = get_namespace("numpy")
    op = KMeans(k=3, seed=4, distance=True, validation_fraction=0.2)
    state, _ = drive(op, rows.schema, lambda partial: tree_reduce([partial(rows, np_)],
                                                                  op.combine))
    assert clusters.features == [f"text:{t}" for t in words.vocabulary["text"]["terms"]]
    np.testing.assert_allclose(clusters.centres, op.fitted(state).centres, rtol=1e-9,
                               atol=1e-12)
    assert metrics["inertia"] == pytest.approx(op.metrics(state)["inertia"], rel=1e-9)
    assert metrics["validation"]["silhouette"] == pytest.approx(
        op.metrics(state)["validation"]["silhouette"], rel=1e-9)
    clustered = op.fitted(state).transform(rows, np_)
    expected = clustered.column("prediction").to_pylist()
    # evaluate_clusters on the sparse column: the figures of the rows measured here
    from operators.evaluate.clusters import EvaluateClusters
    from operators.testing.kit import fit

    measured = fit(EvaluateClusters(features=["text"]), [clustered]).metrics
    for name in ("silhouette", "calinski_harabasz", "davies_bouldin", "within_ss"):
        assert record["metrics"]["quality"][name] == pytest.approx(measured[name],
                                                                   rel=1e-9), name
    new = table.slice(0, 5).column("text").to_pylist()
    served = load_model("topics").score([{"text": t} for t in new])
    assert [r["prediction"] for r in served] == expected[:5]
    pq.write_table(table.slice(0, 5), workdir / "new.parquet")
    done = sluice_in_process("score", "topics", str(workdir / "new.parquet"), "out",
                             cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(workdir / "out").column("prediction").to_pylist() == expected[:5]


BOOSTED = """
    pipeline: boosted
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: drop
        columns: [ticket_id]
      - id: words
        op: vectorize_text
        columns: [text]
        sparse: true
        stop_words: [the, a, and, is, it]
        min_df: 3
        idf: smooth
        norm: l2
      - id: trees
        op: {op}
        label: topic
        n_trees: 6
        max_depth: 3
        seed: 2
      - op: save_model
        name: boosted
"""


@pytest.mark.parametrize("op", ["gradient_boosted_trees", "random_forest"])
def test_tfidf_rows_train_one_tree_model_on_every_engine(workdir: Path, engine,
                                                          ticket_files: Path, op: str) -> None:
    """Trees on a sparse TF-IDF column through every engine and its partitions (a forest
    with its bootstrap): the model fitted in process on one partition, node for node;
    saved, scored from text by load_model, explained term by term."""
    from operators.base import drive, tree_reduce
    from operators.models.boosted_trees import GradientBoostedTrees
    from operators.models.forest import RandomForest

    record = run(write_pipeline(workdir, BOOSTED.format(data=ticket_files, op=op)),
                 engine_instance=engine)
    assert record["status"] == "succeeded"
    words, trees = ModelStore().load("boosted").chain.steps[-2:]
    table, vectorized, rows = vectorized_tickets(["ticket_id"])
    np_ = get_namespace("numpy")
    cls = GradientBoostedTrees if op == "gradient_boosted_trees" else RandomForest
    model = cls(label="topic", n_trees=6, max_depth=3, seed=2)
    state, _ = drive(model, rows.schema,
                     lambda partial: tree_reduce([partial(rows, np_)], model.combine))
    fitted = model.fitted(state)
    assert trees.features == [f"text:{t}" for t in words.vocabulary["text"]["terms"]]
    for name in ("feature", "left", "right", "tree_start"):
        np.testing.assert_array_equal(trees.nodes[name], fitted.nodes[name], err_msg=name)
    for name in ("threshold", "value", "cover", "importances"):
        np.testing.assert_allclose(trees.nodes[name], fitted.nodes[name], rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    importances = record["metrics"]["trees"]["feature_importances"]
    assert max(importances, key=importances.get).startswith("text:")
    new = table.slice(0, 40)
    served = load_model("boosted")
    scored = served.score([{"text": t} for t in new.column("text").to_pylist()])
    want = fitted.transform(vectorized.transform(new, None), np_)
    np.testing.assert_allclose([r["probability"] for r in scored],
                               want.column("probability").to_pylist(), rtol=1e-12)
    explained = served.score([{"text": "late parcel, wrong address"}],
                             contributions=True)[0]["contributions"]
    assert "text:parcel" in explained and "text:late" in explained


LSA = TOPICS.replace("      - id: clusters\n", """      - id: lsa
        op: pca
        columns: [text]
        k: 6
      - id: clusters
""").replace("        input: clusters\n        features: [text]\n",
             "        input: clusters\n        features: [pca_0, pca_1, pca_2]\n")


def test_tfidf_rows_reduced_by_pca_then_clustered_on_every_engine(
        workdir: Path, engine, ticket_files: Path) -> None:
    """LSA: pca of a sparse TF-IDF column (its rows kept sparse), then kmeans on the
    components, through every engine and its partitions: the components fitted in
    process on one partition; saved, scored from text by load_model."""
    from operators.base import drive, tree_reduce
    from operators.features.pca import PCA
    from operators.models.kmeans import KMeans

    record = run(write_pipeline(workdir, LSA.format(data=ticket_files)),
                 engine_instance=engine)
    assert record["status"] == "succeeded"
    assert record["metrics"]["lsa"]["components"] == 6
    words, lsa, clusters = ModelStore().load("topics").chain.steps[-3:]
    table, vectorized, rows = vectorized_tickets(["ticket_id", "topic"])
    np_ = get_namespace("numpy")
    op = PCA(columns=["text"], k=6)
    state, _ = drive(op, rows.schema, lambda partial: tree_reduce([partial(rows, np_)],
                                                                  op.combine))
    fitted = op.fitted(state)
    assert lsa.features == [f"text:{t}" for t in words.vocabulary["text"]["terms"]]
    for key, value in fitted.arrays.items():
        np.testing.assert_allclose(lsa.arrays[key], value, rtol=1e-9, atol=1e-11,
                                   err_msg=key)
    # the clusters of the saved components (the hold-out hashes the rows' values: those
    # of the pipeline's pca, not of the one fitted here, equal to 1e-9 only)
    reduced = lsa.transform(rows, np_)
    km = KMeans(k=3, seed=4, distance=True, validation_fraction=0.2)
    state, _ = drive(km, reduced.schema, lambda partial: tree_reduce(
        [partial(reduced, np_)], km.combine))
    assert clusters.features == [f"pca_{i}" for i in range(6)]
    np.testing.assert_allclose(clusters.centres, km.fitted(state).centres, rtol=1e-7,
                               atol=1e-9)
    new = table.slice(0, 20)
    served = load_model("topics").score([{"text": t} for t in new.column("text").to_pylist()])
    want = km.fitted(state).transform(lsa.transform(vectorized.transform(new, None), np_), np_)
    assert [r["prediction"] for r in served] == want.column("prediction").to_pylist()
    np.testing.assert_allclose([r["distance"] for r in served],
                               want.column("distance").to_pylist(), rtol=1e-7)


FEW = 400


@pytest.fixture
def few_ticket_files(workdir: Path) -> Path:
    """400 tickets in 4 files of 2 row groups: the fits that pass over the rows many
    times (an mlp's L-BFGS iterations, an isolation forest's threshold search)."""
    folder = workdir / "data" / "few"
    folder.mkdir(parents=True)
    table = tickets(FEW)
    for i, at in enumerate(range(0, FEW, 100)):
        pq.write_table(table.slice(at, 100), folder / f"part-{i}.parquet", row_group_size=50)
    return folder


WORDS = """
    pipeline: {name}
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: drop
        columns: {drop}
      - id: words
        op: vectorize_text
        columns: [text]
        sparse: {sparse}
        stop_words: [the, a, and, is, it]
        min_df: 3
        idf: smooth
        norm: l2
"""

NETWORKS = WORDS + """
      - id: lbfgs
        op: mlp
        label: topic
        hidden: [2]
        activation: tanh
        l2: 0.05
        tol: 1.0e-9
        max_iter: 500
        seed: 2
      - op: save_model
        name: {name}_lbfgs
      - id: adam
        op: mlp
        input: words
        label: topic
        hidden: [3]
        solver: adam
        batch_size: 32
        learning_rate: 0.02
        max_iter: 4
        seed: 2
      - op: save_model
        name: {name}_adam
"""

FORESTS = WORDS + """
      - id: every
        op: isolation_forest
        n_trees: 15
        max_samples: 1.0
        contamination: 0.05
        seed: 3
      - op: save_model
        name: {name}_every
      - id: drawn
        op: isolation_forest
        input: words
        n_trees: 15
        max_samples: 64
        seed: 3
      - op: save_model
        name: {name}_drawn
"""

SCORE_BOTH = """
    pipeline: score_both
    steps:
      - id: rows
        op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: score
        model: {first}
      - op: write_parquet
        path: {out}/{first}
      - op: score
        input: rows
        model: {second}
      - op: write_parquet
        path: {out}/{second}
"""


def sparse_and_dense_runs(workdir: Path, engine: Any, data: Path, pipeline: str,
                          drop: list[str], models: tuple[str, str]) -> dict[str, Any]:
    """``pipeline`` of the sparse column run on ``engine``, and the sparse models scoring
    the same files there; the pipeline of its term columns (``sparse: false``) on the
    local engine (what a cluster engine gives is the local one's, which the sparse runs
    show: the dense fits need not take cluster time). The fitted models by name
    (``sparse_<model>``, ``dense_<model>``) and the scores by model, in ticket order."""
    for sparse, on in (("true", engine), ("false", None)):
        name = "sparse" if sparse == "true" else "dense"
        record = run(write_pipeline(workdir, pipeline.format(
            name=name, data=data, drop=drop, sparse=sparse), f"{name}.yaml"),
            engine_instance=on)
        assert record["status"] == "succeeded"
    first, second = (f"sparse_{m}" for m in models)
    run(write_pipeline(workdir, SCORE_BOTH.format(data=data, first=first, second=second,
                                                  out=workdir / "scores"), "score.yaml"),
        engine_instance=engine)
    out: dict[str, Any] = {f"{kind}_{m}": ModelStore().load(f"{kind}_{m}").chain.steps[-1]
                           for kind in ("sparse", "dense") for m in models}
    for name in (first, second):
        out[f"scores_{name}"] = pq.read_table(workdir / "scores" / name).sort_by("ticket_id")
    return out


def in_process(op: Any, rows: pa.Table) -> Any:
    """``op`` fitted in process on ``rows`` as one partition."""
    from operators.base import drive, tree_reduce

    np_ = get_namespace("numpy")
    state, _ = drive(op, rows.schema, lambda partial: tree_reduce([partial(rows, np_)],
                                                                  op.combine))
    return op.fitted(state)


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")  # adam: 4
def test_tfidf_rows_train_one_mlp_on_every_engine(workdir: Path, engine,
                                                  few_ticket_files: Path) -> None:
    """mlp on a sparse TF-IDF column (its first layer on SciPy's CSR rows) through every
    engine and its partitions: by L-BFGS the network fitted in process on one partition
    and the term columns' network (sparse: false) to the optimiser's tolerance; by Adam,
    whose batches follow the partitioning by design, the local engine's on the same files
    and the term columns' (its batch order is theirs). The engine's scores of the files
    are those of the saved networks, and of the term columns' networks."""
    from operators.models.mlp import MLP

    got = sparse_and_dense_runs(workdir, engine, few_ticket_files, NETWORKS,
                                ["ticket_id"], ("lbfgs", "adam"))
    _, vectorized, rows = vectorized_tickets(["ticket_id"], FEW)
    terms = [f"text:{t}" for t in vectorized.vocabulary["text"]["terms"]]
    lbfgs = in_process(MLP(label="topic", hidden=[2], activation="tanh", l2=0.05, tol=1e-9,
                           max_iter=500, seed=2), rows)

    def same(a: Any, b: Any, rtol: float) -> None:
        assert a.features == b.features == terms and a.classes == b.classes
        for x, y in zip(a.weights + a.biases, b.weights + b.biases, strict=True):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-9)

    same(got["sparse_lbfgs"], lbfgs, 1e-6)
    same(got["dense_lbfgs"], got["sparse_lbfgs"], 1e-6)
    same(got["dense_adam"], got["sparse_adam"], 1e-9)
    if engine.name != "local":
        run(write_pipeline(workdir, NETWORKS.format(name="local", data=few_ticket_files,
                                                    drop=["ticket_id"], sparse="true"),
                           "local.yaml"))
        same(got["sparse_adam"], ModelStore().load("local_adam").chain.steps[-1], 1e-12)
    np_ = get_namespace("numpy")
    sparse_rows = vectorized.transform(tickets(FEW), None)
    for name in ("lbfgs", "adam"):
        scores = got[f"scores_sparse_{name}"]
        for model, rtol in ((got[f"sparse_{name}"], 1e-12), (got[f"dense_{name}"], 1e-6)):
            want = model.transform(sparse_rows, np_)
            assert scores.column("prediction").to_pylist() == \
                want.column("prediction").to_pylist()
            np.testing.assert_allclose(np.array(scores.column("probability").to_pylist()),
                                       np.array(want.column("probability").to_pylist()),
                                       rtol=rtol, atol=1e-15)


def test_tfidf_rows_grow_one_isolation_forest_on_every_engine(
        workdir: Path, engine, few_ticket_files: Path) -> None:
    """isolation_forest on a sparse TF-IDF column through every engine and its
    partitions: the forest fitted in process on one partition, node for node, where every
    row is drawn (max_samples: 1.0, its contamination threshold too) and where rows are
    drawn by the hash of the column as stored (max_samples: 64); where every row is
    drawn, the term columns' forest (sparse: false) and its scores. The engine's scores
    of the files are those of the forests fitted here."""
    from operators.models.isolation_forest import IsolationForest

    got = sparse_and_dense_runs(workdir, engine, few_ticket_files, FORESTS,
                                ["ticket_id", "topic"], ("every", "drawn"))
    _, vectorized, rows = vectorized_tickets(["ticket_id", "topic"], FEW)
    terms = [f"text:{t}" for t in vectorized.vocabulary["text"]["terms"]]
    every = in_process(IsolationForest(n_trees=15, max_samples=1.0, contamination=0.05,
                                       seed=3), rows)
    drawn = in_process(IsolationForest(n_trees=15, max_samples=64, seed=3), rows)

    def same(a: Any, b: Any) -> None:
        assert a.features == b.features == terms and a.max_samples == b.max_samples
        for key in a.NODES:
            np.testing.assert_allclose(a.nodes[key], b.nodes[key], rtol=1e-12, atol=0,
                                       err_msg=key)
        assert a.offset == pytest.approx(b.offset, rel=1e-12)

    same(got["sparse_every"], every)
    same(got["dense_every"], got["sparse_every"])
    same(got["sparse_drawn"], drawn)
    assert every.max_samples == FEW and drawn.max_samples == 64 and every.offset != -0.5
    np_ = get_namespace("numpy")
    sparse_rows = vectorized.transform(tickets(FEW), None)
    for name, model in (("every", every), ("drawn", drawn)):
        scores = got[f"scores_sparse_{name}"]
        want = model.transform(sparse_rows, np_)
        for column in ("prediction", "anomaly_score"):
            np.testing.assert_allclose(scores.column(column).to_numpy(),
                                       want.column(column).to_numpy(), rtol=1e-12,
                                       err_msg=column)
    # the term columns' forest scores the rows as the sparse column's
    dense = got["dense_every"].transform(sparse_rows, np_)
    for column in ("prediction", "anomaly_score"):
        np.testing.assert_array_equal(dense.column(column).to_numpy(),
                                      got["scores_sparse_every"].column(column).to_numpy())
    assert 0 < dense.column("prediction").to_numpy().sum() < FEW
