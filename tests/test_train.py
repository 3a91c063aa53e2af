"""Training: the loss goes down, seeded runs reproduce, resume continues the same run."""

import json

import numpy as np
import pytest
import torch

from gram_pyro.checkpoint import load_checkpoint, load_run
from gram_pyro.errors import UserError
from gram_pyro.schedule import Schedule
from gram_pyro.train import Trainer
from tests.helpers import tiny_config


def losses(trainer, batches):
    out = []
    for _ in range(batches):
        out += [log["loss"] for log in trainer.train_batch()]
    return out


def test_a_tiny_run_lowers_the_loss(tmp_path):
    cfg = tiny_config(extra=["lr=3e-3", "pyro_validation=false"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    curve = losses(trainer, 30)
    assert np.mean(curve[-10:]) < 0.7 * np.mean(curve[:10])


def test_seeded_runs_reproduce_their_first_20_losses_with_validation_on(tmp_path):
    cfg = tiny_config()
    assert cfg.pyro_validation
    a = losses(Trainer(cfg, tmp_path / "a", progress=False), 10)
    b = losses(Trainer(cfg, tmp_path / "b", progress=False), 10)
    assert len(a) == 20 and a == b
    c = losses(Trainer(tiny_config(seed=1), tmp_path / "c", progress=False), 10)
    assert a != c


def test_resume_continues_the_same_run_exactly(tmp_path):
    cfg = tiny_config(extra=["steps=8", "eval_interval=4"])
    Trainer(cfg, tmp_path / "whole", progress=False).fit()
    interrupted = Trainer(cfg, tmp_path / "split", progress=False)
    interrupted.train_batch()
    interrupted.train_batch()
    interrupted.save()  # as the periodic checkpoint would, then the process dies
    del interrupted
    resumed = Trainer(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 4
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 8


def test_existing_run_needs_resume(tmp_path):
    cfg = tiny_config(extra=["steps=2"])
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    with pytest.raises(UserError, match="--resume"):
        Trainer(cfg, tmp_path / "r", progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        Trainer(cfg, tmp_path / "empty", resume=True, progress=False)


def test_checkpoint_holds_everything_and_loads_safely(tmp_path):
    cfg = tiny_config(extra=["steps=2"])
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    ckpt = load_checkpoint(tmp_path / "r")
    for key in ("model", "ema", "optimizer", "torch_rng", "numpy_rng", "python_rng", "config", "step"):
        assert key in ckpt
    task, cfg2, net = load_run(tmp_path / "r")
    assert cfg2 == cfg and not net.training
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "r")


def test_a_run_trained_before_its_task_had_links_loads_and_resumes(tmp_path, capsys):
    """N-Queens gained structure links after runs were saved with ``links`` on and no link
    weights: such a run comes back with links off, as it was trained, to load and to resume."""
    run = tmp_path / "r"
    Trainer(tiny_config(extra=["steps=2", "links=false"]), run, progress=False).fit()
    ckpt = load_checkpoint(run)
    stored = json.loads(ckpt["config"])
    ckpt["config"] = json.dumps(stored | {"links": True})  # what such a run holds
    torch.save(ckpt, run / "checkpoint.pt")
    (run / "config.json").write_text(ckpt["config"])
    task, cfg, net = load_run(run)
    assert "differs" not in capsys.readouterr().err  # the record is not taken for an edit
    assert task.links() is not None and not cfg.links and net.encoder.link_embed is None
    resumed = Trainer(None, run, resume=True, changes={"steps": 4}, progress=False)
    assert not resumed.cfg.links
    assert resumed.fit()["step"] == 4
    # a run that has link weights keeps its links
    Trainer(tiny_config(extra=["steps=1"]), tmp_path / "new", progress=False).fit()
    assert load_run(tmp_path / "new")[1].links


def poison(trainer, calls):
    """Make the ELBO non-finite on the given call numbers (counting ELBO evaluations)."""
    original, count = trainer.elbo.particle_terms, {"n": 0}

    def poisoned(*args, **kwargs):
        for terms in original(*args, **kwargs):
            if count["n"] in calls:
                terms["recon"] = terms["recon"] * float("nan")
                terms["surrogate"] = terms["surrogate"] * float("nan")
            count["n"] += 1
            yield terms

    trainer.elbo.particle_terms = poisoned


def test_nan_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(extra=["steps=8"]), tmp_path / "r", progress=False)
    trainer.train_batch()
    trainer.save()
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    poison(trainer, {0})
    with pytest.raises(UserError, match=r"loss became nan \(reconstruction term not finite\) at step 2"):
        trainer.fit()
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good


def test_nan_skip_skips_the_batch_and_counts_it(tmp_path):
    trainer = Trainer(tiny_config(extra=["steps=6", "on_nan=skip", "eval_interval=100"]),
                      tmp_path / "r", progress=False)
    poison(trainer, {1})
    trainer.fit()
    # whole batches of N_sup=2 steps: the skipped batch advanced 1 step, so the run ends at 7
    assert trainer.step == 7 and trainer.nan_skips == 1
    log = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["nan_skips_total"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())


def test_ema_is_torch_averaged_model_with_the_warmed_up_decay(tmp_path):
    """The EMA is torch's AveragedModel and reproduces the rule it replaced: it starts at the
    initial weights and its k-th update lerps with weight 1 - min(decay, (1 + k) / (10 + k))."""
    from torch.optim.swa_utils import AveragedModel

    trainer = Trainer(tiny_config(extra=["ema=0.5"]), tmp_path / "r", progress=False)
    assert isinstance(trainer.ema, AveragedModel)
    ema = {k: p.detach().clone() for k, p in trainer.net.named_parameters()}
    for k in range(4):
        with torch.no_grad():
            for p in trainer.net.parameters():
                p.add_(torch.randn_like(p))
        trainer.ema.update_parameters(trainer.net)
        d = min(0.5, (1 + k) / (10 + k))
        for name, p in trainer.net.named_parameters():
            ema[name] = d * ema[name] + (1 - d) * p.detach()
    for name, p in trainer.ema_net.named_parameters():
        assert torch.allclose(p, ema[name], atol=1e-6), name
        assert not p.requires_grad
    assert int(trainer.ema.n_averaged) - 1 == 4


def test_snapshots_are_loadable_runs_at_their_training_minutes(tmp_path):
    cfg = tiny_config(extra=["steps=1000", "max_minutes=0.05", "snapshot_minutes=0.01,0.02",
                             "critic_fit_steps=0"])
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    trainer.fit()
    steps = []
    for m in ("0.01", "0.02"):
        ckpt = load_checkpoint(tmp_path / "r" / "snapshots" / f"{m}min")
        assert ckpt["elapsed"] >= float(m) * 60
        steps.append(ckpt["step"])
        load_run(tmp_path / "r" / "snapshots" / f"{m}min")
    assert 0 < steps[0] <= steps[1] <= trainer.step


def test_without_the_joint_critic_training_is_the_elbo_alone(tmp_path):
    cfg = tiny_config(extra=["joint_critic=false", "steps=4", "eval_interval=2"])
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    logs = trainer.train_batch()
    assert logs and all("act" not in log and "prior_batch_acc" not in log for log in logs)
    assert trainer.net.halt_head.weight.grad is None  # the critic got no loss
    trainer.fit()
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_prior_acc" in record and "act" not in record
    assert (tmp_path / "r" / "critic.json").exists()  # the final fit still fits the critic


def test_kl_annealing_ramps_the_elbo_beta_up_to_the_configured_value(tmp_path):
    cfg = tiny_config(extra=["beta=2", "beta_anneal_steps=12", "pyro_validation=false"])
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    seen = []
    while trainer.step < 16:
        trainer.train_batch()
        seen.append(trainer.elbo.beta)  # the weight of the batch's last supervision step
    ramp = [b for b in seen if b < 2.0]
    assert len(ramp) >= 2 and ramp == sorted(set(ramp)) and 0 < ramp[0] and seen[-1] == 2.0
    assert Trainer(tiny_config(extra=["beta=2"]), tmp_path / "s", progress=False).schedule.beta(0) == 2.0
    # a warm-down: from beta_start above beta, down to beta, then beta
    down = Schedule(tiny_config(extra=["beta=2", "beta_start=8", "beta_anneal_steps=4"]))
    assert [down.beta(s) for s in range(6)] == [6.5, 5.0, 3.5, 2.0, 2.0, 2.0]
    with pytest.raises(UserError, match="beta"):
        tiny_config(extra=["beta=0"])
