"""Presenting runs, off the method's road: train.py's log lines and metrics.jsonl (Log), and the
comparison of evaluated runs (eval.py's second half): each run's change against its baseline and
its convergence speedup, the over-seeds summary with confidence intervals, the eval.md tables and
the validation-curve plot (docs/method.md, 'Evaluation' and 'Convergence speedup')."""
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.common import show
import util
from util import UserError, progress_bar


# ---------------------------------------------------------------- runs, their labels and baselines

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


def _tokens(r):
    """Tokens a run trained on: its own, plus its body's stage 1 (a transfer arm)."""
    own = _human(r["tokens"] or 0)
    if r.get("ppt_tokens"):
        return f"{own} + {_human(r['ppt_tokens'])}"
    return own + (" + ? (not recorded)" if r.get("init_from") and r["stage"] == "lang" else "")


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
    return (f"{r['loss'][d]:.3f} nats{bpb} · ppl {r['ppl'][d]:.2f}"
            + (f" ({', '.join(notes)})" if notes else ""))


def format_table(results, domains):
    """Markdown table: one row per evaluated run, then the unigram and bigram baselines; one
    column per eval domain (loss, bits per byte, perplexity, the change vs the baseline run and,
    in the run's own training domain, the convergence speedup) and the copy probe."""
    head = ["run", "trained on", "tokens (stage 2 + stage 1)",
            *(f"{d}: loss · bpb · ppl" for d in domains), "copy probe (nats/token)"]
    rows = [[r["label"], r["trained_on"], _tokens(r), *(_cell(r, d) for d in domains),
             f"{r['probe']['first']:.2f} → {r['probe']['second']:.2f}" if r["probe"] else "-"]
            for r in results if r["ppl"]]
    for kind in ("unigram", "bigram"):
        rows.append([kind, "train-split counts", "-",
                     *(f"{v['baselines'][kind]:.3f} nats"
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
           f"(accuracies are shares of {n['num_seqs']} sequences: a grid accuracy moves in steps "
           f"of 1/{n['num_seqs']}; 'copy' predicts each grid to be the previous one)",
           "", "| grid | token acc | grid acc | copy token acc | copy grid acc |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for i, g in enumerate(n["grid"]):
        out.append(f"| {g} | {n['token_acc'][i]:.4f} | {n['grid_acc'][i]:.4f} | "
                   f"{n['copy_token_acc'][i]:.4f} | {n['copy_grid_acc'][i]:.4f} |")
    return "\n".join(out)


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib, which is optional: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(runs, baselines, path, bigram=None):
    """Validation loss against training tokens, one panel per training domain (stage-1 runs get
    a panel per source): a labelled line per run, a dotted line at each domain baseline's final
    loss (the speedup target) and a dashed one at the domain's bigram loss (`bigram`: {folder
    name: nats per token}). Step 0 (the untrained model, far above the rest) is left out, so
    the y-range shows where the arms differ."""
    plt = pyplot()
    bigram = bigram or {}
    panels = {}
    for r, b in zip(runs, baselines):
        key = trained_name(r) if r.stage == "lang" else f"stage 1: {r.config.get('ppt_source')}"
        if val_curve(r.metrics):
            panels.setdefault(key, []).append((r, b))
    if not panels:
        raise UserError("no run has val lines in metrics.jsonl: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, (key, items) in zip(axes[0], panels.items()):
        ys = []
        for r, _ in items:
            points = [(t, v) for t, v in val_curve(r.metrics) if t > 0] or val_curve(r.metrics)
            ax.plot(*zip(*points), marker=".", label=r.label)
            ys += [v for _, v in points]
        base = items[0][1]
        if base is not None and val_curve(base.metrics) and items[0][0].stage == "lang":
            target = val_curve(base.metrics)[-1][1]
            ax.axhline(target, ls=":", c="gray", lw=1,
                       label=f"{base.label} final loss {target:.3f} (speedup target)")
        if key in bigram:
            ax.axhline(bigram[key], ls="--", c="black", lw=1,
                       label=f"bigram baseline {bigram[key]:.3f}")
            ys.append(bigram[key])
        lo, hi = min(ys), max(ys)
        ax.set_ylim(lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1))
        ax.set_title(key if key.startswith("stage 1") else f"stage 2 on {key}")
        ax.set(xlabel="training tokens", ylabel="validation loss (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trained_name(run):
    """The name of the folder a stage-2 run trained on (its eval-domain name)."""
    return Path(run.config["data_dir"]).name if run.config.get("data_dir") else run.domain


# ---------------------------------------------------------------- the console of train.py

def run_summary(cfg, plan):
    """The one line train.py prints at start (the full configuration is config.json)."""
    what = {"ppt": lambda: cfg.ppt_source, "lang": lambda: show(plan.lang_data)}
    stages = " + ".join(f"stage {1 if s == 'ppt' else 2} ({what[s]()}, {plan.steps[s]:,} steps)"
                        for s in plan.stages)
    folders = ", ".join(dict.fromkeys(show(plan.out[s]) for s in plan.stages))
    return (f"train: {stages}; model {cfg.size}, seq_len {cfg.seq_len}; {plan.dist['device']} "
            f"{cfg.dtype}, seed {cfg.seed}" + (f", preset {cfg.preset}" if cfg.preset else "")
            + f" -> {folders} (every setting: config.json there)")


def body_line(init_from, body, vocab_size):
    """Where stage 2's body comes from, printed as it starts."""
    if body is None:
        return (f"lang: scratch: a freshly initialized body (no stage 1), new embeddings and "
                f"head for {vocab_size:,} tokens")
    src = body.get("config", {}).get("ppt_source", "?")
    return (f"lang: body from {show(init_from)} (stage 1 on {src}, step {body.get('step')}, "
            f"{body.get('tokens') or 0:,} tokens); new embeddings and head for {vocab_size:,} "
            "tokens")


# ---------------------------------------------------------------- the training log: one line per log
# step (loss, lr, grad norm, ms, tok/s, MFU, peak memory), the same numbers in metrics.jsonl

# Dense bf16 peak per GPU; the first name found in the device's name wins. The PCIe and NVL cards
# run slower clocks (and the PCIe H100 fewer SMs) than the SXM parts of the same name.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
              ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("4090", 165e12), ("A10", 125e12)]


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


ASSUMED_MFU = 0.4     # the GPU target (README, 'Single-GPU reproduction')
MATMUL_SHARE = 0.5    # training reaches about half of a plain matmul's rate (CPU, tiny model)


def matmul_rate(device, n=1024, seconds=0.3):
    """FLOP/s of float32 n x n matmuls on `device`, measured for about `seconds`."""
    a = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else lambda: None
    a @ a
    sync()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ a
        sync()
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def long_run_note(cfg, plan, device, hour=3600.0):
    """A line warning that the run is estimated to take more than an hour on `device` (training
    FLOPs of the stages over an assumed or measured rate, NCA generation not counted), or
    None. The rate is only measured when even a fast device would need the hour."""
    flops = sum(plan.flops.values()) / plan.dist["world"]
    peak = peak_flops(device)
    fastest = 5e12 if str(device) == "cpu" else 2e15         # FLOP/s no such device exceeds
    if flops / (ASSUMED_MFU * peak if peak else fastest) < hour:
        return None
    if peak:
        rate = ASSUMED_MFU * peak
        how = f"an assumed {ASSUMED_MFU:.0%} MFU of {peak / 1e12:.0f} TFLOP/s (not measured)"
    else:
        measured = matmul_rate(device)
        rate = MATMUL_SHARE * measured
        how = (f"{rate / 1e9:,.0f} GFLOP/s, assumed to be half the {measured / 1e9:,.0f} "
               "GFLOP/s a float32 matmul measured here")
    if flops / rate < hour:
        return None
    scale = "; the defaults are GPU scale: --preset cpu runs in minutes" \
        if not str(device).startswith("cuda") and cfg.preset != "cpu" else ""
    return (f"note: this run is estimated to take {util.duration(flops / rate)} on {device} "
            f"({flops:.2e} training FLOPs per process at {how}){scale}")


class Log:
    """metrics.jsonl and the console. Throughput is measured over the steps since the last line,
    with validation and checkpoint time (`paused`) left out."""

    def __init__(self, stage, path, master, model, seq_len, device, world, step):
        self.stage, self.path, self.master, self.model = stage, path, master, model
        self.flops, self.peak = model.flops_per_token(seq_len), peak_flops(device)
        self.seq_len, self.device, self.world = seq_len, device, world
        self.t_last, self.last_step, self.paused = time.perf_counter(), step, 0.0
        self.bar = None

    def write(self, rec):
        if self.master:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def start(self, steps, hp, accum, memory):
        m = self.model
        if self.master:
            print(f"{self.stage}: {steps} steps of {hp.batch_tokens:,} tokens ({accum} "
                  f"micro-step{'s' * (accum > 1)} of {hp.micro_batch} x {self.seq_len} x "
                  f"{self.world} process{'es' * (self.world > 1)}), "
                  f"{m.num_params():,} body parameters, vocabulary {m.config.vocab_size:,}"
                  + (f"; MFU against {self.peak / 1e12:.0f} TFLOP/s" if self.peak else ""))
        if self.last_step == 0:
            self.write({"kind": "info", "step": 0, "tokens": 0, "micro_batch": hp.micro_batch,
                        "accum": accum, "world": self.world,
                        "mem_estimate_gb": memory["total"] / 2**30})
        self.bar = progress_bar(steps, self.stage, unit="step", disable=not self.master,
                                initial=self.last_step, dynamic_ncols=True)

    def val_line(self, step, tokens, res):
        rec = {"kind": "val", "step": step, "tokens": tokens, **res}
        self.write(rec)
        if self.master:                     # "step N val_loss ...", like the training lines
            self.bar.write(f"step {step} " + " ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
        self.finite(res["val_loss"], "validation loss", step, "lower the learning rate or use "
                    "--dtype float32")

    def train_line(self, step, loss_sum, lr, norm, batch_tokens):
        if self.world > 1:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        loss = loss_sum.item()                                   # syncs the device
        now = time.perf_counter()
        dt = (now - self.t_last - self.paused) / (step - self.last_step)
        self.t_last, self.last_step, self.paused = now, step, 0.0
        cuda = self.device.startswith("cuda")
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None
        tok_s = batch_tokens / dt
        mfu = self.flops * tok_s / self.world / self.peak if self.peak else None
        self.finite(loss, "loss", step, "lower the learning rate, clip gradients, or use --dtype "
                    "float32")
        self.write({"kind": "train", "step": step, "tokens": step * batch_tokens, "loss": loss,
                    "lr": lr, "grad_norm": norm, "ms": dt * 1000, "tok_s": tok_s, "mfu": mfu,
                    "mem_gb": mem})
        if self.master:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.write(f"step {step} loss {loss:.4f} lr {lr:.2e} grad_norm {norm:.3f} "
                           f"{dt * 1000:.0f} ms {tok_s:,.0f} tok/s"
                           + (f" mfu {100 * mfu:.1f}%" if mfu is not None else "")
                           + (f" peak memory {mem:.1f} GiB" if mem is not None else ""))
        return tok_s

    def finite(self, value, what, step, fix):
        """A NaN or infinite loss ends the run with one line (the last checkpoint stays)."""
        if not math.isfinite(value):
            self.bar.close()
            raise UserError(f"{what} is {value} at step {step} of {self.stage}: {fix}")
