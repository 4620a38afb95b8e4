#!/usr/bin/env bash
# The demo study: bit-level scaling of ksir's own Llama family on the embedded corpus (CPU).
# Trains 4 sizes, post-training-quantizes each at k in {2,3,4,5,6,8,16} (int, block 64),
# evaluates, fits a per-k power law in total model bits and draws the figure.
# Usage: experiments/demo.sh [OUT_DIR]   (rerunning skips finished jobs)
set -euo pipefail
OUT="$(mkdir -p "${1:-outputs/demo}" && cd "${1:-outputs/demo}" && pwd)"
ksir-run -m experiment=demo out_dir="$OUT"
ksir-fit "$OUT/results" --out "$OUT"
echo "$OUT"
