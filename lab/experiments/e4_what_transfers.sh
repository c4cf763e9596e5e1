#!/usr/bin/env bash
# E4, what transfers (math): the paper's re-initialization ablation, on the NCA body and on the
# text (C4) body. Which part of a warmed-up body carries its gain: attention, the MLPs, or the
# norms?
#
# Rules, fixed before the first run:
#   domain: math at byte level (data/math_bytes), as E2.
#   bodies: nca (E1's nca-seedS: `--preset cpu --stage ppt --rule_seed s --seed s`) and c4
#     (E1's text-seedS: `--ppt_source text --ppt_data data/c4_bytes`).
#   arms per body B (hyper-parameters of --preset cpu; every re-initialized part gets exactly the
#   scratch arm's starting tensors of the seed, so the arms of a seed form an exact factorial of
#   "transferred or scratch" per part):
#     B               full transfer
#     B-attn          --reinit attn       (attention from scratch)
#     B-mlp           --reinit mlp        (MLPs from scratch)
#     B-ln            --reinit ln         (per-block norms back to 1)
#     B-norms         --reinit attn,mlp   (only the norms transferred)
#     scratch         stage 2 only, shared by both bodies
#     stage 2: `--preset cpu --stage lang --domain math_bytes --lang_tokens 655360`, as E1.
#   seeds: 0-7, all reported. Stage 1 is E1's (E1_OUT, linked); the scratch and c4 runs of seeds
#     0-4 are E2's (E2_OUT: math-scratch-sS, math-c4-sS, the same commands), linked.
#   endpoint: final validation loss in nats per byte on the whole math validation split.
#   primary: per body, the share of the full gain kept when a part is re-initialized,
#     (B-X - scratch) / (B - scratch), with a 95% bootstrap interval over seeds (eval.py --pair
#     B-X:scratch:B); the paired Δ of every arm against scratch (mean, 95% t interval, exact
#     sign-flip p, Holm over the ten rows). Also: how far the norm weights moved in stage 1
#     (lab/norm_movement.py), which says whether B-ln can differ from B at all.
#   reading: a share near 1 says the part carries none of the gain, near 0 all of it; the
#     paper's claim is that re-initializing attention removes most of the gain (share near 0
#     for B-attn) while B-mlp keeps more.
#
#   OUT=out/e4 E1_OUT=out/e1 E2_OUT=out/e2 SEEDS="0 1 2 3 4 5 6 7" JOBS=2 bash lab/experiments/e4_what_transfers.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e4}
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes math c4
declare -A PART=([attn]=attn [mlp]=mlp [ln]=ln [norms]=attn,mlp)
stage1=(); stage2=()
for s in $SEEDS; do
  link E1_OUT "nca-seed$s"; link E1_OUT "text-seed$s"
  link E2_OUT "math-scratch-s$s"; link E2_OUT "math-c4-s$s"
  stage1+=("nca-seed$s --stage ppt --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("text-seed$s --stage ppt --ppt_source text --ppt_data data/c4_bytes --seed $s ${PPT[*]-}")
  common="--stage lang --domain math_bytes --seed $s ${LANG[*]-}"
  stage2+=("math-scratch-s$s $common")
  for body in nca c4; do
    ck=$OUT/$([ "$body" = nca ] && echo nca || echo text)-seed$s/ckpt.pt
    stage2+=("math-$body-s$s $common --init_from $ck --arm $body")
    for x in attn mlp ln norms; do
      stage2+=("math-$body-$x-s$s $common --init_from $ck --reinit ${PART[$x]} --arm $body-$x")
    done
  done
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
bodies=()
for s in $SEEDS; do bodies+=("$OUT/nca-seed$s" "$OUT/text-seed$s"); done
python lab/norm_movement.py "${bodies[@]}" --out "$OUT/norms.md" > /dev/null
runs=(); pairs=()
for s in $SEEDS; do
  runs+=("$OUT/math-scratch-s$s")
  for arm in nca nca-attn nca-mlp nca-ln nca-norms c4 c4-attn c4-mlp c4-ln c4-norms; do
    runs+=("$OUT/math-$arm-s$s")
  done
done
for body in nca c4; do
  pairs+=(--pair "$body:scratch")
  for x in attn mlp ln norms; do pairs+=(--pair "$body-$x:scratch:$body"); done
done
evaluate reinit.png "${runs[@]}" --domains math_bytes ${EVAL[@]+"${EVAL[@]}"} "${pairs[@]}"
echo "E4: table in $OUT/eval.md, norm movement in $OUT/norms.md"
