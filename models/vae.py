"""The standard VAE of binary images, p(y, z) = N(z | 0, I) prod_i Bernoulli(y_i | decoder(z)_i):
the anchor GRAM's image likelihood is compared with (docs/design.md §10).

It is the model of Pyro's VAE example (an MLP decoder with one softplus hidden layer; Bernoulli
pixels), written with GRAM's signature ``model(x, y=None, *, num_samples=None)`` and its plates
(``trajectories`` at dim -2 over K particles, ``batch`` at dim -1 over images), so the same
importance-weighting code (:func:`gram_pyro.likelihood.estimate`) gives its IWAE_K. ``x`` is the
blank input of an unconditional task; only its batch size is read. Trained with stock
:class:`~pyro.infer.SVI` and :class:`~pyro.infer.Trace_ELBO` (:func:`gram_pyro.images.train_vae`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import nn

from gram_pyro.models.gram import plates


class VAEModel(nn.Module):
    """``p(z) p(y | z)`` over images of ``pixels`` binary pixels.

    Args:
        pixels: image size H*W. z_dim: latent dimensions. hidden: decoder hidden width.
    """

    def __init__(self, pixels: int, z_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.pixels, self.z_dim = pixels, z_dim
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(),
                                     nn.Linear(hidden, hidden), nn.Softplus(),
                                     nn.Linear(hidden, pixels))

    def forward(self, x, y=None, *, num_samples=None):
        """Returns the pixel logits ``[..., pixels]``; samples ``y`` when it is None."""
        pyro.module("vae_decoder", self.decoder)
        with plates(x.shape[0], num_samples, x.device):
            zeros = x.new_zeros(self.z_dim, dtype=self.decoder[0].weight.dtype)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            logits = self.decoder(z)
            pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1),
                        obs=None if y is None else y.to(logits.dtype))
        return logits
