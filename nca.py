"""
Neural cellular automata as a source of pre-pre-training data (docs/method.md).

Read top to bottom:
  1. NCAConfig      - every knob of the generator, with the official launcher's defaults
  2. counter RNG    - a tiny hash-based random stream, so a trajectory is a pure function of
                      (rule seed, trajectory seed) no matter how it is batched
  3. rules          - random conv nets, sampled exactly like Flax's default init, from a seed
  4. rollouts       - many rules at once: one table-lookup pass (RuleBatch) per step
  5. tokenizer      - 2x2 patches -> one token, plus start/end-of-grid delimiters
  6. gzip filter    - keep rules whose trajectories compress to a ratio inside a band
  7. batch stream   - (inputs, labels) for training, with the official masking
Pictures, statistics, the benchmark and a printout of the token layout are scripts/nca_tools.py.
"""
import hashlib
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import PPT_VOCAB
from util import (UserError, atomic_write, flag, full_precision, progress_bar,
                  split_over_threads, thread_pool)

ROOT = Path(__file__).resolve().parent
CACHE_DIR = ROOT / ".cache" / "rules"

# Complexity bands (gzip ratio, exclusive on both sides). The paper uses 50%+ for web text and
# math, 30-40% for code, and sweeps 20-30 / 30-40 / 40-50 / 50+ as an ablation. Ratios depend on
# the alphabet and grid (4 colours on 8x8 compress far better: no rule reaches 0.5), so the CPU
# setting (4 colours, 8x8 grid) has its own bands at the same complexity percentiles: cpu-web
# keeps the most complex 46% of rules as web does under the official 10-colour distribution,
# cpu-code the 26th-36th percentile slice as code does (docs/method.md, 'CPU-scale setting').
BANDS = {
    "web": (0.5, 1.0), "math": (0.5, 1.0), "code": (0.3, 0.4),
    "0.2-0.3": (0.2, 0.3), "0.3-0.4": (0.3, 0.4), "0.4-0.5": (0.4, 0.5), "0.5-1.0": (0.5, 1.0),
    "all": (0.0, 1.0), "cpu-web": (0.24, 1.0), "cpu-code": (0.058, 0.122),
}


# -----------------------------------------------------------------------------------------------
# 1. Configuration

ORDERS = ("time", "shuffled")       # NCAConfig.frame_order
INITS = ("softmax", "uniform")     # NCAConfig.init: the official code's initial grid, the paper's


@dataclass
class NCAConfig:
    """Every generator knob; the flag() fields are flags of train.py and scripts/nca_tools.py
    (defaults: the official launcher's). guard.check_nca refuses settings that cannot work."""
    help_title = "NCA generator (docs/method.md)"   # its --help group
    grid: int = flag(12, "grid side (periodic)")
    patch: int = flag(2, "patch side; one token per patch")
    num_colors: int = flag(10, "states per cell")
    temperature: float = flag(1e-4, "update temperature (official launcher 1e-4; 0 = argmax)")
    identity_bias: float = flag(0.0, "bias toward keeping the current state")
    init_rollout_steps: int = flag(10, "burn-in updates")
    dT: int = flag(1, "updates between recorded frames")
    init: str = flag("softmax", "initial grid: per-trajectory softmax(N(0,I)) colour mix "
                     "(official code) or uniform cells (the paper's text)", choices=INITS)
    filter_frames: int = flag(10, "frames scored by the gzip filter")
    frame_order: str = flag("time", "a sequence's frames in time order (the method) or shuffled "
                            "(a control: the same frames, no rule left to infer)", choices=ORDERS)
    seq_len: int = 1024            # model context; frames per sequence = ceil(seq_len / grid_len)
    max_vocab: int = PPT_VOCAB     # the stage-1 model's vocabulary; the tokenizer must fit in it

    @property
    def patches(self):             # tokens per grid without delimiters (36)
        return (self.grid // self.patch) ** 2

    @property
    def start_token(self):         # n^(p^2) = 10000
        return self.num_colors ** (self.patch ** 2)

    @property
    def end_token(self):
        return self.start_token + 1

    @property
    def vocab_size(self):          # symbols that occur: 10,002
        return self.start_token + 2

    @property
    def grid_len(self):            # [start, 36 patches, end] = 38
        return self.patches + 2

    @property
    def frames(self):              # grids per training sequence = ceil(1024 / 38) = 27
        return math.ceil(self.seq_len / self.grid_len)

    def settings(self):
        """The fields that change which rules pass the filter (the rule-bank cache key)."""
        d = asdict(self)
        for k in ("seq_len", "max_vocab", "frame_order"):
            d.pop(k)
        return d


@dataclass
class BandFlags:
    """The complexity band of the rule filter, as flags (band_from_args reads them)."""
    help_title = "NCA complexity band (docs/method.md, 'Complexity filter')"
    band: str | None = flag(None, "named complexity band; overrides the two thresholds below",
                            choices=sorted(BANDS))
    filter_rules_threshold: float = flag(0.5, "keep rules with gzip ratio strictly above this")
    filter_rules_upper_bound: float = flag(1.0, "... and strictly below this")


def band_from_args(args):
    """(lo, hi) of the band flags: a named --band, else the two thresholds."""
    return BANDS[args.band] if args.band else (args.filter_rules_threshold,
                                               args.filter_rules_upper_bound)


# -----------------------------------------------------------------------------------------------
# 2. Counter-based random numbers
#
# JAX's threefry streams cannot be reproduced in PyTorch, so only distributions
# can match. We use SplitMix64 on (stream key, counter): the noise of a trajectory is addressed by
# (trajectory seed, step, cell), so a rollout gives the same frames alone or in any batch, on any
# device, and only the few cells whose update is actually uncertain need random numbers at all.

_M64, _M63 = (1 << 64) - 1, (1 << 63) - 1


def _i64(x):                        # a python int as a wrapped signed 64-bit value
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


_GAMMA, _C1, _C2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _srl(x, k):                     # logical right shift of an int64 tensor
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x):
    """SplitMix64 finalizer on an int64 tensor (wrapping arithmetic)."""
    x = (x ^ _srl(x, 30)) * _C1
    x = (x ^ _srl(x, 27)) * _C2
    return x ^ _srl(x, 31)


def stream_key(seed, *tags):
    """A stream key from an integer seed (tensor or int) and small integer tags."""
    k = torch.as_tensor(seed, dtype=torch.int64)
    for t in tags:
        k = mix64(k * _GAMMA + t)
    return mix64(k)


def uniform(key, counter, dtype=torch.float64):
    """Uniform in the open interval (0, 1), 53 bits: the counter-th draw of stream `key`."""
    bits = _srl(mix64(key + counter * _GAMMA), 11)
    return (bits.to(dtype) + 0.5) * 2.0 ** -53


# Devices without float64 (Apple MPS): the draws above and the sampler's cumulative sums are
# float64, so NCA data for a model there is generated on the CPU, exactly, and moved over.
NO_FLOAT64 = ("mps",)


def generation_device(device):
    """Where NCA data for a model on `device` is generated: that device if it has float64,
    else the CPU."""
    return "cpu" if str(device).split(":")[0] in NO_FLOAT64 else device


def seed_sequence(seed, start, count):
    """Non-negative 63-bit integer seeds #start..#start+count-1 of a stream (rule candidates)."""
    c = torch.arange(start, start + count, dtype=torch.int64)
    return _srl(mix64(stream_key(seed, 7) + c * _GAMMA), 1)


# -----------------------------------------------------------------------------------------------
# 3. Rules (docs/method.md, 'NCA rule' and 'Rule initialization')
#
# A rule is the official NCANetwork: one-hot state -> wrap-pad all three axes (the channel axis
# too, because Flax's jnp.pad(pad_width=1) pads every axis: channels [9, 0..9, 0]) -> 3x3 conv to
# 4 -> 1x1 conv to 16 -> ReLU -> 1x1 conv to num_colors. Kernels are lecun_normal (a normal
# truncated to +-2 then scaled to std sqrt(1/fan_in)), biases zero, nothing is ever trained.
# nca_logits_reference is that network written out: the definition of a rule. RuleBatch computes
# the same logits much faster (tests compare the two); make_rules is where the rollouts get it.

_TRUNC_STD = 0.87962566103423978    # std of a standard normal truncated to [-2, 2]


def rule_shapes(num_colors):
    n = num_colors
    return {"w0": (4, n + 2, 3, 3), "b0": (4,), "w1": (16, 4), "b1": (16,),
            "w2": (n, 16), "b2": (n,)}


def sample_rules(seeds, num_colors=10, device="cpu"):
    """Rule parameters (PyTorch layout, one row per seed) from integer seeds.

    Every kernel entry is an inverse-CDF truncated normal drawn from the seed's own stream, so a
    rule is the same on every device and in every batch."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    key = stream_key(seeds, 1)[:, None]
    lo, hi = torch.special.ndtr(torch.tensor(-2.0, dtype=torch.float64)), \
        torch.special.ndtr(torch.tensor(2.0, dtype=torch.float64))
    params, counter = {}, 0
    for name, shape in rule_shapes(num_colors).items():
        size = math.prod(shape)
        if name.startswith("b"):
            params[name] = torch.zeros(len(seeds), *shape)
            continue
        u = uniform(key, torch.arange(counter, counter + size, dtype=torch.int64))
        z = torch.special.ndtri(lo + u * (hi - lo))              # N(0,1) truncated to [-2, 2]
        fan_in = size // shape[0]                                # in_channels * kh * kw
        params[name] = (z * (math.sqrt(1.0 / fan_in) / _TRUNC_STD)).float().view(-1, *shape)
        counter += size
    return {k: v.to(device) for k, v in params.items()}


def nca_logits_reference(params, state):
    """The official network written out literally, one rule at a time: the definition of a rule
    (slow; tests check RuleBatch against it). state: (R, H, W) integer grid -> (R, n, H, W)."""
    n = params["w2"].shape[1]
    out = []
    for r in range(state.shape[0]):
        x = F.one_hot(state[r].long(), n).permute(2, 0, 1).float()[None]
        x = torch.cat([x[:, -1:], x, x[:, :1]], dim=1)           # channel wrap: n -> n + 2
        x = F.pad(x, (1, 1, 1, 1), mode="circular")              # torus
        h = F.conv2d(x, params["w0"][r], params["b0"][r])
        h = F.conv2d(h, params["w1"][r][:, :, None, None], params["b1"][r]).relu()
        out.append(F.conv2d(h, params["w2"][r][:, :, None, None], params["b2"][r]))
    return torch.cat(out)


class RuleBatch:
    """Rules prepared for batched rollouts: trajectory r uses rule r.

    The input of the 3x3 conv is one-hot, and the conv and the first 1x1 conv are both linear
    (no activation between them), so the 16 pre-activations of a cell are a sum of
    table rows, one row per neighbour's colour. We pair horizontally adjacent neighbours
    (n^2-row tables) so a cell needs 6 row lookups: 3 pairs + 3 singles, summed by one
    embedding_bag for the whole batch. The channel wrap is folded in too: the two padded channels
    are copies of colours n-1 and 0, so their kernel slices are added to those colours' slices.
    Same function as nca_logits_reference (tests check it against that and the official logits);
    4x fewer operations than a grouped convolution over the one-hot grid. Built by make_rules."""

    @full_precision()
    def __init__(self, params):
        w0, w1 = params["w0"], params["w1"]
        R, n = w0.shape[0], w0.shape[2] - 2
        w = w0[:, :, 1:-1].clone()                                # (R, 4, n, 3, 3)
        w[:, :, -1] += w0[:, :, 0]
        w[:, :, 0] += w0[:, :, -1]
        a = torch.einsum("rho,rocyx->ryxch", w1, w)               # (R, 3, 3, n, 16) = W1 . w0
        pairs = a[:, :, 0, None, :, :] + a[:, :, 1, :, None, :]   # [r, dy, b, a]: left a, mid b
        pairs[:, 0] += (w1 @ params["b0"].unsqueeze(-1)).squeeze(-1)[:, None, None] \
            + params["b1"][:, None, None]                         # biases ride on one lookup
        singles = a[:, :, 2]                                      # right neighbour
        self.table = torch.cat([pairs.reshape(R, 3 * n * n, 16), singles.reshape(R, 3 * n, 16)],
                               1).reshape(-1, 16).contiguous()
        self.rows = 3 * n * n + 3 * n                             # table rows per rule
        self.w2, self.b2 = params["w2"].contiguous(), params["b2"].unsqueeze(-1).contiguous()
        self.has_b2 = bool(self.b2.any())                        # zero for every sampled rule
        self.R, self.n, self.device = R, n, w0.device

    @full_precision()
    def logits(self, state):
        """(R, H, W) integer grid -> (R, n, H, W) logits."""
        R, H, W = state.shape
        n = self.n
        if getattr(self, "_hw", None) != (H, W):                  # index tables, built once
            dev = state.device
            rows = torch.arange(-1, H + 1, device=dev) % H
            cols = torch.arange(-1, W + 1, device=dev) % W
            self._pad = (rows[:, None] * W + cols[None, :]).reshape(-1)   # circular padding
            n2 = n * n                                   # where each of the 6 tables starts
            group = torch.tensor([0, n2, 2 * n2, 3 * n2, 3 * n2 + n, 3 * n2 + 2 * n], device=dev)
            first = torch.arange(R, device=dev)[:, None] * self.rows
            self._offset = (first + group).int().view(R, 1, 1, 6)
            self._hw = (H, W)
        s = state.reshape(R, H * W)[:, self._pad].int().view(R, H + 2, W + 2)
        pair = s[:, :, :W] + n * s[:, :, 1:W + 1]                  # (left, middle) colour pair
        idx = torch.stack([pair[:, 0:H], pair[:, 1:H + 1], pair[:, 2:H + 2],
                           s[:, 0:H, 2:], s[:, 1:H + 1, 2:], s[:, 2:H + 2, 2:]], dim=-1)
        idx += self._offset                                        # rule and table offsets
        h = F.embedding_bag(idx.view(-1, 6), self.table, mode="sum").view(R, H * W, 16)
        z = torch.bmm(self.w2, h.relu_().transpose(1, 2))
        return (z + self.b2 if self.has_b2 else z).view(R, n, H, W)


def make_rules(seeds=None, num_colors=10, device="cpu", params=None):
    """The rules of integer `seeds`, ready for rollouts: `.logits(state)` maps (R, H, W) grids to
    (R, n, H, W) logits, grid r by rule r, and `.n` / `.device` say the colours and the device.
    params: their parameters if already sampled (rows of sample_rules(seeds), e.g. a bank kept on
    the device) or converted from the official code's (tests/test_nca.py); seeds are then not
    used."""
    return RuleBatch(sample_rules(seeds, num_colors, device) if params is None else params)


# -----------------------------------------------------------------------------------------------
# 4. Rollouts (docs/method.md, 'Rollout')

def init_state(traj_seeds, cfg, device="cpu"):
    """Initial grids, one per trajectory seed. Official code: per trajectory z ~ N(0, I_n), then
    every cell ~ Categorical(softmax(z)) (the rule's own init params are unused).
    Why: docs/differences.md, 'Initial grid'.
    --init uniform gives i.i.d. uniform cells, as the paper's text says."""
    key = stream_key(torch.as_tensor(traj_seeds, dtype=torch.int64).reshape(-1), 2)[:, None]
    key = key.to(device)
    n, cells = cfg.num_colors, cfg.grid * cfg.grid
    u = uniform(key, torch.arange(n, n + cells, device=device))              # (T, cells)
    if cfg.init == "uniform":
        state = (u * n).long().clamp_(max=n - 1)
    else:
        z = torch.special.ndtri(uniform(key, torch.arange(n, device=device)))  # (T, n) normals
        cdf = torch.softmax(z, dim=-1).cumsum(-1)
        cdf = cdf / cdf[:, -1:]
        state = torch.searchsorted(cdf, u.contiguous(), right=False).clamp_(max=n - 1)
    return state.view(-1, cfg.grid, cfg.grid).to(torch.uint8)


# Alternatives whose probability is below e^-20 (2e-9) of the argmax's are never drawn: at most
# 9 * 2e-9 of probability per cell and step is moved to the argmax.
NEGLIGIBLE = 20.0


def step(rules, state, key, t, cfg, dense=None):
    """One update of every grid: s' ~ Categorical(softmax((logits + b*onehot(s)) / T)).

    Gumbel-max (the official sampler) needs n uniforms per cell. We draw the same categorical by
    inversion with one uniform, and only where it matters: at T = 1e-4 all but ~0.3% of cells
    have a top logit more than 20*T above every other, so their next state is the argmax (up to
    the e^-20 above). Only the uncertain cells get a random number (we sample, we do not
    take the argmax: docs/differences.md, 'Temperature'). dense (default on CUDA): compute the
    draw of every cell and keep it where uncertain, the same numbers without nonzero(), which
    would stall the GPU each step."""
    z = rules.logits(state)                                                   # (R, n, H, W)
    colors = torch.arange(rules.n, device=z.device, dtype=state.dtype).view(1, -1, 1, 1)
    if cfg.identity_bias:
        z = z + cfg.identity_bias * (state.unsqueeze(1) == colors)
    if cfg.temperature == 0:
        return z.argmax(1).to(state.dtype)
    top = z.amax(1, keepdim=True)
    close = (z > top - NEGLIGIBLE * cfg.temperature).view(torch.uint8)      # the argmax and ties
    nxt = (close * colors.to(torch.uint8)).sum(1, dtype=state.dtype)        # argmax when alone
    uncertain = close.sum(1, dtype=torch.uint8) > 1
    if z.is_cuda if dense is None else dense:
        zc = z.permute(0, 2, 3, 1).double()                                   # (R, H, W, n)
        cdf = torch.exp((zc - zc.amax(-1, keepdim=True)) / cfg.temperature).cumsum(-1)
        cell = torch.arange(cfg.grid * cfg.grid, device=z.device).view(cfg.grid, cfg.grid)
        u = uniform(key.view(-1, 1, 1), t * (cfg.grid * cfg.grid) + cell)
        drawn = (cdf < (u * cdf[..., -1]).unsqueeze(-1)).sum(-1).to(state.dtype)
        return torch.where(uncertain, drawn, nxt)
    r, i, j = uncertain.nonzero(as_tuple=True)
    if len(r):
        zc = z.permute(0, 2, 3, 1)[r, i, j].double()                          # (m, n)
        cdf = torch.exp((zc - zc.amax(1, keepdim=True)) / cfg.temperature).cumsum(1)
        u = uniform(key[r], t * (cfg.grid * cfg.grid) + i * cfg.grid + j)
        nxt[r, i, j] = (cdf < (u * cdf[:, -1]).unsqueeze(1)).sum(1).to(state.dtype)
    return nxt


def rollout(rules, traj_seeds, cfg, num_frames, start=None, dense=None):
    """Frames s_start, s_start+dT, ... (num_frames of them) for each (rule, trajectory) pair.
    Frame t is the state before update t (as the official rollout records it). dense: see step."""
    start = cfg.init_rollout_steps if start is None else start
    device = rules.device
    seeds = torch.as_tensor(traj_seeds, dtype=torch.int64).reshape(-1)
    key = stream_key(seeds, 3).to(device)
    state = init_state(seeds, cfg, device)
    frames = []
    for t in range(start + (num_frames - 1) * cfg.dT + 1):
        if t >= start and (t - start) % cfg.dT == 0:
            frames.append(state)
            if len(frames) == num_frames:
                break
        state = step(rules, state, key, t, cfg, dense)
    return torch.stack(frames, dim=1)                                        # (R, F, H, W)


# -----------------------------------------------------------------------------------------------
# 5. Tokenizer (docs/method.md, 'Tokenizer'): a patch is a base-n number read row-major, least
#    significant first: token = c00 + n*c01 + n^2*c10 + n^3*c11; each grid is
#    [start, patches..., end].

def tokenize(frames, cfg, delimiters=True):
    """(..., F, H, W) grids -> (..., F * grid_len) int64 tokens (or F * patches without
    delimiters)."""
    *lead, Fr, H, W = frames.shape
    p, n = cfg.patch, cfg.num_colors
    x = frames.reshape(-1, Fr, H, W).long()
    tok = 0
    for a in range(p):                       # cell (a, b) of every patch is digit a*p + b
        for b in range(p):
            tok = tok + x[:, :, a::p, b::p] * n ** (a * p + b)
    tok = tok.reshape(x.shape[0], Fr, cfg.patches)
    if delimiters:
        start = torch.full_like(tok[..., :1], cfg.start_token)
        tok = torch.cat([start, tok, start + 1], dim=-1)
    return tok.reshape(*lead, -1)


# -----------------------------------------------------------------------------------------------
# 6. gzip complexity filter (docs/method.md, 'Complexity filter')

def gzip_ratio(tokens):
    """len(gzip level 9) / len(bytes) of one rule's patch tokens as little-endian int32 bytes.
    The int32 encoding is the official one (a JAX int32 array's tobytes()); any other encoding
    shifts every threshold (docs/differences.md, 'gzip bytes'). A gzip member is 10 header +
    deflate + 8 trailer bytes, the same length gzip.GzipFile writes."""
    data = np.ascontiguousarray(tokens, dtype="<i4").tobytes()
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (len(c.compress(data)) + len(c.flush()) + 18) / len(data)


def gzip_scores(frames, cfg):
    """Scores of (R, F, H, W) frames, one per rule, compressed in parallel threads (zlib releases
    the GIL)."""
    tok = tokenize(frames, cfg, delimiters=False).cpu().numpy()
    return np.fromiter(thread_pool().map(gzip_ratio, tok, chunksize=64), dtype=np.float64,
                       count=len(tok))


@full_precision()
def score_rules(seeds, cfg, device="cpu", batch=2048):
    """gzip scores of rules, each on one filter trajectory: frames s_10..s_19 from an initial grid
    of its own (not the one used for training; docs/differences.md, 'Filter trajectory')."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    out, device = [], generation_device(device)
    for i in range(0, len(seeds), batch):
        s = seeds[i:i + batch]
        frames = split_over_threads(device, lambda s: rollout(make_rules(s, cfg.num_colors, device),
                                                  stream_key(s, 4), cfg, cfg.filter_frames), s)
        out.append(gzip_scores(frames, cfg))
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class RuleBank:
    """Accepted rule seeds and their scores; a bank is reproducible from its settings."""
    seeds: np.ndarray
    scores: np.ndarray
    band: tuple
    candidates: int = 0


def bank_path(cfg, band, num_rules, seed):
    """The cache file of a rule bank, keyed by every setting that changes which rules pass."""
    key = json.dumps({"cfg": cfg.settings(), "band": list(band), "num_rules": num_rules,
                      "seed": seed, "version": 1}, sort_keys=True)
    return CACHE_DIR / f"bank-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def filter_rules(cfg, band, num_rules, seed=0, device="cpu", batch=2048, progress=True,
                 cache=True, max_candidates=None):
    """Draw candidate rules from seed stream `seed` until `num_rules` score strictly inside `band`.
    The result is cached under .cache/rules/ keyed by every setting, so a second run is instant."""
    lo, hi = band
    path = bank_path(cfg, band, num_rules, seed)
    if cache and path.exists():
        try:
            with np.load(path) as d:
                bank = RuleBank(d["seeds"], d["scores"], (lo, hi), int(d["candidates"]))
            if len(bank.seeds) == len(bank.scores) == num_rules and \
                    ((bank.scores > lo) & (bank.scores < hi)).all():
                return bank
            why = "it does not hold this bank"
        except Exception as e:  # truncated, not an .npz, missing arrays: rebuilt below
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"note: rule-bank cache {path} is unreadable ({why}): discarding it and "
              "filtering again", file=sys.stderr)
        path.unlink(missing_ok=True)
    max_candidates = max_candidates or max(100_000, 1000 * num_rules)
    seeds, scores, found, drawn = [], [], 0, 0
    bar = progress_bar(num_rules, f"filtering rules ({lo}, {hi})", unit="rule",
                       disable=not progress)
    while found < num_rules:
        if drawn >= max_candidates or (found == 0 and drawn >= 4 * batch):
            bar.close()
            raise UserError(f"only {found} of {drawn:,} random rules scored in the band "
                               f"({lo}, {hi}); widen the band (see python scripts/nca_tools.py "
                               "--stats)")
        cand = seed_sequence(seed, drawn, batch)
        sc = score_rules(cand, cfg, device, batch)
        ok = (sc > lo) & (sc < hi)
        seeds.append(cand.numpy()[ok][:num_rules - found])
        scores.append(sc[ok][:num_rules - found])
        found, drawn = found + len(seeds[-1]), drawn + batch
        bar.update(len(seeds[-1]))
    bar.close()
    bank = RuleBank(np.concatenate(seeds), np.concatenate(scores), (lo, hi), drawn)
    if cache:
        atomic_write(path, lambda tmp: np.savez(tmp, seeds=bank.seeds, scores=bank.scores,
                                                candidates=drawn))
    return bank


# -----------------------------------------------------------------------------------------------
# 7. Training sequences and the batch stream (docs/method.md, 'Training sequences and labels',
#    'Rule bank and batch stream')

@full_precision()
def make_sequences(rule_seeds, traj_seeds, cfg, device="cpu", mask_delimiters=False,
                   rule_params=None):
    """Token sequences and labels for (rule, trajectory) pairs: inputs (B, seq_len), labels
    (B, seq_len). As the official NCADataset: the labels of the first grid are ignored (37
    positions for the default sequence), delimiter tokens ARE trained unless mask_delimiters
    (docs/differences.md, 'Trained delimiters'). rule_params: the rules' parameters if already
    sampled (sample_rules(rule_seeds)), e.g. rows of a bank kept on the device. Generated on
    generation_device(device), returned on `device`."""
    rule_seeds = torch.as_tensor(rule_seeds, dtype=torch.int64).reshape(-1)
    gen = generation_device(device)

    def part(i, traj_seeds):
        rows = None if rule_params is None else \
            {k: v[i.to(v.device)].to(gen) for k, v in rule_params.items()}
        rules = make_rules(rule_seeds[i], cfg.num_colors, gen, params=rows)
        frames = rollout(rules, traj_seeds, cfg, cfg.frames)                  # (B, F, H, W)
        if cfg.frame_order == "shuffled":         # each sequence's own order, from its seed
            order = uniform(stream_key(traj_seeds, 11)[:, None], torch.arange(cfg.frames))
            rows = torch.arange(len(frames), device=gen)[:, None]
            frames = frames[rows, order.argsort(1).to(gen)]
        tok = tokenize(frames, cfg)
        return inputs_and_labels(tok, cfg, mask_delimiters)                # (B, F * grid_len)
    x, y = split_over_threads(gen, part, torch.arange(len(rule_seeds)),
                  torch.as_tensor(traj_seeds, dtype=torch.int64).reshape(-1))
    return x.to(device), y.to(device)


def inputs_and_labels(tok, cfg, mask_delimiters=False):
    L = cfg.seq_len
    target = tok.clone()
    target[:, :cfg.grid_len] = -100                                         # min_grid = 1
    if mask_delimiters:
        target[target >= cfg.start_token] = -100
    if target.shape[1] < L + 1:                                             # official pads
        target = F.pad(target, (0, L + 1 - target.shape[1]), value=-100)
        tok = F.pad(tok, (0, L - tok.shape[1]), value=0)
    return tok[:, :L].contiguous(), target[:, 1:L + 1].contiguous()


class NCABatches:
    """Endless (inputs, labels) batches on `device`, generated in large chunks.

    An epoch is one trajectory per rule of the bank, in a shuffled order. Two modes:
      fixed_rules  - the same bank every epoch, fresh initial grids and noise (what the official
                     code does: its re-sampling condition is a precedence bug; docs/differences.md,
                     'Rule re-sampling')
      fresh_rules  - a freshly filtered bank every epoch (what the official README describes)
    With several processes, rank r takes every world_size-th sequence of the epoch, so ranks
    see different data. The position (epoch, index) is the whole state: resuming is exact."""

    def __init__(self, cfg, bank, batch_size, device="cpu", seed=0, mode="fixed_rules",
                 mask_delimiters=False, rank=0, world_size=1, chunk_batches=None,
                 progress=False):
        assert mode in ("fixed_rules", "fresh_rules"), mode
        assert len(bank.seeds) >= batch_size * world_size, "fewer rules than one batch"
        self.cfg, self.bank, self.B, self.device, self.seed = cfg, bank, batch_size, device, seed
        self.mode, self.mask_delimiters = mode, mask_delimiters
        self.rank, self.world = rank, world_size
        self.chunk = chunk_batches or (64 if str(device).startswith("cuda") else 4)
        self.epoch, self.index, self.progress = 0, 0, progress
        self._rules, self._params, self._order, self._buffer = None, None, None, []

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, d):
        self.epoch, self.index, self._order, self._buffer = d["epoch"], d["index"], None, []

    def per_epoch(self):
        return len(self.bank.seeds) // self.world // self.B * self.B

    def _epoch_rules(self):
        if self.mode == "fixed_rules" or self.epoch == 0:
            return self.bank.seeds
        return filter_rules(self.cfg, self.bank.band, len(self.bank.seeds),
                            seed=int(stream_key(self.seed, 8, self.epoch)), device=self.device,
                            progress=self.progress, cache=False).seeds

    def _fill(self):
        if self._order is None:
            g = torch.Generator().manual_seed(int(stream_key(self.seed, 9, self.epoch)) & _M63)
            self._rules = torch.as_tensor(self._epoch_rules(), dtype=torch.int64)
            self._order = torch.randperm(len(self._rules), generator=g)[self.rank::self.world]
            if self._params is None or self.mode == "fresh_rules":   # once per bank, not per chunk
                self._params = sample_rules(self._rules, self.cfg.num_colors,
                                            generation_device(self.device))
        n = min(self.chunk * self.B, self.per_epoch() - self.index)
        pos = self._order[self.index:self.index + n]
        traj = stream_key(pos, 6, self.seed, self.epoch)      # one trajectory per (epoch, rule)
        rows = pos.to(generation_device(self.device))
        x, y = make_sequences(self._rules[pos], traj, self.cfg, self.device, self.mask_delimiters,
                              rule_params={k: v[rows] for k, v in self._params.items()})
        self._buffer = list(zip(x.split(self.B), y.split(self.B)))

    def __iter__(self):
        return self

    def __next__(self):
        if self.index >= self.per_epoch():
            self.epoch, self.index, self._order, self._buffer = self.epoch + 1, 0, None, []
        if not self._buffer:
            self._fill()
        self.index += self.B
        return self._buffer.pop(0)


def val_batches(cfg, rule_seeds, num_seqs, batch_size, device="cpu", seed=0,
                mask_delimiters=False):
    """A fixed validation set: num_seqs sequences of held-out rules (tiled when there are fewer
    rules than sequences, as the official val set), the same for the whole run."""
    rules = torch.as_tensor(rule_seeds, dtype=torch.int64)
    idx = torch.arange(num_seqs)
    x, y = make_sequences(rules[idx % len(rules)], stream_key(idx, 10, seed), cfg, device,
                          mask_delimiters)
    return list(zip(x.split(batch_size), y.split(batch_size)))


if __name__ == "__main__":
    sys.exit("nca.py is the NCA data engine that train.py imports: to look at its rules use "
             "python scripts/nca_tools.py --preview or --stats")
