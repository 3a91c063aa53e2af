"""Puzzle metrics (docs/design.md §8).

- accuracy: the answer is valid *and* keeps the givens; it need not equal the stored label.
- coverage@N: distinct valid answers among N samples over the number of valid completions,
  reported two ways because the paper does not say which it uses:
    macro = mean over inputs of (found_i / completions_i);
    micro = sum_i found_i / sum_i completions_i.
  Its ceiling: what N independent draws can expect at best (``coverage_ceiling``).
- validity and the unique fraction, for unconditionally generated samples.
- conflict edges, for graph colouring (``task.conflicts``).

Answers are compared after ``task.canonical`` (colourings up to colour permutation).
"""

from __future__ import annotations

import numpy as np

from gram_pyro.tasks.base import Split, Task


def _keys(rows: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(np.asarray(rows, dtype=np.int8))
    return [r.tobytes() for r in rows]


def accuracy(task: Task, inputs: np.ndarray, answers: np.ndarray) -> float:
    """Fraction of answers that are valid and consistent with their inputs."""
    answers = np.asarray(answers)
    if len(answers) == 0:
        return float("nan")
    return float(task.is_correct(np.asarray(inputs), answers).mean())


def coverage(task: Task, split: Split, samples: np.ndarray) -> dict:
    """Coverage of ``samples`` ``[M, N, answer_len]`` (N answers per input of ``split``).

    Returns macro and micro coverage, the per-input found counts, which samples are correct
    (``correct`` ``[M, N]``) and their share. Only answers among the input's known completions
    count as found.
    """
    samples = np.asarray(samples)
    m, n = samples.shape[:2]
    if m != len(split):
        raise ValueError(f"coverage: {m} sample groups for a split of {len(split)} inputs")
    flat = samples.reshape(m * n, -1)
    correct = task.is_correct(np.repeat(split.inputs, n, axis=0), flat).reshape(m, n)
    canon = task.canonical(flat).reshape(m, n, -1)
    found = np.zeros(m, dtype=np.int64)
    for i in range(m):
        targets = set(_keys(task.canonical(split.completions_of(i))))
        hits = {k for k, ok in zip(_keys(canon[i]), correct[i]) if ok}
        found[i] = len(hits & targets)
    totals = split.num_completions
    return {
        "macro": float(np.mean(found / np.maximum(totals, 1))),
        "micro": float(found.sum() / max(int(totals.sum()), 1)),
        "found": found,
        "completions": totals,
        "correct": correct,
        "sample_accuracy": float(correct.mean()),
    }


def coverage_ceiling(split: Split, n: int) -> dict:
    """The micro and macro coverage@``n`` that ``n`` independent draws can expect at best.

    An input with K completions, sampled n times independently with probabilities q_k, expects
    sum_k 1 - (1 - q_k)^n distinct completions. That sum is concave and symmetric in q, so the
    uniform q = 1/K maximises it: K (1 - (1 - 1/K)^n). No model whose samples are independent
    given the input (GRAM's prior rollouts, the baseline, any i.i.d. sampler) expects more. With
    n = 20 and an input of 30 completions it is 14.8, not 20.
    """
    k = np.asarray(split.num_completions, dtype=np.float64)
    if n < 1:
        raise ValueError(f"coverage_ceiling: n must be at least 1, got {n}")
    safe = np.maximum(k, 1.0)
    expected = np.where(k > 0, safe * (1.0 - (1.0 - 1.0 / safe) ** n), 0.0)
    return {"micro": float(expected.sum() / max(k.sum(), 1.0)),
            "macro": float(np.mean(expected / safe)) if len(k) else float("nan")}


def coverage_curve(task: Task, split: Split, samples: np.ndarray, ns) -> dict:
    """Micro and macro coverage using the first n samples, for each n in ``ns``."""
    out = {"n": [], "micro": [], "macro": []}
    for k in ns:
        c = coverage(task, split, samples[:, :k])
        out["n"].append(int(k))
        out["micro"].append(c["micro"])
        out["macro"].append(c["macro"])
    return out


def generation_stats(task: Task, boards: np.ndarray) -> dict:
    """Validity, unique fraction and (where the space is enumerable) coverage of generated
    complete objects ``[N, answer_len]``."""
    boards = np.asarray(boards)
    valid = task.is_valid(boards)
    canon = _keys(task.canonical(boards))
    valid_keys = {k for k, v in zip(canon, valid) if v}
    out = {
        "samples": int(len(boards)),
        "valid": float(valid.mean()) if len(boards) else float("nan"),
        "unique_fraction": len(set(canon)) / max(len(boards), 1),
        "distinct_valid": len(valid_keys),
        "unique_among_valid": len(valid_keys) / max(int(valid.sum()), 1),
    }
    space = task.all_objects()
    if space is not None:
        out["space_size"] = int(len(space))
        out["coverage"] = len(valid_keys & set(_keys(task.canonical(space)))) / len(space)
    return out


def conflicts(task: Task, inputs: np.ndarray, answers: np.ndarray) -> dict | None:
    """Conflict edges of graph-colouring answers: mean per input and total; None for other tasks."""
    if not hasattr(task, "conflicts"):
        return None
    c = np.asarray(task.conflicts(np.asarray(inputs), np.asarray(answers)))
    return {"mean": float(c.mean()) if len(c) else float("nan"), "total": int(c.sum())}


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half): P(score of a positive > score of a negative)."""
    scores, positive = np.asarray(scores, float).ravel(), np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def within_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mean over rows (inputs) of the AUC among that row's trajectories ``[M, N]``, over the rows
    that have both outcomes: how well the score ranks trajectories of the same input, which is
    what best-of-N selection needs (the pooled AUC also rewards telling easy inputs from hard)."""
    per_row = [auc(s, p) for s, p in zip(np.asarray(scores), np.asarray(positive, bool))]
    per_row = [a for a in per_row if a == a]
    return float(np.mean(per_row)) if per_row else float("nan")
