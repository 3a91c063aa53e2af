"""Graph 3-colouring: counts, checkers, canonical forms, augmentation, text formats, datasets."""

from itertools import permutations, product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task
from gram_pyro.tasks.coloring import (Coloring, canonical_colours, canonical_table, graph_keys,
                                      node_pairs, proper_colourings)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path))


def stirling2(n, k):
    """Stirling numbers of the 2nd kind by the recurrence S(n,k) = k S(n-1,k) + S(n-1,k-1)."""
    if n == k:
        return 1
    if k == 0 or k > n:
        return 0
    return k * stirling2(n - 1, k) + stirling2(n - 1, k - 1)


def bits_of(n, edges):
    i, j = node_pairs(n)
    pairs = {(min(a, b), max(a, b)) for a, b in edges}
    return np.array([(a, b) in pairs for a, b in zip(i, j)], dtype=np.int64)


def backtrack(n, bits):
    """Reference solver: depth-first, a node takes a colour at most one above those used so far,
    which yields each colouring once, canonical, in lexicographic order."""
    i, j = node_pairs(n)
    earlier = [[int(a) for a, b, e in zip(i, j, bits) if e and b == v] for v in range(n)]
    out, col = [], []

    def go(v, used):
        if v == n:
            out.append(tuple(col))
            return
        for c in range(min(used + 1, 3)):
            if all(col[u] != c for u in earlier[v]):
                col.append(c)
                go(v + 1, max(used, c + 1))
                col.pop()

    go(0, 0)
    return np.array(out, dtype=np.int64).reshape(-1, n)


def random_bits(rng, n, count, p):
    return (rng.random((count, n * (n - 1) // 2)) < p).astype(np.int64)


# -- enumeration -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 9))
def test_canonical_table_is_all_partitions_into_at_most_3_blocks(n):
    table = canonical_table(n)
    assert len(table) == stirling2(n, 1) + stirling2(n, 2) + stirling2(n, 3)
    everything = np.array(list(product(range(3), repeat=n)))  # all 3^n assignments
    assert np.array_equal(table, np.unique(canonical_colours(everything), axis=0))


def test_known_counts():
    triangle = Coloring(3)
    assert triangle.solve_bits(bits_of(3, [(0, 1), (0, 2), (1, 2)])).tolist() == [[0, 1, 2]]
    for n in (4, 6, 8):
        empty = Coloring(n).solve_bits(np.zeros(n * (n - 1) // 2, np.int64))
        assert len(empty) == stirling2(n, 1) + stirling2(n, 2) + stirling2(n, 3)
        path = bits_of(n, [(v, v + 1) for v in range(n - 1)])  # a tree: 3 * 2^(n-1) / 3!
        assert len(Coloring(n).solve_bits(path)) == 2 ** (n - 2)
    c5 = bits_of(5, [(v, (v + 1) % 5) for v in range(5)])  # chromatic poly of C5 at 3: 2^5 - 2
    assert len(Coloring(5).solve_bits(c5)) == 30 // 6
    k4 = bits_of(4, [(a, b) for a in range(4) for b in range(a + 1, 4)])
    assert len(Coloring(4).solve_bits(k4)) == 0


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_enumeration_matches_backtracking(n):
    rng = np.random.default_rng(n)
    bits = random_bits(rng, n, 40, rng.uniform(0.1, 0.7))
    for b, found in zip(bits, proper_colourings(bits, n, chunk=7)):
        assert np.array_equal(found, backtrack(n, b))


def test_enumeration_matches_backtracking_at_n12():
    rng = np.random.default_rng(12)
    for b in random_bits(rng, 12, 3, 0.4):
        assert np.array_equal(Coloring(12).solve_bits(b), backtrack(12, b))


def test_solve_reads_input_tokens_and_caps():
    task = get_task("coloring-6")
    x = task.parse_input(task.format_input(np.r_[bits_of(6, [(0, 1), (2, 3)]) + 1, [0] * 6]))
    full = task.solve(x)
    assert np.array_equal(full, backtrack(6, x[:15] == 2))
    assert np.array_equal(task.solve(x, cap=3), full[:3])


# -- checkers ----------------------------------------------------------------------------------
def test_conflicts_match_a_plain_loop():
    task = get_task("coloring-7")
    rng = np.random.default_rng(0)
    bits = random_bits(rng, 7, 200, 0.5)
    inputs = np.concatenate([bits + 1, np.zeros((200, 7), np.int64)], axis=1)
    answers = rng.integers(0, 3, size=(200, 7))
    i, j = node_pairs(7)
    expected = [sum(1 for e in range(21) if b[e] and a[i[e]] == a[j[e]]) for b, a in zip(bits, answers)]
    assert task.conflicts(inputs, answers).tolist() == expected
    assert np.array_equal(task.is_correct(inputs, answers), np.array(expected) == 0)
    bad = answers.copy()
    bad[:, 0] = 3
    assert not task.is_valid(bad).any() and task.is_valid(answers).all()


def test_canonical_is_invariant_under_colour_permutation():
    rng = np.random.default_rng(1)
    c = rng.integers(0, 3, size=(500, 9))
    canon = canonical_colours(c)
    for perm in permutations(range(3)):
        assert np.array_equal(canonical_colours(np.array(perm)[c]), canon)
    assert np.array_equal(canonical_colours(canon), canon)
    for row, out in zip(c, canon):  # the definition: relabel by order of first appearance
        order = list(dict.fromkeys(row.tolist()))
        assert out.tolist() == [order.index(v) for v in row]
    # one canonical form per partition of the nodes into colour classes
    partitions = {frozenset(frozenset(np.flatnonzero(r == k).tolist()) for k in set(r.tolist()))
                  for r in c}
    assert len(np.unique(canon, axis=0)) == len(partitions)


def test_unconditional_checks_the_colouring_against_its_own_graph():
    task = get_task("coloring-4", unconditional=True)
    assert (task.answer_len, task.answer_offset, task.seq_len) == (10, 0, 10)
    ok = task.parse_answer("100000 0100")
    clash = task.parse_answer("100000 0010")  # edge 0-1 with both ends colour 0
    bad_bit = ok.copy()
    bad_bit[2] = 2
    assert task.is_valid(np.stack([ok, clash, bad_bit])).tolist() == [True, False, False]
    assert task.is_correct(np.zeros((1, 10)), ok[None]).tolist() == [True]
    assert task.canonical(task.parse_answer("100000 2122")).tolist() == ok.tolist()


def test_all_objects_for_n4_matches_brute_force():
    task = get_task("coloring-4", unconditional=True)
    objects = task.all_objects()
    expected = set()
    i, j = node_pairs(4)
    for bits in product((0, 1), repeat=6):
        for col in product(range(3), repeat=4):
            if not any(b and col[a] == col[c] for b, a, c in zip(bits, i, j)):
                expected.add(bits + tuple(canonical_colours(np.array(col)).tolist()))
    assert {tuple(o) for o in objects.tolist()} == expected and len(objects) == len(expected)
    assert get_task("coloring-8", unconditional=True).all_objects() is None


# -- graph keys and augmentation ------------------------------------------------------------------
def permute_graph(bits, n, perm):
    i, j = node_pairs(n)
    edges = [(perm.tolist().index(a), perm.tolist().index(b)) for a, b, e in zip(i, j, bits) if e]
    return bits_of(n, edges)


def test_graph_keys_are_isomorphism_invariant():
    rng = np.random.default_rng(2)
    bits = random_bits(rng, 9, 50, 0.4)
    relabelled = np.stack([permute_graph(b, 9, rng.permutation(9)) for b in bits])
    assert np.array_equal(graph_keys(bits, 9), graph_keys(relabelled, 9))
    assert len(np.unique(graph_keys(bits, 9), axis=0)) > 40  # and they do tell graphs apart


@pytest.mark.parametrize("unconditional", [False, True])
def test_augmentation_preserves_validity_and_conflicts(unconditional):
    task = get_task("coloring-8", unconditional=unconditional)
    inputs, targets = task.build(seed=0).train.pairs()
    inputs, targets = inputs[:300], targets[:300]
    rng = np.random.default_rng(3)
    new_inputs, new_targets = task.augment(inputs, targets, rng)
    assert task.is_correct(new_inputs, new_targets).all()
    assert not np.array_equal(new_targets, targets)
    bits = (targets[:, :28] if unconditional else inputs[:, :28] == 2)
    new_bits = (new_targets[:, :28] if unconditional else new_inputs[:, :28] == 2)
    assert np.array_equal(graph_keys(bits, 8), graph_keys(new_bits, 8))
    colours = new_targets[:, -8:]
    assert np.array_equal(canonical_colours(colours), colours)  # targets stay canonical
    if not unconditional:
        assert (new_inputs[:, 28:] == 0).all() and set(np.unique(new_inputs[:, :28])) <= {1, 2}
        # the same relabelling maps a wrong answer to one with equally many conflicts
        wrong = rng.integers(0, 3, size=targets.shape)
        state = np.random.default_rng(4)
        x2, w2 = task.augment(inputs, wrong, state)
        assert np.array_equal(task.conflicts(x2, w2), task.conflicts(inputs, wrong))


# -- text ----------------------------------------------------------------------------------------
def test_parse_format_round_trip():
    task = get_task("coloring-6")
    test = task.build(seed=0).test
    for k in range(50):
        x = test.inputs[k]
        assert np.array_equal(task.parse_input(task.format_input(x)), x)
        for a in test.completions_of(k):
            assert np.array_equal(task.parse_answer(task.format_answer(a)), a)
    assert task.parse_answer("R G B r g b").tolist() == [0, 1, 2, 0, 1, 2]
    assert task.parse_input("1 0000 \n" + "0" * 10)[:15].tolist() == [2] + [1] * 14
    u = get_task("coloring-6", unconditional=True)
    obj = u.build(seed=0).train.completions[:20]
    for a in obj:
        assert np.array_equal(u.parse_answer(u.format_answer(a)), a)
    assert u.parse_input("  ").tolist() == [0] * 21
    assert "node 5" in task.render(obj[0][15:], np.r_[obj[0][:15] + 1, [0] * 6]) and "node 5" in u.render(obj[0])


@pytest.mark.parametrize("text, match", [
    ("1" * 5, "needs 6 characters"),
    ("10101x", "illegal character 'x' at position 6"),
    ("1" * 6, "contradict"),
])
def test_parse_input_errors(text, match):
    with pytest.raises(UserError, match=match):
        get_task("coloring-4").parse_input(text)


def test_odd_wheel_is_rejected():
    # W5: a 5-cycle plus a hub; no 4-clique, yet not 3-colourable
    wheel = [(v, (v + 1) % 5) for v in range(5)] + [(v, 5) for v in range(5)]
    task = get_task("coloring-6")
    with pytest.raises(UserError, match="no proper 3-colouring"):
        task.parse_input("".join(map(str, bits_of(6, wheel))))
    with pytest.raises(UserError, match="empty puzzle"):
        get_task("coloring-6", unconditional=True).parse_input("0")
    with pytest.raises(UserError, match="illegal colour '3' for node 2"):
        task.parse_answer("013000")


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(alphabet="012RGBx \n", max_size=30), st.text(max_size=30)))
def test_parsers_raise_only_user_errors(text):
    for task in (get_task("coloring-4"), get_task("coloring-5", unconditional=True)):
        for parse in (task.parse_input, task.parse_answer):
            try:
                parse(text)
            except UserError as e:
                assert "\n" not in str(e)


# -- data ----------------------------------------------------------------------------------------
def test_dataset_is_deterministic_and_complete():
    task = get_task("coloring-8")
    a = task.build(seed=5, cache=False, graphs=600)
    b = task.build(seed=5, cache=False, graphs=600)
    c = task.build(seed=6, cache=False, graphs=600)
    for name in ("train", "val", "test"):
        for field in ("inputs", "completions", "offsets"):
            assert np.array_equal(getattr(a.split(name), field), getattr(b.split(name), field))
    assert not np.array_equal(a.train.inputs, c.train.inputs)
    assert sum(len(a.split(s)) for s in ("train", "val", "test")) == 600
    for k in range(len(a.test)):  # every input carries exactly all its canonical colourings
        assert np.array_equal(a.test.completions_of(k), task.solve(a.test.inputs[k]))
    assert task.is_correct(*a.train.pairs()).all()
    assert np.array_equal(task.canonical(a.train.completions), a.train.completions)


def test_no_test_graph_or_relabelling_of_one_is_in_train():
    task = get_task("coloring-6")
    data = task.build(seed=0)
    train = np.concatenate([data.train.inputs, data.val.inputs])[:, :15] == 2
    test = data.test.inputs[:, :15] == 2
    assert len(test) > 300
    all_inputs = np.concatenate([train, test])
    assert len(np.unique(all_inputs, axis=0)) == len(all_inputs)  # no exact duplicates
    # brute force over all 720 relabellings: no test graph is isomorphic to a training graph
    i, j = node_pairs(6)
    perms = np.array(list(permutations(range(6))))
    adj = np.zeros((len(test), 6, 6), bool)
    adj[:, i, j] = adj[:, j, i] = test
    images = adj[:, perms[:, i], perms[:, j]]  # [T, 720, 15]
    train_set = {r.tobytes() for r in train.astype(bool)}
    assert not any(img.tobytes() in train_set for img in images.reshape(-1, 15))
    assert len(data.val) > 0


def test_tiny_n_collects_every_colourable_graph():
    data = get_task("coloring-4").build(seed=0)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 63  # all 64 but K4
    assert all(len(data.split(s)) > 0 for s in ("train", "val", "test"))


def test_unconditional_dataset():
    task = get_task("coloring-6", unconditional=True)
    data = task.build(seed=0)
    assert len(data.train) == 1 and (data.train.inputs == 0).all()
    objects = data.train.completions
    assert objects.shape[1] == 21 and task.is_valid(objects).all()
    assert len(np.unique(objects, axis=0)) == len(objects)
    train_graphs = {o[:15].tobytes() for o in objects}
    assert not any(o[:15].tobytes() in train_graphs for o in data.test.completions)
    with pytest.raises(UserError, match="no dataset option"):
        task.build(seed=0, nodes=3)
