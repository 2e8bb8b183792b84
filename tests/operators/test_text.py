"""vectorize_text against scikit-learn's CountVectorizer / TfidfVectorizer and MLlib's
RegexTokenizer, StopWordsRemover, CountVectorizer and IDF, over in-memory partitions."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from operators.base import DataError, SchemaError, drive, tree_reduce
from operators.features.text import (
    MAX_TERMS,
    VectorizeText,
    VectorizeTextFitted,
)
from operators.testing.kit import roundtrip, split


def fit(op: VectorizeText, parts: list[pa.Table]) -> VectorizeTextFitted:
    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, None) for p in parts], op.combine)

    state, passes = drive(op, parts[0].schema, aggregate)
    assert passes == 1
    return op.fitted(state)


def corpus(rows: int = 600, seed: int = 0, words: int = 120) -> list[str | None]:
    """Texts of a Zipf vocabulary: capitals, accents, digits, underscores, one-letter
    words, punctuation and runs of spaces; some empty."""
    rng = np.random.default_rng(seed)
    stems = ["refund", "slow", "delivery", "great", "café", "naïve", "app", "crash",
             "login_error", "über", "support", "price", "straße", "résumé", "x", "a", "ok"]
    vocab = [stems[i % len(stems)] + ("" if i < len(stems) else str(i)) for i in range(words)]
    vocab = [w.capitalize() if i % 5 == 0 else w for i, w in enumerate(vocab)]
    p = 1.0 / np.arange(1, words + 1) ** 1.1
    p /= p.sum()
    seps = [" ", ", ", "! ", " - ", "   ", "... ", "\t", "/"]
    out = []
    for _ in range(rows):
        n = int(rng.integers(0, 14))
        picked = rng.choice(vocab, size=n, p=p)
        out.append("".join(w + seps[int(rng.integers(0, len(seps)))] for w in picked))
    return out


def matrix(fitted: VectorizeTextFitted, table: pa.Table, column: str = "text") -> np.ndarray:
    out = fitted.transform(table, None)
    names = [n for n in out.column_names if n.startswith(f"{column}:")]
    return np.column_stack([out.column(n).to_numpy() for n in names])


SKLEARN_CASES = [
    ({}, {}),
    ({"binary": True}, {"binary": True}),
    ({"min_df": 3, "max_df": 0.2}, {"min_df": 3, "max_df": 0.2}),
    ({"min_df": 0.01, "max_df": 40}, {"min_df": 0.01, "max_df": 40}),
    ({"ngram_range": [1, 3], "min_df": 2}, {"ngram_range": (1, 3), "min_df": 2}),
    ({"ngram_range": [2, 2], "stop_words": ["a", "ok", "x"]},
     {"ngram_range": (2, 2), "stop_words": ["a", "ok", "x"]}),
    ({"idf": "smooth", "norm": "l2"}, {"tfidf": True}),
    ({"idf": "plain", "norm": "l1", "sublinear_tf": True, "ngram_range": [1, 2]},
     {"tfidf": True, "smooth_idf": False, "norm": "l1", "sublinear_tf": True,
      "ngram_range": (1, 2)}),
    ({"idf": "smooth", "binary": True, "max_df": 0.5}, {"tfidf": True, "binary": True,
                                                       "max_df": 0.5, "norm": None}),
    ({"lowercase": False, "min_token_length": 1, "separators": r"\s+"},
     {"lowercase": False, "token_pattern": r"\S+"}),
    ({"analyzer": "char", "ngram_range": [2, 4], "min_df": 2},
     {"analyzer": "char", "ngram_range": (2, 4), "min_df": 2}),
    ({"analyzer": "char_wb", "ngram_range": [1, 3], "idf": "smooth", "norm": "l2"},
     {"tfidf": True, "analyzer": "char_wb", "ngram_range": (1, 3)}),
]


@pytest.mark.parametrize("parts", [1, 3, 7])
@pytest.mark.parametrize("ours,theirs", SKLEARN_CASES)
def test_equal_to_scikit_learns_vectorizers(ours: dict, theirs: dict, parts: int) -> None:
    docs = corpus()
    table = pa.table({"text": docs, "n": np.arange(len(docs))})
    shuffled = table.take(np.random.default_rng(parts).permutation(table.num_rows))
    fitted = fit(VectorizeText(columns=["text"], **ours), split(shuffled, parts))
    theirs = dict(theirs)
    cls = TfidfVectorizer if theirs.pop("tfidf", False) else CountVectorizer
    reference = cls(**theirs).fit(docs)
    assert fitted.vocabulary["text"]["terms"] == sorted(reference.vocabulary_)
    np.testing.assert_allclose(matrix(fitted, table), reference.transform(docs).toarray(),
                               rtol=1e-12, atol=1e-15)
    if cls is TfidfVectorizer:
        np.testing.assert_allclose(fitted.vocabulary["text"]["idf"], reference.idf_,
                                   rtol=1e-13)


@pytest.mark.parametrize("binary", [False, True])
def test_max_features_keeps_scikit_learns_most_frequent_terms(binary: bool) -> None:
    """The most frequent terms (in the most rows when binary, as scikit-learn ranks): the
    cut is placed where no two terms tie, so that its unstable order does not matter."""
    docs = corpus(rows=800, seed=4)
    table = pa.table({"text": docs})
    full = CountVectorizer(binary=binary).fit_transform(docs)
    counts = np.sort(np.asarray(full.sum(axis=0)).ravel())[::-1]
    k = next(i for i in range(10, len(counts)) if counts[i - 1] > counts[i])
    fitted = fit(VectorizeText(columns=["text"], max_features=k, binary=binary),
                 split(table, 4))
    reference = CountVectorizer(max_features=k, binary=binary).fit(docs)
    assert fitted.vocabulary["text"]["terms"] == sorted(reference.vocabulary_)
    np.testing.assert_array_equal(matrix(fitted, table), reference.transform(docs).toarray())


def test_tokens_of_any_script_are_scikit_learns() -> None:
    """The default separators and min_token_length 2 split text as scikit-learn's
    token_pattern (?u)\\b\\w\\w+\\b over letters, marks, digits and symbols of many
    scripts (Python's \\w is RE2's [\\p{L}\\p{N}_])."""
    rng = np.random.default_rng(1)
    pool = [chr(c) for c in range(0x20, 0x3000)
            if unicodedata.category(chr(c))[0] in "LNMPSZ" and chr(c) not in "\x85"]
    docs = ["".join(rng.choice(pool, size=int(rng.integers(0, 40)))) for _ in range(400)]
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], lowercase=False), split(table, 3))
    analyzer = CountVectorizer(lowercase=False).build_analyzer()
    expected = sorted({t for d in docs for t in analyzer(d)})
    assert fitted.vocabulary["text"]["terms"] == expected
    assert all(re.fullmatch(r"\w\w+", t) for t in expected)


def test_lower_casing_is_scikit_learns_and_mllibs_where_arrows_differs() -> None:
    """A capital sigma ending a word is lower-cased to the final sigma (Unicode's
    Final_Sigma, as Python's str.lower and Java's toLowerCase: 'ΟΔΟΣ' is 'οδος', the word
    written in lower case) and 'İ' to 'i' + a combining dot above; Arrow's utf8_lower
    gives 'οδοσ' and 'i'. Stop words are lower-cased the same way."""
    docs = ["ΟΔΟΣ ΑΘΗΝΑΣ, Οδός Αθηνάς", "ΣΑΣ ΕΥΧΑΡΙΣΤΩ; σας ευχαριστώ", "İSTANBUL İzmir",
            "ΣΟΦΙΑ ΚΑΙ ΝΙΚΟΣ", None, "Ως ΟΛΟΣ ΣΑΣ"]
    table = pa.table({"text": pa.array(docs, pa.large_string())})
    theirs = [d or "" for d in docs]
    for stop in (None, ["ΣΑΣ"]):
        fitted = fit(VectorizeText(columns=["text"], stop_words=stop), split(table, 2))
        reference = CountVectorizer(stop_words=stop and ["σας"]).fit(theirs)
        assert fitted.vocabulary["text"]["terms"] == sorted(reference.vocabulary_)
        np.testing.assert_array_equal(matrix(fitted, table),
                                      reference.transform(theirs).toarray())
    assert "οδος" in fitted.vocabulary["text"]["terms"]


def test_lower_casing_is_mllibs_regex_tokenizers(spark: Any) -> None:
    from pyspark.ml.feature import RegexTokenizer

    docs = ["ΟΔΟΣ ΑΘΗΝΑΣ, Οδός", "İSTANBUL İzmir ΣΑΣ.", "ΣΟΦΙΑ ΚΑΙ ΝΙΚΟΣ"]
    frame = spark.spark.createDataFrame(list(enumerate(docs)), ["id", "text"])
    tokens = RegexTokenizer(inputCol="text", outputCol="tokens", pattern="\\s+",
                            minTokenLength=1).transform(frame).select("tokens").collect()
    fitted = fit(VectorizeText(columns=["text"], separators=r"\s+", min_token_length=1),
                 [pa.table({"text": docs})])
    assert fitted.vocabulary["text"]["terms"] == sorted({t for r in tokens for t in r[0]})


def test_null_text_is_a_row_of_zeros_and_unseen_terms_count_nowhere() -> None:
    table = pa.table({"text": ["good service", None, "good good", ""]})
    fitted = fit(VectorizeText(columns=["text"], idf="smooth"), [table])
    assert fitted.vocabulary["text"]["terms"] == ["good", "service"]
    new = pa.table({"text": [None, "bad service, never again", "GOOD"]})
    got = matrix(fitted, new)
    idf = np.log(5 / np.array([3.0, 2.0])) + 1  # 4 rows, the null one among them
    np.testing.assert_allclose(got, [[0, 0], [0, idf[1]], [idf[0], 0]], rtol=1e-15)


def test_columns_take_the_place_of_each_text_column_and_state_survives() -> None:
    table = pa.table({"a": [1, 2], "title": ["Late delivery", "late again"],
                      "body": pa.array(["refund please", "refund"]).dictionary_encode(),
                      "z": [0.5, 1.5]})
    op = VectorizeText(columns=["title", "body"])
    fitted = fit(op, [table])
    out = fitted.transform(table, None)
    assert out.column_names == ["a", "title:again", "title:delivery", "title:late",
                                "body:please", "body:refund", "z"]
    assert out.schema == fitted.output_schema(table.schema)
    assert op.output_schema(table.schema).names == out.column_names  # once fitted
    assert out.column("title:late").to_pylist() == [1.0, 1.0]
    again = roundtrip(fitted)
    assert again.transform(table, None).equals(out)
    assert fitted.derived_from()["body:refund"] == ["body"]


def test_equal_to_mllibs_tokenizer_stop_words_count_vectorizer_and_idf(spark: Any) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import (
        IDF,
        RegexTokenizer,
        StopWordsRemover,
    )
    from pyspark.ml.feature import (
        CountVectorizer as MLlibCountVectorizer,
    )

    docs = [d.strip() for d in corpus(rows=300, seed=2)]
    stop = ["a", "ok", "the"]
    frame = spark.spark.createDataFrame([(i, d) for i, d in enumerate(docs)], ["id", "text"])
    model = Pipeline(stages=[
        RegexTokenizer(inputCol="text", outputCol="tokens", pattern="\\s+",
                       minTokenLength=1),
        StopWordsRemover(inputCol="tokens", outputCol="kept", stopWords=stop),
        MLlibCountVectorizer(inputCol="kept", outputCol="tf", minDF=2.0),
        IDF(inputCol="tf", outputCol="tfidf"),
    ]).fit(frame)
    rows = sorted(model.transform(frame).select("id", "tfidf").collect())
    vocabulary = model.stages[2].vocabulary
    expected = np.zeros((len(docs), len(vocabulary)))
    for r in rows:
        expected[r["id"]] = r["tfidf"].toArray()
    order = np.argsort(vocabulary)

    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], separators=r"\s+", min_token_length=1,
                               stop_words=stop, min_df=2, idf="spark"), split(table, 4))
    assert fitted.vocabulary["text"]["terms"] == sorted(vocabulary)
    np.testing.assert_allclose(matrix(fitted, table), expected[:, order], rtol=1e-12,
                               atol=1e-15)


def test_errors_say_what_and_how() -> None:
    table = pa.table({"text": ["one two", "two three"], "n": [1, 2]})
    with pytest.raises(SchemaError, match="column 'n' is int64; vectorize_text reads text") \
            as err:
        VectorizeText(columns=["n"]).output_schema(table.schema)
    assert "cast 'n' to string" in err.value.hint
    four = pa.table({"text": ["one two", "two three", "four", None]})
    with pytest.raises(DataError, match=r"no term of 'text' is left for the vocabulary: all 4 of "
                                        r"its terms are in fewer than 3 \(min_df: 3\) or more "
                                        r"than 4 \(max_df: 1.0\) of the 4 rows") as err:
        fit(VectorizeText(columns=["text"], min_df=3), split(four, 2))
    assert "lower min_df" in err.value.hint
    with pytest.raises(DataError, match="no term of 'text'.*it has no terms"):
        fit(VectorizeText(columns=["text"], min_token_length=6), [table])
    with pytest.raises(DataError, match="no rows to learn the terms of 'text' from") as err:
        fit(VectorizeText(columns=["text"]), split(table.slice(0, 0), 2))
    assert "check the input and the filters before it" in err.value.hint
    with pytest.raises(DataError, match=r"max_df \(0.1: 0.2 of the 2 rows\) is below min_df"):
        fit(VectorizeText(columns=["text"], max_df=0.1), [table])
    with pytest.raises(ValidationError, match="min_df \\(5\\) is above max_df \\(2\\)"):
        VectorizeText(columns=["text"], min_df=5, max_df=2)
    with pytest.raises(ValidationError, match="min_df must be a number of rows or a fraction, "
                                              "got True"):
        VectorizeText(columns=["text"], min_df=True)
    with pytest.raises(ValidationError, match="a fraction of the rows must lie in"):
        VectorizeText(columns=["text"], max_df=1.5)
    with pytest.raises(ValidationError, match="ngram_range must be"):
        VectorizeText(columns=["text"], ngram_range=[2, 1])
    with pytest.raises(ValidationError, match="not a regular expression"):
        VectorizeText(columns=["text"], separators="[a-")
    with pytest.raises(ValidationError, match="matches an empty string"):
        VectorizeText(columns=["text"], separators="x*")
    # empty only between characters: Arrow's split of 'ab cd' at them never ended
    for pattern in (r"\b", r"\B", "(?:a|)", r"(?:\s|\b)", "$", r"\s*$"):
        with pytest.raises(ValidationError, match="matches an empty string"):
            VectorizeText(columns=["text"], separators=pattern)
    clash = pa.table({"text": ["one"], "text:one": [1.0]})
    fitted = fit(VectorizeText(columns=["text"], min_token_length=1), [clash])
    with pytest.raises(SchemaError, match="adds column 'text:one' that the input already"):
        fitted.output_schema(clash.schema)
    two = pa.table({"a": ["b:c"], "a:b": ["c"]})  # a's term 'b:c' and a:b's term 'c'
    fitted = fit(VectorizeText(columns=["a", "a:b"], separators=r"\s+", min_token_length=1),
                 [two])
    with pytest.raises(SchemaError, match="makes column 'a:b:c' of both 'a' and 'a:b'") as err:
        fitted.output_schema(two.schema)
    assert err.value.hint == "rename 'a:b' first"


def test_a_vocabulary_too_wide_for_columns_asks_for_max_features() -> None:
    words = [f"w{i}" for i in range(MAX_TERMS + 5)]
    table = pa.table({"text": [" ".join(words[i::4]) for i in range(4)]})
    with pytest.raises(DataError, match=f"has {MAX_TERMS + 5:,} terms, over") as err:
        fit(VectorizeText(columns=["text"]), split(table, 2))
    assert "max_features: 5000" in err.value.hint
    fitted = fit(VectorizeText(columns=["text"], max_features=MAX_TERMS + 5), [table])
    assert len(fitted.vocabulary["text"]["terms"]) == MAX_TERMS + 5


def test_english_stop_words_are_the_listed_words() -> None:
    from operators.features.text import ENGLISH

    docs = ["The refund would not arrive", "Yourselves and THE courier, however late",
            "an app that crashes"]
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], stop_words="english"), [table])
    reference = CountVectorizer(stop_words=sorted(ENGLISH)).fit(docs)
    assert fitted.vocabulary["text"]["terms"] == sorted(reference.vocabulary_) == [
        "app", "arrive", "courier", "crashes", "late", "refund"]
    with pytest.raises(ValidationError, match="stop_words"):
        VectorizeText(columns=["text"], stop_words="french")


@pytest.mark.parametrize("ours,theirs", [
    ({}, {"norm": None}),
    ({"norm": "l2", "ngram_range": [1, 2]}, {"norm": "l2", "ngram_range": (1, 2)}),
    ({"binary": True, "stop_words": ["a", "ok"]},
     {"norm": None, "binary": True, "stop_words": ["a", "ok"]}),
])
@pytest.mark.parametrize("parts", [1, 4])
def test_hashed_columns_are_scikit_learns_hashing_vectorizer(ours: dict, theirs: dict,
                                                             parts: int) -> None:
    from sklearn.feature_extraction.text import HashingVectorizer

    docs = corpus(rows=300, seed=6)
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], num_features=64, hashing="sklearn", **ours),
                 split(table, parts))
    out = fitted.transform(table, None)
    assert out.column_names == [f"text:#{i}" for i in range(64)]
    reference = HashingVectorizer(n_features=64, **theirs).transform(docs).toarray()
    np.testing.assert_allclose(matrix(fitted, table, "text"), reference, rtol=1e-13,
                               atol=1e-15)
    if not ours.get("binary"):
        assert (reference < 0).any()  # the signs are scikit-learn's too


def test_hashed_columns_and_idf_are_mllibs_hashing_tf_and_idf(spark: Any) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import IDF, HashingTF, RegexTokenizer

    docs = [d.strip() for d in corpus(rows=300, seed=7)]
    frame = spark.spark.createDataFrame([(i, d) for i, d in enumerate(docs)], ["id", "text"])
    model = Pipeline(stages=[
        RegexTokenizer(inputCol="text", outputCol="tokens", pattern="\\s+", minTokenLength=1),
        HashingTF(inputCol="tokens", outputCol="tf", numFeatures=50),
        IDF(inputCol="tf", outputCol="tfidf"),
    ]).fit(frame)
    expected = np.zeros((len(docs), 50))
    for r in model.transform(frame).select("id", "tfidf").collect():
        expected[r["id"]] = r["tfidf"].toArray()
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], separators=r"\s+", min_token_length=1,
                               num_features=50, idf="spark"), split(table, 3))
    np.testing.assert_allclose(matrix(fitted, table), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fitted.vocabulary["text"]["idf"], model.stages[2].idf.toArray(),
                               rtol=1e-13)


def test_hashing_refuses_a_vocabularys_limits() -> None:
    with pytest.raises(ValidationError, match="min_df limits a learned vocabulary"):
        VectorizeText(columns=["text"], num_features=8, min_df=2)
    with pytest.raises(ValidationError, match="max_features limits a learned vocabulary"):
        VectorizeText(columns=["text"], num_features=8, max_features=4)
    with pytest.raises(ValidationError, match="set num_features too"):
        VectorizeText(columns=["text"], hashing="sklearn")
    with pytest.raises(ValidationError, match="use hashing: spark"):
        VectorizeText(columns=["text"], num_features=8, hashing="sklearn", sublinear_tf=True)
    table = pa.table({"text": ["never seen in training"]})
    fitted = fit(VectorizeText(columns=["text"], num_features=8),
                 [pa.table({"text": ["something else"]})])
    assert matrix(fitted, table).sum() == 4  # unseen terms count: no vocabulary


@pytest.mark.parametrize("analyzer", ["char", "char_wb"])
def test_character_ngrams_of_any_text_are_scikit_learns(analyzer: str) -> None:
    """n-grams of characters, white space of every kind (tabs, no-break and ideographic
    spaces, separators U+001C-U+001F, NEL) as Python splits and collapses it, characters
    of 1 to 4 UTF-8 bytes."""
    rng = np.random.default_rng(5)
    spaces = [" ", "  ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u2003",
              "\u2028", "\u3000"]
    pool = list("abcXYZé日本語ß") + ["\U0001F600", "\u0301"] + spaces
    docs = ["".join(rng.choice(pool, size=int(rng.integers(0, 25)))) for _ in range(300)]
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], analyzer=analyzer, ngram_range=[1, 4]),
                 split(table, 3))
    reference = CountVectorizer(analyzer=analyzer, ngram_range=(1, 4)).fit(docs)
    assert fitted.vocabulary["text"]["terms"] == sorted(reference.vocabulary_)
    np.testing.assert_array_equal(matrix(fitted, table), reference.transform(docs).toarray())


def test_word_settings_are_refused_with_character_ngrams() -> None:
    with pytest.raises(ValidationError, match="stop_words splits text into words, and "
                                              "analyzer: char_wb takes n-grams of characters"):
        VectorizeText(columns=["text"], analyzer="char_wb", stop_words="english")
    with pytest.raises(ValidationError, match="min_token_length splits text into words"):
        VectorizeText(columns=["text"], analyzer="char", min_token_length=1)


def test_hashed_plain_idf_of_a_column_no_row_has_counts_nowhere() -> None:
    """idf: plain is ln(n / df) + 1, infinite for a hashed column no fitted row falls in:
    such a column weighs 0 (as a term outside a vocabulary counts nowhere), so the
    fitted rows are scikit-learn's HashingVectorizer + TfidfTransformer(smooth_idf=False)
    (whose sparse zeros stay zero; dense ones times infinity were NaN in every row)."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.pipeline import make_pipeline

    docs = corpus(rows=40, seed=9)
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], num_features=256, hashing="sklearn",
                               idf="plain", norm="l2"), split(table, 2))
    reference = make_pipeline(HashingVectorizer(n_features=256, norm=None),
                              TfidfTransformer(smooth_idf=False))
    with np.errstate(divide="ignore"):
        expected = reference.fit_transform(docs).toarray()
    got = matrix(fitted, table)
    assert (np.asarray(fitted.vocabulary["text"]["df"]) == 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    idf = np.asarray(fitted.vocabulary["text"]["idf"])
    assert np.isfinite(idf).all()
    empty = np.flatnonzero(np.asarray(fitted.vocabulary["text"]["df"]) == 0)
    unseen = next(w for w in (f"zz{i}" for i in range(10_000))
                  if fit(VectorizeText(columns=["text"], num_features=256, hashing="sklearn"),
                         [pa.table({"text": [w]})]).vocabulary["text"]["df"][empty[0]])
    scored = matrix(fitted, pa.table({"text": [unseen, f"{docs[0]} {unseen}"]}))
    assert np.isfinite(scored).all() and scored[0].sum() == 0
    np.testing.assert_allclose(scored[1], got[0], rtol=1e-12)


def test_the_widening_note_names_what_to_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed columns have no max_features (it is refused with num_features): the note
    says to lower num_features there, and max_features for a vocabulary (past a total of
    no bytes here: the run's threshold is 1 GiB)."""
    import operators.features.text as text

    monkeypatch.setattr(text, "NOTE_BYTES", 0)
    table = pa.table({"text": ["a b c d e f g h", "i j k l m n o p"]})
    for params, lower in (({"num_features": 512}, "num_features"),
                          ({"ngram_range": [1, 6]}, "max_features")):
        op = VectorizeText(columns=["text"], min_token_length=1, **params)
        state, _ = drive(op, table.schema, lambda partial, op=op: partial(table, None))
        note = op.metrics(state)["note"]
        assert "grows" in note and f"partition_mb, or {lower}, or keep each row's terms " \
            "only (sparse: true)" in note
        # a sparse column does not widen the rows: no note
        op = VectorizeText(columns=["text"], min_token_length=1, sparse=True, **params)
        state, _ = drive(op, table.schema, lambda partial, op=op: partial(table, None))
        assert "note" not in op.metrics(state)


@pytest.mark.parametrize("n", [7, 64, 1000])
def test_the_int_min_hash_is_placed_and_signed_as_scikit_learn_does(n: int) -> None:
    """'aaaiTBFZ' hashes to -2**31 (seed 0), whose absolute value a 32-bit integer cannot
    hold: HashingVectorizer puts it at (2**31 - 1 - (n - 1)) % n, negative."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.utils import murmurhash3_32

    assert murmurhash3_32("aaaiTBFZ", seed=0) == -2**31
    docs = ["aaaiTBFZ", "aaaiTBFZ aaaiTBFZ other", "other words"]
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], num_features=n, hashing="sklearn",
                               lowercase=False), [table])
    reference = HashingVectorizer(n_features=n, lowercase=False, norm=None)
    np.testing.assert_array_equal(matrix(fitted, table), reference.transform(docs).toarray())
    assert matrix(fitted, table)[0, (2**31 - 1 - (n - 1)) % n] == -1


def test_a_partition_too_large_for_dense_columns_says_how_to_split_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a partition's term columns would take more than a quarter of the memory
    here (a limit of 1 KB), an error saying how much and what to make smaller,
    before the allocation (which would succeed and have the process killed later)."""
    import operators.features.text as text

    table = pa.table({"text": [f"w{i} w{i + 1} w{i + 2}" for i in range(200)]})
    fitted = fit(VectorizeText(columns=["text"]), [table])
    assert matrix(fitted, table).shape == (200, 202)  # 323 KB: under this machine's limit
    monkeypatch.setattr(text, "dense_limit", lambda: 1024.0)
    with pytest.raises(DataError, match=r"a partition of 200 rows makes 'text''s 202 term "
                                        r"columns \(dense float64\): 0.0 GiB, over 25% of "
                                        r"the memory here") as err:
        fitted.transform(table, None)
    assert "partition_mb" in err.value.hint and "row group" in err.value.hint
