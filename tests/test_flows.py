"""The sinh-arcsinh flow of the fitted guide: an exact density, the Gaussian at its start, and
a Monte Carlo KL where no closed form exists."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from gram_pyro.elbo import GramELBO, site_kl
from gram_pyro.flows import SinhArcsinhTransform, sinh_arcsinh_normal
from gram_pyro.recursion import SharedRecursion
from tests.helpers import tiny_programs


def random_params(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc, scale = torch.randn(n, generator=g), 0.3 + torch.rand(n, generator=g)
    skew = torch.rand(n, generator=g) * 2 - 1
    tail = torch.exp(torch.rand(n, generator=g) - 0.5)
    return loc, scale, skew, tail


def test_at_skew_zero_and_tail_one_it_is_the_gaussian():
    loc, scale, _, _ = random_params()
    q = sinh_arcsinh_normal(loc, scale, torch.zeros(5), torch.ones(5))
    gauss = dist.Normal(loc, scale)
    x = torch.randn(100, 5) * 3
    assert torch.allclose(q.log_prob(x), gauss.log_prob(x), atol=1e-5)
    torch.manual_seed(3)
    a = q.rsample((4,))
    torch.manual_seed(3)
    assert torch.allclose(a, gauss.rsample((4,)), atol=1e-6)


def test_the_density_integrates_to_one_and_is_the_change_of_variables():
    loc, scale, skew, tail = random_params(seed=1)
    q = sinh_arcsinh_normal(loc, scale, skew, tail)
    grid = torch.linspace(-60, 60, 400001, dtype=torch.float64)[:, None]
    p = q.log_prob(grid.to(torch.float32)).double().exp()
    mass = torch.trapezoid(p, grid[:, 0], dim=0)
    assert torch.allclose(mass, torch.ones(5, dtype=torch.float64), atol=2e-3), mass
    # at a few points: log N(z) - log |dx/dz|, dx/dz by autograd through the forward map
    t = SinhArcsinhTransform(skew, tail)
    x = torch.tensor([[-2.0], [0.3], [4.0]]).expand(3, 5)
    z = t.inv((x - loc) / scale).detach().requires_grad_(True)
    forward = loc + scale * t(z)
    (dxdz,) = torch.autograd.grad(forward.sum(), z)
    expected = dist.Normal(0.0, 1.0).log_prob(z) - dxdz.abs().log()
    assert torch.allclose(q.log_prob(x), expected.detach(), atol=1e-4)


def test_a_sample_and_its_replay_have_the_same_density():
    """The sampled value's density uses the cached z; a replayed copy of it inverts the flow."""
    loc, scale, skew, tail = random_params(seed=2)
    q = sinh_arcsinh_normal(loc, scale, skew, tail)
    x = q.rsample((1000,))
    replayed = sinh_arcsinh_normal(loc, scale, skew, tail)
    assert torch.allclose(q.log_prob(x), replayed.log_prob(x.clone()), atol=1e-3)
    # the skew moves the median to loc + scale * sinh(tail * skew)
    median = loc + scale * torch.sinh(tail * skew)
    assert torch.allclose((x < median).float().mean(0), torch.full((5,), 0.5), atol=0.06)


def test_without_a_closed_form_the_kl_is_the_one_sample_estimate():
    loc, scale, skew, tail = random_params(seed=3)
    p = dist.Normal(torch.zeros(5), torch.ones(5))
    gauss = dist.Normal(loc, scale)
    value = gauss.sample()
    assert torch.equal(site_kl(gauss, p, value), torch.distributions.kl_divergence(gauss, p))
    q = sinh_arcsinh_normal(loc, scale, torch.zeros(5), torch.ones(5))
    draws = q.sample((20000,))
    mc = site_kl(q, p, draws)
    assert torch.allclose(mc, q.log_prob(draws) - p.log_prob(draws))
    exact = torch.distributions.kl_divergence(gauss, p)  # the flow at its start is this Gaussian
    se = mc.std(0) / math.sqrt(len(draws))
    assert (torch.abs(mc.mean(0) - exact) < 4 * se + 1e-3).all(), (mc.mean(0), exact)


def test_the_guide_flow_starts_as_the_gaussian_guide():
    """Zero at the start: skew 0 and tail 1 everywhere, so q's density of the same particles is
    unchanged, and the ELBO (now by Monte Carlo) is the analytic one's estimate."""
    pyro.clear_param_store()
    task, cfg, net, model, guide = tiny_programs()
    x, y = (torch.as_tensor(a[:4]) for a in task.build(seed=0).train.pairs())
    pyro.set_rng_seed(0)
    drawn = poutine.trace(guide).get_trace(x, y, num_samples=3, shared=SharedRecursion())
    drawn.compute_log_prob()
    net.add_guide_flow()
    replayed = poutine.trace(poutine.replay(guide, trace=drawn)).get_trace(
        x, y, num_samples=3, shared=SharedRecursion())
    replayed.compute_log_prob()
    sites = [k for k in drawn.nodes if k.startswith("eps_")]
    assert sites and all(isinstance(replayed.nodes[k]["fn"].base_dist, dist.TransformedDistribution)
                         for k in sites)
    for k in sites:
        assert torch.allclose(drawn.nodes[k]["log_prob"], replayed.nodes[k]["log_prob"],
                              atol=1e-3, rtol=1e-5), k
    terms = next(GramELBO(beta=1.0, kl_balance=None).particle_terms(
        model, guide, x, y, shared=SharedRecursion()))
    assert torch.isfinite(terms["kl_total"]).all() and len(terms["kl"]) == len(sites)


@pytest.mark.parametrize("raw", [1e4, -1e4])
def test_the_flow_layer_bounds_its_skew_and_tail(raw):
    from gram_pyro.nets import GuideFlow

    flow = GuideFlow(8)
    with torch.no_grad():
        flow.out.bias.fill_(raw)
    skew, tail = flow(torch.randn(2, 8))
    assert skew.abs().max() <= 2.0 and (tail >= math.exp(-1) - 1e-6).all() and (tail <= math.e + 1e-6).all()
