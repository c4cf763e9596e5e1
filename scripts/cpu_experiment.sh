#!/usr/bin/env bash
# The CPU-scale reproduction (README "Results at CPU scale"): for web, math and code, a scratch
# arm and an NCA arm, 3 seeds each, same model, same language budget, same hyper-parameters.
# Stage 1 is shared by the domains that use the same complexity band (web and math: 0.5-1.0;
# code: 0.3-0.4, as the paper). Two jobs run side by side, one thread each. Rerunning resumes.
#   bash scripts/cpu_experiment.sh          # about an hour on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/cpu}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
PPT_TOKENS=${PPT_TOKENS:-393216}     # 48 steps of 8,192 NCA tokens
LANG_TOKENS=${LANG_TOKENS:-65536}    # 16 steps of 4,096 language tokens
COMMON="--preset cpu --resume --eval_interval 4 --eval_tokens 16384"
for d in web math code; do python "data/$d/prepare.py"; done

run() { log=$1; shift; OMP_NUM_THREADS=1 python train.py $COMMON "$@" > "$log.log" 2>&1 || { echo "failed: $log"; exit 1; }; }
export -f run; export COMMON
stage1=(); stage2=()
for s in $SEEDS; do
  for band in web code; do
    stage1+=("$OUT/ppt-$band-s$s --stage ppt --band $band --seed $s --rule_seed $s --ppt_tokens $PPT_TOKENS --out_dir $OUT/ppt-$band-s$s")
  done
  for d in web math code; do
    band=$([ "$d" = code ] && echo code || echo web)
    stage2+=("$OUT/$d-scratch-s$s --stage lang --domain $d --seed $s --lang_tokens $LANG_TOKENS --out_dir $OUT/$d-scratch-s$s")
    stage2+=("$OUT/$d-nca-s$s --stage lang --domain $d --seed $s --lang_tokens $LANG_TOKENS --init_from $OUT/ppt-$band-s$s/ckpt.pt --arm nca --out_dir $OUT/$d-nca-s$s")
  done
done
mkdir -p "$OUT"
start=$(date +%s)
printf '%s\n' "${stage1[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '%s\n' "${stage2[@]}" | xargs -P "$JOBS" -I{} bash -c 'run {}'
echo "training wall time: $(( $(date +%s) - start )) s" | tee "$OUT/walltime.txt"
PLOT=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $OUT/curves.png" || echo "")
[ -n "$PLOT" ] || echo "matplotlib is not installed: no curves picture (pip install matplotlib)"
python eval.py "$OUT"/*-scratch-s*/ "$OUT"/*-nca-s*/ --domains web,math,code --eval_tokens 16384 \
  --out "$OUT" $PLOT --overwrite
