"""Presenting runs, off the method's road: train.py's log lines and metrics.jsonl (Log), and the
comparison of evaluated runs (eval.py's second half): each run's change against its baseline and
its convergence speedup, the over-seeds summary with confidence intervals, the eval.md tables and
the validation-curve plot (docs/method.md, 'Evaluation' and 'Convergence speedup'); optional wandb
tracking (beside metrics.jsonl), the provenance of config.json and eval.json, and the NCA
pictures and accuracy table of sample.py."""
import json
import math
import platform
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import util
from data.common import show
from util import UserError, atomic_write, provenance, provenance_line

RUN_FILES = ("config.json", "metrics.jsonl", "ckpt.pt")     # what a run folder holds


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

    @property
    def arm(self):
        """The arm a run's seed is paired within: its --arm, else scratch, else its label."""
        return self.config.get("arm") or ("scratch" if self.is_scratch else self.label)


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


def sign_flip_p(diffs):
    """Exact two-sided sign-flip (paired permutation) p-value of the mean of paired differences:
    the share of the 2^n sign patterns whose |mean| is at least the observed one (n <= 20)."""
    d = np.asarray(diffs, float)
    if d.size == 0 or d.size > 20:
        return None
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d.size)).reshape(d.size, -1).T
    return float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))


def paired(xs, ys):
    """Paired difference xs - ys: (mean, 95% CI half-width, exact sign-flip p)."""
    diffs = [x - y for x, y in zip(xs, ys)]
    m, h = mean_ci(diffs)
    return m, h, sign_flip_p(diffs)


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
        probe = lambda name: [res["probes"][domain][name]["gain"] for _, res in members
                              if domain in res.get("probes", {})]
        icl = [res["in_context"][domain]["score"] for _, res in members
               if domain in res.get("in_context", {})]
        seeds = [r.config.get("seed") for r, _ in members]
        rows.append({"domain": domain, "arm": arm, "seeds": seeds,
                     "ppl": mean_ci(own("ppl")), "ppl_all": own("ppl"),
                     "loss": mean_ci(own("loss")), "bpb": mean_ci(own("bpb")),
                     "change_pct": mean_ci(change), "change_all": change,
                     "dloss": mean_ci(diffs["loss"]), "dloss_all": diffs["loss"],
                     "dbpb": mean_ci(diffs["bpb"]), "dbpb_all": diffs["bpb"],
                     "speedup": mean_ci(speed), "speedup_all": speed, "not_reached": missed,
                     "probe_gain": mean_ci(probe("frequent")), "probe_gain_all": probe("frequent"),
                     "text_gain": mean_ci(probe("text")), "text_gain_all": probe("text"),
                     "icl": mean_ci(icl), "icl_all": icl})
    return rows


def holm(ps):
    """Holm-adjusted p-values (step-down, monotone, capped at 1) of a family; None stays None."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    out, running = list(ps), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = running
    return out


def units_of(keys):
    """Group items into independent units: items that share any stage-1 checkpoint (`keys`: one
    set of checkpoint names per item) are in one unit, transitively (union-find). Returns one
    unit id per item."""
    parent = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x
    for ks in keys:
        ks = list(ks)
        for k in ks[1:]:
            parent[root(k)] = root(ks[0])
    return [root(next(iter(ks))) for ks in keys]


def contrasts(runs, results, pairs):
    """Paired differences arm A - arm B for each (A, B) in `pairs`, per training domain (runs of
    the same seed paired) and pooled over domains. The unit of analysis is one stage-1 model:
    pairs that share a stage-1 checkpoint on either side, transitively (the web and math runs of
    one NCA seed; against a text body that serves all three domains, all of them) are averaged
    into one unit first, so they are not counted as independent (units_of). Per
    contrast: Δ loss (own domain, nats/token) and Δ bits/byte per unit, mean ± 95% t half-width,
    exact sign-flip p on Δ loss, and the Holm-adjusted p over every row; the convergence speedup
    of A against B per pair (secondary)."""
    by = {}
    for r, res in zip(runs, results):
        if r.stage == "lang" and r.domain in res["ppl"]:
            by.setdefault((r.arm, r.domain, r.config.get("seed")), (r, res))
    rows = []
    for a, b, *ref in pairs:
        items = []          # (domain, stage-1 checkpoints or the seed, (dloss, dbpb, sp, dref))
        for (arm, domain, seed), (r, res) in sorted(by.items(), key=str):
            other = by.get((b, domain, seed))
            if arm != a or other is None:
                continue
            (br, bres), third = other, ref and by.get((ref[0], domain, seed))
            d = (res["loss"][domain] - bres["loss"][domain],
                 res["bpb"][domain] - bres["bpb"][domain]
                 if domain in res["bpb"] and domain in bres["bpb"] else None,
                 speedup(val_curve(br.metrics), val_curve(r.metrics)),
                 third[1]["loss"][domain] - bres["loss"][domain] if third else None)
            bodies = {str(Path(x.config["init_from"]).resolve()) for x in (r, br) + (
                (third[0],) if third else ()) if x.config.get("init_from")}
            items.append((domain, bodies or {f"seed {seed}"}, d))
        domains = sorted({dom for dom, _, _ in items})
        for domain in domains + (["all"] if len(domains) > 1 else []):
            group = [it for it in items if domain in ("all", it[0])]
            ids = units_of([ks for _, ks, _ in group])
            cells = {}
            for uid, (_, _, d) in zip(ids, group):
                cells.setdefault(uid, []).append(d)
            cells = list(cells.values())
            dl = [float(np.mean([c[0] for c in u])) for u in cells]
            db = [float(np.mean([c[1] for c in u])) for u in cells if None not in
                  [c[1] for c in u]]
            sp = [c[2] for u in cells for c in u if c[2] is not None]
            both = [(x, float(np.mean([c[3] for c in u]))) for x, u in zip(dl, cells)
                    if ref and None not in [c[3] for c in u]]
            rows.append({"a": a, "b": b, "domain": domain, "units": len(cells), "dloss_all": dl,
                         "dloss": mean_ci(dl), "dbpb": mean_ci(db), "p": sign_flip_p(dl),
                         "speedup": mean_ci(sp), "ref": ref[0] if ref else None,
                         "share": share_kept(both) if both else None})
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adj
    return rows


def share_kept(pairs, draws=10000):
    """The share of a reference gain that a contrast keeps, from per-unit (d, dref) differences
    against the same baseline: mean(d) / mean(dref), with a 95% percentile bootstrap interval
    over units (fixed seed: the same numbers every time). {"share", "lo", "hi", "units"}."""
    d, ref = np.asarray(pairs, float).T
    idx = np.random.default_rng(0).integers(0, len(d), (draws, len(d)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = d[idx].mean(1) / ref[idx].mean(1)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]).tolist() if len(d) > 1 else (None, None)
    return {"share": float(d.mean() / ref.mean()), "lo": lo, "hi": hi, "units": len(d)}


def format_shares(rows):
    """The share of REF - B kept by A - B, for the contrasts given as --pair A:B:REF."""
    out = ["Share of the reference's gain kept ((A - B) / (REF - B) in loss; 95% bootstrap "
           "interval over units)", "", "| A - B | REF | domain | units | share kept |",
           "| --- | --- | --- | ---: | --- |"]
    for r in rows:
        s = r["share"]
        ci = "" if s["lo"] is None else f" [{s['lo']:.2f}, {s['hi']:.2f}]"
        out.append(f"| {r['a']} - {r['b']} | {r['ref']} | {r['domain']} | {s['units']} | "
                   f"{s['share']:.2f}{ci} |")
    return "\n".join(out)


def ci_text(m, h, spec):
    """A mean ± 95% half-width cell ("-" for none; the half-width without the sign)."""
    if m is None:
        return "-"
    return f"{m:{spec}}" + ("" if h is None else f" ± {h:{spec.lstrip('+')}}")


def format_contrasts(rows):
    fmt = ci_text
    out = ["Paired contrasts (A - B; negative = A better; unit = one stage-1 model, pairs sharing "
           "one averaged first; p: exact sign-flip on Δ loss; Holm over the rows of this table)",
           "", "| A - B | domain | units | Δ loss per unit | Δ loss | Δ bits/byte | p | Holm p "
           "| speedup of A |", "| --- | --- | ---: | --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        per = ", ".join(f"{x:+.4f}" for x in r["dloss_all"])
        sp = "-" if r["speedup"][0] is None else f"{r['speedup'][0]:.2f}x"
        p = lambda v: "-" if v is None else f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"
        out.append(f"| {r['a']} - {r['b']} | {r['domain']} | {r['units']} | {per} | "
                   f"{fmt(*r['dloss'], '+.4f')} | {fmt(*r['dbpb'], '+.4f')} | {p(r['p'])} | "
                   f"{p(r['p_holm'])} | {sp} |")
    return "\n".join(out)


def format_summary(rows):
    fmt = ci_text
    out = ["| domain | arm | seeds | loss (nats/token) | bits/byte | Δ loss vs scratch | "
           "Δ bits/byte vs scratch | Δ ppl | speedup per seed | copy gain: text | "
           "copy gain: frequent | in-context score |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        paired = r["change_pct"][0] is not None
        sp = ", ".join(f"{x:.2f}x" for x in r["speedup_all"]) or "-"
        if r["not_reached"]:
            sp += f" ({r['not_reached']} not reached)"
        out.append(f"| {r['domain']} | {r['arm']} | {len(r['seeds'])} | {fmt(*r['loss'], '.4f')} | "
                   f"{fmt(*r['bpb'], '.4f')} | {fmt(*r['dloss'], '+.4f')} | "
                   f"{fmt(*r['dbpb'], '+.4f')} | "
                   f"{fmt(*r['change_pct'], '+.2f') + '%' if paired else '-'} | "
                   f"{sp if paired else '-'} | {fmt(*r['text_gain'], '+.3f')} | "
                   f"{fmt(*r['probe_gain'], '+.3f')} | {fmt(*r['icl'], '+.3f')} |")
    return "\n".join(out)


EVAL_ID = "eval id "           # a line of eval.md: "eval id <id> (...)", as eval.json's "id"


def eval_id_line(result):
    return f"{EVAL_ID}{result['id']} (eval.json in this folder holds the same id)"


def write_eval(plan, results, domains, summary, argv, pairs=()):
    """The evaluation's record: printed, then eval.md, then eval.json, each renamed into place in
    plan.out, both carrying one id (a line of eval.md, above the provenance footer): eval.json,
    written last, is the record, and an eval.md whose id differs from it (a kill between the
    two renames) is from another evaluation (eval_pair_mismatch). Returns eval.json's dict."""
    result = {"id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
              "eval_tokens": plan.eval_tokens, "block_size": plan.block, "device": plan.device,
              "dtype": plan.dtype, "domains": domains, "runs": results, "summary": summary,
              "contrasts": pairs, "provenance": provenance("eval.py", argv, plan.device)}
    text = (report_text(results, domains, plan.block, summary, pairs) + "\n\n"
            + eval_id_line(result)
            + "\n" + provenance_line(result["provenance"]))
    print(text)
    util.sweep_temporaries(plan.out)                 # what an interrupted earlier write left
    atomic_write(Path(plan.out) / "eval.md", text + "\n")
    atomic_write(Path(plan.out) / "eval.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {show(Path(plan.out) / 'eval.json')} and {show(Path(plan.out) / 'eval.md')}")
    return result


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
            "nca": None, "refused": refusal_text(refusals)}


def eval_pair_mismatch(out):
    """Why eval.md in `out` is not the one of its eval.json, or None if it is (or if there is no
    pair to check: a file missing, or an eval.json from before ids were written)."""
    try:
        want = json.loads((Path(out) / "eval.json").read_text()).get("id")
        lines = (Path(out) / "eval.md").read_text().splitlines()
    except (OSError, ValueError, AttributeError):
        return None
    ids = [line[len(EVAL_ID):].split(" ")[0] for line in lines if line.startswith(EVAL_ID)]
    have = ids[-1] if ids else None
    return None if want is None or have == want else \
        f"eval.md (id {have}) is not from the evaluation in eval.json (id {want})"


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
        text += ["", format_nca_summary(results)]
    text += [f"\n{format_nca(res)}" for res in results if res["nca"]]
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
            *(f"{d}: loss · bpb · ppl" for d in domains), "copy gain (nats): text · frequent",
            "in-context score (nats)"]
    rows = [[r["label"], r["trained_on"], _tokens(r), *(_cell(r, d) for d in domains),
             *_probe_cells(r)] for r in results if r["ppl"]]
    for kind in ("unigram", "bigram"):
        rows.append([kind, "train-split counts", "-",
                     *(f"{v['baselines'][kind]:.3f} nats"
                       + (f" · {v['baselines_bpb'][kind]:.3f} bpb" if v["baselines_bpb"] else "")
                       + f" · ppl {math.exp(v['baselines'][kind]):.2f}" for v in domains.values()),
                     "0", "0"])
    width = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, width)) + " |"
    return "\n".join([line(head), line(["-" * w for w in width]), *map(line, rows)])


def probe_domain(res):
    """The domain whose probes stand for a run: its own training domain if scored there."""
    return res["domain"] if res["domain"] in res["probes"] else next(iter(res["probes"]), None)


def _probe_cells(r):
    d = probe_domain(r)
    if d is None:
        return ["-", "-"]
    p, icl = r["probes"][d], r["in_context"][d]
    gain = lambda x: f"{x['gain']:+.3f} ± {x['gain_se']:.3f}"
    return [f"{gain(p['text'])} · {gain(p['frequent'])}",
            f"{icl['score']:+.3f} ± {icl['se']:.3f}"]


def format_nca_summary(results):
    """One line per stage-1 NCA run: its accuracies and the two model-free predictors', as % means
    over grid positions, and the margins (points) of its token accuracy over copy and over
    lookup; with several runs, each margin's mean ± 95% t half-width over them."""
    rows = [r for r in results if r["nca"]]
    keys = ("token_acc", "copy_token_acc", "lookup_token_acc", "grid_acc", "copy_grid_acc",
            "lookup_grid_acc")

    def pct(n, k):
        return 100 * float(np.mean(n[k])) if k in n else float("nan")
    out = ["Stage 1 on held-out rules, % (means over grid positions); margins in points: "
           "token accuracy - copy's, and - lookup's", "",
           "| run | seed | token acc | copy | lookup | - copy | - lookup | grid acc | copy grid "
           "| lookup grid |", "| --- |" + " ---: |" * 9]
    margins = []
    for r in rows:
        v = [pct(r["nca"], k) for k in keys]
        margins.append((v[0] - v[1], v[0] - v[2]))
        out.append(f"| {r['label']} | {r.get('seed')} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | "
                   f"{margins[-1][0]:+.1f} | {margins[-1][1]:+.1f} | {v[3]:.1f} | {v[4]:.1f} | "
                   f"{v[5]:.1f} |")
    if len(rows) > 1:
        cells = []
        for i in (0, 1):
            m, h = mean_ci([mg[i] for mg in margins])
            cells.append(f"{m:+.1f} ± {h:.1f}")
        out.append(f"| mean ± 95% CI ({len(rows)} runs) | | | | | {cells[0]} | {cells[1]} "
                   "| | | |")
    return "\n".join(out)


def format_nca(r):
    """The stage-1 NCA table of one run: accuracy by grid position."""
    n = r["nca"]
    out = [f"{r['label']}: NCA validation loss {n['val_loss']:.4f} on {n['num_seqs']} sequences "
           "of held-out rules; grid g is predicted with g grids in context",
           f"(accuracies are shares of {n['num_seqs']} sequences: a grid accuracy moves in steps "
           f"of 1/{n['num_seqs']}; 'copy' predicts each grid to be the previous one, 'lookup' "
           "what followed the longest matching context earlier in the sequence)",
           "", "| grid | token acc | grid acc | copy token acc | copy grid acc | "
           "lookup token acc | lookup grid acc |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, g in enumerate(n["grid"]):
        out.append(f"| {g} | {n['token_acc'][i]:.4f} | {n['grid_acc'][i]:.4f} | "
                   f"{n['copy_token_acc'][i]:.4f} | {n['copy_grid_acc'][i]:.4f} | "
                   + (f"{n['lookup_token_acc'][i]:.4f} | {n['lookup_grid_acc'][i]:.4f} |"
                      if "lookup_token_acc" in n else "- | - |"))
    return "\n".join(out)


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib, which is optional: "
                        "pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def seed_curves(runs):
    """The validation curves by arm and seed, {arm: {seed: {tokens: loss}}}, and Δ = arm - scratch
    of the same seed, {arm: {seed: {tokens: Δ}}}, for the arms with a scratch partner."""
    by = {}
    for r in runs:
        by.setdefault(r.arm, {})[r.config.get("seed")] = dict(val_curve(r.metrics))
    base = by.get("scratch", {})
    deltas = {arm: {s: {t: c[t] - base[s][t] for t in set(c) & set(base[s])}
                    for s, c in seeds.items() if s in base}
              for arm, seeds in by.items() if arm != "scratch"}
    return by, {arm: d for arm, d in deltas.items() if d}


def arm_curves(items):
    """Over seeds, per arm: {arm: (tokens, mean, 95% half-width, seeds)} of the validation loss at
    the token counts every seed of the arm has (step 0 left out), and {arm: the same for Δ = arm -
    scratch of the same seed} for the arms with a scratch partner."""
    by, deltas = seed_curves([r for r, _ in items])

    def band(curves):
        tokens = sorted(set.intersection(*(set(c) for c in curves)) - {0})
        stats = [mean_ci([c[t] for c in curves]) for t in tokens]
        return tokens, [m for m, _ in stats], [h or 0.0 for _, h in stats], len(curves)
    loss = {arm: band(list(seeds.values())) for arm, seeds in by.items()}
    return loss, {arm: band(list(seeds.values())) for arm, seeds in deltas.items()}


def delta_table(runs):
    """Markdown: Δ validation loss against scratch, paired by seed, at every token count all the
    pairs have (step 0 included): each seed's Δ, and their mean ± 95% t half-width, per arm."""
    deltas = seed_curves(runs)[1]
    if not deltas:
        raise UserError("no arm has a scratch run of the same seed: no Δ to tabulate")
    tokens = sorted(set.intersection(*(set(c) for d in deltas.values() for c in d.values())))
    lines = ["| tokens | " + " | ".join(f"{a} - scratch per seed | mean ± 95% t" for a in deltas)
             + " |", "|" + " --- |" * (1 + 2 * len(deltas))]
    for t in tokens:
        cells = []
        for d in deltas.values():
            xs = [c[t] for c in d.values()]
            m, h = mean_ci(xs)
            cells += [", ".join(f"{x:+.3f}" for x in xs), f"{m:+.3f}" + (f" ± {h:.3f}" if h else "")]
        lines.append(f"| {t:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_arm_bands(ax, dax, loss, delta):
    """One line per arm on `ax` (the mean over seeds, its 95% interval as a band) and one per
    non-scratch arm on `dax` (Δ vs scratch, paired by seed), from arm_curves; returns the
    plotted means."""
    ys, colour = [], {}
    for arm, (t, m, h, n) in loss.items():
        line, = ax.plot(t, m, marker=".", label=f"{arm} (mean of {n} seeds)")
        colour[arm] = line.get_color()
        ax.fill_between(t, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)],
                        color=colour[arm], alpha=0.2)
        ys += m
    dax.axhline(0, c="black", lw=1)
    for arm, (t, m, h, _) in delta.items():       # each arm in its colour of the panel above
        dax.plot(t, m, marker=".", label=f"{arm} - scratch", color=colour[arm])
        dax.fill_between(t, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)],
                         color=colour[arm], alpha=0.2)
    dax.set(xlabel="training tokens", ylabel="Δ validation loss vs scratch (nats per token)",
            title="paired by seed: mean and 95% interval")
    dax.grid(alpha=0.3)
    dax.legend(fontsize=8)
    dax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e6:g}M")
    return ys


def plot_curves(runs, baselines, path, bigram=None):
    """Validation loss against training tokens, one panel per training domain (stage-1 runs get
    a panel per source): a labelled line per run, a dotted line at each domain baseline's final
    loss (the speedup target) and a dashed one at the domain's bigram loss (`bigram`: {folder
    name: nats per token}). With several seeds of an arm, one line per arm instead (the mean
    over seeds, with its 95% interval as a band) and below it a panel of Δ = arm - scratch,
    paired by seed. Step 0 (the untrained model, far above the rest) is left out, so the
    y-range shows where the arms differ."""
    plt = pyplot()
    bigram = bigram or {}
    panels = {}
    for r, b in zip(runs, baselines):
        key = trained_name(r) if r.stage == "lang" else f"stage 1: {r.config.get('ppt_source')}"
        if val_curve(r.metrics):
            panels.setdefault(key, []).append((r, b))
    if not panels:
        raise UserError("no run has val lines in metrics.jsonl: nothing to plot")
    curves = {key: arm_curves(items) for key, items in panels.items()}
    seeds = any(len(curves[key][0]) < len(items) for key, items in panels.items())
    rows = 2 if seeds else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(6.4 * len(panels), 4.6 * rows),
                             squeeze=False)
    for col, (key, items) in enumerate(panels.items()):
        ax, ys = axes[0][col], []
        if seeds:
            ys += draw_arm_bands(ax, axes[1][col], *curves[key])
        else:
            for r, _ in items:
                points = [(t, v) for t, v in val_curve(r.metrics) if t > 0] or \
                    val_curve(r.metrics)
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
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e6:g}M")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def trained_name(run):
    """The name of the folder a stage-2 run trained on (its eval-domain name)."""
    return Path(run.config["data_dir"]).name if run.config.get("data_dir") else run.domain


def plot_contrasts(rows, path):
    """The paired contrasts as a bar chart (a ladder): one horizontal bar per row of the table,
    its mean Δ loss with the 95% t interval as a whisker; under each row's name its Holm p (and
    its share, below). Left of zero = A better. Rows given as A:B:REF also get a second panel:
    the share of REF's gain each keeps, with its 95% bootstrap interval (E4's re-initialization
    figure). Returns the figure (closed)."""
    plt = pyplot()
    if not rows:
        raise UserError("no paired contrast to plot: give --pair A:B with runs of both arms")
    means = [r["dloss"][0] for r in rows]
    halves = [r["dloss"][1] or 0.0 for r in rows]
    several = len({r["domain"] for r in rows}) > 1
    shares = [r.get("share") for r in rows]
    labels = [f"{r['a']} - {r['b']}" + (f" ({r['domain']})" if several else "") +
              f"\nHolm p {r['p_holm']:.2g}" + (f", {s['share']:.2f} of {r['ref']}'s gain" if s
                                               else "") for r, s in zip(rows, shares)]
    panels = 2 if any(shares) else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 + 4 * (panels - 1), 0.6 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    ax, y = axes[0][0], np.arange(len(rows))[::-1]
    ax.barh(y, means, xerr=halves, color=["C2" if m < 0 else "C3" for m in means], alpha=0.8,
            capsize=4)
    ax.axvline(0, c="black", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    units = "/".join(map(str, sorted({r["units"] for r in rows})))
    ax.set(xlabel=f"Δ validation loss, A - B (nats per token; 95% t interval, {units} units)",
           title="paired contrasts (negative = A better)")
    ax.grid(axis="x", alpha=0.3)
    if panels == 2:
        sax = axes[0][1]
        kept = [(yi, x) for yi, x in zip(y, shares) if x]
        lo = [x["share"] - x["lo"] if x["lo"] is not None else 0.0 for _, x in kept]
        hi = [x["hi"] - x["share"] if x["hi"] is not None else 0.0 for _, x in kept]
        sax.errorbar([x["share"] for _, x in kept], [yi for yi, _ in kept], xerr=[lo, hi],
                     fmt="o", color="C0", capsize=4)
        for v in (0, 1):
            sax.axvline(v, c="black", lw=1, ls="-" if v == 0 else "--")
        sax.set(xlabel="share of the REF arm's gain kept (95% bootstrap interval; 1 = all)",
                title="(A - B) / (REF - B)")
        sax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return fig


def plot_heads(results, path):
    """Attention-head scores of every evaluated run as heatmaps (layers x heads): induction score
    on top, previous-token score below, one column per run; the colour scale is shared per row."""
    plt = pyplot()
    rows = [res for res in results if res.get("heads")]
    if not rows:
        raise UserError("no run has head scores: nothing to plot")
    fig, axes = plt.subplots(2, len(rows), figsize=(2.6 * len(rows) + 1, 5), squeeze=False)
    for row, key in enumerate(("induction", "previous_token")):
        top = max(max(map(max, res["heads"][key])) for res in rows)
        for ax, res in zip(axes[row], rows):
            im = ax.imshow(np.array(res["heads"][key]), vmin=0, vmax=top, cmap="viridis",
                           aspect="auto")
            chance = res["heads"][f"chance_{key}"]
            ax.set(title=f"{res['label']}\n{key.replace('_', ' ')} (chance {chance:.2f})",
                   xlabel="head", ylabel="layer")
            ax.title.set_fontsize(8)
        fig.colorbar(im, ax=list(axes[row]), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------- NCA pictures (sample.py, nca_tools)

def pillow(refusal="drawing PNG or GIF needs Pillow, which is optional: pip install "
                    "pillow"):
    """PIL's Image, ImageDraw and ImageFont; Pillow is optional, so without it the one-line
    `refusal`."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError(refusal) from None
    return Image, ImageDraw, ImageFont


def palette(n):
    base = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                     [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                     [188, 189, 34], [23, 190, 207]], dtype=np.uint8)
    if n <= len(base):
        return base[:n]
    hue = np.arange(n) / n                                  # more colours: evenly spaced hues
    rgb = np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2), 2 - np.abs(hue * 6 - 4)], 1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def rollout_table(cfg, true, forced, free, context):
    """sample.py's accuracy table: per grid g, the share of patch tokens right (as token_acc in
    metrics.jsonl) and of whole grids right, teacher-forced and free-running, beside copying the
    previous true grid and repeating the last context grid. Returns (text, {column: [per grid]})."""
    R, G, H, W = true.shape
    p = cfg.patch

    def right(pred, target):                    # (R, G, patches): every cell of a patch right
        ok = (pred == target).view(R, -1, H // p, p, W // p, p)
        return ok.all(5).all(3).flatten(2).float()
    last = true[:, context - 1:context].expand_as(true)
    cols = {"teacher-forced": right(forced, true), "free-running": right(free, true),
            "copy previous": right(true[:, :-1], true[:, 1:]),
            "repeat context": right(last, true)}
    cols["copy previous"] = torch.cat([torch.zeros_like(cols["copy previous"][:, :1]),
                                       cols["copy previous"]], 1)
    first = {"teacher-forced": 1, "copy previous": 1, "free-running": context,
             "repeat context": context}
    acc = {k: [(float(v[:, g].mean()), float(v[:, g].all(-1).float().mean()))
               if g >= first[k] else None for g in range(G)] for k, v in cols.items()}
    lines = [f"{R} held-out rules, {G} grids each; the first {context} given. Each cell: share of "
             "patch tokens right (share of whole grids right)",
             f"{'grid':>4}  " + "  ".join(f"{k:>16}" for k in cols)]
    for g in range(1, G):
        cells = ("-" if a[g] is None else f"{a[g][0]:.3f} ({a[g][1]:.2f})" for a in acc.values())
        lines.append(f"{g:>4}  " + "  ".join(f"{c:>16}" for c in cells))
    mean = (np.mean([x[0] for x in a[context:]]) for a in acc.values())
    lines.append(f"grids {context}-{G - 1}: " + ", ".join(f"{k} {m:.3f}" for k, m in
                                                          zip(cols, mean)))
    return "\n".join(lines), acc


def draw_rollouts(path, true, forced, free, context, num_colors, labels, scale=6):
    """True and predicted grids of a few rules, each wrong cell crossed out. PNG: per rule,
    three rows (true; teacher-forced; free-running), grids left to right, the context grids
    only in the first row. GIF: one frame per grid, the three side by side."""
    Image, ImageDraw, _ = pillow()
    true, forced, free = (t.cpu().numpy() for t in (true, forced, free))
    R, G, H, W = true.shape
    pal, cell, pad, left, head = palette(num_colors), H * scale, 3, 96, 14
    kinds = (("true", true, 0), ("teacher-forced", forced, 1), ("free-running", free, context))

    def grid(img, a, truth, x, y):
        img.paste(Image.fromarray(pal[a].repeat(scale, 0).repeat(scale, 1)), (x, y))
        d = ImageDraw.Draw(img)
        for i, j in zip(*np.nonzero(a != truth)):
            x0, y0, x1, y1 = x + j * scale, y + i * scale, x + (j + 1) * scale - 1, \
                y + (i + 1) * scale - 1
            d.line([(x0, y0), (x1, y1)], fill="black")
            d.line([(x1, y0), (x0, y1)], fill="black")
    block, gif = head + 3 * (cell + pad), str(path).lower().endswith(".gif")
    if not gif:
        img = Image.new("RGB", (left + G * (cell + pad), head + R * block), "white")
        d = ImageDraw.Draw(img)
        d.text((4, 2), f"grid 0-{context - 1}: context", fill="black")
        for g in range(G):
            d.text((left + g * (cell + pad) + cell // 2 - 3, 2), str(g), fill="black")
        for r in range(R):
            y0 = head + r * block
            d.text((left, y0 + 2), labels[r], fill="black")
            for k, (name, grids, first) in enumerate(kinds):
                y = y0 + head + k * (cell + pad)
                d.text((4, y + cell // 2 - 5), name, fill="black")
                for g in range(first, G):
                    grid(img, grids[r, g], true[r, g], left + g * (cell + pad), y)
        frames = [img]
    else:
        frames = []
        for g in range(1, G):
            img = Image.new("RGB", (left + 3 * (cell + pad), 2 * head + R * (cell + head)),
                            "white")
            d = ImageDraw.Draw(img)
            d.text((4, 2), f"grid {g}" + (" (context)" if g < context else ""), fill="black")
            for k, (name, grids, first) in enumerate(kinds):
                d.text((left + k * (cell + pad), head), name.split("-")[0], fill="black")
                for r in range(R):
                    y = 2 * head + r * (cell + head)
                    d.text((4, y + cell // 2 - 5), labels[r][-12:], fill="black")
                    grid(img, grids[r, g] if g >= first else true[r, g], true[r, g],
                         left + k * (cell + pad), y)
            frames.append(img)
    atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, loop=0,
                                                  append_images=frames[1:], duration=400)
                 if gif else frames[0].save(tmp, format="PNG"))
