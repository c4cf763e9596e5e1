"""
Side-by-side training throughput: this project's model.py vs nanoGPT's, same shape, same loop.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT      # not part of this repo
    python scripts/bench_nanogpt.py --nanogpt /tmp/nanoGPT --size tiny --seq_len 256

Both models get the same n_layer / n_head / n_embd / vocabulary / sequence length, no dropout,
AdamW, and the nanoGPT loop (forward, backward, clip, step, zero_grad); steps alternate between
the two models so drift in machine speed hits both. Prints tokens/s of each and the ratio, and
the achieved FLOP/s, since the models differ in FLOPs per token (our SwiGLU MLP has three 4d
matrices where nanoGPT's GELU MLP has two; our head is untied).
"""
import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPT, SIZES, config_for  # noqa: E402


def load_nanogpt(path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(path) / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--nanogpt", required=True, help="folder of a nanoGPT checkout (model.py)")
    ap.add_argument("--size", choices=list(SIZES), default="tiny", help="shape preset")
    ap.add_argument("--seq_len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--vocab_size", type=int, default=50257, help="vocabulary")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--mlp", choices=["paper", "matched"], default="matched",
                    help="our SwiGLU width: paper = 4d (1.5x the MLP of nanoGPT's GELU 4d), "
                         "matched = 8/3 d, the same parameters and FLOPs as nanoGPT's MLP")
    args = ap.parse_args()
    ng = load_nanogpt(args.nanogpt)
    shape = SIZES[args.size]
    fields = {f.name for f in dataclasses.fields(ng.GPTConfig)}
    extra = {k: v for k, v in dict(use_rmsnorm=False, use_relu=False,
                                   use_squared_relu=False).items() if k in fields}
    theirs = ng.GPT(ng.GPTConfig(block_size=args.seq_len, vocab_size=args.vocab_size, dropout=0.0,
                                 bias=False, **shape, **extra)).to(args.device)
    hidden = None if args.mlp == "paper" else 8 * shape["n_embd"] // 3
    ours = GPT(config_for(args.size, vocab_size=args.vocab_size, block_size=args.seq_len,
                          attn_dropout=0.0, mlp_hidden=hidden)).to(args.device)
    # Each model with its own optimizer setup: ours from configure_optimizers (fused AdamW where
    # the device supports it), nanoGPT's as its configure_optimizers builds it on this device.
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    ours_opt = ours.configure_optimizers(0.0, 1e-4, (0.9, 0.95), device_type=device_type)
    runs = {"ours": (ours, ours_opt, []),
            "nanogpt": (theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                                  fused=device_type == "cuda"), [])}
    x = torch.randint(0, args.vocab_size, (args.batch, args.seq_len), device=args.device)
    y = torch.randint(0, args.vocab_size, (args.batch, args.seq_len), device=args.device)
    for i in range(args.steps + 2):
        for name, (m, opt, times) in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, loss = m(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:                                   # skip warm-up steps
                times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq_len
    rate = {k: tokens * len(v[2]) / sum(v[2]) for k, v in runs.items()}
    ours_flops = ours.flops_per_token(args.seq_len)
    n_theirs = sum(p.numel() for n, p in theirs.named_parameters() if "wpe" not in n)
    theirs_flops = 6 * n_theirs + 12 * shape["n_layer"] * shape["n_embd"] * args.seq_len
    print(f"shape: {args.size} {shape}, vocab {args.vocab_size}, batch {args.batch} x "
          f"{args.seq_len}, our MLP {args.mlp} ({ours.blocks[0].mlp.up.out_features})")
    gflops = rate["ours"] * ours_flops / 1e9
    print(f"ours tokens/s: {rate['ours']:.0f} tok/s ({gflops:.1f} GFLOP/s)")
    print(f"nanogpt tokens/s: {rate['nanogpt']:.0f} tok/s "
          f"({rate['nanogpt'] * theirs_flops / 1e9:.1f} GFLOP/s)")
    print(f"ratio ours/nanogpt: {rate['ours'] / rate['nanogpt']:.2f}")


if __name__ == "__main__":
    main()
