"""The ARC protocol (docs/design.md §12): many views x many trajectories per test input, each
prediction mapped back onto the puzzle, one vote, and the official pass@2.

For a test input of puzzle p, view v of it (the puzzle's own augmentation, with its own identity,
:mod:`gram_pyro.tasks.arc`) gets ``samples`` prior trajectories; every decoded answer is mapped
back by the inverse of view v and cropped to its grid. The pooled grids are voted: identical
grids add up their weight (1 each, or the LPRM value of the trajectory with ``weighted``), the
heaviest first. The input counts under pass@k when one of the k heaviest grids is exactly the
task's output. A task's score is the share of its test inputs that count, and the headline is
the mean over tasks, as the official scoring has it.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from gram_pyro.inference import prior_rollouts
from gram_pyro.tasks.arc import decode_grid


def vote(grids, weights=None) -> list[tuple[np.ndarray, float, int]]:
    """``(grid, total weight, count)`` per distinct grid of ``grids`` (None: no grid, skipped),
    the heaviest first (ties: the more frequent, then the first seen)."""
    weights = np.ones(len(grids)) if weights is None else np.asarray(weights, dtype=np.float64)
    pooled: dict[tuple, list] = {}
    for grid, w in zip(grids, weights):
        if grid is None:
            continue
        key = (grid.shape, grid.tobytes())
        entry = pooled.setdefault(key, [grid, 0.0, 0, len(pooled)])
        entry[1] += float(w)
        entry[2] += 1
    ranked = sorted(pooled.values(), key=lambda e: (-e[1], -e[2], e[3]))
    return [(g, w, c) for g, w, c, _ in ranked]


def pass_at_k(ranked, truths, k: int = 2) -> bool:
    """Is one of the first ``k`` voted grids exactly one of ``truths`` (same shape, same
    colours)?"""
    return any(g.shape == t.shape and np.array_equal(g, t)
               for g, _, _ in ranked[:k] for t in truths)


@torch.no_grad()
def predict(model, task, inputs: np.ndarray, *, views: int | None = None, samples: int = 8,
            weighted: bool = False, max_steps: int | None = None,
            progress: bool = False) -> list[list[tuple[np.ndarray, float, int]]]:
    """The voted grids of each view-0 input row ``[M, seq_len]`` of ``task`` (an ARC task whose
    data is built): ``views`` views (default: all the task's) x ``samples`` prior trajectories
    each, mapped back and pooled (:func:`vote`)."""
    views = min(views or task.views, task.views)
    ranked = []
    for row in tqdm(np.asarray(inputs), desc="ARC views", disable=not progress, leave=False):
        rows = np.stack([task.to_view(row, None, v)[0] for v in range(views)])
        traj = prior_rollouts(model, rows, samples, max_steps=max_steps)
        grids, weights = [], []
        for v in range(views):
            for n in range(samples):
                _, back = task.to_base(rows[v], traj.answers[v, n])
                grids.append(decode_grid(back, task.side))
                weights.append(traj.values[v, n] if weighted else 1.0)
        ranked.append(vote(grids, weights))
    return ranked


def arc_report(model, task, split, *, views: int | None = None, samples: int = 8,
               weighted: bool = False, max_steps: int | None = None, progress: bool = False) -> dict:
    """pass@1 and pass@2 on ``split`` (the test inputs), per input and per task (the official
    mean over tasks of the share of their test inputs solved), with the protocol's sizes."""
    ranked = predict(model, task, split.inputs, views=views, samples=samples, weighted=weighted,
                     max_steps=max_steps, progress=progress)
    puzzles, _ = task.identity(split.inputs)
    rows = []
    for i, r in enumerate(ranked):
        truths = [decode_grid(c, task.side) for c in split.completions_of(i)]
        rows.append({"puzzle": task.puzzle_name(int(puzzles[i])),
                     "pass@1": pass_at_k(r, truths, 1), "pass@2": pass_at_k(r, truths, 2),
                     "distinct": len(r), "top_votes": r[0][2] if r else 0})
    out = {"inputs": len(rows), "views": min(views or task.views, task.views),
           "samples": samples, "weighted": weighted, "per_input": rows}
    for k in ("pass@1", "pass@2"):
        out[k + "_inputs"] = float(np.mean([r[k] for r in rows])) if rows else 0.0
        by_task: dict[str, list] = {}
        for r in rows:
            by_task.setdefault(r["puzzle"], []).append(r[k])
        out[k] = float(np.mean([np.mean(v) for v in by_task.values()])) if by_task else 0.0
    out["tasks"] = len({r["puzzle"] for r in rows})
    return out
