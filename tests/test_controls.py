"""Stage-1 controls (lab/make_controls.py, lab/permute_body.py, lab/scale_matched_body.py): each
keeps what it says it keeps and destroys what it says it destroys; lab/norm_movement.py measures
what E4's `--reinit ln` would undo."""
import numpy as np
import pytest
import torch

from data.build import TokenWriter, write_dataset
from data.common import load_meta, load_tokens
from lab import make_controls, norm_movement, permute_body, scale_matched_body

TEXT = [b"the cat sat on the mat.  a dog ran\n", b"  one two three four five six", b"x"]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "c4_bytes"
    writers = {}
    for split, docs in (("train", TEXT * 20), ("val", TEXT)):
        toks = np.concatenate([np.append(np.frombuffer(d, np.uint8), 256) for d in docs])
        writers[split] = TokenWriter(folder / f"{split}.bin")
        writers[split].write(toks, len(docs))
    write_dataset(folder, writers, {"source": "test", "domain": "c4_bytes"}, tokenizer="bytes")
    return folder


def docs_of(folder, split):
    t = np.asarray(load_tokens(folder, split))
    return [bytes(d.astype(np.uint8)) for d in make_controls.documents(t, 256)]


def test_word_shuffle_keeps_each_documents_words_and_loses_their_order(corpus, tmp_path):
    make_controls.main([str(corpus), "--kind", "word_shuffle", "--out", str(tmp_path / "w")])
    src, out = docs_of(corpus, "train"), docs_of(tmp_path / "w", "train")
    assert len(src) == len(out) and all(len(a) == len(b) for a, b in zip(src, out))
    assert all(sorted(a.split()) == sorted(b.split()) for a, b in zip(src, out))
    assert sum(a.split() != b.split() for a, b in zip(src, out)) > len(src) // 2
    assert load_meta(tmp_path / "w")["control"]["kind"] == "word_shuffle"


def test_iid_controls_match_their_distribution(corpus, tmp_path):
    src = np.asarray(load_tokens(corpus, "train"))
    for kind in ("unigram", "uniform"):
        make_controls.main([str(corpus), "--kind", kind, "--tokens", "60000",
                            "--out", str(tmp_path / kind)])
        t = np.asarray(load_tokens(tmp_path / kind, "train"))
        body = t[t != 256]
        assert len(t) == 60000 and set(np.unique(t)) <= set(range(257))
        freq = np.bincount(body, minlength=256) / len(body)
        want = np.bincount(src[src != 256], minlength=256)[:256] / (src != 256).sum() \
            if kind == "unigram" else np.full(256, 1 / 256)
        assert np.abs(freq - want).max() < 0.01, kind
    t = np.asarray(load_tokens(tmp_path / "unigram", "train"))[:2000]
    words = bytes(t[t != 256].astype(np.uint8))
    assert b"the cat" not in words


def test_controls_refuse_what_they_cannot_make(corpus, tmp_path, capsys):
    make_controls.main([str(corpus), "--kind", "uniform", "--out", str(tmp_path / "u")])
    for argv in ([str(corpus), "--kind", "uniform", "--out", str(tmp_path / "u")],
                 [str(corpus), "--kind", "word_shuffle", "--tokens", "9", "--out",
                  str(tmp_path / "v")]):
        with pytest.raises(SystemExit):
            make_controls.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_permuted_body_keeps_each_tensors_values_not_their_places(tmp_path):
    from model import GPT, GPTConfig, save_checkpoint
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    ck = {"model": m.state_dict(), "model_args": vars(m.config) | {}, "stage": "ppt",
          "config": {"ppt_source": "nca"}, "optimizer": {}, "vocab": {"kind": "nca", "size": 16}}
    ck["model_args"] = {k: v for k, v in ck["model_args"].items()}
    save_checkpoint(ck, tmp_path / "ckpt.pt")
    out = permute_body.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "p.pt"), "--seed", "1"])
    moved = 0
    for k, v in ck["model"].items():
        w = out["model"][k]
        assert torch.equal(v.flatten().sort().values, w.flatten().sort().values), k
        moved += not torch.equal(v, w)
    assert moved >= len(ck["model"]) - 3          # all but the constant norms (all ones) moved
    assert "optimizer" not in out and out["config"]["permute_seed"] == 1


def test_norm_movement_measures_each_norm_group_against_one(tmp_path):
    from model import GPT, GPTConfig, save_checkpoint
    m = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=1, n_embd=4))
    with torch.no_grad():
        m.blocks[0].norm1.weight.copy_(torch.tensor([1.0, 1.2, 0.9, 1.0]))   # |w-1| .2, .1
        m.norm_f.weight.fill_(0.5)
    moved = norm_movement.movement(m.state_dict())
    assert moved["blocks"] == pytest.approx((0.3 / 16, 0.2, (0.05 / 16) ** 0.5))
    assert moved["final"] == pytest.approx((0.5, 0.5, 0.5))
    ck = {"model": m.state_dict(), "model_args": dict(vars(m.config)), "stage": "ppt", "step": 7}
    save_checkpoint(ck, tmp_path / "ckpt.pt")
    rows = norm_movement.main([str(tmp_path), "--out", str(tmp_path / "norms.md")])
    assert rows[0][2] == moved
    assert "| ppt | 7 | 0.0188 / 0.2000 / 0.0559 | 0.5000 / 0.5000 / 0.5000 |" in \
        (tmp_path / "norms.md").read_text()


def test_norm_movement_measures_exactly_the_norms_reinit_ln_resets():
    """The per-block group is what model.GPT's `--reinit ln` addresses, and nothing else."""
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=3, n_head=1, n_embd=4))
    name = {id(p): n for n, p in m.named_parameters()}
    ln = sorted(name[id(p)] for mod in m._modules_of("ln", None) for p in mod.parameters())
    keys = norm_movement.norm_keys(m.state_dict())
    assert sorted(keys["blocks"]) == ln and len(ln) == 6
    assert keys["final"] == ["norm_f.weight"]


def trained_like_body(path):
    """A stage-1 checkpoint whose matrices have other scales than the init's 0.02 (each its own)
    and whose norms moved from 1, as a trained body's have."""
    from model import GPT, GPTConfig, save_checkpoint
    torch.manual_seed(123)
    m = GPT(GPTConfig(block_size=80, vocab_size=64, n_layer=2, n_head=2, n_embd=32,
                      head_bias=True))
    state = m.state_dict()
    for i, k in enumerate(sorted(state)):
        if ".attn." in k or ".mlp." in k:
            state[k] = state[k] * (1 + 0.7 * i) + 0.01 * torch.randn_like(state[k])
        elif "norm" in k:
            state[k] = state[k] + 0.05 * torch.randn_like(state[k])
    ck = {"model": state, "model_args": dict(vars(m.config)), "stage": "ppt", "step": 4,
          "tokens": 1280, "config": {"ppt_source": "nca", "seed": 123}, "optimizer": {},
          "vocab": {"kind": "nca", "size": 64}}
    save_checkpoint(ck, path)
    return ck


def test_scale_matched_body_has_each_matrix_rms_and_none_of_its_values(tmp_path):
    from model import GPT, GPTConfig
    body = trained_like_body(tmp_path / "body.pt")
    out = scale_matched_body.main([str(tmp_path / "body.pt"), str(tmp_path / "s.pt"),
                                   "--seed", "3"])
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert set(saved) == set(body) - {"optimizer"} and saved["stage"] == "ppt"
    assert saved["config"]["ppt_source"] == "scaled" and saved["tokens"] == 0
    assert saved["model_args"] == body["model_args"]
    torch.manual_seed(3)                                 # the draws: the model's own init
    fresh = GPT(GPTConfig(**body["model_args"])).state_dict()
    matrices = [k for k in body["model"] if ".attn." in k or ".mlp." in k]
    assert len(matrices) == 2 * 7
    for k, v in body["model"].items():
        w = saved["model"][k]
        assert w.shape == v.shape and w.dtype == v.dtype, k
        if k in matrices:
            rms = lambda t: t.double().pow(2).mean().sqrt().item()
            assert rms(w) == pytest.approx(rms(v), rel=1e-6), k
            corr = lambda a, b: np.corrcoef(a.flatten().double(), b.flatten().double())[0, 1]
            assert abs(corr(w, v)) < 0.15, k                  # 1,024+ entries: se ~ 0.03
            assert corr(w, fresh[k]) > 1 - 1e-6, k            # a rescaled fresh draw
        elif "norm" in k:
            assert torch.equal(w, torch.ones_like(v)), k
        else:                                                  # wte, lm_head: the fresh init
            assert torch.equal(w, fresh[k]), k
    assert out["config"]["scale_seed"] == 3


def test_scale_matched_body_transfers_and_can_rescale_the_scratch_arms_draws(tmp_path):
    """With --init_from_scratch_config each matrix is the scratch arm's starting tensor of the
    seed times a constant; stage 2 starts from the body as from any (--arm scaled)."""
    import train
    from conftest import make_domain
    from test_train import LANG, MODEL, lang_model, run_args
    trained_like_body(tmp_path / "body.pt")
    scale_matched_body.main([str(tmp_path / "body.pt"), str(tmp_path / "s.pt"), "--seed", "0",
                             "--init_from_scratch_config"])         # --vocab_size 257: bytes
    scaled = torch.load(tmp_path / "s.pt", weights_only=True)["model"]
    domain = make_domain(tmp_path / "web_bytes", vocab=257, tokenizer="bytes")
    lang = [("257" if a == "50257" else a) for a in LANG] + ["--lang_tokens", "640"]
    scratch = lang_model(run_args(tmp_path / "x", domain) + lang[-2:] + ["--vocab_size", "257"])
    scratch = scratch.state_dict()
    for k, w in scaled.items():
        if ".attn." in k or ".mlp." in k:
            ratio = w.double() / scratch[k].double()
            assert ratio.std().item() < 1e-5 * ratio.abs().mean().item(), k
    train.main(MODEL + lang + ["--stage", "lang", "--data_dir", str(domain), "--out_dir",
                               str(tmp_path / "lang"), "--init_from", str(tmp_path / "s.pt"),
                               "--arm", "scaled"])
    lang = torch.load(tmp_path / "lang" / "ckpt.pt", weights_only=True)
    assert lang["config"]["arm"] == "scaled" and lang["config"]["ppt_source"] == "scaled"
    assert lang["config"]["ppt_tokens"] == 0 and lang["step"] > 0


def test_scale_matched_body_refuses_in_one_line(tmp_path, capsys):
    from model import save_checkpoint
    ck = trained_like_body(tmp_path / "body.pt")
    save_checkpoint({**ck, "stage": "lang"}, tmp_path / "lang.pt")
    (tmp_path / "taken.pt").write_bytes(b"x")
    for argv, why in (([str(tmp_path / "none.pt"), str(tmp_path / "o.pt")], "not found"),
                      ([str(tmp_path / "lang.pt"), str(tmp_path / "o.pt")],
                       "not a stage-1 checkpoint"),
                      ([str(tmp_path / "body.pt"), str(tmp_path / "taken.pt")], "--overwrite")):
        with pytest.raises(SystemExit) as e:
            scale_matched_body.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert why in err[0], err
    assert not (tmp_path / "o.pt").exists() and (tmp_path / "taken.pt").read_bytes() == b"x"
