"""Binarized digit images (docs/design.md §10): GRAM as an image model of p(x).

``digits-N`` is an unconditional task over N x N binary images (pixels row-major,
``seq_len = answer_len = N*N``, class 1 = ink). The input is the blank image; every image is a
completion of it, as Shidoku grids are of the blank grid.

Data:
    source: scikit-learn's ``load_digits`` (1,797 8x8 images of 16 grey levels, shipped inside
        the package: nothing is downloaded), for ``digits-8`` only. ``--data path=FILE`` reads a
        local MNIST-style file instead, at any size: the standard IDX image file
        (``train-images-idx3-ubyte``, optionally ``.gz``) or an ``.npz`` (Keras' ``x_train`` /
        ``x_test``, or an ``images`` array, with ``y_*`` / ``labels`` when present). Images of
        another size are area-averaged to N x N.
    binarization: a pixel is ink when its intensity is above half the scale's maximum
        (``value / 16 > 0.5`` for the digits, ``value / 255 > 0.5`` for 8-bit files), the
        paper's rule.
    split: a permutation of the images by ``data_seed`` (0 by default, so the split is fixed),
        ``test_fraction`` 0.2 to test, ``val_fraction`` 0.1 to validation, the rest to train.
        ``limit`` keeps the first ``limit`` images of the file before splitting (0: all).

Every binary image is a "valid" object, so validity means nothing here; sample quality is
measured by :mod:`gram_pyro.images` (a classifier's confidence and class entropy, a Fréchet
distance, and the nearest-neighbour distance to the training set).
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, clean_puzzle_text

SKLEARN_SIDE = 8


def binarize(images: np.ndarray, scale: float) -> np.ndarray:
    """``[M, ...]`` intensities in ``[0, scale]`` -> int64 0/1, ink where above half the scale."""
    return (np.asarray(images, dtype=np.float64) / scale > 0.5).astype(np.int64)


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] in 0..16, labels [1797])`` from scikit-learn (the `images` extra)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits task needs scikit-learn: pip install -e \".[images]\"") from None
    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


def read_idx(path: str) -> np.ndarray:
    """The array in an IDX file (the MNIST format), gzipped or not. Only unsigned bytes are read,
    the type every MNIST file uses."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path!r} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise UserError(f"{path!r}: only unsigned-byte IDX files are read (type 0x08), got 0x{raw[2]:02x}")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path!r} is a truncated IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    count = int(np.prod(shape))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != count:
        raise UserError(f"{path!r} holds {body.size} bytes of data, its header says {count}")
    return body.reshape(shape)


def read_image_file(path: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    """``(images [M, H, W], scale, labels [M] or None)`` from a local IDX or ``.npz`` file."""
    if not os.path.isfile(path):
        raise UserError(f"no image file at {path!r}")
    if str(path).endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path!r} as .npz: {e}") from None
        if "x_train" in arrays:
            parts = [k for k in ("x_train", "x_test") if k in arrays]
            images = np.concatenate([arrays[k] for k in parts])
            labels = np.concatenate([arrays["y" + k[1:]] for k in parts]) \
                if all("y" + k[1:] in arrays for k in parts) else None
        elif "images" in arrays:
            images, labels = arrays["images"], arrays.get("labels")
        else:
            raise UserError(f"{path!r} has neither x_train nor images arrays "
                            f"(it has {', '.join(arrays) or 'none'})")
    else:
        images, labels = read_idx(path), None
    if images.ndim != 3 or min(images.shape) < 1:
        raise UserError(f"{path!r}: images must be a [count, height, width] array, got shape "
                        f"{list(images.shape)}")
    if labels is not None and labels.shape != images.shape[:1]:
        labels = None
    if np.issubdtype(images.dtype, np.integer):
        scale = 255.0
    else:
        scale = 1.0
        if not np.isfinite(images).all():
            raise UserError(f"{path!r} holds non-finite pixel values")
    if images.min() < 0 or images.max() > scale:
        raise UserError(f"{path!r}: pixel values must lie in [0, {scale:g}], got "
                        f"{images.min():g}..{images.max():g}")
    return images.astype(np.float64), scale, None if labels is None else labels.astype(np.int64)


def resize(images: np.ndarray, side: int) -> np.ndarray:
    """Area-average ``[M, H, W]`` to ``[M, side, side]`` (identity when already that size)."""
    if images.shape[1:] == (side, side):
        return images
    import torch
    import torch.nn.functional as F

    return F.adaptive_avg_pool2d(torch.as_tensor(images)[:, None], side)[:, 0].numpy()


class Digits(Task):
    """Binarized N x N digit images, p(x) only (see the module docstring)."""

    def __init__(self, n: int, unconditional: bool = True):
        self.n = n
        self.name = f"digits-{n}"
        self.seq_len = self.answer_len = n * n
        self.input_vocab = 1  # the input is always the blank image
        self.answer_vocab = 2
        self.answer_offset = 0
        self.unconditional = True  # an image model: there is no conditional form
        self.image_shape = (n, n)

    # -- text formats: rows of '.' (paper) and '#' (ink) -----------------------------------------
    def parse_input(self, text: str) -> np.ndarray:
        cells = self.parse_answer(text)
        if cells.any():
            raise UserError(f"{self.name} is an unconditional task: its input is the blank image")
        return cells

    def format_input(self, tokens) -> str:
        return self.format_answer(tokens)

    def parse_answer(self, text: str) -> np.ndarray:
        s = clean_puzzle_text(text)
        if len(s) != self.seq_len:
            raise UserError(f"a {self.name} image needs {self.seq_len} characters of '.' and '#' "
                            f"(whitespace ignored), got {len(s)}")
        bad = [ch for ch in s if ch not in ".#01"]
        if bad:
            raise UserError(f"illegal character {bad[0]!r} in a {self.name} image; use '.' or '#'")
        return np.array([ch in "#1" for ch in s], dtype=np.int64)

    def format_answer(self, tokens) -> str:
        return "".join(".#"[int(t)] for t in np.asarray(tokens).reshape(-1))

    def render(self, answer, inputs=None) -> str:
        a = np.asarray(answer).reshape(self.n, self.n)
        return "\n".join("".join(".#"[int(v)] for v in row) for row in a)

    # -- checkers: any binary image is an image --------------------------------------------------
    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        a = np.asarray(answers).reshape(-1, self.seq_len)
        return ((a == 0) | (a == 1)).all(axis=1)

    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        return np.ones(len(np.asarray(answers).reshape(-1, self.seq_len)), dtype=bool)

    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        raise UserError(f"{self.name} has no solver: every binary image is a completion")

    # -- data ------------------------------------------------------------------------------------
    def default_sizes(self) -> dict:
        return {"path": "", "limit": 0, "test_fraction": 0.2, "val_fraction": 0.1}

    def check_options(self, options: dict) -> None:
        if not options["path"] and self.n != SKLEARN_SIDE:
            raise UserError(f"{self.name} needs a local MNIST-style file (--data path=FILE); "
                            f"the built-in digits are {SKLEARN_SIDE}x{SKLEARN_SIDE} (digits-8)")
        if options["path"] and not os.path.isfile(options["path"]):
            raise UserError(f"no image file at {options['path']!r}")

    def data_recipe(self):
        return {"binarize": "above half the scale", "split": "permutation by data_seed"}

    def build(self, seed: int = 0, cache: bool = True, progress: bool = False, **sizes) -> Dataset:
        """As :meth:`Task.build`; a dataset read from a local file is never cached (the file may
        change under the same path, and reading it is fast)."""
        return super().build(seed, cache=cache and not sizes.get("path"), progress=progress, **sizes)

    def source(self, path: str = "", limit: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """``(binary images [M, N*N], labels [M] or None)``: the whole source, before the split."""
        if path:
            images, scale, labels = read_image_file(path)
        else:
            images, labels = load_sklearn_digits()
            scale = 16.0
        if limit:
            images = images[:limit]
            labels = None if labels is None else labels[:limit]
        flat = binarize(resize(images, self.n), scale).reshape(len(images), -1)
        return flat, labels

    @staticmethod
    def split_ids(m: int, seed: int, test_fraction: float, val_fraction: float) -> np.ndarray:
        """The split of each of ``m`` images: 0 train, 1 validation, 2 test."""
        order = np.random.default_rng(seed).permutation(m)
        n_test, n_val = int(round(test_fraction * m)), int(round(val_fraction * m))
        ids = np.zeros(m, dtype=np.int64)
        ids[order[:n_test]] = 2
        ids[order[n_test:n_test + n_val]] = 1
        return ids

    def labelled(self, *splits: str, seed: int = 0, **options) \
            -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``(images, labels or None)`` of each split named ("train", "val", "test"), in the
        dataset's order (for the classifier the sample-quality metrics train on the training
        split), from one read of the source."""
        codes = {"train": 0, "val": 1, "test": 2}
        if not splits or any(s not in codes for s in splits):
            raise ValueError(f"labelled() takes split names among {', '.join(codes)}; got {splits}")
        full = {**self.default_sizes(), **options}
        images, labels = self.source(full["path"], full["limit"])
        ids = self.split_ids(len(images), seed, full["test_fraction"], full["val_fraction"])
        out = []
        for split in splits:
            keep = np.flatnonzero(ids == codes[split])
            out.append((images[keep], None if labels is None else labels[keep]))
        return out

    def _build(self, seed: int, path, limit, test_fraction, val_fraction) -> Dataset:
        images, labels = self.source(path, limit)
        ids = self.split_ids(len(images), seed, test_fraction, val_fraction)
        blank = np.zeros((1, self.seq_len), np.int64)

        def part(k):
            return Split.from_groups(blank, [images[ids == k]], self.seq_len) if (ids == k).any() \
                else Split(np.zeros((0, self.seq_len)), np.zeros((0, self.seq_len)), [0])

        return Dataset(train=part(0), val=part(1), test=part(2),
                       meta={"images": int(len(images)), "unconditional": True,
                             "source": path or "sklearn.datasets.load_digits",
                             "ink_fraction": float(images.mean()) if len(images) else 0.0})
