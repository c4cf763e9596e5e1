"""eval.py: perplexity against a hand computation, the window layout, the speedup rule (on
synthetic curves and on the paper's own curves, docs/method.md 'Convergence speedup'), the
table / eval.json / eval.md of fake runs on fake prepared domains, refusals, the stage-1 NCA path,
and an end-to-end run with train.py. CPU, seconds."""

import itertools
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
import guard
import nca
from conftest import make_domain
from data.common import ROOT, eval_windows, language_refusal
from lab import plots, probes, stats
from model import GPT, GPTConfig, config_for
from util import UserError

DOMAINS = ("web", "math", "code")


# ---------------------------------------------------------------- windows and perplexity

def windows_of(tokens, block_size, eval_tokens):
    return torch.from_numpy(eval_windows(tokens, block_size, eval_tokens))


def test_eval_windows_layout():
    tokens = np.arange(1000, dtype=np.uint16)
    w = windows_of(tokens, 64, 256)
    assert w.shape == (4, 65) and w.dtype == torch.int64
    for i in range(4):  # stride block_size, block_size + 1 tokens, from the start of the split
        assert torch.equal(w[i], torch.arange(i * 64, i * 64 + 65))
    assert windows_of(tokens, 64, 300).shape[0] == 4  # whole windows only
    assert windows_of(tokens, 64, 10).shape[0] == 1  # at least one
    assert windows_of(tokens, 64, 10**9).shape[0] == 999 // 64  # capped by the split
    assert windows_of(tokens, 64, 0).shape[0] == 15  # 0: the whole split
    w = windows_of(np.arange(129, dtype=np.uint16), 64, 0)  # the last token is only a target
    assert w.shape == (2, 65) and w[-1, -1] == 128 and w[1, 0] == w[0, -1]
    with pytest.raises(UserError, match="shorter than one window"):
        windows_of(np.arange(64, dtype=np.uint16), 64, 0)


def test_perplexity_matches_manual_cross_entropy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=32)).eval()
    windows = windows_of(torch.randint(0, 97, (120,)).numpy(), 16, 0)  # 7 windows
    losses = []
    for w in windows:  # one window at a time, per-token cross-entropy
        logits, _ = model(w[None, :-1])
        losses.append(F.cross_entropy(logits[0], w[1:], reduction="none"))
    want = torch.cat(losses).double().mean().item()
    got = ev.perplexity(model, windows, batch_size=3)  # 3 + 3 + 1: an uneven last batch
    assert got["tokens"] == 7 * 16
    assert got["loss"] == pytest.approx(want, rel=1e-6)
    assert got["ppl"] == pytest.approx(math.exp(want), rel=1e-6)


class Uniform(torch.nn.Module):
    """Logits 0 for every class: cross-entropy log(V) at every position, so ppl = V exactly."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab), None


def test_perplexity_of_uniform_logits_is_vocab_size():
    windows = windows_of(np.arange(300) % 50, 32, 0)
    assert ev.perplexity(Uniform(50), windows, batch_size=4)["ppl"] == pytest.approx(50, rel=1e-6)


# ---------------------------------------------------------------- speedup

def test_speedup_rule_on_synthetic_curves():
    base = [(100, 4.0), (200, 3.0), (300, 2.0), (400, 1.0)]
    assert ev.speedup(base, base) == 1.0
    assert ev.speedup(base, [(100, 3.0), (200, 1.0), (300, 0.5), (400, 0.4)]) == 2.0
    # crossing between (200, 2.0) and (300, 0.5): 200 + 100 * (2 - 1) / (2 - 0.5)
    assert ev.tokens_to_reach([(100, 3.0), (200, 2.0), (300, 0.5)], 1.0) == pytest.approx(200 + 100 / 1.5)
    assert ev.speedup(base, [(100, 3.0), (200, 2.0), (300, 0.5)]) == pytest.approx(400 / (200 + 100 / 1.5))
    assert ev.speedup(base, [(100, 3.0), (400, 1.2)]) is None  # never reaches 1.0
    assert ev.speedup(base, [(100, 0.9), (200, 0.8)]) == 4.0  # below target at its first point
    assert ev.speedup(base, []) is None and ev.speedup([], base) is None
    metrics = [{"kind": "train", "tokens": 50, "loss": 9.0}, {"kind": "val", "tokens": 200, "val_loss": 3.0},
               {"kind": "val", "tokens": 100, "val_loss": 4.0}, {"kind": "val", "tokens": 200, "val_loss": 2.5}]
    assert ev.val_curve(metrics) == [(100, 4.0), (200, 2.5)]  # sorted, a repeated point keeps the last


def blog_curve(steps, losses):
    return [(s * 512 * 1024, loss) for s, loss in zip(steps, losses)]


OWT_STEPS = [500, 1000] + list(range(2000, 17001, 1000)) + [17200]
OWT = {  # validation losses of the curves on the paper's project page
    "scratch": [4.615, 3.822, 3.388, 3.172, 3.054, 2.981, 2.926, 2.882, 2.844, 2.811, 2.782, 2.756,
                2.734, 2.716, 2.702, 2.692, 2.687, 2.685, 2.685],
    "c4": [4.322, 3.755, 3.377, 3.167, 3.057, 2.985, 2.932, 2.887, 2.848, 2.815, 2.786, 2.760, 2.737,
           2.718, 2.704, 2.694, 2.688, 2.687, 2.687],
    "dyck": [4.559, 3.765, 3.348, 3.142, 3.032, 2.959, 2.905, 2.860, 2.822, 2.790, 2.760, 2.735,
             2.713, 2.697, 2.680, 2.671, 2.666, 2.665, 2.664],
    "nca": [4.514, 3.700, 3.311, 3.114, 2.995, 2.923, 2.867, 2.823, 2.785, 2.752, 2.723, 2.697,
            2.675, 2.656, 2.642, 2.633, 2.627, 2.626, 2.626],
}
MATH_STEPS = list(range(500, 8001, 500))
MATH = {
    "scratch": [3.316, 2.817, 2.625, 2.509, 2.418, 2.351, 2.298, 2.254, 2.217, 2.183, 2.155, 2.130,
                2.112, 2.100, 2.094, 2.093],
    "nca": [3.178, 2.733, 2.557, 2.452, 2.368, 2.300, 2.247, 2.203, 2.165, 2.132, 2.102, 2.078,
            2.059, 2.047, 2.042, 2.041],
}
CODE_STEPS = list(range(3000, 24001, 3000))
CODE = {
    "scratch": [0.914, 0.817, 0.766, 0.729, 0.702, 0.680, 0.669, 0.653],
    "c4": [0.914, 0.803, 0.748, 0.708, 0.675, 0.653, 0.637, 0.634],
    "dyck": [0.888, 0.783, 0.728, 0.689, 0.658, 0.633, 0.620, 0.616],
    "nca": [0.876, 0.775, 0.720, 0.681, 0.651, 0.628, 0.614, 0.610],
}


@pytest.mark.parametrize("steps, curves, arm, want", [
    (OWT_STEPS, OWT, "nca", 1.49), (OWT_STEPS, OWT, "dyck", 1.25), (OWT_STEPS, OWT, "c4", None),
    (MATH_STEPS, MATH, "nca", 1.41), (CODE_STEPS, CODE, "nca", 1.62), (CODE_STEPS, CODE, "dyck", 1.54),
    (CODE_STEPS, CODE, "c4", 1.33),
])
def test_speedup_reproduces_the_blog_numbers(steps, curves, arm, want):
    got = ev.speedup(blog_curve(steps, curves["scratch"]), blog_curve(steps, curves[arm]))
    assert (got is None) if want is None else round(got, 2) == want


# ---------------------------------------------------------------- fake runs and domains

def write_run(folder, arm, curve, stage="lang", domain="web", init_from=None, ppt_source=None,
              model_cfg=None, vocab=("bytes", 257), nca_info=None, seed=0, eval_tokens=256):
    """A run folder in train.py's format: config.json, metrics.jsonl, ckpt.pt. Byte-level by
    default, so that no test needs the GPT-2 tokenizer file."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    cfg = model_cfg or config_for("tiny", vocab_size=vocab[1], block_size=64)
    model = GPT(cfg)
    config = {"stage": stage, "arm": arm, "ppt_source": ppt_source, "domain": domain,
              "data_dir": None, "seed": seed, "init_from": init_from}
    if stage == "lang":
        config["eval_tokens"] = eval_tokens
    (folder / "config.json").write_text(json.dumps(config))
    lines = []
    for tokens, loss in curve:
        lines.append({"kind": "train", "step": tokens // 512, "tokens": tokens, "loss": loss + 0.1,
                      "lr": 1e-3, "grad_norm": 1.0, "ms": 1.0, "tok_s": 1.0, "mfu": 0.0})
        lines.append({"kind": "val", "step": tokens // 512, "tokens": tokens, "val_loss": loss})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    torch.save({"model": model.state_dict(), "optimizer": {}, "model_args": asdict(cfg),
                "step": curve[-1][0] // 512 if curve else 0, "tokens": curve[-1][0] if curve else 0,
                "config": config, "stage": stage, "vocab": {"kind": vocab[0], "size": vocab[1]},
                "nca": nca_info, "rng": {}, "data": {}}, folder / "ckpt.pt")
    return folder



def test_a_runs_metrics_are_read_as_resume_reads_them(tmp_path):
    """ev.load_run and --resume read metrics.jsonl with one reader: the half line a kill or a
    live run leaves at the end is dropped, a broken line in the middle is refused by number."""
    run = write_run(tmp_path / "r", "scratch", [(512, 3.0), (1024, 2.5)])
    path = run / "metrics.jsonl"
    good = path.read_text()
    path.write_text(good + '{"kind": "val", "st')
    assert [r["step"] for r in ev.load_run(run).metrics] == [1, 1, 2, 2]
    lines = good.splitlines()
    path.write_text("\n".join([lines[0], '{"kind": "val"}', *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not a metrics record"):
        ev.load_run(run)
    with pytest.raises(UserError, match="line 2 .* then resume again"):
        guard.check_metrics(path)


NCA_CFG = nca.NCAConfig(seq_len=128)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for i, d in enumerate(DOMAINS):
        make_domain(root / "data" / d, seed=i, vocab=257, tokenizer="bytes")
    runs = root / "runs"
    base = [(1024, 6.0), (2048, 5.0), (3072, 4.0), (4096, 3.0)]
    write_run(runs / "scratch_web", "scratch", base, seed=0)
    write_run(runs / "nca_web", "nca", [(1024, 5.0), (2048, 3.0), (3072, 2.5), (4096, 2.4)],
              init_from=str(runs / "nca_web" / "ppt" / "ckpt.pt"), ppt_source="nca", seed=1)
    write_run(runs / "nca_web" / "ppt", "nca", [(1024, 9.0), (2048, 8.0)], stage="ppt", domain=None,
              ppt_source="nca", vocab=("nca", NCA_CFG.vocab_size), seed=2,
              model_cfg=config_for("tiny", vocab_size=NCA_CFG.vocab_size, block_size=128, head_bias=True),
              nca_info={"config": asdict(NCA_CFG), "val_seeds": [11, 12, 13], "mask_delimiters": False})
    write_run(runs / "dyck_ppt", "dyck", [(1024, 4.0)], stage="ppt", domain=None, ppt_source="dyck",
              vocab=("dyck", 128), model_cfg=config_for("tiny", vocab_size=128, block_size=64), seed=3)
    return root


def rows_of(md):
    return [line for line in md.splitlines()[2:] if line.startswith("| ")]


def run_main(fake, *args, out="ev"):
    return ev.main([*args, "--data_root", str(fake / "data"), "--eval_tokens", "256", "--device", "cpu",
                    "--out", str(fake / out), "--overwrite"])


def test_table_json_and_markdown(fake, capsys):
    runs = fake / "runs"
    report = run_main(fake, str(runs / "scratch_web"), str(runs / "nca_web" / "ckpt.pt"))
    printed = capsys.readouterr().out
    md = (fake / "ev" / "eval.md").read_text()
    header = md.splitlines()[0]
    # no --domains: the runs' own training folder first, then the others of its tokenizer
    assert [c.strip() for c in header.strip("|").split("|")][-5:] == [
        "web: loss · bpb · ppl", "code: loss · bpb · ppl", "math: loss · bpb · ppl",
        "copy gain (nats): text · frequent", "in-context score (nats)"]   # every number: its unit
    assert " nats · " in rows_of(md)[0] and " bpb · ppl " in rows_of(md)[0]
    rows = [line for line in md.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == 4 and "scratch (scratch_web)" in rows[0] and "nca (nca_web)" in rows[1]
    assert rows[2].startswith("| unigram") and rows[3].startswith("| bigram")
    assert "Lower is better" in md and " ± " in rows[0].split("|")[-3]
    assert md.strip() in printed  # the printed table is eval.md

    saved = json.loads((fake / "ev" / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["block_size"] == 64 and set(saved["domains"]) == set(DOMAINS)
    assert all(d["windows"] == 4 and d["tokens"] == 256 for d in saved["domains"].values())
    scratch, other = saved["runs"]
    assert scratch["is_baseline"] and scratch["speedup"] == 1.0 and scratch["change_pct"]["web"] == 0
    assert other["baseline"] == scratch["label"] and not other["is_baseline"]
    for d in DOMAINS:
        assert math.isclose(other["ppl"][d], math.exp(other["loss"][d]))
        pct = 100 * (other["ppl"][d] / scratch["ppl"][d] - 1)
        assert other["change_pct"][d] == pytest.approx(pct)
        assert f"ppl {other['ppl'][d]:.2f} ({pct:+.1f}%" in rows[1]
    # the nca run reaches the baseline's final 3.0 at 2048 tokens: 4096 / 2048 = 2x, in the web column
    assert other["speedup"] == 2.0 and other["target_loss"] == 3.0 and other["tokens_to_target"] == 2048
    assert "2.00x" in rows[1].split("|")[4] and "2.00x" not in rows[1].split("|")[5]


def test_not_reached_and_explicit_baseline(fake, tmp_path):
    runs = fake / "runs"
    slow = write_run(tmp_path / "slow", "c4", [(2048, 5.0), (4096, 3.5)], init_from="x", seed=4)
    report = run_main(fake, str(slow), str(runs / "scratch_web"), "--domains", "web",
                      "--extra_data", str(fake / "data" / "math"), out="ev_nr")
    assert list(report["domains"]) == ["web", "math"]  # an extra folder is named by its folder name
    slow_res, scratch = report["runs"]
    assert scratch["is_baseline"] and slow_res["speedup"] is None and slow_res["speedup_note"] == "not reached"
    assert "not reached" in (fake / "ev_nr" / "eval.md").read_text()
    # --baseline picks another run; a baseline not among the runs is added as the first row
    report = run_main(fake, str(runs / "nca_web"), "--baseline", str(slow), "--domains", "web", out="ev_b")
    assert [r["label"] for r in report["runs"]] == ["c4 (slow)", "nca (nca_web)"]
    assert report["runs"][1]["baseline"] == "c4 (slow)" and report["runs"][1]["speedup"] == 4096 / (1024 + 1024 * 1.5 / 2)


def test_nca_checkpoint_is_refused_on_language_and_evaluated_on_rules(fake, capsys):
    runs = fake / "runs"
    report = run_main(fake, str(runs / "scratch_web"), str(runs / "nca_web" / "ppt"),
                      "--nca_val_seqs", "8", "--domains", ",".join(DOMAINS), out="ev_nca")
    out = capsys.readouterr().out
    _, ppt = report["runs"]
    assert "not evaluated on web, math, code" in out and "NCA validation rules instead" in out
    assert ppt["ppl"] == {} and "'nca'" in ppt["refused"]             # refused by vocabulary kind
    # a run that can be scored nowhere (a Dyck stage-1 model) is one error line, not an empty row
    err = refused(capsys, run_main, fake, str(runs / "scratch_web"), str(runs / "dyck_ppt"))
    assert "dyck (dyck_ppt) can be scored on no eval domain" in err and "'dyck'" in err
    G = len(probes.grid_positions(NCA_CFG))
    n = ppt["nca"]
    assert n["grid"] == list(range(1, G + 1)) and n["num_seqs"] == 8 and math.isfinite(n["val_loss"])
    for k in ("token_acc", "grid_acc", "copy_token_acc", "copy_grid_acc", "lookup_token_acc",
              "lookup_grid_acc"):
        assert len(n[k]) == G and all(0 <= a <= 1 for a in n[k])
    assert "| grid | token acc | grid acc | copy token acc | copy grid acc | lookup token acc |" \
        in out
    assert len(ppt["heads"]["induction"]) >= 1            # attention-head scores, stage 1 too
    # the language table holds only the language run
    md = (fake / "ev_nca" / "eval.md").read_text()
    lang_rows = [line for line in md.splitlines() if " nats · " in line]
    assert len(lang_rows) == 3 and lang_rows[0].startswith("| scratch")   # + unigram, bigram
    # stage-1 summary: one row in the accuracy table, one in the manipulation check (no
    # frame-shuffled body given: its columns are empty)
    rows = [line for line in md.splitlines() if line.startswith("| nca (")]
    assert len(rows) == 2 and rows[1].endswith("| - | - |") and "| time frames |" in rows[1]
    assert n["shuffled_loss"] - n["val_loss"] == pytest.approx(float(rows[1].split("|")[5]),
                                                               abs=1e-4)


def test_language_refusal():
    assert language_refusal({"vocab": {"kind": "gpt2"}, "model_args": {"vocab_size": 64000}}) is None
    assert "10,002" in language_refusal({"vocab": {"kind": "gpt2"}, "model_args": {"vocab_size": 10002}})
    assert "'nca'" in language_refusal({"vocab": {"kind": "nca"}, "model_args": {"vocab_size": 64000}})


def test_nca_eval_directly():
    torch.manual_seed(0)
    model = GPT(config_for("tiny", vocab_size=NCA_CFG.vocab_size, block_size=128, head_bias=True))
    info = {"config": asdict(NCA_CFG), "val_seeds": [1, 2], "mask_delimiters": True}
    res = ev.nca_eval(model, info, num_seqs=4, batch_size=3)
    assert res["num_seqs"] == 4 and len(res["token_acc"]) == len(probes.grid_positions(NCA_CFG))
    # an untrained model is near chance: loss about log(vocab)
    assert abs(res["val_loss"] - math.log(NCA_CFG.vocab_size)) < 2


def refused(capsys, call, *args):
    """The one error line a refused eval.py prints (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        call(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_user_errors_are_one_line(fake, tmp_path, capsys):
    runs = fake / "runs"
    assert re.search(r"error: .*missing\.bin|error: .*meta.json is missing",
                     refused(capsys, run_main, fake, str(runs / "scratch_web"), "--domains",
                             "web,nowhere"))
    assert "ckpt.pt is missing" in refused(capsys, run_main, fake, str(tmp_path))
    (tmp_path / "eval.json").write_text("{}")
    assert "exists: pass --overwrite" in refused(capsys, ev.main, [
        str(runs / "scratch_web"), "--out", str(tmp_path), "--data_root", str(fake / "data")])
    assert (tmp_path / "eval.json").read_text() == "{}"


def test_plot(fake, tmp_path, capsys):
    runs = [str(fake / "runs" / r) for r in ("scratch_web", "nca_web", "nca_web/ppt")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install matplotlib" in refused(capsys, run_main, fake, *runs, "--plot",
                                                   str(tmp_path / "c.png"))
        return
    run_main(fake, *runs, "--domains", "web", "--plot", str(tmp_path / "c.png"), out="ev_plot")
    assert (tmp_path / "c.png").stat().st_size > 0



def test_plot_contrasts_draws_the_shares_beside_the_bars(tmp_path):
    """--plot_contrasts: a bar per row; rows with a REF also get the share panel, a point per
    such row at its share with its Fieller interval, an unbounded one named beside its point (no
    panel when no row has a REF)."""
    pytest.importorskip("matplotlib")
    def row(a, d, share=None):
        return {"a": a, "b": "scratch", "domain": "math", "units": 5, "dloss": (d, 0.01),
                "p_holm": 0.3, "ref": "nca" if share else None,
                "share": share and {"share": share, "lo": share - 0.1, "hi": share + 0.2}}
    rows = [row("nca", -0.1), row("nca-attn", -0.02, 0.2), row("nca-mlp", -0.08, 0.8)]
    fig = plots.plot_contrasts(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0 and len(fig.axes) == 2
    points = fig.axes[1].lines[0].get_data()
    assert list(points[0]) == [0.2, 0.8] and list(points[1]) == [1, 0]    # rows 2, 3 (top = 2)
    assert len(plots.plot_contrasts(rows[:1], tmp_path / "one.png").axes) == 1
    rows[2]["share"] = {"share": 0.8, "lo": None, "hi": None, "unbounded": True}
    fig = plots.plot_contrasts(rows, tmp_path / "u.png")
    assert [t.get_text() for t in fig.axes[1].texts] == ["interval unbounded"]


# ---------------------------------------------------------------- end to end with train.py

def test_end_to_end_with_train(tmp_path, capsys):
    if not (ROOT / "data" / "web" / "meta.json").exists():
        pytest.skip("data/web is not prepared: run python data/web/prepare.py")
    import train

    dirs = [tmp_path / "a", tmp_path / "b"]
    for seed, (d, arm) in enumerate(zip(dirs, ([], ["--arm", "other"]))):
        train.main(["--stage", "lang", "--domain", "web", "--size", "tiny", "--seq_len", "64",
                    "--batch_tokens", "512", "--micro_batch", "8", "--lang_tokens", "4096",
                    "--eval_interval", "2", "--eval_tokens", "2048", "--device", "cpu",
                    "--seed", str(seed), "--out_dir", str(d), *arm])
    report = ev.main([*map(str, dirs), "--domains", "web", "--eval_tokens", "2048", "--device", "cpu",
                      "--out", str(tmp_path / "ev")])
    a, b = report["runs"]
    assert a["is_baseline"] and a["speedup"] == 1.0 and b["label"].startswith("other")
    assert all(math.isfinite(r["ppl"]["web"]) for r in (a, b)) and b["change_pct"]["web"] is not None
    for r in (a, b):  # same windows as train.py's validation, so the same loss at the final step
        assert r["loss"]["web"] == pytest.approx(r["final_val_loss"], rel=1e-4)
    rows = [line for line in (tmp_path / "ev" / "eval.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 6  # header, rule, two runs, unigram and bigram


def test_ngram_baselines_and_bits_per_byte():
    cycle = np.tile(np.arange(10), 500)                       # 0 1 2 ... 9 0 1 ...: a pure bigram
    w = windows_of(cycle[:801], 100, 0)
    base = probes.ngram_baselines(cycle, w, 12)
    assert base["unigram"] == pytest.approx(math.log(10), rel=1e-3)
    assert base["bigram"] < 1e-3
    assert ev.bits_per_byte(math.log(2), w, w[:, 1:].numel()) == pytest.approx(1.0)
    assert ev.bits_per_byte(math.log(2), w, 2 * w[:, 1:].numel()) == pytest.approx(0.5)


def test_eval_json_holds_probes_and_head_scores(fake):
    """Every language run gets the three copy probes and the in-context score per domain, each
    with its chance level and standard error, and its attention-head scores."""
    report = run_main(fake, str(fake / "runs" / "scratch_web"), "--domains", "web", out="ev_p")
    r = report["runs"][0]
    for name in ("text", "frequent", "uniform"):
        p = r["probes"]["web"][name]
        assert p["gain"] == pytest.approx(p["first"] - p["second"]) and p["chance_gain"] == 0
        assert p["gain_se"] is not None and p["n"] >= 2
    icl = r["in_context"]["web"]
    assert icl["chance"] == 0 and icl["se"] is not None and icl["late"] == [32, 64]
    heads = r["heads"]
    n_layer = torch.load(fake / "runs" / "scratch_web" / "ckpt.pt",
                         weights_only=True)["model_args"]["n_layer"]
    assert len(heads["induction"]) == len(heads["previous_token"]) == n_layer
    assert 0 < heads["chance_induction"] < 1


def test_summary_pairs_each_seed_with_its_scratch_run():
    def run(arm, seed, losses):
        cfg = {"stage": "lang", "domain": "web", "seed": seed, "arm": arm,
               "init_from": None if arm == "scratch" else "x/ckpt.pt"}
        metrics = [{"kind": "val", "step": i, "tokens": 100 * i, "val_loss": l}
                   for i, l in enumerate(losses)]
        r = ev.Run(Path(f"{arm}{seed}"), Path("ckpt.pt"), cfg, metrics)
        return r, {"arm": arm, "label": f"{arm}{seed}", "ppl": {"web": math.exp(losses[-1])}}
    pairs = [run("scratch", 0, [5, 4, 3]), run("scratch", 1, [5, 4, 2]),
             run("nca", 0, [5, 3, 2.5]), run("nca", 1, [5, 4.5, 2.5])]
    rows = {r["arm"]: r for r in stats.summarize(*zip(*pairs))}
    nca = rows["nca"]
    assert nca["seeds"] == [0, 1] and rows["scratch"]["change_pct"] == (None, None)
    want = [100 * (math.exp(2.5 - 3) - 1), 100 * (math.exp(2.5 - 2) - 1)]
    assert np.allclose(nca["change_all"], want)
    # seed 0: scratch ends at 3.0 after 200 tokens, nca is at 3.0 after 100 -> 2x; seed 1: never
    assert np.allclose(nca["speedup_all"], [2.0]) and nca["not_reached"] == 1
    assert "± " in stats.format_summary(list(rows.values()))
    m, h = stats.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert stats.mean_ci([]) == (None, None) and stats.mean_ci([5.0]) == (5.0, None)


def test_eval_follows_the_runs(fake, tmp_path):
    """No --domains, no --eval_tokens: each run's own training folder (data_dir, else
    <data_root>/<domain>) and the other folders of its tokenizer; the runs' own eval_tokens."""
    own = make_domain(tmp_path / "elsewhere" / "mine", seed=5, vocab=257, tokenizer="bytes")
    make_domain(fake / "data" / "gpt2_only", seed=6)                     # another tokenizer
    a = write_run(tmp_path / "a", "scratch", [(1024, 5.0)], eval_tokens=128)
    config = json.loads((a / "config.json").read_text()) | {"data_dir": str(own)}
    (a / "config.json").write_text(json.dumps(config))
    b = write_run(tmp_path / "b", "scratch", [(1024, 5.0)], domain="math", seed=1, eval_tokens=0)
    report = ev.main([str(a), str(b), "--data_root", str(fake / "data"), "--device", "cpu",
                      "--out", str(tmp_path / "ev")])
    assert list(report["domains"]) == ["mine", "math", "code", "web"]    # own first, no gpt2
    assert report["eval_tokens"] == 128                                  # the smallest; 0 = all
    assert all(d["windows"] == 2 for d in report["domains"].values())
    assert ev.eval_tokens(None, []) == 262_144 and ev.eval_tokens(64, []) == 64


def test_contrasts_pair_any_two_arms_with_one_unit_per_stage1_model():
    """stats.contrasts, against numbers worked by hand: nca - text per domain and pooled; the web
    and math runs of one seed share a stage-1 model (one unit, their mean), code has its own."""
    def run(arm, domain, seed, loss):
        init = None if arm == "scratch" else \
            f"{arm}-{'code' if domain == 'code' else 'web'}-s{seed}/ckpt.pt"
        cfg = {"stage": "lang", "domain": domain, "seed": seed, "arm": arm, "init_from": init}
        metrics = [{"kind": "val", "step": 1, "tokens": 100, "val_loss": loss}]
        r = ev.Run(Path(f"{arm}-{domain}-{seed}"), Path("ckpt.pt"), cfg, metrics)
        return r, {"arm": arm, "label": r.folder.name, "ppl": {domain: math.exp(loss)},
                   "loss": {domain: loss}, "bpb": {domain: loss / math.log(2)}}
    loss = {("nca", "web"): [2.0, 2.1, 1.9], ("text", "web"): [2.1, 2.2, 2.2],
            ("nca", "math"): [1.0, 1.1, 0.9], ("text", "math"): [1.1, 1.0, 1.1],
            ("nca", "code"): [3.0, 3.0, 3.1], ("text", "code"): [3.2, 3.1, 3.0]}
    runs = [run(a, d, s, v[s]) for (a, d), v in loss.items() for s in range(3)]
    rows = {r["domain"]: r for r in stats.contrasts(*zip(*runs), [("nca", "text")])}
    assert np.allclose(rows["web"]["dloss_all"], [-0.1, -0.1, -0.3])
    assert rows["web"]["p"] == pytest.approx(0.25)              # 2 of 8 sign patterns
    pooled = rows["all"]
    # units: (web+math)/2 per seed -> -0.1, 0.0, -0.25; code per seed -> -0.2, -0.1, +0.1
    assert pooled["units"] == 6
    assert sorted(np.round(pooled["dloss_all"], 6)) == [-0.25, -0.2, -0.1, -0.1, 0.0, 0.1]
    m, h = stats.mean_ci([-0.1, 0.0, -0.25, -0.2, -0.1, 0.1])
    assert pooled["dloss"][0] == pytest.approx(m) and pooled["dloss"][1] == pytest.approx(h)
    # exact sign-flip p of those 6 by brute force
    d = np.array([-0.1, 0.0, -0.25, -0.2, -0.1, 0.1])
    hits = sum(abs((np.array(s) * d).sum()) >= abs(d.sum()) - 1e-12
               for s in itertools.product([-1, 1], repeat=6))
    assert pooled["p"] == pytest.approx(hits / 64)
    assert stats.holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]
    assert "| nca - text | all | 6 |" in stats.format_contrasts(list(rows.values()))
    # one text body per seed serving all three domains: against it, a seed is one unit
    shared = [(r, res) if r.config["arm"] == "nca" else
              (ev.Run(r.folder, r.ckpt, {**r.config, "init_from": f"text-s{r.config['seed']}"},
                          r.metrics), res) for r, res in runs]
    pooled = {x["domain"]: x for x in stats.contrasts(*zip(*shared), [("nca", "text")])}["all"]
    assert pooled["units"] == 3
    ids = stats.units_of([{"a"}, {"b"}, {"a", "c"}, {"c", "d"}, {"e"}])
    assert ids[0] == ids[2] == ids[3] and len({ids[0], ids[1], ids[4]}) == 3


def test_share_of_a_reference_gain_kept_against_hand_numbers():
    """--pair zh:scratch:text: the contrast zh - scratch as with two arms, plus the share of the
    text arm's gain it keeps, mean(d) / mean(dref) over seeds, with Fieller's interval."""
    def run(arm, seed, loss):
        cfg = {"stage": "lang", "domain": "math", "seed": seed, "arm": arm,
               "init_from": None if arm == "scratch" else f"{arm}-s{seed}/ckpt.pt"}
        metrics = [{"kind": "val", "step": 1, "tokens": 100, "val_loss": loss}]
        r = ev.Run(Path(f"{arm}-{seed}"), Path("ckpt.pt"), cfg, metrics)
        return r, {"arm": arm, "label": r.folder.name, "ppl": {"math": math.exp(loss)},
                   "loss": {"math": loss}, "bpb": {"math": loss / math.log(2)}}
    loss = {"scratch": [2.0, 2.1, 2.2, 2.0], "text": [1.8, 1.9, 2.0, 1.9],
            "zh": [1.9, 2.0, 2.2, 1.9]}
    runs = [run(a, s, v[s]) for a, v in loss.items() for s in range(4)]
    (row,) = stats.contrasts(*zip(*runs), [("zh", "scratch", "text")])
    (plain,) = stats.contrasts(*zip(*runs), [("zh", "scratch")])
    assert row["dloss"] == plain["dloss"] and row["p"] == plain["p"] and row["units"] == 4
    s = row["share"]                            # d = -.1 -.1 0 -.1, dref = -.2 -.2 -.2 -.1
    assert s["share"] == pytest.approx(0.3 / 0.7) and s["units"] == 4
    assert s["lo"] < s["share"] < s["hi"] and not s["unbounded"]
    again = stats.share_kept([(-0.1, -0.2), (-0.1, -0.2), (0.0, -0.2), (-0.1, -0.1)])
    assert (again["lo"], again["hi"]) == pytest.approx((s["lo"], s["hi"]))
    assert "| zh - scratch | text | math | 4 | 0.43 [-0.02, 1.28] |" in stats.format_shares([row])
    assert "95% Fieller interval" in stats.format_shares([row])
    assert plain["share"] is None


def test_fieller_interval_against_hand_arithmetic():
    """d = 1 2 2 1, dref = 2 4 3 3 (n = 4, t = 3.182 for 3 df, t^2 = 10.125124):
    a = 1.5, b = 3; deviations d: -.5 .5 .5 -.5, dref: -1 1 0 0; sample var(d) = 1/3,
    var(dref) = 2/3, cov = ((-.5)(-1) + (.5)(1)) / 3 = 1/3; over n: v_aa = 1/12, v_bb = 1/6,
    v_ab = 1/12.
    A = b^2 - t^2 v_bb = 9 - 1.687521 = 7.312479
    B = a b - t^2 v_ab = 4.5 - 0.843760 = 3.656240
    C = a^2 - t^2 v_aa = 2.25 - 0.843760 = 1.406240
    B^2 - A C = 13.368091 - 10.283082 = 3.085009, its root 1.756419
    lo, hi = (B -+ 1.756419) / A = 0.259806, 0.740194."""
    s = stats.share_kept([(1, 2), (2, 4), (2, 3), (1, 3)])
    assert s["share"] == 0.5 and s["units"] == 4 and not s["unbounded"]
    assert s["lo"] == pytest.approx(0.259806, abs=2e-6)
    assert s["hi"] == pytest.approx(0.740194, abs=2e-6)
    # dref = 1 -1 2 -1: mean 0.25, se 0.75, |b| / se = 0.33 < t: no interval, said so
    wide = stats.share_kept([(1, 1), (2, -1), (2, 2), (1, -1)])
    assert wide["share"] == 6.0 and wide["unbounded"] and wide["lo"] is None is wide["hi"]
    assert stats.share_text(wide) == "6.00 [unbounded]"
    one = stats.share_kept([(1, 2)])
    assert one["lo"] is None and not one["unbounded"] and stats.share_text(one) == "0.50"
    assert stats.t975(3) == 3.182 and stats.t975(40) == pytest.approx(1.96 + 2.4 / 40)


def in_fieller_set(d, ref, theta):
    """Whether theta is in Fieller's 95% set by its definition, (a - theta b)^2 <= t^2
    var(a - theta b): also for the unbounded sets, which share_kept reports without bounds."""
    n = len(d)
    x = d - theta * ref
    return x.mean() ** 2 <= stats.t975(n - 1) ** 2 * x.var(ddof=1) / n


def test_fieller_covers_a_known_ratio_where_the_bootstrap_did_not():
    """2,000 simulated experiments each of n = 5 and n = 8 paired units with true share 0.5 and
    a reference gain of about E2's size and spread (dref ~ N(-0.1, 0.04), d = 0.5 dref +
    N(0, 0.03)): Fieller's interval covers 0.5 in 95% of them (0.9525 at n = 5, 38 of its sets
    unbounded; 0.9515 at n = 8, none); the percentile bootstrap the tables used before covers
    0.829 and 0.892 here (1,000 draws; the old share_kept's 10,000 draws: 0.850 and 0.896)."""
    rng = np.random.default_rng(0)
    for n, boot_max in ((5, 0.88), (8, 0.92)):
        fieller = boot = 0
        for _ in range(2000):
            ref = rng.normal(-0.1, 0.04, n)
            d = 0.5 * ref + rng.normal(0, 0.03, n)
            s = stats.share_kept(list(zip(d, ref)))
            inside = in_fieller_set(d, ref, 0.5)
            if s["unbounded"]:
                fieller += inside
            else:
                assert inside == (s["lo"] <= 0.5 <= s["hi"])     # the bounds are that set's
                fieller += s["lo"] <= 0.5 <= s["hi"]
            idx = rng.integers(0, n, (1000, n))
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = d[idx].mean(1) / ref[idx].mean(1)
            lo, hi = np.nanpercentile(draws, [2.5, 97.5])
            boot += lo <= 0.5 <= hi
        assert 0.93 <= fieller / 2000 <= 0.97, (n, fieller / 2000)
        assert boot / 2000 < boot_max, (n, boot / 2000)                 # undercovers


def test_results_share_intervals_are_what_reshare_computes(tmp_path, capsys):
    """lab/RESULTS.md's E2 and E4 share intervals are Fieller's, recomputed by lab/reshare.py from
    the per-seed Δ the tables list (the shares themselves are the runs'; the 3-decimal Δ may move
    one by 0.01)."""
    from lab import reshare
    text = reshare.RESULTS.read_text()
    rows = reshare.main([])
    assert len(rows) == 13 and "| E2 | uniform − scratch | 5 | 0.43 [0.08, 1.29] |" in \
        capsys.readouterr().out
    for exp, name, s in rows:
        line = next(x for x in reshare.section(text, exp) if x.startswith(f"| {name} |"))
        cell = line.rstrip(" |").rsplit("| ", 1)[1].replace("−", "-")
        share, bounds = cell.split(" [")
        assert bounds == f"{s['lo']:.2f}, {s['hi']:.2f}]", (name, cell)
        assert abs(float(share) - s["share"]) < 0.0101, (name, cell)
    with pytest.raises(SystemExit):
        reshare.main(["--results", str(tmp_path / "none.md")])
    assert capsys.readouterr().err.strip().startswith("error: --results")


def test_contrast_units_come_in_seed_order():
    """Seeds 0-11 are listed 0, 1, 2, ..., 10, 11 (not 0, 1, 10, 11, 2 as strings sort them),
    and a seed that is not an integer comes after the integers."""
    def run(arm, seed, loss):
        cfg = {"stage": "lang", "domain": "web", "seed": seed, "arm": arm,
               "init_from": None if arm == "scratch" else f"{arm}-s{seed}/ckpt.pt"}
        r = ev.Run(Path(f"{arm}-{seed}"), Path("ckpt.pt"), cfg, [])
        return r, {"arm": arm, "label": r.folder.name, "ppl": {"web": math.exp(loss)},
                   "loss": {"web": loss}, "bpb": {"web": loss}}
    seeds = list(range(12)) + ["x"]
    runs = [run("scratch", s, 2.0) for s in seeds] + \
        [run("nca", s, 2.0 - (i + 1) / 100) for i, s in enumerate(seeds)]
    (row,) = stats.contrasts(*zip(*runs[::-1]), [("nca", "scratch")])
    assert np.allclose(row["dloss_all"], [-(i + 1) / 100 for i in range(13)])
    assert sorted(["b", 10, 2, "a", 0], key=lambda s: stats.seed_order((("n", "w", s), 0))) \
        == [0, 2, 10, "a", "b"]


def test_pair_flag_is_checked_before_any_model_runs(fake, capsys):
    for bad, why in (("nca", "give two different arms"), ("nca:nca", "give two different arms"),
                     ("nca:scratch", "no language run of arm 'nca'")):
        with pytest.raises(SystemExit):
            run_main(fake, str(fake / "runs" / "scratch_web"), "--pair", bad, out="ev_pair")
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --pair") and why in err[0], err


def test_arms_of_one_domain_and_seed_twice_cannot_be_paired(capsys):
    """lab.stats.eval_pairs: --arm names a scratch variant; a reinit run is its own arm by default;
    two runs of one arm, domain and seed are refused for --pair and left out of the defaults."""
    def run(arm, seed, init=None):
        cfg = {"stage": "lang", "domain": "web", "seed": seed, "arm": arm, "init_from": init}
        return ev.Run(Path(f"{arm}{seed}"), Path("ckpt.pt"), cfg, [])
    runs = [run("scratch", 0), run("scratch", 1), run("wide", 0), run("wide", 1),
            run("nca", 0, "x"), run("nca", 0, "y")]
    assert stats.eval_pairs(["wide:scratch"], runs) == [("wide", "scratch")]
    assert stats.eval_pairs(["wide:scratch:deep"], runs + [run("deep", 0)]) == [
        ("wide", "scratch", "deep")]
    for bad in ("wide:scratch:wide", "wide:scratch:", "a:b:c:d"):
        with pytest.raises(UserError, match="give two different arms"):
            stats.eval_pairs([bad], runs)
    with pytest.raises(UserError, match="arm 'nca' has two runs of one domain and seed"):
        stats.eval_pairs(["nca:scratch"], runs)
    assert stats.eval_pairs([], runs) == [("wide", "scratch")]
    assert "nca" in capsys.readouterr().err



def test_arm_curves_average_seeds_and_pair_each_with_its_scratch():
    """stats.arm_curves (the over-seeds picture): per arm the mean and 95% half-width at each
    token count all its seeds have (step 0 left out), and Δ vs scratch paired by seed."""
    def run(arm, seed, losses):
        cfg = {"stage": "lang", "domain": "web", "seed": seed, "arm": arm,
               "init_from": None if arm == "scratch" else "x/ckpt.pt"}
        metrics = [{"kind": "val", "step": i, "tokens": 100 * i, "val_loss": v}
                   for i, v in enumerate(losses)]
        return ev.Run(Path(f"{arm}{seed}"), Path("ckpt.pt"), cfg, metrics), None
    items = [run("scratch", 0, [9, 4, 3]), run("scratch", 1, [9, 6, 5]),
             run("nca", 0, [9, 3, 2]), run("nca", 1, [9, 5, 3])]
    loss, delta = stats.arm_curves(items)
    t, m, h, n = loss["scratch"]
    assert t == [100, 200] and m == [5.0, 4.0] and n == 2
    assert h[0] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-3)
    t, m, h, n = delta["nca"]
    assert t == [100, 200] and m == [-1.0, -1.5] and h[0] == 0.0    # both seeds -1 at 100
    assert "scratch" not in delta


def test_delta_table_lists_each_seeds_delta_and_their_mean_by_tokens():
    """stats.delta_table (E6's wash-out table): per token count, each seed's Δ against its own
    scratch run and the mean ± 95% t over seeds; refused without a scratch partner."""
    def run(arm, seed, losses):
        cfg = {"stage": "lang", "domain": "code", "seed": seed, "arm": arm,
               "init_from": None if arm == "scratch" else "x/ckpt.pt"}
        metrics = [{"kind": "val", "step": i, "tokens": 1000 * i, "val_loss": v}
                   for i, v in enumerate(losses)]
        return ev.Run(Path(f"{arm}{seed}"), Path("ckpt.pt"), cfg, metrics)
    runs = [run("scratch", 0, [9, 4]), run("nca", 0, [9, 3.5]), run("c4", 0, [8, 4.25]),
            run("scratch", 1, [9, 6]), run("nca", 1, [9, 5.5]), run("c4", 1, [8, 6.75])]
    lines = stats.delta_table(runs).splitlines()
    assert lines[0] == ("| tokens | nca - scratch per seed | mean ± 95% t | "
                        "c4 - scratch per seed | mean ± 95% t |")
    assert lines[2] == "| 0 | +0.000, +0.000 | +0.000 | -1.000, -1.000 | -1.000 |"
    half = 12.706 * (0.5 / math.sqrt(2)) / math.sqrt(2)      # t(0.975, 1) * sd / sqrt(n)
    assert lines[3] == (f"| 1,000 | -0.500, -0.500 | -0.500 | +0.250, +0.750 | +0.500 ± "
                        f"{half:.3f} |")
    with pytest.raises(UserError, match="no arm has a scratch run"):
        stats.delta_table(runs[1:3])


def test_eval_tokens_1_scores_one_window_without_an_error_bar(fake):
    """--eval_tokens 1 is one window: the in-context score has no standard error to show (it
    ended in a TypeError while eval.md was formatted)."""
    report = ev.main([str(fake / "runs" / "scratch_web"), "--data_root", str(fake / "data"),
                      "--domains", "web", "--eval_tokens", "1", "--device", "cpu",
                      "--out", str(fake / "ev_one"), "--overwrite"])
    assert report["domains"]["web"]["windows"] == 1
    assert report["runs"][0]["in_context"]["web"]["se"] is None
    assert "(n = 1: no error bar)" in rows_of((fake / "ev_one" / "eval.md").read_text())[0]


def test_a_diverged_run_is_named_and_eval_json_stays_json(fake, tmp_path, capsys):
    """NaN or infinite losses in metrics.jsonl: "diverged at step N" in eval.md's table and in
    eval.json (valid JSON: no bare NaN), and --plot leaves the run out with a note."""
    run = write_run(tmp_path / "nan_web", "nca", [(1024, 5.0), (2048, float("nan")),
                                                 (3072, float("inf"))], seed=5)
    with open(run / "metrics.jsonl", "a") as f:           # a train line's loss too
        f.write(json.dumps({"kind": "train", "step": 7, "tokens": 3584, "loss": float("nan")}) + "\n")
    argv = [str(fake / "runs" / "scratch_web"), str(run), "--domains", "web"]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(tmp_path / "c.png")]
    except ImportError:
        pass
    run_main(fake, *argv, out="ev_nan")
    out, err = capsys.readouterr()
    text = (fake / "ev_nan" / "eval.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in eval.json"))
    assert saved["runs"][1]["diverged_at"] == 4 and saved["runs"][0]["diverged_at"] is None
    assert saved["runs"][1]["final_val_loss"] == 5.0                 # the last finite point
    assert "(diverged at step 4)" in rows_of((fake / "ev_nan" / "eval.md").read_text())[1]
    assert "note: nca (nan_web) diverged at step 4" in err and "Traceback" not in err
    if "--plot" in argv:
        assert "not plotted" in err and (tmp_path / "c.png").stat().st_size > 0


def test_a_pair_not_scored_on_its_shared_domain_is_said(fake, tmp_path, capsys):
    """--pair between runs of one domain and seed, evaluated only on another domain: the
    contrast has no row, and a note says why (it was an empty table and exit 0, no word)."""
    curve = [(1024, 5.0), (2048, 4.0)]
    scratch = write_run(tmp_path / "s", "scratch", curve, seed=7)
    arm = write_run(tmp_path / "n", "nca", curve, init_from="x", seed=7)
    report = run_main(fake, str(scratch), str(arm), "--domains", "math", "--pair", "nca:scratch",
                      out="ev_pair_math")
    assert report["contrasts"] == []
    assert "note: --pair nca:scratch: no domain was scored for runs of both arms" in \
        capsys.readouterr().err


def test_manipulation_check_of_a_time_ordered_body_against_a_shuffled_one(tmp_path):
    """The manipulation check, trained and evaluated at toy size: the validation lines carry the
    loss on the other order, eval.py's stage-1 summary pairs the time-ordered body with the
    frame-shuffled body of its rules and budget, and its numbers are lab/manipulation_check.py's
    (which rebuilds the permutations itself and checks the frames are the same)."""
    import train
    from lab import manipulation_check
    common = ["--preset", "cpu", "--stage", "ppt", "--ppt_tokens", "16384", "--train_num_rules",
              "64", "--val_num_rules", "8", "--ppt_val_seqs", "16", "--ppt_eval_interval", "2",
              "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--rule_seed", "0"]
    for name, extra in (("time", []), ("shuf", ["--frame_order", "shuffled"])):
        train.main(common + extra + ["--out_dir", str(tmp_path / name)])
    vals = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()
                if '"val"' in x][-1] for n in ("time", "shuf")}
    assert "val_loss_shuffled" in vals["time"] and "val_loss_time" in vals["shuf"]
    ev.main([str(tmp_path / "time"), str(tmp_path / "shuf"), "--nca_val_seqs", "16",
             "--out", str(tmp_path / "ev")])
    rows = {r["label"]: r["nca"] for r in json.loads((tmp_path / "ev" / "eval.json").read_text())
            ["runs"]}
    t, s = rows["nca (time)"], rows["nca (shuf)"]
    assert (t["trained_order"], s["trained_order"]) == ("time", "shuffled")
    assert t["rules"] == s["rules"]
    # the training run's last validation saw the same 16 sequences with the same weights
    assert t["shuffled_loss"] == pytest.approx(vals["time"]["val_loss_shuffled"], abs=1e-5)
    assert s["val_loss"] == pytest.approx(vals["shuf"]["val_loss_time"], abs=1e-5)
    model = ev.model_from_checkpoint(ev.load_checkpoint(tmp_path / "time" / "ckpt.pt"), "cpu")
    info = torch.load(tmp_path / "time" / "ckpt.pt", weights_only=True)["nca"]
    check = manipulation_check.check(model, info, 16, 0, 8, "cpu")
    assert check["ordered"]["loss"] == pytest.approx(t["val_loss"], abs=1e-6)
    assert check["shuffled"]["loss"] == pytest.approx(t["shuffled_loss"], abs=1e-6)
    md = (tmp_path / "ev" / "eval.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| nca (time) | time frames |"))
    gain, diff = t["shuffled_loss"] - t["val_loss"], t["val_loss"] - s["val_loss"]
    assert f"| {gain:+.4f} | nca (shuf): {s['val_loss']:.4f} | {diff:+.4f} |" in line


def test_tost_against_hand_counted_sign_patterns():
    # d = (0.004, -0.002, 0.006), margin 0.005. Lower test on d + m = (9, 3, 11)e-3: only the
    # all-plus pattern of 8 reaches the observed sum, p = 1/8. Upper test on m - d = (1, 7, -1)e-3,
    # observed sum 7e-3: patterns (+,+,+) 7, (+,+,-) 9, (-,+,-) 7 reach it, p = 3/8.
    assert stats.tost([0.004, -0.002, 0.006], 0.005) == (0.125, 0.375, 0.375)
    # eight differences well inside the margin: each one-sided p is 1/256
    assert stats.tost([0.001, -0.001] * 4, 0.005)[2] == pytest.approx(1 / 256)
    assert stats.sign_flip_p_greater([1.0, 2.0]) == 0.25 and stats.tost([], 0.1) == (None,) * 3
