"""SVI training of GRAM with deep supervision (DESIGN §1).

Each batch runs ``n_supervision`` supervision steps; every step is one ELBO evaluation of the
model against the guide (T transitions, then the decoder) and one AdamW step, and it starts from
the previous step's final posterior state, detached (truncated backpropagation: memory does not
grow with depth).

Beside the posterior chain runs a *prior* chain (no access to y, no gradient into the trunk).
The critic with its ACT halt and LPRM value heads is fitted on it, because on posterior rollouts
every answer looks correct:
    ACT:  BCE(q_halt(h_n), 1[answer after step n is correct])
    LPRM: BCE(v(h_n), r), r = task.score of the chain's final answer (1 exactly when correct)
After the last step the critic is fitted once more, on many prior rollouts of the finished EMA
model (:meth:`Trainer.fit_critic`, :mod:`gram_pyro.critic`): the jointly trained critic chases
a moving model and ranks one input's trajectories little better than chance.
The metrics log always reports prior-rollout accuracy on the validation split: a posterior
that smuggles y to the decoder shows ~100% posterior accuracy and chance prior accuracy.
The loss of one supervision step is the module :class:`~gram_pyro.supervision.SupervisionStep`.

Batches come from an :class:`~gram_pyro.distributed.EpochSampler`: every training example once per
epoch, the position saved in the checkpoint. Under torchrun (``torchrun --nproc_per_node=P -m
gram_pyro.cli train ...``) the run is data-parallel: the step module is wrapped in
DistributedDataParallel and ``batch_size`` is the GLOBAL batch, each of the P ranks taking
``batch_size / P`` examples (global batch = per-rank batch x P). The ranks' shares of a step are
the batch a one-process run sees at that step, the logged losses are means over all ranks, and
only rank 0 prints, logs, evaluates and checkpoints (:mod:`gram_pyro.distributed`).
``precision="bf16"`` trains under bfloat16 autocast with float32 probabilistic heads.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from gram_pyro import metrics
from gram_pyro.checkpoint import CHECKPOINT, atomic_save, build_net, check_writable, config_of, \
    load_checkpoint, run_data
from gram_pyro.config import Config
from gram_pyro.critic import CRITIC_REPORT, fit_config_critic
from gram_pyro.distributed import EpochSampler, Group, check_batch, rank_seed
from gram_pyro.elbo import GramELBO
from gram_pyro.errors import UserError
from gram_pyro.inference import prior_rollouts
from gram_pyro.recursion import transition_rules
from gram_pyro.supervision import SupervisionStep
from gram_pyro.tasks import get_task
from guides.gram import GramGuide
from models.gram import GramModel


def programs(net, cfg: Config):
    """The model and guide of a config, sharing ``net``."""
    kw = dict(k_low=cfg.k_low, t_high=cfg.t_high, n_supervision=cfg.n_supervision,
              deterministic=cfg.deterministic)
    return GramModel(net, **kw), GramGuide(net, **kw)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for CUDA (one GPU per rank)."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank with LOCAL_RANK={local_rank} has no GPU of its own "
                            f"({torch.cuda.device_count()} visible); lower --nproc_per_node")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                        "use --precision fp32")


class EMA:
    """Exponential moving average of the weights, used for evaluation. The decay is warmed up
    as ``min(decay, (1 + k) / (10 + k))`` so early averages are not dominated by the init."""

    def __init__(self, net, decay: float):
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, net):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for pe, p in zip(self.net.parameters(), net.parameters()):
            pe.lerp_(p, 1 - d)
        self.updates += 1


class Trainer:
    """Trains one run into ``out_dir`` (fresh, or resumed from its checkpoint).

    Under torchrun every rank builds its own Trainer: ``group`` (default: from the environment,
    see :mod:`gram_pyro.distributed`) says which rank this is; the process group is joined here
    and left by :meth:`close` (which :meth:`fit` calls at the end).
    """

    def __init__(self, cfg: Config, out_dir, resume: bool = False, progress: bool = True,
                 group: Group | None = None):
        self.out = Path(out_dir)
        self.group = group or Group.from_environment()
        self.progress = progress and self.group.main
        if (self.out / CHECKPOINT).exists():
            if not resume:
                raise UserError(f"{str(self.out)!r} already holds a run; pass --resume to continue "
                                "it, or choose another --out")
            ckpt = load_checkpoint(self.out)
            cfg = config_of(ckpt)
        elif resume:
            raise UserError(f"nothing to resume: no {CHECKPOINT} in {str(self.out)!r}")
        else:
            ckpt = None
        self.cfg = cfg
        rank, world = self.group.rank, self.group.world_size
        check_batch(cfg.batch_size, world)  # on every rank, before any collective
        self.device = resolve_device(cfg.device, self.group.local_rank)
        check_precision(cfg.precision, self.device)
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
        self.net = build_net(self.task, cfg).to(self.device)
        self.model, self.guide = programs(self.net, cfg)
        self.elbo = GramELBO(beta=cfg.beta, kl_balance=cfg.kl_balance)
        self.rules = transition_rules(cfg.objective, cfg.t_high)
        step = SupervisionStep(self.net, self.model, self.guide, self.elbo, self.rules, self.task,
                               act_weight=cfg.act_weight, lprm_weight=cfg.lprm_weight,
                               n_supervision=cfg.n_supervision, precision=cfg.precision)
        # DDP averages the gradients over the ranks in backward; find_unused_parameters because
        # the LPRM head (and, in the baseline, the Gaussian heads) get no loss on some steps
        self.step_loss = DistributedDataParallel(
            step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True) if self.group.active else step
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            (no_decay if p.dim() < 2 else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=tuple(cfg.betas))
        self.ema = EMA(self.net, cfg.ema)  # identical on every rank, as the weights are
        seed = rank_seed(cfg.seed, rank)  # noise and augmentation differ between ranks
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.total_steps = cfg.steps
        self.elapsed = 0.0
        self.nan_skips = 0
        self.critic_fit = None  # the critic fitted on the EMA model at the end (gram_pyro.critic)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            random.seed(seed)
            pyro.set_rng_seed(seed)
            if self.group.main:
                (self.out / "config.json").write_text(cfg.to_json())
                (self.out / "metrics.jsonl").write_text("")

    def close(self) -> None:
        """Leave the process group this trainer joined (a no-op for one process)."""
        self.group.close()

    # -- checkpoints --------------------------------------------------------------------------
    def rng_state(self) -> dict:
        state = {"numpy_rng": json.dumps(self.rng.bit_generator.state),
                 "python_rng": json.dumps(random.getstate()),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        python = json.loads(state["python_rng"])
        random.setstate((python[0], tuple(python[1]), python[2]))
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def state_dict(self) -> dict:
        """The checkpoint; a collective under torchrun (every rank's RNG state is gathered)."""
        ranks = self.group.gather(self.rng_state())
        return {
            "format": "gram-pyro/1",
            "config": self.cfg.to_json(),
            "model": self.net.state_dict(),
            "ema": self.ema.net.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed": self.elapsed,
            "nan_skips": self.nan_skips,
            "sampler": self.sampler.state_dict(),
            "world_size": self.group.world_size,
            **({"critic_fit": self.critic_fit} if self.critic_fit else {}),
            **ranks[0],  # rank 0's RNG state at the top level, as one-process runs have it
            **({"rank_rng": ranks} if self.group.active else {}),
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0); every rank must call it (it gathers RNG states)."""
        state = self.state_dict()
        if self.group.main:
            atomic_save(state, self.out / CHECKPOINT)
        self.group.barrier()  # on every rank, save() returns once the checkpoint is on disk

    def _restore(self, ckpt: dict) -> None:
        try:
            self.net.load_state_dict(ckpt["model"])
            self.ema.net.load_state_dict(ckpt["ema"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.ema.updates = int(ckpt["ema_updates"])
            self.step, self.total_steps = int(ckpt["step"]), int(ckpt["total_steps"])
            self.elapsed = float(ckpt["elapsed"])
            self.nan_skips = int(ckpt.get("nan_skips", 0))
            self.critic_fit = ckpt.get("critic_fit")
            if "sampler" in ckpt:  # runs saved before the epoch sampler start a fresh epoch
                self.sampler.load_state_dict(ckpt["sampler"])
            states = ckpt.get("rank_rng") or [ckpt]
            if self.group.rank < len(states):
                self._set_rng_state(states[self.group.rank])
            else:  # more ranks than the run was saved with: valid, but not bit-exact
                seed = rank_seed(self.cfg.seed + self.step, self.group.rank)
                self.rng = np.random.default_rng(seed)
                random.seed(seed)
                pyro.set_rng_seed(seed)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"cannot resume from the checkpoint: {str(e).splitlines()[0]}") from None
        # the log keeps only what the checkpoint has seen, so a resumed curve continues cleanly
        log = self.out / "metrics.jsonl"
        if self.group.main and log.exists():
            kept = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            log.write_text("".join(line + "\n" for line in kept))

    # -- one batch ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return cfg.lr
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def sample_batch(self):
        """This rank's share of the next global batch (augmented with this rank's RNG)."""
        idx = self.sampler.next()
        x, y = self.x_train[idx], self.y_train[idx]
        if self.cfg.augment:
            x, y = self.task.augment(x, y, self.rng)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=self.device)  # noqa: E731
        return as_t(x), as_t(y)

    def train_batch(self) -> list[dict]:
        """All supervision steps of one batch; one optimizer step each. Returns their logs, whose
        values are means over the global batch (over all ranks)."""
        cfg, net = self.cfg, self.net
        x, y = self.sample_batch()
        post_state = prior_state = None
        prior_states, logs = [], []
        for n in range(cfg.n_supervision):
            loss, out = self.step_loss(x, y, n, post_state, prior_state, tuple(prior_states))
            prior_states.append(out["prior_state"][0])
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            self.opt.zero_grad(set_to_none=True)
            pieces = {"reconstruction": out["recon"], "KL": out["kl_total"], "ACT": out["act"],
                      "LPRM": out["lprm"]}
            bad = self._non_finite(loss, pieces, "loss")
            # one all-reduce: the ranks agree on skipping (else DDP's backward would deadlock)
            # and get the global means for the logs
            names = ["loss", "recon", "kl_total", "act", "lprm", "posterior_acc", "prior_batch_acc"]
            values = [torch.tensor(float(bool(bad))), loss.detach(),
                      *(out[k] for k in names[1:]), *out["kl"].values()]
            summed = self.group.sum(torch.stack(
                [v.to(self.device, torch.float64) for v in values])).tolist()
            n_bad, means = int(summed[0]), [v / self.group.world_size for v in summed[1:]]
            if n_bad and not bad:
                bad = f"the loss became non-finite on {n_bad} of {self.group.world_size} processes"
            if not bad:
                loss.backward()  # under DDP, the gradients are averaged over the ranks here
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip) \
                if not bad else torch.tensor(float("nan"))
            bad = bad or self._non_finite(grad_norm, {}, "gradient norm")  # the same on all ranks
            if bad:
                if cfg.on_nan == "stop":
                    raise UserError(f"{bad} at step {self.step}; the last checkpoint in "
                                    f"{str(self.out)!r} is intact (lower lr or beta, or pass "
                                    "--on-nan skip)")
                self.opt.zero_grad(set_to_none=True)
                self.nan_skips += 1
                logs.append({"step": self.step, "skipped": bad})
                break  # this batch's chain is unusable; the next batch starts afresh
            self.opt.step()
            self.ema.update(net)
            self.step += 1
            post_state, prior_state = out["post_state"], out["prior_state"]
            logs.append({"step": self.step, **dict(zip(names, means)),
                         "kl": dict(zip(out["kl"], means[len(names):])),
                         "grad_norm": float(grad_norm), "lr": self.opt.param_groups[0]["lr"]})
        return logs

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Prior rollouts of the EMA weights on (a fixed subset of) the validation split.

        It runs on a forked RNG seeded by the step, so evaluating (or not) never changes the
        training stream: a resumed run matches an uninterrupted one bit for bit."""
        cfg = self.cfg
        split = self.val.sample(cfg.eval_inputs)
        model, _ = programs(self.ema.net, cfg)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)
            traj = prior_rollouts(model, split.inputs, cfg.eval_samples, device=self.device)
        cov = metrics.coverage(self.task, split, traj.answers)
        return {"val_prior_acc": cov["sample_accuracy"],
                f"val_coverage_micro@{cfg.eval_samples}": cov["micro"],
                f"val_coverage_macro@{cfg.eval_samples}": cov["macro"]}

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``steps`` (or ``max_minutes``), evaluating every ``eval_interval`` steps and
        checkpointing every ``checkpoint_minutes``; then evaluate, save and :meth:`close`.
        Under torchrun every rank runs it; rank 0 alone evaluates and writes."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        cfg, main = self.cfg, self.group.main
        log_path = self.out / "metrics.jsonl"
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not self.progress,
                   dynamic_ncols=True)
        last_ckpt = time.monotonic()
        window: list[dict] = []
        last_eval = {}
        consecutive_skips = 0
        while self.step < self.total_steps:
            if cfg.max_minutes and self.elapsed >= self.training_seconds():
                break
            t0 = time.perf_counter()
            before = self.step
            logs = self.train_batch()
            # the ranks agree on the clock (the slowest rank's) and on when to checkpoint, so
            # they stop, re-plan the schedule and save together
            self.elapsed, due = self.group.max([
                self.elapsed + time.perf_counter() - t0,
                float(time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60)])
            window.extend(logs)
            bar.update(self.step - before)
            consecutive_skips = 0 if self.step > before else consecutive_skips + 1
            if consecutive_skips >= 100:
                raise UserError(f"100 batches in a row had a non-finite loss at step {self.step}; "
                                "stopping (lower lr or beta)")
            if cfg.max_minutes:
                self._update_budget(bar)
            if self.step // cfg.eval_interval != before // cfg.eval_interval \
                    or self.step >= self.total_steps:
                if main:
                    last_eval = self._evaluate_and_log(window, log_path, bar)
                window = []
            if due:
                self.save()
                last_ckpt = time.monotonic()
        bar.close()
        if main and cfg.critic_fit_steps and self.step and (self.critic_fit or {}).get("step") != self.step:
            self.fit_critic()
        if main and (window or not last_eval):
            last_eval = self.evaluate()
            with open(log_path, "a") as f:
                f.write(json.dumps(self._summarize(window) | last_eval) + "\n")
        self.save()
        return {"step": self.step, "minutes": self.elapsed / 60} | last_eval

    def training_seconds(self) -> float:
        """The share of ``max_minutes`` for the model; the critic fit takes the rest."""
        share = self.cfg.critic_fit_share if self.cfg.critic_fit_steps else 0.0
        return self.cfg.max_minutes * 60 * (1 - share)

    def fit_critic(self) -> None:
        """Refit the EMA model's critic on its own prior rollouts (:mod:`gram_pyro.critic`).

        The fitted critic is kept in the checkpoint beside the training state, which it leaves
        alone (a forked RNG, the EMA and raw weights untouched), so a resumed run trains on
        exactly as if the fit had not happened; :func:`~gram_pyro.checkpoint.load_run` puts
        it on top of the EMA weights. Its report goes to ``critic.json`` in the run folder."""
        cfg = self.cfg
        net = copy.deepcopy(self.ema.net)
        model, _ = programs(net, cfg)
        seconds = cfg.max_minutes * 60 * cfg.critic_fit_share if cfg.max_minutes else None
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            report, weights = fit_config_critic(
                model, self.task, cfg, np.unique(self.x_train, axis=0),
                steps=min(cfg.critic_fit_steps, self.step),  # a short run gets a short fit
                seconds=seconds, seed=cfg.seed * 1_000_003 + self.step, progress=self.progress,
                device=self.device)
        self.elapsed += time.perf_counter() - t0
        self.critic_fit = {"step": self.step, "weights": weights, "report": json.dumps(report)}
        (self.out / CRITIC_REPORT).write_text(json.dumps({"step": self.step, **report}, indent=1))

    def _evaluate_and_log(self, window: list[dict], log_path: Path, bar) -> dict:
        t0 = time.perf_counter()
        last_eval = self.evaluate()
        record = self._summarize(window) | last_eval | {
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "total_steps": self.total_steps, "peak_memory_mb": self.peak_memory_mb()}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if "loss" in record:
            bar.set_postfix(loss=f"{record['loss']:.3g}", kl=f"{record['kl_total']:.3g}",
                            prior_acc=f"{last_eval['val_prior_acc']:.2f}")
        return last_eval

    def _update_budget(self, bar) -> None:
        """With ``max_minutes``, estimate how many steps fit in the time left and set the LR
        schedule's horizon to that (re-estimated every batch from the mean step time, so a
        slow or busy start does not shrink the run; the hard stop is the time itself)."""
        if self.step < 50:
            return
        per_step = self.elapsed / self.step
        remaining = max(0.0, self.training_seconds() - self.elapsed)
        self.total_steps = min(self.cfg.steps, self.step + int(remaining / per_step))
        bar.total = self.total_steps
        bar.refresh()

    def peak_memory_mb(self) -> float:
        """Peak accelerator memory on CUDA, else the process's peak resident set size."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @staticmethod
    def _non_finite(value, pieces: dict, what: str) -> str | None:
        """None if ``value`` is finite, else a message naming the term that went bad."""
        if bool(torch.isfinite(value)):
            return None
        culprits = [name for name, v in pieces.items() if not bool(torch.isfinite(v))]
        return f"the {what} became {float(value.detach())}" + (
            f" ({', '.join(culprits)} term{'s' if len(culprits) > 1 else ''} not finite)"
            if culprits else "")

    def _summarize(self, window: list[dict]) -> dict:
        skipped = [w for w in window if "skipped" in w]
        window = [w for w in window if "skipped" not in w] or [{"step": self.step}]
        out = {"step": window[-1]["step"], "nan_skips_total": self.nan_skips,
               "nan_skips": len(skipped)}
        if "loss" not in window[-1]:
            return out
        for key in ("loss", "recon", "kl_total", "act", "posterior_acc", "prior_batch_acc",
                    "grad_norm", "lr"):
            out[key] = float(np.mean([w[key] for w in window]))
        lprm = [w["lprm"] for w in window if w["lprm"]]
        out["lprm"] = float(np.mean(lprm)) if lprm else None
        # KL per transition t, averaged over supervision steps: site eps_{n}_{t}
        per_t: dict[str, list] = {}
        for w in window:
            for site, v in w["kl"].items():
                per_t.setdefault("t" + site.rsplit("_", 1)[1], []).append(v)
        out["kl_per_transition"] = {k: float(np.mean(v)) for k, v in sorted(per_t.items())}
        return out
