"""Shared by the benchmark scripts: the machine description and the generated sections of
``docs/RESULTS.md`` (one per script, replaced on every run, never edited by hand)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "RESULTS.md"

HEADER = """# gram-pyro results

Every section below is written by a script under `benchmarks/`; the command, date, machine and
git commit that produced it stand at its top. Nothing here is typed by hand. The paper's figures,
where shown, are labelled as the paper's (`../shared/paper_results.json`); they come from
full-scale GPU training and are targets, not our measurements.
"""


def machine() -> str:
    import pyro
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}")


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        # what the benchmarks write themselves (RESULTS.md, its figures) is not the code that ran
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/RESULTS.md", ":(exclude)docs/figures"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_section(name: str, title: str, body: str, *, quick: bool = False, tag: str = "") -> None:
    """Replace the section ``name`` of docs/RESULTS.md (a --quick run writes nothing there).
    A ``tag`` names one of several runs of a script on the same task: it suffixes the section."""
    if tag:
        name, title = f"{name}_{tag}", f"{title} ({tag})"
    if quick:
        print(f"(--quick: docs/RESULTS.md section '{name}' left as it was)")
        return
    stamp = (f"`{command_line()}`  \n{datetime.date.today().isoformat()} · {machine()} · "
             f"commit {commit()}")
    block = f"<!-- BEGIN {name} -->\n## {title}\n\n{stamp}\n\n{body.strip()}\n<!-- END {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"wrote section '{name}' of {RESULTS.relative_to(ROOT)}")


def result_line(metric: str, value: float, goal: str, met: bool) -> str:
    return f"RESULT {metric}={value:.4g} goal={goal} met={'yes' if met else 'no'}"
