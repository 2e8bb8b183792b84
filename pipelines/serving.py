"""Online scoring: a saved model in a Python process (``load_model``) and over HTTP
(``sluice serve``), with the fitted chain the bulk ``score`` step applies.

    from pipelines.serving import load_model
    model = load_model("churn@production")
    model.score([{"tenure": 3, "plan": "basic", ...}])     # records in, records out

``sluice serve churn@production --port 8080`` answers ``POST /invocations`` with the
request formats of MLflow's scoring server (``dataframe_split``, ``dataframe_records``,
``inputs``, ``instances``; CSV) and Arrow IPC streams, each request scored by the same
``score`` operator a pipeline runs: the same predictions, the same errors, the same
``contributions``. The server runs on uvicorn (``sluice[serve]``); scoring runs on a
bounded thread pool so that ``/ping`` answers while a large batch scores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import decimal
import hashlib
import hmac
import importlib
import io
import json
import logging
import math
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from operators.arrays import get_namespace
from operators.base import ARROW_ERRORS, DataError, SchemaError, SluiceError, suggest
from operators.evaluate.drift import Drift
from operators.io.fs import resolve as fs_resolve
from operators.io.fs import written_whole
from operators.score.score import Score
from operators.sparse import is_sparse_type
from pipelines.device import CPU, Placement, resolve, run_placed
from pipelines.store import Model, ModelStore, binding

log = logging.getLogger("sluice.serve")

JSON = "application/json"
CSV = "text/csv"
ARROW = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
MEDIA_TYPES = (JSON, CSV, ARROW, ARROW_FILE)
# the JSON request formats (MLflow's scoring server's names)
JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
REQUEST_PARAMS = ("contributions", "contributions_by", "keep", "threshold")
MAX_SCORERS = 64  # a model's scorers kept (each of options and a threshold)
MODEL_HEADER = "X-Sluice-Model"
HOST = get_namespace("numpy")
REQUEST_HEADER = "X-Request-Id"  # the client's, else one made up; in the row log
ENVIRONMENT = "SLUICE_SERVE"  # a worker process's settings (``--workers``)
STARTED = "SLUICE_SERVE_STARTED"  # the folder where a worker says it has started


class RequestError(SluiceError):
    """A request that cannot be scored as sent; ``status`` is its HTTP status."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 400):
        super().__init__(message, hint=hint)
        self.status = status


# --------------------------------------------------------------------------- rows in




def _is_float(value: Any) -> bool:
    return isinstance(value, float) and not value.is_integer()


def _column(name: str, values: Sequence[Any], target: pa.DataType | None) -> pa.Array:
    """``values`` (Python objects, JSON's) as an array of ``target`` (the type the model
    was trained on), converting what converts without loss (3.0 -> 3, "12" -> 12); a
    RequestError naming the column and the first row that does not."""
    if target is None:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise RequestError(f"column '{name}': mixed values ({exc})") from None
    value_type = target.value_type if pa.types.is_dictionary(target) else target
    try:
        try:  # inferred first: a typed conversion truncates 3.5 to an int64 3
            out = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            out = pa.array(values, type=value_type)
        return out.cast(target, safe=True) if out.type != target else out
    except (*ARROW_ERRORS, OverflowError):
        pass
    for row, value in enumerate(values):
        try:
            pa.array([value]).cast(value_type, safe=True)
        except (*ARROW_ERRORS, OverflowError):
            shown = json.dumps(value) if not isinstance(value, float) else repr(value)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
                raise RequestError(f"column '{name}', row {row}: {shown[:60]} does not fit "
                                   f"{value_type}") from None
            kind = "a whole number" if pa.types.is_integer(value_type) and _is_float(value) \
                else str(value_type)
            raise RequestError(f"column '{name}', row {row}: {shown[:60]} is not {kind}",
                               hint=f"the model was trained on {value_type} values") from None
    raise RequestError(f"column '{name}': the values are not {value_type}")


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the model's input columns in their trained types (an Arrow, CSV or
    pandas input's int32 where the model had int64...)."""
    for i, name in enumerate(table.column_names):
        index = schema.get_field_index(name)
        if index < 0 or table.schema.field(i).type == schema.field(index).type:
            continue
        column = table.column(i)
        target = schema.field(index).type
        try:
            cast = column.cast(target, safe=True)
        except ARROW_ERRORS:
            cast = pa.chunked_array([_column(name, column.to_pylist(), target)])
        table = table.set_column(i, schema.field(index).with_type(target), cast)
    return table


def _records(rows: Any, where: str) -> dict[str, list[Any]]:
    """Columns of a list of JSON objects (a key a row lacks: null)."""
    if not isinstance(rows, list):
        raise RequestError(f"{where} must be a list of objects (one per row)")
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(f"{where}[{i}] is not an object",
                               hint='a row is {"column": value, ...}')
        names.update(dict.fromkeys(row))
    if rows and not names:
        raise RequestError(f"{where}: the rows have no values", hint="give each row the "
                           "model's columns (GET /metadata lists them)")
    return {name: [row.get(name) for row in rows] for name in names}


def _split(body: Any, where: str) -> dict[str, list[Any]]:
    """Columns of ``{"columns": [...], "data": [[...], ...]}`` (pandas' split orient)."""
    if not isinstance(body, dict) or not isinstance(body.get("columns"), list) \
            or not isinstance(body.get("data"), list):
        raise RequestError(f"{where} must be an object with 'columns' (names) and 'data' "
                           "(a list of rows, each a list of values)")
    names = body["columns"]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise RequestError(f"{where}.columns must be distinct column names")
    data = body["data"]
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            got = f"{len(row)} values" if isinstance(row, list) else "not a list"
            raise RequestError(f"{where}.data[{i}] has {got}, for {len(names)} columns")
    if not data:
        return {name: [] for name in names}
    if not names:
        raise RequestError(f"{where}: the rows have no values", hint="give each row the "
                           "model's columns (GET /metadata lists them)")
    return {name: list(values) for name, values in zip(names, zip(*data))}


def _columns(body: dict[str, Any], where: str) -> dict[str, list[Any]]:
    """Columns of ``{"a": [1, 2], "b": [3, 4]}``, or of one row ``{"a": 1, "b": 3}``."""
    lists = [isinstance(v, list) for v in body.values()]
    if not any(lists):
        return {name: [value] for name, value in body.items()}
    if not all(lists):
        raise RequestError(f"{where} mixes lists and single values",
                           hint="give every column a list of values, or one row of values")
    lengths = {len(v) for v in body.values()}
    if len(lengths) > 1:
        shown = ", ".join(f"'{k}' {len(v)}" for k, v in body.items())
        raise RequestError(f"{where}: the columns have different lengths ({shown})")
    return {name: list(values) for name, values in body.items()}


def json_columns(body: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The columns and the ``params`` of a JSON request (MLflow's formats, or a bare list
    of row objects)."""
    if isinstance(body, list):
        return _records(body, "the body"), {}
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object",
                           hint=f"one of {', '.join(JSON_FORMATS)} (and optional params)")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError("params must be an object")
    given = [k for k in JSON_FORMATS if k in body]
    unknown = [k for k in body if k not in JSON_FORMATS and k != "params"]
    if len(given) != 1 or unknown:
        if unknown:
            what = f"unknown key '{unknown[0]}'{suggest(unknown[0], [*JSON_FORMATS, 'params'])}"
        elif given:
            what = f"more than one format ({', '.join(given)})"
        else:
            what = "no rows"
        raise RequestError(f"the body has {what}",
                           hint=f"send one of {', '.join(JSON_FORMATS)}, and optionally params")
    key = given[0]
    rows = body[key]
    if key == "dataframe_split":
        return _split(rows, key), params
    if key == "dataframe_records" or isinstance(rows, list):
        return _records(rows, key), params
    if isinstance(rows, dict):
        return _columns(rows, key), params
    raise RequestError(f"{key} must be a list of row objects or an object of columns")


def columns_table(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """A table of Python columns, each in the type ``schema`` gives it (the model's
    inputs); other columns as Arrow infers them."""
    arrays, names = [], []
    for name, values in columns.items():
        index = schema.get_field_index(name)
        arrays.append(_column(name, values, schema.field(index).type if index >= 0 else None))
        names.append(name)
    if not names:
        return pa.table({})
    return pa.Table.from_arrays(arrays, names=names)


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")


# --------------------------------------------------------------------------- the model


class ScoringModel:
    """A saved model ready to score rows in this process: the registry's fitted chain
    bound to a ``score`` operator per kind of output (predictions; contributions by
    feature or by input), checked and warmed up on an empty table when loaded."""

    def __init__(self, model: Model, *, asked: str | None = None, path: str = "",
                 placement: Placement = CPU):
        self.model = model
        self.asked = (asked or model.ref).strip()
        self.path = path
        self.placement = placement
        trained = model.input_schema
        # a tree model's integer category comes as int64, as a score step takes it: a
        # value the trained type cannot hold is a category training never saw (missing),
        # not a request to refuse
        coded = {name for step in model.chain.every_step()
                 for name in (getattr(step, "categories", None) or {})}
        self.input_schema = pa.schema([
            trained.field(c).with_type(pa.int64())
            if c in coded and pa.types.is_integer(trained.field(c).type) else trained.field(c)
            for c in model.required])
        self._scorers: dict[tuple[bool, str, float | None], Score] = {}
        self._lock = threading.Lock()
        self.score_table(self.input_schema.empty_table())

    @property
    def ref(self) -> str:
        return self.model.ref

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def required(self) -> list[str]:
        return list(self.model.required)

    def check_columns(self, schema: pa.Schema) -> None:
        """A MissingColumnError naming the model's columns ``schema`` lacks (with the
        closest names it has)."""
        self._scorer(False, "features").check_input(schema)

    def explains(self) -> bool:
        try:
            self._scorer(True, "features")
        except SluiceError:
            return False
        return True

    def _scorer(self, contributions: bool, by: str, threshold: float | None = None) -> Score:
        key = (contributions, by, threshold)
        scorer = self._scorers.get(key)
        if scorer is not None:
            return scorer
        with self._lock:
            if key not in self._scorers:
                scorer = Score(model=self.asked, contributions=contributions,
                               contributions_by=by, threshold=threshold)
                scorer.bind(*binding(self.model, self.asked, self.path))
                scorer.output_schema(self.input_schema)  # a model without contributions
                if len(self._scorers) >= MAX_SCORERS:
                    # callers' thresholds are any numbers: the oldest goes, not memory
                    self._scorers.pop(next(iter(self._scorers)))
                self._scorers[key] = scorer
            return self._scorers[key]

    def _cutting_scorer(self, contributions: bool, by: str, threshold: Any) -> Score:
        """``_scorer`` for a caller's ``threshold``: one that is no number from 0 to 1, or
        is given to a model of numbers or of more classes, is a RequestError."""
        threshold = threshold_value(threshold)
        try:
            return self._scorer(contributions, by, threshold)
        except SchemaError as exc:
            if threshold is None:
                raise
            raise RequestError(exc.message, hint=exc.hint) from None

    def outputs(self, contributions: bool = False,
                contributions_by: str = "features") -> tuple[str, ...]:
        """The names of the columns the model adds (``prediction``, ``probability`` for
        classes, ``distance`` of a kmeans model that gives it, the contributions)."""
        return self._scorer(contributions, contributions_by).outputs

    def output_fields(self, contributions: bool = False,
                      contributions_by: str = "features") -> list[pa.Field]:
        scorer = self._scorer(contributions, contributions_by)
        out = scorer.output_schema(self.input_schema)
        return [out.field(c) for c in scorer.outputs if c in out.names]

    def score_table(self, table: pa.Table, *, contributions: bool = False,
                    contributions_by: str = "features",
                    threshold: float | None = None) -> pa.Table:
        """``table`` with the model's columns added: ``prediction``, ``probability`` for
        classes, and with ``contributions`` ``contributions`` and ``contribution_base``;
        ``threshold`` cuts a binary classifier's probability (the score step's).
        The model reads its columns in the types it was trained on (int32 as int64...,
        a value that does not convert is a RequestError naming it); the table's own
        columns pass on as given."""
        if contributions_by not in ("features", "inputs"):
            raise RequestError(f"contributions_by '{contributions_by}' is not features or "
                               "inputs")
        if contributions_by != "features" and not contributions:
            raise RequestError("contributions_by needs contributions: true")
        scorer = self._cutting_scorer(bool(contributions), contributions_by, threshold)
        cast = _cast(table, self.input_schema)
        scorer.check_input(cast.schema)

        def run(part: pa.Table, xp: Any) -> pa.Table:
            return scorer.transform(part, xp)

        out, info = run_placed(self.placement, run, cast,
                               lambda a, b: pa.concat_tables([a, b]))
        if info:
            log.warning("%s: the device ran out of memory on %d rows: %s", self.ref,
                        table.num_rows, info)
        if cast is table:
            return out
        # the model read its columns in the trained types; the caller's pass as given
        added = [c for c in scorer.outputs if c in out.column_names]
        kept = table.drop_columns([c for c in added if c in table.column_names])
        for name in added:
            kept = kept.append_column(out.schema.field(name), out.column(name))
        return kept

    def score(self, data: Any, *, contributions: bool = False,
              contributions_by: str = "features", threshold: float | None = None) -> Any:
        """Score ``data``, given as a ``pyarrow.Table`` or ``RecordBatch``, a pandas
        DataFrame, a list of row dicts or a dict of columns; returns the same kind with
        the model's columns added (the input's columns pass through, as in the ``score``
        step)."""
        kwargs = {"contributions": contributions, "contributions_by": contributions_by,
                  "threshold": threshold}
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            return self.score_table(data, **kwargs)
        if _is_pandas(data):  # the index goes through as pandas' metadata or a column
            table = pa.Table.from_pandas(data)
            return self.score_table(table, **kwargs).to_pandas()
        if isinstance(data, Mapping):
            table = columns_table(_columns(dict(data), "the columns"), self.input_schema)
            return self.score_table(table, **kwargs).to_pydict()
        if isinstance(data, Iterable) and not isinstance(data, str | bytes):
            rows = list(data)
            table = columns_table(_records(rows, "the rows"), self.input_schema)
            return self.score_table(table, **kwargs).to_pylist()
        raise SluiceError(f"cannot score a {type(data).__name__}",
                          hint="pass a pyarrow Table, a pandas DataFrame, a list of row "
                               "dicts or a dict of columns")

    def describe(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers: the model, its inputs and outputs."""
        meta = self.model.meta
        return {
            "model": self.ref, "name": self.name, "version": self.version,
            "asked": self.asked, "created_at": meta.get("created_at"),
            "pipeline": meta.get("pipeline"), "run_id": meta.get("run_id"),
            "inputs": [{"name": f.name, "type": str(f.type)} for f in self.input_schema],
            "outputs": [{"name": f.name, "type": str(f.type)} for f in self.output_fields()],
            "contributions": self.explains(),
            "device": self.placement.device,
            # what a regressor's prediction is: None for the mean (or the class), else
            # the quantile a model of loss quantile (absolute_error: 0.5) predicts
            "quantile": self.model.chain.found("quantile"),
            # a log-link model's (poisson, gamma, tweedie: the exp of its sum) deviance,
            # what it minimises and is compared by: {metric, tweedie_power}
            "deviance": self.model.chain.found("deviance"),
            # a ranking model's (loss: lambdarank): its prediction orders the rows of one
            # query, higher first: {group, ndcg_at}
            "ranking": self.model.chain.found("ranking"),
            # the saved models it scores with, frozen in it (score, then calibrate)
            "scores_with": [f"{step.model_info['name']}@{step.model_info['version']}"
                            for step in self.model.chain.every_step()
                            if isinstance(step, Score) and step.chain is not None
                            and "version" in step.model_info],
        }


    def __getstate__(self) -> dict[str, Any]:  # shipped to Spark executors, Dask workers
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def load_model(ref: str, models: str | None = None, *, device: str = "cpu",
               dtype: str = "float64", storage_options: dict[str, Any] | None = None
               ) -> ScoringModel:
    """A registry model (``churn``, ``churn@3``, ``churn@production``) ready to score
    rows in this process; ``models``: the store root (default ``$SLUICE_MODELS``, else
    ``data/models``); ``device``: cpu, gpu or auto (the CPU with a logged notice when no
    GPU is usable)."""
    chosen, notice = resolve(device)
    if notice:
        log.warning(notice)
    store = ModelStore(models, storage_options)
    model = store.load(ref)
    return ScoringModel(model, asked=ref, path=store.path_of(model),
                        placement=Placement(chosen, dtype))


# --------------------------------------------------------------------------- Spark


def spark_udf(ref: str, models: str | None = None, *, result: str | None = None,
              contributions: bool = False, contributions_by: str = "features",
              storage_options: dict[str, Any] | None = None,
              threshold: float | None = None) -> Any:
    """A Spark column function scoring with the model ``ref`` (as MLflow's
    ``spark_udf``), on Arrow batches end to end (``arrow_udf``: no pandas):

        score = spark_udf("churn@production")
        df.withColumn("p_churn", score(F.struct(*score.columns)))   # by name
        df.withColumn("p_churn", score(*score.columns))             # in that order

    One struct argument gives the model's columns by name (others are ignored); plain
    columns must be the model's inputs in ``score.columns``' order. ``result``:
    ``probability`` (a double, or an array of doubles in class order), ``prediction``,
    or ``all`` (a struct of the model's columns, with ``contributions`` too); by default
    a classifier's ``probability``, else the ``prediction`` (a regression's value, a
    cluster), as MLflow's default answers with the prediction; ``threshold`` cuts a
    binary classifier's probability into its ``prediction`` (the default then). The model
    is loaded here, once, and travels with the function to the executors (which need
    this package: ``sluice package``'s archive, or an install)."""
    try:
        from pyspark.sql.functions import arrow_udf
    except ImportError:
        raise SluiceError("spark_udf needs pyspark 4.1 or later (its arrow_udf)",
                          hint="upgrade pyspark, or use score_spark (mapInArrow)") from None
    from pyspark.sql.pandas.types import from_arrow_type

    model = load_model(ref, models, storage_options=storage_options)
    fields = {f.name: f for f in model.output_fields(contributions, contributions_by)}
    if threshold is not None:
        # said here, on the driver, not by every executor's task
        model._cutting_scorer(contributions, contributions_by, threshold)
        if result == "probability":
            raise SluiceError("threshold cuts the prediction, and result 'probability' is "
                              "the same without it", hint="result: prediction (the default "
                                                          "with a threshold), or all")
    if result is None:
        result = ("probability" if "probability" in fields and threshold is None
                  else "prediction")
    if result == "all":
        out_type: pa.DataType = pa.struct(list(fields.values()))
    elif result in fields:
        out_type = fields[result].type
    else:
        raise SluiceError(f"result '{result}': model {model.ref} gives "
                          f"{', '.join(fields)}", hint="result: " + ", ".join(
                              [*fields, "all"]))
    columns = model.required

    def score(*arrays: pa.Array) -> pa.Array:
        # a sparse term column is a struct too: given alone, it is the model's column
        if (len(arrays) == 1 and pa.types.is_struct(arrays[0].type)
                and not (len(columns) == 1 and is_sparse_type(arrays[0].type))):
            given = arrays[0]
            names = [given.type.field(i).name for i in range(given.type.num_fields)]
            table = pa.Table.from_arrays(given.flatten(), names=names)
        elif len(arrays) == len(columns):
            table = pa.Table.from_arrays(list(arrays), names=columns)
        else:
            raise SluiceError(f"model {model.ref} takes {len(columns)} columns "
                              f"({', '.join(columns)}), in that order, or one struct of "
                              f"them; got {len(arrays)}")
        scored = model.score_table(table, contributions=contributions,
                                   contributions_by=contributions_by, threshold=threshold)
        if result != "all":
            return scored.column(result).combine_chunks()
        out = scored.select(list(fields))
        return pa.StructArray.from_arrays([c.combine_chunks() for c in out.columns],
                                          fields=list(fields.values()))

    udf = arrow_udf(score, returnType=from_arrow_type(out_type))
    udf.columns = list(columns)
    udf.model = model.ref
    return udf


def score_spark(df: Any, ref: str, models: str | None = None, *,
                contributions: bool = False, contributions_by: str = "features",
                storage_options: dict[str, Any] | None = None,
                threshold: float | None = None) -> Any:
    """The Spark DataFrame ``df`` with the model's columns added (``prediction``,
    ``probability``...; the input's pass through), as the ``score`` step does: one
    ``mapInArrow`` over its batches."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    model = load_model(ref, models, storage_options=storage_options)
    kwargs = {"contributions": contributions, "contributions_by": contributions_by,
              "threshold": threshold}
    arrow_schema = to_arrow_schema(df.schema)
    out_schema = model.score_table(arrow_schema.empty_table(), **kwargs).schema

    def batches(parts: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in parts:
            scored = model.score_table(pa.Table.from_batches([batch]), **kwargs)
            yield from scored.cast(out_schema).to_batches()

    return df.mapInArrow(batches, from_arrow_schema(out_schema))


def score_dask(ddf: Any, ref: str, models: str | None = None, *,
               contributions: bool = False, contributions_by: str = "features",
               storage_options: dict[str, Any] | None = None,
               threshold: float | None = None) -> Any:
    """The Dask DataFrame ``ddf`` with the model's columns added, partition by partition
    (``map_partitions``; the model travels with the graph), lazily as Dask is."""
    model = load_model(ref, models, storage_options=storage_options)
    kwargs = {"contributions": contributions, "contributions_by": contributions_by,
              "threshold": threshold}
    meta = model.score(ddf._meta, **kwargs)
    return ddf.map_partitions(model.score, meta=meta, **kwargs)


# --------------------------------------------------------------------------- rows out


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: null in their place."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


KERNEL_ROWS = 64
"""Answers of at least this many rows are written as JSON by Arrow kernels (below, the
kernels' fixed cost is more than Python's json takes)."""


def json_body(table: pa.Table, model: str) -> bytes:
    """``{"predictions": [row objects], "model": ...}``: built by Arrow kernels from the
    columns' JSON literals where every column is a number, a bool or text (the usual
    answer), else through Python's json (lists of class probabilities, contributions)."""
    literals = [_json_literals(column) for column in table.columns] \
        if table.num_rows >= KERNEL_ROWS else []
    if literals and all(v is not None for v in literals):
        pieces: list[Any] = []
        for i, (name, values) in enumerate(zip(table.column_names, literals, strict=True)):
            pieces += [("{" if i == 0 else ", ") + json.dumps(name) + ": ", values]
        pieces[-1:] = [pieces[-1], "}"]
        rows = pc.binary_join_element_wise(*pieces, "")
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()),
                                                         rows), ", ")[0].as_py()
        return f'{{"predictions": [{joined}], "model": {json.dumps(model)}}}'.encode()
    rows = table.to_pylist()
    try:
        text = json.dumps({"predictions": rows, "model": model}, allow_nan=False,
                          default=_plain)
    except ValueError:
        text = json.dumps({"predictions": _finite(rows), "model": model}, default=_plain)
    return text.encode()


def _plain(value: Any) -> Any:
    """A value JSON has no type for, as JSON says it: dates and times in ISO 8601,
    durations in seconds, decimals as text, bytes in base64."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _json_literals(column: pa.ChunkedArray) -> pa.Array | None:
    """Each value of ``column`` as its JSON text (null for nulls, NaN and infinities), or
    None for a type this does not write (lists, structs...)."""
    values = column.combine_chunks()
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.dictionary_decode(), kind.value_type
    if pa.types.is_integer(kind):
        text = pc.cast(values, pa.string())
    elif pa.types.is_floating(kind):
        text = pc.cast(values, pa.string())  # the shortest text that reads back exactly
        whole = pc.match_substring_regex(text, r"^-?[0-9]+$")
        text = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
        text = pc.if_else(pc.is_finite(values), text, pa.scalar(None, pa.string()))
    elif pa.types.is_boolean(kind):
        text = pc.if_else(values, "true", "false")
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pa.array([None if v is None else json.dumps(v) for v in values.to_pylist()],
                        pa.string())
    else:
        return None
    return pc.fill_null(text, "null")


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def csv_body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


# --------------------------------------------------------------------------- requests


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(f"params.{name} must be true or false, not {json.dumps(value)}")


def request_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring options of a request (its JSON ``params`` or its query string)."""
    unknown = [k for k in params if k not in REQUEST_PARAMS]
    if unknown:
        raise RequestError(f"unknown param '{unknown[0]}'{suggest(unknown[0], REQUEST_PARAMS)}",
                           hint=f"params: {', '.join(REQUEST_PARAMS)}")
    out: dict[str, Any] = {"contributions": _flag(params.get("contributions", False),
                                                  "contributions"),
                           "contributions_by": params.get("contributions_by", "features")}
    keep = params.get("keep", [])
    if isinstance(keep, str):
        keep = [k for k in keep.split(",") if k]
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise RequestError("params.keep must be a list of column names")
    out["keep"] = keep
    out["threshold"] = threshold_value(params.get("threshold"), "params.threshold")
    return out


def threshold_value(value: Any, name: str = "threshold") -> float | None:
    """A caller's threshold as a float from 0 to 1 (None: none); anything else (1.5, NaN,
    'half', true) a RequestError that says so."""
    if value is None:
        return None
    number = None
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if number is None or not 0.0 <= number <= 1.0:
        shown = "NaN" if number is not None and math.isnan(number) else json.dumps(
            value, default=str)
        raise RequestError(f"{name} must be a number from 0 to 1, not {shown}",
                           hint="a binary classifier's probability at or above it is the "
                                "second class (evaluate's thresholds.best_f1 suggests one)")
    return number


def media_type(header: str | None) -> str:
    kind = (header or JSON).split(";")[0].strip().lower()
    if kind in ("", "*/*"):
        return JSON
    if kind not in MEDIA_TYPES:
        raise RequestError(f"content type '{kind}' is not one the server reads",
                           hint=f"send {', '.join(MEDIA_TYPES)}", status=415)
    return kind


def answer_type(accept: str | None, request: str) -> str:
    """The response's media type: what ``Accept`` names first of JSON, CSV and Arrow,
    else Arrow for an Arrow request and JSON for the rest."""
    for item in (accept or "").split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in (JSON, CSV, ARROW):
            return kind
        if kind == ARROW_FILE:
            return ARROW
    return ARROW if request in (ARROW, ARROW_FILE) else JSON


DRIFT_BATCH = 1024
"""A drift window counts the rows it is given this many at a time (or at its end)."""


class DriftWindow:
    """Live drift of the rows a server scores with one model version: each input
    column's PSI against the model's training profile (the ``drift`` step's figures),
    over consecutive windows of at least ``rows`` rows; ``last`` holds the latest
    complete window's. None of it for a model saved without a profile."""

    def __init__(self, model: ScoringModel, rows: int):
        self.ref, self.rows = model.ref, rows
        self.drift = Drift(model=model.ref)
        self.drift.bind(None, [], {"meta": model.model.meta})
        self.state = self.drift.init(model.input_schema)
        self.columns = list(self.state["columns"])
        self.stats: dict[str, Any] | None = None
        self.pending: list[pa.Table] = []  # rows not counted yet (a batch is cheaper)
        self.pending_rows = 0
        self.last: dict[str, Any] | None = None
        self.lock = threading.Lock()

    @staticmethod
    def of(model: ScoringModel, rows: int) -> DriftWindow | None:
        return DriftWindow(model, rows) if rows and model.model.meta.get("profile") else None

    def reset(self) -> None:
        """Start the window again (after a batch it could not count)."""
        with self.lock:
            self.pending, self.pending_rows, self.stats = [], 0, None

    def add(self, table: pa.Table) -> dict[str, Any] | None:
        """Count a request's rows (in the trained types); the figures of the window they
        complete, if they do."""
        present = [c for c in self.columns if c in table.column_names]
        if len(present) < len(self.columns) or not table.num_rows:
            return None
        with self.lock:
            self.pending.append(table.select(present))
            self.pending_rows += table.num_rows
            counted = (self.stats or {}).get("rows", 0)
            if self.pending_rows < min(DRIFT_BATCH, self.rows - counted):
                return None
            batch = pa.concat_tables(self.pending, promote_options="permissive")
            self.pending, self.pending_rows = [], 0
            stats = self.drift.partial(batch, self.state, HOST)
            self.stats = stats if self.stats is None else self.drift.combine(self.stats,
                                                                            stats)
            if self.stats["rows"] < self.rows:
                return None
            done, self.stats = self.stats, None
        figures = self.drift.update(done, self.state)[0]["metrics_values"]
        self.last = figures
        return figures


LOGGED = ("served_at", "model", "request_id")
"""The columns the row log adds to the model's inputs and outputs."""


class RowLog:
    """The rows a server scored, appended to Parquet under a folder (``--log-rows``):
    each row's model inputs (in the trained types), its prediction and probability,
    when (``served_at``, UTC), by which version (``model``) and in which request
    (``request_id``); files of up to ``file_rows`` rows written every ``every`` seconds
    and at shutdown, in ``date=YYYY-MM-DD`` folders. A `read_parquet` of the folder
    reads them (with the date as a column): drift and evaluation pipelines over what
    was served. A file appears whole (written beside, then renamed); a write that
    fails is logged and counted, never a failed request."""

    def __init__(self, root: str, every: float, file_rows: int,
                 storage_options: dict[str, Any] | None = None):
        self.location = fs_resolve(root, storage_options)
        self.root, self.every, self.file_rows = root, every, file_rows
        self.prefix = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.files = 0
        self.lock = threading.Lock()
        self.writing = threading.Lock()  # one flush at a time, files numbered in order
        self.written = 0
        self.failed = 0
        self.on_flush: Any = None  # on_flush(written, lost): the server's metrics
        self.flusher: threading.Thread | None = None

    def add(self, scored: pa.Table, model: ScoringModel, request_id: str) -> bool:
        """Keep a request's rows; True when enough are kept for a file."""
        names = [*model.required, *(c for c in model.outputs() if c in scored.column_names)]
        rows = scored.num_rows
        now = pa.scalar(datetime.datetime.now(datetime.UTC), pa.timestamp("us", tz="UTC"))
        table = scored.select(names).append_column(
            "served_at", pa.repeat(now, rows)).append_column(
            "model", pa.repeat(pa.scalar(model.ref), rows)).append_column(
            "request_id", pa.repeat(pa.scalar(request_id), rows))
        with self.lock:
            self.pending.append(table)
            self.rows += rows
            return self.rows >= self.file_rows

    def flush_soon(self) -> None:
        """``flush`` on a thread of its own (one at a time): a request that fills a file
        does not wait for its write, nor hold a scoring slot meanwhile."""
        with self.lock:
            if self.flusher is not None and self.flusher.is_alive():
                return  # the running flush takes what is kept when it starts; the
                # timer's next one takes the rest
            self.flusher = threading.Thread(target=self.flush, name="sluice-row-log",
                                            daemon=True)
            self.flusher.start()

    def flush(self) -> tuple[int, int]:
        """Write what is kept: (rows written, rows lost to a failed write)."""
        with self.writing:
            with self.lock:
                pending, self.pending, self.rows = self.pending, [], 0
            groups: dict[tuple[str, pa.Schema], list[pa.Table]] = {}
            for table in pending:
                day = table.column("served_at")[0].as_py().date().isoformat()
                groups.setdefault((day, table.schema), []).append(table)
            written = lost = 0
            for (day, _), tables in groups.items():
                table = pa.concat_tables(tables)
                try:
                    self._write(day, table)
                except (OSError, pa.ArrowException) as exc:
                    lost += table.num_rows
                    log.error("--log-rows: %d scored rows not written to %s: %s",
                              table.num_rows, self.root, exc)
                else:
                    written += table.num_rows
            self.written += written
            self.failed += lost
            if self.on_flush is not None:
                self.on_flush(written, lost)
            return written, lost

    def _write(self, day: str, table: pa.Table) -> None:
        self.files += 1
        name = f"{self.prefix}-{self.files:06d}.parquet"
        folder = self.location.join(f"date={day}")
        if self.location.local:
            os.makedirs(folder, exist_ok=True)
            with written_whole(os.path.join(folder, name)) as staging:
                pq.write_table(table, staging)
        else:  # an object store's put is whole
            pq.write_table(table, f"{folder}/{name}", filesystem=self.location.filesystem)


@dataclass
class Settings:
    """``sluice serve``'s options (travel to worker processes as JSON)."""

    ref: str
    models: str | None = None
    device: str = "cpu"
    dtype: str = "float64"
    threads: int = 1
    max_rows: int = 1_000_000
    max_mb: float = 100.0
    refresh: float = 0.0
    drift_window: int = 10_000
    token: str | None = None  # requests but /ping and /health need `Bearer <token>`
    canary: str | None = None  # a model that answers canary_percent % of the requests
    canary_percent: float = 0.0
    shadow: str | None = None  # a model that scores every request too, unanswered
    log_rows: str | None = None  # a folder (or URL) the scored rows are appended to
    log_every: float = 60.0
    log_file_rows: int = 100_000
    storage_options: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> Settings:
        return cls(**json.loads(text))


class Server:
    """The model a server scores with (swapped when ``refresh`` finds the reference
    moved), parsing and answering one request at a time per thread."""

    def __init__(self, settings: Settings, model: ScoringModel | None = None):
        self.settings = settings
        self.store = ModelStore(settings.models, settings.storage_options or None)
        self.model = model or self._load(settings.ref)
        # a canary answers a share of the requests (chosen by their id: a retry goes to
        # the same model); a shadow scores every request after its answer is sent
        self.canary = self._load(settings.canary) if settings.canary else None
        self.shadow = self._load(settings.shadow) if settings.shadow else None
        self.rowlog = None if not settings.log_rows else RowLog(
            settings.log_rows, settings.log_every, settings.log_file_rows,
            settings.storage_options or None)
        self.drift = DriftWindow.of(self.model, settings.drift_window)
        self.on_drift: Any = None  # on_drift(window figures): the server's metrics, log
        self.on_shadow: Any = None  # on_shadow(ref, rows, disagreeing, failed)

    def _load(self, ref: str) -> ScoringModel:
        chosen, _ = resolve(self.settings.device)
        model = self.store.load(ref)
        return ScoringModel(model, asked=ref, path=self.store.path_of(model),
                            placement=Placement(chosen, self.settings.dtype))

    def refresh(self) -> list[tuple[str, str, str]]:
        """Load the version each reference (the model's, the canary's, the shadow's)
        names now where it moved: ``(reference, version before, version now)`` each."""
        moved = []
        for role in ("model", "canary", "shadow"):
            current: ScoringModel | None = getattr(self, role)
            if current is None:
                continue
            name, version = self.store.resolve(current.asked)
            if (name, version) == (current.name, current.version):
                continue
            setattr(self, role, self._load(current.asked))
            moved.append((current.asked, current.ref, getattr(self, role).ref))
            if role == "model":
                self.drift = DriftWindow.of(self.model, self.settings.drift_window)
        return moved

    def pick(self, request_id: str) -> ScoringModel:
        """The model that answers the request ``request_id``: the canary for its share
        of the ids (a hash of the id, so the same id always meets the same model)."""
        canary = self.canary
        if canary is None or not request_id:
            return self.model
        digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") % 10_000 < self.settings.canary_percent * 100:
            return canary
        return self.model

    def shadowed(self, table: pa.Table, answered: pa.Table, options: dict[str, Any],
                 request_id: str) -> None:
        """Score a request's rows with the shadow model after its answer: into the row
        log under the shadow's version, and counted where it predicts otherwise."""
        shadow = self.shadow
        if shadow is None or not table.num_rows:
            return
        try:
            scored = shadow.score_table(table, **options)
        except SluiceError as exc:
            log.warning("shadow %s could not score request %s: %s", shadow.ref, request_id,
                        exc)
            if self.on_shadow is not None:
                self.on_shadow(shadow.ref, 0, 0, 1)
            return
        theirs = scored.column("prediction").combine_chunks()
        ours = answered.column("prediction").combine_chunks()
        same = pc.fill_null(pc.equal(theirs.cast(ours.type) if theirs.type != ours.type
                                     else theirs, ours), False)
        disagreeing = int(len(same) - pc.sum(same).as_py()) if len(same) else 0
        if self.on_shadow is not None:
            self.on_shadow(shadow.ref, scored.num_rows, disagreeing, 0)
        if self.rowlog is not None and self.rowlog.add(scored, shadow, request_id):
            self.rowlog.flush_soon()

    def table_of(self, body: bytes, kind: str, model: ScoringModel,
                 query: Mapping[str, str]) -> tuple[pa.Table, dict[str, Any]]:
        """The request's rows and its options (JSON ``params`` over the query string).
        Of a JSON body only the columns the model reads and those ``keep`` names are
        converted: a column nobody asked for cannot fail a request."""
        if kind == JSON:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise RequestError(f"the body is not JSON ({exc})") from None
            except RecursionError:
                raise RequestError("the body's JSON is nested too deeply",
                                   hint="send rows of plain values") from None
            columns, params = json_columns(parsed)
            options = request_params({**query, **params})
            if any(len(v) for v in columns.values()):  # rows: the model's columns too
                model.check_columns(pa.schema([(c, pa.null()) for c in columns]))
            wanted = {*model.required, *options["keep"]}
            return columns_table({k: v for k, v in columns.items() if k in wanted},
                                 model.input_schema), options
        try:
            if kind == CSV:
                types = {f.name: (f.type.value_type if pa.types.is_dictionary(f.type)
                                  else f.type) for f in model.input_schema}
                table = pacsv.read_csv(io.BytesIO(body),
                                       convert_options=pacsv.ConvertOptions(column_types=types))
            elif kind == ARROW:
                table = pa.ipc.open_stream(body).read_all()
            else:
                table = pa.ipc.open_file(body).read_all()
        except ARROW_ERRORS as exc:
            what = "CSV" if kind == CSV else "an Arrow IPC " + kind.rsplit(".", 1)[-1]
            raise RequestError(f"the body is not {what} the server can read ({exc})") from None
        return table, request_params(query)

    def score(self, body: bytes, kind: str, answer: str, query: Mapping[str, str],
              request_id: str = "") -> tuple[bytes, str, int, Any]:
        """The response body of one request, the model version that scored it, the rows
        it scored (kept for the row log, if there is one) and the shadow's work to do
        once the answer is sent (None without a shadow)."""
        model = self.pick(request_id)  # one version for the whole request, whatever
        # refresh does meanwhile
        table, options = self.table_of(body, kind, model, query)
        if table.num_rows == 0 and not table.num_columns:  # no rows, so no columns named
            table = model.input_schema.empty_table()
        if table.num_rows > self.settings.max_rows:
            raise RequestError(f"the request has {table.num_rows} rows; this server scores "
                               f"up to {self.settings.max_rows} a request",
                               hint="split it, or start the server with a larger --max-rows",
                               status=413)
        keep = options.pop("keep")
        missing = [k for k in keep if k not in table.column_names]
        if missing:
            raise RequestError(f"params.keep: column '{missing[0]}' is not in the request"
                               f"{suggest(missing[0], table.column_names)}")
        table = _cast(table, model.input_schema)  # the trained types: the log's, drift's
        scored = model.score_table(table, **options)
        window = self.drift
        if window is not None and window.ref == model.ref:
            try:
                figures = window.add(table)
            except Exception:  # live drift is a measurement: never a failed request
                log.exception("%s: the drift window could not count a request's rows",
                              model.ref)
                window.reset()
                figures = None
            if figures is not None and self.on_drift is not None:
                self.on_drift(model.ref, figures)
        if self.rowlog is not None and scored.num_rows and self.rowlog.add(
                scored, model, request_id):
            self.rowlog.flush_soon()  # a file's worth, written beside the requests
        have = set(scored.column_names)
        added = model.outputs(options["contributions"], options["contributions_by"])
        names = list(dict.fromkeys([*keep, *(c for c in added if c in have)]))
        out = scored.select(names)
        job = None
        if self.shadow is not None and "prediction" in have:
            def job() -> None:
                self.shadowed(table, scored, options, request_id)
        if answer == ARROW:
            return arrow_body(out), model.ref, out.num_rows, job
        if answer == CSV:
            nested = [f for f in out.schema if pa.types.is_nested(f.type)]
            if nested:
                raise RequestError(f"column '{nested[0].name}' is {nested[0].type}, which "
                                   "CSV cannot hold", hint="ask for JSON or Arrow",
                                   status=406)
            return csv_body(out), model.ref, out.num_rows, job
        return json_body(out, model.ref), model.ref, out.num_rows, job


# --------------------------------------------------------------------------- HTTP

# seconds: from a cached one-row answer to a large batch
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)


class Metrics:
    """A server's Prometheus metrics (``GET /metrics``): requests by model, status and
    format, their latency, rows scored, the model served. With ``--workers`` every
    process writes to ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them
    (prometheus_client's multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry
        self.requests = Counter("sluice_requests", "Scoring requests answered",
                                ["model", "status", "format"], registry=registry)
        self.seconds = Histogram("sluice_request_seconds",
                                 "Seconds from a scoring request's arrival to its answer",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.rows = Counter("sluice_rows", "Rows scored", ["model"], registry=registry)
        self.model = Gauge("sluice_model_info", "1 for the model version being served",
                           ["model", "asked"], registry=registry,
                           multiprocess_mode="mostrecent")
        self.psi = Gauge("sluice_drift_psi", "An input column's PSI against the training "
                         "rows over the last complete --drift-window of scored rows",
                         ["model", "column"], registry=registry,
                         multiprocess_mode="mostrecent")
        self.windows = Counter("sluice_drift_windows", "Complete --drift-window windows",
                               ["model"], registry=registry)
        self.shadow_rows = Counter("sluice_shadow_rows", "Rows the --shadow model scored",
                                   ["model"], registry=registry)
        self.disagreeing = Counter("sluice_shadow_disagreements", "Rows the --shadow model "
                                   "predicts otherwise than the answer", ["model"],
                                   registry=registry)
        self.shadow_failures = Counter("sluice_shadow_failures", "Requests the --shadow "
                                       "model could not score", ["model"], registry=registry)
        self.logged_rows = Counter("sluice_logged_rows", "Scored rows written by --log-rows",
                                   registry=registry)
        self.lost_rows = Counter("sluice_log_lost_rows", "Scored rows --log-rows failed "
                                 "to write", registry=registry)

    def shadowed(self, ref: str, rows: int, disagreeing: int, failed: int) -> None:
        if rows:
            self.shadow_rows.labels(ref).inc(rows)
        if disagreeing:
            self.disagreeing.labels(ref).inc(disagreeing)
        if failed:
            self.shadow_failures.labels(ref).inc(failed)

    def drifted(self, ref: str, figures: dict[str, Any]) -> None:
        for column, value in figures["psi"].items():
            self.psi.labels(ref, column).set(value)
        self.windows.labels(ref).inc()

    def logged(self, written: int, lost: int) -> None:
        if written:
            self.logged_rows.inc(written)
        if lost:
            self.lost_rows.inc(lost)

    def served(self, ref: str, asked: str, before: str | None = None) -> None:
        if before is not None:
            self.model.labels(before, asked).set(0)
        self.model.labels(ref, asked).set(1)

    def answered(self, ref: str, status: int, kind: str, seconds: float, rows: int) -> None:
        self.requests.labels(ref, str(status), kind.rsplit("/", 1)[-1].split(".")[-1]).inc()
        self.seconds.labels(ref).observe(seconds)
        if rows:
            self.rows.labels(ref).inc(rows)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def create_app(settings: Settings, model: ScoringModel | None = None,
               started: Callable[[], None] | None = None) -> Any:
    """The ASGI application of ``sluice serve`` (Starlette); ``started()`` is called
    once it has started (its model loaded), as the server begins to accept requests."""
    import anyio
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    server = Server(settings, model)
    metrics = Metrics()
    for other in (server.model, server.canary, server.shadow):
        if other is not None:
            metrics.served(other.ref, other.asked)
    server.on_shadow = metrics.shadowed
    if server.rowlog is not None:
        server.rowlog.on_flush = metrics.logged

    def drifted(ref: str, figures: dict[str, Any]) -> None:
        metrics.drifted(ref, figures)
        if figures["drifted"]:
            shown = ", ".join(f"{c} {figures['psi'][c]:.3g}" for c in figures["drifted"])
            log.warning("%s: the last %d rows moved from the training rows: PSI %s (over "
                        "0.25)", ref, figures["rows"], shown)

    server.on_drift = drifted
    limit = int(settings.max_mb * 2**20)
    state: dict[str, Any] = {}

    def problem(status: int, code: str, message: str, hint: str | None = None) -> Response:
        body: dict[str, Any] = {"error_code": code, "message": message}
        if hint:
            body["hint"] = hint
        return JSONResponse(body, status_code=status,
                            headers={MODEL_HEADER: server.model.ref})

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise RequestError(f"the body is {int(length) / 2**20:.1f} MB; this server takes "
                               f"up to {settings.max_mb:g} MB",
                               hint="split it, or start the server with a larger --max-mb",
                               status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"the body is over {settings.max_mb:g} MB",
                                   hint="split it, or start the server with a larger "
                                        "--max-mb", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    expected = settings.token.encode() if settings.token else None

    def refused(request: Request) -> Response | None:
        """401 unless the request carries the server's token (when it has one)."""
        if expected is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              expected):
            return None
        response = problem(401, "UNAUTHORIZED",
                           f"{request.method} {request.url.path}: "
                           + ("the token is not this server's" if given
                              else "no Authorization header"),
                           "send Authorization: Bearer <the token the server was started "
                           "with>")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def invocations(request: Request) -> Response:
        start = time.perf_counter()
        kind = "unknown"
        request_id = request.headers.get(REQUEST_HEADER) or uuid.uuid4().hex
        denied = refused(request)
        if denied is not None:
            metrics.answered(server.model.ref, 401, kind, time.perf_counter() - start, 0)
            return denied
        try:
            kind = media_type(request.headers.get("content-type"))
            answer = answer_type(request.headers.get("accept"), kind)
            body = await read_body(request)
            content, ref, rows, job = await anyio.to_thread.run_sync(
                server.score, body, kind, answer, dict(request.query_params), request_id,
                limiter=state["limiter"])
        except RequestError as exc:
            response = problem(exc.status, "BAD_REQUEST" if exc.status == 400 else
                               "UNSUPPORTED" if exc.status in (406, 415) else "TOO_LARGE",
                               str(exc.message), exc.hint)
        except SluiceError as exc:  # the data does not fit the model: the user's to fix
            where = f"{exc.where}: " if exc.where else ""
            response = problem(400, "BAD_REQUEST" if not isinstance(exc, DataError)
                               else "INVALID_DATA", where + exc.message, exc.hint)
        except Exception:
            metrics.answered(server.model.ref, 500, kind, time.perf_counter() - start, 0)
            raise
        else:
            response = Response(content, media_type=answer,
                                headers={MODEL_HEADER: ref, REQUEST_HEADER: request_id},
                                background=None if job is None else BackgroundTask(
                                    anyio.to_thread.run_sync, job,
                                    limiter=state["limiter"]))
            metrics.answered(ref, 200, kind, time.perf_counter() - start, rows)
            return response
        metrics.answered(server.model.ref, response.status_code, kind,
                         time.perf_counter() - start, 0)
        return response

    async def exposition(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        content, media = metrics.exposition()
        return Response(content, headers={"Content-Type": media})

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": server.model.ref},
                            headers={MODEL_HEADER: server.model.ref})

    async def version(request: Request) -> Response:
        return refused(request) or JSONResponse({"sluice": metadata.version("sluice")})

    async def describe(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        model = server.model
        body = {**model.describe(), "formats": list(MEDIA_TYPES),
                "params": list(REQUEST_PARAMS), "max_rows": settings.max_rows,
                "max_mb": settings.max_mb, "refresh": settings.refresh,
                "process": os.getpid(),
                "drift_window": settings.drift_window if server.drift else None,
                "drift": server.drift.last if server.drift else None,
                "canary": None if server.canary is None else {
                    "model": server.canary.ref, "asked": server.canary.asked,
                    "percent": settings.canary_percent},
                "shadow": None if server.shadow is None else {
                    "model": server.shadow.ref, "asked": server.shadow.asked}}
        return JSONResponse(body, headers={MODEL_HEADER: model.ref})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = problem(exc.status_code, "NOT_FOUND" if exc.status_code == 404 else
                           "METHOD_NOT_ALLOWED" if exc.status_code == 405 else "HTTP_ERROR",
                           f"{request.method} {request.url.path}: {exc.detail}",
                           "POST /invocations scores; GET /ping, /health, /metadata, "
                           "/metrics, /version")
        for key, value in (exc.headers or {}).items():  # a 405's Allow
            response.headers[key] = value
        return response

    async def bug(request: Request, exc: Exception) -> Response:
        # Starlette raises it again once this is sent: uvicorn logs its traceback
        return problem(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}",
                       "this looks like a bug in sluice; please report it with the "
                       "server's log")

    async def refresher() -> None:
        while True:
            await asyncio.sleep(settings.refresh)
            try:
                moved = await anyio.to_thread.run_sync(server.refresh)
            except Exception as exc:  # a store down for a while: try again next time
                log.warning("refresh of %s failed, still serving %s: %s", settings.ref,
                            server.model.ref, exc)
                continue
            for asked, before, now in moved:
                metrics.served(now, asked, before)
                log.warning("now serving %s (was %s) for %s", now, before, asked)

    async def flush() -> None:
        assert server.rowlog is not None
        await anyio.to_thread.run_sync(server.rowlog.flush)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(settings.log_every)
            try:
                await flush()
            except Exception:  # a write's failure is logged and counted by flush itself
                log.exception("--log-rows: a flush failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["limiter"] = anyio.CapacityLimiter(settings.threads)
        tasks = ([asyncio.create_task(refresher())] if settings.refresh > 0 else []) + (
            [asyncio.create_task(flusher())] if server.rowlog is not None else [])
        if started is not None:
            started()
        try:
            yield
        finally:
            try:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            finally:
                if server.rowlog is not None:  # the rows scored since the last file
                    await flush()

    routes = [Route("/invocations", invocations, methods=["POST"]),
              Route("/ping", ping, methods=["GET"]), Route("/health", ping, methods=["GET"]),
              Route("/version", version, methods=["GET"]),
              Route("/metrics", exposition, methods=["GET"]),
              Route("/metadata", describe, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: bug})


def app_from_environment() -> Any:
    """A worker process's application (``--workers``: uvicorn imports this); once it has
    started, a file named by the process id in the folder ``STARTED`` names says so."""
    folder = Path(os.environ[STARTED])
    return create_app(Settings.loads(os.environ[ENVIRONMENT]),
                      started=lambda: (folder / str(os.getpid())).touch())


def _uvicorn() -> Any:
    """uvicorn, once the serve extra's packages are known to be there."""
    for name in ("uvicorn", "starlette", "prometheus_client"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise SluiceError(f"sluice serve needs {name}, which is not installed",
                              hint="pip install 'sluice[serve]'") from None
    return importlib.import_module("uvicorn")


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          access_log: bool = True, log_level: str = "info",
          ready: Any = None, certfile: str | None = None, keyfile: str | None = None
          ) -> None:
    """Load the model (a problem with it stops here, before the port opens), listen on
    ``host:port`` (0: a free port; HTTPS with ``certfile`` and ``keyfile``) and answer
    until SIGINT or SIGTERM; ``ready(url, model)`` is called once every process has loaded
    the model and started (a request sent then is answered at once, not after the
    workers' start, seconds on a loaded machine)."""
    uvicorn = _uvicorn()
    if (certfile is None) != (keyfile is None):
        raise SluiceError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    if certfile is not None:  # checked here: a worker would fail in a loop of restarts
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile,
                                                                                keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise SluiceError(f"cannot use --ssl-certfile {certfile} with --ssl-keyfile "
                              f"{keyfile}: {exc.strerror or exc}",
                              hint="give a PEM certificate and its PEM private key") from None
    server = Server(settings)  # the model loads and is checked once, here
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio then sets TCP_NODELAY on each connection (protocol 0
    # leaves Nagle on, and a keep-alive answer waits ~40 ms for a delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SluiceError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                          hint="choose another --port (0: any free port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    common: dict[str, Any] = {"access_log": access_log, "log_level": log_level,
                              "lifespan": "on", "timeout_graceful_shutdown": 30}
    if certfile is not None:
        common.update(ssl_certfile=certfile, ssl_keyfile=keyfile)
    url = f"{'https' if certfile else 'http'}://{shown}:{bound}"
    announce = None if ready is None else (lambda: ready(url, server.model))
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again:
    # it lands here, and the exit status is 130 / 143 as `sluice run`'s
    stopped: list[int] = []
    scratch: tempfile.TemporaryDirectory[str] | None = None
    stopping = threading.Event()
    waiting: threading.Thread | None = None  # for the workers to start, to announce it
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, frame: stopped.append(sig))
                for sig in handled}
    try:
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            os.environ[ENVIRONMENT] = settings.dumps()
            # the workers' metrics, in a folder of this server's alone (another's, or an
            # earlier run's, would add its counts to these), and their word that they
            # have started
            scratch = tempfile.TemporaryDirectory(prefix="sluice-serve-")
            metrics, started = Path(scratch.name, "metrics"), Path(scratch.name, "started")
            metrics.mkdir()
            started.mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
            os.environ[STARTED] = str(started)
            if announce is not None:
                waiting = threading.Thread(target=_ready_when_started, daemon=True,
                                           args=(started, workers, stopping, announce))
                waiting.start()
            config = uvicorn.Config("pipelines.serving:app_from_environment", factory=True,
                                    workers=workers, **common)
            supervisor = Multiprocess(config, sockets=[sock])
            for sig in handled:  # the supervisor stops its workers; the status is ours
                signal.signal(sig, lambda sig, frame: (stopped.append(sig),
                                                       supervisor.signal_queue.append(sig)))
            supervisor.run()
        else:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # one process: its own counts
            config = uvicorn.Config(create_app(settings, server.model, announce), **common)
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        stopping.set()
        if waiting is not None:
            waiting.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        if scratch is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            os.environ.pop(STARTED, None)
            scratch.cleanup()
        sys.stderr.flush()
    if stopped:
        raise SystemExit(128 + stopped[0])


def _ready_when_started(started: Path, workers: int, stopping: threading.Event,
                        ready: Callable[[], None]) -> None:
    """``ready()`` once ``workers`` worker processes have said in ``started`` that they
    have started; nothing if the server stops first."""
    while not stopping.wait(0.05):
        if sum(1 for _ in started.iterdir()) >= workers:
            ready()
            return


__all__ = ["ScoringModel", "load_model", "spark_udf", "score_spark", "score_dask", "serve",
           "create_app",
           "Settings", "RequestError"]
