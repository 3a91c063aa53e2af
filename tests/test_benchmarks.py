"""Every benchmark script runs in its --quick mode and ends with its RESULT line, so none rots."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ["pyro_overhead", "width_scaling", "memory_depth", "objectives", "quality_cpu", "loglik",
           "selection", "ddp", "beta", "generation"]


def test_every_script_is_listed():
    assert sorted(p.stem for p in BENCH.glob("[!_]*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run(name, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick"], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT \S+=\S+ goal=\S+ met=(yes|no)", last), last
    assert "docs/RESULTS.md section" in r.stdout  # --quick leaves the results file alone


def test_gpu_script_rehearses_on_cpu(tmp_path):
    r = subprocess.run(["bash", str(BENCH / "gpu_paper.sh"), str(tmp_path / "out"), "--device", "cpu",
                        "--tiny"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] > 0 and 0 <= summary["test_sample_accuracy"] <= 1
    assert summary["peak_memory_mb"] > 0
