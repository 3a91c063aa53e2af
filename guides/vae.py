"""The amortized posterior q(z | y) of the VAE (:mod:`gram_pyro.models.vae`): an MLP encoder
to a diagonal Gaussian, as in Pyro's VAE example, with the model's signature and plates."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import nn

from gram_pyro.models.gram import plates


class VAEGuide(nn.Module):
    """``q(z | y) = N(loc(y), scale(y)^2)``; ``scale = softplus + 1e-3`` keeps it positive."""

    def __init__(self, pixels: int, z_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(pixels, hidden), nn.Softplus(),
                                  nn.Linear(hidden, hidden), nn.Softplus())
        self.loc = nn.Linear(hidden, z_dim)
        self.raw_scale = nn.Linear(hidden, z_dim)

    def forward(self, x, y=None, *, num_samples=None):
        if y is None:
            raise ValueError("the VAE guide encodes an image y; it cannot run without it")
        pyro.module("vae_encoder", self)
        features = self.body(y.to(self.loc.weight.dtype))
        loc, scale = self.loc(features), F.softplus(self.raw_scale(features)) + 1e-3
        with plates(x.shape[0], num_samples, x.device):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
