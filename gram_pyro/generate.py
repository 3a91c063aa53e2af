"""Unconditional generation p(x): complete objects from the blank board, and playable puzzles.

``generate`` samples N boards from the prior of an unconditional run in batched passes and
measures them against the task's exact checker: validity, the unique fraction, and coverage of
the whole space where it can be enumerated (288 Shidoku grids, 92 eight-queens boards).

``make_puzzle`` turns a valid board into a puzzle with a unique solution: it removes givens in a
random order and keeps each removal only if the task's exact solver still finds exactly one
completion.
"""

from __future__ import annotations

import time

import numpy as np
import pyro
import torch

from gram_pyro import metrics
from gram_pyro.build import model_label, programs, resolve_device
from gram_pyro.checkpoint import load_run
from gram_pyro.errors import UserError
from gram_pyro.inference import default_steps, prior_rollouts
from gram_pyro.tasks import get_task


def pick(values: np.ndarray, rule: str, threshold: float = 0.5) -> np.ndarray:
    """Which of K trajectories each board keeps, from their LPRM values ``[n, K]``.

    ``best``: the highest value. ``screen``: the first whose value exceeds ``threshold`` (the
    LPRM's "this one is valid"), else the highest. Screening keeps the model's own distribution
    over the boards the LPRM accepts, where ``best`` concentrates on the boards the LPRM likes
    most and so covers fewer of them.
    """
    best = values.argmax(axis=1)
    if rule == "best":
        return best
    if rule != "screen":
        raise ValueError(f"unknown pick rule {rule!r}; use 'screen' or 'best'")
    accepted = values > threshold
    return np.where(accepted.any(axis=1), accepted.argmax(axis=1), best)


def generate(run_dir, n: int, *, seed: int = 0, max_steps=None, act: bool = False,
             chunk_size: int = 512, temperature: float = 1.0, best_of: int = 1,
             pick_rule: str = "screen", device: str = "cpu"):
    """``(report, boards [n, A], valid [n], task)`` for an unconditional run.

    ``max_steps`` defaults to :func:`~gram_pyro.inference.default_steps` (4 x the trained N_sup).
    ``best_of`` K > 1: each board is chosen among K independent trajectories by their LPRM
    values (:func:`pick`), so validity rises as far as the LPRM can tell valid boards from
    invalid ones, at K times the compute; the exact checker is only used to measure.
    """
    task, cfg, net = load_run(run_dir, device=resolve_device(device))
    if not task.unconditional:
        raise UserError(f"{run_dir} is a conditional run; `gram generate` needs one trained "
                        "with --unconditional")
    model, _ = programs(net, cfg)
    max_steps = max_steps or default_steps(cfg)
    if cfg.model == "ar":  # one token-by-token pass writes a board: no steps to deepen
        max_steps = 1
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        if best_of == 1:
            traj = prior_rollouts(model, np.zeros((1, task.seq_len), np.int64), n,
                                  max_steps=max_steps, act=act, chunk_size=chunk_size,
                                  temperature=temperature)
            boards = traj.answers[0]
        else:  # n blank inputs x K trajectories each, under the same trajectories plate
            traj = prior_rollouts(model, np.zeros((n, task.seq_len), np.int64), best_of,
                                  max_steps=max_steps, act=act, chunk_size=chunk_size,
                                  temperature=temperature)
            boards = traj.answers[np.arange(n), pick(traj.values, pick_rule)]
    seconds = time.perf_counter() - start
    stats = metrics.generation_stats(task, boards)
    image = getattr(task, "image_shape", None) is not None
    if image:
        stats.update(image_quality(task, cfg, boards))
    report = {"task": task.name, "model": model_label(cfg),
              **stats, "mean_steps": float(traj.steps.mean()), "max_steps": max_steps,
              "temperature": temperature, "image": image,
              "best_of": best_of, "pick": pick_rule if best_of > 1 else None,
              "seconds": seconds,
              "boards_per_second": n / seconds}
    return report, boards, task.is_valid(boards), task


def image_quality(task, cfg, images: np.ndarray) -> dict:
    """The sample-quality metrics of :mod:`gram_pyro.images` for an image run: the classifier's
    judgement where the training images carry labels, the nearest-training-image distance
    always."""
    from gram_pyro.images import QualityJudge, nearest_hamming

    (train, labels), (test, _) = task.labelled("train", "test", seed=cfg.data_seed,
                                               **cfg.data_options)
    if labels is None:
        return {"nn_hamming_mean": float(nearest_hamming(images, train).mean())}
    return {"quality": QualityJudge(train, labels, test).report(images)}


def givens_of(task, board: np.ndarray) -> np.ndarray:
    """A complete board written as the conditional task's input (every cell a given)."""
    if task.name.startswith("nqueens"):
        return board.copy()
    if task.name.startswith("sudoku"):
        return board + 1
    raise UserError(f"the puzzle maker supports N-Queens and Sudoku, not {task.name}")


def make_puzzle(task_name: str, board: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove givens of a valid ``board`` while its solution stays unique (exact solver)."""
    task = get_task(task_name)
    puzzle = givens_of(task, np.asarray(board))
    for cell in rng.permutation(np.flatnonzero(puzzle)):
        trial = puzzle.copy()
        trial[cell] = 0
        if len(task.solve(trial, cap=2)) == 1:
            puzzle = trial
    return puzzle


def format_generation(r: dict) -> str:
    lines = [f"{r['model']} on {r['task']} (unconditional): {r['samples']} samples in "
             f"{r['seconds']:.1f}s ({r['boards_per_second']:.0f} boards/s), mean steps "
             f"{r['mean_steps']:.2f} of {r['max_steps']}" + (f", temperature {r['temperature']:g}"
                                        if r.get("temperature", 1.0) != 1.0 else "")
             + (f", LPRM {r['pick']} of {r['best_of']} trajectories per board"
                if r.get("best_of", 1) > 1 else ""),
             f"  unique fraction: {100 * r['unique_fraction']:.2f}%" if r.get("image") else
             f"  valid: {100 * r['valid']:.2f}%   unique fraction: {100 * r['unique_fraction']:.2f}%   "
             f"distinct valid boards: {r['distinct_valid']}"]
    if "coverage" in r:
        lines.append(f"  coverage of all {r['space_size']} valid boards: {100 * r['coverage']:.1f}%")
    if "quality" in r:
        q = r["quality"]
        lines.append(f"  image quality (a classifier fitted on the real training images): mean "
                     f"confidence {q['confidence']:.3f}, predicted-class entropy "
                     f"{q['class_entropy']:.3f} of {q['max_class_entropy']:.3f} nats, Inception "
                     f"analogue {q['inception_analogue']:.2f}, Frechet distance to the test images "
                     f"{q['frechet']:.2f}; nearest training image {q['nn_hamming_mean']:.1f} pixels "
                     f"away on average ({100 * q['copies']:.1f}% exact copies)")
    elif "nn_hamming_mean" in r:
        lines.append(f"  nearest training image {r['nn_hamming_mean']:.1f} pixels away on average")
    return "\n".join(lines)
