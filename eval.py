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

Speedup and tables: this file; summary over seeds, paired statistics and plots: lab/.
"""
# eval.py plans its evaluation (plan_eval: runs, baselines, domains, windows, token budget), each
# decision checked by guard.py before any model runs; then it scores each run (score_run),
# compares it with its baseline (compare: change and speedup) and writes eval.json and eval.md
# (write_eval). Optional columns: lab/stats.py (seeds, contrasts), lab/plots.py, lab/probes.py.
import argparse
import json
import math
import sys
import time
import uuid
import zlib
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

import guard
import nca
import train
from data.common import (TOKENIZERS, eval_windows, language_refusal, load_meta, load_tokens,
                         probe_vocab, show, token_bytes)
from lab import probes
from lab.plots import draw_pictures
from lab.stats import (contrasts, eval_pairs, format_contrasts, format_shares, format_summary,
                       summarize)
from model import evaluate, load_checkpoint, model_from_checkpoint
from util import (UserError, add_flags, atomic_write, autocast, calls, cli, default_device, flag,
                  progress_bar, read_config, read_metrics, script_parser, sweep_temporaries)
from util.log import provenance, provenance_line
from util.runs import (diverged_at, eval_id_line, eval_pair_mismatch, finite_json,
                       trained_folder)


# ---------------------------------------------------------------- perplexity

def perplexity(model, windows, batch_size=8, device="cpu", ctx=nullcontext(), desc=None):
    """exp(token-mean cross-entropy) of `model` on windows (N, T + 1): inputs w[:, :-1], targets
    w[:, 1:]. Token-mean rather than the official mean of per-batch means (docs/differences.md,
    'Windows and validation averaging'); the two differ only through a smaller last batch.
    Returns {"loss", "ppl", "tokens", "in_context"} (probes.InContext on the same windows)."""
    icl = probes.InContext(windows.shape[1] - 1)
    with progress_bar(len(windows) * (windows.shape[1] - 1), desc, unit="tok",
                      disable=desc is None, unit_scale=True, leave=False) as bar:
        r = evaluate(model, [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)], ctx,
                     device, each=calls(icl, lambda x, *_: bar.update(x.numel())))
    return {**r, "ppl": math.exp(r["loss"]), "in_context": icl.summary()}


def bits_per_byte(loss, windows, nbytes):
    """Token-mean loss (nats) over the window targets -> bits per UTF-8 byte of their text."""
    return loss * windows[:, 1:].numel() / math.log(2) / nbytes


# ---------------------------------------------------------------- stage-1 NCA checkpoints

def nca_eval(model, nca_info, num_seqs=64, batch_size=8, device="cpu", ctx=nullcontext(),
             desc=None):
    """A stage-1 NCA checkpoint on its held-out rules in time order, whatever order it trained
    on: loss, and accuracy by grid g = 1..G (predicted with g grids in context) beside copy and
    lookup (probes.GridAccuracy; token_acc under teacher forcing, grid_acc = whole grid right);
    the loss on the same frames shuffled (the manipulation check, docs/method.md); `rules`, a
    fingerprint of the rules and setting that a frame-shuffled body of the same rules shares."""
    cfg = nca.NCAConfig(**nca_info["config"] | {"frame_order": "time"})
    val = lambda c: nca.val_batches(c, nca_info["val_seeds"], num_seqs, batch_size, device,
                                    mask_delimiters=nca_info.get("mask_delimiters", False))
    acc = probes.GridAccuracy(cfg)
    with progress_bar(2 * num_seqs, desc, unit="seq", disable=desc is None, leave=False) as bar:
        tick = lambda x, *_: bar.update(len(x))
        loss = evaluate(model, val(cfg), ctx, device, each=calls(acc, tick))["loss"]
        shuffled = evaluate(model, val(replace(cfg, frame_order="shuffled")), ctx, device, tick)
    return {"val_loss": loss, "shuffled_loss": shuffled["loss"], "num_seqs": acc.seqs,
            "trained_order": nca_info["config"].get("frame_order", "time"),
            "rules": zlib.crc32(json.dumps([asdict(cfg), nca_info["val_seeds"],
                                            nca_info.get("mask_delimiters", False)]).encode()),
            "grid": list(range(1, len(acc.sums["token_acc"]) + 1)), **acc.by_grid()}


def stage1_eval(model, config, batch_size=8, device="cpu", ctx=nullcontext()):
    """A stage-1 checkpoint of a source other than NCA on its source's own validation batches,
    rebuilt from the flags its record holds (train.SOURCES): the loss, and the source's scores
    beside it (docs/method.md, 'Adding a stage-1 source')."""
    flags = argparse.Namespace(**{**vars(train.parse_args([])), **config["flags"]})
    source = train.SOURCES[flags.ppt_source][0](flags)
    each = source.scores() if source.scores else None
    val = source.batches(batch_size, device, 0, 1).val
    res = {"source": flags.ppt_source, "val_loss": evaluate(model, val, ctx, device, each)["loss"],
           "num_seqs": sum(len(x) for x, _ in val)}
    return res | (each.result() if each else {})


# ---------------------------------------------------------------- command line

@dataclass
class EvalFlags:
    """evaluation"""
    domains: str | None = flag(None, "comma-separated prepared domains under --data_root ('' "
                               "for none; default: each run's own training folder, then the "
                               "other folders prepared there with its tokenizer)")
    data_root: str | None = flag(None, "where the domain folders live (default: this "
                                 "repository's data/)")
    eval_tokens: int | None = flag(None, "predicted tokens per domain, capped by the val split "
                                   "(<= 0: the whole split; default: the runs' own "
                                   "--eval_tokens from config.json, else 262,144)")
    block_size: int | None = flag(None, "window length (None: the smallest block_size of the "
                                  "models, so all read the same windows)")
    nca_val_seqs: int = flag(512, "sequences of held-out rules for stage-1 NCA runs (grid "
                             "accuracy moves in steps of 1 / this)")
    batch_size: int = flag(8, "sequences per forward pass")
    device: str = flag("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = flag("auto", "autocast dtype (auto: bfloat16 on CUDA when supported, else "
                      "float32)", choices=["auto", "float32", "bfloat16", "float16"])
    out: str = flag("out/eval", "folder for eval.json and eval.md")
    overwrite: bool = flag(False, "replace an existing eval.json in --out")
    plot: str | None = flag(None, "draw the validation curves here (needs matplotlib)")
    plot_heads: str | None = flag(None, "draw the attention-head scores here (needs matplotlib)")
    plot_contrasts: str | None = flag(None, "draw the paired contrasts as bars here, and the "
                                          "shares of A:B:REF rows beside them (matplotlib)")


def get_args(argv=None):
    p = script_parser(__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_OR_CKPT",
                   help="run folders of train.py or ckpt.pt files")
    p.add_argument("--extra_data", action="append", default=[], metavar="DIR",
                   help="another prepared folder to evaluate on, named by its folder name "
                        "(repeatable)")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN",
                   help="baseline run of its training domain, repeatable (none: the first "
                        "scratch run of each domain)")
    p.add_argument("--pair", action="append", default=[], metavar="A:B",
                   help="a paired contrast of two arms, e.g. nca:text (repeatable; default with "
                        "several seeds: every arm against scratch); A:B:REF adds the share of "
                        "REF - B that A - B keeps; arms as in the table (scratch, --arm, source)")
    add_flags(p, EvalFlags)
    return p.parse_args(argv)


@cli
def main(argv=None):
    """Score every run on every domain it can read; write eval.json and eval.md; returns the
    eval.json dict."""
    args = get_args(argv)
    plan = plan_eval(args)          # every decision and its check, before any model runs
    where = (f"{', '.join(plan.domains)}: {plan.eval_tokens:,} tokens per domain in windows of "
             f"{plan.block + 1}" if plan.domains
             else f"held-out NCA rules: {args.nca_val_seqs} sequences")
    print(f"evaluating {len(plan.runs)} run(s) on {where}, on {plan.device} ({plan.dtype})")
    # (printed after the checks: a refusal prints one line only)
    domains, windows, nbytes, halves = {}, {}, {}, {}
    for name, (folder, meta) in plan.domains.items():
        domains[name], windows[name], nbytes[name] = domain_windows(folder, meta, plan.block,
                                                                    plan.eval_tokens)
        symbols = probe_vocab({"kind": meta.get("tokenizer", "gpt2"), "size": meta["vocab_size"]})
        halves[name] = probes.copy_halves(folder, plan.block, symbols)
    results = [score_run(r, info, refusals, windows, nbytes, halves, plan, args)
               for r, info, refusals in zip(plan.runs, plan.info, plan.refusals)]
    compare(plan.runs, results, plan.baselines)
    summary = summarize(plan.runs, results)
    pairs = contrasts(plan.runs, results, plan.pairs)
    result = write_eval(plan, results, domains, summary, argv, pairs)    # eval.json and eval.md
    draw_pictures(args, plan.runs, plan.baselines, results, domains, pairs)   # --plot*
    return result


# ---------------------------------------------------------------- the plan: what is scored where

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

    @property
    def arm(self):
        """The arm a run's seed is paired within: its --arm, else scratch, else its label."""
        return self.config.get("arm") or ("scratch" if self.is_scratch else self.label)


def plan_eval(args):
    """Every decision of the evaluation, each checked by guard.py as it is made, before any model
    runs: runs (labelled) and baselines, each run's checkpoint metadata (info) and refusals
    {domain: why not, or None}, the domains {name: (folder, meta)} scored, block, out, device,
    autocast ctx and dtype, eval_tokens, and the paired contrasts (pairs)."""
    mismatch = eval_pair_mismatch(args.out)
    if mismatch:                    # an interrupted write: eval.json is the record, eval.md
        restore_eval_md(args.out)   # is made again from it, whatever is decided next
    guard.check_eval_outputs(args, mismatch)
    guard.check_counts(args, ("batch_size", "nca_val_seqs", "block_size"))
    device = default_device(args.device)
    ctx, dtype = autocast(args.dtype, device, training=False)
    runs, baselines = gather_runs(args.runs, args.baseline)      # the rows, in order
    info = [guard.peek(r.ckpt) for r in runs]                    # checkpoint metadata only
    root = Path(args.data_root) if args.data_root else Path(__file__).resolve().parent / "data"
    folders = eval_folders(args.domains, args.extra_data, runs, root)   # what to score on
    guard.check_domain_names([f.name for f in folders])
    metas = {f.name: load_meta(f) for f in folders}
    refusals = [{n: language_refusal(inf, m.get("tokenizer", "gpt2"), m["vocab_size"])
                 for n, m in metas.items()} for inf in info]     # who reads what
    lang = [(r, inf) for r, inf, ref in zip(runs, info, refusals) if scored_on(inf, ref)[0]]
    block = args.block_size or min((inf["model_args"]["block_size"] for _, inf in lang),
                                   default=1024)          # every model reads the same windows
    guard.check_block(block, lang)
    domains = {}
    for f in folders:
        readers = [(r, inf) for r, inf, ref in zip(runs, info, refusals) if ref[f.name] is None]
        if readers:
            guard.check_eval_domain(f, readers)
            domains[f.name] = (f, metas[f.name])
    for r, inf, ref in zip(runs, info, refusals):
        guard.check_scorable(r.label, any(scored_on(inf, ref)), refusal_text(ref))
    pairs = eval_pairs(args.pair, runs)
    guard.check_plot_contrasts(args.plot_contrasts, pairs)
    return SimpleNamespace(runs=runs, baselines=baselines, info=info, refusals=refusals,
                           domains=domains, block=block, out=Path(args.out), device=device,
                           ctx=ctx, dtype=dtype, eval_tokens=eval_tokens(args.eval_tokens, runs),
                           pairs=pairs)


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


def load_run(path):
    """A run from its folder or its ckpt.pt: config.json (else the checkpoint's config) and the
    lines of metrics.jsonl (none if absent; an unfinished last line of a live run is skipped)."""
    path = Path(path)
    folder, ckpt = (path.parent, path) if path.is_file() else (path, path / "ckpt.pt")
    guard.check_run_checkpoint(ckpt)
    cfg_path = folder / "config.json"
    config = read_config(cfg_path) if cfg_path.exists() else guard.peek(ckpt).get("config")
    guard.check_run_config(config, cfg_path)
    return Run(folder, ckpt, config, read_metrics(folder / "metrics.jsonl"))


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


def eval_folders(domains, extra, runs, root):
    """The folders to score on: --domains (under root) and --extra_data; without --domains, each
    run's own training folder, then the other folders prepared under root with a tokenizer of
    those (sorted by name)."""
    if domains is not None:
        return [root / d for d in domains.split(",") if d] + [Path(p) for p in extra]
    own = []
    for r in runs:
        f = trained_folder(r.config, root)
        if f is not None and f.resolve() not in [g.resolve() for g in own]:
            own.append(f)
    kinds = {load_meta(f).get("tokenizer", "gpt2") for f in own}
    others = []
    for meta_path in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        f = meta_path.parent
        if f.resolve() in [g.resolve() for g in own]:
            continue
        with suppress(UserError):         # a broken unrelated folder is not scored
            if load_meta(f).get("tokenizer", "gpt2") in kinds:
                others.append(f)
    return own + others + [Path(p) for p in extra]


def eval_tokens(given, runs):
    """--eval_tokens, or by default the runs' own (config.json's eval_tokens: the smallest when
    they differ, 0 = the whole split counting as the largest), else 262,144."""
    if given is not None:
        return given
    own = {r.config["eval_tokens"] for r in runs if isinstance(r.config.get("eval_tokens"), int)}
    if not own:
        return 262_144
    return min(own, key=lambda n: (n <= 0, n))


def scored_on(inf, refusals):
    """(language, stage 1): whether a run is scored on some eval domain, and on its stage-1
    source's validation data (an NCA body's held-out rules; another source's, rebuilt)."""
    config = inf.get("config") or {}
    nca_rules = (inf.get("vocab") or {}).get("kind") == "nca" and inf.get("nca") is not None
    rebuilt = inf.get("stage") == "ppt" and config.get("ppt_source") in train.SOURCES \
        and config.get("ppt_source") != "nca" and isinstance(config.get("flags"), dict)
    return None in refusals.values(), nca_rules or rebuilt


def refusal_text(refusals):
    """{domain: reason or None} -> "web, math: reason; ..." (None if every domain was scored)."""
    by_reason = {}
    for name, why in refusals.items():
        if why:
            by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items()) or None


# ---------------------------------------------------------------- scoring

def domain_windows(folder, meta, block, eval_tokens):
    """One eval domain: its description (with the n-gram baselines), its windows and the bytes
    of text behind their targets (None for a tokenizer without a byte table)."""
    val = load_tokens(folder, "val")
    w = torch.from_numpy(eval_windows(val, block, eval_tokens))
    tokenizer = meta.get("tokenizer", "gpt2")
    known = tokenizer in TOKENIZERS           # bits per byte need the token -> text map
    nb = int(token_bytes(tokenizer)[w[:, 1:].numpy()].sum()) if known else None
    base = probes.ngram_baselines(load_tokens(folder, "train"), w, meta["vocab_size"])
    return ({"path": show(folder), "tokenizer": tokenizer, "val_tokens": len(val),
             "windows": len(w), "tokens": len(w) * block, "bytes": nb, "baselines": base,
             "baselines_bpb": {k: bits_per_byte(v, w, nb) for k, v in base.items()}
             if known else {}}, w, nb)


def score_run(r, inf, refusals, windows, nbytes, halves, plan, args):
    """One run's row: loss, bits per byte, perplexity, the in-context score and the copy probes
    on each domain it can read, and its attention-head scores; a stage-1 NCA run also (or
    instead) on its held-out rules."""
    device, ctx = plan.device, plan.ctx
    res = run_row(r, inf, refusals)             # what the run is; its scores are filled in below
    is_lang, is_stage1 = scored_on(inf, refusals)
    is_nca = is_stage1 and inf.get("nca") is not None
    if res["refused"]:
        print(f"{r.label}: not evaluated on {res['refused']}"
              + ("; evaluating it on its " + ("NCA validation rules" if is_nca else
                                                 "stage-1 validation data") + " instead"
                 if is_stage1 else ""))
    if not (is_lang or is_stage1):
        return res
    model = model_from_checkpoint(load_checkpoint(r.ckpt, mmap=True), device).eval()
    for name, w in windows.items():
        if refusals[name] is None:
            p = perplexity(model, w, args.batch_size, device, ctx, desc=f"{r.label} {name}")
            res["ppl"][name], res["loss"][name] = p["ppl"], p["loss"]
            res["in_context"][name] = p["in_context"]
            if nbytes[name]:
                res["bpb"][name] = bits_per_byte(p["loss"], w, nbytes[name])
            res["probes"][name] = probes.copy_probes(model, halves[name], args.batch_size,
                                                     device, ctx)
    if is_nca:
        res["nca"] = nca_eval(model, inf["nca"], args.nca_val_seqs, args.batch_size, device, ctx,
                              desc=f"{r.label} nca")
        cfg = nca.NCAConfig(**inf["nca"]["config"])      # repeated random patch tokens
        heads_on = torch.randint(0, cfg.start_token, (8, model.config.block_size // 2),
                                 generator=torch.Generator().manual_seed(0))
    elif is_stage1:
        res["stage1"] = stage1_eval(model, inf["config"], args.batch_size, device, ctx)
        heads_on = torch.randint(0, inf["model_args"]["vocab_size"],
                                 (8, model.config.block_size // 2),
                                 generator=torch.Generator().manual_seed(0))
    else:
        heads_on = halves[probes.probe_domain(res)]["frequent"][:8]
    res["heads"] = probes.head_scores(model, heads_on, device)
    return res


# ---------------------------------------------------------------- change and speedup

def val_curve(metrics):
    """[(tokens, val_loss), ...] of a run's val lines, by tokens (a resumed run's repeats: last);
    a NaN or infinite loss is no point of the curve (diverged_at names it)."""
    points = {m["tokens"]: m["val_loss"] for m in metrics
              if m.get("kind") == "val" and m.get("val_loss") is not None}
    return sorted((t, v) for t, v in points.items() if math.isfinite(v))


def tokens_to_reach(curve, target):
    """Tokens at which a curve first gets to loss <= target, linearly interpolated between the
    val points either side of the crossing; None if it never does."""
    for i, (t, loss) in enumerate(curve):
        if loss <= target:
            if i == 0:
                return float(t)
            t0, l0 = curve[i - 1]
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
    return None


def speedup(base_curve, curve):
    """Convergence speedup (docs/method.md, 'Convergence speedup'): the baseline's tokens at its
    last val point ÷ the tokens `curve` needs to reach the baseline's final loss; None when it
    never does. The blog counts the baseline's whole budget, not its own first crossing: that is
    what gives its 1.49x on OWT (the scratch curve is flat over its last two points; its first
    crossing would give 1.47x)."""
    if not base_curve or not curve:
        return None
    base_tokens, target = base_curve[-1]
    t = tokens_to_reach(curve, target)
    if t is None:
        return None
    return base_tokens / t if t > 0 else float("inf")


def compare(runs, results, baselines):
    """Fill each result's change vs its baseline (per eval domain) and its convergence speedup
    (stage lang runs with val points whose baseline has them too; the baseline itself: 1.0)."""
    for r, res, b in zip(runs, results, baselines):
        bres = next((x for x, q in zip(results, runs) if q is b), None)
        res["baseline"] = b.label if b is not None else None
        res["is_baseline"] = b is r
        res["change_pct"] = {d: 100 * (p / bres["ppl"][d] - 1) for d, p in res["ppl"].items()
                             if bres is not None and d in bres["ppl"]}
        curve = val_curve(r.metrics)
        base_curve = val_curve(b.metrics) if b is not None else []
        res["final_val_loss"] = curve[-1][1] if curve else None
        res["diverged_at"] = diverged_at(r.metrics)
        res.update(speedup=None, speedup_note="n/a", target_loss=None, tokens_to_target=None)
        if r.stage == "lang" and curve and base_curve:
            res["target_loss"] = base_curve[-1][1]
            res["tokens_to_target"] = tokens_to_reach(curve, res["target_loss"])
            res["speedup"] = 1.0 if b is r else speedup(base_curve, curve)
            res["speedup_note"] = None if res["speedup"] is not None else "not reached"
        if res["diverged_at"] is not None:
            print(f"note: {r.label} diverged at step {res['diverged_at']} (a NaN or infinite "
                  "loss in its metrics.jsonl)", file=sys.stderr)


# ---------------------------------------------------------------- the record: eval.json and eval.md


def write_eval(plan, results, domains, summary, argv, pairs=()):
    """The evaluation's record: eval.json, then eval.md, each renamed into place in plan.out,
    both carrying one id (a line of eval.md, above the provenance footer). eval.json is the
    record and eval.md is made from it alone (eval_text), so a kill between the two renames
    leaves an eval.md the next eval.py recognises (util.runs.eval_pair_mismatch) and rebuilds
    from eval.json (restore_eval_md): the folder then holds the new pair. Returns eval.json's
    dict."""
    result = {"id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
              "eval_tokens": plan.eval_tokens, "block_size": plan.block, "device": plan.device,
              "dtype": plan.dtype, "domains": domains, "runs": results, "summary": summary,
              "contrasts": pairs, "provenance": provenance("eval.py", argv, plan.device)}
    body = json.dumps(finite_json(result), indent=2, allow_nan=False) + "\n"
    text = eval_text(json.loads(body))
    print(text)
    sweep_temporaries(plan.out)                 # what an interrupted earlier write left
    atomic_write(Path(plan.out) / "eval.json", body)
    atomic_write(Path(plan.out) / "eval.md", text + "\n")
    print(f"wrote {show(Path(plan.out) / 'eval.json')} and {show(Path(plan.out) / 'eval.md')}")
    return result


def eval_text(result):
    """eval.md, made from eval.json's dict alone (so that it can be made again from the file)."""
    return (report_text(result["runs"], result["domains"], result["block_size"],
                        result["summary"], result["contrasts"]) + "\n\n" + eval_id_line(result)
            + "\n" + provenance_line(result["provenance"]))


def restore_eval_md(out):
    """eval.md rebuilt from the eval.json beside it (a kill between the two renames left an
    eval.md of another evaluation, or none)."""
    atomic_write(Path(out) / "eval.md",
                 eval_text(json.loads((Path(out) / "eval.json").read_text())) + "\n")


def run_row(r, inf, refusals):
    """The start of one run's row in eval.json: what the run is (label, stage, arm, source, seed,
    tokens), empty score tables for eval.py to fill, and why it was refused where it was."""
    c = r.config
    return {"label": r.label, "path": show(r.folder), "ckpt": show(r.ckpt), "arm": c.get("arm"),
            "stage": r.stage, "domain": r.domain, "ppt_source": c.get("ppt_source"),
            "init_from": c.get("init_from"), "seed": c.get("seed"),
            "trained_on": r.domain if r.stage == "lang" else f"{c.get('ppt_source')} (stage 1)",
            "step": inf.get("step"), "tokens": inf.get("tokens"), "vocab": inf.get("vocab"),
            "ppt_tokens": c.get("ppt_tokens") if r.stage == "lang" else None,
            "ppl": {}, "loss": {}, "bpb": {}, "in_context": {}, "probes": {}, "heads": None,
            "nca": None, "stage1": None, "refused": refusal_text(refusals)}


# ---------------------------------------------------------------- the tables of eval.md

def report_text(results, domains, block, summary=(), pairs=()):
    """eval.md: the language table with its n-gram baselines and a legend, then the stage-1
    summary and one NCA table per stage-1 NCA run, then the over-seeds summary and the paired
    contrasts."""
    text = []
    if any(res["ppl"] for res in results):
        budget = ", ".join(f"{d} {v['tokens']:,}" for d, v in domains.items())
        text += [format_table(results, domains), "",
                 f"Lower is better everywhere. Each cell: loss = cross-entropy in nats per token "
                 f"of the domain's own tokenizer, bpb = bits per byte of the underlying UTF-8 text "
                 f"(comparable across tokenizers), ppl = perplexity, on the first val tokens of "
                 f"each domain ({budget}; windows of {block + 1}, stride {block}). Tokens: "
                 "training tokens of the run's language stage, plus those of the stage 1 its body "
                 "comes from (transfer arms). (+x%): perplexity change vs "
                 "the baseline run of the run's training domain; Nx: convergence speedup, tokens "
                 "for the baseline run to reach its final val loss ÷ tokens for this run "
                 "(docs/method.md, 'Convergence speedup'). The "
                 "unigram and bigram rows predict each token from counts on the train split; a "
                 "model that is not below them has not learned the language. Copy gains (nats, ± "
                 "standard error over 16 sequences; 0 = no copying): loss on the first minus the "
                 "second copy of a validation passage repeated (text) and of a random sequence of "
                 "the 64 most frequent training symbols repeated (frequent), in the run's own "
                 "domain. In-context score: mean loss at positions [T/2, T) minus [T/16, T/8) of "
                 "the same windows (negative = later tokens profit from context; 0 = none). "
                 "docs/method.md, 'Probes of in-context copying'."]
    if any(res["nca"] for res in results):
        text += ["", probes.format_nca_summary(results)]
    if any(res["stage1"] for res in results):
        text += ["", probes.format_stage1(results)]
    text += [f"\n{probes.format_nca(res)}" for res in results if res["nca"]]
    if summary:
        text += ["", "Over seeds, each run paired with the scratch run of its domain and seed: "
                 "mean ± 95% confidence half-width (Student t over seeds); Δ = arm − scratch, "
                 "negative is better.", "", format_summary(summary)]
    if pairs:
        text += ["", format_contrasts(pairs)]
    if any(p.get("share") for p in pairs):
        text += ["", format_shares([p for p in pairs if p.get("share")])]
    return "\n".join(text).strip()


def _human(n):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _tokens(r):
    """Tokens a run trained on: its own, plus its body's stage 1 (a transfer arm)."""
    own = _human(r["tokens"] or 0)
    if r.get("ppt_tokens"):
        return f"{own} + {_human(r['ppt_tokens'])}"
    return own + (" + ? (not recorded)" if r.get("init_from") and r["stage"] == "lang" else "")


def _label(r):
    """A row's run, and that it diverged (a NaN or infinite loss in its metrics.jsonl)."""
    return r["label"] + (f" (diverged at step {r['diverged_at']})"
                         if r.get("diverged_at") is not None else "")


def _cell(r, d):
    if d not in r["ppl"]:
        return "-"
    notes = []
    if r["is_baseline"]:
        notes.append("base")
    elif r["change_pct"].get(d) is not None:
        notes.append(f"{r['change_pct'][d]:+.1f}%")
    if d == r["domain"] and r["speedup_note"] != "n/a":
        sp = r["speedup"]                  # (an infinite speedup is null in eval.json)
        notes.append(f"{sp:.2f}x" if sp is not None else r["speedup_note"] or "-")
    bpb = f" · {r['bpb'][d]:.3f} bpb" if d in r["bpb"] else ""
    return (f"{r['loss'][d]:.3f} nats{bpb} · ppl {r['ppl'][d]:.2f}"
            + (f" ({', '.join(notes)})" if notes else ""))


def format_table(results, domains):
    """Markdown table: one row per evaluated run, then the unigram and bigram baselines; one
    column per eval domain (loss, bits per byte, perplexity, the change vs the baseline run and,
    in the run's own training domain, the convergence speedup) and the copy probe."""
    head = ["run", "trained on", "tokens (stage 2 + stage 1)",
            *(f"{d}: loss · bpb · ppl" for d in domains), "copy gain (nats): text · frequent",
            "in-context score (nats)"]
    rows = [[_label(r), r["trained_on"], _tokens(r), *(_cell(r, d) for d in domains),
             *probes.probe_cells(r)] for r in results if r["ppl"]]
    for kind in ("unigram", "bigram"):
        rows.append([kind, "train-split counts", "-",
                     *(f"{v['baselines'][kind]:.3f} nats"
                       + (f" · {v['baselines_bpb'][kind]:.3f} bpb" if v["baselines_bpb"] else "")
                       + f" · ppl {math.exp(v['baselines'][kind]):.2f}" for v in domains.values()),
                     "0", "0"])
    width = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, width)) + " |"
    return "\n".join([line(head), line(["-" * w for w in width]), *map(line, rows)])


if __name__ == "__main__":
    main()
