"""Width at inference on a trained run: coverage against N, and choosing one answer out of N
(single sample, majority vote, LPRM best-of-N, LPRM-guided SMC) at equal compute.

    python benchmarks/selection.py --run runs/sudoku9 --samples 20
    python benchmarks/selection.py --run runs/nq8 --samples 64           # coverage@64
    python benchmarks/selection.py --quick                               # trains a tiny run first

Equal compute: best-of-N, vote and the single sample all read the same N independent prior
trajectories; SMC runs N particles for the same supervision steps (its resampling is a gather).
Both passes are timed. The LPRM's ranking quality is reported as the AUC of its final value for
correct against incorrect trajectories (0.5: no better than chance), pooled over all trajectories
and within each input (what best-of-N needs: the pooled figure also rewards telling easy inputs
from hard ones), and "pass@N" (some sample is
correct) bounds what any selection of the N samples can reach.

Goal (issue #4): LPRM best-of-N >= majority vote >= a single sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import tiny_run  # noqa: E402


def measure(run, samples: int, limit: int | None, seed: int) -> dict:
    import pyro
    import torch

    from gram_pyro import metrics
    from gram_pyro.build import programs, run_data
    from gram_pyro.checkpoint import load_run
    from gram_pyro.evaluate import summarize
    from gram_pyro.inference import prior_rollouts
    from gram_pyro.select import select
    from gram_pyro.smc import lprm_smc

    task, cfg, net = load_run(run)
    part = run_data(task, cfg).split("test").sample(limit)
    model, _ = programs(net, cfg)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        traj = prior_rollouts(model, part.inputs, samples, record=True)
    best_of_seconds = time.perf_counter() - start
    report = summarize(task, cfg, part, traj, split="test", act=False)
    pyro.set_rng_seed(seed + 1)
    start = time.perf_counter()
    smc = lprm_smc(model, part.inputs, samples)
    smc_seconds = time.perf_counter() - start
    report["accuracy"]["smc"] = metrics.accuracy(task, part.inputs,
                                                 select(task, smc.answers, smc.values, "lprm"))
    m, n = traj.answers.shape[:2]
    ok = task.is_correct(np.repeat(part.inputs, n, axis=0), traj.answers.reshape(m * n, -1)).reshape(m, n)
    report.update(pass_at_n=float(ok.any(1).mean()), lprm_auc=metrics.auc(traj.values, ok),
                  lprm_within_auc=metrics.within_auc(traj.values, ok),
                  best_of_seconds=best_of_seconds, smc_seconds=smc_seconds,
                  smc_resampling_events=smc.resampled, train_steps=None)
    return report


def table(r: dict, run) -> str:
    acc, n = r["accuracy"], r["samples"]
    rows = ["| selection (N = %d) | accuracy | wall s |" % n, "|---|---|---|",
            f"| single sample | {100 * acc['first']:.1f}% | |",
            f"| majority vote | {100 * acc['vote']:.1f}% | {r['best_of_seconds']:.1f} (all four) |",
            f"| LPRM best-of-N | {100 * acc['lprm']:.1f}% | |",
            f"| LPRM-weighted vote | {100 * acc['weighted']:.1f}% | |",
            f"| LPRM-guided SMC, N particles | {100 * acc['smc']:.1f}% | {r['smc_seconds']:.1f} |",
            f"| (pass@N: some sample correct) | {100 * r['pass_at_n']:.1f}% | |"]
    curve = r["coverage_curve"]
    cov = ["| N | " + " | ".join(map(str, curve["n"])) + " |",
           "|---|" + "---|" * len(curve["n"]),
           "| micro coverage | " + " | ".join(f"{100 * v:.1f}%" for v in curve["micro"]) + " |",
           "| macro coverage | " + " | ".join(f"{100 * v:.1f}%" for v in curve["macro"]) + " |"]
    return (f"{r['model']} run `{run}` on {r['task']}, {r['inputs']} test inputs "
            f"({r['completions_per_input']:.2f} valid completions each on average), N = {n} prior "
            f"trajectories per input, {r['mean_steps']:.0f} supervision steps. Sample accuracy "
            f"(all N x inputs trajectories): {100 * r['sample_accuracy']:.1f}%. LPRM AUC (final "
            f"value, correct vs wrong trajectories): {r['lprm_auc']:.3f} pooled, "
            f"{r['lprm_within_auc']:.3f} among the trajectories of one input. SMC resampled "
            f"{r['smc_resampling_events']} times (input x step).\n\n" + "\n".join(rows)
            + "\n\nCoverage of each input's valid completions against N:\n\n" + "\n".join(cov))


def critic_note(run) -> str:
    """What the run's final critic fit reported (critic.json), if it had one."""
    import json

    path = Path(run) / "critic.json"
    if not path.is_file():
        return "\n\nThe run has no critic fit (critic.json): its critic is the jointly trained one."
    c = json.loads(path.read_text())
    b, a = c["before"], c["after"]
    return (f"\n\nCritic fit (`critic.json`): {c['inputs'] - c['heldout_inputs']} training inputs x "
            f"{c['trajectories']} trajectories, {c['steps']} steps, {c['seconds']:.0f} s. On "
            f"{c['heldout_inputs']} held-out inputs the LPRM's AUC went from {b['auc']:.3f} to "
            f"{a['auc']:.3f} (within one input: {b['within_auc']:.3f} to {a['within_auc']:.3f}).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run folder")
    p.add_argument("--samples", type=int, default=20, help="N trajectories per input")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the test inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix of the RESULTS section (several runs per task)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.run = tiny_run()
        args.samples, args.limit = 8, 10
    if args.run is None:
        p.error("--run is required (or --quick)")
    r = measure(args.run, args.samples, args.limit, args.seed)
    body = table(r, args.run) + critic_note(args.run)
    print(body)
    write_section(f"selection_{r['task']}", f"Width at inference: selection and coverage on {r['task']}",
                  body, quick=args.quick, tag=args.tag)
    acc = r["accuracy"]
    met = acc["lprm"] >= acc["vote"] >= acc["first"]
    print(result_line("lprm_minus_vote", acc["lprm"] - acc["vote"], "lprm>=vote>=single", met))
    print(result_line("weighted_minus_vote", acc["weighted"] - acc["vote"], "weighted>=vote",
                      acc["weighted"] >= acc["vote"]))


if __name__ == "__main__":
    main()
