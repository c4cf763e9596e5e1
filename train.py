"""
Train the GPT in two stages (docs/method.md, 'Pipeline'):

  stage 1, "ppt" (pre-pre-training): next-token prediction on NCA trajectories (default), or on
           the baselines' sources: Dyck languages or natural text;
  stage 2, "lang" (language pre-training): on a prepared corpus (data/<domain>), from scratch or
           from a stage-1 checkpoint whose embeddings and head are replaced (the transfer).

  python train.py --stage both --domain web ...            # one arm: stage 1, then stage 2
  python train.py --stage both --domain web --nca_tokens 0  # the scratch arm
  python train.py --stage nca ...  /  --stage lang --init_from out/x/ppt/ckpt.pt ...
  torchrun --nproc_per_node 8 train.py ...                  # data parallel

Stage-1 hyper-parameters are the --ppt_* flags, stage-2 ones the plain flags. A run folder holds
config.json, metrics.jsonl and ckpt.pt; with --stage both, stage 1 goes to <out_dir>/ppt/.
"""
import argparse
import contextlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nca
from util import UserError, atomic_write, autocast, default_device, one_line_errors, progress_bar
from data.common import DataError, load_meta, load_tokens, max_token
from eval import EvalError, copy_probe, eval_windows, probe_vocab
from model import GPT, GPTConfig, SIZES, config_for

# Official language vocabulary per domain (docs/differences.md, 'Language vocabulary per domain').
DOMAIN_VOCAB = {"web": 50257, "c4": 50257, "math": 64000, "code": 64000}
# Dense bf16 peak per GPU; the first name found in the device's name wins. The PCIe and NVL cards
# run slower clocks (and the PCIe H100 fewer SMs) than the SXM parts of the same name.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
              ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("4090", 165e12), ("A10", 125e12)]

# Presets set defaults; any flag given on the command line wins.
PRESETS = {
    # The whole two-stage pipeline on a 2-core CPU in minutes (the README's quick start): a
    # 4-colour NCA on an 8x8 grid, which a tiny model learns beyond copying in a few minutes,
    # then byte-level text (--domain web_bytes), which it learns beyond a bigram model
    # (docs/method.md, 'CPU-scale setting').
    "cpu": dict(size="tiny", seq_len=256, dtype="float32",
                num_colors=4, grid=8, band="cpu-web",
                ppt_tokens=1_048_576, ppt_batch_tokens=8192, ppt_micro_batch=16, ppt_lr=2e-3,
                ppt_warmup_frac=0.1, ppt_schedule="cosine", ppt_vocab_size=0, ppt_eval_interval=32,
                ppt_val_seqs=64, train_num_rules=2048, val_num_rules=128,
                lang_tokens=1_310_720, batch_tokens=4096, micro_batch=16,
                lr=2e-3, eval_interval=32, eval_tokens=16_384, log_interval=16),
    # One GPU, GPT-2-small class: the paper's 164M NCA tokens, then language pre-training.
    # Micro-batches come from the memory estimate (0 = auto), so the preset runs on one GPU or
    # under torchrun; checkpoints (~2 GB) every 2,500 stage-1 and 500 stage-2 steps (about 4 and
    # 11 minutes at the target speed), not at every validation.
    "gpu": dict(size="small", seq_len=1024, dtype="auto", compile=True,
                ppt_tokens=163_840_000, ppt_batch_tokens=32768, ppt_micro_batch=0,
                ppt_ckpt_interval=2500, lang_tokens=2_621_440_000, batch_tokens=524288,
                micro_batch=0, ckpt_interval=500),
}


class TrainError(UserError):
    """A problem with the user's input or run; main() prints it as one line."""


# -----------------------------------------------------------------------------------------------
# Command line

def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--stage", choices=["ppt", "nca", "lang", "both"], default="both",
                   help="ppt = stage 1 (nca is its alias), lang = stage 2, both = 1 then 2")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a set of defaults: cpu (tiny model, minutes) or gpu (GPT-2-small)")
    g.add_argument("--out_dir", default="out/run", help="run folder")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in out_dir")
    g.add_argument("--resume", action="store_true", help="continue the run in out_dir")
    g.add_argument("--arm", default=None,
                   help="label of this run in eval tables (default: scratch / the ppt source)")
    g.add_argument("--seed", type=int, default=0, help="seed of init, data order and dropout")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="autocast dtype; auto = bfloat16 on CUDA, float32 elsewhere")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (the gpu preset turns it on)")
    g.add_argument("--log_interval", type=int, default=10, help="steps between log lines")
    g.add_argument("--memory_gb", type=float, default=0,
                   help="memory per process that an automatic micro-batch must fit in, GiB "
                        "(0 = the whole GPU, or this machine's RAM shared by the processes)")
    g.add_argument("--max_iters", type=int, default=0,
                   help="stop each stage after this many steps (0 = its token budget)")
    g.add_argument("--debug_ranks", action="store_true",
                   help="each process writes rank<r>.json (hash of its first batch and of the "
                        "final weights) to check data sharding and gradient sync")

    g = p.add_argument_group("model (docs/method.md, 'Transformer')")
    g.add_argument("--size", choices=list(SIZES), default="small", help="size preset")
    g.add_argument("--n_layer", type=int, default=None, help="override the preset")
    g.add_argument("--n_head", type=int, default=None, help="override the preset")
    g.add_argument("--n_embd", type=int, default=None, help="override the preset")
    g.add_argument("--mlp_hidden", type=int, default=None, help="SwiGLU width (default 4*n_embd)")
    g.add_argument("--attn_dropout", type=float, default=0.1, help="attention-probability dropout")
    g.add_argument("--seq_len", type=int, default=1024, help="tokens per sequence")

    g = p.add_argument_group("stage 1: pre-pre-training (docs/method.md, 'Stage 1: "
                             "pre-pre-training')")
    g.add_argument("--ppt_source", choices=["nca", "dyck", "text"], default="nca",
                   help="synthetic NCA trajectories, Dyck languages, or natural text")
    g.add_argument("--ppt_tokens", "--nca_tokens", type=int, default=163_840_000,
                   help="stage-1 token budget (the paper's 164M); 0 = no stage 1 (scratch)")
    g.add_argument("--ppt_batch_tokens", type=int, default=32768, help="tokens per optimizer step")
    g.add_argument("--ppt_micro_batch", type=int, default=0,
                   help="sequences per forward pass; 0 = the largest that divides each process's "
                        "share of the batch and fits in memory (estimate printed at start)")
    g.add_argument("--ppt_lr", type=float, default=1e-4, help="peak learning rate")
    g.add_argument("--ppt_weight_decay", type=float, default=0.0, help="official: Adam, no decay")
    g.add_argument("--ppt_schedule", choices=["cosine", "constant"], default="constant",
                   help="after warmup; the official 164M checkpoint ends its warmup")
    g.add_argument("--ppt_warmup_frac", type=float, default=1.0,
                   help="fraction of stage-1 steps in linear warmup (official 164M: all)")
    g.add_argument("--ppt_grad_clip", type=float, default=0.0, help="0 = none (official)")
    g.add_argument("--ppt_vocab_size", type=int, default=64000,
                   help="stage-1 vocabulary (official 64,000); 0 = the source's own size")
    g.add_argument("--ppt_eval_interval", type=int, default=500, help="steps between validations")
    g.add_argument("--ppt_ckpt_interval", type=int, default=0,
                   help="steps between checkpoints (0 = at every validation); the last step is "
                        "always saved")
    g.add_argument("--ppt_val_seqs", type=int, default=3200, help="validation sequences")
    g.add_argument("--train_num_rules", type=int, default=16000, help="NCA rule bank size")
    g.add_argument("--val_num_rules", type=int, default=2000, help="held-out NCA rules")
    g.add_argument("--rule_seed", type=int, default=0, help="seed of the rule filter")
    g.add_argument("--nca_epoch_mode", choices=["fixed_rules", "fresh_rules"],
                   default="fixed_rules",
                   help="fixed_rules: new trajectories of the same bank each epoch (official "
                        "code); fresh_rules: a new bank each epoch (official README)")
    g.add_argument("--mask_delimiters", action="store_true",
                   help="also ignore grid delimiters in the loss (official: trained)")
    g.add_argument("--ppt_data", default="data/c4", help="prepared folder for --ppt_source text")
    nca.add_nca_args(p)
    try:
        import dyck
        dyck.add_dyck_args(p)
    except ImportError:
        pass

    g = p.add_argument_group("stage 2: language pre-training (docs/method.md, 'Transfer' and "
                             "'Stage 2: language pre-training')")
    g.add_argument("--domain", default="web", help="prepared corpus data/<domain>")
    g.add_argument("--data_dir", default=None, help="prepared folder (overrides --domain)")
    g.add_argument("--init_from", default=None, help="stage-1 checkpoint for --stage lang")
    g.add_argument("--vocab_size", type=auto_or_count, default="auto",
                   help="auto = official per domain (web 50,257; math/code 64,000), or a number")
    g.add_argument("--embed_init", choices=["paper", "normal"], default="paper",
                   help="new embeddings/head: PyTorch defaults (official) or N(0, 0.02)")
    g.add_argument("--keep_embeddings", action="store_true",
                   help="keep stage-1 embeddings and head (text source only: 'no re-init')")
    g.add_argument("--reinit", default="", help="comma list of attn,mlp,ln to re-initialize")
    g.add_argument("--reinit_layers", default="", help="layer range a:b for --reinit (all)")
    g.add_argument("--freeze", default="", help="comma list of attn,mlp,ln to freeze")
    g.add_argument("--freeze_layers", default="", help="layer range a:b for --freeze (all)")
    g.add_argument("--lang_tokens", type=int, default=0,
                   help="stage-2 token budget; 0 = one epoch of train.bin")
    g.add_argument("--batch_tokens", type=int, default=524288, help="tokens per optimizer step")
    g.add_argument("--micro_batch", type=int, default=0,
                   help="sequences per forward pass; 0 = the largest that divides each process's "
                        "share of the batch and fits in memory (estimate printed at start)")
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (OWT 5e-4)")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW decay (OWT 1e-4)")
    g.add_argument("--decay_all", action=argparse.BooleanOptionalAction, default=True,
                   help="decay every parameter incl. norms (official) or only matrices")
    g.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning-rate schedule after warmup")
    g.add_argument("--warmup_frac", type=float, default=0.1, help="fraction of steps in warmup")
    g.add_argument("--grad_clip", type=float, default=1 / 32,
                   help="clip the mean gradient's norm; 1/32 = official 1.0 on a sum of 32")
    g.add_argument("--eval_interval", type=int, default=100, help="steps between validations")
    g.add_argument("--ckpt_interval", type=int, default=0,
                   help="steps between checkpoints (0 = at every validation); the last step is "
                        "always saved")
    g.add_argument("--eval_tokens", type=int, default=4_194_304,
                   help="validation tokens (0 = the whole val split)")
    return one_line_errors(p)


def auto_or_count(text):
    """--vocab_size: "auto" or a whole number of at least 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}")
    return int(text)


def given_flags(argv=None):
    """The destinations set on the command line itself, not by a default or a --preset."""
    p = get_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_known_args(argv)[0]))


def parse_args(argv=None):
    p = get_parser()
    first, _ = p.parse_known_args(argv)
    if first.preset:
        p.set_defaults(**PRESETS[first.preset])
    args = p.parse_args(argv)
    if args.stage == "nca":
        args.stage = "ppt"
    return args


def layer_range(text, n_layer):
    if not text:
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise TrainError(f"layer range {text!r} must look like a:b, e.g. 0:4")
    if not 0 <= a < b <= n_layer:
        raise TrainError(f"layer range {text} is outside the model's {n_layer} layers")
    return range(a, b)


def kinds(text):
    out = [k for k in text.split(",") if k]
    for k in out:
        if k not in ("attn", "mlp", "ln"):
            raise TrainError(f"unknown module kind {k!r} in --reinit/--freeze: use attn, mlp, ln")
    return out


# -----------------------------------------------------------------------------------------------
# Checks: every flag, folder and checkpoint is checked before a model is built or a file written,
# so a refused command changes nothing and its corrected retry is not refused for the first one.

AT_LEAST = {"seq_len": 1, "log_interval": 1, "batch_tokens": 1, "micro_batch": 0,
            "eval_interval": 1, "ppt_batch_tokens": 1, "ppt_micro_batch": 0,
            "ppt_eval_interval": 1, "ppt_val_seqs": 1, "train_num_rules": 1, "val_num_rules": 1,
            "n_layer": 1, "n_head": 1, "n_embd": 1, "mlp_hidden": 1, "ppt_tokens": 0,
            "lang_tokens": 0, "max_iters": 0, "eval_tokens": 0, "ppt_vocab_size": 0}
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
    (("attn_dropout",), lambda v: 0 <= v < 1, "at least 0 and below 1")) for name in names]
ARCH = ("n_layer", "n_head", "n_embd", "mlp_hidden")


def check_flags(args, world):
    """Each flag on its own and in combination; nothing is read from disk."""
    for name, lo in AT_LEAST.items():
        v = getattr(args, name)
        if v is not None and v < lo:
            zero = f" (0 = {ZERO_MEANS[name]})" if name in ZERO_MEANS else ""
            raise TrainError(f"--{name} must be at least {lo}{zero}, got {v}")
    for name, test, want in FLOAT_RULES:              # (a NaN fails every test)
        if not test(getattr(args, name)):
            raise TrainError(f"--{name} must be {want}, got {getattr(args, name)}")
    if args.resume and args.overwrite:
        raise TrainError("--resume continues the run in out_dir and --overwrite replaces it: "
                         "pass one of them")
    if args.stage == "ppt" and args.ppt_tokens == 0:
        raise TrainError("--stage ppt with --ppt_tokens 0 has nothing to train: give it a "
                         "stage-1 token budget")
    if args.init_from and args.stage != "lang":
        raise TrainError(f"--init_from is for --stage lang (--stage {args.stage} "
                         + ("trains its own stage 1 and starts stage 2 from it)"
                            if args.stage == "both" else "always starts from scratch)"))
    stage2 = [f for f in ("reinit", "reinit_layers", "freeze", "freeze_layers",
                          "keep_embeddings") if getattr(args, f)]
    if args.stage == "ppt" and stage2:
        raise TrainError(f"--{stage2[0]} is a stage-2 flag, but --stage ppt has no stage 2")
    for flag in ("reinit", "freeze"):
        kinds(getattr(args, flag))
        if getattr(args, f"{flag}_layers") and not getattr(args, flag):
            raise TrainError(f"--{flag}_layers {getattr(args, f'{flag}_layers')} needs --{flag} "
                             "(which modules: attn, mlp, ln)")
    if args.keep_embeddings:
        if args.stage == "lang" and not args.init_from:
            raise TrainError("--keep_embeddings needs --init_from (a stage-1 text checkpoint)")
        if args.stage == "both" and (args.ppt_source != "text" or not args.ppt_tokens):
            raise TrainError("--keep_embeddings keeps a stage-1 model's GPT-2 embeddings: it needs "
                             "--ppt_source text and a stage 1 (--ppt_tokens > 0)")
    stages = []                                     # the stages this command will run
    if args.stage in ("ppt", "both") and args.ppt_tokens:
        stages.append(("ppt", "--ppt_batch_tokens", args.ppt_batch_tokens, "--ppt_micro_batch",
                       args.ppt_micro_batch, args.ppt_tokens))
    if args.stage in ("lang", "both"):
        stages.append(("lang", "--batch_tokens", args.batch_tokens, "--micro_batch",
                       args.micro_batch, args.lang_tokens))
    for stage, bflag, batch, mflag, micro, budget in stages:
        per_step = max(micro, 1) * args.seq_len * world      # 0: plan_micro_batch picks a divisor
        if batch % per_step:
            what = f"{mflag} x --seq_len x processes = {micro} x " if micro else \
                "--seq_len x processes = "
            raise TrainError(f"{bflag} {batch:,} is not a multiple of {what}{args.seq_len} x "
                             f"{world} = {per_step:,}: adjust the batch or the micro-batch")
        if budget and budget < batch:
            raise TrainError(f"the {stage} token budget {budget:,} is less than one batch of "
                             f"{batch:,} ({bflag}): raise the budget or lower the batch")
    autocast(args.dtype, default_device(args.device))


def peek_checkpoint(path, what):
    """A train.py checkpoint's metadata, memory-mapped on the CPU (cheap): TrainError if absent,
    unreadable or not from train.py."""
    ck = load_checkpoint(path, "cpu", mmap=True)
    missing = [k for k in ("model", "model_args", "stage", "config") if k not in ck] \
        if isinstance(ck, dict) else ["everything"]
    if missing:
        raise TrainError(f"{what} {path} is not a train.py checkpoint (no {missing[0]})")
    return ck


def check_corpus(data_dir, seq_len, vocab, vocab_flag):
    """A prepared folder a stage reads: both splits hold a sequence, and every id (meta.json's
    max_token) is below the model's vocabulary."""
    for split, need in (("train", seq_len + 2), ("val", seq_len + 1)):
        n = len(load_tokens(data_dir, split))
        if n < need:
            raise TrainError(f"{data_dir}/{split}.bin has {n} tokens, fewer than one sequence "
                             f"of {need}: lower --seq_len")
    top = max_token(data_dir)
    if top >= vocab:
        raise TrainError(f"{data_dir} holds token id {top:,}, outside the model's vocabulary of "
                         f"{vocab:,}: raise {vocab_flag} above {top:,} or re-prepare the data")


def adopt_checkpoint_shape(args, given, ck):
    """--init_from decides the body's shape. An architecture flag given on the command line that
    disagrees is refused, naming both values; the others are set from the checkpoint so that
    config.json records the model that trains."""
    have = {k: ck["model_args"].get(k) for k in ARCH}
    have["mlp_hidden"] = have["mlp_hidden"] or 4 * have["n_embd"]
    asked = {k: (SIZES[args.size][k], f"--size {args.size}") for k in ARCH[:3]
             if "size" in given and k not in given}
    asked.update({k: (getattr(args, k), f"--{k}") for k in ARCH if k in given})
    for k, (v, flag) in asked.items():
        if v != have[k]:
            raise TrainError(f"{flag} asks for {k} {v}, but --init_from {args.init_from} is a "
                             f"model with {k} {have[k]}: drop the flag (the checkpoint sets the "
                             "shape)")
    for k in ARCH:
        setattr(args, k, ck["model_args"].get(k))
    args.size = next((n for n, v in SIZES.items()
                      if all(v[k] == have[k] for k in ARCH[:3])), args.size)
    source = ck["config"].get("ppt_source", args.ppt_source)
    if "ppt_source" in given and args.ppt_source != source:
        raise TrainError(f"--ppt_source {args.ppt_source}, but --init_from {args.init_from} was "
                         f"trained on {source}: drop the flag")
    args.ppt_source = source


def check_resume(path, stage, cfg, transfer, batch_flag, args):
    """--resume continues a run only with the model and batch it was trained with."""
    ck = peek_checkpoint(path, "--resume:")
    if ck.get("stage") != stage:
        raise TrainError(f"{path} is a {ck.get('stage')!r}-stage checkpoint, not {stage!r}: "
                         "check --out_dir and --stage")
    fix = f"resume with the flags in {Path(path).parent / 'config.json'} or use another --out_dir"
    for k, want in asdict(cfg).items():
        if ck["model_args"].get(k) != want:
            raise TrainError(f"--resume: {path} holds a model with {k} {ck['model_args'].get(k)}, "
                             f"this command asks for {k} {want}: {fix}")
    key = batch_flag.lstrip("-")
    if ck["config"].get(key) != getattr(args, key):
        raise TrainError(f"--resume: {path} was trained with {batch_flag} {ck['config'].get(key)}"
                         f", this command asks for {getattr(args, key)}: {fix}")
    if stage == "lang" and bool(ck["config"].get("init_from")) != transfer:
        kind = lambda t: "a transfer from stage 1" if t else "a scratch run"
        raise TrainError(f"--resume: {path} is {kind(not transfer)}, this command asks for "
                         f"{kind(transfer)}: {fix}")


def check_inputs(args, given, world):
    """The data, checkpoints and vocabularies a run will use, against each other and the flags.
    Reads metadata only (meta.json, memory-mapped checkpoints). Sets the arm label and, with
    --init_from, the architecture and source the checkpoint imposes."""
    out = Path(args.out_dir)
    do_ppt = args.stage in ("ppt", "both") and args.ppt_tokens > 0
    models = {}
    if do_ppt:
        if args.ppt_source == "nca":
            nca.band_from_args(args)
            source_vocab = nca.config_from_args(args, seq_len=args.seq_len,
                                                max_vocab=vocab_limit(args)).vocab_size
            if args.train_num_rules < args.ppt_micro_batch * world:
                raise TrainError(f"--train_num_rules {args.train_num_rules} is fewer than one "
                                 f"micro-batch ({args.ppt_micro_batch} x {world} processes)")
        elif args.ppt_source == "dyck":
            import dyck
            source_vocab = dyck.config_from_args(args, seq_len=args.seq_len).vocab_size
        else:
            source_vocab = load_meta(args.ppt_data)["vocab_size"]
        vocab = args.ppt_vocab_size or source_vocab
        if vocab < source_vocab:
            raise TrainError(f"--ppt_vocab_size {vocab} is smaller than the {args.ppt_source} "
                             f"source's {source_vocab} tokens")
        if args.ppt_source == "text":
            check_corpus(args.ppt_data, args.seq_len, vocab, "--ppt_vocab_size")
        models["ppt"] = model_config(args, vocab, head_bias=True)
    if args.stage in ("lang", "both"):
        data_dir = args.data_dir or f"data/{args.domain}"
        vocab = lang_vocab(args, data_dir)
        check_corpus(data_dir, args.seq_len, vocab, "--vocab_size")
        n_train = len(load_tokens(data_dir, "train"))
        if not args.lang_tokens and n_train < args.batch_tokens:
            raise TrainError(f"{data_dir}/train.bin has {n_train:,} tokens, less than one batch "
                             f"of {args.batch_tokens:,}: lower --batch_tokens or set --lang_tokens")
        if args.init_from:
            ck = peek_checkpoint(args.init_from, "--init_from")
            if ck["stage"] != "ppt":
                raise TrainError(f"--init_from {args.init_from} is a {ck['stage']!r}-stage "
                                 "checkpoint; transfer needs a stage-1 (ppt) checkpoint")
            adopt_checkpoint_shape(args, given, ck)
            if args.keep_embeddings and ((ck.get("vocab") or {}).get("kind") != "gpt2"
                                         or ck["model_args"]["vocab_size"] != vocab):
                raise TrainError(f"--keep_embeddings needs a stage-1 model on GPT-2 tokens with "
                                 f"vocabulary {vocab}; {args.init_from} has "
                                 f"{(ck.get('vocab') or {}).get('kind')} tokens, vocabulary "
                                 f"{ck['model_args']['vocab_size']}")
        elif args.keep_embeddings and models["ppt"].vocab_size != vocab:
            raise TrainError(f"--keep_embeddings needs the same vocabulary in both stages: "
                             f"--ppt_vocab_size gives {models['ppt'].vocab_size}, stage 2 "
                             f"{vocab} (set --ppt_vocab_size {vocab})")
        models["lang"] = model_config(args, vocab, head_bias=False)
        for flag in ("reinit", "freeze"):
            layer_range(getattr(args, f"{flag}_layers"), models["lang"].n_layer)
    if args.arm is None:
        transfer = do_ppt or bool(args.init_from)
        args.arm = args.ppt_source if transfer else "scratch"
    if args.resume:
        if args.stage != "ppt" and (out / "ckpt.pt").exists():
            check_resume(out / "ckpt.pt", "lang", models["lang"],
                         bool(args.init_from) or do_ppt, "--batch_tokens", args)
        elif do_ppt:
            ppt_ck = (out / "ppt" if args.stage == "both" else out) / "ckpt.pt"
            if ppt_ck.exists():
                check_resume(ppt_ck, "ppt", models["ppt"], True, "--ppt_batch_tokens", args)


# -----------------------------------------------------------------------------------------------
# Data: each source is an endless iterator of (inputs, labels) with state_dict/load_state_dict

class TextBatches:
    """Random windows of a prepared token file (nanoGPT get_batch). The window starts of batch i
    are drawn from a generator seeded by (seed, rank, i), so the position i is the whole state."""

    def __init__(self, data_dir, split, seq_len, batch_size, device, seed=0, rank=0):
        self.data_dir, self.split, self.T, self.B = data_dir, split, seq_len, batch_size
        self.device, self.seed, self.rank, self.count = device, seed, rank, 0
        n = len(load_tokens(data_dir, split))
        if n < seq_len + 2:
            raise TrainError(f"{data_dir}/{split}.bin has {n} tokens, fewer than one sequence "
                             f"of {seq_len + 1}: lower --seq_len")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, d):
        self.count = d["count"]

    def __iter__(self):
        return self

    def __next__(self):
        data = load_tokens(self.data_dir, self.split)       # a fresh memmap each batch (nanoGPT)
        rng = np.random.default_rng([self.seed, self.rank, self.count])
        ix = rng.integers(0, len(data) - self.T - 1, self.B)
        w = torch.from_numpy(np.stack([data[i:i + self.T + 1] for i in ix]).astype(np.int64))
        self.count += 1
        if str(self.device).startswith("cuda"):
            w = w.pin_memory().to(self.device, non_blocking=True)
        else:
            w = w.to(self.device)
        return w[:, :-1], w[:, 1:]


def text_val_batches(data_dir, seq_len, eval_tokens, batch_size, device):
    """Fixed validation windows, the same eval.py scores: non-overlapping, stride seq_len, from
    the start of val.bin."""
    try:
        w = eval_windows(load_tokens(data_dir, "val"), seq_len, eval_tokens).to(device)
    except EvalError as e:
        raise TrainError(f"{data_dir}/val.bin: {e}")
    return list(zip(w[:, :-1].split(batch_size), w[:, 1:].split(batch_size)))


def ppt_source(args, device, rank, world, micro):
    """Stage-1 data: (train iterator, fixed val batches, source vocab size, extra ckpt info)."""
    if args.ppt_source == "nca":
        cfg = nca.config_from_args(args, seq_len=args.seq_len, max_vocab=vocab_limit(args))
        band = nca.band_from_args(args)
        n_train, n_val = args.train_num_rules, args.val_num_rules
        # Rank 0 filters and caches the bank while the other ranks wait; then they read the cache
        # (or fail as rank 0 did: it reaches the barrier either way).
        try:
            if world > 1 and rank > 0:
                torch.distributed.barrier()
            bank = nca.filter_rules(cfg, band, n_train + n_val, seed=args.rule_seed,
                                    device=device, progress=rank == 0)
        finally:
            if world > 1 and rank == 0:
                torch.distributed.barrier()
        train_bank = nca.RuleBank(bank.seeds[:n_train], bank.scores[:n_train], bank.band)
        val_seeds = bank.seeds[n_train:]
        train = nca.NCABatches(cfg, train_bank, micro, device, seed=args.seed,
                               mode=args.nca_epoch_mode, mask_delimiters=args.mask_delimiters,
                               rank=rank, world_size=world)
        val = nca.val_batches(cfg, val_seeds, args.ppt_val_seqs, micro, device,
                              mask_delimiters=args.mask_delimiters)
        info = {"config": asdict(cfg), "val_seeds": [int(s) for s in val_seeds],
                "mask_delimiters": args.mask_delimiters, "band": list(band)}
        return train, val, cfg.vocab_size, info
    if args.ppt_source == "dyck":
        import dyck
        cfg = dyck.config_from_args(args, seq_len=args.seq_len, max_vocab=vocab_limit(args))
        train = dyck.DyckBatches(cfg, micro, device, seed=args.seed, rank=rank, world_size=world)
        val = dyck.val_batches(cfg, args.ppt_val_seqs, micro, device, seed=args.seed)
        return train, val, cfg.vocab_size, {"config": asdict(cfg)}
    train = TextBatches(args.ppt_data, "train", args.seq_len, micro, device, args.seed, rank)
    val = text_val_batches(args.ppt_data, args.seq_len, args.ppt_val_seqs * args.seq_len,
                           micro, device)
    meta = load_meta(args.ppt_data)
    return train, val, meta["vocab_size"], {"data_dir": args.ppt_data,
                                            "tokenizer": meta.get("tokenizer", "gpt2")}


def copy_baseline(val, config):
    """Token and whole-grid accuracy of 'the next grid equals the previous one' on the stage-1
    validation batches: what in-context rule learning must beat."""
    t, g = zip(*(nca.copy_accuracy(x, y, nca.NCAConfig(**config)) for x, y in val))
    n = sum(len(x) for x, _ in val) * len(t[0])
    return {"copy_token_acc": float(sum(a.sum() for a in t)) / n,
            "copy_grid_acc": float(sum(a.sum() for a in g)) / n}


def vocab_limit(args):
    return args.ppt_vocab_size or 64000


def ppt_source_vocab(args):
    """The number of distinct tokens of the stage-1 source (10,002 for the default NCA)."""
    if args.ppt_source == "nca":
        return nca.config_from_args(args, seq_len=args.seq_len,
                                    max_vocab=vocab_limit(args)).vocab_size
    if args.ppt_source == "dyck":
        import dyck
        return dyck.config_from_args(args, seq_len=args.seq_len).vocab_size
    return load_meta(args.ppt_data)["vocab_size"]


# -----------------------------------------------------------------------------------------------
# Models: stage 1 from scratch, stage 2 from scratch or by transfer (docs/method.md, 'Transfer')

def model_config(args, vocab_size, head_bias):
    over = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "mlp_hidden")
            if getattr(args, k) is not None}
    return config_for(args.size, vocab_size=vocab_size, head_bias=head_bias,
                      block_size=args.seq_len, attn_dropout=args.attn_dropout, **over)


def lang_vocab(args, data_dir):
    meta_vocab = load_meta(data_dir)["vocab_size"]
    if args.vocab_size == "auto":
        return max(DOMAIN_VOCAB.get(Path(data_dir).name, meta_vocab), meta_vocab)
    v = int(args.vocab_size)
    if v < meta_vocab:
        raise TrainError(f"--vocab_size {v} cannot index {data_dir}'s {meta_vocab}-token "
                         "vocabulary: use at least that")
    return v


def load_checkpoint(path, device="cpu", mmap=False):
    if not Path(path).is_file():
        raise TrainError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        raise TrainError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}")


def lang_model(args, vocab_size, device, tokenizer="gpt2"):
    """The stage-2 model: transferred from --init_from, or the scratch baseline. Both get the same
    freshly initialized embeddings and head (reset_vocab, drawn right after re-seeding with
    --seed, whatever the body's initialization consumed), so the arms of a seed differ only in
    the body; the data order and dropout stream that follow are the same too."""
    if args.init_from:
        ck = load_checkpoint(args.init_from)
        if ck.get("stage") != "ppt":
            raise TrainError(f"--init_from {args.init_from} is a {ck.get('stage')!r}-stage "
                             "checkpoint; transfer needs a stage-1 (ppt) checkpoint")
        cfg = GPTConfig(**ck["model_args"])
        cfg.block_size, cfg.attn_dropout = args.seq_len, args.attn_dropout  # RoPE: no learned pos
        model = GPT(cfg)
        model.load_state_dict(ck["model"])
        if args.keep_embeddings:
            if ck["vocab"]["kind"] != tokenizer or cfg.vocab_size != vocab_size:
                raise TrainError(f"--keep_embeddings needs a stage-1 model on {tokenizer} tokens "
                                 f"with vocabulary {vocab_size}; {args.init_from} has "
                                 f"{ck['vocab']['kind']} tokens, vocabulary {cfg.vocab_size}")
            if cfg.head_bias:                                  # language heads have no bias
                model.lm_head.bias = None
                model.config.head_bias = False
        else:
            torch.manual_seed(args.seed)
            model.reset_vocab(vocab_size, args.embed_init)
    else:
        model = GPT(model_config(args, vocab_size, head_bias=False))
        torch.manual_seed(args.seed)
        model.reset_vocab(vocab_size, args.embed_init)
    for kind in kinds(args.reinit):
        model.reinit_modules(kind, layer_range(args.reinit_layers, model.config.n_layer))
    for kind in kinds(args.freeze):
        model.freeze_modules(kind, layer_range(args.freeze_layers, model.config.n_layer))
    return model.to(device)


# -----------------------------------------------------------------------------------------------
# The training loop, shared by both stages

def lr_at(step, steps, peak, warmup_frac, schedule):
    """Linear warmup from 0 (the official LambdaLR: the first update uses lr 0), then constant
    or cosine to 0 at the last step."""
    warmup = int(warmup_frac * steps)
    if step < warmup:
        return peak * step / warmup
    if schedule == "constant" or steps <= warmup:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


@torch.no_grad()
def evaluate(model, batches, ctx, grid_cfg=None):
    """Token-mean cross-entropy over supervised labels; with an NCA config also the in-context
    token and whole-grid accuracy (mean over grid positions)."""
    was_training = model.training
    model.eval()
    total, count, tok_acc, grid_acc, seqs = 0.0, 0, 0.0, 0.0, 0
    for x, y in batches:
        n = int((y != -100).sum())
        count += n
        if grid_cfg is None:                    # the loss alone: no (B, T, V) logits
            with ctx:
                _, loss = model(x, y)
            total += loss.item() * n if n else 0.0
            continue
        with ctx:
            logits, _ = model(x)
        rows = max(1, 2**28 // logits[0].numel())           # float32 copies of <= 1 GB at a time
        for lc, yc in zip(logits.split(rows), y.split(rows)):
            total += F.cross_entropy(lc.float().flatten(0, 1), yc.flatten(), ignore_index=-100,
                                     reduction="sum").item()
        t, g = nca.grid_accuracy(logits.argmax(-1), y, grid_cfg)
        tok_acc, grid_acc, seqs = tok_acc + t.sum().item(), grid_acc + g.sum().item(), \
            seqs + len(x) * len(t)
    model.train(was_training)
    out = {"val_loss": total / max(count, 1)}
    if grid_cfg is not None:
        out.update(token_acc=tok_acc / seqs, grid_acc=grid_acc / seqs)
    return out


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


def device_memory(device, world):
    """Bytes of memory one process may use: the GPU's, or the machine's RAM over the processes."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // world
    except (AttributeError, ValueError, OSError):           # no sysconf (Windows): assume 16 GiB
        return 16 * 2**30 // world


def plan_micro_batch(args, stage, requested, batch_tokens, model, dist):
    """The micro-batch (sequences per forward pass) and its memory estimate: `requested`, or for
    0 the largest that divides each process's share of the batch and whose estimate
    (GPT.memory_estimate) fits in 90% of the memory less 2 GiB (CUDA context, workspaces,
    allocator fragmentation)."""
    T, world = args.seq_len, dist["world"]
    if batch_tokens % (T * world):
        raise TrainError(f"the {stage} batch of {batch_tokens:,} tokens is not a multiple of "
                         f"seq_len x processes = {T * world:,}: adjust the batch or --seq_len")
    seqs = batch_tokens // (T * world)                      # sequences per process and step
    act = 4 if args.dtype == "float32" else 2
    memory = args.memory_gb * 2**30 if args.memory_gb else device_memory(dist["device"], world)
    usable = 0.9 * memory - 2 * 2**30
    flag = "--ppt_micro_batch" if stage == "ppt" else "--micro_batch"
    if requested == 0:
        fits = [m for m in range(1, seqs + 1)
                if seqs % m == 0 and model.memory_estimate(m, T, act)["total"] <= usable]
        if not fits:
            need = model.memory_estimate(1, T, act)["total"]
            raise TrainError(f"{stage}: one sequence of {T} tokens needs about {need / 2**30:.1f} "
                             f"GiB by the estimate, more than the {max(usable, 0) / 2**30:.1f} "
                             f"GiB usable of {memory / 2**30:.1f} GiB: use a smaller --size or "
                             "--seq_len (or set --memory_gb)")
        requested = fits[-1]
    elif seqs % requested:
        raise TrainError(f"{flag} {requested} does not divide the {seqs} sequences of "
                         f"{T} tokens each of the {world} processes gets per step: use a divisor "
                         f"of {seqs}, or 0 to choose one")
    est = model.memory_estimate(requested, T, act)
    if dist["rank"] == 0:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in est.items() if k != "total")
        print(f"{stage}: micro-batch {requested} x {T} tokens, {seqs // requested} accumulation "
              f"steps x {world} processes; memory estimate {est['total'] / 2**30:.1f} GiB of "
              f"{usable / 2**30:.1f} GiB usable per process (GiB: {parts})")
    return requested, est


RUN_FILES = ("config.json", "metrics.jsonl", "ckpt.pt")


def check_run_dir(out, args):
    """Refuse to clobber a run unless --overwrite (or continue it with --resume)."""
    existing = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if existing and not (args.resume or args.overwrite):
        raise TrainError(f"{out} already holds a run ({', '.join(existing)}): pass --resume to "
                         "continue it or --overwrite to replace it (or choose another --out_dir)")


def prepare_run_dir(out, args, config):
    out = Path(out)
    check_run_dir(out, args)
    if args.overwrite and not args.resume:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume and (out / "ckpt.pt").exists():
        return                            # config.json is rewritten once the checkpoint has loaded
    if args.resume:                       # lines of an attempt that left no checkpoint
        (out / "metrics.jsonl").unlink(missing_ok=True)
    write_config(out, config)


def write_config(out, config):
    atomic_write(Path(out) / "config.json", json.dumps(config, indent=2, default=str))


def lock_run_dir(out):
    """Own a run folder for the life of the run: out/.lock, created exclusively, holds our pid
    and host. A lock left by a process that no longer runs (same host) is stale and taken over;
    a live one refuses this run, whatever --overwrite says. Returns (lock path, created out)."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, host = out / ".lock", socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, _, owner = path.read_text().strip().partition(" ")
                pid = int(pid)
            except (OSError, ValueError):     # vanished or half-written: look again
                time.sleep(0.1)
                continue
            if owner == host and not _alive(pid):
                print(f"note: {path} was left by process {pid}, which is no longer running: "
                      "taking the folder over", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            raise TrainError(f"{out} is in use by process {pid} on {owner} ({path}): wait for it "
                             "to finish or choose another --out_dir (if that process is gone, "
                             "delete the lock file)")
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}\n")
        return path, created
    raise TrainError(f"could not lock {out}: {path} keeps changing (another run starting?)")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:               # exists, owned by another user
        return True
    return True


def unlock_run_dir(path, created):
    """Remove our lock, and the folder if this run created it and left nothing in it."""
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
        if created:
            path.parent.rmdir()
    except OSError:
        pass


def start_run(out, args, stage, dist):
    """Create the run folder once everything it needs has been checked (data, checkpoint)."""
    if dist["rank"] == 0:
        prepare_run_dir(out, args, vars(args) | {"stage": stage})
    _barrier(dist)


def train_stage(args, stage, out, model, train_iter, val_batches, hp, ctx, dist, extra):
    """Run one stage. hp: lr, weight_decay, schedule, warmup_frac, grad_clip, batch_tokens,
    micro_batch, memory (its estimate), tokens, eval_interval, ckpt_interval, decay_all.
    Returns the final validation metrics."""
    rank, world, device = dist["rank"], dist["world"], dist["device"]
    master = rank == 0
    T, micro = args.seq_len, hp["micro_batch"]
    per_step = micro * T * world
    if hp["batch_tokens"] % per_step:
        raise TrainError(f"batch of {hp['batch_tokens']} tokens is not a multiple of micro-batch "
                         f"x seq_len x processes = {per_step}: adjust the batch or micro-batch")
    accum = hp["batch_tokens"] // per_step
    steps = hp["tokens"] // hp["batch_tokens"]
    if args.max_iters:
        steps = min(steps, args.max_iters) if steps else args.max_iters
    if steps < 1:
        raise TrainError(f"the {stage} token budget {hp['tokens']:,} is less than one batch of "
                         f"{hp['batch_tokens']:,}: raise the budget or lower the batch")
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    optimizer = model.configure_optimizers(hp["weight_decay"], hp["lr"], (0.9, 0.999), 1e-8,
                                           device_type, decay_all=hp.get("decay_all", False))
    raw = eval_model = model
    # DDP first, then compile: the compiled graph is split at DDP's gradient buckets, so their
    # all-reduce overlaps the backward pass (a compiled model inside DDP is one opaque backward).
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(raw, device_ids=[device] if device_type == "cuda" else None,
                    gradient_as_bucket_view=True)
    ddp = model
    if args.compile:
        torch.compiler.reset()      # after stage 1, stage 2's shapes would be compiled as dynamic
        model = torch.compile(model)
        eval_model = torch.compile(raw) if world > 1 else model
    scaler = torch.amp.GradScaler(device_type, enabled=(args.dtype == "float16"))
    grid_cfg = nca.NCAConfig(**extra["nca"]["config"]) if extra.get("nca") else None
    # shown beside every validation: stage 1 NCA, the copy-the-previous-grid accuracy (run_ppt
    # computes it once); stage 2, the in-context copy probe (the same sequences eval.py uses)
    copy = extra.get("copy", {})
    probe_ids = probe_vocab(extra["vocab"]) if stage == "lang" else None

    step, metrics_path, resumed = 0, out / "metrics.jsonl", False
    if args.resume and (out / "ckpt.pt").exists():
        ck = load_checkpoint(out / "ckpt.pt", device)
        if ck.get("stage") != stage:
            raise TrainError(f"{out}/ckpt.pt is a {ck.get('stage')!r}-stage checkpoint, not "
                             f"{stage!r}: check --out_dir and --stage")
        raw.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        train_iter.load_state_dict(ck["data"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if device_type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu())
        step, resumed = ck["step"], True
        if master:                                  # the checkpoint loaded: now it is this run
            write_config(out, vars(args) | {"stage": stage})
        if master and metrics_path.exists():                   # drop lines after the checkpoint
            keep = [l for l in metrics_path.read_text().splitlines()
                    if l and json.loads(l)["step"] <= step]
            metrics_path.write_text("".join(l + "\n" for l in keep))
        if master:
            print(f"resumed {stage} at step {step}")
    elif args.resume and master:
        print(f"--resume: no checkpoint in {out}, starting {stage} from scratch")
    resumed_at = step
    if world > 1:   # the init above is the same on every rank; dropout masks must differ
        torch.manual_seed(int(np.random.SeedSequence([args.seed, step, rank]).generate_state(1)[0]))
    rng_at_start = float(torch.get_rng_state().double().sum())

    def log(rec):
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint(step):
        if not master:
            return
        atomic_write(out / "ckpt.pt", lambda tmp: torch.save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                     "model_args": asdict(raw.config), "step": step,
                     "tokens": step * hp["batch_tokens"], "config": vars(args) | {"stage": stage},
                     "stage": stage, "vocab": extra["vocab"], "nca": extra.get("nca"),
                     "data": train_iter.state_dict(),
                     "rng": {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda"
                             else None}}, tmp))

    flops = raw.flops_per_token(T)
    peak = peak_flops(device)
    if master:
        print(f"{stage}: {steps} steps of {hp['batch_tokens']:,} tokens ({accum} micro-steps of "
              f"{micro} x {T} x {world} processes), {raw.num_params():,} body parameters, "
              f"vocabulary {raw.config.vocab_size:,}"
              + (f"; MFU against {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    if step == 0:
        log({"kind": "info", "step": 0, "tokens": 0, "micro_batch": micro, "accum": accum,
             "world": world, "mem_estimate_gb": hp["memory"]["total"] / 2**30})
    bar = progress_bar(steps, stage, unit="step", disable=not master, initial=step,
                           dynamic_ncols=True)
    first_batch_hash, last_val, rates = None, None, []
    t_last, last_logged, paused = time.perf_counter(), step, 0.0
    ckpt_every = hp.get("ckpt_interval") or hp["eval_interval"]
    params = [p for p in raw.parameters() if p.requires_grad]
    model.train()
    while True:
        t_pause = time.perf_counter()
        if (step % hp["eval_interval"] == 0 or step == steps) and not (resumed
                                                                       and step == resumed_at):
            last_val = evaluate(eval_model, val_batches, ctx, grid_cfg) | copy
            if probe_ids is not None:
                p = copy_probe(raw, probe_ids, T // 2, batch_size=micro, device=device, ctx=ctx)
                last_val |= {f"probe_{k}": v for k, v in p.items()}
            rec = {"kind": "val", "step": step, "tokens": step * hp["batch_tokens"], **last_val}
            log(rec)
            if master:
                bar.write(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in rec.items()))
            if not math.isfinite(last_val["val_loss"]):
                bar.close()
                raise TrainError(f"validation loss is {last_val['val_loss']} at step {step} of "
                                 f"{stage}: lower the learning rate or use --dtype float32")
        if (step % ckpt_every == 0 or step == steps) and not (step == resumed_at and step > 0):
            checkpoint(step)
        paused += time.perf_counter() - t_pause     # not part of the throughput windows
        if step == steps:
            break
        lr = lr_at(step, steps, hp["lr"], hp["warmup_frac"], hp["schedule"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        log_now = (step + 1) % args.log_interval == 0 or step + 1 == steps
        for micro_step in range(accum):
            x, y = next(train_iter)
            if first_batch_hash is None:
                first_batch_hash = int(x.long().sum()) * 1_000_003 + int((x[:, :8] * 31).sum())
            sync = contextlib.nullcontext() if world == 1 or micro_step == accum - 1 \
                else ddp.no_sync()
            with sync, ctx:
                _, loss = model(x, y)
                loss = loss / accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        if hp["grad_clip"]:
            norm = torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"])
        elif log_now:                           # no clipping: the norm only for the log line
            norm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if log_now:
            if world > 1:
                torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
            loss_val = loss_sum.item()                          # syncs the device
            now = time.perf_counter()
            dt = (now - t_last - paused) / (step - last_logged)
            t_last, last_logged, paused = now, step, 0.0
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device_type == "cuda" \
                else None
            tok_s = hp["batch_tokens"] / dt
            mfu = flops * tok_s / world / peak if peak else None
            if step > resumed_at + 2 * args.log_interval:      # skip warm-up / compile steps
                rates.append(tok_s)
            if not math.isfinite(loss_val):
                bar.close()
                raise TrainError(f"loss is {loss_val} at step {step} of {stage}: lower the "
                                 "learning rate, clip gradients, or use --dtype float32")
            rec = {"kind": "train", "step": step, "tokens": step * hp["batch_tokens"],
                   "loss": loss_val, "lr": lr, "grad_norm": float(norm), "ms": dt * 1000,
                   "tok_s": tok_s, "mfu": mfu, "mem_gb": mem}
            log(rec)
            if master:
                bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tok_s:,.0f}")
                bar.write(f"step {step} loss {loss_val:.4f} lr {lr:.2e} grad_norm "
                          f"{float(norm):.3f} {dt * 1000:.0f} ms {tok_s:,.0f} tok/s"
                          + (f" mfu {100 * mfu:.1f}%" if mfu is not None else "")
                          + (f" peak memory {mem:.1f} GiB" if mem is not None else ""))
    bar.close()
    if master and rates:
        print(f"{stage}: mean {np.mean(rates):,.0f} tok/s after warm-up")
    if args.debug_ranks:
        wsum = sum(float(p.detach().double().sum()) for p in raw.parameters())
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "first_batch": first_batch_hash, "weights": wsum,
             "dropout_rng": rng_at_start, "micro_batch": micro, "accum": accum}))
    return last_val


# -----------------------------------------------------------------------------------------------
# Stages

def run_ppt(args, out, ctx, dist):
    with torch.device("meta"):         # the model's shape, for the memory plan (allocates nothing)
        probe = GPT(model_config(args, args.ppt_vocab_size or ppt_source_vocab(args),
                                 head_bias=True))
    micro, memory = plan_micro_batch(args, "ppt", args.ppt_micro_batch, args.ppt_batch_tokens,
                                     probe, dist)
    train, val, source_vocab, info = ppt_source(args, dist["device"], dist["rank"],
                                                dist["world"], micro)
    vocab = args.ppt_vocab_size or source_vocab
    if vocab < source_vocab:
        raise TrainError(f"--ppt_vocab_size {vocab} is smaller than the {args.ppt_source} "
                         f"source's {source_vocab} tokens")
    torch.manual_seed(args.seed)
    model = GPT(model_config(args, vocab, head_bias=True)).to(dist["device"])
    extra = {"vocab": {"kind": info["tokenizer"] if args.ppt_source == "text" else args.ppt_source,
                       "size": vocab}}
    start_run(out, args, "ppt", dist)
    if args.ppt_source == "nca":
        extra["nca"] = {k: info[k] for k in ("config", "val_seeds", "mask_delimiters")}
        extra["copy"] = copy_baseline(val, info["config"]) if val else {}
        if dist["rank"] == 0 and val and not (args.resume and (out / "ckpt.pt").exists()):
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"kind": "info", "step": 0, "tokens": 0, **extra["copy"]})
                        + "\n")
    hp = dict(lr=args.ppt_lr, weight_decay=args.ppt_weight_decay, schedule=args.ppt_schedule,
              warmup_frac=args.ppt_warmup_frac, grad_clip=args.ppt_grad_clip,
              batch_tokens=args.ppt_batch_tokens, micro_batch=micro, memory=memory,
              tokens=args.ppt_tokens, eval_interval=args.ppt_eval_interval,
              ckpt_interval=args.ppt_ckpt_interval)
    return train_stage(args, "ppt", out, model, train, val, hp, ctx, dist, extra)


def run_lang(args, out, ctx, dist):
    data_dir = args.data_dir or f"data/{args.domain}"
    vocab = lang_vocab(args, data_dir)
    tokenizer = load_meta(data_dir).get("tokenizer", "gpt2")
    torch.manual_seed(args.seed)
    model = lang_model(args, vocab, dist["device"], tokenizer)
    micro, memory = plan_micro_batch(args, "lang", args.micro_batch, args.batch_tokens, model, dist)
    train = TextBatches(data_dir, "train", args.seq_len, micro, dist["device"], args.seed,
                        dist["rank"])
    val = text_val_batches(data_dir, args.seq_len, args.eval_tokens, micro, dist["device"])
    tokens = args.lang_tokens or len(load_tokens(data_dir, "train")) // args.batch_tokens \
        * args.batch_tokens
    hp = dict(lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
              warmup_frac=args.warmup_frac, grad_clip=args.grad_clip,
              batch_tokens=args.batch_tokens, micro_batch=micro, memory=memory, tokens=tokens,
              eval_interval=args.eval_interval, ckpt_interval=args.ckpt_interval,
              decay_all=args.decay_all)
    start_run(out, args, "lang", dist)
    return train_stage(args, "lang", out, model, train, val, hp, ctx, dist,
                       {"vocab": {"kind": tokenizer, "size": vocab}})


def setup_distributed(args):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = default_device(args.device)
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda")
                                             else "gloo")
    return {"rank": rank, "world": world, "device": device}


def main(argv=None):
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dist, locks = {"rank": rank, "world": world}, []
    try:
        check_flags(args, world)                    # everything is checked before any write
        check_inputs(args, given_flags(argv), world)
        dist = setup_distributed(args)
        if dist["device"].startswith("cuda"):   # TF32 for the model's float32 matmuls (NCA
            torch.set_float32_matmul_precision("high")   # generation stays exact regardless)
        ctx, args.dtype = autocast(args.dtype, dist["device"])
        out = Path(args.out_dir)
        master = dist["rank"] == 0
        do_ppt = args.stage in ("ppt", "both") and args.ppt_tokens > 0
        ppt_out = out / "ppt" if args.stage == "both" else out
        run_dirs = ([ppt_out] if do_ppt else []) + ([out] if args.stage != "ppt" else [])
        for d in run_dirs:
            check_run_dir(d, args)                          # before anything is trained
        refusal = None
        if master:                                          # the folders are ours until we exit
            try:
                for d in sorted(set(run_dirs), key=lambda d: len(d.parts)):
                    locks.append(lock_run_dir(d))
                for d in run_dirs:
                    check_run_dir(d, args)                  # again, now that no one else can write
            except TrainError as e:
                refusal = e
        if not _all_ok(dist, refusal is None):              # every rank stops if rank 0 must
            raise refusal or TrainError(f"rank 0 could not take {out}")
        if master:
            print(json.dumps({k: v for k, v in vars(args).items()}, default=str))
        if args.stage == "both" and args.resume and (out / "ckpt.pt").exists():
            do_ppt = False                                  # stage 2 already started: stage 1 done
            args.init_from = str(ppt_out / "ckpt.pt") if (ppt_out / "ckpt.pt").exists() else None
        result = {}
        if do_ppt:
            result["ppt"] = run_ppt(args, ppt_out, ctx, dist)
            if args.stage == "both":
                args.init_from = str(ppt_out / "ckpt.pt")
        if args.stage in ("lang", "both"):
            result["lang"] = run_lang(args, out, ctx, dist)
        return result
    except (ValueError, DataError, torch.cuda.OutOfMemoryError) as e:
        rank = f"[rank {dist['rank']}] " if dist["world"] > 1 else ""
        if isinstance(e, torch.cuda.OutOfMemoryError):
            e = ("out of GPU memory: pass a smaller --micro_batch / --ppt_micro_batch (or a "
                 "smaller --memory_gb for the automatic choice)")
        print(f"{rank}error: {e}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        for lock in reversed(locks):
            unlock_run_dir(*lock)
        if dist["world"] > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _all_ok(dist, ok):
    """False on every rank when `ok` is False on any (so a refusal on rank 0 stops them all)."""
    if dist["world"] == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=dist["device"])
    torch.distributed.all_reduce(flag)
    return flag.item() == 0


def _barrier(dist):
    if dist["world"] > 1:
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
