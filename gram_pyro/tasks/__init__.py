"""Puzzle tasks and their registry.

``get_task("nqueens-8")`` returns a :class:`~gram_pyro.tasks.base.Task`. A new task family is one
module defining a Task subclass plus one line in ``_FAMILIES`` below.
"""

from __future__ import annotations

import re

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, cache_dir

# family -> (module, class name, allowed sizes)
_FAMILIES = {
    "nqueens": ("gram_pyro.tasks.nqueens", "NQueens", range(4, 13)),
    "sudoku": ("gram_pyro.tasks.sudoku", "Sudoku", (4, 9)),
    "coloring": ("gram_pyro.tasks.coloring", "Coloring", range(4, 13)),
    "digits": ("gram_pyro.tasks.digits", "Digits", (8, 14, 28)),  # images; 8 is built in
    # ARC-AGI: arc-1 and arc-2 are the 30x30 encoding; arc-1-S the tasks that fit S x S
    "arc": ("gram_pyro.tasks.arc", "Arc", (1, 2)),
    "arc-1": ("gram_pyro.tasks.arc", "arc1", (8, 10, 12, 15, 20)),
    "arc-2": ("gram_pyro.tasks.arc", "arc2", (8, 10, 12, 15, 20)),
}


def task_names() -> list[str]:
    return [f"{family}-{n}" for family, (_, _, sizes) in _FAMILIES.items() for n in sizes]


def parse_task_name(name: str) -> tuple[str, int]:
    """``(family, N)`` of a task name ``family-N``; a UserError for anything else. Only ASCII
    digits count (``str.isdigit`` also accepts characters such as "²" that ``int`` rejects)."""
    family, _, size = str(name).rpartition("-")
    if family not in _FAMILIES or not re.fullmatch(r"[0-9]{1,3}", size):
        raise UserError(f"unknown task {name!r}; `gram tasks` lists them (e.g. nqueens-8)")
    sizes = _FAMILIES[family][2]
    n = int(size)
    if n not in sizes:
        allowed = ", ".join(str(s) for s in sizes) if not isinstance(sizes, range) else \
            f"{sizes.start}..{sizes.stop - 1}"
        raise UserError(f"task {family} has no size {n}; allowed sizes: {allowed}")
    return family, n


def get_task(name: str, unconditional: bool = False) -> Task:
    """The task called ``name`` (``family-N``); its blank-input p(x) form if ``unconditional``."""
    import importlib

    family, n = parse_task_name(name)
    module, cls, _ = _FAMILIES[family]
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(n, unconditional=unconditional)


__all__ = ["Dataset", "Split", "Task", "cache_dir", "get_task", "parse_task_name", "task_names"]
