"""How far a body's RMSNorm weights moved from their initial value of 1. It decides whether
`--reinit ln` means anything: if stage 1 left the norm weights at about 1, re-initializing them
changes nothing, and a "norms carry nothing" reading would be empty.

Per checkpoint: the per-block norms (norm1 and norm2 of every block, what `--reinit ln` resets)
and the final norm, each as the mean and the largest |w - 1| over their entries, and the
root-mean-square of w - 1.

  python lab/norm_movement.py out/e1/nca-seed0 out/e1/text-seed0
  python lab/norm_movement.py out/e1/*-seed*/ --out out/e4/norms.md
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
from data.common import show  # noqa: E402
from util import atomic_write, cli, run_checkpoint, script_parser  # noqa: E402


def norm_keys(state):
    """{"blocks": keys, "final": keys} of the RMSNorm weights of a state dict: the per-block
    norms (blocks.*.norm*, what `--reinit ln` resets) and the final norm apart."""
    keys = {"blocks": [], "final": []}
    for key in state:
        if key.endswith(".weight") and ".norm" in f".{key}":
            keys["blocks" if key.startswith("blocks.") else "final"].append(key)
    return keys


def movement(state):
    """{"blocks": (mean, max, rms), "final": (mean, max, rms)} of |w - 1| over the RMSNorm
    weights of a state dict (norm_keys' two groups)."""
    out = {}
    for name, keys in norm_keys(state).items():
        if keys:
            d = torch.cat([state[k].flatten() for k in keys]).double() - 1.0
            out[name] = (d.abs().mean().item(), d.abs().max().item(), d.pow(2).mean().sqrt().item())
    return out


def table(rows):
    lines = ["RMSNorm weights against their initial 1 (|w - 1|: mean / max / rms)", "",
             "| checkpoint | stage | step | per-block norms | final norm |",
             "| --- | --- | ---: | --- | --- |"]
    for path, ck, m in rows:
        cells = [" / ".join(f"{x:.4f}" for x in m[k]) if k in m else "-"
                 for k in ("blocks", "final")]
        lines.append(f"| {path} | {ck.get('stage')} | {ck.get('step')} | {cells[0]} | "
                     f"{cells[1]} |")
    return "\n".join(lines) + "\n"


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("ckpts", nargs="+", help="checkpoints (ckpt.pt files or their run folders)")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    rows = []
    for given in args.ckpts:
        src = run_checkpoint(given, "CKPT")
        ck = guard.peek(src)
        rows.append((show(src), ck, movement(ck["model"])))
    text = table(rows)
    print(text, end="")
    if args.out:
        atomic_write(args.out, text)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
