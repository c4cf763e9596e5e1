#!/usr/bin/env bash
# The main job on the embedded data, on CPU (about 10 minutes on 2 cores): prepare the byte-level
# web corpus, pre-pre-train a tiny model on NCA trajectories, pre-train it on web text next to a
# scratch baseline of the same seed, and compare them with the n-gram baselines, bits per byte
# and the in-context copy probe. Rerunning continues (--resume). Runs go to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
python data/web/prepare.py --tokenizer bytes
start=$(date +%s)
python train.py --preset cpu --stage both --domain web_bytes --out_dir "$OUT/nca" --resume
python train.py --preset cpu --stage both --domain web_bytes --ppt_tokens 0 --out_dir "$OUT/scratch" --resume
python eval.py "$OUT/scratch" "$OUT/nca" "$OUT/nca/ppt" --domains web_bytes --eval_tokens 16384 \
  --out "$OUT" --overwrite
echo "quick start: $(( $(date +%s) - start )) s of training and evaluation"
