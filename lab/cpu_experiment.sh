#!/usr/bin/env bash
# The CPU-scale experiment (README "Results at CPU scale"): for web, math and code, a scratch arm,
# an NCA arm and a text arm (the reset-only control: stage 1 on natural text, C4, with the same
# tokens, then the same fresh embeddings and head) per seed; same model, same language budget,
# same hyper-parameters, the arms of a seed paired (same data order, same fresh embeddings and
# head). Stage 1 (one per seed and band, or per seed for text) is shared by the domains. Two jobs
# run side by side, one thread each. CONTROL= (empty) leaves the text arm out.
# Rerunning resumes. Every knob is a variable:
#   bash lab/cpu_experiment.sh                      # byte-level text, 5 seeds, ~90 min
#   TOKENIZER=gpt2 bash lab/cpu_experiment.sh       # GPT-2 tokens (too few steps to learn
#                                                   # much on a CPU: kept for comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENIZER=${TOKENIZER:-bytes}
OUT=${OUT:-out/cpu-$TOKENIZER}
SEEDS=${SEEDS:-"0 1 2 3 4"}
JOBS=${JOBS:-2}
PPT_TOKENS=${PPT_TOKENS:-786432}     # 96 steps of 8,192 NCA tokens (empty: the cpu preset's)
LANG_TOKENS=${LANG_TOKENS:-655360}   # 160 steps of 4,096 bytes (empty: the cpu preset's)
BAND_WEB=${BAND_WEB:-cpu-web}        # stage-1 band for web and math (the paper's 0.5-1.0 at the cpu setting)
BAND_CODE=${BAND_CODE:-cpu-code}      # and for code (the paper's 0.3-0.4 at the cpu setting)
EVAL_TOKENS=${EVAL_TOKENS:-16384}
CONTROL=${CONTROL-text}              # the reset-only control arm ("" = none)
suffix=$([ "$TOKENIZER" = bytes ] && echo _bytes || echo "")
COMMON="--preset cpu --resume --eval_tokens $EVAL_TOKENS --eval_interval ${EVAL_INTERVAL:-16}"
[ -n "$PPT_TOKENS" ] && COMMON="$COMMON --ppt_tokens $PPT_TOKENS"
[ -n "$LANG_TOKENS" ] && COMMON="$COMMON --lang_tokens $LANG_TOKENS"
[ "$TOKENIZER" = gpt2 ] && COMMON="$COMMON --vocab_size 50257"
for d in web math code ${CONTROL:+c4}; do python "data/$d/prepare.py" --tokenizer "$TOKENIZER"; done

run() { log=$1; shift; OMP_NUM_THREADS=1 python train.py $COMMON "$@" > "$log.log" 2>&1 || { echo "failed: $log (see $log.log)"; exit 1; }; }
export -f run; export COMMON
bands=$(printf '%s\n' "$BAND_WEB" "$BAND_CODE" | sort -u)
stage1=(); stage2=(); nca_ppt=()
for s in $SEEDS; do
  for band in $bands; do
    stage1+=("$OUT/ppt-$band-s$s --stage ppt --band $band --seed $s --rule_seed $s --out_dir $OUT/ppt-$band-s$s")
    nca_ppt+=("$OUT/ppt-$band-s$s")
  done
  [ -n "$CONTROL" ] && stage1+=("$OUT/ppt-text-s$s --stage ppt --ppt_source text --ppt_data data/c4$suffix --seed $s --out_dir $OUT/ppt-text-s$s")
  for d in web math code; do
    band=$([ "$d" = code ] && echo "$BAND_CODE" || echo "$BAND_WEB")
    stage2+=("$OUT/$d-scratch-s$s --stage lang --domain $d$suffix --seed $s --out_dir $OUT/$d-scratch-s$s")
    stage2+=("$OUT/$d-nca-s$s --stage lang --domain $d$suffix --seed $s --init_from $OUT/ppt-$band-s$s/ckpt.pt --arm nca --out_dir $OUT/$d-nca-s$s")
    [ -n "$CONTROL" ] && stage2+=("$OUT/$d-text-s$s --stage lang --domain $d$suffix --seed $s --init_from $OUT/ppt-text-s$s/ckpt.pt --arm text --out_dir $OUT/$d-text-s$s")
  done
done
mkdir -p "$OUT"
start=$(date +%s)
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
echo "stage 1: $(( $(date +%s) - start )) s" | tee "$OUT/walltime.txt"
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
echo "training wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/walltime.txt"
PLOT=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $OUT/curves.png" || echo "")
[ -n "$PLOT" ] || echo "matplotlib is not installed: no curves picture (pip install matplotlib)"
arms=(scratch nca $CONTROL)
python eval.py $(for a in "${arms[@]}"; do printf '%s ' "$OUT"/*-"$a"-s*/; done) "${nca_ppt[@]}" \
  --domains "web$suffix,math$suffix,code$suffix" --eval_tokens "$EVAL_TOKENS" --out "$OUT" $PLOT --overwrite
echo "total wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/walltime.txt"
