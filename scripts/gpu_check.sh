#!/usr/bin/env bash
# One prepared device check (README "Reproduction on one GPU"), planned for 7 minutes on one
# H100/H200:
# NCA generation speed, GPU-vs-CPU bit-identity of NCA data (near-tie draws explained), stage-1
# and stage-2 tokens/s, MFU, peak memory and recompiles at the gpu preset, the NCA share of a
# stage-1 step, compiled-vs-eager loss and gradients, a bf16-vs-fp32 loss check. The JSON
# (out/gpu_check/<device>.json) is rewritten after every step, so a failed step or a killed run
# keeps what was measured (scripts/gpu_check.py --help).
#   bash scripts/gpu_check.sh                  # on the GPU
#   DEVICE=cpu bash scripts/gpu_check.sh       # dry run of every step at toy size, same JSON keys
#   bash scripts/gpu_check.sh --overwrite      # replace an earlier result
#   bash scripts/gpu_check.sh --time_limit 400 # skip the steps that would not fit in 400 s
#   bash scripts/gpu_check.sh --out DIR/check.json  # the JSON where the caller collects results
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/find_python.sh        # PY: the first of $PYTHON, python, python3 with torch
# Imports first, so a missing package is one line now rather than a traceback minutes in.
"$PY" - <<'PY'
import importlib.util, sys
if sys.version_info < (3, 10):
    sys.exit(f"error: Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
missing = [m for m in ("torch", "numpy", "tqdm", "tiktoken") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: missing {', '.join(missing)}: pip install {' '.join(missing)} "
             "(or pip install -r requirements.txt)")
PY
export PYTHONUNBUFFERED=1          # progress visible line by line, also when the run is killed
exec "$PY" scripts/gpu_check.py --device "${DEVICE:-auto}" "$@"
