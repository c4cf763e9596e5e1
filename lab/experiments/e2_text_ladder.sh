#!/usr/bin/env bash
# E2, the text ladder (math): a body warmed up on C4 bytes helps math at CPU scale. Is that
# natural-language structure, English byte statistics, or any warm-up at all? Each rung removes
# one kind of structure from the stage-1 text and keeps the rest.
#
# Rules, fixed before the first run:
#   domain: math at byte level (data/math_bytes), where the text effect was tightest.
#   arms (hyper-parameters of --preset cpu throughout; the arms of a seed are paired: same
#   seed, same data order, same fresh embeddings and head; every stage 1 has the same budget,
#   1,048,576 tokens):
#     scratch  stage 2 only (the reference)
#     c4       stage 1 `--ppt_source text --ppt_data data/c4_bytes`, as E1's text arm
#     c4keep   the c4 body with its stage-1 embeddings and head kept (--keep_embeddings): what
#              the reset costs at byte level
#     words    C4 with each document's words in random order (lab/make_controls.py
#              --kind word_shuffle): spelling and word frequencies, no syntax
#     unigram  i.i.d. bytes with C4's byte frequencies (--kind unigram --tokens 1200000)
#     zh       Chinese parables (data/zh/prepare.py --tokenizer bytes --max_tokens 71696: as many
#              train bytes as C4's, so both repeat equally): natural language, other bytes
#     uniform  i.i.d. uniform bytes (--kind uniform --tokens 1200000): no structure at all
#     stage 2: `--preset cpu --stage lang --domain math_bytes --lang_tokens 655360`, as E1.
#   seeds: 0-4, all reported. The c4 stage-1 runs are E1's (text-seedS, the same command) and
#     the uniform ones E3's (the same command on the same bytes): with E1_OUT / E3_OUT set they
#     are linked, not rerun.
#   endpoint: final validation loss in nats per byte on the whole math validation split.
#   primary contrasts: each source - scratch (six rows: mean, 95% t interval, exact sign-flip
#     p, Holm over the six), and the share of C4's gain each keeps, (X - scratch) /
#     (c4 - scratch), with a 95% bootstrap interval (eval.py --pair X:scratch:c4).
#   reading: as E1 (Holm p < 0.05 with the interval below 0; an interval spanning 0 is
#     undecided). A share near 1 says that rung lost nothing C4's gain needs; near 0, all of it.
#
#   OUT=out/e2 E1_OUT=out/e1 E3_OUT=out/e3 SEEDS="0 1 2 3 4" JOBS=2 bash lab/experiments/e2_text_ladder.sh
#   SMOKE=1: toy budgets (about a minute), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/e2}
SEEDS=${SEEDS:-0 1 2 3 4}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
source lab/experiments/common.sh
prepare_bytes math c4
IID=$([ "${SMOKE:-0}" = 1 ] && echo 40000 || echo 1200000)
for kind in words unigram uniform; do
  [ -f "$OUT/$kind/meta.json" ] && continue
  flags=(--kind "${kind/words/word_shuffle}")
  [ "$kind" = words ] || flags+=(--tokens "$IID")
  python lab/make_controls.py data/c4_bytes "${flags[@]}" --out "$OUT/$kind" --overwrite \
    > /dev/null
done
[ -f "$OUT/zh/meta.json" ] || python data/zh/prepare.py --tokenizer bytes --max_tokens 71696 \
  --out_dir "$OUT/zh" > /dev/null
stage1=(); stage2=()
for s in $SEEDS; do
  link E1_OUT "text-seed$s"; link E3_OUT "uniform-seed$s"     # reused, when given
  stage1+=("text-seed$s --stage ppt --ppt_source text --ppt_data data/c4_bytes --seed $s ${PPT[*]-}")
  for src in words unigram zh uniform; do
    stage1+=("$src-seed$s --stage ppt --ppt_source text --ppt_data $OUT/$src --seed $s ${PPT[*]-}")
  done
  common="--stage lang --domain math_bytes --seed $s ${LANG[*]-}"
  stage2+=("math-scratch-s$s $common")
  stage2+=("math-c4-s$s $common --init_from $OUT/text-seed$s/ckpt.pt --arm c4")
  stage2+=("math-c4keep-s$s $common --init_from $OUT/text-seed$s/ckpt.pt --keep_embeddings --arm c4keep")
  for src in words unigram zh uniform; do
    stage2+=("math-$src-s$s $common --init_from $OUT/$src-seed$s/ckpt.pt --arm $src")
  done
done
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
ARMS=(scratch c4 c4keep words unigram zh uniform)
runs=()
for s in $SEEDS; do for arm in "${ARMS[@]}"; do runs+=("$OUT/math-$arm-s$s"); done; done
pairs=(--pair c4:scratch)
for arm in c4keep words unigram zh uniform; do pairs+=(--pair "$arm:scratch:c4"); done
evaluate ladder.png "${runs[@]}" --domains math_bytes ${EVAL[@]+"${EVAL[@]}"} "${pairs[@]}"
echo "E2: table in $OUT/eval.md, ladder in $OUT/ladder.png"
