"""The package's shape: one top-level import, no import cycles, the inference side free of the
trainer, and no tensor created away from the device of the data it meets."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

ROOT = Path(__file__).resolve().parent.parent
# where each installed package's sources live in the repository (pyproject's package-dir)
PACKAGES = {"gram_pyro": ROOT / "gram_pyro", "gram_pyro.models": ROOT / "models",
            "gram_pyro.guides": ROOT / "guides", "gram_pyro.tasks": ROOT / "gram_pyro" / "tasks"}


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth of the file (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_the_package_has_no_import_cycle():
    mods = modules()
    assert {"gram_pyro.models.gram", "gram_pyro.guides.gram", "gram_pyro.train"} <= set(mods)
    graph = {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_module_imports_a_top_level_models_or_guides_package():
    for path in [*modules().values(), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"),
                 *ROOT.glob("examples/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in ("models", "guides"), path
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & {"models", "guides"}, path


@pytest.mark.parametrize("module", ["gram_pyro.evaluate", "gram_pyro.likelihood",
                                    "gram_pyro.generate", "gram_pyro.smc", "gram_pyro.critic"])
def test_inference_does_not_import_the_trainer(module, tmp_path):
    code = (f"import sys, {module}; bad = [m for m in ('gram_pyro.train', 'gram_pyro.supervision',"
            " 'gram_pyro.distributed') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_models_and_guides_are_not_top_level_packages(tmp_path):
    """Run outside the repository, so that its folders are not on the path."""
    r = subprocess.run([sys.executable, "-c", "import gram_pyro.models.gram, gram_pyro.guides.gram"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("models", "guides"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name


class OwnFactoriesOnMeta(TorchFunctionMode):
    """Every tensor that the package's own code creates without a device (``torch.zeros(...)``,
    ``torch.as_tensor(array)``) is put on the ``meta`` device, where meeting the model's CPU
    tensors raises. Calls from torch and Pyro internals are left alone: only our code is judged.
    """

    SOURCES = tuple(str(PACKAGES[p]) + "/" for p in ("gram_pyro", "gram_pyro.models",
                                                     "gram_pyro.guides"))
    FACTORIES = _device_constructors()

    def __init__(self):
        super().__init__()
        self.caught = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None \
                and not (args and torch.is_tensor(args[0])) \
                and sys._getframe(1).f_code.co_filename.startswith(self.SOURCES):
            kwargs["device"] = "meta"
            self.caught += 1
        return func(*args, **kwargs)


def test_the_whole_pipeline_creates_no_tensor_off_the_data_device(tmp_path):
    """With our own device-less factories on ``meta``, the pipeline still runs on the CPU:
    training, evaluation with every selection method and ACT, SMC, likelihood (IWAE, k-hat, SMC),
    the guide fit, generation and the critic fit make every tensor on the device of the data they
    work on."""
    from gram_pyro.build import programs, run_data
    from gram_pyro.checkpoint import load_run
    from gram_pyro.critic import refit_run
    from gram_pyro.evaluate import evaluate_run
    from gram_pyro.generate import generate
    from gram_pyro.guide_fit import refit_run as refit_guide
    from gram_pyro.likelihood import run_loglik
    from gram_pyro.select import METHODS
    from gram_pyro.train import Trainer
    from gram_pyro.trajectories import record
    from tests.helpers import tiny_config

    mode = OwnFactoriesOnMeta()
    with mode:
        assert torch.zeros(2).device.type == "cpu"  # this file is not the package
        runs = {}
        for name, unconditional in (("cond", False), ("gen", True)):
            cfg = tiny_config(extra=["steps=4", "eval_interval=2"], unconditional=unconditional)
            Trainer(cfg, tmp_path / name, progress=False).fit()
            runs[name] = tmp_path / name
        for method in (*METHODS, "smc"):
            report = evaluate_run(runs["cond"], samples=3, limit=4, select_method=method,
                                  max_steps=3, act=method == "vote")
            assert 0 <= report[0]["accuracy"][method] <= 1
        assert refit_guide(runs["cond"], steps=2, batch_size=4)["steps"] == 2
        report = run_loglik(runs["cond"], particles=50, limit=3)  # k-hat, SMC, the fitted guide
        assert np.isfinite(report["iwae_nats"]) and np.isfinite(report["smc_nats"])
        report = generate(runs["gen"], 5, best_of=2)[0]
        assert report["samples"] == 5
        assert refit_run(runs["cond"], steps=2, inputs=4, trajectories=2)["steps"] == 2
        task, cfg, net = load_run(runs["cond"])
        model, guide = programs(net, cfg)
        x, y = run_data(task, cfg).test.pairs()
        assert record(model, guide, x[0], 3, y=y[0]).kl  # posterior trajectories, for notebooks
        assert record(model, guide, x[0], 3).answers.shape[1] == 3
    assert mode.caught == 0  # not one device-less tensor, even one that never met the data


def test_the_device_probe_catches_a_device_less_tensor(tmp_path):
    """The probe above can fail: a package function that forgets the device is caught."""
    import gram_pyro.importance as importance

    code = "def bad(log_w):\n    return log_w + torch.zeros(log_w.shape)\n"
    namespace = {"torch": torch}
    exec(compile(code, importance.__file__, "exec"), namespace)  # as if written in the package
    with OwnFactoriesOnMeta(), pytest.raises(RuntimeError, match="meta"):
        namespace["bad"](torch.zeros(3))
