"""The amortized posterior q(eps | x, y) of GRAM (docs/design.md §1-2).

The guide runs the model's loop (:meth:`~gram_pyro.models.gram.RecursionProgram.recur`) and
differs only in the noise: ``eps_{n}_{t} ~ N(mu_q(u_t, y), sigma_q(u_t, y)^2)``, where y enters
through a learned target embedding added to u_t at the answer positions. It computes each u_t
once and leaves it in the :class:`~gram_pyro.recursion.SharedRecursion` it shares with the
model, which reuses it on replay.
"""

from __future__ import annotations

import pyro.distributions as dist

from gram_pyro.models.gram import RecursionProgram, plates
from gram_pyro.recursion import grad_enabled


class GramGuide(RecursionProgram):
    """Pyro guide with the model's signature (see :class:`gram_pyro.models.gram.GramModel`).

    A transition whose rule has ``posterior=False`` is drawn from the prior instead (q = p, so
    its KL is zero): the ``prior_prefix`` objective.
    """

    def forward(self, x, y=None, *, steps=None, state=None, shared=None, rules=None,
                num_samples=None, kl_scale=1.0, lprm_guidance=False, lprm_prev=None, heads=True,
                temperature=1.0):
        if y is None:
            raise ValueError("the guide conditions on the answer y; it cannot run without it")
        net = self.net

        def posterior(u, rule):
            if rule.posterior:
                return dist.Normal(*net.posterior(u, y)).to_event(2)
            with grad_enabled(False):
                return dist.Normal(*self.prior_params(u)).to_event(2)

        with plates(x.shape[0], num_samples, x.device):
            for _, h, l in self.recur(x, posterior, steps=steps, state=state, shared=shared,
                                      rules=rules, num_samples=num_samples, kl_scale=kl_scale):
                pass
        return h, l
