"""The interface every puzzle task implements, and the dataset containers they build.

A task fixes how a puzzle becomes tokens for the model:

- the model reads a sequence of ``seq_len`` input tokens (``0`` is always "blank / unknown");
- it answers ``answer_len`` categorical tokens with ``answer_vocab`` classes each, read off the
  sequence positions ``answer_offset : answer_offset + answer_len``.

For Sudoku and N-Queens the answer covers the whole board (offset 0). For graph colouring the
sequence is the adjacency tokens followed by one slot per node, and only the node slots are
answered.

A dataset stores each split as *unique inputs* together with *all* their valid completions (as
far as the builder knows them), because coverage needs every completion. Training expands a split
into (input, completion) pairs with :meth:`Split.pairs`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gram_pyro.errors import UserError, warn

CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where built datasets are cached: ``$GRAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/gram-pyro``."""
    root = os.environ.get("GRAM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gram-pyro"


@dataclass
class Split:
    """Unique inputs ``[M, seq_len]`` with all their completions.

    ``completions[offsets[i]:offsets[i + 1]]`` are the known valid completions of ``inputs[i]``,
    each ``[answer_len]``. For held-out splits of conditional tasks they are *all* completions
    (the coverage denominator).
    """

    inputs: np.ndarray
    completions: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        self.inputs = np.asarray(self.inputs, dtype=np.int64)
        self.completions = np.asarray(self.completions, dtype=np.int64)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.shape != (len(self.inputs) + 1,) or self.offsets[-1] != len(self.completions):
            raise ValueError("split offsets do not match its inputs and completions")

    @classmethod
    def from_groups(cls, inputs, groups, answer_len: int) -> "Split":
        """Build from ``inputs[i]`` and ``groups[i]``, a ``[C_i, answer_len]`` array."""
        counts = [len(g) for g in groups]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        flat = (np.concatenate([np.asarray(g).reshape(-1, answer_len) for g in groups])
                if groups else np.zeros((0, answer_len), np.int64))
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or len(inputs) != len(groups):
            raise ValueError("from_groups needs [M, seq_len] inputs and M groups")
        return cls(inputs, flat, offsets)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_completions(self) -> np.ndarray:
        return np.diff(self.offsets)

    def completions_of(self, i: int) -> np.ndarray:
        return self.completions[self.offsets[i]:self.offsets[i + 1]]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(input, completion) training pairs: each input repeated once per completion."""
        return np.repeat(self.inputs, self.num_completions, axis=0), self.completions

    def sample(self, n: int | None, seed: int = 0) -> "Split":
        """A seeded random subset of ``n`` inputs (all when ``n`` is None or too large). Splits
        are stored in sorted order, so "the first n" would be a biased sample."""
        if not n or n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:n]))

    def subset(self, index) -> "Split":
        index = np.asarray(index, dtype=np.int64)
        groups = [self.completions_of(i) for i in index]
        return Split.from_groups(self.inputs[index], groups, self.completions.shape[1])


@dataclass
class Dataset:
    """Train / validation / test splits of one task. ``meta`` records how it was built."""

    train: Split
    val: Split
    test: Split
    meta: dict = field(default_factory=dict)

    def split(self, name: str, nonempty: bool = False) -> Split:
        """The split called ``name``; with ``nonempty``, a UserError if it has no inputs (some
        small tasks have no validation split)."""
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        split = getattr(self, name)
        if nonempty and len(split) == 0:
            task = self.meta.get("task", "this task")
            raise UserError(f"the {name} split of {task} is empty; choose another split")
        return split

    def stats(self) -> dict:
        out = {}
        for name in ("train", "val", "test"):
            s = self.split(name)
            counts = s.num_completions
            out[name] = {
                "inputs": int(len(s)),
                "pairs": int(counts.sum()),
                "completions_per_input_mean": float(counts.mean()) if len(s) else 0.0,
                "completions_per_input_max": int(counts.max()) if len(s) else 0,
                "multi_solution_inputs": int((counts > 1).sum()),
            }
        return out

    # -- disk cache ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in ("train", "val", "test"):
            s = self.split(name)
            arrays[f"{name}_inputs"] = s.inputs
            arrays[f"{name}_completions"] = s.completions
            arrays[f"{name}_offsets"] = s.offsets
        arrays["meta"] = np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Dataset":
        with np.load(path, allow_pickle=False) as z:
            splits = {name: Split(z[f"{name}_inputs"], z[f"{name}_completions"], z[f"{name}_offsets"])
                      for name in ("train", "val", "test")}
            meta = json.loads(bytes(z["meta"]).decode())
        return cls(meta=meta, **splits)


class Task(ABC):
    """A puzzle family at one size. Subclasses set the layout attributes and the methods below.

    Layout attributes:
        name: registry name, e.g. ``"nqueens-8"``.
        seq_len: L, the number of model positions.
        input_vocab: input token ids ``0..input_vocab-1``; ``0`` is blank.
        answer_len, answer_vocab, answer_offset: see the module docstring.
        unconditional: True for the blank-input form that models p(x).
    """

    name: str
    seq_len: int
    input_vocab: int
    answer_len: int
    answer_vocab: int
    answer_offset: int = 0
    unconditional: bool = False
    # input position 0 holds a puzzle identity, not a token (ARC): the encoder learns an
    # embedding per identity, :meth:`puzzle_identities` of them
    puzzle_slot: bool = False

    def puzzle_identities(self, options: dict | None = None) -> int:
        """How many puzzle identities a dataset with ``options`` has (0: no puzzle slot)."""
        return 0

    # -- text formats -------------------------------------------------------------------------
    @abstractmethod
    def parse_input(self, text: str) -> np.ndarray:
        """Puzzle string -> ``[seq_len]`` input tokens. Raises UserError naming the problem,
        including givens that contradict each other."""

    @abstractmethod
    def format_input(self, tokens) -> str:
        """``[seq_len]`` input tokens -> the one-line puzzle string that :meth:`parse_input` reads."""

    @abstractmethod
    def parse_answer(self, text: str) -> np.ndarray:
        """Answer string -> ``[answer_len]`` answer classes. Raises UserError."""

    @abstractmethod
    def format_answer(self, tokens) -> str:
        """``[answer_len]`` answer classes -> one-line string that :meth:`parse_answer` reads."""

    def render(self, answer, inputs=None) -> str:
        """A multi-line human-readable board of an answer (givens marked where possible)."""
        return self.format_answer(answer)

    # -- checkers (vectorized over a batch) ---------------------------------------------------
    @abstractmethod
    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        """``[B, answer_len]`` -> ``[B]`` bool: a complete, rule-abiding object."""

    @abstractmethod
    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """``[B, seq_len]``, ``[B, answer_len]`` -> ``[B]`` bool: the answer keeps every given."""

    def is_correct(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Accuracy's criterion: valid and consistent with the givens (not "equals the label")."""
        answers = np.asarray(answers)
        return self.is_valid(answers) & self.is_consistent(np.asarray(inputs), answers)

    def score(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """The LPRM's target r in [0, 1], 1 exactly when the answer is correct. By default it is
        correctness itself; tasks with a natural partial credit override it (Sudoku: the share
        of cells that break no rule), which gives the LPRM a graded signal where few
        trajectories are fully right."""
        return self.is_correct(inputs, answers).astype(np.float32)

    def links(self) -> np.ndarray | None:
        """Structure the encoder may read, without changing the input format: ``[seq_len, F]``
        input positions (-1: none) whose tokens each position also embeds, slot by slot (a
        colouring node reads the tokens of its incident edges, a Sudoku cell its 20 peers, an
        N-Queens cell the cells that attack it).
        None: the task has none, or the blank input of p(x) carries none."""
        return None

    def canonical(self, answers: np.ndarray) -> np.ndarray:
        """Map answers that count as the same solution to one representative (identity here;
        graph colouring factors out colour permutations)."""
        return np.asarray(answers)

    # -- exact enumeration --------------------------------------------------------------------
    @abstractmethod
    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        """All valid completions of one ``[seq_len]`` input, ``[C, answer_len]``, in canonical
        form, at most ``cap`` of them."""

    def all_objects(self) -> np.ndarray | None:
        """Every complete valid object, canonical, if the space is small enough to enumerate
        (for unconditional coverage); otherwise None."""
        return None

    # -- data ---------------------------------------------------------------------------------
    @abstractmethod
    def _build(self, seed: int, **sizes) -> Dataset:
        """Build the dataset from scratch, deterministically from ``seed``."""

    def default_sizes(self) -> dict:
        """Size knobs of :meth:`_build` and their defaults (part of the cache key)."""
        return {}

    def data_recipe(self):
        """What else :meth:`_build` depends on besides the options (e.g. named difficulty
        levels), so that changing it rebuilds the cached datasets; JSON-able."""
        return None

    def augment(self, inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator):
        """Validity-preserving augmentation of a training batch (identity by default)."""
        return inputs, targets

    def check_options(self, options: dict) -> None:
        """Task-specific checks of the dataset options (after the generic ones of
        :func:`check_option`); raise UserError. Nothing by default."""

    def build(self, seed: int = 0, cache: bool = True, progress: bool = False, **sizes) -> Dataset:
        """The dataset for ``seed``, built once and cached under :func:`cache_dir`.

        Every option is checked first (:func:`check_option`, :meth:`check_options`), and a build
        that leaves the train or test split empty is an error. A cache file is used only if it
        holds this task's dataset for these options with the task's shapes; a bad one is rebuilt,
        and a cache folder that cannot be written is skipped with a warning."""
        defaults = self.default_sizes()
        unknown = set(sizes) - set(defaults)
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise UserError(f"task {self.name} has no dataset option {sorted(unknown)[0]!r} "
                            f"(options: {known})")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
            raise UserError(f"the data seed must be a whole number in 0..{2 ** 32 - 1}, got {seed!r}")
        seed = int(seed)
        full = {**defaults, **{k: check_option(k, coerce_option(k, v, defaults[k]), defaults[k])
                               for k, v in sizes.items()}}
        fractions = [v for k, v in full.items() if k.endswith("_fraction") and k != "multi_fraction"]
        if sum(fractions) >= 1:
            raise UserError(f"the split fractions of {self.name} must sum to less than 1, got "
                            + " + ".join(f"{v:g}" for v in fractions))
        self.check_options(full)
        label = self.name + ("-unconditional" if self.unconditional else "")
        key = json.dumps({"task": label, "seed": seed, "sizes": full, "v": CACHE_VERSION,
                          "recipe": self.data_recipe()}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = cache_dir() / f"{label}-{digest}.npz"
        if cache and path.is_file():
            try:
                data = Dataset.load(path)
                problem = self._cache_mismatch(data, seed, full)
            except Exception:  # noqa: BLE001 - a corrupt cache file is rebuilt, not fatal
                problem = "it cannot be read"
            if problem is None:
                return data
            warn(f"ignoring the cached dataset {str(path)!r} ({problem}); rebuilding it")
        self._progress = progress
        data = self._build(seed, **full)
        data.meta.update({"task": self.name, "unconditional": self.unconditional, "seed": seed,
                          "sizes": full})
        empty = [name for name in ("train", "test") if len(data.split(name)) == 0]
        if empty:
            given = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the default options"
            raise UserError(f"{self.name} with {given} leaves the {' and '.join(empty)} split"
                            f"{'s' if len(empty) > 1 else ''} empty; change the dataset options")
        if cache:
            try:
                data.save(path)
            except OSError as e:
                warn(f"cannot cache the dataset in {str(path.parent)!r} ({e.strerror or e}); "
                     "going on without the cache (set GRAM_CACHE_DIR to a writable folder)")
        return data

    def _cache_mismatch(self, data: Dataset, seed: int, options: dict) -> str | None:
        """None if ``data`` is this task's dataset for ``seed`` and ``options``, else why not."""
        meta = data.meta
        if meta.get("task") != self.name or bool(meta.get("unconditional")) != self.unconditional:
            return f"it holds {meta.get('task')!r}, not {self.name}"
        if meta.get("seed") != seed or meta.get("sizes") != json.loads(json.dumps(options)):
            return "it was built with another seed or other options"
        for name in ("train", "val", "test"):
            s = data.split(name)
            if s.inputs.shape[1:] != (self.seq_len,) or s.completions.shape[1:] != (self.answer_len,):
                return f"its {name} split has the wrong shape"
            tokens = s.inputs[:, 1:] if self.puzzle_slot else s.inputs
            if tokens.size and not (0 <= tokens.min() and tokens.max() < self.input_vocab):
                return f"its {name} inputs hold tokens outside the task's vocabulary"
            if len(s.completions) and not (0 <= s.completions.min()
                                           and s.completions.max() < self.answer_vocab):
                return f"its {name} answers hold classes outside the task's vocabulary"
        return None

    def describe(self) -> dict:
        return {"name": self.name, "seq_len": self.seq_len, "input_vocab": self.input_vocab,
                "answer_len": self.answer_len, "answer_vocab": self.answer_vocab,
                "answer_offset": self.answer_offset, "unconditional": self.unconditional}


def coerce_option(name: str, value, default):
    """A dataset option given as text (``--data key=value``) in the type of its default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError(value)
        if isinstance(default, (list, tuple)):
            return [int(v) for v in value.split(",") if v.strip()]
        return type(default)(value)
    except ValueError:
        kind = "list of whole numbers" if isinstance(default, (list, tuple)) else \
            {int: "whole number", float: "number"}.get(type(default), type(default).__name__)
        raise UserError(f"dataset option {name} takes a {kind}, got {value!r}") from None


OPTION_MAX = 10 ** 8  # no dataset option counts more than this


def check_option(name: str, value, default):
    """The generic checks of one dataset option: its default's type, finite numbers, whole
    numbers in 0..OPTION_MAX, split fractions in [0, 1), other fractions (``*_fraction``, ``p``)
    in [0, 1], and a list the task
    needs (a non-empty default) not empty. Returns the value."""
    def bad(why: str):
        return UserError(f"dataset option {name} {why}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("takes true or false")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("takes text")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise bad("takes a list of whole numbers")
        if default and not value:
            raise bad("needs at least one value")
        for v in value:
            check_option(name, v, 0)
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise bad("takes a number")
        if not math.isfinite(value):
            raise bad("must be finite")
        if isinstance(default, int) and not float(value).is_integer():
            raise bad("takes a whole number")
        if name in ("test_fraction", "val_fraction"):
            if not 0 <= value < 1:
                raise bad("must lie in [0, 1)")
        elif name.endswith("_fraction") or name == "p":
            if not 0 <= value <= 1:
                raise bad("must lie in [0, 1]")
        elif not 0 <= value <= OPTION_MAX:
            raise bad(f"must lie in 0..{OPTION_MAX:g}")
    return value


def clean_puzzle_text(text: str) -> str:
    """Drop all whitespace (the formats ignore spaces and newlines)."""
    if not isinstance(text, str):
        raise UserError("puzzle must be a string")
    return "".join(text.split())


def split_indices(keys: np.ndarray, seed: int, fractions=(0.85, 0.15)) -> np.ndarray:
    """Assign each *group key* to train (0) or test (1) by a seeded shuffle of the unique keys.

    Rows that share a key land in the same split, so nothing keyed alike leaks across.
    Returns the split id of every row.
    """
    uniq, inverse = np.unique(keys, return_inverse=True, axis=0 if np.ndim(keys) > 1 else None)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_train = int(round(fractions[0] * len(uniq)))
    group_split = np.ones(len(uniq), dtype=np.int64)
    group_split[order[:n_train]] = 0
    return group_split[np.asarray(inverse).reshape(-1)]
