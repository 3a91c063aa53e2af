"""Smoke tests: every benchmark script runs in its --quick mode and ends with its RESULT line, so
none rots. At the quick sizes the goals are not expected to be met (``met=no`` passes here); what
is checked is that the verdict is computed: wherever the goal is a numeric bound, ``met`` must
agree with the value. The goals themselves are judged by the full runs in docs/RESULTS.md."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ["pyro_overhead", "width_scaling", "memory_depth", "objectives", "quality_cpu", "loglik",
           "selection", "ddp", "beta", "generation", "throughput", "time_to_quality", "act",
           "recipe", "sudoku_width_depth", "images", "ablations", "arc", "coverage_ceiling",
           "guide_geometry", "eval_depth", "khat_gap"]
CHECKED = {"sudoku_width_depth"}  # scripts whose --quick output a test of its own checks (below)


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


def run_quick(name: str, cwd: Path, *args: str) -> str:
    """Run ``benchmarks/NAME.py --quick ARGS``, check what every script must print (RESULT lines
    last, each verdict consistent, the results file left alone) and return its stdout."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", *args],
                       capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert results and r.stdout.strip().splitlines()[-1] == results[-1]
    for line in results:
        assert re.fullmatch(r"RESULT \S+=\S+ goal=\S+ met=(yes|no)", line), line
        assert verdict_is_consistent(line), line
    assert "docs/RESULTS.md section" in r.stdout  # --quick leaves the results file alone
    return r.stdout


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s not in CHECKED])
def test_quick_run_smoke(name, tmp_path):
    run_quick(name, tmp_path)


def test_width_depth_quick_numbers(tmp_path):
    """sudoku_width_depth --quick (tiny sudoku-4 GRAM run and baseline): every (N, depth) cell of
    every method, accuracies in [0, 1], pass@N an upper bound on every method that never falls
    with N, one trajectory's methods all equal, and a selection table that agrees with the grid
    and whose paired intervals contain their differences."""
    stdout = run_quick("sudoku_width_depth", tmp_path, "--json", str(tmp_path / "wd.json"))
    r = json.loads((tmp_path / "wd.json").read_text())
    ns, depths = r["samples_grid"], r["depths"]
    assert ns == [1, 2, 4, 8] and depths == [1, 2, 4, 8] and r["trained_depth"] == 4
    assert r["act"] is False and r["width"] == 8 and r["inputs"] == 12
    grid = {k: np.array(v) for k, v in r["grid"].items()}
    assert set(grid) == {"first", "vote", "lprm", "weighted", "pass@N"}
    for k, g in grid.items():
        assert g.shape == (len(ns), len(depths)), k
        assert ((g >= 0) & (g <= 1)).all(), k
        assert (grid["pass@N"] >= g).all(), k  # the chosen answer is one of the N
    assert (np.diff(grid["pass@N"], axis=0) >= 0).all()
    assert (grid["first"] == grid["first"][0]).all()  # trajectory 1, whatever N
    for k in ("vote", "lprm", "weighted", "pass@N"):  # N = 1: nothing to choose from
        assert np.allclose(grid[k][0], grid["first"][0]), k

    sel = r["selection"]
    i, j = ns.index(sel["n"]), depths.index(sel["depth"])
    assert set(sel["accuracy"]) == {"first", "vote", "lprm", "weighted", "smc"}
    for k in ("first", "vote", "lprm", "weighted"):
        assert sel["accuracy"][k] == pytest.approx(grid[k][i, j]), k
    assert sel["pass_at_n"] == pytest.approx(grid["pass@N"][i, j])
    assert 0 <= sel["accuracy"]["smc"] <= 1
    assert len(sel["pairs"]) == 10  # every pair of the five methods
    for p in sel["pairs"]:
        acc = sel["accuracy"]
        assert p["diff"] == pytest.approx(acc[p["method"]] - acc[p["versus"]])
        assert p["lo"] - 1e-9 <= p["diff"] <= p["hi"] + 1e-9
    base = r["baseline_by_depth"]
    assert len(base) == len(depths) and all(0 <= a <= 1 for a in base)
    auc = r["lprm_within_auc"]
    assert auc != auc or 0 <= auc <= 1  # NaN when no input has both outcomes
    assert Path(r["figure"]).stat().st_size > 5000
    assert "ACT is off everywhere" in stdout and "has the highest accuracy" in stdout
    assert re.search(r"^RESULT \w+_minus_single_at_N8=", stdout, re.M)


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


def test_a_deterministic_run_is_reused_whatever_the_noise_scale_it_never_reads(tmp_path):
    """The baseline trains bit for bit the same at any init_sigma or sigma_floor, so a finished
    one is reused when only those differ (a task's init_sigma default changed); GRAM is not."""
    sys.path.insert(0, str(BENCH))
    from _runs import finished_run, train_run

    from gram_pyro.checkpoint import load_checkpoint
    from gram_pyro.config import make_config

    size = ["d_model=32", "n_layers=1", "eval_inputs=8", "steps=4"]
    runs = {sigma: train_run(tmp_path / str(sigma), "det", task="nqueens-5", minutes=5, seed=0,
                             overrides=[*size, f"init_sigma={sigma}"], deterministic=True)
            for sigma in (1.0, 0.3)}
    weights = [load_checkpoint(r)["model"] for r in runs.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if "sigma" not in k)
    other = make_config("cpu", [*size, "init_sigma=0.3", "sigma_floor=0.02"], task="nqueens-5",
                        seed=0, max_minutes=5, deterministic=True)
    assert finished_run(runs[1.0], other)
    gram = train_run(tmp_path, "GRAM", task="nqueens-5", minutes=5, seed=0,
                     overrides=[*size, "init_sigma=1.0"])
    assert not finished_run(gram, make_config("cpu", [*size, "init_sigma=0.3"], task="nqueens-5",
                                              seed=0, max_minutes=5))


def test_the_commit_stamp_counts_code_changes_but_not_the_benchmarks_own_output(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import _report
    finally:
        sys.path.remove(str(BENCH))
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    for name in ("code.py", "docs/RESULTS.md", "docs/figures/f.png"):
        (tmp_path / name).write_text("v1")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(_report, "ROOT", tmp_path)
    rev = _report.commit()
    assert re.fullmatch(r"[0-9a-f]{7,}", rev)
    (tmp_path / "docs" / "RESULTS.md").write_text("v2")  # a section just written
    (tmp_path / "docs" / "figures" / "f.png").write_text("v2")  # its figure
    assert _report.commit() == rev
    (tmp_path / "code.py").write_text("v2")
    assert _report.commit() == rev + "+uncommitted changes"


def test_the_chance_that_a_measurement_reads_the_khat_goal_is_the_binomial_tail():
    sys.path.insert(0, str(BENCH))
    try:
        from khat_gap import chance_to_read_goal
    finally:
        sys.path.remove(str(BENCH))
    p = 0.85
    assert chance_to_read_goal(p, 10) == pytest.approx(p ** 10 + 10 * p ** 9 * (1 - p))  # 9 of 10
    assert chance_to_read_goal(1.0, 43) == pytest.approx(1.0)
    assert chance_to_read_goal(0.0, 43) == pytest.approx(0.0)
    # against simulated measurements: 43 examples need 39 (38.7 rounds up), 50 need 45
    gen = np.random.default_rng(0)
    for n, need in ((43, 39), (50, 45)):
        draws = gen.binomial(n, 0.9, size=200_000)
        assert chance_to_read_goal(0.9, n) == pytest.approx((draws >= need).mean(), abs=0.005)


def test_the_khat_share_pools_every_reading_of_every_draw():
    sys.path.insert(0, str(BENCH))
    try:
        from loglik import flagged_text, gap_and_creep, pooled_share
    finally:
        sys.path.remove(str(BENCH))
    # 3 of 4 pairs under the line in one draw, 1 of 3 measured in the other (NaN left out)
    share, shares, readings = pooled_share([[0.1, 0.7, 0.71, 0.2], [0.9, float("nan"), 1.5, 0.69]])
    assert shares == pytest.approx([0.75, 1 / 3])
    assert readings == 7
    assert share == pytest.approx(4 / 7)  # not the mean of the two shares (0.54)
    with pytest.raises(ValueError):
        pooled_share([[float("nan")]])
    r = {"elbo_nats": -8.0, "iwae_by_k": [{"k": 100, "iwae_nats": -6.3}, {"k": 1000, "iwae_nats": -6.2}]}
    assert gap_and_creep(r, 1000) == pytest.approx((1.8, 0.1))
    # the flagged readings' pairs against the rest: pair 1 in both draws, pair 2 in one
    draws = [{"particles": 1000, "khat": [0.1, 0.9, 0.8], "iwae_per_example": [0.0, -3.0, -2.0]},
             {"particles": 1000, "khat": [0.2, 1.2, 0.3], "iwae_per_example": [-0.1, -3.2, -2.2]}]
    text = flagged_text(draws)
    assert "IWAE_1000 averages -2.73 nats against -0.77 for the other readings" in text
    assert "(3 of 6 readings; flagged in every draw: pairs 1)" in text
    assert flagged_text([dict(d, khat=[0.1, 0.2, 0.3]) for d in draws]) == ""
    answered = [dict(d, completions_per_example=[1, 18, 3]) for d in draws]
    assert ("by the number of valid completions of the pair's input: 1: 2 of 2 (100%), 2-3: 1 of 2 "
            "(50%), 16-31: 0 of 2 (0%).") in flagged_text(answered)
