"""The transformer used in both stages: a Llama-style decoder as in the official code
(docs/method.md, 'Transformer').

Pre-norm RMSNorm, RoPE, SwiGLU MLP of width 4·d, multi-head attention through
F.scaled_dot_product_attention, no biases in the body, untied input embedding `wte` and output
head `lm_head`. Attention-probability dropout (0.1 in the paper) is the only dropout.

The transfer step (docs/method.md, 'Transfer') is `GPT.reset_vocab`; the re-initialization /
freezing ablations are `GPT.reinit_modules` / `GPT.freeze_modules`. Every distribution a weight
is drawn from is set in `init_weights`, `reset_vocab` or `reinit_modules`, which sit next to each
other below.

The training loss is computed a chunk of logits at a time (`chunked_cross_entropy`, beside
`GPT.forward`). `python model.py` prints the preset sizes and their parameter counts.
"""
import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from util import UserError, atomic_write

PPT_VOCAB = 64000  # the official stage-1 vocabulary (10,002 NCA symbols fit with room to spare)


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence; length of the RoPE tables
    vocab_size: int = PPT_VOCAB  # stage 1: 64,000, as the official code, for 10,002 NCA symbols
    n_layer: int = 24
    n_head: int = 32
    n_embd: int = 2048
    mlp_hidden: int | None = None  # SwiGLU width; None -> 4 * n_embd, the paper's
    attn_dropout: float = 0.1  # on attention probabilities, train mode only; no other dropout
    head_bias: bool = False  # True for the stage-1 NCA model, as the official code
    rope_theta: float = 1e4
    norm_eps: float = 1e-6


# Presets of (n_layer, n_head, n_embd). `paper` is the paper's "1.6B" model (non-embedding count).
SIZES: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128),  # ~1.05M body params, CPU smoke runs
    "mini": dict(n_layer=6, n_head=8, n_embd=256),  # ~6.3M
    "small": dict(n_layer=12, n_head=12, n_embd=768),  # ~113M, GPT-2-small shape
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),  # ~403M, GPT-2-medium shape
    "paper": dict(n_layer=24, n_head=32, n_embd=2048),  # 1,610,713,088
}


def config_for(size: str, **overrides) -> GPTConfig:
    """GPTConfig of a named preset, with any field overridden (e.g. vocab_size=50257)."""
    return GPTConfig(**{**SIZES[size], **overrides})


ARCH = ("n_layer", "n_head", "n_embd", "mlp_hidden")     # the fields that give a body's shape


def model_config(flags, vocab_size, head_bias):
    """The GPTConfig of train.py's model flags: --size, each shape flag given overriding it."""
    shape = {k: getattr(flags, k) for k in ARCH if getattr(flags, k) is not None}
    return config_for(flags.size, vocab_size=vocab_size, head_bias=head_bias,
                      block_size=flags.seq_len, attn_dropout=flags.attn_dropout,
                      rope_theta=flags.rope_theta, norm_eps=flags.norm_eps, **shape)


def rms_norm(x, weight, eps):
    # Statistics in float32 as HF LlamaRMSNorm, so fp16 activations cannot overflow in x**2.
    return weight * F.rms_norm(x.float(), (x.size(-1),), eps=eps).to(x.dtype)


def rope_cache(head_dim, seq_len, theta=1e4, device=None):
    """cos, sin tables of shape (seq_len, head_dim) for HF "default" RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # HF layout: frequency j drives dims j and j + hd/2
    return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin):
    """Rotate x (..., T, head_dim) by position, HF "rotate-half" convention: dims j and j + hd/2
    form one 2-D pair. (Not the interleaved (2j, 2j+1) pairing of the original RoFormer / Meta
    code: the two give different numbers for the same weights.)"""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.attn_dropout
        d = config.n_embd
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        # One matmul for q, k and v (kept as three Linears so ablations can address them).
        qkv = F.linear(x, torch.cat((self.q.weight, self.k.weight, self.v.weight)))
        q, k, v = qkv.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # is_causal instead of the official float mask, so flash kernels can be used
        # (docs/differences.md, 'Attention mask').
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.o(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.mlp_hidden or 4 * config.n_embd
        self.gate = nn.Linear(config.n_embd, hidden, bias=False)
        self.up = nn.Linear(config.n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x):
        gate_up = torch.cat((self.gate.weight, self.up.weight))            # one matmul for both
        g, u = F.linear(x, gate_up).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        x = x + self.mlp(self.norm2(x))
        return x


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of head(h) = h @ W.T + b against targets, chunk rows at a time. Each
    chunk's logit gradient (softmax - onehot) is turned into the gradients of h, W and b at once
    and the chunk's logits are freed: the backward matmuls move into the forward pass (same
    FLOPs), and no more than chunk x V logits are ever held."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk):
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h, grad_w = [], torch.zeros_like(weight, dtype=torch.float32)
        grad_b = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        for hc, yc in zip(h.split(chunk), targets.split(chunk)):
            logits = F.linear(hc, weight, bias).float()  # autocast applies in here too
            lse = logits.logsumexp(-1, keepdim=True)
            keep = (yc != -100).unsqueeze(1)
            yc = yc.clamp(min=0).unsqueeze(1)
            total = total + ((lse - logits.gather(1, yc)) * keep).sum()
            # d total / d logits = softmax - onehot, written over the logits
            g = logits.sub_(lse).exp_().scatter_add_(1, yc, -keep.float()).mul_(keep)
            grad_h.append(g @ weight)
            grad_w += g.t() @ hc
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(torch.cat(grad_h), grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (grad_h * grad_total, grad_w * grad_total,
                None if grad_b is None else grad_b * grad_total, None, None)


def chunked_cross_entropy(h, head, targets, chunk):
    """Mean cross-entropy of head(h) over targets != -100, chunk rows of logits at a time
    (F.cross_entropy semantics; the full (rows, V) logits are never materialized)."""
    h, targets = h.flatten(0, -2), targets.flatten()
    if torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad):
        total = _LinearCrossEntropy.apply(h, head.weight, head.bias, targets, chunk)
    else:
        total = sum(F.cross_entropy(head(hc).float(), yc, ignore_index=-100, reduction="sum")
                    for hc, yc in zip(h.split(chunk), targets.split(chunk)))
    return total / (targets != -100).sum()


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # On the meta device (a shape only: memory plan, parameter table) nothing is drawn:
        # drawing there imports torch._dynamo, seconds for a model that holds no values.
        meta = torch.get_default_device().type == "meta"
        self.wte = nn.Embedding(config.vocab_size, config.n_embd,
                                _weight=torch.empty(config.vocab_size, config.n_embd) if meta
                                else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head_bias)
        # Non-persistent: nothing positional is in a checkpoint. Set by init_weights.
        head_dim = config.n_embd // config.n_head
        self.register_buffer("cos", torch.empty(config.block_size, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(config.block_size, head_dim), persistent=False)
        self.init_weights()

    def _modules_of(self, kind, layers):
        """The modules an ablation addresses: kind in {attn, mlp, ln}, layers = block indices."""
        assert kind in ("attn", "mlp", "ln"), kind
        for i in range(self.config.n_layer) if layers is None else layers:
            b = self.blocks[i]
            if kind == "attn":
                yield from (b.attn.q, b.attn.k, b.attn.v, b.attn.o)
            elif kind == "mlp":
                yield from (b.mlp.gate, b.mlp.up, b.mlp.down)
            else:
                yield from (b.norm1, b.norm2)  # the final norm_f is never addressed (official)

    @torch.no_grad()
    def init_weights(self):
        """Initialization of a fresh model (stage 1 and the scratch body); docs/method.md,
        'Transformer'.

        body Linear (q, k, v, o, gate, up, down)  N(0, 0.02), no depth scaling   (HF post_init)
        RMSNorm weights (per block and final)     1
        wte                                       N(0, 0.02)                      (HF post_init)
        lm_head weight and bias                   PyTorch default U(±1/sqrt(d))  (official wrapper)
        The language stage then replaces wte and lm_head with `reset_vocab`.
        Also (re)computes the RoPE tables, so `model.to_empty(device=...)` followed by
        `model.init_weights()` gives a working model after building it on the meta device.
        """
        if self.wte.weight.is_meta:      # a shape only: nothing to draw (see __init__)
            return
        for block in self.blocks:
            block.attn.apply(self._init_body)
            block.mlp.apply(self._init_body)
            block.norm1.weight.fill_(1.0)
            block.norm2.weight.fill_(1.0)
        self.norm_f.weight.fill_(1.0)
        self.wte.weight.normal_(mean=0.0, std=0.02)
        self.lm_head.reset_parameters()
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        cos, sin = rope_cache(head_dim, cfg.block_size, cfg.rope_theta, self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    @staticmethod
    def _init_body(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @torch.no_grad()
    def reset_vocab(self, vocab_size, embed_init="paper", head_bias=False):
        """The transfer step (docs/method.md, 'Transfer'): new `wte` and `lm_head` for a new
        vocabulary, every other tensor untouched. Used for the scratch baseline too, so both arms
        match.

        embed_init="paper":  PyTorch defaults, as the official `reinit_embeddings`:
                             wte N(0, 1), lm_head U(±1/sqrt(d)), bias (if any) U(±1/sqrt(d)).
        embed_init="normal": wte and lm_head weight N(0, 0.02), bias 0 (the HF body init).
        """
        assert embed_init in ("paper", "normal"), embed_init
        d = self.config.n_embd
        w = self.wte.weight
        self.wte = nn.Embedding(vocab_size, d, device=w.device, dtype=w.dtype, _weight=torch.empty(
            vocab_size, d, device=w.device, dtype=w.dtype) if w.is_meta else None)
        self.lm_head = nn.Linear(d, vocab_size, bias=head_bias, device=w.device, dtype=w.dtype)
        if w.is_meta:                                       # a shape only: nothing to draw
            pass
        elif embed_init == "paper":
            self.wte.reset_parameters()
            self.lm_head.reset_parameters()
        else:
            self.wte.weight.normal_(mean=0.0, std=0.02)
            self.lm_head.weight.normal_(mean=0.0, std=0.02)
            if head_bias:
                self.lm_head.bias.zero_()
        self.config.vocab_size = vocab_size
        self.config.head_bias = head_bias

    @torch.no_grad()
    def reinit_modules(self, kind, layers=None, like=None):
        """Re-initialization ablation (official `--reinit_modules`): attn -> q, k, v, o
        N(0, 0.02); mlp -> gate, up, down N(0, 0.02); ln -> both per-block RMSNorm weights to 1
        (the official `ln` path crashes; docs/differences.md, 'Norm re-initialization').
        `layers`: block indices, None = all. `like`: a freshly initialized model of the same
        shape whose tensors are copied instead of drawing new ones (train.py passes the scratch
        arm's body)."""
        fresh = like._modules_of(kind, layers) if like is not None else None
        for module in self._modules_of(kind, layers):
            if fresh is not None:
                module.load_state_dict(next(fresh).state_dict())
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            else:
                self._init_body(module)

    def freeze_modules(self, kind, layers=None):
        """Freezing ablation (official `--freeze_modules`); kinds and layers as reinit_modules."""
        for module in self._modules_of(kind, layers):
            module.requires_grad_(False)

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out wte and lm_head (weight and bias), which is
        how the paper's "1.6B" is counted."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.wte.parameters())
            n -= sum(p.numel() for p in self.lm_head.parameters())
        return n

    def flops_per_token(self, seq_len):
        """Training FLOPs (forward + backward) per token, PaLM app. B / nanoGPT: 6N + 12·L·d·T.
        N counts every matmul weight: the body and lm_head, but not wte (a lookup costs no
        FLOPs). 12·L·d·T is the attention scores and weighted sum (QK^T and AV)."""
        cfg = self.config
        n = self.num_params(non_embedding=True) + sum(p.numel() for p in self.lm_head.parameters())
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def forward(self, idx, targets=None):
        """idx (B, T) token ids. Without targets: (logits (B, T, V) for every position, None), for
        evaluation and sampling. With targets (B, T): (None, mean cross-entropy over targets !=
        -100), computed by `chunked_cross_entropy`, so the (B, T, V) logits never exist at once."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} > block_size {self.config.block_size}"
        x = self.wte(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x), None
        return None, chunked_cross_entropy(x, self.lm_head, targets, self.loss_chunk)

    # Rows of logits the loss holds at once (train.py --loss_chunk): 4096 x 64,000 is 1 GB in
    # float32, where the logits of a whole micro-batch of 32 x 1024 would be 8 GB.
    loss_chunk = 4096

    def configure_optimizers(
        self, weight_decay, learning_rate, betas, eps=1e-8, device_type="cpu", decay_all=False
    ):
        """AdamW on the trainable parameters, two explicit groups: weight decay on >=2-D weights
        (matmuls and embeddings), none on norm weights and biases. decay_all=True decays every
        parameter, as the official language stage. Stage 1 is Adam without decay:
        weight_decay=0 makes AdamW exactly that."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if decay_all or p.dim() >= 2]
        no_decay = [p for p in params if not (decay_all or p.dim() >= 2)]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        # Fused AdamW: one kernel per step on CUDA, and on CPU too (PyTorch >= 2.4), where the
        # untied 50,257-row embedding and head make the optimizer a visible share of a tiny run.
        # Elsewhere (Apple MPS) the default implementation: no fused kernel is asked for.
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps,
                                 fused=device_type in ("cuda", "cpu") or None)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Append max_new_tokens sampled tokens to idx (B, T); context cropped to block_size."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_id), dim=1)
        return idx


# -----------------------------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and plain values (train.py writes model, model_args,
# optimizer, step, tokens, config, stage, vocab, nca, data, rng), written to a temporary name and
# renamed, read with weights_only=True

def save_checkpoint(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path, device="cpu", mmap=False):
    """A checkpoint dict, tensors only (weights_only); mmap=True reads nothing until it is used.
    A Hugging Face Llama folder, or a plain Llama-layout state dict, is read as one
    (scripts/hf.py)."""
    from scripts import hf      # the Hugging Face converter lives with its export command
    if Path(path).is_dir():
        return hf.read(path, device)
    try:
        ck = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated file, not a checkpoint, unsafe pickle: one line, no trace
        raise UserError(f"cannot read checkpoint {path}: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    return hf.from_state_dict(ck, path) if hf.is_state_dict(ck) else ck


def model_from_checkpoint(ck, device="cpu", **overrides):
    """The GPT of a checkpoint on `device` (in train mode); `overrides` change config fields that
    hold no weights (block_size: RoPE has no learned positions; attn_dropout)."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**ck["model_args"], **overrides}))
    model.to_empty(device=device)
    model.init_weights()  # for the RoPE tables, which no checkpoint holds; weights come next
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit its model_args: "
                        f"{str(e).strip().splitlines()[0]}") from None
    return model


# -----------------------------------------------------------------------------------------------
# Evaluation: one loop for validation in train.py, perplexity, the NCA tables and the probes

@torch.no_grad()
def evaluate(model, batches, ctx=contextlib.nullcontext(), device=None, each=None):
    """Token-mean cross-entropy of `model` on (inputs, labels) batches, over labels != -100.
    `each(x, y, nll, pred)`, if given, sees every batch: the per-position loss nll (B, T), 0 where
    ignored, and the argmax predictions pred (B, T). Returns {"loss", "tokens"}."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            x, y = (x, y) if device is None else (x.to(device), y.to(device))
            with ctx:
                logits, _ = model(x)
            rows = max(1, 2**28 // logits[0].numel())      # float32 copies of <= 1 GB at a time
            nll = torch.cat([F.cross_entropy(lc.float().transpose(1, 2), yc, ignore_index=-100,
                                             reduction="none")
                             for lc, yc in zip(logits.split(rows), y.split(rows))])
            total += nll.sum().item()
            count += int((y != -100).sum())
            if each is not None:
                each(x, y, nll, logits.argmax(-1))
    finally:
        model.train(was_training)
    return {"loss": total / max(count, 1), "tokens": count}


if __name__ == "__main__":
    # Parameter counts per preset, with the paper's stage-1 vocabulary (64,000, head bias) and the
    # OWT one (50,257, no bias); built on the meta device, so even `paper` allocates nothing.
    print(f"{'size':8} {'layers':>6} {'heads':>5} {'d':>5} {'non-embedding':>15} "
          f"{'total V=64000+bias':>19} {'total V=50257':>14} {'GFLOP/token@1024':>17}")
    for name, shape in SIZES.items():
        with torch.device("meta"):
            m = GPT(config_for(name, head_bias=True))
            total_nca = m.num_params(non_embedding=False)
            m.reset_vocab(50257)
        print(f"{name:8} {shape['n_layer']:6} {shape['n_head']:5} {shape['n_embd']:5} "
              f"{m.num_params():15,} {total_nca:19,} {m.num_params(False):14,} "
              f"{m.flops_per_token(1024) / 1e9:17.2f}")
