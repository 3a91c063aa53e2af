"""Exact n x n Sudoku solver (n = 4 or 9) and the puzzle generators built on it.

A grid is a flat list of ``n*n`` ints, row-major, ``0`` for blank and ``d`` for digit ``d``.
Digit ``d`` is bit ``d - 1`` of a candidate mask.

The solver is constraint propagation plus backtracking:

- naked singles: a cell with one candidate ``m = full & ~(row | col | box)`` takes it;
- hidden singles: a digit with one possible cell in a row, column or box goes there;
- otherwise branch on the empty cell with the fewest candidates (MRV).

``solve`` counts solutions up to a cap and reports ``nodes``, the number of search nodes it
visited. With ``cap=2`` that is the effort to find the solution and prove it unique, which is our
difficulty rating (1 = propagation alone solves it; the Sudoku-Extreme ratings are a backtrack
count of the same kind).
"""

from __future__ import annotations

from functools import lru_cache
from math import isqrt

import numpy as np


class Geometry:
    """Cell -> row / column / box indices and the cell lists of every unit, for one n."""

    def __init__(self, n: int):
        box = isqrt(n)
        if box * box != n:
            raise ValueError(f"sudoku size must be a square, got {n}")
        self.n, self.box, self.cells, self.full = n, box, n * n, (1 << n) - 1
        idx = range(n * n)
        self.row = [i // n for i in idx]
        self.col = [i % n for i in idx]
        self.boxof = [(i // n) // box * box + (i % n) // box for i in idx]
        self.row_units = [[i for i in idx if self.row[i] == u] for u in range(n)]
        self.col_units = [[i for i in idx if self.col[i] == u] for u in range(n)]
        self.box_units = [[i for i in idx if self.boxof[i] == u] for u in range(n)]


@lru_cache(maxsize=None)
def geometry(n: int) -> Geometry:
    return Geometry(n)


def unit_masks(grid, geo: Geometry):
    """Digit masks used per row, column and box, or None if a given repeats in some unit."""
    n = geo.n
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    for i, d in enumerate(grid):
        if d:
            bit = 1 << (d - 1)
            r, c, b = geo.row[i], geo.col[i], geo.boxof[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return None
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    return rows, cols, boxes


def _search(geo, grid, rows, cols, boxes, cap, sols, stats, order):
    """Depth-first search from one node; appends completed grids to ``sols`` until ``cap``.

    Mutates its arguments (callers pass copies). ``order(mask)`` gives the digits to try at a
    branch, so the same code enumerates (ascending) and samples (shuffled).
    """
    stats[0] += 1
    full, R, C, B = geo.full, geo.row, geo.col, geo.boxof
    cand = [0] * geo.cells
    empty = [i for i in range(geo.cells) if not grid[i]]
    while True:
        progress = False
        best, best_count = -1, 99
        for i in empty:
            if grid[i]:
                continue
            r, c, b = R[i], C[i], B[i]
            m = full & ~(rows[r] | cols[c] | boxes[b])
            if not m:
                return
            if m & (m - 1):
                cand[i] = m
                k = m.bit_count()
                if k < best_count:
                    best, best_count = i, k
            else:  # naked single
                grid[i] = m.bit_length()
                rows[r] |= m
                cols[c] |= m
                boxes[b] |= m
                cand[i] = 0
                progress = True
        if progress:
            continue  # cheap singles first; rescan before the costlier unit pass
        if best < 0:
            sols.append(grid[:])
            return
        for units, used in ((geo.row_units, rows), (geo.col_units, cols), (geo.box_units, boxes)):
            for u, cells in enumerate(units):
                once = twice = 0
                for i in cells:
                    m = cand[i]
                    twice |= once & m
                    once |= m
                # cand may be stale (a superset) after placements in this pass: that only
                # weakens these deductions, never makes them wrong.
                if (once | used[u]) != full:
                    return  # some digit has no place left in this unit
                hidden = once & ~twice & ~used[u]
                while hidden:
                    bit = hidden & -hidden
                    hidden ^= bit
                    for i in cells:
                        if cand[i] & bit:
                            break
                    r, c, b = R[i], C[i], B[i]
                    if grid[i] or (rows[r] | cols[c] | boxes[b]) & bit:
                        return  # two digits forced into one cell, or the digit is blocked
                    grid[i] = bit.bit_length()
                    rows[r] |= bit
                    cols[c] |= bit
                    boxes[b] |= bit
                    cand[i] = 0
                    progress = True
        if not progress:
            break
    r, c, b = R[best], C[best], B[best]
    for bit in order(cand[best]):
        g = grid[:]
        g[best] = bit.bit_length()
        rr, cc, bb = rows[:], cols[:], boxes[:]
        rr[r] |= bit
        cc[c] |= bit
        bb[b] |= bit
        _search(geo, g, rr, cc, bb, cap, sols, stats, order)
        if len(sols) >= cap:
            return


def _ascending(mask: int):
    while mask:
        bit = mask & -mask
        mask ^= bit
        yield bit


def solve(grid, cap: int | None = None, n: int | None = None,
          rng: np.random.Generator | None = None):
    """Solutions of ``grid`` (at most ``cap``; all if None) and the number of search nodes.

    Returns ``(solutions, nodes)``; ``solutions`` is a list of flat grids, in ascending branch
    order unless ``rng`` shuffles the branches. Contradictory givens give no solutions, 0 nodes.
    """
    grid = [int(d) for d in grid]
    n = n or isqrt(len(grid))
    geo = geometry(n)
    if len(grid) != geo.cells or any(d < 0 or d > n for d in grid):
        raise ValueError(f"not a {n}x{n} sudoku grid")
    masks = unit_masks(grid, geo)
    sols, stats = [], [0]
    if masks is None or (cap is not None and cap < 1):
        return sols, 0
    if rng is None:
        order = _ascending
    else:
        def order(mask):
            bits = list(_ascending(mask))
            return [bits[j] for j in rng.permutation(len(bits))]
    _search(geo, grid, *masks, cap if cap is not None else float("inf"), sols, stats, order)
    return sols, stats[0]


def count_solutions(grid, cap: int, n: int | None = None) -> int:
    return len(solve(grid, cap, n)[0])


def singles_rounds(grid, n: int | None = None) -> int | None:
    """How many rounds of singles solve ``grid``, or None if singles alone cannot.

    A round places, at once, every naked single (a blank with one candidate) and every hidden
    single (a digit with one possible cell in a row, column or box) of the grid as it stands. The
    count is the depth of the propagation a solver needs, the natural difficulty for a model that
    refines all cells in parallel: 0 for a full grid, 1 when every blank is a single of the
    givens. None means a guess is needed (or the givens contradict each other).
    """
    grid = [int(d) for d in grid]
    geo = geometry(n or isqrt(len(grid)))
    units = geo.row_units + geo.col_units + geo.box_units
    rounds = 0
    while True:
        masks = unit_masks(grid, geo)
        if masks is None:
            return None
        rows, cols, boxes = masks
        cand = {i: geo.full & ~(rows[geo.row[i]] | cols[geo.col[i]] | boxes[geo.boxof[i]])
                for i in range(geo.cells) if not grid[i]}
        if not cand:
            return rounds
        place = {i: m for i, m in cand.items() if m and not m & (m - 1)}
        for cells in units:
            for bit in _ascending(geo.full):
                spots = [i for i in cells if cand.get(i, 0) & bit]
                if len(spots) == 1 and place.setdefault(spots[0], bit) != bit:
                    return None  # two digits forced into one cell
        if not place or not all(cand.values()):
            return None
        for i, bit in place.items():
            grid[i] = bit.bit_length()
        rounds += 1


def ladder_puzzle(n: int, rng: np.random.Generator, givens: tuple[int, int],
                  max_rounds: int | None = None, max_tries: int = 1000):
    """A unique puzzle with ``givens[0]..givens[1]`` givens of a random grid, solvable by at most
    ``max_rounds`` rounds of singles (any puzzle if None; see :func:`singles_rounds`).

    Returns ``(puzzle, solution, rounds)``, ``rounds`` None where a guess is needed. Raises
    ValueError if ``max_tries`` candidates all fail the bounds.
    """
    lo, hi = givens
    for _ in range(max(1, max_tries)):
        solution = random_grid(n, rng)
        target = int(rng.integers(lo, hi + 1))
        puzzle = minimal_puzzle(solution, rng, keep=target)
        if sum(1 for d in puzzle if d) > hi:
            continue  # became minimal above the range
        rounds = singles_rounds(puzzle, n)
        if max_rounds is None or (rounds is not None and rounds <= max_rounds):
            return puzzle, solution, rounds
    raise ValueError(f"no {n}x{n} puzzle with {lo}..{hi} givens solvable in {max_rounds} rounds "
                     f"of singles in {max_tries} tries")


# -- generators ----------------------------------------------------------------------------------
def random_grid(n: int, rng: np.random.Generator) -> list[int]:
    """A random complete grid: random diagonal boxes, then the first solution of a search with
    shuffled branch order.

    The diagonal boxes share no row or column, so any fillings of them are compatible, and
    seeding them halves the search. The process treats all digits alike, but it is not exactly
    uniform over the grids.
    """
    geo = geometry(n)
    diagonal = [geo.box_units[b * geo.box + b] for b in range(geo.box)]
    while True:  # a diagonal seed always completes in practice; retry rather than assume it
        grid = [0] * geo.cells
        for cells in diagonal:
            for cell, digit in zip(cells, rng.permutation(n) + 1):
                grid[cell] = int(digit)
        sols, _ = solve(grid, 1, n, rng)
        if sols:
            return sols[0]


def _has_other_solution(geo, puzzle, rows, cols, boxes, cell: int, digit: int) -> bool:
    """Does ``puzzle`` (``cell`` blank, unit masks given) have a solution with something other
    than ``digit`` in ``cell``?

    When the puzzle with that given is unique this is exactly "removing the given breaks
    uniqueness", and it is cheaper than counting to 2: the known branch is never searched.
    """
    r, c, b = geo.row[cell], geo.col[cell], geo.boxof[cell]
    free = geo.full & ~(rows[r] | cols[c] | boxes[b]) & ~(1 << (digit - 1))
    found, stats = [], [0]
    for bit in _ascending(free):
        trial = puzzle[:]
        trial[cell] = bit.bit_length()
        rr, cc, bb = rows[:], cols[:], boxes[:]
        rr[r] |= bit
        cc[c] |= bit
        bb[b] |= bit
        _search(geo, trial, rr, cc, bb, 1, found, stats, _ascending)
        if found:
            return True
    return False


def minimal_puzzle(solution, rng: np.random.Generator, keep: int = 0) -> list[int]:
    """Remove the givens of ``solution`` in random order, each only if the puzzle stays unique,
    stopping once ``keep`` givens are left.

    With ``keep=0`` every given is tried once, so the result is minimal: no single given can be
    removed. With ``keep > 0`` the puzzle has ``keep`` givens, or more if it became minimal first.
    This is the generators' hot loop, so the unit masks are updated in place rather than rebuilt.
    """
    geo = geometry(isqrt(len(solution)))
    puzzle = [int(d) for d in solution]
    rows, cols, boxes = unit_masks(puzzle, geo)
    givens = geo.cells
    for cell in rng.permutation(geo.cells).tolist():
        if givens <= keep:
            break
        digit = puzzle[cell]
        bit_off = ~(1 << (digit - 1))
        r, c, b = geo.row[cell], geo.col[cell], geo.boxof[cell]
        puzzle[cell] = 0
        rows[r] &= bit_off
        cols[c] &= bit_off
        boxes[b] &= bit_off
        if _has_other_solution(geo, puzzle, rows, cols, boxes, cell, digit):
            puzzle[cell] = digit
            rows[r] |= ~bit_off
            cols[c] |= ~bit_off
            boxes[b] |= ~bit_off
        else:
            givens -= 1
    return puzzle


def hard_puzzle(n: int, rng: np.random.Generator, min_rating: int = 3, max_tries: int = 100):
    """A minimal puzzle with a unique solution and ``rating >= min_rating``.

    Candidates are :func:`minimal_puzzle` of fresh :func:`random_grid` s; the first that rates at
    least ``min_rating`` is returned (the hardest seen if none does within ``max_tries``).
    Returns ``(puzzle, solution, rating)``, ``rating`` the node count of ``solve(puzzle, 2)``.
    Rating 1 means naked and hidden singles solve it; 3 or more means it needs a guess.
    """
    best = None
    for _ in range(max(1, max_tries)):
        solution = random_grid(n, rng)
        puzzle = minimal_puzzle(solution, rng)
        rating = solve(puzzle, 2, n)[1]
        if best is None or rating > best[2]:
            best = (puzzle, solution, rating)
        if rating >= min_rating:
            break
    return best


def multi_solution_puzzle(n: int, rng: np.random.Generator, cap: int = 8):
    """A puzzle with between 2 and ``cap`` solutions (for coverage), with all its solutions.

    Starts from a minimal unique puzzle and removes further givens in random order, skipping any
    removal that would give more than ``cap`` solutions, until it has at least a random target
    number (2..cap) of them. Returns ``(puzzle, solutions, rating)``. Rarely every removal
    overshoots and the puzzle stays unique; callers check ``len(solutions)``.
    """
    if cap < 2:
        raise ValueError("a multi-solution puzzle needs cap >= 2")
    puzzle = minimal_puzzle(random_grid(n, rng), rng)
    target = int(rng.integers(2, cap + 1))
    for cell in rng.permutation(n * n).tolist():
        digit = puzzle[cell]
        if not digit:
            continue
        puzzle[cell] = 0
        count = len(solve(puzzle, cap + 1, n)[0])
        if count > cap:
            puzzle[cell] = digit
        elif count >= target:
            break
    sols, nodes = solve(puzzle, cap + 1, n)
    return puzzle, sols, nodes
