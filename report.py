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

import util
from data.common import show
from util import UserError, atomic_write, progress_bar, write_failure


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


EVAL_ID = "eval id "           # the last line of eval.md: "eval id <id> (...)", as eval.json's "id"


def eval_id_line(result):
    return f"{EVAL_ID}{result['id']} (eval.json in this folder holds the same id)"


def write_eval(out, result, text):
    """eval.md, then eval.json, each renamed into place, both carrying result["id"] (the last
    line of eval.md): eval.json, written last, is the record, and an eval.md whose id differs
    from it (a kill between the two renames) is from another evaluation (eval_pair_mismatch)."""
    atomic_write(Path(out) / "eval.md", text + "\n")
    atomic_write(Path(out) / "eval.json", json.dumps(result, indent=2) + "\n")


def eval_pair_mismatch(out):
    """Why eval.md in `out` is not the one of its eval.json, or None if it is (or if there is no
    pair to check: a file missing, or an eval.json from before ids were written)."""
    try:
        want = json.loads((Path(out) / "eval.json").read_text()).get("id")
        md = (Path(out) / "eval.md").read_text().rstrip("\n").rsplit("\n", 1)[-1]
    except (OSError, ValueError, AttributeError):
        return None
    have = md[len(EVAL_ID):].split(" ")[0] if md.startswith(EVAL_ID) else None
    return None if want is None or have == want else \
        f"eval.md (id {have}) is not from the evaluation in eval.json (id {want})"


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


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib, which is optional: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(runs, baselines, path):
    """Validation loss against training tokens, one panel per training domain (stage-1 runs get
    a panel per source); a dotted line at each domain baseline's final loss, the speedup target."""
    plt = pyplot()
    panels = {}
    for r, b in zip(runs, baselines):
        key = r.domain if r.stage == "lang" else f"stage 1: {r.config.get('ppt_source')}"
        if val_curve(r.metrics):
            panels.setdefault(key, []).append((r, b))
    if not panels:
        raise UserError("no run has val lines in metrics.jsonl: nothing to plot")
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


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


# Dead training: this many consecutive log lines with a gradient norm of exactly 0, or a loss
# within DEAD_TOL nats of ln(vocabulary) (the uniform guess; a fresh model starts about 0.15
# above it and a learning one leaves it within steps), stop the run.
DEAD_LINES, DEAD_TOL = 5, 1e-3


class Log:
    """metrics.jsonl and the console. Throughput is measured over the steps since the last line,
    with validation and checkpoint time (`paused`) left out. It also follows the run for the two
    ways it can end early: Ctrl-C (the step reached and the last one saved, `saved`, for the
    line util.cli prints) and dead training (`healthy` is False from the first dead-looking
    line on, so that no dead checkpoint replaces the last good one)."""

    def __init__(self, stage, path, master, model, seq_len, device, world, step):
        self.stage, self.path, self.master, self.model = stage, path, master, model
        self.flops, self.peak = model.flops_per_token(seq_len), peak_flops(device)
        self.seq_len, self.device, self.world = seq_len, device, world
        self.t_last, self.last_step, self.paused = time.perf_counter(), step, 0.0
        self.bar, self.step, self.saved, self.dead = None, step, step or None, 0

    @property
    def healthy(self):
        return self.dead == 0

    def tick(self, step):
        """One optimizer step done."""
        self.step = step
        self.bar.update(1)

    def interrupted(self):
        """The line Ctrl-C ends the run with (util.cli prints it)."""
        then = f"--resume continues from step {self.saved}" if self.saved is not None else \
            "no checkpoint yet: --resume starts it again"
        return f"interrupted at step {self.step} of {self.stage}; {then}"

    def write(self, rec):
        if self.master:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            except OSError as e:     # a half line at the end is dropped by --resume
                raise write_failure(self.path, e) from None

    def start(self, steps, hp, accum, memory):
        m = self.model
        util.interrupt_line = self.interrupted
        if self.master:
            print(f"{self.stage}: {steps} steps of {hp.batch_tokens:,} tokens ({accum} "
                  f"micro-steps of {hp.micro_batch} x {self.seq_len} x {self.world} processes), "
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
        if self.master:
            self.bar.write(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in rec.items()))
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
        self.check_alive(step, loss, norm)
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

    def check_alive(self, step, loss, norm):
        """Stop a run that no longer learns: the gradient norm exactly 0, or the loss at the
        uniform level ln(V), over DEAD_LINES consecutive log lines (a huge learning rate without
        clipping gets there without ever producing a NaN, then spends its whole budget)."""
        uniform = math.log(self.model.config.vocab_size)
        self.dead = self.dead + 1 if norm == 0 or abs(loss - uniform) < DEAD_TOL else 0
        if self.dead < DEAD_LINES:
            return
        self.bar.close()
        kept = f"{show(self.path.parent / 'ckpt.pt')} keeps step {self.saved}, the last " \
            "checkpoint before these lines" if self.saved is not None else "no checkpoint was kept"
        raise UserError(f"training of {self.stage} is dead at step {step}: over the last "
                        f"{DEAD_LINES} log lines the gradient norm was 0 or the loss sat at "
                        f"ln({self.model.config.vocab_size:,}) = {uniform:.3f}, the uniform guess; "
                        f"{kept}: lower the learning rate or clip gradients (--grad_clip)")

    def finite(self, value, what, step, fix):
        """A NaN or infinite loss ends the run with one line (the last checkpoint stays)."""
        if not math.isfinite(value):
            self.bar.close()
            raise UserError(f"{what} is {value} at step {step} of {self.stage}: {fix}")
