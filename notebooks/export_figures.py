"""Run every notebook top to bottom in its full mode and save its figures under docs/figures
(the README shows them). The notebooks in git stay stripped: outputs are never written back.

    python notebooks/export_figures.py                        # each notebook trains its own run
    python notebooks/export_figures.py --run 01=runs/nq8 --run 03=runs/shidoku \\
        --run 02u=runs/nq6-uncond                             # or point them at trained runs

``--run NN=DIR`` sets ``GRAM_RUN`` for notebook NN; ``02u`` sets ``GRAM_RUN_UNCONDITIONAL`` (the
unconditional run notebook 02 scores boards with).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], metavar="NN=DIR")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "notebooks",
                   help="where notebooks train the runs they are not given")
    p.add_argument("--only", nargs="*", help="notebook prefixes to run (default: all)")
    args = p.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient

    runs = {}
    for item in args.run:
        key, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--run takes NN=DIR with an existing run folder, got {item!r}")
        runs[key] = str(Path(path).resolve())
    args.figures.mkdir(parents=True, exist_ok=True)
    os.environ.update(GRAM_FIGURES=str(args.figures.resolve()), MPLBACKEND="Agg",
                      GRAM_NOTEBOOK_RUNS=str(args.runs.resolve()))
    os.environ.pop("GRAM_NOTEBOOK_SMALL", None)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        prefix = path.stem.split("_")[0]
        if args.only and prefix not in args.only:
            continue
        for var in ("GRAM_RUN", "GRAM_RUN_UNCONDITIONAL", "GRAM_RUN_IMAGES"):
            os.environ.pop(var, None)
        if prefix in runs:
            os.environ["GRAM_RUN"] = runs[prefix]
        if prefix + "u" in runs:
            os.environ["GRAM_RUN_UNCONDITIONAL"] = runs[prefix + "u"]
        if prefix == "04" and prefix in runs:  # the image notebook reads its own variable
            os.environ["GRAM_RUN_IMAGES"] = os.environ.pop("GRAM_RUN")
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"figures in {args.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
