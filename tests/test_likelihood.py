"""Likelihood estimators: exact on a linear-Gaussian trajectory model, ordered in K, agreeing
with Pyro's own Importance, and stable in float32 at K = 10,000; the PSIS k-hat, the SMC
estimate, and the guide fitted for likelihood."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Importance

from gram_pyro.build import programs
from gram_pyro.checkpoint import load_checkpoint, load_run
from gram_pyro.cli import main
from gram_pyro.guide_fit import format_report as format_guide_report
from gram_pyro.errors import UserError
from gram_pyro.guide_fit import fit_guide, guide_parameters, iwae_dreg_loss, wake_phi_loss
from gram_pyro.guide_fit import refit_run as refit_guide
from gram_pyro.importance import KHAT_RELIABLE, log_mean_exp, pareto_khat, weighted_traces
from gram_pyro.inference import prior_rollouts
from gram_pyro.likelihood import estimate, format_loglik, khat_by_completions, log_weights, \
    run_loglik, smc_log_likelihood
from gram_pyro.models.gram import plates
from gram_pyro.recursion import SharedRecursion
from gram_pyro.schedule import warmed_decay
from gram_pyro.train import Trainer
from tests.helpers import tiny_config, tiny_programs
from tests.linear_gaussian import LinearGaussian


def lg_batch(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, generator=g), torch.randn(b, 2, generator=g)


def test_iwae_recovers_the_exact_kalman_likelihood():
    lg = LinearGaussian(guide_gain=0.5, guide_scale=0.8)
    x, y = lg_batch()
    exact = lg.exact_log_likelihood(x, y).numpy()
    est = estimate(lg.model, lg.guide, x, y, 1000, chunk=500)
    ok = (np.abs(est.iwae - exact) <= 3 * est.se + 1e-6) | (np.abs(est.iwae - exact) <= 0.01 * np.abs(exact))
    assert ok.all(), (est.iwae, exact, est.se)


def test_bounds_are_ordered_in_expectation():
    lg = LinearGaussian()
    x, y = lg_batch(1)
    exact = lg.exact_log_likelihood(x, y).mean().item()
    runs = [estimate(lg.model, lg.guide, x, y, 100) for _ in range(20)]
    elbo = np.mean([r.elbo.mean() for r in runs])
    iwae = {k: np.mean([r.iwae_at(k).mean() for r in runs]) for k in (1, 10, 100)}
    assert abs(iwae[1] - elbo) < 0.1  # E[IWAE_1] = ELBO (analytic vs sampled KL agree on average)
    assert elbo <= iwae[10] <= iwae[100] <= exact + 0.02


def test_float32_is_stable_at_ten_thousand_particles():
    lg = LinearGaussian(guide_scale=0.3)  # a narrow guide: log weights spread over many nats
    x, y = lg_batch(2, b=3)
    est = estimate(lg.model, lg.guide, x, y, 10_000, chunk=2_500)
    assert est.log_w.dtype == torch.float32 and est.log_w.shape == (10_000, 3)
    assert np.isfinite(est.iwae).all() and np.isfinite(est.se).all()
    assert (est.ess >= 1).all() and (est.ess <= 10_000).all()


def test_gram_estimate_agrees_with_pyro_importance_on_one_example():
    task, cfg, net, model, guide = tiny_programs()
    x, y = task.build(seed=0).test.pairs()
    x1, y1 = torch.as_tensor(x[:1]), torch.as_tensor(y[:1])
    pyro.set_rng_seed(0)
    ours = estimate(model, guide, x1, y1, 400, chunk=200,
                    make_kwargs=lambda: {"shared": SharedRecursion()})
    pyro.set_rng_seed(1)
    with torch.no_grad():
        imp = Importance(model, guide, num_samples=400).run(x1, y1)
        theirs = imp.get_log_normalizer().item()
    # both are log-mean-exp of 400 weights from the same proposal: equal up to MC error, and
    # each estimate has its own, so their difference has sqrt(2) times one standard error
    assert abs(ours.iwae[0] - theirs) < 4 * math.sqrt(2) * ours.se[0] + 0.05, \
        (ours.iwae[0], theirs, ours.se[0])


def test_deterministic_model_weights_are_exact():
    task, cfg, net, model, guide = tiny_programs(deterministic=True)
    x, y = task.build(seed=0).test.pairs()
    x, y = torch.as_tensor(x[:3]), torch.as_tensor(y[:3])
    lw, _ = log_weights(model, guide, x, y, 5)
    assert torch.allclose(lw, lw[:1].expand_as(lw))  # no latent: every particle is log p(y|x)
    with torch.no_grad():
        logits = model(x).logits
    exact = torch.distributions.Categorical(logits=logits).log_prob(y).sum(-1)
    assert torch.allclose(lw[0], exact, atol=1e-4)
    assert math.isfinite(float(lw.sum()))


# -- trustworthy estimates (issue #20): k-hat, SMC, a guide fitted for likelihood ---------------

def test_pareto_khat_recovers_the_tail_index_of_pareto_weights():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4000, 2, generator=g)
    # weights w = U^(-1/alpha) are Pareto with tail index k = 1 / alpha
    log_w = torch.stack([-u[:, 0].log() / 4.0, -u[:, 1].log() / 0.8], dim=1)
    k = pareto_khat(log_w).numpy()
    assert k[0] < 0.5 and abs(k[0] - 0.25) < 0.15, k  # light tail: IS converges
    assert k[1] > KHAT_RELIABLE and abs(k[1] - 1.25) < 0.3, k  # heavy tail: flagged
    assert np.isnan(pareto_khat(log_w[:20]).numpy()).all()  # too few weights to fit a tail


def test_smc_recovers_the_exact_kalman_likelihood_and_agrees_with_iwae():
    lg = LinearGaussian(steps=1, n_supervision=4, guide_gain=0.5, guide_scale=0.8)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    exact = lg.exact_log_likelihood(x, y).numpy()
    pyro.set_rng_seed(0)
    smc, resampled = smc_log_likelihood(lg.model, lg.guide, x, y, 2000, n_steps=4)
    iwae = estimate(lg.model, lg.guide, x, y, 2000).iwae
    assert resampled > 0  # the guide's weights degenerate along the way, so SMC resamples
    assert np.abs(smc - exact).max() < 0.3 and abs(float(np.mean(smc - exact))) < 0.06, (smc, exact)
    assert abs(float(np.mean(smc - iwae))) < 0.15, (smc, iwae)


def test_smc_twisted_by_an_overconfident_decoder_is_worse_here():
    """The documented reason for ``twist=False``: on this model p(y | h_n) at an intermediate
    state is far narrower than the predictive of y, and resampling toward it loses accuracy."""
    lg = LinearGaussian(steps=1, n_supervision=4, guide_gain=0.5, guide_scale=0.8)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    exact = lg.exact_log_likelihood(x, y).numpy()
    err = {}
    for twist in (False, True):
        pyro.set_rng_seed(0)
        err[twist] = np.abs(smc_log_likelihood(lg.model, lg.guide, x, y, 1000, n_steps=4,
                                               twist=twist)[0] - exact).mean()
    assert err[False] < err[True], err


def test_smc_of_a_deterministic_model_is_its_exact_likelihood():
    task, cfg, net, model, guide = tiny_programs(deterministic=True)
    x, y = task.build(seed=0).test.pairs()
    x, y = torch.as_tensor(x[:3]), torch.as_tensor(y[:3])
    smc, _ = smc_log_likelihood(model, guide, x, y, 4, n_steps=cfg.n_supervision,
                                make_kwargs=lambda: {"shared": SharedRecursion()})
    lw, _ = log_weights(model, guide, x, y, 1)
    assert np.allclose(smc, lw[0].numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ll") / "run"
    Trainer(tiny_config(extra=["steps=8", "critic_fit_steps=0"]), out, progress=False).fit()
    return out


def test_fit_guide_improves_the_heldout_elbo_and_leaves_the_model_alone(trained):
    before = load_checkpoint(trained)
    report = refit_guide(trained, steps=40, batch_size=16, lr=3e-3)
    after = load_checkpoint(trained)
    assert report["heldout_after"] > report["heldout_before"]
    for key in ("model", "ema"):  # the training state is untouched
        assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
    assert after["step"] == before["step"] and "guide_fit" in after
    fitted = after["guide_fit"]["weights"]
    # the default fit gives q a mixer; load_run rebuilds it from the stored weights
    assert report["mixer"] and any(k.startswith("guide_mixer.") for k in fitted)
    assert set(fitted) == set(guide_parameters(load_run(trained, guide_fit=True)[2]))
    assert load_run(trained)[2].guide_mixer is None  # the model and the training guide: none
    assert any(not torch.equal(fitted[k], before["ema"][k]) for k in fitted)  # it moved
    # prior rollouts never read the guide's parameters: identical with or without the fit
    answers = []
    for guide_fit in (False, True):
        task, cfg, net = load_run(trained, guide_fit=guide_fit)
        model, _ = programs(net, cfg)
        pyro.set_rng_seed(5)
        traj = prior_rollouts(model, task.build(seed=0).test.inputs[:6], 4)
        answers.append(traj.answers)
    assert np.array_equal(answers[0], answers[1])


def test_the_khat_share_is_split_by_how_many_completions_an_input_has():
    khat = [0.1, 0.9, 0.2, 0.8, 0.75, float("nan"), 0.3]
    answers = [1, 18, 2, 3, 16, 1, 9]
    assert khat_by_completions(khat, answers) == [("1", 1, 1), ("2-3", 1, 2), ("8-15", 1, 1),
                                                  ("16-31", 0, 2)]
    assert khat_by_completions([float("nan")], [1]) == []


def test_loglik_reports_khat_smc_and_the_guide_it_used(trained, capsys):
    refit_guide(trained, steps=5, batch_size=16)
    assert main(["loglik", str(trained), "--particles", "60", "--limit", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["guide"].startswith("fitted for likelihood")
    assert len(r["khat"]) == 3 and r["khat_median"] is not None
    assert set(r["khat_unreliable"]) == {i for i, k in enumerate(r["khat"]) if k > KHAT_RELIABLE}
    per = r["iwae_per_example"]  # each example's IWAE, and where the flagged ones sit among them
    assert len(per) == 3 and np.mean(per) == pytest.approx(r["iwae_nats"], abs=1e-5)
    flagged = r["khat_unreliable"]
    others = [v for i, v in enumerate(per) if i not in flagged]
    assert r["khat_flagged_iwae_nats"] == (pytest.approx(np.mean([per[i] for i in flagged]))
                                           if flagged else None)
    assert r["khat_others_iwae_nats"] == (pytest.approx(np.mean(others)) if others else None)
    shown = dict(r, khat_unreliable=[1], khat_flagged_iwae_nats=per[1],
                 khat_others_iwae_nats=(per[0] + per[2]) / 2)  # as if example 1 were flagged
    shown["completions_per_example"] = [1, 18, 2]
    shown["khat_by_completions"] = [{"completions": c, "reliable": ok, "examples": n} for c, ok, n
                                    in khat_by_completions([0.1, 0.9, 0.2], [1, 18, 2])]
    text = format_loglik(shown)
    assert f"flagged examples (their IWAE, their inputs' number of valid completions): 1 " \
           f"({per[1]:.2f}, 18); IWAE {per[1]:.3f} nats on average against " \
           f"{(per[0] + per[2]) / 2:.3f} on the others" in text
    assert "k-hat <= 0.7 by the input's number of valid completions: 1: 1 of 1, 2-3: 1 of 1, " \
           "16-31: 0 of 1" in text
    assert r["iwae_above_zero"] == [i for i, v in enumerate(per) if v > 0]
    answers = r["completions_per_example"]  # the tiny task's inputs each have their count
    assert len(answers) == 3 and min(answers) >= 1
    assert sum(g["examples"] for g in r["khat_by_completions"]) == 3
    shown["iwae_above_zero"], shown["iwae_per_example"] = [0, 2], [0.25, per[1], 1.5]
    assert "IWAE above 0 nats on 2 of 3 (examples 0, 2; the largest +1.500): log p(y | x) <= 0 " \
           "for discrete tokens, so each of these estimates is too high by at least its own " \
           "value" in format_loglik(shown)
    assert math.isfinite(r["smc_nats"]) and r["smc_nats"] <= 0
    # the split of the log-weight variance names every site of the program, largest first
    shares = r["log_w_variance_by_site"]
    sites = {f"eps_{n}_{t}" for n in range(2) for t in range(2)} | {"y"}  # tiny: N_sup 2, T 2
    assert set(shares) == sites and r["log_w_variance"] > 0
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert main(["loglik", str(trained), "--particles", "8", "--limit", "2", "--guide", "trained",
                 "--no-smc"]) == 0
    text = capsys.readouterr().out
    assert "guide: the training guide" in text and "needs K >= 50" in text and "SMC" not in text
    assert "log-weight variance" in text and "(all 5 in the JSON)" in text


def test_the_log_weight_variance_is_split_onto_the_sites_where_q_is_not_p():
    """A proposal that is the prior at transitions 0 and 2 and off at transition 1: those two
    sites' log p/q are exactly zero and take none of the variance; transition 1 and the
    observation take all of it, and the per-site pieces add up to log w. With a vague
    observation (noise 30) almost all of it is transition 1's."""
    lg = LinearGaussian(steps=3, obs_noise=30.0)

    def guide(x, y, num_samples=None):
        with plates(x.shape[0], num_samples):
            h = x.expand(num_samples, *x.shape)
            for t in range(3):
                u = h @ lg.A.T
                loc, scale = (0.8, 0.4 * lg.s) if t == 1 else (0.0, lg.s)
                h = u + pyro.sample(f"eps_0_{t}", dist.Normal(torch.full_like(u, loc), scale).to_event(1))

    x, y = lg_batch()
    pyro.set_rng_seed(0)
    est = estimate(lg.model, guide, x, y, 200, chunk=64)
    assert torch.allclose(sum(est.site_log_w.values()), est.log_w, atol=1e-4)
    variance, shares = est.variance_by_site()
    assert variance == pytest.approx(float(est.log_w.double().var(0, unbiased=False).mean()), rel=1e-4)
    assert shares["eps_0_0"] == 0.0 and shares["eps_0_2"] == 0.0
    assert shares["eps_0_1"] + shares["y"] == pytest.approx(1.0, abs=1e-9)
    assert shares["eps_0_1"] > 0.95  # the mismatched transition carries it


def test_fit_guide_refuses_the_deterministic_baseline(tmp_path, capsys):
    out = tmp_path / "det"
    Trainer(tiny_config(extra=["steps=2", "critic_fit_steps=0"], deterministic=True), out,
            progress=False).fit()
    assert main(["fit-guide", str(out)]) == 2
    assert "no latent" in capsys.readouterr().err


def test_the_guide_mixer_starts_as_the_training_guide():
    """Its output layer is zero: q's parameters are unchanged until the fit moves it."""
    task, cfg, net, model, guide = tiny_programs()
    u = torch.randn(3, net.n_prefix + net.seq_len, net.d_model)
    y = torch.as_tensor(task.build(seed=0).train.pairs()[1][:3])
    before = net.posterior(u, y)
    net.add_guide_mixer()
    after = net.posterior(u, y)
    assert all(torch.allclose(a, b) for a, b in zip(before, after))
    assert set(guide_parameters(net)) > {k for k, _ in net.named_parameters()
                                         if k.startswith(("posterior_head.", "target_embed."))}


def test_the_rws_fit_finds_the_inclusive_kl_optimum_of_a_linear_gaussian_guide():
    """One transition of the linear-Gaussian model, whose posterior over eps is Gaussian,
    N(m_b, S), and the guide N(mu_b, g^2 I) with only g free. KL(p || q) is smallest at
    g^2 = mean_b (tr S + |m_b - mu_b|^2) / d, which covers the posterior; KL(q || p), the ELBO's
    direction, at g^2 = d / tr(S^-1), narrower whenever S is not isotropic. Adam on
    ``wake_phi_loss`` must land on the first (the mean of its last iterates, which jitter with
    the Monte Carlo gradient), from either side."""
    lg = LinearGaussian(steps=1, guide_gain=0.3, guide_scale=0.2)
    x, y = lg_batch(3, b=6)
    d = lg.A.shape[0]
    S = torch.linalg.inv(torch.eye(d) / lg.s ** 2 + lg.C.T @ lg.C / lg.r ** 2)
    u = x @ lg.A.T
    m = (y - u @ lg.C.T) @ lg.C @ S / lg.r ** 2  # S symmetric: the posterior means, row-wise
    mu = (y - u @ lg.C.T) @ lg.G.T
    inclusive = math.sqrt((torch.trace(S) + ((m - mu) ** 2).sum(1).mean()) / d)
    exclusive = math.sqrt(d / torch.trace(torch.linalg.inv(S)))
    assert inclusive > exclusive + 0.05  # the two optima differ: the test can tell them apart
    for start in (0.2, 1.5):
        log_g = torch.tensor(math.log(start), requires_grad=True)
        opt = torch.optim.Adam([log_g], lr=0.03)
        pyro.set_rng_seed(0)
        seen = []
        for _ in range(500):
            lg.g = log_g.exp()
            loss = wake_phi_loss(lg.model, lg.guide, x, y, 64) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append(float(log_g.detach().exp()))
        fitted = float(np.mean(seen[-200:]))
        assert abs(fitted - inclusive) < 0.03 * inclusive, (start, fitted, inclusive, exclusive)


def test_the_rws_fit_keeps_the_best_heldout_iwae_and_says_so(trained, capsys):
    report = refit_guide(trained, steps=12, batch_size=4, lr=3e-3, objective="rws", particles=8)
    assert report["objective"] == "rws" and report["bound"] == "IWAE_8"
    assert report["heldout_after"] >= report["heldout_before"]
    assert "rws with 8 particles" in format_guide_report(report)
    assert main(["loglik", str(trained), "--particles", "8", "--limit", "2", "--no-smc",
                 "--json"]) == 0
    assert "rws with 8 particles, held-out IWAE_8" in json.loads(capsys.readouterr().out)["guide"]
    assert main(["fit-guide", str(trained), "--objective", "rws", "--particles", "1"]) == 2
    assert main(["fit-guide", str(trained), "--objective", "kl"]) == 2
    err = capsys.readouterr().err
    assert "--particles" in err and "invalid choice" in err and "Traceback" not in err


class ScaledGuide(torch.nn.Module):
    """The linear-Gaussian guide N(gain C^T (y - C u_t), g^2 I) with its scale g = exp(log_g)
    and gain as ``nn.Module`` parameters, what :func:`iwae_dreg_loss` holds constant through
    :func:`torch.func.functional_call`."""

    def __init__(self, lg, g, gain):
        super().__init__()
        self.lg = lg
        self.log_g = torch.nn.Parameter(torch.tensor(math.log(g)))
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, x, y, **kwargs):
        self.lg.g, self.lg.G = self.log_g.exp(), self.gain * self.lg.C.T
        return self.lg.guide(x, y, **kwargs)


def test_the_dreg_gradient_is_unbiased_for_iwae_k():
    """The IWAE_K gradient in q's scale and gain, by DReG and by plain reparameterized autograd
    of IWAE_K: the same means (both are unbiased) over 30 independent batches. Three
    transitions, so a sample's path runs into later transitions' q (whose mean reads u_t), and
    a DReG that cut that path by detaching q's distributions wholesale is caught: it measured
    8 standard errors off on the gain here."""
    lg = LinearGaussian(steps=3, guide_scale=0.3, obs_noise=0.2)
    guide = ScaledGuide(lg, 0.3, 1.0)
    x, y = lg_batch(4, b=6)
    x, y = x.repeat(20, 1), y.repeat(20, 1)
    params = [guide.log_g, guide.gain]
    pyro.set_rng_seed(0)
    dreg, plain = [], []
    for _ in range(30):
        dreg.append([float(g) / len(x) for g in torch.autograd.grad(
            -iwae_dreg_loss(lg.model, guide, x, y, 8), params)])
        log_w, _, _ = weighted_traces(lg.model, guide, x, y, 8)
        plain.append([float(g) / len(x) for g in torch.autograd.grad(
            log_mean_exp(log_w).sum(), params)])
    dreg, plain = np.array(dreg), np.array(plain)
    se = np.sqrt(dreg.var(0, ddof=1) / len(dreg) + plain.var(0, ddof=1) / len(plain))
    assert (np.abs(plain.mean(0)) > 5 * se).all()  # off the optimum: gradients to get right
    assert (np.abs(dreg.mean(0) - plain.mean(0)) < 4 * se).all(), (dreg.mean(0), plain.mean(0), se)


def test_the_iwae_fit_widens_q_with_k_from_the_elbo_optimum():
    """Adam on :func:`iwae_dreg_loss` fits the linear-Gaussian guide's scale: at K = 1 (the
    ELBO, in its sticking-the-landing form) onto the exclusive-KL optimum d / tr(S^-1) of the
    rws test, and at K = 32 to a wider q, since IWAE_K rewards covering the posterior."""
    lg = LinearGaussian(steps=1, guide_gain=0.3, guide_scale=0.2)
    x, y = lg_batch(3, b=6)
    d = lg.A.shape[0]
    S = torch.linalg.inv(torch.eye(d) / lg.s ** 2 + lg.C.T @ lg.C / lg.r ** 2)
    exclusive = math.sqrt(d / torch.trace(torch.linalg.inv(S)))
    fitted = {}
    for k, reps in ((1, 64), (32, 2)):
        guide = ScaledGuide(lg, 0.5, 0.3)
        guide.gain.requires_grad_(False)  # the scale alone, as in the rws test
        opt = torch.optim.Adam(guide.parameters(), lr=0.03)
        pyro.set_rng_seed(0)
        seen = []
        xs, ys = x.repeat(reps, 1), y.repeat(reps, 1)
        for _ in range(400):
            loss = iwae_dreg_loss(lg.model, guide, xs, ys, k) / len(xs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append(float(guide.log_g.detach().exp()))
        fitted[k] = float(np.mean(seen[-150:]))
    assert abs(fitted[1] - exclusive) < 0.03 * exclusive, (fitted, exclusive)
    assert fitted[32] > 1.1 * fitted[1], fitted


def test_the_iwae_fit_keeps_the_best_heldout_iwae_and_says_so(trained, capsys):
    report = refit_guide(trained, steps=12, batch_size=4, lr=3e-3, objective="iwae", particles=4)
    assert report["objective"] == "iwae" and report["bound"] == "IWAE_4"
    assert report["heldout_after"] >= report["heldout_before"]
    assert "iwae with 4 particles" in format_guide_report(report)
    assert main(["fit-guide", str(trained), "--objective", "iwae", "--particles", "1"]) == 2
    err = capsys.readouterr().err
    assert "--particles" in err and "Traceback" not in err


def test_the_average_ramps_up_to_its_decay():
    assert warmed_decay(0.995, 1) == pytest.approx(1 / 10)
    assert warmed_decay(0.995, 81) == pytest.approx(0.9)
    assert warmed_decay(0.995, 10_000) == 0.995 and warmed_decay(0.0, 5) == 0.0


def test_the_guide_fit_keeps_the_running_average_of_its_parameters(trained):
    """One Adam step of about lr per coordinate, judged at the average (decay 1/10 at step 1):
    what is kept moved 9/10 of the step the optimizer took, not all of it."""
    task, cfg, net = load_run(trained)
    model, guide = programs(net, cfg)
    before = {k: p.detach().clone() for k, p in guide_parameters(net).items()}
    x, y = task.build(seed=0).train.pairs()
    pyro.set_rng_seed(0)  # the step's noise (passes at seeds 0 to 3 alike)
    report = fit_guide(model, guide, x, y, steps=1, eval_every=1, lr=2e-3, average=0.5,
                       heldout_particles=2)
    assert report["heldout_after"] > report["heldout_before"]  # the average was kept
    moved = torch.cat([(p.detach() - before[k]).abs().flatten()
                       for k, p in guide_parameters(net).items()])
    moved = moved[moved > 1e-6]
    # Adam's first step is lr * g / (|g| + eps): about lr wherever the gradient is not tiny;
    # the average moves (1 - 1/10) of it
    step = 2e-3 * 9 / 10
    assert len(moved) and float(moved.max()) <= step * 1.0001 and float(moved.median()) > step * 0.98
    assert report["average"] == 0.5 and report["heldout_particles"] == 2
    with pytest.raises(UserError):
        fit_guide(model, guide, x, y, steps=1, average=1.0)


# -- the defensive mixture: q = (1 - a) q_fit + a q_def ------------------------------------------

def test_each_particle_of_the_mixture_is_weighed_against_both_guides():
    """Per particle, against Pyro's own poutine.trace/replay: a particle drawn from either guide
    weighs p(y, eps | x) / ((1 - a) q_0(eps) + a q_1(eps)), and its site split adds up to it."""
    from pyro import poutine

    from gram_pyro.likelihood import mixture_weights

    narrow = LinearGaussian(guide_gain=0.5, guide_scale=0.3)
    broad = LinearGaussian(guide_gain=0.2, guide_scale=1.1)
    guides, a = (narrow.guide, broad.guide), 0.2
    x, y = lg_batch(4, b=5)
    for component in (0, 1):
        pyro.set_rng_seed(7)
        log_w, elbo, sites = mixture_weights(narrow.model, guides, a, component, x, y, 6)
        pyro.set_rng_seed(7)  # the same draw again, scored by hand
        drawn = poutine.trace(guides[component]).get_trace(x, y, num_samples=6)

        def log_density(program, *args):
            tr = poutine.trace(poutine.replay(program, trace=drawn)).get_trace(*args, num_samples=6)
            tr.compute_log_prob()
            return sum(s["log_prob"] for s in tr.nodes.values() if s["type"] == "sample")

        log_p = log_density(narrow.model, x, y)
        log_q = [log_density(g, x, y) for g in guides]
        expected = log_p - torch.logaddexp(math.log(1 - a) + log_q[0], math.log(a) + log_q[1])
        assert torch.allclose(log_w, expected, atol=1e-4), component
        assert torch.equal(elbo, log_w)
        assert torch.allclose(sum(sites.values()), log_w, atol=1e-4) and "mixture" in sites


def test_the_defensive_mixture_cuts_the_tail_and_keeps_the_estimate_exact():
    """One transition, whose posterior N(m, S) is known. A guide much narrower than it, its mean
    off, has heavy-tailed weights (k-hat > 0.7 on most examples); mixing in, at a fifth, a
    covering guide (the posterior mean, the prior's scale) brings every example's k-hat under
    0.7, and IWAE still recovers the Kalman likelihood."""
    from types import SimpleNamespace

    lg = LinearGaussian(steps=1, guide_gain=0.5, guide_scale=0.2)
    S = torch.linalg.inv(torch.eye(3) / lg.s ** 2 + lg.C.T @ lg.C / lg.r ** 2)

    def covering(x, y, num_samples=None):
        with plates(x.shape[0], num_samples):
            u = x.expand(num_samples, *x.shape) @ lg.A.T
            m = (y - u @ lg.C.T) @ lg.C @ S / lg.r ** 2  # the posterior mean of eps
            h = u + pyro.sample("eps_0_0", dist.Normal(m, lg.s).to_event(1))
        return SimpleNamespace(h=h, l=None)

    x, y = lg_batch(5, b=6)
    exact = lg.exact_log_likelihood(x, y).numpy()
    pyro.set_rng_seed(0)
    alone = estimate(lg.model, lg.guide, x, y, 2000, chunk=500)
    pyro.set_rng_seed(0)
    mixed = estimate(lg.model, lg.guide, x, y, 2000, chunk=500, defensive=(covering, 0.2))
    assert (alone.khat > KHAT_RELIABLE).mean() >= 0.5, alone.khat  # the tail is there to cut
    assert (mixed.khat <= KHAT_RELIABLE).all(), mixed.khat
    assert np.all(np.abs(mixed.iwae - exact) <= 4 * mixed.se + 0.02), (mixed.iwae, exact, mixed.se)
    assert torch.allclose(sum(mixed.site_log_w.values()), mixed.log_w, atol=1e-4)


def test_fit_guide_defensive_stores_a_second_guide_and_loglik_mixes_it_in(trained, capsys):
    refit_guide(trained, steps=5, batch_size=16)
    before = load_checkpoint(trained)
    assert main(["fit-guide", str(trained), "--objective", "iwae", "--particles", "4",
                 "--batch-size", "4", "--steps", "6", "--defensive", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["defensive"] and report["bound"] == "IWAE_4"
    assert "defensive guide fitted" in format_guide_report(report)
    after = load_checkpoint(trained)
    for key in ("model", "ema"):
        assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
    main_fit, shield = after["guide_fit"]["weights"], after["guide_defensive"]["weights"]
    assert all(torch.equal(before["guide_fit"]["weights"][k], main_fit[k]) for k in main_fit)
    assert set(shield) == set(main_fit) and any(not torch.equal(shield[k], main_fit[k]) for k in shield)
    assert json.loads((trained / "guide_defensive.json").read_text())["defensive"] is True
    assert main(["loglik", str(trained), "--particles", "60", "--limit", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)  # the default weight, 0.1
    assert r["defensive_weight"] == 0.1 and "with weight 0.1" in r["defensive_guide"]
    assert "mixture" in r["log_w_variance_by_site"] and math.isfinite(r["smc_nats"])
    assert main(["loglik", str(trained), "--particles", "8", "--limit", "2", "--no-smc",
                 "--defensive-weight", "0.5"]) == 0
    assert "defensive guide: mixed in with weight 0.5" in capsys.readouterr().out
    assert main(["loglik", str(trained), "--particles", "8", "--limit", "2", "--no-smc",
                 "--defensive-weight", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["defensive_guide"] is None and "mixture" not in r["log_w_variance_by_site"]
    # prior rollouts never read either guide
    task, cfg, net = load_run(trained)
    model, _ = programs(net, cfg)
    pyro.set_rng_seed(5)
    plain = prior_rollouts(model, task.build(seed=0).test.inputs[:6], 4).answers
    task, cfg, net = load_run(trained, guide_fit=True, guide_entry="guide_defensive")
    model, _ = programs(net, cfg)
    pyro.set_rng_seed(5)
    assert np.array_equal(plain, prior_rollouts(model, task.build(seed=0).test.inputs[:6], 4).answers)


def test_a_second_defensive_fit_goes_on_from_the_first_and_counts_its_steps(trained, capsys):
    """The defensive fit, like the plain one, starts from what it stored last: its held-out
    bound starts where the last fit's ended (the same held-out pairs and particles), the fitted
    guide is left alone, and the steps are counted over both calls."""
    fitted_report = refit_guide(trained, steps=3, batch_size=8)
    first = refit_guide(trained, steps=4, batch_size=4, objective="rws", particles=4,
                        defensive=True)
    fitted = load_checkpoint(trained)["guide_fit"]["weights"]
    assert main(["fit-guide", str(trained), "--objective", "rws", "--particles", "4",
                 "--batch-size", "4", "--steps", "2", "--defensive", "--quiet", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["heldout_before"] == pytest.approx(first["heldout_after"], abs=1e-5)
    assert (second["steps"], second["steps_in_all"]) == (2, first["steps_in_all"] + 2)
    assert "in all, going on from the last fit" in format_guide_report(second)
    after = load_checkpoint(trained)["guide_fit"]["weights"]
    assert all(torch.equal(fitted[k], after[k]) for k in fitted)
    r = run_loglik(trained, particles=4, limit=1, smc=False, defensive_weight=0.5)
    assert f"--defensive`, {second['steps_in_all']} steps" in r["defensive_guide"]
    assert f"nats over the last {second['steps']})" in r["defensive_guide"]
    plain = refit_guide(trained, steps=2, batch_size=8)  # the plain fit counts its own calls
    assert plain["steps_in_all"] == fitted_report["steps_in_all"] + 2
    assert json.loads((trained / "guide.json").read_text())["steps_in_all"] == plain["steps_in_all"]


def test_a_defensive_fit_needs_a_fitted_guide_and_a_weight_in_the_unit_interval(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_config(extra=["steps=2", "critic_fit_steps=0"]), out, progress=False).fit()
    assert main(["fit-guide", str(out), "--objective", "iwae", "--particles", "4",
                 "--defensive"]) == 2
    assert "no fitted guide" in capsys.readouterr().err
    assert not (out / "guide_defensive.json").exists()
    for bad in ("1.5", "-0.5", "nan"):
        assert main(["loglik", str(out), "--defensive-weight", bad]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "at least 0" in err, (bad, err)
    with pytest.raises(UserError):
        run_loglik(out, particles=4, limit=1, defensive_weight=2.0)
