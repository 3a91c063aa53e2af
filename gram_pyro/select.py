"""Choosing one answer out of N trajectories per input.

- ``first``: the first trajectory (what a single sample gives).
- ``vote``: the most frequent decoded answer (after ``task.canonical``); ties go to the answer
  seen first.
- ``lprm``: best-of-N by the LPRM value of the final state.
- ``weighted``: the answer whose trajectories have the largest summed LPRM value, a vote in
  which each trajectory counts as much as the LPRM trusts it (weighted majority voting, as used
  with outcome and process reward models). It keeps the vote's consensus where the LPRM is
  unsure and follows the LPRM where the vote is split.
"""

from __future__ import annotations

import numpy as np

METHODS = ("first", "vote", "lprm", "weighted")


def majority_index(keys: list[bytes], weights=None) -> int:
    """Index of the first occurrence of the key with the largest count (or summed weight)."""
    weights = np.ones(len(keys)) if weights is None else np.asarray(weights, dtype=np.float64)
    totals: dict[bytes, float] = {}
    for k, w in zip(keys, weights):
        totals[k] = totals.get(k, 0.0) + float(w)
    best = max(totals.values())
    return next(i for i, k in enumerate(keys) if totals[k] == best)


def select(task, answers: np.ndarray, values: np.ndarray, method: str) -> np.ndarray:
    """``[M, N, A]`` answers and ``[M, N]`` LPRM values -> ``[M, A]`` chosen answers."""
    answers = np.asarray(answers)
    m, n, a = answers.shape
    if method == "first":
        return answers[:, 0]
    if method == "lprm":
        return answers[np.arange(m), np.asarray(values).argmax(axis=1)]
    if method in ("vote", "weighted"):
        canon = np.ascontiguousarray(task.canonical(answers.reshape(m * n, a)).reshape(m, n, a)
                                     .astype(np.int8))
        weights = np.asarray(values) if method == "weighted" else [None] * m
        idx = [majority_index([row.tobytes() for row in canon[i]], weights[i]) for i in range(m)]
        return answers[np.arange(m), idx]
    raise ValueError(f"unknown selection {method!r}; choose one of {', '.join(METHODS)}")
