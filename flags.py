"""train.py's command line: every flag with its help, the presets, and the checks that run
before anything is built or written, so a refused command changes nothing and its corrected
retry is not refused because of the first one.

Stage 1 and stage 2 share one set of optimization settings (StageConfig); stage 1's flags are
--ppt_<name>, stage 2's --<name> (the budgets: --ppt_tokens, --lang_tokens).
"""
import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import ckpt
import dyck
import nca
from data.common import TOKENIZERS, check_corpus, load_meta, load_tokens
from model import GPTConfig, PPT_VOCAB, SIZES, config_for
from sources import SOURCES
from util import UserError, check_dtype, default_device, script_parser

# Official language vocabulary per domain (docs/differences.md, 'Language vocabulary per domain').
DOMAIN_VOCAB = {"web": TOKENIZERS["gpt2"][0], "c4": TOKENIZERS["gpt2"][0], "math": PPT_VOCAB,
                "code": PPT_VOCAB}


@dataclass
class StageConfig:
    """The optimization of one stage (defaults: the official code's, below)."""
    tokens: int             # token budget
    batch_tokens: int       # tokens per optimizer step
    lr: float               # peak learning rate
    weight_decay: float
    schedule: str           # after the linear warmup: cosine to 0, or constant
    warmup_frac: float
    grad_clip: float
    eval_interval: int
    micro_batch: int = 0    # sequences per forward pass; 0 = planned from a memory estimate
    ckpt_interval: int = 0  # 0 = at every validation
    decay_all: bool = False  # decay norms and biases too


PPT = StageConfig(tokens=163_840_000, batch_tokens=32768, lr=1e-4, weight_decay=0.0,
                  schedule="constant", warmup_frac=1.0, grad_clip=0.0, eval_interval=500)
LANG = StageConfig(tokens=0, batch_tokens=524288, lr=5e-4, weight_decay=1e-4, schedule="cosine",
                   warmup_frac=0.1, grad_clip=1 / 32, eval_interval=100, decay_all=True)
STAGE_HELP = {
    "tokens": ("token budget; 0 = no stage 1 (scratch); official 164M",
               "token budget; 0 = one epoch of train.bin"),
    "batch_tokens": ("tokens per optimizer step",) * 2,
    "lr": ("peak learning rate", "peak learning rate (OWT 5e-4)"),
    "weight_decay": ("official: Adam, no decay", "AdamW decay (OWT 1e-4)"),
    "schedule": ("after warmup; the official 164M checkpoint ends its warmup",
                 "learning-rate schedule after warmup"),
    "warmup_frac": ("fraction of steps in linear warmup (official 164M: all)",
                    "fraction of steps in linear warmup"),
    "grad_clip": ("clip the mean gradient's norm; 0 = none (official)",
                  "clip the mean gradient's norm; 1/32 = official 1.0 on a sum of 32"),
    "eval_interval": ("steps between validations",) * 2,
    "micro_batch": ("sequences per forward pass; 0 = the largest that divides each process's "
                    "share of the batch and fits in memory (estimate printed at start)",) * 2,
    "ckpt_interval": ("steps between checkpoints (0 = at every validation); the last step is "
                      "always saved",) * 2,
    "decay_all": (None, "decay every parameter incl. norms (official) or only matrices"),
}


def stage_flag(stage, name):
    if name == "tokens":
        return f"{stage}_tokens"
    return f"ppt_{name}" if stage == "ppt" else name


def stage_config(args, stage):
    return StageConfig(**{f.name: getattr(args, stage_flag(stage, f.name), False)
                          for f in fields(StageConfig)})


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


# -----------------------------------------------------------------------------------------------
# Flags

def get_parser(doc=""):
    p = script_parser(doc)
    add_run_args(p)
    add_model_args(p)
    add_ppt_args(p)
    nca.add_nca_args(p)
    dyck.add_dyck_args(p)
    add_lang_args(p)
    return p


def add_run_args(p):
    g = p.add_argument_group("run")
    g.add_argument("--stage", choices=["ppt", "lang", "both"], default="both",
                   help="ppt = stage 1, lang = stage 2, both = 1 then 2")
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


def add_model_args(p):
    g = p.add_argument_group("model (docs/method.md, 'Transformer')")
    g.add_argument("--size", choices=list(SIZES), default="small", help="size preset")
    for name in ARCH:
        g.add_argument(f"--{name}", type=int, default=None,
                       help="SwiGLU width (default 4*n_embd)" if name == "mlp_hidden"
                       else "override the preset")
    g.add_argument("--attn_dropout", type=float, default=GPTConfig.attn_dropout,
                   help="attention-probability dropout")
    g.add_argument("--seq_len", type=int, default=GPTConfig.block_size, help="tokens per sequence")


def add_stage_args(g, stage, defaults):
    for f in fields(StageConfig):
        helps = STAGE_HELP[f.name]
        if helps[stage == "lang"] is None:
            continue
        value, flag = getattr(defaults, f.name), "--" + stage_flag(stage, f.name)
        if f.type in ("bool", bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=value,
                           help=helps[stage == "lang"])
        elif f.name == "schedule":
            g.add_argument(flag, choices=["cosine", "constant"], default=value,
                           help=helps[stage == "lang"])
        else:
            g.add_argument(flag, type=int if f.type in ("int", int) else float, default=value,
                           help=helps[stage == "lang"])


def add_ppt_args(p):
    g = p.add_argument_group("stage 1: pre-pre-training (docs/method.md, 'Stage 1: "
                             "pre-pre-training')")
    g.add_argument("--ppt_source", choices=list(SOURCES), default="nca",
                   help="synthetic NCA trajectories, Dyck languages, or natural text")
    add_stage_args(g, "ppt", PPT)
    g.add_argument("--ppt_vocab_size", type=int, default=PPT_VOCAB,
                   help="stage-1 vocabulary (official 64,000); 0 = the source's own size")
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


def add_lang_args(p):
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
    add_stage_args(g, "lang", LANG)
    g.add_argument("--eval_tokens", type=int, default=4_194_304,
                   help="validation tokens (0 = the whole val split)")


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


def parse_args(argv=None, doc=""):
    p = get_parser(doc)
    first, _ = p.parse_known_args(argv)
    if first.preset:
        p.set_defaults(**PRESETS[first.preset])
    return p.parse_args(argv)


def layer_range(text, n_layer):
    if not text:
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"layer range {text!r} must look like a:b, e.g. 0:4") from None
    if not 0 <= a < b <= n_layer:
        raise UserError(f"layer range {text} is outside the model's {n_layer} layers")
    return range(a, b)


def kinds(text):
    out = [k for k in text.split(",") if k]
    for k in out:
        if k not in ("attn", "mlp", "ln"):
            raise UserError(f"unknown module kind {k!r} in --reinit/--freeze: use attn, mlp, ln")
    return out


def model_config(args, vocab_size, head_bias):
    over = {k: getattr(args, k) for k in ARCH if getattr(args, k) is not None}
    return config_for(args.size, vocab_size=vocab_size, head_bias=head_bias,
                      block_size=args.seq_len, attn_dropout=args.attn_dropout, **over)


def lang_data(args):
    return args.data_dir or f"data/{args.domain}"


def lang_vocab(args, data_dir):
    meta_vocab = load_meta(data_dir)["vocab_size"]
    if args.vocab_size == "auto":
        return max(DOMAIN_VOCAB.get(Path(data_dir).name, meta_vocab), meta_vocab)
    if args.vocab_size < meta_vocab:
        raise UserError(f"--vocab_size {args.vocab_size} cannot index {data_dir}'s {meta_vocab}"
                        "-token vocabulary: use at least that")
    return args.vocab_size


# -----------------------------------------------------------------------------------------------
# Checks

ARCH = ("n_layer", "n_head", "n_embd", "mlp_hidden")
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


def stages(args):
    """The stages this command runs."""
    ppt = ["ppt"] if args.stage in ("ppt", "both") and args.ppt_tokens else []
    return ppt + (["lang"] if args.stage in ("lang", "both") else [])


def check_flags(args, world):
    """Each flag on its own and in combination; nothing is read from disk."""
    for name, lo in AT_LEAST.items():
        v = getattr(args, name)
        if v is not None and v < lo:
            zero = f" (0 = {ZERO_MEANS[name]})" if name in ZERO_MEANS else ""
            raise UserError(f"--{name} must be at least {lo}{zero}, got {v}")
    for name, test, want in FLOAT_RULES:              # (a NaN fails every test)
        if not test(getattr(args, name)):
            raise UserError(f"--{name} must be {want}, got {getattr(args, name)}")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in out_dir and --overwrite replaces it: "
                        "pass one of them")
    if args.stage == "ppt" and args.ppt_tokens == 0:
        raise UserError("--stage ppt with --ppt_tokens 0 has nothing to train: give it a "
                        "stage-1 token budget")
    if args.init_from and args.stage != "lang":
        raise UserError(f"--init_from is for --stage lang (--stage {args.stage} "
                        + ("trains its own stage 1 and starts stage 2 from it)"
                           if args.stage == "both" else "always starts from scratch)"))
    check_stage2_flags(args)
    for stage in stages(args):
        check_batch(args, stage, world)
    check_dtype(args.dtype, default_device(args.device))   # no CUDA call before ranks pick GPUs


def check_stage2_flags(args):
    stage2 = [f for f in ("reinit", "reinit_layers", "freeze", "freeze_layers",
                          "keep_embeddings") if getattr(args, f)]
    if args.stage == "ppt" and stage2:
        raise UserError(f"--{stage2[0]} is a stage-2 flag, but --stage ppt has no stage 2")
    for flag in ("reinit", "freeze"):
        kinds(getattr(args, flag))
        if getattr(args, f"{flag}_layers") and not getattr(args, flag):
            raise UserError(f"--{flag}_layers {getattr(args, f'{flag}_layers')} needs --{flag} "
                            "(which modules: attn, mlp, ln)")
    if args.keep_embeddings:
        if args.stage == "lang" and not args.init_from:
            raise UserError("--keep_embeddings needs --init_from (a stage-1 text checkpoint)")
        if args.stage == "both" and (args.ppt_source != "text" or not args.ppt_tokens):
            raise UserError("--keep_embeddings keeps a stage-1 model's GPT-2 embeddings: it needs "
                            "--ppt_source text and a stage 1 (--ppt_tokens > 0)")


def check_batch(args, stage, world):
    """The batch splits into micro-batches of whole sequences on every process, and the budget
    holds at least one batch."""
    hp = stage_config(args, stage)
    bflag, mflag = "--" + stage_flag(stage, "batch_tokens"), "--" + stage_flag(stage, "micro_batch")
    per_step = max(hp.micro_batch, 1) * args.seq_len * world    # 0: plan_micro_batch picks one
    if hp.batch_tokens % per_step:
        what = f"{mflag} x --seq_len x processes = {hp.micro_batch} x " if hp.micro_batch else \
            "--seq_len x processes = "
        raise UserError(f"{bflag} {hp.batch_tokens:,} is not a multiple of {what}{args.seq_len} "
                        f"x {world} = {per_step:,}: adjust the batch or the micro-batch")
    if hp.tokens and hp.tokens < hp.batch_tokens:
        raise UserError(f"the {stage} token budget {hp.tokens:,} is less than one batch of "
                        f"{hp.batch_tokens:,} ({bflag}): raise the budget or lower the batch")


def check_inputs(args, given, world):
    """The data, checkpoints and vocabularies a run will use, against each other and the flags.
    Reads metadata only (meta.json, memory-mapped checkpoints). Sets the arm label and, with
    --init_from, the architecture and source the checkpoint imposes."""
    models = {}
    if "ppt" in stages(args):
        source = SOURCES[args.ppt_source](args)
        vocab = args.ppt_vocab_size or source.vocab_size
        if vocab < source.vocab_size:
            raise UserError(f"--ppt_vocab_size {vocab} is smaller than the {args.ppt_source} "
                            f"source's {source.vocab_size} tokens")
        source.check(world)
        models["ppt"] = model_config(args, vocab, head_bias=True)
    if "lang" in stages(args):
        models["lang"] = check_lang(args, given, models.get("ppt"))
    if args.arm is None:
        args.arm = args.ppt_source if "ppt" in stages(args) or args.init_from else "scratch"
    if args.resume:
        check_resume(args, models)


def check_lang(args, given, ppt_model):
    data_dir = lang_data(args)
    vocab = lang_vocab(args, data_dir)
    check_corpus(data_dir, args.seq_len, vocab, "--vocab_size")
    n_train = len(load_tokens(data_dir, "train"))
    if not args.lang_tokens and n_train < args.batch_tokens:
        raise UserError(f"{data_dir}/train.bin has {n_train:,} tokens, less than one batch "
                        f"of {args.batch_tokens:,}: lower --batch_tokens or set --lang_tokens")
    if args.init_from:
        ck = ckpt.peek(args.init_from, "--init_from", ("model", "model_args", "stage", "config"))
        if ck["stage"] != "ppt":
            raise UserError(f"--init_from {args.init_from} is a {ck['stage']!r}-stage "
                            "checkpoint; transfer needs a stage-1 (ppt) checkpoint")
        adopt_checkpoint_shape(args, given, ck)
        kind = (ck.get("vocab") or {}).get("kind")
        if args.keep_embeddings and (kind != "gpt2" or ck["model_args"]["vocab_size"] != vocab):
            raise UserError(f"--keep_embeddings needs a stage-1 model on GPT-2 tokens with "
                            f"vocabulary {vocab}; {args.init_from} has {kind} tokens, "
                            f"vocabulary {ck['model_args']['vocab_size']}")
    elif args.keep_embeddings and ppt_model.vocab_size != vocab:
        raise UserError(f"--keep_embeddings needs the same vocabulary in both stages: "
                        f"--ppt_vocab_size gives {ppt_model.vocab_size}, stage 2 "
                        f"{vocab} (set --ppt_vocab_size {vocab})")
    config = model_config(args, vocab, head_bias=False)
    for flag in ("reinit", "freeze"):
        layer_range(getattr(args, f"{flag}_layers"), config.n_layer)
    return config


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
            raise UserError(f"{flag} asks for {k} {v}, but --init_from {args.init_from} is a "
                            f"model with {k} {have[k]}: drop the flag (the checkpoint sets the "
                            "shape)")
    for k in ARCH:
        setattr(args, k, ck["model_args"].get(k))
    args.size = next((n for n, v in SIZES.items()
                      if all(v[k] == have[k] for k in ARCH[:3])), args.size)
    source = ck["config"].get("ppt_source", args.ppt_source)
    if "ppt_source" in given and args.ppt_source != source:
        raise UserError(f"--ppt_source {args.ppt_source}, but --init_from {args.init_from} was "
                        f"trained on {source}: drop the flag")
    args.ppt_source = source


def check_resume(args, models):
    """--resume continues a run only with the model and batch it was trained with."""
    out = Path(args.out_dir)
    ppt_path = (out / "ppt" if args.stage == "both" else out) / "ckpt.pt"
    if "lang" in models and (out / "ckpt.pt").exists():
        stage, path = "lang", out / "ckpt.pt"
    elif "ppt" in models and ppt_path.exists():
        stage, path = "ppt", ppt_path
    else:
        return
    ck = ckpt.peek(path, "--resume:", ("model", "model_args", "stage", "config"))
    if ck.get("stage") != stage:
        raise UserError(f"{path} is a {ck.get('stage')!r}-stage checkpoint, not {stage!r}: "
                        "check --out_dir and --stage")
    fix = f"resume with the flags in {path.parent / 'config.json'} or use another --out_dir"
    for k, want in asdict(models[stage]).items():
        if ck["model_args"].get(k) != want:
            raise UserError(f"--resume: {path} holds a model with {k} {ck['model_args'].get(k)}, "
                            f"this command asks for {k} {want}: {fix}")
    key = stage_flag(stage, "batch_tokens")
    if ck["config"].get(key) != getattr(args, key):
        raise UserError(f"--resume: {path} was trained with --{key} {ck['config'].get(key)}, "
                        f"this command asks for {getattr(args, key)}: {fix}")
    transfer = bool(args.init_from) or "ppt" in models
    if stage == "lang" and bool(ck["config"].get("init_from")) != transfer:
        kind = lambda t: "a transfer from stage 1" if t else "a scratch run"
        raise UserError(f"--resume: {path} is {kind(not transfer)}, this command asks for "
                        f"{kind(transfer)}: {fix}")
