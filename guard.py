"""The refusals of a command's inputs, beside the road (a reader refuses what it cannot read
where it reads it: util, data/, model.load_checkpoint, scripts/hf.py). The method files decide
what they run; this module is handed what they decided and passes or raises util.UserError with
one line that says what to change (util.cli prints it as the "error:" line). It decides nothing.

  check_flags, check_plan, train_run    train.py (below: what each checks)
  check_eval_outputs, check_pairs, ...  eval.py (eval.plan_eval, before any model runs): its
                                        outputs, the runs, their checkpoints, the data folders
  check_nca(cfg, band)                  the NCA generator's settings (the NCA source's check in
                                        train.py, and scripts/nca_tools.py)

The checks read only metadata (meta.json, memory-mapped checkpoints). A refused command changes
nothing on disk, so its corrected retry is not refused because of the first attempt.
"""
import contextlib
import os
import re
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from data.common import load_meta, load_tokens, max_token, scan_max_token, show
from model import ARCH, SIZES, GPTConfig, load_checkpoint, model_config
from util import (UserError, check_dtype, check_writable, default_device, pid_alive, pyplot,
                  read_metrics, stage_flag, sweep_temporaries)
from util.log import wandb_ready
from util.runs import RUN_FILES

AT_LEAST = {"seq_len": 1, "log_interval": 1, "batch_tokens": 1, "micro_batch": 0,
            "eval_interval": 1, "ppt_batch_tokens": 1, "ppt_micro_batch": 0,
            "ppt_eval_interval": 1, "ppt_val_seqs": 1, "train_num_rules": 1, "val_num_rules": 1,
            "n_layer": 1, "n_head": 1, "n_embd": 1, "mlp_hidden": 1, "ppt_tokens": 0,
            "lang_tokens": 0, "max_iters": 0, "eval_tokens": 0, "ppt_vocab_size": 0,
            "loss_chunk": 1}
ZERO_MEANS = {"ppt_tokens": "no stage 1", "lang_tokens": "one epoch of train.bin",
              "max_iters": "the token budget", "eval_tokens": "the whole val split",
              "ppt_vocab_size": "the source's own size",
              "micro_batch": "chosen from a memory estimate",
              "ppt_micro_batch": "chosen from a memory estimate"}
FLOAT_RULES = [(name, test, want) for names, test, want in (
    (("lr", "ppt_lr"), lambda v: v > 0, "above 0"),
    (("weight_decay", "ppt_weight_decay", "grad_clip", "ppt_grad_clip"), lambda v: v >= 0,
     "at least 0"),
    (("warmup_frac", "ppt_warmup_frac"), lambda v: 0 <= v <= 1, "from 0 to 1"),
    (("attn_dropout",), lambda v: 0 <= v < 1, "at least 0 and below 1"),
    (("adam_beta1", "adam_beta2"), lambda v: 0 <= v < 1, "at least 0 and below 1"),
    (("adam_eps", "rope_theta", "norm_eps"), lambda v: v > 0, "above 0")) for name in names]


# -----------------------------------------------------------------------------------------------
# train.py: check_flags (the flags alone), check_plan (what train.plan_run decided against the
# data and checkpoints it reads), train_run (memory and --resume; then the folders are locked)

def check_flags(cfg, world, source):
    """Each flag on its own and in combination; nothing is read from disk."""
    for name, lo in AT_LEAST.items():
        v = getattr(cfg, name)
        if v is not None and v < lo:
            zero = f" (0 = {ZERO_MEANS[name]})" if name in ZERO_MEANS else ""
            raise UserError(f"--{name} must be at least {lo}{zero}, got {v}")
    for name, test, want in FLOAT_RULES:              # (a NaN fails every test)
        if not test(getattr(cfg, name)):
            raise UserError(f"--{name} must be {want}, got {getattr(cfg, name)}")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues the run in out_dir and --overwrite replaces it: "
                        "pass one of them")
    if cfg.stage == "ppt" and cfg.ppt_tokens == 0:
        raise UserError("--stage ppt with --ppt_tokens 0 has nothing to train: give it a "
                        "stage-1 token budget")
    if cfg.init_from and cfg.stage != "lang":
        raise UserError(f"--init_from is for --stage lang (--stage {cfg.stage} "
                        + ("trains its own stage 1 and starts stage 2 from it)"
                           if cfg.stage == "both" else "always starts from scratch)"))
    check_stage2_flags(cfg)
    if cfg.wandb_run and not cfg.wandb_project:
        raise UserError("--wandb_run names a run in a --wandb_project: give the project too")
    if cfg.wandb_project:              # installed and logged in? (now, not once training runs)
        wandb_ready()
    runs = (["ppt"] if source is not None else []) + (["lang"] if cfg.stage != "ppt" else [])
    for stage in runs:
        check_batch(cfg, stage, world)
    if not cfg.init_from:               # (with --init_from the checkpoint sets the shape)
        check_model(model_config(cfg, 1, head_bias=False))
    check_dtype(cfg.dtype, default_device(cfg.device))   # no CUDA call before ranks pick GPUs
    check_writable(cfg.out_dir, "--out_dir")           # before anything is read or computed


def check_stage2_flags(cfg):
    stage2 = [f for f in ("reinit", "reinit_layers", "freeze", "freeze_layers",
                          "keep_embeddings") if getattr(cfg, f)]
    if cfg.stage == "ppt" and stage2:
        raise UserError(f"--{stage2[0]} is a stage-2 flag, but --stage ppt has no stage 2")
    for flag in ("reinit", "freeze"):
        kinds(getattr(cfg, flag))
        layers = getattr(cfg, f"{flag}_layers")
        if layers and not getattr(cfg, flag):
            raise UserError(f"--{flag}_layers {layers} needs --{flag} (which modules: attn, mlp, "
                            "ln)")
        if layers and not re.fullmatch(r"\d+:\d+", layers):
            raise UserError(f"layer range {layers!r} must look like a:b, e.g. 0:4")
    if cfg.keep_embeddings:
        if cfg.stage == "lang" and not cfg.init_from:
            raise UserError("--keep_embeddings needs --init_from (a stage-1 text checkpoint)")
        if cfg.stage == "both" and (cfg.ppt_source != "text" or not cfg.ppt_tokens):
            raise UserError("--keep_embeddings keeps a stage-1 text model's embeddings: it needs "
                            "--ppt_source text and a stage 1 (--ppt_tokens > 0)")


def check_batch(cfg, stage, world):
    """The batch splits into micro-batches of whole sequences on every process, and the budget
    holds at least one batch."""
    batch, micro, tokens = (getattr(cfg, stage_flag(stage, k)) for k in
                            ("batch_tokens", "micro_batch", "tokens"))
    bflag, mflag = "--" + stage_flag(stage, "batch_tokens"), "--" + stage_flag(stage, "micro_batch")
    per_step = max(micro, 1) * cfg.seq_len * world    # 0: train.py picks one
    if batch % per_step:
        what = f"{mflag} x --seq_len x processes = {micro} x " if micro else \
            "--seq_len x processes = "
        raise UserError(f"{bflag} {batch:,} is not a multiple of {what}{cfg.seq_len} "
                        f"x {world} = {per_step:,}: adjust the batch or the micro-batch")
    if tokens and tokens < batch:
        raise UserError(f"the {stage} token budget {tokens:,} is less than one batch of "
                        f"{batch:,} ({bflag}): raise the budget or lower the batch")


def kinds(text):
    out = [k for k in text.split(",") if k]
    for k in out:
        if k not in ("attn", "mlp", "ln"):
            raise UserError(f"unknown module kind {k!r} in --reinit/--freeze: use attn, mlp, ln")
    return out


def check_model(config):
    """A GPTConfig the model can be built from (a clear refusal instead of a shape error deep
    inside torch)."""
    for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "mlp_hidden"):
        v = getattr(config, name)
        if not (v is None and name == "mlp_hidden") and not (isinstance(v, int) and v >= 1):
            raise UserError(f"{name} must be a whole number of at least 1, got {v!r}")
    if config.n_embd % config.n_head or (config.n_embd // config.n_head) % 2:
        raise UserError(f"n_embd {config.n_embd} must be n_head {config.n_head} times an even "
                        "head size (RoPE rotates pairs of dimensions): change n_embd or n_head")
    if not 0 <= config.attn_dropout < 1:
        raise UserError(f"attn_dropout must be in [0, 1), got {config.attn_dropout}")
    return config


def check_plan(args, given, cfg, plan, source):
    """What train.plan_run decided, against the stage-1 source and the corpus and checkpoints it
    reads: before any model is built (args: the flags as given; cfg: as resolved)."""
    if source is not None:
        check_source(cfg, source, plan)
    if "lang" in plan.configs:
        check_lang(args, given, cfg, plan)


def check_source(cfg, source, plan):
    """The stage-1 source's own settings (its check) and its vocabulary against the model's."""
    vocab = plan.vocab["ppt"]
    if source.check is not None:
        source.check(vocab, plan.dist["world"])
    if vocab < source.vocab_size:
        raise UserError(f"--ppt_vocab_size {vocab} is smaller than the {cfg.ppt_source} "
                        f"source's {source.vocab_size} tokens")
    check_model(plan.configs["ppt"])


def check_nca(cfg, band):
    """An NCAConfig (nca.py) and complexity band (lo, hi) the generator can run."""
    if cfg.grid < 1 or cfg.patch < 1 or cfg.grid % cfg.patch:
        raise UserError(f"--grid {cfg.grid} is not divisible by --patch {cfg.patch}: "
                        "choose a patch size that divides the grid")
    if cfg.num_colors < 2:
        raise UserError(f"--num_colors must be at least 2, got {cfg.num_colors}")
    if cfg.vocab_size > cfg.max_vocab:
        raise UserError(f"--num_colors {cfg.num_colors} with --patch {cfg.patch} needs "
                        f"{cfg.vocab_size:,} tokens (num_colors**(patch**2) + 2), more than "
                        f"the model vocabulary {cfg.max_vocab:,}: use fewer colours or a "
                        "smaller patch, or raise train.py's --ppt_vocab_size")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = argmax), got {cfg.temperature}")
    if cfg.dT < 1 or cfg.init_rollout_steps < 0 or cfg.filter_frames < 1:
        raise UserError("--dT and --filter_frames must be >= 1, --init_rollout_steps >= 0")
    if cfg.seq_len < 2 * cfg.grid_len:
        raise UserError(f"--seq_len {cfg.seq_len} must hold at least two grids "
                        f"({2 * cfg.grid_len} tokens)")
    if not band[0] < band[1]:
        raise UserError(f"empty complexity band ({band[0]}, {band[1]}): the threshold must be "
                        "below the upper bound")
    return cfg


def check_nca_bank(cfg, world):
    """train.py's NCA rule bank holds a micro-batch of rules for every process."""
    if cfg.train_num_rules < cfg.ppt_micro_batch * world:
        raise UserError(f"--train_num_rules {cfg.train_num_rules} is fewer than one "
                        f"micro-batch ({cfg.ppt_micro_batch} x {world} processes)")


def check_corpus(data_dir, seq_len, vocab, vocab_flag):
    """A prepared folder a training stage reads: both splits hold a sequence, and every id
    (meta.json's max_token) is below the model's vocabulary."""
    for split, need in (("train", seq_len + 2), ("val", seq_len + 1)):
        n = len(load_tokens(data_dir, split))
        if n < need:
            raise UserError(f"{data_dir}/{split}.bin has {n} tokens, fewer than one sequence "
                            f"of {need}: lower --seq_len")
    top = max_token(data_dir)
    if top >= vocab:
        raise UserError(f"{data_dir} holds token id {top:,}, outside the model's vocabulary of "
                        f"{vocab:,}: raise {vocab_flag} above {top:,} or re-prepare the data")
    for split in ("train", "val"):
        check_token_file(data_dir, split, vocab, f"raise {vocab_flag} or re-prepare the data")


def check_token_file(data_dir, split, vocab, fix):
    """The ids actually in <split>.bin against the vocabulary, not only meta.json's max_token
    (stale after a folder is re-tokenized by hand): a chunked max over the memory-mapped file,
    seconds even for billions of tokens."""
    top = scan_max_token(data_dir, split)
    if top >= vocab:
        recorded = load_meta(data_dir).get("max_token")
        stale = f" (meta.json records max_token {recorded:,}: stale)" if recorded is not None \
            and recorded < top else ""
        raise UserError(f"{show(Path(data_dir) / (split + '.bin'))} holds token id {top:,}{stale}, "
                        f"outside the vocabulary of {vocab:,}: {fix}")


def check_lang(args, given, cfg, plan):
    """Stage 2: the corpus against the vocabulary and the batch, the --init_from body against the
    flags, and the re-init / freeze layers against the model."""
    data_dir, vocab = plan.lang_data, plan.vocab["lang"]
    meta_vocab = load_meta(data_dir)["vocab_size"]
    if cfg.vocab_size != "auto" and vocab < meta_vocab:
        raise UserError(f"--vocab_size {vocab} cannot index {data_dir}'s {meta_vocab}"
                        "-token vocabulary: use at least that")
    check_corpus(data_dir, cfg.seq_len, vocab, "--vocab_size")
    n_train = len(load_tokens(data_dir, "train"))
    if not cfg.lang_tokens and n_train < cfg.batch_tokens:
        raise UserError(f"{data_dir}/train.bin has {n_train:,} tokens, less than one batch "
                        f"of {cfg.batch_tokens:,}: lower --batch_tokens or set --lang_tokens")
    if cfg.init_from:
        ck = plan.body
        if ck["stage"] != "ppt":
            raise UserError(f"--init_from {cfg.init_from} is a {ck['stage']!r}-stage "
                            "checkpoint; transfer needs a stage-1 (ppt) checkpoint")
        check_body_shape(args, given, cfg)
        kind, want = (ck.get("vocab") or {}).get("kind"), load_meta(data_dir).get("tokenizer")
        if cfg.keep_embeddings and (kind != (want or "gpt2") or
                                    ck["model_args"]["vocab_size"] != vocab):
            raise UserError(f"--keep_embeddings needs a stage-1 model on the corpus's tokens "
                            f"({want or 'gpt2'}, vocabulary {vocab}); {cfg.init_from} has {kind} "
                            f"tokens, vocabulary {ck['model_args']['vocab_size']}")
    elif cfg.keep_embeddings and plan.vocab.get("ppt") != vocab:
        raise UserError(f"--keep_embeddings needs the same vocabulary in both stages: "
                        f"--ppt_vocab_size gives {plan.vocab.get('ppt')}, stage 2 "
                        f"{vocab} (set --ppt_vocab_size {vocab})")
    n_layer = check_model(plan.configs["lang"]).n_layer
    for flag in ("reinit", "freeze"):
        text = getattr(cfg, f"{flag}_layers")
        a, b = map(int, text.split(":")) if text else (0, n_layer)
        if not 0 <= a < b <= n_layer:
            raise UserError(f"layer range {text} is outside the model's {n_layer} layers")


def check_body_shape(args, given, cfg):
    """--init_from decides the body's shape (train.plan_lang set it in cfg): an architecture
    flag given on the command line that disagrees is refused, naming both values."""
    have = {k: getattr(cfg, k) for k in ARCH}
    have["mlp_hidden"] = have["mlp_hidden"] or 4 * have["n_embd"]
    asked = {k: (SIZES[args.size][k], f"--size {args.size}") for k in ARCH[:3]
             if "size" in given and k not in given}
    asked.update({k: (getattr(args, k), f"--{k}") for k in ARCH if k in given})
    for k, (v, flag) in asked.items():
        if v != have[k]:
            raise UserError(f"{flag} asks for {k} {v}, but --init_from {cfg.init_from} is a "
                            f"model with {k} {have[k]}: drop the flag (the checkpoint sets the "
                            "shape)")
    if "ppt_source" in given and args.ppt_source != cfg.ppt_source:
        raise UserError(f"--ppt_source {args.ppt_source}, but --init_from {cfg.init_from} was "
                        f"trained on {cfg.ppt_source}: drop the flag")


@contextlib.contextmanager
def train_run(cfg, plan):
    """The micro-batches fit and divide the batch, a --resume matches its checkpoint; then the
    run folders are locked for the life of the run (yields)."""
    for stage in plan.micro:
        check_memory(cfg, stage, plan)
    if cfg.resume:
        check_resume(cfg, plan)
    locks = []
    try:
        own_run_dirs([plan.out[s] for s in plan.all_stages], cfg, plan.dist, locks)
        if plan.dist["rank"] == 0:
            print("\n".join(plan.notes))
        yield
    finally:
        for lock in reversed(locks):
            unlock_run_dir(*lock)


def check_memory(cfg, stage, plan):
    """A micro-batch was found that fits the memory (train.plan_memory), or the one given divides
    each process's share of the batch."""
    T, world, name = cfg.seq_len, plan.dist["world"], stage_flag(stage, "micro_batch")
    micro, seqs = plan.micro[stage], getattr(cfg, stage_flag(stage, "batch_tokens")) // (T * world)
    if micro is None:
        need = plan.memory[stage]["total"]
        raise UserError(f"{stage}: one sequence of {T} tokens needs about {need / 2**30:.1f} "
                        f"GiB by the estimate, more than the {max(plan.usable, 0) / 2**30:.1f} "
                        f"GiB usable of {plan.memory_total / 2**30:.1f} GiB: use a smaller --size "
                        "or --seq_len (or set --memory_gb)")
    if seqs % micro:
        raise UserError(f"--{name} {micro} does not divide the {seqs} sequences of {T} tokens "
                        f"each of the {world} processes gets per step: use a divisor of {seqs}, "
                        "or 0 to choose one")


def check_resume(cfg, plan):
    """--resume continues a run only with the model, batch and budget it was trained with."""
    have = [s for s in ("lang", "ppt") if s in plan.configs and (plan.out[s] / "ckpt.pt").exists()]
    if not have:
        return
    stage = have[0]
    path = plan.out[stage] / "ckpt.pt"
    check_metrics(plan.out[stage] / "metrics.jsonl")
    ck = peek(path, "--resume:", ("model", "model_args", "stage", "config"))
    if ck.get("stage") != stage:
        raise UserError(f"{path} is a {ck.get('stage')!r}-stage checkpoint, not {stage!r}: "
                        "check --out_dir and --stage")
    fix = (f"resume with the run's own flags (--config {path.parent / 'config.json'} --resume) "
           "or use another --out_dir")
    for k, want in asdict(plan.configs[stage]).items():
        if ck["model_args"].get(k) != want:
            raise UserError(f"--resume: {path} holds a model with {k} {ck['model_args'].get(k)}, "
                            f"this command asks for {k} {want}: {fix}")
    key = stage_flag(stage, "batch_tokens")
    if ck["config"].get(key) != getattr(cfg, key):
        raise UserError(f"--resume: {path} was trained with --{key} {ck['config'].get(key)}, "
                        f"this command asks for {getattr(cfg, key)}: {fix}")
    transfer = bool(cfg.init_from) or "ppt" in plan.configs       # what the command asks for
    if stage == "lang" and bool(ck["config"].get("init_from")) != transfer:
        kind = lambda t: "a transfer from stage 1" if t else "a scratch run"
        raise UserError(f"--resume: {path} is {kind(not transfer)}, this command asks for "
                        f"{kind(transfer)}: {fix}")
    if ck["step"] > plan.steps[stage]:
        raise UserError(f"--resume: {path} is at step {ck['step']}, past the "
                        f"{plan.steps[stage]} steps of this command: resume with the budget in "
                        "config.json")


def check_metrics(path):
    """Every line of a metrics.jsonl a resume will cut back is a record with a step, checked
    before any file is rewritten."""
    read_metrics(path, "delete or repair that line, then resume again")


def peek(path, what="checkpoint", need=("model", "model_args")):
    """A train.py checkpoint (or a Hugging Face Llama folder or state dict, read as one),
    memory-mapped on the CPU (cheap), checked to hold `need` and a usable model_args."""
    if not Path(path).exists():
        raise UserError(f"checkpoint {path} not found")
    ck = load_checkpoint(path, "cpu", mmap=True)
    missing = [k for k in need if k not in ck] if isinstance(ck, dict) else ["model"]
    if missing:
        raise UserError(f"{what} {path} is not a train.py checkpoint (no {missing[0]})")
    try:
        check_model(GPTConfig(**ck["model_args"]))
    except (TypeError, UserError) as e:
        raise UserError(f"{what} {path} has unusable model_args: {e}") from None
    return ck


# -----------------------------------------------------------------------------------------------
# Run folders: a running train.py owns its folder through <out_dir>/.lock

def check_run_dir(out, resume, overwrite):
    """Refuse to clobber a run unless --overwrite (or continue it with --resume)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out_dir {out} is a file, not a folder: choose another --out_dir")
    existing = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if existing and not (resume or overwrite):
        raise UserError(f"{out} already holds a run ({', '.join(existing)}): pass --resume to "
                        "continue it or --overwrite to replace it (or choose another --out_dir)")


# An empty or unreadable lock older than this is what a crash (or a full disk) left between the
# exclusive create and the pid write, which take microseconds: no run is starting, take it over.
LOCK_GRACE_S = 5.0


def lock_run_dir(out):
    """Own a run folder for the life of the run: out/.lock, created exclusively, holds our pid
    and host. A lock left by a process that no longer runs (same host) is stale and taken over,
    and so is an empty or unreadable one older than LOCK_GRACE_S; a live one refuses this run,
    whatever --overwrite says. Returns (lock path, created out)."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, host = out / ".lock", socket.gethostname()
    for _ in range(int(LOCK_GRACE_S / 0.1) + 20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(path)
            if owner is None:                  # vanished, or (briefly) being written: look again
                time.sleep(0.1)
                continue
            pid, who = owner
            if pid is None or (who == host and not pid_alive(pid)):
                print(f"note: {path} was left by " + (f"process {pid}, which is no longer running"
                      if pid else "a run that stopped while starting (the lock is empty or "
                      "unreadable)") + ": taking the folder over", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            raise UserError(f"{out} is in use by process {pid} on {who} ({path}): wait for it "
                            "to finish or choose another --out_dir (if that process is gone, "
                            "delete the lock file)")
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}\n")
        return path, created
    raise UserError(f"could not lock {out}: {path} was removed and re-created over and over: if "
                    "no other run is starting there, delete it and run again")


def lock_owner(path):
    """(pid, host) of a lock; (None, None) for an empty or unreadable lock old enough that no
    run is still writing it; None when it vanished or is too young to judge."""
    try:
        pid, _, owner = path.read_text().strip().partition(" ")
        return int(pid), owner
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return (None, None) if age > LOCK_GRACE_S else None


def unlock_run_dir(path, created):
    """Remove our lock, and the folder if this run created it and left nothing in it."""
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
        if created:
            path.parent.rmdir()
    except OSError:
        pass


def own_run_dirs(run_dirs, cfg, dist, locks):
    """Check that the run folders may be written, and (rank 0) lock them for the life of the
    run, appending to `locks`; every rank stops if rank 0 must."""
    for d in run_dirs:
        check_run_dir(d, cfg.resume, cfg.overwrite)           # before anything is trained
    refusal = None
    if dist["rank"] == 0:
        try:
            for d in sorted(set(run_dirs), key=lambda d: len(d.parts)):
                locks.append(lock_run_dir(d))
            for d in run_dirs:                 # again, now that no one else can write
                check_run_dir(d, cfg.resume, cfg.overwrite)
            for d in run_dirs:                 # what an interrupted write (kill -9) left
                for name in sweep_temporaries(d):
                    print(f"note: removed {d / name}, left by an interrupted write",
                          file=sys.stderr)
        except UserError as e:
            refusal = e
    if not _all_ok(dist, refusal is None):
        raise refusal or UserError(f"rank 0 could not take {cfg.out_dir}")


def _all_ok(dist, ok):
    """False on every rank when `ok` is False on any (so a refusal on rank 0 stops them all)."""
    if dist["world"] == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=dist["device"])
    torch.distributed.all_reduce(flag)
    return flag.item() == 0


# -----------------------------------------------------------------------------------------------
# eval.py: each check is handed what eval.plan_eval decided, and passes or refuses

def check_eval_outputs(args, mismatch=None):
    """eval.py's outputs, before any work: --out (and the pictures) writable, an existing
    eval.json replaced only with --overwrite (`mismatch`: why the eval.md beside it is from
    another evaluation, util.runs.eval_pair_mismatch, for the refusal's note), matplotlib present
    if a picture is asked for."""
    check_writable(args.out, "--out")         # a bad --out fails now, not after the evaluation
    for name in ("plot", "plot_heads", "plot_contrasts"):
        if getattr(args, name):
            check_writable(getattr(args, name), f"--{name}", kind="file")
    out = Path(args.out)
    if (out / "eval.json").exists() and not args.overwrite:
        raise UserError(f"{show(out / 'eval.json')} exists: pass --overwrite to replace it, "
                        "or another --out" + (f" (and note: {mismatch}; a write was "
                                               "interrupted, and eval.md was made again from "
                                               "eval.json)" if mismatch else ""))
    if args.plot or args.plot_heads or args.plot_contrasts:
        pyplot()  # fail now, not after the evaluation
        from matplotlib.backend_bases import FigureCanvasBase
        kinds = FigureCanvasBase.get_supported_filetypes()     # {"png": ..., "pdf": ...}
        for name in ("plot", "plot_heads", "plot_contrasts"):
            path = getattr(args, name)
            if path and Path(path).suffix.lower().lstrip(".") not in kinds:
                raise UserError(f"--{name} {path}: matplotlib draws "
                                f"{', '.join('.' + k for k in sorted(kinds))}: name the picture "
                                "with one of these extensions")


def check_plot_contrasts(path, pairs):
    """--plot_contrasts needs contrasts to draw: refused before any model runs, not after
    eval.json is written."""
    if path and not pairs:
        raise UserError(f"--plot_contrasts {path}: there are no paired contrasts to draw: give "
                        "--pair A:B (without it, every arm is paired with scratch only when an "
                        "arm has several seeds of a domain)")


def check_counts(args, names):
    """Numbers of eval.py that count something: at least 1 (None: not given)."""
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")


def check_run_checkpoint(ckpt):
    """A RUN_OR_CKPT argument names a checkpoint that is there."""
    if not Path(ckpt).is_file():
        raise UserError(f"{show(ckpt)} is missing: pass a run folder of train.py or a ckpt.pt")


def check_run_config(config, path):
    """A run's config (of config.json at `path`, else of its checkpoint) is a JSON object."""
    if not isinstance(config, dict):
        raise UserError(f"{show(path)} holds no run config (a JSON object written by train.py)")


def check_domain_names(names):
    """Eval domains are named by their folders' names: no two alike."""
    if len(set(names)) < len(names):
        raise UserError(f"two eval domains share a folder name: {', '.join(names)}")


def check_block(block, readers):
    """The window length fits the context of every run scored on language (readers: (run, its
    checkpoint metadata) pairs)."""
    for r, inf in readers:
        if inf["model_args"]["block_size"] < block:
            raise UserError(f"--block_size {block} is longer than the "
                            f"{inf['model_args']['block_size']} of {r.label}")


def check_eval_domain(folder, readers):
    """Every token id of an eval folder is inside the vocabulary of each run scored on it
    (readers: (run, its checkpoint metadata) pairs): meta.json's max_token, then the ids actually
    in val.bin."""
    top = max_token(folder)
    for r, inf in readers:
        if inf["model_args"]["vocab_size"] <= top:
            raise UserError(f"{show(folder)} holds token id {top:,}, outside the "
                            f"{inf['model_args']['vocab_size']:,}-token vocabulary of "
                            f"{r.label}: evaluate it on other --domains")
    check_token_file(folder, "val", min(inf["model_args"]["vocab_size"] for _, inf in readers),
                     "re-prepare the folder or evaluate on other --domains")


def check_scorable(label, scorable, why):
    """A run is scored somewhere: on an eval domain or on its held-out NCA rules (`why`: why not
    on each domain, eval.refusal_text)."""
    if not scorable:
        why = why or "no eval domain was given"
        raise UserError(f"{label} can be scored on no eval domain ({why}): give --domains or "
                        "--extra_data a prepared folder its model reads, or leave it out")


def check_pair_overlap(text, a_keys, b_keys):
    """--pair A:B pairs runs of one domain and seed: some (domain, seed) must have both arms
    (`a_keys`, `b_keys`: the (domain, seed) of each arm's language runs)."""
    if not set(a_keys) & set(b_keys):
        a, b = text.split(":")[:2]
        show_keys = lambda keys: ", ".join(f"{d} seed {s}" for d, s in sorted(keys, key=str))
        raise UserError(f"--pair {text}: arms {a} and {b} share no domain and seed ({a}: "
                        f"{show_keys(a_keys)}; {b}: {show_keys(b_keys)}): nothing to pair")


def check_pairs(given, arms, twice):
    """--pair A:B (or A:B:REF): two (three) different arms, each an arm of the language runs
    (`arms`), none with two runs of one domain and seed (`twice`)."""
    for text in given:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts) or len(set(parts)) < len(parts):
            raise UserError(f"--pair {text!r}: give two different arms as A:B, e.g. nca:scratch "
                            "(or A:B:REF, a third, for the share of REF - B that A - B keeps)")
        for arm in parts:
            if arm not in arms:
                raise UserError(f"--pair {text}: no language run of arm {arm!r} among the runs "
                                f"(arms: {', '.join(sorted(arms)) or 'none'})")
            if arm in twice:
                raise UserError(f"--pair {text}: arm {arm!r} has two runs of one domain and "
                                "seed: give them different --arm names (or evaluate one)")
