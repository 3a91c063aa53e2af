"""Unconditional generation and the puzzle maker."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gram_pyro.generate import make_puzzle
from gram_pyro.tasks import get_task
from gram_pyro.tasks.nqueens import columns_to_board, solutions


@pytest.mark.parametrize("name", ["sudoku-4", "nqueens-8"])
def test_puzzle_maker_outputs_have_exactly_one_solution(name):
    task = get_task(name)
    boards = task.all_objects() if name.startswith("nqueens") else get_task(name, True).all_objects()
    rng = np.random.default_rng(0)
    for board in boards[rng.choice(len(boards), 5, replace=False)]:
        puzzle = make_puzzle(name, board, rng)
        sols = task.solve(puzzle)
        assert len(sols) == 1 and np.array_equal(sols[0], board)
        # minimal: removing any remaining given breaks uniqueness
        for cell in np.flatnonzero(puzzle):
            trial = puzzle.copy()
            trial[cell] = 0
            assert len(task.solve(trial, cap=2)) == 2


def test_puzzle_maker_on_sudoku_9():
    from gram_pyro.tasks.sudoku_solver import random_grid

    task = get_task("sudoku-9")
    board = np.array(random_grid(9, np.random.default_rng(3))) - 1
    puzzle = make_puzzle("sudoku-9", board, np.random.default_rng(3))
    sols = task.solve(puzzle, cap=2)
    assert len(sols) == 1 and np.array_equal(sols[0], board)
    assert (puzzle > 0).sum() < 40


def test_generate_cli_on_a_tiny_unconditional_run(tmp_path):
    run = tmp_path / "u"
    base = [sys.executable, "-m", "gram_pyro"]
    sets = [a for kv in ("d_model=32", "n_layers=1", "k_low=1", "n_supervision=2", "batch_size=8",
                         "eval_inputs=1", "eval_samples=4", "eval_interval=4")
            for a in ("--set", kv)]
    r = subprocess.run([*base, "train", "--task", "nqueens-6", "--unconditional", "--out", str(run),
                        "--steps", "4", "--quiet", *sets], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*base, "generate", str(run), "-n", "50", "--json", "--dump",
                        str(tmp_path / "g.jsonl")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 50 == report["samples"]
    assert report["max_steps"] == report["mean_steps"] == 4 * 2  # inference.default_steps: 4 x the trained N_sup
    task = get_task("nqueens-6", unconditional=True)
    valid = [task.is_valid(task.parse_answer(row["board"])[None])[0] for row in rows]
    assert [row["valid"] for row in rows] == valid
    assert np.isclose(np.mean(valid), report["valid"])
    assert report["space_size"] == len(solutions(6)) == 4
    assert (tmp_path / "u" / "generated.png").exists()
    r = subprocess.run([*base, "generate", str(run), "-n", "8", "--json", "--temperature", "0.5",
                        "--no-act", "--max-steps", "3"], capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    assert report["temperature"] == 0.5 and report["mean_steps"] == 3
    r = subprocess.run([*base, "generate", str(run), "-n", "4", "--json", "--best-of", "3",
                        "--pick", "best"], capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    assert report["best_of"] == 3 and report["pick"] == "best" and report["samples"] == 4
    r = subprocess.run([*base, "generate", str(run), "--pick", "first"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*base, "generate", str(run), "--temperature", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "at least 0.001" in r.stderr and "Traceback" not in r.stderr
    # a conditional run is refused with one line
    r = subprocess.run([*base, "generate", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_columns_helper_matches_all_objects():
    assert np.array_equal(columns_to_board(solutions(5), 5), get_task("nqueens-5").all_objects())
