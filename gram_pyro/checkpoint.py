"""Run folders and checkpoints.

A run folder ``DIR`` holds ``checkpoint.pt`` (weights, EMA weights, optimizer, RNG states, step,
config), ``config.json`` (a record of the config for people and tools; the one inside the
checkpoint is the one used) and ``metrics.jsonl``.

Checkpoints are written atomically with no gap: the new file is written and fsynced beside the
old one, the old one is linked to ``checkpoint.prev.pt``, and the new one replaces
``checkpoint.pt`` in one rename, so once a first save has completed ``checkpoint.pt`` always
exists, whenever the process is killed. Loading falls back to ``checkpoint.prev.pt``, with a
warning, if ``checkpoint.pt`` cannot be read. Checkpoints are loaded with ``weights_only=True``:
a checkpoint is data, never code. A crafted pickle that tries to run code is refused, and a
truncated or corrupt file, entries of the wrong type, an invalid stored config or non-finite
weights give a one-line error.

A writer (training, resuming, refitting the critic) holds :class:`RunLock` on its folder, so a
second writer is refused, and it removes the temporary files a killed save left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path

import torch

from gram_pyro.build import build_net
from gram_pyro.config import Config
from gram_pyro.errors import UserError, warn
from gram_pyro.tasks import get_task

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
LOCK = ".lock"
RUN_FILES = (CHECKPOINT, PREVIOUS, "config.json", "metrics.jsonl", "critic.json", "guide.json")


def previous_of(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the renames are still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path: Path) -> None:
    """Save ``obj`` to ``path`` with no moment where ``path`` is missing or partial.

    ``torch.save`` to a temporary file in the same folder and fsync it; hard-link the current
    file (a copy where links are not supported) to a temporary name and rename that over
    ``<name>.prev<suffix>``; then rename the new file over ``path``. A kill at any point leaves
    ``path`` whole (old or new) and at most stale temporary files, which
    :func:`remove_stale_temps` clears. OSError (a read-only folder, a full disk) propagates
    after the temporary files are removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    prev = previous_of(path)
    keep = path.with_name(f".{prev.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            try:
                os.link(path, keep)
            except OSError:
                shutil.copyfile(path, keep)
            os.replace(keep, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        for t in (tmp, keep):
            try:
                t.unlink()
            except FileNotFoundError:
                pass


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files that killed saves left in ``folder`` (call it holding the
    folder's :class:`RunLock`: then no save of another process is under way there)."""
    removed = []
    for t in Path(folder).glob(".*.tmp[0-9]*"):
        if t.is_file() and t.name.startswith((f".{CHECKPOINT}", f".{PREVIOUS}")):
            t.unlink(missing_ok=True)
            removed.append(t)
    return removed


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (the start of) a run: a checkpoint, its config or its log."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def _read(path: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip, I/O errors, refused globals all land here
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains objects other than tensors and plain data (refused for safety)"
        raise UserError(f"cannot load checkpoint {str(path)!r}: {reason}") from None
    check_contents(ckpt, path)
    return ckpt


def _is_weights(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                       for k, v in d.items())


def check_contents(ckpt, path) -> None:
    """The entries a gram-pyro checkpoint holds, of the right types, with a valid stored config
    and finite weights; UserError naming what is wrong."""
    where = f"checkpoint {str(path)!r}"
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise UserError(f"{where} is not a gram-pyro checkpoint")
    if not isinstance(ckpt["config"], str):
        raise UserError(f"{where} has no readable config")
    config_of(ckpt, where)
    for key in ("model", "ema"):
        if key == "model" or ckpt.get(key) is not None:
            if not _is_weights(ckpt[key]):
                raise UserError(f"{where}: its {key!r} entry is not a set of named tensors")
            bad = [k for k, v in ckpt[key].items()
                   if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                raise UserError(f"{where}: {len(bad)} of its {key} weights are not finite "
                                f"(e.g. {bad[0]}); it cannot be used")
    for key, kind in (("step", int), ("total_steps", int), ("elapsed", float),
                      ("nan_skips", int), ("ema_updates", int)):
        value = ckpt.get(key, 0)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (kind is float or float(value).is_integer()) and 0 <= value < float("inf")
        if not ok:
            raise UserError(f"{where}: its {key!r} entry is {value!r}, not a {kind.__name__} >= 0")
    for key in ("critic_fit", "guide_fit", "guide_defensive"):
        fit = ckpt.get(key)
        if fit is not None and not (isinstance(fit, dict) and _is_weights(fit.get("weights"))
                                    and isinstance(fit.get("report", "{}"), str)):
            raise UserError(f"{where}: its {key!r} entry is not a fitted {key.split('_')[0]}")


def load_checkpoint(run_dir) -> dict:
    """The checkpoint of ``run_dir`` as plain data; UserError for anything missing or bad.
    If ``checkpoint.pt`` is missing or unreadable and ``checkpoint.prev.pt`` loads, that one is
    used, with a warning."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {str(run_dir)!r} does not exist")
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not path.is_file() and not prev.is_file():
        raise UserError(f"no {CHECKPOINT} in {str(run_dir)!r}; train a model there first")
    try:
        if not path.is_file():
            raise UserError(f"{str(path)!r} is missing")
        return _read(path)
    except UserError as first:
        if not prev.is_file():
            raise
        try:
            ckpt = _read(prev)
        except UserError:
            raise first from None
        warn(f"{first}; using the previous checkpoint {str(prev)!r} (step {ckpt.get('step', 0)})")
        return ckpt


def config_of(ckpt: dict, where: str = "the checkpoint") -> Config:
    """The config stored in a checkpoint, validated like any other.

    A run with ``links`` on whose weights have no link embedding was trained before its task had
    structure links (N-Queens gained them after colouring and Sudoku): it comes back with
    ``links`` off, which is how it was trained, so it loads and resumes as before."""
    try:
        stored = json.loads(ckpt["config"])
        if not isinstance(stored, dict):
            raise TypeError("not a JSON object")
        cfg = Config.from_dict(stored)
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{where} holds an invalid config: {e}") from None
    weights = ckpt.get("model")
    if cfg.links and cfg.model == "gram" and isinstance(weights, dict) \
            and LINK_WEIGHT not in weights \
            and get_task(cfg.task, unconditional=cfg.unconditional).links() is not None:
        cfg = dataclasses.replace(cfg, links=False)
    return cfg


LINK_WEIGHT = "encoder.link_embed.weight"  # the encoder's structure-link embedding (nets.Encoder)


def warn_if_config_edited(run_dir: Path, cfg: Config) -> None:
    """``config.json`` is a record, never read back: say so when it no longer matches the
    config stored in the checkpoint (someone edited it expecting an effect)."""
    record = Path(run_dir) / "config.json"
    try:
        written = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    used = json.loads(cfg.to_json())
    if isinstance(written, dict) and written.get("links") is True and used.get("links") is False:
        written = written | {"links": False}  # trained before its task had links (config_of)
    if not isinstance(written, dict) or any(used.get(k, k) != v for k, v in written.items()):
        warn(f"{str(record)!r} differs from the config stored in the checkpoint, which is the "
             "one used (config.json is a record of the run and is never read back)")


class RunLock:
    """An exclusive lock on a run folder for one writer process (``fcntl.flock`` on
    ``DIR/.lock``; the kernel drops it when the process ends, however it ends). A second writer
    gets a one-line UserError naming the holder's PID. Where ``fcntl`` does not exist (Windows)
    the lock is a no-op."""

    def __init__(self, folder, what: str):
        self.folder, self.what, self._file = Path(folder), what, None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            return self
        check_writable(self.folder)
        try:
            f = open(self.folder / LOCK, "a+")
        except OSError as e:
            raise UserError(f"cannot lock run folder {str(self.folder)!r}: {e.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # the holder writes its PID just after it takes the lock: give it a moment to
            # appear, so the message names the process to wait for
            for _ in range(20):
                f.seek(0)
                holder = f.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            holder = holder or "another process"
            f.close()
            raise UserError(f"run folder {str(self.folder)!r} is in use by {holder}; wait for it "
                            "to finish or choose another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} ({self.what})")
        f.flush()
        self._file = f
        remove_stale_temps(self.folder)
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def load_run(run_dir, ema: bool = True, device: str = "cpu", guide_fit: bool = False,
             ckpt: dict | None = None, guide_entry: str = "guide_fit"):
    """``(task, cfg, net)`` of a trained run, with the EMA weights by default, and on top of them
    the critic fitted to the EMA model (``critic_fit``, :mod:`gram_pyro.critic`) when there is one.
    With ``guide_fit``, also the guide fitted for likelihood (``guide_fit``,
    :mod:`gram_pyro.guide_fit`) when there is one; its report is then ``net.guide_fit``. The
    guide's parameters play no part in prior rollouts, so neither changes what they sample.
    ``ckpt``: the run's checkpoint when the caller has already loaded it. ``guide_entry``: the
    checkpoint entry the fitted guide is read from (``"guide_defensive"``: the defensive guide of
    the mixture ``gram loglik`` proposes from, :mod:`gram_pyro.guide_fit`)."""
    ckpt = load_checkpoint(run_dir) if ckpt is None else ckpt
    cfg = config_of(ckpt)
    warn_if_config_edited(run_dir, cfg)
    task = get_task(cfg.task, unconditional=cfg.unconditional)
    net = build_net(task, cfg, device)
    use_ema = ema and ckpt.get("ema") is not None
    weights = dict(ckpt["ema"] if use_ema else ckpt["model"])
    if use_ema and isinstance(ckpt.get("critic_fit"), dict):
        weights.update(ckpt["critic_fit"]["weights"])
    fitted_guide = ckpt.get(guide_entry) if guide_fit and use_ema else None
    if fitted_guide is not None:
        weights.update(fitted_guide["weights"])
        if any(k.startswith("guide_mixer.") for k in fitted_guide["weights"]):
            net.add_guide_mixer()
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"the critic or guide fitted in {str(run_dir)!r} has non-finite weights "
                        f"(e.g. {bad[0]}); refit it with `gram fit-critic` or `gram fit-guide`")
    try:
        net.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint weights do not fit its config: {str(e).splitlines()[0]}") from None
    net.eval()
    if fitted_guide is not None:
        try:
            net.guide_fit = json.loads(fitted_guide.get("report", "{}"))
        except ValueError:
            raise UserError(f"the guide fit stored in {str(run_dir)!r} has an unreadable report") from None
    return task, cfg, net


def store_fit(run_dir: Path, ckpt: dict, entry: str, weights: dict, report: dict,
              report_file: str, what: str) -> None:
    """Store a fit made on a trained run (the critic's, the likelihood guide's): its weights and
    report under ``ckpt[entry]`` beside the untouched training state, written atomically, and
    the report as JSON in ``run_dir/report_file``. The caller holds the run's :class:`RunLock`.
    ``what`` names the fit in the one-line error a failed write gives."""
    step = int(ckpt.get("step", 0))
    ckpt[entry] = {"step": step, "weights": weights, "report": json.dumps(report)}
    try:
        atomic_save(ckpt, Path(run_dir) / CHECKPOINT)
        (Path(run_dir) / report_file).write_text(json.dumps({"step": step, **report}, indent=1))
    except OSError as e:
        raise UserError(f"cannot write the fitted {what} to {str(run_dir)!r}: "
                        f"{e.strerror or e}") from None


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test{os.getpid()}"
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
