#!/usr/bin/env bash
# E1, power (web): with enough seeds to decide, does an NCA-warmed body beat a fresh body, and a
# body warmed up on natural text, at CPU scale?
#
# Rules, fixed before the first run:
#   domain: web at byte level (data/web_bytes), the quick start's domain.
#   arms (hyper-parameters of --preset cpu throughout; the arms of a seed are paired: same
#   seed, same data order, same fresh embeddings and head):
#     scratch  stage 2 only
#     nca      stage 1 `--preset cpu --stage ppt` (4 colours, 8x8, 2x2 patches, band cpu-web,
#              1,048,576 NCA tokens, rule seed = seed), then stage 2 from its checkpoint
#     text     stage 1 with `--ppt_source text --ppt_data data/c4_bytes` (the same tokens), then
#              stage 2 from its checkpoint (the reset-only control)
#     stage 2: `--preset cpu --stage lang --domain web_bytes --lang_tokens 655360` (160 steps of
#              4,096 bytes, as the CPU-scale experiment of the README: the preset's 320 steps
#              would put 12 seeds past 90 minutes on 2 cores).
#   seeds: 0-11, all reported. Stage-1 runs of seeds 0-4 are those of
#     lab/experiments/induction_readiness.sh (the same command; link them into OUT to reuse).
#   endpoint: final validation loss in nats per byte on the whole web validation split
#     (eval.py --eval_tokens 0).
#   primary contrasts: nca - scratch and nca - text, paired by seed: mean, 95% t interval, exact
#     sign-flip p, Holm-adjusted over the three contrasts of the table (text - scratch is the
#     third, secondary). Convergence speedup secondary.
#   reading: an arm beats another if its Holm-adjusted p < 0.05 with the interval below 0; a
#     contrast whose interval spans 0 is reported as undecided, never as "no effect".
#
#   OUT=out/e1 SEEDS="0 1 2 3 4 5 6 7 8 9 10 11" JOBS=2 bash lab/experiments/e1_power.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e1}
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7 8 9 10 11}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes web c4
stage1=(); stage2=()
for s in $SEEDS; do
  stage1+=("nca-seed$s --stage ppt --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("text-seed$s --stage ppt --ppt_source text --ppt_data data/c4_bytes --seed $s ${PPT[*]-}")
  common="--stage lang --domain web_bytes --seed $s ${LANG[*]-}"
  stage2+=("web-scratch-s$s $common")
  stage2+=("web-nca-s$s $common --init_from $OUT/nca-seed$s/ckpt.pt --arm nca")
  stage2+=("web-text-s$s $common --init_from $OUT/text-seed$s/ckpt.pt --arm text")
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
runs=()
for s in $SEEDS; do runs+=("$OUT/web-scratch-s$s" "$OUT/web-nca-s$s" "$OUT/web-text-s$s"); done
evaluate - "${runs[@]}" --domains web_bytes ${EVAL[@]+"${EVAL[@]}"} --pair nca:scratch --pair nca:text \
  --pair text:scratch
echo "E1: table in $OUT/eval.md"
