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

from gram_pyro.models.gram import GramModel


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


DEFAULT_CHUNK = 512  # trajectories per batched pass: larger passes thrash memory on CPU


@torch.no_grad()
def prior_rollouts(model: GramModel, x, num_samples: int, *, max_steps: int | None = None,
                   act: bool = False, record: bool = False, temperature: float = 1.0,
                   chunk_size: int | None = DEFAULT_CHUNK) -> Trajectories:
    """Sample ``num_samples`` prior trajectories for every row of ``x`` ``[M, L]``.

    At most ``chunk_size`` trajectories (inputs x samples) go through one batched pass: inputs
    are taken ``chunk_size // num_samples`` at a time, and when one input's samples alone
    exceed the chunk they are split too. Results are identical in distribution either way.
    ``temperature`` scales the prior's sigma (1: the trained model). Everything runs on the
    model's device.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.long, device=model.device)
    max_steps = max_steps or model.n_supervision
    chunk_size = chunk_size or len(x) * num_samples
    per_pass = min(num_samples, chunk_size)
    inputs_per_chunk = max(1, chunk_size // num_samples)
    rows = []
    for i in range(0, len(x), inputs_per_chunk):
        xi = x[i:i + inputs_per_chunk]
        parts = [_rollout_chunk(model, xi, min(per_pass, num_samples - j), max_steps, act, record,
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


def _rollout_chunk(model, x, n, max_steps, act, record, temperature=1.0):
    net = model.net
    state = None
    halted = torch.zeros(n, len(x), dtype=torch.bool, device=x.device)
    steps = torch.zeros(n, len(x), dtype=torch.long, device=x.device)
    answers = values = None
    step_answers, step_values = [], []
    for s in range(max_steps):
        out = model(x, steps=[s], state=state, num_samples=n, temperature=temperature)
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
