"""Choosing one answer out of N trajectories per input.

- ``first``: the first trajectory (what a single sample gives).
- ``vote``: the most frequent decoded answer (after ``task.canonical``); ties go to the answer
  seen first.
- ``lprm``: best-of-N by the LPRM value of the final state.
"""

from __future__ import annotations

import numpy as np

METHODS = ("first", "vote", "lprm")


def majority_index(keys: list[bytes]) -> int:
    """Index of the first occurrence of the most frequent key."""
    counts: dict[bytes, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if counts[k] == best)


def select(task, answers: np.ndarray, values: np.ndarray, method: str) -> np.ndarray:
    """``[M, N, A]`` answers and ``[M, N]`` LPRM values -> ``[M, A]`` chosen answers."""
    answers = np.asarray(answers)
    m, n, a = answers.shape
    if method == "first":
        return answers[:, 0]
    if method == "lprm":
        return answers[np.arange(m), np.asarray(values).argmax(axis=1)]
    if method == "vote":
        canon = np.ascontiguousarray(task.canonical(answers.reshape(m * n, a)).reshape(m, n, a)
                                     .astype(np.int8))
        idx = [majority_index([row.tobytes() for row in canon[i]]) for i in range(m)]
        return answers[np.arange(m), idx]
    raise ValueError(f"unknown selection {method!r}; choose one of {', '.join(METHODS)}")
