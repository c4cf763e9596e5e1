"""The Hugging Face folder both ways (scripts/export_hf.py, scripts/hf.py): a complete export
(weights, config.json in transformers-5 keys, generation_config.json, the tokenizer with the
project's ids, a model card) that transformers uses as it is (AutoTokenizer, pipeline); an
export that never clobbers; an import that refuses, in one line before a model is built, what
our model cannot represent. Tiny models, offline; transformers (a test dependency) and the
prepared web corpora are skipped without."""
import errno
import hashlib
import json
import re

import numpy as np
import pytest
import torch

import train
from conftest import BPE, PREPARE_WEB, ROOT, needs_bpe
from data.common import TOKENIZERS, gpt2_encoding
from model import load_checkpoint, model_from_checkpoint
from scripts import hf, hf_files
from test_tools import LANG, MODEL, export_hf, random_bytes_corpus, refused, tiny_checkpoint
from util import UserError

OWN = {"config.json", "generation_config.json", "vocab.json", "merges.txt",
       "tokenizer_config.json", "special_tokens_map.json", "README.md"}


def export(tmp_path, kind="bytes", vocab=257, name="hf", extra=()):
    model, ck = tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind=kind, vocab=vocab)
    weights = export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / name), *extra])
    return model, ck, tmp_path / name, weights


def tree(folder):
    """{name: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- a complete export

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real (two-step) byte-level run: its metrics and provenance feed the model card."""
    data = random_bytes_corpus(tmp_path_factory.mktemp("data") / "tiny_bytes")
    out = tmp_path_factory.mktemp("runs") / "scratch"
    train.main(MODEL + LANG + ["--data_dir", str(data), "--out_dir", str(out), "--max_iters", "2"])
    return out


def test_export_holds_config_generation_config_tokenizer_and_card(run_folder, tmp_path):
    weights = export_hf.main([str(run_folder), str(tmp_path / "hf")])
    folder = tmp_path / "hf"
    assert {p.name for p in folder.iterdir()} == OWN | {weights.name}
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 1e4, "rope_type": "default"}
    assert config["dtype"] == "float32" and config["rope_theta"] == 1e4     # 5 and 4 spellings
    assert "torch_dtype" not in config
    assert config["eos_token_id"] == 256
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == 256
    vocab = json.loads((folder / "vocab.json").read_text())
    assert len(vocab) == 257 and vocab["<|endoftext|>"] == 256 and vocab["Ġ"] == 32
    card = (folder / "README.md").read_text()
    ck = torch.load(run_folder / "ckpt.pt", weights_only=True)
    last = [r for r in map(json.loads, (run_folder / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "val"][-1]
    prov = ck["config"]["provenance"]
    for text in ("license: mit", "arm: `scratch`", f"{ck['tokens']:,} (2 steps)",
                 f"{last['val_loss']:.4f} nats per token", "bits per byte: not in the run's",
                 f"command: `{prov['command']}`", "AutoModelForCausalLM", "MIT"):
        assert text in card, text
    assert (prov["git_commit"] or "not recorded") in card
    transformers = pytest.importorskip("transformers")     # the card's usage snippet runs
    snippet = card.split("```python\n")[1].split("```")[0]
    exec(snippet.replace("path/to/this/folder", str(folder)), {})
    assert transformers.AutoTokenizer.from_pretrained(folder).eos_token == "<|endoftext|>"


def test_a_vocabulary_without_text_exports_without_tokenizer(tmp_path):
    _, _, folder, weights = export(tmp_path, kind="dyck", vocab=9)
    assert {p.name for p in folder.iterdir()} == {"config.json", "generation_config.json",
                                                  "README.md", weights.name}
    card = (folder / "README.md").read_text()
    assert "has no tokenizer" in card and "AutoTokenizer.from_pretrained" not in card


@needs_bpe()
def test_gpt2_merges_are_gpt2s_fifty_thousand():
    files = hf_files.tokenizer_files("gpt2", 50304, 1024)
    merges = files["merges.txt"].splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 50001
    assert merges[1:4] == ["Ġ t", "Ġ a", "h e"]             # GPT-2's own first merges
    assert len(json.loads(files["vocab.json"])) == 50257


def web_documents(domain):
    """The validation documents of a prepared corpus, as lists of ids (separator dropped)."""
    folder = ROOT / "data" / domain
    if not (folder / "val.bin").exists():
        pytest.skip(f"data/{domain} is not prepared: run {PREPARE_WEB}")
    ids = np.fromfile(folder / "val.bin", dtype=np.uint16).tolist()
    eot = TOKENIZERS["bytes" if domain.endswith("_bytes") else "gpt2"][1]
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == eot:
            docs.append(ids[start:i])
            start = i + 1
    return docs


@pytest.mark.parametrize("domain,kind,vocab", [("web", "gpt2", 50304),
                                               ("web_bytes", "bytes", 257)])
def test_exported_tokenizer_encodes_web_validation_as_the_project(domain, kind, vocab, tmp_path):
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2" and not BPE.exists():
        pytest.skip(f"{BPE.name} is absent: run {PREPARE_WEB}")
    docs = web_documents(domain)
    *_, folder, _ = export(tmp_path, kind, vocab)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    decode = (lambda d: bytes(d).decode()) if kind == "bytes" else gpt2_encoding().decode
    texts = [decode(d) for d in docs]
    assert len(texts) > 50
    encoded = tok(texts)["input_ids"]
    for doc, text, ids in zip(docs, texts, encoded):
        assert ids == doc, text[:60]
        assert tok.decode(ids) == text
    sep = TOKENIZERS[kind][1]
    assert tok("a<|endoftext|>b")["input_ids"][1] == sep == tok.eos_token_id


def test_pipeline_generates_from_the_folder_alone(tmp_path):
    transformers = pytest.importorskip("transformers")
    *_, folder, _ = export(tmp_path)
    (tmp_path / "ckpt.pt").unlink()                       # nothing but the export
    generate = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    out = generate("héllo", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("héllo") and len(out.encode()) > len("héllo".encode())


def test_a_transformers5_folder_with_another_rope_base_gives_identical_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=67, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    theirs = transformers.LlamaForCausalLM(config).eval()
    theirs.save_pretrained(tmp_path / "v5")
    saved = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_theta" not in saved and saved["rope_parameters"]["rope_theta"] == 5e5
    ck = load_checkpoint(tmp_path / "v5")
    assert ck["model_args"]["rope_theta"] == 5e5 and ck["model_args"]["mlp_hidden"] == 96
    ours = model_from_checkpoint(ck).eval()
    x = torch.randint(0, 67, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x)[0], theirs(x).logits)
        # and the base matters: at the default base the logits differ
        ck["model_args"]["rope_theta"] = 1e4
        assert not torch.allclose(model_from_checkpoint(ck).eval()(x)[0], theirs(x).logits)


# ---------------------------------------------------------------- writes never clobber

def test_a_non_empty_out_dir_is_refused_without_overwrite(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    err = refused(capsys, export_hf.main, [str(tmp_path), str(tmp_path / "mine")])
    assert "is not empty (notes.txt)" in err and "--overwrite" in err
    assert tree(tmp_path / "mine") == {"notes.txt": hashlib.sha256(b"keep").hexdigest()}
    (tmp_path / "empty").mkdir()                              # an empty folder is fine
    export_hf.main([str(tmp_path), str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "config.json").exists()



def test_the_current_folder_is_refused_as_out_dir(tmp_path, monkeypatch, capsys):
    """The export renames a new folder into place: the current one would vanish under us."""
    tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in (".", str(tmp_path / "here")):
        assert "is the current folder" in refused(capsys, export_hf.main, [str(tmp_path), out])
    export_hf.main([str(tmp_path), "sub"])                    # a folder below it is fine
    assert (tmp_path / "here" / "sub" / "config.json").exists()


def test_overwrite_replaces_only_an_exports_own_files(tmp_path, capsys):
    _, _, folder, weights = export(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"stale")      # an older export's other format
    export_hf.main([str(tmp_path / "ckpt.pt"), str(folder), "--overwrite"])
    assert {p.name for p in folder.iterdir()} == OWN | {weights.name}
    for foreign in ("notes.txt", "model-00001-of-00002.safetensors", "sub/"):
        path = folder / foreign.rstrip("/")
        path.mkdir() if foreign.endswith("/") else path.write_text("user's")
        before = tree(folder)
        err = refused(capsys, export_hf.main, [str(tmp_path / "ckpt.pt"), str(folder),
                                               "--overwrite"])
        assert f"holds {foreign.rstrip('/')}, which is not an export's file" in err
        assert tree(folder) == before and path.exists()
        path.rmdir() if foreign.endswith("/") else path.unlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporaries


@pytest.mark.parametrize("fail_at", ["weights", "card"])
def test_a_failed_export_leaves_the_folder_byte_identical(tmp_path, capsys, monkeypatch, fail_at):
    _, _, folder, _ = export(tmp_path)
    before = tree(folder)
    tiny_checkpoint(tmp_path / "ckpt.pt", seed=1)             # new weights: every file would change

    def disk_full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    if fail_at == "weights":
        monkeypatch.setattr(hf.torch, "save", disk_full)
        monkeypatch.setitem(__import__("sys").modules, "safetensors.torch", None)   # torch.save
    else:
        monkeypatch.setattr(hf_files, "model_card", disk_full)
    err = refused(capsys, export_hf.main, [str(tmp_path / "ckpt.pt"), str(folder),
                                           "--overwrite"])
    assert "disk is full" in err or "No space" in err
    assert tree(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "hf"]   # nothing left over


# ---------------------------------------------------------------- import refuses what it cannot hold

def good_folder(tmp_path):
    """An exported folder to break, one thing at a time."""
    tiny_checkpoint(tmp_path / "ckpt.pt")
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")])
    return tmp_path / "hf"


CONFIG_CASES = [          # (change to config.json, what the one line must say)
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     'rope_parameters.rope_type "linear" is RoPE scaling'),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 'rope_scaling.rope_type "dynamic"'),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "rope_parameters.partial_rotary_factor 0.5 is a RoPE setting"),
    ({"rope_theta": 5e5}, "rope_theta 500000.0 and rope_parameters.rope_theta 10000.0 disagree"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings true cannot convert"),
    ({"attention_bias": True}, "attention_bias true cannot convert"),
    ({"mlp_bias": True}, "mlp_bias true cannot convert"),
    ({"hidden_act": "gelu"}, 'hidden_act "gelu" cannot convert'),
    ({"model_type": "mistral"}, 'model_type "mistral" cannot convert'),
    ({"sliding_window": 32}, "sliding_window 32 is a setting this model does not have"),
    ({"num_key_value_heads": 1}, "num_key_value_heads 1 is not num_attention_heads 2"),
    ({"num_attention_heads": 3, "num_key_value_heads": 3, "head_dim": None},
     "hidden_size 32 is not divisible by num_attention_heads 3"),
    ({"hidden_size": 0}, "hidden_size 0 is not a positive integer"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers 2.5 is not a positive integer"),
    ({"vocab_size": "257"}, 'vocab_size "257" is not a positive integer'),
    ({"vocab_size": None}, "vocab_size is missing (or null)"),
    ({"head_dim": 8}, "head_dim 8 is not hidden_size / num_attention_heads = 16"),
    ({"rms_norm_eps": -1}, "rms_norm_eps -1 is not a positive number"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}, "rope_theta": None},
     "rope_parameters.rope_theta 0 is not a positive number"),
    ({"vocab_size": 300}, "has shape (257, 32), config.json needs (300, 32)"),
    ({"intermediate_size": 64}, "'model.layers.0.mlp.down_proj.weight' has shape (32, 128), "
                                "config.json needs (32, 64)"),
    ({"num_hidden_layers": 3}, "'blocks.2.norm1.weight' (in our names) is missing"),
]


@pytest.mark.parametrize("change,says", CONFIG_CASES, ids=[c[1][:28] for c in CONFIG_CASES])
def test_import_refuses_a_config_it_cannot_represent(tmp_path, monkeypatch, change, says):
    folder = good_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items()}))
    built = []
    monkeypatch.setattr("model.GPT.__init__", lambda *a, **k: built.append(1))
    with pytest.raises(UserError) as e:
        load_checkpoint(folder)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not built                                           # refused before a model is built


def test_a_transformers4_spelling_of_the_rope_base_is_read(tmp_path):
    folder = good_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["rope_parameters"]
    (folder / "config.json").write_text(json.dumps(config | {"rope_theta": 5e5,
                                                             "rope_scaling": None}))
    assert load_checkpoint(folder)["model_args"]["rope_theta"] == 5e5


def break_weights(folder, how):
    """Damage `folder`'s weights one way; the weights end up as pytorch_model.bin or shards."""
    st = folder / "model.safetensors"
    state = hf.load_weights(st, "cpu") if st.exists() else \
        torch.load(folder / "pytorch_model.bin", weights_only=True)
    if how == "truncated safetensors":
        pytest.importorskip("safetensors")
        st.write_bytes(st.read_bytes()[:-100])
        return
    st.unlink(missing_ok=True)
    if how == "truncated bin":
        torch.save(state, folder / "pytorch_model.bin")
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
    elif how == "entry not a tensor":
        torch.save(state | {"model.norm.weight": [1.0, 2.0]}, folder / "pytorch_model.bin")
    elif how == "index not JSON":
        (folder / "pytorch_model.bin.index.json").write_text("{not json")
    elif how == "missing shard":
        names = list(state)
        torch.save({k: state[k] for k in names[:5]}, folder / "pytorch_model-00001-of-00002.bin")
        weight_map = {k: f"pytorch_model-0000{1 + (i >= 5)}-of-00002.bin"
                      for i, k in enumerate(names)}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("how,says", [
    ("truncated safetensors", "(truncated, or not a safetensors file)"),
    ("truncated bin", "cannot read"),
    ("entry not a tensor", "entry 'model.norm.weight' is a list, not a tensor"),
    ("index not JSON", "is not a shard index"),
    ("missing shard", "names the shard pytorch_model-00002-of-00002.bin, which is not in")])
def test_import_refuses_broken_weight_files(tmp_path, capsys, how, says):
    folder = good_folder(tmp_path)
    break_weights(folder, how)
    with pytest.raises(UserError) as e:
        load_checkpoint(folder)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    err = refused(capsys, train.main, MODEL + LANG + ["--init_from", str(folder), "--out_dir",
                                                      str(tmp_path / "run")])
    assert says in err and not (tmp_path / "run").exists()


def test_a_config_that_is_not_an_object_is_refused(tmp_path):
    folder = good_folder(tmp_path)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=re.escape("is not a JSON object of settings")):
        load_checkpoint(folder)


# ---------------------------------------------------------------- the shipped lm-eval task

def test_the_local_lm_eval_task_is_well_formed():
    """examples/lm_eval (docs/evaluation.md runs it with lm-eval, which is not a test
    dependency): the YAML names the items file, and every item has 4 distinct choices, a label
    among them, and no tell in length (the right choice never strictly the shortest or longest)."""
    yaml = pytest.importorskip("yaml")
    folder = ROOT / "examples" / "lm_eval"
    task = yaml.safe_load((folder / "nca_mc.yaml").read_text())
    assert task["output_type"] == "multiple_choice" and task["test_split"] == "test"
    assert (ROOT / task["dataset_kwargs"]["data_files"]["test"]) == folder / "items.jsonl"
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    assert len(items) == 40 and [i["id"] for i in items] == list(range(40))
    for item in items:
        choices, right = item["choices"], item["choices"][item["label"]]
        assert len(set(choices)) == 4 and item["context"].strip() == item["context"]
        others = [len(c) for c in choices if c != right]
        assert not len(right) < min(others) and not len(right) > max(others), item


def test_a_gpt2_export_without_the_bpe_file_is_refused_and_writes_nothing(tmp_path, capsys,
                                                                          monkeypatch):
    import data.common
    monkeypatch.setattr(data.common, "CACHE_DIR", tmp_path / "no-cache")     # never downloads
    tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="gpt2", vocab=50304)
    err = refused(capsys, export_hf.main, [str(tmp_path), str(tmp_path / "hf")])
    assert "gpt2.tiktoken is missing or corrupt: run python data/web/prepare.py" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
