"""Paths and URLs a step is given: an unknown protocol says what to do; a file:// URL
is this machine's file, or refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SLUICE

from operators.errors import SluiceError
from operators.io.fs import resolve
from operators.io.paths import local_path


@pytest.mark.parametrize(("url", "hint"), [
    ("s4://bucket/data", "did you mean 's3://'?"),            # a typo of a known one
    ("gss://bucket/data", "did you mean 'gs://'?"),
    ("zzz://bucket/data", "install the fsspec package for 'zzz://'"),  # nothing near
])
def test_an_unknown_protocol_gets_the_closest_or_what_to_install(url: str, hint: str) -> None:
    with pytest.raises(SluiceError) as caught:
        resolve(url)
    assert caught.value.message.startswith(f"cannot open '{url}'")
    assert caught.value.hint.startswith(hint)


@pytest.mark.parametrize(("url", "path"), [
    ("file:///data/x.parquet", "/data/x.parquet"),
    ("file://localhost/data/x.parquet", "/data/x.parquet"),  # RFC 8089: this machine
    ("file://LocalHost/data/", "/data"),
    ("relative/x", os.path.abspath("relative/x")),
])
def test_a_file_url_of_this_machine_is_its_local_path(url: str, path: str) -> None:
    assert local_path(url) == path
    assert resolve(url).path == path and resolve(url).local


def test_a_file_url_of_another_host_is_refused_not_read_as_a_relative_path() -> None:
    for call in (local_path, resolve):
        with pytest.raises(SluiceError) as caught:
            call("file://otherhost/data/x")
        assert caught.value.message == (
            "'file://otherhost/data/x' names a file on host 'otherhost': sluice opens "
            "file:// URLs of this machine only (file:///path, or file://localhost/path)")
        assert caught.value.hint.startswith("for this machine's /data/x: file:///data/x; ")


def _validate(workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``sluice validate`` of a read of hdfs:// in a process of its own (pyarrow loads
    the HDFS client once a process), with the environment's Hadoop variables ``env``."""
    (workdir / "p.yaml").write_text(
        "pipeline: h\nsteps:\n  - op: read_parquet\n    path: hdfs://127.0.0.1:8020/data\n")
    kept = {k: v for k, v in os.environ.items()
            if k not in ("JAVA_HOME", "HADOOP_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH")}
    return subprocess.run([SLUICE, "validate", "p.yaml"], cwd=workdir, env={**kept, **env},
                          capture_output=True, text=True, timeout=120)


def test_hdfs_without_a_jvm_or_libhdfs_is_one_error_saying_what_to_set(
        tmp_path: Path) -> None:
    """pyarrow's message lists the ~80 folders it looked in for libjvm (a screenful on
    stderr, after a traceback); it is one line naming what is missing and what to set."""
    empty = tmp_path / "jdk"
    empty.mkdir()
    done = _validate(tmp_path, {"JAVA_HOME": str(empty)})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "error: p.yaml:4: step 'read_parquet' (read_parquet): cannot open "
        "'hdfs://127.0.0.1:8020/data': pyarrow's HDFS client needs a Java runtime "
        f"(JAVA_HOME '{empty}' has no libjvm.so), Hadoop's libhdfs.so (neither HADOOP_HOME "
        "nor ARROW_LIBHDFS_DIR is set) and the Hadoop jars (CLASSPATH is not set) (set "
        f"JAVA_HOME to a JDK's folder{_java_on_path()}; HADOOP_HOME to a Hadoop install "
        "(libhdfs.so in its lib/native), or ARROW_LIBHDFS_DIR to the folder that has "
        "libhdfs.so; CLASSPATH to `hadoop classpath --glob`; or read it over webhdfs:// "
        "(HTTP: no JVM))\nerror: 1 problem(s) in 1 file(s)\n")


def test_hdfs_with_a_jvm_and_no_libhdfs_names_only_what_is_missing(tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on PATH")
    jdk = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    hadoop = tmp_path / "hadoop"
    (hadoop / "lib" / "native").mkdir(parents=True)
    done = _validate(tmp_path, {"JAVA_HOME": jdk, "HADOOP_HOME": str(hadoop)})
    assert done.returncode == 1 and "dlopen" not in done.stderr and "Traceback" not in \
        done.stderr
    (line, summary) = done.stderr.splitlines()
    assert line.endswith(
        "pyarrow's HDFS client needs Hadoop's libhdfs.so "
        f"('{hadoop}/lib/native' has none) (set HADOOP_HOME to a Hadoop install (libhdfs.so "
        "in its lib/native), or ARROW_LIBHDFS_DIR to the folder that has libhdfs.so; or "
        "read it over webhdfs:// (HTTP: no JVM))")


def _java_on_path() -> str:
    java = shutil.which("java")
    return (f" (the java on PATH is "
            f"{os.path.dirname(os.path.dirname(os.path.realpath(java)))}'s)" if java else "")
