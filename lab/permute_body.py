"""A weight-permuted body: a stage-1 checkpoint whose every trained tensor has its entries
shuffled (each tensor by its own permutation), written as a checkpoint of its own. Norms, value
distributions and shapes stay; whatever circuit stage 1 built is gone. It costs no stage 1, and
`train.py --stage lang --init_from OUT --arm permuted` transfers it like any body (docs/method.md,
'Stage-1 controls').

  python lab/permute_body.py out/nca/ppt/ckpt.pt out/nca-permuted/ckpt.pt --seed 0
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
from data.common import show  # noqa: E402
from model import save_checkpoint  # noqa: E402
from util import UserError, check_writable, cli, run_checkpoint, script_parser  # noqa: E402


def permute(state, seed):
    """Every tensor of a state dict with its entries in random order (seeded by `seed`)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v).clone()
            for k, v in state.items()}


def stage1_body(given, flag, out, overwrite, what="checkpoint"):
    """(checkpoint path, Path(out), the stage-1 checkpoint) for a script that writes a body derived
    from another (this one, lab/scale_matched_body.py): OUT new or --overwrite and writable, the
    source a train.py stage-1 checkpoint (memory-mapped), all before any tensor is touched."""
    src, out = run_checkpoint(given, flag), Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{show(out)} exists: pass --overwrite to replace it, or another OUT")
    check_writable(out, "OUT", kind="file")
    ck = guard.peek(src, what)
    if ck.get("stage") != "ppt":
        raise UserError(f"{show(src)} is not a stage-1 checkpoint (stage {ck.get('stage')!r})")
    return src, out, ck


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("ckpt", help="a stage-1 ckpt.pt (or its run folder)")
    p.add_argument("out", help="the permuted checkpoint to write (a .pt file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = p.parse_args(argv)
    src, out, ck = stage1_body(args.ckpt, "CKPT", args.out, args.overwrite)  # read as permuted
    ck = {k: v for k, v in ck.items() if k not in ("optimizer", "data")}
    ck["model"] = permute(ck["model"], args.seed)
    ck["config"] = {**ck.get("config", {}), "permuted_from": str(src), "permute_seed": args.seed}
    save_checkpoint(ck, out)
    print(f"wrote {show(out)}: the body of {show(src)} with every tensor's entries shuffled "
          f"(seed {args.seed})")
    return ck


if __name__ == "__main__":
    main()
