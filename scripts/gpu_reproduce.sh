#!/usr/bin/env bash
# One-GPU reproduction in three tiers (README "Reproduction on one GPU", docs/gpu.md).
#   bash scripts/gpu_reproduce.sh [--tier smoke|hour|full] [--out DIR]
#   DEVICE=cpu bash scripts/gpu_reproduce.sh --tier smoke|hour --out DIR   # CPU dry run, toy size
#
# smoke  (~10 minutes on one H100, no network; needs the embedded corpora and the cached GPT-2
#        tokenizer, i.e. `python data/web/prepare.py` run beforehand): the GPU check's figures
#        (DIR/gpu_check.json, its --time_limit inside the stage's box), stage 1 on the paper's
#        NCA (12x12 grid, 10 colours, --band web) with its curve against copy and lookup on
#        held-out rules, the scratch and NCA arms for a few dozen steps on the embedded web corpus
#        (plumbing, no claim), and eval.py. Default DIR: out/gpu-smoke.
# hour   (~60 minutes on one H100 with internet, an estimate): the three corpora from the Hub
#        (DATA_TOKENS each, into DIR/data); for each of SEEDS one stage-1 body per band (gpu
#        preset's model, PPT_TOKENS each, rule bank and init of that seed); the gate (every body
#        beats copying by GATE_MARGIN of token accuracy on held-out rules, else it says so, names
#        the remedy and stops); the scratch and NCA arms of web, math and code for each seed
#        (LANG_TOKENS each); eval.py's paired contrasts (--pair nca:scratch: per domain and
#        pooled, intervals, exact sign-flip p, Holm), curves and speedups. Default DIR:
#        out/gpu-hour. Why these sizes: 4 seeds x 3 domains x 2 arms = 24 language runs of 21M
#        tokens (320 steps of 65,536) and 8 bodies of 4.2M NCA tokens (256 steps of 16,384) are
#        what fits an hour at the estimated rates (docs/gpu.md). Stage 1 is 20% of a language
#        run: the paper's 1.3-3.9% would be 0.3-0.8M tokens, 17-50 steps, too few for a body to
#        learn beyond copying. One body per seed, because eval.py pairs by body: 4 seeds on one
#        body would be one unit. Short runs warm up 10% then decay (cosine; stage-1 lr 6e-4):
#        the official constant-after-a-full-warmup stage 1 is built for 5,000 steps.
# full   (~12 hours, an estimate): today's reproduction at GPT-2-small scale; 3B tokens per corpus,
#        164M NCA tokens per band, 2.6B tokens per language run (LANG_TOKENS, DATA_TOKENS, SEED).
#        Default DIR: out/gpu (or $OUT).
#
# Every stage of smoke and hour is time-boxed (`timeout`) and records DIR/status/STAGE (ok,
# timeout or failed, with its seconds) and DIR/logs/STAGE.log; its results stay under DIR as
# they are written, so a run killed at its limit keeps what finished, and rerunning skips the
# stages that are ok and resumes the rest (train.py --resume). A stage whose input did not finish
# is skipped and says so. Exit status 0 only when every stage is ok.
# Knobs (environment): DEVICE (auto, or cpu for the dry run), PYTHON, SEEDS, PPT_TOKENS, PPT_LR,
# LANG_TOKENS, DATA_TOKENS, GATE_MARGIN, GATE_STOP (1: a failed gate stops; the dry run's default
# is 0, so every later step is exercised), CHECK_STEPS (gpu_check --steps), and the time boxes
# CHECK_S, PPT_S, LANG_S, DATA_S, EVAL_S (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=full
OUT_ARG=
while [ $# -gt 0 ]; do
  case $1 in
    --tier|--out)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --tier ]; then TIER=$2; else OUT_ARG=$2; fi
      shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (usage: --tier smoke|hour|full [--out DIR])" >&2; exit 2 ;;
  esac
done
case $TIER in
  smoke|hour|full) ;;
  *) echo "error: --tier $TIER: choose smoke, hour or full" >&2; exit 2 ;;
esac
source scripts/find_python.sh        # PY: the first of $PYTHON, python, python3 with torch
DEVICE=${DEVICE:-auto}
case $DEVICE in
  auto|cuda*) DRY=0 ;;
  cpu) DRY=1 ;;
  *) echo "error: DEVICE=$DEVICE: auto (the GPU) or cpu (the dry run)" >&2; exit 2 ;;
esac

if [ "$TIER" = full ]; then             # today's reproduction, unchanged
  [ "$DRY" = 0 ] || { echo "error: DEVICE=cpu: the dry runs are --tier smoke and --tier hour" >&2
                      exit 2; }
  OUT=${OUT_ARG:-${OUT:-out/gpu}}
  SEED=${SEED:-0}
  LANG_TOKENS=${LANG_TOKENS:-2621440000}        # 5,000 steps of 524,288 tokens per run
  DATA_TOKENS=${DATA_TOKENS:-3000000000}        # tokens to prepare per domain
  for d in web math code; do
    [ -f "data/$d/meta.json" ] && grep -q '"source": "hf"' "data/$d/meta.json" &&
      grep -q '"max_token"' "data/$d/meta.json" ||
      "$PY" "data/$d/prepare.py" --source hf --max_tokens "$DATA_TOKENS" --num_proc 16
  done
  for band in web code; do
    "$PY" train.py --preset gpu --stage ppt --band "$band" --seed "$SEED" --rule_seed "$SEED" \
      --out_dir "$OUT/ppt-$band" --resume
  done
  for d in web math code; do
    band=$([ "$d" = code ] && echo code || echo web)
    "$PY" train.py --preset gpu --stage lang --domain "$d" --seed "$SEED" \
      --lang_tokens "$LANG_TOKENS" --out_dir "$OUT/$d-scratch" --resume
    "$PY" train.py --preset gpu --stage lang --domain "$d" --seed "$SEED" \
      --lang_tokens "$LANG_TOKENS" --init_from "$OUT/ppt-$band/ckpt.pt" --out_dir "$OUT/$d-nca" \
      --resume
  done
  PLOT=$("$PY" -c "import matplotlib" 2>/dev/null && echo "--plot $OUT/curves.png" || echo "")
  "$PY" eval.py "$OUT"/*-scratch/ "$OUT"/*-nca/ --domains web,math,code --out "$OUT" $PLOT \
    --overwrite
  exit 0
fi

OUT=${OUT_ARG:-out/gpu-$TIER}
mkdir -p "$OUT/status" "$OUT/logs"
T0=$(date +%s)
# Sizes: the GPU's, or the dry run's toy model and budgets (the same steps and flags otherwise).
if [ "$DRY" = 1 ]; then
  TOY=(--size tiny --n_layer 1 --n_head 2 --n_embd 32 --seq_len 256 --no-compile)
  PPT_RULES=(--train_num_rules 32 --val_num_rules 8 --ppt_val_seqs 8 --ppt_vocab_size 0)
  PPT_BATCH=1024; PPT_EVAL=4; LANG_BATCH=1024; LANG_EVAL=4; LANG_EVAL_TOKENS=1024; ARM_VAL=1024
  CHECK=(--no-compile); EVAL=(--eval_tokens 1024 --nca_val_seqs 8)
  PPT_TOKENS=${PPT_TOKENS:-8192}; LANG_TOKENS=${LANG_TOKENS:-4096}; SEEDS=${SEEDS:-0 1}
  BOXES=(120 120 120 120 60); GATE_STOP=${GATE_STOP:-0}; SMOKE_EAGER=()
  # The byte-level embedded corpora (data/D_bytes): GPT-2's 50,257-token head makes every
  # validation's copy probes about half a minute on 2 cores; the steps are the same.
  BYTES=_bytes
else
  TOY=()
  PPT_RULES=(--train_num_rules 4096 --val_num_rules 256 --ppt_val_seqs 512)
  PPT_BATCH=16384; PPT_EVAL=32; LANG_BATCH=65536; LANG_EVAL=64; LANG_EVAL_TOKENS=1048576
  ARM_VAL=16384                                 # the smoke arms: all of the embedded web val
  CHECK=(); EVAL=(--eval_tokens 1048576)
  PPT_TOKENS=${PPT_TOKENS:-4194304}             # 256 steps of 16,384 NCA tokens per body
  LANG_TOKENS=${LANG_TOKENS:-20971520}          # 320 steps of 65,536 tokens per language run
  SEEDS=${SEEDS:-0 1 2 3}
  GATE_STOP=${GATE_STOP:-1}
  # Time boxes (check, stage 1, one language run, eval, one corpus), each about twice its
  # estimate (docs/gpu.md). Smoke: 330 + 120 + 2 x 40 + 60 = 590 s; its runs are eager, as
  # compiling a 12-layer model takes about a minute that ten minutes cannot spare.
  if [ "$TIER" = smoke ]; then BOXES=(330 120 40 60 0); else BOXES=(0 900 300 600 1200); fi
  SMOKE_EAGER=(--no-compile); BYTES=
fi
CHECK_S=${CHECK_S:-${BOXES[0]}}; PPT_S=${PPT_S:-${BOXES[1]}}; LANG_S=${LANG_S:-${BOXES[2]}}
EVAL_S=${EVAL_S:-${BOXES[3]}}; DATA_S=${DATA_S:-${BOXES[4]}}
PPT_LR=${PPT_LR:-6e-4}
GATE_MARGIN=${GATE_MARGIN:-0.05}
DATA_TOKENS=${DATA_TOKENS:-50000000}           # hour: train tokens prepared per domain
SHORT=(--ppt_lr "$PPT_LR" --ppt_warmup_frac 0.1 --ppt_schedule cosine
       --ppt_batch_tokens "$PPT_BATCH"
       --ppt_eval_interval "$PPT_EVAL" "${PPT_RULES[@]}")
LANG=(--batch_tokens "$LANG_BATCH" --eval_interval "$LANG_EVAL" --eval_tokens "$LANG_EVAL_TOKENS")
GPU=(--preset gpu --device "$([ "$DRY" = 1 ] && echo cpu || echo auto)" "${TOY[@]}")
ALL_OK=1

status() { cut -d' ' -f1 "$OUT/status/$1" 2>/dev/null || echo "not run"; }
record() {   # record NAME STATUS TEXT: DIR/status/NAME, written whole (a kill leaves the old one)
  echo "$2 $3" > "$OUT/status/$1.tmp" && mv "$OUT/status/$1.tmp" "$OUT/status/$1"
}
stage() {   # stage NAME SECONDS NEEDS CMD...: CMD time-boxed, unless ok before or NEEDS not ok
  local name=$1 secs=$2 needs=$3 rc=0 t need
  shift 3
  if [ "$(status "$name")" = ok ]; then echo "== $name: ok before ($(cat "$OUT/status/$name"))"
    return 0; fi
  for need in ${needs//,/ }; do
    if [ "$need" != - ] && [ "$(status "$need")" != ok ]; then
      record "$name" skipped "(needs $need: $(status "$need"))"
      echo "== $name: skipped (needs $need: $(status "$need"))"; ALL_OK=0; return 0
    fi
  done
  echo "== $(date +%H:%M:%S) (+$(( $(date +%s) - T0 )) s) $name (time box $secs s; log" \
       "$OUT/logs/$name.log)"
  t=$(date +%s)
  timeout --kill-after=30 "$secs" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
  t=$(( $(date +%s) - t ))
  case $rc in
    0) record "$name" ok "$t s" ;;
    124|137) record "$name" timeout "after $t s (time box $secs s)"; ALL_OK=0 ;;
    *) record "$name" failed "exit $rc after $t s"; ALL_OK=0 ;;
  esac
  echo "== $name: $(cat "$OUT/status/$name")"
  [ "$rc" = 0 ] || tail -n 3 "$OUT/logs/$name.log" | sed 's/^/   /'
}
slim() {   # slim RUN: a finished run's checkpoint without its optimizer state (two thirds of
           # it): 8 bodies and 24 language runs keep ~27 GB instead of ~75 GB (docs/gpu.md)
  "$PY" -c "import sys, torch; sys.path.insert(0, '.'); from model import save_checkpoint
ck = torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)
'optimizer' in ck and save_checkpoint({k: v for k, v in ck.items() if k != 'optimizer'},
                                      sys.argv[1])" "$1/ckpt.pt"
}
finish() {   # the stage table; exit 0 only when every stage is ok
  echo "== $TIER tier: $(( $(date +%s) - T0 )) s; stages (DIR/status):"
  for f in "$OUT"/status/*; do [ -f "$f" ] && echo "   $(basename "$f"): $(cat "$f")"; done
  [ -f "$OUT/eval/eval.md" ] && echo "== table: $OUT/eval/eval.md"
  [ "$ALL_OK" = 1 ]
  exit $?
}
PLOT=()
"$PY" -c "import matplotlib" 2>/dev/null && PLOT=(--plot "$OUT/eval/curves.png")

if [ "$TIER" = smoke ]; then
  stage check "$CHECK_S" - "$PY" scripts/gpu_check.py --device "${GPU[3]}" \
    --out "$OUT/gpu_check.json" --overwrite --time_limit $(( CHECK_S - 10 )) \
    ${CHECK_STEPS:+--steps "$CHECK_STEPS"} "${CHECK[@]}"
  stage stage1 "$PPT_S" - "$PY" train.py "${GPU[@]}" "${SMOKE_EAGER[@]}" --stage ppt --band web \
    --ppt_tokens "$PPT_TOKENS" "${SHORT[@]}" --out_dir "$OUT/ppt" --resume
  [ -f "$OUT/ppt/metrics.jsonl" ] && { "$PY" scripts/stage1_gate.py "$OUT/ppt" \
    --margin "$GATE_MARGIN" > "$OUT/stage1_curve.md" || true; cat "$OUT/stage1_curve.md"; }
  # both arms: a few dozen steps on the embedded web corpus (plumbing, no claim)
  STEPS2=(--lang_tokens $(( 32 * LANG_BATCH / 4 )) --domain "web$BYTES" --data_dir "data/web$BYTES")
  stage scratch "$LANG_S" - "$PY" train.py "${GPU[@]}" "${SMOKE_EAGER[@]}" --stage lang \
    "${STEPS2[@]}" \
    --batch_tokens $(( LANG_BATCH / 4 )) --eval_interval 8 --eval_tokens "$ARM_VAL" \
    --out_dir "$OUT/scratch" --resume
  stage nca "$LANG_S" stage1 "$PY" train.py "${GPU[@]}" "${SMOKE_EAGER[@]}" --stage lang \
    "${STEPS2[@]}" \
    --batch_tokens $(( LANG_BATCH / 4 )) --eval_interval 8 --eval_tokens "$ARM_VAL" \
    --init_from "$OUT/ppt/ckpt.pt" --out_dir "$OUT/nca" --resume
  stage eval "$EVAL_S" scratch,nca,stage1 "$PY" eval.py "$OUT/scratch" "$OUT/nca" "$OUT/ppt" \
    --domains "web$BYTES" --device "${GPU[3]}" "${EVAL[@]}" --out "$OUT/eval" --overwrite \
    "${PLOT[@]}"
  finish
fi

# ---- hour
if [ "$DRY" = 1 ]; then DATA_ROOT=data; else DATA_ROOT=$OUT/data; fi
for d in web math code; do
  if [ "$DRY" = 1 ]; then        # the embedded corpora stand in for the Hub download
    stage "data-$d" "$DATA_S" - test -f "data/$d$BYTES/meta.json"
  else
    stage "data-$d" "$DATA_S" - "$PY" "data/$d/prepare.py" --source hf --max_tokens "$DATA_TOKENS" \
      --num_proc 16 --out_dir "$DATA_ROOT/$d"
  fi
done
# One body per band and seed (rule bank and init of that seed): eval.py pairs by the stage-1
# body, so bodies shared across seeds would leave one unit per band for the statistics.
BODIES=()
for s in $SEEDS; do
  for band in web code; do
    stage "ppt-$band-s$s" "$PPT_S" - "$PY" train.py "${GPU[@]}" --stage ppt --band "$band" \
      --seed "$s" --rule_seed "$s" --ppt_tokens "$PPT_TOKENS" "${SHORT[@]}" \
      --out_dir "$OUT/ppt-$band-s$s" --resume
    BODIES+=("$OUT/ppt-$band-s$s")
  done
done
# The gate, fixed before any language run: every body beats copying on held-out rules.
NEEDS=$(printf 'ppt-%s,' $(for s in $SEEDS; do echo "web-s$s code-s$s"; done))
BEFORE=$ALL_OK
stage gate 60 "${NEEDS%,}" "$PY" scripts/stage1_gate.py "${BODIES[@]}" --margin "$GATE_MARGIN"
cat "$OUT/logs/gate.log"
if [ "$(status gate)" != ok ]; then
  if [ "$GATE_STOP" = 1 ]; then echo "== stopped at the gate (GATE_STOP=1)"; finish; fi
  # GATE_STOP=0 (the dry run's toy bodies do not beat copying): recorded, and every later step
  # runs; a rerun checks the gate again.
  [ "$(status gate)" = failed ] && { record gate not_met "(GATE_STOP=0: went on)"; ALL_OK=$BEFORE; }
  echo "== gate: $(cat "$OUT/status/gate")"
fi
for body in "${BODIES[@]}"; do slim "$body"; done      # finished: no stage-1 resume needed
for d in web math code; do
  band=$([ "$d" = code ] && echo code || echo web)
  for s in $SEEDS; do
    for arm in scratch nca; do
      init=(); needs=data-$d
      if [ "$arm" = nca ]; then
        init=(--init_from "$OUT/ppt-$band-s$s/ckpt.pt"); needs+=,ppt-$band-s$s
      fi
      stage "$d-$arm-s$s" "$LANG_S" "$needs" "$PY" train.py "${GPU[@]}" --stage lang \
        --domain "$d$BYTES" --data_dir "$DATA_ROOT/$d$BYTES" --seed "$s" \
        --lang_tokens "$LANG_TOKENS" "${LANG[@]}" \
        --ckpt_interval -1 "${init[@]}" --out_dir "$OUT/runs/$d-$arm-s$s" --resume
      [ "$(status "$d-$arm-s$s")" = ok ] && slim "$OUT/runs/$d-$arm-s$s"
    done
  done
done
stage eval "$EVAL_S" - "$PY" eval.py "$OUT"/runs/*/ --domains "web$BYTES,math$BYTES,code$BYTES" \
  --data_root "$DATA_ROOT" --pair nca:scratch --device "${GPU[3]}" "${EVAL[@]}" \
  --out "$OUT/eval" --overwrite "${PLOT[@]}"
[ -f "$OUT/eval/eval.md" ] && sed -n '/^Paired/,$p' "$OUT/eval/eval.md" | head -n 20
finish
