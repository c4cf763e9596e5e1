#!/usr/bin/env bash
# E6, wash-out (code): the paper reports that the NCA gain persists as language training goes
# on while a natural-text warm-up washes out. Every other CPU experiment stops after 160 stage-2
# steps with all curves still falling; this one trains 1,024 steps on code, whose 9.8 MB of
# training bytes need no repetition for it.
#
# Rules, fixed before the first run:
#   domain: code at byte level (data/code_bytes).
#   arms (hyper-parameters of --preset cpu; the arms of a seed are paired):
#     scratch  stage 2 only (the reference)
#     nca      stage 1 `--preset cpu --stage ppt --band cpu-code --rule_seed s --seed s` (E7's
#              nca-code-seedS, linked with E7_OUT)
#     c4       stage 1 `--ppt_source text --ppt_data data/c4_bytes` (E1's text-seedS, linked
#              with E1_OUT)
#     stage 2: `--preset cpu --stage lang --domain code_bytes --lang_tokens 4194304` (1,024 steps
#              of 4,096 bytes, about 4 tokens per parameter; the cosine schedule spans them),
#              validation every 32 steps on the first 16,384 validation bytes (the curves).
#   seeds: 0-2, all reported.
#   endpoint: final validation loss in nats per byte on the first 131,072 bytes of code's
#     validation split (eval.py --eval_tokens 131072).
#   primary contrasts: nca - scratch and c4 - scratch at the end (mean, 95% t interval, exact
#     sign-flip p, Holm over the three rows with nca - c4); secondary, the Δ-vs-tokens curves
#     (eval.py --plot: the lower panel, Δ against scratch paired by seed) and each arm's Δ at
#     step 160 (655,360 tokens, the other experiments' whole stage 2) beside its final Δ, both
#     in $OUT/delta_by_step.md.
#   reading: a gain "persists" if its final Δ is at least half its Δ at step 160 and its final
#     interval is below 0; it "washes out" if the final interval spans 0 while the step-160 Δ
#     was below 0 in every seed. With 3 seeds no sign-flip p can go below 0.25: this experiment
#     describes the curves; it cannot decide a contrast.
#
#   OUT=out/e6 E1_OUT=out/e1 E7_OUT=out/e7 SEEDS="0 1 2" JOBS=2 bash lab/experiments/e6_washout.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e6}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes code c4
if [ "${SMOKE:-0}" = 1 ]; then LONG=("${LANG[@]}"); else
  LONG=(--lang_tokens 4194304 --eval_interval 32); EVAL=(--eval_tokens 131072); fi
stage1=(); stage2=()
for s in $SEEDS; do
  link E7_OUT "nca-code-seed$s"; link E1_OUT "text-seed$s"
  stage1+=("nca-code-seed$s --stage ppt --band cpu-code --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("text-seed$s --stage ppt --ppt_source text --ppt_data data/c4_bytes --seed $s ${PPT[*]-}")
  common="--stage lang --domain code_bytes --seed $s ${LONG[*]}"
  stage2+=("code-scratch-s$s $common")
  stage2+=("code-nca-s$s $common --init_from $OUT/nca-code-seed$s/ckpt.pt --arm nca")
  stage2+=("code-c4-s$s $common --init_from $OUT/text-seed$s/ckpt.pt --arm c4")
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
runs=()
for s in $SEEDS; do for arm in scratch nca c4; do runs+=("$OUT/code-$arm-s$s"); done; done
evaluate - "${runs[@]}" --domains code_bytes "${EVAL[@]}" --pair nca:scratch \
  --pair c4:scratch --pair nca:c4
python - "$OUT" $SEEDS > "$OUT/delta_by_step.md" <<'PY'   # the Δ curves as a table
import sys
sys.path.insert(0, ".")
from eval import load_run
from lab.stats import delta_table
out, seeds = sys.argv[1], sys.argv[2:]
runs = [load_run(f"{out}/code-{a}-s{s}") for s in seeds for a in ("scratch", "nca", "c4")]
print("Δ validation loss against scratch, paired by seed (first 16,384 validation bytes)\n")
print(delta_table(runs), end="")
PY
echo "E6: table in $OUT/eval.md, Δ by step in $OUT/delta_by_step.md, curves in $OUT/curves.png"
