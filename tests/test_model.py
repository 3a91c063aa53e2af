"""The Pyro programs: site names and shapes, shared recursion, baseline, p(x)."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from gram_pyro.elbo import GramELBO
from gram_pyro.inference import prior_rollouts
from gram_pyro.recursion import SharedRecursion, transition_rules
from gram_pyro.build import programs
from tests.helpers import tiny_programs


def batch(task, cfg, n=3):
    data = task.build(seed=0)
    x, y = data.train.pairs()
    return torch.as_tensor(x[:n]), torch.as_tensor(y[:n])


def test_sites_names_and_shapes():
    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg)
    tr = poutine.trace(model).get_trace(x, y)
    tr.compute_log_prob()
    latent = [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and n not in ("batch", "trajectories")]
    assert latent == [f"eps_{n}_{t}" for n in range(cfg.n_supervision) for t in range(cfg.t_high)]
    state = (cfg.n_prefix + task.seq_len, cfg.d_model)
    for name in latent:
        site = tr.nodes[name]
        assert site["value"].shape == (3, *state)
        assert site["fn"].event_shape == state and site["fn"].batch_shape == (3,)
        assert site["log_prob"].shape == (3,)
    assert tr.nodes["y"]["is_observed"] and tr.nodes["y"]["fn"].event_shape == (task.answer_len,)
    # N trajectories per input under the outer plate
    tr = poutine.trace(model).get_trace(x, num_samples=5)
    assert tr.nodes["eps_0_0"]["value"].shape == (5, 3, *state)
    assert tr.nodes["y"]["value"].shape == (5, 3, task.answer_len)
    frames = [f.name for f in tr.nodes["eps_0_0"]["cond_indep_stack"]]
    assert set(frames) == {"trajectories", "batch"}


def test_render_model_draws_the_sites():
    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg, 2)
    graph = pyro.render_model(model, model_args=(x, y), render_distributions=True)
    for name in ("eps_0_0", "eps_1_1", "y", "batch"):
        assert name in graph.source


def test_guide_computes_the_recursion_once_and_the_model_reuses_it():
    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg)
    elbo = GramELBO(beta=0.1)
    pyro.set_rng_seed(1)
    shared = SharedRecursion()
    fused = elbo.differentiable_loss(model, guide, x, y, shared=shared)
    transitions = cfg.n_supervision * cfg.t_high
    assert shared.computed == transitions and shared.reused == transitions
    # the naive split (model recomputes) gives the same number
    pyro.set_rng_seed(1)
    naive = elbo.differentiable_loss(model, guide, x, y)
    assert torch.allclose(fused, naive, rtol=1e-5, atol=1e-4)


def test_model_recomputes_when_not_replaying():
    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg)
    shared = SharedRecursion()
    guide(x, y, shared=shared)
    model(x, y, shared=shared)  # runs its own prior noise: nothing may be reused after t=0
    assert shared.reused == 1  # only the first proposal, from the common start state


def test_a_reused_store_never_returns_a_proposal_of_another_input_or_network():
    """The same store and the same noise object, but another input or another network (the EMA
    copy): the proposal is recomputed, never served stale."""
    import copy

    task, cfg, net, model, guide = tiny_programs()
    x, _ = batch(task, cfg, 4)
    shared = SharedRecursion()
    h, l = net.initial_state((4,))
    e_x = shared.encoding(net, x)
    first = shared.propose(net, "eps_0_0", h, h, l, e_x, cfg.k_low, True)
    assert shared.propose(net, "eps_0_0", h, h, l, e_x, cfg.k_low, True)[1] is first[1]
    other_x = shared.encoding(net, x.flip(0))
    assert other_x is not e_x
    recomputed = shared.propose(net, "eps_0_0", h, h, l, other_x, cfg.k_low, True)
    assert not torch.allclose(recomputed[1], first[1])  # not the first input's proposal
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1)
    e_ema = shared.encoding(ema, x)
    assert e_ema is not e_x
    from_ema = shared.propose(ema, "eps_0_0", h, h, l, e_ema, cfg.k_low, True)
    assert not torch.allclose(from_ema[1], first[1])
    assert shared.computed == 3 and shared.reused == 1


@pytest.mark.parametrize("objective", ["heads", "paper", "prior_prefix", "full"])
def test_every_objective_backpropagates(objective):
    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg)
    rules = transition_rules(objective, cfg.t_high)
    elbo = GramELBO(beta=0.1)
    (terms,) = elbo.particle_terms(model, guide, x, y, steps=[0], rules=rules)
    # the penalized KLs are exactly those the objective's rules name
    assert sorted(terms["kl"]) == [f"eps_0_{t}" for t, r in enumerate(rules) if r.kl]
    loss = -terms["surrogate"].sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert net.prior_head.mu.down.weight.grad is not None
    assert net.f_high.layers[0].channel_mix.down.weight.grad.abs().sum() > 0


def test_deterministic_baseline_is_identical_for_any_seed():
    task, cfg, net, model, guide = tiny_programs(deterministic=True)
    x, _ = batch(task, cfg, 4)
    runs = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        runs.append(prior_rollouts(model, x, 6).answers)
    assert np.array_equal(runs[0], runs[1])
    assert (runs[0] == runs[0][:, :1]).all()  # all 6 trajectories agree
    tr = poutine.trace(model).get_trace(x)
    assert not [n for n in tr.nodes if n.startswith("eps_")]


def test_gram_trajectories_differ():
    task, cfg, net, model, guide = tiny_programs()
    x, _ = batch(task, cfg, 4)
    out = prior_rollouts(model, x, 6)
    with torch.no_grad():
        h = [model(x, num_samples=2).h for _ in range(1)][0]
    assert not torch.allclose(h[0], h[1])
    assert out.answers.shape == (4, 6, task.answer_len)


def test_one_program_serves_p_of_x():
    task, cfg, net, model, guide = tiny_programs("nqueens-5", unconditional=True)
    data = task.build(seed=0)
    x, y = data.train.pairs()
    assert (x == 0).all()
    loss = GramELBO(beta=1.0, kl_balance=None).loss(model, guide, torch.as_tensor(x), torch.as_tensor(y))
    assert np.isfinite(loss)


def test_temperature_scales_only_the_prior_sigma():
    task, cfg, net, model, guide = tiny_programs()
    x, _ = batch(task, cfg)
    with torch.no_grad():
        plain = poutine.trace(model).get_trace(x, steps=[0])
        cold = poutine.trace(poutine.replay(model, trace=plain)).get_trace(x, steps=[0], temperature=0.25)
    for t in range(cfg.t_high):
        site = f"eps_0_{t}"
        a, b = plain.nodes[site]["fn"].base_dist, cold.nodes[site]["fn"].base_dist
        assert torch.allclose(b.loc, a.loc)
        assert torch.allclose(b.scale, 0.25 * a.scale)


def test_a_shared_store_never_hands_out_a_stale_proposal():
    """Reusing one SharedRecursion with another input, or with another network (the EMA copy),
    recomputes every proposal instead of returning the one computed for something else."""
    import copy

    task, cfg, net, model, guide = tiny_programs()
    x, y = batch(task, cfg, 4)
    shared = SharedRecursion()
    transitions = cfg.n_supervision * cfg.t_high
    with torch.no_grad():
        # a guide run replayed by the model: every proposal is computed once and reused once
        trace = poutine.trace(guide).get_trace(x, y, shared=shared)
        poutine.replay(model, trace=trace)(x, y, shared=shared)
        assert shared.computed == shared.reused == transitions
        computed, reused = shared.computed, shared.reused
        # another input of the same shape, replaying the same noise: nothing may be reused
        x2 = x.flip(0)
        out = poutine.replay(model, trace=trace)(x2, y, shared=shared)
        assert shared.reused == reused
        fresh = poutine.replay(model, trace=trace)(x2, y, shared=SharedRecursion())
        assert torch.equal(out.h, fresh.h)
        # another network (the EMA copy, weights moved): nothing may be reused either
        other = copy.deepcopy(net)
        for p in other.parameters():
            p.add_(0.01)
        other_model, _ = programs(other, cfg)
        out = poutine.replay(other_model, trace=trace)(x, y, shared=shared)
        assert shared.reused == reused
        fresh = poutine.replay(other_model, trace=trace)(x, y, shared=SharedRecursion())
        assert torch.equal(out.h, fresh.h)
    assert shared.computed > computed


@pytest.mark.parametrize("task_name", ["coloring-5", "sudoku-4", "nqueens-5"])
def test_structure_links_are_read_by_the_encoder(task_name):
    """A colouring node reads its adjacency row, a Sudoku cell its peers, an N-Queens cell the
    cells that attack it: changing a linked input token changes the encoding of the positions
    linked to it, and only those."""
    from gram_pyro.tasks import get_task

    task = get_task(task_name)
    links = task.links()
    assert links.shape[0] == task.seq_len
    _, cfg, net, _, _ = tiny_programs(task_name)
    x = torch.as_tensor(task.build(seed=0).train.inputs[:1])
    src = int(links[links >= 0].min()) if task_name.startswith("coloring") else 0
    x2 = x.clone()
    x2[0, src] = (int(x[0, src]) + 1) % task.input_vocab
    with torch.no_grad():
        diff = (net.encode(x2) - net.encode(x)).abs().sum(-1)[0, cfg.n_prefix:]
    readers = {p for p in range(task.seq_len) if src in links[p]}
    assert readers and {p for p in range(task.seq_len) if diff[p] > 0} == readers | {src}
    _, cfg, off, _, _ = tiny_programs(task_name, extra=["links=false"])
    assert off.encoder.link_embed is None
    assert get_task(task_name, unconditional=True).links() is None
    # the bagged sum is the definition: sum_f E_f[x[links[p, f]]], missing links left out, scaled
    enc, raw = net.encoder, torch.as_tensor(links)
    batch = torch.as_tensor(task.build(seed=0).train.inputs[:5]).reshape(5, 1, -1)  # extra dim
    by_hand = torch.zeros(*batch.shape, cfg.d_model)
    for f in range(raw.shape[1]):
        ok = raw[:, f] >= 0
        rows = enc.link_embed.weight[batch[..., raw[:, f].clamp_min(0)] + f * task.input_vocab]
        by_hand += rows * ok[:, None]
    with torch.no_grad():
        plain = enc.embed(batch) * enc.scale + enc.pos[cfg.n_prefix:]
        got = enc(batch)[..., cfg.n_prefix:, :]
    torch.testing.assert_close(got, plain + by_hand * enc.link_scale, rtol=1e-5, atol=1e-5)
