"""NCA tools that are not the method: pictures of trajectories, the gzip-ratio statistics of
random rules beside the official implementation's, and the generation benchmark.

  python scripts/nca_tools.py --preview docs/nca_preview.png --preview_rules 2   # or .gif
  python scripts/nca_tools.py --stats --num_rules 2000 [--out scores.json]
  python scripts/nca_tools.py --bench
  python scripts/nca_tools.py --show --num_colors 4 --grid 8   # token layout, one trajectory
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
import nca  # noqa: E402
from lab.plots import palette  # noqa: E402
from util import (UserError, add_flags, atomic_write, check_writable, cli,  # noqa: E402
                  default_device, from_flags, pillow, script_parser)


PREVIEW_NEEDS_PILLOW = "--preview needs Pillow for PNG/GIF output: pip install pillow"


def draw_preview(path, cfg, bands, rules_per_band=3, num_frames=8, seed=0, device="cpu",
                 scale=5):
    """Trajectories of a few rules from each band, the bands in a 2-column grid of panels; PNG
    (frames left to right) or GIF (frames over time). Needs Pillow for the text and the files."""
    Image, ImageDraw, ImageFont = pillow(PREVIEW_NEEDS_PILLOW)
    gif = str(path).lower().endswith(".gif")
    pal = palette(cfg.num_colors)
    panels = []
    for name, band in bands:
        bank = nca.filter_rules(cfg, band, rules_per_band, seed=seed, device=device, progress=False,
                                cache=False)
        rules = nca.make_rules(bank.seeds, cfg.num_colors, nca.generation_device(device))
        keys = nca.stream_key(torch.as_tensor(bank.seeds), 11)
        frames = nca.rollout(rules, keys, cfg, num_frames)
        panels.append((f"band {name}: gzip ratio in ({band[0]}, {band[1]})", bank.scores,
                       frames.cpu().numpy()))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:                                       # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [t for title, scores, _ in panels for t in [title, *rule_labels(scores)]]
    cell, pad, line = cfg.grid * scale, 6, 20
    cols = 1 if gif else num_frames
    pw = max(cols * (cell + pad) + pad, max(measure.textlength(t, font=font) for t in texts)
             + 2 * pad)
    pw = int(pw) + 3 * pad                                  # a gap between the two columns
    ph = line + rules_per_band * (line + cell + pad) + 2 * pad
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    images = []
    for t in range(num_frames if gif else 1):
        img = Image.new("RGB", (pw * ncols, ph * nrows), "white")
        d = ImageDraw.Draw(img)
        for p, (title, scores, frames) in enumerate(panels):
            x0, y0 = (p % ncols) * pw + pad, (p // ncols) * ph + pad
            d.text((x0, y0), title, fill="black", font=font)
            for r, label in enumerate(rule_labels(scores)):
                y = y0 + line + r * (line + cell + pad)
                d.text((x0, y), label, fill="dimgray", font=font)
                for c in range(cols):
                    px = pal[frames[r, t if gif else c]].repeat(scale, 0).repeat(scale, 1)
                    img.paste(Image.fromarray(px), (x0 + c * (cell + pad), y + line))
        images.append(img)
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, loop=0,
                                                  append_images=images[1:], duration=250)
                 if gif else images[0].save(tmp, format="PNG"))


def rule_labels(scores):
    return [f"rule {i + 1}, gzip ratio {s:.3f}" for i, s in enumerate(scores)]


# The official implementation's scores of 4000 random rules (band_stats in
# tests/fixtures/official_nca.npz; a test checks these three numbers against it).
OFFICIAL_STATS = {"median": 0.4840, "above 0.5": 0.45825, "0.3-0.4": 0.0955}


def band_table(scores):
    edges = [(-np.inf, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, np.inf)]
    return {f"{lo}-{hi}".replace("-inf-", "<").replace("-inf", "+"): float(((scores > lo) &
            (scores < hi)).mean()) for lo, hi in edges}


def print_stats(scores):
    q = np.percentile(scores, [0, 5, 25, 50, 75, 95, 100])
    print(f"gzip ratio of {len(scores)} random rules")
    pcts = zip([0, 5, 25, 50, 75, 95, 100], q)
    print("percentiles  " + "  ".join(f"p{p}={v:.3f}" for p, v in pcts))
    for k, v in band_table(scores).items():
        print(f"band {k:>9}: {100 * v:5.1f}%")
    print(f"official implementation, 4000 rules: median {OFFICIAL_STATS['median']:.4f}, "
          f"{100 * OFFICIAL_STATS['above 0.5']:.1f}% above 0.5, "
          f"{100 * OFFICIAL_STATS['0.3-0.4']:.2f}% in 0.3-0.4")


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench(cfg, device, seqs=8192, chunk=2048, rules=4096):
    """Generation and filtering throughput on `device`; prints `name: value unit` lines."""
    seeds = nca.seed_sequence(0, 0, chunk)
    nca.make_sequences(seeds[:64], seeds[:64], cfg, device)                      # warm-up
    _sync(device)
    t0, done = time.perf_counter(), 0
    while done < seqs:
        nca.make_sequences(seeds, nca.stream_key(torch.arange(done, done + chunk), 12), cfg, device)
        done += chunk
    _sync(device)
    dt = time.perf_counter() - t0
    nca.score_rules(nca.seed_sequence(1, 0, 256), cfg, device)                     # warm-up
    t1 = time.perf_counter()
    sc = nca.score_rules(nca.seed_sequence(1, 0, rules), cfg, device, batch=min(rules, 2048))
    _sync(device)
    df = time.perf_counter() - t1
    print(f"device: {device}")
    print(f"sequences/s: {done / dt:.0f} seq/s")
    print(f"tokens/s: {done * cfg.seq_len / dt / 1e6:.3f} Mtok/s")
    print(f"filtered rules/s: {rules / df:.0f} rules/s")
    print(f"accepted rules/s (band 0.5-1.0): {((sc > 0.5) & (sc < 1.0)).sum() / df:.0f} rules/s")


def show(cfg, seed):
    """The token layout of a generator setting and the first two frames of one rule's
    trajectory as digit grids, each followed by its tokens."""
    print(f"vocabulary {cfg.vocab_size:,} ({cfg.num_colors}^{cfg.patch ** 2} patch tokens + "
          f"start {cfg.start_token} and end {cfg.end_token}), {cfg.grid_len} tokens per grid, "
          f"{cfg.frames} grids per sequence of {cfg.seq_len}")
    frames = nca.rollout(nca.make_rules([seed], cfg.num_colors), [seed], cfg, 2)[0]
    tokens = nca.tokenize(frames, cfg)
    for f, grid in enumerate(frames):
        print(f"frame {f} of rule {seed}, then its tokens:")
        print("\n".join(" ".join(str(int(c)) for c in row) for row in grid))
        print(" ".join(str(int(t)) for t in tokens[f * cfg.grid_len:(f + 1) * cfg.grid_len]))


def preview_bands(args):
    """The bands --preview draws: the one the band flags name (--band, or thresholds other than
    the defaults: e.g. the cpu preset's cpu-web), else the four of the paper's figure."""
    lo_hi = nca.band_from_args(args)
    if args.band:
        return [(args.band, lo_hi)]
    if lo_hi != (nca.BandFlags.filter_rules_threshold, nca.BandFlags.filter_rules_upper_bound):
        return [(f"{lo_hi[0]}-{lo_hi[1]}", lo_hi)]
    return [(k, nca.BANDS[k]) for k in ("0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-1.0")]


@cli
def main(argv=None):
    ap = script_parser(__doc__)
    add_flags(ap, nca.NCAConfig)
    add_flags(ap, nca.BandFlags)
    ap.add_argument("--seq_len", type=int, default=nca.NCAConfig.seq_len,
                    help="tokens per training sequence")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rule stream")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ap.add_argument("--stats", action="store_true",
                    help="print the gzip-ratio distribution of --num_rules random rules")
    ap.add_argument("--num_rules", type=int, default=1000, help="rules for --stats")
    ap.add_argument("--out", default=None, help="with --stats: write the raw scores (JSON list)")
    ap.add_argument("--preview", default=None, metavar="PATH",
                    help="draw trajectories of rules to PATH, from the band of --band (or "
                         "the thresholds), else from each of four bands (.png or .gif; "
                         "both need Pillow: pip install pillow)")
    ap.add_argument("--preview_rules", type=int, default=3, help="rules per band in --preview")
    ap.add_argument("--preview_frames", type=int, default=8, help="frames per rule in --preview")
    ap.add_argument("--bench", action="store_true", help="print generation/filter throughput")
    ap.add_argument("--bench_seqs", type=int, default=8192, help="sequences for --bench")
    ap.add_argument("--show", action="store_true",
                    help="print the token layout and one rule's first two frames and tokens")
    args = ap.parse_args(argv)
    cfg = guard.check_nca(from_flags(nca.NCAConfig, args, seq_len=args.seq_len),
                          nca.band_from_args(args))
    device = default_device(args.device)
    for name in ("num_rules", "preview_rules", "preview_frames", "bench_seqs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not (args.stats or args.preview or args.bench or args.show):
        ap.print_help()
        return
    for name in ("out", "preview"):         # a bad output path fails now, not after the work
        if getattr(args, name):
            check_writable(getattr(args, name), f"--{name}", kind="file")
    if args.preview:
        if Path(args.preview).suffix.lower() not in (".png", ".gif"):
            raise UserError(f"--preview {args.preview}: the picture is a .png or a .gif")
        pillow(PREVIEW_NEEDS_PILLOW)                # refused before anything else is printed
    if args.show:
        show(cfg, args.seed)
    if args.stats:
        scores = nca.score_rules(nca.seed_sequence(args.seed, 0, args.num_rules), cfg, device)
        print_stats(scores)
        if args.out:
            atomic_write(args.out, json.dumps([round(float(s), 6) for s in scores]))
            print(f"wrote {len(scores)} scores to {args.out}")
    if args.preview:
        draw_preview(args.preview, cfg, preview_bands(args), args.preview_rules,
                     args.preview_frames, args.seed, device)
        print(f"wrote {args.preview}")
    if args.bench:
        bench(cfg, device, seqs=args.bench_seqs)


if __name__ == "__main__":
    main()
