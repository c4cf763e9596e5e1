"""Evaluate runs: validation perplexity per domain, the change and the convergence speedup
against the scratch baseline, validation-loss curves, and the in-context accuracy of stage-1 NCA
checkpoints (docs/method.md, 'Evaluation').

    python eval.py out/scratch_web out/nca_web              # table, eval.json, eval.md
    python eval.py out/*/ --domains web,math --plot curves.png
    python eval.py out/nca_web/ppt                           # stage-1 NCA: accuracy by grid

Perplexity. Every model reads the same windows of the validation split: non-overlapping windows
of block_size + 1 tokens at stride block_size from the start of val.bin (a window's last token is
only a target and is the next window's first input, so each token after the first is predicted
once), as many as fit in --eval_tokens predicted tokens. ppl = exp(token-mean cross-entropy).

Baseline. For each training domain, the --baseline run trained on it, else the first scratch run
(stage lang, init_from null) trained on it. Change = ppl / baseline ppl - 1, per eval domain.

Speedup, summary over seeds, tables and plots: report.py.
"""
import json
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import ckpt
import nca
from data.common import (TOKENIZERS, eval_windows, load_meta, load_tokens, max_token,
                         probe_vocab, show, token_bytes)
from model import copy_probe, evaluate
from report import compare, plot_curves, pyplot, report_text, summarize
from sources import GridAccuracy
from util import UserError, atomic_write, autocast, default_device, progress_bar, script_parser

ROOT = Path(__file__).resolve().parent


class EvalError(UserError):
    """A problem the user can fix (a path, a refused option); the message is one line."""


# ---------------------------------------------------------------- perplexity

def perplexity(model, windows, batch_size=8, device="cpu", ctx=nullcontext(), desc=None):
    """exp(token-mean cross-entropy) of `model` on windows (N, T + 1): inputs w[:, :-1], targets
    w[:, 1:]. Token-mean rather than the official mean of per-batch means (docs/differences.md,
    'Windows and validation averaging'); the two differ only through a smaller last batch.
    Returns {"loss", "ppl", "tokens"}."""
    with progress_bar(len(windows) * (windows.shape[1] - 1), desc, unit="tok",
                      disable=desc is None, unit_scale=True, leave=False) as bar:
        r = evaluate(model, [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)], ctx,
                     device, each=lambda x, *_: bar.update(x.numel()))
    return {**r, "ppl": math.exp(r["loss"])}


def ngram_baselines(train, windows, vocab_size):
    """Cross-entropy (nats/token) of the window targets under unigram and bigram models counted
    on the train split: what a model has to beat to have learned more than token frequencies
    and pairs. Unigram: add-alpha counts; bigram: counts with the unigram as a Dirichlet prior,
    p(b | a) = (c(a, b) + k p(b)) / (c(a) + k). alpha and k are the best of a small grid on these
    windows, which flatters the baselines a little: beating them is a conservative claim."""
    train = np.asarray(train, dtype=np.int64)
    x, y = (windows[:, :-1].reshape(-1).numpy(), windows[:, 1:].reshape(-1).numpy())
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    uni = {a: -np.log((counts[y] + a) / (len(train) + a * vocab_size)).mean()
           for a in (0.01, 0.1, 1.0)}
    alpha = min(uni, key=uni.get)
    p_uni = (counts + alpha) / (len(train) + alpha * vocab_size)
    pairs, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    q = x * vocab_size + y
    at = np.minimum(np.searchsorted(pairs, q), len(pairs) - 1)
    c_ab = np.where(pairs[at] == q, pair_counts[at], 0)
    c_a = np.bincount(train[:-1], minlength=vocab_size)[x]
    bi = {k: -np.log((c_ab + k * p_uni[y]) / (c_a + k)).mean() for k in (0.1, 1.0, 10.0, 100.0)}
    return {"unigram": float(uni[alpha]), "bigram": float(min(bi.values()))}


def bits_per_byte(loss, windows, nbytes):
    """Token-mean loss (nats) over the window targets -> bits per UTF-8 byte of their text."""
    return loss * windows[:, 1:].numel() / math.log(2) / nbytes


# ---------------------------------------------------------------- stage-1 NCA checkpoints

def nca_eval(model, nca_info, num_seqs=64, batch_size=8, device="cpu", ctx=nullcontext(),
             desc=None):
    """A stage-1 NCA checkpoint on its held-out rules: validation loss over the supervised labels
    and in-context accuracy by grid position, beside the 'copy the previous grid' predictor
    (sources.GridAccuracy). Lists are indexed by grid g = 1..G: grid g is predicted with g
    earlier grids in context (grid 0 is the unscored prompt). token_acc = share of its patch
    tokens right under teacher forcing; grid_acc = whole grid right (= greedy decoding)."""
    cfg = nca.NCAConfig(**nca_info["config"])
    batches = nca.val_batches(cfg, nca_info["val_seeds"], num_seqs, batch_size, device,
                              mask_delimiters=nca_info.get("mask_delimiters", False))
    acc = GridAccuracy(cfg)
    with progress_bar(len(batches), desc, unit="batch", disable=desc is None, leave=False) as bar:
        loss = evaluate(model, batches, ctx, device,
                        each=lambda *a: (acc(*a), bar.update(1)))["loss"]
    return {"val_loss": loss, "num_seqs": acc.seqs, "grid": list(range(1, len(acc.sums["token_acc"]) + 1)),
            **acc.by_grid()}


# ---------------------------------------------------------------- runs and checkpoints

@dataclass
class Run:
    folder: Path
    ckpt: Path
    config: dict
    metrics: list
    label: str = ""

    @property
    def stage(self):
        return self.config.get("stage")

    @property
    def domain(self):
        return self.config.get("domain")

    @property
    def is_scratch(self):
        return self.stage == "lang" and not self.config.get("init_from")


def load_run(path):
    """A run from its folder or its ckpt.pt: config.json (else the checkpoint's config) and the
    lines of metrics.jsonl (none if absent; an unfinished last line of a live run is skipped)."""
    path = Path(path)
    folder, ck_path = (path.parent, path) if path.is_file() else (path, path / "ckpt.pt")
    if not ck_path.is_file():
        raise EvalError(f"{show(ck_path)} is missing: pass a run folder of train.py or a ckpt.pt")
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        try:
            config = json.loads(cfg_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise EvalError(f"{show(cfg_path)} is not valid JSON: delete it to use the config "
                            "saved in the checkpoint") from None
    else:
        config = ckpt.peek(ck_path).get("config")
    if not isinstance(config, dict):
        raise EvalError(f"{show(cfg_path)} holds no run config (a JSON object written by train.py)")
    metrics = []
    m_path = folder / "metrics.jsonl"
    lines = m_path.read_text().splitlines() if m_path.exists() else []
    for i, line in enumerate(lines):
        try:
            metrics.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise EvalError(f"{show(m_path)} line {i + 1} is not JSON") from None
    return Run(folder, ck_path, config, metrics)


def language_refusal(ckpt, tokenizer="gpt2", vocab=None):
    """Why a checkpoint cannot be scored on token files of `tokenizer`, or None if it can. The
    model must have the tokenizer's ids (a folder's own vocab_size, `vocab`, counts only for an
    unknown tokenizer; ids beyond the model are checked against the folder's max_token)."""
    kind = (ckpt.get("vocab") or {}).get("kind")
    size = ckpt["model_args"].get("vocab_size", 0)
    vocab = TOKENIZERS[tokenizer][0] if tokenizer in TOKENIZERS else vocab
    if kind != tokenizer:
        return f"its vocabulary is {kind!r}, not {tokenizer!r}"
    if size < vocab:
        return f"its model has {size:,} output classes, fewer than the {vocab:,} {tokenizer} ids"
    return None


def refusal_text(refusals):
    """{domain: reason or None} -> "web, math: reason; ..." (None if every domain was scored)."""
    by_reason = {}
    for name, why in refusals.items():
        if why:
            by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items()) or None


def label_runs(runs):
    """Row labels: the config's arm and the folder name (the path when names collide)."""
    def name(r):
        f = r.folder.resolve()
        return f"{f.parent.name}/{f.name}" if f.name == "ppt" else f.name

    def arm(r):
        return r.config.get("arm") or ("scratch" if r.is_scratch else r.config.get("ppt_source"))
    both = lambda a, n: n if a == n else f"{a} ({n})"          # "scratch", not "scratch (scratch)"
    labels = [both(arm(r), name(r)) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{arm(r)} ({show(r.folder)})" for r in runs]
    for r, label in zip(runs, labels):
        r.label = label


def assign_baselines(runs, explicit=()):
    """Each run's baseline (a Run or None): the first of `explicit` trained on the same domain,
    else the first scratch run trained on it."""
    base = {}
    for r in [*explicit, *(r for r in runs if r.is_scratch)]:
        base.setdefault(r.domain, r)
    return [base.get(r.domain) for r in runs]


# ---------------------------------------------------------------- command line

def get_args(argv=None):
    p = script_parser(__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_OR_CKPT",
                   help="run folders of train.py or ckpt.pt files")
    p.add_argument("--domains", default="web,math,code",
                   help="comma-separated prepared domains under --data_root ('' for none)")
    p.add_argument("--extra_data", action="append", default=[], metavar="DIR",
                   help="another prepared folder to evaluate on, named by its folder name "
                        "(repeatable)")
    p.add_argument("--data_root", default=str(ROOT / "data"), help="where the domain folders live")
    p.add_argument("--eval_tokens", type=int, default=262144,
                   help="predicted tokens per domain, capped by the val split "
                        "(<= 0: the whole split)")
    p.add_argument("--block_size", type=int, default=None,
                   help="window length (None: the smallest block_size of the models, so all "
                        "read the same windows)")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN",
                   help="baseline run of its training domain, repeatable (none: the first "
                        "scratch run of each domain)")
    p.add_argument("--nca_val_seqs", type=int, default=64,
                   help="sequences of held-out rules for stage-1 NCA runs")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype (auto: bfloat16 on CUDA when supported, else float32)")
    p.add_argument("--out", default="out/eval", help="folder for eval.json and eval.md")
    p.add_argument("--overwrite", action="store_true", help="replace an existing eval.json in --out")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the validation curves here (needs matplotlib)")
    return p.parse_args(argv)


def run(args):
    """Check everything, score every run on every domain it can read, write eval.json/eval.md."""
    out_dir = Path(args.out)
    if (out_dir / "eval.json").exists() and not args.overwrite:
        raise EvalError(f"{show(out_dir / 'eval.json')} exists: pass --overwrite to replace it, "
                        "or another --out")
    if args.plot:
        pyplot()  # fail now, not after the evaluation
    for name in ("batch_size", "nca_val_seqs", "block_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise EvalError(f"--{name} must be at least 1, got {getattr(args, name)}")
    device = default_device(args.device)
    ctx, dtype = autocast(args.dtype, device, training=False)
    runs, baselines = gather_runs(args.runs, args.baseline)
    # Pass 1 reads what each checkpoint is (memory-mapped, cheap) and checks every domain before
    # any model runs; pass 2 builds one model at a time.
    info = [ckpt.peek(r.ckpt) for r in runs]
    plan = Plan(args, runs, info)
    print("config:", json.dumps(vars(args)))  # after the checks: a refusal prints one line only
    results = [score_run(r, inf, refusals, plan, args, device, ctx)
               for r, inf, refusals in zip(runs, info, plan.refusals)]
    compare(runs, results, baselines)
    summary = summarize(runs, results)
    report = {"eval_tokens": args.eval_tokens, "block_size": plan.block, "device": device,
              "dtype": dtype, "domains": plan.domains, "runs": results, "summary": summary}
    text = report_text(results, plan.domains, plan.block, summary)
    print(text)
    atomic_write(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / "eval.md", text + "\n")
    print(f"wrote {show(out_dir / 'eval.json')} and {show(out_dir / 'eval.md')}")
    if args.plot:
        plot_curves(runs, baselines, args.plot)
        print(f"wrote {args.plot}")
    return report


def gather_runs(paths, baseline_paths):
    """The runs to score, labelled, and each one's baseline run."""
    runs = [load_run(p) for p in paths]
    explicit = []
    for p in baseline_paths:  # a baseline not among the runs is evaluated too, as the first row
        b = load_run(p)
        same = [r for r in runs if r.folder.resolve() == b.folder.resolve()]
        if not same:
            runs.insert(0, b)
        explicit.append(same[0] if same else b)
    label_runs(runs)
    return runs, assign_baselines(runs, explicit)


class Plan:
    """What will be scored, all checked before any model runs: the domains (their windows, bytes
    and n-gram baselines), the window length, and why each run cannot read a domain
    (refusals[i][domain], None where it can)."""

    def __init__(self, args, runs, info):
        folders = [Path(args.data_root) / d for d in args.domains.split(",") if d]
        folders += [Path(p) for p in args.extra_data]
        names = [f.name for f in folders]
        if len(set(names)) < len(names):
            raise EvalError(f"two eval domains share a folder name: {', '.join(names)}")
        metas = {name: load_meta(folder) for name, folder in zip(names, folders)}
        self.refusals = [{n: language_refusal(inf, m.get("tokenizer", "gpt2"), m["vocab_size"])
                          for n, m in metas.items()} for inf in info]
        lang = [i for i, ref in enumerate(self.refusals) if None in ref.values()]
        self.block = args.block_size or min((info[i]["model_args"]["block_size"] for i in lang),
                                            default=1024)
        for i in lang:
            if info[i]["model_args"]["block_size"] < self.block:
                raise EvalError(f"--block_size {self.block} is longer than the "
                                f"{info[i]['model_args']['block_size']} of {runs[i].label}")
        self.windows, self.domains, self.nbytes = {}, {}, {}
        for name, folder in zip(names, folders):
            scored = [i for i in lang if self.refusals[i][name] is None]
            if scored:
                self.add_domain(name, folder, metas[name], [(runs[i], info[i]) for i in scored],
                                args.eval_tokens)

    def add_domain(self, name, folder, meta, scored, eval_tokens):
        top = max_token(folder)
        for r, inf in scored:
            if inf["model_args"]["vocab_size"] <= top:
                raise EvalError(f"{show(folder)} holds token id {top:,}, outside the "
                                f"{inf['model_args']['vocab_size']:,}-token vocabulary of "
                                f"{r.label}: evaluate it on other --domains")
        val = load_tokens(folder, "val")
        w = self.windows[name] = torch.from_numpy(eval_windows(val, self.block, eval_tokens))
        tokenizer = meta.get("tokenizer", "gpt2")
        known = tokenizer in TOKENIZERS           # bits per byte need the token -> text map
        nb = self.nbytes[name] = int(token_bytes(tokenizer)[w[:, 1:].numpy()].sum()) \
            if known else None
        base = ngram_baselines(load_tokens(folder, "train"), w, meta["vocab_size"])
        self.domains[name] = {"path": show(folder), "tokenizer": tokenizer,
                              "val_tokens": len(val), "windows": len(w),
                              "tokens": len(w) * self.block, "bytes": nb, "baselines": base,
                              "baselines_bpb": {k: bits_per_byte(v, w, nb)
                                                for k, v in base.items()} if known else {}}


def score_run(r, inf, refusals, plan, args, device, ctx):
    """One run's row: loss, bits per byte and perplexity on each domain it can read and the copy
    probe; a stage-1 NCA run also (or instead) on its held-out rules."""
    c = r.config
    res = {"label": r.label, "path": show(r.folder), "ckpt": show(r.ckpt), "arm": c.get("arm"),
           "stage": r.stage, "domain": r.domain, "ppt_source": c.get("ppt_source"),
           "init_from": c.get("init_from"), "seed": c.get("seed"),
           "trained_on": r.domain if r.stage == "lang" else f"{c.get('ppt_source')} (stage 1)",
           "step": inf.get("step"), "tokens": inf.get("tokens"), "vocab": inf.get("vocab"),
           "ppl": {}, "loss": {}, "bpb": {}, "probe": None, "nca": None,
           "refused": refusal_text(refusals)}
    is_lang = None in refusals.values()
    is_nca = (inf.get("vocab") or {}).get("kind") == "nca" and inf.get("nca") is not None
    if res["refused"]:
        print(f"{r.label}: not evaluated on {res['refused']}"
              + ("; evaluating it on its NCA validation rules instead" if is_nca else ""))
    if not (is_lang or is_nca):
        return res
    model = ckpt.build_model(ckpt.load(r.ckpt, mmap=True), device).eval()
    for name, w in plan.windows.items():
        if refusals[name] is None:
            p = perplexity(model, w, args.batch_size, device, ctx, desc=f"{r.label} {name}")
            res["ppl"][name], res["loss"][name] = p["ppl"], p["loss"]
            if plan.nbytes[name]:
                res["bpb"][name] = bits_per_byte(p["loss"], w, plan.nbytes[name])
    if is_lang:
        res["probe"] = copy_probe(model, probe_vocab(inf["vocab"]), plan.block // 2,
                                  batch_size=args.batch_size, device=device, ctx=ctx)
    if is_nca:
        res["nca"] = nca_eval(model, inf["nca"], args.nca_val_seqs, args.batch_size, device, ctx,
                              desc=f"{r.label} nca")
    return res


def main(argv=None):
    """Run the evaluation; returns the eval.json dict. User errors exit with a one-line message."""
    args = get_args(argv)
    try:
        return run(args)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
