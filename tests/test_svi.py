"""Stock Pyro: ``pyro.infer.SVI`` trains GRAM's programs, the trainer computes the same step, the
README's SVI snippet runs, and the DMM-style example script trains."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI

from gram_pyro.build import programs
from gram_pyro.elbo import GramELBO
from gram_pyro.train import Trainer
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def test_one_trainer_step_is_one_stock_svi_step(tmp_path):
    """The trainer's supervision step and ``SVI.step`` with the same arguments compute the same
    ELBO and the same gradients (the trainer's divided by the batch size: a mean over examples);
    the critic's losses are off here, as they are not part of the ELBO."""
    cfg = tiny_config(extra=["act_weight=0", "lprm_weight=0", "beta=0.3"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    x, y = trainer.sample_batch()
    batch = x.shape[0]
    state = None
    for n in range(cfg.n_supervision):  # every step, each from the carried posterior state
        net = copy.deepcopy(trainer.net)  # the SVI path's own copy of the same weights
        pyro.set_rng_seed(5 + n)
        loss, out = trainer.step_loss(x, y, n, state)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        ours = {k: p.grad for k, p in trainer.net.named_parameters() if p.grad is not None}

        pyro.clear_param_store()
        model, guide = programs(net, cfg)
        elbo = GramELBO(beta=cfg.beta, kl_balance=cfg.kl_balance)
        svi = SVI(model, guide, pyro.optim.AdamW({"lr": 1e-2, "weight_decay": 0.0}), loss=elbo)
        kwargs = dict(steps=[n], state=state, rules=trainer.rules)
        pyro.set_rng_seed(5 + n)
        stock_loss = elbo.loss_and_grads(model, guide, x, y, **kwargs)  # what SVI.step runs
        stock = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
        assert np.isclose(stock_loss, float(loss.detach()) * batch, rtol=1e-5)
        assert set(stock) <= set(ours) and len(stock) > 10
        for k in ours:  # the critic's heads are in the trainer's graph with weight 0
            expected = stock[k] if k in stock else torch.zeros_like(ours[k])
            assert torch.allclose(expected, ours[k] * batch, rtol=1e-4, atol=1e-6), k

        before = {k: p.detach().clone() for k, p in net.named_parameters()}
        pyro.set_rng_seed(5 + n)
        assert np.isclose(svi.step(x, y, **kwargs), stock_loss, rtol=1e-5)
        moved = [k for k, p in net.named_parameters() if not torch.equal(p, before[k])]
        # SVI's optimizer steps exactly the net's parameters that have a gradient (at the start
        # the prior and posterior means are both zero, so the mean heads' gradients are zero)
        assert set(moved) == {k for k, g in stock.items() if g.abs().sum() > 0}
        state = out["post_state"]


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_stock_svi_snippet_lowers_the_loss():
    namespace = {}
    exec(compile(readme_block("## Stock Pyro SVI"), "README.md", "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) >= 100
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])


def test_svi_example_script_trains(tmp_path):
    """Like Pyro's own test suite runs its examples: the script with tiny arguments."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "svi.py"), "--task", "nqueens-5",
                        "--num-epochs", "3", "--d-model", "32", "--eval-samples", "4"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr  # logging writes to stderr, as in Pyro's examples
    epochs = re.findall(r"epoch +(\d+) +loss ([\d.]+) per example", log)
    assert [int(e) for e, _ in epochs] == [1, 2, 3]
    assert float(epochs[-1][1]) < float(epochs[0][1])
    assert re.search(r"prior-rollout accuracy on \d+ held-out inputs: [\d.]+%", log), log
