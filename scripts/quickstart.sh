#!/usr/bin/env bash
# The main job on the embedded data, on CPU: prepare the corpora, pre-pre-train a tiny model on
# NCA trajectories, pre-train it on web text next to a scratch baseline, and compare them.
# Rerunning continues (--resume) instead of starting over. Runs go to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
for d in web math code; do python "data/$d/prepare.py"; done
python train.py --preset cpu --stage both --domain web --out_dir "$OUT/nca" --resume
python train.py --preset cpu --stage both --domain web --ppt_tokens 0 --out_dir "$OUT/scratch" --resume
python eval.py "$OUT/scratch" "$OUT/nca" --eval_tokens 32768 --out "$OUT" --overwrite
