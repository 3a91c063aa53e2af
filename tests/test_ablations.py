"""The paper's Table 3 ablations as config switches: each changes exactly what it names."""

import json
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from gram_pyro.build import build_net, describe, parameter_counts, programs
from gram_pyro.elbo import guided_traces
from gram_pyro.errors import UserError
from gram_pyro.inference import prior_rollouts
from gram_pyro.tasks import get_task
from gram_pyro.train import Trainer

from helpers import tiny_config


def _programs(extra=(), **fields):
    cfg = tiny_config("nqueens-5", extra, **fields)
    task = get_task(cfg.task)
    torch.manual_seed(0)
    net = build_net(task, cfg)
    with torch.no_grad():  # leave the zero init: give the heads and decoder something to say
        for head in (net.prior_head, net.posterior_head):
            head.mu.down.weight.normal_(0, 0.3)
        net.decoder.weight.mul_(0.05)
    model, guide = programs(net, cfg)
    x = torch.as_tensor(task.build().test.inputs[:3])
    return task, cfg, net, model, guide, x


def _eps_sites(trace):
    return {k: v for k, v in trace.nodes.items() if k.startswith("eps_") and v["type"] == "sample"}


def test_zero_mean_pins_the_prior_loc_at_every_site_and_keeps_sigma():
    *_, model, _, x = _programs()
    *_, model0, _, _ = _programs(["noise=zero_mean"])
    pyro.set_rng_seed(0)
    learned = _eps_sites(poutine.trace(model).get_trace(x, num_samples=2))
    pyro.set_rng_seed(0)
    zero = _eps_sites(poutine.trace(model0).get_trace(x, num_samples=2))
    assert learned.keys() == zero.keys() and len(zero) == 2 * 2  # N_sup x T sites
    first = next(iter(zero))
    assert learned[first]["fn"].base_dist.loc.abs().max() > 0
    assert torch.allclose(learned[first]["fn"].base_dist.scale, zero[first]["fn"].base_dist.scale)
    for site in zero.values():
        assert site["fn"].base_dist.loc.abs().max() == 0


def test_mean_only_has_no_noise_and_identical_trajectories():
    task, cfg, net, model, guide, x = _programs(["noise=mean_only"])
    trace = poutine.trace(model).get_trace(x, num_samples=4)
    assert not _eps_sites(trace)  # N(mu, 0): nothing is sampled
    h = trace.nodes["_RETURN"]["value"].h
    assert torch.equal(h[0], h[1]) and torch.equal(h[0], h[3])
    traj = prior_rollouts(model, x.numpy(), 5)
    assert (traj.answers == traj.answers[:, :1]).all()
    # the learned shift is applied: h differs from the deterministic core on the same weights
    base = programs(net, tiny_config("nqueens-5", deterministic=True))[0]
    h_det = base(x, num_samples=1).h
    assert not torch.allclose(h[:1], h_det)


def test_decode_sample_draws_answers_where_argmax_repeats_one():
    *_, model, _, x = _programs(deterministic=True)
    argmax = prior_rollouts(model, x.numpy(), 16).answers
    assert (argmax == argmax[:, :1]).all()  # the deterministic baseline: one answer per input
    *_, model_s, _, _ = _programs(["decode=sample"], deterministic=True)
    pyro.set_rng_seed(0)
    sampled = prior_rollouts(model_s, x.numpy(), 16).answers
    assert not (sampled == sampled[:, :1]).all()
    assert sampled.min() >= 0 and sampled.max() < 2


def test_random_z0_is_a_sample_site_shared_by_model_and_guide():
    *_, model, guide, x = _programs(["z0=random"], deterministic=True)
    traj = prior_rollouts(model, x.numpy(), 8)
    h = poutine.trace(model).get_trace(x, num_samples=2).nodes["_RETURN"]["value"].h
    assert not torch.equal(h[0], h[1])  # a fresh start per trajectory
    y = torch.as_tensor(get_task("nqueens-5").build().test.completions[:3])
    model_trace, guide_trace = guided_traces(model, guide, x, y, num_samples=3)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for site in ("z0_h", "z0_l"):
        assert torch.equal(model_trace.nodes[site]["value"], guide_trace.nodes[site]["value"])
        assert torch.allclose(model_trace.nodes[site]["log_prob"], guide_trace.nodes[site]["log_prob"])
    # later supervision steps start from the carried state: no new draw
    out = model(x, steps=[1], state=(h[:1].expand(2, *h.shape[1:]),) * 2, num_samples=2)
    assert out.h.shape == h.shape
    assert traj.answers.shape[:2] == (3, 8)
    *_, fixed, _, _ = _programs(deterministic=True)
    assert "z0_h" not in poutine.trace(fixed).get_trace(x, num_samples=2).nodes


@pytest.mark.parametrize("switch", ["noise=zero_mean", "noise=mean_only", "decode=sample", "z0=random"])
def test_every_ablation_trains_with_the_same_objective_machinery(tmp_path, switch):
    cfg = tiny_config("nqueens-5", [switch, "steps=3"])
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result["step"] >= 3 and np.isfinite(result["val_prior_acc"])


def test_the_deterministic_baseline_refuses_a_noise_ablation():
    with pytest.raises(UserError, match="noise=zero_mean changes the guidance noise"):
        tiny_config("nqueens-5", ["noise=zero_mean"], deterministic=True)
    with pytest.raises(UserError, match="noise must be one of"):
        tiny_config("nqueens-5", ["noise=none"])


def test_head_expansion_sizes_only_the_gaussian_heads():
    task = get_task("nqueens-5")
    wide = parameter_counts(build_net(task, tiny_config("nqueens-5")))
    narrow = parameter_counts(build_net(task, tiny_config("nqueens-5", ["head_expansion=0.5"])))
    assert narrow["prior_head"] < wide["prior_head"] and narrow["posterior_head"] < wide["posterior_head"]
    assert {k: v for k, v in narrow.items() if "head" not in k or k in ("halt_head", "lprm_head")} == \
        {k: v for k, v in wide.items() if "head" not in k or k in ("halt_head", "lprm_head")}


def test_describe_counts_every_parameter_once():
    cfg = tiny_config("nqueens-5")
    task = get_task(cfg.task)
    d = describe(task, cfg)
    net = build_net(task, cfg)
    assert d["total"] == sum(p.numel() for p in net.parameters())
    assert d["components"]["f_low"] == 0  # shared with f_high
    assert sum(d["parts"].values()) == d["total"]


def test_paper_preset_is_within_15_percent_of_the_papers_10m_on_sudoku(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--task", "sudoku-9",
                        "--preset", "paper", "--dry-run", "--json"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert abs(d["total"] - 10e6) <= 0.15 * 10e6, d["total"]
    assert abs(d["parts"]["backbone"] - 7e6) <= 0.15 * 7e6, d["parts"]
    assert d["config"]["beta"] == 0.1 and d["config"]["block"] == "mixer"
    assert list(tmp_path.iterdir()) == []  # nothing written
    r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--task", "sudoku-9",
                        "--preset", "paper", "--dry-run"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "by component" in r.stdout and "head_expansion = 1.0" in r.stdout
    r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--task", "sudoku-9"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr


def test_one_level_is_the_looped_transformer_at_equal_core_calls():
    task = get_task("nqueens-5")
    cfg = tiny_config("nqueens-5", ["levels=1", "k_low=2"], deterministic=True)
    net = build_net(task, cfg)
    calls = []
    net.f_high.register_forward_hook(lambda *a: calls.append(1))
    x = torch.as_tensor(task.build().test.inputs[:2])
    h, l = net.initial_state((2,))
    e_x = net.encode(x)
    l2, u = net.propose(h, l, e_x, cfg.k_low)
    assert len(calls) == cfg.k_low + 1 and l2 is l  # K + 1 core calls, l untouched
    expected = h
    for _ in range(cfg.k_low + 1):
        expected = net.f_high(expected + e_x)
    assert torch.allclose(u, expected)
    model, _ = programs(net, cfg)
    assert prior_rollouts(model, x.numpy(), 2).answers.shape == (2, 2, 25)


def test_the_squared_lprm_loss_is_the_papers_and_shares_bces_minimizer():
    from gram_pyro.critic import lprm_loss

    v, r = torch.tensor([-2.0, 0.0, 3.0]), torch.tensor([0.0, 0.25, 1.0])
    assert torch.allclose(lprm_loss(v, r, "squared"), ((torch.sigmoid(v) - r) ** 2).mean())
    assert torch.allclose(lprm_loss(v, r, "bce"), F.binary_cross_entropy_with_logits(v, r))
    grid = torch.linspace(-6, 6, 2401)
    for kind in ("bce", "squared"):  # both are minimized by the value sigmoid(v) = r
        losses = torch.stack([lprm_loss(g.expand(1), torch.tensor([0.25]), kind) for g in grid])
        assert abs(torch.sigmoid(grid[losses.argmin()]).item() - 0.25) < 0.01
    with pytest.raises(ValueError, match="unknown LPRM loss"):
        lprm_loss(v, r, "hinge")
    with pytest.raises(UserError, match="lprm_loss must be one of"):
        tiny_config("nqueens-5", ["lprm_loss=hinge"])


def test_the_joint_critic_is_trained_with_the_configured_lprm_loss(tmp_path):
    logs = {}
    for kind in ("bce", "squared"):
        cfg = tiny_config("nqueens-5", ["joint_critic=true", f"lprm_loss={kind}", "steps=2",
                                        "eval_interval=1", "critic_fit_steps=0"])
        trainer = Trainer(cfg, tmp_path / kind, progress=False)
        logs[kind] = trainer.train_batch()[-1]["lprm"]
    # the same seed and batch: the same values, judged by two losses (squared error is at most 1)
    assert 0 <= logs["squared"] <= 1 and logs["squared"] != pytest.approx(logs["bce"])


def _pooled_images(pool: int, tmp_path, seed: int = 0, draws: int = 60):
    cfg = tiny_config("sudoku-4", [f"augment_pool={pool}"], seed=seed)
    trainer = Trainer(cfg, tmp_path / f"pool{pool}-seed{seed}", progress=False)
    idx = np.zeros(draws, dtype=np.int64)  # the same training input, drawn again and again
    x, y = trainer.augment(idx, trainer.x_train[idx], trainer.y_train[idx])
    return trainer, x, y


def test_augment_pool_draws_each_input_from_a_fixed_set_of_its_images(tmp_path):
    trainer, x, y = _pooled_images(2, tmp_path)
    task = trainer.task
    assert task.is_correct(x, y).all()  # every image is a valid puzzle with its answer
    images = {(a.tobytes(), b.tobytes()) for a, b in zip(x, y)}
    original = (trainer.x_train[0].astype(np.int64).tobytes(),
                trainer.y_train[0].astype(np.int64).tobytes())
    assert len(images) == 3 and original in images  # itself and its two augmentations
    # the pool belongs to the data (data_seed), not to the training seed
    _, x2, y2 = _pooled_images(2, tmp_path, seed=1)
    assert {(a.tobytes(), b.tobytes()) for a, b in zip(x2, y2)} == images
    _, x0, y0 = _pooled_images(0, tmp_path)  # online: a fresh image nearly every time
    assert len({(a.tobytes(), b.tobytes()) for a, b in zip(x0, y0)}) > 10


def test_the_paper_preset_fits_the_lprm_by_squared_error_on_a_pool_of_1000_augmentations():
    from gram_pyro.config import make_config

    cfg = make_config("paper", task="sudoku-9")
    assert cfg.lprm_loss == "squared" and cfg.augment_pool == 1000
    cpu = make_config("cpu", task="sudoku-9")
    assert cpu.lprm_loss == "bce" and cpu.augment_pool == 0
