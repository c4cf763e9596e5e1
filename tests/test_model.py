"""model.py: fast paths against plain references, the paper's parameter counts, initialization,
the transfer / ablation tensor bookkeeping, causality and a one-batch overfit. CPU, seconds."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import util.runs
from model import GPT, SIZES, GPTConfig, apply_rotary, config_for, rope_cache


def small_model(**overrides):
    torch.manual_seed(0)
    cfg = dict(block_size=32, vocab_size=97, n_layer=3, n_head=4, n_embd=64, attn_dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **overrides}))


def test_config_for_and_mlp_width():
    cfg = config_for("paper", vocab_size=50257)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (24, 32, 2048, 50257)
    assert set(SIZES) >= {"tiny", "mini", "small", "medium", "paper"}
    with pytest.raises(KeyError):             # train.py's --size choices refuse it first
        config_for("huge")
    m = small_model()
    assert m.blocks[0].mlp.gate.weight.shape == (4 * 64, 64)  # None -> 4·d, the paper's width
    assert small_model(mlp_hidden=96).blocks[0].mlp.down.weight.shape == (64, 96)


def test_rope_matches_complex_reference():
    hd, T, theta = 16, 11, 1e4
    cos, sin = rope_cache(hd, T, theta)
    x = torch.randn(2, 3, T, hd, dtype=torch.float64)
    got = apply_rotary(x, cos.double(), sin.double())
    # Reference: pair dim j with dim j + hd/2 as one complex number, rotate it by angle
    # pos · theta^(-2j/hd).
    j = torch.arange(hd // 2, dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2 * j / hd)
    rotation = torch.polar(torch.ones_like(angle), angle)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :]) * rotation
    want = torch.cat((z.real, z.imag), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_rope_scores_depend_only_on_relative_position():
    hd, T, shift = 32, 8, 5
    cos, sin = rope_cache(hd, T + shift)
    q, k = torch.randn(T, hd), torch.randn(T, hd)
    q0, k0 = apply_rotary(q, cos[:T], sin[:T]), apply_rotary(k, cos[:T], sin[:T])
    q1, k1 = apply_rotary(q, cos[shift:], sin[shift:]), apply_rotary(k, cos[shift:], sin[shift:])
    torch.testing.assert_close(q0 @ k0.T, q1 @ k1.T, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(q0, q1)  # the rotation itself does depend on absolute position


def test_sdpa_attention_matches_reference():
    m = small_model(attn_dropout=0.1).eval()  # eval: dropout must be off
    attn, nh = m.blocks[0].attn, m.config.n_head
    B, T, C = 2, 17, m.config.n_embd
    x = torch.randn(B, T, C)
    got = attn(x, m.cos[:T], m.sin[:T])

    def heads(t):
        return t.view(B, T, nh, C // nh).transpose(1, 2)

    q = apply_rotary(heads(x @ attn.q.weight.T), m.cos[:T], m.sin[:T])
    k = apply_rotary(heads(x @ attn.k.weight.T), m.cos[:T], m.sin[:T])
    v = heads(x @ attn.v.weight.T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // nh)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(got, y @ attn.o.weight.T, atol=1e-5, rtol=0)


def test_attention_dropout_only_in_train_mode():
    m = small_model(attn_dropout=0.5)
    idx = torch.randint(0, 97, (2, 16))
    m.train()
    assert not torch.equal(m(idx)[0], m(idx)[0])
    m.eval()
    assert torch.equal(m(idx)[0], m(idx)[0])


@pytest.mark.parametrize(
    "vocab,head_bias,total",
    [(64000, True, 1_872_921_088), (50257, False, 1_816_565_760), (64000, False, 1_872_857_088)],
)
def test_paper_parameter_counts(vocab, head_bias, total):
    with torch.device("meta"):  # 7 GB in float32; the meta device allocates nothing
        m = GPT(config_for("paper", vocab_size=vocab, head_bias=head_bias))
    assert m.num_params(non_embedding=True) == 1_610_713_088  # the paper's "1.6B"
    assert m.num_params(non_embedding=False) == total


def test_rope_tables_are_not_in_the_checkpoint_and_meta_build_works():
    m = small_model()
    assert not any(k in ("cos", "sin") for k in m.state_dict())
    with torch.device("meta"):
        lazy = GPT(m.config)
    lazy.to_empty(device="cpu")
    lazy.init_weights()
    lazy.load_state_dict(m.state_dict())
    idx = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(lazy.eval()(idx)[0], m.eval()(idx)[0])


def test_init_statistics():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=1000, n_layer=2, n_head=4, n_embd=256, head_bias=True)
    m = GPT(cfg)
    d = m.config.n_embd
    for name, p in m.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            assert abs(p.std().item() - 0.02) < 0.001, name
            assert abs(p.mean().item()) < 0.001, name
        elif p.dim() == 1 and "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
    assert abs(m.wte.weight.std().item() - 0.02) < 0.001
    # stage-1 head: PyTorch default Linear init, U(±1/sqrt(d)) for weight and bias
    bound = 1 / math.sqrt(d)
    assert m.lm_head.weight.abs().max() <= bound and m.lm_head.bias.abs().max() <= bound
    assert abs(m.lm_head.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


@pytest.mark.parametrize("embed_init", ["paper", "normal"])
def test_reset_vocab_replaces_only_embedding_and_head(embed_init):
    m = small_model(head_bias=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.reset_vocab(500, embed_init=embed_init)
    after = m.state_dict()
    vocab_keys = {"wte.weight", "lm_head.weight", "lm_head.bias"}
    assert set(before) - vocab_keys == set(after) - {"wte.weight", "lm_head.weight"}
    for k in set(before) - vocab_keys:
        assert torch.equal(before[k], after[k]), k  # bit-identical body
    assert m.lm_head.bias is None and not m.config.head_bias and m.config.vocab_size == 500
    assert m.wte.weight.shape == (500, 64) and m.lm_head.weight.shape == (500, 64)
    if embed_init == "paper":
        assert abs(m.wte.weight.std().item() - 1.0) < 0.03  # PyTorch default N(0, 1), as official
        assert m.lm_head.weight.abs().max() <= 1 / math.sqrt(64)
        assert m.lm_head.weight.std() > 0.8 / math.sqrt(3 * 64)
    else:
        assert abs(m.wte.weight.std().item() - 0.02) < 0.001
        assert abs(m.lm_head.weight.std().item() - 0.02) < 0.001
    idx = torch.randint(0, 500, (2, 8))
    assert m(idx)[0].shape == (2, 8, 500) and torch.isfinite(m(idx, idx)[1])


def expected_keys(kind, layers):
    names = {
        "attn": ["attn.q", "attn.k", "attn.v", "attn.o"],
        "mlp": ["mlp.gate", "mlp.up", "mlp.down"],
        "ln": ["norm1", "norm2"],
    }[kind]
    return {f"blocks.{i}.{n}.weight" for i in layers for n in names}


@pytest.mark.parametrize("kind", ["attn", "mlp", "ln"])
@pytest.mark.parametrize("layers", [None, [0, 2]])
def test_reinit_modules_changes_exactly_the_named_tensors(kind, layers):
    m = small_model()
    with torch.no_grad():  # norm weights start at 1: move everything so a reset to 1 is visible
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.reinit_modules(kind, layers)
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    want = expected_keys(kind, range(3) if layers is None else layers)
    assert changed == want
    for k in want:
        if kind == "ln":
            assert torch.equal(after[k], torch.ones_like(after[k]))
        else:
            assert abs(after[k].std().item() - 0.02) < 0.004, k
    assert not torch.equal(after["norm_f.weight"], torch.ones(64))  # final norm never reset


@pytest.mark.parametrize("kind", ["attn", "mlp", "ln"])
def test_freeze_modules_freezes_exactly_the_named_tensors(kind):
    m = small_model()
    m.freeze_modules(kind, [1])
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == expected_keys(kind, [1])
    opt = m.configure_optimizers(0.1, 1e-2, (0.9, 0.95))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in m.parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    idx = torch.randint(0, 97, (2, 16))
    m(idx, idx)[1].backward()
    opt.step()
    after = m.state_dict()
    assert {k for k in before if torch.equal(before[k], after[k])} == frozen


def test_bad_kind_or_layer_raises():
    """The guard refuses a bad module kind or layer range in one line; the model asserts."""
    import guard
    from util import UserError
    with pytest.raises(UserError, match="unknown module kind 'embed'"):
        guard.kinds("attn,embed")
    ablation = dict(stage="lang", freeze="", freeze_layers="", keep_embeddings=False)
    with pytest.raises(UserError, match="must look like a:b"):
        guard.check_stage2_flags(SimpleNamespace(reinit="attn", reinit_layers="0-3", **ablation))
    assert guard.kinds("attn,ln") == ["attn", "ln"]
    with pytest.raises(AssertionError):
        small_model().reinit_modules("embed")


def test_optimizer_groups():
    m = small_model(head_bias=True)
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.999))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    (group,) = m.configure_optimizers(1e-4, 5e-4, (0.9, 0.999), decay_all=True).param_groups
    assert group["weight_decay"] == 1e-4 and len(group["params"]) == len(list(m.parameters()))


def test_flops_per_token():
    m = small_model()
    n = m.num_params() + m.lm_head.weight.numel()  # body + head matmuls, not the wte lookup
    assert m.flops_per_token(32) == 6 * n + 12 * 3 * 64 * 32


def test_causal():
    m = small_model().eval()
    idx = torch.randint(0, 97, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 97
    a, b = m(idx)[0], m(changed)[0]
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_ignores_minus_100():
    m = small_model().eval()
    idx = torch.randint(0, 97, (2, 20))
    targets = torch.randint(0, 97, (2, 20))
    targets[0, :7] = -100  # e.g. the masked first NCA grid
    targets[1, 15:] = -100
    logits, _ = m(idx)
    assert logits.shape == (2, 20, 97)  # every position, not just the last
    keep = targets != -100
    manual = -F.log_softmax(logits.float(), -1)[keep].gather(1, targets[keep][:, None]).mean()
    m.loss_chunk = 7  # several chunks, one of them partly ignored
    no_logits, loss = m(idx, targets)
    assert no_logits is None
    torch.testing.assert_close(loss, manual)


@pytest.mark.parametrize("head_bias", [False, True])
def test_chunked_loss_gradients_equal_the_plain_loss(head_bias):
    m = small_model(head_bias=head_bias)
    idx = torch.randint(0, 97, (3, 24))
    targets = torch.randint(0, 97, (3, 24))
    targets[0, :5] = -100
    logits, _ = m(idx)
    want = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-100)
    want.backward()
    plain = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    m.loss_chunk = 10
    _, loss = m(idx, targets)
    loss.backward()
    torch.testing.assert_close(loss, want)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, plain[k], atol=1e-6, rtol=1e-4, msg=k)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the same loss to bf16 precision
        _, low = m(idx, targets)
    assert abs(low.item() - want.item()) < 0.02 * want.item()


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors alive at once among those created inside the block (CPU has no
    allocator statistics): every op's outputs are tracked by storage until freed."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                self.live.setdefault(ref.cdata, (ref, t.untyped_storage().nbytes()))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def test_training_forward_neither_returns_nor_keeps_full_logits():
    V, B, T = 8000, 16, 64
    m = small_model(vocab_size=V, block_size=T, n_layer=1, n_embd=32)
    m.loss_chunk = 32
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    full = B * T * V * 4  # the float32 logits of the micro-batch
    saved = []

    def keep(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), PeakMemory() as mem:
        logits, loss = m(idx, targets)
        loss.backward()
    # nothing logit-sized is kept: the largest saved tensor is the head's weight gradient
    assert logits is None and max(saved) <= V * m.config.n_embd < B * T * V // 4
    chunked = mem.peak
    with PeakMemory() as mem:  # the plain loss on full logits, for comparison
        F.cross_entropy(m(idx)[0].view(-1, V), targets.view(-1)).backward()
    assert chunked < full / 2 < mem.peak, (chunked, full, mem.peak)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    m = GPT(config_for("tiny", vocab_size=64, block_size=32, attn_dropout=0.0))
    opt = m.configure_optimizers(0.0, 3e-3, (0.9, 0.99))
    idx = torch.randint(0, 64, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    first = m(x, y)[1].item()
    for _ in range(50):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < 0.5, (first, loss.item())


def test_generate():
    m = small_model().eval()
    out = m.generate(torch.zeros(1, 3, dtype=torch.long), 40, top_k=5)
    assert out.shape == (1, 43) and out.max() < 97


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_memory_estimate_covers_what_training_allocates(dtype):
    """util.runs.memory_estimate (the micro-batch planner's model) against the bytes one training
    micro-step allocates on CPU: an upper bound, and not a loose one."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=128, vocab_size=1000, n_layer=2, n_head=4, n_embd=128,
                      attn_dropout=0.0))
    idx = torch.randint(0, 1000, (4, 128))
    with PeakMemory() as mem:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss = m(idx, idx)
        loss.backward()
    est = util.runs.memory_estimate(m, 4, 128, act_bytes=2 if dtype else 4)
    bound = est["gradients"] + est["activations"] + est["loss"] + est["autocast_copies"]
    assert 0.7 * bound < mem.peak <= bound, (mem.peak, bound)
    assert est["total"] > bound and util.runs.memory_estimate(m, 8, 128)["total"] > est["total"]
