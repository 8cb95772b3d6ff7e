"""The outer loop's time budget: it stops on the clock, paces the decay and counts resumes.

A fake clock that only the fake training loop advances makes the tests exact."""

import json
import os
import types

import pytest
import tensorflow as tf

from labse_tf import loop as loop_lib, pacing
from labse_tf.loop import LoopOptions, run_loop
from labse_tf.rundir import CLOCK_FILE

SECONDS_PER_STEP = 0.02
STEPS_PER_LOOP = 5


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def _run(model_dir, budget, monkeypatch, total_steps=10_000, trace_seconds=0.5):
    clock = _Clock()
    for module in (loop_lib, pacing):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(time=clock.time))
    calls = []

    def fake_loop(iterator, num_steps):
        # The first call of a process also traces the step: slower, as in training.
        clock.now += SECONDS_PER_STEP * int(num_steps) + (0 if calls else trace_seconds)
        calls.append(int(num_steps))
        return {"loss": tf.constant(1.0)}

    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest:
        checkpoint.restore(latest)
    ends, lines = [], []
    options = LoopOptions(total_steps=total_steps, steps_per_loop=STEPS_PER_LOOP,
                          checkpoint_every=1_000, keep_checkpoints=2, examples_per_step=8,
                          time_budget=budget)
    result = run_loop(fake_loop, None, checkpoint, str(model_dir), options,
                      learning_rate=lambda: 0.0, retarget=ends.append, log=lines.append)
    return result, ends, lines


def test_time_budget_stops_the_run_and_paces_the_decay(tmp_path, monkeypatch):
    result, ends, lines = _run(tmp_path, 2.45, monkeypatch)
    # 0.6 s for the first call (tracing), then 0.1 s per call of 5 steps: the call that
    # crosses 2.45 s is the 20th, at step 100.
    assert result.step == 100
    assert result.checkpoint.endswith("ckpt-100")  # the last step is saved
    assert "time budget of 0.04 min reached at step 100" in lines
    # From the second call on, the decay ends where the budget runs out: 10 steps at
    # 0.7 s, then 50 steps/s for the 1.75 s left.
    assert len(ends) == 19 and ends[:-1] == pytest.approx([97.5] * 18) and ends[-1] == 100
    clock = json.loads((tmp_path / CLOCK_FILE).read_text())
    assert clock == {"step": 100, "seconds": 2.5, "decay_end": 100}


def test_time_budget_is_counted_over_resumes(tmp_path, monkeypatch):
    first, _, _ = _run(tmp_path, 0.95, monkeypatch)  # 1 s: 5 calls, step 25
    assert first.step == 25
    # The same budget: already spent, so the resumed run does no step.
    again, ends, lines = _run(tmp_path, 0.95, monkeypatch)
    assert again.step == 25 and ends == [25]  # the saved decay end, restored
    assert "time budget of 0.02 min already spent at step 25" in lines
    # A larger budget: the resumed run trains for the difference only (5 calls again);
    # its decay keeps the saved end until it has measured its own speed (second call:
    # step 35, 0.25 s left at 50 steps/s).
    more, ends, _ = _run(tmp_path, 1.95, monkeypatch)
    assert more.step == 50
    assert ends[0] == 25 and ends[1] == pytest.approx(47.5) and ends[-1] == 50


def test_without_a_budget_the_run_ends_at_its_steps(tmp_path, monkeypatch):
    result, ends, _ = _run(tmp_path, 0.0, monkeypatch, total_steps=30)
    assert result.step == 30 and not ends
    assert not (tmp_path / CLOCK_FILE).exists()
