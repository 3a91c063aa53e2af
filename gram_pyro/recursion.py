"""What the model and the guide share: the deterministic recursion, computed once.

Within one ELBO evaluation the guide runs first and samples every ``eps_{n}_{t}``; the model then
replays those values. Both need the same deterministic proposals ``u_t = f_high(h + l)`` (after K
``f_low`` refinements), and ``h_{t-1}`` is a function of the replayed noise only, so the values
are identical. Recomputing them in the model would double the cost of a training step
(docs/design.md §2 has the measurement). :class:`SharedRecursion` stores each proposal when the
guide computes it and hands it to the model on replay. An entry is reused only when everything it
was computed from is the very same object the model holds: the network, the input encoding (and
so the input), and the noise that produced its input state (``poutine.replay`` passes the guide's
tensors through unchanged). Anything else (another input, the EMA network, the model's own prior
noise) recomputes, so a stale proposal can never be returned.

:class:`TransitionRule` says, per transition, what carries gradient and which KL is penalized;
the training objectives (docs/design.md §3 and :mod:`gram_pyro.elbo`) are sets of rules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

OBJECTIVES = ("heads", "prior_prefix", "paper", "full")


@dataclass(frozen=True)
class TransitionRule:
    """How one transition enters the training objective.

    trunk_grad: gradient flows through f_low/f_high of this transition (else they run no-grad).
    head_grad: the Gaussian heads get gradient (from the KL) even when the trunk does not.
    posterior: the guide samples from q (else from the prior, so q = p and the KL is zero).
    kl: this transition's KL is part of the loss (else the programs put its site under
        ``poutine.mask(mask=False)``).
    """

    trunk_grad: bool = True
    head_grad: bool = True
    posterior: bool = True
    kl: bool = True


FULL = TransitionRule()


def transition_rules(objective: str, t_high: int) -> list[TransitionRule]:
    """The rules of the T transitions of one supervision step under ``objective``.

    - ``paper`` (Eq. 14): transitions 1..T-1 are posterior samples without gradient or KL; only
      the last carries gradient and KL. It leaves the early transitions as a free channel for y.
    - ``heads``: every transition's KL is penalized; early transitions give gradient to the
      Gaussian heads only (u detached, so memory stays flat in T).
    - ``prior_prefix``: early transitions are sampled from the prior (no channel, no KL needed).
    - ``full``: the full ELBO with gradient through every transition.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    early = {
        "paper": TransitionRule(trunk_grad=False, head_grad=False, posterior=True, kl=False),
        "heads": TransitionRule(trunk_grad=False, head_grad=True, posterior=True, kl=True),
        "prior_prefix": TransitionRule(trunk_grad=False, head_grad=False, posterior=False, kl=False),
        "full": FULL,
    }[objective]
    return [early] * (t_high - 1) + [FULL]


def grad_enabled(flag: bool):
    """``torch.no_grad()`` when ``flag`` is false, else a no-op (never re-enables grad)."""
    return contextlib.nullcontext() if flag else torch.no_grad()


class SharedRecursion:
    """Per-ELBO-evaluation store of the deterministic recursion (see the module docstring).

    Also records the final latent state of the run (``final_state``), which the trainer carries
    (detached) into the next supervision step.
    """

    def __init__(self):
        self._proposals: dict[str, tuple] = {}
        self._encoding = None
        self._initial = None
        self.reused = 0
        self.computed = 0
        self.final_state = None

    def encoding(self, net, x, num_samples=None):
        """``e_x`` of ``x`` under ``net``, expanded over ``num_samples`` trajectories; the same
        object for the same (net, x, num_samples), which is what proposals are keyed on."""
        key = (net, x, num_samples)
        if self._encoding is None or any(a is not b for a, b in zip(self._encoding[0], key)):
            e_x = net.encode(x)
            if num_samples is not None:
                e_x = e_x.expand(num_samples, *e_x.shape)
            self._encoding = (key, e_x)
        return self._encoding[1]

    def initial_state(self, net, batch_shape, state=None):
        """The state a run starts from: ``state`` if given, else z_0 of ``net`` expanded to the
        batch. Model and guide get the same objects, so the first proposal can be shared."""
        if state is not None:
            return state
        key = (net, tuple(batch_shape))
        if self._initial is None or self._initial[0][0] is not net or self._initial[0][1] != key[1]:
            self._initial = (key, net.initial_state(batch_shape))
        return self._initial[1]

    def propose(self, net, site, origin, h, l, e_x, k_low, trunk_grad):
        """``(l, u)`` of transition ``site`` from state ``(h, l)``; ``origin`` is the tensor object
        that produced ``h`` (the previous noise sample, or the start state)."""
        hit = self._proposals.get(site)
        if hit is not None and hit[0] is net and hit[1] is e_x and hit[2] is origin:
            self.reused += 1
            return hit[3], hit[4]
        with grad_enabled(trunk_grad):
            l_new, u = net.propose(h, l, e_x, k_low)
        self.computed += 1
        self._proposals[site] = (net, e_x, origin, l_new, u)
        return l_new, u
