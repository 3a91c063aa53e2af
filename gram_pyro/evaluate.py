"""``gram evaluate``: prior rollouts of a trained run on a held-out split.

Every figure comes from PRIOR trajectories (the model never sees y). Reported:
- sample accuracy: the share of all N x M trajectories whose answer is correct;
- accuracy of each selection method (first sample, majority vote, LPRM best-of-N);
- coverage@N (micro and macro) and its curve over n = 1..N;
- accuracy against supervision steps (depth), of the first sample and of the selection;
- whether the N samples of an input are all identical (always so for the baseline).
"""

from __future__ import annotations

import json

import numpy as np
import pyro
import torch

from gram_pyro import metrics
from gram_pyro.build import model_label, programs, require_latent, resolve_device, run_data
from gram_pyro.checkpoint import load_run
from gram_pyro.errors import UserError
from gram_pyro.inference import DEFAULT_CHUNK, Trajectories, default_steps, prior_rollouts
from gram_pyro.select import METHODS, select


def validation_metrics(model, task, split, samples: int, *, seed: int) -> dict:
    """Prior-rollout accuracy and coverage@``samples`` on ``split``, what training logs. The
    rollouts run on a forked RNG seeded with ``seed``, so they never change the caller's stream."""
    device = model.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        traj = prior_rollouts(model, split.inputs, samples)
    cov = metrics.coverage(task, split, traj.answers)
    return {"val_prior_acc": cov["sample_accuracy"],
            f"val_coverage_micro@{samples}": cov["micro"],
            f"val_coverage_macro@{samples}": cov["macro"]}


def evaluate_run(run_dir, *, samples: int = 20, split: str = "test", max_steps: int | None = None,
                 act: bool = False, limit: int | None = None, seed: int = 0, select_method: str = "lprm",
                 chunk_size: int | None = None, device: str = "cpu", arc_views: int | None = None):
    """Prior rollouts of a run on a split. Returns ``(report, trajectories, split, task,
    selected)``; with ``select_method="smc"`` the SMC particles replace the independent samples
    in the trajectories handed back (the report has both). An ARC run's report adds the
    protocol's pass@1 and pass@2 over ``arc_views`` views (default all) x ``samples``.
    ``max_steps`` defaults to :func:`~gram_pyro.inference.default_steps` (2 x the trained N_sup)."""
    device = resolve_device(device)
    task, cfg, net = load_run(run_dir, device=device)
    data = run_data(task, cfg)
    part = data.split(split, nonempty=True).sample(limit)
    max_steps = max_steps or default_steps(cfg)
    if select_method == "smc":
        require_latent(cfg, "LPRM-guided SMC (--select smc)")
    act = act and cfg.model != "ar"  # one sampling pass writes an AR answer: nothing to halt
    model, _ = programs(net, cfg)
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        traj = prior_rollouts(model, part.inputs, samples, max_steps=max_steps, act=act,
                              record=True, chunk_size=chunk_size or DEFAULT_CHUNK)
    report = summarize(task, cfg, part, traj, split=split, act=act)
    if select_method == "smc":
        from gram_pyro.smc import lprm_smc

        pyro.set_rng_seed(seed + 1)
        smc = lprm_smc(model, part.inputs, samples, max_steps=max_steps)
        chosen = select(task, smc.answers, smc.values, "lprm")
        report["accuracy"]["smc"] = metrics.accuracy(task, part.inputs, chosen)
        report["smc"] = {"resampling_events": smc.resampled,
                         "coverage_micro": metrics.coverage(task, part, smc.answers)["micro"]}
        traj = Trajectories(smc.answers, smc.values, traj.steps)
    else:
        chosen = select(task, traj.answers, traj.values, select_method)
    report["selected_by"] = select_method
    if task.puzzle_slot:  # ARC's official figure: pass@2 over views x trajectories
        from gram_pyro.arc import arc_report

        pyro.set_rng_seed(seed + 2)
        arc = arc_report(model, task, part, views=arc_views, samples=samples, max_steps=max_steps)
        report["arc"] = {k: v for k, v in arc.items() if k != "per_input"}
    return report, traj, part, task, chosen


def write_dump(path, task, part, traj, chosen) -> int:
    """One JSON object per input: ``input``, ``samples``, ``lprm``, ``selected`` (task strings)."""
    import json

    try:
        with open(path, "w") as f:
            for i in range(len(part)):
                f.write(json.dumps({
                    "input": task.format_input(part.inputs[i]),
                    "samples": [task.format_answer(a) for a in traj.answers[i]],
                    "lprm": [round(float(v), 6) for v in traj.values[i]],
                    "selected": task.format_answer(chosen[i]),
                }) + "\n")
    except OSError as e:
        raise UserError(f"cannot write --dump file {str(path)!r}: {e.strerror}") from None
    return len(part)


def save_plots(run_dir, report, traj, part, task) -> list:
    """Coverage against N, accuracy against steps, LPRM against steps (correct vs wrong)."""
    from pathlib import Path

    from gram_pyro import plots

    out = Path(run_dir)
    tag = f"eval_{report['split']}"
    paths = [plots.save(plots.coverage_curve({report["model"]: report["coverage_curve"]}),
                        out / f"{tag}_coverage.png"),
             plots.save(plots.accuracy_by_step({"single sample": report["accuracy_by_step"]}),
                        out / f"{tag}_accuracy_by_step.png")]
    if traj.step_values is not None and report.get("scorer", "LPRM") == "LPRM":
        m, n = traj.answers.shape[:2]
        ok = task.is_correct(np.repeat(part.inputs, n, axis=0), traj.answers.reshape(m * n, -1))
        paths.append(plots.save(plots.lprm_by_step(traj.step_values.reshape(len(traj.step_values), -1), ok),
                                out / f"{tag}_lprm_by_step.png"))
    return paths


def summarize(task, cfg, part, traj, *, split: str, act: bool) -> dict:
    m, n = traj.answers.shape[:2]
    cov = metrics.coverage(task, part, traj.answers)
    ceiling = metrics.coverage_ceiling(part, n)
    ns = sorted({k for k in (1, 2, 4, 8, 16, 20, 32, 64, n) if k <= n})
    curve = metrics.coverage_curve(task, part, traj.answers, ns)
    selected = {method: metrics.accuracy(task, part.inputs, select(task, traj.answers, traj.values, method))
                for method in METHODS}
    depth = [metrics.accuracy(task, part.inputs, step[:, 0]) for step in traj.step_answers]
    flat = traj.answers.reshape(m, n, -1)
    identical = float(np.mean([(flat[i] == flat[i, :1]).all() for i in range(m)]))
    out = {
        "task": task.name, "split": split, "inputs": int(m), "samples": int(n),
        "model": model_label(cfg, objective=True),
        # what ranks a trajectory for best-of-N: GRAM's LPRM, or the AR model's own probability
        "scorer": "p(y | x)" if cfg.model == "ar" else "LPRM",
        "sample_accuracy": cov["sample_accuracy"],
        "accuracy": selected,
        "coverage_micro": cov["micro"], "coverage_macro": cov["macro"],
        # the most that n independent samples can expect (metrics.coverage_ceiling)
        "coverage_ceiling_micro": ceiling["micro"], "coverage_ceiling_macro": ceiling["macro"],
        "coverage_curve": curve,
        "completions_per_input": float(part.num_completions.mean()),
        "identical_samples_fraction": identical,
        "accuracy_by_step": depth,
        "mean_steps": float(traj.steps.mean()), "act": act,
        # the budget the rollout ran under (an AR sample is one pass, whatever was asked)
        "max_steps": len(traj.step_answers) if traj.step_answers is not None
        else int(traj.steps.max()),
        "trained_steps": cfg.n_supervision,
    }
    conf = metrics.conflicts(task, np.repeat(part.inputs, n, axis=0), traj.answers.reshape(m * n, -1))
    if conf is not None:
        out["conflicts_per_sample"] = conf["mean"]
    return out


def format_report(r: dict) -> str:
    n = r["samples"]
    lines = [
        f"{r['model']} on {r['task']} ({r['split']} split, {r['inputs']} inputs, {n} prior "
        f"samples each, {r['completions_per_input']:.2f} valid completions per input)",
        f"  sample accuracy (all trajectories): {100 * r['sample_accuracy']:.1f}%",
        f"  coverage@{n}: micro {100 * r['coverage_micro']:.1f}%, macro {100 * r['coverage_macro']:.1f}% "
        f"(the most {n} independent samples can expect: micro "
        f"{100 * r['coverage_ceiling_micro']:.1f}%, macro {100 * r['coverage_ceiling_macro']:.1f}%)",
        "  selection               accuracy",
    ]
    for method, acc in r["accuracy"].items():
        scorer = r.get("scorer", "LPRM")
        label = {"first": "single sample", "vote": "majority vote", "lprm": f"{scorer} best-of-N",
                 "weighted": f"{scorer}-weighted vote", "smc": "LPRM-guided SMC"}[method]
        lines.append(f"    {label:<22} {100 * acc:6.1f}%")
    if "smc" in r:
        lines.append(f"    (SMC: same N and steps as best-of-N; {r['smc']['resampling_events']} "
                     f"resampling events; particle coverage {100 * r['smc']['coverage_micro']:.1f}%)")
    if r["identical_samples_fraction"] == 1.0:
        lines.append(f"  all {n} samples of every input are identical"
                     + (" (deterministic baseline: by construction)" if "baseline" in r["model"] else ""))
    else:
        lines.append(f"  inputs whose {n} samples are all identical: "
                     f"{100 * r['identical_samples_fraction']:.1f}%")
    curve = r["coverage_curve"]
    lines.append("  coverage vs n:   " + "  ".join(f"n={k}: {100 * v:.1f}%" for k, v in
                                                    zip(curve["n"], curve["micro"])) + " (micro)")
    lines.append("  accuracy vs supervision steps (single sample): " +
                 " ".join(f"{100 * a:.0f}" for a in r["accuracy_by_step"]))
    lines.append(f"  mean supervision steps: {r['mean_steps']:.2f} of {r['max_steps']} (trained "
                 f"with {r['trained_steps']})" + (" (ACT)" if r["act"] else ""))
    if "conflicts_per_sample" in r:
        lines.append(f"  conflict edges per sample: {r['conflicts_per_sample']:.2f}")
    if "arc" in r:
        a = r["arc"]
        lines.append(f"  ARC protocol ({a['views']} views x {a['samples']} trajectories, mapped back "
                     f"and voted): pass@2 {100 * a['pass@2']:.1f}%, pass@1 {100 * a['pass@1']:.1f}% "
                     f"(mean over {a['tasks']} tasks; per input: pass@2 "
                     f"{100 * a['pass@2_inputs']:.1f}%); LPRM-weighted vote: pass@2 "
                     f"{100 * a['lprm']['pass@2']:.1f}%, pass@1 {100 * a['lprm']['pass@1']:.1f}%")
    return "\n".join(lines)


def sample_puzzle(run_dir, text: str, n: int, *, seed: int = 0, max_steps=None, act=False,
                  device: str = "cpu") -> dict:
    """``n`` prior trajectories for one puzzle string; distinct answers with their counts,
    correctness and mean LPRM value, most frequent first."""
    device = resolve_device(device)
    task, cfg, net = load_run(run_dir, device=device)
    if task.puzzle_slot:  # ARC: the run's puzzles and their known outputs
        run_data(task, cfg)
    x = task.parse_input(text)
    max_steps = max_steps or default_steps(cfg)
    model, _ = programs(net, cfg)
    pyro.set_rng_seed(seed)
    if task.puzzle_slot:  # ARC: n trajectories on every view; view 0's are the table's
        from gram_pyro.arc import view_rollouts

        rows, traj = view_rollouts(model, task, x, n, max_steps=max_steps, act=act)
    else:
        traj = prior_rollouts(model, x[None], n, max_steps=max_steps, act=act)
    answers, values = traj.answers[0], traj.values[0]
    canon = task.canonical(answers)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(canon.astype(np.int8))):
        groups.setdefault(row.tobytes(), []).append(i)
    correct = task.is_correct(np.repeat(x[None], n, axis=0), answers)
    distinct = []
    for idx in sorted(groups.values(), key=len, reverse=True):
        a = answers[idx[0]]
        distinct.append({"answer": task.format_answer(a), "count": len(idx),
                         "correct": bool(correct[idx[0]]), "lprm": float(values[idx].mean()),
                         "board": task.render(a, x)})
    solutions = task.solve(x, cap=1000)
    report = {"task": task.name, "puzzle": task.format_input(x), "samples": n,
              "model": model_label(cfg),
              "valid_completions": int(len(solutions)),
              "distinct_correct": sum(d["correct"] for d in distinct),
              "mean_steps": float(traj.steps[0].mean()), "answers": distinct}
    if task.puzzle_slot:
        report["arc"] = _arc_vote(task, x, n, rows, traj, answers, solutions)
    return report


def _arc_vote(task, x, n: int, rows, traj, answers, solutions) -> dict:
    """The ARC protocol on one input: the ``n`` trajectories ``traj`` on each of the puzzle's
    view ``rows`` (:func:`~gram_pyro.arc.view_rollouts`), mapped back and voted; the top two
    grids, and what a figure needs."""
    from gram_pyro.arc import mapped_back, pass_at_k, vote
    from gram_pyro.tasks.arc import decode_grid

    ranked = vote(mapped_back(task, rows, traj)[0])
    truths = [decode_grid(s, task.side) for s in solutions]
    top = [{"grid": json.dumps(g.tolist(), separators=(",", ":")), "votes": c,
            "correct": pass_at_k([(g, w, c)], truths, 1)} for g, w, c in ranked[:2]]
    return {"views": len(rows), "trajectories": len(rows) * n, "top2": top,
            "pass@2": pass_at_k(ranked, truths, 2) if truths else None,
            "_figure": (x, answers[:10], ranked, truths[0] if truths else None)}


def format_samples(r: dict) -> str:
    lines = [f"{r['model']} on {r['task']}: {r['samples']} samples, {len(r['answers'])} distinct "
             f"answers, {r['distinct_correct']} of them correct (the puzzle has "
             f"{r['valid_completions']} valid completions)"]
    for d in r["answers"]:
        lines.append(f"\n{d['count']} x  {'correct' if d['correct'] else 'WRONG'}  "
                     f"LPRM {d['lprm']:.2f}\n{d['board']}")
    if r.get("arc"):
        a = r["arc"]
        known = "" if a["pass@2"] is None else \
            f": pass@2 {'yes' if a['pass@2'] else 'no'}"
        lines.append(f"\nthe vote over {a['views']} views x {r['samples']} trajectories "
                     f"(mapped back to the puzzle){known}")
        for k, t in enumerate(a["top2"]):
            lines.append(f"  #{k + 1}: {t['votes']} votes  "
                         f"{'correct' if t['correct'] else 'wrong'}  {t['grid']}")
    return "\n".join(lines)
