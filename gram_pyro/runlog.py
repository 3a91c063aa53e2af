"""The metrics log of a run folder, ``metrics.jsonl``: one JSON object per evaluation.

Each record summarizes the optimizer steps since the last one (means of the loss, its terms, the
KL per transition t averaged over supervision steps, the gradient norm and learning rate, skipped
batches) and adds the evaluation's prior-rollout figures on the validation split.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import numpy as np
import torch

from gram_pyro.errors import warn

MEANS = ("loss", "recon", "kl_total", "act", "posterior_acc", "prior_batch_acc", "grad_norm", "lr")


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def reset(self) -> None:
        self.path.write_text("")

    def records(self) -> tuple[list[dict], int]:
        """The log's records, and how many lines could not be read (a line torn by a kill in
        the middle of a write; only the last line can be)."""
        if not self.path.exists():
            return [], 0
        out, torn = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                torn += 1
                continue
            if isinstance(record, dict):
                out.append(record)
            else:
                torn += 1
        return out, torn

    def keep_until(self, step: int) -> None:
        """Drop records after ``step`` (a resumed run continues from its checkpoint's step) and
        lines that cannot be read, with a warning for those."""
        records, torn = self.records()
        if torn:
            warn(f"dropped {torn} unreadable line{'s' if torn > 1 else ''} from {str(self.path)!r} "
                 "(a write cut off by a kill)")
        kept = [r for r in records if isinstance(r.get("step", 0), (int, float)) and r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def summarize(window: list[dict], step: int, nan_skips: int) -> dict:
    """One record from the per-step logs of a window (``{"skipped": why}`` for skipped batches)."""
    skipped = [w for w in window if "skipped" in w]
    window = [w for w in window if "skipped" not in w] or [{"step": step}]
    out = {"step": window[-1]["step"], "nan_skips_total": nan_skips, "nan_skips": len(skipped)}
    if "loss" not in window[-1]:
        return out
    for key in MEANS:
        if key in window[-1]:  # act, lprm and prior_batch_acc only with the joint critic
            out[key] = float(np.mean([w[key] for w in window]))
    lprm = [w["lprm"] for w in window if w.get("lprm")]
    out["lprm"] = float(np.mean(lprm)) if lprm else None
    per_t: dict[str, list] = {}  # site eps_{n}_{t} -> transition t
    for w in window:
        for site, v in w["kl"].items():
            per_t.setdefault("t" + site.rsplit("_", 1)[1], []).append(v)
    out["kl_per_transition"] = {k: float(np.mean(v)) for k, v in sorted(per_t.items())}
    return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
