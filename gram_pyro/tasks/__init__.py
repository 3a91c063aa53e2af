"""Puzzle tasks and their registry.

``get_task("nqueens-8")`` returns a :class:`~gram_pyro.tasks.base.Task`. A new task family is one
module defining a Task subclass plus one line in ``_FAMILIES`` below.
"""

from __future__ import annotations

from gram_pyro.errors import UserError
from gram_pyro.tasks.base import Dataset, Split, Task, cache_dir

# family -> (module, class name, allowed sizes)
_FAMILIES = {
    "nqueens": ("gram_pyro.tasks.nqueens", "NQueens", range(4, 13)),
    "sudoku": ("gram_pyro.tasks.sudoku", "Sudoku", (4, 9)),
    "coloring": ("gram_pyro.tasks.coloring", "Coloring", range(4, 13)),
}


def task_names() -> list[str]:
    return [f"{family}-{n}" for family, (_, _, sizes) in _FAMILIES.items() for n in sizes]


def get_task(name: str, unconditional: bool = False) -> Task:
    """The task called ``name`` (``family-N``); its blank-input p(x) form if ``unconditional``."""
    import importlib

    family, _, size = str(name).rpartition("-")
    if family not in _FAMILIES or not size.isdigit():
        raise UserError(f"unknown task {name!r}; `gram tasks` lists them (e.g. nqueens-8)")
    module, cls, sizes = _FAMILIES[family]
    n = int(size)
    if n not in sizes:
        allowed = ", ".join(str(s) for s in sizes) if not isinstance(sizes, range) else \
            f"{sizes.start}..{sizes.stop - 1}"
        raise UserError(f"task {family} has no size {n}; allowed sizes: {allowed}")
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(n, unconditional=unconditional)


__all__ = ["Dataset", "Split", "Task", "cache_dir", "get_task", "task_names"]
