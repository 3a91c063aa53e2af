"""GRAM's training objective as a small ELBO on Pyro's machinery (docs/design.md §3).

For one supervision step (with the transitions chosen by the objective's rules)::

    L = E_q[ log p(y | h_T) ] - beta * sum_t KL_bal( q(eps_t | u_t, y) || p(eps_t | u_t) )
    KL_bal = a * KL(sg(q) || p) + (1 - a) * KL(q || sg(p))        (a = kl_balance, 0.8)

The KLs are analytic, as in :class:`~pyro.infer.TraceMeanField_ELBO` (valid here because model
and guide share their dependency structure: both condition eps_t on the same sampled history).
The weighting is Pyro's own: ``beta`` reaches the programs as their ``kl_scale`` argument, which
puts every latent site under ``poutine.scale`` (the annealing factor of Pyro's DMM example), and
a transition the objective leaves out sits under ``poutine.mask(mask=False)``. So with
``kl_balance=None`` this ELBO is exactly ``TraceMeanField_ELBO`` on the programs called with
``kl_scale=beta``; the one thing of its own is KL balancing, which changes only the gradient, not
the value: the prior is pulled toward the posterior four times harder than the posterior toward
the prior.

With ``beta = 1`` and every site's KL counted this is the full ELBO (Eq. 13), which
:mod:`gram_pyro.likelihood` evaluates.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape
from torch.distributions import kl_divergence


def guided_traces(model, guide, *args, **kwargs):
    """``(model_trace, guide_trace)``: the guide run, then the model replaying its samples, both
    without subsample sites (the first half of every Pyro ELBO, and of importance weighting)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _detached(d):
    """The same distribution with its parameters cut from the graph (sg(.))."""
    base, dims = d, 0
    while isinstance(base, torch.distributions.Independent):  # pyro's subclass included
        dims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        raise NotImplementedError(f"KL balancing supports Normal sites, got {type(base).__name__}")
    out = dist.Normal(base.loc.detach(), base.scale.detach())
    return out.to_event(dims) if dims else out


def balanced_kl(q, p, balance: float | None):
    """KL(q || p) whose gradient is split ``balance : 1 - balance`` between p and q.
    ``balance=None`` gives the plain KL."""
    if balance is None:
        return kl_divergence(q, p)
    return (balance * kl_divergence(_detached(q), p)
            + (1.0 - balance) * kl_divergence(q, _detached(p)))


class GramELBO(ELBO):
    """beta-weighted, KL-balanced ELBO with analytic KLs (see the module docstring).

    Args:
        beta: weight of the KL terms, handed to the programs as ``kl_scale`` (so with beta != 1
            the programs must take that argument, as GRAM's do).
        kl_balance: the balancing coefficient a (None: no balancing).
        num_particles: Monte Carlo samples of the expectation.

    Works with :class:`~pyro.infer.SVI` (``loss_and_grads``) and as a module
    (``GramELBO(...)(model, guide)``, whose ``parameters()`` are the programs').
    """

    def __init__(self, beta: float = 1.0, kl_balance: float | None = 0.8,
                 num_particles: int = 1, max_plate_nesting: int = 2):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.beta = beta
        self.kl_balance = kl_balance

    def _get_trace(self, model, guide, args, kwargs):
        if self.beta != 1.0:
            if "kl_scale" in kwargs:
                raise ValueError("GramELBO(beta=...) sets the programs' kl_scale; pass one or the other")
            kwargs = {**kwargs, "kl_scale": self.beta}
        model_trace, guide_trace = guided_traces(model, guide, *args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            for trace in (model_trace, guide_trace):
                trace.compute_log_prob()
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    def terms(self, model_trace, guide_trace) -> dict:
        """Per-example pieces of one particle: ``recon`` (log-likelihood of the observed sites),
        ``kl`` {site: KL} for the penalized (unmasked) sites, unweighted, ``kl_total`` their sum,
        and ``surrogate`` (recon minus the balanced KLs, each weighted by its site's scale: beta),
        the quantity whose gradient is followed."""
        recon, kl, weighted = 0.0, {}, 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                lp = site["fn"].log_prob(site["value"])
                recon = recon + scale_and_mask(lp, site["scale"], site["mask"])
                continue
            if site["mask"] is False:  # poutine.mask(mask=False): outside this objective
                continue
            q, p = guide_trace.nodes[name]["fn"], site["fn"]
            kl[name] = scale_and_mask(kl_divergence(q, p), mask=site["mask"]).detach()
            weighted = weighted + scale_and_mask(balanced_kl(q, p, self.kl_balance),
                                                 site["scale"], site["mask"])
        kl_total = sum(kl.values()) if kl else torch.zeros_like(recon)  # the baseline has no KL
        return {"recon": recon, "kl": kl, "kl_total": kl_total, "surrogate": recon - weighted}

    def particle_terms(self, model, guide, *args, **kwargs):
        """Yield :meth:`terms` for each particle."""
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            yield self.terms(model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """Minus the surrogate, summed over the batch, averaged over particles."""
        total = 0.0
        for t in self.particle_terms(model, guide, *args, **kwargs):
            total = total - t["surrogate"].sum()
        return total / self.num_particles

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """What :meth:`pyro.infer.SVI.step` calls: the loss, with its gradients accumulated."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())
