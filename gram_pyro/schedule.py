"""The learning-rate schedule and the wall-clock budget of a training run.

The learning rate warms up linearly over ``warmup_steps``, then follows a cosine from ``lr`` down
to ``lr / 10`` at the last step (or stays at ``lr`` with ``lr_schedule="constant"``). With
``max_minutes`` the number of steps is not known in advance: :meth:`Schedule.replan` estimates how
many fit in the time left from the mean step time so far, and moves the cosine's horizon there.
The hard stop is the clock itself; the critic fit at the end takes ``critic_fit_share`` of it.
The KL weight can move linearly from ``beta_start`` to ``beta`` over ``beta_anneal_steps`` (off by
default): up from 0, KL annealing; down from above ``beta``, a costly latent channel early on, so
that the trunk learns to reason before the guide can hand it the answer.
"""

from __future__ import annotations

import math

from gram_pyro.config import Config


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of a running average at its ``updates``-th update (1, 2, ...):
    ``min(decay, updates / (updates + 9))``, so early averages are not dominated by where they
    started (at a fixed 0.995, 400 updates would still weigh the start by 13%). The training
    EMA (:func:`gram_pyro.train.ema_of`) and the guide fit's parameter average both use it."""
    return min(decay, updates / (updates + 9.0))


class Schedule:
    """``lr(step)``, the step horizon ``total_steps`` and when to stop, for one config."""

    REPLAN_AFTER = 50  # steps timed before the horizon is re-estimated

    def __init__(self, cfg: Config, total_steps: int | None = None):
        self.cfg = cfg
        self.total_steps = cfg.steps if total_steps is None else total_steps

    def lr(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return cfg.lr
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def beta(self, step: int) -> float:
        """The KL weight at ``step``: ``beta``, reached linearly from ``beta_start`` over
        ``beta_anneal_steps`` when that is set (from 0: KL annealing; from above: a warm-down)."""
        cfg = self.cfg
        if step >= cfg.beta_anneal_steps:
            return cfg.beta
        return cfg.beta_start + (cfg.beta - cfg.beta_start) * (step + 1) / cfg.beta_anneal_steps

    def training_seconds(self) -> float | None:
        """The share of ``max_minutes`` for the model (None: no time budget)."""
        cfg = self.cfg
        if not cfg.max_minutes:
            return None
        share = cfg.critic_fit_share if cfg.critic_fit_steps else 0.0
        return cfg.max_minutes * 60 * (1 - share)

    def critic_seconds(self) -> float | None:
        """The critic fit's share of ``max_minutes`` (None: no time budget)."""
        cfg = self.cfg
        return cfg.max_minutes * 60 * cfg.critic_fit_share if cfg.max_minutes else None

    def done(self, step: int, elapsed: float) -> bool:
        budget = self.training_seconds()
        return step >= self.total_steps or (budget is not None and elapsed >= budget)

    def replan(self, step: int, elapsed: float) -> None:
        """With a time budget, set the horizon to the steps that fit in the time left (re-estimated
        every batch, so a slow start does not shrink the run)."""
        budget = self.training_seconds()
        if budget is None or step < self.REPLAN_AFTER:
            return
        remaining = max(0.0, budget - elapsed)
        self.total_steps = min(self.cfg.steps, step + int(remaining / (elapsed / step)))
