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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = gram("train", "--task", "nqueens-5", "--out", str(out), "--steps", "4", "--quiet",
             *[a for kv in ("d_model=32", "n_layers=1", "k_low=1", "n_supervision=2",
                            "batch_size=8", "eval_inputs=4", "eval_samples=2", "eval_interval=4")
               for a in ("--set", kv)])
    assert r.returncode == 0, r.stderr
    return out


def test_evaluate_and_sample_run(tiny_run):
    r = gram("evaluate", str(tiny_run), "--samples", "3", "--limit", "5", "--json")
    assert r.returncode == 0, r.stderr
    import json
    report = json.loads(r.stdout)
    assert report["inputs"] == 5 and report["samples"] == 3
    # no ACT and twice the trained N_sup (2) unless asked: inference.default_steps
    assert report["act"] is False and report["mean_steps"] == report["max_steps"] == 4
    assert report["trained_steps"] == 2 and "of 4 (trained with 2)" in gram(
        "evaluate", str(tiny_run), "--samples", "2", "--limit", "2").stdout
    r = gram("evaluate", str(tiny_run), "--samples", "3", "--limit", "5", "--json", "--act")
    report = json.loads(r.stdout)
    assert report["act"] is True and 1 <= report["mean_steps"] <= 4 and report["max_steps"] == 4
    r = gram("evaluate", str(tiny_run), "--samples", "3", "--limit", "5", "--json", "--no-act",
             "--max-steps", "3")
    report = json.loads(r.stdout)
    assert report["act"] is False and report["mean_steps"] == 3  # the whole budget, always
    r = gram("sample", str(tiny_run), "--puzzle", "Q" + "." * 24, "-n", "4")
    assert r.returncode == 0, r.stderr
    assert "4 samples" in r.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--puzzle", "Q" * 3], "needs 25 characters"),
    (["--puzzle", "QQ" + "." * 23], "contradict"),
    (["--puzzle", "x" * 25], "illegal character"),
    (["--puzzle", "." * 25, "-n", "-3"], "must be at least 1"),
    (["--puzzle", "." * 25, "-n", "10000000"], "at most 100,000"),
])
def test_sample_bad_input(tiny_run, args, fragment):
    assert_one_line_error(gram("sample", str(tiny_run), *args), fragment)


def test_fit_critic_cli(tiny_run, tmp_path):
    import json

    assert (tiny_run / "critic.json").exists()  # training ended with a fit
    r = gram("fit-critic", str(tiny_run), "--steps", "3", "--inputs", "4", "--trajectories", "2",
             "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["steps"] == 3 and report["inputs"] == 4 and report["trajectories"] == 2
    assert json.loads((tiny_run / "critic.json").read_text())["steps"] == 3
    r = gram("fit-critic", str(tiny_run), "--steps", "2", "--inputs", "4", "--quiet")
    assert r.returncode == 0 and "AUC within input" in r.stdout, r.stderr
    assert_one_line_error(gram("fit-critic", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(gram("fit-critic", str(tiny_run), "--steps", "0"), "must be at least 1")
    assert_one_line_error(gram("fit-critic", str(tiny_run), "--minutes", "-1"), "above 0")


def test_missing_and_corrupt_runs(tmp_path, tiny_run):
    assert_one_line_error(gram("evaluate", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(gram("evaluate", str(tmp_path)), "no checkpoint.pt")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes((tiny_run / "checkpoint.pt").read_bytes()[:500])
    assert_one_line_error(gram("evaluate", str(bad)), "cannot load checkpoint")


def test_train_refuses_to_overwrite_and_bad_overrides(tiny_run, tmp_path):
    assert_one_line_error(gram("train", "--task", "nqueens-5", "--out", str(tiny_run)), "--resume")
    assert_one_line_error(gram("train", "--task", "nqueens-5", "--out", str(tmp_path / "x"),
                               "--set", "nonsense=1"), "--set takes key=value")
    assert_one_line_error(gram("train", "--task", "nqueens-5", "--out", str(tmp_path / "x"),
                               "--set", "d_model=big"), "d_model takes a int")
    assert_one_line_error(gram("train", "--task", "nqueens-5", "--out", str(tmp_path / "x"),
                               "--set", "objective=magic"), "objective must be one of")


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command, with a tiny budget: trains both models, prints the table."""
    r = gram("demo", "--out", str(tmp_path / "demo"), "--minutes", "0.02", "--limit", "5",
             "--samples", "3")
    assert r.returncode == 0, r.stderr
    assert "GRAM" in r.stdout and "deterministic" in r.stdout and "cov@3 micro" in r.stdout
    r = gram("demo", "--out", str(tmp_path / "demo"), "--limit", "5", "--samples", "3")
    assert r.returncode == 0 and "reusing the trained run" in r.stdout


@pytest.mark.parametrize("command, default", [("evaluate", "--no-act"), ("sample", "--no-act"),
                                              ("generate", "--no-act")])
def test_help_states_each_default_it_uses(command, default):
    r = gram(command, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert f"(default: {default})" in text and "{'" not in text  # no unformatted f-string


@pytest.mark.parametrize("command, unconditional", [("evaluate", False), ("sample", False),
                                                    ("generate", True)])
def test_help_states_the_depth_the_library_defaults_to(command, unconditional):
    """The CLI keeps torch out of --help, so it writes the depth factor as text: it must be the
    one gram_pyro.inference.default_steps uses."""
    from types import SimpleNamespace

    from gram_pyro.config import make_config
    from gram_pyro.inference import default_steps

    factor = default_steps(SimpleNamespace(unconditional=unconditional, n_supervision=1))
    cpu = default_steps(make_config("cpu", ["unconditional=true"] if unconditional else [],
                                    task="sudoku-4"))
    text = " ".join(gram(command, "--help").stdout.split())
    assert f"(default: {factor} x the trained N_sup, {cpu} at the cpu preset;" in text
