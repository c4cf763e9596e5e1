#!/usr/bin/env bash
# Stage-1 search at CPU scale: which small NCA does a tiny model learn in context, beyond copying
# the previous grid and beyond a model-free lookup of the same sequence?
#
# Rules, fixed before the first run:
#   arms (each beyond `--preset cpu --stage ppt`, 1,048,576 NCA tokens, 2,048 train / 128
#   held-out rules):
#     s0  the current cpu preset: 4 colours, 8x8 grid, 2x2 patches, band cpu-web (0.24-1.0)
#     s1  2 colours, 9x9 grid, 3x3 patches, band 0.5-1.0 (the paper's web/math band)
#     s2  2 colours, 9x9 grid, 3x3 patches, band 0.3-0.4 (the paper's code band)
#     s3  2 colours, 6x6 grid, 3x3 patches, band 0.5-1.0
#     s4  s1 with the official stage-1 schedule: linear warmup over the whole stage, constant
#         (the checkpoint is taken at the end of warmup, as the official 164M one)
#   seeds: 0, 1, 2 (model seed = rule seed); every seed is reported.
#   endpoint: the final checkpoint's token accuracy and whole-grid accuracy on 256 sequences of
#     its 128 held-out rules (eval.py --nca_val_seqs 256), beside "copy the previous grid" and the
#     lookup predictor (docs/method.md, 'Lookup baseline') on the same sequences.
#   primary contrast: token accuracy - copy token accuracy (points), mean and 95% t interval
#     over the 3 seeds; secondary: grid accuracy against copy and lookup.
#   adoption: the web/math setting of --preset cpu becomes the arm with the largest mean token
#     margin among those whose margin is at least 10 points and whose grid accuracy is above
#     copy's on average, if its stage 1 takes about 5 minutes or less on 2 idle cores; the code
#     band is the 2-colour band (s2, or s1's 0.5-1.0 if s2 fails) whose mean grid accuracy is above
#     copy's. Otherwise the preset stays as it is.
#
#   Amendment (made after seeing seed 0 of s0 and s1, before any other result; no rule above
#   changed): on a shared 2-core machine one run took 11-14 minutes, so ARMS picks the arms to
#   run, in order; the first session ran ARMS="s0 s1 s2" (the adoption decision's arms) first.
#
#   OUT=out/stage1_search SEEDS="0 1 2" ARMS="s0 s1 s2 s3 s4" bash lab/experiments/stage1_search.sh
#   SMOKE=1: every arm at toy budgets (a few minutes in all), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/stage1_search}
SEEDS=${SEEDS:-0 1 2}
ARMS_RUN=${ARMS:-s0 s1 s2 s3 s4}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=(--ppt_tokens 16384 --train_num_rules 64 --val_num_rules 8 --ppt_val_seqs 16
          --ppt_eval_interval 1); VAL=16
else
  BUDGET=(); VAL=256
fi
declare -A ARMS=(
  [s0]=""
  [s1]="--num_colors 2 --grid 9 --patch 3 --band 0.5-1.0"
  [s2]="--num_colors 2 --grid 9 --patch 3 --band 0.3-0.4"
  [s3]="--num_colors 2 --grid 6 --patch 3 --band 0.5-1.0"
  [s4]="--num_colors 2 --grid 9 --patch 3 --band 0.5-1.0 --ppt_warmup_frac 1.0 --ppt_schedule constant"
)
for seed in $SEEDS; do
  for arm in $ARMS_RUN; do
    run="$OUT/$arm-seed$seed"
    if [ -f "$run/done" ]; then continue; fi
    start=$(date +%s)
    # shellcheck disable=SC2086
    python train.py --preset cpu --stage ppt ${ARMS[$arm]} ${BUDGET[@]+"${BUDGET[@]}"} --seed "$seed" \
      --rule_seed "$seed" --out_dir "$run" --resume > "$OUT/$arm-seed$seed.log" 2>&1
    echo "$(( $(date +%s) - start ))" > "$run/done"
    echo "$arm seed $seed: $(cat "$run/done") s"
  done
done
for arm in $ARMS_RUN; do
  runs=()
  for seed in $SEEDS; do runs+=("$OUT/$arm-seed$seed"); done
  python eval.py "${runs[@]}" --domains "" --nca_val_seqs "$VAL" --out "$OUT/eval-$arm" \
    --overwrite > "$OUT/eval-$arm.log" 2>&1
done
echo "stage-1 search: tables in $OUT/eval-s*/eval.md"
