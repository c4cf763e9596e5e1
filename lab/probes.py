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
Stage 1 (NCA): accuracy by grid position of the model beside two model-free predictors, copying
the previous grid and the lookup of the same sequence (GridAccuracy, docs/method.md, 'Lookup
baseline').
"""
import contextlib
import math

import numpy as np
import torch

from data.common import load_tokens
from lab.stats import mean_ci
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


def ngram_baselines(train, windows, vocab_size):
    """Cross-entropy (nats/token) of the window targets under unigram and bigram models counted
    on the train split: what a model has to beat to have learned more than token frequencies
    and pairs. Unigram: add-alpha counts; bigram: counts with the unigram as a Dirichlet prior,
    p(b | a) = (c(a, b) + k p(b)) / (c(a) + k). alpha and k are the best of a small grid on these
    windows, which flatters the baselines a little: beating them is a conservative claim."""
    train = np.asarray(train, dtype=np.int64)
    x, y = (windows[:, :-1].reshape(-1).numpy(), windows[:, 1:].reshape(-1).numpy())
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    uni = {a: -np.log((counts[y] + a) / (len(train) + a * vocab_size)).mean()
           for a in (0.01, 0.1, 1.0)}
    alpha = min(uni, key=uni.get)
    p_uni = (counts + alpha) / (len(train) + alpha * vocab_size)
    pairs, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    q = x * vocab_size + y
    at = np.minimum(np.searchsorted(pairs, q), len(pairs) - 1)
    c_ab = np.where(pairs[at] == q, pair_counts[at], 0)
    c_a = np.bincount(train[:-1], minlength=vocab_size)[x]
    bi = {k: -np.log((c_ab + k * p_uni[y]) / (c_a + k)).mean() for k in (0.1, 1.0, 10.0, 100.0)}
    return {"unigram": float(uni[alpha]), "bigram": float(min(bi.values()))}


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


# -----------------------------------------------------------------------------------------------
# Stage 1: what the model learned about the rules, against model-free predictors

def detokenize(tokens, cfg):
    """Inverse of nca.tokenize (with delimiters): (..., F * grid_len) -> (..., F, H, W)."""
    *lead, L = tokens.shape
    assert L % cfg.grid_len == 0, f"{L} tokens is not a whole number of {cfg.grid_len}-token grids"
    t = tokens.reshape(-1, L // cfg.grid_len, cfg.grid_len)
    assert (t[..., 0] == cfg.start_token).all() and (t[..., -1] == cfg.end_token).all(), \
        "tokens are not [start, patches, end] grids"
    p, n, g = cfg.patch, cfg.num_colors, cfg.grid // cfg.patch
    powers = n ** torch.arange(p * p, device=tokens.device, dtype=torch.int64)
    cells = (t[..., 1:-1, None] // powers) % n                               # (B, F, P, p*p)
    cells = cells.reshape(-1, t.shape[1], g, g, p, p).permute(0, 1, 2, 4, 3, 5)
    return cells.reshape(*lead, t.shape[1], cfg.grid, cfg.grid)


def grid_positions(cfg):
    """Label positions of the patch tokens of each complete grid after the first:
    (G, patches) index tensor, row g-1 = grid g. Position i predicts token i + 1."""
    P, GL, L = cfg.patches, cfg.grid_len, cfg.seq_len
    rows = [g * GL + torch.arange(P) for g in range(1, cfg.frames) if g * GL + P <= L]
    return torch.stack(rows)


def grid_accuracy(pred, labels, cfg):
    """In-context accuracy by grid position. pred: (B, L) argmax next-token predictions under
    teacher forcing. A whole grid is predicted correctly by greedy decoding exactly when every
    one of its teacher-forced patch predictions is right (the first error makes greedy decoding
    diverge), so one forward pass gives the official greedy next-grid accuracy.
    Returns (token_correct, grid_correct) per grid position, summed over the batch."""
    pos = grid_positions(cfg).to(pred.device)
    ok = (pred[:, pos] == labels[:, pos])                                   # (B, G, P)
    return ok.float().mean(-1).sum(0), ok.all(-1).float().sum(0)


def copy_accuracy(inputs, labels, cfg):
    """The same accuracies for the trivial predictor 'each grid is a copy of the previous one'."""
    pos = grid_positions(cfg).to(inputs.device)
    ok = inputs[:, pos - cfg.grid_len + 1] == labels[:, pos]
    return ok.float().mean(-1).sum(0), ok.all(-1).float().sum(0)


def lookup_predictions(inputs, cfg):
    """The model-free in-context predictor (docs/method.md, 'Lookup baseline'): position i
    predicts the token that followed the most recent earlier occurrence of the longest context
    inputs[i-k+1..i] (k >= 1) seen before in the same sequence; with no earlier occurrence of
    inputs[i], the token one grid back (the copy predictor). A model that infers rules in
    context should beat it."""
    B, T = inputs.shape
    x = inputs.long()
    match = torch.zeros(B, T, dtype=torch.int32, device=x.device)   # match[j]: suffix length
    pred = torch.cat([x[:, :1].expand(B, cfg.grid_len - 1), x], 1)[:, :T].clone()  # fallback
    for i in range(1, T):       # match[j] = length of the common suffix of x[..i] and x[..j]
        same = (x[:, :i] == x[:, i:i + 1]).int()
        match = torch.cat([torch.zeros_like(match[:, :1]), match[:, :i - 1]], 1) * same \
            + same if i > 1 else same
        best = match.max(1).values
        last = i - 1 - match.flip(1).int().argmax(1)                 # most recent longest
        found = best > 0
        pred[found, i] = x[found, (last + 1)[found]]
    return pred


class GridAccuracy:
    """In-context accuracy by grid position, accumulated over validation batches (a callback
    for model.evaluate): the model's (grid_accuracy) beside the 'each grid is a copy of the
    previous one' predictor's (copy_accuracy) and the lookup predictor's (lookup_predictions),
    which rule learning must beat."""
    keys = ("token_acc", "grid_acc", "copy_token_acc", "copy_grid_acc", "lookup_token_acc",
            "lookup_grid_acc")

    def __init__(self, cfg):
        self.cfg, self.seqs = cfg, 0
        self.sums = {k: torch.zeros(len(grid_positions(cfg)), dtype=torch.float64)
                     for k in self.keys}

    def __call__(self, x, y, nll, pred):
        accs = grid_accuracy(pred, y, self.cfg) + copy_accuracy(x, y, self.cfg) \
            + grid_accuracy(lookup_predictions(x, self.cfg), y, self.cfg)
        for k, v in zip(self.keys, accs):
            self.sums[k] += v.double().cpu()
        self.seqs += len(x)

    def by_grid(self):
        """Per grid position g = 1..G (grid g is predicted with g grids in context)."""
        return {k: (v / self.seqs).tolist() for k, v in self.sums.items()}

    def result(self):
        """Means over grid positions, for the validation line."""
        return {k: float(v.mean()) / self.seqs for k, v in self.sums.items()}


# -----------------------------------------------------------------------------------------------
# The stage-1 tables of eval.md: a body's accuracy beside copy and lookup, a source's own scores

def format_nca_summary(results):
    """One line per stage-1 NCA run: its accuracies and the two model-free predictors', as % means
    over grid positions, and the margins (points) of its token accuracy over copy and over
    lookup; with several runs, each margin's mean ± 95% t half-width over them."""
    rows = [r for r in results if r["nca"]]
    keys = ("token_acc", "copy_token_acc", "lookup_token_acc", "grid_acc", "copy_grid_acc",
            "lookup_grid_acc")


    def pct(n, k):
        return 100 * float(np.mean(n[k])) if k in n else float("nan")
    out = ["Stage 1 on held-out rules in time order, % (means over grid positions); margins in "
           "points: token accuracy - copy's, and - lookup's", "",
           "| run | seed | token acc | copy | lookup | - copy | - lookup | grid acc | copy grid "
           "| lookup grid |", "| --- |" + " ---: |" * 9]
    margins = []
    for r in rows:
        v = [pct(r["nca"], k) for k in keys]
        margins.append((v[0] - v[1], v[0] - v[2]))
        out.append(f"| {r['label']} | {r.get('seed')} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | "
                   f"{margins[-1][0]:+.1f} | {margins[-1][1]:+.1f} | {v[3]:.1f} | {v[4]:.1f} | "
                   f"{v[5]:.1f} |")
    if len(rows) > 1:
        cells = []
        for i in (0, 1):
            m, h = mean_ci([mg[i] for mg in margins])
            cells.append(f"{m:+.1f} ± {h:.1f}")
        out.append(f"| mean ± 95% CI ({len(rows)} runs) | | | | | {cells[0]} | {cells[1]} "
                   "| | | |")
    if any("shuffled_loss" in r["nca"] for r in rows):
        out += ["", format_order_check(rows)]
    return "\n".join(out)


def trained_order(r):
    """The frame order a stage-1 NCA run trained on (time for a record from before the flag)."""
    return r["nca"].get("trained_order", "time")


def shuffled_body(r, rows):
    """The manipulation check's control body of a time-ordered run r: the run among `rows`
    trained on shuffled frames of r's held-out rules and setting, with r's stage-1 tokens and
    seed; failing that, the only such run when r is the only time-ordered run of those rules
    and tokens. None otherwise (which body is r's control is not known), and for a run that is
    not time-ordered. So no control body is counted twice."""
    if trained_order(r) != "time":
        return None
    like = [c for c in rows if c["nca"].get("rules") == r["nca"].get("rules")
            and c.get("tokens") == r.get("tokens")]
    fits = [c for c in like if trained_order(c) == "shuffled"]
    same_seed = [c for c in fits if c.get("seed") == r.get("seed")]
    if len(same_seed) == 1:
        return same_seed[0]
    return fits[0] if len(fits) == 1 and sum(trained_order(c) == "time" for c in like) == 1 \
        else None


def format_order_check(rows):
    """The manipulation check of each stage-1 NCA body (docs/method.md, 'Manipulation check'):
    its loss on the time-ordered frames of its held-out rules and on the same frames shuffled,
    the gain from time order, and, where a frame-shuffled body of the same rules and budget was
    evaluated too, that body's loss on the ordered frames and the difference; with several
    time-ordered runs, the mean ± 95% t half-width of the gain and of the difference."""
    rows = [r for r in rows if "shuffled_loss" in r["nca"]]
    out = ["Manipulation check, nats per token on the held-out rules' frames: in time order, the "
           "same frames shuffled, gain = shuffled − ordered (above 0: the body uses time order); "
           "shuffled body = a body of the same rules and budget trained on shuffled frames, its "
           "loss on the ordered frames", "",
           "| run | trained on | ordered | shuffled | gain | shuffled body | − shuffled body |",
           "| --- | --- |" + " ---: |" * 5]
    gains, diffs = [], []
    for r in rows:
        n, c = r["nca"], shuffled_body(r, rows)
        gain = n["shuffled_loss"] - n["val_loss"]
        diff = n["val_loss"] - c["nca"]["val_loss"] if c else None
        if trained_order(r) == "time":
            gains.append(gain)
            diffs += [diff] if diff is not None else []
        out.append(f"| {r['label']} | {trained_order(r)} frames | "
                   f"{n['val_loss']:.4f} | {n['shuffled_loss']:.4f} | {gain:+.4f} | "
                   + (f"{c['label']}: {c['nca']['val_loss']:.4f} | {diff:+.4f} |" if c else
                      "- | - |"))
    if len(gains) > 1:
        cell = lambda xs: "{:+.4f} ± {:.4f}".format(*mean_ci(xs)) if len(xs) > 1 else "-"
        out.append(f"| mean ± 95% CI ({len(gains)} time-ordered runs) | | | | {cell(gains)} | "
                   f"| {cell(diffs)}" + (f" ({len(diffs)} paired)" if diffs else "") + " |")
    return "\n".join(out)


def format_stage1(results):
    """One line per stage-1 run of a source other than NCA: its validation loss on the source's
    own validation batches and the source's scores."""
    rows = [r for r in results if r["stage1"]]
    keys = sorted({k for r in rows for k in r["stage1"]} - {"source", "val_loss", "num_seqs"})
    out = ["Stage 1 on its source's validation data (loss in nats per token; the source's own "
           "scores beside it)", "", "| run | source | seed | sequences | val loss | "
           + "".join(f"{k} | " for k in keys), "| --- | --- | --- |" + " ---: |" * (2 + len(keys))]
    for r in rows:
        n = r["stage1"]
        out.append(f"| {r['label']} | {n['source']} | {r.get('seed')} | {n['num_seqs']} | "
                   f"{n['val_loss']:.4f} | " + "".join(
                       f"{n[k]:.4f} | " if isinstance(n.get(k), float) else f"{n.get(k, '-')} | "
                       for k in keys))
    return "\n".join(out)


def format_nca(r):
    """The stage-1 NCA table of one run: accuracy by grid position."""
    n = r["nca"]
    out = [f"{r['label']}: NCA validation loss {n['val_loss']:.4f} on {n['num_seqs']} sequences "
           "of held-out rules (time-ordered frames); grid g is predicted with g grids in context",
           f"(accuracies are shares of {n['num_seqs']} sequences: a grid accuracy moves in steps "
           f"of 1/{n['num_seqs']}; 'copy' predicts each grid to be the previous one, 'lookup' "
           "what followed the longest matching context earlier in the sequence)",
           "", "| grid | token acc | grid acc | copy token acc | copy grid acc | "
           "lookup token acc | lookup grid acc |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, g in enumerate(n["grid"]):
        out.append(f"| {g} | {n['token_acc'][i]:.4f} | {n['grid_acc'][i]:.4f} | "
                   f"{n['copy_token_acc'][i]:.4f} | {n['copy_grid_acc'][i]:.4f} | "
                   + (f"{n['lookup_token_acc'][i]:.4f} | {n['lookup_grid_acc'][i]:.4f} |"
                      if "lookup_token_acc" in n else "- | - |"))
    return "\n".join(out)


def probe_domain(res):
    """The domain whose probes stand for a run: its own training domain if scored there."""
    return res["domain"] if res["domain"] in res["probes"] else next(iter(res["probes"]), None)


def probe_cells(r):
    d = probe_domain(r)
    if d is None:
        return ["-", "-"]
    p, icl = r["probes"][d], r["in_context"][d]
    gain = lambda x: plus_minus(x["gain"], x["gain_se"])
    return [f"{gain(p['text'])} · {gain(p['frequent'])}", plus_minus(icl["score"], icl["se"])]


def plus_minus(value, se):
    """A score and its standard error; a sample of one (e.g. --eval_tokens 1: one window) has
    none, and says so."""
    return f"{value:+.3f} ± {se:.3f}" if se is not None else f"{value:+.3f} (n = 1: no error bar)"
