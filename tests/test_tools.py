"""What users reach for around the method: sample.py (text, and a stage-1 model predicting
unseen NCA rules), the Hugging Face Llama export and import, reruns from config.json (--config),
--help, provenance, and optional wandb tracking. Every model here is tiny and built or trained
in the test; transformers, safetensors, Pillow and wandb are optional (the tests that need them
skip without them; wandb is replaced by a fake module, and run for real in offline mode when
installed)."""
import importlib.util
import json
import re
import subprocess
import sys
import time
import types
from dataclasses import asdict

import pytest
import torch

import dyck
import eval as ev
import guard
from scripts import hf
import nca
import sample
import train
from conftest import ROOT
from data.common import CACHE_DIR
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint
from util.log import CONSOLE_WIDTH, console_line, wandb_key

sys.path.insert(0, str(ROOT / "scripts"))
import export_hf  # noqa: E402
import nca_tools  # noqa: E402

MODEL = ["--size", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--seq_len", "80",
         "--device", "cpu", "--dtype", "float32", "--log_interval", "1", "--seed", "0"]
LANG = ["--stage", "lang", "--lang_tokens", "1280", "--batch_tokens", "320", "--micro_batch", "2",
        "--eval_interval", "2", "--eval_tokens", "320", "--lr", "1e-3"]


def random_bytes_corpus(folder):
    """A prepared byte-level folder (vocabulary 257: cheap heads) of random bytes."""
    from data.build import TokenWriter, write_dataset
    writers = {}
    for split, n in (("train", 4000), ("val", 1000)):
        writers[split] = TokenWriter(folder / f"{split}.bin")
        writers[split].write(torch.randint(0, 256, (n,)).numpy(), 1)
    write_dataset(folder, writers, {"source": "test", "domain": "tiny_bytes"}, tokenizer="bytes")
    return folder


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return random_bytes_corpus(tmp_path_factory.mktemp("data") / "tiny_bytes")


@pytest.fixture(scope="module")
def lang_run(tmp_path_factory, domain):
    out = tmp_path_factory.mktemp("runs") / "scratch"
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(out)])
    return out


def refused(capsys, main, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_checkpoint(path, vocab_kind="bytes", vocab=257, head_bias=False, nca_info=None,
                    block_size=64, seed=0, **shape):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab, head_bias=head_bias,
                          attn_dropout=0.0, **({"n_layer": 2, "n_head": 2, "n_embd": 32} | shape)))
    with torch.no_grad():                      # norms away from 1, so a mix-up would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ck = {"model": model.state_dict(), "model_args": asdict(model.config),
          "stage": "ppt" if head_bias else "lang", "config": {"arm": "scratch"},
          "vocab": {"kind": vocab_kind, "size": vocab}, "nca": nca_info, "step": 1, "tokens": 1}
    torch.save(ck, path)
    return model.eval(), ck


# ---------------------------------------------------------------- sample.py: text

def test_sample_text_continues_the_prompt_with_the_runs_tokenizer(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "prompt.txt").write_text("héllo")
    argv = ["--init_from", str(tmp_path), "--num_samples", "3", "--max_new_tokens", "7",
            "--device", "cpu", "--seed", "5"]
    texts = sample.main(argv + ["--start", "ab"])
    assert len(texts) == 3 and all(t.startswith("ab") for t in texts)
    assert sample.main(argv + ["--start", "ab"]) == texts            # same seed, same samples
    assert sample.main(argv + ["--start", "ab", "--seed", "6"]) != texts
    from_file = sample.main(argv + ["--start", f"FILE:{tmp_path / 'prompt.txt'}", "--top_k", "1"])
    assert from_file[0].startswith("héllo") and len(set(from_file)) == 1     # top-1: greedy


@pytest.mark.skipif(not (CACHE_DIR / "gpt2.tiktoken").exists(),
                    reason=".cache/gpt2.tiktoken absent: run python data/web/prepare.py first")
def test_sample_text_of_a_gpt2_run(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="gpt2", vocab=50304)   # more rows than ids
    texts = sample.main(["--init_from", str(tmp_path), "--start", "The meaning of",
                         "--num_samples", "2", "--max_new_tokens", "5", "--device", "cpu"])
    assert all(t.startswith("The meaning of") for t in texts)
    assert capsys.readouterr().out.count("---------------") == 2


def test_sample_refusals_are_one_line(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt.pt")
    base = ["--init_from", str(tmp_path), "--device", "cpu"]
    assert "--init_from RUN is needed" in refused(capsys, sample.main, [])
    assert "--temperature must be above 0" in refused(capsys, sample.main,
                                                      base + ["--temperature", "0"])
    assert "cannot read it as UTF-8" in refused(capsys, sample.main,
                                                base + ["--start", "FILE:/nonexistent"])
    assert "is a language model" in refused(capsys, sample.main, base + ["--out", "x.png"])
    (tmp_path / "empty").mkdir()
    assert "holds no ckpt.pt" in refused(capsys, sample.main,
                                         ["--init_from", str(tmp_path / "empty")])
    assert "not found" in refused(capsys, sample.main, ["--init_from", str(tmp_path / "no")])
    _, ck = tiny_checkpoint(tmp_path / "dyck.pt", vocab_kind="dyck", vocab=8)
    assert "'dyck' tokens" in refused(capsys, sample.main,
                                      ["--init_from", str(tmp_path / "dyck.pt")])


# ---------------------------------------------------------------- sample.py: stage-1 NCA rollouts

GEN = nca.NCAConfig(grid=4, patch=2, num_colors=2, seq_len=36)      # 6 grids of 6 tokens


def nca_checkpoint(path):
    info = {"config": asdict(GEN), "val_seeds": [11, 12, 13], "mask_delimiters": False}
    return tiny_checkpoint(path, vocab_kind="nca", vocab=GEN.vocab_size, head_bias=True,
                           nca_info=info, block_size=36)


class Predictor(torch.nn.Module):
    """A stand-in model whose next token is a function of the tokens so far."""

    def __init__(self, nxt):
        super().__init__()
        self.config = types.SimpleNamespace(block_size=36)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.nxt = nxt

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, GEN.vocab_size)
        for i in range(idx.shape[1]):
            logits[torch.arange(len(idx)), i, self.nxt(idx, i)] = 1.0
        return logits, None


def test_rollouts_line_up_with_the_true_grids_and_the_copy_predictors(tmp_path):
    """An oracle is right everywhere, teacher-forced and free-running; a model that copies the
    grid before scores exactly as 'copy previous' teacher-forced, and free-running it can only
    repeat the last context grid."""
    info = {"config": asdict(GEN), "val_seeds": [11, 12, 13]}
    true = nca.rollout(nca.make_rules(torch.tensor([11, 12, 13]), 2), nca.stream_key(
        torch.arange(3), 10, 7), GEN, 6)
    truth = nca.tokenize(true, GEN)
    oracle = Predictor(lambda idx, i: truth[:, i + 1])
    t, forced, free = sample.nca_rollouts(oracle, info, 3, 2, seed=7)
    assert torch.equal(t, true) and torch.equal(forced, true) and torch.equal(free, true)
    gl = GEN.grid_len
    copier = Predictor(lambda idx, i: idx[:, max(i + 1 - gl, 0)])
    _, forced, free = sample.nca_rollouts(copier, info, 3, 2, seed=7)
    assert torch.equal(forced[:, 1:], true[:, :-1])
    assert all(torch.equal(free[:, g], true[:, 1]) for g in range(2, 6))
    text, acc = sample.rollout_table(GEN, true, forced, free, 2)
    assert acc["teacher-forced"][1:] == acc["copy previous"][1:]
    assert acc["free-running"][2:] == acc["repeat context"][2:]
    assert acc["free-running"][:2] == [None, None] and "grids 2-5" in text


def test_sample_of_an_nca_checkpoint_prints_accuracy_and_draws(tmp_path, capsys):
    nca_checkpoint(tmp_path / "ckpt.pt")
    argv = ["--init_from", str(tmp_path), "--num_rules", "2", "--context_grids", "3",
            "--device", "cpu"]
    acc = sample.main(argv)
    out = capsys.readouterr().out
    assert "teacher-forced" in out and "copy previous" in out and "grids 3-5" in out
    assert set(acc) == {"teacher-forced", "free-running", "copy previous", "repeat context"}
    assert "leaves nothing to predict" in refused(capsys, sample.main,
                                                  argv[:4] + ["--context_grids", "6"])
    assert "a .png or a .gif" in refused(capsys, sample.main, argv + ["--out", "x.jpg"])
    if importlib.util.find_spec("PIL") is None:                      # Pillow is optional
        assert "needs Pillow" in refused(capsys, sample.main, argv + ["--out", "x.png"])
        return
    from PIL import Image
    for name in ("r.png", "r.gif"):
        sample.main(argv + ["--out", str(tmp_path / name)])
        with Image.open(tmp_path / name) as img:
            assert img.format == name[-3:].upper() and img.size[0] > 100
            assert getattr(img, "n_frames", 1) == (5 if name.endswith("gif") else 1)


# ---------------------------------------------------------------- Hugging Face Llama

def hf_names(state):
    return {re.sub(r"^blocks\.(\d+)\.", r"model.layers.\1.", k) for k in state}


def test_export_writes_a_llama_folder_and_imports_back(tmp_path, capsys):
    model, ck = tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="gpt2", vocab=300)
    export_hf.main([str(tmp_path), str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["head_dim"] == 16
    for key, want in (("rope_theta", 1e4), ("rms_norm_eps", 1e-6), ("intermediate_size", 128),
                      ("tie_word_embeddings", False), ("attention_bias", False),
                      ("mlp_bias", False), ("num_key_value_heads", 2)):
        assert config[key] == want, key
    assert any((tmp_path / "hf" / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))
    guard.peek(tmp_path / "hf", "--init_from", ("model", "model_args", "stage", "config"))
    back = load_checkpoint(tmp_path / "hf")
    assert back["vocab"] == {"kind": "gpt2", "size": 300} and back["stage"] == "ppt"
    assert back["model_args"] == ck["model_args"]
    for k, v in ck["model"].items():
        assert torch.equal(back["model"][k], v), k
    assert "is not empty (README.md)" in refused(capsys, export_hf.main,
                                                [str(tmp_path), str(tmp_path / "hf")])


def test_plain_llama_state_dicts_import_in_either_layout(tmp_path):
    """A Llama state dict beside its config.json: transformers' names, or the official code's
    (wte, layers, norm, output_proj with the stage-1 head bias), with DDP / compile prefixes."""
    _, ck = tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="nca", vocab=50, head_bias=True)
    config, _ = hf.to_hf(ck)
    official = {}
    for k, v in ck["model"].items():
        k = re.sub(r"^blocks\.(\d+)\.(.+)", lambda m: f"layers.{m[1]}." + hf.PER_BLOCK[m[2]], k)
        k = {"wte.weight": "wte.weight", "norm_f.weight": "norm.weight",
             "lm_head.weight": "output_proj.weight", "lm_head.bias": "output_proj.bias"}.get(k, k)
        official["module._orig_mod." + k] = v
    official["module._orig_mod.wpe.inv_freq"] = torch.ones(8)
    (tmp_path / "official").mkdir()
    torch.save(official, tmp_path / "official" / "model.pt")
    (tmp_path / "official" / "config.json").write_text(json.dumps(config))
    back = load_checkpoint(tmp_path / "official" / "model.pt")
    assert back["model_args"] == ck["model_args"] | {"attn_dropout": 0.0}
    model = model_from_checkpoint(back)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ck["model"].items())
    (tmp_path / "alone").mkdir()
    torch.save(official, tmp_path / "alone" / "model.pt")
    with pytest.raises(Exception, match="needs its config.json beside it"):
        load_checkpoint(tmp_path / "alone" / "model.pt")


def test_a_stage1_head_bias_is_refused_on_export(tmp_path, capsys):
    nca_checkpoint(tmp_path / "ckpt.pt")
    err = refused(capsys, export_hf.main, [str(tmp_path), str(tmp_path / "hf")])
    assert "has a bias" in err and not (tmp_path / "hf").exists()


def test_an_exported_folder_works_as_init_from(tmp_path, domain):
    _, ck = tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="gpt2", vocab=300)
    export_hf.main([str(tmp_path), str(tmp_path / "hf")])
    out = tmp_path / "run"
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--init_from", str(tmp_path / "hf"),
                               "--max_iters", "1", "--out_dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["arm"] == "hf" and config["init_from"] == str(tmp_path / "hf")
    lang = torch.load(out / "ckpt.pt", weights_only=True)
    assert lang["model_args"]["vocab_size"] == 257
    assert lines(out / "metrics.jsonl")[1]["kind"] == "val"


@pytest.mark.parametrize("shape", [dict(n_layer=2, n_head=2, n_embd=32, vocab=67),
                                   dict(n_layer=1, n_head=12, n_embd=768, vocab=50257)],
                         ids=["tiny", "gpt2-shaped"])
def test_transformers_gives_the_same_logits(tmp_path, shape):
    transformers = pytest.importorskip("transformers")
    shape = dict(shape)
    vocab = shape.pop("vocab")
    # (vocabulary kind "hf": no tokenizer to write, so no GPT-2 BPE file needed)
    model, _ = tiny_checkpoint(tmp_path / "ckpt.pt", vocab_kind="hf", vocab=vocab, **shape)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")])
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x)[0], theirs(x).logits)


# ---------------------------------------------------------------- --config: rerun from the record

def test_a_rerun_from_config_json_reproduces_the_run(lang_run, tmp_path):
    out = tmp_path / "again"
    train.main(["--config", str(lang_run / "config.json"), "--out_dir", str(out)])
    a, b = (json.loads((d / "config.json").read_text()) for d in (lang_run, out))
    assert {k: v for k, v in b["flags"].items() if k not in ("out_dir", "config")} == \
        {k: v for k, v in a["flags"].items() if k not in ("out_dir", "config")}
    strip = lambda rec: {k: v for k, v in rec.items() if k not in ("ms", "tok_s", "mfu")}
    assert [strip(r) for r in lines(out / "metrics.jsonl")] == \
        [strip(r) for r in lines(lang_run / "metrics.jsonl")]
    train.main(["--config", str(out / "config.json"), "--resume"])   # the run itself: done
    assert [strip(r) for r in lines(out / "metrics.jsonl")] == \
        [strip(r) for r in lines(lang_run / "metrics.jsonl")]


def test_flags_given_after_config_win(lang_run):
    args = train.parse_args(["--config", str(lang_run), "--lr", "5e-4", "--preset", "cpu"])
    assert args.lr == 5e-4 and args.seq_len == 256           # the preset, given here, wins too
    args = train.parse_args(["--config", str(lang_run / "config.json"), "--seed", "3"])
    assert (args.seed, args.seq_len, args.n_embd, args.lang_tokens) == (3, 80, 32, 1280)
    assert args.resume is False and args.config == str(lang_run / "config.json")


def test_config_records_that_cannot_rerun_are_refused(lang_run, tmp_path, capsys):
    record = json.loads((lang_run / "config.json").read_text())
    older = {k: v for k, v in record.items() if k not in ("flags", "provenance")}
    (tmp_path / "older.json").write_text(json.dumps(older))   # flags at the top level
    assert train.parse_args(["--config", str(tmp_path / "older.json")]).n_embd == 32
    for flags, want in (({"bogus": 1}, "'bogus' is not a train.py flag"),
                        ({"lr": "fast"}, "--lr 'fast' is not a number"),
                        ({"stage": "all"}, "is not one of ppt, lang, both"),
                        ({"debug_ranks": 1}, "is not true or false"),
                        ({"seed": None}, "(null)")):
        (tmp_path / "bad.json").write_text(json.dumps({"flags": flags}))
        assert want in refused(capsys, train.main, ["--config", str(tmp_path / "bad.json")])
    (tmp_path / "broken.json").write_text("{")
    assert "cannot read it" in refused(capsys, train.main, ["--config",
                                                            str(tmp_path / "broken.json")])


# ---------------------------------------------------------------- --help

HELP = [(train.main, []), (train.main, ["--preset", "cpu"]), (ev.main, []),
        (nca_tools.main, []), (dyck.main, []), (sample.main, []), (export_hf.main, [])]


@pytest.mark.parametrize("main, argv", HELP, ids=["train", "train-cpu", "eval", "nca_tools",
                                                  "dyck", "sample", "export_hf"])
def test_help_tells_the_truth(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert e.value.code == 0 and "(default: None)" not in flat
    assert not re.search(r"\(default:[^()]*\)\s*\(default:", flat), "a default printed twice"
    assert str(ROOT) not in text and "/root/" not in text and "/home/" not in text
    doc = sys.modules[main.__module__].__doc__
    last = " ".join(doc.strip().split("\n\n")[-1].split())
    assert last in flat                                          # the whole description
    if main is train.main:
        assert "--ppt_ckpt_interval 2500" in flat and "--band cpu-web" in flat   # the presets
        lr = re.search(r"--ppt_lr PPT_LR peak learning rate \(default: ([0-9.e-]+)\)", flat)
        assert float(lr[1]) == (2e-3 if argv else 1e-4)


# ---------------------------------------------------------------- provenance

def git_head():
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=30)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def test_provenance_in_config_json_eval_json_and_eval_md(lang_run, domain, tmp_path):
    p = json.loads((lang_run / "config.json").read_text())["provenance"]
    assert p["torch"] == torch.__version__ and p["device"].startswith("cpu")
    assert p["command"].startswith("python train.py --size tiny") and "--out_dir" in p["command"]
    assert p["git_commit"] == git_head() and p["git_dirty"] in ((True, False) if p["git_commit"]
                                                                 else (None,))
    ev.main([str(lang_run), "--domains", "", "--extra_data", str(domain), "--eval_tokens", "320",
             "--device", "cpu", "--out", str(tmp_path / "ev")])
    e = json.loads((tmp_path / "ev" / "eval.json").read_text())["provenance"]
    assert e["command"].startswith("python eval.py ") and e["torch"] == torch.__version__
    footer = (tmp_path / "ev" / "eval.md").read_text().strip().splitlines()[-1]
    assert f"torch {torch.__version__}" in footer and "`python eval.py " in footer
    assert (p["git_commit"] or "not a git checkout")[:12] in footer


# ---------------------------------------------------------------- optional tracking (wandb)

class FakeWandb(types.ModuleType):
    """wandb as train.py uses it, logged in (an API key stored by `wandb login`), keeping what
    it is given: each run's init arguments, config updates and logged dicts."""
    def __init__(self, api_key="fake-key"):
        super().__init__("wandb")
        self.runs, self.api = [], types.SimpleNamespace(api_key=api_key)

    def init(self, **kw):
        run = types.SimpleNamespace(kw=kw, logged=[], finished=False, constants={})
        run.log = lambda data, step: run.logged.append((step, data))
        run.finish = lambda: setattr(run, "finished", True)
        run.config = types.SimpleNamespace(update=lambda d, allow_val_change=False:
                                           run.constants.update(d))
        self.runs.append(run)
        return run


def test_wandb_gets_every_metrics_line(domain, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "tracked"
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(out),
                               "--wandb_project", "nca", "--wandb_run", "tiny"])
    (run,) = fake.runs
    assert run.finished and run.kw["project"] == "nca" and run.kw["name"] == "tiny"
    assert run.kw["dir"] == str(out) and run.kw["config"]["lr"] == 1e-3
    want = [(r["step"], {wandb_key(r["kind"], k): v for k, v in r.items() if k not in
                         ("step", "kind") and isinstance(v, (int, float))})
            for r in lines(out / "metrics.jsonl") if r["kind"] != "info"]
    assert run.logged == want and any("val/loss" in d for _, d in run.logged)


def wandb_records(path):
    """The protobuf records of a wandb transaction log (.wandb): a 7-byte file header, then
    32 KiB blocks of chunks, each with a 7-byte header (crc, length, type: 1 whole, 2 first,
    3 middle, 4 last). A record can straddle a block boundary, so its bytes are joined here."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, pos, parts = path.read_bytes(), 32768, 7, []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:                              # a block's zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):  # end, or mid-write
            break
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def test_real_wandb_offline_records_every_metrics_value(domain, tmp_path, monkeypatch):
    """With wandb installed (CI installs it as a test dependency), an offline run: every value of
    every metrics.jsonl line reaches wandb's own run file as a history item at its step, under
    the run's name."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "tracked"
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(out),
                               "--wandb_project", "nca", "--wandb_run", "tiny-offline"])
    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's writer process can finish the file a moment after run.finish() returns (seen on a
    # loaded machine: only the 7-byte header at first): wait for its closing "exit" record
    for _ in range(300):
        records = list(wandb_records(path))
        if records and records[-1].HasField("exit"):
            break
        time.sleep(0.1)
    assert any(r.run.display_name == "tiny-offline" for r in records if r.HasField("run"))
    logged = {}
    for r in records:
        if r.HasField("history"):
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in r.history.item}
            logged.setdefault(items["_step"], {}).update(items)
    rows = lines(out / "metrics.jsonl")
    assert rows and any("val_loss" in r for r in rows)
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "kind") and isinstance(v, (int, float)) and r["kind"] != "info":
                got = logged.get(r["step"], {}).get(wandb_key(r["kind"], k))
                assert got == pytest.approx(v, rel=1e-12), (r["step"], k, v, got, sorted(logged))


def test_tracking_flags_are_checked_up_front(domain, tmp_path, monkeypatch, capsys):
    argv = MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(tmp_path / "t")]
    monkeypatch.setitem(sys.modules, "wandb", None)              # not installed
    assert "needs wandb" in refused(capsys, train.main, argv + ["--wandb_project", "p"])
    assert "give the project too" in refused(capsys, train.main, argv + ["--wandb_run", "r"])
    assert not (tmp_path / "t").exists()


def test_preview_draws_the_band_the_flags_name(monkeypatch, tmp_path):
    """--preview with --band (or thresholds) draws that band (the cpu preset's cpu-web), not
    the four bands of the paper's figure."""
    drawn = []
    monkeypatch.setattr(nca_tools, "draw_preview", lambda path, cfg, bands, *a: drawn.append(bands))
    nca_tools.main(["--preview", str(tmp_path / "p.png"), "--band", "cpu-web"])
    nca_tools.main(["--preview", str(tmp_path / "p.png"), "--filter_rules_threshold", "0.3",
                    "--filter_rules_upper_bound", "0.4"])
    nca_tools.main(["--preview", str(tmp_path / "p.png")])
    assert drawn[0] == [("cpu-web", nca.BANDS["cpu-web"])]
    assert drawn[1] == [("0.3-0.4", (0.3, 0.4))]
    assert [name for name, _ in drawn[2]] == ["0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-1.0"]


def test_wandb_charts_train_and_val_apart_and_constants_in_the_config(domain, tmp_path,
                                                                       monkeypatch):
    """Tracking like the anchors: one wandb run per stage (NAME-ppt, NAME-lang), charts under
    train/ and val/, and the run's constants (micro-batch, accumulation, processes, memory
    estimate) in its config, not as charts."""
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(tmp_path / "t"),
                               "--wandb_project", "nca", "--wandb_run", "tiny"])
    (run,) = fake.runs
    keys = {k for _, d in run.logged for k in d}
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/icl_score"} <= keys
    assert all(k.startswith(("train/", "val/")) for k in keys), keys
    assert set(run.constants) == {"micro_batch", "accum", "world", "mem_estimate_gb"}
    assert not keys & {"micro_batch", "accum", "world", "mem_estimate_gb"}
    assert run.kw["job_type"] == "lang"


def test_validation_console_line_fits_120_columns():
    res = {"val_loss": 5.69634, "icl_score": -0.20903, "icl_se": 0.11,
           **{f"copy_{p}_{k}": 5.71 for p in ("text", "frequent", "uniform")
              for k in ("first", "second", "gain", "gain_se")},
           "token_acc": 0.123456, "grid_acc": 0.5, "copy_token_acc": 0.2, "lookup_grid_acc": 0.1}
    line = console_line("step 123456", res)
    assert len(line) <= CONSOLE_WIDTH and line.endswith(" …")
    assert line.startswith("step 123456 val_loss 5.6963 icl_score -0.2090 copy_text_gain")
    assert "_se " not in line and "_first" not in line
    assert console_line("step 1", {"val_loss": 2.0}) == "step 1 val_loss 2.0000"


def test_console_while_training_validation_shown_and_left_out_of_the_rate(domain, tmp_path,
                                                                         monkeypatch, capsys):
    """On a terminal: the bar says when validation and the probes run; its rate and ETA count
    training steps only (validation's time is taken out of its clock); every validation line
    fits 120 columns."""
    from tqdm import tqdm
    import util
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bars = []
    real = util.progress_bar

    def keep(*a, **k):
        bars.append(real(*a, **k))
        return bars[-1]
    monkeypatch.setattr(util.log, "progress_bar", keep)
    slow = train.validate

    def slow_validate(*a, **k):                   # validation takes 0.5 s more than it would
        time.sleep(0.5)
        return slow(*a, **k)
    monkeypatch.setattr(train, "validate", slow_validate)
    train.main(MODEL + LANG + ["--data_dir", str(domain), "--out_dir", str(tmp_path / "t")])
    out, err = capsys.readouterr()
    assert "lang: validating at step 2" in err                 # the bar, while it runs
    val = [l for l in (out + err).splitlines() if " val_loss " in l]
    assert len(val) == 3 and all(len(l.split("\r")[-1]) <= CONSOLE_WIDTH for l in val)
    (bar,) = [b for b in bars if isinstance(b, tqdm)]
    # three validations of >= 0.5 s each are not on the bar's clock: it ran its 4 steps in less
    elapsed = bar.last_print_t - bar.start_t
    assert elapsed < 1.5, elapsed
