"""The GRAM generative program p(y, eps | x) (DESIGN §1).

For each supervision step n and transition t the program runs the deterministic recursion to get
u_t, samples the guidance noise ``eps_{n}_{t} ~ N(mu_p(u_t), sigma_p(u_t)^2)`` over the whole
state ``[P + L, D]`` (``.to_event(2)``), and sets ``h_t = u_t + eps_t``. After the last step it
decodes ``y ~ Categorical(decoder(h))`` per answer token. With a blank input the same program
is p(x), the data playing the role of y. With ``deterministic=True`` the noise is switched off
(``h_t = u_t``, no latent sites): the TRM-like baseline, the same code otherwise.

Plates: ``batch`` (dim -1) over inputs and, when ``num_samples`` is given, ``trajectories``
(dim -2) over independent trajectories of every input, batched as one tensor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from gram_pyro.recursion import FULL, SharedRecursion, grad_enabled


@dataclass
class Rollout:
    """What a run of the program leaves behind (the program's return value).

    h, l: the final latent state. logits: the answer logits at the end.
    halt_logits, log_values: per supervision step, the ACT halt logit and the log LPRM value
        (``logsigmoid`` of the value logit) of the state after it; ``values`` are their exps.
    """

    h: torch.Tensor
    l: torch.Tensor
    logits: torch.Tensor
    halt_logits: list = field(default_factory=list)
    log_values: list = field(default_factory=list)

    @property
    def values(self) -> list:
        return [v.exp() for v in self.log_values]


def plates(batch_size: int, num_samples: int | None):
    """The plate stack: ``trajectories`` (dim -2, optional) outside ``batch`` (dim -1)."""
    stack = contextlib.ExitStack()
    if num_samples is not None:
        stack.enter_context(pyro.plate("trajectories", num_samples, dim=-2))
    stack.enter_context(pyro.plate("batch", batch_size, dim=-1))
    return stack


def batch_shape(x, num_samples):
    return (x.shape[0],) if num_samples is None else (num_samples, x.shape[0])


def expand_encoding(e_x, num_samples):
    return e_x if num_samples is None else e_x.expand(num_samples, *e_x.shape)


class RecursionProgram:
    """What the model and the guide share: the networks, the recursion sizes, and the start of
    a run (the encoding, the start state and the shared recursion store)."""

    def __init__(self, net, *, k_low: int, t_high: int, n_supervision: int,
                 deterministic: bool = False):
        self.net = net
        self.k_low, self.t_high, self.n_supervision = k_low, t_high, n_supervision
        self.deterministic = deterministic

    def start(self, x, steps, state, shared, rules, num_samples):
        """``(steps, rules, shared, e_x, h, l)`` at the beginning of a call."""
        pyro.module("gram", self.net)
        steps = range(self.n_supervision) if steps is None else steps
        rules = rules or [FULL] * self.t_high
        shared = shared or SharedRecursion()
        e_x = expand_encoding(shared.encoding(self.net, x), num_samples)
        h, l = shared.initial_state(self.net, batch_shape(x, num_samples), state)
        return steps, rules, shared, e_x, h, l


class GramModel(RecursionProgram):
    """Callable Pyro model ``model(x, y=None, *, steps, state, shared, rules, num_samples)``.

    Args:
        net: the :class:`~gram_pyro.nets.GramNet` holding every parameter.
        k_low: K, low-level refinements per transition. t_high: T, transitions per
        supervision step. n_supervision: N_sup, supervision steps in a full run.
        deterministic: switch the noise off (the baseline).

    Call arguments (the guide takes the same):
        x ``[B, L]`` input tokens; y ``[B, answer_len]`` observed answer, or None to sample it.
        steps: which supervision steps to run (default all); training runs one at a time.
        state: ``(h, l)`` to start from (default z_0), e.g. the detached end of the last step.
        shared: a :class:`SharedRecursion` shared with the guide (reuse of u_t on replay).
        rules: per-transition :class:`TransitionRule` (training objectives); default FULL.
        num_samples: N trajectories per input under the ``trajectories`` plate.
        lprm_guidance: add ``pyro.factor("lprm_{n}", log v_n - log v_{n-1})`` after each step,
            which tilts the trajectory distribution by the LPRM's final value (it telescopes to
            ``log v_N``); used by SMC. The program then no longer defines p(y | x).
        lprm_prev: ``log v`` of the state the call starts from (when stepping a trajectory one
            supervision step per call), so the factors still telescope across calls.
        heads: evaluate the ACT and LPRM heads after each supervision step (training turns this
            off: it fits the heads on a detached prior chain of its own).
        temperature: scales the prior's sigma (sampling only: 1 is the trained model; below 1
            trades diversity for validity, as in tempered sampling of flows and VAEs).
    """

    def __call__(self, x, y=None, *, steps=None, state=None, shared=None, rules=None,
                 num_samples=None, lprm_guidance=False, lprm_prev=None, heads=True,
                 temperature=1.0):
        net = self.net
        steps, rules, shared, e_x, h, l = self.start(x, steps, state, shared, rules, num_samples)
        origin = h
        out = Rollout(h, l, None)
        prev_value = lprm_prev
        with plates(x.shape[0], num_samples):
            for n in pyro.markov(steps):
                for t in pyro.markov(range(self.t_high)):
                    rule = rules[t]
                    site = f"eps_{n}_{t}"
                    l, u = shared.propose(net, site, origin, h, l, e_x, self.k_low, rule.trunk_grad)
                    if self.deterministic:
                        h = origin = u
                        continue
                    with grad_enabled(rule.head_grad or rule.trunk_grad):
                        loc, scale = net.prior(u)
                    if temperature != 1.0:
                        scale = scale * temperature
                    eps = pyro.sample(site, dist.Normal(loc, scale).to_event(2),
                                      infer={"kl": rule.kl})
                    h = u + (eps if rule.trunk_grad else eps.detach())
                    origin = eps
                if not (heads or lprm_guidance):
                    continue
                halt_logit, value_logit = net.judge(h)
                log_v = F.logsigmoid(value_logit)
                out.halt_logits.append(halt_logit)
                out.log_values.append(log_v)
                if lprm_guidance:
                    pyro.factor(f"lprm_{n}", log_v if prev_value is None else log_v - prev_value)
                    prev_value = log_v
            out.logits = net.decode(h)
            pyro.sample("y", dist.Categorical(logits=out.logits).to_event(1), obs=y)
        out.h, out.l = h, l
        shared.final_state = (h, l)
        return out
