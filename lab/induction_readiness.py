"""Induction readiness: does a body come with in-context machinery? (docs/method.md, 'Induction
readiness'). From a checkpoint's body with fresh embeddings and head (as at transfer), or from a
fresh body (scratch), train briefly on repeated random sequences [h, h] of K symbols with the
loss on the second copy only, at the same budget for every body; report the steps until the
second-copy loss falls below half of ln K, the loss of a calibrated guess on the first copy
(which nothing can predict), or "not within N". The threshold is ln K rather than each body's
own first-copy loss, which is not trained and sits above ln K by an amount that differs between
bodies; both losses are kept in the curve.

  python lab/induction_readiness.py out/nca/ppt out/c4/ppt --scratch --size tiny --seeds 0 1
  python lab/induction_readiness.py ... --out readiness.json

Bodies are paired by seed: with several run folders of the same arm, the i-th --seeds value goes
with the i-th folder of that arm (label ARM=FOLDER to name arms, e.g. nca=out/s0-seed0).
"""
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
from lab.stats import mean_ci, paired  # noqa: E402
from model import GPT, config_for, model_from_checkpoint  # noqa: E402
from util import (UserError, atomic_write, cli, default_device, run_checkpoint,  # noqa: E402
                  script_parser)


def repeated_batch(num, length, symbols, generator, device):
    """Inputs and labels of [h, h] rows, h uniform over `symbols` ids: labels only on the second
    copy (its tokens 1..L-1), -100 elsewhere."""
    h = torch.randint(0, symbols, (num, length), generator=generator)
    w = torch.cat([h, h], 1).to(device)
    y = w[:, 1:].clone()
    y[:, :length] = -100
    return w[:, :-1], y


@torch.no_grad()
def copy_losses(model, x, length):
    """Mean loss on the first copy's tokens 1..L-1 and on the second copy's, of batch x."""
    logits, _ = model(x)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:],
                                            reduction="none")
    return float(nll[:, :length - 1].mean()), float(nll[:, length - 1:].mean())


def readiness(model, seed, symbols=64, length=32, steps=300, lr=1e-3, batch=32, every=10,
              device="cpu"):
    """Train `model` (fresh embeddings and head for `symbols` ids) on repeated sequences; the
    first evaluated step at which the second-copy loss is below half of ln(symbols) (None: not
    within `steps`), and the curve [(step, first, second)] on a fixed held-out batch."""
    torch.manual_seed(seed)
    model.reset_vocab(symbols)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    held_out, _ = repeated_batch(64, length, symbols, torch.Generator().manual_seed(10**6), device)
    curve, reached = [], None
    for step in range(steps + 1):
        if step % every == 0:
            model.eval()
            first, second = copy_losses(model, held_out, length)
            model.train()
            curve.append((step, first, second))
            if second < 0.5 * math.log(symbols):
                reached = step
                break
        if step == steps:
            break
        x, y = repeated_batch(batch, length, symbols, g, device)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return reached, curve


def body(source, size, seed, block):
    """A body to test: a checkpoint's (stage 1 or 2), or a fresh one of --size (scratch)."""
    if source == "scratch":
        torch.manual_seed(seed)
        return GPT(config_for(size, vocab_size=2, block_size=block, attn_dropout=0.0))
    path = run_checkpoint(source, "RUN")
    return model_from_checkpoint(guard.peek(path), "cpu", block_size=block, attn_dropout=0.0)


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("bodies", nargs="*", metavar="[ARM=]RUN",
                   help="run folders or ckpt.pt files whose bodies to test")
    p.add_argument("--scratch", action="store_true", help="also test fresh bodies of --size")
    p.add_argument("--size", default="tiny", help="size of the scratch bodies")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (one per body)")
    p.add_argument("--symbols", type=int, default=64, help="K: symbols of the random sequences")
    p.add_argument("--length", type=int, default=32, help="L: tokens per copy")
    p.add_argument("--steps", type=int, default=300, help="training steps at most")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--every", type=int, default=10, help="steps between evaluations")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, mps")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("symbols", "length", "steps", "batch", "every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    device = default_device(args.device)
    arms = {}
    for item in args.bodies:
        arm, _, folder = item.rpartition("=")
        arms.setdefault(arm or Path(folder).resolve().parent.name, []).append(folder)
    if args.scratch:
        arms["scratch"] = ["scratch"] * len(args.seeds)
    if not arms:
        raise UserError("nothing to test: give run folders and / or --scratch")
    results = {}
    for arm, sources in arms.items():
        if len(sources) not in (1, len(args.seeds)):
            raise UserError(f"arm {arm} has {len(sources)} bodies for {len(args.seeds)} seeds: "
                            "give one, or one per seed")
        results[arm] = []
        for i, seed in enumerate(args.seeds):
            model = body(sources[min(i, len(sources) - 1)], args.size, seed, 2 * args.length)
            reached, curve = readiness(model, seed, args.symbols, args.length, args.steps,
                                       args.lr, args.batch, args.every, device)
            results[arm].append({"seed": seed, "body": sources[min(i, len(sources) - 1)],
                                 "steps": reached, "curve": curve})
            print(f"{arm} seed {seed}: " + (f"{reached} steps" if reached is not None
                                            else f"not within {args.steps}"))
    print(format_table(results, args))
    if args.out:
        atomic_write(args.out, json.dumps({"settings": vars(args), "arms": results}, indent=2))
        print(f"wrote {args.out}")
    return results


def format_table(results, args):
    """Steps to the criterion per arm: mean ± 95% t half-width over seeds (a seed that never got
    there counts as --steps, so the mean is then a lower bound, marked >=)."""
    lines = [f"criterion: second-copy loss < half of ln {args.symbols} = "
             f"{0.5 * math.log(args.symbols):.2f} nats; K = {args.symbols}, L = {args.length}, "
             f"at most {args.steps} steps of {args.batch}, lr {args.lr}",
             "", "| body | steps per seed | mean ± 95% CI | reached |", "| --- | --- | --- | --- |"]
    steps = {arm: [r["steps"] if r["steps"] is not None else args.steps for r in rows]
             for arm, rows in results.items()}
    for arm, rows in results.items():
        m, h = mean_ci(steps[arm])
        censored = any(r["steps"] is None for r in rows)
        per = ", ".join(str(r["steps"]) if r["steps"] is not None else f">{args.steps}"
                        for r in rows)
        ci = f"{'>=' if censored else ''}{m:.0f}" + (f" ± {h:.0f}" if h is not None else "")
        lines.append(f"| {arm} | {per} | {ci} | "
                     f"{sum(r['steps'] is not None for r in rows)}/{len(rows)} |")
    if "scratch" in results and len(results) > 1:
        lines += ["", "Paired by seed against scratch (negative: fewer steps than scratch; a seed "
                  "that never got there counts as --steps):", "",
                  "| body - scratch | per seed | mean ± 95% CI | sign-flip p |",
                  "| --- | --- | --- | --- |"]
        base = steps["scratch"]
        for arm, own in steps.items():
            if arm == "scratch" or len(own) != len(base):
                continue
            m, h, pv = paired(own, base)
            per = ", ".join(f"{a - b:+d}" for a, b in zip(own, base))
            ci = f"{m:+.1f}" + (f" ± {h:.1f}" if h is not None else "")
            lines.append(f"| {arm} | {per} | {ci} | "
                         + (f"{pv:.3f} |" if pv is not None else "- |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
