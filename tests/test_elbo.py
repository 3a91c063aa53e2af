"""GramELBO against hand computation on a tiny model, and its gradient split."""

import math

import pytest

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from gram_pyro.elbo import GramELBO, balanced_kl
from gram_pyro.recursion import transition_rules

PRIOR_LOC, PRIOR_SCALE = 0.3, 1.5


def tiny_model(y, kl_flags=(True, True), kl_scale=1.0):
    with pyro.plate("batch", 2, dim=-1):
        with poutine.scale(scale=kl_scale), poutine.mask(mask=kl_flags[0]):
            z1 = pyro.sample("z1", dist.Normal(PRIOR_LOC, PRIOR_SCALE).expand([2, 3]).to_event(1))
        with poutine.scale(scale=kl_scale), poutine.mask(mask=kl_flags[1]):
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z2.sum(-1), 0.5), obs=y)


def tiny_guide(y, kl_flags=(True, True), kl_scale=1.0):
    loc = pyro.param("loc", torch.tensor(-0.2))
    scale = pyro.param("scale", torch.tensor(0.7))
    with pyro.plate("batch", 2, dim=-1), poutine.scale(scale=kl_scale):
        with poutine.mask(mask=kl_flags[0]):
            z1 = pyro.sample("z1", dist.Normal(loc, scale).expand([2, 3]).to_event(1))
        with poutine.mask(mask=kl_flags[1]):
            pyro.sample("z2", dist.Normal(z1 + 0.1, 0.4).to_event(1))


def kl_normal(mq, sq, mp, sp):
    return math.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5


def test_terms_match_a_hand_computation():
    y = torch.tensor([0.5, -1.0])
    elbo = GramELBO(beta=0.3, kl_balance=0.8)
    model_trace, guide_trace = elbo._get_trace(tiny_model, tiny_guide, (y,), {})
    terms = elbo.terms(model_trace, guide_trace)
    z2 = guide_trace.nodes["z2"]["value"]
    recon = torch.distributions.Normal(z2.sum(-1), 0.5).log_prob(y)
    kl1 = 3 * kl_normal(-0.2, 0.7, PRIOR_LOC, PRIOR_SCALE)
    # z2: q = N(z1 + 0.1, 0.4), p = N(z1, 1): the means differ by 0.1 everywhere
    kl2 = 3 * kl_normal(0.1, 0.4, 0.0, 1.0)
    assert torch.allclose(terms["recon"], recon)
    assert torch.allclose(terms["kl"]["z1"], torch.full((2,), kl1))
    assert torch.allclose(terms["kl"]["z2"], torch.full((2,), kl2))
    assert torch.allclose(terms["surrogate"], recon - 0.3 * (kl1 + kl2))
    loss = elbo.differentiable_loss(tiny_model, tiny_guide, y)
    assert loss.shape == ()


def test_beta_is_poutine_scale_and_without_balancing_gram_elbo_is_trace_mean_field():
    """GramELBO(beta) hands beta to the programs as kl_scale (poutine.scale on the latent sites),
    so without KL balancing it is Pyro's own TraceMeanField_ELBO on the scaled programs."""
    y = torch.tensor([0.5, -1.0])
    pyro.set_rng_seed(3)
    ours = GramELBO(beta=0.3, kl_balance=None).differentiable_loss(tiny_model, tiny_guide, y)
    pyro.set_rng_seed(3)
    stock = TraceMeanField_ELBO().differentiable_loss(tiny_model, tiny_guide, y, kl_scale=0.3)
    assert torch.allclose(ours, stock)
    model_trace, _ = GramELBO(beta=0.3)._get_trace(tiny_model, tiny_guide, (y,), {})
    assert model_trace.nodes["z1"]["scale"] == 0.3 and model_trace.nodes["y"]["scale"] == 1.0
    with pytest.raises(ValueError, match="one or the other"):
        GramELBO(beta=0.3).loss(tiny_model, tiny_guide, y, kl_scale=0.5)


def test_sites_without_kl_flag_are_left_out():
    y = torch.tensor([0.5, -1.0])
    elbo = GramELBO(beta=1.0)
    mt, gt = elbo._get_trace(tiny_model, tiny_guide, (y,), {"kl_flags": (False, True)})
    terms = elbo.terms(mt, gt)
    assert list(terms["kl"]) == ["z2"]


def test_kl_balance_splits_the_gradient_not_the_value():
    mq = torch.tensor([0.4], requires_grad=True)
    mp = torch.tensor([-0.3], requires_grad=True)
    q, p = dist.Normal(mq, 1.0), dist.Normal(mp, 2.0)
    plain = balanced_kl(q, p, None).sum()
    gq, gp = torch.autograd.grad(plain, [mq, mp])
    bal = balanced_kl(q, p, 0.8).sum()
    bq, bp = torch.autograd.grad(bal, [mq, mp])
    assert torch.allclose(plain, bal)
    assert torch.allclose(bq, 0.2 * gq) and torch.allclose(bp, 0.8 * gp)


def test_beta_two_at_half_balance_has_the_plain_elbos_gradient():
    """The likelihood recipe (docs/design.md §6) trains with beta = 2 and kl_balance = 0.5:
    2 (KL(sg q || p) + KL(q || sg p)) / 2 follows the gradient of the plain ELBO at beta = 1 in
    every parameter, here through z2's KL, whose q and p both move with the guide's z1."""
    y = torch.tensor([0.5, -1.0])
    grads = []
    for beta, balance in ((2.0, 0.5), (1.0, None), (2.0, 0.8)):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        loss = GramELBO(beta=beta, kl_balance=balance).differentiable_loss(tiny_model, tiny_guide, y)
        params = [pyro.param("loc").unconstrained(), pyro.param("scale").unconstrained()]
        grads.append(torch.stack(torch.autograd.grad(loss, params)))
    assert torch.allclose(grads[0], grads[1])
    assert not torch.allclose(grads[2], grads[1], atol=1e-3)  # the default balance does not


def test_objective_rules():
    paper = transition_rules("paper", 3)
    assert [r.kl for r in paper] == [False, False, True]
    assert [r.trunk_grad for r in paper] == [False, False, True]
    heads = transition_rules("heads", 3)
    assert all(r.kl for r in heads) and [r.head_grad for r in heads] == [True] * 3
    assert [r.trunk_grad for r in heads] == [False, False, True]
    prior = transition_rules("prior_prefix", 3)
    assert [r.posterior for r in prior] == [False, False, True]
    assert all(r.trunk_grad and r.kl for r in transition_rules("full", 3))
