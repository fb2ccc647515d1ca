"""Time-budget planning (``--max-minutes``): how many epochs fit, and where the schedule ends.

A budget is *used*, not only capped: the first training steps are timed (a warm-up measurement
that is real training, not thrown away), then the number of epochs that fit before the deadline
is planned and the learning-rate schedule is set to end exactly there. While training, the plan
is revised every few steps from the recent step time (a machine that slows down gets fewer
epochs, one that speeds up more), and the schedule's end moves with it. The time the work after
training needs (out-of-fold inference, pseudo-labelling) is reserved. When not even the current
epoch can finish, the plan becomes a partial epoch: training stops mid-epoch, validates and keeps
the best checkpoint.

:func:`plan_epochs` is the pure arithmetic (fast tests with made-up times);
:class:`BudgetPlanner` keeps the measurements and the current plan; the Lightning callback
:class:`protloc.training.callbacks.TimeBudget` drives it with a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Plan", "plan_epochs", "BudgetPlanner", "VAL_COST_PER_IMAGE", "AUTO_MAX_EPOCHS", "SLOWDOWN_MARGIN"]

#: the time to validate one image as a fraction of the time to train on one (forward only, no
#: augmentation, no optimizer step): the first validation's real time replaces it
VAL_COST_PER_IMAGE = 0.4
#: the work after training (the passes it is counted in) is planned this much slower than the
#: validation time measured last: the host's speed drifts within minutes (a 15-minute held-out run's
#: steps went from 0.78 to 0.91 s in its last two minutes, and it ended 5 s past its budget)
SLOWDOWN_MARGIN = 1.15
#: the most epochs ``--epochs 0`` (auto) plans with a budget (more rarely helps the small data sets
#: a 15-minute budget is for, and the best checkpoint is kept anyway)
AUTO_MAX_EPOCHS = 60


@dataclass(frozen=True)
class Plan:
    """What fits: ``epochs`` whole epochs (the schedule ends at ``total_steps``), or, when
    ``partial``, training stops after ``total_steps`` steps inside the current epoch."""

    epochs: int
    total_steps: int
    partial: bool = False


def plan_epochs(*, time_left: float, step_s: float, steps_per_epoch: int, val_s: float, done_steps: int,
                validated_epochs: int, max_epochs: int) -> Plan:
    """The plan that ends before ``time_left`` seconds from now.

    Parameters
    ----------
    time_left : float
        seconds until the deadline, the reserve for the work after training already taken off.
    step_s : float
        seconds per optimizer step (data, forward, backward, update).
    steps_per_epoch : int
        optimizer steps per epoch.
    val_s : float
        seconds per validation pass (run at the end of every epoch).
    done_steps : int
        steps already taken.
    validated_epochs : int
        epochs whose validation has run (``done_steps`` may be inside the next one).
    max_epochs : int
        the most epochs to plan (``--epochs``, or :data:`AUTO_MAX_EPOCHS` for auto).

    Returns
    -------
    Plan
        ``epochs`` N is the largest N <= ``max_epochs`` whose remaining steps and validations fit;
        if not even the current epoch fits, a partial plan: the steps that fit before one last
        validation (at least ``done_steps``).

    Examples
    --------
    >>> plan_epochs(time_left=100, step_s=1, steps_per_epoch=10, val_s=2, done_steps=0, validated_epochs=0,
    ...             max_epochs=50)
    Plan(epochs=8, total_steps=80, partial=False)
    >>> plan_epochs(time_left=6, step_s=1, steps_per_epoch=10, val_s=2, done_steps=3, validated_epochs=0,
    ...             max_epochs=50)
    Plan(epochs=0, total_steps=7, partial=True)
    """
    spe = max(int(steps_per_epoch), 1)
    step_s, val_s = max(float(step_s), 1e-9), max(float(val_s), 0.0)
    # epochs N with (N*spe - done)*step_s + (N - validated)*val_s <= time_left
    n = math.floor((time_left + done_steps * step_s + validated_epochs * val_s) / (spe * step_s + val_s))
    n = min(n, int(max_epochs))
    if n > validated_epochs and n * spe > done_steps:
        return Plan(epochs=n, total_steps=n * spe)
    fit = max(0, math.floor((time_left - val_s) / step_s))
    return Plan(epochs=validated_epochs, total_steps=done_steps + min(fit, max(spe * (validated_epochs + 1)
                                                                                   - done_steps, 0)), partial=True)


@dataclass
class BudgetPlanner:
    """Measurements and the current plan of one training phase.

    ``deadline`` and every time are on one clock (seconds); ``reserve_s`` is kept free at the end
    for the work after training, on top of ``post_val_factor`` validation passes (the
    out-of-distribution reference's feature pass; the out-of-fold inference, a little more than one
    pass per ``--oof-tta`` view): passes scale with the validation time measured while training, so
    they follow the machine.

    Examples
    --------
    >>> p = BudgetPlanner(deadline=130.0, steps_per_epoch=10, val_images=20, batch_size=4, max_epochs=60,
    ...                   reserve_s=5.0)
    >>> p.start(0.0)
    >>> for t in range(1, 6):                 # five warm-up steps of 1 s each
    ...     p.step(float(t))
    >>> p.ready, p.step_s, p.val_s            # validation estimated: 0.4 x 1 s x 20 images / 4 per batch
    (True, 1.0, 2.0)
    >>> p.replan(5.0)                         # 125 s - 5 reserve - 2 x 1.15 (after training) left; 12 s per epoch
    Plan(epochs=10, total_steps=100, partial=False)
    """

    deadline: float
    steps_per_epoch: int
    val_images: int
    batch_size: int
    max_epochs: int
    reserve_s: float = 0.0
    warmup_steps: int = 5
    window: int = 30
    post_val_factor: float = 1.0
    slowdown: float = SLOWDOWN_MARGIN
    plan: Plan | None = None
    history: list = field(default_factory=list)
    _times: deque = field(default_factory=lambda: deque(maxlen=200))
    _last: float | None = None
    val_s_measured: float | None = None
    done_steps: int = 0
    validated_epochs: int = 0

    def start(self, now: float) -> None:
        """The clock when the first step starts."""
        self._last = now

    def step(self, now: float) -> None:
        """One optimizer step ended at ``now``."""
        if self._last is not None:
            self._times.append(max(now - self._last, 0.0))
        self._last = now
        self.done_steps += 1

    def validated(self, seconds: float, now: float) -> None:
        """A validation pass took ``seconds`` and ended at ``now`` (not counted as step time)."""
        self.val_s_measured = seconds if self.val_s_measured is None else 0.5 * (self.val_s_measured + seconds)
        self.validated_epochs += 1
        self._last = now

    def paused(self, now: float) -> None:
        """Time spent outside steps (checkpoints, hooks) until ``now``: not step time."""
        self._last = now

    @property
    def ready(self) -> bool:
        return len(self._times) >= min(self.warmup_steps, self.steps_per_epoch)

    @property
    def step_s(self) -> float:
        """Mean of the last ``window`` step times (the very first step, which carries one-time
        costs, is left out once there are others)."""
        t = list(self._times)
        t = t[-self.window:] if len(t) > self.window else (t[1:] if len(t) > 2 else t)
        return sum(t) / len(t) if t else float("nan")

    @property
    def val_s(self) -> float:
        if self.val_s_measured is not None:
            return self.val_s_measured
        return VAL_COST_PER_IMAGE * self.step_s * self.val_images / max(self.batch_size, 1)

    @property
    def after_s(self) -> float:
        """Seconds kept for the passes after training (``post_val_factor`` validation passes, at
        ``slowdown`` times the validation time measured last)."""
        return self.post_val_factor * self.val_s * self.slowdown

    def replan(self, now: float) -> Plan:
        """Plan from now on (``self.plan`` keeps it; each change is kept in ``history``)."""
        left = self.deadline - now - self.reserve_s - self.after_s
        plan = plan_epochs(time_left=left, step_s=self.step_s, steps_per_epoch=self.steps_per_epoch,
                           val_s=self.val_s, done_steps=self.done_steps, validated_epochs=self.validated_epochs,
                           max_epochs=self.max_epochs)
        if plan != self.plan:
            self.history.append({"at_step": self.done_steps, "epochs": plan.epochs, "total_steps": plan.total_steps,
                                 "partial": plan.partial, "step_s": round(self.step_s, 4),
                                 "val_s": round(self.val_s, 2), "time_left_s": round(self.deadline - now, 1)})
        self.plan = plan
        return plan

    def must_stop(self, now: float) -> bool:
        """True when the next step would not leave time for validation and the reserve.

        During the warm-up steps the step time is not known (the first steps carry one-time
        costs, often several times a steady step), and a validation time estimated from it,
        times the passes after training, can exceed a short budget by itself: a fold of a 3-fold
        7.5-minute run once stopped after its first step that way. So until the planner is
        ready only the deadline itself (less the reserve) stops training.
        """
        if not self.ready:
            return now + self.reserve_s > self.deadline
        return now + self.step_s + self.reserve_s + self.val_s + self.after_s > self.deadline
