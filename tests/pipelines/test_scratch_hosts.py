"""The scratch folder and where the workers run: a path on this machine with workers on
others is said before any data moves; every engine of the matrix names its workers'
hosts (all this machine here)."""

from __future__ import annotations

import socket

from pipelines.engines.base import Engine
from pipelines.shuffle import elsewhere, scratch_note


def test_every_engine_names_its_workers_hosts_on_this_machine(engine: Engine) -> None:
    hosts = engine.worker_hosts()
    if engine.name != "local":  # a cluster's workers name themselves
        assert hosts, engine.name
    assert elsewhere(hosts) == [], hosts


def test_workers_on_other_machines_with_a_local_scratch_folder_are_said() -> None:
    here = {"127.0.0.1", "localhost", socket.gethostname()}
    assert elsewhere(here | {"10.0.0.7"}) == ["10.0.0.7"]
    assert scratch_note("/tmp/scratch", here) is None
    assert scratch_note("s3://bucket/tmp", {"10.0.0.7"}) is None  # every worker sees it
    note = scratch_note("/tmp/scratch", {"10.0.0.7", "10.0.0.8", "w3", "w4", "w5"})
    assert note == (
        "the shuffle steps write to '/tmp/scratch', a path on this machine, and workers run "
        "on 10.0.0.7, 10.0.0.8, w3 and 2 more: they must see it at the same path (a shared "
        "mount), or give --scratch an object store (s3://bucket/tmp)")
