"""Run folders and checkpoints.

A run folder ``DIR`` holds ``checkpoint.pt`` (weights, EMA weights, optimizer, RNG states, step,
config), ``config.json`` and ``metrics.jsonl``. Checkpoints are written atomically (temporary
file, fsync, rename; the previous good one is kept as ``checkpoint.prev.pt``) and loaded with
``weights_only=True``: a checkpoint is data, never code. A crafted pickle that tries to run code
is refused, and a truncated or corrupt file gives a one-line error.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import torch

from gram_pyro.build import build_net
from gram_pyro.config import Config
from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task

CHECKPOINT = "checkpoint.pt"


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, keep the old one, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, path.with_name(path.stem + ".prev" + path.suffix))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(run_dir) -> dict:
    """The checkpoint of ``run_dir`` as plain data; UserError for anything missing or bad."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {str(run_dir)!r} does not exist")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(f"no {CHECKPOINT} in {str(run_dir)!r}; train a model there first")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals all land here
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains objects other than tensors and plain data (refused for safety)"
        raise UserError(f"cannot load checkpoint {str(path)!r}: {reason}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise UserError(f"checkpoint {str(path)!r} is not a gram-pyro checkpoint")
    return ckpt


def config_of(ckpt: dict) -> Config:
    try:
        return Config.from_dict(json.loads(ckpt["config"]))
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"checkpoint config is unreadable: {e}") from None


def load_run(run_dir, ema: bool = True, device: str = "cpu"):
    """``(task, cfg, net)`` of a trained run, with the EMA weights by default, and on top of them
    the critic fitted to the EMA model (``critic_fit``, :mod:`gram_pyro.critic`) when there is one."""
    ckpt = load_checkpoint(run_dir)
    cfg = config_of(ckpt)
    task = get_task(cfg.task, unconditional=cfg.unconditional)
    net = build_net(task, cfg, device)
    use_ema = ema and ckpt.get("ema") is not None
    weights = dict(ckpt["ema"] if use_ema else ckpt["model"])
    if use_ema and isinstance(ckpt.get("critic_fit"), dict):
        weights.update(ckpt["critic_fit"].get("weights", {}))
    try:
        net.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint weights do not fit its config: {str(e).splitlines()[0]}") from None
    net.eval()
    return task, cfg, net


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder {str(run_dir)!r}: {e.strerror}") from None


def rng_state(np_rng, device: torch.device) -> dict:
    """Every random stream a training process draws from, as checkpoint data: numpy's (batches,
    augmentation), Python's, torch's CPU generator (Pyro's noise) and, on CUDA, the device's."""
    state = {"numpy_rng": json.dumps(np_rng.bit_generator.state),
             "python_rng": json.dumps(random.getstate()),
             "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, np_rng, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured (``np_rng`` in place)."""
    np_rng.bit_generator.state = json.loads(state["numpy_rng"])
    python = json.loads(state["python_rng"])
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
