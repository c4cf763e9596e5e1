"""Stage-1 controls (lab/make_controls.py, lab/permute_body.py): each keeps what it says it
keeps and destroys what it says it destroys; lab/norm_movement.py measures what E4's
`--reinit ln` would undo."""
import numpy as np
import pytest
import torch

from data.build import TokenWriter, write_dataset
from data.common import load_meta, load_tokens
from lab import make_controls, norm_movement, permute_body

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
