"""
The stage-1 learning curve of NCA bodies against the copy and lookup predictors on held-out
rules, and the gate of scripts/gpu_reproduce.sh's hour tier: every body's last validation beats
copying the previous grid by at least --margin of token accuracy.

    python scripts/stage1_gate.py out/gpu-hour/ppt-web out/gpu-hour/ppt-code --margin 0.05

Prints one table per body (the validation lines train.py logged: token_acc, copy_token_acc,
lookup_token_acc, token_acc - copy_token_acc, and the manipulation check's order gain,
val_loss_shuffled - val_loss, where the line has it), then the verdict. Exit status: 0 when every
body meets the gate, 1 when one does not (the remedy is printed), 2 for bad input.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from util import UserError, cli, read_metrics  # noqa: E402

# What to do when a body does not beat copying: its budget, in the hour tier's own knobs.
REMEDY = ("train stage 1 longer (PPT_TOKENS=2x the tier's value, or more) or at a higher "
          "learning rate (PPT_LR), after removing the bodies' folders and status/ppt-* so they "
          "retrain; the language runs are not worth their hour on a body that only copies")


def curve(run):
    """The validation records of a stage-1 NCA run that carry the copy and lookup scores."""
    path = Path(run) / "metrics.jsonl"
    vals = [m for m in read_metrics(path) if m.get("kind") == "val" and "copy_token_acc" in m]
    if not vals:
        raise UserError(f"{run}: no stage-1 NCA validation line in {path} (is it a stage-1 NCA "
                        "run folder that has validated at least once?)")
    return vals


def table(run, vals):
    rows = [f"{run}: token accuracy on held-out rules",
            "| step | model | copy | lookup | model - copy | order gain (nats) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m in vals:
        lookup = m.get("lookup_token_acc")
        order = m["val_loss_shuffled"] - m["val_loss"] if "val_loss_shuffled" in m else None
        rows.append(f"| {m['step']} | {m['token_acc']:.4f} | {m['copy_token_acc']:.4f} | "
                    f"{'-' if lookup is None else f'{lookup:.4f}'} | "
                    f"{m['token_acc'] - m['copy_token_acc']:+.4f} | "
                    f"{'-' if order is None else f'{order:+.4f}'} |")
    return "\n".join(rows)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("runs", nargs="+", metavar="RUN", help="stage-1 NCA run folders")
    p.add_argument("--margin", type=float, default=0.05,
                   help="token accuracy every body must beat copying by (0.05 = 5 points)")
    args = p.parse_args(argv)
    met = True
    for run in args.runs:
        vals = curve(run)
        print(table(run, vals) + "\n")
        gap = vals[-1]["token_acc"] - vals[-1]["copy_token_acc"]
        ok = gap >= args.margin
        met &= ok
        print(f"gate: {run} at step {vals[-1]['step']}: model - copy = {gap:+.4f} "
              f"{'>=' if ok else '<'} {args.margin:.4f}: {'met' if ok else 'NOT met'}")
    if not met:
        print(f"gate not met: {REMEDY}")
        return 1
    print("gate met: every body beats copying by at least the margin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
