"""The mechanism instruments (lab/probes.py, probes.lookup_predictions, the induction-readiness
test): each detects copying in a model built or trained to copy and none in one that cannot."""
import math
from types import SimpleNamespace

import pytest
import torch

import nca
from conftest import make_domain
from lab import induction_readiness, probes
from model import GPT, config_for


class Oracle(torch.nn.Module):
    """A perfect in-context copier: at position t it predicts what followed the longest earlier
    match of the context ending at t (uniform where x[t] has not occurred yet)."""

    def __init__(self, vocab):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.config.vocab_size)
        for b, row in enumerate(x.tolist()):
            for t, pred in enumerate(lookup_reference(row, None)):
                if pred is not None:
                    logits[b, t, pred] = 50.0
        return logits, None


class Unigram(torch.nn.Module):
    """The same distribution at every position, whatever the context."""

    def __init__(self, vocab):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)
        self.logits = torch.randn(vocab, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.logits.expand(*x.shape, -1).clone(), None


def lookup_reference(seq, grid_len):
    """probes.lookup_predictions written out for one sequence, by brute force (grid_len None: no
    fallback, None where nothing matches)."""
    out = []
    for i in range(len(seq)):
        best = 0
        pred = None if grid_len is None else seq[i + 1 - grid_len] if i + 1 >= grid_len else seq[0]
        for j in range(i):
            k = 0
            while k <= j and seq[i - k] == seq[j - k]:
                k += 1
            if k >= best and k > 0:             # longest; among equals the most recent
                best, pred = k, seq[j + 1]
        out.append(pred)
    return out


def test_lookup_predictions_match_the_definition():
    cfg = nca.NCAConfig(num_colors=2, grid=4, patch=2, seq_len=40)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (6, 40), generator=g)
    x[:, 20:30] = x[:, 5:15]                                    # a repeat to find
    got = probes.lookup_predictions(x, cfg)
    for row, pred in zip(x.tolist(), got.tolist()):
        assert pred == lookup_reference(row, cfg.grid_len)


def test_lookup_beats_copy_on_a_repeated_trajectory():
    """A trajectory that repeats is predicted by lookup from its earlier copy; the NCA table
    reports it beside the copy predictor."""
    cfg = nca.NCAConfig(num_colors=4, grid=4, patch=2, seq_len=96, temperature=0)
    x, y = nca.make_sequences(nca.seed_sequence(0, 0, 8), torch.arange(8), cfg)
    acc = probes.GridAccuracy(cfg)
    acc(x, y, None, y)                                          # a model that is always right
    res = acc.result()
    assert res["token_acc"] == 1.0 and 0 <= res["lookup_token_acc"] <= 1
    assert set(probes.GridAccuracy.keys) >= {"lookup_token_acc", "lookup_grid_acc"}


def test_attention_probs_reproduce_the_model():
    model = GPT(config_for("tiny", vocab_size=40, block_size=24, n_layer=2, n_head=2,
                           n_embd=32)).eval()
    idx = torch.randint(0, 40, (3, 24))
    maps, logits = probes.attention_probs(model, idx)
    assert torch.allclose(logits, model(idx)[0], atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 24, 24)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 2, 24), atol=1e-5)
    assert (maps[0].triu(1) == 0).all()                            # causal


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp("probe") / "web_bytes", n_train=3000, n_val=800,
                       vocab=200)


def test_copy_probes_see_copying_and_only_copying(folder):
    halves = probes.copy_halves(folder, 32, 200)
    assert {k: tuple(v.shape) for k, v in halves.items()} == {
        "text": (16, 16), "frequent": (16, 16), "uniform": (16, 16)}
    assert len(halves["frequent"].unique()) <= probes.SYMBOLS
    copier = probes.copy_probes(Oracle(200), halves, batch_size=5)
    flat = probes.copy_probes(Unigram(200), halves, batch_size=5)
    for name in ("text", "frequent", "uniform"):
        assert copier[name]["second"] < 0.1 * copier[name]["first"] and copier[name]["gain"] > 3
        assert flat[name]["gain"] == pytest.approx(0, abs=1e-6)       # no context, no gain
        assert copier[name]["gain_se"] is not None and copier[name]["n"] == 16
    assert copier["frequent"]["chance_first"] == pytest.approx(math.log(probes.SYMBOLS))


def test_in_context_score_is_negative_for_a_copier_and_zero_without_context():
    w = torch.randint(0, 30, (4, 16))
    windows = torch.cat([w, w, w, w], 1)[:, :64]                # late tokens repeat earlier ones
    batches = [(windows[:, :-1], windows[:, 1:])]
    from model import evaluate
    scores = {}
    for name, model in (("copier", Oracle(30)), ("unigram", Unigram(30))):
        icl = probes.InContext(63)
        evaluate(model, batches, each=icl)
        scores[name] = icl.summary()
    assert scores["copier"]["score"] < -1
    assert abs(scores["unigram"]["score"]) < 3 * scores["unigram"]["se"]   # noise about 0


def test_a_trained_copier_has_an_induction_head_and_a_fresh_body_none():
    """induction_readiness.readiness trains a tiny body on repeated sequences until it copies;
    its attention then shows an induction head far above chance; a fresh body's does not."""
    torch.manual_seed(0)
    fresh = GPT(config_for("tiny", vocab_size=2, block_size=24, n_layer=2, n_head=2, n_embd=32,
                           attn_dropout=0.0))
    fresh.reset_vocab(16)
    h = torch.randint(0, 16, (8, 12), generator=torch.Generator().manual_seed(5))
    before = probes.head_scores(fresh, h)
    trained = GPT(config_for("tiny", vocab_size=2, block_size=24, n_layer=2, n_head=2,
                             n_embd=32, attn_dropout=0.0))
    reached, curve = induction_readiness.readiness(trained, 0, symbols=16, length=12, steps=400,
                                                   lr=3e-3, batch=32, every=20)
    assert reached is not None and curve[-1][2] < 0.5 * math.log(16)
    after = probes.head_scores(trained, h)
    chance = after["chance_induction"]
    assert max(map(max, after["induction"])) > 8 * chance
    assert max(map(max, before["induction"])) < 3 * chance


def test_readiness_table_pairs_each_body_with_scratch_by_seed():
    """The readiness table gives body - scratch per seed (a censored seed counts as --steps), the
    mean with its 95% interval and the exact sign-flip p (5 seeds all one way: 2/32 = 0.0625)."""
    from argparse import Namespace
    from lab.stats import sign_flip_p
    args = Namespace(symbols=64, length=32, steps=300, batch=32, lr=1e-3)
    res = {"scratch": [{"steps": s} for s in (100, 120, None, 90, 110)],
           "nca": [{"steps": s} for s in (60, 70, 80, 50, 100)]}
    table = induction_readiness.format_table(res, args)
    row = next(line for line in table.splitlines() if line.startswith("| nca | -"))
    assert row == "| nca | -40, -50, -220, -40, -10 | -72.0 ± 104.4 | 0.062 |"
    assert sign_flip_p([1, 2, 3, 4, 5]) == 0.0625 and sign_flip_p([1, -1]) == 1.0
    assert sign_flip_p([]) is None


def test_stage1_summary_gives_margins_over_copy_and_lookup_with_their_interval():
    """lab.probes.format_nca_summary: % means over grid positions, margins in points, and with
    several runs the margins' mean ± 95% t half-width (hand-computed: margins over copy 6 and 8,
    mean 7, half-width 12.706 * sd(1.414) / sqrt 2 = 12.7)."""
    from lab.probes import format_nca_summary

    def run(label, seed, tok, copy, look):
        n = {"token_acc": tok, "copy_token_acc": copy, "lookup_token_acc": look,
             "grid_acc": [0.02, 0.04], "copy_grid_acc": [0.0, 0.02], "lookup_grid_acc": [0.1, 0.1]}
        return {"label": label, "seed": seed, "nca": n}
    text = format_nca_summary([run("a", 0, [0.10, 0.12], [0.04, 0.06], [0.20, 0.20]),
                               run("b", 1, [0.14, 0.16], [0.06, 0.08], [0.10, 0.10]),
                               {"label": "lang", "nca": None}])
    lines = text.splitlines()
    assert lines[4] == "| a | 0 | 11.0 | 5.0 | 20.0 | +6.0 | -9.0 | 3.0 | 1.0 | 10.0 |"
    assert lines[5] == "| b | 1 | 15.0 | 7.0 | 10.0 | +8.0 | +5.0 | 3.0 | 1.0 | 10.0 |"
    assert lines[6] == "| mean ± 95% CI (2 runs) | | | | | +7.0 ± 12.7 | -2.0 ± 88.9 | | | |"
    assert "lang" not in text


def test_a_body_is_paired_with_the_shuffled_body_of_its_rules_budget_and_seed():
    def run(label, order, seed, rules=7, tokens=100):
        return {"label": label, "seed": seed, "tokens": tokens,
                "nca": {"trained_order": order, "rules": rules}}
    t0, t1, s0, s1 = run("t0", "time", 0), run("t1", "time", 1), run("s0", "shuffled", 0), \
        run("s1", "shuffled", 1)
    rows = [t0, t1, s1, s0]
    assert probes.shuffled_body(t0, rows) is s0 and probes.shuffled_body(t1, rows) is s1
    assert probes.shuffled_body(s0, rows) is None              # a control has no control
    # one shuffled body of another seed: the control of a lone time-ordered body only
    lone = run("s5", "shuffled", 5)
    assert probes.shuffled_body(t0, [t0, lone]) is lone
    assert probes.shuffled_body(t0, [t0, t1, lone]) is None    # whose would it be? nobody's
    # other rules, another budget, or two candidates of other seeds: none
    assert probes.shuffled_body(t0, [t0, run("x", "shuffled", 0, rules=8)]) is None
    assert probes.shuffled_body(t0, [t0, run("x", "shuffled", 0, tokens=50)]) is None
    assert probes.shuffled_body(t0, [t0, lone, run("s6", "shuffled", 6)]) is None
