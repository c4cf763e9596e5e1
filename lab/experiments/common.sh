# What the experiment scripts share (sourced once OUT is set): the stage budgets, the SMOKE=1 toy
# budgets that check a script still runs, `run NAME ARGS...`, one resumable training run,
# `link VAR NAME`, reusing another experiment's finished run, `prepare_bytes D...`, and
# `evaluate BARS ARGS...`, the eval.py call that ends each experiment.
if [ "${SMOKE:-0}" = 1 ]; then
  TOY=(--n_layer 1 --n_embd 32 --n_head 2)        # a one-block body: half the cost of a run
  PPT=(--ppt_tokens 16384 --train_num_rules 64 --val_num_rules 8 --ppt_val_seqs 16
       --ppt_eval_interval 2 "${TOY[@]}")
  LANG=(--lang_tokens 8192 --eval_interval 2 --eval_tokens 2048 "${TOY[@]}")
  EVAL=(--eval_tokens 4096)
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
link() {   # link VAR NAME: NAME from the experiment folder in $VAR (if set and NAME is done)
  local from=${!1:-}
  if [ -n "$from" ] && [ -f "$from/$2/done" ] && [ ! -e "$OUT/$2" ]; then
    ln -s "$(cd "$from" && pwd)/$2" "$OUT/$2"
  fi
}
prepare_bytes() {   # prepare_bytes D...: data/D_bytes from data/D's files, unless it is there
  for d in "$@"; do
    [ -f "data/${d}_bytes/meta.json" ] || python "data/$d/prepare.py" --tokenizer bytes > /dev/null
  done
}
evaluate() {   # evaluate BARS ARGS...: eval.py ARGS, written to $OUT (log: $OUT/eval.log); with
               # matplotlib also the curves ($OUT/curves.png) and the contrast bars ($OUT/BARS;
               # none for -)
  local bars=$1 plot=(); shift
  if python -c "import matplotlib" 2>/dev/null; then
    plot=(--plot "$OUT/curves.png")
    [ "$bars" = - ] || plot+=(--plot_contrasts "$OUT/$bars")
  fi
  python eval.py "$@" "${plot[@]}" --out "$OUT" --overwrite > "$OUT/eval.log"
}
