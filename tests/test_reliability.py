"""Reliability: exact resume after SIGKILL, safe checkpoint loading, hostile CLI input, fuzzing."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gram_pyro.checkpoint import load_checkpoint
from gram_pyro.cli import main

TINY = [a for kv in ("d_model=32", "n_layers=1", "k_low=1", "n_supervision=2", "batch_size=8",
                     "eval_inputs=4", "eval_samples=2", "eval_interval=10", "warmup_steps=2")
        for a in ("--set", kv)]


def gram(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gram_pyro", *args], capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    r = gram("train", "--task", "nqueens-5", "--out", str(out), "--steps", "2", "--quiet", *TINY)
    assert r.returncode == 0, r.stderr
    return out


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    steps = ["--steps", "60"]
    whole = tmp_path / "whole"
    r = gram("train", "--task", "nqueens-5", "--out", str(whole), "--quiet", *steps, *TINY)
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gram_pyro", "train", "--task", "nqueens-5",
                             "--out", str(killed), "--quiet", *steps, *TINY,
                             "--set", "checkpoint_minutes=0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and step < 10:
        time.sleep(0.2)
        try:
            step = int(load_checkpoint(killed)["step"])
        except Exception:
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= step < 60, step  # killed in the middle, with a checkpoint on disk
    r = gram("train", "--task", "nqueens-5", "--out", str(killed), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(whole), load_checkpoint(killed)
    assert a["step"] == b["step"] == 60
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('GRAM_EXPLOIT_MARK', '/tmp/gram-exploit')}",))


def test_malicious_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    mark = tmp_path / "pwned"
    os.environ["GRAM_EXPLOIT_MARK"] = str(mark)
    try:
        run = tmp_path / "evil"
        run.mkdir()
        with open(run / "checkpoint.pt", "wb") as f:
            pickle.dump({"config": "{}", "model": _Exploit()}, f)
        r = gram("evaluate", str(run))
    finally:
        del os.environ["GRAM_EXPLOIT_MARK"]
    assert r.returncode == 2 and "refused for safety" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not mark.exists()


@pytest.mark.parametrize("make_args,fragment", [
    (lambda run, tmp: ["train", "--task", "nqueens-5", "--out", str(tmp / "f" / "sub")], "cannot write"),
    (lambda run, tmp: ["train", "--task", "nqueens-99", "--out", str(tmp / "x")], "no size 99"),
    (lambda run, tmp: ["sample", str(run), "--puzzle", "." * 25, "-n", "0"], "must be at least 1"),
    (lambda run, tmp: ["evaluate", str(run), "--samples", "-5"], "must be at least 1"),
    (lambda run, tmp: ["evaluate", str(tmp / "missing")], "does not exist"),
    (lambda run, tmp: ["evaluate", str(run), "--frobnicate"], "unrecognized arguments"),
    (lambda run, tmp: ["generate", str(run), "-n", str(10 ** 9)], "at most 1,000,000"),
    (lambda run, tmp: ["loglik", str(run), "--particles", "0"], "must be at least 1"),
    (lambda run, tmp: ["train", "--task", "nqueens-5", "--out", str(tmp / "y"), "--on-nan", "maybe"],
     "invalid choice"),
])
def test_hostile_cli_input(tiny_run, tmp_path, make_args, fragment):
    (tmp_path / "f").write_text("a file where a folder should be")
    r = gram(*make_args(tiny_run, tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert fragment in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_fuzz_sample_puzzle_never_tracebacks(tiny_run, capsys, text):
    code = main(["sample", str(tiny_run), "--puzzle", text, "-n", "2"])
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("gram: error:") and len(err.strip().splitlines()) == 1
