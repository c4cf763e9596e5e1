"""Every device works the first time: the GPU check keeps what it measured (a failing step, a
killed run), its bit-identity verdict explains near-tie draws, torch.compile trains and gives
eager's gradients on CPU, NCA data for a device without float64 (Apple MPS) is made on the CPU,
and the Python and package preflights answer in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import nca
from conftest import ROOT
from model import GPT, GPTConfig

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

FAST = ["--device", "cpu", "--no-compile"]


# --- the GPU check keeps its results ---------------------------------------------------------

def test_a_failing_step_is_recorded_and_the_others_keep_their_figures(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("injected failure\nsecond line")
    monkeypatch.setattr(gpu_check, "bit_identity", broken)
    out = tmp_path / "cpu.json"
    res = gpu_check.main(FAST + ["--out", str(out), "--steps",
                                 "nca_generation,bit_identity,nca_share"])
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["nca_generation"]["tokens_per_s"] > 0
    assert on_disk["bit_identity"] == {"error": "RuntimeError: injected failure"}
    assert on_disk["steps"]["bit_identity"]["status"] == "error"
    assert on_disk["steps"]["nca_share"] == {"status": "skipped", "why": "needs stage1"}
    assert on_disk["targets"]["nca_tokens_per_s"]["measured"] > 0 and on_disk["running"] is None


def test_a_failing_compiled_run_reruns_without_compile(tmp_path, monkeypatch):
    calls = []

    def figures(argv, out_dir, device, log_interval):
        calls.append((argv[-1], out_dir.name))
        if "--compile" in argv:
            raise RuntimeError("BackendCompilerFailed: inductor said no")
        return {"tokens_per_s": 1.0}
    monkeypatch.setattr(gpu_check, "stage_figures", figures)
    res = gpu_check.run_stage([], tmp_path / "ppt", "cpu", 1, compile=True)
    assert calls == [("--compile", "ppt"), ("--no-compile", "ppt-eager")]
    assert res == {"tokens_per_s": 1.0, "compiled": False,
                   "compile_error": "RuntimeError: BackendCompilerFailed: inductor said no"}


def test_a_killed_dry_run_keeps_every_finished_step(tmp_path):
    """DEVICE=cpu bash scripts/gpu_check.sh, killed (SIGTERM, as `timeout` does) while stage 1
    trains: the JSON holds the steps before it and names the one killed."""
    out = tmp_path / "cpu.json"
    env = {**os.environ, "DEVICE": "cpu"}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--no-compile",
                             "--out", str(out), "--steps", "nca_generation,bit_identity,stage1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if out.exists() and json.loads(out.read_text())["running"] == "stage1":
                break
            time.sleep(0.2)
        time.sleep(1.0)                                   # well inside stage 1's training
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    res = json.loads(out.read_text())
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "keeps every step finished" in err and "Traceback" not in err
    assert res["nca_generation"]["tokens_per_s"] > 0 and res["bit_identity"]["identical"]
    assert res["steps"]["stage1"]["status"] == "killed"
    assert res["stage1"]["error"].startswith("Killed: killed by signal")


def test_unknown_step_is_one_line(capsys):
    with pytest.raises(SystemExit, match="unknown --steps stage3"):
        gpu_check.main(FAST + ["--steps", "stage1,stage3"])


# --- bit identity that reads right ----------------------------------------------------------

class Perturbed:
    """Rules whose logits are off by `size` (a deterministic function of the logits): what
    another device's float32 arithmetic does, made visible on CPU."""

    def __init__(self, params, size, bias=0.0):
        self.rules, self.size, self.bias = nca.make_rules(params=params), size, bias
        self.n, self.device = self.rules.n, self.rules.device

    def logits(self, state):
        z = self.rules.logits(state)
        z = z + self.size * torch.sin(z * 7919.0)
        z[:, 0] += self.bias
        return z


def test_near_tie_differences_are_explained_and_real_ones_fail():
    cfg = nca.NCAConfig()
    noisy = gpu_check.bit_identity("cpu", 48, lambda p: Perturbed(p, 2e-6))
    assert not noisy["identical"] and noisy["trajectories_differing"] >= 1
    assert noisy["ok"] and noisy["near_tie_differences"] == noisy["trajectories_differing"]
    d = noisy["differences"][0]
    assert d["reproduced"] and d["logit_diff"] <= 4e-6 and d["margin"] < 1e-1
    assert 0 <= d["step"] < cfg.init_rollout_steps + (cfg.frames - 1) * cfg.dT
    wrong = gpu_check.bit_identity("cpu", 48, lambda p: Perturbed(p, 0.0, bias=5e-3))
    assert not wrong["identical"] and not wrong["ok"]
    assert wrong["near_tie_differences"] < wrong["trajectories_differing"]
    assert wrong["max_logit_diff"] >= 5e-3


# --- torch.compile on CPU -------------------------------------------------------------------

def _cxx():
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++"))


@pytest.mark.skipif(not _cxx(), reason="torch.compile on CPU needs a C++ compiler (g++/clang++)")
def test_compiled_model_matches_eager_and_trains_without_recompiles(tmp_path):
    """The chunked loss (model.py's autograd.Function, 3 chunks) compiled by Inductor gives
    eager's loss and gradients in float32, for both stages' shapes; train.py --compile trains
    stage 1 (the same shapes, so its graph comes from the compile cache) and compiles nothing
    after its warm-up windows: one static training graph, one validation graph."""
    spec = gpu_check.SIZES["toy"]["compare"]
    res = gpu_check.compile_vs_eager("cpu", spec, ["float32"])
    for stage in ("stage1", "stage2"):
        got = res[stage]["compiled_float32"]
        assert res[stage]["loss_chunks"] == 3
        assert got["loss_rel_diff"] < 1e-5 and got["grad_max_rel_diff"] < 1e-4, (stage, got)
    assert res["ok"]
    shape = [str(spec[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "chunk")]
    argv = ["--stage", "ppt", "--device", "cpu", "--dtype", "float32", "--seed", "0",
            "--size", "tiny", "--attn_dropout", "0", "--ppt_vocab_size", "0", "--compile",
            *sum(zip(("--n_layer", "--n_head", "--n_embd", "--seq_len", "--loss_chunk"), shape),
                 ()),
            "--ppt_micro_batch", str(spec["micro"]),
            "--ppt_batch_tokens", str(spec["micro"] * spec["seq_len"]), "--max_iters", "6",
            "--log_interval", "2", "--ppt_eval_interval", "1000", "--train_num_rules", "16",
            "--val_num_rules", "2", "--ppt_val_seqs", "2"]
    run = gpu_check.stage_figures(argv, tmp_path / "ppt", "cpu", 2)
    assert run["graph"]["compiled"] and run["graph"]["dynamic"] is False
    assert run["graph"]["shape"] == [spec["micro"], spec["seq_len"]]
    assert run["graph"]["graphs_compiled"] >= 2 and run["graph"]["no_recompiles_after_warmup"]


# --- Apple MPS: no float64 -------------------------------------------------------------------

def test_nca_data_for_a_device_without_float64_is_made_on_the_cpu(monkeypatch):
    """The MPS path, forced on CPU: "meta" plays the device without float64 (nothing can be
    computed there, so any generation step on it would fail); batches, validation batches and
    the rule filter come out right, and the moved batches are the CPU's."""
    assert nca.generation_device("mps") == nca.generation_device("mps:0") == "cpu"
    assert nca.generation_device("cuda:1") == "cuda:1" and nca.generation_device("cpu") == "cpu"
    monkeypatch.setattr(nca, "NO_FLOAT64", ("mps", "meta"))
    cfg = nca.NCAConfig(seq_len=128)
    bank = nca.RuleBank(nca.seed_sequence(2, 0, 16).numpy(), np.zeros(16), (0.0, 1.0))
    moved = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and str(args[0]) == "meta":
            moved.append(self.clone())
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    x, y = next(nca.NCABatches(cfg, bank, 4, device="meta", seed=3))
    assert x.device.type == y.device.type == "meta" and x.shape == y.shape == (4, 128)
    want = next(nca.NCABatches(cfg, bank, 4, device="cpu", seed=3))
    assert torch.equal(moved[0][:4], want[0]) and torch.equal(moved[1][:4], want[1])
    (vx, vy), = nca.val_batches(cfg, bank.seeds[:4], 4, 4, device="meta")
    assert vx.device.type == "meta" and vx.shape == (4, 128)
    small = nca.NCAConfig(num_colors=4, grid=8)
    cpu = nca.filter_rules(small, (0.0, 1.0), 8, device="cpu", batch=64, cache=False,
                           progress=False)
    meta = nca.filter_rules(small, (0.0, 1.0), 8, device="meta", batch=64, cache=False,
                            progress=False)
    assert np.array_equal(cpu.seeds, meta.seeds)


def test_fused_adamw_only_where_it_exists():
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    for device, fused in (("cuda", True), ("cpu", True), ("mps", None)):
        opt = model.configure_optimizers(0.0, 1e-3, (0.9, 0.999), device_type=device)
        assert opt.defaults["fused"] == fused, device


# --- preflights: Python version, packages, python3 ------------------------------------------

def test_older_python_is_refused_in_one_line():
    r = subprocess.run([sys.executable, "-c", "import sys; sys.version_info = (3, 9, 18); "
                        "sys.path.insert(0, '.'); import train"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "error: Python 3.10 or newer is needed, this is Python 3.9\n"


def test_gpu_scripts_pick_the_first_python_with_torch(tmp_path):
    """A bare image: $PYTHON without packages, no python, a python3 with torch. The scripts pass
    over $PYTHON and use python3; when none imports torch it is one line naming what was tried."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYTHON": str(bare)}
    scripts = ("gpu_check.sh", "gpu_reproduce.sh")
    (bin_dir / "python3").symlink_to(sys.executable)
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "gpu_check.sh"), "--help"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "--time_limit" in r.stdout, r.stderr      # python3 ran it
    (bin_dir / "python3").unlink()
    (bin_dir / "python3").symlink_to(bare)
    for script in scripts:
        r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / script)], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: no Python with torch among $PYTHON={bare}, python, "
                                   "python3: pip install -r requirements.txt"), r.stderr


def test_gpu_check_sh_names_missing_packages(tmp_path):
    """A Python with torch but without another package: named in one line before anything runs."""
    hidden = tmp_path / "site"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import importlib.util as u\nfind = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'tiktoken' else find(name, *a)\n")
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True,
                       text=True, env={**os.environ, "PYTHON": sys.executable,
                                       "PYTHONPATH": str(hidden)})
    assert r.returncode != 0 and r.stderr == ("error: missing tiktoken: pip install tiktoken (or "
                                              "pip install -r requirements.txt)\n"), r.stderr


def test_training_compiles_with_static_shapes(monkeypatch):
    """util.wrap_model compiles with dynamic=False: a validation batch of another size, compiled
    first, must not turn the training graph's batch dimension dynamic."""
    import util
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(kw) or m)
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    fwd, val = util.wrap_model(model, True, {"world": 1, "device": "cpu"})
    assert fwd is val is model and seen == [{"dynamic": False}]
