"""Step-by-step records of trajectories, for notebooks: the latent path, the decoded answer, the
LPRM value and (for posterior trajectories) the KL of every transition.

Prior trajectories come from the model alone; posterior ones from the guide given an answer y,
with the model replaying the guide's noise to score each transition. Both advance one
supervision step per call, carrying the state, exactly as the CLI's rollouts do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gram_pyro.elbo import GramELBO, guided_traces
from gram_pyro.recursion import SharedRecursion


@dataclass
class TrajectoryRecord:
    """For one input and N trajectories, after each of S supervision steps:

    h ``[S, N, D * (P + L)]`` flattened high-level state; answers ``[S, N, A]`` decoded answers;
    values ``[S, N]`` LPRM values; kl ``{site: [N]}`` per-transition KL (posterior only).
    """

    h: np.ndarray
    answers: np.ndarray
    values: np.ndarray
    kl: dict


@torch.no_grad()
def record(model, guide, x, num_samples: int, y=None, steps: int | None = None) -> TrajectoryRecord:
    """Record ``num_samples`` trajectories of one input ``x`` ``[L]``: from the prior when ``y`` is
    None, else from the posterior q(eps | x, y)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.long, device=model.device)[None]
    yt = None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long,
                                                device=model.device)[None]
    steps = steps or model.n_supervision
    elbo = GramELBO(beta=1.0, kl_balance=None)
    state, hs, answers, values, kl = None, [], [], [], {}
    for s in range(steps):
        if yt is None:
            out = model(x, steps=[s], state=state, num_samples=num_samples)
        else:
            model_trace, guide_trace = guided_traces(model, guide, x, yt, steps=[s], state=state,
                                                     num_samples=num_samples,
                                                     shared=SharedRecursion())
            terms = elbo.terms(model_trace, guide_trace)
            kl.update({k: v[:, 0].cpu().numpy() for k, v in terms["kl"].items()})
            out = model_trace.nodes["_RETURN"]["value"]
        state = (out.h, out.l)
        hs.append(out.h[:, 0].reshape(num_samples, -1).cpu().numpy())
        answers.append((model.answers(out) if yt is None else out.logits.argmax(-1))[:, 0]
                       .cpu().numpy())  # posterior: the decoder's mode, not the observed y
        values.append(out.values[-1][:, 0].cpu().numpy())
    return TrajectoryRecord(np.stack(hs), np.stack(answers), np.stack(values), kl)


def pairwise_hamming(answers: np.ndarray) -> float:
    """Mean Hamming distance between the N answers ``[N, A]`` over all distinct pairs."""
    a = np.asarray(answers)
    n = len(a)
    if n < 2:
        return 0.0
    d = (a[:, None, :] != a[None, :, :]).sum(-1)
    return float(d[np.triu_indices(n, 1)].mean())


def pca_paths(h: np.ndarray, k: int = 2) -> np.ndarray:
    """Project ``[S, N, F]`` state paths onto their top-``k`` principal components: ``[S, N, k]``."""
    flat = h.reshape(-1, h.shape[-1])
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:k].T).reshape(*h.shape[:2], k)
