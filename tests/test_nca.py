import json
import math
import re
import sys

import numpy as np

import pytest
import torch
from torch.overrides import TorchFunctionMode

import guard
import nca
import util
from conftest import FIXTURES, ROOT
from lab import probes

sys.path.insert(0, str(ROOT / "scripts"))
import nca_tools  # noqa: E402  (pictures, stats, benchmark)

CFG = nca.NCAConfig()
FIXTURE = FIXTURES / "official_nca.npz"


def rules_from_flax(d, index=None):
    """Official Flax rule parameters (kernels HWIO, as in the fixture) -> nca.py's layout."""
    sl = slice(None) if index is None else index
    t = lambda k: torch.from_numpy(np.ascontiguousarray(d[k][sl])).float()
    return {"w0": t("conv0_kernel").permute(0, 4, 3, 1, 2).contiguous(), "b0": t("conv0_bias"),
            "w1": t("conv1_kernel")[:, 0, 0].transpose(1, 2).contiguous(), "b1": t("conv1_bias"),
            "w2": t("conv2_kernel")[:, 0, 0].transpose(1, 2).contiguous(), "b2": t("conv2_bias")}


@pytest.fixture(scope="module")
def official():
    # Part of the repository: a missing fixture fails these tests instead of skipping them.
    assert FIXTURE.exists(), f"{FIXTURE} is missing (see tests/fixtures/README.md)"
    return dict(np.load(FIXTURE))


# --- conformance with the official JAX implementation ------------------------------------------

def test_logits_match_official(official):
    params = rules_from_flax(official)
    grids = torch.from_numpy(official["init_grid"]).long()
    want = torch.from_numpy(official["logits0"]).permute(0, 3, 1, 2)
    fast = nca.make_rules(params=params).logits(grids)
    ref = nca.nca_logits_reference(params, grids)
    assert (fast - want).abs().max() <= 1e-5
    assert (ref - want).abs().max() <= 1e-5


def test_argmax_trajectories_match_official(official):
    rules = nca.make_rules(params=rules_from_flax(official))
    state = torch.from_numpy(official["init_grid"]).to(torch.uint8)
    cfg = nca.NCAConfig(temperature=0.0)
    traj = [state]
    for t in range(official["argmax_traj"].shape[1] - 1):
        state = nca.step(rules, state, None, t, cfg)
        traj.append(state)
    got = torch.stack(traj, 1).numpy()
    assert np.array_equal(got, official["argmax_traj"])


def test_tokens_match_official(official):
    frames = torch.from_numpy(official["argmax_traj"])
    tok = nca.tokenize(frames, CFG)
    assert torch.equal(tok, torch.from_numpy(official["tokens"]))
    assert torch.equal(probes.detokenize(tok, CFG), frames.long())


def test_gzip_scores_match_official(official):
    frames = torch.from_numpy(official["argmax_traj"][:, 10:20])
    got = nca.gzip_scores(frames, CFG)
    assert np.array_equal(got, official["gzip_score"])


def test_rule_init_statistics_match_official(official):
    params = nca.sample_rules(nca.seed_sequence(3, 0, 2000))
    for row, name in zip(official["init_stats"], ["w0", "w1", "w2"]):
        w = params[name]
        mean, std, amax = row
        assert abs(w.mean().item() - mean) < 0.01 * std + 1e-3
        assert abs(w.std(unbiased=False).item() - std) < 0.01 * std
        assert w.abs().max().item() <= 2 * std / nca._TRUNC_STD * 1.0001
        assert w.abs().max().item() > 0.95 * amax
    assert all((params[b] == 0).all() for b in ("b0", "b1", "b2"))
    assert sum(math.prod(s) for s in nca.rule_shapes(10).values()) == 686


def test_band_distribution_matches_official(official):
    """Two-sample KS test of our stochastic scores against the official 4000 (1% critical value
    for 400 vs 4000 samples is about 0.085)."""
    ours = np.sort(nca.score_rules(nca.seed_sequence(123, 0, 400), CFG))
    theirs = official["band_stats"]
    grid = np.concatenate([ours, theirs])
    ks = np.max(np.abs(np.searchsorted(ours, grid, "right") / len(ours)
                       - np.searchsorted(theirs, grid, "right") / len(theirs)))
    assert ks < 0.085, ks


def test_printed_official_statistics_are_the_fixtures(official):
    b = official["band_stats"]
    assert round(float(np.median(b)), 4) == nca_tools.OFFICIAL_STATS["median"]
    assert (b > 0.5).mean() == nca_tools.OFFICIAL_STATS["above 0.5"]
    assert ((b > 0.3) & (b < 0.4)).mean() == nca_tools.OFFICIAL_STATS["0.3-0.4"]


def test_fraction_above_half_is_46_percent():
    scores = nca.score_rules(nca.seed_sequence(7, 0, 400), CFG)
    frac = (scores > 0.5).mean()
    # official: 45.8% of 4000 rules (band_stats); binomial std at n=400 is 0.025; 3 sigma
    assert abs(frac - 0.458) < 0.075, frac


# --- batching, determinism, sampling -------------------------------------------------------------

def test_batched_rollout_equals_per_rule_loop():
    rule_seeds = nca.seed_sequence(5, 0, 12)
    traj_seeds = torch.arange(100, 112)
    cfg = nca.NCAConfig(temperature=1e-3)          # more stochastic cells than the default
    batched = nca.rollout(nca.make_rules(rule_seeds), traj_seeds, cfg, 20)
    for r in range(len(rule_seeds)):
        params = nca.sample_rules(rule_seeds[r:r + 1])
        key = nca.stream_key(traj_seeds[r:r + 1], 3)
        state = nca.init_state(traj_seeds[r:r + 1], cfg)
        frames = []
        for t in range(cfg.init_rollout_steps + 20):
            if t >= cfg.init_rollout_steps:
                frames.append(state)
            state = nca.step(nca.make_rules(params=params), state, key, t, cfg)
        assert torch.equal(torch.cat(frames), batched[r]), f"rule {r}"


def test_fast_logits_equal_reference_network():
    """The rules the rollouts use (make_rules) compute the network as nca_logits_reference
    defines it."""
    seeds = nca.seed_sequence(9, 0, 8)
    grids = torch.randint(0, 10, (8, 12, 12))
    fast = nca.make_rules(seeds).logits(grids)
    assert (fast - nca.nca_logits_reference(nca.sample_rules(seeds), grids)).abs().max() < 1e-5


def test_rollout_is_deterministic_and_seed_dependent():
    rules = nca.make_rules([1, 2, 3])
    a = nca.rollout(rules, [10, 11, 12], CFG, 5)
    b = nca.rollout(rules, [10, 11, 12], CFG, 5)
    c = nca.rollout(rules, [13, 11, 12], CFG, 5)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0]) and torch.equal(a[1:], c[1:])


def test_sampler_draws_the_categorical_distribution():
    """One rule, many cells at a high temperature: next-state frequencies match softmax(z/T)."""
    cfg = nca.NCAConfig(temperature=0.5)
    params = nca.sample_rules([42])
    rules = nca.make_rules(params={k: v.expand(2000, *v.shape[1:]) for k, v in params.items()})
    state = torch.zeros(2000, 12, 12, dtype=torch.uint8)
    key = nca.stream_key(torch.arange(2000), 3)
    nxt = nca.step(rules, state, key, 0, cfg)
    z = nca.nca_logits_reference(params, state[:1].long())[0, :, 0, 0]  # all cells alike
    want = torch.softmax(z.double() / cfg.temperature, 0)
    freq = torch.bincount(nxt.flatten().long(), minlength=10).double() / nxt.numel()
    assert (freq - want).abs().max() < 0.01


def test_temperature_zero_is_argmax_and_default_samples():
    rules = nca.make_rules(nca.seed_sequence(2, 0, 64))
    state = nca.init_state(torch.arange(64), CFG)
    key = nca.stream_key(torch.arange(64), 3)
    argmax = rules.logits(state).argmax(1)
    sampled = nca.step(rules, state, key, 0, CFG)
    assert torch.equal(nca.step(rules, state, key, 0, nca.NCAConfig(temperature=0)).long(), argmax)
    # at T = 1e-4 a few cells in ~10^4 leave the argmax (official: 0.055% per cell and step)
    diff = (sampled.long() != argmax).float().mean().item()
    assert diff < 0.01


def test_initial_state_modes():
    soft = nca.init_state(torch.arange(500), CFG).long()
    uni = nca.init_state(torch.arange(500), nca.NCAConfig(init="uniform")).long()
    counts = lambda g: torch.stack([torch.bincount(x.flatten(), minlength=10) for x in g]).float()
    # uniform: every grid uses all colours about equally; softmax: skewed per-grid colour mix
    assert counts(uni).max(1).values.mean() < 30
    assert counts(soft).max(1).values.mean() > 45


# --- tokenizer and sequences ---------------------------------------------------------------------

def test_tokenizer_layout_and_round_trip():
    g = torch.zeros(1, 1, 12, 12, dtype=torch.long)
    g[0, 0, 0, 0], g[0, 0, 0, 1], g[0, 0, 1, 0], g[0, 0, 1, 1] = 1, 2, 3, 4
    tok = nca.tokenize(g, CFG)
    assert tok.shape == (1, 38) and tok[0, 0] == 10000 and tok[0, -1] == 10001
    assert tok[0, 1] == 1 + 10 * 2 + 100 * 3 + 1000 * 4
    for cfg in [CFG, nca.NCAConfig(grid=12, patch=3, num_colors=3),
                nca.NCAConfig(grid=8, patch=2, num_colors=4, seq_len=256)]:
        frames = torch.randint(0, cfg.num_colors, (3, 5, cfg.grid, cfg.grid))
        tok = nca.tokenize(frames, cfg)
        assert tok.max() <= cfg.end_token
        assert torch.equal(probes.detokenize(tok, cfg), frames)


def test_bad_tokenizer_settings_are_rejected_clearly():
    with pytest.raises(util.UserError, match="not divisible"):
        guard.check_nca(nca.NCAConfig(grid=12, patch=5), (0.5, 1.0))
    with pytest.raises(util.UserError, match="more than the model vocabulary"):
        guard.check_nca(nca.NCAConfig(num_colors=10, patch=3), (0.5, 1.0))
    with pytest.raises(util.UserError, match="empty complexity band"):
        guard.check_nca(nca.NCAConfig(), (0.5, 0.5))


def test_label_mask_positions():
    x, y = nca.make_sequences(nca.seed_sequence(0, 0, 2), torch.tensor([1, 2]), CFG)
    assert x.shape == y.shape == (2, 1024)
    ignored = (y == -100).sum(1)
    assert ignored.tolist() == [37, 37]
    assert (y[:, :37] == -100).all() and (y[:, 37] == CFG.start_token).all()
    assert ((y >= CFG.start_token).sum(1) == 51).all()          # delimiters are trained
    assert torch.equal(x[:, 1:], torch.where(y[:, :-1] == -100, x[:, 1:], y[:, :-1]))
    _, ym = nca.make_sequences(nca.seed_sequence(0, 0, 2), torch.tensor([1, 2]), CFG,
                               mask_delimiters=True)
    assert ((ym != -100).sum(1) == 987 - 51).all()


def test_batch_stream_modes_resume_and_ranks():
    cfg = nca.NCAConfig(seq_len=128)
    bank = nca.RuleBank(nca.seed_sequence(0, 0, 16).numpy(), np.zeros(16), (0.0, 1.0))
    s = nca.NCABatches(cfg, bank, batch_size=4, seed=1, chunk_batches=2)
    batches = [next(s) for _ in range(6)]                       # crosses an epoch boundary
    assert all(x.shape == (4, 128) and x.dtype == torch.long for x, _ in batches)
    assert s.epoch == 1
    # resume from a saved position reproduces the rest exactly
    s2 = nca.NCABatches(cfg, bank, batch_size=4, seed=1, chunk_batches=2)
    for _ in range(3):
        next(s2)
    state = s2.state_dict()
    s3 = nca.NCABatches(cfg, bank, batch_size=4, seed=1, chunk_batches=3)
    s3.load_state_dict(state)
    for want in batches[3:]:
        assert torch.equal(next(s3)[0], want[0])
    # epochs re-simulate the same rules with new trajectories
    assert not torch.equal(batches[0][0], batches[4][0])
    # two ranks see disjoint rules of the same epoch
    r0 = nca.NCABatches(cfg, bank, batch_size=4, seed=1, rank=0, world_size=2)
    r1 = nca.NCABatches(cfg, bank, batch_size=4, seed=1, rank=1, world_size=2)
    assert not torch.equal(next(r0)[0], next(r1)[0])


def test_fresh_rules_mode_draws_new_rules():
    cfg = nca.NCAConfig(seq_len=128)
    bank = nca.filter_rules(cfg, (0.5, 1.0), 8, seed=3, progress=False, cache=False)
    s = nca.NCABatches(cfg, bank, batch_size=8, seed=1, mode="fresh_rules")
    next(s)
    first = set(s._rules.tolist())
    next(s)
    assert s.epoch == 1 and not first & set(s._rules.tolist())


def test_filter_band_and_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(nca, "CACHE_DIR", tmp_path)
    bank = nca.filter_rules(CFG, (0.3, 0.4), 10, seed=4, progress=False)
    assert len(bank.seeds) == 10 and ((bank.scores > 0.3) & (bank.scores < 0.4)).all()
    again = nca.score_rules(bank.seeds, CFG)
    assert np.array_equal(again, bank.scores)                  # scores are reproducible
    assert len(list(tmp_path.glob("bank-*.npz"))) == 1
    cached = nca.filter_rules(CFG, (0.3, 0.4), 10, seed=4, progress=False)
    assert np.array_equal(cached.seeds, bank.seeds)
    with pytest.raises(nca.UserError, match="widen the band"):
        nca.filter_rules(CFG, (0.7, 0.8), 1, seed=0, progress=False, cache=False,
                         max_candidates=256, batch=256)


def test_grid_accuracy_of_perfect_and_copy_predictors():
    x, y = nca.make_sequences(nca.seed_sequence(0, 0, 3), torch.tensor([1, 2, 3]), CFG)
    tok, grid = probes.grid_accuracy(torch.where(y == -100, 0, y), y, CFG)
    assert tok.shape == (26,) and (tok == 3).all() and (grid == 3).all()
    ctok, cgrid = probes.copy_accuracy(x, y, CFG)
    assert (ctok <= 3).all() and (cgrid <= ctok).all()


def test_flags_default_to_the_config_and_round_trip():
    import argparse
    ap = argparse.ArgumentParser()
    util.add_flags(ap, nca.NCAConfig)
    util.add_flags(ap, nca.BandFlags)
    assert util.from_flags(nca.NCAConfig, ap.parse_args([])) == nca.NCAConfig()  # one default
    assert nca.band_from_args(ap.parse_args([])) == (0.5, 1.0)
    assert nca.band_from_args(ap.parse_args(["--band", "code"])) == nca.BANDS["code"]
    args = ap.parse_args(["--grid", "8", "--num_colors", "4", "--temperature", "0", "--init",
                          "uniform", "--dT", "2"])
    cfg = util.from_flags(nca.NCAConfig, args, seq_len=64, max_vocab=300)
    assert (cfg.grid, cfg.num_colors, cfg.temperature, cfg.init, cfg.dT) == (8, 4, 0.0, "uniform", 2)
    assert (cfg.seq_len, cfg.max_vocab, cfg.vocab_size) == (64, 300, 258)


def test_cli_stats_and_preview(tmp_path, capsys):
    out = tmp_path / "s.json"
    nca_tools.main(["--stats", "--num_rules", "64", "--out", str(out)])
    text = capsys.readouterr().out
    assert "band" in text and "p50" in text
    assert len(json.loads(out.read_text())) == 64
    pytest.importorskip("PIL")
    nca_tools.main(["--preview", str(tmp_path / "p.png"), "--preview_rules", "1",
              "--preview_frames", "2"])
    assert (tmp_path / "p.png").stat().st_size > 100


def test_preview_without_pillow_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "PIL", None)                   # as if not installed
    with pytest.raises(SystemExit) as e:
        nca_tools.main(["--preview", str(tmp_path / "p.png"), "--stats", "--num_rules", "8"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and not (tmp_path / "p.png").exists()
    assert err == "error: --preview needs Pillow for PNG/GIF output: pip install pillow\n"


def test_progress_is_plain_lines_off_a_terminal(capsys, monkeypatch):
    import io
    monkeypatch.setattr(nca.sys, "stderr", io.StringIO())          # not a terminal
    monkeypatch.setattr(util.PlainProgress, "interval", 0.0)
    bar = util.progress_bar(3, "work", unit="step")
    assert isinstance(bar, util.PlainProgress)
    bar.update(1)
    bar.write("step 1 loss 2.0")
    bar.update(2)
    bar.close()
    bar.close()
    out = capsys.readouterr().out
    lines = [re.sub(r"\d+s\b", "Ns", line) for line in out.splitlines()]
    # every line before the end carries the time so far and an ETA
    assert lines == ["work: 1/3 step, Ns, ETA Ns", "step 1 loss 2.0", "work: 3/3 step, Ns",
                     "work: 3/3 step, Ns"]
    assert "\r" not in out + nca.sys.stderr.getvalue()
    assert util.duration(45) == "45s" and util.duration(192) == "3m12s"
    assert util.duration(7500) == "2h05m"


@pytest.mark.parametrize("knobs", [dict(num_colors=4), dict(grid=8, seq_len=256), dict(patch=1),
                                   dict(temperature=1e-2), dict(identity_bias=1.0),
                                   dict(init="uniform"), dict(dT=2, init_rollout_steps=3)])
def test_every_generator_knob_gives_valid_sequences(knobs):
    cfg = nca.NCAConfig(**{"seq_len": 512, **knobs})
    x, y = nca.make_sequences(nca.seed_sequence(1, 0, 4), torch.arange(4), cfg)
    assert x.shape == (4, cfg.seq_len) and x.max() <= cfg.end_token
    frames = probes.detokenize(x[:, :cfg.grid_len * (cfg.seq_len // cfg.grid_len)], cfg)
    assert frames.max() < cfg.num_colors
    assert ((y == -100).sum(1) == cfg.grid_len - 1).all()


def test_shuffled_frame_order_keeps_the_frames_and_loses_the_time_order():
    """The frame-shuffle control: each sequence holds the very frames of its time-ordered twin,
    in an order of its own (fixed by its trajectory seed), with the same label mask."""
    cfg = nca.NCAConfig(seq_len=38 * 8)
    shuf = nca.NCAConfig(seq_len=38 * 8, frame_order="shuffled")
    seeds, traj = nca.seed_sequence(1, 0, 6), torch.arange(6)
    (x, y), (xs, ys) = (nca.make_sequences(seeds, traj, c) for c in (cfg, shuf))
    a, b = probes.detokenize(x, cfg).flatten(2), probes.detokenize(xs, cfg).flatten(2)
    for i in range(6):                        # the same frames: every frame has a twin
        assert all((a[i] == f).all(1).any() for f in b[i]) and sorted(map(tuple, a[i].tolist())) \
            == sorted(map(tuple, b[i].tolist()))
    assert not torch.equal(x, xs) and torch.equal(ys == -100, y == -100)
    orders = [tuple(int((a[i] == f).all(1).nonzero()[0]) for f in b[i]) for i in range(6)]
    assert len(set(orders)) > 1                               # orders differ between sequences
    assert torch.equal(nca.make_sequences(seeds, traj, shuf)[0], xs)        # and are fixed
    assert cfg.settings() == shuf.settings()            # the rule filter (and its cache) is shared


def test_identity_bias_and_temperature_change_the_dynamics():
    seeds, traj = nca.seed_sequence(2, 0, 32), torch.arange(32)
    rules = nca.make_rules(seeds)
    still = lambda cfg: (lambda f: (f[:, 1:] == f[:, :-1]).float().mean().item())(
        nca.rollout(rules, traj, cfg, 6))
    assert still(nca.NCAConfig(identity_bias=10.0)) > still(nca.NCAConfig()) + 0.3
    # hot updates are noisy: two rollouts of the same rule and start diverge
    hot = nca.NCAConfig(temperature=1.0)
    a = nca.rollout(rules, traj, hot, 3)
    key = nca.stream_key(traj + 1000, 3)
    state = nca.init_state(traj, hot)
    for t in range(hot.init_rollout_steps):
        state = nca.step(rules, state, key, t, hot)
    assert not torch.equal(a[:, 0], state)


# --- device independence -------------------------------------------------------------------------

def test_dense_sampler_equals_sparse_sampler():
    """The CUDA path (every cell drawn, kept where uncertain; no nonzero()) gives the same grids
    as the CPU path (only the uncertain cells drawn)."""
    cfg = nca.NCAConfig(temperature=1e-3)          # more uncertain cells than the default
    seeds, traj = nca.seed_sequence(6, 0, 64), torch.arange(64)
    rules, key = nca.make_rules(seeds), nca.stream_key(traj, 3)
    sparse = dense = nca.init_state(traj, cfg)
    for t in range(30):
        sparse = nca.step(rules, sparse, key, t, cfg, dense=False)
        dense = nca.step(rules, dense, key, t, cfg, dense=True)
        assert torch.equal(sparse, dense), t


def test_batch_stream_equals_sequences_from_seeds():
    """The stream samples its bank's rules once (kept on the device) instead of per chunk; the
    sequences are those of make_sequences from the seeds."""
    cfg = nca.NCAConfig(seq_len=128)
    bank = nca.RuleBank(nca.seed_sequence(2, 0, 24).numpy(), np.zeros(24), (0.0, 1.0))
    s = nca.NCABatches(cfg, bank, batch_size=4, seed=3, chunk_batches=2)
    got = torch.cat([next(s)[0] for _ in range(6)])
    g = torch.Generator().manual_seed(int(nca.stream_key(3, 9, 0)) & nca._M63)
    pos = torch.randperm(24, generator=g)
    want, _ = nca.make_sequences(torch.as_tensor(bank.seeds)[pos], nca.stream_key(pos, 6, 3, 0),
                                 cfg)
    assert torch.equal(got, want)


def _round_to_tf32(x):
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32):
        return x
    return ((x.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)   # 10-bit mantissa


def _tf32_allowed():               # what cuBLAS reads: the per-backend setting from PyTorch 2.9
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return torch.backends.cuda.matmul.allow_tf32


class EmulatedTF32(TorchFunctionMode):
    """What CUDA does with TF32 allowed, on CPU: matmul inputs rounded to TF32's 10-bit mantissa
    whenever the global setting allows TF32 at the time of the call."""
    MATMULS = {torch.bmm, torch.matmul, torch.mm, torch.einsum, torch.Tensor.__matmul__,
               torch.nn.functional.linear, torch.baddbmm, torch.addmm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.MATMULS and _tf32_allowed():
            args = [_round_to_tf32(a) for a in args]
        return func(*args, **(kwargs or {}))


def test_generation_ignores_global_matmul_precision():
    """Trajectories, tokens and gzip scores do not change when the caller lowers the float32
    matmul precision (train.py turns TF32 on), and the caller's settings survive generation.
    The emulation works on this thread only, so the batches stay below util.split_over_threads' 128."""
    seeds, traj = nca.seed_sequence(8, 0, 96), torch.arange(96)
    rules = nca.sample_rules(seeds)
    want_frames = nca.rollout(nca.make_rules(params=rules), traj, CFG, 4)
    want_x, _ = nca.make_sequences(seeds, traj, CFG)
    want_scores = nca.score_rules(seeds, CFG)
    a, b = torch.randn(8, 64), torch.randn(64, 8)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.set_float32_matmul_precision("medium")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with EmulatedTF32():
            assert not torch.equal(a @ b, torch.mm(a.double(), b.double()).float())  # it bites
            frames = nca.rollout(nca.make_rules(params=rules), traj, CFG, 4)
            x, _ = nca.make_sequences(seeds, traj, CFG)
            scores = nca.score_rules(seeds, CFG)
        assert _tf32_allowed() and torch.backends.cuda.matmul.allow_tf32   # restored afterwards
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert torch.equal(frames, want_frames) and torch.equal(x, want_x)
    assert np.array_equal(scores, want_scores)
