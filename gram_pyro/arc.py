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


def n_views(task, views: int | None = None) -> int:
    """The views the protocol uses: ``views`` (default: all the task's), at most the task's."""
    return min(views or task.views, task.views)


@torch.no_grad()
def view_rollouts(model, task, row, samples: int, *, views: int | None = None,
                  max_steps: int | None = None, act=False):
    """``(rows [V, seq_len], trajectories [V, samples])``: ``samples`` prior trajectories on each
    of the V views of one view-0 input row (row 0 is the row itself)."""
    rows = np.stack([task.to_view(row, None, v)[0] for v in range(n_views(task, views))])
    return rows, prior_rollouts(model, rows, samples, max_steps=max_steps, act=act)


def mapped_back(task, rows, traj) -> tuple[list, np.ndarray]:
    """The grids of :func:`view_rollouts`' answers mapped back onto the puzzle (None where an
    answer holds no grid), views major, and their LPRM values."""
    grids = [decode_grid(task.to_base(rows[v], answer)[1], task.side)
             for v in range(len(rows)) for answer in traj.answers[v]]
    return grids, np.asarray(traj.values, dtype=np.float64).reshape(-1)


def _pooled(model, task, inputs, views, samples, max_steps, progress):
    for row in tqdm(np.asarray(inputs), desc="ARC views", disable=not progress, leave=False):
        yield mapped_back(task, *view_rollouts(model, task, row, samples, views=views,
                                               max_steps=max_steps))


def predict(model, task, inputs: np.ndarray, *, views: int | None = None, samples: int = 8,
            weighted: bool = False, max_steps: int | None = None,
            progress: bool = False) -> list[list[tuple[np.ndarray, float, int]]]:
    """The voted grids of each view-0 input row ``[M, seq_len]`` of ``task`` (an ARC task whose
    data is built): ``views`` views x ``samples`` prior trajectories each, mapped back and pooled
    (:func:`vote`), by count or, with ``weighted``, by LPRM value."""
    return [vote(grids, values if weighted else None)
            for grids, values in _pooled(model, task, inputs, views, samples, max_steps, progress)]


def _pass_rates(rows, prefix: str = "") -> dict:
    """pass@1 and pass@2 of per-input ``rows`` (their ``prefix + "pass@k"`` keys): the mean over
    tasks of the share of their inputs solved (the official score), and the mean per input."""
    out = {}
    for k in ("pass@1", "pass@2"):
        by_task: dict[str, list] = {}
        for r in rows:
            by_task.setdefault(r["puzzle"], []).append(r[prefix + k])
        out[k] = float(np.mean([np.mean(v) for v in by_task.values()])) if rows else 0.0
        out[k + "_inputs"] = float(np.mean([r[prefix + k] for r in rows])) if rows else 0.0
    return out


def arc_report(model, task, split, *, views: int | None = None, samples: int = 8,
               max_steps: int | None = None, progress: bool = False) -> dict:
    """pass@1 and pass@2 on ``split`` (the test inputs), per input and per task (the official
    mean over tasks of the share of their test inputs solved), with the protocol's sizes. Both
    votes score the same trajectories: by count (the top-level figures) and LPRM-weighted
    (under ``"lprm"``)."""
    puzzles, _ = task.identity(split.inputs)
    rows = []
    pooled = _pooled(model, task, split.inputs, views, samples, max_steps, progress)
    for i, (grids, values) in enumerate(pooled):
        truths = [decode_grid(c, task.side) for c in split.completions_of(i)]
        count, lprm = vote(grids), vote(grids, values)
        rows.append({"puzzle": task.puzzle_name(int(puzzles[i])),
                     "pass@1": pass_at_k(count, truths, 1), "pass@2": pass_at_k(count, truths, 2),
                     "lprm_pass@1": pass_at_k(lprm, truths, 1),
                     "lprm_pass@2": pass_at_k(lprm, truths, 2),
                     "distinct": len(count), "top_votes": count[0][2] if count else 0})
    return {"inputs": len(rows), "views": n_views(task, views), "samples": samples,
            "tasks": len({r["puzzle"] for r in rows}), "per_input": rows,
            **_pass_rates(rows), "lprm": _pass_rates(rows, "lprm_")}
