"""Data-parallel training over several processes (DistributedDataParallel, launched by torchrun).

``torchrun --nproc_per_node=P -m gram_pyro.cli train ...`` starts P copies of ``gram train``.
torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) tells
each copy, a *rank*, who it is; without it (or with ``WORLD_SIZE=1``) everything here reduces to
the one-process run. The trainer then:

- shards the data with :class:`EpochSampler`. ``batch_size`` is the GLOBAL batch: each of the W
  ranks takes ``batch_size / W`` examples of it, so the ranks' shares of step s together are
  exactly the batch a one-process run with the same config sees at step s;
- wraps the loss of a supervision step in DDP, which averages the gradients, so every rank takes
  the same optimizer step and the weights stay identical;
- agrees on every decision that could split the ranks (stop on the clock, skip or stop on a
  non-finite loss, when to checkpoint) through small all-reduces (:class:`Group`);
- draws noise and augmentations from per-rank seeds (:func:`rank_seed`);
- writes from rank 0 only (progress, logs, metrics, config, checkpoints). The checkpoint holds every
  rank's RNG state and the sampler's position, so a data-parallel run resumes exactly.

Backends: NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

from gram_pyro.errors import UserError

# rank 0 may evaluate while the others wait in the next collective; give it room
TIMEOUT = datetime.timedelta(minutes=30)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name} must be a whole number, got {text!r}") from None


class Group:
    """This process's place among the ranks, and the collectives the trainer needs.

    With one process every collective is the identity, so the trainer calls them unconditionally.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device("cpu")
        self.owner = False  # this object initialized the process group (and destroys it)

    @classmethod
    def from_environment(cls) -> "Group":
        """An already initialized process group (tests, notebooks), else torchrun's variables."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(),
                       _env_int("LOCAL_RANK", dist.get_rank()))
        world = _env_int("WORLD_SIZE", 1)
        if world > 1 and not dist.is_available():
            raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return cls(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, logs, evaluates and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def start(self, device: torch.device) -> None:
        """Join the job's process group (NCCL on CUDA, gloo on CPU) unless already in one."""
        self.device = device
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        self.owner = True

    def close(self) -> None:
        """Leave the process group if :meth:`start` joined it (idempotent)."""
        if self.owner and dist.is_initialized():
            dist.destroy_process_group()
        self.owner = False

    # -- collectives (identities with one process) -------------------------------------------
    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (a copy on this rank's device)."""
        if not self.active:
            return values
        values = values.to(self.device, copy=True)
        dist.all_reduce(values)
        return values

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over the ranks: how they agree on a clock or a flag."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def check_batch(batch_size: int, world_size: int) -> None:
    """``batch_size`` is the global batch: every rank must get an equal share of it."""
    if batch_size % world_size:
        raise UserError(f"batch_size {batch_size} is the global batch and must be divisible by "
                        f"the number of processes ({world_size}); e.g. --set "
                        f"batch_size={batch_size - batch_size % world_size or world_size}")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s noise and augmentation: ``seed`` itself on rank 0 (so a
    one-process run is unchanged), a hash of ``(seed, rank)`` on the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class EpochSampler:
    """Training batches from a stream of epochs: each epoch is a permutation of the examples.

    Epoch e is the permutation drawn from ``(seed, e)`` (the same on every rank); the stream
    concatenates epochs 0, 1, 2, ...; global batch s is the next ``batch_size`` indices of the
    stream, so every example is seen once per epoch (a batch may straddle two epochs). Rank r of
    W takes positions r, r + W, r + 2W, ... of the global batch: ``batch_size / W`` indices, and
    the ranks' shares of one step together are the one-process batch of that step.

    :meth:`state_dict` is the position in the stream ``(epoch, cursor)``; it does not depend on W,
    so a run may resume with another number of processes.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        check_batch(batch_size, world_size)
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(self.n))
        return self._order[1]

    def global_batch(self) -> np.ndarray:
        """The next global batch (every rank's share); advances the position."""
        parts, need = [], self.batch_size
        while need:
            take = self.permutation(self.epoch)[self.cursor:self.cursor + need]
            parts.append(take)
            need -= len(take)
            self.cursor += len(take)
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return np.concatenate(parts)

    def next(self) -> np.ndarray:
        """This rank's share of the next global batch."""
        return self.global_batch()[self.rank::self.world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
