"""What does Pyro cost? One SVI training step (model + guide + GramELBO) against a fused,
pure-PyTorch implementation of the SAME loss on the same nets and batch.

    python benchmarks/pyro_overhead.py
    python benchmarks/pyro_overhead.py --quick

The fused reference is written once, here: it runs the recursion once, draws the noise from the
posterior with the same RNG calls as the guide, and adds the same KL-balanced terms. The script
first checks that both give the same loss value (same seed), then times forward + backward of
each, interleaved, and reports the median ratio. Goal: <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyro  # noqa: E402
import torch  # noqa: E402
import torch.distributions as td  # noqa: E402

from _report import result_line, write_section  # noqa: E402
from gram_pyro.build import build_net  # noqa: E402
from gram_pyro.config import make_config  # noqa: E402
from gram_pyro.elbo import GramELBO, balanced_kl  # noqa: E402
from gram_pyro.recursion import SharedRecursion, grad_enabled, transition_rules  # noqa: E402
from gram_pyro.tasks import get_task  # noqa: E402
from gram_pyro.build import programs  # noqa: E402


def fused_loss(net, cfg, x, y, rules):
    """The per-supervision-step objective of gram_pyro.elbo, written directly in torch."""
    e_x = net.encode(x)
    h, l = net.initial_state((x.shape[0],))
    kl = 0.0
    for rule in rules:
        with grad_enabled(rule.trunk_grad):
            l, u = net.propose(h, l, e_x, cfg.k_low)
        with grad_enabled(rule.head_grad or rule.trunk_grad):
            q = td.Independent(td.Normal(*net.posterior(u, y)), 2)
            eps = q.rsample()
            p = td.Independent(td.Normal(*net.prior(u)), 2)
            if rule.kl:
                kl = kl + balanced_kl(q, p, cfg.kl_balance)
        h = u + (eps if rule.trunk_grad else eps.detach())
    recon = td.Independent(td.Categorical(logits=net.decode(h)), 1).log_prob(y)
    return -(recon - cfg.beta * kl).sum()


def pyro_loss(model, guide, elbo, x, y, rules):
    return elbo.differentiable_loss(model, guide, x, y, steps=[0], shared=SharedRecursion(),
                                    rules=rules)


def naive_loss(model, guide, elbo, x, y, rules):
    """The model/guide split without sharing: the model recomputes the recursion on replay."""
    return elbo.differentiable_loss(model, guide, x, y, steps=[0], rules=rules)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    overrides = ["d_model=32", "n_layers=1"] if args.quick else []
    repeats = 5 if args.quick else args.repeats
    cfg = make_config("cpu", overrides, task="nqueens-8")
    pyro.enable_validation(False)
    task = get_task(cfg.task)
    torch.manual_seed(0)
    net = build_net(task, cfg)
    model, guide = programs(net, cfg)
    elbo = GramELBO(beta=cfg.beta, kl_balance=cfg.kl_balance)
    rules = transition_rules(cfg.objective, cfg.t_high)
    xs, ys = task.build(seed=0).train.pairs()
    x, y = torch.as_tensor(xs[: cfg.batch_size]), torch.as_tensor(ys[: cfg.batch_size])

    torch.manual_seed(1)
    a = pyro_loss(model, guide, elbo, x, y, rules)
    torch.manual_seed(1)
    b = fused_loss(net, cfg, x, y, rules)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-3), (float(a), float(b))
    print(f"same loss: pyro {float(a):.6f}  fused {float(b):.6f}")

    def step(fn):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fn().backward()
        return time.perf_counter() - t0

    runs = {"pyro": lambda: pyro_loss(model, guide, elbo, x, y, rules),
            "fused": lambda: fused_loss(net, cfg, x, y, rules),
            "naive": lambda: naive_loss(model, guide, elbo, x, y, rules)}
    for fn in runs.values():
        step(fn)  # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():  # interleaved, so drift hits all alike
            times[k].append(step(fn))
    ratios = [p_ / f for p_, f in zip(times["pyro"], times["fused"])]
    naive = [n / f for n, f in zip(times["naive"], times["fused"])]
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio, naive_ratio = statistics.median(ratios), statistics.median(naive)
    body = "\n".join([
        f"One training step (forward + backward) on nqueens-8, `cpu` preset size (D={cfg.d_model}, "
        f"batch {cfg.batch_size}, K={cfg.k_low}, T={cfg.t_high}, objective {cfg.objective}), "
        f"{repeats} interleaved repeats, Pyro validation off.", "",
        "| path | median step (ms) | ratio to fused |", "|---|---|---|",
        f"| fused pure PyTorch (reference) | {1e3 * med['fused']:.1f} | 1.00 |",
        f"| Pyro: model + guide + GramELBO, shared recursion | {1e3 * med['pyro']:.1f} | {ratio:.2f} |",
        f"| Pyro, naive split (model recomputes on replay) | {1e3 * med['naive']:.1f} | {naive_ratio:.2f} |",
        "", "Ratios are medians of per-repeat ratios; both paths computed the same loss value first."])
    print(body)
    write_section("pyro_overhead", "Pyro overhead per training step", body, quick=args.quick)
    print(result_line("pyro_over_fused", ratio, "<=1.10", ratio <= 1.10))


if __name__ == "__main__":
    main()
