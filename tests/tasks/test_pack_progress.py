"""A pack's step travels through Prefect: the worker records it as a progress artifact,
the terminal of the run reads it back, one line per pack."""

import pytest

from infra import progress
from tasks.sweep.pack_progress import PackReporter, PackStep, PackWatcher, total_steps


def test_a_step_reads_back_as_it_was_written():
    for step in (PackStep("train-k32-n3072+k64-n3072", 120, 740, 0.52131), PackStep("x", 0, 7)):
        again = PackStep.parse(step.describe())
        assert again.label == step.label and (again.step, again.total) == (step.step, step.total)
        assert again.train_nmse == (None if step.train_nmse is None else 0.5213)
    assert PackStep.parse("cells done / total (4)") is None
    assert total_steps(epochs=10, n_train=1894, batch_size=256) == 70  # the last 102 dropped


def test_the_watcher_shows_a_line_per_pack_and_their_last_steps(monkeypatch):
    lines = []
    monkeypatch.setattr(progress.log, "info", lines.append)
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    seen = [["cells done / total (4)", PackStep("train-k4-n32", 3, 9, 0.9).describe()]]
    watcher = PackWatcher(lambda: seen[-1], every_s=3600)  # polled by hand below
    watcher.poll()
    seen.append([PackStep("train-k4-n32", 9, 9, 0.5).describe(), PackStep("b", 4, 4).describe()])
    watcher.stop()  # without start: its final poll and the lines' last words
    assert len(lines) == 2, lines
    assert lines[0].startswith("train-k4-n32: 9/9 steps") and "train_nmse 0.5" in lines[0]
    assert lines[1].startswith("b: 4/4 steps")


def test_a_watcher_that_cannot_read_never_fails_the_run():
    def broken():
        raise ConnectionError("server gone")

    watcher = PackWatcher(broken, every_s=3600)
    watcher.poll()
    watcher.stop()


@pytest.mark.usefixtures("prefect_env")
def test_the_step_a_task_records_is_what_the_flow_reads_back():
    from prefect import flow, task
    from prefect.runtime import flow_run

    from tasks.sweep.pack_progress import flow_run_progress

    clock = [0.0]
    seen = []

    @task
    def pack() -> None:
        on_log = PackReporter("train-k4-n32", 12, clock=lambda: clock[0])
        clock[0] = 0.5
        on_log("c", 2, {"train_nmse": 0.9})  # within 2 s of the last report: not sent
        seen.append(flow_run_progress(flow_run.id)())
        clock[0] = 3.0
        on_log("c", 6, {"train_nmse": 0.7})  # sent
        seen.append(flow_run_progress(flow_run.id)())
        on_log("c", 10, {"train_nmse": 0.6})  # too soon again
        on_log.close()  # trained: the total, with the latest NMSE

    @flow
    def packs() -> None:
        pack()
        seen.append(flow_run_progress(flow_run.id)())

    packs()
    assert seen == [
        ["pack train-k4-n32: step 0/12"],
        ["pack train-k4-n32: step 6/12, train_nmse 0.7000"],
        ["pack train-k4-n32: step 12/12, train_nmse 0.6000"],
    ]
