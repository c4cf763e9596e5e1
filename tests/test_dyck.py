import numpy as np
import pytest
import torch

import dyck
from util import UserError, add_flags, from_flags

SMALL = dict(k=3, max_depth=4, seq_len=255)
CONFIGS = [
    dyck.DyckConfig(seq_len=255),                                    # the defaults, shorter
    dyck.DyckConfig(**SMALL),
    dyck.DyckConfig(**SMALL, min_depth=2, max_length=9),             # the cap binds often
    dyck.DyckConfig(k=2, max_depth=3, seq_len=127, p_open=0.9),      # mostly at max depth
    dyck.DyckConfig(k=1, max_depth=1, seq_len=31),                   # only "()" strings
]
IDS = ["default", "small", "capped", "deep", "trivial"]


def depth_profile(tokens, k):
    return np.cumsum(np.where(np.asarray(tokens) < k, 1, -1))


@pytest.fixture(params=[False, True], ids=["dyck", "shuffle"])
def shuffle(request):
    return request.param


# --- the strings ------------------------------------------------------------------------------

@pytest.mark.parametrize("base", CONFIGS, ids=IDS)
def test_fast_path_is_the_reference_concatenation(base, shuffle):
    """The vectorized walk equals the official one-string-at-a-time loop on the same draws;
    every string is balanced, the depth stays within max_depth, ids < 2k, and the concatenation
    is cut to exactly seq_len + 1 tokens."""
    cfg = dyck.DyckConfig(**{**base.__dict__, "shuffle": shuffle})
    coin, kind, pick = dyck.draws(cfg, 16, np.random.default_rng(3))
    fast = dyck.walk(cfg, coin, kind, pick)
    assert fast.shape == (16, cfg.seq_len + 1)
    for r in range(16):
        strings = dyck.reference_strings(cfg, coin[r], kind[r], None if pick is None else pick[r])
        for s in strings:
            assert dyck.is_balanced(s, cfg.k, shuffle=shuffle)
            assert dyck.is_balanced(s, cfg.k, shuffle=True)            # Dyck is shuffle-Dyck too
            assert depth_profile(s, cfg.k).max() <= cfg.max_depth
            assert len(s) <= cfg.string_cap + cfg.max_depth
        joined = sum(strings, [])
        assert len(joined) >= cfg.seq_len + 1 > len(joined) - len(strings[-1])
        assert joined[:cfg.seq_len + 1] == fast[r].tolist()
        # and the stream's sequence splits back into the same strings
        parts = dyck.split_strings(fast[r], cfg.k)
        assert [p.tolist() for p in parts[:-1]] == strings[:len(parts) - 1]
    assert fast.min() >= 0 and fast.max() < cfg.vocab_size
    assert depth_profile(fast[0], cfg.k).min() >= 0


def test_string_cap_and_min_depth():
    cfg = dyck.DyckConfig(**SMALL, min_depth=2, max_length=9)
    tok = dyck.generate(cfg, 32, np.random.default_rng(0)).numpy()
    for row in tok:
        for s in dyck.split_strings(row, cfg.k)[:-1]:
            assert (s[:2] < cfg.k).all()                                # two forced opens
            # the last open is token 8 of the cap 9; then only closes, at most max_depth
            assert (s[8:] >= cfg.k).all()
            assert len(s) <= 8 + cfg.max_depth


def test_mean_string_length_matches_the_walk():
    """Depth is a fair walk from 1 reflected at max_depth D: a string lasts 1 + (2D - 1)
    tokens on average (4 -> 8)."""
    cfg = dyck.DyckConfig(k=5, max_depth=4, seq_len=4095)
    tok = dyck.generate(cfg, 32, np.random.default_rng(1)).numpy()
    lengths = [len(s) for row in tok for s in dyck.split_strings(row, cfg.k)[:-1]]
    assert abs(np.mean(lengths) - 8) < 0.4
    assert len(np.unique(tok)) == cfg.vocab_size                        # every type occurs


def test_shuffle_strings_cross():
    cfg = dyck.DyckConfig(**SMALL, shuffle=True)
    tok = dyck.generate(cfg, 4, np.random.default_rng(0)).numpy()
    strings = [s for row in tok for s in dyck.split_strings(row, cfg.k)[:-1]]
    assert all(dyck.is_balanced(s, cfg.k, shuffle=True) for s in strings)
    assert any(not dyck.is_balanced(s, cfg.k) for s in strings)        # some are not nested


# --- the checker ------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [[0, 3], [0, 1, 4, 3], [0, 3, 1, 4], [], [2, 0, 3, 5]])
def test_is_balanced_accepts(s):
    assert dyck.is_balanced(s, 3)
    assert dyck.is_balanced(s, 3, shuffle=True)


@pytest.mark.parametrize("s", [[0], [3], [0, 4], [0, 3, 3], [3, 0], [0, 1, 3], [0, 6], [-1, 2]])
def test_is_balanced_rejects(s):
    assert not dyck.is_balanced(s, 3)
    assert not dyck.is_balanced(s, 3, shuffle=True)


def test_shuffle_accepts_crossing_closes():
    s = [0, 1, 3, 4]                                                    # ( [ ) ]
    assert not dyck.is_balanced(s, 3)
    assert dyck.is_balanced(s, 3, shuffle=True)


# --- the stream -------------------------------------------------------------------------------

def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_stream_shapes_and_shift():
    cfg = dyck.DyckConfig(**SMALL)
    x, y = next(dyck.DyckBatches(cfg, 5))
    assert x.shape == y.shape == (5, cfg.seq_len)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert (y >= 0).all()                                               # all supervised


def test_stream_resume_is_exact(shuffle):
    cfg = dyck.DyckConfig(**SMALL, shuffle=shuffle)
    a = dyck.DyckBatches(cfg, 6, chunk_batches=4)
    take(a, 7)                                                          # mid-chunk, mid-block
    state = a.state_dict()
    want = take(a, 25)
    b = dyck.DyckBatches(cfg, 6, chunk_batches=3)                       # another chunk size
    b.load_state_dict(state)
    for (x, y), (u, v) in zip(want, take(b, 25)):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_stream_is_independent_of_batching():
    cfg = dyck.DyckConfig(**SMALL)
    big = torch.cat([x for x, _ in take(dyck.DyckBatches(cfg, 96), 2)])
    small = torch.cat([x for x, _ in take(dyck.DyckBatches(cfg, 7, chunk_batches=1), 27)])
    assert torch.equal(big[:189], small[:189])


def test_seed_and_rank():
    cfg = dyck.DyckConfig(**SMALL)
    x0 = next(dyck.DyckBatches(cfg, 8, seed=1))[0]
    assert torch.equal(x0, next(dyck.DyckBatches(cfg, 8, seed=1))[0])
    assert not torch.equal(x0, next(dyck.DyckBatches(cfg, 8, seed=2))[0])
    r1 = next(dyck.DyckBatches(cfg, 8, seed=1, rank=1, world_size=2))[0]
    assert not torch.equal(x0, r1)
    val = dyck.val_batches(cfg, 8, 8, seed=1)[0][0]
    assert not torch.equal(x0, val)
    with pytest.raises(ValueError, match="rank"):
        dyck.DyckBatches(cfg, 8, rank=2, world_size=2)


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(k=0), "dyck_k must be at least 1"),
    (dict(max_depth=0), "dyck_max_depth must be at least 1"),
    (dict(k=40000), "more than the model vocabulary"),
    (dict(k=100, max_vocab=128), "needs 200 tokens"),
    (dict(min_depth=17), "dyck_min_depth"),
    (dict(p_open=1.5), "probability"),
    (dict(max_length=-1), "dyck_max_length"),
    (dict(seq_len=0), "seq_len"),
])
def test_bad_config(kw, msg):
    with pytest.raises(UserError, match=msg):
        dyck.check_dyck(dyck.DyckConfig(**kw))


def test_args_round_trip():
    import argparse
    ap = argparse.ArgumentParser()
    add_flags(ap, dyck.DyckConfig)
    cfg = from_flags(dyck.DyckConfig, ap.parse_args(["--dyck_k", "8", "--dyck_shuffle"]), seq_len=64)
    assert (cfg.k, cfg.shuffle, cfg.max_depth, cfg.seq_len, cfg.vocab_size) == (8, True, 16, 64, 16)
    assert cfg.string_cap == 65
    assert from_flags(dyck.DyckConfig, ap.parse_args([])) == dyck.DyckConfig()   # one set of defaults


def test_cli_sample_and_one_line_errors(capsys):
    dyck.main(["--sample", "--dyck_k", "4", "--seq_len", "64"])
    assert "4-Dyck, max depth 16" in capsys.readouterr().out
    for argv, expect in ((["--sample", "--dyck_k", "0"], "--dyck_k must be at least 1"),
                         (["--dyck_p_open", "x"], "argument --dyck_p_open: invalid float value")):
        with pytest.raises(SystemExit) as e:
            dyck.main(argv)
        out, err = capsys.readouterr()
        assert e.value.code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith("error: ") and expect in err, err
