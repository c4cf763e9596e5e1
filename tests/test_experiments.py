"""The pre-registered experiment scripts still run: each at its SMOKE=1 toy budgets, one seed,
end to end into its eval table (a change cannot silently break an experiment). They run as a
chain, as the real experiments do: E3, E2 and E7 link E1's finished runs, E4 links E2's, E6
links E7's, E8 links E7's code-band NCA body, so the reuse is tested too and each run is trained
once."""
import json
import os
import subprocess

import pytest
import torch

from conftest import ROOT

BYTES = [ROOT / "data" / f"{d}_bytes" / "meta.json" for d in ("web", "math", "code", "c4")]
pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in BYTES),
    reason="the byte-level corpora are absent: run python data/D/prepare.py --tokenizer bytes "
           "for D in web, math, code and c4")


def smoke(script, out, **links):
    """Run lab/experiments/SCRIPT at SMOKE=1, seed 0, into OUT; links: E1_OUT=... folders."""
    env = {**os.environ, "SMOKE": "1", "SEEDS": "0", "OUT": str(out), "JOBS": "2",
           **{k: str(v) for k, v in links.items()}}
    r = subprocess.run(["bash", str(ROOT / "lab" / "experiments" / script)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def report(out):
    return json.loads((out / "eval.json").read_text())


def arms(out):
    return sorted({run["arm"] or "scratch" for run in report(out)["runs"]})


def pairs(out):
    return [(c["a"], c["b"]) for c in report(out)["contrasts"]]


def linked(out, *names):
    return all((out / name).is_symlink() and (out / name / "done").exists() for name in names)


@pytest.fixture(scope="module")
def e1(tmp_path_factory):
    return smoke("e1_power.sh", tmp_path_factory.mktemp("exp") / "e1")


@pytest.fixture(scope="module")
def e3(e1):
    return smoke("e3_nca_structure.sh", e1.parent / "e3", E1_OUT=e1)


@pytest.fixture(scope="module")
def e2(e1, e3):
    return smoke("e2_text_ladder.sh", e1.parent / "e2", E1_OUT=e1, E3_OUT=e3)


@pytest.fixture(scope="module")
def e7(e1):
    return smoke("e7_dyck.sh", e1.parent / "e7", E1_OUT=e1)


def test_e1_runs_every_arm_into_its_paired_table(e1):
    assert arms(e1) == ["nca", "scratch", "text"]
    assert set(pairs(e1)) == {("nca", "scratch"), ("nca", "text"), ("text", "scratch")}
    assert all(c["units"] == 1 for c in report(e1)["contrasts"])
    assert "| nca - text | web_bytes | 1 |" in (e1 / "eval.md").read_text()


def test_e3_links_e1_and_runs_its_controls(e3):
    assert linked(e3, "nca-seed0", "web-scratch-s0", "web-nca-s0")
    assert arms(e3) == ["nca", "permuted", "scratch", "shuffled", "uniform"]
    assert pairs(e3)[0] == ("nca", "shuffled") and len(pairs(e3)) == 5
    shuffled = json.loads((e3 / "shuffled-seed0" / "config.json").read_text())
    assert "shuffled" in json.dumps(shuffled)


def test_e2_ladder_reports_each_rung_and_its_share_of_c4s_gain(e2):
    assert linked(e2, "text-seed0", "uniform-seed0")
    assert arms(e2) == ["c4", "c4keep", "scratch", "uniform", "unigram", "words", "zh"]
    rows = report(e2)["contrasts"]
    assert [(r["a"], r["b"], r["ref"]) for r in rows] == [("c4", "scratch", None)] + [
        (a, "scratch", "c4") for a in ("c4keep", "words", "unigram", "zh", "uniform")]
    for r in rows[1:]:              # the share is the rung's Δ over C4's Δ, unit by unit
        assert r["share"]["share"] == pytest.approx(r["dloss"][0] / rows[0]["dloss"][0])
    keep = json.loads((e2 / "math-c4keep-s0" / "config.json").read_text())
    assert keep["keep_embeddings"] is True
    zh = json.loads((e2 / "zh" / "meta.json").read_text())
    assert zh["tokens"]["train"] == 71925          # capped at the size of C4's train split
    assert (e2 / "ladder.png").stat().st_size > 0


def test_e4_reinit_arms_share_the_full_gain_kept(e1, e2):
    e4 = smoke("e4_what_transfers.sh", e1.parent / "e4", E1_OUT=e1, E2_OUT=e2)
    assert linked(e4, "nca-seed0", "text-seed0", "math-scratch-s0", "math-c4-s0")
    body = ["", "-attn", "-mlp", "-ln", "-norms"]
    assert arms(e4) == sorted(["scratch"] + [b + x for b in ("nca", "c4") for x in body])
    shares = {r["a"]: r["ref"] for r in report(e4)["contrasts"] if r["ref"]}
    assert shares == {b + x: b for b in ("nca", "c4") for x in body[1:]}
    cfg = json.loads((e4 / "math-nca-norms-s0" / "config.json").read_text())
    assert cfg["reinit"] == "attn,mlp"
    assert "| per-block norms | final norm |" in (e4 / "norms.md").read_text()


def test_e7_dyck_arms_on_web_and_code(e7):
    assert linked(e7, "nca-seed0", "web-scratch-s0", "web-nca-s0")
    assert arms(e7) == ["dyck", "nca", "scratch", "sdyck"]
    rows = report(e7)["contrasts"]
    assert (rows[0]["a"], rows[0]["b"]) == ("nca", "dyck")
    assert {r["domain"] for r in rows} == {"web_bytes", "code_bytes", "all"}
    sdyck = json.loads((e7 / "sdyck-seed0" / "config.json").read_text())
    assert sdyck["dyck_shuffle"] is True and sdyck["ppt_source"] == "dyck"


def test_e6_long_stage2_writes_its_delta_curves(e1, e7):
    e6 = smoke("e6_washout.sh", e1.parent / "e6", E1_OUT=e1, E7_OUT=e7)
    assert linked(e6, "nca-code-seed0", "text-seed0")
    assert arms(e6) == ["c4", "nca", "scratch"]
    table = (e6 / "delta_by_step.md").read_text().splitlines()
    steps = [line for line in table if line.startswith("| ") and line[2].isdigit()]
    assert len(steps) >= 2 and steps[0].startswith("| 0 |")


def test_e8_runs_its_four_arms_and_writes_its_verdict(e7):
    e8 = smoke("e8_specific.sh", e7.parent / "e8", E7_OUT=e7)
    assert linked(e8, "nca-code-seed0")
    assert arms(e8) == ["nca", "scaled", "scratch", "shuffled"]
    assert [(p["a"], p["b"]) for p in report(e8)["contrasts"]] == [("nca", "scaled"),
                                                                 ("nca", "shuffled")]
    verdict = (e8 / "verdict.md").read_text()
    assert "| nca − scaled |" in verdict and "| nca − shuffled |" in verdict
    assert json.loads((e8 / "mcheck" / "seed0.json").read_text())["shuffled_body"]
    scaled = torch.load(e8 / "scaled-seed0.pt", weights_only=True)
    assert scaled["config"]["ppt_source"] == "scaled"
