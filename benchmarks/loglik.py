"""Log-likelihood table of a trained run: ELBO and IWAE_k against k (docs/design.md §6).

    python benchmarks/loglik.py --run runs/nq8 --particles 1000 --limit 100
    python benchmarks/loglik.py --quick            # trains a tiny run first

IWAE_k is a lower bound on log p(y | x) that tightens as k grows; the ELBO is at most IWAE_1 in
expectation. Goal: the table is monotone in k (within standard errors) and IWAE_k >= ELBO.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import tiny_run  # noqa: E402
from gram_pyro.likelihood import format_loglik, run_loglik  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run folder")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.run = tiny_run()
        args.particles, args.limit = 100, 10
    if args.run is None:
        p.error("--run is required (or --quick)")
    start = time.perf_counter()
    r = run_loglik(args.run, particles=args.particles, limit=args.limit)
    seconds = time.perf_counter() - start
    text = format_loglik(r)
    print(text)
    rows = ["| k | IWAE_k (nats/example) | bits/token |", "|---|---|---|"]
    rows += [f"| {t['k']} | {t['iwae_nats']:.3f} ± {t['sem']:.3f} | {t['bits_per_token']:.4f} |"
             for t in r["iwae_by_k"]]
    body = (f"{r['model']} run `{args.run}` on {r['task']}: {r['quantity']} on {r['examples']} "
            f"{r['split']} (input, completion) pairs, K = {r['particles']} guide particles "
            f"({seconds:.0f} s). ± is the standard error over examples; IWAE_k for k < K averages "
            "the K // k disjoint groups of k particles.\n\n"
            f"ELBO: {r['elbo_nats']:.3f} ± {r['elbo_sem']:.3f} nats/example "
            f"({r['elbo_bits_per_token']:.4f} bits/token); mean ESS of the K weights: "
            f"{r['ess_mean']:.1f}.\n\n" + "\n".join(rows))
    write_section("loglik", "Log-likelihood: ELBO and IWAE_k", body, quick=args.quick)
    values = [t["iwae_nats"] for t in r["iwae_by_k"]]
    slack = max(t["sem"] for t in r["iwae_by_k"])
    monotone = all(b >= a - slack for a, b in zip(values, values[1:])) and values[0] >= r["elbo_nats"] - slack
    print(result_line("iwae_monotone_in_k", float(monotone), "1", monotone))


if __name__ == "__main__":
    main()
