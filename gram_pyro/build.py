"""A run's pieces built from its config: the device, the network, the Pyro programs, the data.

Everything that trains, evaluates, samples or estimates likelihoods builds through these, so none
of it needs the trainer.
"""

from __future__ import annotations

import json

import torch

from gram_pyro.config import Config
from gram_pyro.errors import UserError
from gram_pyro.guides.ar import ar_guide
from gram_pyro.guides.gram import GramGuide
from gram_pyro.models.ar import ARModel, ARNet
from gram_pyro.models.gram import GramModel
from gram_pyro.nets import GramNet


def resolve_device(name, local_rank: int = 0) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for CUDA (one GPU per rank)."""
    if isinstance(name, torch.device):
        return name
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank with LOCAL_RANK={local_rank} has no GPU of its own "
                            f"({torch.cuda.device_count()} visible); lower --nproc_per_node")
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu or cuda") from None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: a CUDA GPU that supports
    bf16, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16 or AMX; on other CPUs bf16 is
    emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains at: ``auto`` is bf16 where :func:`native_bf16` holds, else
    fp32 (on 2 AVX512-BF16 cores, bf16 took N-Queens 10x10 from 4.50 to 7.53 steps/s at the same
    quality per step; RESULTS ``throughput_*``, ``recipe_nqueens-8_per-step-bf16``)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise UserError(f"--precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                        "use --precision fp32")
    return precision


def build_net(task, cfg: Config, device="cpu") -> GramNet | ARNet:
    """The network of a config (GRAM's, or the AR baseline's with ``model=ar``), initialized on
    the CPU (from the CPU generator, so a seed gives the same weights on every device) and moved
    to ``device``."""
    puzzles = task.puzzle_identities(cfg.data_options) if task.puzzle_slot else 0
    if cfg.model == "ar":
        if puzzles:
            raise UserError(f"the AR baseline has no puzzle embeddings; {task.name} runs are GRAM's")
        with torch.device("cpu"):
            net = ARNet(seq_len=task.seq_len, input_vocab=task.input_vocab,
                        answer_len=task.answer_len, answer_vocab=task.answer_vocab,
                        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                        expansion=cfg.expansion)
        return net.to(resolve_device(device))
    image_shape = None
    if cfg.stem == "conv":
        image_shape = getattr(task, "image_shape", None)
        if image_shape is None:
            raise UserError(f"stem=conv needs an image task (digits-N), not {task.name}")
    with torch.device("cpu"):
        net = GramNet(seq_len=task.seq_len, input_vocab=task.input_vocab,
                      answer_len=task.answer_len, answer_vocab=task.answer_vocab,
                      answer_offset=task.answer_offset, d_model=cfg.d_model,
                      n_layers=cfg.n_layers, block=cfg.block, n_heads=cfg.n_heads,
                      expansion=cfg.expansion, share_core=cfg.share_core, n_prefix=cfg.n_prefix,
                      sigma_floor=cfg.sigma_floor, init_sigma=cfg.init_sigma,
                      critic_layers=cfg.critic_layers,
                      links=task.links() if cfg.links else None, image_shape=image_shape,
                      head_expansion=cfg.head_expansion, levels=cfg.levels, puzzles=puzzles)
    return net.to(resolve_device(device))


# which part of the model each of GramNet's children is (docs/design.md §11)
PARTS = {"encoder": "backbone", "f_high": "backbone", "f_low": "backbone", "decoder": "backbone",
         "prior_head": "stochastic guidance (prior heads)",
         "posterior_head": "guide only (posterior heads, target embedding)",
         "target_embed": "guide only (posterior heads, target embedding)",
         "critic": "critic (ACT and LPRM)", "halt_head": "critic (ACT and LPRM)",
         "lprm_head": "critic (ACT and LPRM)",
         "puzzle_embed": "puzzle embeddings (one per puzzle and view)",
         "input_embed": "AR Transformer", "answer_embed": "AR Transformer",
         "blocks": "AR Transformer", "head": "AR Transformer", "(own)": "other"}


def model_label(cfg: Config, objective: bool = False) -> str:
    """What a run is, as every report names it; with ``objective``, GRAM's objective too."""
    if cfg.model == "ar":
        return "AR baseline"
    if cfg.deterministic:
        return "deterministic baseline"
    return f"GRAM ({cfg.objective})" if objective else "GRAM"


def require_latent(cfg: Config, what: str) -> None:
    """A one-line error when ``what`` needs GRAM's latent trajectories and the run is the AR
    baseline (no recursion, noise or critic)."""
    if cfg.model == "ar":
        raise UserError(f"{what} needs GRAM's latent trajectories; this run is the AR baseline "
                        "(model=ar), which has no recursion, noise or critic")


def parameter_counts(net) -> dict:
    """Trainable parameters of each child of ``net`` (a weight shared by two children, as f_low
    and f_high by default, counts once, for the first), and ``(own)``: those held by ``net``
    itself (position embeddings and the like), when there are any."""
    own = sum(p.numel() for p in net._parameters.values() if p is not None)
    seen, out = set(), ({"(own)": own} if own else {})
    for name, child in net._modules.items():  # named_children() would hide a shared child
        if child is None:
            continue
        fresh = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        out[name] = sum(p.numel() for p in fresh)
    return out


def describe(task, cfg: Config) -> dict:
    """What ``gram train --dry-run`` prints: the parameter count per component and per part
    (backbone, the prior's Gaussian heads, the guide's, the critic), and the resolved config."""
    net = build_net(task, cfg)
    counts = parameter_counts(net)
    puzzle = getattr(getattr(net, "encoder", None), "puzzle", None)
    if puzzle is not None:  # ARC's per-identity table is data-sized, not the backbone's
        counts["encoder"] -= puzzle.weight.numel()
        counts["puzzle_embed"] = puzzle.weight.numel()
    parts: dict = {}
    for name, n in counts.items():
        part = PARTS.get(name, "other")
        parts[part] = parts.get(part, 0) + n
    return {"task": task.name, "unconditional": task.unconditional,
            "model": model_label(cfg),
            "components": counts, "parts": parts, "total": sum(counts.values()),
            "shared_core": cfg.share_core, "config": json.loads(cfg.to_json())}


def format_description(d: dict) -> str:
    lines = [f"{d['model']} on {d['task']}{' (p(x))' if d['unconditional'] else ''}: "
             f"{d['total'] / 1e6:.2f}M trainable parameters", "  by component:"]
    for name, n in d["components"].items():
        note = " (shares f_high's weights)" if name == "f_low" and d["shared_core"] else ""
        lines.append(f"    {name:<15} {n / 1e6:8.3f}M{note}")
    lines.append("  by part:")
    for part, n in d["parts"].items():
        lines.append(f"    {part:<48} {n / 1e6:8.3f}M")
    lines.append("  resolved config:")
    lines += [f"    {k} = {v}" for k, v in d["config"].items()]
    return "\n".join(lines)


def programs(net, cfg: Config):
    """The model and guide of a config, sharing ``net``: GRAM's ``(GramModel, GramGuide)``, or
    the AR baseline's ``(ARModel, ar_guide)``."""
    if cfg.model == "ar":
        return ARModel(net), ar_guide
    kw = dict(k_low=cfg.k_low, t_high=cfg.t_high, n_supervision=cfg.n_supervision,
              deterministic=cfg.deterministic, noise=cfg.noise, decode=cfg.decode, z0=cfg.z0)
    return GramModel(net, **kw), GramGuide(net, **kw)


def run_data(task, cfg: Config, progress: bool = False):
    """The dataset a run trains and evaluates on (its seed and dataset options)."""
    return task.build(seed=cfg.data_seed, progress=progress, **cfg.data_options)
