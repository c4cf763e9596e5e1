#!/usr/bin/env bash
# One prepared device check (README "Single-GPU reproduction"), about 5 minutes on one H100/H200:
# NCA generation speed, GPU-vs-CPU bit-identity of NCA data, stage-1 and stage-2 tokens/s, MFU and
# peak memory at the gpu preset, the NCA share of a stage-1 step, a bf16-vs-fp32 loss check.
# Prints the JSON and writes it to out/gpu_check/<device>.json (scripts/gpu_check.py --help).
#   bash scripts/gpu_check.sh                  # on the GPU
#   DEVICE=cpu bash scripts/gpu_check.sh       # dry run of every step at toy size, same JSON keys
#   bash scripts/gpu_check.sh --overwrite      # replace an earlier result
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py --device "${DEVICE:-auto}" "$@"
