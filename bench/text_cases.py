"""Benchmark sides for text: sluice against scikit-learn.

Support tickets of 4-20 words drawn from a Zipf vocabulary of 20,000 words (with
capitals and punctuation); the topic (8 of them, the label) shifts which words a ticket
uses. Both sides learn a vocabulary of the 2,000 most frequent terms in at least 5
tickets, count them and fit a multinomial naive Bayes model, then print the vocabulary's
size and the first class's log-probability of the first term (equal when they agree):

* ``train_text_naive_bayes``: read -> ``vectorize_text`` (``min_df: 5``,
  ``max_features: 2000``) -> ``naive_bayes`` (``model_type: multinomial``) ->
  ``save_model`` on the local engine (``partition_mb: 4``: the term columns are dense,
  about 200 times the text's bytes, as the run's note says), against scikit-learn's
  ``CountVectorizer(min_df=5, max_features=2000)`` ``.fit_transform`` (a sparse matrix)
  + ``MultinomialNB().fit`` on the same files read with pyarrow.
* ``train_text_naive_bayes_sparse``: the same with ``sparse: true`` (one column of each
  row's terms, what scikit-learn's sparse matrix holds) and the default partitions.
* ``train_text_logistic_sparse``: TF-IDF of every term in at least 5 tickets (sparse) ->
  ``logistic_regression`` (L-BFGS) against ``TfidfVectorizer`` + ``LogisticRegression``.
* ``train_text_kmeans_sparse``: the same TF-IDF rows (sparse) -> ``kmeans`` (k 8, 20
  Lloyd passes) against ``TfidfVectorizer`` + ``KMeans`` on its CSR matrix.
* ``train_text_boosted_sparse``: TF-IDF of the 2,000 most frequent terms in at least 5
  tickets (sparse) -> ``gradient_boosted_trees`` (8 classes, 20 rounds, depth 6, 32 bins,
  a tenth held out) against ``TfidfVectorizer`` + XGBoost ``hist`` on its CSR matrix
  (which reads an absent term as missing, sluice as 0); each side's held-out accuracy
  (each its own tenth of the rows, by a row hash).
"""

from __future__ import annotations

import shutil
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.category_cases import BLOCK, write_blocks

WORDS = 20_000
TOPICS = 8
SEED = 0


def _block(block: int) -> pa.Table:
    vocab_rng = np.random.default_rng([SEED, 1])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(vocab_rng.choice(letters, size=int(n)))
                      for n in vocab_rng.integers(3, 10, WORDS)])
    p = 1.0 / np.arange(1, WORDS + 1) ** 1.05
    p /= p.sum()
    shift = vocab_rng.permutation(WORDS)[:TOPICS * 50].reshape(TOPICS, 50)
    rng = np.random.default_rng([SEED, 2, block])
    topics = rng.integers(0, TOPICS, BLOCK)
    lengths = rng.integers(4, 21, BLOCK)
    drawn = rng.choice(WORDS, size=int(lengths.sum()), p=p)
    own = rng.random(len(drawn)) < 0.2
    row_of = np.repeat(np.arange(BLOCK), lengths)
    drawn[own] = shift[topics[row_of[own]], rng.integers(0, 50, int(own.sum()))]
    tokens = words[drawn]
    capital = rng.random(len(tokens)) < 0.1
    tokens[capital] = np.char.capitalize(tokens[capital])
    ends = np.cumsum(lengths)
    texts = [" ".join(tokens[e - n:e]) + "." for e, n in zip(ends, lengths, strict=True)]
    return pa.table({"text": pa.array(texts), "topic": pa.array(topics.astype(np.int64))})


def tickets(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def train_text_naive_bayes_sluice_local(data: Path, scratch: Path) -> None:
    _sluice_text_naive_bayes(data, scratch, "partition_mb: 4", "")


def train_text_naive_bayes_sparse_sluice_local(data: Path, scratch: Path) -> None:
    _sluice_text_naive_bayes(data, scratch, "", "sparse: true")


def train_text_naive_bayes_sparse_sklearn(data: Path, scratch: Path) -> None:
    train_text_naive_bayes_sklearn(data, scratch)


def _sluice_text_naive_bayes(data: Path, scratch: Path, read: str, words: str) -> None:
    from pipelines.runner import run
    from pipelines.store import ModelStore

    models = scratch / "text_models"
    shutil.rmtree(models, ignore_errors=True)
    pipeline = scratch / "text_naive_bayes.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: text_naive_bayes
        steps:
          - op: read_parquet
            path: {data}
            {read}
          - op: vectorize_text
            columns: [text]
            min_df: 5
            max_features: 2000
            {words}
          - op: naive_bayes
            label: topic
            model_type: multinomial
          - op: save_model
            name: tickets
            profile: false
        """))
    run(pipeline, models=str(models), runs_dir=str(scratch / "runs"))
    chain = ModelStore(str(models)).load("tickets").chain.steps
    terms = chain[-2].vocabulary["text"]["terms"]
    model = chain[-1]
    print(f"  text naive_bayes sluice: {len(terms)} terms, first {terms[0]!r}, "
          f"log p[0, 0] {model.feature_log_prob[0, 0]:.15g}")


def train_text_naive_bayes_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.parquet as pq
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    table = pq.read_table(data)
    vectorizer = CountVectorizer(min_df=5, max_features=2000)
    counts = vectorizer.fit_transform(table.column("text").to_pylist())
    model = MultinomialNB().fit(counts, table.column("topic").to_numpy())
    terms = vectorizer.get_feature_names_out()
    print(f"  text naive_bayes scikit-learn: {len(terms)} terms, first {terms[0]!r}, "
          f"log p[0, 0] {model.feature_log_prob_[0, 0]:.15g}")


L2 = 1e-4
"""``train_text_logistic_sparse``'s penalty: sluice's ``l2`` (on the mean log-loss),
scikit-learn's ``C = 1 / (n l2)``."""
ITERATIONS = 40
"""... and its L-BFGS iterations on both sides (no tolerance stops either first): the
same work, each side's objective printed."""


def train_text_logistic_sparse_sluice_local(data: Path, scratch: Path) -> None:
    terms, metrics = _sluice_tfidf(data, scratch, "logistic", f"""\
        op: logistic_regression
        label: topic
        l2: {L2}
        solver: lbfgs
        max_iter: {ITERATIONS}
        tol: 1.0e-12""")
    print(f"  text logistic sluice: {terms} terms, "
          f"{metrics['iterations']} iterations, objective {metrics['loss']:.10g}")


def _sluice_tfidf(data: Path, scratch: Path, name: str, model: str, words: str = ""
                  ) -> tuple[int, dict[str, Any]]:
    """read -> vectorize_text (sparse TF-IDF of every term in >= 5 tickets; ``words``:
    another of its parameters) -> ``model`` (a step's YAML, its lines as in a list item)
    -> save_model, on the local engine: the vocabulary's size and the model step's
    metrics."""
    from pipelines.runner import run
    from pipelines.store import ModelStore

    models = scratch / "text_models"
    shutil.rmtree(models, ignore_errors=True)
    pipeline = scratch / f"text_{name}.yaml"
    step = textwrap.indent(textwrap.dedent(model), " " * 12).strip()
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: text_{name}
        steps:
          - op: read_parquet
            path: {data}
          - op: vectorize_text
            columns: [text]
            sparse: true
            min_df: 5
            idf: smooth
            norm: l2
            {words}
          - id: model
            {step}
          - op: save_model
            name: tickets
            profile: false
        """))
    with warnings.catch_warnings():  # stopped by max_iter on purpose
        warnings.simplefilter("ignore")
        record = run(pipeline, models=str(models), runs_dir=str(scratch / "runs"))
    chain = ModelStore(str(models)).load("tickets").chain.steps
    return len(chain[-2].vocabulary["text"]["terms"]), record["metrics"]["model"]


def train_text_logistic_sparse_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.parquet as pq
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    table = pq.read_table(data)
    warnings.simplefilter("ignore")  # stopped by max_iter on purpose
    X = TfidfVectorizer(min_df=5).fit_transform(table.column("text").to_pylist())
    y = table.column("topic").to_numpy()
    model = LogisticRegression(C=1.0 / (len(y) * L2), max_iter=ITERATIONS, tol=0.0).fit(X, y)
    proba = model.predict_proba(X)
    loss = -np.mean(np.log(proba[np.arange(len(y)), np.searchsorted(model.classes_, y)]))
    objective = loss + L2 / 2 * float((model.coef_ ** 2).sum())
    print(f"  text logistic scikit-learn: {X.shape[1]} terms, {int(model.n_iter_[0])} "
          f"iterations, objective {objective:.10g}")


CLUSTERS = 8
"""``train_text_kmeans_sparse``'s k (the tickets' topics) ..."""
LLOYD_PASSES = 20
"""... and its Lloyd passes on both sides (``tol: 0``): the same work, each side's
inertia printed (their starts differ: k-means|| against k-means++)."""


def train_text_kmeans_sparse_sluice_local(data: Path, scratch: Path) -> None:
    terms, metrics = _sluice_tfidf(data, scratch, "kmeans", f"""\
        op: kmeans
        features: [text]
        k: {CLUSTERS}
        max_iter: {LLOYD_PASSES}
        tol: 0.0""")
    print(f"  text kmeans sluice: {terms} terms, "
          f"{metrics['iterations']} iterations, inertia {metrics['inertia']:.10g}")


BOOSTED_TEXT = {"rounds": 20, "depth": 6, "bins": 32, "terms": 2000, "held": 0.1}
"""``train_text_boosted_sparse`` on both sides: rounds, depth, value bins per feature,
vocabulary, held-out fraction."""


def train_text_boosted_sparse_sluice_local(data: Path, scratch: Path) -> None:
    b = BOOSTED_TEXT
    terms, metrics = _sluice_tfidf(data, scratch, "boosted", f"""\
        op: gradient_boosted_trees
        label: topic
        n_trees: {b['rounds']}
        max_depth: {b['depth']}
        max_bins: {b['bins']}
        max_histogram_mb: 256
        validation_fraction: {b['held']}""", f"max_features: {b['terms']}")
    print(f"  text boosted sluice: {terms} terms, held-out accuracy "
          f"{metrics['validation']['accuracy']:.4f}")


def train_text_kmeans_sparse_sklearn(data: Path, scratch: Path) -> None:
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    table = pq.read_table(data, columns=["text"])
    X = TfidfVectorizer(min_df=5).fit_transform(table.column("text").to_pylist())
    model = KMeans(n_clusters=CLUSTERS, n_init=1, max_iter=LLOYD_PASSES, tol=0.0,
                   algorithm="lloyd", random_state=0).fit(X)
    print(f"  text kmeans scikit-learn: {X.shape[1]} terms, {int(model.n_iter_)} "
          f"iterations, inertia {model.inertia_:.10g}")


def train_text_boosted_sparse_xgboost(data: Path, scratch: Path) -> None:
    import os

    import pyarrow.parquet as pq
    import xgboost
    from sklearn.feature_extraction.text import TfidfVectorizer

    from operators.models.common import holdout_mask

    b = BOOSTED_TEXT
    table = pq.read_table(data)
    held = holdout_mask(table, b["held"], 0)
    texts = np.array(table.column("text").to_pylist(), dtype=object)
    y = table.column("topic").to_numpy()
    # the vocabulary of every row, as vectorize_text's before the model holds rows out
    X = TfidfVectorizer(min_df=5, max_features=b["terms"]).fit_transform(texts)
    model = xgboost.XGBClassifier(n_estimators=b["rounds"], max_depth=b["depth"],
                                  max_bin=b["bins"], learning_rate=0.1, tree_method="hist",
                                  random_state=0, n_jobs=os.cpu_count()).fit(X[~held], y[~held])
    accuracy = model.score(X[held], y[held])
    print(f"  text boosted xgboost: {X.shape[1]} terms, held-out accuracy {accuracy:.4f}")
