"""Prior rollouts: many trajectories per input (width) over many supervision steps (depth).

Trajectories are sampled from the model itself (no access to y), N per input under the model's
``trajectories`` plate, so width is one batched tensor pass and never a Python loop over
samples. The program is stepped one supervision step at a time (``steps=[n]``, carrying the
state), which is what lets ACT halt each trajectory on its own: once ``sigmoid(q_halt) > 0.5``
its state and answer are frozen and its step count stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.gram import GramModel


@dataclass
class Trajectories:
    """Results of :func:`prior_rollouts` for M inputs x N trajectories.

    answers ``[M, N, A]``: the decoded answer at halt (or at the last step).
    values ``[M, N]``: the LPRM value of the final state.
    steps ``[M, N]``: supervision steps taken (ACT) or the budget.
    step_answers ``[S, M, N, A]`` and step_values ``[S, M, N]``: after every step (``record``).
    """

    answers: np.ndarray
    values: np.ndarray
    steps: np.ndarray
    step_answers: np.ndarray | None = None
    step_values: np.ndarray | None = None


def _freeze(halted, new, old):
    mask = halted.reshape(*halted.shape, *([1] * (new.dim() - halted.dim())))
    return torch.where(mask, old, new)


@torch.no_grad()
def prior_rollouts(model: GramModel, x, num_samples: int, *, max_steps: int | None = None,
                   act: bool = False, record: bool = False, chunk_size: int | None = None,
                   device="cpu") -> Trajectories:
    """Sample ``num_samples`` prior trajectories for every row of ``x`` ``[M, L]``.

    ``chunk_size`` bounds the number of trajectories (inputs x samples) in one pass; inputs are
    processed in chunks of ``max(1, chunk_size // num_samples)``.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.long)
    max_steps = max_steps or model.n_supervision
    per_chunk = len(x) if not chunk_size else max(1, chunk_size // num_samples)
    parts = [_rollout_chunk(model, x[i:i + per_chunk].to(device), num_samples, max_steps, act, record)
             for i in range(0, len(x), per_chunk)]
    cat = lambda k, axis: (np.concatenate([p[k] for p in parts], axis=axis)  # noqa: E731
                           if parts[0][k] is not None else None)
    return Trajectories(cat("answers", 0), cat("values", 0), cat("steps", 0),
                        cat("step_answers", 1), cat("step_values", 1))


def _rollout_chunk(model, x, n, max_steps, act, record):
    net = model.net
    state = None
    halted = torch.zeros(n, len(x), dtype=torch.bool, device=x.device)
    steps = torch.zeros(n, len(x), dtype=torch.long, device=x.device)
    answers = values = None
    step_answers, step_values = [], []
    for s in range(max_steps):
        out = model(x, steps=[s], state=state, num_samples=n)
        new_answers = out.logits.argmax(-1)
        new_values = out.values[-1]
        if state is None:
            h, l, answers, values = out.h, out.l, new_answers, new_values
        else:
            h, l = _freeze(halted, out.h, state[0]), _freeze(halted, out.l, state[1])
            answers = _freeze(halted, new_answers, answers)
            values = _freeze(halted, new_values, values)
        steps += (~halted).long()
        state = (h, l)
        if record:
            step_answers.append(answers.transpose(0, 1).cpu().numpy())
            step_values.append(values.transpose(0, 1).cpu().numpy())
        if act:
            halted |= torch.sigmoid(out.halt_logits[-1]) > 0.5
            if bool(halted.all()):
                # nothing changes any more; repeat the frozen answers for the record
                for _ in range(s + 1, max_steps):
                    if record:
                        step_answers.append(step_answers[-1])
                        step_values.append(step_values[-1])
                break
    return {
        "answers": answers.transpose(0, 1).cpu().numpy(),
        "values": values.transpose(0, 1).cpu().numpy(),
        "steps": steps.transpose(0, 1).cpu().numpy(),
        "step_answers": np.stack(step_answers) if record else None,
        "step_values": np.stack(step_values) if record else None,
    }
