"""N-Queens completion (docs/design.md §8): place N non-attacking queens on an N x N board that keep the
given ones.

Tokens (cells row-major, ``seq_len = answer_len = N*N``):
    input: 0 = no given queen (blank), 1 = given queen.
    answer: 0 = empty, 1 = queen.
Text: N*N characters of ``.`` and ``Q`` (``q`` accepted), whitespace ignored.

Data (the paper's protocol): from every solution remove k queens, k in {N-3, N-2, N-1} (for N=8
that is {5,6,7}, for N=10 {7,8,9}). The partial board is the input and the solution it came
from the target. An input made from several solutions has all of them as completions, and those
are *exactly* its valid completions: any solution that contains the givens yields the same
partial board when the other rows are removed. Inputs are split 85:15 by *symmetry orbit* (the
board's 8 rotations/reflections), so no test input, nor any image of one, is seen in training;
training may then augment by the 8 symmetries without leaking.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np
from tqdm.auto import tqdm

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, clean_puzzle_text, split_indices


@lru_cache(maxsize=None)
def solutions(n: int) -> np.ndarray:
    """All N-Queens solutions as ``[S, n]`` queen columns per row, in lexicographic order."""
    full = (1 << n) - 1
    out: list[tuple[int, ...]] = []
    cols: list[int] = []

    def place(row: int, used: int, diag: int, anti: int) -> None:
        if row == n:
            out.append(tuple(cols))
            return
        free = full & ~(used | diag | anti)
        while free:
            bit = free & -free
            free ^= bit
            cols.append(bit.bit_length() - 1)
            place(row + 1, used | bit, ((diag | bit) << 1) & full, (anti | bit) >> 1)
            cols.pop()

    place(0, 0, 0, 0)
    return np.array(sorted(out), dtype=np.int64).reshape(-1, n)


def columns_to_board(cols: np.ndarray, n: int) -> np.ndarray:
    """``[..., n]`` queen columns (-1 = no queen in that row) -> ``[..., n*n]`` 0/1 cells."""
    cols = np.asarray(cols)
    board = (cols[..., :, None] == np.arange(n)).astype(np.int64)
    return board.reshape(*cols.shape[:-1], n * n)


@lru_cache(maxsize=None)
def symmetry_permutations(n: int) -> np.ndarray:
    """``[8, n*n]`` cell permutations of the dihedral group: ``image = board[..., perm[g]]``."""
    idx = np.arange(n * n).reshape(n, n)
    images = []
    for flip in (False, True):
        a = idx.T if flip else idx
        for rot in range(4):
            images.append(np.rot90(a, rot).reshape(-1))
    return np.stack(images)


@lru_cache(maxsize=None)
def _line_incidence(n: int) -> np.ndarray:
    """``[n*n, 6n-2]`` 0/1 matrix: which row, column, diagonal and anti-diagonal each cell is on."""
    r, c = np.divmod(np.arange(n * n), n)
    lines = [r, n + c, 2 * n + (r - c + n - 1), 4 * n - 1 + (r + c)]
    inc = np.zeros((n * n, 6 * n - 2), dtype=np.int64)
    for line in lines:
        inc[np.arange(n * n), line] = 1
    return inc


class NQueens(Task):
    def __init__(self, n: int, unconditional: bool = False):
        self.n = n
        self.name = f"nqueens-{n}"
        self.seq_len = self.answer_len = n * n
        self.input_vocab = 2
        self.answer_vocab = 2
        self.answer_offset = 0
        self.unconditional = unconditional

    def links(self) -> np.ndarray | None:
        """Each cell reads the cells that attack it: the rest of its row (slot = their column),
        of its column (slot n + their row), of its diagonal (slot 2n + their row) and of its
        anti-diagonal (slot 3n + their row); -1 where a line has no such cell (the cell itself,
        a diagonal past the board's edge). 4n slots. A cell thereby sees at once whether a given
        queen attacks it, which the recursion would otherwise have to learn to route."""
        if self.unconditional:
            return None
        n = self.n
        r, c = np.divmod(np.arange(n * n), n)
        j = np.arange(n)
        out = np.full((n * n, 4, n), -1, np.int64)
        same_row = r[:, None] * n + j
        out[:, 0] = np.where(j != c[:, None], same_row, -1)
        out[:, 1] = np.where(j != r[:, None], j * n + c[:, None], -1)
        for slot, sign in ((2, 1), (3, -1)):  # the cell of row j on the (anti-)diagonal
            col = c[:, None] + sign * (j - r[:, None])
            ok = (j != r[:, None]) & (col >= 0) & (col < n)
            out[:, slot] = np.where(ok, j * n + np.clip(col, 0, n - 1), -1)
        return out.reshape(n * n, 4 * n)

    # -- text -----------------------------------------------------------------------------------
    def _parse_cells(self, text: str, what: str) -> np.ndarray:
        s = clean_puzzle_text(text)
        n2 = self.n * self.n
        if len(s) != n2:
            raise UserError(f"{self.name} {what} needs {n2} characters of '.' and 'Q' "
                            f"(whitespace ignored), got {len(s)}")
        bad = [(i, ch) for i, ch in enumerate(s) if ch not in ".Qq"]
        if bad:
            i, ch = bad[0]
            raise UserError(f"illegal character {ch!r} at row {i // self.n + 1}, column "
                            f"{i % self.n + 1} of the {self.name} {what}; use '.' or 'Q'")
        return np.array([ch in "Qq" for ch in s], dtype=np.int64)

    def parse_input(self, text: str) -> np.ndarray:
        cells = self._parse_cells(text, "puzzle")
        if self.unconditional and cells.any():
            raise UserError(f"the unconditional {self.name} task takes a blank board")
        attack = self._first_attack(cells)
        if attack:
            raise UserError(f"the givens contradict each other: the queens at {attack}")
        return cells

    def _first_attack(self, cells: np.ndarray) -> str | None:
        queens = [divmod(int(i), self.n) for i in np.flatnonzero(cells)]
        for (r1, c1), (r2, c2) in combinations(queens, 2):
            if r1 == r2 or c1 == c2 or abs(r1 - r2) == abs(c1 - c2):
                return f"row {r1 + 1} col {c1 + 1} and row {r2 + 1} col {c2 + 1} attack each other"
        return None

    def parse_answer(self, text: str) -> np.ndarray:
        return self._parse_cells(text, "answer")

    def format_input(self, tokens) -> str:
        return "".join(".Q"[int(t)] for t in np.asarray(tokens).reshape(-1))

    format_answer = format_input

    def render(self, answer, inputs=None) -> str:
        """Rows of ``.`` (empty), ``Q`` (placed queen) and ``G`` (queen given in the input)."""
        a = np.asarray(answer).reshape(self.n, self.n)
        g = np.zeros_like(a) if inputs is None else np.asarray(inputs).reshape(self.n, self.n)
        rows = [" ".join("G" if gi else ("Q" if ai else ".") for ai, gi in zip(ar, gr))
                for ar, gr in zip(a, g)]
        return "\n".join(rows)

    # -- checkers ---------------------------------------------------------------------------------
    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        """N queens in range, one per row and column, at most one per (anti-)diagonal."""
        a = np.asarray(answers).reshape(-1, self.n * self.n)
        in_range = ((a == 0) | (a == 1)).all(axis=1)
        counts = (a == 1).astype(np.int64) @ _line_incidence(self.n)
        rows_cols = counts[:, : 2 * self.n]
        diagonals = counts[:, 2 * self.n:]
        return in_range & (rows_cols == 1).all(axis=1) & (diagonals <= 1).all(axis=1)

    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs).reshape(-1, self.n * self.n)
        a = np.asarray(answers).reshape(-1, self.n * self.n)
        return ~((x == 1) & (a != 1)).any(axis=1)

    # -- enumeration ------------------------------------------------------------------------------
    def all_objects(self) -> np.ndarray:
        return columns_to_board(solutions(self.n), self.n)

    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        boards = self.all_objects()
        x = np.asarray(inputs).reshape(1, -1)
        found = boards[self.is_consistent(np.broadcast_to(x, boards.shape), boards)]
        return found if cap is None else found[:cap]

    # -- data -------------------------------------------------------------------------------------
    def default_sizes(self) -> dict:
        n = self.n
        return {"remove": [n - 3, n - 2, n - 1] if n > 3 else [1], "max_inputs": 0 if n <= 10 else 100_000,
                "test_fraction": 0.15, "val_fraction": 0.05}

    def augment(self, inputs, targets, rng):
        """Apply one random board symmetry per example to input and target alike."""
        perms = symmetry_permutations(self.n)[rng.integers(0, 8, size=len(inputs))]
        return (np.take_along_axis(inputs, perms, axis=1),
                np.take_along_axis(targets, perms, axis=1))

    def orbit_keys(self, boards: np.ndarray) -> np.ndarray:
        """A key shared by exactly the boards that are symmetry images of each other."""
        images = boards[:, symmetry_permutations(self.n)]  # [B, 8, n*n]
        packed = np.packbits(images.astype(np.uint8), axis=2)  # [B, 8, bytes]
        # lexicographic minimum over the 8 images, as a fixed-width byte string
        keys = packed.view(np.dtype((np.void, packed.shape[2]))).reshape(len(boards), 8)
        return np.sort(keys, axis=1)[:, 0]

    def _build(self, seed: int, remove, max_inputs, test_fraction, val_fraction) -> Dataset:
        sols = solutions(self.n)
        boards = columns_to_board(sols, self.n)
        if self.unconditional:
            return self._build_unconditional(seed, boards, test_fraction, val_fraction)
        # every (solution, removal set) pair -> a partial board in the column form
        partial, source = [], []
        for k in tqdm(sorted(set(remove)), desc=f"{self.name} inputs", disable=not self._progress):
            if not 0 < k <= self.n:
                raise UserError(f"cannot remove {k} queens from a {self.n}x{self.n} solution")
            rows = np.array(list(combinations(range(self.n), k)), dtype=np.int64)  # [C, k]
            p = np.repeat(sols[:, None, :], len(rows), axis=1)  # [S, C, n]
            np.put_along_axis(p, np.broadcast_to(rows, (len(sols),) + rows.shape), -1, axis=2)
            partial.append(p.reshape(-1, self.n))
            source.append(np.repeat(np.arange(len(sols)), len(rows)))
        partial, source = np.concatenate(partial), np.concatenate(source)
        uniq, inverse = np.unique(partial, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))])
        comp_source = source[order]
        keep = np.arange(len(uniq))
        rng = np.random.default_rng(seed)
        if max_inputs and len(uniq) > max_inputs:
            keep = np.sort(rng.choice(len(uniq), size=max_inputs, replace=False))
        inputs = columns_to_board(uniq[keep], self.n)
        groups = [boards[comp_source[offsets[i]:offsets[i + 1]]] for i in keep]
        everything = Split.from_groups(inputs, groups, self.n * self.n)
        keys = self.orbit_keys(inputs)
        test_id = split_indices(keys, seed, (1 - test_fraction, test_fraction))
        train_pool = np.flatnonzero(test_id == 0)
        val_id = split_indices(keys[train_pool], seed + 1, (1 - val_fraction, val_fraction))
        meta = {"num_solutions": int(len(sols)), "unique_inputs": int(len(uniq)),
                "pairs": int(len(partial)), "split_by": "symmetry orbit"}
        return Dataset(train=everything.subset(train_pool[val_id == 0]),
                       val=everything.subset(train_pool[val_id == 1]),
                       test=everything.subset(np.flatnonzero(test_id == 1)), meta=meta)

    def _build_unconditional(self, seed, boards, test_fraction, val_fraction) -> Dataset:
        """p(x): the blank board, with the solutions split into train / val / test boards."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(boards))
        n_test = max(1, int(round(test_fraction * len(boards))))
        n_val = max(1, int(round(val_fraction * len(boards))))
        blank = np.zeros((1, self.n * self.n), np.int64)

        def part(idx):
            return Split.from_groups(blank, [boards[np.sort(idx)]], self.n * self.n)

        return Dataset(train=part(order[n_test + n_val:]), val=part(order[n_test:n_test + n_val]),
                       test=part(order[:n_test]),
                       meta={"num_solutions": int(len(boards)), "unconditional": True})
