"""Bad input, table-driven: every case exits non-zero, prints exactly one line starting with
"error:" (no traceback, no usage block), and creates or changes nothing on disk. The bulk runs
in-process through each script's main(argv); a few run as real processes to show what a user
sees. Every refusal happens before a model is built, so the whole matrix takes seconds.

Beside the matrix: the run-folder lock (two processes, and a stale lock), resume at step 0, the
arm label and the shape recorded after --init_from, self-healing caches and meta.json checks.
(The Hub retries are tested against the fake Hub in test_data.py.)"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as ev
import nca
import sample
import train
from conftest import ROOT, make_domain
from dataclasses import asdict
from model import GPT, config_for
from data import cli, common
from util import UserError

sys.path.insert(0, str(ROOT / "scripts"))
import nca_tools  # noqa: E402

MODEL = ["--size", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--seq_len", "80",
         "--device", "cpu", "--dtype", "float32", "--log_interval", "1", "--seed", "0"]
DYCK = ["--ppt_source", "dyck", "--dyck_k", "4", "--ppt_tokens", "640", "--ppt_batch_tokens", "320",
        "--ppt_micro_batch", "4", "--ppt_vocab_size", "0", "--ppt_eval_interval", "2",
        "--ppt_val_seqs", "8", "--ppt_lr", "1e-3"]
LANG = ["--vocab_size", "50257", "--lang_tokens", "960", "--batch_tokens", "320", "--micro_batch", "2",
        "--eval_interval", "2", "--eval_tokens", "320", "--lr", "1e-3"]


def write_meta(folder, **changes):
    """Rewrite a prepared folder's meta.json with keys changed (None: removed)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good and bad inputs, built once: prepared folders, a real two-stage run, broken files."""
    w = tmp_path_factory.mktemp("bad_input")
    web = make_domain(w / "web")
    for name, text in (("meta_null", "null"), ("meta_broken", "{not json")):
        make_domain(w / name)
        (w / name / "meta.json").write_text(text)
    write_meta(make_domain(w / "meta_vocab"), vocab_size="abc")
    write_meta(make_domain(w / "meta_no_tokens"), tokens=None)
    write_meta(make_domain(w / "meta_big_id"), max_token=60000)        # says: ids beyond vocab
    old = make_domain(w / "old_oov")                     # meta.json from before max_token existed,
    ids = np.fromfile(old / "train.bin", dtype=np.uint16)              # and an id beyond vocab
    ids[100] = 60000
    ids.tofile(old / "train.bin")
    write_meta(old, max_token=None)
    trunc = make_domain(w / "truncated")
    with open(trunc / "train.bin", "r+b") as f:
        f.truncate(100)
    make_domain(w / "vocab64k", vocab=64000)
    write_meta(w / "vocab64k", vocab_size=64000, max_token=60000)
    make_domain(w / "small", vocab=512)                  # for the runs below: small, fast models
    write_meta(w / "small", vocab_size=512, eot=0)
    run = w / "run"
    train.main(MODEL + DYCK + LANG + ["--stage", "both", "--data_dir", str(web), "--out_dir", str(run),
                                      "--lang_tokens", "320"])
    (w / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, w / "foreign.pt")
    bad_cfg = w / "eval_bad_config"                       # a run folder whose config.json broke
    bad_cfg.mkdir()
    (bad_cfg / "ckpt.pt").symlink_to(run / "ckpt.pt")
    (bad_cfg / "config.json").write_text("{broken")
    no_keys = w / "eval_no_keys"
    no_keys.mkdir()
    torch.save({"config": {"stage": "lang"}, "step": 3}, no_keys / "ckpt.pt")
    corrupt = w / "resume_corrupt"                        # a run whose checkpoint is damaged
    corrupt.mkdir()
    (corrupt / "config.json").write_text((run / "config.json").read_text())
    (corrupt / "ckpt.pt").write_bytes(b"\0" * 64)
    locked = w / "locked"                                  # a folder a live process is using
    locked.mkdir()
    (locked / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    (w / "eval_out").mkdir()
    (w / "eval_out" / "eval.json").write_text("{}")
    stale = make_domain(w / "stale_max_token")     # ids changed by hand after prepare.py: the
    for split in ("train", "val"):                  # max_token in meta.json is stale
        ids = np.fromfile(stale / f"{split}.bin", dtype=np.uint16)
        ids[10] = 60000
        ids.tofile(stale / f"{split}.bin")
    broken = w / "run_bad_metrics"                  # a run with a garbage metrics line mid-file
    shutil.copytree(run, broken)
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    other = w / "run_other_domain"                  # the same model, recorded as trained elsewhere
    other.mkdir()
    (other / "ckpt.pt").symlink_to(run / "ckpt.pt")
    cfg = json.loads((run / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"domain": "math", "arm": "other"}))
    no_ckpt = w / "run_no_ckpt"                     # a run that has not saved a checkpoint yet
    no_ckpt.mkdir()
    for f in ("config.json", "metrics.jsonl"):
        (no_ckpt / f).write_bytes((run / f).read_bytes())
    ascii_cfg = config_for("tiny", n_layer=1, n_head=2, n_embd=32, vocab_size=128, block_size=64)
    torch.save({"model": GPT(ascii_cfg).state_dict(), "model_args": asdict(ascii_cfg),   # a byte
                "config": {"stage": "lang"}, "stage": "lang", "step": 0,    # model of ASCII text
                "vocab": {"kind": "bytes", "size": 128}}, w / "ascii.pt")
    return w


def snapshot(*roots):
    """Every file under the roots: size, mtime and (below 1 MB) a hash of the bytes."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if p.is_dir():
                out[str(p)] = "dir"
            else:
                st = p.stat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else ""
                out[str(p)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def lang(*extra, data="web"):
    return MODEL + LANG + ["--stage", "lang", "--data_dir", f"{{w}}/{data}", "--out_dir", "{new}",
                           *extra]


def both(*extra):
    return MODEL + DYCK + LANG + ["--stage", "both", "--data_dir", "{w}/web", "--out_dir", "{new}",
                                  *extra]


def nca_ppt(*extra):
    return MODEL + ["--stage", "ppt", "--ppt_tokens", "640", "--ppt_batch_tokens", "320",
                    "--ppt_micro_batch", "4", "--ppt_vocab_size", "0", "--train_num_rules", "16",
                    "--val_num_rules", "4", "--out_dir", "{new}", *extra]


def resume(*extra):
    return MODEL + DYCK + LANG + ["--stage", "both", "--data_dir", "{w}/web", "--out_dir", "{w}/run",
                                  "--resume", *extra]


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# The cases: tests/bad_input_cases.json, by group. Each is run with argv = the base command
# (lang, both, nca_ppt, resume; raw = none) + its args ($MODEL, $LANG, $DYCK spliced in), with {w}
# = the world folder and {new} = a fresh folder, and must fail with `expect` in its one line.
BASES = {"lang": lang, "both": both, "nca_ppt": nca_ppt, "resume": resume, "raw": lambda *a: list(a)}


def case_argv(c):
    args = [x for a in c["args"] for x in {"$MODEL": MODEL, "$LANG": LANG, "$DYCK": DYCK}.get(a, [a])]
    return lang(*args, data=c["data"]) if "data" in c else BASES[c["base"]](*args)


CASES = [pytest.param(c["id"], c["script"], case_argv(c), c["expect"], id=c["id"],
                      marks=[no_cuda] if c.get("no_cuda") else [])
         for group in json.loads((Path(__file__).parent / "bad_input_cases.json").read_text()).values()
         for c in group]


def never_called():
    raise AssertionError("a refused prepare.py must not read any document")


MAINS = {"train": train.main, "eval": ev.main, "nca": nca_tools.main, "sample": sample.main,
         "prepare": lambda argv: cli.prepare_main("web", "test", never_called, {}, argv)}


@pytest.mark.parametrize("case, script, argv, expect", CASES)
def test_bad_input(world, case, script, argv, expect, capsys):
    argv = [a.replace("{w}", str(world)).replace("{new}", str(world / "new" / case)) for a in argv]
    before = snapshot(world, nca.CACHE_DIR)
    with pytest.raises(SystemExit) as e:
        MAINS[script](argv)
    out, err = capsys.readouterr()
    code = e.value.code
    if isinstance(code, str):           # sys.exit("error: ..."): Python prints it, exit status 1
        err, code = err + code + "\n", 1
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert out == "" or script == "prepare", out          # nothing printed before the refusal
    assert snapshot(world, nca.CACHE_DIR) == before       # nothing created, changed or removed


SUBPROCESS_CASES = [  # the same refusals as a user sees them: a real process, its exit status
    ("train.py", lang(data="meta_null"), "holds null"),
    ("eval.py", ["{w}/eval_bad_config", "--domains", "", "--out", "{new}"], "config.json is not valid JSON"),
    ("scripts/nca_tools.py", ["--stats", "--num_rules", "0"], "--num_rules must be at least 1"),
    ("train.py", lang("--out_dir", "{w}/not-utf8-\udcff"), "is not valid UTF-8"),  # bytes b"\xff"
    ("eval.py", ["{w}/run", "--out", "{w}/garbage.pt"], "is a file, not a folder"),
]


@pytest.mark.parametrize("script, argv, expect", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(world, script, argv, expect):
    argv = [a.replace("{w}", str(world)).replace("{new}", str(world / "new" / script)) for a in argv]
    before = snapshot(world)
    r = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and expect in r.stderr, r.stderr
    assert snapshot(world) == before


# ---------------------------------------------------------------- the run-folder lock

HOLDER = """
import sys, guard
guard.lock_run_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def small_run(world, out, *extra):
    """argv of a fast stage-2 run on the 512-token corpus (the matrix's run has 50,257 classes)."""
    return [a.replace("{w}", str(world)).replace("{new}", str(out))
            for a in lang("--vocab_size", "512", *extra, data="small")]


def test_lock_refuses_a_second_process_and_a_killed_one_goes_stale(world, tmp_path, capsys):
    out = tmp_path / "run"
    argv = small_run(world, out, "--lang_tokens", "320")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit):
            train.main(argv + ["--overwrite"])
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and f"in use by process {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]        # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)         # dies holding the lock, as a killed run would
        holder.wait()
    train.main(argv + ["--overwrite"])
    err = capsys.readouterr().err
    assert f"left by process {holder.pid}, which is no longer running" in err
    assert (out / "ckpt.pt").exists() and not (out / ".lock").exists()   # released at the end


def test_a_failed_run_leaves_no_lock_and_no_empty_folder(world, tmp_path, monkeypatch, capsys):
    argv = small_run(world, tmp_path / "run")

    def fails(*a, **k):                       # e.g. a rule filter that finds too few rules
        raise UserError("stopped here")
    monkeypatch.setattr(train, "lang_model", fails)
    with pytest.raises(SystemExit):
        train.main(argv)
    assert "error: stopped here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- what is recorded

def test_init_from_records_the_checkpoint_shape_and_source(world, tmp_path):
    """No architecture flags: the checkpoint's shape trains, and config.json says so."""
    out = tmp_path / "t"
    train.main(["--device", "cpu", "--dtype", "float32", "--seq_len", "80"] + LANG + [
        "--stage", "lang", "--data_dir", str(world / "small"), "--vocab_size", "512",
        "--out_dir", str(out), "--init_from", str(world / "run" / "ppt" / "ckpt.pt"),
        "--lang_tokens", "320"])
    cfg = json.loads((out / "config.json").read_text())
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"]) == (2, 2, 32) == \
        tuple(ck["model_args"][k] for k in ("n_layer", "n_head", "n_embd"))
    assert cfg["arm"] == "dyck" and cfg["ppt_source"] == "dyck"     # what actually ran


def test_arm_is_scratch_without_a_stage_1(world, tmp_path):
    out = tmp_path / "s"
    train.main(MODEL + DYCK + LANG + ["--stage", "both", "--ppt_tokens", "0", "--lang_tokens", "320",
                                      "--data_dir", str(world / "small"), "--vocab_size", "512",
                                      "--out_dir", str(out)])
    assert json.loads((out / "config.json").read_text())["arm"] == "scratch"
    assert not (out / "ppt").exists()


def test_resume_at_step_0_logs_step_0_once(world, tmp_path, monkeypatch, capsys):
    argv = small_run(world, tmp_path / "r")

    def crash(*a, **k):                       # dies in step 1, after the step-0 checkpoint
        raise KeyboardInterrupt
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash)
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    monkeypatch.undo()
    assert e.value.code == 130
    assert capsys.readouterr().err == ("interrupted at step 0 of lang; --resume continues from "
                                       "step 0\n")
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)["step"] == 0
    assert not (tmp_path / "r" / ".lock").exists()
    train.main(argv + ["--resume"])
    val = [json.loads(l)["step"] for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
           if json.loads(l)["kind"] == "val"]
    assert val == [0, 2, 3]


# ---------------------------------------------------------------- caches heal themselves

def test_corrupt_rule_bank_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nca, "CACHE_DIR", tmp_path)
    cfg = nca.NCAConfig(seq_len=80)
    bank = nca.filter_rules(cfg, (0.0, 1.0), 4, batch=64, progress=False)
    (cached,) = tmp_path.glob("bank-*.npz")
    for damage in (b"garbage", cached.read_bytes()[:100]):       # not a zip; truncated
        cached.write_bytes(damage)
        again = nca.filter_rules(cfg, (0.0, 1.0), 4, batch=64, progress=False)
        assert np.array_equal(again.seeds, bank.seeds)
        assert f"rule-bank cache {cached} is unreadable" in capsys.readouterr().err
        assert np.array_equal(np.load(cached)["seeds"], bank.seeds)    # rewritten, readable
    nca.filter_rules(cfg, (0.0, 1.0), 4, batch=64, progress=False)
    assert capsys.readouterr().err == ""                               # healthy: used silently


def test_corrupt_tokenizer_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    sdist = common.CACHE_DIR / "pip" / common.PINNED["openai-whisper"][1]
    if not sdist.exists():
        pytest.skip("the pinned openai-whisper sdist is not cached (tests never download)")
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / sdist.name).symlink_to(sdist)
    monkeypatch.setattr(common, "CACHE_DIR", tmp_path)
    (tmp_path / "gpt2.tiktoken").write_bytes(b"damaged")
    path = common.gpt2_bpe_path()
    assert common.sha256_file(path) == common.GPT2_SHA256
    assert "gpt2.tiktoken fails its sha256 check: rebuilding it" in capsys.readouterr().err


# ---------------------------------------------------------------- meta.json

def test_meta_records_max_token_and_accepts_any_tokenizer(tmp_path):
    folder = make_domain(tmp_path / "web", n_train=500, n_val=100)
    ids = np.concatenate([np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert common.load_meta(folder)["max_token"] == int(ids.max()) == common.max_token(folder)
    write_meta(folder, tokenizer="bytes", vocab_size=int(ids.max()) + 1, eot=0)   # any tokenizer
    assert common.load_meta(folder)["tokenizer"] == "bytes"
    write_meta(folder, max_token=None)                        # an older folder: scanned
    assert common.max_token(folder) == int(ids.max())


def test_large_old_folder_asks_for_prepare_instead_of_scanning(tmp_path, monkeypatch):
    folder = make_domain(tmp_path / "web", n_train=500, n_val=100)
    write_meta(folder, max_token=None, source="hf")
    monkeypatch.setattr(common, "SCAN_LIMIT", 100)
    with pytest.raises(UserError, match="has no max_token .* run python .*prepare.py .*"
                                              "downloaded shards in raw/ are reused"):
        common.max_token(folder)
