"""Evaluate runs: validation perplexity per domain, the change and the convergence speedup
against the scratch baseline, validation-loss curves, and the in-context accuracy of stage-1 NCA
checkpoints (SPEC.md §9, §12).

    python eval.py out/scratch_web out/nca_web              # table, eval.json, eval.md
    python eval.py out/*/ --domains web,math --plot curves.png
    python eval.py out/nca_web/ppt                           # stage-1 NCA: accuracy by grid

Perplexity. Every model reads the same windows of the validation split: non-overlapping windows
of block_size + 1 tokens at stride block_size from the start of val.bin (a window's last token is
only a target and is the next window's first input, so each token after the first is predicted
once), as many as fit in --eval_tokens predicted tokens. ppl = exp(token-mean cross-entropy).

Baseline. For each training domain, the --baseline run trained on it, else the first scratch run
(stage lang, init_from null) trained on it. Change = ppl / baseline ppl - 1, per eval domain.

Speedup (SPEC §12.2, the blog's rule): the baseline's tokens at its last val point ÷ the tokens
the run needs to reach the baseline's final val loss, the crossing linearly interpolated between
consecutive val points of the run's metrics.jsonl; "not reached" if it never gets there.
"""
import argparse
import json
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nca
from data.common import DataError, load_tokens, max_token, show
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent
GPT2_VOCAB = 50257


class EvalError(Exception):
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
    w[:, 1:]. Token-mean rather than the official mean of per-batch means (SPEC §13.20); the two
    differ only through a smaller last batch. Returns {"loss", "ppl", "tokens"}."""
    from tqdm import tqdm

    model.eval()
    total, count = 0.0, 0
    with tqdm(total=len(windows) * (windows.shape[1] - 1), unit="tok", unit_scale=True,
              desc=desc, disable=desc is None, leave=False) as bar:
        for w in windows.split(batch_size):
            w = w.to(device)
            with ctx:
                logits, _ = model(w[:, :-1])
            total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(),
                                     reduction="sum").item()
            count += w[:, 1:].numel()
            bar.update(w[:, 1:].numel())
    return {"loss": total / count, "ppl": math.exp(total / count), "tokens": count}


# ---------------------------------------------------------------- stage-1 NCA checkpoints

@torch.no_grad()
def nca_eval(model, nca_info, num_seqs=64, batch_size=8, device="cpu", ctx=nullcontext(),
             desc=None):
    """A stage-1 NCA checkpoint on its held-out rules: validation loss over the supervised labels
    and in-context accuracy by grid position (nca.grid_accuracy), beside the 'copy the previous
    grid' predictor (nca.copy_accuracy). Lists are indexed by grid g = 1..G: grid g is predicted
    with g earlier grids in context (grid 0 is the unscored prompt). token_acc = share of its
    patch tokens right under teacher forcing; grid_acc = whole grid right (= greedy decoding)."""
    from tqdm import tqdm

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
    for x, y in tqdm(batches, desc=desc, disable=desc is None, leave=False):
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
    """Convergence speedup (SPEC §12.2): the baseline's tokens at its last val point ÷ the tokens
    `curve` needs to reach the baseline's final loss; None when it never does. The blog counts the
    baseline's whole budget, not its own first crossing: that is what gives its 1.49x on OWT (the
    scratch curve is flat over its last two points; its first crossing would give 1.47x)."""
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


def language_refusal(ckpt):
    """Why a checkpoint cannot be scored on GPT-2 token files, or None if it can."""
    kind = (ckpt.get("vocab") or {}).get("kind")
    size = ckpt["model_args"].get("vocab_size", 0)
    if kind != "gpt2":
        return f"its vocabulary is {kind!r}, not GPT-2"
    if size < GPT2_VOCAB:
        return f"its model has {size:,} output classes, fewer than the {GPT2_VOCAB:,} GPT-2 ids"
    return None


def label_runs(runs):
    """Row labels: the config's arm and the folder name (the path when names collide)."""
    def name(r):
        f = r.folder.resolve()
        return f"{f.parent.name}/{f.name}" if f.name == "ppt" else f.name

    def arm(r):
        return r.config.get("arm") or ("scratch" if r.is_scratch else r.config.get("ppt_source"))
    labels = [f"{arm(r)} ({name(r)})" for r in runs]
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


def summarize(runs, results):
    """Mean ± std over seeds per (training domain, arm), each run paired with the scratch run of
    the same domain and seed (else its domain's baseline): own-domain perplexity, its change vs
    that scratch run, and the convergence speedup. Empty unless some arm has several seeds."""
    scratch = {(r.domain, r.config.get("seed")): (r, res) for r, res in zip(runs, results)
               if r.is_scratch and res["ppl"]}
    groups = {}
    for r, res in zip(runs, results):
        if r.stage == "lang" and r.domain in res["ppl"]:
            groups.setdefault((r.domain, res["arm"] or res["label"]), []).append((r, res))
    if all(len(g) < 2 for g in groups.values()):
        return []
    stat = lambda xs: (float(np.mean(xs)), float(np.std(xs))) if xs else (None, None)
    rows = []
    for (domain, arm), members in sorted(groups.items()):
        ppl, change, speed, missed = [], [], [], 0
        for r, res in members:
            ppl.append(res["ppl"][domain])
            pair = scratch.get((domain, r.config.get("seed")))
            if pair is None or pair[0] is r:
                continue
            b, bres = pair
            change.append(100 * (res["ppl"][domain] / bres["ppl"][domain] - 1))
            sp = speedup(val_curve(b.metrics), val_curve(r.metrics))
            if sp is None:
                missed += 1
            else:
                speed.append(sp)
        rows.append({"domain": domain, "arm": arm, "seeds": [r.config.get("seed") for r, _ in members],
                     "ppl": stat(ppl), "ppl_all": ppl, "change_pct": stat(change),
                     "change_all": change, "speedup": stat(speed), "speedup_all": speed,
                     "not_reached": missed})
    return rows


def format_summary(rows):
    fmt = lambda m, s, spec: "-" if m is None else f"{m:{spec}} ± {s:{spec.lstrip('+')}}"
    out = ["| domain | arm | seeds | final ppl | change vs scratch (same seed) | speedup |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sp = fmt(*r["speedup"], ".2f") + ("x" if r["speedup"][0] is not None else "")
        if r["not_reached"]:
            sp += f" ({r['not_reached']} not reached)"
        out.append(f"| {r['domain']} | {r['arm']} | {len(r['seeds'])} | {fmt(*r['ppl'], '.2f')} | "
                   f"{fmt(*r['change_pct'], '+.2f')}{'%' if r['change_pct'][0] is not None else ''}"
                   f" | {sp if r['change_pct'][0] is not None else '-'} |")
    return "\n".join(out)


def report_text(results, domains, block, summary=()):
    """eval.md: the language table with a legend, then one NCA table per stage-1 NCA run."""
    text = []
    if any(res["ppl"] for res in results):
        budget = ", ".join(f"{d} {v['tokens']:,}" for d, v in domains.items())
        text += [format_table(results, list(domains)), "",
                 f"Perplexity on the first val tokens of each domain ({budget}; windows of "
                 f"{block + 1}, stride {block}). (+x%): change vs the baseline of the run's "
                 "training domain; Nx: convergence speedup, tokens for the baseline to reach its "
                 "final val loss ÷ tokens for this run (SPEC.md §12.2)."]
    text += [f"\n{format_nca(res)}" for res in results if res["nca"]]
    if summary:
        text += ["", "Mean ± std over seeds (population std), each run paired with the scratch "
                 "run of its domain and seed:", "", format_summary(summary)]
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
    return f"{r['ppl'][d]:.2f}" + (f" ({', '.join(notes)})" if notes else "")


def format_table(results, domains):
    """Markdown table: one row per evaluated run, one column per eval domain with the perplexity,
    the change vs the baseline and, in the run's own training domain, the convergence speedup."""
    head = ["run", "trained on", "tokens", *domains]
    rows = [[r["label"], r["trained_on"], _human(r["tokens"] or 0), *(_cell(r, d) for d in domains)]
            for r in results if r["ppl"]]
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


def _write_atomic(path, text):
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    return nca.one_line_errors(p).parse_args(argv)


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
    try:
        device = nca.default_device(args.device)
    except ValueError as e:
        raise EvalError(str(e)) from None
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = args.dtype if args.dtype != "auto" else (
        "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32")
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, getattr(torch, dtype))

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
    lang = [i for i, inf in enumerate(info) if language_refusal(inf) is None]
    block = args.block_size or min((info[i]["model_args"]["block_size"] for i in lang), default=1024)
    for i in lang:
        if info[i]["model_args"]["block_size"] < block:
            raise EvalError(f"--block_size {block} is longer than the "
                            f"{info[i]['model_args']['block_size']} of {runs[i].label}")

    folders = [Path(args.data_root) / d for d in args.domains.split(",") if d]
    folders += [Path(p) for p in args.extra_data]
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise EvalError(f"two eval domains share a folder name: {', '.join(names)}")
    windows, domains = {}, {}
    for name, folder in zip(names, folders):  # every split is checked before any model runs
        if lang:
            top = max_token(folder)
            small = [i for i in lang if info[i]["model_args"]["vocab_size"] <= top]
            if small:
                raise EvalError(f"{show(folder)} holds token id {top:,}, outside the "
                                f"{info[small[0]]['model_args']['vocab_size']:,}-token vocabulary "
                                f"of {runs[small[0]].label}: evaluate it on other --domains")
            val = load_tokens(folder, "val")
            windows[name] = eval_windows(val, block, args.eval_tokens)
            domains[name] = {"path": show(folder), "val_tokens": len(val),
                             "windows": len(windows[name]), "tokens": len(windows[name]) * block}

    print("config:", json.dumps(vars(args)))  # after the checks: a refusal prints one line only
    results = []
    for i, (r, inf) in enumerate(zip(runs, info)):
        c = r.config
        res = {"label": r.label, "path": show(r.folder), "ckpt": show(r.ckpt), "arm": c.get("arm"),
               "stage": r.stage, "domain": r.domain, "ppt_source": c.get("ppt_source"),
               "init_from": c.get("init_from"), "seed": c.get("seed"),
               "trained_on": r.domain if r.stage == "lang" else f"{c.get('ppt_source')} (stage 1)",
               "step": inf["step"], "tokens": inf["tokens"], "vocab": inf["vocab"],
               "ppl": {}, "loss": {}, "refused": language_refusal(inf), "nca": None}
        is_nca = (inf["vocab"] or {}).get("kind") == "nca" and inf["nca"] is not None
        if res["refused"] and names:
            print(f"{r.label}: not evaluated on {', '.join(names)}: {res['refused']}"
                  + ("; evaluating it on its NCA validation rules instead" if is_nca else ""))
        if i in lang or is_nca:
            model = build_model(load_checkpoint(r.ckpt), device)
            for name, w in windows.items():
                if i in lang:
                    p = perplexity(model, w, args.batch_size, device, ctx, desc=f"{r.label} {name}")
                    res["ppl"][name], res["loss"][name] = p["ppl"], p["loss"]
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
    _write_atomic(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    _write_atomic(out_dir / "eval.md", text + "\n")
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
    except (DataError, EvalError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
