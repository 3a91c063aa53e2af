"""Hostile input, round two (issue #21): every value validated, checkpoint contents distrusted,
no gap in the atomic save, NaN handled end to end, one writer per run folder, a distrusted cache.

The config cases are generated from the :class:`~gram_pyro.config.Config` dataclass, so a new
field is covered as soon as it exists. Each case asserts the same contract: a one-line
``gram: error:`` (exit 2) or a clean refusal, never a traceback, never exit 0 on input that
cannot be honoured.
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gram_pyro.checkpoint import CHECKPOINT, PREVIOUS, RunLock, atomic_save, load_checkpoint
from gram_pyro.cli import main
from gram_pyro.config import CHOICES, RANGES, TASK_INIT_SIGMA, Config, make_config
from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task
from gram_pyro.train import Trainer
from tests.helpers import tiny_config

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
TINY_CLI = [a for kv in ("d_model=32", "n_layers=1", "k_low=1", "n_supervision=2", "batch_size=8",
                         "eval_inputs=4", "eval_samples=2", "eval_interval=10", "warmup_steps=2",
                         "critic_fit_steps=0")
            for a in ("--set", kv)]


def kind_of(f) -> type:
    return type(f.default) if f.default is not dataclasses.MISSING else dict


def refused(capsys, argv, fragment=""):
    """``gram argv`` ends in exit 2 with one line ``gram: error: ...`` containing ``fragment``,
    and no traceback (progress bars and warnings may come before it)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    errors = [line for line in err.splitlines() if line.startswith("gram: error:")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# -- A. config values: generated from the dataclass ---------------------------------------------

def bad_values(f) -> list[str]:
    """Text values ``--set NAME=...`` must refuse, by the field's type and range."""
    kind = kind_of(f)
    if kind is bool:
        return ["maybe", "2", ""]
    if kind is str:
        return ["bogus-value", ""]
    if kind is dict:
        return ["x"]
    lo, hi, open_lo = RANGES[f.name]
    common = ["nan", "inf", "-inf", "-1", "abc", "", str(hi * 10 + 1)]
    if kind is int:
        return common + ["1.5"] + ([str(lo - 1)] if lo > 0 else [])
    if kind is tuple:
        return ["nan", "a,b", "-1", "inf", str(hi * 10 + 1)]
    return common + ([f"{lo:g}"] if open_lo else [])


CASES = [(name, v) for name, f in FIELDS.items() for v in bad_values(f)]


def test_every_field_has_a_range_or_its_choices():
    for name, f in FIELDS.items():
        kind = kind_of(f)
        if kind in (int, float, tuple):
            assert name in RANGES, f"numeric field {name} has no entry in config.RANGES"
        elif kind is str:
            assert name in CHOICES or name in ("task", "device"), f"text field {name} is unchecked"
    assert len(CASES) > 300  # the generated suite's size, quoted in the closing note


@pytest.mark.parametrize("name,value", CASES)
def test_set_refuses_every_bad_value_of_every_field(name, value):
    with pytest.raises(UserError):
        make_config("cpu", [f"{name}={value}"])


@pytest.mark.parametrize("item", ["n_heads=0", "init_sigma=0", "expansion=-1", "seed=-1",
                                  "device=tpu", "betas=2,3", "lr=nan", "lr=inf",
                                  "weight_decay=-1", "grad_clip=-1", "grad_clip=nan",
                                  "seed=4294967296", "block=attention"])
def test_set_examples_from_the_issue_are_one_line_errors(capsys, tmp_path, item):
    # block=attention alone is valid; with n_heads=0 it used to divide by zero
    extra = ["--set", "n_heads=0"] if item == "block=attention" else []
    refused(capsys, ["train", "--task", "nqueens-5", "--out", str(tmp_path / "r"), "--set", item,
                     *extra])
    assert not (tmp_path / "r" / "config.json").exists()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), st.text(max_size=12) | st.floats().map(repr)
       | st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str))
def test_set_never_tracebacks(name, text):
    """Any text for any field: a UserError or a config that passes its own validation again
    and survives the JSON round trip a checkpoint puts it through."""
    try:
        cfg = make_config("cpu", [f"{name}={text}"])
    except UserError:
        return
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("name", ["nqueens-²", "nqueens-٣", "nqueens-8 ", "nqueens--8", "nqueens-0008"])
def test_task_names_take_ascii_digits_only(capsys, name):
    refused(capsys, ["data", "--task", name])


@pytest.mark.parametrize("argv,fragment", [
    (["train", "--task", "nqueens-5", "--out", "{tmp}/a", "--max-minutes", "inf"], "at most"),
    (["train", "--task", "nqueens-5", "--out", "{tmp}/a", "--max-minutes", "nan"], "must be a number"),
    (["train", "--task", "nqueens-5", "--out", "{tmp}/a", "--max-minutes", "-1"], "above 0"),
    (["train", "--task", "nqueens-5", "--out", "{tmp}/a", "--seed", str(2 ** 32)], "at most"),
    (["train", "--task", "nqueens-5", "--out", "{tmp}/a", "--steps", "0"], "at least 1"),
    (["demo", "--out", "{tmp}/d", "--minutes", "inf"], "at most"),
    (["demo", "--out", "{tmp}/d", "--minutes", "nan"], "must be a number"),
    (["demo", "--out", "{tmp}/d", "--minutes", "0"], "above 0"),
    (["evaluate", "{run}", "--seed", str(2 ** 32)], "at most"),
    (["evaluate", "{run}", "--samples", "10000000000"], "at most 10,000"),
    (["evaluate", "{run}", "--max-steps", "100000"], "at most 1,024"),
    (["sample", "{run}", "--puzzle", "." * 25, "--seed", str(2 ** 40)], "at most"),
    (["sample", "{run}", "--puzzle", "." * 25, "-n", "1000000000"], "at most 100,000"),
    (["generate", "{run}", "--seed", str(2 ** 32)], "at most"),
    (["generate", "{run}", "--temperature", "1e-300"], "at least 0.001"),
    (["generate", "{run}", "--temperature", "nan"], "must be a number"),
    (["generate", "{run}", "--best-of", "100000"], "at most"),
    (["loglik", "{run}", "--seed", str(2 ** 32)], "at most"),
    (["loglik", "{run}", "--particles", "1000000"], "at most 100,000"),
    (["fit-critic", "{run}", "--seed", str(2 ** 32)], "at most"),
    (["fit-critic", "{run}", "--minutes", "inf"], "at most"),
    (["fit-critic", "{run}", "--trajectories", "100000"], "at most"),
    (["data", "--task", "nqueens-5", "--seed", str(2 ** 32)], "at most"),
])
def test_cli_numbers_are_bounded(capsys, tmp_path, tiny_run, argv, fragment):
    argv = [a.format(tmp=tmp_path, run=tiny_run) for a in argv]
    refused(capsys, argv, fragment)


@pytest.mark.parametrize("task,option,fragment", [
    ("nqueens-5", "remove=", "needs at least one value"),
    ("nqueens-5", "max_inputs=-5", "must lie in"),
    ("nqueens-5", "test_fraction=nan", "must be finite"),
    ("nqueens-5", "test_fraction=2", "[0, 1)"),
    ("nqueens-5", "test_fraction=0", "test split empty"),
    ("nqueens-5", "remove=1.5", "list of whole numbers"),
    ("coloring-5", "graphs=0", "empty"),
    ("coloring-5", "p=1", "(0, 1)"),
    ("coloring-5", "graphs=1e12", "takes a whole number"),
    ("sudoku-4", "per_grid=-3", "must lie in"),
    ("sudoku-4", "max_givens=99", "max_givens"),
    ("arc-1-10", "views=0", "views must be at least 1"),
    ("arc-1-10", "eval_tasks=-1", "must lie in"),
    ("arc-1-10", "training_set=maybe", "takes a bool"),
    ("arc-1-10", "path=/no/such/folder", "no ARC data folder"),
])
def test_data_options_are_checked_and_degenerate_splits_refused(capsys, task, option, fragment):
    refused(capsys, ["data", "--task", task, "--data", option], fragment)


def test_unconditional_sizes_are_checked(capsys):
    refused(capsys, ["data", "--task", "sudoku-9", "--unconditional", "--data", "n_train=-1"],
            "must lie in")


# -- runs shared by the tests below -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run with an empty validation split (val_fraction=0)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    cfg = tiny_config(extra=["steps=2", "critic_fit_steps=0"], data_options={"val_fraction": 0.0})
    Trainer(cfg, out, progress=False).fit()
    return out


def copy_run(src, dst, **changes):
    """``dst``: the checkpoint of ``src`` with entries replaced (``None`` deletes one)."""
    ckpt = load_checkpoint(src)
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key, None)
        else:
            ckpt[key] = value
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst / CHECKPOINT)
    return dst


def test_empty_split_is_a_clean_error(capsys, tiny_run):
    refused(capsys, ["evaluate", str(tiny_run), "--split", "val"], "val split")
    refused(capsys, ["loglik", str(tiny_run), "--split", "val"], "val split")


def test_loglik_json_is_strict_json(capsys, tiny_run):
    assert main(["loglik", str(tiny_run), "--limit", "1", "--particles", "3", "--json"]) == 0
    out = capsys.readouterr().out

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(out, parse_constant=no_constants)
    assert report["examples"] == 1 and report["iwae_sem"] is None


# -- B. checkpoint contents ---------------------------------------------------------------------

def bad_stored_value(f):
    """A value of the wrong type or out of range for field ``f``, as JSON."""
    kind = kind_of(f)
    if kind is str or kind is bool:
        return 12345
    if kind is dict:
        return "x"
    if kind is tuple:
        return ["x"]
    return -1 if RANGES[f.name][0] >= 0 else "x"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_invalid_stored_config_is_refused(capsys, tiny_run, tmp_path, name):
    stored = json.loads(load_checkpoint(tiny_run)["config"])
    stored[name] = bad_stored_value(FIELDS[name])
    run = copy_run(tiny_run, tmp_path / "r", config=json.dumps(stored))
    refused(capsys, ["evaluate", str(run)], "invalid config")


def nan_weights(run):
    weights = dict(load_checkpoint(run)["model"])
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))
    return weights


BAD_ENTRIES = {
    "model is text": dict(model="weights"),
    "model holds text": dict(model={"a": "b"}),
    "ema is a number": dict(ema=5),
    "step is text": dict(step="ten"),
    "step is negative": dict(step=-3),
    "elapsed is nan": dict(elapsed=float("nan")),
    "critic_fit is text": dict(critic_fit="x"),
    "config is a number": dict(config=5),
    "config is a list": dict(config="[1, 2]"),
    "no model": dict(model=None),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES) + ["nan weights"])
@pytest.mark.parametrize("command", ["evaluate", "sample", "generate", "loglik", "fit-critic",
                                     "resume"])
def test_bad_checkpoint_contents_are_refused_by_every_command(capsys, tiny_run, tmp_path, case,
                                                              command):
    changes = BAD_ENTRIES.get(case) or dict(model=nan_weights(tiny_run), ema=None)
    run = str(copy_run(tiny_run, tmp_path / "r", **changes))
    argv = {"evaluate": ["evaluate", run], "sample": ["sample", run, "--puzzle", "." * 25],
            "generate": ["generate", run], "loglik": ["loglik", run], "fit-critic": ["fit-critic", run],
            "resume": ["train", "--out", run, "--resume", "--quiet"]}[command]
    refused(capsys, argv)


def test_edited_config_json_is_reported(capsys, tiny_run):
    record = tiny_run / "config.json"
    original = record.read_text()
    try:
        record.write_text(original.replace('"d_model": 32', '"d_model": 64'))
        assert main(["evaluate", str(tiny_run), "--limit", "2", "--samples", "2"]) == 0
        err = capsys.readouterr().err
        assert "config.json" in err and "never read back" in err
    finally:
        record.write_text(original)


def test_torn_metrics_line_does_not_stop_a_resume(tmp_path, capsys):
    out = tmp_path / "r"
    Trainer(tiny_config(extra=["steps=2", "critic_fit_steps=0"]), out, progress=False).fit()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.2')  # a write cut off by a kill
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--quiet"]) == 0
    assert "unreadable line" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4


# -- C. the atomic save -------------------------------------------------------------------------

KILLER = r"""
import os, signal, sys
import gram_pyro.checkpoint as ck
import gram_pyro.train as tr

save_no, op_no = int(os.environ["KILL_SAVE"]), int(os.environ["KILL_OP"])
state = {"save": 0, "op": 0, "inside": False}
real = {name: getattr(os, name) for name in ("fsync", "link", "replace")}

def counted(name):
    def call(*args, **kwargs):
        if state["inside"] and state["save"] == save_no:
            state["op"] += 1
            if state["op"] == op_no:
                os.kill(os.getpid(), signal.SIGKILL)
        return real[name](*args, **kwargs)
    return call

for name in real:
    setattr(os, name, counted(name))
original = ck.atomic_save

def save(obj, path):
    state["save"] += 1
    state["inside"] = True
    try:
        return original(obj, path)
    finally:
        state["inside"] = False

tr.atomic_save = save
from gram_pyro.cli import main
sys.exit(main(sys.argv[1:]))
"""

KILL_ARGS = ["train", "--task", "nqueens-5", "--steps", "12", "--quiet", *TINY_CLI,
             "--set", "checkpoint_minutes=0"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    r = subprocess.run([sys.executable, "-m", "gram_pyro", *KILL_ARGS, "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return load_checkpoint(out)


# the operations inside one atomic_save: fsync of the new file, the link of the old one, its
# rename to .prev, the rename of the new file over checkpoint.pt, the fsync of the folder
@pytest.mark.parametrize("op", [1, 2, 3, 4, 5])
def test_kill_inside_atomic_save_leaves_a_run_that_resumes_exactly(tmp_path, whole_run, op):
    out = tmp_path / "r"
    env = {**os.environ, "KILL_SAVE": "2", "KILL_OP": str(op)}
    r = subprocess.run([sys.executable, "-c", KILLER, *KILL_ARGS, "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert (out / CHECKPOINT).is_file()  # never a moment without it once a save has completed
    assert load_checkpoint(out)["step"] in (2, 4)  # the first save's state, or the second's
    r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--out", str(out), "--resume",
                        "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*.tmp*"))  # the killed save's temporary files are gone
    done = load_checkpoint(out)
    assert done["step"] == whole_run["step"] == 12
    for key in whole_run["model"]:
        assert torch.equal(done["model"][key], whole_run["model"][key]), key


def test_loading_falls_back_to_the_previous_checkpoint(tmp_path, capsys, tiny_run):
    run = copy_run(tiny_run, tmp_path / "r")
    os.replace(run / CHECKPOINT, run / PREVIOUS)
    (run / f".{CHECKPOINT}.tmp999").write_bytes(b"half a checkpoint")
    assert main(["evaluate", str(run), "--limit", "2", "--samples", "2"]) == 0
    assert "previous checkpoint" in capsys.readouterr().err
    refused(capsys, ["train", "--task", "nqueens-5", "--out", str(run)], "--overwrite")
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 0
    assert (run / CHECKPOINT).is_file() and not (run / f".{CHECKPOINT}.tmp999").exists()


def test_atomic_save_keeps_the_previous_file_and_never_removes_the_current(tmp_path):
    path = tmp_path / CHECKPOINT
    atomic_save({"v": 1}, path)
    atomic_save({"v": 2}, path)
    assert torch.load(path)["v"] == 2 and torch.load(tmp_path / PREVIOUS)["v"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {CHECKPOINT, PREVIOUS}


def test_overwrite_discards_the_old_run(tmp_path, capsys):
    out = tmp_path / "r"
    Trainer(tiny_config(extra=["steps=2", "critic_fit_steps=0"]), out, progress=False).fit()
    (out / "snapshots").mkdir()
    refused(capsys, ["train", "--task", "nqueens-5", "--out", str(out)], "already holds a run")
    assert main(["train", "--task", "nqueens-5", "--out", str(out), "--overwrite", "--steps", "2",
                 "--quiet", *TINY_CLI]) == 0
    assert not (out / "snapshots").exists() and load_checkpoint(out)["step"] == 2


# -- D. I/O errors --------------------------------------------------------------------------------

def test_unwritable_run_folder_in_training_is_one_line(tmp_path, capsys, monkeypatch):
    import gram_pyro.train as train_module

    def refuse(obj, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(train_module, "atomic_save", refuse)
    line = refused(capsys, ["train", "--task", "nqueens-5", "--out", str(tmp_path / "r"),
                            "--steps", "2", "--quiet", *TINY_CLI], "Permission denied")
    assert "no checkpoint was written" in line


def test_evaluate_in_a_read_only_folder_still_reports(tiny_run, capsys, monkeypatch):
    import gram_pyro.plots as plots

    def refuse(fig, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plots, "save", refuse)
    assert main(["evaluate", str(tiny_run), "--limit", "2", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "sample accuracy (all trajectories)" in out and "coverage@2" in out
    assert "plots skipped" in out and "Permission denied" in out


def test_bad_cache_dir_falls_back_to_no_cache(tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("GRAM_CACHE_DIR", str(not_a_folder / "cache"))
    assert main(["data", "--task", "nqueens-5"]) == 0
    assert "cannot cache" in capsys.readouterr().err


def test_cache_file_of_another_task_is_not_trusted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path / "cache"))
    get_task("nqueens-5").build(seed=0)
    get_task("nqueens-6").build(seed=0)
    five, six = (next((tmp_path / "cache").glob(f"nqueens-{n}-*.npz")) for n in (5, 6))
    os.replace(six, five)  # the 6x6 dataset under the 5x5 file name
    data = get_task("nqueens-5").build(seed=0)
    assert "ignoring the cached dataset" in capsys.readouterr().err
    assert data.train.inputs.shape[1] == 25


# -- E. NaN -----------------------------------------------------------------------------------------

def blow_up(trainer, at: set):
    """Make the optimizer step write inf into a weight on the given step numbers."""
    step, count = trainer.opt.step, {"n": 0}

    def stepped(*args, **kwargs):
        out = step(*args, **kwargs)
        if count["n"] in at:
            with torch.no_grad():
                next(trainer.net.parameters()).fill_(float("inf"))
        count["n"] += 1
        return out

    trainer.opt.step = stepped


def finite(weights) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


def test_skip_mode_rolls_back_a_diverging_update_and_never_saves_it(tmp_path):
    out = tmp_path / "r"
    cfg = tiny_config(extra=["steps=12", "on_nan=skip", "checkpoint_minutes=0", "critic_fit_steps=0"])
    trainer = Trainer(cfg, out, progress=False)
    blow_up(trainer, {5})
    trainer.fit()
    assert trainer.rollbacks == 1 and trainer.step == 12
    for name in (CHECKPOINT, PREVIOUS):
        ckpt = torch.load(out / name, weights_only=True)
        assert finite(ckpt["model"]) and finite(ckpt["ema"]), name


def test_stop_mode_names_the_diverging_update_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "r"
    trainer = Trainer(tiny_config(extra=["steps=12", "critic_fit_steps=0"]), out, progress=False)
    trainer.train_batch()
    trainer.save()
    good = (out / CHECKPOINT).read_bytes()
    blow_up(trainer, {0})
    with pytest.raises(UserError, match=r"weights became non-finite after the update at step 2; "
                                        r"the last checkpoint .* \(step 2\) is intact"):
        trainer.fit()
    assert (out / CHECKPOINT).read_bytes() == good


def test_stop_before_any_checkpoint_does_not_claim_one(tmp_path):
    trainer = Trainer(tiny_config(extra=["steps=12"]), tmp_path / "r", progress=False)
    blow_up(trainer, {0})
    with pytest.raises(UserError, match="no checkpoint was written"):
        trainer.fit()


def test_resume_honours_budget_and_nan_policy_and_refuses_model_changes(tmp_path, capsys):
    out = tmp_path / "r"
    Trainer(tiny_config(extra=["steps=2", "critic_fit_steps=0"]), out, progress=False).fit()
    refused(capsys, ["train", "--out", str(out), "--resume", "--set", "d_model=64"], "d_model cannot change")
    refused(capsys, ["train", "--out", str(out), "--resume", "--task", "nqueens-6"], "task cannot change")
    refused(capsys, ["train", "--out", str(out), "--resume", "--preset", "paper"], "--preset")
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--on-nan", "skip",
                 "--set", "eval_interval=1", "--task", "nqueens-5", "--quiet"]) == 0
    capsys.readouterr()
    ckpt = load_checkpoint(out)
    stored = json.loads(ckpt["config"])
    assert ckpt["step"] == 4 and stored["on_nan"] == "skip" and stored["eval_interval"] == 1
    assert stored["d_model"] == 32


# -- F. one writer per run folder ---------------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys, tiny_run):
    with RunLock(tiny_run, "gram train"):
        line = refused(capsys, ["train", "--out", str(tiny_run), "--resume", "--quiet"], "in use by")
        assert f"PID {os.getpid()}" in line
        refused(capsys, ["fit-critic", str(tiny_run)], "in use by")
    with RunLock(tiny_run, "gram train"):  # released: the folder can be locked again
        pass


def test_two_concurrent_trainings_exactly_one_proceeds(tmp_path):
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "gram_pyro", "train", "--task", "nqueens-5", "--out", str(out),
            "--steps", "40", "--quiet", *TINY_CLI]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 2], results
    loser = next(err for _, err, code in results if code == 2)
    assert "in use by PID" in loser or "already holds a run" in loser, loser
    assert "Traceback" not in loser and load_checkpoint(out)["step"] == 40
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one writer: no interleaved records


def test_a_running_training_holds_its_folder(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "gram_pyro", "train", "--task", "nqueens-5",
                             "--out", str(out), "--steps", "100000", "--quiet", *TINY_CLI],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def held() -> bool:
        try:
            return (out / ".lock").read_text().startswith("PID")
        except FileNotFoundError:
            return False

    try:
        deadline = time.time() + 120
        while time.time() < deadline and not held():
            time.sleep(0.1)
        r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--out", str(out), "--resume",
                            "--quiet"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and f"in use by PID {proc.pid}" in r.stderr, r.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel dropped the dead writer's lock: the folder can be taken over
    with RunLock(out, "test"):
        pass


def test_config_validation_accepts_the_presets():
    for preset in ("cpu", "paper"):
        for task in ("nqueens-8", "sudoku-9", "coloring-8"):
            cfg = make_config(preset, task=task)
            assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    assert math.isfinite(make_config("cpu", ["max_minutes=0"]).max_minutes)
    assert np.isfinite(make_config("cpu", ["lr=1e-4"]).lr)


def test_task_dependent_defaults_follow_the_task_however_it_is_given():
    # --task and --set task= give the same config: a digits run is p(x) with no critic fit,
    # and the paper preset's beta is the task's own
    for cfg in (make_config("cpu", task="digits-8"), make_config("cpu", ["task=digits-8"])):
        assert cfg.unconditional is True and cfg.critic_fit_steps == 0
    assert make_config("paper", ["task=nqueens-10"]).beta == make_config("paper", task="nqueens-10").beta
    assert make_config("paper", ["task=sudoku-9", "unconditional=true"]).beta == 0.05
    assert make_config("cpu", ["model=ar"], task="nqueens-8").n_supervision == 1
    # colouring starts its noise at its own scale, the rest at the field's default, and an
    # explicit init_sigma wins either way
    for preset in ("cpu", "paper"):
        for task in ("sudoku-4", "nqueens-10", "digits-8"):
            assert make_config(preset, task=task).init_sigma == Config.init_sigma
        for cfg in (make_config(preset, task="coloring-10"), make_config(preset, ["task=coloring-8"])):
            assert cfg.init_sigma == TASK_INIT_SIGMA["coloring"] != Config.init_sigma
        assert make_config(preset, ["init_sigma=0.5"], task="coloring-8").init_sigma == 0.5
