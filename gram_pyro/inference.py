"""Prior rollouts: many trajectories per input (width) over many supervision steps (depth).

Trajectories are sampled from the model itself (no access to y), N per input under the model's
``trajectories`` plate, so width is one batched tensor pass and never a Python loop over
samples. The program is stepped one supervision step at a time (``steps=[n]``, carrying the
state), which is what lets ACT halt each trajectory on its own: once ``sigmoid(q_halt) > 0.5``
and its decoded answer is the one of the step before (:data:`ACT`), its state and answer are
frozen and its step count stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gram_pyro.models.ar import ARModel
from gram_pyro.models.gram import GramModel


@dataclass
class Trajectories:
    """Results of :func:`prior_rollouts` for M inputs x N trajectories.

    answers ``[M, N, A]``: the decoded answer at halt (or at the last step).
    values ``[M, N]``: the LPRM value of the final state.
    steps ``[M, N]``: supervision steps taken (ACT) or the budget.
    step_answers ``[S, M, N, A]``, step_values and step_halts ``[S, M, N]`` (the ACT head's
    halting probability): after every step (``record``), frozen once a trajectory halts.
    """

    answers: np.ndarray
    values: np.ndarray
    steps: np.ndarray
    step_answers: np.ndarray | None = None
    step_values: np.ndarray | None = None
    step_halts: np.ndarray | None = None


@dataclass(frozen=True)
class HaltRule:
    """When ACT stops a trajectory: after a supervision step whose halting probability
    ``sigmoid(q_halt)`` exceeds ``threshold`` and, with ``stable``, whose decoded answer is the
    one of the step before (so a trajectory still changing its answer runs on). Works on torch
    tensors (during rollouts) and numpy arrays (replaying recorded rollouts)."""

    threshold: float = 0.5
    stable: bool = False

    def __call__(self, p_halt, answer, previous):
        halt = p_halt > self.threshold
        if self.stable:
            same = (answer == previous).all(-1) if previous is not None else halt & False
            halt = halt & same
        return halt

    def __str__(self) -> str:
        return f"p_halt > {self.threshold:g}" + (" and the answer unchanged" if self.stable else "")


# The rule ACT uses when asked to (``--act``; no command halts by default). Confidence alone
# (p_halt > 0.5) halted N-Queens 8x8 trajectories after 1.47 of 4 steps at 10.6 points of sample
# accuracy below the full budget; requiring an unchanged answer as well costs 0.2 points at 2.47
# steps (docs/RESULTS.md, act_nqueens-8; benchmarks/act.py). On colouring it costs more: 0.6 to 1.4
# points at the trained 4 steps and 1.8 to 4.4 at 8 (eval_depth), and on colouring-10 every
# stricter rule that costs at most 0.3 points runs 7.94 to 8 of 8 steps (act_coloring-10_depth-8).
ACT = HaltRule(0.5, stable=True)

# Rollouts recurse deeper than training unless told otherwise: the same model, more supervision
# steps (the paper's depth axis). On every conditional task at the cpu preset (N_sup = 4), twice
# the trained budget gave more sample accuracy and more coverage than the trained budget: +0.4 and
# +0.6 points of accuracy on N-Queens 8x8 (two seeds), +1.8 on 10x10, +3.4 on colouring-8 (where
# conflict edges per sample fell from 0.21 to 0.17), +0.7 and +7.2 on colouring-10. Four times
# gained 0.0 to 3.9 points more at twice the cost again (docs/RESULTS.md, eval_depth;
# benchmarks/eval_depth.py). Unconditional generation gains more from depth: a 15-minute Shidoku
# run gave 91.3% valid boards at its trained 4 steps, 95.6% at 8 and 97.3% at 16
# (generation_sudoku-4_15min), at still ~260 boards/s on 2 cores.
DEPTH_FACTOR = 2  # gram evaluate, gram sample, gram demo: multiples of the trained N_sup
GENERATE_DEPTH_FACTOR = 4  # gram generate (unconditional runs)


def default_steps(cfg) -> int:
    """The supervision-step budget of a command's rollouts when it is given none: a multiple of
    the trained N_sup (``DEPTH_FACTOR``, or ``GENERATE_DEPTH_FACTOR`` for unconditional runs)."""
    return (GENERATE_DEPTH_FACTOR if cfg.unconditional else DEPTH_FACTOR) * cfg.n_supervision


def replay_halting(traj: Trajectories, rule: HaltRule) -> tuple[np.ndarray, np.ndarray]:
    """``(answers [M, N, A], steps [M, N])`` that ``rule`` would have given, from rollouts
    recorded without ACT (the answer at the halting step, or at the last step)."""
    s_max = len(traj.step_answers)
    halted = np.zeros(traj.step_halts.shape[1:], dtype=bool)
    steps = np.full(halted.shape, s_max)
    answers = traj.step_answers[-1].copy()
    for s in range(s_max):
        previous = traj.step_answers[s - 1] if s else None
        now = rule(traj.step_halts[s], traj.step_answers[s], previous) & ~halted
        answers[now] = traj.step_answers[s][now]
        steps[now] = s + 1
        halted |= now
    return answers, steps


def _freeze(halted, new, old):
    mask = halted.reshape(*halted.shape, *([1] * (new.dim() - halted.dim())))
    return torch.where(mask, old, new)


DEFAULT_CHUNK = 512  # trajectories per batched pass: larger passes thrash memory on CPU


@torch.no_grad()
def prior_rollouts(model: GramModel, x, num_samples: int, *, max_steps: int | None = None,
                   act: bool | HaltRule = False, record: bool = False, temperature: float = 1.0,
                   chunk_size: int | None = DEFAULT_CHUNK) -> Trajectories:
    """Sample ``num_samples`` prior trajectories for every row of ``x`` ``[M, L]``.

    At most ``chunk_size`` trajectories (inputs x samples) go through one batched pass: inputs
    are taken ``chunk_size // num_samples`` at a time, and when one input's samples alone
    exceed the chunk they are split too. Results are identical in distribution either way.
    ``act``: False runs every trajectory for ``max_steps``; a :class:`HaltRule` (True: the
    default rule, :data:`ACT`) halts each on its own. ``temperature`` scales the prior's sigma
    (1: the trained model). Everything runs on the model's device.

    The AR baseline (:class:`~gram_pyro.models.ar.ARModel`) runs through the same code: each
    trajectory is one token-by-token sample (one step; ``max_steps`` and ``act`` do not apply),
    and its value is the model's own confidence, the per-token geometric mean of its probability
    of the answer, ``exp(log p(y | x) / A)`` (it has no LPRM).
    """
    rule = ACT if act is True else (act or None)
    x = torch.as_tensor(np.asarray(x), dtype=torch.long, device=model.device)
    max_steps = max_steps or model.n_supervision
    chunk_size = chunk_size or len(x) * num_samples
    per_pass = min(num_samples, chunk_size)
    inputs_per_chunk = max(1, chunk_size // num_samples)
    rows = []
    for i in range(0, len(x), inputs_per_chunk):
        xi = x[i:i + inputs_per_chunk]
        parts = [_rollout_chunk(model, xi, min(per_pass, num_samples - j), max_steps, rule, record,
                                temperature)
                 for j in range(0, num_samples, per_pass)]
        rows.append(_concat(parts, sample_axis=True))
    return Trajectories(**_concat(rows, sample_axis=False))


def _concat(parts: list[dict], sample_axis: bool) -> dict:
    """Join chunk results along the sample axis or the input axis (step arrays lead with S)."""
    out = {}
    for key in parts[0]:
        if parts[0][key] is None:
            out[key] = None
            continue
        axis = 0 if not key.startswith("step_") else 1
        out[key] = np.concatenate([p[key] for p in parts], axis=axis + int(sample_axis))
    return out


def _sample_chunk(model, x, n, record, temperature):
    """:func:`_rollout_chunk` for the AR baseline: n answers per input in one sampling pass."""
    out = model(x, num_samples=n, temperature=temperature)
    answers = out.answer.transpose(0, 1).cpu().numpy()
    values = (out.log_prob / out.answer.shape[-1]).exp().transpose(0, 1).cpu().numpy()
    ones = np.ones(values.shape, dtype=values.dtype)
    return {"answers": answers, "values": values, "steps": ones.astype(np.int64),
            "step_answers": answers[None] if record else None,
            "step_values": values[None] if record else None,
            "step_halts": ones[None] if record else None}


def _rollout_chunk(model, x, n, max_steps, rule, record, temperature=1.0):
    if isinstance(model, ARModel):
        return _sample_chunk(model, x, n, record, temperature)
    state = None
    halted = torch.zeros(n, len(x), dtype=torch.bool, device=x.device)
    steps = torch.zeros(n, len(x), dtype=torch.long, device=x.device)
    answers = values = p_halt = None
    records = {"step_answers": [], "step_values": [], "step_halts": []}
    for s in range(max_steps):
        out = model(x, steps=[s], state=state, num_samples=n, temperature=temperature)
        new = (model.answers(out), out.values[-1], torch.sigmoid(out.halt_logits[-1]))
        previous = answers
        if state is None:
            h, l = out.h, out.l
            answers, values, p_halt = new
        else:
            h, l = _freeze(halted, out.h, state[0]), _freeze(halted, out.l, state[1])
            answers, values, p_halt = (_freeze(halted, a, b)
                                       for a, b in zip(new, (answers, values, p_halt)))
        steps += (~halted).long()
        state = (h, l)
        if record:
            for key, v in zip(records, (answers, values, p_halt)):
                records[key].append(v.transpose(0, 1).cpu().numpy())
        if rule is not None:
            halted |= rule(p_halt, answers, previous)
            if bool(halted.all()):  # nothing changes any more; the record repeats the last step
                for _ in range(s + 1, max_steps):
                    for v in records.values():
                        if v:
                            v.append(v[-1])
                break
    return {
        "answers": answers.transpose(0, 1).cpu().numpy(),
        "values": values.transpose(0, 1).cpu().numpy(),
        "steps": steps.transpose(0, 1).cpu().numpy(),
        **{k: np.stack(v) if record else None for k, v in records.items()},
    }
