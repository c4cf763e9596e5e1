"""
Train the GPT in two stages (docs/method.md, 'Pipeline'):

  stage 1, "ppt" (pre-pre-training): next-token prediction on NCA trajectories (default), or on
           the baselines' sources: Dyck languages or natural text;
  stage 2, "lang" (language pre-training): on a prepared corpus (data/<domain>), from scratch or
           from a stage-1 checkpoint whose embeddings and head are replaced (the transfer).

  python train.py --stage both --domain web ...            # one arm: stage 1, then stage 2
  python train.py --stage both --domain web --ppt_tokens 0  # the scratch arm
  python train.py --stage ppt ...  /  --stage lang --init_from out/x/ppt/ckpt.pt ...
  torchrun --nproc_per_node 8 train.py ...                  # data parallel

Read top to bottom: the knobs (each a field of a dataclass below: its default and help text are
written there and nowhere else) and the presets; the stage-1 sources; main() and the plan; the
set-up of each stage and the transfer; train(), the one loop both stages run. main() hands each
part of the plan to guard.py, which refuses what cannot run before anything is written.

A run folder holds config.json, metrics.jsonl and ckpt.pt; with --stage both, stage 1 goes to
<out_dir>/ppt/.
"""
import argparse
import contextlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import torch

import dyck
import guard
import nca
from data.common import (TOKENIZERS, TextBatches, load_meta, load_tokens, probe_vocab,
                         text_val_batches)
from lab import probes
from model import ARCH, GPT, PPT_VOCAB, SIZES, GPTConfig, evaluate, model_config
from model import load_checkpoint, model_from_checkpoint, save_checkpoint
from util import (add_flags, auto_or_count, autocast, cli, flag, flag_values, from_flags,
                  given_flags, parse_with_presets, preset_text, rerun_defaults, script_parser,
                  setup_distributed, stage_flag, wrap_model)
from util.log import Log, plain_json, provenance, tracking
from util.runs import (body_line, device_memory, long_run_note, memory_estimate, rank_fingerprint,
                       micro_batch_note, restore_config, resume, run_summary, start_run_dir)

# -----------------------------------------------------------------------------------------------
# Knobs. Stage 1's optimization flags are --ppt_<name>, stage 2's the plain --<name>.

MICRO = ("sequences per forward pass; 0 = the largest that divides each process's share of the "
         "batch and fits in memory (estimate printed at start)")
CKPT = ("steps between checkpoints (0 = at every validation; -1 = the last step only, e.g. "
        "for timing); the last step is always saved")


@dataclass
class RunFlags:
    """run"""
    stage: str = flag("both", "ppt = stage 1, lang = stage 2, both = 1 then 2",
                      choices=["ppt", "lang", "both"])
    preset: str | None = flag(None, "a set of defaults: cpu (tiny model, minutes) or gpu "
                              "(GPT-2-small); their values are listed at the end, and "
                              "--preset NAME --help shows them as the defaults",
                              choices=lambda: sorted(PRESETS))
    config: str | None = flag(None, "rerun from a run's record: the flags in RUN/config.json "
                              "become the defaults; flags given here still win")
    out_dir: str = flag("out/run", "run folder")
    overwrite: bool = flag(False, "replace a run already in out_dir")
    resume: bool = flag(False, "continue the run in out_dir")
    arm: str | None = flag(None, "label of this run in eval tables (default: scratch / the ppt "
                           "source, e.g. nca-reinit-attn for an ablation)")
    seed: int = flag(0, "seed of init, data order and dropout")
    device: str = flag("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = flag("auto", "autocast dtype; auto = bfloat16 on CUDA, float32 elsewhere",
                      choices=["auto", "float32", "bfloat16", "float16"])
    compile: bool = flag(False, "torch.compile the model (the gpu preset turns it on)",
                         negatable=True)
    log_interval: int = flag(10, "steps between log lines")
    memory_gb: float = flag(0, "memory per process that an automatic micro-batch must fit in, "
                            "GiB (0 = the whole GPU, or this machine's RAM shared by the "
                            "processes)")
    max_iters: int = flag(0, "stop each stage after this many steps (0 = its token budget)")
    debug_ranks: bool = flag(False, "each process writes rank<r>.json (hash of its first batch "
                             "and of the final weights) to check data sharding and gradient sync")
    wandb_project: str | None = flag(None, "also log every metrics.jsonl line to this Weights & "
                                     "Biases project (needs wandb, optional)")
    wandb_run: str | None = flag(None, "name of the wandb run (with --stage both: NAME-ppt and "
                                 "NAME-lang); default: wandb's own")


@dataclass
class ModelFlags:
    """model (docs/method.md, 'Transformer')"""
    size: str = flag("small", "size preset", choices=list(SIZES))
    n_layer: int | None = flag(None, "override the preset")
    n_head: int | None = flag(None, "override the preset")
    n_embd: int | None = flag(None, "override the preset")
    mlp_hidden: int | None = flag(None, "SwiGLU width (default 4*n_embd)")
    attn_dropout: float = flag(GPTConfig.attn_dropout, "attention-probability dropout")
    seq_len: int = flag(GPTConfig.block_size, "tokens per sequence")
    rope_theta: float = flag(GPTConfig.rope_theta, "RoPE base (HF Llama default)")
    norm_eps: float = flag(GPTConfig.norm_eps, "RMSNorm epsilon")
    loss_chunk: int = flag(GPT.loss_chunk, "rows of logits the training loss holds at once")


@dataclass
class OptimFlags:
    """optimizer: AdamW in both stages"""
    adam_beta1: float = flag(0.9, "AdamW beta1 (official, both stages)")
    adam_beta2: float = flag(0.999, "AdamW beta2 (official, both stages)")
    adam_eps: float = flag(1e-8, "AdamW epsilon (official, both stages)")


@dataclass
class Stage1Flags:
    """stage 1: pre-pre-training (docs/method.md, 'Stage 1: pre-pre-training')"""
    ppt_source: str = flag("nca", "synthetic NCA trajectories, Dyck languages, or natural text",
                           choices=lambda: list(SOURCES))
    ppt_tokens: int = flag(163_840_000, "token budget; 0 = no stage 1 (scratch); official 164M")
    ppt_batch_tokens: int = flag(32768, "tokens per optimizer step")
    ppt_lr: float = flag(1e-4, "peak learning rate")
    ppt_weight_decay: float = flag(0.0, "official: Adam, no decay")
    ppt_schedule: str = flag("constant", "after warmup; the official 164M checkpoint ends its "
                             "warmup", choices=["cosine", "constant"])
    ppt_warmup_frac: float = flag(1.0, "fraction of steps in linear warmup (official 164M: all)")
    ppt_grad_clip: float = flag(0.0, "clip the mean gradient's norm; 0 = none (official)")
    ppt_eval_interval: int = flag(500, "steps between validations")
    ppt_micro_batch: int = flag(0, MICRO)
    ppt_ckpt_interval: int = flag(0, CKPT)
    ppt_vocab_size: int = flag(PPT_VOCAB, "stage-1 vocabulary (official 64,000); 0 = the "
                               "source's own size")
    ppt_val_seqs: int = flag(3200, "validation sequences")


# A stage-1 source's own flags: a dataclass per source (SOURCES lists them). A class titled like
# Stage1Flags joins its --help group; one with a title of its own gets a group of its own.

@dataclass
class NCARunFlags:
    """stage 1: pre-pre-training (docs/method.md, 'Stage 1: pre-pre-training')"""
    train_num_rules: int = flag(16000, "NCA rule bank size")
    val_num_rules: int = flag(2000, "held-out NCA rules")
    rule_seed: int = flag(0, "seed of the rule filter")
    nca_epoch_mode: str = flag("fixed_rules", "fixed_rules: new trajectories of the same bank "
                               "each epoch (official code); fresh_rules: a new bank each epoch "
                               "(official README)", choices=["fixed_rules", "fresh_rules"])
    mask_delimiters: bool = flag(False, "also ignore grid delimiters in the loss (official: "
                                 "trained)")


@dataclass
class TextFlags:
    """stage 1: pre-pre-training (docs/method.md, 'Stage 1: pre-pre-training')"""
    ppt_data: str = flag("data/c4", "prepared folder for --ppt_source text")


@dataclass
class Stage2Flags:
    """stage 2: language pre-training (docs/method.md, 'Transfer' and 'Stage 2: language
    pre-training')"""
    domain: str = flag("web", "prepared corpus data/<domain>")
    data_dir: str | None = flag(None, "prepared folder (overrides --domain)")
    init_from: str | None = flag(None, "stage-1 checkpoint for --stage lang")
    vocab_size: str = flag("auto", "auto = official per domain (web 50,257; math/code 64,000), "
                           "or a number", type=auto_or_count)
    embed_init: str = flag("paper", "new embeddings/head: PyTorch defaults (official) or "
                           "N(0, 0.02)", choices=["paper", "normal"])
    keep_embeddings: bool = flag(False, "keep stage-1 embeddings and head (text source only: "
                                 "'no re-init')")
    reinit: str = flag("", "comma list of attn,mlp,ln to re-initialize")
    reinit_layers: str = flag("", "layer range a:b for --reinit (all)")
    freeze: str = flag("", "comma list of attn,mlp,ln to freeze")
    freeze_layers: str = flag("", "layer range a:b for --freeze (all)")
    lang_tokens: int = flag(0, "token budget; 0 = one epoch of train.bin")
    batch_tokens: int = flag(524288, "tokens per optimizer step")
    lr: float = flag(5e-4, "peak learning rate (OWT 5e-4)")
    weight_decay: float = flag(1e-4, "AdamW decay (OWT 1e-4)")
    schedule: str = flag("cosine", "learning-rate schedule after warmup",
                         choices=["cosine", "constant"])
    warmup_frac: float = flag(0.1, "fraction of steps in linear warmup")
    grad_clip: float = flag(1 / 32, "clip the mean gradient's norm; 1/32 = official 1.0 on a sum "
                            "of 32")
    eval_interval: int = flag(100, "steps between validations")
    micro_batch: int = flag(0, MICRO)
    ckpt_interval: int = flag(0, CKPT)
    decay_all: bool = flag(True, "decay every parameter incl. norms (official) or only matrices",
                           negatable=True)
    eval_tokens: int = flag(4_194_304, "validation tokens (0 = the whole val split)")


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


def get_parser(doc=""):
    p = script_parser(doc, epilog=preset_text(PRESETS))
    p.usage = "%(prog)s [--preset cpu|gpu] [--config RUN/config.json] [flags]"
    for cls in (RunFlags, ModelFlags, OptimFlags, Stage1Flags):
        add_flags(p, cls)
    for _, flag_classes in SOURCES.values():
        for cls in flag_classes:
            add_flags(p, cls)
    add_flags(p, Stage2Flags)
    return p


def parse_args(argv=None):
    return parse_with_presets(get_parser(__doc__), argv, PRESETS, rerun_defaults)


def stage_hp(cfg, stage):
    """One stage's optimization knobs without their prefix: stage 1's --ppt_lr is hp.lr."""
    names = ("batch_tokens", "lr", "weight_decay", "schedule", "warmup_frac", "grad_clip",
             "eval_interval", "micro_batch", "ckpt_interval")
    prefix = "ppt_" if stage == "ppt" else ""
    return SimpleNamespace(**{n: getattr(cfg, prefix + n) for n in names},
                           decay_all=stage == "lang" and cfg.decay_all)


# -----------------------------------------------------------------------------------------------
# Stage-1 sources (docs/method.md, 'Adding a stage-1 source'): a function of the flags returning a
# Source, and its entry in SOURCES with the dataclasses of its own flags.

@dataclass
class Source:
    """What stage 1 needs from a source of token sequences."""
    kind: str                   # the tokens' kind, recorded with the checkpoint ("nca", "dyck")
    vocab_size: int             # ids it emits; the model may have more (--ppt_vocab_size)
    batches: Callable           # (micro_batch, device, rank, world) -> Batches
    check: Callable | None = None   # (model vocab, processes): refuses settings (guard.py calls it)
    scores: Callable | None = None  # () -> model.evaluate callback adding metrics to validation
    record: dict = field(default_factory=dict)  # what it resolved, for config.json (the band)


@dataclass
class Batches:
    train: Iterator             # endless (x, y) micro-batches, with state_dict / load_state_dict
    val: list                   # fixed (x, y) batches, the same for the whole run
    info: dict | None = None    # what the checkpoint keeps for evaluation (NCA: held-out rules)
    controls: dict = field(default_factory=dict)    # name -> val batches the line compares with


def nca_source(cfg):
    """Trajectories of random NCA rules (nca.py): a bank of rules inside the complexity band,
    filtered once and cached; held-out rules for validation."""
    gen = from_flags(nca.NCAConfig, cfg, seq_len=cfg.seq_len,
                     max_vocab=cfg.ppt_vocab_size or PPT_VOCAB)
    band = nca.band_from_args(cfg)

    def batches(micro, device, rank, world):
        n_train = cfg.train_num_rules
        # Rank 0 filters and caches the bank while the other ranks wait; then they read the cache
        # (or fail as rank 0 did: it reaches the barrier either way).
        try:
            if world > 1 and rank > 0:
                torch.distributed.barrier()
            bank = nca.filter_rules(gen, band, n_train + cfg.val_num_rules, seed=cfg.rule_seed,
                                    device=device, progress=rank == 0)
        finally:
            if world > 1 and rank == 0:
                torch.distributed.barrier()
        train_bank = nca.RuleBank(bank.seeds[:n_train], bank.scores[:n_train], bank.band)
        val_seeds = bank.seeds[n_train:]
        other = "time" if gen.frame_order == "shuffled" else "shuffled"   # the manipulation check
        val = lambda g: nca.val_batches(g, val_seeds, cfg.ppt_val_seqs, micro, device,
                                        mask_delimiters=cfg.mask_delimiters)
        return Batches(nca.NCABatches(gen, train_bank, micro, device, seed=cfg.seed,
                                      mode=cfg.nca_epoch_mode, rank=rank, world_size=world,
                                      mask_delimiters=cfg.mask_delimiters),
                       val(gen), {"config": asdict(gen), "val_seeds": [int(s) for s in val_seeds],
                                  "mask_delimiters": cfg.mask_delimiters},
                       {other: val(replace(gen, frame_order=other))})

    def check(vocab, world):
        guard.check_nca(gen, band)
        guard.check_nca_bank(cfg, world)
    applied = {"filter_rules_threshold": band[0], "filter_rules_upper_bound": band[1]}
    return Source("nca", gen.vocab_size, batches, check,
                  scores=lambda: probes.GridAccuracy(gen), record=applied)


def dyck_source(cfg):
    """k-Dyck bracket strings (dyck.py), generated on the fly; validation from its own stream."""
    gen = from_flags(dyck.DyckConfig, cfg, seq_len=cfg.seq_len,
                     max_vocab=cfg.ppt_vocab_size or PPT_VOCAB)

    def batches(micro, device, rank, world):
        return Batches(dyck.DyckBatches(gen, micro, device, seed=cfg.seed, rank=rank,
                                        world_size=world),
                       dyck.val_batches(gen, cfg.ppt_val_seqs, micro, device, seed=cfg.seed))
    return Source("dyck", gen.vocab_size, batches, check=lambda vocab, world: dyck.check_dyck(gen))


def text_source(cfg):
    """Natural text from a prepared folder (--ppt_data, e.g. C4): the text baseline."""
    meta = load_meta(cfg.ppt_data)

    def batches(micro, device, rank, world):
        return Batches(TextBatches(cfg.ppt_data, "train", cfg.seq_len, micro, device, cfg.seed,
                                   rank),
                       text_val_batches(cfg.ppt_data, cfg.seq_len, cfg.ppt_val_seqs * cfg.seq_len,
                                        micro, device))

    def check(vocab, world):
        guard.check_corpus(cfg.ppt_data, cfg.seq_len, vocab, "--ppt_vocab_size")
    return Source(meta.get("tokenizer", "gpt2"), meta["vocab_size"], batches, check)


SOURCES = {                 # --ppt_source: (the function, the dataclasses of its own flags)
    "nca": (nca_source, (NCARunFlags, nca.NCAConfig, nca.BandFlags)),
    "dyck": (dyck_source, (dyck.DyckConfig,)),
    "text": (text_source, (TextFlags,)),
}


def run_record(cfg, stage, body=None):
    """What a stage's config.json (and checkpoint) records: the flags that stage used, nothing
    else. Stage 1: run, model, optimizer and stage-1 flags and its source's own flags. Stage 2:
    run, model, optimizer and stage-2 flags and, from the body it starts from (`body`: the
    --init_from checkpoint), its stage-1 source and tokens; a scratch run has none."""
    rec = flag_values(cfg, RunFlags, ModelFlags, OptimFlags)
    if stage == "ppt":
        rec |= flag_values(cfg, Stage1Flags, *SOURCES[cfg.ppt_source][1])
    else:
        rec |= flag_values(cfg, Stage2Flags)
        rec |= {"ppt_source": body["config"].get("ppt_source"),
                "ppt_tokens": body.get("tokens")} if body else {}
    return rec | {"stage": stage}


# -----------------------------------------------------------------------------------------------
# main: plan the run, have guard.py check the plan, then stage 1 and / or stage 2

@cli
def main(argv=None):
    args = parse_args(argv)
    dist = setup_distributed(args.device)
    source = SOURCES[args.ppt_source][0](args) \
        if args.stage in ("ppt", "both") and args.ppt_tokens else None
    guard.check_flags(args, dist["world"], source)          # each flag alone: nothing read yet
    cfg, plan = plan_run(args, source, dist)                # what runs (reads metadata only)
    guard.check_plan(args, given_flags(get_parser(), argv), cfg, plan, source)  # data, body
    plan_memory(cfg, plan)                                  # the micro-batches
    with guard.train_run(cfg, plan):      # they fit, a --resume matches; the folders locked
        if dist["device"].startswith("cuda"):   # TF32 for the model's float32 matmuls (NCA
            torch.set_float32_matmul_precision("high")   # generation stays exact regardless)
        ctx, _ = autocast(cfg.dtype, dist["device"])
        # config.json also keeps the command's own flags (what --config reads) and provenance
        plan.record = plain_json({"flags": vars(args), "provenance": provenance(
            "train.py", argv, dist["device"])})
        if dist["rank"] == 0:
            print(run_summary(cfg, plan))
            note = long_run_note(cfg, plan, dist["device"])
            if note:
                print(note, flush=True)
            for stage in plan.all_stages:       # finished, so not run: its record made whole
                if stage not in plan.stages:
                    restore_config(plan.out[stage])
        result = {}
        if "ppt" in plan.stages:
            result["ppt"] = run_ppt(cfg, plan, source, ctx)
        if "lang" in plan.stages:       # with --stage both, from stage 1's checkpoint
            result["lang"] = run_lang(argparse.Namespace(**{**vars(cfg),
                                                            "init_from": plan.init_from}),
                                      plan, ctx)
        return result


# -----------------------------------------------------------------------------------------------
# The plan: what a command runs, from its flags and its inputs' metadata (nothing built or written)

def plan_run(args, source, dist):
    """cfg: the flags with what the command resolves (arm label, autocast dtype, micro-batches,
    an --init_from body's shape and source); plan: the stages, their folders, model configs,
    vocabularies and steps, the corpus and its budget, where stage 2 starts from, the modules
    to re-initialize or freeze, and the notes printed once the run folders are taken."""
    cfg, out = argparse.Namespace(**vars(args)), Path(args.out_dir)
    # stage 1 when there is a source (a token budget), stage 2 unless --stage ppt
    runs = (["ppt"] if source is not None else []) + (["lang"] if cfg.stage != "ppt" else [])
    plan = SimpleNamespace(dist=dist, stages=list(runs), all_stages=runs, configs={}, vocab={},
                           steps={}, micro={}, memory={}, flops={}, notes=[], reinit=[], freeze=[],
                           out={"ppt": out / "ppt" if cfg.stage == "both" else out, "lang": out},
                           lang_data=cfg.data_dir or f"data/{cfg.domain}", body=None)
    if source is not None:
        plan.vocab["ppt"] = cfg.ppt_vocab_size or source.vocab_size
        plan.configs["ppt"] = model_config(cfg, plan.vocab["ppt"], head_bias=True)
    if "lang" in plan.stages:
        plan_lang(cfg, plan)
    cfg.arm = cfg.arm or arm_label(cfg, source)
    plan.init_from = cfg.init_from                       # where stage 2 starts from
    if cfg.stage == "both" and cfg.resume and (out / "ckpt.pt").exists():
        plan.stages = ["lang"]                              # stage 2 already started: 1 is done
        ppt_ckpt = plan.out["ppt"] / "ckpt.pt"
        plan.init_from = str(ppt_ckpt) if ppt_ckpt.exists() else None
    elif "ppt" in plan.stages and "lang" in plan.stages:
        plan.init_from = str(plan.out["ppt"] / "ckpt.pt")
    _, cfg.dtype = autocast(cfg.dtype, dist["device"])
    for stage in plan.stages:           # the token budget over the batch, or --max_iters
        batch = getattr(cfg, stage_flag(stage, "batch_tokens"))
        steps = (plan.lang_tokens if stage == "lang" else cfg.ppt_tokens) // batch
        plan.steps[stage] = min(steps, cfg.max_iters) if cfg.max_iters else steps
    return cfg, plan


def plan_memory(cfg, plan):
    """Each stage's micro-batch (plan_micro_batch); then, with --resume, a stage whose checkpoint
    is at its last step is dropped: it has nothing left to run."""
    for stage in plan.stages:
        plan_micro_batch(cfg, stage, plan)
    if cfg.resume:
        for stage in list(plan.stages):
            path = plan.out[stage] / "ckpt.pt"
            step = guard.peek(path, "--resume:")["step"] if path.exists() else None
            if step == plan.steps[stage]:
                plan.stages.remove(stage)           # finished: nothing to run, no file to touch
                plan.notes.append(f"--resume: {stage} in {path.parent} is finished ({step} of "
                                  f"{plan.steps[stage]} steps): nothing to do for it")


# Official language vocabulary per domain (docs/differences.md, 'Language vocabulary per domain').
DOMAIN_VOCAB = {"web": TOKENIZERS["gpt2"][0], "c4": TOKENIZERS["gpt2"][0], "math": PPT_VOCAB,
                "code": PPT_VOCAB}


def plan_lang(cfg, plan):
    """Stage 2: the vocabulary (the domain's official one, or --vocab_size), the token budget
    (--lang_tokens, else one epoch of whole batches), the --init_from body (its shape and
    stage-1 source replace the flags'), the model config, the parts to re-init or freeze."""
    meta_vocab = load_meta(plan.lang_data)["vocab_size"]
    plan.vocab["lang"] = max(DOMAIN_VOCAB.get(Path(plan.lang_data).name, meta_vocab),
                             meta_vocab) if cfg.vocab_size == "auto" else cfg.vocab_size
    n_train = len(load_tokens(plan.lang_data, "train"))
    plan.lang_tokens = cfg.lang_tokens or n_train // cfg.batch_tokens * cfg.batch_tokens
    if cfg.init_from:
        body = plan.body = guard.peek(cfg.init_from, "--init_from",
                                      ("model", "model_args", "stage", "config"))
        for k in ARCH:
            setattr(cfg, k, body["model_args"].get(k))
        cfg.size = next((n for n, v in SIZES.items()
                         if all(v[k] == getattr(cfg, k) for k in ARCH[:3])), cfg.size)
        cfg.ppt_source = body["config"].get("ppt_source", cfg.ppt_source)
    plan.configs["lang"] = model_config(cfg, plan.vocab["lang"], head_bias=False)
    for what in ("reinit", "freeze"):
        layers = getattr(cfg, f"{what}_layers")
        layers = range(*map(int, layers.split(":"))) if layers else None
        setattr(plan, what, [(k, layers) for k in getattr(cfg, what).split(",") if k])


def arm_label(cfg, source):
    """The run's label in eval tables: scratch, its stage-1 source, or "nca-reinit-attn"."""
    arm = cfg.ppt_source if source is not None or cfg.init_from else "scratch"
    for what in ("reinit", "freeze"):
        if getattr(cfg, what) and arm != "scratch":
            layers = getattr(cfg, f"{what}_layers")
            arm += f"-{what}-{getattr(cfg, what).replace(',', '+')}" + \
                (f"[{layers}]" if layers else "")
    return arm


def plan_micro_batch(cfg, stage, plan):
    """A stage's micro-batch (sequences per forward pass), set in cfg: the flag, or for 0 the
    largest dividing each process's share of the batch whose memory_estimate fits in 90% of the
    memory less 2 GiB (CUDA context, workspaces, fragmentation); None if none (refused)."""
    T, world = cfg.seq_len, plan.dist["world"]
    batch = getattr(cfg, stage_flag(stage, "batch_tokens"))
    with torch.device("meta"):         # the model's shape (allocates nothing)
        model = GPT(plan.configs[stage])
    model.loss_chunk = cfg.loss_chunk
    for kind, layers in plan.freeze if stage == "lang" else []:
        model.freeze_modules(kind, layers)
    seqs = batch // (T * world)                             # sequences per process and step
    act = 4 if cfg.dtype == "float32" else 2
    memory = cfg.memory_gb * 2**30 if cfg.memory_gb else device_memory(plan.dist["device"], world)
    plan.usable = 0.9 * memory - 2 * 2**30
    name = stage_flag(stage, "micro_batch")
    micro = getattr(cfg, name) or max(
        (m for m in range(1, seqs + 1) if seqs % m == 0
         and memory_estimate(model, m, T, act)["total"] <= plan.usable), default=None)
    setattr(cfg, name, micro)
    plan.micro[stage], plan.memory_total = micro, memory
    plan.memory[stage] = memory_estimate(model, micro or 1, T, act)
    plan.flops[stage] = plan.steps[stage] * batch * model.flops_per_token(T)  # for the ETA note
    if micro and seqs % micro == 0:
        plan.notes.append(micro_batch_note(stage, micro, T, seqs // micro, world,
                                           plan.memory[stage], plan.usable))


def run_ppt(cfg, plan, source, ctx):
    """Stage 1: a fresh model (with the official stage-1 head bias) on the source's batches."""
    dist = plan.dist
    data = source.batches(cfg.ppt_micro_batch, dist["device"], dist["rank"], dist["world"])
    torch.manual_seed(cfg.seed)
    model = GPT(plan.configs["ppt"]).to(dist["device"])
    record = {"vocab": {"kind": source.kind, "size": plan.vocab["ppt"]}, "nca": data.info,
              "config": run_record(cfg, "ppt") | source.record | plan.record}
    return train("ppt", model, data, cfg, plan, ctx, record, scores=source.scores)


def run_lang(cfg, plan, ctx):
    """Stage 2: the transferred (or scratch) model on random windows of the corpus."""
    device, folder = plan.dist["device"], plan.lang_data
    body = load_checkpoint(cfg.init_from, mmap=True) if cfg.init_from else None  # what it records
    if plan.dist["rank"] == 0:
        print(body_line(cfg.init_from, body, plan.vocab["lang"]))
    model = lang_model(cfg, plan, device)
    data = Batches(TextBatches(folder, "train", cfg.seq_len, cfg.micro_batch, device, cfg.seed,
                               plan.dist["rank"]),
                   text_val_batches(folder, cfg.seq_len, cfg.eval_tokens, cfg.micro_batch, device))
    vocab = {"kind": load_meta(folder).get("tokenizer", "gpt2"), "size": plan.vocab["lang"]}
    record = {"vocab": vocab, "config": run_record(cfg, "lang", body=body) | plan.record}
    halves = probes.copy_halves(folder, cfg.seq_len, probe_vocab(vocab))   # the copy probes
    return train("lang", model, data, cfg, plan, ctx, record,
                 scores=lambda: probes.InContext(cfg.seq_len), probe=halves)


def lang_model(cfg, plan, device):
    """The stage-2 model (docs/method.md, 'Transfer'): the body of --init_from, or the scratch
    baseline's fresh body. Both get the same freshly initialized embeddings and head
    (reset_vocab, drawn right after re-seeding with --seed), so the arms of a seed differ only in
    the body; the data order and dropout stream that follow are the same too. A --reinit part
    gets the scratch arm's tensors (docs/method.md, 'Re-initialization')."""
    vocab_size = plan.vocab["lang"]
    torch.manual_seed(cfg.seed)
    if cfg.init_from:                                       # built on the CPU, then moved
        model = model_from_checkpoint(load_checkpoint(cfg.init_from), "cpu",
                                      block_size=cfg.seq_len, attn_dropout=cfg.attn_dropout)
    else:
        model = GPT(model_config(cfg, vocab_size, head_bias=False))
    torch.manual_seed(cfg.seed)             # whatever the body's initialization consumed
    if not cfg.keep_embeddings:
        model.reset_vocab(vocab_size, cfg.embed_init)
    elif model.config.head_bias:                            # language heads have no bias
        model.lm_head.bias, model.config.head_bias = None, False
    if plan.reinit:
        with torch.random.fork_rng(devices=[]):     # the stream that follows stays the scratch's
            torch.manual_seed(cfg.seed)
            fresh = GPT(model_config(cfg, vocab_size, head_bias=False))
        for kind, layers in plan.reinit:
            model.reinit_modules(kind, layers, like=fresh)
    for kind, layers in plan.freeze:
        model.freeze_modules(kind, layers)
    return model.to(device)


# -----------------------------------------------------------------------------------------------
# The training loop, shared by both stages

def train(stage, model, data, cfg, plan, ctx, record, scores=None, probe=None):
    """Train `model` for one stage (nanoGPT's loop): validate and checkpoint on schedule, one
    optimizer step accumulated over micro-batches, a log line. Returns the last validation."""
    hp, out, steps = stage_hp(cfg, stage), plan.out[stage], plan.steps[stage]
    batches = data.train
    rank, world, device = plan.dist["rank"], plan.dist["world"], plan.dist["device"]
    master, cuda = rank == 0, device.startswith("cuda")
    accum = hp.batch_tokens // (hp.micro_batch * cfg.seq_len * world)
    model.loss_chunk = cfg.loss_chunk
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    optimizer = model.configure_optimizers(hp.weight_decay, hp.lr, betas, cfg.adam_eps,
                                           device.split(":")[0], decay_all=hp.decay_all)
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler("cuda" if cuda else "cpu", enabled=cfg.dtype == "float16")
    fwd, val_model = wrap_model(model, cfg.compile, plan.dist)
    start_run_dir(out, cfg, stage, plan, record["config"])
    step = resume(out, stage, model, optimizer, batches, cfg, plan, record["config"]) \
        if cfg.resume else None
    resumed, step = step is not None, step or 0
    resumed_at, last_val, rates = step, None, []
    if world > 1:       # the init above is the same on every rank; dropout masks must differ
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, step, rank]).generate_state(1)[0]))
    debug = rank_fingerprint(batches) if cfg.debug_ranks else None
    log = Log(stage, out / "metrics.jsonl", master, model, cfg.seq_len, device, world, step,
              track=tracking(cfg, stage, out))
    log.start(steps, hp, accum, plan.memory[stage])
    ckpt_every = hp.ckpt_interval or hp.eval_interval
    model.train()
    while True:
        val_now = (step % hp.eval_interval == 0 or step == steps) and \
            not (resumed and step == resumed_at)
        with log.pause(step, val_now):            # not part of the throughput, nor of the ETA
            if val_now:
                last_val = validate(step, val_model, model, data, hp, cfg, ctx, log, scores,
                                    probe)
            save = ((hp.ckpt_interval >= 0 and step % ckpt_every == 0) or step == steps) \
                and not (step == resumed_at > 0)
            if save and master and (log.healthy or step == steps):    # no dead checkpoint
                save_checkpoint({"model": model.state_dict(),
                                 "optimizer": optimizer.state_dict(),
                                 "model_args": asdict(model.config), "step": step,
                                 "tokens": step * hp.batch_tokens, "stage": stage, **record,
                                 "data": batches.state_dict(),
                                 "rng": {"torch": torch.get_rng_state(), "cuda":
                                         torch.cuda.get_rng_state(device) if cuda else None}},
                                out / "ckpt.pt")
                log.saved = step
        if step == steps:
            break
        step += 1
        lr = lr_at(step - 1, steps, hp.lr, hp.warmup_frac, hp.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        log_now = step % cfg.log_interval == 0 or step == steps
        for micro_step in range(accum):
            x, y = next(batches)
            sync = contextlib.nullcontext() if world == 1 or micro_step == accum - 1 \
                else fwd.no_sync()
            with sync, ctx:
                _, loss = fwd(x, y)
                loss = loss / accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        norm = None
        if hp.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        elif log_now:                           # no clipping: the norm only for the log line
            norm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        log.tick(step)
        if log_now:
            tok_s = log.train_line(step, loss_sum, lr, float(norm), hp.batch_tokens)
            if step > resumed_at + 2 * cfg.log_interval:      # skip warm-up / compile steps
                rates.append(tok_s)
    log.close()
    if master and rates:
        print(f"{stage}: mean {np.mean(rates):,.0f} tok/s after warm-up")
    if debug is not None:
        wsum = sum(float(p.detach().double().sum()) for p in model.parameters())
        (out / f"rank{rank}.json").write_text(json.dumps(debug | {
            "rank": rank, "weights": wsum, "micro_batch": hp.micro_batch, "accum": accum}))
    return last_val


def lr_at(step, steps, peak, warmup_frac, schedule):
    """Linear warmup from 0 (the official LambdaLR: the first update uses lr 0), then constant
    or cosine to 0 at the last step."""
    warmup = int(warmup_frac * steps)
    if step < warmup:
        return peak * step / warmup
    if schedule == "constant" or steps <= warmup:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


def validate(step, val_model, model, data, hp, cfg, ctx, log, scores, probe):
    """Validation loss, the loss on the source's controls (NCA: the frames in the other order)
    and the stage's measures (NCA: accuracy beside copy and lookup; stage 2: the in-context
    score and the copy probes), logged and returned."""
    each = scores() if scores else None
    res = {"val_loss": evaluate(val_model, data.val, ctx, each=each)["loss"]}
    for name, batches in data.controls.items():
        res[f"val_loss_{name}"] = evaluate(val_model, batches, ctx)["loss"]
    res |= each.result() if each else {}
    if probe is not None:
        device = next(model.parameters()).device
        for name, p in probes.copy_probes(model, probe, hp.micro_batch, device, ctx).items():
            res |= {f"copy_{name}_{k}": p[k] for k in ("first", "second", "gain", "gain_se")}
    log.val_line(step, step * hp.batch_tokens, res)
    return res


if __name__ == "__main__":
    main()
