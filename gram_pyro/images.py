"""Image models side by side (docs/design.md §10): the factorized floor, the Pyro VAE anchor, and
the sample-quality metrics a reader trusts at 8x8.

- :func:`factorized_log_prob`: ``log p(y) = sum_i log Bernoulli(y_i | theta_i)`` with each
  pixel's ink frequency in the training images (add-one smoothed): the floor every latent
  variable model must beat. It is exact and fitted in closed form (its optimum, so no training
  time can improve it).
- :func:`train_vae`: the VAE of :mod:`gram_pyro.models.vae` / :mod:`gram_pyro.guides.vae`,
  trained with stock ``SVI(model, guide, Adam, Trace_ELBO())`` for a wall-clock budget; the
  parameters with the best validation ELBO are kept (early stopping on held-out images).
- :class:`QualityJudge`: a logistic-regression classifier fitted on the real training images
  judges samples by its mean confidence, the entropy of its predicted-class histogram, the
  Inception-score analogue ``exp(H[p(c)] - E H[p(c | y)])``, and the Fréchet distance between
  its logits on samples and on real test images; plus each sample's Hamming distance to its
  nearest training image (a memorising model sits at 0).

Samples are judged at the pixel mode (ink where the decoder's probability is above 1/2), the same
rule for GRAM (:func:`gram_pyro.inference.prior_rollouts` decodes the argmax) and the VAE.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from gram_pyro.guides.vae import VAEGuide
from gram_pyro.models.vae import VAEModel


# -- the factorized floor -----------------------------------------------------------------------
def factorized_probs(train: np.ndarray) -> np.ndarray:
    """Each pixel's ink probability, ``(count + 1) / (n + 2)`` over ``[n, pixels]`` 0/1 images."""
    train = np.asarray(train, dtype=np.float64)
    return (train.sum(0) + 1.0) / (len(train) + 2.0)


def factorized_log_prob(probs: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``log p(y)`` in nats of every image ``[M, pixels]`` under independent pixels."""
    y = np.asarray(images, dtype=np.float64)
    return (y * np.log(probs) + (1 - y) * np.log1p(-probs)).sum(1)


# -- the Pyro VAE anchor ------------------------------------------------------------------------
def _blank(n: int, device=None) -> torch.Tensor:
    return torch.zeros(n, 1, dtype=torch.long, device=device)


def vae_elbo(model, guide, images: torch.Tensor, num_particles: int = 8) -> float:
    """The mean Trace_ELBO per image (nats, an estimate from ``num_particles`` draws)."""
    elbo = pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                                 max_plate_nesting=2)
    with torch.no_grad():
        return -elbo.loss(model, guide, _blank(len(images), images.device), images) / len(images)


def train_vae(train: np.ndarray, val: np.ndarray, *, minutes: float | None = None,
              steps: int = 100_000, batch_size: int = 128, lr: float = 1e-3, z_dim: int = 16,
              hidden: int = 256, seed: int = 0, eval_every: int = 200, progress: bool = False):
    """``(model, guide, report)``: the VAE trained by stock SVI on ``train`` ``[n, pixels]`` 0/1
    images for ``minutes`` (or ``steps``), keeping the parameters with the best validation ELBO.
    The report has the steps, seconds and the validation ELBO curve."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    pixels = train.shape[1]
    model, guide = VAEModel(pixels, z_dim, hidden), VAEGuide(pixels, z_dim, hidden)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}),
                         pyro.infer.Trace_ELBO(max_plate_nesting=2))
    tr = torch.as_tensor(train, dtype=torch.float32)
    va = torch.as_tensor(val, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    start, deadline = time.monotonic(), None if minutes is None else time.monotonic() + 60 * minutes
    best, best_state, curve, step = -math.inf, None, [], 0

    def checkpoint_if_best() -> float:
        """Score the validation ELBO at this step; keep the parameters if it is the best yet."""
        nonlocal best, best_state
        value = vae_elbo(model, guide, va)
        curve.append((step, round(value, 4)))
        if value > best:
            best, best_state = value, (copy.deepcopy(model.state_dict()),
                                       copy.deepcopy(guide.state_dict()))
        return value

    bar = tqdm(total=None if minutes else steps, desc="VAE (SVI)", disable=not progress, leave=False)
    while step < steps and (deadline is None or time.monotonic() < deadline):
        batch = tr[rng.integers(0, len(tr), batch_size)]
        loss = svi.step(_blank(batch_size), batch) / batch_size
        step += 1
        bar.update()
        if step % eval_every == 0 or step == steps:
            value = checkpoint_if_best()
            bar.set_postfix(train_elbo=f"{-loss:.2f}", val_elbo=f"{value:.2f}")
    bar.close()
    if not curve or curve[-1][0] != step:  # the last step is always scored
        checkpoint_if_best()
    model.load_state_dict(best_state[0])
    guide.load_state_dict(best_state[1])
    return model, guide, {"steps": step, "seconds": round(time.monotonic() - start, 1),
                          "best_val_elbo": best, "curve": curve, "z_dim": z_dim, "hidden": hidden,
                          "batch_size": batch_size, "lr": lr}


@torch.no_grad()
def vae_samples(model: VAEModel, n: int) -> np.ndarray:
    """``[n, pixels]`` prior samples at the pixel mode (logit above 0)."""
    z = torch.randn(n, model.z_dim, device=model.decoder[0].weight.device)
    return (model.decoder(z) > 0).long().numpy()


# -- sample quality -----------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def nearest_hamming(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each sample's Hamming distance to its nearest training image, ``[n]`` pixels."""
    s, t = np.asarray(samples, dtype=np.int32), np.asarray(train, dtype=np.int32)
    out = np.empty(len(s), dtype=np.int64)
    for i in range(0, len(s), 256):
        part = s[i:i + 256]
        d = part.sum(1)[:, None] + t.sum(1)[None, :] - 2 * part @ t.T
        out[i:i + 256] = d.min(1)
    return out


class QualityJudge:
    """The sample-quality metrics of the module docstring, fitted once on real images.

    Args:
        train, train_labels: the real training images ``[n, pixels]`` and their classes.
        reference: the real images the Fréchet distance compares with (the test split).
        subset: the Fréchet distance is the mean over disjoint groups of this many images (the
            held-out real row has few images, and the distance's bias depends on the count).
    """

    def __init__(self, train, train_labels, reference, subset: int | None = None, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.train = np.asarray(train)
        self.classifier = LogisticRegression(max_iter=5000, random_state=seed).fit(
            self.train, np.asarray(train_labels))
        self.classes = len(self.classifier.classes_)
        self.reference = self.classifier.decision_function(np.asarray(reference))
        self.subset = subset

    def accuracy(self, images, labels) -> float:
        return float(self.classifier.score(np.asarray(images), np.asarray(labels)))

    def report(self, samples: np.ndarray) -> dict:
        samples = np.asarray(samples)
        probs = self.classifier.predict_proba(samples)
        hist = np.bincount(probs.argmax(1), minlength=self.classes) / len(samples)
        marginal = probs.mean(0)
        cond_entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1).mean()
        marg_entropy = -(marginal * np.log(np.clip(marginal, 1e-12, 1))).sum()
        features = self.classifier.decision_function(samples)
        size = self.subset or len(samples)
        groups = [features[i:i + size] for i in range(0, len(samples) - size + 1, size)]
        fd = [frechet_distance(g, self.reference) for g in groups]
        nn = nearest_hamming(samples, self.train)
        return {"samples": int(len(samples)), "confidence": float(probs.max(1).mean()),
                "class_entropy": float(-(hist[hist > 0] * np.log(hist[hist > 0])).sum()),
                "max_class_entropy": float(math.log(self.classes)),
                "inception_analogue": float(math.exp(marg_entropy - cond_entropy)),
                "frechet": float(np.mean(fd)), "frechet_groups": len(fd), "frechet_group_size": size,
                "nn_hamming_mean": float(nn.mean()), "copies": float((nn == 0).mean()),
                "ink": float(samples.mean())}


def bootstrap_interval(values, reps: int = 2000, seed: int = 0, level: float = 0.95):
    """The percentile bootstrap interval of the mean of ``values`` (resampling them)."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), (reps, len(v)))
    means = v[idx].mean(1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def image_rows(rows: dict, shape, cols: int = 12, title: str | None = None):
    """A figure with one row of ``cols`` binary images per entry of ``rows`` {label: images}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), cols, figsize=(0.8 * cols + 1.2, 0.9 * len(rows) + 0.4),
                             squeeze=False, constrained_layout=True)
    for r, (label, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c]).reshape(shape), cmap="Greys", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig
