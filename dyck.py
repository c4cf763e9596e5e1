"""
k-Dyck bracket strings as a stage-1 (pre-pre-training) data source: the paper's Dyck baseline
(docs/method.md, 'Dyck'), generated on the fly instead of read from a text file.

The language. k bracket types; token i < k opens type i, token i + k closes it (vocab 2k). A
string starts with `min_depth` random opens, then repeats: if the depth is below `max_depth` and
a coin with P(open) = `p_open` says open, push a random type, else pop and emit the matching
close; the string ends when the depth returns to 0. A string that reaches `max_length` tokens
closes everything still open. Strings are concatenated until there are seq_len + 1 tokens;
inputs are the first seq_len, labels the next-token shift, every token supervised.
With `shuffle`, a close need not match the most recent open: it closes one bracket of a
uniformly random currently-open type (k independent counters, "shuffle-Dyck").

Defaults and why. The paper does not state the settings of its Dyck run; we take
the official generator's (`utils/dataset_utils.py`, adapted from Hu et al.):
  k = 64          the official num_symbols default; vocab 128, close = open + 64
  max_depth = 16  generate_dyck_txt_file default; min_depth = 1 likewise
  p_open = 0.5    the official coin is hard-coded to 0.5 (its p_open argument is ignored)
  max_length      the official file writer passes max_length = target_length = seq_len + 1,
                  so the cap almost never binds: the depth is a fair walk reflected at 16,
                  and a string lasts 1 + (2 * 16 - 1) = 32 tokens on average (median 2: half
                  the strings are one pair; a few run to hundreds of tokens)
The shuffle variant uses the same string structure; the official shuffle generator differs in
two details we do not copy: it draws types with randint(0, k - 1), so type k - 1 never occurs,
and it has no per-string length cap.

Read top to bottom:
  1. DyckConfig      - the knobs (checked by check_dyck)
  2. generation      - all random draws first (one numpy Generator per block of sequences),
                       then one vectorized walk over positions, all sequences at once
  3. reference       - the same strings one at a time, as the official loop; tests compare
  4. batch stream    - (inputs, labels) for training, resumable from one integer
  5. command line    - `python dyck.py --help`, --sample, --bench
"""
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from model import PPT_VOCAB
from util import UserError, add_flags, cli, flag, from_flags, script_parser

BLOCK = 64                 # sequences per random-number block: the unit of determinism
TRAIN, VAL = 0, 1          # stream tags, so the validation set never overlaps training data


# -----------------------------------------------------------------------------------------------
# 1. Configuration

@dataclass
class DyckConfig:
    """The knobs; the flag() fields are flags --dyck_<name> of train.py and dyck.py (defaults:
    the official generator's). check_dyck refuses settings that cannot work."""
    help_title = "Dyck generator (docs/method.md, 'Dyck')"   # its --help group
    k: int = flag(64, "bracket types k; vocab 2k (official num_symbols)", name="dyck_k")
    max_depth: int = flag(16, "maximum nesting depth", name="dyck_max_depth")
    min_depth: int = flag(1, "opens forced at the start of every string", name="dyck_min_depth")
    seq_len: int = 1024            # model context; sequences hold seq_len + 1 tokens
    shuffle: bool = flag(False, "shuffle-Dyck: a close matches any open bracket of its type, not "
                         "necessarily the most recent one", name="dyck_shuffle")
    p_open: float = flag(0.5, "probability of opening when below the maximum depth (official "
                         "0.5)", name="dyck_p_open")
    max_length: int = flag(0, "per-string length cap (0 = seq_len + 1, as the official writer)",
                           name="dyck_max_length")
    max_vocab: int = PPT_VOCAB     # the stage-1 model's vocabulary; 2k must fit in it

    @property
    def vocab_size(self):          # open 0..k-1, close k..2k-1
        return 2 * self.k

    @property
    def string_cap(self):
        return self.max_length or self.seq_len + 1


def check_dyck(cfg):
    """A DyckConfig (dyck.py) the generator can run."""
    if cfg.k < 1:
        raise UserError(f"--dyck_k must be at least 1 bracket type, got {cfg.k}")
    if cfg.vocab_size > cfg.max_vocab:
        raise UserError(f"--dyck_k {cfg.k} needs {cfg.vocab_size:,} tokens (2k), more than the "
                        f"model vocabulary {cfg.max_vocab:,}: use fewer bracket types or raise "
                        "--ppt_vocab_size")
    if cfg.max_depth < 1:
        raise UserError(f"--dyck_max_depth must be at least 1, got {cfg.max_depth}")
    if not 1 <= cfg.min_depth <= cfg.max_depth:
        raise UserError(f"--dyck_min_depth must be between 1 and --dyck_max_depth "
                        f"({cfg.max_depth}), got {cfg.min_depth}")
    if not 0.0 <= cfg.p_open <= 1.0:
        raise UserError(f"--dyck_p_open is a probability, got {cfg.p_open}")
    if cfg.seq_len < 1:
        raise UserError(f"--seq_len must be at least 1, got {cfg.seq_len}")
    if cfg.max_length < 0:
        raise UserError(f"--dyck_max_length must be >= 0 (0 = seq_len + 1), got {cfg.max_length}")
    return cfg


# -----------------------------------------------------------------------------------------------
# 2. Generation
#
# Every random number a sequence can use is drawn up front, indexed by token position: the coin
# and the open type for position t, and (shuffle) which open type a close at t picks. The walk
# then reads them, so the same draws give the same tokens whether the walk runs vectorized over
# many sequences (fast path) or one string at a time (reference, section 3). Draws a position
# does not need (a coin at max depth, a type for a close) are simply ignored.

def block_rng(seed, stream, rank, block):
    return np.random.default_rng([seed, stream, rank, block])


def draws(cfg, num_seqs, rng):
    """(coin, kind, pick), each (num_seqs, seq_len + 1): open wanted, type to open, close pick."""
    shape = (num_seqs, cfg.seq_len + 1)
    coin = rng.random(shape) < cfg.p_open
    kind = rng.integers(0, cfg.k, shape, dtype=np.int64)
    pick = rng.random(shape) if cfg.shuffle else None
    return coin, kind, pick


def walk(cfg, coin, kind, pick=None):
    """Tokens (N, seq_len + 1) from the draws: one step per position for all N sequences."""
    N, T = coin.shape
    D, L, k = cfg.max_depth, cfg.string_cap, cfg.k
    coin, kind = np.ascontiguousarray(coin.T), np.ascontiguousarray(kind.T)   # rows = positions
    pick = np.ascontiguousarray(pick.T) if cfg.shuffle else None
    out = np.empty((T, N), dtype=np.int64)
    rows = np.arange(N)
    depth = np.zeros(N, dtype=np.int64)
    length = np.zeros(N, dtype=np.int64)            # tokens so far in the current string
    forced = np.zeros(N, dtype=np.int64)            # forced opens left in the current string
    stack = np.zeros((N, D), dtype=np.int64)        # Dyck: open types by depth
    types = np.zeros((N, D), dtype=np.int64)        # shuffle: distinct open types ...
    count = np.zeros((N, D), dtype=np.int64)        # ... how many of each are open ...
    ntypes = np.zeros(N, dtype=np.int64)            # ... and how many distinct ones
    slots = np.arange(D)
    for t in range(T):
        new = depth == 0                            # the previous string ended: start one
        forced[new], length[new] = cfg.min_depth, 0
        # as the official loop: forced opens, then the coin below max depth, except that the
        # last token before the cap must close; past the cap only closes remain
        is_open = (forced > 0) | (coin[t] & (depth < D) & (length < L - 1))
        if not cfg.shuffle:
            slot = depth - ~is_open                 # open: depth; close: depth - 1
            tok = np.where(is_open, kind[t], stack[rows, slot])
            stack[rows, slot] = tok
            out[t] = tok + k * ~is_open
        else:
            live = slots < ntypes[:, None]
            hit = (types == kind[t][:, None]) & live
            j_open = np.where(hit.any(1), hit.argmax(1), ntypes)
            j_close = np.minimum((pick[t] * ntypes).astype(np.int64), ntypes - 1)
            j = np.where(is_open, j_open, j_close)
            tok = np.where(is_open, kind[t], types[rows, j])
            out[t] = tok + k * ~is_open
            fresh = is_open & (j == ntypes)         # a type not open yet takes a new slot
            types[rows, j] = tok
            count[rows, j] = np.where(fresh, 1, count[rows, j] + 2 * is_open - 1)
            ntypes += fresh
            gone = ~is_open & (count[rows, j] == 0)  # the last of a type closed: swap-remove
            last = np.maximum(ntypes - 1, 0)
            r, jj, ll = rows[gone], j[gone], last[gone]
            types[r, jj], count[r, jj] = types[r, ll], count[r, ll]
            ntypes -= gone
        depth += 2 * is_open - 1
        forced -= forced > 0
        length += 1
    return out.T.copy()


def generate(cfg, num_seqs, rng):
    """num_seqs sequences of seq_len + 1 tokens (a LongTensor) from numpy Generator `rng`."""
    return torch.from_numpy(walk(cfg, *draws(cfg, num_seqs, rng)))


def generate_blocks(cfg, seed, stream, rank, first, last):
    """Sequences of blocks first..last-1 of a stream: block b is a pure function of
    (seed, stream, rank, b), however many blocks are generated together."""
    parts = [draws(cfg, BLOCK, block_rng(seed, stream, rank, b)) for b in range(first, last)]
    cat = [np.concatenate(p) if p[0] is not None else None for p in zip(*parts)]
    return torch.from_numpy(walk(cfg, *cat))


def split_strings(tokens, k):
    """Cut a 1-D token sequence where the depth returns to 0: the balanced strings it is made
    of, plus a final unfinished prefix if the sequence ends inside a string."""
    tokens = np.asarray(tokens)
    depth = np.cumsum(np.where(tokens < k, 1, -1))
    ends = np.flatnonzero(depth == 0) + 1
    return [s for s in np.split(tokens, ends) if len(s)]


def is_balanced(tokens, k, shuffle=False):
    """Whether a 1-D token sequence is a balanced k-Dyck (or shuffle-Dyck) string."""
    stack, open_count = [], [0] * k
    for x in np.asarray(tokens).tolist():
        if not 0 <= x < 2 * k:
            return False
        if x < k:
            stack.append(x)
            open_count[x] += 1
        elif shuffle:
            if open_count[x - k] == 0:
                return False
            open_count[x - k] -= 1
            stack.pop()
        else:
            if not stack or stack.pop() != x - k:
                return False
    return not stack


# -----------------------------------------------------------------------------------------------
# 3. Reference: one string at a time, the official loop, reading the same draws. Positions past
# seq_len + 1 have no draws; there the string just closes what is open (never seen: truncated).

def reference_strings(cfg, coin, kind, pick=None):
    """The strings one sequence is made of (1-D draws), each complete; their concatenation,
    truncated to seq_len + 1, is that sequence."""
    T, L, k = len(coin), cfg.string_cap, cfg.k
    out, t = [], 0
    while t < T:
        s, depth = [], 0
        stack = []                    # Dyck: open types, innermost last
        types, count = [], {}         # shuffle: distinct open types (swap-removed), multiplicity
        while True:
            live = t < T
            if len(s) < cfg.min_depth and live:
                op = True
            else:
                op = live and depth < cfg.max_depth and bool(coin[t]) and len(s) < L - 1
            if op:
                x = int(kind[t])
                stack.append(x)
                if count.get(x, 0) == 0:
                    types.append(x)
                count[x] = count.get(x, 0) + 1
            elif cfg.shuffle:
                i = min(int((pick[t] if live else 0.0) * len(types)), len(types) - 1)
                x = types[i]
                count[x] -= 1
                if count[x] == 0:
                    types[i] = types[-1]
                    types.pop()
            else:
                x = stack.pop()
            s.append(x if op else x + k)
            depth += 1 if op else -1
            t += 1
            if depth == 0:
                break
        out.append(s)
    return out


# -----------------------------------------------------------------------------------------------
# 4. Batch stream

class DyckBatches:
    """Endless (inputs, labels) batches on `device`, generated chunk_batches batches at a time.

    Rank r reads its own stream: sequence i of it is a pure function of (seed, r, i // BLOCK,
    i % BLOCK), so ranks see different data (world_size only checks rank) and the number of
    sequences read is the whole state: resuming is exact, with any batch or chunk size."""

    def __init__(self, cfg, batch_size, device="cpu", seed=0, rank=0, world_size=1,
                 chunk_batches=None):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.cfg, self.B, self.device, self.seed, self.rank = cfg, batch_size, device, seed, rank
        self.chunk = chunk_batches or max(1, 1024 // batch_size)     # ~1024 sequences a call
        self.position = 0                                           # sequences read so far
        self._lo = self._hi = 0                                     # buffered sequences
        self._x = self._y = None

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, d):
        self.position, self._lo, self._hi = int(d["position"]), 0, 0

    def _fill(self):
        first = self.position // BLOCK
        last = math.ceil((self.position + self.chunk * self.B) / BLOCK)
        tok = generate_blocks(self.cfg, self.seed, TRAIN, self.rank, first, last)
        if str(self.device).startswith("cuda"):
            tok = tok.pin_memory().to(self.device, non_blocking=True)
        self._x, self._y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
        self._lo, self._hi = first * BLOCK, last * BLOCK

    def __iter__(self):
        return self

    def __next__(self):
        if not self._lo <= self.position <= self._hi - self.B:
            self._fill()
        i = self.position - self._lo
        self.position += self.B
        return self._x[i:i + self.B], self._y[i:i + self.B]


def val_batches(cfg, num_seqs, batch_size, device="cpu", seed=0):
    """A fixed validation set of num_seqs sequences, from a stream training never reads."""
    tok = generate_blocks(cfg, seed, VAL, 0, 0, math.ceil(num_seqs / BLOCK))[:num_seqs]
    tok = tok.to(device)
    x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
    return list(zip(x.split(batch_size), y.split(batch_size)))


# -----------------------------------------------------------------------------------------------
# 5. Command line

def decode(tokens, k):
    """Brackets as text: open type 3 is `<3`, its close `3>`."""
    return " ".join(f"<{x}" if x < k else f"{x - k}>" for x in np.asarray(tokens).tolist())


def sample(cfg, seed=0, num_tokens=96):
    tok = generate(cfg, 1, block_rng(seed, VAL, 0, 0))[0]
    strings = split_strings(tok.numpy(), cfg.k)
    done = [s for s in strings if is_balanced(s, cfg.k, cfg.shuffle)]
    kind = "shuffle-Dyck" if cfg.shuffle else "Dyck"
    print(f"{cfg.k}-{kind}, max depth {cfg.max_depth}: the first {num_tokens} of "
          f"{cfg.seq_len + 1} tokens")
    print(decode(tok[:num_tokens], cfg.k))
    depth = np.cumsum(np.where(tok.numpy() < cfg.k, 1, -1))
    print(f"{len(done)} complete strings, mean length {np.mean([len(s) for s in done]):.1f} "
          f"tokens, max depth reached {depth.max()}")


def bench(cfg, seqs=8192, batch_size=64):
    """Stream throughput on this CPU; prints `name: value unit` lines."""
    stream = DyckBatches(cfg, batch_size)
    next(stream)                                                   # warm-up
    t0, done = time.perf_counter(), 0
    while done < seqs:
        next(stream)
        done += batch_size
    dt = time.perf_counter() - t0
    print(f"generator: {cfg.k}-{'shuffle-' if cfg.shuffle else ''}Dyck, "
          f"torch threads {torch.get_num_threads()}")
    print(f"sequences/s: {done / dt:.0f} seq/s")
    print(f"tokens/s: {done * cfg.seq_len / dt / 1e6:.3f} Mtok/s")


@cli
def main(argv=None):
    ap = script_parser(__doc__)
    ap.add_argument("--seq_len", type=int, default=DyckConfig.seq_len,
                    help="tokens per training sequence")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sequence stream")
    ap.add_argument("--sample", action="store_true", help="print the start of one sequence")
    ap.add_argument("--bench", action="store_true", help="print generation throughput")
    ap.add_argument("--bench_seqs", type=int, default=8192, help="sequences for --bench")
    add_flags(ap, DyckConfig)
    args = ap.parse_args(argv)
    cfg = check_dyck(from_flags(DyckConfig, args, seq_len=args.seq_len))
    if not (args.sample or args.bench):
        ap.print_help()
        return
    if args.sample:
        sample(cfg, args.seed)
    if args.bench:
        bench(cfg, args.bench_seqs)


if __name__ == "__main__":
    main()
