#!/usr/bin/env bash
# E3, NCA structure (web): does the NCA body help because it learned to infer a rule from the
# frames, or would the same frames without their time order, the same weights without their
# arrangement, or any warm-up at all do as well?
#
# Rules, fixed before the first run:
#   domain: web at byte level (data/web_bytes), as E1.
#   arms (hyper-parameters of --preset cpu throughout; the arms of a seed are paired):
#     scratch   stage 2 only (the reference)
#     nca       stage 1 `--preset cpu --stage ppt --rule_seed s --seed s`, as E1's nca arm
#     shuffled  the same stage 1 with `--frame_order shuffled`: the same rules and frames, each
#               sequence's frames in a random order (no rule left to infer)
#     permuted  the nca arm's stage-1 checkpoint with every tensor's entries shuffled
#               (lab/permute_body.py --seed s): same norms and values, no circuits
#     uniform   stage 1 on i.i.d. uniform bytes (lab/make_controls.py data/c4_bytes --kind
#               uniform --tokens 1200000, as many tokens as the stage-1 budget and more)
#     stage 2: `--preset cpu --stage lang --domain web_bytes --lang_tokens 655360`, as E1.
#   seeds: 0-7, all reported. The scratch and nca runs are E1's (the same commands): with
#     E1_OUT set to E1's folder they are linked, not rerun.
#   endpoint: final validation loss in nats per byte on the whole web validation split.
#   primary contrast: nca - shuffled. Secondary: nca - scratch, shuffled - scratch,
#     permuted - scratch, uniform - scratch. Mean, 95% t interval, exact sign-flip p, Holm over
#     the five rows of the table.
#   reading: as E1 (Holm p < 0.05 with the interval below 0; an interval spanning 0 is
#     undecided).
#
#   OUT=out/e3 E1_OUT=out/e1 SEEDS="0 1 2 3 4 5 6 7" JOBS=2 bash lab/experiments/e3_nca_structure.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e3}
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes web c4
IID=$([ "${SMOKE:-0}" = 1 ] && echo 40000 || echo 1200000)
[ -f "$OUT/uniform/meta.json" ] || python lab/make_controls.py data/c4_bytes --kind uniform \
  --tokens "$IID" --out "$OUT/uniform" --overwrite > /dev/null
stage1=(); stage2=()
for s in $SEEDS; do
  for name in "nca-seed$s" "web-scratch-s$s" "web-nca-s$s"; do link E1_OUT "$name"; done
  stage1+=("nca-seed$s --stage ppt --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("shuffled-seed$s --stage ppt --rule_seed $s --seed $s --frame_order shuffled ${PPT[*]-}")
  stage1+=("uniform-seed$s --stage ppt --ppt_source text --ppt_data $OUT/uniform --seed $s ${PPT[*]-}")
  common="--stage lang --domain web_bytes --seed $s ${LANG[*]-}"
  stage2+=("web-scratch-s$s $common")
  stage2+=("web-nca-s$s $common --init_from $OUT/nca-seed$s/ckpt.pt --arm nca")
  stage2+=("web-shuffled-s$s $common --init_from $OUT/shuffled-seed$s/ckpt.pt --arm shuffled")
  stage2+=("web-permuted-s$s $common --init_from $OUT/permuted-seed$s.pt --arm permuted")
  stage2+=("web-uniform-s$s $common --init_from $OUT/uniform-seed$s/ckpt.pt --arm uniform")
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
for s in $SEEDS; do
  [ -f "$OUT/permuted-seed$s.pt" ] || python lab/permute_body.py "$OUT/nca-seed$s/ckpt.pt" \
    "$OUT/permuted-seed$s.pt" --seed "$s" > /dev/null
done
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
runs=()
for s in $SEEDS; do
  for arm in scratch nca shuffled permuted uniform; do runs+=("$OUT/web-$arm-s$s"); done
done
evaluate - "${runs[@]}" --domains web_bytes ${EVAL[@]+"${EVAL[@]}"} --pair nca:shuffled \
  --pair nca:scratch --pair shuffled:scratch --pair permuted:scratch --pair uniform:scratch
echo "E3: table in $OUT/eval.md"
