"""Paired statistics of evaluated runs, beside the method's road: how sure a difference between
two arms is. Over seeds, each run paired with the scratch run of its domain and seed (summarize);
paired contrasts of any two arms, one unit per stage-1 model, with 95% t intervals, exact
sign-flip p-values and Holm's correction, and the share of a reference arm's gain a contrast
keeps (contrasts); the validation curves by arm and seed (seed_curves, arm_curves, delta_table);
and their eval.md tables. eval.py adds them to its record as optional columns (several seeds, or
--pair); the runs, the curves and the speedup are eval.py's."""
import math
import sys
from pathlib import Path

import numpy as np

import guard
from util import UserError


def run_speedup(base, run):
    """eval.py's convergence speedup of `run` against the run `base`, from their val lines."""
    from eval import speedup, val_curve      # the road's (eval.py imports this module)
    return speedup(val_curve(base.metrics), val_curve(run.metrics))


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (then ~1.96 + 2.4/df).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    """The two-sided 95% Student-t quantile for df >= 1 degrees of freedom (table, then ~)."""
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.4 / df


def mean_ci(xs):
    """(mean, half-width of its 95% confidence interval) of a sample; (mean, None) for one value,
    (None, None) for none. Paired seeds make xs the per-seed differences."""
    if not xs:
        return None, None
    if len(xs) < 2:
        return float(xs[0]), None
    t = t975(len(xs) - 1)
    return float(np.mean(xs)), float(t * np.std(xs, ddof=1) / math.sqrt(len(xs)))


def sign_flip_sums(diffs):
    """(observed sum, the sums under all 2^n sign patterns) of paired differences; None for none
    or more than 20 (2^20 patterns)."""
    d = np.asarray(diffs, float)
    if d.size == 0 or d.size > 20:
        return None
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d.size)).reshape(d.size, -1).T
    return d.sum(), signs @ d


def sign_flip_p(diffs):
    """Exact two-sided sign-flip (paired permutation) p-value of the mean of paired differences:
    the share of the 2^n sign patterns whose |mean| is at least the observed one (n <= 20)."""
    sums = sign_flip_sums(diffs)
    return None if sums is None else float(np.mean(np.abs(sums[1]) >= abs(sums[0]) - 1e-12))


def sign_flip_p_greater(diffs):
    """Exact one-sided sign-flip p-value that the paired differences' mean is above 0: the share
    of the 2^n sign patterns whose sum is at least the observed one (n <= 20)."""
    sums = sign_flip_sums(diffs)
    return None if sums is None else float(np.mean(sums[1] >= sums[0] - 1e-12))


def tost(diffs, margin):
    """Equivalence of paired differences to 0 within +-margin by two one-sided tests, each an
    exact sign-flip test of the shifted differences: "mean > -margin" on d + margin and "mean <
    margin" on margin - d. Returns (p_lower, p_upper, p) with p = max of the two; p < alpha
    concludes |mean| < margin at level alpha (n <= 20, else Nones)."""
    d = np.asarray(diffs, float)
    lower, upper = sign_flip_p_greater(d + margin), sign_flip_p_greater(margin - d)
    return lower, upper, None if lower is None else max(lower, upper)


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
            sp = run_speedup(b, r)
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


def eval_pairs(given, runs):
    """The contrasts (A, B) of --pair A:B (or (A, B, REF) of A:B:REF) among the arms of the
    language runs (arm = the run's --arm, else scratch or its label); without --pair, every arm
    against scratch when some arm has several seeds of a domain. Two runs of one arm, domain and
    seed cannot be paired: refused for --pair (guard.check_pairs), left out of the default
    contrasts with a note."""
    arms, seen, twice = {}, set(), set()
    for r in runs:
        if r.stage == "lang":
            arms.setdefault(r.arm, []).append(r.domain)
            key = (r.arm, r.domain, r.config.get("seed"))
            if key in seen:
                twice.add(r.arm)
            seen.add(key)
    guard.check_pairs(given, arms, twice)
    for text in given:                       # the pairs need runs of one domain and seed
        a, b = text.split(":")[:2]
        guard.check_pair_overlap(text, *({(d, s) for arm, d, s in seen if arm == x}
                                         for x in (a, b)))
    if given:
        return [tuple(text.split(":")) for text in given]
    if "scratch" not in arms or "scratch" in twice:
        return []
    pairs = []
    if any(len(ds) > len(set(ds)) for arm, ds in arms.items() if arm not in twice):
        pairs = [(a, "scratch") for a in sorted(arms) if a not in ("scratch", *twice)]
    if twice:
        print(f"note: arm(s) {', '.join(sorted(twice))} have two runs of one domain and seed: "
              "left out of the paired contrasts (give them different --arm names)",
              file=sys.stderr)
    return pairs


def seed_order(item):
    """Sort key of ((arm, domain, seed), run): integer seeds in numeric order (0, 1, 2, ..., 10,
    not 0, 1, 10, 2), any other seed after them in string order."""
    (arm, domain, seed), _ = item
    num = isinstance(seed, int) or (isinstance(seed, str) and seed.lstrip("-").isdigit())
    return str(arm), str(domain), (0, int(seed), "") if num else (1, 0, str(seed))


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
        for (arm, domain, seed), (r, res) in sorted(by.items(), key=seed_order):
            other = by.get((b, domain, seed))
            if arm != a or other is None:
                continue
            (br, bres), third = other, ref and by.get((ref[0], domain, seed))
            d = (res["loss"][domain] - bres["loss"][domain],
                 res["bpb"][domain] - bres["bpb"][domain]
                 if domain in res["bpb"] and domain in bres["bpb"] else None,
                 run_speedup(br, r),
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
    for a, b, *_ in pairs:          # paired in the plan, but not scored on a shared domain
        if not any((r["a"], r["b"]) == (a, b) for r in rows):
            print(f"note: --pair {a}:{b}: no domain was scored for runs of both arms of one "
                  "seed: no row in the contrasts", file=sys.stderr)
    return rows


def share_kept(pairs):
    """The share of a reference gain that a contrast keeps, from per-unit (d, dref) differences
    against the same baseline: mean(d) / mean(dref), with Fieller's 95% interval for a ratio of
    paired means (t with n - 1 df). A percentile bootstrap undercovers with the 5-8 units of an
    experiment (tests/test_eval.py simulates it); Fieller's is exact for normal differences.
    When mean(dref) is not clearly away from 0 the set is not an interval: lo and hi are None
    and "unbounded" is True (two rays or the whole line). {"share", "lo", "hi", "unbounded",
    "units"}."""
    d, ref = np.asarray(pairs, float).reshape(-1, 2).T
    n = len(d)
    share = float(d.mean() / ref.mean()) if ref.mean() != 0 else None
    out = {"share": share, "lo": None, "hi": None, "unbounded": False, "units": n}
    if n < 2:
        return out
    lo, hi = fieller(d, ref)
    out.update(lo=lo, hi=hi, unbounded=lo is None)
    return out


def fieller(d, ref):
    """Fieller's 95% interval for mean(d) / mean(ref) of paired samples: the ratios r with
    (a - r b)^2 <= t^2 var(a - r b), a, b the means, var from the sample (co)variances / n.
    That is A r^2 - 2 B r + C <= 0 with A = b^2 - t^2 v_bb, B = a b - t^2 v_ab,
    C = a^2 - t^2 v_aa: an interval when A > 0 (b significantly away from 0), else unbounded:
    (None, None)."""
    n = len(d)
    cov = np.cov(np.stack([d, ref]), ddof=1) / n
    t2 = t975(n - 1) ** 2
    a, b = d.mean(), ref.mean()
    A = b * b - t2 * cov[1, 1]
    B = a * b - t2 * cov[0, 1]
    C = a * a - t2 * cov[0, 0]
    if A <= 0:
        return None, None
    root = math.sqrt(max(B * B - A * C, 0.0))
    return float((B - root) / A), float((B + root) / A)


def share_text(s):
    """A share cell: "0.42 [0.08, 1.29]", "0.42 [unbounded]", or the share alone (one unit)."""
    head = "-" if s["share"] is None else f"{s['share']:.2f}"
    if s.get("unbounded"):
        return head + " [unbounded]"
    return head + ("" if s["lo"] is None else f" [{s['lo']:.2f}, {s['hi']:.2f}]")


def format_shares(rows):
    """The share of REF - B kept by A - B, for the contrasts given as --pair A:B:REF."""
    out = ["Share of the reference's gain kept ((A - B) / (REF - B) in loss; 95% Fieller "
           "interval over units)", "", "| A - B | REF | domain | units | share kept |",
           "| --- | --- | --- | ---: | --- |"]
    for r in rows:
        s = r["share"]
        out.append(f"| {r['a']} - {r['b']} | {r['ref']} | {r['domain']} | {s['units']} | "
                   f"{share_text(s)} |")
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


def seed_curves(runs):
    """The validation curves by arm and seed, {arm: {seed: {tokens: loss}}}, and Δ = arm - scratch
    of the same seed, {arm: {seed: {tokens: Δ}}}, for the arms with a scratch partner."""
    from eval import val_curve               # the road's (eval.py imports this module)
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
            cells += [", ".join(f"{x:+.3f}" for x in xs),
                      f"{m:+.3f}" + (f" ± {h:.3f}" if h else "")]
        lines.append(f"| {t:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
