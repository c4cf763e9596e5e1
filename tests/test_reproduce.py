"""The one-GPU reproduction's tiers run end to end as CPU dry runs (DEVICE=cpu, toy sizes, the
embedded byte-level corpora): smoke through the GPU check, stage 1, both arms and eval; hour
through its bodies, the gate (which stops a run when it is not met), the language runs and the
paired-contrast table. A smoke run whose stages outgrow their time box keeps every finished stage
on disk, says which timed out, and a rerun resumes there. The gate's verdict and its refusals."""
import json
import os
import subprocess

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_reproduce.sh"


def reproduce(out, *args, **env):
    env = {**os.environ, "DEVICE": "cpu", **{k: str(v) for k, v in env.items()}}
    return subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def statuses(out):
    return {f.name: f.read_text().split()[0] for f in (out / "status").iterdir()}


def test_smoke_killed_at_its_time_box_keeps_finished_stages_and_resumes(tmp_path):
    out = tmp_path / "smoke"
    fast = {"CHECK_STEPS": "nca_generation,bit_identity"}     # the other steps: test_device.py
    r = reproduce(out, "--tier", "smoke", LANG_S=1, **fast)   # both arms killed by `timeout`
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(out) == {"check": "ok", "stage1": "ok", "scratch": "timeout",
                             "nca": "timeout", "eval": "skipped"}
    check = json.loads((out / "gpu_check.json").read_text())
    assert check["bit_identity"]["identical"] and check["running"] is None
    assert (out / "ppt" / "ckpt.pt").exists()
    curve = (out / "stage1_curve.md").read_text()          # the curve against copy and lookup
    assert "| step | model | copy | lookup | model - copy |" in curve and "| 8 |" in curve
    assert "== eval: skipped (needs scratch: timeout)" in r.stdout

    r = reproduce(out, "--tier", "smoke", **fast)             # the rerun: only what is missing
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== check: ok before" in r.stdout and "== stage1: ok before" in r.stdout
    assert set(statuses(out).values()) == {"ok"}
    table = (out / "eval" / "eval.md").read_text()
    assert "\n| scratch " in table and "\n| nca " in table and "token acc" in table


def test_hour_dry_run_stops_at_its_gate_then_ends_with_the_paired_table(tmp_path):
    out = tmp_path / "hour"
    r = reproduce(out, "--tier", "hour", SEEDS=0, GATE_STOP=1)
    assert r.returncode == 1 and "== stopped at the gate (GATE_STOP=1)" in r.stdout, r.stdout
    assert "gate not met: train stage 1 longer" in r.stdout and not (out / "runs").exists()
    assert statuses(out) == {"data-web": "ok", "data-math": "ok", "data-code": "ok",
                             "ppt-web-s0": "ok", "ppt-code-s0": "ok", "gate": "failed"}

    r = reproduce(out, "--tier", "hour", SEEDS=0)             # the dry run's default: go on
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== ppt-web-s0: ok before" in r.stdout
    st = statuses(out)
    assert st.pop("gate") == "not_met" and set(st.values()) == {"ok"} and len(st) == 12
    contrasts = json.loads((out / "eval" / "eval.json").read_text())["contrasts"]
    rows = {(c["a"], c["b"], c["domain"]) for c in contrasts}
    assert rows == {("nca", "scratch", d) for d in ("web_bytes", "math_bytes", "code_bytes",
                                                    "all")}
    assert all(0 < c["p"] <= 1 and "p_holm" in c for c in contrasts)
    assert "| nca - scratch | all | 2 |" in r.stdout           # pooled over the two bodies


def write_curve(run, rows, val_loss=None):
    """Stage-1 validation lines (step, token_acc, copy_token_acc); val_loss: (ordered, shuffled)
    losses on every line (the manipulation check), or none."""
    run.mkdir()
    check = dict(zip(("val_loss", "val_loss_shuffled"), val_loss)) if val_loss else {}
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "val", "step": s, "token_acc": a, "copy_token_acc": c,
                    "lookup_token_acc": c, **check}) + "\n" for s, a, c in rows))


def test_gate_passes_only_when_every_body_beats_copying_by_the_margin(tmp_path):
    gate = ["python", str(ROOT / "scripts" / "stage1_gate.py")]
    write_curve(tmp_path / "good", [(0, 0.0, 0.3), (32, 0.36, 0.3)])
    write_curve(tmp_path / "close", [(0, 0.0, 0.3), (32, 0.34, 0.3)])   # the last line counts
    r = subprocess.run(gate + [str(tmp_path / "good")], capture_output=True, text=True)
    assert r.returncode == 0 and "gate met" in r.stdout and "| 32 | 0.3600 | 0.3000 |" in r.stdout
    assert "| +0.0600 | - |" in r.stdout                # no manipulation check on these lines
    write_curve(tmp_path / "ordered", [(32, 0.36, 0.3)], val_loss=(1.5, 1.55))
    r = subprocess.run(gate + [str(tmp_path / "ordered")], capture_output=True, text=True)
    assert r.returncode == 0 and "| +0.0600 | +0.0500 |" in r.stdout    # shuffled - ordered
    r = subprocess.run(gate + [str(tmp_path / "good"), str(tmp_path / "close")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "close at step 32: model - copy = +0.0400 < 0.0500" in r.stdout
    assert "gate not met: train stage 1 longer" in r.stdout
    r = subprocess.run(gate + [str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_bad_tier_arguments_are_one_line():
    for args, env, says in ((["--tier", "week"], {}, "error: --tier week: choose smoke, hour"),
                            (["--out"], {}, "error: --out needs a value"),
                            (["--tier", "full"], {"DEVICE": "cpu"},
                             "error: DEVICE=cpu: the dry runs are --tier smoke and --tier hour")):
        r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                           env={**os.environ, **env})
        assert r.returncode == 2 and r.stderr.startswith(says) and r.stderr.count("\n") == 1, \
            r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--tier smoke|hour|full" in r.stdout and "GATE_MARGIN" in r.stdout
