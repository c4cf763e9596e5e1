#!/usr/bin/env bash
# Induction readiness over seeds: does stage 1 leave a body that learns in-context copying faster
# than a fresh body does, and faster than a body warmed up on natural text?
#
# Rules, fixed before the first run:
#   bodies (the tiny model of --preset cpu, same stage-1 budget for both warm-ups):
#     scratch  a fresh body of the same size and seed
#     nca      `--preset cpu --stage ppt` (4 colours, 8x8 grid, 2x2 patches, band cpu-web, the
#              preset's 1,048,576 NCA tokens), model seed = rule seed
#     text     the same command with `--ppt_source text --ppt_data data/c4_bytes` (the embedded C4
#              documents at byte level, the same number of tokens)
#   seeds: 0, 1, 2, 3, 4; every seed is reported.
#   test: lab/induction_readiness.py at its defaults (K = 64 symbols, L = 32 tokens per copy,
#     at most 300 AdamW steps of 32 sequences at lr 1e-3, evaluated every 10 steps on a fixed
#     held-out batch), fresh embeddings and head for every body.
#   endpoint: steps until the second-copy loss is below half of ln 64 (a body that never gets
#     there counts as 300, and is reported as censored).
#   primary contrast: nca - scratch steps, paired by seed: mean, 95% t interval, exact sign-flip p.
#   secondary: text - scratch (same analysis); nca - text read from the per-seed lists.
#
#   OUT=out/readiness SEEDS="0 1 2 3 4" bash lab/experiments/induction_readiness.sh
#   SMOKE=1: toy budgets (a minute or two), to check the script still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/readiness}
SEEDS=${SEEDS:-0 1 2 3 4}
mkdir -p "$OUT"
python data/c4/prepare.py --tokenizer bytes > /dev/null
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=(--ppt_tokens 16384 --train_num_rules 64 --val_num_rules 8 --ppt_val_seqs 16
          --ppt_eval_interval 1); TEST=(--steps 20)
else
  BUDGET=(); TEST=()
fi
nca=(); text=()
for seed in $SEEDS; do
  for arm in nca text; do
    run="$OUT/$arm-seed$seed"
    extra=(--rule_seed "$seed")
    [ "$arm" = text ] && extra=(--ppt_source text --ppt_data data/c4_bytes)
    if [ ! -f "$run/done" ]; then
      start=$(date +%s)
      python train.py --preset cpu --stage ppt "${extra[@]}" ${BUDGET[@]+"${BUDGET[@]}"} --seed "$seed" \
        --out_dir "$run" --resume > "$OUT/$arm-seed$seed.log" 2>&1
      echo "$(( $(date +%s) - start ))" > "$run/done"
      echo "stage 1 $arm seed $seed: $(cat "$run/done") s"
    fi
  done
  nca+=("nca=$OUT/nca-seed$seed"); text+=("text=$OUT/text-seed$seed")
done
# shellcheck disable=SC2086
python lab/induction_readiness.py "${nca[@]}" "${text[@]}" --scratch --size tiny \
  --seeds $SEEDS ${TEST[@]+"${TEST[@]}"} --out "$OUT/readiness.json" | tee "$OUT/readiness.md"
