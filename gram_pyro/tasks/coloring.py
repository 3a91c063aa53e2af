"""Graph 3-colouring (docs/design.md §8): colour the n nodes of a graph with 3 colours so that no edge
joins two nodes of the same colour.

Layout (``E = n(n-1)/2`` node pairs ``i < j`` in row-major order, as ``np.triu_indices(n, 1)``):
    conditional: ``seq_len = E + n``; input tokens are the E adjacency tokens (1 = no edge,
        2 = edge) then n blank (0) node slots; the answer is the n colours (0, 1, 2), read at
        ``answer_offset = E``.
    unconditional: the input is all blank and the answer is the whole sequence, ``E`` edge bits
        (0/1) then the n colours, so the model learns p(graph, colouring).
Text: a puzzle is the E adjacency bits as ``0``/``1``; an answer is n colours ``0``/``1``/``2``
(``R``/``G``/``B`` accepted); the unconditional answer is the E bits then the n colours.
Whitespace is ignored.

Colourings count *up to colour permutation*: :func:`canonical_colours` relabels colours by order
of first appearance, so every colouring has one canonical form (a restricted growth string) and a
graph's canonical colourings are exactly its distinct colour partitions.

Data: Erdos-Renyi graphs G(n, p), kept only when 3-colourable and deduplicated; every graph
carries all its canonical colourings. The default ``p = min(0.5, 4.5 / (n - 1))`` (0.5 up to
n = 10, then mean degree 4.5) was measured to give a median of 3-4 colourings per kept graph, about
70% of graphs with 2..20 and under 10% with more than 20, while 18-85% of draws are 3-colourable. The
split is keyed by a Weisfeiler-Lehman hash, which isomorphic graphs always share, so no test graph
has a node-relabelled copy in training, and node relabelling is then a leak-free augmentation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, clean_puzzle_text, split_indices

COLOURS = 3
_LETTERS = {"R": 0, "G": 1, "B": 2, "r": 0, "g": 1, "b": 2}


def canonical_colours(colours) -> np.ndarray:
    """Relabel ``[..., n]`` colours by order of first appearance: the first colour used becomes 0,
    the next new one 1, then 2. Two colourings are the same up to colour permutation iff their
    canonical forms are equal. Tokens outside 0..2 are left as they are."""
    c = np.asarray(colours)
    hit = c[..., :, None] == np.arange(COLOURS)  # [..., n, 3]
    first = np.where(hit.any(-2), hit.argmax(-2), c.shape[-1])  # [..., 3]; absent -> n
    # new label of colour k = how many colours appear before it (absent ones tie, and never occur)
    rank = (first[..., None, :] < first[..., :, None]).sum(-1)
    new = np.take_along_axis(rank, np.clip(c, 0, COLOURS - 1), axis=-1)
    return np.where((c >= 0) & (c < COLOURS), new, c)


@lru_cache(maxsize=None)
def node_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The E node pairs ``(i, j)``, ``i < j``, in token order (row-major upper triangle)."""
    return np.triu_indices(n, 1)


@lru_cache(maxsize=None)
def canonical_table(n: int) -> np.ndarray:
    """Every canonical 3-colouring of n nodes, ``[R, n]`` in lexicographic order, where
    ``R = S(n,1) + S(n,2) + S(n,3)`` (Stirling numbers of the 2nd kind): node i takes a colour at
    most one above the largest used by nodes 0..i-1."""
    rows = np.zeros((1, 1), np.int64)
    for _ in range(n - 1):
        top = np.minimum(rows.max(1) + 1, COLOURS - 1)
        rows = np.concatenate([np.column_stack([rows[top >= k], np.full((top >= k).sum(), k)])
                               for k in range(COLOURS)])
    return rows[np.lexsort(rows.T[::-1])]


@lru_cache(maxsize=None)
def _same_colour(n: int) -> np.ndarray:
    """``[R, E]`` float32: 1 where canonical colouring r gives both ends of pair e one colour."""
    i, j = node_pairs(n)
    table = canonical_table(n)
    return (table[:, i] == table[:, j]).astype(np.float32)


def proper_colourings(bits: np.ndarray, n: int, chunk: int = 256) -> list[np.ndarray]:
    """All canonical proper 3-colourings of each graph in ``bits [G, E]`` (0/1 edge bits).

    Exhaustive: the conflict count of every canonical colouring on every graph is one matrix
    product ``same_colour [R, E] @ bits.T``; the zeros are the proper colourings. Chunked over
    graphs to bound memory (R = 88574 at n = 12)."""
    bits = np.asarray(bits, dtype=np.float32).reshape(-1, n * (n - 1) // 2)
    same, table = _same_colour(n), canonical_table(n)
    out = []
    for start in range(0, len(bits), chunk):
        proper = (same @ bits[start:start + chunk].T) == 0  # [R, chunk]
        out.extend(table[proper[:, g]] for g in range(proper.shape[1]))
    return out


def adjacency(bits: np.ndarray, n: int) -> np.ndarray:
    """``[B, E]`` edge bits -> ``[B, n, n]`` symmetric 0/1 adjacency matrices."""
    bits = np.asarray(bits)
    i, j = node_pairs(n)
    a = np.zeros((len(bits), n, n), dtype=bits.dtype)
    a[:, i, j] = bits
    a[:, j, i] = bits
    return a


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a cheap injective scramble of uint64 (wraps on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def graph_keys(bits: np.ndarray, n: int) -> np.ndarray:
    """``[G, n]`` uint64 Weisfeiler-Lehman key per graph, the same for isomorphic graphs.

    n rounds of ``h_i <- mix(h_i + mix(sum_{j ~ i} mix(h_j)))`` from ``h = 1``; the key is the
    sorted node hashes. Relabelling nodes permutes h, so the key is an isomorphism invariant.
    Some non-isomorphic graphs share a key (e.g. regular graphs of one degree); they then only
    share a split."""
    a = adjacency(bits, n).astype(np.uint64)
    h = np.ones((len(a), n), np.uint64)
    for _ in range(n):
        h = _mix(h + _mix(np.einsum("gij,gj->gi", a, _mix(h))))
    return np.sort(h, axis=1)


def _fractions(keys: np.ndarray, held_out: float) -> tuple[float, float]:
    """Split fractions that hold out at least one key group when ``held_out > 0`` (tiny n has
    only a handful of isomorphism classes, and an empty validation split breaks averages)."""
    groups = len(np.unique(keys, axis=0))
    if held_out > 0 and groups > 1:
        held_out = max(held_out, 1.0 / groups)
    return 1 - held_out, held_out


class Coloring(Task):
    def __init__(self, n: int, unconditional: bool = False):
        self.n = n
        self.edges = n * (n - 1) // 2
        self.name = f"coloring-{n}"
        self.seq_len = self.edges + n
        self.input_vocab = 3
        self.answer_vocab = 3
        self.unconditional = unconditional
        self.answer_len = self.seq_len if unconditional else n
        self.answer_offset = 0 if unconditional else self.edges

    def links(self) -> np.ndarray | None:
        """Node slot i reads the edge token of every pair (i, j), in slot j (its adjacency row);
        edge tokens read nothing."""
        if self.unconditional:
            return None
        index = np.full((self.n, self.n), -1, np.int64)
        i, j = node_pairs(self.n)
        index[i, j] = index[j, i] = np.arange(self.edges)
        return np.concatenate([np.full((self.edges, self.n), -1, np.int64), index])

    # -- splitting a batch into graph and colours -----------------------------------------------
    def _graph_and_colours(self, inputs, answers) -> tuple[np.ndarray, np.ndarray]:
        """``[B, E]`` edge bits and ``[B, n]`` colours of a batch, in either form."""
        a = np.asarray(answers).reshape(-1, self.answer_len)
        if self.unconditional:
            return (a[:, :self.edges] == 1), a[:, self.edges:]
        x = np.asarray(inputs).reshape(-1, self.seq_len)
        return (x[:, :self.edges] == 2), a

    # -- text -----------------------------------------------------------------------------------
    def _chars(self, text: str, length: int, what: str) -> str:
        s = clean_puzzle_text(text)
        if len(s) != length:
            raise UserError(f"{self.name} {what} needs {length} characters (whitespace ignored), "
                            f"got {len(s)}")
        return s

    def _bits(self, s: str, what: str) -> np.ndarray:
        """E characters ``0``/``1`` -> edge bits; a bad one is named by its node pair."""
        i, j = node_pairs(self.n)
        for e, ch in enumerate(s):
            if ch not in "01":
                raise UserError(f"illegal character {ch!r} at position {e + 1} (pair {i[e]}-{j[e]}) "
                                f"of the {self.name} {what}; edge bits are 0 or 1")
        return np.array([ch == "1" for ch in s], dtype=np.int64)

    def _colours(self, s: str, what: str) -> np.ndarray:
        """n characters ``0``/``1``/``2`` (or ``R``/``G``/``B``) -> colours."""
        for v, ch in enumerate(s):
            if ch not in "012" and ch not in _LETTERS:
                raise UserError(f"illegal colour {ch!r} for node {v} in the {self.name} {what}; "
                                "use 0 1 2 (or R G B)")
        return np.array([_LETTERS[ch] if ch in _LETTERS else int(ch) for ch in s], np.int64)

    def parse_input(self, text: str) -> np.ndarray:
        if self.unconditional:
            if clean_puzzle_text(text):
                raise UserError(f"the unconditional {self.name} task takes an empty puzzle")
            return np.zeros(self.seq_len, np.int64)
        what = "puzzle (edge bits of pairs 0-1, 0-2, ..., row-major)"
        bits = self._bits(self._chars(text, self.edges, what), "puzzle")
        if not len(self.solve_bits(bits, cap=1)):
            raise UserError(f"the givens contradict each other: this {self.n}-node graph with "
                            f"{bits.sum()} edges has no proper 3-colouring")
        return np.concatenate([bits + 1, np.zeros(self.n, np.int64)])

    def format_input(self, tokens) -> str:
        t = np.asarray(tokens).reshape(-1)
        return "".join("01"[int(v == 2)] for v in t[:self.edges])

    def parse_answer(self, text: str) -> np.ndarray:
        if self.unconditional:
            s = self._chars(text, self.seq_len, "answer (edge bits then colours)")
            return np.concatenate([self._bits(s[:self.edges], "answer"),
                                   self._colours(s[self.edges:], "answer")])
        return self._colours(self._chars(text, self.n, "answer"), "answer")

    def format_answer(self, tokens) -> str:
        t = np.asarray(tokens).reshape(-1)
        if self.unconditional:
            return "".join(str(int(v)) for v in t[:self.edges]) + " " + \
                "".join(str(int(v)) for v in t[self.edges:])
        return "".join(str(int(v)) for v in t)

    def render(self, answer, inputs=None) -> str:
        """The edge list, then one line per node with its colour; conflicting edges are marked."""
        x = None if inputs is None else np.asarray(inputs).reshape(1, -1)
        if x is None and not self.unconditional:
            x = np.zeros((1, self.seq_len), np.int64)  # no graph known: list no edges
        bits, colours = self._graph_and_colours(x, np.asarray(answer).reshape(1, -1))
        bits, colours = bits[0], colours[0]
        i, j = node_pairs(self.n)
        names = dict(enumerate("RGB"))
        lines = []
        for e in np.flatnonzero(bits):
            clash = "  <- same colour" if colours[i[e]] == colours[j[e]] else ""
            lines.append(f"  {i[e]} - {j[e]}{clash}")
        out = [f"{self.name}: {len(lines)} edges"] + lines
        out += [f"node {v}: {names.get(int(c), '?')} ({int(c)})" for v, c in enumerate(colours)]
        return "\n".join(out)

    # -- checkers ---------------------------------------------------------------------------------
    def conflicts(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """``[B]`` number of edges whose two ends have the same colour (lower is better)."""
        bits, colours = self._graph_and_colours(inputs, answers)
        i, j = node_pairs(self.n)
        return (bits & (colours[:, i] == colours[:, j])).sum(1)

    def is_valid(self, answers: np.ndarray) -> np.ndarray:
        """Every token in range; unconditionally also a proper colouring of its own graph."""
        a = np.asarray(answers).reshape(-1, self.answer_len)
        colours_ok = ((a[:, -self.n:] >= 0) & (a[:, -self.n:] < COLOURS)).all(1)
        if not self.unconditional:
            return colours_ok
        bits_ok = ((a[:, :self.edges] == 0) | (a[:, :self.edges] == 1)).all(1)
        return colours_ok & bits_ok & (self.conflicts(None, a) == 0)

    def is_consistent(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """No edge of the input graph joins two nodes of one colour (always true unconditionally,
        where the input is blank and :meth:`is_valid` checks the colouring)."""
        if self.unconditional:
            return np.ones(len(np.asarray(answers).reshape(-1, self.answer_len)), bool)
        return self.conflicts(inputs, answers) == 0

    def canonical(self, answers: np.ndarray) -> np.ndarray:
        """Relabel the colour part by order of first appearance (:func:`canonical_colours`)."""
        a = np.array(answers, dtype=np.int64, copy=True).reshape(-1, self.answer_len)
        a[:, -self.n:] = canonical_colours(a[:, -self.n:])
        return a.reshape(np.shape(answers))

    # -- enumeration ------------------------------------------------------------------------------
    def solve_bits(self, bits, cap: int | None = None) -> np.ndarray:
        """All canonical proper colourings ``[C, n]`` of one graph given as E edge bits."""
        found = proper_colourings(np.asarray(bits).reshape(1, -1), self.n)[0]
        return found if cap is None else found[:cap]

    def solve(self, inputs: np.ndarray, cap: int | None = None) -> np.ndarray:
        """Conditionally: every canonical proper colouring of the input graph, lexicographic.
        Unconditionally: the first ``cap`` objects of :meth:`all_objects` (tiny n only)."""
        if self.unconditional:
            objects = self.all_objects()
            if objects is None:
                raise UserError(f"{self.name} is too large to enumerate unconditionally")
            return objects if cap is None else objects[:cap]
        x = np.asarray(inputs).reshape(-1)
        return self.solve_bits((x[:self.edges] == 2).astype(np.int64), cap)

    def all_objects(self) -> np.ndarray | None:
        """Unconditionally, for n <= 5: every (graph, canonical proper colouring) pair."""
        if not self.unconditional or self.n > 5:
            return None
        graphs = (np.arange(2 ** self.edges)[:, None] >> np.arange(self.edges)[::-1]) & 1
        sols = proper_colourings(graphs, self.n)
        return np.concatenate([np.column_stack([np.repeat(g[None], len(s), 0), s])
                               for g, s in zip(graphs, sols)])

    # -- data -------------------------------------------------------------------------------------
    def default_sizes(self) -> dict:
        return {"graphs": 4000, "p": round(min(0.5, 4.5 / (self.n - 1)), 4), "max_colourings": 0,
                "test_fraction": 0.15, "val_fraction": 0.05}

    def augment(self, inputs, targets, rng):
        """Relabel nodes (adjacency and colours alike), independently per example, and put the
        colours back in canonical form (:func:`canonical_colours`). Relabelling the colours as
        well, as this did before, makes every node's target colour uniform over the three: the
        deterministic baseline then cannot learn anything and GRAM must spend its latent on
        choosing one of 6 colour permutations (coloring-8, 3 minutes: 3.4 conflict edges per
        sample, what random colours give; docs/RESULTS.md, recipe_coloring-8)."""
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        b, n = len(targets), self.n
        bits, colours = self._graph_and_colours(inputs, targets)
        perm = np.argsort(rng.random((b, n)), axis=1)  # new node v is old node perm[v]
        a = adjacency(bits.astype(np.int64), n)
        rows = np.arange(b)[:, None, None]
        i, j = node_pairs(n)
        new_bits = a[rows, perm[:, :, None], perm[:, None, :]][:, i, j]
        new_colours = canonical_colours(np.take_along_axis(colours, perm, 1))
        if self.unconditional:
            return inputs, np.concatenate([new_bits, new_colours], axis=1)
        new_inputs = inputs.copy()
        new_inputs[:, :self.edges] = new_bits + 1
        return new_inputs, new_colours

    def sample_graphs(self, rng, count: int, p: float, max_colourings: int = 0):
        """Up to ``count`` distinct 3-colourable G(n, p) graphs ``[G, E]`` with their canonical
        colourings (graphs with more than ``max_colourings`` are dropped when it is > 0).
        Sampling stops early when fresh batches stop yielding new graphs (small n)."""
        seen, graphs, sols = set(), [], []
        batch, stale = max(256, count // 4), 0
        with tqdm(total=count, desc=f"{self.name} graphs", disable=not getattr(self, "_progress", False)) as bar:
            while len(graphs) < count and stale < 5:
                bits = (rng.random((batch, self.edges)) < p).astype(np.int64)
                before = len(graphs)
                for g, s in zip(bits, proper_colourings(bits, self.n)):
                    key = g.tobytes()
                    if len(s) and (not max_colourings or len(s) <= max_colourings) \
                            and key not in seen and len(graphs) < count:
                        seen.add(key)
                        graphs.append(g)
                        sols.append(s)
                bar.update(len(graphs) - before)
                stale = stale + 1 if len(graphs) == before else 0
        return np.array(graphs, np.int64).reshape(-1, self.edges), sols

    def _build(self, seed: int, graphs, p, max_colourings, test_fraction, val_fraction) -> Dataset:
        if not 0 < p < 1:
            raise UserError(f"edge probability p must lie in (0, 1), got {p} (p = 1: complete "
                            "graphs, which 3 colours cannot colour)")
        rng = np.random.default_rng(seed)
        bits, sols = self.sample_graphs(rng, graphs, p, max_colourings)
        keys = graph_keys(bits, self.n)
        test_id = split_indices(keys, seed, _fractions(keys, test_fraction))
        train_pool = np.flatnonzero(test_id == 0)
        val_id = split_indices(keys[train_pool], seed + 1, _fractions(keys[train_pool], val_fraction))
        parts = {"train": train_pool[val_id == 0], "val": train_pool[val_id == 1],
                 "test": np.flatnonzero(test_id == 1)}
        counts = np.array([len(s) for s in sols])
        meta = {"graphs": int(len(bits)), "p": p, "split_by": "Weisfeiler-Lehman graph hash",
                "colourings_mean": float(counts.mean()) if len(counts) else 0.0,
                "colourings_max": int(counts.max()) if len(counts) else 0}
        if self.unconditional:
            meta["unconditional"] = True
            blank = np.zeros((1, self.seq_len), np.int64)

            def part(idx):
                pairs = [np.column_stack([np.repeat(bits[k][None], len(sols[k]), 0), sols[k]])
                         for k in idx]
                flat = np.concatenate(pairs) if pairs else np.zeros((0, self.seq_len), np.int64)
                return Split.from_groups(blank, [flat], self.seq_len)
        else:
            inputs = np.concatenate([bits + 1, np.zeros((len(bits), self.n), np.int64)], axis=1)

            def part(idx):
                return Split.from_groups(inputs[idx], [sols[k] for k in idx], self.n)

        return Dataset(meta=meta, **{name: part(idx) for name, idx in parts.items()})
