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

Speedup (the paper's rule; docs/method.md, 'Convergence speedup'): the baseline's tokens at its
last val point ÷ the tokens the run needs to reach the baseline's final val loss, the crossing
linearly interpolated between consecutive val points of the run's metrics.jsonl; "not reached" if
it never gets there.
"""
import argparse
import json
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nca
from util import UserError, atomic_write, autocast, default_device, one_line_errors, progress_bar
from data.common import TOKENIZERS, DataError, load_meta, load_tokens, max_token, show, token_bytes
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent


class EvalError(UserError):
    """A problem the user can fix (a path, a refused option); the message is one line."""


# ---------------------------------------------------------------- perplexity

def eval_windows(tokens, block_size, eval_tokens):
    """The fixed evaluation windows of a token array, an (N, block_size + 1) int64 tensor:
    window i = tokens[i * block_size : (i + 1) * block_size + 1]. N = eval_tokens // block_size
    (at least 1; eval_tokens <= 0 means the whole split), capped by what the split holds."""
    n_max = (len(tokens) - 1) // block_size
    if n_max < 1:
        raise EvalError(f"a split of {len(tokens)} tokens is shorter than one window of "
                        f"{block_size + 1} tokens: lower --block_size")
    n = n_max if eval_tokens <= 0 else min(n_max, max(1, eval_tokens // block_size))
    idx = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)
    return torch.from_numpy(np.asarray(tokens[:n * block_size + 1]).astype(np.int64)[idx])


@torch.no_grad()
def perplexity(model, windows, batch_size=8, device="cpu", ctx=nullcontext(), desc=None):
    """exp(token-mean cross-entropy) of `model` on windows (N, T + 1): inputs w[:, :-1], targets
    w[:, 1:]. Token-mean rather than the official mean of per-batch means (docs/differences.md,
    'Windows and validation averaging'); the two
    differ only through a smaller last batch. Returns {"loss", "ppl", "tokens"}."""
    model.eval()
    total, count = 0.0, 0
    with progress_bar(len(windows) * (windows.shape[1] - 1), desc, unit="tok",
                          disable=desc is None, unit_scale=True, leave=False) as bar:
        for w in windows.split(batch_size):
            w = w.to(device)
            with ctx:
                logits, _ = model(w[:, :-1])
            total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(),
                                     reduction="sum").item()
            count += w[:, 1:].numel()
            bar.update(w[:, 1:].numel())
    return {"loss": total / count, "ppl": math.exp(total / count), "tokens": count}


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


def probe_vocab(vocab):
    """How many ids the copy probe draws from, for a checkpoint's {"kind", "size"}: a known
    tokenizer's ordinary tokens (below its document separator), within the model's vocabulary."""
    return min(TOKENIZERS.get(vocab["kind"], (0, vocab["size"]))[1], vocab["size"])


@torch.no_grad()
def copy_probe(model, vocab_size, length, num_seqs=16, batch_size=8, device="cpu",
               ctx=nullcontext(), seed=0):
    """In-context copying: the loss on the second copy of a repeated random token sequence
    against the loss on the first. Random tokens cannot be predicted the first time; the second
    time a model that can look back and copy (an induction head) predicts them well. The same
    sequences (ids below vocab_size, from `seed`) for every model. Returns first, second, gain."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, vocab_size, (num_seqs, length), generator=g)
    seqs = torch.cat([half, half], dim=1)
    was_training = model.training
    model.eval()
    first = second = 0.0
    for w in seqs.split(batch_size):
        w = w.to(device)
        with ctx:
            logits, _ = model(w[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), w[:, 1:], reduction="none")
        first += nll[:, :length - 1].sum().item()      # targets 1..L-1 of the first copy
        second += nll[:, length:].sum().item()         # targets 1..L-1 of the second copy
    model.train(was_training)
    n = num_seqs * (length - 1)
    return {"first": first / n, "second": second / n, "gain": (first - second) / n}


# ---------------------------------------------------------------- stage-1 NCA checkpoints

@torch.no_grad()
def nca_eval(model, nca_info, num_seqs=64, batch_size=8, device="cpu", ctx=nullcontext(),
             desc=None):
    """A stage-1 NCA checkpoint on its held-out rules: validation loss over the supervised labels
    and in-context accuracy by grid position (nca.grid_accuracy), beside the 'copy the previous
    grid' predictor (nca.copy_accuracy). Lists are indexed by grid g = 1..G: grid g is predicted
    with g earlier grids in context (grid 0 is the unscored prompt). token_acc = share of its
    patch tokens right under teacher forcing; grid_acc = whole grid right (= greedy decoding)."""
    cfg = nca.NCAConfig(**nca_info["config"])
    # val_seed: the trajectory seed of train.py's val set if it stores one (nca.val_batches' 0 else)
    batches = nca.val_batches(cfg, nca_info["val_seeds"], num_seqs, batch_size, device,
                              seed=nca_info.get("val_seed", 0),
                              mask_delimiters=nca_info.get("mask_delimiters", False))
    G = len(nca.grid_positions(cfg))
    keys = ("token_acc", "grid_acc", "copy_token_acc", "copy_grid_acc")
    sums = {k: torch.zeros(G, dtype=torch.float64) for k in keys}
    loss_sum, n_labels, n_seqs = 0.0, 0, 0
    model.eval()
    bar = progress_bar(len(batches), desc, unit="batch", disable=desc is None, leave=False)
    for x, y in batches:
        bar.update(1)
        with ctx:
            logits, _ = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100,
                                    reduction="sum").item()
        n_labels += int((y != -100).sum())
        accs = nca.grid_accuracy(logits.argmax(-1), y, cfg) + nca.copy_accuracy(x, y, cfg)
        for k, v in zip(keys, accs):
            sums[k] += v.double().cpu()
        n_seqs += len(x)
    bar.close()
    return {"val_loss": loss_sum / n_labels, "num_seqs": n_seqs, "grid": list(range(1, G + 1)),
            **{k: (v / n_seqs).tolist() for k, v in sums.items()}}


# ---------------------------------------------------------------- convergence speedup

def val_curve(metrics):
    """[(tokens, val_loss), ...] of a run's val lines, by tokens (a resumed run's repeats: last)."""
    points = {m["tokens"]: m["val_loss"] for m in metrics
              if m.get("kind") == "val" and m.get("val_loss") is not None}
    return sorted(points.items())


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


def load_checkpoint(path):
    """A checkpoint dict, memory-mapped (the optimizer state is never read into memory)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated file, not a checkpoint, unsafe pickle: one line, no trace
        raise EvalError(f"cannot load {show(path)}: {str(e).strip().splitlines()[0]}") from None


def load_run(path):
    """A run from its folder or its ckpt.pt: config.json (else the checkpoint's config) and the
    lines of metrics.jsonl (none if absent; an unfinished last line of a live run is skipped)."""
    path = Path(path)
    folder, ckpt = (path.parent, path) if path.is_file() else (path, path / "ckpt.pt")
    if not ckpt.is_file():
        raise EvalError(f"{show(ckpt)} is missing: pass a run folder of train.py or a ckpt.pt")
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        try:
            config = json.loads(cfg_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise EvalError(f"{show(cfg_path)} is not valid JSON: delete it to use the config "
                            "saved in the checkpoint") from None
    else:
        config = load_checkpoint(ckpt).get("config")
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
    return Run(folder, ckpt, config, metrics)


def checkpoint_info(path):
    """What a checkpoint is (model_args, vocab, nca, step, tokens), checked to be from train.py."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "model" not in ck or not isinstance(ck.get("model_args"), dict):
        raise EvalError(f"{show(path)} is not a train.py checkpoint (it has no model or "
                        "model_args)")
    try:
        GPTConfig(**ck["model_args"])
    except (TypeError, ValueError) as e:
        raise EvalError(f"{show(path)} has unusable model_args: {e}") from None
    return {k: ck.get(k) for k in ("model_args", "vocab", "nca", "step", "tokens")}


def build_model(ckpt, device):
    """The GPT of a checkpoint on `device`, in eval mode."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**ckpt["model_args"]))
    model.to_empty(device=device)
    model.init_weights()  # for the RoPE tables, which no checkpoint holds; weights come next
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}  # torch.compile
    model.load_state_dict(state)
    return model.eval()


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


# ---------------------------------------------------------------- reports

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
        res.update(speedup=None, speedup_note="n/a", target_loss=None, tokens_to_target=None)
        if r.stage == "lang" and curve and base_curve:
            res["target_loss"] = base_curve[-1][1]
            res["tokens_to_target"] = tokens_to_reach(curve, res["target_loss"])
            res["speedup"] = 1.0 if b is r else speedup(base_curve, curve)
            res["speedup_note"] = None if res["speedup"] is not None else "not reached"


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (then ~1.96 + 2.4/df).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(xs):
    """(mean, half-width of its 95% confidence interval) of a sample; (mean, None) for one value,
    (None, None) for none. Paired seeds make xs the per-seed differences."""
    if not xs:
        return None, None
    if len(xs) < 2:
        return float(xs[0]), None
    df = len(xs) - 1
    t = T975[df - 1] if df <= len(T975) else 1.96 + 2.4 / df
    return float(np.mean(xs)), float(t * np.std(xs, ddof=1) / math.sqrt(len(xs)))


def summarize(runs, results):
    """Per (training domain, arm) over seeds, each run paired with the scratch run of the same
    domain and seed: own-domain loss, bits per byte and perplexity; the paired differences in
    loss and bits per byte (mean and 95% CI) and in perplexity (%); the convergence speedup of
    each seed; the copy probe's gain. Empty unless some arm has several seeds."""
    scratch = {(r.domain, r.config.get("seed")): (r, res) for r, res in zip(runs, results)
               if r.is_scratch and res["ppl"]}
    groups = {}
    for r, res in zip(runs, results):
        if r.stage == "lang" and r.domain in res["ppl"]:
            groups.setdefault((r.domain, res["arm"] or res["label"]), []).append((r, res))
    if all(len(g) < 2 for g in groups.values()):
        return []
    rows = []
    for (domain, arm), members in sorted(groups.items()):
        own = lambda key: [res[key][domain] for _, res in members if domain in res.get(key, {})]
        change, speed, missed = [], [], 0
        diffs = {"loss": [], "bpb": []}               # paired differences, arm - scratch
        for r, res in members:
            pair = scratch.get((domain, r.config.get("seed")))
            if pair is None or pair[0] is r:
                continue
            b, bres = pair
            change.append(100 * (res["ppl"][domain] / bres["ppl"][domain] - 1))
            for key, out in diffs.items():
                if domain in res.get(key, {}) and domain in bres.get(key, {}):
                    out.append(res[key][domain] - bres[key][domain])
            sp = speedup(val_curve(b.metrics), val_curve(r.metrics))
            if sp is None:
                missed += 1
            else:
                speed.append(sp)
        gains = [res["probe"]["gain"] for _, res in members if res.get("probe")]
        rows.append({"domain": domain, "arm": arm, "seeds": [r.config.get("seed") for r, _ in members],
                     "ppl": mean_ci(own("ppl")), "ppl_all": own("ppl"),
                     "loss": mean_ci(own("loss")), "bpb": mean_ci(own("bpb")),
                     "change_pct": mean_ci(change), "change_all": change,
                     "dloss": mean_ci(diffs["loss"]), "dloss_all": diffs["loss"],
                     "dbpb": mean_ci(diffs["bpb"]), "dbpb_all": diffs["bpb"],
                     "speedup": mean_ci(speed), "speedup_all": speed, "not_reached": missed,
                     "probe_gain": mean_ci(gains), "probe_gain_all": gains})
    return rows


def format_summary(rows):
    def fmt(m, h, spec):
        if m is None:
            return "-"
        return f"{m:{spec}}" + ("" if h is None else f" ± {h:{spec.lstrip('+')}}")
    out = ["| domain | arm | seeds | loss (nats/token) | bits/byte | Δ loss vs scratch | "
           "Δ bits/byte vs scratch | Δ ppl | speedup per seed | copy-probe gain |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        paired = r["change_pct"][0] is not None
        sp = ", ".join(f"{x:.2f}x" for x in r["speedup_all"]) or "-"
        if r["not_reached"]:
            sp += f" ({r['not_reached']} not reached)"
        out.append(f"| {r['domain']} | {r['arm']} | {len(r['seeds'])} | {fmt(*r['loss'], '.4f')} | "
                   f"{fmt(*r['bpb'], '.4f')} | {fmt(*r['dloss'], '+.4f')} | "
                   f"{fmt(*r['dbpb'], '+.4f')} | "
                   f"{fmt(*r['change_pct'], '+.2f') + '%' if paired else '-'} | "
                   f"{sp if paired else '-'} | {fmt(*r['probe_gain'], '.3f')} |")
    return "\n".join(out)


def report_text(results, domains, block, summary=()):
    """eval.md: the language table with its n-gram baselines and a legend, then one NCA table per
    stage-1 NCA run, then the over-seeds summary."""
    text = []
    if any(res["ppl"] for res in results):
        budget = ", ".join(f"{d} {v['tokens']:,}" for d, v in domains.items())
        text += [format_table(results, domains), "",
                 f"Lower is better everywhere. Each cell: cross-entropy in nats per token of the "
                 f"domain's own tokenizer, bits per byte of the underlying UTF-8 text (comparable "
                 f"across tokenizers) and perplexity, on the first val tokens of each domain "
                 f"({budget}; windows of {block + 1}, stride {block}). (+x%): perplexity change vs "
                 "the baseline run of the run's training domain; Nx: convergence speedup, tokens "
                 "for the baseline run to reach its final val loss ÷ tokens for this run "
                 "(docs/method.md, 'Convergence speedup'). The "
                 "unigram and bigram rows predict each token from counts on the train split; a "
                 "model that is not below them has not learned the language. Copy probe: loss on "
                 "the first → second copy of a repeated random token sequence (in-context "
                 "copying; a larger drop is better)."]
    text += [f"\n{format_nca(res)}" for res in results if res["nca"]]
    if summary:
        text += ["", "Over seeds, each run paired with the scratch run of its domain and seed: "
                 "mean ± 95% confidence half-width (Student t over seeds); Δ = arm − scratch, "
                 "negative is better.", "", format_summary(summary)]
    return "\n".join(text).strip()


def _human(n):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _cell(r, d):
    if d not in r["ppl"]:
        return "-"
    notes = []
    if r["is_baseline"]:
        notes.append("base")
    elif r["change_pct"].get(d) is not None:
        notes.append(f"{r['change_pct'][d]:+.1f}%")
    if d == r["domain"] and r["speedup_note"] != "n/a":
        notes.append(f"{r['speedup']:.2f}x" if r["speedup"] is not None else r["speedup_note"])
    bpb = f" · {r['bpb'][d]:.3f} bpb" if d in r["bpb"] else ""
    return (f"{r['loss'][d]:.3f}{bpb} · ppl {r['ppl'][d]:.2f}"
            + (f" ({', '.join(notes)})" if notes else ""))


def format_table(results, domains):
    """Markdown table: one row per evaluated run, then the unigram and bigram baselines; one
    column per eval domain (loss, bits per byte, perplexity, the change vs the baseline run and,
    in the run's own training domain, the convergence speedup) and the copy probe."""
    head = ["run", "trained on", "tokens", *domains, "copy probe"]
    rows = [[r["label"], r["trained_on"], _human(r["tokens"] or 0), *(_cell(r, d) for d in domains),
             f"{r['probe']['first']:.2f} → {r['probe']['second']:.2f}" if r["probe"] else "-"]
            for r in results if r["ppl"]]
    for kind in ("unigram", "bigram"):
        rows.append([kind, "train-split counts", "-",
                     *(f"{v['baselines'][kind]:.3f}"
                       + (f" · {v['baselines_bpb'][kind]:.3f} bpb" if v["baselines_bpb"] else "")
                       + f" · ppl {math.exp(v['baselines'][kind]):.2f}" for v in domains.values()),
                     "-"])
    width = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, width)) + " |"
    return "\n".join([line(head), line(["-" * w for w in width]), *map(line, rows)])


def format_nca(r):
    """The stage-1 NCA table of one run: accuracy by grid position."""
    n = r["nca"]
    out = [f"{r['label']}: NCA validation loss {n['val_loss']:.4f} on {n['num_seqs']} sequences "
           "of held-out rules; grid g is predicted with g grids in context",
           "", "| grid | token acc | grid acc | copy token acc | copy grid acc |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for i, g in enumerate(n["grid"]):
        out.append(f"| {g} | {n['token_acc'][i]:.4f} | {n['grid_acc'][i]:.4f} | "
                   f"{n['copy_token_acc'][i]:.4f} | {n['copy_grid_acc'][i]:.4f} |")
    return "\n".join(out)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plot needs matplotlib, which is optional: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(runs, baselines, path):
    """Validation loss against training tokens, one panel per training domain (stage-1 runs get
    a panel per source); a dotted line at each domain baseline's final loss, the speedup target."""
    plt = _pyplot()
    panels = {}
    for r, b in zip(runs, baselines):
        key = r.domain if r.stage == "lang" else f"stage 1: {r.config.get('ppt_source')}"
        if val_curve(r.metrics):
            panels.setdefault(key, []).append((r, b))
    if not panels:
        raise EvalError("no run has val lines in metrics.jsonl: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, items) in zip(axes[0], panels.items()):
        for r, _ in items:
            ax.plot(*zip(*val_curve(r.metrics)), marker=".", label=r.label)
        base = items[0][1]
        if base is not None and val_curve(base.metrics) and items[0][0].stage == "lang":
            ax.axhline(val_curve(base.metrics)[-1][1], ls=":", c="gray", lw=1)
        ax.set(title=key, xlabel="training tokens", ylabel="validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- command line

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    return one_line_errors(p).parse_args(argv)


def evaluate(args):
    out_dir = Path(args.out)
    if (out_dir / "eval.json").exists() and not args.overwrite:
        raise EvalError(f"{show(out_dir / 'eval.json')} exists: pass --overwrite to replace it, "
                        "or another --out")
    if args.plot:
        _pyplot()  # fail now, not after the evaluation
    for name in ("batch_size", "nca_val_seqs", "block_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise EvalError(f"--{name} must be at least 1, got {getattr(args, name)}")
    device = default_device(args.device)
    ctx, dtype = autocast(args.dtype, device)

    runs = [load_run(p) for p in args.runs]
    explicit = []
    for p in args.baseline:  # a baseline not among the runs is evaluated too, as the first row
        b = load_run(p)
        same = [r for r in runs if r.folder.resolve() == b.folder.resolve()]
        if not same:
            runs.insert(0, b)
        explicit.append(same[0] if same else b)
    label_runs(runs)
    baselines = assign_baselines(runs, explicit)

    # Pass 1 reads what each checkpoint is (memory-mapped, cheap); pass 2 builds one model at a time.
    info = [checkpoint_info(r.ckpt) for r in runs]
    folders = [Path(args.data_root) / d for d in args.domains.split(",") if d]
    folders += [Path(p) for p in args.extra_data]
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise EvalError(f"two eval domains share a folder name: {', '.join(names)}")
    metas = {name: load_meta(folder) for name, folder in zip(names, folders)}
    # refusals[i][name]: why run i cannot be scored on domain `name` (a run is scored where None)
    refusals = [{n: language_refusal(inf, m.get("tokenizer", "gpt2"), m["vocab_size"])
                 for n, m in metas.items()} for inf in info]
    lang = [i for i, ref in enumerate(refusals) if None in ref.values()]
    block = args.block_size or min((info[i]["model_args"]["block_size"] for i in lang), default=1024)
    for i in lang:
        if info[i]["model_args"]["block_size"] < block:
            raise EvalError(f"--block_size {block} is longer than the "
                            f"{info[i]['model_args']['block_size']} of {runs[i].label}")

    windows, domains, nbytes = {}, {}, {}
    for name, folder in zip(names, folders):  # every split is checked before any model runs
        scored = [i for i in lang if refusals[i][name] is None]
        if scored:
            top = max_token(folder)
            small = [i for i in scored if info[i]["model_args"]["vocab_size"] <= top]
            if small:
                raise EvalError(f"{show(folder)} holds token id {top:,}, outside the "
                                f"{info[small[0]]['model_args']['vocab_size']:,}-token vocabulary "
                                f"of {runs[small[0]].label}: evaluate it on other --domains")
            val = load_tokens(folder, "val")
            w = windows[name] = eval_windows(val, block, args.eval_tokens)
            tokenizer = metas[name].get("tokenizer", "gpt2")
            known = tokenizer in TOKENIZERS           # bits per byte need the token -> text map
            nbytes[name] = int(token_bytes(tokenizer)[w[:, 1:].numpy()].sum()) if known else None
            base = ngram_baselines(load_tokens(folder, "train"), w, metas[name]["vocab_size"])
            domains[name] = {"path": show(folder), "tokenizer": tokenizer,
                             "val_tokens": len(val), "windows": len(w), "tokens": len(w) * block,
                             "bytes": nbytes[name], "baselines": base,
                             "baselines_bpb": {k: bits_per_byte(v, w, nbytes[name])
                                               for k, v in base.items()} if known else {}}

    print("config:", json.dumps(vars(args)))  # after the checks: a refusal prints one line only
    results = []
    for i, (r, inf) in enumerate(zip(runs, info)):
        c = r.config
        res = {"label": r.label, "path": show(r.folder), "ckpt": show(r.ckpt), "arm": c.get("arm"),
               "stage": r.stage, "domain": r.domain, "ppt_source": c.get("ppt_source"),
               "init_from": c.get("init_from"), "seed": c.get("seed"),
               "trained_on": r.domain if r.stage == "lang" else f"{c.get('ppt_source')} (stage 1)",
               "step": inf["step"], "tokens": inf["tokens"], "vocab": inf["vocab"],
               "ppl": {}, "loss": {}, "bpb": {}, "probe": None, "nca": None,
               "refused": refusal_text(refusals[i])}
        is_nca = (inf["vocab"] or {}).get("kind") == "nca" and inf["nca"] is not None
        if res["refused"]:
            print(f"{r.label}: not evaluated on {res['refused']}"
                  + ("; evaluating it on its NCA validation rules instead" if is_nca else ""))
        if i in lang or is_nca:
            model = build_model(load_checkpoint(r.ckpt), device)
            for name, w in windows.items():
                if refusals[i][name] is None:
                    p = perplexity(model, w, args.batch_size, device, ctx, desc=f"{r.label} {name}")
                    res["ppl"][name], res["loss"][name] = p["ppl"], p["loss"]
                    if nbytes[name]:
                        res["bpb"][name] = bits_per_byte(p["loss"], w, nbytes[name])
            if i in lang:
                res["probe"] = copy_probe(model, probe_vocab(inf["vocab"]), block // 2,
                                          batch_size=args.batch_size, device=device, ctx=ctx)
            if is_nca:
                res["nca"] = nca_eval(model, inf["nca"], args.nca_val_seqs, args.batch_size,
                                      device, ctx, desc=f"{r.label} nca")
            del model
        results.append(res)
    compare(runs, results, baselines)

    summary = summarize(runs, results)
    report = {"eval_tokens": args.eval_tokens, "block_size": block, "device": device,
              "dtype": dtype, "domains": domains, "runs": results, "summary": summary}
    text = report_text(results, domains, block, summary)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / "eval.md", text + "\n")
    print(f"wrote {show(out_dir / 'eval.json')} and {show(out_dir / 'eval.md')}")
    if args.plot:
        plot_curves(runs, baselines, args.plot)
        print(f"wrote {args.plot}")
    return report


def main(argv=None):
    """Run the evaluation; returns the eval.json dict. User errors exit with a one-line message."""
    args = get_args(argv)
    try:
        return evaluate(args)
    except (DataError, UserError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
