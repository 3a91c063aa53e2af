"""The ``gram`` command as a real subprocess: bad input gives one line and exit status 2."""

import subprocess
import sys

import pytest


def gram(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gram_pyro", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gram: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_tasks_lists_every_family():
    r = gram("tasks")
    assert r.returncode == 0, r.stderr
    for name in ("nqueens-8", "nqueens-12", "sudoku-4", "sudoku-9", "coloring-8", "coloring-10"):
        assert name in r.stdout


def test_data_prints_statistics():
    r = gram("data", "--task", "nqueens-6")
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "test" in r.stdout


@pytest.mark.parametrize("args,fragment", [
    (["tasks", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
    (["data", "--task", "chess-8"], "unknown task 'chess-8'"),
    (["data", "--task", "nqueens-99"], "no size 99"),
    (["data", "--task", "nqueens-8", "--seed", "-1"], "must be at least 0"),
    (["data", "--task", "nqueens-8", "--seed", "abc"], "expected a whole number"),
    (["data"], "--task"),
])
def test_bad_arguments(args, fragment):
    assert_one_line_error(gram(*args), fragment)
