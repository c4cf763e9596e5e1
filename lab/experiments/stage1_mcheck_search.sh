#!/usr/bin/env bash
# Stage-1 manipulation-check search at CPU scale: in which small setting does the tiny model's
# stage 1 provably learn rule dynamics, i.e. predict held-out rules' grids better from the grids
# just before them than from the same grids out of order, and better than the model-free
# predictors? On seed-0 bodies of the cpu preset the answer was no: 0.012 nats/token from time
# order, a frame-shuffled body as good on ordered frames, accuracy below the lookup predictor.
#
# Rules, fixed before the first run (written after a speed measurement and model-free statistics
# of candidate data only: no model of any arm below had been trained or checked):
#   arms (each `python train.py --preset cpu --stage ppt` plus the flags below; 2,048 train /
#   128 held-out rules, band cpu-web (gzip ratio 0.24-1.0) and every other knob the preset's):
#     m0  the cpu preset itself (4 colours, 8x8 grid, 2x2 patches, 1,048,576 NCA tokens, tiny
#         model 4 layers d 128): the reference arm
#     m1  longer stage 1: m0 with 3,145,728 tokens (3x)
#     m2  bigger tiny model: m0 with 6 layers, d 192, 6 heads (3.54M body parameters against
#         1.05M), 1,048,576 tokens (about the wall time of m1)
#     m3  slower-changing grid: m1 with --identity_bias 0.1 (cells keep their colour unless
#         another wins by 0.1; copy 25% / lookup 25% of tokens against m0's 8% / 16%)
#     m4  lower identity bias: m1 with --identity_bias -0.1 (cells leave their colour: copy 2%,
#         lookup 13%)
#     (the preset's identity bias is already 0, the official value, so "lower" is negative.)
#     Not arms, from model-free statistics of 256 sequences of 256 rules each (copy / lookup
#     token accuracy on time-ordered frames): 2 colours with 3x3 patches (the earlier search's
#     s1/s2: lookup beat every model by 10-33 points), 2 colours 8x8 2x2 (lookup 60-62%),
#     4 colours 6x6 (lookup 28%, 37% with identity bias 0.1): lookup of the sequence's own
#     repeats is out of a tiny model's reach there.
#   budget: each stage-1 run at most about 12 minutes on one core. Measured here with
#     OMP_NUM_THREADS=1 (`--max_iters 32`, 262,144 tokens, while other jobs kept the machine's
#     load at 4-6): m0 8,809 tok/s (7,633-8,809 per 16-step window; 35.6 s wall for the whole
#     32-step run, start-up, rule filter and two validations included: 7,364 tok/s), identity
#     bias +0.1 7,704-8,193, -0.1 7,764-7,773, 6 layers d 192 2,281-2,408 (118 s for 32 steps),
#     the `mini` size (6 layers d 256) 1,457-1,862 (too slow for 1M tokens). Expected per run:
#     m0 about 2.5 min, m1/m3/m4 about 7 min, m2 about 7.5 min, with room for 1.6x slower
#     cores before 12 minutes; about 1.6 hours for all 15 runs and their checks.
#   seeds: 0, 1, 2 (model seed = rule seed = data seed); every seed is reported.
#   measurement: lab/manipulation_check.py on the final checkpoint, 128 sequences of its own
#     128 held-out rules (trajectory and permutation seed 0): loss (nats per supervised label)
#     and token accuracy on time-ordered frames; the same frames in the order
#     --frame_order shuffled gives them; gain = shuffled loss - ordered loss, and the matched
#     gain on the tokens supervised in both orders; copy and lookup token accuracy on the
#     ordered frames.
#   pass rule: an arm passes when, over its 3 seeds, (1) the mean gain is at least 0.05
#     nats/token and its 95% t-interval (t 4.303, 2 df) lies above 0; (2) the same holds for
#     the matched gain; (3) the mean token accuracy is above the lookup predictor's (mean of
#     per-seed differences > 0); (4) and above the copy predictor's (in m3 copying alone beats
#     lookup, and copying is time order without rule dynamics).
#   adoption: among passing arms, the cheapest (body parameters x stage-1 tokens: m0 1.1e12,
#     m1/m3/m4 3.3e12, m2 3.7e12), ties to the larger mean gain, becomes the recommended
#     stage-1 setting for the CPU scale. None passing: the preset stays, and the result is that
#     no setting within this budget teaches the tiny model rule dynamics.
#
#   OUT=out/stage1_mcheck SEEDS="0 1 2" ARMS="m0 m1 m2 m3 m4" \
#     bash lab/experiments/stage1_mcheck_search.sh
#   SMOKE=1: every arm at toy budgets (a couple of minutes), to check the script still runs.
# Resumable: a run continues from its checkpoint (--resume), a finished run has a `done` marker
# (its seconds) and a check its JSON; rerun the same command. One log per run: $OUT/ARM-seedS.log.
# Note (2026-12-07): the search started from commit 45bb4ac, where this script and the check lived
# under scripts/; they moved to lab/ with the repository's new layout while it ran. Only paths
# and imports changed; no rule above changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/stage1_mcheck}
SEEDS=${SEEDS:-0 1 2}
ARMS_RUN=${ARMS:-m0 m1 m2 m3 m4}
MARGIN=0.05
export OMP_NUM_THREADS=1
mkdir -p "$OUT/mcheck"
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=(--ppt_tokens 16384 --train_num_rules 64 --val_num_rules 8 --ppt_val_seqs 16
          --ppt_eval_interval 2 --n_layer 1 --n_embd 32 --n_head 2); CHECK=(--num_seqs 16)
else
  BUDGET=(); CHECK=(--num_seqs 128)
fi
declare -A ARMS=(
  [m0]=""
  [m1]="--ppt_tokens 3145728"
  [m2]="--n_layer 6 --n_embd 192 --n_head 6"
  [m3]="--ppt_tokens 3145728 --identity_bias 0.1"
  [m4]="--ppt_tokens 3145728 --identity_bias -0.1"
)
failed=0
for seed in $SEEDS; do
  for arm in $ARMS_RUN; do
    run="$OUT/$arm-seed$seed"
    [ -f "$run/done" ] && continue
    start=$(date +%s)
    echo "$(date '+%F %T') $arm seed $seed: started (log $OUT/$arm-seed$seed.log)"
    # shellcheck disable=SC2086
    if python train.py --preset cpu --stage ppt ${ARMS[$arm]} ${BUDGET[@]+"${BUDGET[@]}"} \
        --seed "$seed" --rule_seed "$seed" --out_dir "$run" --resume \
        > "$OUT/$arm-seed$seed.log" 2>&1; then
      echo "$(( $(date +%s) - start ))" > "$run/done"
      echo "$(date '+%F %T') $arm seed $seed: $(cat "$run/done") s"
    else
      echo "$(date '+%F %T') $arm seed $seed: FAILED, see $OUT/$arm-seed$seed.log"
      failed=1
    fi
  done
done
checks=()
for arm in $ARMS_RUN; do
  for seed in $SEEDS; do
    run="$OUT/$arm-seed$seed" json="$OUT/mcheck/$arm-seed$seed.json"
    [ -f "$run/done" ] || continue
    if [ ! -f "$json" ]; then
      python lab/manipulation_check.py "$run" "${CHECK[@]}" --label "$arm seed $seed" \
        --out "$json" > "$OUT/mcheck/$arm-seed$seed.log" 2>&1 \
        || { echo "check failed: $OUT/mcheck/$arm-seed$seed.log"; failed=1; continue; }
    fi
    cat "$OUT/mcheck/$arm-seed$seed.log"
    checks+=("$arm=$json")
  done
done
[ ${#checks[@]} -gt 0 ] || { echo "no finished run to check"; exit 1; }
title="Stage-1 manipulation-check search ($OUT; rules: the header of $0)"
python lab/manipulation_check.py --summarize "${checks[@]}" --margin "$MARGIN" \
  --title "$title" --out "$OUT/summary.md"
echo "stage-1 manipulation-check search: $OUT/summary.md"
exit "$failed"
