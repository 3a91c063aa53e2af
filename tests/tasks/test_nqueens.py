import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task
from gram_pyro.tasks.nqueens import columns_to_board, solutions, symmetry_permutations

KNOWN_COUNTS = {4: 2, 5: 10, 6: 4, 7: 40, 8: 92, 9: 352, 10: 724}


@pytest.mark.parametrize("n,count", KNOWN_COUNTS.items())
def test_solution_counts(n, count):
    assert len(solutions(n)) == count
    assert get_task(f"nqueens-{n}").is_valid(columns_to_board(solutions(n), n)).all()


def brute_force_valid(board, n):
    """Plain-loop checker, independent of the vectorized one."""
    queens = [divmod(i, n) for i in range(n * n) if board[i] == 1]
    if len(queens) != n:
        return False
    for i, (r1, c1) in enumerate(queens):
        for r2, c2 in queens[i + 1:]:
            if r1 == r2 or c1 == c2 or abs(r1 - r2) == abs(c1 - c2):
                return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.integers(5, 7).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n * n - 1), min_size=0, max_size=n + 1))))
def test_is_valid_matches_brute_force(case):
    n, cells = case
    board = np.zeros(n * n, np.int64)
    board[cells] = 1
    task = get_task(f"nqueens-{n}")
    assert bool(task.is_valid(board[None])[0]) == brute_force_valid(board, n)


def test_corrupted_solution_is_invalid():
    task = get_task("nqueens-8")
    boards = task.all_objects().copy()
    boards[:, 0] = 1 - boards[:, 0]  # add or remove a queen in the corner
    assert not task.is_valid(boards).any()


@pytest.mark.parametrize("n", [5, 6, 7])
def test_solve_matches_brute_force_over_boards(n):
    """solve() against an exhaustive scan of every board with n queens one per row."""
    import itertools

    task = get_task(f"nqueens-{n}")
    rng = np.random.default_rng(n)
    all_rows = [np.array(p) for p in itertools.product(range(n), repeat=n)]
    boards = columns_to_board(np.stack(all_rows), n)
    valid = boards[[brute_force_valid(b, n) for b in boards]]
    for _ in range(10):
        sol = solutions(n)[rng.integers(len(solutions(n)))]
        keep = rng.random(n) < 0.4
        x = columns_to_board(np.where(keep, sol, -1), n)
        expected = valid[task.is_consistent(np.broadcast_to(x, valid.shape), valid)]
        got = task.solve(x)
        assert {b.tobytes() for b in got} == {b.tobytes() for b in expected}


def test_dataset_split_has_no_leak_even_up_to_symmetry():
    task = get_task("nqueens-8")
    data = task.build(seed=0)
    assert len(data.train) and len(data.val) and len(data.test)
    train_orbits = set(task.orbit_keys(data.train.inputs).tolist())
    for split in (data.val, data.test):
        assert not train_orbits & set(task.orbit_keys(split.inputs).tolist())
        # every image of a held-out input is absent from training
        images = split.inputs[:, symmetry_permutations(8)].reshape(-1, 64)
        train_keys = {r.tobytes() for r in data.train.inputs}
        assert not any(r.tobytes() in train_keys for r in images)


def test_completions_are_exactly_the_valid_completions():
    task = get_task("nqueens-8")
    data = task.build(seed=0)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data.test), 50, replace=False):
        stored = {b.tobytes() for b in data.test.completions_of(i)}
        assert stored == {b.tobytes() for b in task.solve(data.test.inputs[i])}
    # the paper's protocol: 5..7 queens removed, so 1..3 givens
    givens = data.test.inputs.sum(1)
    assert givens.min() >= 1 and givens.max() <= 3
    assert data.test.num_completions.mean() > 1.2  # multi-solution inputs are common


def test_dataset_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path))
    task = get_task("nqueens-7")
    a = task.build(seed=3)
    assert list(tmp_path.glob("nqueens-7-*.npz"))
    b = task.build(seed=3, cache=False)
    c = task.build(seed=4, cache=False)
    assert np.array_equal(a.test.inputs, b.test.inputs)
    assert not np.array_equal(a.test.inputs, c.test.inputs)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path))
    task = get_task("nqueens-6")
    task.build(seed=0)
    (path,) = tmp_path.glob("nqueens-6-*.npz")
    path.write_bytes(b"not a zip")
    assert len(task.build(seed=0).train) > 0


@pytest.mark.parametrize("n", [4, 5, 8])
def test_links_are_exactly_the_attacking_cells(n):
    """Cell p links to q iff q != p shares its row, column, diagonal or anti-diagonal; each line
    keeps its own slots, and the blank-input p(x) form has no links."""
    links = get_task(f"nqueens-{n}").links()
    assert links.shape == (n * n, 4 * n)
    for p in range(n * n):
        r, c = divmod(p, n)
        attackers = {q for q in range(n * n) if q != p and (
            q // n == r or q % n == c or q // n - q % n == r - c or q // n + q % n == r + c)}
        linked = links[p][links[p] >= 0]
        assert len(linked) == len(set(linked.tolist())) and set(linked.tolist()) == attackers
        row, col, diag, anti = links[p].reshape(4, n)
        assert all(q // n == r for q in row[row >= 0]) and all(q % n == c for q in col[col >= 0])
        assert all(q // n - q % n == r - c for q in diag[diag >= 0])
        assert all(q // n + q % n == r + c for q in anti[anti >= 0])
    assert get_task(f"nqueens-{n}", unconditional=True).links() is None


def test_unconditional_form():
    task = get_task("nqueens-8", unconditional=True)
    data = task.build(seed=0)
    assert (data.train.inputs == 0).all() and len(data.train) == 1
    assert sum(len(s.completions) for s in (data.train, data.val, data.test)) == 92
    with pytest.raises(UserError, match="blank"):
        task.parse_input("Q" + "." * 63)


def test_augmentation_preserves_validity_and_givens():
    task = get_task("nqueens-8")
    data = task.build(seed=0)
    x, y = data.train.pairs()
    ax, ay = task.augment(x, y, np.random.default_rng(0))
    assert task.is_valid(ay).all() and task.is_consistent(ax, ay).all()
    assert not np.array_equal(ay, y)


def test_parse_format_round_trip_and_whitespace():
    task = get_task("nqueens-4")
    text = ".Q..\n...Q\nQ...\n..Q."
    tokens = task.parse_answer(text)
    assert task.format_answer(tokens) == text.replace("\n", "")
    assert task.is_valid(tokens[None])[0]
    assert np.array_equal(task.parse_input(" .Q.. ....\n .... ...."), tokens * 0 + np.eye(16, dtype=int)[1])


@pytest.mark.parametrize("text,message", [
    ("." * 63, "needs 64 characters"),
    ("X" + "." * 63, "illegal character 'X' at row 1, column 1"),
    ("QQ" + "." * 62, "contradict"),
    ("Q" + "." * 8 + "Q" + "." * 54, "contradict"),  # same diagonal
])
def test_bad_puzzles(text, message):
    with pytest.raises(UserError, match=message):
        get_task("nqueens-8").parse_input(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=".Qq \nX0", max_size=80))
def test_parser_only_raises_user_errors(text):
    task = get_task("nqueens-8")
    try:
        tokens = task.parse_input(text)
    except UserError:
        return
    assert tokens.shape == (64,)
    assert task.parse_input(task.format_input(tokens)).tolist() == tokens.tolist()
