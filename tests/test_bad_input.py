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
import train
from conftest import ROOT, make_domain
from data import build, common

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

# (id, script, argv with {w} = the world folder and {new} = a fresh folder, expected in the message)
CASES = [
    # sizes and intervals
    ("ppt_tokens_negative", "train", both("--ppt_tokens", "-1"), "--ppt_tokens must be at least 0 (0 = no stage 1), got -1"),
    ("lang_tokens_negative", "train", lang("--lang_tokens", "-1"), "--lang_tokens must be at least 0"),
    ("max_iters_negative", "train", lang("--max_iters", "-1"), "--max_iters must be at least 0"),
    ("batch_tokens_zero", "train", lang("--batch_tokens", "0"), "--batch_tokens must be at least 1"),
    ("ppt_batch_tokens_zero", "train", both("--ppt_batch_tokens", "0"), "--ppt_batch_tokens must be at least 1"),
    ("eval_interval_zero", "train", lang("--eval_interval", "0"), "--eval_interval must be at least 1"),
    ("ppt_eval_interval_zero", "train", both("--ppt_eval_interval", "0"), "--ppt_eval_interval must be at least 1"),
    ("log_interval_zero", "train", lang("--log_interval", "0"), "--log_interval must be at least 1"),
    ("seq_len_zero_stage2", "train", lang("--seq_len", "0"), "--seq_len must be at least 1"),
    ("micro_batch_negative", "train", lang("--micro_batch", "-2"),
     "--micro_batch must be at least 0 (0 = chosen from a memory estimate), got -2"),
    ("ppt_micro_batch_negative", "train", both("--ppt_micro_batch", "-1"), "--ppt_micro_batch must be at least 0"),
    ("micro_batch_larger_than_batch", "train", lang("--micro_batch", "8"), "is not a multiple of --micro_batch"),
    ("ppt_micro_batch_not_dividing", "train", both("--ppt_micro_batch", "3"), "is not a multiple of --ppt_micro_batch"),
    ("budget_below_one_batch", "train", lang("--lang_tokens", "100"), "less than one batch of 320"),
    ("one_epoch_below_one_batch", "train", lang("--lang_tokens", "0", "--batch_tokens", "8000", "--micro_batch", "100"),
     "less than one batch of 8,000"),
    ("seq_len_longer_than_data", "train", lang("--seq_len", "8000", "--micro_batch", "1", "--batch_tokens", "8000",
                                               "--lang_tokens", "8000"), "fewer than one sequence"),
    ("val_num_rules_zero", "train", nca_ppt("--val_num_rules", "0"), "--val_num_rules must be at least 1"),
    ("train_num_rules_below_micro_batch", "train", nca_ppt("--train_num_rules", "2"), "fewer than one micro-batch"),
    ("ppt_val_seqs_zero", "train", nca_ppt("--ppt_val_seqs", "0"), "--ppt_val_seqs must be at least 1"),
    ("lr_zero", "train", lang("--lr", "0"), "--lr must be above 0"),
    ("lr_nan", "train", lang("--lr", "nan"), "--lr must be above 0, got nan"),
    ("warmup_frac_above_one", "train", lang("--warmup_frac", "1.5"), "--warmup_frac must be from 0 to 1"),
    ("attn_dropout_one", "train", lang("--attn_dropout", "1"), "--attn_dropout must be at least 0 and below 1"),
    ("grad_clip_negative", "train", lang("--grad_clip", "-1"), "--grad_clip must be at least 0"),
    # model shape and vocabulary
    ("n_head_not_dividing_n_embd", "train", lang("--n_head", "3"), "n_embd 32 must be n_head 3 times"),
    ("odd_head_size", "train", lang("--n_head", "32"), "even head size"),
    ("n_layer_zero", "train", lang("--n_layer", "0"), "--n_layer must be at least 1"),
    ("vocab_size_not_a_number", "train", lang("--vocab_size", "abc"), "argument --vocab_size: expected auto or a whole number, got 'abc'"),
    ("vocab_size_below_data", "train", lang("--vocab_size", "100"), "--vocab_size 100 cannot index"),
    ("vocab_size_below_64k_data", "train", lang(data="vocab64k"), "cannot index"),
    ("ppt_vocab_size_below_source", "train", both("--ppt_vocab_size", "5"), "--dyck_k 4 needs 8 tokens (2k), more than the model vocabulary 5"),
    ("ppt_vocab_size_negative", "train", both("--ppt_vocab_size", "-1"), "--ppt_vocab_size must be at least 0"),
    ("num_colors_too_many", "train", nca_ppt("--num_colors", "100"), "--ppt_vocab_size"),
    ("grid_not_divisible_by_patch", "train", nca_ppt("--patch", "5"), "--grid 12 is not divisible by --patch 5"),
    ("empty_band", "train", nca_ppt("--filter_rules_threshold", "0.6", "--filter_rules_upper_bound", "0.4"), "empty complexity band"),
    ("dyck_k_zero", "train", both("--dyck_k", "0"), "--dyck_k must be at least 1"),
    # device and precision
    pytest.param("device_cuda_without_cuda", "train", lang("--device", "cuda"), "CUDA is not available", marks=no_cuda),
    ("device_unknown", "train", lang("--device", "gpu"), "--device 'gpu' is not a device"),
    ("float16_on_cpu", "train", lang("--dtype", "float16"), "--dtype float16 needs CUDA"),
    ("stage_unknown", "train", lang("--stage", "three"), "argument --stage: invalid choice"),
    ("int_flag_not_a_number", "train", lang("--batch_tokens", "1e3"), "argument --batch_tokens: invalid int value"),
    # flags that would be ignored, or that contradict each other
    ("reinit_layers_without_reinit", "train", lang("--reinit_layers", "0:1"), "--reinit_layers 0:1 needs --reinit"),
    ("freeze_layers_without_freeze", "train", lang("--freeze_layers", "0:1"), "--freeze_layers 0:1 needs --freeze"),
    ("reinit_unknown_kind", "train", lang("--reinit", "embeddings"), "unknown module kind 'embeddings'"),
    ("reinit_layers_outside_model", "train", both("--reinit", "mlp", "--reinit_layers", "0:9"), "outside the model's 2 layers"),
    ("stage2_flag_on_stage1", "train", nca_ppt("--reinit", "attn"), "--reinit is a stage-2 flag"),
    ("keep_embeddings_without_init_from", "train", lang("--keep_embeddings"), "--keep_embeddings needs --init_from"),
    ("keep_embeddings_with_nca_stage1", "train", both("--keep_embeddings"), "needs --ppt_source text"),
    ("keep_embeddings_vocab_mismatch", "train", both("--keep_embeddings", "--ppt_source", "text", "--ppt_data", "{w}/web",
                                                     "--ppt_vocab_size", "60000"), "same vocabulary in both stages"),
    ("keep_embeddings_non_text_checkpoint", "train", lang("--init_from", "{w}/run/ppt/ckpt.pt", "--keep_embeddings"),
     "--keep_embeddings needs a stage-1 model on GPT-2 tokens"),
    ("stage_ppt_without_budget", "train", nca_ppt("--ppt_tokens", "0"), "--stage ppt with --ppt_tokens 0 has nothing to train"),
    ("resume_and_overwrite", "train", lang("--resume", "--overwrite"), "--resume continues the run in out_dir and --overwrite replaces it"),
    # checkpoints: --init_from
    ("init_from_with_stage_both", "train", both("--init_from", "{w}/run/ppt/ckpt.pt"), "--init_from is for --stage lang"),
    ("init_from_missing", "train", lang("--init_from", "{w}/nowhere.pt"), "not found"),
    ("init_from_garbage", "train", lang("--init_from", "{w}/garbage.pt"), "cannot read checkpoint"),
    ("init_from_foreign_checkpoint", "train", lang("--init_from", "{w}/foreign.pt"), "is not a train.py checkpoint (no model)"),
    ("init_from_stage2_checkpoint", "train", lang("--init_from", "{w}/run/ckpt.pt"), "transfer needs a stage-1 (ppt) checkpoint"),
    ("init_from_other_n_embd", "train", lang("--init_from", "{w}/run/ppt/ckpt.pt", "--n_embd", "64"),
     "--n_embd asks for n_embd 64, but --init_from"),
    ("init_from_other_size", "train", ["--size", "mini", "--seq_len", "80", "--device", "cpu", "--dtype", "float32"] + LANG
     + ["--stage", "lang", "--data_dir", "{w}/web", "--out_dir", "{new}", "--init_from", "{w}/run/ppt/ckpt.pt"],
     "--size mini asks for n_layer 6, but --init_from"),
    ("init_from_other_source", "train", lang("--init_from", "{w}/run/ppt/ckpt.pt", "--ppt_source", "nca"),
     "was trained on dyck"),
    # run folders: --resume, --overwrite, the lock
    ("folder_holds_a_run", "train", both("--out_dir", "{w}/run"), "already holds a run"),
    ("resume_other_n_embd", "train", resume("--n_embd", "64"), "holds a model with n_embd 32, this command asks for n_embd 64"),
    ("resume_other_batch", "train", resume("--batch_tokens", "160"), "was trained with --batch_tokens 320"),
    ("resume_other_vocab", "train", resume("--vocab_size", "50304"), "holds a model with vocab_size 50257"),
    ("resume_scratch_as_transfer", "train", resume("--ppt_tokens", "0"), "is a transfer from stage 1, this command asks for a scratch run"),
    ("resume_wrong_stage", "train", MODEL + DYCK + ["--stage", "ppt", "--out_dir", "{w}/run", "--resume"], "is a 'lang'-stage checkpoint"),
    ("resume_corrupt_checkpoint", "train", lang("--out_dir", "{w}/resume_corrupt", "--resume"), "cannot read checkpoint"),
    ("folder_in_use_even_with_overwrite", "train", lang("--out_dir", "{w}/locked", "--overwrite"), "is in use by process"),
    # data folders
    ("data_missing", "train", lang(data="nowhere"), "meta.json is missing"),
    ("meta_json_null", "train", lang(data="meta_null"), "holds null, not the JSON object"),
    ("meta_json_broken", "train", lang(data="meta_broken"), "is not valid JSON"),
    ("meta_vocab_not_a_number", "train", lang(data="meta_vocab"), "has vocab_size='abc'"),
    ("meta_without_token_counts", "train", lang(data="meta_no_tokens"), "has no token counts"),
    ("meta_max_token_beyond_vocab", "train", lang(data="meta_big_id"), "has max_token=60000, expected a token id below vocab_size"),
    ("old_meta_ids_beyond_vocab", "train", lang(data="old_oov"), "holds token id 60,000, outside the model's vocabulary of 50,257"),
    ("token_file_truncated", "train", lang(data="truncated"), "truncated or stale"),
    ("ppt_text_data_missing", "train", both("--ppt_source", "text", "--ppt_data", "{w}/nowhere"), "meta.json is missing"),
    # eval.py
    ("eval_corrupt_config", "eval", ["{w}/eval_bad_config", "--domains", "", "--out", "{new}"], "config.json is not valid JSON"),
    ("eval_checkpoint_without_keys", "eval", ["{w}/eval_no_keys", "--domains", "", "--out", "{new}"], "is not a train.py checkpoint"),
    ("eval_checkpoint_garbage", "eval", ["{w}/garbage.pt", "--domains", "", "--out", "{new}"], "cannot read checkpoint"),
    ("eval_run_missing", "eval", ["{w}/nowhere", "--out", "{new}"], "ckpt.pt is missing"),
    pytest.param("eval_device_cuda_without_cuda", "eval", ["{w}/run", "--device", "cuda", "--out", "{new}"],
                 "CUDA is not available", marks=no_cuda),
    ("eval_batch_size_zero", "eval", ["{w}/run", "--batch_size", "0", "--out", "{new}"], "--batch_size must be at least 1"),
    ("eval_meta_json_null", "eval", ["{w}/run", "--domains", "", "--extra_data", "{w}/meta_null", "--out", "{new}"],
     "holds null"),
    ("eval_ids_beyond_model_vocab", "eval", ["{w}/run", "--domains", "", "--extra_data", "{w}/vocab64k", "--out", "{new}"],
     "holds token id 60,000, outside the 50,257-token vocabulary"),
    ("eval_out_exists", "eval", ["{w}/run", "--out", "{w}/eval_out"], "exists: pass --overwrite"),
    ("eval_int_flag_not_a_number", "eval", ["{w}/run", "--eval_tokens", "many"], "argument --eval_tokens: invalid int value"),
    # nca.py
    ("nca_stats_zero_rules", "nca", ["--stats", "--num_rules", "0"], "--num_rules must be at least 1"),
    pytest.param("nca_device_cuda_without_cuda", "nca", ["--stats", "--device", "cuda"], "CUDA is not available", marks=no_cuda),
    ("nca_num_colors_too_many", "nca", ["--stats", "--num_colors", "100"], "--ppt_vocab_size"),
    ("nca_int_flag_not_a_number", "nca", ["--grid", "abc"], "argument --grid: invalid int value"),
    ("nca_seq_len_too_short", "nca", ["--stats", "--seq_len", "10"], "must hold at least two grids"),
    # data/<domain>/prepare.py
    ("prepare_retries_negative", "prepare", ["--retries", "-1", "--out_dir", "{new}"], "--retries must be at least 0"),
    ("prepare_num_proc_zero", "prepare", ["--num_proc", "0", "--out_dir", "{new}"], "--num_proc must be at least 1"),
    ("prepare_val_fraction_one", "prepare", ["--val_fraction", "1", "--out_dir", "{new}"], "--val_fraction must be between 0 and 1"),
    ("prepare_max_tokens_not_a_number", "prepare", ["--max_tokens", "lots", "--out_dir", "{new}"], "argument --max_tokens"),
]


def never_called():
    raise AssertionError("a refused prepare.py must not read any document")


MAINS = {"train": train.main, "eval": ev.main, "nca": nca.main,
         "prepare": lambda argv: build.prepare_main("web", "test", never_called, {}, argv)}


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
    ("nca.py", ["--stats", "--num_rules", "0"], "--num_rules must be at least 1"),
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
import sys, ckpt
ckpt.lock_run_dir(sys.argv[1])
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
        raise train.UserError("stopped here")
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


def test_resume_at_step_0_logs_step_0_once(world, tmp_path, monkeypatch):
    argv = small_run(world, tmp_path / "r")

    def crash(*a, **k):                       # dies in step 1, after the step-0 checkpoint
        raise KeyboardInterrupt
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    monkeypatch.undo()
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
    with pytest.raises(common.DataError, match="has no max_token .* run python .*prepare.py .*"
                                              "downloaded shards in raw/ are reused"):
        common.max_token(folder)
