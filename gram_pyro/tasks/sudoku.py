"""Sudoku (docs/design.md §8): fill an n x n grid (n = 4 or 9, boxes sqrt(n) x sqrt(n)) so that every row,
column and box holds each digit once, keeping the givens.

Tokens (cells row-major, ``seq_len = answer_len = n*n``):
    input: 0 = blank, d = given digit d (vocab n + 1).
    answer: class d - 1 for digit d (vocab n).
Text: n*n characters, digits ``1..n`` and ``.`` or ``0`` for blank, whitespace ignored; answers
are n*n digits.

Data:
    sudoku-4: puzzles made by keeping a random subset of the cells of each of the 288 grids.
        Multi-solution puzzles are kept on purpose (coverage) and every input carries *all* its
        completions. Inputs are split 85:15 by augmentation orbit (see :meth:`Sudoku.orbit_keys`),
        so no test puzzle, nor any augmented image of one, is a training input.
    sudoku-9: locally generated puzzles with a unique solution at a difficulty ``level``
        (:data:`LEVELS`; ``hard``, the default, is the Sudoku-Extreme analogue) or with
        ``givens=LO,HI`` givens; ``multi_fraction`` mixes in puzzles with 2..``max_solutions``
        solutions. ``train_csv=PATH test_csv=PATH`` follows the Sudoku-Extreme protocol with the
        user's own files (``n_train`` drawn from the first, tested on the second), ``csv=PATH``
        splits one file three ways (docs/design.md §8).
    unconditional: the blank board; its completions are complete grids (the 288 for n=4, split
        85:15; random grids for n=9). With 288 grids in two augmentation orbits, augmenting
        unconditional sudoku-4 reaches the held-out grids too.
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

from gram_pyro.errors import UserError
from gram_pyro.tasks import sudoku_solver as solver
from gram_pyro.tasks.base import Dataset, Split, Task, clean_puzzle_text, split_indices


# Generated 9x9 difficulty levels (``--data level=NAME``), by the task's own solver. Easy and
# medium puzzles are solved by rounds of singles alone, the kind of parallel propagation a
# recursive model can learn on CPU; hard ones are minimal and need a guess, like Sudoku-Extreme.
# ``max_rounds`` 81 admits any puzzle singles solve. Calibrated on the cpu preset: 32-36 givens
# within 6 rounds reached 97% validation prior accuracy in 2,400 steps (11 minutes), so that is
# easy; medium takes fewer givens and deeper propagation.
LEVELS = {
    "easy": {"givens": (32, 36), "max_rounds": 6, "about": "32-36 givens, at most 6 rounds of singles"},
    "medium": {"givens": (27, 31), "max_rounds": 81, "about": "27-31 givens, solved by singles alone"},
    "hard": {"about": "minimal puzzles (about 22-26 givens) that need a guess"},
}


@lru_cache(maxsize=None)
def shidoku_grids() -> np.ndarray:
    """All 288 complete 4x4 grids, ``[288, 16]`` digits, enumerated by the exact solver."""
    grids, _ = solver.solve([0] * 16, None, 4)
    return np.array(grids, dtype=np.int64)


def first_repeat(grid, n: int) -> str | None:
    """Where the first repeated digit of a digit grid is ("digit 3 appears twice in row 2"),
    or None if no row, column or box repeats a digit."""
    g = np.asarray(grid).reshape(n, n)
    box = solver.geometry(n).box
    units = [(f"row {r + 1}", g[r]) for r in range(n)] + \
            [(f"column {c + 1}", g[:, c]) for c in range(n)]
    for b in range(n):
        r0, c0 = b // box * box, b % box * box
        units.append((f"box {b + 1} (rows {r0 + 1}-{r0 + box}, columns {c0 + 1}-{c0 + box})",
                      g[r0:r0 + box, c0:c0 + box].reshape(-1)))
    for where, cells in units:
        counts = np.bincount(cells, minlength=n + 1)[1:]
        if (counts > 1).any():
            return f"digit {int(np.argmax(counts > 1)) + 1} appears twice in {where}"
    return None


def count_csv_rows(path: str) -> int:
    """The number of data rows of a Sudoku-Extreme CSV, after checking its header and that every
    line has four fields; one cheap pass that parses nothing (the real files have millions)."""
    rows = 0
    with _csv_errors(path), open(path, "rb") as f:
        header = f.readline()
        if header.count(b",") != 3:
            raise UserError(f"{path}, line 1: expected the header source,question,answer,rating")
        for line_no, line in enumerate(f, start=2):
            if not line.strip():
                continue
            if line.count(b",") != 3:
                raise UserError(f"{path}, line {line_no}: expected 4 fields (source,question,"
                                f"answer,rating), got {line.count(b',') + 1}")
            rows += 1
    return rows


@contextmanager
def _csv_errors(path: str):
    """Turn a missing, unreadable or undecodable CSV file into one UserError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"sudoku CSV {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"sudoku CSV {path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read sudoku CSV {path}: {e}") from None


def read_sudoku_extreme_csv(path: str, limit: int | None = None, rows=None):
    """Read the Sudoku-Extreme CSV layout: a header, then ``source,question,answer,rating`` with
    ``.`` (or ``0``) for a blank.

    Returns ``(puzzles, solutions, ratings)``: ``[M, 81]`` digit grids (0 blank), ``[M, 81]``
    digits and ``[M]`` ints, for the data rows numbered ``rows`` (0-based, blank lines not
    counted), else the first ``limit`` rows (all if None), in file order. Raises UserError on a
    missing file or a malformed line, naming the line; rows not asked for are not parsed.
    """
    wanted = None if rows is None else set(int(r) for r in rows)
    puzzles, solutions, ratings = [], [], []
    with _csv_errors(path), open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != 4:
            raise UserError(f"{path}, line 1: expected the header source,question,answer,rating")
        index = -1
        for row in reader:
            if limit is not None and len(puzzles) >= limit:
                break
            if not row:
                continue
            index += 1
            if wanted is not None and index not in wanted:
                continue
            _read_row(row, path, reader.line_num, puzzles, solutions, ratings)
    if not puzzles:
        raise UserError(f"sudoku CSV {path} has no puzzles")
    return np.stack(puzzles), np.stack(solutions), np.array(ratings, dtype=np.int64)


def _read_row(row, path, line, puzzles, solutions, ratings) -> None:
    """Check one CSV row and append its puzzle, answer and rating."""
    if len(row) != 4:
        raise UserError(f"{path}, line {line}: expected 4 fields (source,question,answer,rating), "
                        f"got {len(row)}")
    _, q, a, rating = row
    puzzle = _csv_grid(q, "question", path, line, blank_ok=True)
    answer = _csv_grid(a, "answer", path, line, blank_ok=False)
    try:
        rating = int(rating)
    except ValueError:
        raise UserError(f"{path}, line {line}: rating {rating!r} is not an integer") from None
    if not ((puzzle == answer) | (puzzle == 0)).all():
        raise UserError(f"{path}, line {line}: the answer does not keep the givens of the question")
    clash = first_repeat(answer, 9)
    if clash:
        raise UserError(f"{path}, line {line}: the answer is not a valid grid: {clash}")
    puzzles.append(puzzle)
    solutions.append(answer)
    ratings.append(rating)


def _csv_grid(text: str, field: str, path: str, line: int, blank_ok: bool) -> np.ndarray:
    allowed = "123456789" + (".0" if blank_ok else "")
    if len(text) != 81:
        raise UserError(f"{path}, line {line}: field {field} has {len(text)} characters, not 81")
    bad = next((ch for ch in text if ch not in allowed), None)
    if bad is not None:
        raise UserError(f"{path}, line {line}: illegal character {bad!r} in field {field}")
    return np.array([0 if ch in ".0" else int(ch) for ch in text], dtype=np.int64)


class Sudoku(Task):
    def __init__(self, n: int, unconditional: bool = False):
        if n not in (4, 9):
            raise UserError(f"sudoku has sizes 4 and 9, not {n}")
        self.n, self.box = n, solver.geometry(n).box
        self.name = f"sudoku-{n}"
        self.seq_len = self.answer_len = n * n
        self.input_vocab = n + 1
        self.answer_vocab = n
        self.answer_offset = 0
        self.unconditional = unconditional

    def data_recipe(self):
        return {"levels": LEVELS} if self.n == 9 and not self.unconditional else None

    def links(self) -> np.ndarray | None:
        """Each cell reads its peers: the other cells of its row (by column), of its column (by
        row), and of its box outside both (by index): 20 slots for 9x9, 7 for 4x4."""
        if self.unconditional:
            return None
        geo = solver.geometry(self.n)
        rows = []
        for i in range(geo.cells):
            row = [j for j in geo.row_units[geo.row[i]] if j != i]
            col = [j for j in geo.col_units[geo.col[i]] if j != i]
            box = [j for j in geo.box_units[geo.boxof[i]]
                   if geo.row[j] != geo.row[i] and geo.col[j] != geo.col[i]]
            rows.append(row + col + box)
        return np.asarray(rows, dtype=np.int64)

    # -- text -----------------------------------------------------------------------------------
    def _parse_cells(self, text: str, what: str, blank_ok: bool) -> np.ndarray:
        s = clean_puzzle_text(text)
        n, n2 = self.n, self.n * self.n
        if len(s) != n2:
            raise UserError(f"{self.name} {what} needs {n2} characters (whitespace ignored; 16 for "
                            f"sudoku-4, 81 for sudoku-9), got {len(s)}")
        allowed = "".join(str(d) for d in range(1, n + 1)) + (".0" if blank_ok else "")
        for i, ch in enumerate(s):
            if ch not in allowed:
                use = f"digits 1-{n}" + (" and '.' or '0' for blank" if blank_ok else "")
                raise UserError(f"illegal character {ch!r} at row {i // n + 1}, column {i % n + 1} "
                                f"of the {self.name} {what}; use {use}")
        return np.array([0 if ch in ".0" else int(ch) for ch in s], dtype=np.int64)

    def parse_input(self, text: str) -> np.ndarray:
        if self.unconditional and clean_puzzle_text(text) == "":
            return np.zeros(self.seq_len, dtype=np.int64)
        cells = self._parse_cells(text, "puzzle", blank_ok=True)
        if self.unconditional and cells.any():
            raise UserError(f"the unconditional {self.name} task takes a blank board; got "
                            f"{int((cells > 0).sum())} givens")
        clash = first_repeat(cells, self.n)
        if clash:
            raise UserError(f"the givens contradict each other: {clash}")
        return cells

    def parse_answer(self, text: str) -> np.ndarray:
        return self._parse_cells(text, "answer", blank_ok=False) - 1

    def format_input(self, tokens) -> str:
        return "".join("." if t == 0 else str(int(t)) for t in np.asarray(tokens).reshape(-1))

    def format_answer(self, tokens) -> str:
        return "".join(str(int(t) + 1) for t in np.asarray(tokens).reshape(-1))

    def _board(self, text: str) -> list[str]:
        n, k = self.n, self.box
        rule = "+".join(["-" * (2 * k + 1)] * k)
        lines = []
        for r in range(n):
            if r and r % k == 0:
                lines.append(rule)
            row = text[r * n:(r + 1) * n]
            lines.append(" " + " | ".join(" ".join(row[c:c + k]) for c in range(0, n, k)) + " ")
        return lines

    def render(self, answer, inputs=None) -> str:
        """The answer as a board with box rules; with ``inputs``, the puzzle to its left."""
        right = self._board(self.format_answer(answer))
        if inputs is None:
            return "\n".join(line.rstrip() for line in right)
        left = self._board(self.format_input(inputs))
        return "\n".join(f"{a}    {b}".rstrip() for a, b in zip(left, right))

    # -- checkers ---------------------------------------------------------------------------------
    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        """Every row, column and box holds each class 0..n-1 exactly once."""
        n, k = self.n, self.box
        a = np.asarray(answers).reshape(-1, n, n)
        onehot = a[..., None] == np.arange(n)  # [B, n, n, n]; out-of-range values match nothing
        boxes = onehot.reshape(-1, k, k, k, k, n).sum(axis=(2, 4))  # [B, band, stack, n]
        rows_ok = (onehot.sum(axis=2) == 1).all(axis=(1, 2))
        cols_ok = (onehot.sum(axis=1) == 1).all(axis=(1, 2))
        return rows_ok & cols_ok & (boxes == 1).all(axis=(1, 2, 3))

    def score(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Share of cells that keep their given and whose class occurs once in the cell's row,
        column and box: 1 exactly for a correct answer."""
        n, k = self.n, self.box
        a = np.asarray(answers).reshape(-1, n, n)
        x = np.asarray(inputs).reshape(-1, n, n)
        onehot = a[..., None] == np.arange(n)  # [B, n, n, n]
        rows = onehot.sum(axis=2, keepdims=True)  # [B, n, 1, n]: count of each class per row
        cols = onehot.sum(axis=1, keepdims=True)
        boxes = onehot.reshape(-1, k, k, k, k, n).sum(axis=(2, 4), keepdims=True)
        boxes = np.broadcast_to(boxes, (len(a), k, k, k, k, n)).reshape(-1, n, n, n)
        once = ((rows == 1) & (cols == 1) & (boxes == 1) & onehot).any(axis=-1)  # [B, n, n]
        kept = (x == 0) | (a == x - 1)
        return (once & kept).mean(axis=(1, 2)).astype(np.float32)

    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs).reshape(-1, self.seq_len)
        a = np.asarray(answers).reshape(-1, self.answer_len)
        return ((x == 0) | (a == x - 1)).all(axis=1)

    # -- enumeration ------------------------------------------------------------------------------
    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        """All completions (at most ``cap``) by the exact solver; give a cap for blank 9x9."""
        grid = np.asarray(inputs).reshape(-1)
        if grid.shape != (self.seq_len,) or grid.min() < 0 or grid.max() > self.n:
            raise ValueError(f"not a {self.name} input: shape {grid.shape}")
        sols, _ = solver.solve(grid.tolist(), cap, self.n)
        return np.array(sols, dtype=np.int64).reshape(-1, self.answer_len) - 1

    def all_objects(self) -> np.ndarray | None:
        return shidoku_grids() - 1 if self.n == 4 else None

    # -- augmentation -----------------------------------------------------------------------------
    def _line_permutations(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """``[B, n]`` row (or column) orders: shuffle the bands, then the rows inside each."""
        k = self.box
        bands = np.argsort(rng.random((batch, k)), axis=1)
        within = np.argsort(rng.random((batch, k, k)), axis=2)
        return (bands[:, :, None] * k + within).reshape(batch, self.n)

    def augment(self, inputs, targets, rng):
        """Per example: relabel the digits, permute bands/rows and stacks/columns, and transpose
        with probability 1/2; input and target get the same map, blanks stay blank."""
        x = np.asarray(inputs, dtype=np.int64).reshape(-1, self.seq_len)
        y = np.asarray(targets, dtype=np.int64).reshape(-1, self.answer_len)
        batch, n = len(x), self.n
        digits = np.argsort(rng.random((batch, n)), axis=1)  # class c -> digits[c]
        y = np.take_along_axis(digits, y, axis=1)
        x_table = np.concatenate([np.zeros((batch, 1), np.int64), digits + 1], axis=1)  # 0 stays 0
        x = np.take_along_axis(x_table, x, axis=1)
        rows, cols = self._line_permutations(batch, rng), self._line_permutations(batch, rng)
        source = rows[:, :, None] * n + cols[:, None, :]  # new (i, j) reads old (rows_i, cols_j)
        transpose = rng.random(batch) < 0.5
        source = np.where(transpose[:, None, None], source.transpose(0, 2, 1), source)
        source = source.reshape(batch, -1)
        return np.take_along_axis(x, source, axis=1), np.take_along_axis(y, source, axis=1)

    def orbit_keys(self, inputs: np.ndarray) -> np.ndarray:
        """A key shared by exactly the 4x4 inputs that :meth:`augment` maps onto each other: the
        smallest, over the 128 cell symmetries, of the image with digits renamed in order of
        first appearance, as a base-5 integer."""
        if self.n != 4:
            raise ValueError("orbit keys are enumerated for sudoku-4 only")
        perms = []
        for rows in self._all_line_orders():
            for cols in self._all_line_orders():
                cell = (rows[:, None] * 4 + cols[None, :])
                perms += [cell.reshape(-1), cell.T.reshape(-1)]
        inputs, perms = np.asarray(inputs, dtype=np.int64), np.array(perms)
        keys = [self._smallest_image(inputs[i:i + 512], perms) for i in range(0, len(inputs), 512)]
        return np.concatenate(keys) if keys else np.zeros(0, np.int64)

    @staticmethod
    def _smallest_image(inputs: np.ndarray, perms: np.ndarray) -> np.ndarray:
        images = inputs[:, perms]  # [M, 128, 16]
        first = np.stack([np.where(images == d, np.arange(16), 16).min(2) for d in range(1, 5)], 2)
        label = np.argsort(np.argsort(first, axis=2, kind="stable"), axis=2) + 1  # [M, 128, 4]
        named = np.where(images > 0, np.take_along_axis(label, np.maximum(images - 1, 0), 2), 0)
        return (named @ (5 ** np.arange(15, -1, -1))).min(axis=1)

    def _all_line_orders(self):
        return [np.array([b * 2 + w0, b * 2 + 1 - w0, (1 - b) * 2 + w1, (1 - b) * 2 + 1 - w1])
                for b in (0, 1) for w0 in (0, 1) for w1 in (0, 1)]

    # -- data -------------------------------------------------------------------------------------
    def default_sizes(self) -> dict:
        """Defaults sized to build in under a minute on one core (measured: sudoku-4 ~2 s,
        sudoku-9 ~35 s, unconditional sudoku-9 with the paper's 50k grids ~40 s)."""
        if self.n == 4:
            sizes = {"test_fraction": 0.15, "val_fraction": 0.05}
            if not self.unconditional:
                sizes.update(per_grid=20, min_givens=4, max_givens=10)
            return sizes
        if self.unconditional:
            return {"n_train": 50_000, "n_val": 1000, "n_test": 1000}
        return {"n_train": 1000, "n_val": 200, "n_test": 1000, "level": "hard", "givens": [],
                "min_rating": 3, "multi_fraction": 0.0, "max_solutions": 8, "csv": "",
                "train_csv": "", "test_csv": ""}

    def _build(self, seed: int, **sizes) -> Dataset:
        self._progress = getattr(self, "_progress", False)  # set by build(); not when called bare
        if self.unconditional:
            return self._build_unconditional(seed, **sizes)
        if self.n == 4:
            return self._build_shidoku(seed, **sizes)
        files = [k for k in ("csv", "train_csv", "test_csv") if sizes[k]]
        if files and (sizes["givens"] or sizes["level"] != "hard"):
            raise UserError("level and givens choose generated puzzles; a CSV file brings its own")
        if "csv" in files and len(files) > 1:
            raise UserError("give csv=PATH (one file, split three ways) or train_csv=PATH and "
                            "test_csv=PATH, not both")
        if sizes["train_csv"] or sizes["test_csv"]:
            return self._build_from_csv_files(seed, **sizes)
        if sizes["csv"]:
            return self._build_from_csv(seed, **sizes)
        return self._build_generated(seed, **sizes)

    def _three_way(self, everything: Split, keys, seed, test_fraction, val_fraction) -> Dataset:
        """Split inputs by key 85:15 (train:test), then carve validation out of train."""
        test_id = split_indices(keys, seed, (1 - test_fraction, test_fraction))
        pool = np.flatnonzero(test_id == 0)
        val_id = split_indices(keys[pool], seed + 1, (1 - val_fraction, val_fraction))
        return Dataset(train=everything.subset(pool[val_id == 0]),
                       val=everything.subset(pool[val_id == 1]),
                       test=everything.subset(np.flatnonzero(test_id == 1)))

    def _build_shidoku(self, seed, per_grid, min_givens, max_givens, test_fraction,
                       val_fraction) -> Dataset:
        """Keep ``min_givens..max_givens`` random cells of each grid, ``per_grid`` times."""
        if not 0 <= min_givens <= max_givens <= 16:
            raise UserError(f"need 0 <= min_givens <= max_givens <= 16, got {min_givens} and "
                            f"{max_givens}")
        rng = np.random.default_rng(seed)
        grids = np.repeat(shidoku_grids(), per_grid, axis=0)
        givens = rng.integers(min_givens, max_givens + 1, size=len(grids))
        rank = np.argsort(rng.random(grids.shape), axis=1).argsort(axis=1)  # random cell order
        inputs = np.unique(np.where(rank < givens[:, None], grids, 0), axis=0)
        groups = [self.solve(x) for x in tqdm(inputs, desc=f"{self.name} completions",
                                              disable=not self._progress)]
        data = self._three_way(Split.from_groups(inputs, groups, 16), self.orbit_keys(inputs),
                               seed, test_fraction, val_fraction)
        data.meta = {"unique_inputs": int(len(inputs)), "split_by": "augmentation orbit",
                     "mean_givens": float((inputs > 0).sum(1).mean())}
        return data

    def _build_unconditional(self, seed, test_fraction=0.15, val_fraction=0.05, n_train=0,
                             n_val=0, n_test=0) -> Dataset:
        blank = np.zeros((1, self.seq_len), np.int64)
        if self.n == 4:
            grids = shidoku_grids() - 1
            data = self._three_way(Split(np.repeat(blank, len(grids), 0), grids,
                                         np.arange(len(grids) + 1)),
                                   grids, seed, test_fraction, val_fraction)
            parts = {name: data.split(name).completions for name in ("train", "val", "test")}
        else:
            seen: set[bytes] = set()
            parts = {name: np.array(self._random_grids(seed, sid, count, seen)) - 1
                     for sid, name, count in ((2, "test", n_test), (1, "val", n_val),
                                              (0, "train", n_train))}
        splits = {name: Split.from_groups(blank, [g.reshape(-1, self.answer_len)], self.answer_len)
                  for name, g in parts.items()}
        return Dataset(**splits, meta={"unconditional": True,
                                       "grids": {k: int(len(v)) for k, v in parts.items()}})

    def _random_grids(self, seed, stream, count, seen) -> list:
        rng = np.random.default_rng([seed, stream])
        out = []
        with tqdm(total=count, desc=f"{self.name} grids", disable=not self._progress) as bar:
            while len(out) < count:
                grid = solver.random_grid(self.n, rng)
                if bytes(grid) not in seen:  # never the same grid in two splits
                    seen.add(bytes(grid))
                    out.append(grid)
                    bar.update()
        return out

    def _build_generated(self, seed, n_train, n_val, n_test, level, givens, min_rating,
                         multi_fraction, max_solutions, **_) -> Dataset:
        """Generated puzzles with a unique solution at a difficulty ``level`` (:data:`LEVELS`), or
        with ``givens=LO,HI`` givens; ``multi_fraction`` of them with 2..``max_solutions``.

        Each split has its own random stream, so the test set does not move when n_train does.
        """
        if not 0 <= multi_fraction <= 1 or max_solutions < 2:
            raise UserError("need 0 <= multi_fraction <= 1 and max_solutions >= 2")
        draw, described = self._puzzle_source(level, givens, min_rating)
        seen: set[bytes] = set()
        splits, meta = {}, {"source": "generated", "level": described}
        for stream, name, count in ((2, "test", n_test), (1, "val", n_val), (0, "train", n_train)):
            rng = np.random.default_rng([seed, stream])
            inputs, groups = [], []
            with tqdm(total=count, desc=f"{self.name} {name}", disable=not self._progress) as bar:
                while len(inputs) < count:
                    if multi_fraction and rng.random() < multi_fraction:
                        puzzle, sols, _ = solver.multi_solution_puzzle(9, rng, max_solutions)
                        if len(sols) < 2:
                            continue
                    else:
                        puzzle, sols = draw(rng)
                    if bytes(puzzle) in seen:
                        continue
                    seen.add(bytes(puzzle))
                    inputs.append(puzzle)
                    groups.append(np.array(sols) - 1)
                    bar.update()
            splits[name] = Split.from_groups(np.array(inputs).reshape(-1, 81), groups, 81)
            meta[name] = difficulty(splits[name].inputs)
        return Dataset(**splits, meta=meta)

    @staticmethod
    def _puzzle_source(level: str, givens, min_rating: int):
        """``(draw, description)``: ``draw(rng)`` gives one unique puzzle and ``[solution]``."""
        if givens:
            if len(givens) != 2 or not 17 <= givens[0] <= givens[1] <= 80:
                raise UserError(f"givens takes LO,HI with 17 <= LO <= HI <= 80 (a 9x9 puzzle with "
                                f"fewer than 17 givens is never unique), got {givens}")
            lo, hi = givens
            return (lambda rng: _ladder(rng, (lo, hi), None)), f"{lo}-{hi} givens"
        if level not in LEVELS:
            raise UserError(f"unknown sudoku-9 level {level!r}; choose one of "
                            f"{', '.join(LEVELS)} (or givens=LO,HI)")
        spec = LEVELS[level]
        if level == "hard":
            def hard(rng):
                puzzle, solution, _ = solver.hard_puzzle(9, rng, min_rating)
                return puzzle, [solution]
            return hard, f"hard: {spec['about']}, search nodes >= {min_rating}"
        return (lambda rng: _ladder(rng, spec["givens"], spec["max_rounds"])), \
            f"{level}: {spec['about']}"

    def _build_from_csv(self, seed, n_train, n_val, n_test, csv, **_) -> Dataset:
        """The first n_train + n_val + n_test distinct puzzles of a Sudoku-Extreme CSV file,
        shuffled by ``seed`` into test, val and train."""
        total = n_train + n_val + n_test
        puzzles, solutions, ratings = read_sudoku_extreme_csv(csv, limit=total)
        first = np.sort(np.unique(puzzles, axis=0, return_index=True)[1])
        if len(first) < total:
            raise UserError(f"{csv} has {len(first)} distinct puzzles, fewer than n_train + n_val "
                            f"+ n_test = {total}")
        order = first[np.random.default_rng(seed).permutation(len(first))]
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        splits, meta = {}, {"source": f"csv:{csv}", "rating": "from the file"}
        for name, idx in parts.items():
            splits[name] = Split(puzzles[idx], solutions[idx] - 1, np.arange(len(idx) + 1))
            meta[name] = {**difficulty(puzzles[idx]), "file_rating": _spread(ratings[idx])}
        return Dataset(**splits, meta=meta)


    def _build_from_csv_files(self, seed, n_train, n_val, n_test, train_csv, test_csv,
                              **_) -> Dataset:
        """The Sudoku-Extreme protocol from its two files: ``n_train`` puzzles drawn from
        ``train_csv`` with ``seed`` (HRM and TRM train on 1,000), ``n_val`` more from it for
        validation, and the test file (a seeded subset of ``n_test`` puzzles, or all with
        ``n_test=0``). Augmentation is the trainer's, so it touches training batches only."""
        if not (train_csv and test_csv):
            raise UserError("the Sudoku-Extreme protocol takes both train_csv=PATH and "
                            "test_csv=PATH (or csv=PATH to split one file)")
        if n_train < 1 or n_val < 0 or n_test < 0:
            raise UserError(f"need n_train >= 1, n_val >= 0 and n_test >= 0, got {n_train}, "
                            f"{n_val} and {n_test}")
        rng = np.random.default_rng(seed)
        train_rows, test_rows = count_csv_rows(train_csv), count_csv_rows(test_csv)
        if n_test > test_rows:
            raise UserError(f"{test_csv} has {test_rows} puzzles, fewer than n_test = {n_test} "
                            f"(n_test=0 takes the whole file)")
        pick = np.sort(rng.choice(test_rows, n_test, replace=False)) if n_test else None
        test = read_sudoku_extreme_csv(test_csv, rows=pick)
        if n_train + n_val > train_rows:
            raise UserError(f"{train_csv} has {train_rows} puzzles, fewer than n_train + n_val = "
                            f"{n_train + n_val}")
        order = rng.choice(train_rows, n_train + n_val, replace=False)
        pool = read_sudoku_extreme_csv(train_csv, rows=order)
        position = {int(r): i for i, r in enumerate(np.sort(order))}  # file order -> read index
        index = {"train": [position[int(r)] for r in order[:n_train]],
                 "val": [position[int(r)] for r in order[n_train:]]}
        test_keys = {bytes(p.astype(np.int8)) for p in test[0]}
        splits = {"test": Split(test[0], test[1] - 1, np.arange(len(test[0]) + 1))}
        meta = {"source": f"csv:{train_csv} + csv:{test_csv}", "rows": {"train_csv": train_rows,
                                                                      "test_csv": test_rows}}
        for name, idx in index.items():
            keep = [i for i in idx if bytes(pool[0][i].astype(np.int8)) not in test_keys]
            meta[f"{name}_dropped_in_test"] = len(idx) - len(keep)  # never train on a test puzzle
            splits[name] = Split(pool[0][keep], pool[1][keep] - 1, np.arange(len(keep) + 1))
        for name, split in splits.items():
            meta[name] = difficulty(split.inputs)
        meta["test"]["file_rating"] = _spread(test[2])
        return Dataset(**splits, meta=meta)


def _ladder(rng, givens, max_rounds):
    puzzle, solution, _ = solver.ladder_puzzle(9, rng, givens, max_rounds)
    return puzzle, [solution]


def _spread(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {}
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()),
            "max": float(v.max())}


def difficulty(inputs: np.ndarray, sample: int = 2000) -> dict:
    """How hard a split's puzzles are by the task's own solver: the givens, the rounds of singles
    that solve them (``guess`` where singles get stuck; :func:`sudoku_solver.singles_rounds`) and
    the search nodes of proving the solution unique (1 = propagation alone). Splits larger than
    ``sample`` are described by a seeded sample of that many puzzles."""
    inputs = np.asarray(inputs)
    described = inputs
    if len(inputs) > sample:
        described = inputs[np.random.default_rng(0).choice(len(inputs), sample, replace=False)]
    rounds = [solver.singles_rounds(p.tolist(), 9) for p in described]
    histogram: dict[str, int] = {}
    for r in sorted(rounds, key=lambda r: 10 ** 9 if r is None else r):
        key = "guess" if r is None else str(r)
        histogram[key] = histogram.get(key, 0) + 1
    nodes = [solver.solve(p.tolist(), 2, 9)[1] for p in described]
    givens = (inputs > 0).sum(1)
    return {"puzzles": int(len(inputs)), "described": int(len(described)),
            "mean_givens": float(givens.mean()) if len(givens) else 0.0,
            "givens": _spread(givens), "singles_rounds": histogram, "search_nodes": _spread(nodes)}
