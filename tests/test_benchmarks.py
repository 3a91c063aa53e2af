"""Smoke tests: every benchmark script runs in its --quick mode and ends with its RESULT line, so
none rots. At the quick sizes the goals are not expected to be met (``met=no`` passes here); what
is checked is that the verdict is computed: wherever the goal is a numeric bound, ``met`` must
agree with the value. The goals themselves are judged by the full runs in docs/RESULTS.md."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ["pyro_overhead", "width_scaling", "memory_depth", "objectives", "quality_cpu", "loglik",
           "selection", "ddp", "beta", "generation", "throughput", "time_to_quality", "act", "recipe"]


def test_every_script_is_listed():
    assert sorted(p.stem for p in BENCH.glob("[!_]*.py")) == sorted(SCRIPTS)


def verdict_is_consistent(line: str) -> bool:
    """``met`` agrees with ``value`` wherever the goal is a plain numeric bound."""
    value, goal, met = re.fullmatch(r"RESULT \S+?=(\S+) goal=(\S+) met=(yes|no)", line).groups()
    bound = re.fullmatch(r"(>=|<=|<|>)(-?[\d.]+)", goal)
    if not bound or value in ("nan", "inf"):
        return True
    op, x = bound.group(1), float(bound.group(2))
    v = float(value)
    return {">=": v >= x, "<=": v <= x, "<": v < x, ">": v > x}[op] == (met == "yes")


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_smoke(name, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick"], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert results and r.stdout.strip().splitlines()[-1] == results[-1]
    for line in results:
        assert re.fullmatch(r"RESULT \S+=\S+ goal=\S+ met=(yes|no)", line), line
        assert verdict_is_consistent(line), line
    assert "docs/RESULTS.md section" in r.stdout  # --quick leaves the results file alone


def test_the_verdict_check_can_fail():
    assert verdict_is_consistent("RESULT gap=0.25 goal=>=0.2 met=yes")
    assert not verdict_is_consistent("RESULT gap=0.1 goal=>=0.2 met=yes")
    assert not verdict_is_consistent("RESULT ratio=1.2 goal=<=1.10 met=yes")


def test_gpu_script_rehearses_on_cpu_smoke(tmp_path):
    r = subprocess.run(["bash", str(BENCH / "gpu_paper.sh"), str(tmp_path / "out"), "--device", "cpu",
                        "--tiny"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] > 0 and 0 <= summary["test_sample_accuracy"] <= 1
    assert summary["peak_memory_mb"] > 0


def test_a_finished_run_is_reused_only_with_its_exact_config(tmp_path):
    """time_to_quality --reuse re-evaluates a finished run; a changed config or an unfinished run
    trains afresh."""
    sys.path.insert(0, str(BENCH))
    from _runs import finished_run, train_run

    from gram_pyro.config import make_config

    size = ["d_model=32", "n_layers=1", "eval_inputs=8", "steps=6"]
    run = train_run(tmp_path, "GRAM", task="nqueens-5", minutes=5, seed=0, overrides=size)
    cfg = make_config("cpu", size, task="nqueens-5", seed=0, max_minutes=5)
    assert finished_run(run, cfg)
    assert not finished_run(run, make_config("cpu", size, task="nqueens-5", seed=1, max_minutes=5))
    assert not finished_run(run, make_config("cpu", [*size[:-1], "steps=12"], task="nqueens-5",
                                             seed=0, max_minutes=5))  # not reached: train on
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    assert train_run(tmp_path, "GRAM", task="nqueens-5", minutes=5, seed=0, overrides=size,
                     reuse=True) == run
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp  # not trained again
