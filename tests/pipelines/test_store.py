"""The model registry: versions, references, damaged artifacts, concurrent saves."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.base import ArtifactError, SluiceError
from pipelines.store import FORMAT_VERSION, ModelStore

SCHEMA = pa.schema([("a", pa.float64()), ("b", pa.int64()), ("label", pa.int64())])


def centered(means: list[float]):
    from sluice_testops import Centered, CenterParams

    return Centered(CenterParams(columns=["a", "b"]), np.array(means))


def test_save_load_and_references(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "models"))
    for i in range(3):
        model = store.save("m", [centered([i, 2.0 * i])], SCHEMA, {"pipeline": "p"})
        assert model.version == i + 1
    assert store.names() == ["m"] and store.versions("m") == [1, 2, 3]
    assert store.resolve("m") == ("m", 3) == store.resolve("m@latest")
    loaded = store.load("m@2")
    np.testing.assert_array_equal(loaded.chain.steps[0].means, [1.0, 2.0])
    assert loaded.required == ["a", "b"] and loaded.input_schema == SCHEMA
    meta = json.loads((tmp_path / "models" / "m" / "2" / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["steps"][0]["op"].endswith(
        "sluice_testops.Centered")
    table = pa.table({"a": [1.0, 3.0], "b": [2, 4], "label": [0, 1]})
    assert loaded.chain.transform(table, np).column("a").to_pylist() == [0.0, 2.0]


@pytest.mark.parametrize(("ref", "message"), [
    ("n", "no model 'n'"), ("mm@1", "did you mean 'm'?"), ("m@7", "has no version 7"),
    ("m@-x", "is not a model reference"), ("m@x", "has no alias 'x'"),
    ("modèle", "a name is a letter or digit, then letters, digits, '_', '.' or '-'"),
])
def test_bad_references(tmp_path: Path, ref: str, message: str) -> None:
    store = ModelStore(str(tmp_path))
    store.save("m", [centered([0, 0])], SCHEMA)
    with pytest.raises(Exception, match=message):
        store.load(ref)


def test_a_registry_root_that_cannot_be_a_folder_is_a_user_error(tmp_path: Path) -> None:
    """A file where the root folder goes, or a parent that cannot be made: the registry
    and the option that moves it named, not a FileNotFoundError's traceback."""
    (tmp_path / "afile").write_text("")
    for root, why in [(tmp_path / "afile", "Not a directory"),
                      (tmp_path / "afile" / "models", "Not a directory")]:
        with pytest.raises(SluiceError, match=(
                f"^the model registry '{root}' cannot be used: {why} .*[(]--models DIR "
                r"[(]or \$SLUICE_MODELS[)] names a folder this user can create")):
            ModelStore(str(root)).save("m", [centered([0, 0])], SCHEMA)


def test_aliases_name_versions_and_move(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "models"))
    for i in range(3):
        store.save("m", [centered([i, i])], SCHEMA)
    assert store.aliases("m") == {}
    assert store.set_alias("m", "production", 2) is None
    assert store.set_alias("m", "staging", 3) is None
    assert store.resolve("m@production") == ("m", 2)
    np.testing.assert_array_equal(store.load("m@production").chain.steps[0].means, [1, 1])
    # promote: the alias moves; the latest is still the latest
    assert store.set_alias("m", "production", 3) == 2
    assert store.resolve("m@production") == ("m", 3) == store.resolve("m")
    assert ModelStore(str(tmp_path / "models")).aliases("m") == {"production": 3,
                                                                "staging": 3}
    assert store.remove_alias("m", "staging") == 3
    assert store.aliases("m") == {"production": 3}
    assert not list((tmp_path / "models" / "m" / "aliases").glob("*.tmp"))
    # versions and names do not see the aliases' folder
    assert store.versions("m") == [1, 2, 3] and store.names() == ["m"]


def test_delete_and_prune_keep_aliased_versions_and_never_reuse_a_number(tmp_path: Path
                                                                         ) -> None:
    store = ModelStore(str(tmp_path / "models"))
    for i in range(6):
        store.save("m", [centered([i, i])], SCHEMA)
    store.set_alias("m", "production", 2)
    with pytest.raises(ArtifactError, match=r"m@2 is named by m@production .*point the "
                                            "alias at another version"):
        store.delete("m", 2)
    with pytest.raises(ArtifactError, match="has no version 9"):
        store.delete("m", 9)
    store.delete("m", 6)  # the latest
    assert store.versions("m") == [1, 2, 3, 4, 5] and store.resolve("m") == ("m", 5)
    with pytest.raises(ArtifactError, match=r"has no version 6: it was deleted "
                                            r"20\d\d-\d\d-\d\dT[\d:]+Z \(versions: 1, 2"):
        store.load("m@6")
    assert (tmp_path / "models" / "m" / "6" / "DELETED").exists()
    assert store.save("m", [centered([7, 7])], SCHEMA).version == 7  # 6 stays taken
    assert store.prune("m", keep=2, dry_run=True) == [1, 3, 4]
    assert store.versions("m") == [1, 2, 3, 4, 5, 7]
    assert store.prune("m", keep=2) == [1, 3, 4]
    assert store.versions("m") == [2, 5, 7]
    with pytest.raises(ArtifactError, match=r"has no version 3: it was deleted .*Z "
                                            r"\(sluice models prune\)"):
        store.resolve("m@3")
    np.testing.assert_array_equal(store.load("m@production").chain.steps[0].means, [1, 1])
    with pytest.raises(ArtifactError, match="no model 'n'"):
        store.prune("n", keep=1)


def test_models_delete_and_prune_commands(tmp_path: Path) -> None:
    import subprocess

    from conftest import sluice_in_process

    root = str(tmp_path / "models")
    store = ModelStore(root)
    for i in range(4):
        store.save("m", [centered([i, i])], SCHEMA)
    store.set_alias("m", "production", 1)

    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return sluice_in_process("models", *args, "--models", root, cwd=Path.cwd())

    done = sluice("delete", "m@production")
    assert done.returncode == 1 and "'m@production' names no version number" in done.stderr
    assert sluice("delete", "m@3").stdout == "deleted m@3\n"
    assert sluice("prune", "m", "--keep", "1", "--dry-run").stdout == "would delete m@2\n"
    assert sluice("prune", "m", "--keep", "1").stdout == "deleted m@2\n"
    assert store.versions("m") == [1, 4]
    done = sluice("delete", "m@1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "m@1 is named by m@production" in done.stderr


def test_aliases_are_case_insensitive(tmp_path: Path) -> None:
    """A reference in another case names the alias; a new alias that differs from one of
    the model's only in case is refused, naming it (the same name moves it)."""
    store = ModelStore(str(tmp_path))
    for i in range(2):
        store.save("m", [centered([i, i])], SCHEMA)
    store.set_alias("m", "production", 1)
    assert store.resolve("m@Production") == store.resolve("m@PRODUCTION") == ("m", 1)
    assert store.resolve("m@Latest") == ("m", 2)
    with pytest.raises(ArtifactError) as info:
        store.set_alias("m", "Production", 2)
    assert info.value.message == (
        "model 'm' has alias 'production' (version 1), which differs from 'Production' in "
        "case only: aliases are case-insensitive, so 'Production' would name it too")
    assert info.value.hint == "spell it 'production' to point it elsewhere, or choose " \
                              "another name"
    assert store.aliases("m") == {"production": 1}
    assert store.set_alias("m", "production", 2) == 1  # moved, as spelt
    with pytest.raises(SluiceError, match="cannot be an alias"):
        store.set_alias("m", "LATEST", 1)
    assert store.remove_alias("m", "PRODUCTION") == 2
    assert store.aliases("m") == {}


def test_bad_aliases_say_what_to_do(tmp_path: Path) -> None:
    from operators.base import SluiceError

    store = ModelStore(str(tmp_path))
    store.save("m", [centered([0, 0])], SCHEMA)
    store.set_alias("m", "production", 1)
    with pytest.raises(ArtifactError) as info:
        store.resolve("m@prodution")
    assert "no alias 'prodution'; did you mean 'production'?" in info.value.message
    assert "production -> 1" in info.value.hint and "sluice models alias m@VERSION" in (
        info.value.hint)
    for bad in ("latest", "1st", "a b"):
        with pytest.raises(SluiceError, match="cannot be an alias"):
            store.set_alias("m", bad, 1)
    with pytest.raises(ArtifactError, match="has no version 4"):
        store.set_alias("m", "next", 4)
    with pytest.raises(ArtifactError, match="has no alias 'gone'"):
        store.remove_alias("m", "gone")
    # the version an alias points at was deleted by hand
    (tmp_path / "m" / "aliases" / "old.json").write_text('{"version": 9}')
    with pytest.raises(ArtifactError, match=r"alias m@old points at version 9, which is not"):
        store.resolve("m@old")


def test_damaged_and_newer_artifacts(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    for _ in range(4):
        store.save("m", [centered([0, 0])], SCHEMA)
    (tmp_path / "m" / "1" / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"m@1: model.json is unreadable"):
        store.load("m@1")
    (tmp_path / "m" / "2" / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"m@2: arrays.npz is unreadable"):
        store.load("m@2")
    meta = json.loads((tmp_path / "m" / "3" / "model.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "m" / "3" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="upgrade sluice"):
        store.load("m@3")
    meta = json.loads((tmp_path / "m" / "4" / "model.json").read_text())
    meta["steps"][0]["op"] = "os.system"
    (tmp_path / "m" / "4" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a sluice operator"):
        store.load("m@4")


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    store.save("m", [centered([0, 0])], SCHEMA)
    np.savez(tmp_path / "m" / "1" / "arrays.npz",
             **{"0.means": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ArtifactError, match="arrays.npz is unreadable"):
        store.load("m@1")


def _save_many(root: str, n: int, queue: multiprocessing.Queue) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))
    store = ModelStore(root)
    queue.put([store.save("m", [centered([1, 2])], SCHEMA).version for _ in range(n)])


def test_concurrent_saves_get_distinct_versions(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), 8, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    versions = sorted(v for _ in procs for v in queue.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert versions == list(range(1, 25))
    store = ModelStore(str(tmp_path))
    assert store.versions("m") == versions
    assert all(store.load(f"m@{v}").version == v for v in versions)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def _refuse_bare(name: str) -> None:
    raise ValueError(f"bare {name} is not JSON")


def _saved_with_a_nan_metric(workdir: Path, table: pa.Table, steps: str) -> Path:
    """``table`` read, ``steps`` (YAML steps), then a linear regression of a constant
    label ``y`` on ``z`` (its training r2: NaN), saved as model ``m``: its model.json."""
    import textwrap

    import pyarrow.parquet as pq
    from conftest import write_pipeline

    from pipelines.runner import run

    (workdir / "in").mkdir()
    pq.write_table(table, workdir / "in" / "a.parquet")
    run(write_pipeline(workdir, "pipeline: floats\nsteps:\n  - op: read_parquet\n"
                       "    path: in\n" + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ")
                       + "\n"
                       "  - op: linear_regression\n    label: y\n    features: [z]\n"
                       "    l2: 1.0\n  - op: save_model\n    name: m\n"), {})
    return workdir / "models" / "m" / "1" / "model.json"


def test_a_non_finite_float_loads_as_the_float_and_the_text_nan_as_text(
        workdir: Path) -> None:
    """A float NaN or inf where a field takes text too (impute's constant ``value``) is
    text in model.json, as every non-finite float is, and the float again when the model
    loads (it loaded as the text "nan": a model that imputes NaN could not score, "value
    'nan' does not suit column 'x'"); the text "nan" (a string column's fill) stays text,
    and a metric of NaN is the float again in the loaded model's metadata."""
    import math

    table = pa.table({"x": [1.0, None, float("nan"), 2.0], "s": ["a", None, "b", "a"],
                      "z": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 0.0, 0.0, 0.0]})
    path = _saved_with_a_nan_metric(workdir, table, """
          - op: impute
            columns: [x]
            strategy: constant
            value: .nan
          - op: impute
            columns: [s]
            strategy: constant
            value: nan""")
    saved = json.loads(path.read_text(), parse_constant=_refuse_bare)  # strict JSON still
    assert saved["steps"][0]["state"]["params"]["value"] == "nan"
    assert saved["steps"][1]["state"]["params"]["value"] == "nan"
    model = ModelStore(str(workdir / "models")).load("m")
    x_fill, s_fill = (step.params.value for step in model.chain.steps[:2])
    assert isinstance(x_fill, float) and math.isnan(x_fill) and s_fill == "nan"
    assert math.isnan(model.meta["metrics"]["linear_regression"]["training_r2"])
    assert "non_finite" not in model.meta
    scored = model.chain.transform(table, np)
    assert [v if v == v else "NaN" for v in scored.column("x").to_pylist()] == [
        1.0, "NaN", "NaN", 2.0]
    assert scored.column("s").to_pylist() == ["a", "nan", "b", "a"]


def test_where_the_non_finite_floats_are_is_read_with_care() -> None:
    """model.json lists the paths of its non-finite floats; a damaged list (paths that
    lead nowhere, or to other text) changes nothing it does not name rightly."""
    import math

    from operators import jsontext

    inf = float("inf")
    meta = {"a": [1.0, inf, {"b": -inf}], "t": "nan", "c": float("nan")}
    saved = json.loads(json.dumps(jsontext.floats_saved(meta), allow_nan=False))
    assert saved["non_finite"] == [["a", 1], ["a", 2, "b"], ["c"]] and saved["t"] == "nan"
    back = jsontext.floats_loaded(saved)
    assert back["a"][1] == inf and back["a"][2]["b"] == -inf and math.isnan(back["c"])
    assert back["t"] == "nan" and "non_finite" not in back
    damaged = {"a": "nan", "t": "x", "l": ["inf"],
               "non_finite": [["zz", 3], ["t"], ["a", "b"], "a", [], ["l", 5], 7, ["l", 0]]}
    assert jsontext.floats_loaded(damaged) == {"a": "nan", "t": "x", "l": [inf]}
    assert jsontext.floats_loaded({"a": "nan", "non_finite": "a"}) == {"a": "nan"}


def test_model_json_is_strict_json_and_old_files_still_read(workdir: Path) -> None:
    """A fitted fill of inf (a column's most frequent value) and a metric of NaN (the
    r2 of a constant label) are "inf" and "nan" in model.json, as in a run record: a
    strict reader reads the file, and the model scores as before; a file written with
    bare NaN (before) reads as it did."""
    inf = float("inf")
    table = pa.table({"x": [inf, None, inf, 2.0], "z": [1.0, 2.0, 3.0, 4.0],
                      "y": [0.0, 0.0, 0.0, 0.0]})
    path = _saved_with_a_nan_metric(workdir, table, """
          - op: impute
            columns: [x]
            strategy: most_frequent""")
    meta = json.loads(path.read_text(), parse_constant=_refuse_bare)
    assert meta["steps"][0]["state"]["fill"] == {"x": "inf"}
    assert meta["metrics"]["linear_regression"]["training_r2"] == "nan"
    store = ModelStore(str(workdir / "models"))
    scored = store.load("m").chain.steps[0].transform(table, np)
    assert scored.column("x").to_pylist() == [inf, inf, inf, 2.0]
    path.write_text(path.read_text().replace('"inf"', "Infinity").replace('"nan"', "NaN"))
    old = store.load("m")
    assert old.meta["steps"][0]["state"]["fill"] == {"x": inf}
    assert np.isnan(old.meta["metrics"]["linear_regression"]["training_r2"])
    assert old.chain.steps[0].transform(table, np).equals(scored)
