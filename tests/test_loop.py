"""The outer loop's time budget: it stops on the clock, paces the decay and counts resumes."""

import json
import os
import time

import pytest
import tensorflow as tf

from labse_tf.loop import CLOCK_FILE, run_loop

SECONDS_PER_STEP = 0.02


def _fake_loop(iterator, num_steps):
    time.sleep(SECONDS_PER_STEP * int(num_steps))
    return {"loss": tf.constant(1.0)}


def _run(model_dir, budget, total_steps=10_000):
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest:
        checkpoint.restore(latest)
    ends, lines = [], []
    result = run_loop(loop=_fake_loop, iterator=None, checkpoint=checkpoint, step=step,
                      model_dir=str(model_dir), total_steps=total_steps, steps_per_loop=5,
                      checkpoint_every=1_000, keep_checkpoints=2, examples_per_step=8,
                      learning_rate=lambda: 0.0, log=lines.append, time_budget=budget,
                      retarget=ends.append)
    return result, ends, lines


def test_time_budget_stops_the_run_and_paces_the_decay(tmp_path):
    result, ends, lines = _run(tmp_path, budget=1.0)
    # ~50 steps fit in a second; the run stops there, far before its 10,000 steps.
    assert 20 <= result.step <= 60, result.step
    assert result.checkpoint.endswith(f"ckpt-{result.step}")  # the last step is saved
    assert any(f"time budget of 0.0 min reached at step {result.step}" in l for l in lines)
    # The decay's end was re-estimated from the measured speed, and it was about right.
    assert ends and abs(ends[-1] - result.step) <= 5
    assert all(e <= 10_000 for e in ends)
    clock = json.loads((tmp_path / CLOCK_FILE).read_text())
    assert clock["step"] == result.step and clock["seconds"] >= 1.0


def test_time_budget_is_counted_over_resumes(tmp_path):
    first, _, _ = _run(tmp_path, budget=0.5)
    # The same budget: already spent, so the resumed run does no step.
    again, ends, lines = _run(tmp_path, budget=0.5)
    assert again.step == first.step and not ends
    assert any("already spent" in l for l in lines)
    # A larger budget: the resumed run trains for the difference only.
    more, _, _ = _run(tmp_path, budget=1.0)
    assert 10 <= more.step - first.step <= 35, (first.step, more.step)


def test_without_a_budget_the_run_ends_at_its_steps(tmp_path):
    result, ends, _ = _run(tmp_path, budget=0.0, total_steps=30)
    assert result.step == 30 and not ends
    assert not (tmp_path / CLOCK_FILE).exists()
