"""Where the guide's KL sits, and where the prior's own mass for an answer lies (issue #20).

    python benchmarks/guide_geometry.py --run runs/sud4u --tag sudoku-4-unconditional
    python benchmarks/guide_geometry.py --quick        # trains a tiny run first

Two measurements on a trained run, for the question "why is the guide a loose proposal?":

1. **The guide's KL, transition by transition**, on ``--pairs`` test pairs: KL(q || p) per pair
   at every noise site, the reconstruction log p(y | h), and how few noise elements (token x
   dimension x transition) hold 50%, 90% and 99% of the KL. For the training guide and, when the
   run has one, the guide `gram fit-guide` fitted.
2. **The prior's own mass** for one answer: ``--draws`` prior trajectories of the first test
   input (the blank input of a p(x) run) give, for the answer they decode to most often, log P by
   rejection (the share of draws) and by importance sampling from the prior (an estimate of the
   same log p(y | x) the guide is a proposal for). The rejection hits are exact posterior samples;
   in the elements where the training guide puts most of its KL for that answer, the script
   compares the guide's mean, in prior standard deviations, with the hits' mean.

If the guide sits far out where the hits do not (a code in the prior's tail) the guide is a
proposal for the wrong region, whatever its fit.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import tiny_run  # noqa: E402

CHUNK = 1000  # prior trajectories per pass


def site_kls(model_trace, guide_trace) -> dict:
    """KL(q || p) of every noise site ``eps_*``, element by element: {name: [B, P+L, D]}."""
    from torch.distributions import kl_divergence

    return {name: kl_divergence(guide_trace.nodes[name]["fn"].base_dist, site["fn"].base_dist)
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and name.startswith("eps_")}


def kl_breakdown(model, guide, x, y) -> dict:
    """Per-site KL per pair, the reconstruction, and the element counts holding the KL."""
    import torch

    from gram_pyro.elbo import guided_traces
    from gram_pyro.recursion import SharedRecursion

    mt, gt = guided_traces(model, guide, x, y, shared=SharedRecursion())
    recon = mt.nodes["y"]["fn"].log_prob(mt.nodes["y"]["value"])
    kls = site_kls(mt, gt)
    sites = {name: float(k.sum((-1, -2)).mean()) for name, k in kls.items()}
    flat = torch.cat([k.reshape(k.shape[0], -1) for k in kls.values()], 1)  # [B, elements]
    share = flat.sort(1, descending=True).values.cumsum(1) / flat.sum(1, keepdim=True)
    held = {f"{int(100 * f)}%": float((share < f).sum(1).float().mean() + 1) for f in (0.5, 0.9, 0.99)}
    return {"recon": float(recon.mean()), "kl": float(flat.sum(1).mean()), "sites": sites,
            "elements": flat.shape[1], "held": held}


def prior_mass(model, guide, x, draws: int) -> dict:
    """Rejection from the prior for the answer drawn most often, against the guide's code."""
    import torch
    from pyro import poutine

    from gram_pyro.elbo import guided_traces
    from gram_pyro.recursion import SharedRecursion

    z, answers, noise_sites = [], [], None
    for done in range(0, draws, CHUNK):
        n = min(CHUNK, draws - done)
        tr = poutine.trace(model).get_trace(x, None, num_samples=n, shared=SharedRecursion())
        noise_sites = [k for k, s in tr.nodes.items() if s["type"] == "sample" and k.startswith("eps_")]
        # every noise element in prior standard deviations, [n, sites x tokens x dims]
        z.append(torch.cat([((tr.nodes[k]["value"] - tr.nodes[k]["fn"].base_dist.loc)
                             / tr.nodes[k]["fn"].base_dist.scale)[:, 0].reshape(n, -1)
                            for k in noise_sites], 1))
        answers.append(tr.nodes["_RETURN"]["value"].logits.argmax(-1)[:, 0])
    z, answers = torch.cat(z), torch.cat(answers)
    keys, counts = np.unique(answers.numpy(), axis=0, return_counts=True)
    target = torch.as_tensor(keys[counts.argmax()])
    hits = (answers == target).all(-1)
    y = target[None]
    # importance sampling from the prior: log mean p(y | h) over fresh draws
    lp = []
    for done in range(0, draws, CHUNK):
        n = min(CHUNK, draws - done)
        tr = poutine.trace(model).get_trace(x, y, num_samples=n, shared=SharedRecursion())
        lp.append(tr.nodes["y"]["fn"].log_prob(y)[:, 0].double())
    lp = torch.cat(lp)
    # the training guide's code for that answer, in the same units
    mt, gt = guided_traces(model, guide, x, y, shared=SharedRecursion())
    kls = site_kls(mt, gt)
    kl = torch.cat([kls[k].reshape(-1) for k in noise_sites])
    code = torch.cat([((gt.nodes[k]["fn"].base_dist.loc - mt.nodes[k]["fn"].base_dist.loc)
                       / mt.nodes[k]["fn"].base_dist.scale).reshape(-1) for k in noise_sites])
    top = kl.argsort(descending=True)[:32]
    hit_mean = z[hits][:, top].mean(0) if int(hits.sum()) else torch.full((len(top),), float("nan"))
    same_side = float((torch.sign(hit_mean) == torch.sign(code[top])).float().mean())
    return {"draws": draws, "distinct": len(keys), "hits": int(hits.sum()),
            "log_p_rejection": math.log(float(hits.float().mean())),
            "log_p_prior_is": float(torch.logsumexp(lp, 0) - math.log(len(lp))),
            "guide_kl": float(kl.sum()), "top_kl": float(kl[top].sum()),
            "guide_code_sd": float(code[top].abs().mean()), "hits_mean_sd": float(hit_mean.abs().mean()),
            "same_side": same_side}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained GRAM run folder")
    p.add_argument("--pairs", type=int, default=64, help="test pairs for the KL breakdown")
    p.add_argument("--draws", type=int, default=40_000, help="prior trajectories for the rejection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.run, args.pairs, args.draws = tiny_run(unconditional=True, task="sudoku-4"), 8, 2000
    if args.run is None:
        p.error("--run is required (or --quick)")
    import pyro
    import torch

    from gram_pyro.build import programs, run_data
    from gram_pyro.checkpoint import load_run

    torch.set_grad_enabled(False)
    breakdown = {}
    for label, fitted in (("training guide", False), ("fitted guide", True)):
        task, cfg, net = load_run(args.run, guide_fit=fitted)
        if fitted and getattr(net, "guide_fit", None) is None:
            continue
        model, guide = programs(net, cfg)
        x, y = run_data(task, cfg).test.pairs()
        pyro.set_rng_seed(args.seed)
        breakdown[label] = kl_breakdown(model, guide, torch.as_tensor(x[:args.pairs]),
                                        torch.as_tensor(y[:args.pairs]))
    task, cfg, net = load_run(args.run)
    model, guide = programs(net, cfg)
    pyro.set_rng_seed(args.seed)
    x0 = torch.as_tensor(run_data(task, cfg).test.inputs[:1])
    mass = prior_mass(model, guide, x0, args.draws)

    sites = list(next(iter(breakdown.values()))["sites"])
    lines = ["| guide | reconstruction | KL | " + " | ".join(sites) + " | elements holding 50% / 90% / 99% of the KL |",
             "|---|---|---|" + "---|" * len(sites) + "---|"]
    for label, b in breakdown.items():
        lines.append(f"| {label} | {b['recon']:.2f} | {b['kl']:.2f} | "
                     + " | ".join(f"{b['sites'][s]:.2f}" for s in sites)
                     + f" | {b['held']['50%']:.0f} / {b['held']['90%']:.0f} / {b['held']['99%']:.0f} of "
                     f"{b['elements']:,} |")
    m = mass
    body = (f"GRAM run `{args.run}` on {task.name}{' (p(x))' if task.unconditional else ''}. KL(q || p) "
            f"in nats per pair on {min(args.pairs, len(x))} test pairs, one guide particle each "
            "(seeded), per noise site `eps_<step>_<transition>`; reconstruction is log p(y | h) "
            "at the guide's trajectory.\n\n" + "\n".join(lines)
            + f"\n\nThe prior's own mass, from {m['draws']:,} prior trajectories of the first test "
            f"input ({m['distinct']:,} distinct answers): the answer drawn most often, {m['hits']} "
            f"times, has log P = {m['log_p_rejection']:.2f} by rejection and "
            f"{m['log_p_prior_is']:.2f} by importance sampling from the prior. The training guide "
            f"spends {m['guide_kl']:.1f} nats of KL on that answer, {m['top_kl']:.1f} of them in 32 "
            f"elements, where its mean sits {m['guide_code_sd']:.2f} prior standard deviations "
            f"from the prior's on average; the rejection hits (exact posterior samples) sit "
            f"{m['hits_mean_sd']:.2f} out, on the guide's side of the prior mean in "
            f"{100 * m['same_side']:.0f}% of those elements.")
    print(body)
    write_section("guide_geometry", "Where the guide's KL sits, and the prior's own mass",
                  body, quick=args.quick, tag=args.tag)
    print(result_line("guide_code_sd", m["guide_code_sd"], "report", True))
    print(result_line("hits_mean_sd", m["hits_mean_sd"], "report", True))


if __name__ == "__main__":
    main()
