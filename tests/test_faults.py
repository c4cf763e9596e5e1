"""Faults, in the style of test_bad_input.py: a write that fails (disk full, a file-size limit, a
read-only folder), Ctrl-C, a lock left empty, a finished run resumed, training that dies, litter of
interrupted writes, eval.json and eval.md out of step. Each exits as documented with one line and
no traceback, and the files that must survive are hashed before and after.

Disk full and read-only are simulated by monkeypatching (a real read-only folder needs a non-root
user: chmod is skipped as root), the file-size limit by resource.setrlimit(RLIMIT_FSIZE) in a real
process (Python ignores SIGXFSZ, so the write fails with EFBIG), Ctrl-C by SIGINT to a real one."""
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import eval as ev
import guard
import train
import util
import util.log
from conftest import ROOT, make_domain
from test_bad_input import LANG, MODEL, snapshot
from util import UserError
from util.runs import eval_pair_mismatch

DEAD_PID = 99_999_999                          # above any pid_max: no such process


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A byte-level corpus (257 classes: cheap heads) and a finished one-step run on it (stage 2
    only: fast)."""
    w = tmp_path_factory.mktemp("faults")
    make_domain(w / "small", vocab=256, tokenizer="bytes")
    train.main(run_argv(w, w / "done"))
    return w


def run_argv(w, out, *extra, tokens=320):
    return MODEL + LANG + ["--stage", "lang", "--data_dir", str(w / "small"), "--vocab_size", "257",
                           "--out_dir", str(out), "--lang_tokens", str(tokens), *extra]


def copy_run(small, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for f in ("config.json", "metrics.jsonl", "ckpt.pt"):
        (out / f).write_bytes((small / "done" / f).read_bytes())
    return out


def one_error_line(err, expect):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert "Traceback" not in err


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- writes that fail

def test_file_size_limit_while_saving_a_checkpoint(small, tmp_path):
    """A real process under ulimit -f: the checkpoint write stops short (torch's "unexpected
    pos"); one line says "file too large", the previous checkpoint and nothing else is left."""
    out = copy_run(small, tmp_path)
    before = digest(out / "ckpt.pt")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000));"
            f"sys.argv[1:] = {run_argv(small, out, '--resume', tokens=960)!r};"
            "import runpy; runpy.run_path('train.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, f"cannot write {out / 'ckpt.pt'}: file too large")
    assert "is unchanged" in r.stderr
    assert digest(out / "ckpt.pt") == before
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "config.json", "metrics.jsonl"]


@pytest.mark.parametrize("fault", ["ENOSPC", "torch"])
def test_disk_full_while_saving_a_checkpoint(small, tmp_path, monkeypatch, capsys, fault):
    out = copy_run(small, tmp_path)
    before = digest(out / "ckpt.pt")
    real_save = torch.save

    def full(obj, path, *a, **k):                  # writes part of the file, then fails
        Path(path).write_bytes(b"\0" * 100)
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(util.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
    with pytest.raises(SystemExit) as e:
        train.main(run_argv(small, out, "--resume", tokens=960))
    monkeypatch.setattr(torch, "save", real_save)
    assert e.value.code == 2
    one_error_line(capsys.readouterr().err, f"cannot write {out / 'ckpt.pt'}: the disk is full; ")
    assert digest(out / "ckpt.pt") == before
    assert not list(out.glob("*.tmp*"))


def test_disk_full_while_appending_a_metrics_line(small, tmp_path, monkeypatch, capsys):
    def full(self, rec):
        raise util.write_failure(self.path, OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(util.log.Log, "write", full)
    with pytest.raises(SystemExit):
        train.main(run_argv(small, tmp_path / "r"))
    one_error_line(capsys.readouterr().err, "metrics.jsonl: the disk is full")


def test_os_errors_in_plain_words_through_cli(capsys):
    @util.cli
    def main(code):
        raise OSError(code, os.strerror(code), "/runs/x")
    for code, words in ((errno.EROFS, "the file system is read-only"),
                        (errno.ENOTDIR, "a part of the path is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            main(code)
        assert e.value.code == 2
        assert capsys.readouterr().err == f"error: /runs/x: {words}\n"
    with pytest.raises(ConnectionResetError):       # not a user's fault: a traceback stays
        main(errno.ECONNRESET)


def test_atomic_write_failures_name_the_path_and_the_cause(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match=r"cannot write .*f/x.json: a part of the path is a file"):
        util.atomic_write(tmp_path / "f" / "x.json", "{}")
    (tmp_path / "keep.json").write_text("old")

    def refuse(tmp):
        raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(UserError, match=r"keep.json: the file system is read-only; .* unchanged"):
        util.atomic_write(tmp_path / "keep.json", refuse)
    assert (tmp_path / "keep.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "keep.json"]


# ---------------------------------------------------------------- outputs checked up front

def read_only_probes(monkeypatch):
    """check_writable's probe file cannot be created: the place reads as a read-only file system."""
    real_open = os.open

    def read_only(path, *a, **k):
        if Path(path).name.startswith(".probe."):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(util.os, "open", read_only)


def test_read_only_out_dir_is_refused_before_anything_runs(small, tmp_path, monkeypatch, capsys):
    read_only_probes(monkeypatch)
    built = []
    monkeypatch.setattr(train, "lang_model", lambda *a: built.append(1))
    with pytest.raises(SystemExit):
        train.main(run_argv(small, tmp_path / "ro" / "run"))
    one_error_line(capsys.readouterr().err, f"cannot write in {tmp_path}: the file system is "
                   "read-only: choose another --out_dir")
    assert not built and not (tmp_path / "ro").exists()


def test_read_only_folder_with_chmod(small, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        for main, argv in ((train.main, run_argv(small, ro / "run")),
                           (ev.main, [str(small / "done"), "--domains", "", "--out", str(ro)])):
            with pytest.raises(SystemExit):
                main(argv)
            one_error_line(capsys.readouterr().err, "permission denied")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_is_one_line_naming_the_step_to_resume_from(small, tmp_path):
    out = tmp_path / "run"
    argv = run_argv(small, out, "--ckpt_interval", "4", "--eval_interval", "1000", tokens=320 * 400)
    # SIGINT as a terminal sends it, even when these tests run in a background job (where the
    # shell starts children with SIGINT ignored, and Python then never raises KeyboardInterrupt)
    p = subprocess.Popen([sys.executable, "-u", "train.py", *argv], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:
            if line.startswith("step 6 "):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    m = re.fullmatch(r"interrupted at step (\d+) of lang; --resume continues from step (\d+)\n",
                     err)
    assert m, err
    step, saved = int(m[1]), int(m[2])
    assert step >= 6 and saved == step // 4 * 4
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == saved
    assert not (out / ".lock").exists() and not list(out.glob("*.tmp*"))


# ---------------------------------------------------------------- refusals and resumes change nothing

def test_resuming_a_finished_run_changes_no_file(small, tmp_path, capsys):
    out = copy_run(small, tmp_path)
    before = snapshot(out)
    train.main(run_argv(small, out, "--resume"))
    assert "lang in " in capsys.readouterr().out
    assert snapshot(out) == before


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not a pid"])
def test_an_old_empty_or_garbled_lock_is_taken_over(small, tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_bytes(content)      # what a crash between create and write leaves
    old = time.time() - 60
    os.utime(out / ".lock", (old, old))
    train.main(run_argv(small, out))
    err = capsys.readouterr().err
    assert "stopped while starting (the lock is empty or unreadable): taking the folder over" in err
    assert "keeps changing" not in err
    assert (out / "ckpt.pt").exists() and not (out / ".lock").exists()


def test_a_fresh_empty_lock_is_given_time_then_taken_over(small, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(guard, "LOCK_GRACE_S", 0.5)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")
    t0 = time.time()
    train.main(run_argv(small, out))
    assert time.time() - t0 > 0.5
    assert "taking the folder over" in capsys.readouterr().err


# ---------------------------------------------------------------- dead training

def test_dead_training_stops_and_keeps_the_checkpoint_from_before(small, tmp_path, monkeypatch,
                                                                    capsys):
    """The gradient norm exactly 0 at every step from step 1 (as a huge learning rate without
    clipping gives): the run stops after util.log.DEAD_LINES log lines, with step 0's checkpoint."""
    out = tmp_path / "dead"
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, c: torch.zeros(()))
    with pytest.raises(SystemExit) as e:
        train.main(run_argv(small, out, "--eval_interval", "2", tokens=320 * 20))
    assert e.value.code == 2
    one_error_line(capsys.readouterr().err, f"training of lang is dead at step "
                   f"{util.log.DEAD_LINES}: over the last {util.log.DEAD_LINES} log lines the gradient "
                   "norm was 0")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 0
    assert not (out / ".lock").exists()


def test_a_loss_stuck_at_the_uniform_level_is_dead_and_a_learning_one_is_not():
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(block_size=8, vocab_size=512, n_layer=1, n_head=1, n_embd=8))
    log = util.log.Log("lang", Path("unused"), False, model, 8, "cpu", 1, 0)
    log.bar = util.PlainProgress(10, "lang")
    uniform = float(torch.log(torch.tensor(512.0)))
    for step in range(1, 20):                      # near ln(V), but learning: never dead
        log.check_alive(step, uniform + 0.2 - 0.01 * step, 1.0)
    assert log.healthy
    for step in range(1, util.log.DEAD_LINES):
        log.check_alive(step, uniform + 1e-5, 0.3)
    assert not log.healthy
    with pytest.raises(UserError, match="the loss sat at ln\\(512\\) = 6.238, the uniform guess"):
        log.check_alive(util.log.DEAD_LINES, uniform, 0.3)


# ---------------------------------------------------------------- nothing left behind

def test_temporaries_of_an_interrupted_write_are_removed_by_the_next_run(small, tmp_path, capsys):
    out = copy_run(small, tmp_path)
    litter = [out / f"ckpt.{DEAD_PID}.tmp.pt", out / f"config.{DEAD_PID}.tmp.json"]
    for p in litter:
        p.write_bytes(b"\0" * 1000)                 # what kill -9 inside a write leaves
    mine = out / f"notes.{os.getpid()}.tmp.txt"     # a live process's temporary stays
    mine.write_text("x")
    train.main(run_argv(small, out, "--resume", tokens=640))
    assert not any(p.exists() for p in litter) and mine.exists()
    assert f"removed {litter[0]}, left by an interrupted write" in capsys.readouterr().err


def test_eval_json_and_md_belong_together(small, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    (out / f"eval.{DEAD_PID}.tmp.json").write_text("{")
    argv = [str(small / "done"), "--domains", "", "--extra_data", str(small / "small"),
            "--eval_tokens", "160", "--out", str(out)]
    first = ev.main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md"]
    md = (out / "eval.md").read_text()
    assert f"eval id {first['id']} (eval.json in this folder holds the same id)" in md.splitlines()
    assert eval_pair_mismatch(out) is None
    real = ev.atomic_write

    def killed_before_md(path, data):             # a kill between the two renames
        if Path(path).name == "eval.md":
            raise KeyboardInterrupt
        real(path, data)
    monkeypatch.setattr(ev, "atomic_write", killed_before_md)
    with pytest.raises(SystemExit):
        ev.main(argv + ["--overwrite"])
    monkeypatch.undo()
    second = json.loads((out / "eval.json").read_text())["id"]       # the record: written first
    assert second != first["id"]
    assert "is not from the evaluation in eval.json" in eval_pair_mismatch(out)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        ev.main(argv)
    one_error_line(capsys.readouterr().err, "exists: pass --overwrite to replace it, or another "
                   "--out (and note: eval.md (id ")
    assert eval_pair_mismatch(out) is None                # eval.md made again from eval.json
    assert f"eval id {second} " in (out / "eval.md").read_text()


def test_prepare_on_a_full_disk_keeps_the_old_folder_and_sweeps_litter(tmp_path, monkeypatch,
                                                                        capsys):
    from data import build, cli
    docs = [f"document {i} " * 20 for i in range(40)]
    argv = ["--out_dir", str(tmp_path / "web")]
    cli.prepare_main("web", "test", lambda: (docs, {}), {}, argv)
    before = snapshot(tmp_path / "web")
    litter = tmp_path / "web" / f"train.bin.{DEAD_PID}.tmp"       # a killed run's token file
    litter.write_bytes(b"\0" * 1000)
    real_write = build.TokenWriter.write

    def full(self, tokens, n_docs):
        real_write(self, tokens[:10], 0)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(build.TokenWriter, "write", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.prepare_main("web", "test", lambda: (docs, {}), {}, argv)
    assert str(e.value.code).startswith(f"error: cannot write {tmp_path / 'web'}: the disk is full")
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(tmp_path / "web") == before                  # litter gone, the rest intact


# ---------------------------------------------------------------- tracking fails early (#34 C)

def test_wandb_that_cannot_import_or_is_not_logged_in_is_refused_before_the_run_folder(
        small, tmp_path, monkeypatch, capsys):
    """--wandb_project with a wandb whose import raises anything (a broken install: here a
    RuntimeError), or that is not logged in: one line before the run folder exists, so the
    corrected command runs as given (no --overwrite needed). No network: fake modules."""
    out = tmp_path / "tracked"
    argv = run_argv(small, out, "--wandb_project", "p")
    broken = tmp_path / "site" / "wandb"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('protobuf 3 is too old\\nmore')\n")
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    one_error_line(capsys.readouterr().err, "importing wandb failed (RuntimeError: protobuf 3 is "
                   "too old): reinstall it")
    assert not out.exists()
    logged_out = SimpleNamespace(api=SimpleNamespace(api_key=None), init=None)
    monkeypatch.setitem(sys.modules, "wandb", logged_out)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(SystemExit):
        train.main(argv)
    one_error_line(capsys.readouterr().err, "wandb is not logged in here: run `wandb login`")
    assert not out.exists()
    train.main(run_argv(small, out))             # the corrected command: nothing in its way
    assert (out / "ckpt.pt").exists()


# ---------------------------------------------------------------- an evaluation killed mid-write (#34 D)

KILL_AT_RENAME = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import eval as ev
n, real = int(sys.argv[2]), os.replace

def replace(src, dst):          # SIGKILL at the n-th rename of an output (0: before the first)
    global n
    if os.path.basename(dst) in ("eval.json", "eval.md"):
        if n == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        n -= 1
    real(src, dst)
os.replace = replace
ev.main(sys.argv[3:])
"""


@pytest.mark.parametrize("fresh", [False, True], ids=["over-an-old-pair", "fresh-folder"])
def test_an_evaluation_killed_while_writing_leaves_a_pair(small, tmp_path, fresh):
    """SIGKILL (a real one, in a real process) at each point of eval.py's writes: before the
    first rename (its temporary written), between the two, after both. Then the folder holds
    the old pair or the new one, never a mix: at once, or as soon as the next eval.py looks at
    it (here one refused for lack of --overwrite), which makes eval.md again from eval.json."""
    argv = [str(small / "done"), "--domains", "", "--extra_data", str(small / "small"),
            "--eval_tokens", "160", "--device", "cpu"]
    for kill_at in (0, 1, 2):
        out = tmp_path / f"ev{kill_at}"
        old = None if fresh else ev.main(argv + ["--out", str(out)])["id"]
        r = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(ROOT), str(kill_at),
                            *argv, "--out", str(out), "--overwrite"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == (-signal.SIGKILL if kill_at < 2 else 0), r.stderr
        if (out / "eval.json").exists():
            with pytest.raises(SystemExit):                   # the next evaluation looks
                ev.main(argv + ["--out", str(out)])
        names = sorted(p.name for p in out.iterdir()) if out.exists() else []
        if fresh and kill_at == 0:
            assert "eval.json" not in names and "eval.md" not in names    # nothing, or litter
            continue
        assert {"eval.json", "eval.md"} <= set(names) and eval_pair_mismatch(out) is None
        record = json.loads((out / "eval.json").read_text())
        assert (out / "eval.md").read_text() == ev.eval_text(record) + "\n"
        assert (record["id"] == old) == (kill_at == 0), (kill_at, record["id"], old)


# ---------------------------------------------------------------- a deleted config.json (#34 D)

@pytest.mark.parametrize("tokens", [320, 640], ids=["finished", "unfinished"])
def test_a_run_whose_config_json_was_deleted_gets_it_back_on_resume(small, tmp_path, capsys,
                                                                     tokens):
    """--resume of a run without its config.json writes it back: a finished run (nothing to run)
    from its checkpoint's record, byte for byte the file it lost; an unfinished one as it
    resumes. eval.py, --config and --resume read it."""
    out = copy_run(small, tmp_path)
    before = (out / "config.json").read_text()
    (out / "config.json").unlink()
    train.main(run_argv(small, out, "--resume", tokens=tokens))
    assert (out / "config.json").exists()
    if tokens == 320:
        assert (out / "config.json").read_text() == before
        assert "config.json back from" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["stage"] == "lang"


# ---------------------------------------------------------------- outputs of sample.py and eval.py (#34 A, B)

def test_sample_out_in_a_read_only_place_is_refused_before_the_rollout(small, tmp_path,
                                                                       monkeypatch, capsys):
    import sample
    read_only_probes(monkeypatch)
    loaded = []
    monkeypatch.setattr(sample, "load_checkpoint", lambda *a, **k: loaded.append(1))
    with pytest.raises(SystemExit):
        sample.main(["--init_from", str(small / "done"), "--out", str(tmp_path / "r.png")])
    one_error_line(capsys.readouterr().err, f"--out {tmp_path / 'r.png'}: cannot write in "
                   f"{tmp_path}: the file system is read-only")
    assert not loaded


def test_eval_of_a_run_that_diverged_writes_valid_json(small, tmp_path, capsys):
    """A run whose metrics.jsonl holds NaN and Infinity (as json.dumps writes them): eval.json
    stays JSON that strict readers take, and the run is named as diverged."""
    out = copy_run(small, tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "val", "step": 2, "tokens": 640, "val_loss": float("nan")})
                + "\n")
        f.write(json.dumps({"kind": "train", "step": 3, "tokens": 960, "loss": float("inf")})
                + "\n")
    ev.main([str(out), "--domains", "", "--extra_data", str(small / "small"), "--eval_tokens",
             "160", "--out", str(tmp_path / "ev")])
    text = (tmp_path / "ev" / "eval.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["runs"][0]["diverged_at"] == 2
    assert "(diverged at step 2)" in (tmp_path / "ev" / "eval.md").read_text()
    assert "note: " in capsys.readouterr().err


def test_wandb_init_that_fails_is_one_line_and_resume_starts_the_run(small, tmp_path,
                                                                      monkeypatch, capsys):
    """wandb.init failing once training starts (the network, the server: what guard cannot ask
    offline) is one line naming what the folder holds and the command that continues."""
    def init(**kw):
        raise ConnectionError("api.wandb.ai unreachable")
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(api=SimpleNamespace(api_key="k"),
                                                              init=init))
    out = tmp_path / "tracked"
    with pytest.raises(SystemExit):
        train.main(run_argv(small, out, "--wandb_project", "p"))
    one_error_line(capsys.readouterr().err, "wandb.init failed (ConnectionError: api.wandb.ai "
                   "unreachable): the run folder")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    train.main(run_argv(small, out, "--resume"))
    assert (out / "ckpt.pt").exists()
