# What the experiment scripts share (sourced once OUT is set): the stage budgets, the SMOKE=1 toy
# budgets that check a script still runs, and `run NAME ARGS...`, one resumable training run.
if [ "${SMOKE:-0}" = 1 ]; then
  PPT=(--ppt_tokens 16384 --train_num_rules 64 --val_num_rules 8 --ppt_val_seqs 16
       --ppt_eval_interval 1)
  LANG=(--lang_tokens 16384 --eval_interval 2 --eval_tokens 2048); EVAL=(--eval_tokens 4096)
else
  PPT=(); LANG=(--lang_tokens 655360); EVAL=(--eval_tokens 0)
fi
export OUT
run() {   # run NAME ARGS...: one training run, skipped once done; its log is $OUT/NAME.log
  name=$1; shift
  [ -f "$OUT/$name/done" ] && return 0
  OMP_NUM_THREADS=1 python train.py --preset cpu "$@" --out_dir "$OUT/$name" --resume \
    > "$OUT/$name.log" 2>&1 || { echo "failed: $OUT/$name.log"; return 1; }
  touch "$OUT/$name/done"
  echo "$name done"
}
export -f run
