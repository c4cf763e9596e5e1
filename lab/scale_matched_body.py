"""A scale-matched body: the skeptic's control for "stage 1 only rescaled the weights". Fresh
random tensors, drawn as the model's own initialization draws them (seeded by --seed), each body
weight matrix (q, k, v, o, gate, up, down) rescaled to the per-tensor RMS of BODY's; the norms
stay at their init (ones), the embeddings and head are the fresh model's (stage 2 replaces
them). It saw no data: whatever a stage-1 body carries beyond its per-tensor scale is gone, the
scale stays. Written as a stage-1 checkpoint (ppt_source "scaled"), so
`train.py --stage lang --init_from OUT --arm scaled` transfers it like any body (docs/method.md,
'Stage-1 controls').

--init_from_scratch_config draws the matrices as train.py's scratch arm of the same --seed draws
its body (no head bias, the stage-2 --vocab_size), so they are that arm's starting tensors
rescaled: scaled − scratch of a seed then differs in the per-tensor scale only.

  python lab/scale_matched_body.py out/nca/ppt/ckpt.pt out/nca-scaled/ckpt.pt --seed 0
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.common import show  # noqa: E402
from model import GPT, GPTConfig, save_checkpoint  # noqa: E402
from lab.permute_body import stage1_body  # noqa: E402
from util import UserError, cli, script_parser  # noqa: E402

MATRICES = (".attn.", ".mlp.")      # the body's weight matrices: blocks.i.attn.* and .mlp.*
RUN_STATE = ("optimizer", "data", "rng", "nca")     # what stage 1's data and run left: dropped


def fresh_state(model_args, seed, scratch_vocab=None):
    """A freshly initialized model's state dict, drawn after torch.manual_seed(seed) as stage 1
    draws its model; with scratch_vocab, as train.py's scratch arm draws its body (no head bias,
    that vocabulary)."""
    args = dict(model_args)
    if scratch_vocab is not None:
        args |= {"vocab_size": scratch_vocab, "head_bias": False}
    torch.manual_seed(seed)
    return GPT(GPTConfig(**args)).state_dict()


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def scale_matched(body, model_args, seed, scratch_vocab=None):
    """The state dict with BODY's keys and shapes: each body matrix a fresh draw rescaled to the
    body's RMS, norms ones, embeddings and head the fresh model's."""
    own = fresh_state(model_args, seed)
    draws = own if scratch_vocab is None else fresh_state(model_args, seed, scratch_vocab)
    out = {}
    for k, v in body.items():
        if any(m in k for m in MATRICES) and v.dim() == 2:
            w = draws[k].double()
            out[k] = (w * (rms(v) / rms(w))).to(v.dtype)
        else:                               # norms (ones at init), wte, lm_head
            out[k] = own[k].to(v.dtype).clone()
    return out


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("body", help="a stage-1 ckpt.pt (or its run folder)")
    p.add_argument("out", help="the scale-matched checkpoint to write (a .pt file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh draws")
    p.add_argument("--init_from_scratch_config", action="store_true",
                   help="draw the matrices as the scratch arm of --seed draws its body")
    p.add_argument("--vocab_size", type=int, default=257,
                   help="with --init_from_scratch_config: the stage-2 vocabulary (257: bytes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = p.parse_args(argv)
    if args.vocab_size < 1:
        raise UserError(f"--vocab_size must be at least 1, got {args.vocab_size}")
    src, out, ck = stage1_body(args.body, "BODY", args.out, args.overwrite, what="BODY")
    vocab = args.vocab_size if args.init_from_scratch_config else None
    ck = {k: v for k, v in ck.items() if k not in RUN_STATE}
    ck["model"] = scale_matched(ck["model"], ck["model_args"], args.seed, vocab)
    ck.update(stage="ppt", tokens=0)
    if "step" in ck:
        ck["step"] = 0
    ck["config"] = {**ck.get("config", {}), "ppt_source": "scaled", "scaled_from": str(src),
                    "scale_seed": args.seed, "scale_draws": "scratch" if vocab else "stage 1",
                    "ppt_tokens": 0}
    save_checkpoint(ck, out)
    print(f"wrote {show(out)}: fresh tensors (seed {args.seed}) with the per-tensor RMS of "
          f"{show(src)}'s body matrices")
    return ck


if __name__ == "__main__":
    main()
