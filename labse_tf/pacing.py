"""A run's time budget: it ends the run on the clock and paces the learning-rate decay.

The seconds spent are counted over resumes (`clock.json` in the run directory, written
with each checkpoint), and so is the schedule's end: it is not in the checkpoint, so a
resumed run would otherwise decay toward train.steps until it has measured its speed.
"""

import time
from typing import Callable

from labse_tf import files
from labse_tf.rundir import CLOCK_FILE

__all__ = ["Pacer"]


class Pacer:
    """Seconds left of a budget, and where the decay should end at the measured speed.

    Args:
      model_dir: str. The run directory (its clock.json is read on resume).
      budget: float. Seconds of loop time in all (0 = no budget: never out of time).
      start_step: int. Step the run starts at (0 = a new run: any old clock is ignored).
      total_steps: int. The schedule's last step; the decay never ends past it.
      retarget: callable or None. Called with the step at which the budget runs out.
    """

    def __init__(self, model_dir: str, budget: float, start_step: int, total_steps: int,
                 retarget: Callable[[float], None] | None = None):
        self.model_dir, self.budget, self.total_steps = model_dir, budget, total_steps
        self.retarget = retarget
        self.spent_before, self.decay_end = (
            _read_clock(model_dir) if budget and start_step else (0.0, None))
        if retarget and self.decay_end:
            retarget(self.decay_end)  # kept until this run has measured its own speed
        self.start_time = time.time()
        self.paced_from = None  # (time, step) after the first call, which includes tracing

    def spent(self) -> float:
        return self.spent_before + time.time() - self.start_time

    def left(self) -> float:
        """Seconds left (infinite without a budget)."""
        return self.budget - self.spent() if self.budget else float("inf")

    @property
    def out_of_time(self) -> bool:
        return self.left() <= 0

    def update(self, step: int) -> None:
        """After a loop call: re-aims the decay at the step the budget ends at, from the
        steps/s of everything since the first call (saves and evaluations too)."""
        if not self.budget:
            return
        if self.paced_from is None:
            self.paced_from = (time.time(), step)
        elif self.retarget:
            speed = (step - self.paced_from[1]) / max(time.time() - self.paced_from[0], 1e-9)
            self.decay_end = min(step + max(self.left(), 0.0) * speed, self.total_steps)
            self.retarget(self.decay_end)

    def save(self, step: int) -> None:
        """Writes clock.json beside the checkpoint of `step` (with a budget only)."""
        if self.budget:
            # Written whole or not at all, so a kill mid-write leaves the previous clock.
            files.write_json(files.join(self.model_dir, CLOCK_FILE),
                             {"step": step, "seconds": round(self.spent(), 2),
                              "decay_end": self.decay_end})


def _read_clock(model_dir: str) -> tuple[float, float | None]:
    """(loop seconds spent, decay end) of earlier parts of this run, as of its last checkpoint."""
    path = files.join(model_dir, CLOCK_FILE)
    if not files.exists(path):
        return 0.0, None
    clock = files.read_json(path)
    return float(clock["seconds"]), clock.get("decay_end")
