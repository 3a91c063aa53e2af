"""Training GRAM with deep supervision (docs/design.md §4).

Each batch runs ``n_supervision`` supervision steps; every step is one evaluation of
:class:`~gram_pyro.elbo.GramELBO` on the model and guide (T transitions, then the decoder) and
one AdamW step, and it starts from the previous step's final posterior state, detached
(truncated backpropagation: memory does not grow with depth). Its ELBO is exactly what
``pyro.infer.SVI(model, guide, optim, loss=GramELBO(beta)).step(x, y, steps=[n], ...)`` computes,
divided by the batch size (a test checks it); this loop exists for what stock SVI does not do:
the carried state, the critic's losses, EMA, gradient-norm clipping, data parallelism, NaN
handling and exact resume.

With ``joint_critic`` (the paper preset) a *prior* chain runs beside the posterior chain (no
access to y, no gradient into the trunk) and the critic's ACT halt and LPRM value heads are fitted
on it (:mod:`gram_pyro.supervision`); the cpu preset leaves it out, which makes a step 1.5x faster
and measured better per minute (docs/design.md §4). Either way, after the last step the critic is
fitted on many prior rollouts of the finished EMA model (:mod:`gram_pyro.critic`). The KL weight
``beta`` can be annealed up from 0 (``beta_anneal_steps``, :mod:`gram_pyro.schedule`). The
metrics log always reports prior-rollout accuracy on the validation split: a posterior that
smuggles y to the decoder shows ~100% posterior accuracy and chance prior accuracy.

The pieces: :mod:`gram_pyro.schedule` (LR and time budget), :mod:`gram_pyro.runlog` (the metrics
log), :mod:`gram_pyro.checkpoint` (atomic saves, RNG state), :func:`gram_pyro.evaluate.
validation_metrics` (the evaluation), :mod:`gram_pyro.distributed` (torchrun: ``batch_size`` is the
GLOBAL batch, each of the P ranks taking ``batch_size / P`` examples; only rank 0 prints, logs,
evaluates and checkpoints). ``precision="bf16"`` trains under bfloat16 autocast with float32
probabilistic heads; ``"auto"`` (the default) is bf16 where the hardware computes it natively,
and the run stores which it chose.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from gram_pyro.build import build_net, programs, resolve_device, resolve_precision, run_data
from gram_pyro.checkpoint import CHECKPOINT, RUN_FILES, RunLock, atomic_save, check_writable, \
    config_of, holds_run, load_checkpoint, rng_state, set_rng_state, warn_if_config_edited
from gram_pyro.config import RESUMABLE, Config
from gram_pyro.critic import CRITIC_REPORT, fit_config_critic
from gram_pyro.distributed import EpochSampler, Group, check_batch, rank_seed
from gram_pyro.elbo import GramELBO
from gram_pyro.errors import UserError
from gram_pyro.evaluate import validation_metrics
from gram_pyro.recursion import transition_rules
from gram_pyro.runlog import MetricsLog, peak_memory_mb, summarize
from gram_pyro.schedule import Schedule, warmed_decay
from gram_pyro.supervision import LikelihoodStep, SupervisionStep
from gram_pyro.tasks import get_task


LOGGED = ("recon", "kl_total", "posterior_acc", "act", "lprm", "prior_batch_acc")  # per step


class RowSignSGD(torch.optim.Optimizer):
    """Sign descent on the rows of an embedding table that the batch touched, for ARC's puzzle
    identities (TRM trains its puzzle embeddings the same way, with a sparse optimizer): a row
    whose gradient is non-zero moves by ``-lr * (sign(g) + weight_decay * w)``; every other row
    stays exactly as it is. A full ARC run has about 10^6 identities and a batch touches a few
    hundred; under AdamW every row would move at every step, pushed by stale moments and weight
    decay. Stateless: ``lr`` and ``weight_decay`` come from the config on every step."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, w = p.grad.reshape(len(p), -1), p.view(len(p), -1)
                touched = g.ne(0).any(dim=1, keepdim=True)
                w.mul_(1 - group["lr"] * group["weight_decay"] * touched).sub_(group["lr"] * g.sign())


def optimizers(net, cfg) -> list[torch.optim.Optimizer]:
    """AdamW over the network (weight decay on the matrices only) and, for a net with a puzzle
    table (ARC), :class:`RowSignSGD` on the table at ``puzzle_lr`` (its param group's
    ``lr_scale``: the schedule scales both learning rates alike)."""
    table = getattr(getattr(net, "encoder", None), "puzzle", None)
    skip = {id(table.weight)} if table is not None else set()
    decay, no_decay = [], []
    for p in net.parameters():
        if id(p) not in skip:
            (no_decay if p.dim() < 2 else decay).append(p)
    out = [torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=tuple(cfg.betas))]
    if table is not None:
        out.append(RowSignSGD([{"params": [table.weight], "lr_scale": cfg.puzzle_lr / cfg.lr}],
                              lr=cfg.puzzle_lr, weight_decay=cfg.puzzle_weight_decay))
    return out


def ema_of(net, decay: float) -> AveragedModel:
    """The exponential moving average of ``net``'s weights that evaluation uses, as torch's
    :class:`~torch.optim.swa_utils.AveragedModel`. It starts at the initial weights, and its k-th
    update (k = 0, 1, ...) uses the warmed-up decay :func:`~gram_pyro.schedule.warmed_decay`
    ``(decay, k + 1)``, so the early averages are not dominated by the initialization."""

    def average(ema_params, params, n_averaged):
        # n_averaged counts the copy of the initial weights: this is update n_averaged
        torch._foreach_lerp_(ema_params, params, 1 - warmed_decay(decay, int(n_averaged)))

    ema = AveragedModel(net, multi_avg_fn=average, use_buffers=False)
    ema.update_parameters(net)  # the first call copies: the average starts at the initial weights
    ema.module.eval()
    for p in ema.module.parameters():
        p.requires_grad_(False)
    return ema


def non_finite(value, pieces: dict, what: str) -> str | None:
    """None if ``value`` is finite, else a message naming the term that went bad."""
    if bool(torch.isfinite(value)):
        return None
    culprits = [name for name, v in pieces.items() if not bool(torch.isfinite(v))]
    return f"the {what} became {float(value.detach())}" + (
        f" ({', '.join(culprits)} term{'s' if len(culprits) > 1 else ''} not finite)"
        if culprits else "")


def resumed_config(stored: Config, changes: dict) -> Config:
    """The config a resumed run continues with: the stored one, with the asked ``changes`` to
    the fields in :data:`~gram_pyro.config.RESUMABLE` (budget, NaN policy, logging, device); a
    change to any other field (the model, the data, the objective) is refused."""
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE and getattr(stored, k) != v}
    if refused:
        k, v = next(iter(refused.items()))
        raise UserError(f"--resume continues the run with its stored config; {k} cannot change "
                        f"(stored {getattr(stored, k)!r}, asked {v!r}). Fields that can: "
                        + ", ".join(sorted(RESUMABLE)))
    return dataclasses.replace(stored, **changes).validate()


class _IOErrors:
    """``with``: an OSError inside becomes a one-line UserError that says what was being
    written and whether a checkpoint is intact."""

    def __init__(self, what: str, trainer: "Trainer"):
        self.what, self.trainer = what, trainer

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is not None and issubclass(kind, OSError):
            raise UserError(f"cannot {self.what} in {str(self.trainer.out)!r}: "
                            f"{error.strerror or error}; {self.trainer._checkpoint_note()}") from None
        return False


class Trainer:
    """Trains one run into ``out_dir`` (fresh, or resumed from its checkpoint).

    Under torchrun every rank builds its own Trainer: ``group`` (default: from the environment,
    see :mod:`gram_pyro.distributed`) says which rank this is; the process group is joined here
    and left by :meth:`close` (which :meth:`fit` calls at the end).
    """

    def __init__(self, cfg: Config | None, out_dir, resume: bool = False, progress: bool = True,
                 group: Group | None = None, changes: dict | None = None, overwrite: bool = False):
        self.out = Path(out_dir)
        self.group = group or Group.from_environment()
        self.progress = progress and self.group.main
        self.lock = RunLock(self.out, "gram train --resume" if resume else "gram train")
        if cfg is not None and not resume:  # a config that cannot run leaves no folder behind
            check_batch(cfg.batch_size, self.group.world_size)
        if self.group.main:
            self.lock.acquire()  # one writer per run folder, held until close()
        try:
            self._setup(cfg, resume, changes or {}, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, cfg: Config | None, resume: bool, changes: dict, overwrite: bool) -> None:
        ckpt = self._checkpoint_to_resume(resume, overwrite)
        new_horizon = False
        if ckpt is not None:
            stored = config_of(ckpt)
            warn_if_config_edited(self.out, stored)
            cfg = resumed_config(stored, changes)
            new_horizon = cfg.steps != stored.steps
        elif cfg is None:
            raise UserError("a fresh run needs a config (the task at least)")
        rank, world = self.group.rank, self.group.world_size
        check_batch(cfg.batch_size, world)  # on every rank, before any collective
        self.device = resolve_device(cfg.device, self.group.local_rank)
        # the run stores the precision it trains at, so a resume elsewhere continues exactly
        cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, self.device))
        self.cfg = cfg
        self.group.start(self.device)
        if self.group.main:
            check_writable(self.out)
        self.task = get_task(cfg.task, unconditional=cfg.unconditional)
        if not self.group.main:
            self.group.barrier()  # rank 0 builds (and caches) the dataset; the others load it
        data = run_data(self.task, cfg, progress=self.progress)
        if self.group.main:
            self.group.barrier()
        self.x_train, self.y_train = data.train.pairs()
        self.val = data.val if len(data.val) else data.train
        if len(self.x_train) == 0:
            raise UserError(f"task {cfg.task} has no training data")
        self.sampler = EpochSampler(len(self.x_train), cfg.batch_size, cfg.seed, rank, world)

        pyro.enable_validation(cfg.pyro_validation)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.net = build_net(self.task, cfg, self.device)
        self.model, self.guide = programs(self.net, cfg)
        # GRAM's ELBO and transition rules; the AR baseline has neither (no latents, no KL)
        self.elbo = self.rules = None
        if cfg.model == "ar":  # the AR baseline: maximum likelihood, one step per batch
            step = LikelihoodStep(self.model, self.task, precision=cfg.precision)
        else:
            self.elbo = GramELBO(beta=cfg.beta, kl_balance=cfg.kl_balance)
            self.rules = transition_rules(cfg.objective, cfg.t_high)
            step = SupervisionStep(self.net, self.model, self.guide, self.elbo, self.rules,
                                   self.task, act_weight=cfg.act_weight,
                                   lprm_weight=cfg.lprm_weight, n_supervision=cfg.n_supervision,
                                   precision=cfg.precision, joint_critic=cfg.joint_critic,
                                   lprm_kind=cfg.lprm_loss)
        # DDP averages the gradients over the ranks in backward; find_unused_parameters because
        # the LPRM head (and, in the baseline, the Gaussian heads) get no loss on some steps
        self.step_loss = DistributedDataParallel(
            step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True) if self.group.active else step
        # the AdamW (self.opt, whose state the checkpoint keeps) and the stateless puzzle
        # table's RowSignSGD, if any; gradient clipping leaves the table out (its update is a sign)
        self.optimizers = optimizers(self.net, cfg)
        self.opt = self.optimizers[0]
        self.clipped = [p for g in self.opt.param_groups for p in g["params"]]
        self.unclipped = [p for opt in self.optimizers[1:] for g in opt.param_groups for p in g["params"]]
        self.ema = ema_of(self.net, cfg.ema)  # identical on every rank, as the weights are
        seed = rank_seed(cfg.seed, rank)  # noise and augmentation differ between ranks
        self.rng = np.random.default_rng(seed)
        self.schedule = Schedule(cfg)
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.step, self.elapsed, self.nan_skips, self.rollbacks = 0, 0.0, 0, 0
        self.saved_step = None  # the step of the last checkpoint this folder holds
        self.critic_fit = None  # the critic fitted on the EMA model at the end (gram_pyro.critic)
        if ckpt is not None:
            self._restore(ckpt)
            self.saved_step = self.step
            if new_horizon:  # --steps changed: the cosine now ends at the new step budget
                self.schedule.total_steps = max(self.step, cfg.steps)
        else:
            random.seed(seed)
            pyro.set_rng_seed(seed)
            if self.group.main:
                with self._io("write config.json"):
                    (self.out / "config.json").write_text(cfg.to_json())
                    self.log.reset()
        self._snapshots_taken = {m for m in cfg.snapshot_minutes if self.elapsed >= m * 60}
        self._good = self._copy_state()  # the last finite state, for --on-nan skip's rollback

    def _checkpoint_to_resume(self, resume: bool, overwrite: bool) -> dict | None:
        if resume and overwrite:
            raise UserError("--resume continues the run in the folder and --overwrite discards it; "
                            "pass one of them")
        if not holds_run(self.out):
            if resume:
                raise UserError(f"nothing to resume: no {CHECKPOINT} in {str(self.out)!r}")
            return None
        if overwrite:
            if self.group.main:
                self._discard_run()
            return None
        if not resume:
            raise UserError(f"{str(self.out)!r} already holds a run; pass --resume to continue it, "
                            "--overwrite to discard it, or choose another --out")
        if not any((self.out / name).is_file() for name in (CHECKPOINT, "checkpoint.prev.pt")):
            raise UserError(f"nothing to resume: {str(self.out)!r} holds the start of a run that "
                            "was stopped before its first checkpoint; pass --overwrite to start "
                            "it afresh")
        return load_checkpoint(self.out)  # falls back to checkpoint.prev.pt, with a warning

    def _discard_run(self) -> None:
        """``--overwrite``: remove what a run writes in its folder (nothing else)."""
        import shutil

        with self._io("discard the old run"):
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
            for plot in [*self.out.glob("eval_*.png"), self.out / "generated.png"]:
                plot.unlink(missing_ok=True)
            shutil.rmtree(self.out / "snapshots", ignore_errors=True)

    def _io(self, what: str):
        """A context that turns an OSError (read-only folder, full disk) into a one-line error."""
        return _IOErrors(what, self)

    def close(self) -> None:
        """Leave the process group this trainer joined (a no-op for one process) and release
        the run folder's lock."""
        self.lock.release()
        self.group.close()

    @property
    def ema_net(self):
        return self.ema.module

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint; a collective under torchrun (every rank's RNG state is gathered)."""
        ranks = self.group.gather(rng_state(self.rng, self.device))
        return {
            "format": "gram-pyro/1",
            "config": self.cfg.to_json(),
            "model": self.net.state_dict(),
            "ema": self.ema_net.state_dict(),
            "ema_updates": int(self.ema.n_averaged) - 1,
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "total_steps": self.schedule.total_steps,
            "elapsed": self.elapsed,
            "nan_skips": self.nan_skips,
            "sampler": self.sampler.state_dict(),
            "world_size": self.group.world_size,
            **({"critic_fit": self.critic_fit} if self.critic_fit else {}),
            **ranks[0],  # rank 0's RNG state at the top level, as one-process runs have it
            **({"rank_rng": ranks} if self.group.active else {}),
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0); every rank must call it (it gathers RNG states).
        Non-finite weights are never written: :meth:`_ensure_finite` stops or rolls back first."""
        self._ensure_finite("before saving")
        state = self.state_dict()
        if self.group.main:
            with self._io("write the checkpoint"):
                atomic_save(state, self.out / CHECKPOINT)
            self.saved_step = self.step
        self._good = self._copy_state()
        self.group.barrier()  # on every rank, save() returns once the checkpoint is on disk

    # -- non-finite weights -------------------------------------------------------------------
    def _copy_state(self) -> dict:
        """The weights, EMA and optimizer state, copied to the CPU: the rollback point."""
        cpu = lambda sd: {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}  # noqa: E731
        return {"model": cpu(self.net.state_dict()), "ema": cpu(self.ema_net.state_dict()),
                "ema_updates": int(self.ema.n_averaged), "step": self.step,
                "optimizer": copy.deepcopy(self.opt.state_dict())}

    def _weights_finite(self, ema: bool = True) -> bool:
        """One device sync: the largest magnitude of every weight (and EMA weight), finite?"""
        nets = (self.net, self.ema_net) if ema else (self.net,)
        peaks = [p.detach().abs().amax() for net in nets for p in net.parameters()]
        return bool(torch.isfinite(torch.stack(peaks)).all())

    def _ensure_finite(self, when: str, ema: bool = True) -> bool:
        """True if the weights are finite. Otherwise ``on_nan="stop"`` raises (nothing is
        written) and ``"skip"`` rolls the weights, EMA and optimizer back to the last finite
        state (the last save, or the start) and returns False; the data stream goes on."""
        if self._weights_finite(ema):
            return True
        why = f"the weights became non-finite {when} at step {self.step}"
        if self.cfg.on_nan == "stop":
            raise UserError(f"{why}; {self._checkpoint_note()} (lower lr, or pass --on-nan skip)")
        good = self._good
        self.net.load_state_dict(good["model"])
        self.ema_net.load_state_dict(good["ema"])
        self.ema.n_averaged.fill_(good["ema_updates"])
        self.opt.load_state_dict(copy.deepcopy(good["optimizer"]))
        self.step = good["step"]
        self.rollbacks += 1
        self.nan_skips += 1
        if self.group.main:
            with self._io("write metrics.jsonl"):
                self.log.keep_until(self.step)
        return False

    def _checkpoint_note(self) -> str:
        if getattr(self, "saved_step", None) is None:
            return f"no checkpoint was written in {str(self.out)!r} yet"
        return f"the last checkpoint in {str(self.out)!r} (step {self.saved_step}) is intact"

    def _restore(self, ckpt: dict) -> None:
        try:
            self.net.load_state_dict(ckpt["model"])
            self.ema_net.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(int(ckpt["ema_updates"]) + 1)
            self.opt.load_state_dict(ckpt["optimizer"])
            self.step = int(ckpt["step"])
            self.schedule.total_steps = int(ckpt["total_steps"])
            self.elapsed = float(ckpt["elapsed"])
            self.nan_skips = int(ckpt.get("nan_skips", 0))
            self.critic_fit = ckpt.get("critic_fit")
            if "sampler" in ckpt:  # runs saved before the epoch sampler start a fresh epoch
                self.sampler.load_state_dict(ckpt["sampler"])
            states = ckpt.get("rank_rng") or [ckpt]
            if self.group.rank < len(states):
                set_rng_state(states[self.group.rank], self.rng, self.device)
            else:  # more ranks than the run was saved with: valid, but not bit-exact
                seed = rank_seed(self.cfg.seed + self.step, self.group.rank)
                self.rng = np.random.default_rng(seed)
                random.seed(seed)
                pyro.set_rng_seed(seed)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"cannot resume from the checkpoint: {str(e).splitlines()[0]}") from None
        if self.group.main:  # the log keeps only what the checkpoint has seen
            with self._io("rewrite metrics.jsonl"):
                self.log.keep_until(self.step)

    # -- one batch ----------------------------------------------------------------------------
    def sample_batch(self):
        """This rank's share of the next global batch (augmented with this rank's RNG)."""
        idx = self.sampler.next()
        x, y = self.x_train[idx], self.y_train[idx]
        if self.cfg.augment:
            x, y = self.augment(idx, x, y)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=self.device)  # noqa: E731
        return as_t(x), as_t(y)

    def augment(self, idx: np.ndarray, x: np.ndarray, y: np.ndarray):
        """The task's augmentation of training inputs ``idx`` (``x, y``). With ``augment_pool``
        N, each example is one of N + 1 fixed images of itself drawn uniformly: itself, or the
        augmentation seeded by (data_seed, index, k) for k in 1..N, as a data set that holds N
        pre-generated augmentations per input would give (TRM's)."""
        pool = self.cfg.augment_pool
        if not pool:
            return self.task.augment(x, y, self.rng)
        x, y = x.copy(), y.copy()
        picks = self.rng.integers(0, pool + 1, len(idx))
        for i in np.flatnonzero(picks):
            fixed = np.random.default_rng((self.cfg.data_seed, int(idx[i]), int(picks[i])))
            x[i:i + 1], y[i:i + 1] = self.task.augment(x[i:i + 1], y[i:i + 1], fixed)
        return x, y

    def train_batch(self) -> list[dict]:
        """All supervision steps of one batch; one optimizer step each. Returns their logs, whose
        values are means over the global batch (over all ranks)."""
        cfg, net = self.cfg, self.net
        x, y = self.sample_batch()
        post_state = prior_state = None
        prior_states, logs = [], []
        for n in range(cfg.n_supervision):
            if self.elbo is not None:
                self.elbo.beta = self.schedule.beta(self.step)
            loss, out = self.step_loss(x, y, n, post_state, prior_state, tuple(prior_states))
            if "prior_state" in out:  # the critic's prior chain (joint_critic)
                prior_states.append(out["prior_state"][0])
            lr = self.schedule.lr(self.step)
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            net.zero_grad(set_to_none=True)
            names = ["loss", *(k for k in LOGGED if k in out)]
            pieces = {label: out[k] for k, label in (("recon", "reconstruction"), ("kl_total", "KL"),
                                                     ("act", "ACT"), ("lprm", "LPRM")) if k in out}
            bad = non_finite(loss, pieces, "loss")
            # one all-reduce: the ranks agree on skipping (else DDP's backward would deadlock)
            # and get the global means for the logs
            values = [torch.tensor(float(bool(bad)), device=self.device), loss.detach(),
                      *(out[k] for k in names[1:]), *out["kl"].values()]
            summed = self.group.sum(torch.stack(
                [v.to(self.device, torch.float64) for v in values])).tolist()
            n_bad, means = int(summed[0]), [v / self.group.world_size for v in summed[1:]]
            if n_bad and not bad:
                bad = f"the loss became non-finite on {n_bad} of {self.group.world_size} processes"
            if not bad:
                loss.backward()  # under DDP, the gradients are averaged over the ranks here
                grad_norm = torch.nn.utils.clip_grad_norm_(self.clipped, cfg.grad_clip)
                peaks = [p.grad.abs().amax() for p in self.unclipped if p.grad is not None]
                bad = non_finite(grad_norm + sum(peaks), {}, "gradient norm")  # alike on all ranks
            if bad:
                if cfg.on_nan == "stop":
                    raise UserError(f"{bad} at step {self.step}; {self._checkpoint_note()} (lower "
                                    "lr or beta, or pass --on-nan skip)")
                net.zero_grad(set_to_none=True)
                self.nan_skips += 1
                logs.append({"step": self.step, "skipped": bad})
                break  # this batch's chain is unusable; the next batch starts afresh
            for opt in self.optimizers:
                opt.step()
            if not self._ensure_finite("after the update", ema=False):  # skip mode rolled back
                logs.append({"step": self.step, "skipped": "non-finite weights after an update; "
                             f"rolled back to step {self.step}"})
                break
            self.ema.update_parameters(net)
            self.step += 1
            post_state, prior_state = out["post_state"], out.get("prior_state")
            logs.append({"step": self.step, **dict(zip(names, means)),
                         "kl": dict(zip(out["kl"], means[len(names):])),
                         "grad_norm": float(grad_norm), "lr": self.opt.param_groups[0]["lr"]})
        return logs

    # -- the loop -----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Prior rollouts of the EMA weights on (a fixed subset of) the validation split, on an
        RNG forked and seeded by the step: evaluating never changes the training stream."""
        cfg = self.cfg
        model, _ = programs(self.ema_net, cfg)
        return validation_metrics(model, self.task, self.val.sample(cfg.eval_inputs),
                                  cfg.eval_samples, seed=cfg.seed * 1_000_003 + self.step)

    def fit(self) -> dict:
        """Train to ``steps`` (or ``max_minutes``), evaluating every ``eval_interval`` steps and
        checkpointing every ``checkpoint_minutes``; then fit the critic, evaluate, save and
        :meth:`close`. Under torchrun every rank runs it; rank 0 alone evaluates and writes."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        cfg, main = self.cfg, self.group.main
        bar = tqdm(total=self.schedule.total_steps, initial=self.step, desc="train",
                   disable=not self.progress, dynamic_ncols=True)
        last_ckpt = time.monotonic()
        window: list[dict] = []
        last_eval = {}
        consecutive_skips = 0
        while not self.schedule.done(self.step, self.elapsed):
            t0 = time.perf_counter()
            before = self.step
            logs = self.train_batch()
            # the ranks agree on the clock (the slowest rank's) and on when to checkpoint, so
            # they stop, re-plan the schedule and save together
            self.elapsed, due = self.group.max([
                self.elapsed + time.perf_counter() - t0,
                float(time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60)])
            window.extend(logs)
            consecutive_skips = 0 if self.step > before else consecutive_skips + 1
            if consecutive_skips >= 100:
                raise UserError(f"100 batches in a row had a non-finite loss at step {self.step}; "
                                "stopping (lower lr or beta)")
            self.schedule.replan(self.step, self.elapsed)
            self._snapshot_if_due()
            bar.total = self.schedule.total_steps
            bar.update(max(0, self.step - before))
            if self.step // cfg.eval_interval != before // cfg.eval_interval \
                    or self.step >= self.schedule.total_steps:
                if main:
                    last_eval = self._evaluate_and_log(window, bar)
                window = []
            if due:
                self.save()
                last_ckpt = time.monotonic()
        bar.close()
        if main and cfg.critic_fit_steps and self.step and (self.critic_fit or {}).get("step") != self.step:
            self.fit_critic()
        if main and (window or not last_eval):
            last_eval = self.evaluate()
            with self._io("write metrics.jsonl"):
                self.log.append(summarize(window, self.step, self.nan_skips) | last_eval)
        self.save()
        return {"step": self.step, "minutes": self.elapsed / 60} | last_eval

    def _snapshot_if_due(self) -> None:
        """At each of ``snapshot_minutes`` of training time, a loadable copy of the run in
        ``DIR/snapshots/<m>min`` (checkpoint and config; a collective under torchrun)."""
        for minutes in self.cfg.snapshot_minutes:
            if minutes in self._snapshots_taken or self.elapsed < minutes * 60:
                continue
            self._ensure_finite("before a snapshot")
            state = self.state_dict()
            if self.group.main:
                folder = self.out / "snapshots" / f"{minutes:g}min"
                with self._io("write a snapshot"):
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_save(state, folder / CHECKPOINT)
                    (folder / "config.json").write_text(self.cfg.to_json())
            self._snapshots_taken.add(minutes)

    def fit_critic(self) -> None:
        """Refit the EMA model's critic on its own prior rollouts (:mod:`gram_pyro.critic`).

        The fitted critic is kept in the checkpoint beside the training state, which it leaves
        alone (a forked RNG, the EMA and raw weights untouched), so a resumed run trains on
        exactly as if the fit had not happened; :func:`~gram_pyro.checkpoint.load_run` puts
        it on top of the EMA weights. Its report goes to ``critic.json`` in the run folder."""
        cfg = self.cfg
        model, _ = programs(copy.deepcopy(self.ema_net), cfg)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            report, weights = fit_config_critic(
                model, self.task, cfg, np.unique(self.x_train, axis=0),
                steps=min(cfg.critic_fit_steps, self.step),  # a short run gets a short fit
                seconds=self.schedule.critic_seconds(), seed=cfg.seed * 1_000_003 + self.step,
                progress=self.progress)
        self.elapsed += time.perf_counter() - t0
        self.critic_fit = {"step": self.step, "weights": weights, "report": json.dumps(report)}
        with self._io(f"write {CRITIC_REPORT}"):
            (self.out / CRITIC_REPORT).write_text(json.dumps({"step": self.step, **report}, indent=1))

    def _evaluate_and_log(self, window: list[dict], bar) -> dict:
        t0 = time.perf_counter()
        last_eval = self.evaluate()
        record = summarize(window, self.step, self.nan_skips) | last_eval | {
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "total_steps": self.schedule.total_steps, "peak_memory_mb": peak_memory_mb(self.device)}
        with self._io("write metrics.jsonl"):
            self.log.append(record)
        if "loss" in record:
            bar.set_postfix(loss=f"{record['loss']:.3g}", kl=f"{record['kl_total']:.3g}",
                            prior_acc=f"{last_eval['val_prior_acc']:.2f}")
        return last_eval
