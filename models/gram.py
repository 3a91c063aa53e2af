"""The GRAM generative program p(y, eps | x) (docs/design.md §1-2).

For each supervision step n and transition t the program runs the deterministic recursion to get
u_t, samples the guidance noise ``eps_{n}_{t} ~ N(mu_p(u_t), sigma_p(u_t)^2)`` over the whole
state ``[P + L, D]`` (``.to_event(2)``), and sets ``h_t = u_t + eps_t``. After the last step it
decodes ``y ~ Categorical(decoder(h))`` per answer token. With a blank input the same program
is p(x), the data playing the role of y. With ``deterministic=True`` the noise is switched off
(``h_t = u_t``, no latent sites): the TRM-like baseline, the same code otherwise.

Plates: ``batch`` (dim -1) over inputs and, when ``num_samples`` is given, ``trajectories``
(dim -2) over independent trajectories of every input, batched as one tensor.

The model and the guide (:mod:`gram_pyro.guides.gram`) run the same loop,
:meth:`RecursionProgram.recur`, and differ only in the distribution of each ``eps`` site.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from gram_pyro.recursion import FULL, SharedRecursion, grad_enabled


@dataclass
class Rollout:
    """What a run of the program leaves behind (the program's return value).

    h, l: the final latent state. logits: the answer logits at the end. sample: the answer site's
        value (the observed y, or a draw from the decoder when y is None).
    halt_logits, log_values: per supervision step, the ACT halt logit and the log LPRM value
        (``logsigmoid`` of the value logit) of the state after it; ``values`` are their exps.
    """

    h: torch.Tensor
    l: torch.Tensor
    logits: torch.Tensor
    halt_logits: list = field(default_factory=list)
    log_values: list = field(default_factory=list)
    sample: torch.Tensor | None = None  # the value of the answer site y (drawn when not observed)

    @property
    def values(self) -> list:
        return [v.exp() for v in self.log_values]


def plates(batch_size: int, num_samples: int | None, device=None):
    """The plate stack: ``trajectories`` (dim -2, optional) outside ``batch`` (dim -1)."""
    stack = contextlib.ExitStack()
    if num_samples is not None:
        stack.enter_context(pyro.plate("trajectories", num_samples, dim=-2, device=device))
    stack.enter_context(pyro.plate("batch", batch_size, dim=-1, device=device))
    return stack


def batch_shape(x, num_samples):
    return (x.shape[0],) if num_samples is None else (num_samples, x.shape[0])


class RecursionProgram(nn.Module):
    """What the model and the guide share: the network, the recursion sizes, and the loop.

    Both are ``nn.Module``s holding the same :class:`~gram_pyro.nets.GramNet`, so
    ``GramELBO(...)(model, guide)`` is a module whose ``parameters()`` are the net's (Pyro's
    ELBO-as-module pattern), and both register the net with ``pyro.module("gram", net)`` for
    stock :class:`~pyro.infer.SVI`.
    """

    def __init__(self, net, *, k_low: int, t_high: int, n_supervision: int,
                 deterministic: bool = False, noise: str = "learned", decode: str = "argmax",
                 z0: str = "fixed"):
        super().__init__()
        self.net = net
        self.k_low, self.t_high, self.n_supervision = k_low, t_high, n_supervision
        self.deterministic = deterministic
        self.noise, self.decode, self.z0 = noise, decode, z0

    def prior_params(self, u):
        """``(loc, scale)`` of p(eps_t | u_t): the learned heads, with the loc pinned to zero
        under the ``noise=zero_mean`` ablation (N(0, sigma^2): noise without a learned mean)."""
        loc, scale = self.net.prior(u)
        return (torch.zeros_like(loc) if self.noise == "zero_mean" else loc), scale

    def answers(self, out: "Rollout") -> torch.Tensor:
        """The answer a rollout gives: the decoder's argmax per token, or under ``decode=sample``
        the value its answer site drew (the stochastic-decoding ablation)."""
        if self.decode == "sample" and out.sample is not None:
            return out.sample
        return out.logits.argmax(-1)

    def start(self, shared, x, num_samples, state):
        """The state a run starts from: ``state``, else z_0, which is the net's stored vector
        or, under ``z0=random``, a fresh draw per trajectory at the sample sites ``z0_h`` and
        ``z0_l`` (N(0, I) in the model and in the guide alike, so q = p there and the sites add
        nothing to the ELBO's KL or to importance weights)."""
        net = self.net
        if state is not None or self.z0 != "random":
            return shared.initial_state(net, batch_shape(x, num_samples), state)
        shape = (net.n_prefix + net.seq_len, net.d_model)
        unit = dist.Normal(net.h0.new_zeros(()), 1.0).expand(shape).to_event(2)
        return pyro.sample("z0_h", unit), pyro.sample("z0_l", unit)

    @property
    def device(self) -> torch.device:
        """Where the network lives: every tensor a program's caller makes goes there."""
        return self.net.h0.device

    def recur(self, x, noise, *, steps=None, state=None, shared=None, rules=None,
              num_samples=None, kl_scale=1.0):
        """Run the recursion, yielding ``(n, h, l)`` after each supervision step n.

        ``noise(u, rule)`` is the distribution of ``eps_{n}_{t}`` given the proposal u_t (the
        prior in the model, the posterior in the guide). Each site is weighted with
        ``poutine.scale(kl_scale)`` (beta: the ELBO's KL weight, as the annealing factor of
        Pyro's DMM example) and ``poutine.mask(rule.kl)`` (a transition whose KL the objective
        leaves out). Must run under :func:`plates`.
        """
        pyro.module("gram", self.net)
        net = self.net
        steps = range(self.n_supervision) if steps is None else steps
        rules = rules or [FULL] * self.t_high
        shared = SharedRecursion() if shared is None else shared
        e_x = shared.encoding(net, x, num_samples)
        h, l = self.start(shared, x, num_samples, state)
        origin = h  # the tensor that produced h: what the shared store checks on replay
        for n in pyro.markov(steps):
            for t in pyro.markov(range(self.t_high)):
                rule, site = rules[t], f"eps_{n}_{t}"
                l, u = shared.propose(net, site, origin, h, l, e_x, self.k_low, rule.trunk_grad)
                if self.deterministic:
                    h = origin = u
                    continue
                if self.noise == "mean_only":  # N(mu, 0): a learned deterministic shift
                    with grad_enabled(rule.trunk_grad):  # no KL: only the trunk's path trains it
                        shift = self.prior_params(u)[0]
                    h = origin = u + shift
                    continue
                with grad_enabled(rule.head_grad or rule.trunk_grad):
                    eps_dist = noise(u, rule)
                with poutine.scale(scale=kl_scale), poutine.mask(mask=rule.kl):
                    eps = pyro.sample(site, eps_dist)
                h = u + (eps if rule.trunk_grad else eps.detach())
                origin = eps
            shared.final_state = (h, l)
            yield n, h, l


class GramModel(RecursionProgram):
    """Pyro model ``model(x, y=None, *, steps, state, shared, rules, num_samples, kl_scale, ...)``.

    Args:
        net: the :class:`~gram_pyro.nets.GramNet` holding every parameter.
        k_low: K, low-level refinements per transition. t_high: T, transitions per
        supervision step. n_supervision: N_sup, supervision steps in a full run.
        deterministic: switch the noise off (the baseline).
        noise, decode, z0: the ablation switches of :class:`~gram_pyro.config.Config`.

    Call arguments (the guide takes the same):
        x ``[B, L]`` input tokens; y ``[B, answer_len]`` observed answer, or None to sample it.
        steps: which supervision steps to run (default all); training runs one at a time.
        state: ``(h, l)`` to start from (default z_0), e.g. the detached end of the last step.
        shared: a :class:`SharedRecursion` shared with the guide (reuse of u_t on replay).
        rules: per-transition :class:`TransitionRule` (training objectives); default FULL.
        num_samples: N trajectories per input under the ``trajectories`` plate.
        kl_scale: ``poutine.scale`` of every latent site (the ELBO's beta; 1 is the model).
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

    def forward(self, x, y=None, *, steps=None, state=None, shared=None, rules=None,
                num_samples=None, kl_scale=1.0, lprm_guidance=False, lprm_prev=None, heads=True,
                temperature=1.0):
        net = self.net

        def prior(u, rule):
            loc, scale = self.prior_params(u)
            return dist.Normal(loc, scale * temperature if temperature != 1.0 else scale).to_event(2)

        halt_logits, log_values, prev_value = [], [], lprm_prev
        with plates(x.shape[0], num_samples, x.device):
            for n, h, l in self.recur(x, prior, steps=steps, state=state, shared=shared,
                                      rules=rules, num_samples=num_samples, kl_scale=kl_scale):
                if not (heads or lprm_guidance):
                    continue
                halt_logit, value_logit = net.judge(h)
                log_v = F.logsigmoid(value_logit)
                halt_logits.append(halt_logit)
                log_values.append(log_v)
                if lprm_guidance:
                    pyro.factor(f"lprm_{n}", log_v if prev_value is None else log_v - prev_value)
                    prev_value = log_v
            logits = net.decode(h)
            answer = pyro.sample("y", dist.Categorical(logits=logits).to_event(1), obs=y)
        return Rollout(h, l, logits, halt_logits, log_values, answer)
