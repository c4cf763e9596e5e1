#!/usr/bin/env bash
# The main job on the embedded data, on CPU (about 6 minutes on 2 cores): prepare the byte-level
# web corpus, pre-pre-train a tiny model on NCA trajectories, pre-train it on web text next to a
# scratch baseline of the same seed, and compare them with the n-gram baselines, bits per byte
# and the in-context copy probe. The two language runs go side by side, one thread each; the NCA
# arm prints here, the scratch arm writes $OUT/scratch.log. Rerunning continues (--resume).
# Output: out/quickstart/ (eval.md there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
python data/web/prepare.py --tokenizer bytes
start=$(date +%s)
stamp() { echo "== $(date +%H:%M:%S) (+$(( $(date +%s) - start )) s): $*"; }
stamp "stage 1 (NCA) starts -> $OUT/nca/ppt"
python train.py --preset cpu --stage ppt --out_dir "$OUT/nca/ppt" --resume
stamp "stage 1 (NCA) done"
mkdir -p "$OUT"
stamp "scratch arm starts in the background -> $OUT/scratch (its log: $OUT/scratch.log)"
OMP_NUM_THREADS=1 python train.py --preset cpu --stage lang --domain web_bytes \
  --out_dir "$OUT/scratch" --resume > "$OUT/scratch.log" 2>&1 &
scratch=$!
stamp "NCA arm starts -> $OUT/nca (its log follows)"
OMP_NUM_THREADS=1 python train.py --preset cpu --stage lang --domain web_bytes \
  --init_from "$OUT/nca/ppt/ckpt.pt" --out_dir "$OUT/nca" --resume
stamp "NCA arm done; waiting for the scratch arm"
wait "$scratch" || { echo "error: the scratch run failed: see $OUT/scratch.log"; exit 1; }
stamp "scratch arm done ($(tail -n 1 "$OUT/scratch.log"))"
python eval.py "$OUT/scratch" "$OUT/nca" "$OUT/nca/ppt" --domains web_bytes --eval_tokens 16384 \
  --out "$OUT" --overwrite
echo "quick start: $(( $(date +%s) - start )) s of training and evaluation; table: $OUT/eval.md"
