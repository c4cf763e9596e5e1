#!/usr/bin/env bash
# One-GPU reproduction of the paper's comparison at GPT-2-small scale (README "Single-GPU
# reproduction"): full-scale corpora, 164M NCA tokens per band (web/math: 0.5-1.0, code:
# 0.3-0.4), then language pre-training of the scratch and NCA arms on web, math and code, and
# the evaluation table. Budgets are environment variables; rerunning resumes.
#   bash scripts/gpu_reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
SEED=${SEED:-0}
LANG_TOKENS=${LANG_TOKENS:-2621440000}        # 5,000 steps of 524,288 tokens per run
DATA_TOKENS=${DATA_TOKENS:-3000000000}        # tokens to prepare per domain
for d in web math code; do
  [ -f "data/$d/meta.json" ] && grep -q '"source": "hf"' "data/$d/meta.json" &&
    grep -q '"max_token"' "data/$d/meta.json" ||
    python "data/$d/prepare.py" --source hf --max_tokens "$DATA_TOKENS" --num_proc 16
done
for band in web code; do
  python train.py --preset gpu --stage ppt --band "$band" --seed "$SEED" --rule_seed "$SEED" \
    --out_dir "$OUT/ppt-$band" --resume
done
for d in web math code; do
  band=$([ "$d" = code ] && echo code || echo web)
  python train.py --preset gpu --stage lang --domain "$d" --seed "$SEED" \
    --lang_tokens "$LANG_TOKENS" --out_dir "$OUT/$d-scratch" --resume
  python train.py --preset gpu --stage lang --domain "$d" --seed "$SEED" \
    --lang_tokens "$LANG_TOKENS" --init_from "$OUT/ppt-$band/ckpt.pt" --out_dir "$OUT/$d-nca" --resume
done
PLOT=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $OUT/curves.png" || echo "")
python eval.py "$OUT"/*-scratch/ "$OUT"/*-nca/ --domains web,math,code --out "$OUT" $PLOT --overwrite
