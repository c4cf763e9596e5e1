#!/usr/bin/env bash
# E7, Dyck (web and code): the paper's third pre-pre-training baseline. Does an NCA body beat a
# body warmed up on balanced brackets (k-Dyck), or on shuffle-Dyck, with the same stage-1 budget?
#
# Rules, fixed before the first run:
#   domains: web and code at byte level (data/web_bytes, data/code_bytes).
#   arms (hyper-parameters of --preset cpu throughout; the arms of a seed are paired: same
#   seed, same data order, same fresh embeddings and head; every stage 1 has the same budget,
#   1,048,576 tokens):
#     scratch  stage 2 only (the reference)
#     nca      stage 1 `--preset cpu --stage ppt --rule_seed s --seed s`, band cpu-web for web
#              (E1's nca arm) and `--band cpu-code` for code
#     dyck     stage 1 `--ppt_source dyck` (k = 64, depth <= 16: the official generator's
#              defaults, vocabulary 128), one body per seed for both domains
#     sdyck    the same with --dyck_shuffle (shuffle-Dyck)
#     stage 2: `--preset cpu --stage lang --domain D --lang_tokens 655360`, as E1.
#   seeds: 0-4, all reported. The web scratch and nca runs are E1's (the same commands): with
#     E1_OUT set they are linked, not rerun.
#   endpoint: final validation loss in nats per byte on each domain's validation split, the
#     whole web split (75,269 bytes) and the first 131,072 bytes of code's (eval.py
#     --eval_tokens 131072, capped by each split).
#   primary contrast: nca - dyck, per domain and pooled (a dyck body serves both domains, so a
#     seed is one unit in the pooled row). Secondary: nca - sdyck, dyck - scratch,
#     sdyck - scratch, nca - scratch. Mean, 95% t interval, exact sign-flip p, Holm over every
#     row of the table.
#   reading: as E1 (Holm p < 0.05 with the interval below 0; an interval spanning 0 is
#     undecided).
#
#   OUT=out/e7 E1_OUT=out/e1 SEEDS="0 1 2 3 4" JOBS=2 bash lab/experiments/e7_dyck.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e7}
SEEDS=${SEEDS:-0 1 2 3 4}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes web code
stage1=(); stage2=()
for s in $SEEDS; do
  for name in "nca-seed$s" "web-scratch-s$s" "web-nca-s$s"; do link E1_OUT "$name"; done
  stage1+=("nca-seed$s --stage ppt --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("nca-code-seed$s --stage ppt --band cpu-code --rule_seed $s --seed $s ${PPT[*]-}")
  stage1+=("dyck-seed$s --stage ppt --ppt_source dyck --seed $s ${PPT[*]-}")
  stage1+=("sdyck-seed$s --stage ppt --ppt_source dyck --dyck_shuffle --seed $s ${PPT[*]-}")
  for d in web code; do
    nca=$([ "$d" = code ] && echo nca-code || echo nca)
    common="--stage lang --domain ${d}_bytes --seed $s ${LANG[*]-}"
    stage2+=("$d-scratch-s$s $common")
    stage2+=("$d-nca-s$s $common --init_from $OUT/$nca-seed$s/ckpt.pt --arm nca")
    stage2+=("$d-dyck-s$s $common --init_from $OUT/dyck-seed$s/ckpt.pt --arm dyck")
    stage2+=("$d-sdyck-s$s $common --init_from $OUT/sdyck-seed$s/ckpt.pt --arm sdyck")
  done
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
runs=()
for s in $SEEDS; do
  for d in web code; do for arm in scratch nca dyck sdyck; do runs+=("$OUT/$d-$arm-s$s"); done; done
done
[ "${SMOKE:-0}" = 1 ] || EVAL=(--eval_tokens 131072)
evaluate contrasts.png "${runs[@]}" --domains web_bytes,code_bytes "${EVAL[@]}" --pair nca:dyck \
  --pair nca:sdyck --pair dyck:scratch --pair sdyck:scratch --pair nca:scratch
echo "E7: table in $OUT/eval.md"
