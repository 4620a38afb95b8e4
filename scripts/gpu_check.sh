#!/usr/bin/env bash
# `make gpu-check`: everything that needs CUDA, in one call of at most 10 minutes, into one folder.
#
#   bash scripts/gpu_check.sh [OUT]      # default OUT: outputs/gpu-check/<UTC date-time>
#   bash scripts/gpu_check.sh --plan     # print the parts and their time limits, run nothing
#
# Parts (each under its own time limit, so that one slow part cannot eat the others' time):
#   the tests marked gpu; the CUDA rows of the quantization, training and packed-model benchmarks; the GPU
#   studies' smoke runs on local random-weight copies of their hub architectures (no hub access needed).
# Writes into OUT: summary.txt (one line per part: exit status and seconds), each part's log, pytest's JUnit
# XML, the benchmarks' JSON, the studies' claims, nvidia-smi and the environment. docs/benchmarks.md's pending
# GPU rows are filled from these files. Needs a CUDA build of torch in the venv (make setup TORCH=torch).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")

# name | limit (s) | command
PARTS=(
  "pytest-gpu|140|$PY -m pytest -m gpu -q -p no:cacheprovider --timeout 130 --junitxml \$OUT/pytest-gpu.xml"
  "bench-quant|75|$PY benchmarks/bench_quant.py --reps 3"
  "bench-train|90|$PY benchmarks/bench_train.py --preset 150m --steps 40 --warmup 10 --json \$OUT/bench_train.json"
  "bench-deploy|115|$PY benchmarks/bench_deploy.py --preset 1b --repeats 3 --json \$OUT/bench_deploy.json"
  "study-kbit_pythia|50|$BIN/ksir-repro kbit_pythia --smoke --with trainer=gpu --out \$OUT/kbit_pythia"
  "study-deploy_pythia|55|$BIN/ksir-repro deploy_pythia --smoke --with trainer=gpu --out \$OUT/deploy_pythia"
  "study-precision_qwen|40|$BIN/ksir-repro precision_qwen --smoke --with trainer=gpu --out \$OUT/precision_qwen"
)

if [[ "${1:-}" == "--plan" ]]; then
  total=0
  for p in "${PARTS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$p"
    printf '%-20s %4ss  %s\n' "$name" "$limit" "$cmd"
    total=$((total + limit))
  done
  echo "total limit: ${total}s"
  exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu-check: no CUDA device visible to $PY (install a CUDA build: make setup TORCH=torch); nothing run" >&2
  exit 2
fi

OUT=${1:-outputs/gpu-check/$(date -u +%Y-%m-%dT%H%M)}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m ksir.environment >"$OUT/environment.json" 2>&1 || true
: >"$OUT/summary.txt"
status=0
for p in "${PARTS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$p"
  echo "== $name (limit ${limit}s)"
  start=$(date +%s)
  eval "timeout --signal=INT --kill-after=10 $limit $cmd" >"$OUT/$name.log" 2>&1
  rc=$?
  line="$name rc=$rc $(( $(date +%s) - start ))s"
  [[ $rc == 124 ]] && line="$line (stopped at its limit)"
  echo "$line" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
  [[ $rc != 0 ]] && status=1
done
echo "gpu-check: results in $OUT"
exit $status
