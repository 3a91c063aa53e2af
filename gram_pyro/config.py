"""Run configuration: one dataclass, named presets, and ``key=value`` overrides.

A run is ``preset + overrides``; the resolved config is saved as ``DIR/config.json`` and inside
every checkpoint, so a run folder always says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from gram_pyro.errors import UserError
from gram_pyro.recursion import OBJECTIVES
from gram_pyro.tasks import parse_task_name


@dataclass
class Config:
    """Every knob of a GRAM run. Symbols follow docs/design.md §1 and §7.

    Task: ``task`` (registry name), ``unconditional`` (blank input, p(x)), ``data_seed``,
        ``data_options`` (the task's dataset options, e.g. ``{"csv": PATH}`` for sudoku-9).
    Model: ``d_model`` (D), ``n_layers`` blocks per f, ``block`` ("mixer"/"attention"),
        ``n_heads``, ``expansion`` (SwiGLU width factor), ``head_expansion`` (that of the Gaussian
        heads; 0: the same), ``share_core`` (f_low = f_high),
        ``n_prefix`` (P), ``sigma_floor``, ``init_sigma``, ``critic_layers`` (blocks of the
        critic that the ACT and LPRM heads read the state through; 0: linear probes), ``links``
        (the encoder also reads the task's structure, :meth:`~gram_pyro.tasks.base.Task.links`:
        a colouring node its adjacency row, a Sudoku cell its peers, an N-Queens cell the cells
        that attack it; the input is unchanged),
        ``stem`` (how the guide reads an image answer: a per-pixel ``embed`` or the paper's
        ``conv`` stem, :class:`~gram_pyro.nets.ConvStem`; image tasks only).
    Recursion: ``k_low`` (K), ``t_high`` (T), ``n_supervision`` (N_sup), ``levels`` (2: the
        h / l recursion; 1: a single level, the Looped Transformer baseline).
    Objective: ``objective`` (see :func:`gram_pyro.recursion.transition_rules`), ``beta``
        (reached from ``beta_start`` over ``beta_anneal_steps``: KL annealing or a warm-down),
        ``kl_balance``, ``deterministic`` (noise off: the baseline), ``act_weight``,
        ``lprm_weight``.
    Ablations (the paper's Table 3, docs/design.md §11): ``noise`` ("learned"; "zero_mean": the
        prior's loc is 0, only sigma is learned; "mean_only": no noise, h_t = u_t + mu_p(u_t)),
        ``decode`` ("argmax"; "sample": rollouts sample each answer token), ``z0`` ("fixed";
        "random": a fresh N(0, I) start state per trajectory).
    Baseline: ``model`` ("gram"; "ar": the autoregressive Transformer baseline of
        :mod:`gram_pyro.models.ar`, trained by maximum likelihood and sampled token by token, with
        ``d_model``, ``n_layers``, ``n_heads``, ``expansion`` and the optimisation fields; it has
        no recursion, noise or critic, so ``n_supervision`` is 1 and ``block`` attention).
    Joint critic: with ``joint_critic`` each supervision step also runs a prior chain (no y, no
        gradient into the trunk) on which the ACT and LPRM heads learn (``act_weight``,
        ``lprm_weight``); without it, training is the ELBO alone and the critic learns only in
        the final fit.
    Critic fit (:mod:`gram_pyro.critic`): after training, the critic is refitted on prior
        rollouts of the EMA model: ``critic_fit_steps`` optimizer steps (0: off) on
        ``critic_fit_trajectories`` trajectories of each of up to ``critic_fit_inputs``
        training inputs. With ``max_minutes`` it takes ``critic_fit_share`` of the budget.
    Optimisation: AdamW (``lr``, ``betas``, ``weight_decay``), ``grad_clip`` (global norm),
        ARC's puzzle table by sign descent on the rows a batch touches (``puzzle_lr``,
        ``puzzle_weight_decay``; :class:`~gram_pyro.train.RowSignSGD`, outside the clipping),
        ``warmup_steps``, ``lr_schedule`` ("cosine"/"constant"), ``ema`` decay, ``batch_size``,
        ``augment`` (task symmetries), ``steps`` (optimizer steps) and ``max_minutes``.
        ``batch_size`` is the GLOBAL batch: under torchrun with W processes each rank takes
        ``batch_size / W`` examples (W must divide it), so global batch = per-rank batch x W and
        a run sees the same examples at every step whatever W is (:mod:`gram_pyro.distributed`).
    Precision: ``precision`` "fp32", "bf16" (bfloat16 autocast of the networks; the Gaussian
        heads, decoder, KLs and log-probabilities stay float32), or "auto" (the default: bf16
        where the device computes it natively, :func:`gram_pyro.build.resolve_precision`; a run
        stores the precision it chose).
    Logging: ``eval_interval`` (optimizer steps), ``eval_inputs`` (validation inputs per
        evaluation), ``eval_samples`` (prior trajectories per input), ``checkpoint_minutes``,
        ``snapshot_minutes`` (a loadable copy of the run in ``DIR/snapshots/<m>min`` once training
        time reaches each m: one run measured at several budgets),
        ``pyro_validation`` (Pyro validation during training: slower, for debugging and tests).
    """

    task: str = "nqueens-8"
    unconditional: bool = False
    data_seed: int = 0
    data_options: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    # model
    d_model: int = 64
    n_layers: int = 2
    block: str = "mixer"
    n_heads: int = 4
    expansion: float = 2.0
    head_expansion: float = 0.0  # SwiGLU width factor of the Gaussian heads; 0: as expansion
    share_core: bool = True
    n_prefix: int = 1
    sigma_floor: float = 1e-3
    # the noise scale the Gaussian heads start from, against a state post-norm keeps at unit RMS;
    # colouring starts from TASK_INIT_SIGMA's smaller scale instead (make_config; docs/design.md §7)
    init_sigma: float = 1.0
    critic_layers: int = 1
    links: bool = True  # the encoder reads the task's structure links (Task.links), if any
    stem: str = "embed"  # how q reads an image answer: per-pixel "embed" or the paper's "conv"
    # recursion
    k_low: int = 2
    levels: int = 2  # 1: one recursion level, u_t = f^(K+1)(h + e_x): the Looped Transformer
    t_high: int = 2
    n_supervision: int = 4
    # objective
    objective: str = "heads"
    # The paper's beta (0.07 on N-Queens, 0.05 for unconditional Sudoku) is for D=512, T=3,
    # N_sup=16. The KL is a sum over the whole [P+L, D] state, and a small model at a CPU budget
    # does better with a stronger pull of the posterior toward the prior, which keeps the prior
    # rollouts (what every figure measures) close to what the decoder learned from. Measured at
    # the cpu preset: unconditional Shidoku, 4 min, beta=1 gave 86.5% valid and 99.7% of the 288
    # grids where 0.05 gave 82.0% and 83.0% (benchmarks/beta.py, docs/RESULTS.md). beta=2 against
    # 1 (exploration, seed 0, one run each, docs/design.md §7): N-Queens 8x8 at 3 min 98.1% /
    # 90.6% (accuracy / micro coverage@20) against 95.1% / 89.5%; colouring-8 at 5 min 67.3% /
    # 51.2% against 11.4% / 18.6% (beta=4: 51.1% / 23.2%, 0.5: 7.3% / 13.4%); unconditional
    # Shidoku at 15 min 100% valid and 287 of 288 grids against 97.3% and 283 (16 steps). The
    # paper preset restores the paper's betas.
    beta: float = 2.0
    # beta moves linearly from beta_start to beta over beta_anneal_steps (0: beta throughout);
    # from 0 it is KL annealing, from above beta a warm-down (schedule.Schedule.beta)
    beta_anneal_steps: int = 0
    beta_start: float = 0.0
    kl_balance: float = 0.8
    deterministic: bool = False
    # the paper's Table 3 ablations, each one switch in the same code path (docs/design.md §11)
    noise: str = "learned"  # "zero_mean": N(0, sigma^2); "mean_only": N(mu, 0), h = u + mu(u)
    decode: str = "argmax"  # "sample": rollouts draw each answer token from the decoder
    z0: str = "fixed"  # "random": z_0 ~ N(0, I) per trajectory (sample sites z0_h, z0_l)
    model: str = "gram"  # "ar": the autoregressive Transformer baseline (models/ar.py)
    # Fitting the critic on a prior chain during training costs a third of every step and its
    # gradients share the global clipping norm with the model's; measured on N-Queens 8x8 at 3
    # CPU minutes (docs/RESULTS.md, recipe_nqueens-8) the ELBO alone trained faster and better,
    # and the final fit then trains the critic on the finished model.
    joint_critic: bool = False
    act_weight: float = 1.0
    lprm_weight: float = 1.0
    # the LPRM's loss against the trajectory's score r: "bce" on the value logit, or the paper's
    # "squared" error (sigmoid(v) - r)^2 (the paper preset's); both are minimized by E[r | z_t]
    lprm_loss: str = "bce"
    critic_fit_steps: int = 600
    critic_fit_inputs: int = 1024
    critic_fit_trajectories: int = 8
    critic_fit_share: float = 0.1
    # optimisation
    batch_size: int = 64
    lr: float = 2e-3
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # ARC's puzzle embeddings (one row per puzzle and view): sign descent on the rows in the
    # batch, under the same schedule as lr (TRM trains its table so, at 100 x its lr)
    puzzle_lr: float = 2e-3
    puzzle_weight_decay: float = 0.1
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    ema: float = 0.999
    augment: bool = True
    # 0: a fresh augmentation of every training input each time it is drawn; N: one of N fixed
    # augmentations per training input, or the input itself (TRM's pre-generated data set)
    augment_pool: int = 0
    steps: int = 20_000
    max_minutes: float = 0.0
    # "bf16": autocast of the networks, probabilistic heads in float32; "auto": bf16 where the
    # device computes it natively (1.67x the steps/s on 2 AVX512-BF16 cores), else fp32
    precision: str = "auto"
    # logging
    eval_interval: int = 400
    eval_inputs: int = 256
    eval_samples: int = 4
    checkpoint_minutes: float = 2.0
    snapshot_minutes: tuple = ()  # loadable copies of the run at these training minutes
    on_nan: str = "stop"  # "stop" (clear error, last checkpoint intact) or "skip" the batch
    pyro_validation: bool = False  # Pyro's shape / support checks on every step (tests turn them on)

    def validate(self) -> "Config":
        """Every field checked: its type, finite, in its range (:data:`RANGES`), one of its
        choices (:data:`CHOICES`), and the few rules that tie fields together. A config read
        back from a checkpoint goes through the same checks."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.block == "attention" and self.d_model % (2 * self.n_heads):
            raise UserError(f"d_model ({self.d_model}) must be divisible by 2*n_heads ({2 * self.n_heads})")
        if self.deterministic and self.noise != "learned":
            raise UserError(f"noise={self.noise} changes the guidance noise, which the "
                            "deterministic baseline does not have; drop one of the two")
        if self.model == "ar":
            self._check_ar()
        if self.head_expansion and int(self.head_expansion * self.d_model) < 1:
            raise UserError(f"head_expansion x d_model must be at least 1 (or head_expansion 0), "
                            f"got {self.head_expansion:g} x {self.d_model}")
        if int(self.expansion * self.d_model) < 1:
            raise UserError(f"expansion x d_model must be at least 1, got {self.expansion:g} x {self.d_model}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"betas takes two numbers in [0, 1) (AdamW's), got {self.betas}")
        if not self.sigma_floor < self.init_sigma:
            raise UserError(f"init_sigma ({self.init_sigma:g}) must be above sigma_floor "
                            f"({self.sigma_floor:g})")
        return self

    # what the AR baseline has no use for, with the value it must keep (make_config sets them)
    AR_FIXED = {"deterministic": False, "noise": "learned", "decode": "argmax", "z0": "fixed",
                "levels": 2, "joint_critic": False, "critic_fit_steps": 0, "n_supervision": 1,
                "block": "attention", "stem": "embed"}

    def _check_ar(self) -> None:
        for key, value in self.AR_FIXED.items():
            if getattr(self, key) != value:
                raise UserError(f"model=ar (the autoregressive baseline) needs {key}="
                                f"{str(value).lower() if isinstance(value, bool) else value}; it has "
                                f"no recursion, latent noise or critic (got {key}={getattr(self, key)})")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown config field {sorted(unknown)[0]!r}")
        d = dict(d)
        d.setdefault("critic_layers", 0)  # runs saved before the critic existed had linear heads
        d.setdefault("critic_fit_steps", 0)  # nor a final critic fit
        d.setdefault("links", False)  # nor structure links in the encoder
        for f in dataclasses.fields(cls):  # JSON has lists where the config has tuples
            if isinstance(f.default, tuple) and isinstance(d.get(f.name), list):
                d[f.name] = tuple(d[f.name])
        return cls(**d).validate()


SEED_MAX = 2 ** 32 - 1  # numpy's seeds: 0 .. 2^32 - 1

# Ranges of the numeric fields: (low, high, low_open); every number must also be finite. A new
# numeric field needs an entry (tests/test_hostile.py fails without one).
RANGES = {
    "data_seed": (0, SEED_MAX, False), "seed": (0, SEED_MAX, False),
    "d_model": (1, 16_384, False), "n_layers": (1, 64, False), "n_heads": (1, 256, False),
    "expansion": (0, 64, True), "head_expansion": (0, 64, False), "n_prefix": (1, 1024, False), "sigma_floor": (0, 1, True),
    "init_sigma": (0, 100, True), "critic_layers": (0, 64, False),
    "k_low": (1, 64, False), "levels": (1, 2, False), "t_high": (1, 64, False), "n_supervision": (1, 1024, False),
    "beta": (0, 1e6, True), "beta_anneal_steps": (0, 10 ** 9, False), "beta_start": (0, 1e6, False),
    "kl_balance": (0, 1, False),
    "act_weight": (0, 1e6, False), "lprm_weight": (0, 1e6, False),
    "critic_fit_steps": (0, 10 ** 9, False), "critic_fit_inputs": (2, 10 ** 8, False),
    "critic_fit_trajectories": (1, 10_000, False), "critic_fit_share": (0, 0.99, False),
    "batch_size": (1, 10 ** 6, False), "lr": (0, 10, True), "betas": (0, 0.999999, False),
    "weight_decay": (0, 1e3, False), "grad_clip": (0, 1e9, True),
    "puzzle_lr": (0, 10, True), "puzzle_weight_decay": (0, 1e3, False),
    "warmup_steps": (0, 10 ** 9, False), "ema": (0, 0.999999, False),
    "augment_pool": (0, 10 ** 9, False),
    "steps": (1, 10 ** 9, False), "max_minutes": (0, 1e6, False),  # 0: no time budget
    "eval_interval": (1, 10 ** 9, False), "eval_inputs": (1, 10 ** 8, False),
    "eval_samples": (1, 10_000, False), "checkpoint_minutes": (0, 1e6, False),
    "snapshot_minutes": (0, 1e6, True),
}
# The text fields with a closed set of values (``task`` and ``device`` have checks of their own).
CHOICES = {
    "objective": tuple(OBJECTIVES), "block": ("mixer", "attention"), "lr_schedule": ("cosine", "constant"),
    "precision": ("auto", "fp32", "bf16"), "on_nan": ("stop", "skip"), "stem": ("embed", "conv"),
    "noise": ("learned", "zero_mean", "mean_only"), "decode": ("argmax", "sample"),
    "z0": ("fixed", "random"), "model": ("gram", "ar"), "lprm_loss": ("bce", "squared"),
}


def _check_number(name: str, value) -> None:
    lo, hi, open_lo = RANGES[name]
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if value < lo or (open_lo and value == lo) or value > hi:
        low = f"above {lo:g}" if open_lo else f"at least {lo:g}"
        raise UserError(f"{name} must be {low} and at most {hi:g}, got {value:g}")


def _check_field(f: dataclasses.Field, value) -> None:
    """One field's type, finiteness, range or choices; a UserError naming the field."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else dict
    name = f.name
    number = (int, float) if kind is float else (int,)
    if kind is bool and not isinstance(value, bool) or kind is str and not isinstance(value, str) \
            or kind in (int, float) and (isinstance(value, bool) or not isinstance(value, number)) \
            or kind is tuple and not isinstance(value, (tuple, list)) \
            or kind is dict and not isinstance(value, dict):
        raise UserError(f"{name} takes a {kind.__name__}, got {value!r}")
    if kind in (int, float):
        _check_number(name, value)
    elif kind is tuple:
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{name} takes numbers, got {value!r}")
            _check_number(name, v)
    elif name in CHOICES and value not in CHOICES[name]:
        raise UserError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    elif name == "task":
        parse_task_name(value)
    elif name == "device" and not re.fullmatch(r"cpu|cuda(:[0-9]{1,2})?", value):
        raise UserError(f"device must be cpu or cuda, got {value!r}")
    elif kind is dict and not all(isinstance(k, str) for k in value):
        raise UserError(f"{name} takes text keys, got {value!r}")


PRESETS = {
    # small enough to train in minutes on 2 CPU cores (the README demo)
    "cpu": {},
    # docs/design.md §7: D=512, attention (make_config switches Sudoku to the mixer and K=6),
    # T=3, N_sup=16, AdamW lr 1e-4, wd 1.0, batch 768, EMA 0.9999, 2k warm-up.
    # The paper's budget: about 7M for the backbone and 10M for GRAM on Sudoku. The Gaussian heads
    # at the core's width (4 D) would add 12.6M alone, so each is one SwiGLU MLP of width D
    # (head_expansion 1: 3.1M for the four), and the halt and value heads read token 0 linearly
    # as TRM's do (critic_layers 0); `gram train --preset paper --dry-run` prints the count.
    # The LPRM is fitted by the paper's squared error, and each training input draws from a fixed
    # pool of 1,000 augmentations of itself, as TRM's pre-generated data set does. ARC's puzzle
    # table moves by sign descent at 1e-2 with weight decay 0.1 (TRM's ARC settings; the paper
    # gives none of its own).
    "paper": dict(d_model=512, n_layers=2, block="attention", n_heads=8, expansion=4.0,
                  head_expansion=1.0, critic_layers=0, lr_schedule="constant", n_prefix=16,
                  k_low=4, t_high=3, n_supervision=16, lr=1e-4, weight_decay=1.0,
                  batch_size=768, ema=0.9999, warmup_steps=2000, steps=100_000, joint_critic=True,
                  lprm_loss="squared", augment_pool=1000, eval_interval=2000, eval_inputs=1024,
                  puzzle_lr=1e-2, puzzle_weight_decay=0.1),
}

# the paper's beta per task (docs/design.md §7); small models need retuning
# (the paper gives none for ARC: Sudoku's, the other single-answer grid task, is our choice)
PAPER_BETA = {"sudoku": 0.1, "nqueens-8": 0.07, "nqueens-10": 0.045, "coloring-8": 0.5,
              "coloring-10": 0.45, "sudoku-unconditional": 0.05, "arc": 0.1}

# init_sigma by task family, where it differs from the field's default (docs/design.md §7). At
# 1.0 colouring-10 seed 0 stayed on a plateau where only the guide's channel decoded (7.3% prior
# accuracy at 15 minutes), and at 0.3 both seeds leave it early; elsewhere 0.3 measured worse
# (N-Queens 10x10 and unconditional Shidoku) or no better (N-Queens 8x8)
TASK_INIT_SIGMA = {"coloring": 0.3}


def _coerce(field: dataclasses.Field, text: str):
    if field.default is dataclasses.MISSING:
        raise UserError(f"{field.name} cannot be set with --set; use --data key=value")
    kind = type(field.default)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{field.name} takes true or false, got {text!r}")
    if kind is tuple:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"{field.name} takes comma-separated numbers, got {text!r}") from None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{field.name} takes a {kind.__name__}, got {text!r}") from None


# What a resumed run may change (``gram train --resume --set ...``): its budget, its NaN policy,
# its logging and checkpointing, the final critic fit and the device. Anything else would make
# the resumed run a different run from the one its checkpoint continues.
RESUMABLE = frozenset({
    "steps", "max_minutes", "on_nan", "device", "eval_interval", "eval_inputs", "eval_samples",
    "checkpoint_minutes", "snapshot_minutes", "pyro_validation", "critic_fit_steps",
    "critic_fit_inputs", "critic_fit_trajectories", "critic_fit_share"})


def parse_overrides(overrides) -> dict:
    """``key=value`` strings (the CLI's ``--set``) as typed config values (not yet validated)."""
    by_name = {f.name: f for f in dataclasses.fields(Config)}
    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in by_name:
            raise UserError(f"--set takes key=value with a config field, got {item!r}")
        values[key] = _coerce(by_name[key], text)
    return values


def make_config(preset: str = "cpu", overrides=(), **fields) -> Config:
    """``preset`` + explicit ``fields`` + ``key=value`` strings (the CLI's ``--set``)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    over = parse_overrides(overrides)
    # the task, the model and the p(x) form as they will be (a --set wins over a field), for
    # the defaults that depend on them; an explicit field or --set still overrides each default
    given = {k: v for k, v in fields.items() if v is not None} | over
    task = str(given.get("task", Config.task))
    family = task.split("-")[0]
    if preset == "paper":
        if family == "sudoku":
            values.update(block="mixer", k_low=6)
        key = "sudoku-unconditional" if family == "sudoku" and given.get("unconditional") else task
        values["beta"] = PAPER_BETA.get(key, PAPER_BETA.get(family, Config.beta))
    if given.get("model") == "ar":
        # the AR baseline writes an answer in one sampling pass and has no critic to fit
        values.update(n_supervision=1, critic_fit_steps=0, block="attention", joint_critic=False)
    if family == "digits":
        # any binary image is "correct", so a critic fitted to predict correctness learns nothing
        values["critic_fit_steps"] = 0
    if family in TASK_INIT_SIGMA:
        values["init_sigma"] = TASK_INIT_SIGMA[family]
    values.update(given)
    if family == "digits":
        values["unconditional"] = True  # an image model has only the p(x) form
    return Config(**values).validate()
