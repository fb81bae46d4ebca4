"""Work done once per server process in a background thread (xviz.ui.background): it runs once,
says why it failed and runs again when asked, and steps aside for students' requests unless a
student is watching it. The page that shows its progress has its AppTest (test_page_architectures)."""

from __future__ import annotations

import threading

from xviz.ui import background

WAIT_S = 30  # generous: a passing test never waits for it


def counting(steps: int, runs: list):
    def work(progress):
        runs.append(threading.current_thread().name)
        for i in range(steps):
            progress(i + 1, steps)
        return steps
    return work


def test_runs_once_in_its_own_thread_and_reports_its_steps():
    runs: list = []
    task = background.Task(counting(3, runs), lambda done, total: f"{done} of {total}", "Counting failed",
                           busy=lambda: False)
    assert task.start().outcome(WAIT_S) == (3, None)
    assert task.progress == (3, 3) and runs == ["xviz-background"]
    assert task.start().outcome(WAIT_S) == (3, None) and len(runs) == 1  # done: not counted again


def test_a_failure_is_kept_for_the_page_and_the_next_start_runs_it_again(caplog):
    attempts = []

    def work(progress):
        attempts.append(1)
        if len(attempts) == 1:
            raise MemoryError("the server ran out of memory")
        return "counted"

    task = background.Task(work, str, "The networks could not be counted", busy=lambda: False)
    value, error = task.start().outcome(WAIT_S)
    assert value is None and isinstance(error, MemoryError)
    assert "The networks could not be counted" in caplog.text  # logged for whoever runs the server, too
    assert task.start().outcome(WAIT_S) == ("counted", None) and len(attempts) == 2


def test_steps_aside_while_students_wait_unless_one_watches(monkeypatch):
    monkeypatch.setattr(background, "STEP_ASIDE_S", 60.0)  # longer than the test: only busy() lets it go on
    asked, free = threading.Event(), threading.Event()
    polls = []

    def busy():  # the inference queue has requests waiting until the test frees it
        polls.append(1)
        if len(polls) == 2:
            asked.set()
        return not free.is_set()

    task = background.Task(counting(3, []), str, "Counting failed", busy=busy).start()
    assert asked.wait(WAIT_S)  # asked twice after its first step: it is waiting, not counting
    assert task.progress == (1, 3) and task.outcome() is None
    free.set()
    assert task.outcome(WAIT_S) == (3, None)

    polls.clear()
    watched = background.Task(counting(3, []), str, "Counting failed", busy=lambda: polls.append(1) or True)
    with watched.watched():  # a student is looking at its progress bar: no stepping aside
        assert watched.start().outcome(WAIT_S) == (3, None)
    assert polls == []


def test_stepping_aside_is_bounded(monkeypatch):
    monkeypatch.setattr(background, "STEP_ASIDE_S", 0.01)
    task = background.Task(counting(2, []), str, "Counting failed", busy=lambda: True)  # a queue never empty
    assert task.start().outcome(WAIT_S) == (2, None)
