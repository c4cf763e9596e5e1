"""The pre-registered experiment scripts still run: each at its SMOKE=1 toy budgets, one seed,
end to end into its eval table (a change cannot silently break an experiment)."""
import json
import os
import subprocess

import pytest

from conftest import ROOT

BYTES = [ROOT / "data" / f"{d}_bytes" / "meta.json" for d in ("web", "c4")]
needs_bytes = pytest.mark.skipif(
    not all(p.exists() for p in BYTES),
    reason="data/web_bytes and data/c4_bytes are absent: run python data/web/prepare.py "
           "--tokenizer bytes and python data/c4/prepare.py --tokenizer bytes")


@needs_bytes
def test_e1_smoke_runs_every_arm_into_its_paired_table(tmp_path):
    env = {**os.environ, "SMOKE": "1", "SEEDS": "0", "OUT": str(tmp_path / "e1"), "JOBS": "2"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "experiments" / "e1_power.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert sorted(run["arm"] or "scratch" for run in report["runs"]) == ["nca", "scratch", "text"]
    pairs = {(c["a"], c["b"]) for c in report["contrasts"]}
    assert pairs == {("nca", "scratch"), ("nca", "text"), ("text", "scratch")}
    assert all(c["units"] == 1 for c in report["contrasts"])
    assert "| nca - text | web_bytes | 1 |" in (tmp_path / "e1" / "eval.md").read_text()


@needs_bytes
def test_e3_smoke_runs_every_arm_into_its_paired_table(tmp_path):
    env = {**os.environ, "SMOKE": "1", "SEEDS": "0", "OUT": str(tmp_path / "e3"), "JOBS": "2"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "experiments" / "e3_nca_structure.sh")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "e3" / "eval.json").read_text())
    arms = sorted(run["arm"] or "scratch" for run in report["runs"])
    assert arms == ["nca", "permuted", "scratch", "shuffled", "uniform"]
    pairs = [(c["a"], c["b"]) for c in report["contrasts"]]
    assert pairs[0] == ("nca", "shuffled") and len(pairs) == 5
    shuffled = json.loads((tmp_path / "e3" / "shuffled-seed0" / "config.json").read_text())
    assert "shuffled" in json.dumps(shuffled)
