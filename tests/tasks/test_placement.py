"""Each attempt of a pack notes, per cell, its node and first logged step (no Ray here:
the node id is empty, the host is this machine's)."""

from __future__ import annotations

import json
import socket

from infra.store import Store
from tasks.sweep.placement import Attempt, PlacementRecorder, placement_tags, read_placement


def test_each_attempt_is_noted_once_per_cell_at_its_first_logged_step(tmp_path):
    store = Store(str(tmp_path / "store"))
    seen = []
    for steps in ([10, 20, 30], [40, 50]):  # a first attempt, then a resumed one
        on_log = PlacementRecorder(store, "sae/s1", lambda *a: seen.append(a), "cpu (2 threads)")
        for step in steps:
            for cell in ("c1", "c2"):
                on_log(cell, step, {"train_nmse": 0.5})

    assert len(seen) == 10  # every call reaches the wrapped on_log
    host = socket.gethostname()
    for cell in ("c1", "c2"):
        attempts = read_placement(store, f"sae/s1/{cell}")
        cpu = "cpu (2 threads)"
        assert attempts == [Attempt("", host, 10, cpu), Attempt("", host, 40, cpu)]
    tags = placement_tags(read_placement(store, "sae/s1/c1"))
    assert tags["host"] == host and tags["ray_node_id"] == "" and tags["device"] == cpu
    assert [a["first_step"] for a in json.loads(tags["train_attempts"])] == [10, 40]


def test_a_cell_trained_before_placement_was_kept_gets_no_tags(tmp_path):
    assert placement_tags(read_placement(Store(str(tmp_path)), "sae/s1/c1")) == {}


def test_a_cell_that_never_logged_is_noted_when_its_pack_ends(tmp_path):
    store = Store(str(tmp_path / "store"))
    on_log = PlacementRecorder(store, "sae/s1", lambda *a: None, "cpu (2 threads)")
    on_log("c1", 10, {"train_nmse": 0.5})
    on_log.finish({"c1": 12, "c2": 7})  # c2 trained 7 steps, fewer than log_every_steps
    host = socket.gethostname()
    assert read_placement(store, "sae/s1/c1") == [Attempt("", host, 10, "cpu (2 threads)")]
    assert read_placement(store, "sae/s1/c2") == [Attempt("", host, 7, "cpu (2 threads)")]
    assert placement_tags(read_placement(store, "sae/s1/c2"))["device"] == "cpu (2 threads)"
