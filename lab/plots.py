"""Pictures, beside the method's road: eval.py's --plot (validation loss against training tokens;
with several seeds, one band per arm and the paired Δ against scratch), --plot_contrasts (the
paired contrasts of lab/stats.py as bars) and --plot_heads (attention-head scores), and the NCA
rollout pictures and accuracy table of sample.py and scripts/nca_tools.py. matplotlib and Pillow
are optional: util.pyplot() and util.pillow() refuse in one line without them (guard.py asks
them before any work)."""
import sys
from pathlib import Path

import numpy as np
import torch

from lab.stats import arm_curves
from util import UserError, atomic_write, pillow, pyplot


# ---------------------------------------------------------------- eval.py's pictures

def draw_pictures(args, runs, baselines, results, domains, pairs):
    """The pictures eval.py was asked for (--plot, --plot_contrasts, --plot_heads), each written
    and named as it is done."""
    if args.plot:
        plot_curves(runs, baselines, args.plot,
                    {d: v["baselines"]["bigram"] for d, v in domains.items()})
        print(f"wrote {args.plot}")
    if args.plot_contrasts:
        plot_contrasts(pairs, args.plot_contrasts)
        print(f"wrote {args.plot_contrasts}")
    if args.plot_heads:
        plot_heads(results, args.plot_heads)
        print(f"wrote {args.plot_heads}")



def trained_name(run):
    """The name of the folder a stage-2 run trained on (its eval-domain name)."""
    return Path(run.config["data_dir"]).name if run.config.get("data_dir") else run.domain


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
    from eval import diverged_at, val_curve     # the road's (eval.py imports this module)
    plt = pyplot()
    bigram = bigram or {}
    panels = {}
    for r, b in zip(runs, baselines):
        if diverged_at(r.metrics) is not None:
            print(f"note: {r.label} diverged at step {diverged_at(r.metrics)}: not plotted",
                  file=sys.stderr)
            continue
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


def plot_contrasts(rows, path):
    """The paired contrasts as a bar chart (a ladder): one horizontal bar per row of the table,
    its mean Δ loss with the 95% t interval as a whisker; under each row's name its Holm p (and
    its share, below). Left of zero = A better. Rows given as A:B:REF also get a second panel:
    the share of REF's gain each keeps, with its 95% Fieller interval (an unbounded one is
    written beside its point; E4's re-initialization figure). Returns the figure (closed)."""
    plt = pyplot()
    if not rows:
        raise UserError("no paired contrast to plot: give --pair A:B with runs of both arms")
    means = [r["dloss"][0] for r in rows]
    halves = [r["dloss"][1] or 0.0 for r in rows]
    several = len({r["domain"] for r in rows}) > 1
    shares = [r.get("share") for r in rows]
    shares = [s if s and s["share"] is not None else None for s in shares]
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
        for yi, x in kept:
            if x.get("unbounded"):
                sax.annotate("interval unbounded", (x["share"], yi), xytext=(6, 4),
                             textcoords="offset points", fontsize=7)
        for v in (0, 1):
            sax.axvline(v, c="black", lw=1, ls="-" if v == 0 else "--")
        sax.set(xlabel="share of the REF arm's gain kept (95% Fieller interval; 1 = all)",
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
