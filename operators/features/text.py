"""vectorize_text: a text column as term counts or TF-IDF weights, a float64 column per
term of a vocabulary learned over all partitions (scikit-learn's CountVectorizer and
TfidfVectorizer; MLlib's RegexTokenizer, StopWordsRemover, NGram, CountVectorizer and IDF
in one step)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import (
    DataError,
    Estimator,
    Params,
    SchemaError,
    Transform,
    register,
    register_fitted,
    require_columns,
)
from operators.features.columns import plain, unique_names
from operators.hashing import murmur3_32
from operators.sparse import (
    from_csr,
    indptr_of,
    past_memory_share,
    pending_field,
    sparse_field,
)

MAX_TERMS = 10_000
"""The most terms (columns) a vocabulary may have when ``max_features`` is not given."""
WIDENING_NOTE = 20.0
"""How many times wider than its text a row's term columns may be before the run says
so (a partition of text becomes that many times its size in memory)..."""
NOTE_BYTES = 1 << 30
"""... when the fitted rows' term columns would take more than this in all."""
MEMORY_SHARE = 0.25
"""A partition's term columns may take at most this share of the memory a process may
use (``operators.processes.usable_memory``: a container's limit, or the machine's): past
it, an error that says how to make partitions smaller (where the allocation would
succeed and the kernel then kill the process mid-run, with no word of why)."""


def dense_limit() -> float:
    """The most bytes one partition's term columns may take here (no limit where the
    machine does not say its memory)."""
    from operators.processes import usable_memory

    memory = usable_memory()
    return float("inf") if memory is None else MEMORY_SHARE * memory

SEPARATORS = r"[^\p{L}\p{N}_]+"
"""Anything but letters, digits and underscores: with ``min_token_length: 2``,
scikit-learn's default ``token_pattern`` (runs of two or more word characters)."""

_ENGLISH_WORDS = """
a about above after again against all almost also although am among an and another any
anyone anything are around as at be because been before being below between both but by
can cannot could did do does doing done down during each either else enough etc even ever
every few for from further had has have having he her here hers herself him himself his
how however i if in into is it its itself just least less let like many may me might
more most much must my myself neither no nor not now of off often on once one only onto
or other others otherwise our ours ourselves out over own per perhaps quite rather
same several shall she should since so some such than that the their theirs them
themselves then there therefore these they this those though through thus to together
too toward towards under until up upon us very via was we well were what whatever when
whenever where whereas wherever whether which while who whoever whom whose why will with
within without would yet you your yours yourself yourselves
"""
ENGLISH = frozenset(_ENGLISH_WORDS.split())
"""``stop_words: english``: common English function words (pronouns, articles,
prepositions, conjunctions, auxiliaries), all lower case; sluice's own list."""

_PROBES = ("", "a", "ab", "a b", "ab cd", " ", " a", "a ", ".", "a.b", "_", "1", "x", "xx",
           "A", "Ab", "é", "\t")
"""Texts a separator is tried on: one that matches an empty string within any is refused."""

_NO_TERMS = pa.schema({"term": pa.string(), "tf": pa.int64(), "df": pa.int64()})
"""The columns of ``term_stats`` (no Arrow array at import: pyarrow's first one imports
pandas, which ``sluice ops`` does without)."""


def _count(value: int | float, name: str) -> int | float:
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"a fraction of the rows must lie in [0, 1], got {value} (a "
                         "number of rows is written without a decimal point)")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"a number of rows must be at least 0, got {value}")
    return value


class VectorizeTextParams(Params):
    columns: list[str] = Field(min_length=1, description="string (or dictionary of string) "
                                                         "columns of text, each replaced by "
                                                         "its terms' columns `<col>:<term>`")
    lowercase: bool = Field(True, description="lower-case the text before splitting it")
    analyzer: Literal["word", "char", "char_wb"] = Field(
        "word", description="word: terms are n-grams of tokens; char: n-grams of characters "
                            "of the text (runs of white space as one space); char_wb: of "
                            "each word padded with a space (scikit-learn's analyzers: for "
                            "short, noisy text such as names)")
    separators: str = Field(
        SEPARATORS, description="a regular expression (RE2) of what separates tokens "
                                "(MLlib's RegexTokenizer `pattern`); the default splits at "
                                "anything but letters, digits and `_`")
    min_token_length: int = Field(
        2, ge=1, description="shorter tokens are dropped (2 with the default separators: "
                             "scikit-learn's token_pattern; MLlib's RegexTokenizer: 1); "
                             "a length in characters, as scikit-learn counts (MLlib counts "
                             "UTF-16 units: an emoji, or another character past U+FFFF, "
                             "is 2 there)")
    stop_words: Literal["english"] | list[str] | None = Field(
        None, description="tokens removed before n-grams are made (lower-cased too when "
                          f"`lowercase`); `english`: {len(ENGLISH)} common English "
                          "function words (sluice's list: not scikit-learn's nor MLlib's)")
    ngram_range: tuple[int, int] = Field(
        (1, 1), description="[min_n, max_n]: the n-grams of consecutive tokens taken as "
                            "terms, joined by one space ([1, 2]: words and pairs); of "
                            "characters with analyzer char or char_wb")
    min_df: int | float = Field(
        1, description="terms in fewer rows (an integer) or a smaller fraction of the rows "
                       "(a float in [0, 1]) are left out; 1.0 is every row, as scikit-learn "
                       "reads it (MLlib's minDF 1.0 is one row: write 1)")
    max_df: int | float = Field(
        1.0, description="terms in more rows (an integer) or a larger fraction of the rows "
                         "(a float) are left out: corpus-specific stop words")
    max_features: int | None = Field(
        None, ge=1, description="keep only the terms most frequent over all rows (equal "
                                f"counts: the first in sorted order); without it (and "
                                f"without sparse) a vocabulary over {MAX_TERMS:,} terms is an "
                                "error")
    sparse: bool = Field(
        False, description="one sparse column `<col>` in the text's place (each row's "
                           "non-zero terms only: struct<indices, values>, as MLlib's "
                           "SparseVector and scikit-learn's sparse matrix) instead of a "
                           "float64 column per term: rows stay about as small as their "
                           "text. naive_bayes, logistic_regression, linear_regression, "
                           "kmeans, decision_tree, random_forest, gradient_boosted_trees, "
                           "isolation_forest, select_features, evaluate_clusters, pca and "
                           "mlp read it (its terms "
                           "are their features "
                           "`<col>:<term>`); other steps need the columns")
    binary: bool = Field(False, description="1 where a term occurs, whatever its count")
    sublinear_tf: bool = Field(False, description="a count c as 1 + ln(c)")
    idf: Literal["none", "smooth", "plain", "spark"] = Field(
        "none", description="inverse document frequency weights: smooth: "
                            "ln((1 + n) / (1 + df)) + 1 (scikit-learn's default), plain: "
                            "ln(n / df) + 1 (its smooth_idf=False; 0 for a hashed "
                            "column no row had), spark: "
                            "ln((n + 1) / (df + 1)) (MLlib's IDF); n: the fitted rows")
    norm: Literal["l1", "l2"] | None = Field(
        None, description="scale each row's terms of a column to unit l1 or l2 norm (after "
                          "the weights; TfidfVectorizer's default is l2)")
    num_features: int | None = Field(
        None, ge=1, description="hash each term to one of this many columns `<col>:#<i>` "
                                "instead of learning a vocabulary (MLlib's HashingTF, "
                                "scikit-learn's HashingVectorizer): no vocabulary to keep, "
                                "terms unseen in training count too, no min_df / max_df / "
                                "max_features")
    hashing: Literal["spark", "sklearn"] = Field(
        "spark", description="with num_features: spark: MurmurHash3 of seed 42, a term adds 1 "
                             "(HashingTF); sklearn: of seed 0, a term adds the hash's sign "
                             "(HashingVectorizer's alternate_sign)")

    @field_validator("min_df", "max_df", mode="before")
    @classmethod
    def _not_bool(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool):  # (an int to pydantic: true would be 1 row)
            raise ValueError(f"{info.field_name} must be a number of rows or a fraction, "
                             f"got {value}")
        return value

    @field_validator("min_df", "max_df")
    @classmethod
    def _df(cls, value: int | float, info: Any) -> int | float:
        return _count(value, info.field_name)

    @field_validator("ngram_range")
    @classmethod
    def _ngrams(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"ngram_range must be [min_n, max_n] with 1 <= min_n <= max_n, "
                             f"got {list(value)}")
        return value

    @field_validator("separators")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:  # (Arrow's split never ends where the pattern matches nothing, \b between
            # two letters too): the first match in each probe, none of them empty
            first = pc.extract_regex(pa.array(_PROBES, pa.string()),
                                     f"(?P<sluice_separator>{value})")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"not a regular expression RE2 reads: {exc}") from None
        if pc.any(pc.equal(pc.struct_field(first, [0]), "")).as_py():
            raise ValueError("the pattern matches an empty string: separators must match "
                             "at least one character (e.g. '\\s+', not '\\s*' or '\\b')")
        return value

    @model_validator(mode="after")
    def _range(self) -> VectorizeTextParams:
        if type(self.min_df) is type(self.max_df) and self.min_df > self.max_df:
            raise ValueError(f"min_df ({self.min_df}) is above max_df ({self.max_df}): no "
                             "term could be kept")
        if self.num_features is None and self.hashing != "spark":
            raise ValueError("hashing says how terms are hashed to num_features columns: set "
                             "num_features too (e.g. num_features: 1024)")
        defaults = {"min_df": 1, "max_df": 1.0, "max_features": None}
        vocabulary = [n for n, v in defaults.items()
                      if getattr(self, n) != v or type(getattr(self, n)) is not type(v)]
        if self.num_features is not None and vocabulary:
            raise ValueError(f"{vocabulary[0]} limits a learned vocabulary, and num_features "
                             "hashes terms without one: leave one of them out")
        if self.analyzer != "word":
            word_only = [n for n, v in (("separators", self.separators != SEPARATORS),
                                        ("min_token_length", self.min_token_length != 2),
                                        ("stop_words", self.stop_words is not None)) if v]
            if word_only:
                raise ValueError(f"{word_only[0]} splits text into words, and analyzer: "
                                 f"{self.analyzer} takes n-grams of characters: leave one of "
                                 "them out")
        if self.num_features is not None and self.hashing == "sklearn" and self.sublinear_tf:
            raise ValueError("sublinear_tf takes counts, and hashing: sklearn adds signed ones "
                             "(a bucket can be negative): use hashing: spark")
        return self


def check_text(schema: pa.Schema, name: str) -> None:
    t = schema.field(name).type
    value = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
        raise SchemaError(f"column '{name}' is {t}; vectorize_text reads text (strings)",
                          hint=f"cast '{name}' to string first, or use one_hot for "
                               "categories")


_CONTEXTUAL = "[\u03a3\u0130]"
"""What Arrow's utf8_lower (one code point for one) lower-cases otherwise than Python's
str.lower and Java's toLowerCase: a capital sigma ending a word (Unicode's Final_Sigma:
'\u03c2') and the capital I with a dot above (its full mapping: 'i' + U+0307)."""


def lower(text: pa.Array) -> pa.Array:
    """The text lower-cased as scikit-learn (str.lower) and MLlib (toLowerCase) do: by
    Arrow, and the rows holding a character it maps otherwise by Python."""
    out = pc.utf8_lower(text)
    special = pc.match_substring_regex(text, _CONTEXTUAL).fill_null(False)
    if not pc.any(special).as_py():
        return out
    fixed = [s.lower() for s in text.filter(special).to_pylist()]
    return pc.replace_with_mask(out, special, pa.array(fixed, out.type))


def term_name(column: str, term: str) -> str:
    return f"{column}:{term}"


class Tokens:
    """How a column's text becomes terms: tokens, stop words, n-grams."""

    def __init__(self, params: VectorizeTextParams):
        self.params = params
        stop = sorted(ENGLISH) if params.stop_words == "english" else params.stop_words or []
        if params.lowercase:
            stop = [w.lower() for w in stop]
        self.stop = pa.array(sorted(set(stop)), pa.string()) if stop else None

    def terms(self, column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Every term of every row (its n-grams), and the row each came from (int64,
        ascending); a null text is a row without terms."""
        text = plain(column)
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        if self.params.lowercase:
            text = lower(text)
        if self.params.analyzer != "word":
            return self._characters(text)
        lists = pc.split_pattern_regex(text, self.params.separators)
        tokens = pc.list_flatten(lists)
        rows = pc.list_parent_indices(lists)
        keep = pc.greater_equal(pc.utf8_length(tokens), self.params.min_token_length)
        if self.stop is not None:
            keep = pc.and_(keep, pc.invert(pc.is_in(tokens, value_set=self.stop)))
        tokens = tokens.filter(keep).cast(pa.string())
        rows = rows.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)
        low, high = self.params.ngram_range
        terms: list[pa.Array] = []
        of: list[np.ndarray] = []
        for n in range(low, high + 1):
            if n == 1:
                terms.append(tokens)
                of.append(rows)
                continue
            count = len(tokens) - n + 1
            if count <= 0:
                continue
            # n consecutive tokens of one row (the rows are ascending: the first and the
            # last of the n share it)
            starts = np.flatnonzero(rows[:count] == rows[n - 1:])
            at = pa.array(starts)
            parts = [tokens.take(pc.add(at, k)) for k in range(n)]
            terms.append(pc.binary_join_element_wise(*parts, " "))
            of.append(rows[starts])
        return _joined(terms, of)

    def _characters(self, text: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """scikit-learn's char (the text's runs of white space as one space) and char_wb
        (each word with a space before and after) n-grams."""
        low, high = self.params.ngram_range
        if self.params.analyzer == "char":
            pieces = pc.replace_substring_regex(text, WHITE_SPACE + "{2,}", " ")
            rows = np.arange(len(text), dtype=np.int64)
        else:
            lists = pc.split_pattern_regex(text, WHITE_SPACE + "+")
            words = pc.list_flatten(lists)
            keep = pc.greater(pc.utf8_length(words), 0)
            rows = pc.list_parent_indices(lists).filter(keep).to_numpy(
                zero_copy_only=False).astype(np.int64)
            pieces = pc.binary_join_element_wise(" ", words.filter(keep), " ", "")
        terms, of = [], []
        for n in range(low, high + 1):
            grams, owner = char_ngrams(pieces, n,
                                       low if self.params.analyzer == "char_wb" else None)
            terms.append(grams)
            of.append(rows[owner])
        return _joined(terms, of)


def _joined(terms: list[pa.Array], of: list[np.ndarray]) -> tuple[pa.Array, np.ndarray]:
    """The terms of each n, and the rows they came from, as one array each."""
    if not terms:
        return pa.array([], pa.string()), np.empty(0, np.int64)
    if len(terms) == 1:
        return terms[0], of[0]
    return pa.concat_arrays(terms), np.concatenate(of)


def buckets(terms: pa.Array, n: int, hashing: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Each term's column of ``n`` and what it adds there (None: 1): Spark's HashingTF
    (seed 42, the hash's non-negative remainder) or scikit-learn's HashingVectorizer
    (seed 0, |hash| mod n, the hash's sign)."""
    signed = murmur3_32(terms, 42 if hashing == "spark" else 0).view(np.int32).astype(np.int64)
    if hashing == "spark":
        return signed % n, None
    at = np.abs(signed) % n
    at[signed == -2**31] = (2**31 - 1 - (n - 1)) % n  # |INT_MIN|, as scikit-learn takes it
    return at, np.where(signed >= 0, 1.0, -1.0)


def bucket_stats(at: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """How many rows have a term in each of the ``n`` columns (df)."""
    if not len(at):
        return np.zeros(n, np.int64)
    return np.bincount(np.unique(rows * n + at) % n, minlength=n).astype(np.int64)


WHITE_SPACE = r"[\t\n\x{0b}\f\r\x{1c}-\x{1f}\x{85}\p{Z}]"
"""What Python's str.split() and re's \\s split at (scikit-learn's analyzers), in RE2."""


def char_ngrams(text: pa.Array, n: int, low: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """Every n characters in a row of ``text`` (a string array), and the position of its
    string. With ``low`` (char_wb's padded words, n-grams from ``low`` up): a string of no
    more than n characters is one n-gram of itself at the first n that reaches its
    length, none at the others. The n-grams are cut from the UTF-8 bytes at character
    starts."""
    text = text.cast(pa.large_string())
    count = len(text)
    offsets = np.frombuffer(text.buffers()[1], np.int64)[text.offset:text.offset + count + 1]
    data = text.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    raw = raw[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    starts = np.flatnonzero((raw & 0xC0) != 0x80)  # each character's first byte
    # characters per string, and the position of each string's first in ``starts``
    first = np.searchsorted(starts, offsets[:-1])
    chars = np.searchsorted(starts, offsets[1:]) - first
    if text.null_count:
        chars = np.where(text.is_valid().to_numpy(zero_copy_only=False), chars, 0)
    per = np.maximum(chars - n + 1, 0)
    if low is not None:
        per = np.where(chars > n, per, (chars > 0) & (np.maximum(chars, low) == n))
    owner = np.repeat(np.arange(count), per)
    at = first[owner] + (np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per))
    ends_at = np.minimum(at + n, first[owner] + chars[owner])
    bounds = np.append(starts, len(raw))
    begin, end = bounds[at], bounds[ends_at]
    lengths = end - begin
    cut = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=cut[1:])
    index = np.repeat(begin - cut[:-1], lengths) + np.arange(int(cut[-1]))
    grams = pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(cut),
                                             pa.py_buffer(raw[index].tobytes()))
    return grams.cast(pa.string()), owner.astype(np.int64)


def term_stats(terms: pa.Array, rows: np.ndarray) -> pa.Table:
    """Each distinct term's count over the rows (tf) and how many rows have it (df)."""
    if not len(terms):
        return _NO_TERMS.empty_table()
    table = pa.table({"term": terms, "row": rows})
    counted = table.group_by("term").aggregate([("row", "count"), ("row", "count_distinct")])
    return pa.table({"term": counted["term"], "tf": counted["row_count"],
                     "df": counted["row_count_distinct"]})


def merge_stats(a: pa.Table, b: pa.Table) -> pa.Table:
    """Two ``term_stats`` as one: the counts of equal terms add."""
    if not b.num_rows:
        return a
    if not a.num_rows:
        return b
    summed = pa.concat_tables([a, b]).group_by("term").aggregate([("tf", "sum"), ("df", "sum")])
    return pa.table({"term": summed["term"], "tf": summed["tf_sum"], "df": summed["df_sum"]})


def _limit(value: int | float, rows: int) -> float:
    return float(value) * rows if isinstance(value, float) else float(value)


@register("vectorize_text")
class VectorizeText(Estimator):
    """Text as numbers: a float64 column per term, `<col>:<term>`, of counts or TF-IDF.

    The terms' columns take the text column's place; the vocabulary is learned over all
    partitions (counts combine exactly), in sorted term order.

    The text is lower-cased, split at `separators` (by default anything but letters,
    digits and `_`), tokens shorter than `min_token_length` and `stop_words` dropped,
    and the n-grams of `ngram_range` made of the tokens left: with the defaults,
    scikit-learn's `CountVectorizer` tokens. `min_df` / `max_df` leave out terms in too
    few or too many rows, then `max_features` keeps the most frequent. A term not in
    the vocabulary when scoring counts nowhere; a null text is a row of zeros.
    `idf` and `norm` make TF-IDF weights (scikit-learn's `TfidfVectorizer`: `idf: smooth`,
    `norm: l2`; MLlib's `IDF`: `idf: spark`). A column per term is dense: keep the
    vocabulary to the terms that matter (`max_features`, `min_df`); a vocabulary of more
    than 10,000 terms needs `max_features` said.

    `sparse: true` makes one column `<col>` of each row's non-zero terms instead
    (`struct<indices, values>`, as scikit-learn's sparse matrix and MLlib's
    `SparseVector`): a row stays about the size of its text, whatever the vocabulary.
    `naive_bayes`, `logistic_regression` and `linear_regression` read it, its terms
    their features `<col>:<term>` (in `model.json` and contributions), and
    `select_features` (chi2, anova) keeps the best of its terms; the other steps need
    the term columns. On the CPU naive Bayes and logistic regression (L-BFGS)
    compute on the sparse rows as they are; on a GPU a partition's rows are made dense
    in the model's matrix.

    ```yaml
    - op: vectorize_text
      columns: [review]          # review:refund, review:slow, ...
      stop_words: [the, a, an, and, or, of, to, is, it]
      ngram_range: [1, 2]
      min_df: 5                  # in at least 5 rows
      max_df: 0.5                # in at most half of them
      max_features: 2000
      idf: smooth
      norm: l2
    ```
    """

    numeric_kernels = False
    schema_from_fit = True

    Params = VectorizeTextParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")
        self.tokens = Tokens(self.params)
        self._fitted: VectorizeTextFitted | None = None

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def fit_may_add(self, column: str) -> bool:
        return any(column.startswith(f"{name}:") for name in self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self._fitted is not None:
            return self._fitted.output_schema(schema)
        self._check(schema)
        if self.params.sparse:  # the column's type is known, its terms after the fit
            return pa.schema([pending_field(f.name) if f.name in self.params.columns
                              else f for f in schema], metadata=schema.metadata)
        return pa.schema([f for f in schema if f.name not in self.params.columns],
                         metadata=schema.metadata)

    def _check(self, schema: pa.Schema) -> None:
        require_columns(schema, self.params.columns)
        for name in self.params.columns:
            check_text(schema, name)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        self._check(schema)
        return {}

    def partial(self, part: pa.Table, state: Any, xp: Any) -> dict[str, Any]:
        stats: dict[str, Any] = {"rows": part.num_rows, "bytes": 0}
        for name in self.params.columns:
            column = part.column(name)
            stats["bytes"] += int(pc.sum(pc.binary_length(plain(column))).as_py() or 0)
            terms, rows = self.tokens.terms(column)
            n = self.params.num_features
            stats[name] = (term_stats(terms, rows) if n is None else
                           bucket_stats(buckets(terms, n, self.params.hashing)[0], rows, n))
        return stats

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": a["rows"] + b["rows"], "bytes": a["bytes"] + b["bytes"]}
        for name in self.params.columns:
            out[name] = (merge_stats(a[name], b[name]) if self.params.num_features is None
                         else a[name] + b[name])
        return out

    def update(self, stats: dict[str, Any], state: Any) -> tuple[dict[str, Any], bool]:
        rows = stats["rows"]
        if not rows:
            raise DataError(f"no rows to learn the terms of '{self.params.columns[0]}' from",
                            hint="no rows may reach this step: check the input and the "
                                 "filters before it")
        vocabulary = {name: self._vocabulary(name, stats[name], rows)
                      for name in self.params.columns}
        return {"rows": rows, "bytes": stats["bytes"], "vocabulary": vocabulary}, True

    def _vocabulary(self, name: str, stats: Any, rows: int) -> dict[str, Any]:
        p = self.params
        if p.num_features is not None:  # hashed: each column's rows, for the idf
            out: dict[str, Any] = {"df": stats.tolist()}
            if p.idf != "none":
                with np.errstate(divide="ignore"):
                    idf = idf_weights(stats.astype(np.float64), rows, p.idf)
                # plain's ln(n / 0): a column no fitted row has counts nowhere, as a term
                # outside a vocabulary (a zero count times infinity would be NaN)
                idf[~np.isfinite(idf)] = 0.0
                out["idf"] = idf.tolist()
            return out
        low, high = _limit(p.min_df, rows), _limit(p.max_df, rows)
        if high < low:
            raise DataError(f"max_df ({p.max_df}: {high:g} of the {rows} rows) is below "
                            f"min_df ({p.min_df}: {low:g} rows): no term of '{name}' can be "
                            "kept", hint="lower min_df or raise max_df")
        df = stats["df"].to_numpy()
        kept = stats.filter(pa.array((df >= low) & (df <= high)))
        if not kept.num_rows:
            found = ("it has no terms" if not stats.num_rows else
                     f"all {stats.num_rows:,} of its terms are in fewer than {low:g} "
                     f"(min_df: {p.min_df}) or more than {high:g} (max_df: {p.max_df}) of the "
                     f"{rows:,} rows")
            raise DataError(f"no term of '{name}' is left for the vocabulary: {found}",
                            hint="lower min_df or raise max_df" if stats.num_rows else
                            "check the column's text, separators and min_token_length")
        if p.max_features is not None and kept.num_rows > p.max_features:
            # the most frequent (in the most rows when binary, as scikit-learn ranks);
            # equal counts: the first in sorted order
            kept = kept.sort_by([("df" if p.binary else "tf", "descending"),
                                 ("term", "ascending")]).slice(0, p.max_features)
        elif p.max_features is None and kept.num_rows > MAX_TERMS and not p.sparse:
            raise DataError(
                f"the vocabulary of '{name}' has {kept.num_rows:,} terms, over {MAX_TERMS:,}: "
                "a float64 column each makes rows too wide",
                hint="set max_features (e.g. max_features: 5000, the most frequent terms), "
                     "or raise min_df; max_features may be set higher than "
                     f"{MAX_TERMS:,} on purpose; sparse: true keeps only each row's terms "
                     "(for naive_bayes and the linear models)")
        kept = kept.sort_by("term")
        terms = kept["term"].to_pylist()
        out = {"terms": terms, "df": kept["df"].to_numpy().astype(np.int64).tolist()}
        if p.idf != "none":
            out["idf"] = idf_weights(np.asarray(out["df"], np.float64), rows, p.idf).tolist()
        return out

    def fitted(self, state: dict[str, Any]) -> VectorizeTextFitted:
        self._fitted = VectorizeTextFitted(self.params, state["vocabulary"], state["rows"])
        return self._fitted

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        terms = {c: len(v.get("terms", v["df"])) for c, v in state["vocabulary"].items()}
        out: dict[str, Any] = {"terms": terms, "rows": state["rows"]}
        width = 8 * sum(terms.values())  # float64 bytes a row
        text = state["bytes"] / max(state["rows"], 1)
        wide = width > WIDENING_NOTE * max(text, 1.0) and width * state["rows"] > NOTE_BYTES
        if wide and not self.params.sparse:
            out["note"] = (
                f"the text's {sum(terms.values()):,} term columns take {width:,} bytes a row "
                f"where the text took {text:,.0f} on average: a partition of the text grows "
                f"{width / max(text, 1.0):,.0f} times in memory (its columns are dense); if "
                "memory runs short, lower read_parquet's partition_mb, or "
                + ("max_features" if self.params.num_features is None else "num_features")
                + ", or keep each row's terms only (sparse: true) for naive_bayes and the "
                  "linear models")
        return out


def idf_weights(df: np.ndarray, rows: int, kind: str) -> np.ndarray:
    """The inverse document frequency of terms in ``df`` of ``rows`` rows."""
    if kind == "smooth":
        return np.log((1.0 + rows) / (1.0 + df)) + 1.0
    if kind == "plain":
        return np.log(rows / df) + 1.0
    return np.log((rows + 1.0) / (df + 1.0))


@register_fitted("vectorize_text.fitted")
class VectorizeTextFitted(Transform):
    """The fitted vocabularies: a float64 column per term."""

    numeric_kernels = False

    Params = VectorizeTextParams

    def __init__(self, params: VectorizeTextParams, vocabulary: dict[str, Any], rows: int):
        super().__init__(params)
        self.vocabulary = vocabulary
        self.rows = rows
        self.tokens = Tokens(params)
        self._sets: dict[str, pa.Array] = {}

    def _terms(self, name: str) -> pa.Array:
        found = self._sets.get(name)
        if found is None:
            found = self._sets[name] = pa.array(self.vocabulary[name]["terms"], pa.string())
        return found

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def names(self, name: str) -> list[str]:
        if self.params.num_features is not None:
            return [f"{name}:#{i}" for i in range(self.params.num_features)]
        return [term_name(name, t) for t in self.vocabulary[name]["terms"]]

    def derived_from(self) -> dict[str, list[str]]:
        return {new: [name] for name in self.params.columns for new in self.names(name)}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        fields: list[pa.Field] = []
        made: dict[str, str] = {}  # a term's column: the text column it comes from
        for f in schema:
            if f.name not in self.params.columns:
                fields.append(f)
                continue
            check_text(schema, f.name)
            if self.params.sparse:
                v = self.vocabulary[f.name]
                fields.append(sparse_field(f.name, self._size(f.name),
                                           None if self.params.num_features else v["terms"]))
                continue
            for n in self.names(f.name):
                if n in made:
                    raise SchemaError(
                        f"vectorize_text makes column '{n}' of both '{made[n]}' and "
                        f"'{f.name}' (a term of each)", hint=f"rename '{f.name}' first")
                made[n] = f.name
                fields.append(pa.field(n, pa.float64()))
        kept = {f.name for f in schema if f.name not in self.params.columns}
        for name in made:
            if name in kept:
                raise SchemaError(f"vectorize_text adds column '{name}' that the input "
                                  "already has", hint="rename or drop it first")
        return pa.schema(fields, metadata=schema.metadata)

    def _size(self, name: str) -> int:
        """How many terms (positions) a text column's vocabulary has."""
        p = self.params
        return p.num_features if p.num_features is not None else len(
            self.vocabulary[name]["terms"])

    def _hits(self, column: pa.ChunkedArray, name: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Each term occurrence of the vocabulary in a text column: its term's position,
        its row, and (hashed with signs) its sign."""
        p = self.params
        terms, of = self.tokens.terms(column)
        sign = None
        if p.num_features is not None:
            at, sign = buckets(terms, p.num_features, p.hashing)
        else:
            at = pc.index_in(terms, value_set=self._terms(name)).fill_null(-1)
            at = at.to_numpy(zero_copy_only=False).astype(np.int64)
        hit = at >= 0
        return at[hit], of[hit], None if sign is None else sign[hit]

    def encode_sparse(self, column: pa.ChunkedArray, name: str) -> pa.Array:
        """One text column's weights as a sparse column (``operators.sparse``): each
        row's non-zero terms in position order, weighted as ``encode`` weighs them."""
        p = self.params
        v = self.vocabulary[name]
        rows, k = len(column), self._size(name)
        at, of, sign = self._hits(column, name)
        keys, where = np.unique(of * k + at, return_inverse=True)
        if p.binary:  # 1 where a term falls (hashed too)
            values = np.ones(len(keys))
        else:
            values = np.bincount(where, weights=None if sign is None else sign,
                                 minlength=len(keys)).astype(np.float64)
            kept = values != 0  # hashed signs that cancel: no term there, as dense
            keys, values = keys[kept], values[kept]
        row, position = keys // k, keys % k
        if p.sublinear_tf and not p.binary:
            counted = values > 0
            values[counted] = 1.0 + np.log(values[counted])
        if p.idf != "none":
            values *= np.asarray(v["idf"], np.float64)[position]
            kept = values != 0  # spark's idf of a term in every row: 0
            row, position, values = row[kept], position[kept], values[kept]
        if p.norm is not None:
            size = np.bincount(row, weights=np.abs(values) if p.norm == "l1"
                               else values * values, minlength=rows)
            if p.norm == "l2":
                size = np.sqrt(size)
            values /= size[row]
        return from_csr(indptr_of(row, rows), position, values)

    def encode(self, column: pa.ChunkedArray, name: str) -> np.ndarray:
        """The (terms, rows) weights of one text column, each term's row contiguous."""
        p = self.params
        v = self.vocabulary[name]
        rows = len(column)
        k = self._size(name)
        past = past_memory_share(8.0 * k * rows)
        if past is not None:
            raise DataError(
                f"a partition of {rows:,} rows makes '{name}''s {k:,} term columns (dense "
                f"float64): {past}",
                hint="make partitions smaller: read_parquet's partition_mb (a partition is "
                     "at least one row group of a file: files written with smaller row "
                     "groups split finer), or fewer terms (max_features, num_features), "
                     "or each row's terms only (sparse: true) for naive_bayes and the "
                     "linear models")
        at, of, sign = self._hits(column, name)
        out = np.zeros((k, rows), np.float64)  # (pages untouched until written)
        if p.binary:  # 1 where a term falls (hashed: whatever the signs add up to)
            out.reshape(-1)[at * rows + of] = 1.0
        else:
            np.add.at(out.reshape(-1), at * rows + of, 1.0 if sign is None else sign)
        if p.sublinear_tf and not p.binary:
            counted = out > 0
            np.log(out, out=out, where=counted)
            np.add(out, 1.0, out=out, where=counted)
        if p.idf != "none":
            out *= np.asarray(v["idf"], np.float64)[:, None]
        if p.norm is not None:
            size = (np.abs(out).sum(axis=0) if p.norm == "l1"
                    else np.sqrt(np.einsum("ij,ij->j", out, out)))
            np.divide(out, size, out=out, where=size > 0)
        return out

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        schema = self.output_schema(part.schema)
        arrays: list[pa.Array | pa.ChunkedArray] = []
        for f in part.schema:
            if f.name not in self.params.columns:
                arrays.append(part.column(f.name))
                continue
            if self.params.sparse:
                arrays.append(self.encode_sparse(part.column(f.name), f.name))
                continue
            matrix = self.encode(part.column(f.name), f.name)
            arrays.extend(pa.array(matrix[j]) for j in range(matrix.shape[0]))
        return pa.Table.from_arrays(arrays, schema=schema)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json"), "vocabulary": self.vocabulary,
                "rows": self.rows}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> VectorizeTextFitted:
        return cls(VectorizeTextParams(**meta["params"]), meta["vocabulary"], meta["rows"])

