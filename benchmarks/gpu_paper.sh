#!/usr/bin/env bash
# Paper-preset training on a GPU, then throughput, memory and prior-rollout accuracy, written
# under OUT. On N-Queens 8x8 (the default) it finishes within 10 minutes (7 min training +
# evaluation).
#
#   bash benchmarks/gpu_paper.sh OUT                       # on the GPU machine
#   bash benchmarks/gpu_paper.sh OUT --device cpu --tiny   # the CPU rehearsal the smoke test runs
#
# ARC-AGI-1 with the paper's protocol: all 400 training and 400 evaluation tasks at 30 x 30,
# 1,000 views (identities) per puzzle, trained on every training pair and the evaluation tasks'
# demonstration pairs, scored by pass@2 over views x trajectories. The paper trains for days on
# 8 GPUs; give --minutes accordingly (the run resumes: rerun the same command to go on).
#
#   bash benchmarks/gpu_paper.sh OUT --task arc-1 --minutes 600
#   bash benchmarks/gpu_paper.sh OUT --task arc-1 --device cpu --tiny   # its dry run: the full
#                                              # data and its embeddings, a tiny model, a few steps
set -euo pipefail
OUT=${1:?usage: gpu_paper.sh OUT [--device cpu|cuda] [--tiny] [--minutes M] [--task T] [--data K=V]}
shift
DEVICE=cuda MINUTES=7 TINY=0 TASK=nqueens-8 DATA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --task) TASK=$2; shift 2 ;;
    --data) DATA+=(--data "$2"); shift 2 ;;
    *) echo "gpu_paper.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
SETS=(--set eval_interval=500 --set eval_inputs=256 --set checkpoint_minutes=3)
EVAL=(--samples 20 --limit 256)
if [[ $TASK == arc* ]]; then
  [ ${#DATA[@]} -eq 0 ] && DATA=(--data views=1000)  # TRM's and the paper's 1,000 per puzzle
  EVAL=(--samples 2 --views 64)  # every test input: 64 views x 2 trajectories, voted
fi
if [ "$TINY" = 1 ]; then
  MINUTES=0.1
  SETS=(--set d_model=32 --set n_heads=2 --set n_layers=1 --set batch_size=8 --set n_supervision=2
        --set k_low=1 --set n_prefix=2 --set eval_interval=5 --set eval_inputs=8 --set warmup_steps=2)
  [[ $TASK == arc* ]] && EVAL=(--samples 2 --views 2 --limit 4)
fi
python -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$OUT/machine.json"
START=$(date +%s)
gram train --task "$TASK" --preset paper --device "$DEVICE" --max-minutes "$MINUTES" \
  --out "$OUT/run" --quiet "${SETS[@]}" "${DATA[@]}" | tee "$OUT/train.txt"
TRAIN_END=$(date +%s)
gram evaluate "$OUT/run" "${EVAL[@]}" --device "$DEVICE" --json > "$OUT/evaluate.json"
python - "$OUT" "$START" "$TRAIN_END" <<'PY'
import json, sys
from pathlib import Path
out, start, train_end = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = [json.loads(l) for l in (out / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
ev = json.loads((out / "evaluate.json").read_text())
cfg = json.loads((out / "run" / "config.json").read_text())
train = [l for l in (out / "train.txt").read_text().split() if l.startswith(("step=", "minutes="))]
vals = dict(t.split("=") for t in train)
steps, minutes = int(vals["step"]), float(vals["minutes"])
summary = {"steps": steps, "train_minutes": minutes, "steps_per_second": steps / (60 * minutes),
           "examples_per_second": steps * cfg["batch_size"] / (60 * minutes),
           "peak_memory_mb": log[-1].get("peak_memory_mb"),
           "val_prior_acc_last": log[-1].get("val_prior_acc"),
           "test_sample_accuracy": ev["sample_accuracy"], "test_coverage_micro": ev["coverage_micro"],
           **({"arc_pass@2": ev["arc"]["pass@2"], "arc_pass@1": ev["arc"]["pass@1"]} if "arc" in ev else {}),
           "wall_seconds": train_end - start}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
