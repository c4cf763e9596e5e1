"""Instruments for the paper's mechanism: does a model look back in its context and copy?
(docs/method.md, 'Probes of in-context copying'). Each number comes with its chance level and
its standard error over sequences, so a gain can be told from none.

Copy probes: a sequence of L tokens followed by itself; the loss on the second copy against the
loss on the first. A model that can find the earlier occurrence of its current token and copy
what came next (an induction head) predicts the second copy well; a model that cannot has the
same loss on both.
  text       passages of the domain's validation split (the first copy is ordinary text)
  frequent   uniform random sequences over the K most frequent symbols of the training split,
             so every symbol has trained embedding and head rows (first copy: about ln K)
  uniform    uniform random sequences over the whole vocabulary (the earlier probe; blind in a
             byte model, whose rarely seen symbols the head has only learned to suppress)
In-context score (Olsson et al. 2022): on the ordinary validation windows, the mean loss at
positions [T/2, T) minus that at [T/16, T/8); negative when later tokens profit from the longer
context. Head scores: for every layer and head, attention to the previous token and the
induction score (attention from a second-copy token to the token after its first occurrence).
"""
import contextlib
import math

import numpy as np
import torch

from data.common import load_tokens
from model import apply_rotary, evaluate

NUM_SEQS = 16          # sequences per copy probe
SYMBOLS = 64           # K of the frequent-symbol probe


COUNT_TOKENS = 1 << 26  # the frequent symbols are counted on the first 64M training tokens


def copy_halves(folder, seq_len, vocab, num_seqs=NUM_SEQS, seed=0):
    """The first copies of each copy probe of a prepared folder: {name: (num_seqs, L) ids},
    L = seq_len // 2, the same for every model of that folder; random symbols are ids below
    `vocab` (data.common.probe_vocab: the ordinary tokens, not the document separator)."""
    L, g = seq_len // 2, torch.Generator().manual_seed(seed)
    val = load_tokens(folder, "val")
    n = min(num_seqs, len(val) // L)
    text = torch.from_numpy(np.asarray(val[:n * L]).astype(np.int64).reshape(n, L))
    train = np.asarray(load_tokens(folder, "train")[:COUNT_TOKENS])
    counts = np.bincount(train, minlength=vocab)[:vocab]
    top = torch.from_numpy(np.argsort(-counts, kind="stable")[:min(SYMBOLS, vocab)].copy())
    frequent = top[torch.randint(0, len(top), (num_seqs, L), generator=g)]
    uniform = torch.randint(0, vocab, (num_seqs, L), generator=torch.Generator().manual_seed(seed))
    return {"text": text, "frequent": frequent, "uniform": uniform}


def copy_probe(model, halves, batch_size=8, device="cpu", ctx=contextlib.nullcontext(),
               chance_first=None):
    """Loss (nats) on targets 1..L-1 of the first and of the second copy of [h, h] for each row
    h of `halves`; gain = first - second, with its standard error over the sequences. Chance:
    gain 0 for a model that does not copy; chance_first, if given, the first copy's loss of a
    model that knows only which symbols occur."""
    L = halves.shape[1]
    seqs, rows = torch.cat([halves, halves], dim=1), []

    def each(x, y, nll, pred):
        rows.append(torch.stack([nll[:, :L - 1].mean(1), nll[:, L:].mean(1)], 1).double().cpu())
    evaluate(model, [(w[:, :-1], w[:, 1:]) for w in seqs.split(batch_size)],
             ctx, device, each)
    first, second = torch.cat(rows).unbind(1)
    gain = first - second
    return {"first": float(first.mean()), "second": float(second.mean()),
            "gain": float(gain.mean()), "gain_se": standard_error(gain), "n": len(gain),
            "chance_gain": 0.0, "chance_first": chance_first}


def copy_probes(model, halves, batch_size=8, device="cpu", ctx=contextlib.nullcontext()):
    """Every copy probe of copy_halves: {name: copy_probe result}."""
    chance = {"frequent": math.log(SYMBOLS), "uniform": math.log(model.config.vocab_size)}
    return {name: copy_probe(model, h.to(device), batch_size, device, ctx, chance.get(name))
            for name, h in halves.items()}


def standard_error(x):
    return float(x.std() / math.sqrt(len(x))) if len(x) > 1 else None


class InContext:
    """The in-context score as a callback for model.evaluate: per validation window, the mean
    loss at positions [T/2, T) minus that at [T/16, T/8)."""

    def __init__(self, seq_len):
        self.early = slice(seq_len // 16, max(seq_len // 8, seq_len // 16 + 1))
        self.late = slice(seq_len // 2, seq_len)
        self.diffs = []

    def __call__(self, x, y, nll, pred):
        keep = (y != -100).double()
        mean = lambda s: (nll[:, s].double() * keep[:, s]).sum(1) / keep[:, s].sum(1).clamp(min=1)
        self.diffs.append((mean(self.late) - mean(self.early)).cpu())

    def result(self):
        """The validation line's numbers: score, its standard error over windows."""
        d = torch.cat(self.diffs)
        return {"icl_score": float(d.mean()), "icl_se": standard_error(d)}

    def summary(self):
        """eval.json's: the score with its chance level, sample size and position ranges."""
        d = torch.cat(self.diffs)
        return {"score": float(d.mean()), "se": standard_error(d), "n": len(d), "chance": 0.0,
                "early": [self.early.start, self.early.stop],
                "late": [self.late.start, self.late.stop]}


@torch.no_grad()
def attention_probs(model, idx):
    """(attention probabilities of every layer, each (B, H, T, T); logits): the model's forward
    pass written out with explicit attention, since SDPA does not return its weights. Same
    logits as model(idx) (tests/test_probes.py)."""
    B, T = idx.shape
    x, cos, sin, maps = model.wte(idx), model.cos[:T], model.sin[:T], []
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    for block in model.blocks:
        a, h = block.attn, block.norm1(x)
        q, k, v = (lin(h).view(B, T, a.n_head, a.head_dim).transpose(1, 2)
                   for lin in (a.q, a.k, a.v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        att = (q @ k.transpose(-2, -1) / math.sqrt(a.head_dim)).masked_fill(~causal, -math.inf)
        att = att.float().softmax(-1).to(v.dtype)
        maps.append(att)
        x = x + a.o((att @ v).transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.norm2(x))
    return maps, model.lm_head(model.norm_f(x))


@torch.no_grad()
def head_scores(model, halves, device="cpu"):
    """Per layer and head, on the sequences [h, h]: the previous-token score (mean attention
    from position i to i - 1) and the induction score (mean attention from position L + j of
    the second copy to position j + 1, the token after its first occurrence), each beside its
    chance level (uniform attention over the visible positions)."""
    was_training = model.training
    model.eval()
    L = halves.shape[1]
    maps, _ = attention_probs(model, torch.cat([halves, halves], 1).to(device))
    model.train(was_training)
    i = torch.arange(1, 2 * L)
    j = torch.arange(L - 1)
    prev = [m[:, :, i, i - 1].mean((0, 2)).tolist() for m in maps]
    induction = [m[:, :, L + j, j + 1].mean((0, 2)).tolist() for m in maps]
    return {"previous_token": prev, "induction": induction,
            "chance_previous_token": float((1.0 / (i + 1)).mean()),
            "chance_induction": float((1.0 / (L + j + 1)).mean())}
