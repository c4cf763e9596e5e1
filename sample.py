"""Show what a trained model does (nanoGPT's sample.py, and its stage-1 counterpart).

  python sample.py --init_from out/quickstart/nca                     # text, the run's tokenizer
  python sample.py --init_from out/web --start "The meaning of" --num_samples 5 --top_k 50
  python sample.py --init_from out/web --start FILE:prompt.txt --max_new_tokens 500
  python sample.py --init_from out/quickstart/nca/ppt --out rollout.png   # stage 1 (or .gif)

A language checkpoint continues --start (text, or FILE:path for a file's text) --num_samples
times, --max_new_tokens tokens each, at --temperature among the --top_k likeliest tokens, decoded
with the run's own tokenizer (GPT-2 or bytes). A Hugging Face Llama folder exported by
scripts/export_hf.py works too.

A stage-1 NCA checkpoint is shown rules it never trained on: its held-out rules (kept in the
checkpoint) are rolled out by nca.py, the model is given the first --context_grids grids of each
and predicts the next ones, teacher-forced (each grid from the true grids before it, which is
what validation's token_acc and grid_acc score) and free-running (greedily, one patch at a time,
each grid from its own predictions). It prints the accuracy per grid beside two predictors that
know no rule: copying the previous true grid, and repeating the last grid of the context. --out
draws the true and predicted grids side by side with each wrong cell crossed out (.png: a row
per kind of grid; .gif: one frame per grid; Pillow needed).
"""
from dataclasses import dataclass
from pathlib import Path

import torch

import guard
import nca
from data.common import TOKENIZERS, gpt2_encoding
from lab import probes
from lab.plots import draw_rollouts, rollout_table
from model import load_checkpoint, model_from_checkpoint
from util import (UserError, add_flags, check_writable, cli, default_device, flag, pillow,
                  run_checkpoint, script_parser)


@dataclass
class SampleFlags:
    """sampling"""
    init_from: str | None = flag(None, "run folder of train.py, a ckpt.pt, or a Hugging Face "
                                 "Llama folder (required)")
    start: str = flag("\n", "text to continue (default: a newline), or FILE:path for the text "
                      "of a file")
    num_samples: int = flag(3, "samples to draw")
    max_new_tokens: int = flag(200, "tokens per sample")
    temperature: float = flag(0.8, "1 = the model's own distribution; lower = more conservative")
    top_k: int = flag(200, "sample among the k likeliest tokens (0 = among all)")
    seed: int = flag(1337, "seed of the samples, and of the NCA trajectories (0: the "
                     "trajectories validation scores)")
    device: str = flag("auto", "auto, cpu, cuda, cuda:1, mps")


@dataclass
class RolloutFlags:
    """stage-1 NCA checkpoints"""
    out: str | None = flag(None, "draw true and predicted grids to this .png or .gif (needs "
                           "Pillow)")
    num_rules: int = flag(4, "held-out rules to roll out")
    context_grids: int = flag(4, "true grids the model is given before it predicts")


@cli
def main(argv=None):
    p = script_parser(__doc__)
    add_flags(p, SampleFlags)
    add_flags(p, RolloutFlags)
    args = p.parse_args(argv)
    check_sample(args)
    device = default_device(args.device)
    path = run_checkpoint(args.init_from, "--init_from")
    info = guard.peek(path, "--init_from")
    check_sample_model(args, path, info)        # text, or rollouts of held-out rules
    kind = (info.get("vocab") or {}).get("kind")
    prompt = read_prompt(args.start) if kind != "nca" else None
    if kind != "nca":
        check_prompt(prompt_ids(kind, prompt), kind,
                           (info.get("model_args") or {}).get("vocab_size", TOKENIZERS[kind][0]))
    ck = load_checkpoint(path, device)
    model = model_from_checkpoint(ck, device).eval()
    if kind != "nca":
        return sample_text(model, kind, prompt, args)
    true, forced, free = nca_rollouts(model, ck["nca"], args.num_rules, args.context_grids,
                                      args.seed)
    text, acc = rollout_table(nca.NCAConfig(**ck["nca"]["config"]), true, forced, free,
                              args.context_grids)
    print(text)
    if args.out:
        draw_rollouts(args.out, true, forced, free, args.context_grids,
                      ck["nca"]["config"]["num_colors"],
                      [f"held-out rule {i}" for i in range(args.num_rules)])
        print(f"wrote {args.out}")
    return acc


# -----------------------------------------------------------------------------------------------
# sample.py's own refusals, before a model is built

def check_sample(args):
    """sample.py's numbers, before the checkpoint is read."""
    if args.init_from is None:
        raise UserError("--init_from RUN is needed: a run folder of train.py, a ckpt.pt or a "
                        "Hugging Face Llama folder")
    for name in ("num_samples", "max_new_tokens", "num_rules", "context_grids"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be above 0, got {args.temperature} (for the "
                        "likeliest token every time: --top_k 1)")
    if args.top_k < 0:
        raise UserError(f"--top_k must be at least 0 (0 = all tokens), got {args.top_k}")
    if args.out:                      # a folder or a read-only place: refused before the rollout
        check_writable(args.out, "--out", kind="file")


def check_prompt(ids, kind, vocab_size):
    """Every token of the prompt is inside the model's vocabulary (a byte model trained on ASCII
    text may have fewer than 256 byte classes)."""
    outside = sorted({i for i in ids if i >= vocab_size})
    if outside:
        what = "byte" if kind == "bytes" else "token id"
        raise UserError(f"--start holds {what} {outside[0]}"
                        + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                        + f", outside the {vocab_size:,}-token vocabulary of this model: give a "
                        "prompt of the text it was trained on")


def check_sample_model(args, path, ck):
    """What sample.py can show of a checkpoint: text for a language model of a known tokenizer
    (and then no --out), rollouts for a stage-1 NCA model that kept its held-out rules."""
    kind = (ck.get("vocab") or {}).get("kind")
    if kind == "nca":
        return check_rollouts(args, path, ck)
    if kind not in TOKENIZERS:
        raise UserError(f"{path} is a model of {kind!r} tokens: sample.py decodes GPT-2 and "
                        "byte-level text and draws stage-1 NCA rollouts")
    if args.out:
        raise UserError(f"--out draws stage-1 NCA rollouts, and {path} is a language model: "
                        "drop --out (its samples are printed)")


def check_rollouts(args, path, ck):
    """A stage-1 NCA checkpoint's rollouts: its held-out rules, a context that leaves grids to
    predict, a picture format and Pillow."""
    info = ck.get("nca")
    if not info or not info.get("val_seeds"):
        raise UserError(f"{path} is an NCA model without its held-out rules: sample.py needs a "
                        "stage-1 checkpoint of train.py")
    gen = info["config"]
    grid_len = (gen["grid"] // gen["patch"]) ** 2 + 2
    grids = min(-(-gen["seq_len"] // grid_len), ck["model_args"]["block_size"] // grid_len)
    if args.context_grids >= grids:
        raise UserError(f"--context_grids {args.context_grids} leaves nothing to predict: the "
                        f"model's context holds {grids} grids")
    if args.out:
        if Path(args.out).suffix.lower() not in (".png", ".gif"):
            raise UserError(f"--out {args.out}: the picture is a .png or a .gif")
        pillow()


def read_prompt(start):
    """--start: the text itself, or FILE:path for a file's UTF-8 text."""
    if not start.startswith("FILE:"):
        return start
    try:
        return Path(start[5:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--start {start}: cannot read it as UTF-8 text "
                        f"({type(e).__name__})") from None


def codec(kind):
    """(encode, decode) of a run's tokenizer: GPT-2 (data.common) or UTF-8 bytes."""
    if kind == "bytes":
        sep = TOKENIZERS["bytes"][1]

        def decode(ids):
            return b"".join(b"\n<|endoftext|>\n" if i == sep else bytes([i])
                            for i in ids).decode("utf-8", errors="replace")
        return lambda text: list(text.encode("utf-8")), decode
    enc = gpt2_encoding()
    return lambda text: enc.encode(text, allowed_special={"<|endoftext|>"}), enc.decode


def prompt_ids(kind, prompt):
    """The prompt's token ids; nothing to continue: the separator, to start a new document."""
    return codec(kind)[0](prompt) or [TOKENIZERS[kind][1]]


@torch.no_grad()
def sample_text(model, kind, prompt, args):
    """--num_samples continuations of `prompt`, printed and returned."""
    decode = codec(kind)[1]
    vocab = TOKENIZERS[kind][0]
    # Only the tokenizer's rows of the head: a model with more rows (64,000 for math and code
    # on GPT-2 ids) could otherwise sample ids that are no text.
    head = model.lm_head
    head.weight = torch.nn.Parameter(head.weight[:vocab])
    if head.bias is not None:
        head.bias = torch.nn.Parameter(head.bias[:vocab])
    ids = prompt_ids(kind, prompt)
    torch.manual_seed(args.seed)
    x = torch.tensor(ids, device=head.weight.device).repeat(args.num_samples, 1)
    y = model.generate(x, args.max_new_tokens, args.temperature, args.top_k or None)
    texts = [decode(row.tolist()) for row in y]
    for text in texts:
        print(text)
        print("---------------")
    return texts


@torch.no_grad()
def nca_rollouts(model, info, num_rules, context, seed):
    """The first `num_rules` held-out rules of a stage-1 checkpoint (`info` = its "nca"),
    rolled out for the whole grids that fit the model's context, and the model's predictions
    of every grid after the first `context`: teacher-forced (one forward pass over the true
    grids) and free-running (greedy, one patch token at a time, the delimiters given). The
    argmax is over patch tokens only, so every prediction is a grid. Returns (true, forced,
    free), each (R, G, H, W); forced[:, 0] and free[:, :context] are the true grids."""
    cfg = nca.NCAConfig(**info["config"])
    gl, patches, patch_ids = cfg.grid_len, cfg.patches, cfg.start_token
    grids = min(cfg.frames, model.config.block_size // gl)
    device = next(model.parameters()).device
    seeds = torch.as_tensor(info["val_seeds"][:num_rules], dtype=torch.int64)
    with nca.full_precision():
        rules = nca.make_rules(seeds, cfg.num_colors, device)
        true = nca.rollout(rules, nca.stream_key(torch.arange(len(seeds)), 10, seed), cfg, grids)
    tokens = nca.tokenize(true, cfg)                                 # (R, grids * gl)
    logits, _ = model(tokens[:, :-1])
    pos = torch.stack([g * gl + 1 + torch.arange(patches) for g in range(1, grids)])
    forced = tokens.clone()
    forced[:, pos] = logits[:, pos - 1, :patch_ids].argmax(-1)
    seq = tokens[:, :context * gl]
    for g in range(context, grids):
        seq = torch.cat([seq, tokens[:, g * gl:g * gl + 1]], 1)        # start of grid g
        for _ in range(patches):
            nxt = model(seq)[0][:, -1, :patch_ids].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        seq = torch.cat([seq, tokens[:, (g + 1) * gl - 1:(g + 1) * gl]], 1)   # its end
    return true, probes.detokenize(forced, cfg), probes.detokenize(seq, cfg)


if __name__ == "__main__":
    main()
