"""Sudoku task: the exact solver, the generators, the text formats, the checkers, augmentation and
the dataset builders."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task
from gram_pyro.tasks import sudoku_solver as solver
from gram_pyro.tasks.sudoku import read_sudoku_extreme_csv, shidoku_grids

# Arto Inkala's "world's hardest sudoku" and its unique solution.
INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
INKALA_SOLUTION = ("812753649943682175675491283154237896369845721"
                   "287169534521974368438526917796318452")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sudoku4():
    return get_task("sudoku-4")


@pytest.fixture(scope="module")
def sudoku9():
    return get_task("sudoku-9")


def brute_force_grids() -> np.ndarray:
    """Every 4x4 grid, independently of the solver: rows are permutations; keep the row
    combinations whose columns and boxes are permutations too."""
    perms = np.array(list(itertools.permutations(range(1, 5))))
    rows = np.stack(np.meshgrid(*[np.arange(24)] * 4, indexing="ij"), -1).reshape(-1, 4)
    boards = perms[rows]  # [24^4, 4 rows, 4 cols]
    ok = (np.sort(boards, axis=1) == np.arange(1, 5)[:, None]).all(axis=(1, 2))  # columns
    boxes = boards.reshape(-1, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 4, 4)
    ok &= (np.sort(boxes, axis=2) == np.arange(1, 5)).all(axis=(1, 2))
    return boards[ok].reshape(-1, 16)


def digits(text: str) -> list[int]:
    return [0 if ch == "." else int(ch) for ch in text]


# -- solver -------------------------------------------------------------------------------------
def test_shidoku_has_288_grids_and_the_solver_finds_exactly_them(sudoku4):
    brute = brute_force_grids()
    assert len(brute) == 288
    grids = shidoku_grids()
    assert len(grids) == 288 and len(np.unique(grids, axis=0)) == 288
    assert {tuple(g) for g in grids} == {tuple(g) for g in brute}
    assert sudoku4.is_valid(sudoku4.all_objects()).all()


def test_solver_matches_brute_force_on_random_4x4_inputs(sudoku4):
    grids = shidoku_grids()
    rng = np.random.default_rng(0)
    for trial in range(300):
        if trial % 2:  # a partial grid: always solvable
            x = np.where(rng.random(16) < rng.random(), grids[rng.integers(288)], 0)
        else:  # arbitrary digits: often contradictory or unsolvable
            x = np.where(rng.random(16) < 0.3, rng.integers(1, 5, 16), 0)
        truth = grids[((x == 0) | (grids == x)).all(axis=1)] - 1
        found = sudoku4.solve(x)
        assert {tuple(g) for g in found} == {tuple(g) for g in truth}
        assert len(found) == len(truth)
        assert len(sudoku4.solve(x, cap=2)) == min(2, len(truth))


def test_solver_solves_a_hard_9x9_and_counts_multiple_solutions(sudoku9):
    sols, nodes = solver.solve(digits(INKALA), cap=2)
    assert len(sols) == 1 and "".join(map(str, sols[0])) == INKALA_SOLUTION
    assert nodes > 1  # it needs search, not only singles
    # blank every 1 and 2: the grid and its 1<->2 swap both complete it
    full = np.array(digits(INKALA_SOLUTION))
    puzzle = np.where(full <= 2, 0, full)
    found = sudoku9.solve(puzzle, cap=50)
    assert 2 <= len(found) < 50
    keys = {tuple(f) for f in found}
    swapped = np.choose(full - 1, [1, 0, 2, 3, 4, 5, 6, 7, 8])
    assert tuple(full - 1) in keys and tuple(swapped) in keys
    assert sudoku9.is_correct(np.repeat(puzzle[None], len(found), 0), found).all()
    assert len(keys) == len(found)
    assert len(sudoku9.solve(np.zeros(81, np.int64), cap=3)) == 3


def test_contradictory_givens_have_no_solutions():
    puzzle = [0] * 81
    puzzle[0] = puzzle[1] = 5
    assert solver.solve(puzzle, cap=2) == ([], 0)


def test_generated_hard_puzzles_are_unique_minimal_and_rated():
    rng = np.random.default_rng(1)
    for _ in range(3):
        puzzle, solution, rating = solver.hard_puzzle(9, rng, min_rating=3)
        sols, nodes = solver.solve(puzzle, cap=2)
        assert sols == [solution] and nodes == rating >= 3
        assert sum(d > 0 for d in puzzle) < 30
        assert all(puzzle[i] in (0, solution[i]) for i in range(81))
        given_cells = [i for i in range(81) if puzzle[i]]
        for i in given_cells[:8]:  # minimal: dropping a given breaks uniqueness
            loose = list(puzzle)
            loose[i] = 0
            assert solver.count_solutions(loose, 2) == 2


def test_multi_solution_puzzles_have_between_2_and_cap_solutions(sudoku9):
    rng = np.random.default_rng(2)
    puzzle, sols, _ = solver.multi_solution_puzzle(9, rng, cap=6)
    assert 2 <= len(sols) <= 6
    assert len(solver.solve(puzzle, cap=100)[0]) == len(sols)
    answers = np.array(sols) - 1
    assert sudoku9.is_correct(np.repeat([puzzle], len(sols), 0), answers).all()


def test_random_grids_are_valid_and_differ(sudoku9):
    rng = np.random.default_rng(3)
    grids = np.array([solver.random_grid(9, rng) for _ in range(20)]) - 1
    assert sudoku9.is_valid(grids).all()
    assert len(np.unique(grids, axis=0)) == 20


# -- text formats -------------------------------------------------------------------------------
def test_parse_format_round_trip(sudoku4, sudoku9):
    x = sudoku9.parse_input(INKALA)
    assert sudoku9.format_input(x) == INKALA
    assert (sudoku9.parse_input(INKALA.replace(".", "0")) == x).all()
    spaced = "\n".join(INKALA[i:i + 9] for i in range(0, 81, 9))
    assert (sudoku9.parse_input(spaced) == x).all()
    a = sudoku9.parse_answer(INKALA_SOLUTION)
    assert a.min() == 0 and a.max() == 8 and sudoku9.format_answer(a) == INKALA_SOLUTION
    assert sudoku9.is_correct(x[None], a[None]).all()
    board = sudoku9.render(a, x).splitlines()
    assert len(board) == 11 and "|" in board[0] and board[0].count("8") >= 2
    g = sudoku4.all_objects()[5]
    assert (sudoku4.parse_answer(sudoku4.format_answer(g)) == g).all()


@pytest.mark.parametrize("text, words", [
    ("1234", ["16", "got 4"]),
    ("12345" + "." * 11, ["'5'", "row 2, column 1"]),
    ("1x" + "." * 14, ["'x'", "row 1, column 2"]),
    ("11" + "." * 14, ["digit 1", "row 1"]),
    ("1...1" + "." * 11, ["digit 1", "column 1"]),
    ("1....1" + "." * 10, ["digit 1", "box 1"]),
])
def test_bad_puzzles_name_the_problem(sudoku4, text, words):
    with pytest.raises(UserError) as e:
        sudoku4.parse_input(text)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_unconditional_input_must_be_blank():
    task = get_task("sudoku-4", unconditional=True)
    assert task.unconditional and task.name == "sudoku-4"
    assert not task.parse_input("." * 16).any() and not task.parse_input("").any()
    with pytest.raises(UserError, match="blank"):
        task.parse_input("1" + "." * 15)


def test_answers_have_no_blanks(sudoku4):
    with pytest.raises(UserError, match="row 1, column 1"):
        sudoku4.parse_answer("." + "1" * 15)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=90),
                 st.text(alphabet="0123456789. \nx", min_size=14, max_size=84)))
def test_parser_raises_only_user_errors(text):
    for task in (get_task("sudoku-4"), get_task("sudoku-9")):
        try:
            x = task.parse_input(text)
        except UserError:
            continue
        assert x.shape == (task.seq_len,) and 0 <= x.min() and x.max() <= task.n


# -- checkers ---------------------------------------------------------------------------------
def slow_is_valid(board: np.ndarray, n: int) -> bool:
    g = board.reshape(n, n)
    k = int(n ** 0.5)
    units = [g[r] for r in range(n)] + [g[:, c] for c in range(n)]
    units += [g[r:r + k, c:c + k].reshape(-1) for r in range(0, n, k) for c in range(0, n, k)]
    return all(sorted(u.tolist()) == list(range(n)) for u in units)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 9]))
def test_is_valid_accepts_grids_and_rejects_corruptions(seed, n):
    task = get_task(f"sudoku-{n}")
    rng = np.random.default_rng(seed)
    grid = np.array(solver.random_grid(n, rng)) - 1
    boards = [grid]
    i, j = rng.choice(n * n, 2, replace=False)
    changed = grid.copy()
    changed[i] = (grid[i] + rng.integers(1, n)) % n  # one cell changed
    boards.append(changed)
    if grid[i] != grid[j]:
        swapped = grid.copy()
        swapped[[i, j]] = grid[[j, i]]
        boards.append(swapped)
    out_of_range = grid.copy()
    out_of_range[i] = n
    boards.append(out_of_range)
    boards.append(rng.integers(0, n, n * n))  # a random board (almost never valid)
    boards = np.stack(boards)
    expected = np.array([slow_is_valid(b, n) for b in boards])
    assert expected[0] and not expected[1:-1].any()
    assert (task.is_valid(boards) == expected).all()


# -- augmentation -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sudoku-4", "sudoku-9"])
def test_augment_preserves_validity_and_givens(name):
    task = get_task(name)
    rng = np.random.default_rng(4)
    targets = np.array([solver.random_grid(task.n, rng) for _ in range(64)]) - 1
    inputs = np.where(rng.random(targets.shape) < 0.4, targets + 1, 0)
    inputs[:8] = 0  # blank (unconditional) inputs too
    x, y = task.augment(inputs, targets, rng)
    assert x.shape == inputs.shape and y.shape == targets.shape
    assert task.is_valid(y).all() and task.is_consistent(x, y).all()
    assert ((x > 0).sum(1) == (inputs > 0).sum(1)).all() and not x[:8].any()
    assert (y != targets).any(axis=1).mean() > 0.9  # boards do change


def test_augment_reaches_the_whole_orbit_of_a_shidoku_grid(sudoku4):
    grid = sudoku4.all_objects()[:1].repeat(3000, axis=0)
    _, y = sudoku4.augment(np.zeros_like(grid), grid, np.random.default_rng(5))
    # the 288 grids form two orbits, of 96 and 192 grids
    assert len(np.unique(y, axis=0)) in (96, 192)


def test_orbit_keys_are_invariant_under_augmentation_and_separate_orbits(sudoku4):
    rng = np.random.default_rng(6)
    grids = shidoku_grids()[rng.integers(0, 288, 200)]
    inputs = np.where(rng.random(grids.shape) < 0.5, grids, 0)
    x, _ = sudoku4.augment(inputs, grids - 1, rng)
    assert (sudoku4.orbit_keys(x) == sudoku4.orbit_keys(inputs)).all()
    # a grid and one not reachable from it (the other orbit) get different keys
    keys = sudoku4.orbit_keys(shidoku_grids())
    assert sorted(np.unique(keys, return_counts=True)[1].tolist()) == [96, 192]


# -- data ---------------------------------------------------------------------------------------
def test_shidoku_dataset_is_deterministic_complete_and_leak_free(sudoku4):
    data = sudoku4.build(seed=0, cache=False)
    again = sudoku4.build(seed=0, cache=False)
    other = sudoku4.build(seed=1, cache=False)
    assert (data.test.inputs == again.test.inputs).all()
    assert (data.train.completions == again.train.completions).all()
    assert data.test.inputs.shape != other.test.inputs.shape or \
        (data.test.inputs != other.test.inputs).any()
    keys = {name: set(sudoku4.orbit_keys(data.split(name).inputs).tolist())
            for name in ("train", "val", "test")}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert len(data.test) > 0.1 * (len(data.train) + len(data.test)) and len(data.val) > 0
    assert data.stats()["train"]["multi_solution_inputs"] > 0
    grids = shidoku_grids() - 1
    for i in range(0, len(data.test), 97):  # every completion is known
        x = data.test.inputs[i]
        truth = grids[((x == 0) | (grids == x - 1)).all(axis=1)]
        assert {tuple(c) for c in data.test.completions_of(i)} == {tuple(t) for t in truth}


def test_unconditional_shidoku_splits_the_288_grids():
    task = get_task("sudoku-4", unconditional=True)
    data = task.build(seed=0)
    parts = [data.split(name) for name in ("train", "val", "test")]
    assert all(len(p) == 1 and not p.inputs.any() for p in parts)
    grids = np.concatenate([p.completions for p in parts])
    assert len(grids) == 288 and len(np.unique(grids, axis=0)) == 288
    assert (task.build(seed=0).test.completions == data.test.completions).all()  # from the cache


def test_sudoku9_dataset_small_build(sudoku9):
    sizes = dict(n_train=6, n_val=2, n_test=4, multi_fraction=0.5, max_solutions=4)
    data = sudoku9.build(seed=0, cache=False, **sizes)
    assert (data.train.inputs == sudoku9.build(seed=0, cache=False, **sizes).train.inputs).all()
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 4)
    seen = {sudoku9.format_input(x) for x in data.train.inputs}
    assert not seen & {sudoku9.format_input(x) for x in data.test.inputs}
    for split in (data.train, data.test):
        x, y = split.pairs()
        assert sudoku9.is_correct(x, y).all()
        assert (split.num_completions >= 1).all() and (split.num_completions <= 4).all()
    assert data.meta["test"]["mean_givens"] > 17
    unconditional = get_task("sudoku-9", unconditional=True).build(
        seed=0, cache=False, n_train=5, n_val=1, n_test=2)
    assert unconditional.train.completions.shape == (5, 81)
    assert sudoku9.is_valid(unconditional.train.completions).all()


def write_csv(path, rows):
    path.write_text("source,q,a,rating\n" + "".join(",".join(r) + "\n" for r in rows))
    return str(path)


def test_csv_reader_and_csv_dataset(tmp_path, sudoku9):
    easy = "".join(ch if i % 2 else "." for i, ch in enumerate(INKALA_SOLUTION))
    path = write_csv(tmp_path / "ok.csv", [("a", INKALA, INKALA_SOLUTION, "17"),
                                           ("b", easy, INKALA_SOLUTION, "0")])
    q, a, rating = read_sudoku_extreme_csv(path)
    assert q.shape == a.shape == (2, 81) and rating.tolist() == [17, 0]
    assert sudoku9.format_input(q[0]) == INKALA
    assert len(read_sudoku_extreme_csv(path, limit=1)[0]) == 1
    data = sudoku9.build(seed=0, csv=path, n_train=1, n_val=0, n_test=1)
    assert len(data.train) == len(data.test) == 1 and data.meta["source"] == f"csv:{path}"
    assert sudoku9.is_correct(*data.train.pairs()).all()
    with pytest.raises(UserError, match="fewer"):
        sudoku9.build(seed=0, csv=path, n_train=5, n_val=0, n_test=1)


@pytest.mark.parametrize("row, words", [
    (("x", INKALA, INKALA_SOLUTION), ["line 3", "4 fields"]),
    (("x", INKALA[:-1], INKALA_SOLUTION, "1"), ["line 3", "80 characters"]),
    (("x", INKALA, INKALA_SOLUTION[:-1] + ".", "1"), ["line 3", "'.'"]),
    (("x", INKALA, INKALA_SOLUTION, "hard"), ["line 3", "rating"]),
    (("x", "9" + INKALA[1:], INKALA_SOLUTION, "1"), ["line 3", "givens"]),
    (("x", "." * 81, "1" * 81, "1"), ["line 3", "not a valid grid"]),
])
def test_csv_reader_names_the_bad_line(tmp_path, row, words):
    path = write_csv(tmp_path / "bad.csv", [("a", INKALA, INKALA_SOLUTION, "3"), row])
    with pytest.raises(UserError) as e:
        read_sudoku_extreme_csv(path)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_csv_reader_missing_or_empty_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_sudoku_extreme_csv(str(tmp_path / "nope.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="line 1"):
        read_sudoku_extreme_csv(str(empty))


def test_layout(sudoku4, sudoku9):
    assert (sudoku9.seq_len, sudoku9.input_vocab, sudoku9.answer_len, sudoku9.answer_vocab,
            sudoku9.answer_offset) == (81, 10, 81, 9, 0)
    assert (sudoku4.seq_len, sudoku4.input_vocab, sudoku4.answer_vocab) == (16, 5, 4)
    assert sudoku9.all_objects() is None
    with pytest.raises(UserError):
        sudoku9.build(seed=0, per_grid=3)


# -- the difficulty ladder -------------------------------------------------------------------------
def test_singles_rounds_count_the_depth_of_propagation():
    solution = [int(ch) for ch in INKALA_SOLUTION]
    assert solver.singles_rounds(solution) == 0
    one_blank = solution[:]
    one_blank[40] = 0
    assert solver.singles_rounds(one_blank) == 1
    assert solver.singles_rounds([int(ch) if ch != "." else 0 for ch in INKALA]) is None
    # a whole row blank except one cell: each blank is a naked single of its column at once
    row = solution[:]
    row[9:17] = [0] * 8
    assert solver.singles_rounds(row) == 1


def test_ladder_puzzles_are_unique_in_range_and_never_harder_with_more_givens():
    rng = np.random.default_rng(3)
    for _ in range(4):
        puzzle, solution, rounds = solver.ladder_puzzle(9, rng, (32, 36), max_rounds=6)
        assert 32 <= sum(d > 0 for d in puzzle) <= 36
        assert solver.count_solutions(puzzle, 2) == 1
        assert all(p in (0, s) for p, s in zip(puzzle, solution))
        assert rounds is not None and 1 <= rounds <= 6 and rounds == solver.singles_rounds(puzzle)
        blank = next(i for i, d in enumerate(puzzle) if not d)
        more = puzzle[:]
        more[blank] = solution[blank]
        assert solver.singles_rounds(more) <= rounds
    with pytest.raises(ValueError, match="no 9x9 puzzle"):
        solver.ladder_puzzle(9, rng, (24, 24), max_rounds=0, max_tries=2)


def test_minimal_puzzle_with_keep_stops_at_the_count():
    rng = np.random.default_rng(0)
    grid = solver.random_grid(9, rng)
    assert sum(d > 0 for d in solver.minimal_puzzle(grid, rng, keep=50)) == 50
    # keep=0 is the old minimal puzzle, draw for draw: the hard datasets do not move
    a = solver.minimal_puzzle(grid, np.random.default_rng(7))
    b = solver.minimal_puzzle(grid, np.random.default_rng(7), keep=0)
    assert a == b and solver.count_solutions(a, 2) == 1


def test_levels_build_with_their_difficulty_in_the_meta(sudoku9):
    data = sudoku9.build(seed=0, cache=False, level="easy", n_train=3, n_val=1, n_test=2)
    for name in ("train", "val", "test"):
        d = data.meta[name]
        assert 32 <= d["givens"]["min"] <= d["givens"]["max"] <= 36
        assert d["puzzles"] == len(data.split(name)) and "guess" not in d["singles_rounds"]
        assert sum(d["singles_rounds"].values()) == d["puzzles"]
        assert all(1 <= int(k) <= 6 for k in d["singles_rounds"])
        assert (data.split(name).num_completions == 1).all()
    assert data.meta["level"].startswith("easy")
    custom = sudoku9.build(seed=0, cache=False, givens="50,52", n_train=2, n_val=0, n_test=1)
    assert 50 <= custom.meta["train"]["givens"]["min"] <= custom.meta["train"]["givens"]["max"] <= 52


@pytest.mark.parametrize("options, words", [
    ({"level": "brutal"}, "unknown sudoku-9 level"),
    ({"givens": "10,20"}, "17 <= LO"),
    ({"givens": "40"}, "LO,HI"),
    ({"level": "easy", "csv": "x.csv"}, "brings its own"),
    ({"csv": "x.csv", "train_csv": "y.csv"}, "not both"),
    ({"train_csv": "y.csv"}, "both train_csv"),
])
def test_bad_difficulty_and_file_options_are_one_line_errors(sudoku9, options, words):
    with pytest.raises(UserError, match=words):
        sudoku9.build(seed=0, cache=False, n_train=1, n_val=0, n_test=1, **options)


# -- the Sudoku-Extreme protocol from two local files ------------------------------------------------
def extreme_rows(count, seed):
    """``count`` rows in the Sudoku-Extreme layout: random grids with 40 random blanks ('.')."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        grid = solver.random_grid(9, rng)
        q = "".join("." if b else str(d) for d, b in zip(grid, rng.permutation(81) < 40))
        rows.append((f"gen{seed}", q, "".join(map(str, grid)), str(i)))
    return rows


def test_extreme_protocol_round_trips_on_a_generated_fixture(tmp_path, sudoku9):
    train_rows, test_rows = extreme_rows(20, 0), extreme_rows(8, 1)
    train_rows[5] = test_rows[2]  # one training row repeats a test puzzle
    train = write_csv(tmp_path / "train.csv", train_rows)
    test = write_csv(tmp_path / "test.csv", test_rows)
    to_q = lambda split: [sudoku9.format_input(x) for x in split.inputs]  # noqa: E731
    data = sudoku9.build(seed=0, cache=False, train_csv=train, test_csv=test, n_train=10,
                         n_val=4, n_test=0)
    assert to_q(data.test) == [r[1] for r in test_rows]  # the whole test file, in order
    assert data.meta["rows"] == {"train_csv": 20, "test_csv": 8}
    file_q = [r[1] for r in train_rows]
    tr, va = to_q(data.train), to_q(data.val)
    dropped = data.meta["train_dropped_in_test"] + data.meta["val_dropped_in_test"]
    assert len(tr) + len(va) + dropped == 14 and set(tr + va) <= set(file_q)
    assert not set(tr) & set(va) and not set(tr + va) & set(to_q(data.test))
    assert sudoku9.is_correct(*data.train.pairs()).all() and sudoku9.is_correct(*data.test.pairs()).all()
    again = sudoku9.build(seed=0, cache=False, train_csv=train, test_csv=test, n_train=10, n_val=4,
                          n_test=0)
    other = sudoku9.build(seed=1, cache=False, train_csv=train, test_csv=test, n_train=10, n_val=4,
                          n_test=3)
    assert to_q(again.train) == tr and to_q(other.train) != tr
    assert len(other.test) == 3 and set(to_q(other.test)) <= set(r[1] for r in test_rows)
    with pytest.raises(UserError, match="fewer than n_train"):
        sudoku9.build(seed=0, cache=False, train_csv=train, test_csv=test, n_train=19, n_val=4,
                      n_test=0)
    with pytest.raises(UserError, match="fewer than n_test = 9 .n_test=0 takes the whole file"):
        sudoku9.build(seed=0, cache=False, train_csv=train, test_csv=test, n_train=1, n_test=9)


def test_extreme_protocol_names_a_malformed_line_even_when_not_sampled(tmp_path, sudoku9):
    rows = extreme_rows(6, 0)
    rows[3] = rows[3][:3]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", extreme_rows(2, 1))
    with pytest.raises(UserError, match="line 5: expected 4 fields"):
        sudoku9.build(seed=0, cache=False, train_csv=train, test_csv=test, n_train=1, n_val=0)


def test_extreme_protocol_augments_training_batches_only(tmp_path):
    from gram_pyro.build import run_data
    from gram_pyro.train import Trainer
    from tests.helpers import tiny_config

    train = write_csv(tmp_path / "train.csv", extreme_rows(12, 0))
    test = write_csv(tmp_path / "test.csv", extreme_rows(4, 1))
    cfg = tiny_config("sudoku-9", data_options={"train_csv": train, "test_csv": test,
                                                "n_train": "8", "n_val": "2", "n_test": "0"})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    x, y = (t.numpy() for t in trainer.sample_batch())
    task = trainer.task
    assert task.is_correct(x, y).all()  # augmented pairs stay valid
    raw = {bytes(r) for r in trainer.x_train.astype(np.int8)}
    assert any(bytes(r) not in raw for r in x.astype(np.int8))  # ... and are not the raw rows
    part = run_data(task, cfg).split("test")  # what evaluate reads: the file, untouched
    assert [task.format_input(r) for r in part.inputs] == [r[1] for r in extreme_rows(4, 1)]


def test_changing_a_level_rebuilds_its_cached_data(sudoku9, monkeypatch):
    from gram_pyro.tasks import sudoku

    before = sudoku9.build(seed=0, level="easy", n_train=2, n_val=0, n_test=1)
    monkeypatch.setitem(sudoku.LEVELS, "easy", {**sudoku.LEVELS["easy"], "givens": (50, 50)})
    after = sudoku9.build(seed=0, level="easy", n_train=2, n_val=0, n_test=1)
    assert before.meta["train"]["givens"]["max"] <= 36 and after.meta["train"]["givens"]["min"] == 50
