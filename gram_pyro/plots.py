"""Figures shared by the CLI and the notebooks. Each function draws on a given or new axes and
returns the figure; :func:`save` writes it. matplotlib only, headless-safe (Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    try:
        matplotlib.use("Agg")
    except Exception:  # an interactive session chose its backend already
        pass
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402


def _integer_steps(ax):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _finish(fig, ax, xlabel, ylabel, ylim, title):
    """The labels, limits, grid and legend every line plot here shares; returns the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _axes(ax, size=(5, 3.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    return ax.figure, ax


def save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def coverage_curve(curves: dict, ax=None, title="Coverage against samples"):
    """``curves``: label -> {"n": [...], "micro": [...], "macro": [...]}."""
    fig, ax = _axes(ax)
    for label, c in curves.items():
        line, = ax.plot(c["n"], 100 * np.asarray(c["micro"]), marker="o", label=f"{label} (micro)")
        ax.plot(c["n"], 100 * np.asarray(c["macro"]), marker="s", ls="--", color=line.get_color(),
                alpha=0.7, label=f"{label} (macro)")
    ax.set_xscale("log", base=2)
    ns = sorted({n for c in curves.values() for n in c["n"]})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    return _finish(fig, ax, "samples per input N", "coverage (%)", (0, 102), title)


def accuracy_by_step(series: dict, ax=None, title="Accuracy against supervision steps"):
    """``series``: label -> accuracy (fraction) after each supervision step."""
    fig, ax = _axes(ax)
    for label, acc in series.items():
        ax.plot(np.arange(1, len(acc) + 1), 100 * np.asarray(acc), marker="o", label=label)
    _integer_steps(ax)
    return _finish(fig, ax, "supervision step", "accuracy (%)", (0, 102), title)


def lprm_by_step(step_values: np.ndarray, final_correct: np.ndarray, ax=None,
                 title="LPRM value along trajectories"):
    """``step_values`` ``[S, T]`` LPRM value of T trajectories after each step, split by whether
    the trajectory's final answer is correct (mean and interquartile band)."""
    fig, ax = _axes(ax)
    steps = np.arange(1, step_values.shape[0] + 1)
    for ok, label, color in ((True, "final answer correct", "tab:green"),
                             (False, "final answer wrong", "tab:red")):
        v = step_values[:, final_correct == ok]
        if v.shape[1] == 0:
            continue
        ax.plot(steps, v.mean(1), color=color, marker="o", label=f"{label} ({v.shape[1]})")
        ax.fill_between(steps, np.percentile(v, 25, axis=1), np.percentile(v, 75, axis=1),
                        color=color, alpha=0.2)
    _integer_steps(ax)
    return _finish(fig, ax, "supervision step", "LPRM value v(z)", (-0.02, 1.02), title)


def boards(task, answers, inputs=None, ok=None, cols: int = 5, title=None):
    """A grid of decoded boards (N-Queens / Sudoku drawn, image tasks as images, others as
    text); boards whose
    ``ok`` is False get a red frame, and for Sudoku the cells that break a rule are shaded."""
    answers = np.asarray(answers)
    rows = int(np.ceil(len(answers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False,
                             constrained_layout=True)
    side = int(round(np.sqrt(task.answer_len)))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(answers):
            ax.axis("off")
            continue
        grid = answers[i].reshape(side, side) if side * side == task.answer_len else None
        if getattr(task, "image_shape", None):  # binary images: ink black
            ax.imshow(answers[i].reshape(task.image_shape), cmap="Greys", vmin=0, vmax=1,
                      interpolation="nearest")
        elif grid is None:
            ax.text(0.5, 0.5, task.format_answer(answers[i]), ha="center", va="center", fontsize=6)
        elif task.name.startswith("nqueens"):
            ax.imshow((np.indices((side, side)).sum(0) % 2) * 0.15, cmap="Greys", vmin=0, vmax=1)
            qr, qc = np.nonzero(grid == 1)
            ax.scatter(qc, qr, marker="*", s=900 / side, color="black")
            if inputs is not None:
                gr, gc = np.nonzero(np.asarray(inputs[i]).reshape(side, side) == 1)
                ax.scatter(gc, gr, marker="o", s=1400 / side, facecolors="none", edgecolors="tab:blue")
        else:
            bad = _sudoku_bad_cells(grid + 1)
            ax.imshow(np.ma.masked_equal(bad, 0), cmap="Reds", vmin=0, vmax=2)  # clean cells white
            ax.set_xlim(-0.5, side - 0.5)
            ax.set_ylim(side - 0.5, -0.5)
            for r in range(side):
                for c in range(side):
                    ax.text(c, r, str(grid[r, c] + 1), ha="center", va="center", fontsize=60 / side)
            box = int(np.sqrt(side))
            for k in range(0, side + 1, box):
                ax.axhline(k - 0.5, color="black", lw=1)
                ax.axvline(k - 0.5, color="black", lw=1)
        if ok is not None and not ok[i]:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
    if title:
        fig.suptitle(title)
    return fig


def _sudoku_bad_cells(grid: np.ndarray) -> np.ndarray:
    """1 where a digit repeats in its row, column or box."""
    n = grid.shape[0]
    b = int(np.sqrt(n))
    bad = np.zeros_like(grid, dtype=float)
    for r in range(n):
        for c in range(n):
            d = grid[r, c]
            br, bc = r - r % b, c - c % b
            box = grid[br:br + b, bc:bc + b]
            if (grid[r] == d).sum() > 1 or (grid[:, c] == d).sum() > 1 or (box == d).sum() > 1:
                bad[r, c] = 1.0
    return bad


def arc_grids(panels, cols: int = 6, title=None):
    """ARC grids in the standard ARC palette: ``panels`` is a list of ``(label, grid or None)``
    (None: the answer holds no well-formed grid)."""
    from matplotlib.colors import ListedColormap

    from gram_pyro.tasks.arc import COLOURS, PALETTE

    cmap = ListedColormap(PALETTE)
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False,
                             constrained_layout=True)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(panels):
            ax.axis("off")
            continue
        label, grid = panels[i]
        ax.set_title(label, fontsize=8)
        if grid is None:
            ax.text(0.5, 0.5, "no grid", ha="center", va="center", fontsize=8)
            continue
        grid = np.asarray(grid)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=COLOURS - 1, interpolation="nearest")
        h, w = grid.shape
        for k in range(h + 1):
            ax.axhline(k - 0.5, color="#555555", lw=0.4)
        for k in range(w + 1):
            ax.axvline(k - 0.5, color="#555555", lw=0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def arc_sample(task, row, answers, ranked, truth=None, cols: int = 6, title=None):
    """One ARC test input: the input grid, the samples (decoded, on the puzzle itself), the two
    grids the vote ranks first (with their votes) and, when known, the task's output."""
    from gram_pyro.tasks.arc import decode_grid

    panels = [("input", decode_grid(np.asarray(row)[1:], task.side))]
    panels += [(f"sample {i + 1}", decode_grid(a, task.side)) for i, a in enumerate(answers)]
    panels += [(f"vote #{k + 1} ({c} votes)", g) for k, (g, _, c) in enumerate(ranked[:2])]
    if truth is not None:
        panels.append(("the task's output", truth))
    return arc_grids(panels, cols=cols, title=title)
