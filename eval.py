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
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

import guard
import nca
from data.common import (TOKENIZERS, eval_windows, load_tokens, probe_vocab, show,
                         token_bytes)
from lab import probes
from model import evaluate, load_checkpoint, model_from_checkpoint
import report
from report import compare, contrasts, plot_curves, run_row, summarize, write_eval
from util import add_flags, cli, flag, progress_bar, script_parser


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
                     device, each=lambda *a: (icl(*a), bar.update(a[0].numel())))
    return {**r, "ppl": math.exp(r["loss"]), "in_context": icl.summary()}


def bits_per_byte(loss, windows, nbytes):
    """Token-mean loss (nats) over the window targets -> bits per UTF-8 byte of their text."""
    return loss * windows[:, 1:].numel() / math.log(2) / nbytes


# ---------------------------------------------------------------- stage-1 NCA checkpoints

def nca_eval(model, nca_info, num_seqs=64, batch_size=8, device="cpu", ctx=nullcontext(),
             desc=None):
    """A stage-1 NCA checkpoint on its held-out rules: validation loss over the supervised labels
    and in-context accuracy by grid position, beside the 'copy the previous grid' predictor
    (probes.GridAccuracy). Lists are indexed by grid g = 1..G: grid g is predicted with g
    earlier grids in context (grid 0 is the unscored prompt). token_acc = share of its patch
    tokens right under teacher forcing; grid_acc = whole grid right (= greedy decoding)."""
    cfg = nca.NCAConfig(**nca_info["config"])
    batches = nca.val_batches(cfg, nca_info["val_seeds"], num_seqs, batch_size, device,
                              mask_delimiters=nca_info.get("mask_delimiters", False))
    acc = probes.GridAccuracy(cfg)
    with progress_bar(len(batches), desc, unit="batch", disable=desc is None, leave=False) as bar:
        loss = evaluate(model, batches, ctx, device,
                        each=lambda *a: (acc(*a), bar.update(1)))["loss"]
    grids = list(range(1, len(acc.sums["token_acc"]) + 1))
    return {"val_loss": loss, "num_seqs": acc.seqs, "grid": grids, **acc.by_grid()}


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
    plan = guard.eval_run(args)          # every check, before any model runs
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
    if args.plot:
        plot_curves(plan.runs, plan.baselines, args.plot,
                    {d: v["baselines"]["bigram"] for d, v in domains.items()})
        print(f"wrote {args.plot}")
    if args.plot_contrasts:
        report.plot_contrasts(pairs, args.plot_contrasts)
        print(f"wrote {args.plot_contrasts}")
    if args.plot_heads:
        report.plot_heads(results, args.plot_heads)
        print(f"wrote {args.plot_heads}")
    return result


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
    is_lang = None in refusals.values()
    is_nca = (inf.get("vocab") or {}).get("kind") == "nca" and inf.get("nca") is not None
    if res["refused"]:
        print(f"{r.label}: not evaluated on {res['refused']}"
              + ("; evaluating it on its NCA validation rules instead" if is_nca else ""))
    if not (is_lang or is_nca):
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
    else:
        heads_on = halves[report.probe_domain(res)]["frequent"][:8]
    res["heads"] = probes.head_scores(model, heads_on, device)
    return res


if __name__ == "__main__":
    main()
