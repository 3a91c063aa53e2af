"""The autoregressive baseline (``--set model=ar``): its mask, its Pyro program, its maximum-
likelihood loss, and the same train / evaluate / generate / loglik path as GRAM's runs."""

import json
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import prune_subsample_sites

from gram_pyro.build import build_net, programs
from gram_pyro.config import make_config
from gram_pyro.errors import UserError
from gram_pyro.evaluate import evaluate_run, format_report
from gram_pyro.inference import prior_rollouts
from gram_pyro.models.ar import prefix_causal_mask
from gram_pyro.supervision import LikelihoodStep
from gram_pyro.tasks import get_task
from gram_pyro.train import Trainer

AR = ["model=ar", "d_model=32", "n_layers=1", "batch_size=16", "eval_interval=10",
      "eval_inputs=8", "eval_samples=2", "warmup_steps=2", "pyro_validation=true"]


def _ar(task_name="nqueens-5", extra=(), **fields):
    cfg = make_config("cpu", [*AR, *extra], task=task_name, **fields)
    task = get_task(cfg.task, unconditional=cfg.unconditional)
    torch.manual_seed(0)
    net = build_net(task, cfg)
    model, guide = programs(net, cfg)
    return task, cfg, net, model, guide


def test_the_mask_lets_an_answer_token_see_the_input_and_only_earlier_answers():
    m = prefix_causal_mask(3, 4)
    assert m[:3, :3].all() and not m[:3, 3:].any()  # the input sees itself, never the answer
    assert m[3:, :3].all()  # every answer position sees the whole input
    assert torch.equal(m[3:, 3:], torch.ones(4, 4).tril().bool())  # causal among answers


def test_the_logits_at_position_j_do_not_read_the_answer_from_j_on():
    task, cfg, net, model, _ = _ar()
    x = torch.as_tensor(task.build().test.inputs[:2])
    y = torch.randint(task.answer_vocab, (2, task.answer_len))
    j = task.answer_len // 2
    changed = y.clone()
    changed[:, j:] = (changed[:, j:] + 1) % task.answer_vocab
    with torch.no_grad():
        a, b = net(x, y), net(x, changed)
    assert torch.allclose(a[:, :j + 1], b[:, :j + 1], atol=1e-5)  # position j predicts y_j
    assert not torch.allclose(a[:, j + 1:], b[:, j + 1:], atol=1e-5)


def test_the_program_has_one_categorical_site_per_answer_token_under_the_plates():
    task, cfg, net, model, _ = _ar()
    x = torch.as_tensor(task.build().test.inputs[:3])
    pyro.set_rng_seed(0)
    trace = prune_subsample_sites(poutine.trace(model).get_trace(x, num_samples=5))
    sites = [k for k, v in trace.nodes.items() if v["type"] == "sample" and not v["is_observed"]]
    assert sites == [f"y_{j}" for j in range(task.answer_len)]
    assert all(trace.nodes[s]["value"].shape == (5, 3) for s in sites)
    assert {f.name for f in trace.nodes["y_0"]["cond_indep_stack"]} == {"trajectories", "batch"}
    out = trace.nodes["_RETURN"]["value"]
    trace.compute_log_prob()
    total = sum(trace.nodes[s]["log_prob"] for s in sites)
    assert torch.allclose(out.log_prob, total, atol=1e-4)  # the sample's own log p(y | x)
    assert torch.equal(out.answer, torch.stack([trace.nodes[s]["value"] for s in sites], -1))


def test_incremental_decoding_gives_the_full_pass_logits_and_log_prob():
    task, cfg, net, model, _ = _ar(extra=["n_layers=2"])
    x = torch.as_tensor(task.build().test.inputs[:3])
    pyro.set_rng_seed(1)
    with torch.no_grad():
        out = model(x, num_samples=4)  # sampled through the KV cache
        full = net(x, out.answer)  # one teacher-forced pass over the drawn answer
        logits, caches = net.start(x, (4, 3))
        steps = [logits]
        for j in range(task.answer_len - 1):
            logits, caches = net.advance(out.answer[..., j], caches)
            steps.append(logits)
        teacher = torch.distributions.Categorical(logits=full).log_prob(out.answer).sum(-1)
    assert torch.allclose(torch.stack(steps, dim=-2), full, atol=1e-4)
    assert torch.allclose(out.log_prob, teacher, atol=1e-4)


def test_the_loss_is_maximum_likelihood_trace_elbo_with_the_empty_guide():
    task, cfg, net, model, guide = _ar()
    x, y = (torch.as_tensor(a[:4]) for a in task.build().train.pairs())
    loss, out = LikelihoodStep(model, task)(x, y)
    stock = Trace_ELBO().differentiable_loss(model, guide, x, y) / len(x)
    assert torch.allclose(loss, stock, atol=1e-5)
    assert torch.allclose(loss, -model(x, y).log_prob.mean(), atol=1e-5)
    loss.backward()
    assert net.head.weight.grad is not None and net.blocks[0].qkv.weight.grad.abs().sum() > 0
    assert out["post_state"] is None and 0.0 <= float(out["posterior_acc"]) <= 1.0


def test_samples_differ_and_the_temperature_sharpens_them():
    task, cfg, net, model, _ = _ar()
    x = task.build().test.inputs[:2]
    pyro.set_rng_seed(0)
    traj = prior_rollouts(model, x, 8, record=True)
    assert traj.answers.shape == (2, 8, task.answer_len) and (traj.steps == 1).all()
    assert len({a.tobytes() for a in traj.answers[0]}) > 1  # untrained: near-uniform tokens
    assert ((traj.values > 0) & (traj.values <= 1)).all()
    cold = prior_rollouts(model, x, 8, temperature=1e-4)
    assert all(len({a.tobytes() for a in cold.answers[i]}) == 1 for i in range(2))  # argmax


@pytest.mark.parametrize("switch", ["deterministic=true", "noise=zero_mean", "decode=sample",
                                    "z0=random", "levels=1", "n_supervision=4",
                                    "joint_critic=true", "critic_fit_steps=5", "block=mixer"])
def test_ar_refuses_what_it_does_not_have(switch):
    with pytest.raises(UserError, match="model=ar"):
        make_config("cpu", ["model=ar", switch])


def test_ar_defaults_and_the_paper_preset():
    cfg = make_config("cpu", ["model=ar"])
    assert (cfg.n_supervision, cfg.critic_fit_steps, cfg.block) == (1, 0, "attention")
    assert make_config("paper", ["model=ar"], task="nqueens-8").joint_critic is False


def test_an_ar_run_trains_evaluates_generates_and_gives_its_exact_likelihood(tmp_path):
    cfg = make_config("cpu", [*AR, "steps=30"], task="nqueens-5")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.elbo is None and trainer.rules is None  # maximum likelihood: no ELBO
    result = trainer.fit()
    assert result["step"] == 30  # one optimizer step per batch
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["recon"] > log[-1]["recon"]  # -log p(y | x) falls
    report, traj, part, task, _ = evaluate_run(tmp_path / "run", samples=4, act=True)
    assert report["model"] == "AR baseline" and report["act"] is False
    assert report["scorer"] == "p(y | x)" and "p(y | x) best-of-N" in format_report(report)
    assert traj.answers.shape == (len(part), 4, task.answer_len)
    from gram_pyro.likelihood import run_loglik

    r = run_loglik(tmp_path / "run", particles=3, limit=4)
    assert r["guide"].startswith("none") and "smc_nats" not in r
    ks = [row["iwae_nats"] for row in r["iwae_by_k"]]
    assert np.allclose(ks, r["elbo_nats"], atol=1e-4)  # no latent: every bound is log p(y | x)


def test_an_unconditional_ar_run_generates_boards(tmp_path):
    from gram_pyro.generate import generate

    cfg = make_config("cpu", [*AR, "steps=5"], task="sudoku-4", unconditional=True)
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    report, boards, valid, task = generate(tmp_path / "run", 16, max_steps=7, act=True)
    assert report["model"] == "AR baseline" and report["max_steps"] == 1
    assert boards.shape == (16, task.answer_len)


def test_the_cli_trains_ar_and_refuses_the_gram_only_commands(tmp_path):
    run = tmp_path / "run"
    def gram(*args):
        return subprocess.run([sys.executable, "-m", "gram_pyro.cli", *args], capture_output=True,
                              text=True, timeout=300)
    dry = gram("train", "--task", "nqueens-5", "--set", "model=ar", "--dry-run")
    assert dry.returncode == 0 and "AR baseline" in dry.stdout and "AR Transformer" in dry.stdout
    ok = gram("train", "--task", "nqueens-5", "--out", str(run), "--steps", "3", "--quiet",
              *[a for item in AR for a in ("--set", item)])
    assert ok.returncode == 0, ok.stderr
    for args in (["fit-critic", str(run)], ["fit-guide", str(run), "--steps", "2"],
                 ["evaluate", str(run), "--select", "smc", "--limit", "2"]):
        bad = gram(*args)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "AR baseline" in bad.stderr
