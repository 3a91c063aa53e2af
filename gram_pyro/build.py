"""A run's pieces built from its config: the device, the network, the Pyro programs, the data.

Everything that trains, evaluates, samples or estimates likelihoods builds through these, so none
of it needs the trainer.
"""

from __future__ import annotations

import torch

from gram_pyro.config import Config
from gram_pyro.errors import UserError
from gram_pyro.guides.gram import GramGuide
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


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                        "use --precision fp32")


def build_net(task, cfg: Config, device="cpu") -> GramNet:
    """The network of a config, initialized on the CPU (from the CPU generator, so a seed gives
    the same weights on every device) and moved to ``device``."""
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
                      links=task.links() if cfg.links else None, image_shape=image_shape)
    return net.to(resolve_device(device))


def programs(net, cfg: Config) -> tuple[GramModel, GramGuide]:
    """The model and guide of a config, sharing ``net``."""
    kw = dict(k_low=cfg.k_low, t_high=cfg.t_high, n_supervision=cfg.n_supervision,
              deterministic=cfg.deterministic)
    return GramModel(net, **kw), GramGuide(net, **kw)


def run_data(task, cfg: Config, progress: bool = False):
    """The dataset a run trains and evaluates on (its seed and dataset options)."""
    return task.build(seed=cfg.data_seed, progress=progress, **cfg.data_options)
