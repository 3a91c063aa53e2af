"""Tiny configurations shared by the tests (D=32, a few steps)."""

from gram_pyro.build import build_net, programs
from gram_pyro.config import make_config
from gram_pyro.tasks import get_task

# precision=fp32: the default "auto" picks bf16 on some machines only, and the exactness tests
# (two processes = one, a trainer step = a stock SVI step, resume) compare float32 sums; the
# bf16 tests ask for it by name
TINY = ["d_model=32", "n_layers=1", "k_low=1", "t_high=2", "n_supervision=2", "batch_size=16",
        "eval_interval=4", "eval_inputs=8", "eval_samples=2", "warmup_steps=2", "pyro_validation=true",
        "critic_fit_steps=10", "critic_fit_inputs=16", "precision=fp32"]


def tiny_config(task="nqueens-5", extra=(), **fields):
    return make_config("cpu", [*TINY, *extra], task=task, **fields)


def tiny_programs(task_name="nqueens-5", extra=(), **fields):
    cfg = tiny_config(task_name, extra, **fields)
    task = get_task(cfg.task, unconditional=cfg.unconditional)
    net = build_net(task, cfg)
    model, guide = programs(net, cfg)
    return task, cfg, net, model, guide
