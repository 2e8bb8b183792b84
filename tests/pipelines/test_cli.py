"""The `sluice` command as a user runs it: exit codes, one-line errors, listings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import exploding_pipeline, refused, sluice_in_process, write_pipeline

from operators.base import registered

SLUICE = str(Path(sys.executable).parent / "sluice")


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "1"}
    return subprocess.run([SLUICE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sluice ARGS` in this process, for tests of what the commands say and do over
    several calls (the other tests run the console script, as a user does)."""
    return sluice_in_process(*args, cwd=cwd, env={"CI": "1"})


TRAIN = """
    pipeline: center
    steps:
      - op: read_parquet
        path: data/churn
      - op: sluice_testops.CenterColumns
        columns: [tenure]
      - op: save_model
        name: centre
      - op: write_parquet
        path: out
    """


def test_run_validate_and_models(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, TRAIN)
    ok = sluice("validate", str(path), cwd=workdir)
    assert ok.returncode == 0 and "ok (4 steps)" in ok.stdout, ok.stderr
    done = sluice("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "saved model centre@1" in done.stdout
    assert "wrote 5,000 rows to out" in done.stdout and done.stderr == ""
    assert pq.read_table(workdir / "out").num_rows == 5000

    again = sluice("run", str(path), cwd=workdir)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    # at the output's path, where validate says it too
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:10: step 'write_parquet'")
    assert "mode: overwrite" in lines[0]

    listed = sluice("models", "list", cwd=workdir)
    # the failed run's fit saved no version (a run's model is published with its outputs)
    assert listed.returncode == 0 and "centre" in listed.stdout, listed.stderr
    assert "versions 1 " in listed.stdout and "1, 2" not in listed.stdout, listed.stdout
    (workdir / "afile").write_text("not a folder")
    wrong = sluice("models", "list", "--models", "afile", cwd=workdir)
    assert wrong.returncode == 2 and "--models afile is a file, not a model folder" in \
        wrong.stderr, wrong.stderr
    shown = sluice("models", "show", "centre@1", cwd=workdir)
    assert shown.returncode == 0 and "needs columns: tenure" in shown.stdout
    # what the fitted step was given, as the pipeline file said it
    assert ("trained CenterColumns (sluice_testops.CenterColumns): "
            'columns=["tenure"]') in shown.stdout, shown.stdout
    missing = sluice("models", "show", "centr", cwd=workdir)
    assert missing.returncode == 1 and "did you mean 'centre'?" in missing.stderr
    assert "Traceback" not in missing.stderr


def leaving(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``sluice ARGS`` as the console script runs it (``pipelines.cli.entry``), in a
    process that also holds what a native library's teardown can do at interpreter
    finalization: an object whose destruction aborts (std::terminate on a still-running
    thread), a non-daemon thread still at work, an atexit hook. The hook and the thread
    each leave a line in the file returned."""
    left = workdir / "left.txt"
    script = f"""
import atexit, os, sys, threading, time

class AbortsWhenFinalized:
    def __del__(self):
        os.abort()

held = AbortsWhenFinalized()  # a module global: destroyed in finalization

def late():
    time.sleep(0.5)
    with open({str(left)!r}, "a") as out:
        out.write("thread\\n")

threading.Thread(target=late).start()
atexit.register(lambda: open({str(left)!r}, "a").write("atexit\\n"))
from pipelines.cli import entry
entry({list(args)!r})
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CI": "1"})
    return done, left


def test_a_finished_command_leaves_before_native_teardown_can_abort_it(churn: Path,
                                                                       workdir: Path) -> None:
    """A run that succeeded exits 0 even where finalization would abort the process
    (an Arrow scan's thread at teardown: SIGABRT after the output was published, seen
    in CI); its output is whole, threads are joined and atexit hooks run first. A user's
    error keeps its exit code and its one line."""
    path = write_pipeline(workdir, TRAIN)
    done, left = leaving(workdir, "run", str(path))
    assert done.returncode == 0, done.stderr
    assert "wrote 5,000 rows to out" in done.stdout and done.stdout.endswith("\n")
    assert done.stderr == ""
    assert left.read_text() == "thread\natexit\n"  # joined first, as a normal exit does
    left.unlink()
    again, left = leaving(workdir, "run", str(path))
    assert again.returncode == 1 and again.stderr.startswith(f"error: {path}:10: "), \
        again.stderr
    assert len(again.stderr.splitlines()) == 1 and left.read_text() == "thread\natexit\n"
    left.unlink()
    usage, _ = leaving(workdir, "run")
    assert usage.returncode == 2 and "Missing argument 'FILE'" in usage.stderr


def test_aliases_promote_and_roll_back_what_a_pipeline_scores_with(churn: Path,
                                                                   workdir: Path) -> None:
    """Training saves a candidate; `sluice models alias` promotes it to production; the
    scoring pipeline names centre@production and follows the alias, saying so."""
    train = write_pipeline(workdir, """
        pipeline: training
        steps:
          - op: read_parquet
            path: data/churn
          - op: logistic_regression
            label: churned
            features: [tenure, monthly_charges]
          - op: save_model
            name: centre
            aliases: [candidate]
        """, "train.yaml")
    score = write_pipeline(workdir, """
        pipeline: scoring
        steps:
          - op: read_parquet
            path: data/churn
          - op: score
            model: centre@production
          - op: write_parquet
            path: scored
            mode: overwrite
        """, "score.yaml")
    for version in (1, 2):
        done = in_process("run", str(train), cwd=workdir)
        assert done.returncode == 0, done.stderr
        assert f"saved model centre@{version} (" in done.stdout
        assert done.stdout.count("centre@candidate)") == 1
    missing = in_process("run", str(score), cwd=workdir)
    assert missing.returncode == 1
    assert "model 'centre' has no alias 'production'" in missing.stderr
    assert "candidate -> 2" in missing.stderr

    for ref, version, said in (("centre@candidate", 2, "centre@production -> version 2"),
                               ("centre@1", 1, "centre@production -> version 1 (was 2)")):
        moved = in_process("models", "alias", ref, "production", cwd=workdir)
        assert moved.returncode == 0 and moved.stdout.strip() == said, moved.stderr
        done = in_process("run", str(score), cwd=workdir)
        assert done.returncode == 0, done.stderr
        assert f"used model centre@{version} (" in done.stdout
        assert done.stdout.rstrip().splitlines()[-1].startswith("  record:")
        assert ", as centre@production)" in done.stdout

    listed = in_process("models", "list", cwd=workdir)
    assert "aliases candidate -> 2, production -> 1" in listed.stdout
    shown = in_process("models", "show", "centre@production", cwd=workdir)
    assert shown.stdout.startswith("centre@1 ") and "aliases production" in shown.stdout
    # aliases are case-insensitive: the one removed is said as it was stored
    gone = in_process("models", "alias", "centre", "PRODUCTION", "--delete", cwd=workdir)
    assert gone.stdout.strip() == "removed centre@production (it pointed at version 1)"
    bad = in_process("models", "alias", "centre@2", "latest", cwd=workdir)
    assert bad.returncode == 1 and bad.stderr.startswith("error: 'latest' cannot be an alias")


def test_invalid_pipeline_exit_code_and_all_problems(churn: Path, workdir: Path) -> None:
    good = write_pipeline(workdir, TRAIN, "good.yaml")
    bad = write_pipeline(workdir, TRAIN.replace("columns: [tenure]", "columns: [tenur]")
                         .replace("name: centre", "nam: centre"), "bad.yaml")
    result = sluice("validate", str(good), str(bad), cwd=workdir)
    assert result.returncode == 1
    assert f"{good}: ok" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4, errors
    assert "did you mean 'tenure'" in errors[0]
    assert "missing required parameter 'name'" in errors[1]
    assert "unknown parameter 'nam'" in errors[2]
    assert errors[3] == "error: 3 problem(s) in 1 of 2 file(s)"  # the files with problems
    ran = sluice("run", str(bad), cwd=workdir)
    assert ran.returncode == 1 and "nothing ran" in ran.stderr
    assert not (workdir / "out").exists() and refused(workdir / "runs", "validation")


def test_bug_prints_traceback_then_one_located_line(churn: Path, workdir: Path) -> None:
    path = exploding_pipeline(workdir, 10)
    result = sluice("run", str(path), cwd=workdir)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError: boom" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 'explode', partition 0 (") and "bug" in last


def test_params_and_usage_errors(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, TRAIN)
    result = sluice("run", str(path), "--param", "nope=1", cwd=workdir)
    assert result.returncode == 1 and "has no param 'nope'" in result.stderr
    result = sluice("run", str(path), "--param", "novalue", cwd=workdir)
    assert result.returncode == 2 and "is not k=v" in result.stderr
    result = sluice("run", str(path), "--param", "ds=2026-11-28", "--param", "ds=2026-11-29",
                    cwd=workdir)  # the last one was taken, silently
    assert result.returncode == 2 and ("Invalid value for --param: 'ds' is given twice "
                                       "(2026-11-28 and 2026-11-29)") in result.stderr
    result = sluice("run", str(path), "--engine", "flink", cwd=workdir)
    assert result.returncode == 2
    result = sluice("run", str(workdir / "missing.yaml"), cwd=workdir)
    assert result.returncode == 1 and "cannot read the file" in result.stderr


def test_ops_lists_the_registry(workdir: Path) -> None:
    result = sluice("ops", cwd=workdir)
    assert result.returncode == 0
    names = {line.split()[0] for line in result.stdout.splitlines() if line[:1].strip()}
    assert set(registered()) <= names
    detail = sluice("ops", "read_parquet", cwd=workdir)
    assert "filter" in detail.stdout and "example:" in detail.stdout
    unknown = sluice("ops", "read_parket", cwd=workdir)
    assert unknown.returncode == 1 and "did you mean 'read_parquet'?" in unknown.stderr


def test_datagen_is_deterministic(workdir: Path) -> None:
    for out in ("a", "b"):
        result = sluice("datagen", "churn", "--rows", "3000", "--files", "2", "--out", out,
                        cwd=workdir)
        assert result.returncode == 0, result.stderr
    a, b = pq.read_table(workdir / "a"), pq.read_table(workdir / "b")
    assert a.num_rows == 3000 and a.equals(b)
    assert a.column("total_charges").null_count > 0



def test_datagen_again_replaces_its_files_and_refuses_other_ones(workdir: Path) -> None:
    """Fewer --files than before leave no earlier file behind (a read of the folder would
    mix the two data sets); a folder of other Parquet, or one that cannot be made, is a
    one-line error."""
    def datagen(out: str, rows: str, files: str) -> subprocess.CompletedProcess[str]:
        return sluice("datagen", "churn", "--rows", rows, "--files", files, "--out", out,
                      cwd=workdir)

    assert datagen("d", "300", "3").returncode == 0
    again = datagen("d", "100", "1")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in (workdir / "d").iterdir()] == ["part-00000.parquet"]
    assert pq.read_table(workdir / "d").num_rows == 100
    pq.write_table(pq.read_table(workdir / "d"), workdir / "d" / "mine.parquet")
    mixed = datagen("d", "100", "1")
    assert mixed.returncode == 1 and "Traceback" not in mixed.stderr
    assert mixed.stderr == ("error: --out 'd' holds Parquet files datagen did not write "
                            "(mine.parquet): a read of the folder would mix their rows with "
                            "the new ones (pass an empty or new folder as --out)\n")
    (workdir / "d" / "mine.parquet").unlink()
    (workdir / "d" / "ds=1").mkdir()  # a folder below: a read of d takes its files too
    pq.write_table(pq.read_table(workdir / "d"), workdir / "d" / "ds=1" / "part-00000.parquet")
    below = datagen("d", "100", "1")
    assert below.returncode == 1 and f"({os.path.join('ds=1', 'part-00000.parquet')})" in \
        below.stderr, below.stderr
    (workdir / "afile").write_text("")
    unwritable = datagen("afile/d", "100", "1")
    assert unwritable.returncode == 1 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.startswith("error: cannot write to --out 'afile/d': Not a "
                                        "directory"), unwritable.stderr

def test_the_summary_shows_short_lists_and_leaves_long_ones_to_the_record(
        churn: Path, workdir: Path) -> None:
    train = write_pipeline(workdir, """
        pipeline: trained
        steps:
          - op: read_parquet
            path: data/churn
          - op: logistic_regression
            label: churned
            features: [tenure, monthly_charges]
          - op: save_model
            name: churn
        """)
    first = in_process("run", str(train), cwd=workdir)
    assert first.returncode == 0, first.stderr
    score = write_pipeline(workdir, """
        pipeline: evaluated
        steps:
          - op: read_parquet
            path: data/churn
          - op: drift
            model: churn
          - op: score
            model: churn
          - op: evaluate
            label: churned
        """, "evaluated.yaml")
    done = in_process("run", str(score), cwd=workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    drift = next(line for line in lines if line.startswith("  metrics drift:"))
    assert "drifted=[]" in drift and "model=churn@1" in drift
    evaluate = next(line for line in lines if line.startswith("  metrics evaluate:"))
    assert "classes=[0, 1]" in evaluate and "confusion_matrix" not in evaluate


def test_a_cluster_option_for_another_engine_is_a_usage_error(churn: Path,
                                                              workdir: Path) -> None:
    """--scheduler without --engine dask was ignored: the job meant for the cluster ran
    on this machine. Refused before anything runs, saying the option that is missing."""
    path = write_pipeline(workdir, TRAIN)
    done = sluice("run", str(path), "--scheduler", "tcp://h:8786", cwd=workdir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("Error: --scheduler tcp://h:8786 is for the dask engine, and this run is on the "
            "local engine: add --engine dask (or a dask profile)") in done.stderr
    done = sluice("score", "centre", "data/churn", "scores", "--engine", "dask",
                  "--master", "spark://h:7077", cwd=workdir)
    assert done.returncode == 2 and ("Error: --master spark://h:7077 is for the spark "
                                     "engine, and this run is on the dask engine: add "
                                     "--engine spark") in done.stderr
    assert not (workdir / "out").exists() and not (workdir / "scores").exists()
    assert not (workdir / "runs").exists()


def test_a_tree_on_a_floating_zero_one_label_says_it_fitted_a_regression(
        churn: Path, workdir: Path) -> None:
    """churned as 0.0 / 1.0 (a derive, a CSV's double): scikit-learn's
    RandomForestClassifier takes those as classes, our trees fit a regression, as
    designed; the run says so once at the step, with the two ways to a classifier, and
    `runs show` says it again. A floating label of other values, or task given, is not
    noted."""
    def run(label: str, task: str = "") -> subprocess.CompletedProcess[str]:
        path = write_pipeline(workdir, f"""
            pipeline: trees
            steps:
              - op: read_parquet
                path: data/churn
                columns: [tenure, monthly_charges, churned]
              - op: derive
                columns: {{y: "{label}"}}
              - op: decision_tree
                label: y
                features: [tenure, monthly_charges]
                max_depth: 3{task}
            """)
        done = in_process("run", path.name, cwd=workdir)
        assert done.returncode == 0, done.stderr
        return done

    noted = run("churned * 1.0")
    assert noted.stderr.splitlines() == [
        "note: pipeline.yaml:8: step 'decision_tree': the label 'y' is double of only 0 and "
        "1: decision_tree fitted a regression, as for any floating label (its prediction is "
        "a number, evaluate gives rmse); for a classifier of the two classes, set `task: "
        "classification`, or cast the label to int64 (op: cast)"]
    assert "note" not in noted.stdout  # said once, not again among the metrics
    run_id = noted.stdout.split()[1]
    shown = in_process("runs", "show", run_id, cwd=workdir)
    assert "  note decision_tree: the label 'y' is double of only 0 and 1" in shown.stdout
    assert "note" not in run("churned * 2.0").stderr
    assert "note" not in run("churned * 1.0", "\n                task: regression").stderr
