import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import guard
import nca
import train
import util
from conftest import ROOT, make_domain
from data.common import TextBatches
from model import GPT, PPT_VOCAB, model_config
from util import UserError, from_flags, stage_flag
from util.runs import memory_estimate, truncate_metrics

train_args = train.parse_args
CPU = {"rank": 0, "world": 1, "device": "cpu"}

# A very small model and budgets: each run takes a second or two on CPU.
MODEL = ["--size", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--seq_len", "80",
         "--device", "cpu", "--dtype", "float32", "--log_interval", "1", "--seed", "0"]
PPT = ["--ppt_tokens", "1280", "--ppt_batch_tokens", "320", "--ppt_micro_batch", "4",
       "--ppt_vocab_size", "0", "--ppt_eval_interval", "2", "--ppt_val_seqs", "8",
       "--ppt_lr", "1e-3", "--ppt_warmup_frac", "0.25", "--train_num_rules", "16",
       "--val_num_rules", "4"]
LANG = ["--vocab_size", "50257", "--lang_tokens", "1920", "--batch_tokens", "320",
        "--micro_batch", "2", "--eval_interval", "2", "--eval_tokens", "320", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp("data") / "web")


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory, domain):
    out = tmp_path_factory.mktemp("runs") / "nca"
    train.main(MODEL + PPT + LANG + ["--stage", "both", "--data_dir", str(domain),
                                     "--out_dir", str(out)])
    return out


def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def run_args(out, domain, *extra):
    return MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain), "--out_dir", str(out),
                           *extra]


def planned(argv, source=None):
    """(cfg, plan) of a command, as main() plans and checks it (without taking its folders)."""
    args = train_args(argv)
    guard.check_flags(args, 1, source)
    cfg, plan = train.plan_run(args, source, CPU)
    guard.check_plan(args, util.given_flags(train.get_parser(), argv), cfg, plan, source)
    train.plan_memory(cfg, plan)
    return cfg, plan


def lang_model(argv):
    """The stage-2 model of a command, built as main() builds it."""
    cfg, plan = planned(argv)
    return train.lang_model(cfg, plan, "cpu")


def test_two_stage_run_writes_everything(two_stage):
    ppt = torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)
    lang = torch.load(two_stage / "ckpt.pt", weights_only=True)
    assert ppt["stage"] == "ppt" and ppt["vocab"] == {"kind": "nca", "size": 10002}
    assert ppt["step"] == 4 and len(ppt["nca"]["val_seeds"]) == 4
    assert lang["stage"] == "lang" and lang["model_args"]["vocab_size"] == 50257
    assert lang["config"]["arm"] == "nca" and lang["config"]["init_from"].endswith("ckpt.pt")
    assert json.loads((two_stage / "config.json").read_text())["stage"] == "lang"
    m = lines(two_stage / "ppt" / "metrics.jsonl")
    kinds = {r["kind"] for r in m}
    assert kinds == {"info", "val", "train"}
    val = [r for r in m if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 2, 4] and "grid_acc" in val[0]
    for key in ("copy_token_acc", "copy_grid_acc"):       # beside every val, the same each time
        assert len({r[key] for r in val}) == 1
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    lang_val = [r for r in lines(two_stage / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["tokens"] for r in lang_val] == [0, 640, 1280, 1920]


def test_transfer_keeps_every_body_tensor(two_stage, domain, tmp_path):
    ck = torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)
    for init, std in (("paper", 1.0), ("normal", 0.02)):
        args = run_args(tmp_path, domain, "--init_from", str(two_stage / "ppt" / "ckpt.pt"),
                        "--embed_init", init)
        model = lang_model(args)
        sd = model.state_dict()
        body = [k for k in ck["model"] if not k.startswith(("wte", "lm_head"))]
        assert body and all(torch.equal(sd[k], ck["model"][k]) for k in body)
        assert sd["wte.weight"].shape == (50257, 32) and "lm_head.bias" not in sd
        assert abs(sd["wte.weight"].std().item() - std) < 0.1 * std
        if init == "paper":
            assert sd["lm_head.weight"].abs().max() <= 32 ** -0.5


def test_ablation_flags_change_exactly_their_tensors(two_stage, domain, tmp_path):
    ck = torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)["model"]
    init = ["--init_from", str(two_stage / "ppt" / "ckpt.pt")]
    cases = {("--reinit", "attn", "--reinit_layers", "0:1"): "blocks.0.attn.",
             ("--reinit", "mlp"): ".mlp.",
             ("--reinit", "ln", "--reinit_layers", "1:2"): "blocks.1.norm"}
    for extra, changed in cases.items():
        sd = lang_model(run_args(tmp_path, domain, *init, *extra)).state_dict()
        for k, v in ck.items():
            if k.startswith(("wte", "lm_head")):
                continue
            assert torch.equal(sd[k], v) != (changed in k), (extra, k)
    model = lang_model(run_args(tmp_path, domain, *init, "--freeze", "attn,ln",
                                "--freeze_layers", "0:1"))
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"blocks.0.{m}.weight" for m in ("attn.q", "attn.k", "attn.v", "attn.o",
                                                       "norm1", "norm2")}
    with pytest.raises(UserError, match="outside the model"):
        lang_model(run_args(tmp_path, domain, *init, "--reinit", "mlp", "--reinit_layers", "0:9"))


def test_reinit_parts_are_the_scratch_arms_tensors_of_the_same_seed(two_stage, domain,
                                                                    tmp_path):
    """--reinit X gives the re-initialized modules exactly the scratch arm's starting tensors of
    that seed (tensor by tensor), the rest of the body stays the checkpoint's, and embeddings
    and head are the scratch arm's too: the arms form an exact factorial."""
    ck = torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)["model"]
    init = ["--init_from", str(two_stage / "ppt" / "ckpt.pt")]
    for seed in ("0", "3"):
        scratch = lang_model(run_args(tmp_path, domain, "--seed", seed)).state_dict()
        for extra, parts in (((), ()), (("--reinit", "attn"), (".attn.",)),
                             (("--reinit", "mlp"), (".mlp.",)), (("--reinit", "ln"), (".norm",)),
                             (("--reinit", "attn,mlp"), (".attn.", ".mlp."))):
            sd = lang_model(run_args(tmp_path, domain, *init, *extra, "--seed", seed)).state_dict()
            for k, v in sd.items():
                fresh = k.startswith(("wte", "lm_head")) or (
                    k.startswith("blocks.") and any(p in k for p in parts))
                assert torch.equal(v, scratch[k] if fresh else ck[k]), (seed, extra, k)
        assert not torch.equal(scratch["blocks.0.attn.q.weight"], ck["blocks.0.attn.q.weight"])


def test_an_ablation_run_is_an_arm_of_its_own(two_stage, domain, tmp_path):
    init = ["--init_from", str(two_stage / "ppt" / "ckpt.pt")]
    for extra, arm in ((("--reinit", "attn,mlp", "--reinit_layers", "0:2"),
                        "nca-reinit-attn+mlp[0:2]"), (("--freeze", "ln"), "nca-freeze-ln"),
                       ((), "nca"), (("--reinit", "mlp", "--arm", "mine"), "mine")):
        argv = run_args(tmp_path, domain, *init, *extra)
        assert planned(argv)[0].arm == arm, extra


def test_scratch_arm_matches_the_nca_arm_embeddings(domain, tmp_path):
    model = lang_model(run_args(tmp_path, domain))
    assert abs(model.wte.weight.std().item() - 1.0) < 0.1
    assert abs(model.blocks[0].attn.q.weight.std().item() - 0.02) < 0.004


def test_resume_after_a_crash_is_bit_exact(domain, tmp_path, monkeypatch):
    flags = MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain)]
    train.main(flags + ["--out_dir", str(tmp_path / "a")])
    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def crash_on_step_4(*a, **k):            # dies in the middle of step 4, after ckpt at 2
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_on_step_4)
    with pytest.raises(SystemExit) as e:                 # Ctrl-C: one line, status 130
        train.main(flags + ["--out_dir", str(tmp_path / "b")])
    monkeypatch.undo()
    assert e.value.code == 130
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 2
    with pytest.raises(SystemExit):                 # the folder holds a run now
        train.main(flags + ["--out_dir", str(tmp_path / "b")])
    train.main(flags + ["--out_dir", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    key = lambda r: (r["kind"], r["step"], r.get("loss", r.get("val_loss")))
    la, lb = lines(tmp_path / "a" / "metrics.jsonl"), lines(tmp_path / "b" / "metrics.jsonl")
    assert [key(r) for r in la] == [key(r) for r in lb]


@pytest.mark.parametrize("source", ["dyck", "text"])
def test_other_stage1_sources_run_and_transfer(source, domain, tmp_path):
    extra = ["--ppt_source", source, "--ppt_data", str(domain), "--dyck_k", "4"]
    train.main(MODEL + PPT + LANG + extra + ["--stage", "both", "--data_dir", str(domain),
                                             "--out_dir", str(tmp_path), "--lang_tokens", "320"])
    ppt = torch.load(tmp_path / "ppt" / "ckpt.pt", weights_only=True)
    kind = "gpt2" if source == "text" else "dyck"
    assert ppt["vocab"]["kind"] == kind
    assert ppt["vocab"]["size"] == (50257 if source == "text" else 8)
    lang = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert lang["config"]["arm"] == source and lang["config"]["ppt_source"] == source
    model = lang_model(run_args(tmp_path / "t", domain, "--init_from",
                                str(tmp_path / "ppt" / "ckpt.pt")))
    sd = model.state_dict()
    body = [k for k in ppt["model"] if not k.startswith(("wte", "lm_head"))]
    assert all(torch.equal(sd[k], ppt["model"][k]) for k in body)      # kept
    if source == "text":                                               # same shape, re-drawn
        assert not torch.equal(sd["wte.weight"], ppt["model"]["wte.weight"])


def test_text_batches_are_windows_of_the_corpus(domain):
    from data.common import load_tokens
    data = torch.from_numpy(load_tokens(domain, "train").astype("int64"))
    x, y = next(TextBatches(domain, "train", 16, 4, "cpu", seed=3))
    for xi, yi in zip(x, y):
        starts = [i for i in range(len(data) - 16) if torch.equal(data[i:i + 16], xi)]
        assert starts and torch.equal(data[starts[0] + 1:starts[0] + 17], yi)


def test_dyck_source_validates_on_its_own_split_and_honours_the_vocab_size():
    import dyck
    args = train_args(MODEL + PPT + ["--ppt_source", "dyck", "--dyck_k", "40000",
                                           "--ppt_vocab_size", "80000"])
    source = train.SOURCES["dyck"][0](args)                             # 80,000 > 64,000: fine
    data = source.batches(4, "cpu", 0, 1)
    stream, val = data.train, data.val
    assert source.vocab_size == 80000
    source.check(80000, 1)
    cfg = from_flags(dyck.DyckConfig, args, seq_len=args.seq_len, max_vocab=80000)
    want = dyck.val_batches(cfg, 8, 4, "cpu", seed=0)
    assert len(val) == len(want) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(val, want))
    assert not torch.equal(next(stream)[0], val[0][0])                 # not the train stream
    small = train_args(MODEL + PPT + ["--ppt_source", "dyck", "--ppt_vocab_size", "100"])
    with pytest.raises(UserError, match="--ppt_vocab_size"):
        train.SOURCES["dyck"][0](small).check(100, 1)


def test_text_source_can_keep_its_embeddings(domain, tmp_path):
    common = MODEL + PPT + LANG + ["--ppt_source", "text", "--ppt_data", str(domain),
                                   "--data_dir", str(domain)]
    train.main(common + ["--stage", "ppt", "--out_dir", str(tmp_path / "c4")])
    ck = str(tmp_path / "c4" / "ckpt.pt")
    model = lang_model(run_args(tmp_path, domain, "--init_from", ck, "--keep_embeddings"))
    assert torch.equal(model.wte.weight, torch.load(ck, weights_only=True)["model"]["wte.weight"])


def test_byte_text_source_keeps_its_embeddings_on_a_byte_corpus(tmp_path):
    folder = make_domain(tmp_path / "c4_bytes", vocab=257, tokenizer="bytes")
    common = MODEL + PPT + LANG + ["--ppt_source", "text", "--ppt_data", str(folder),
                                   "--data_dir", str(folder)]
    train.main(common + ["--stage", "ppt", "--out_dir", str(tmp_path / "c4")])
    ck = str(tmp_path / "c4" / "ckpt.pt")
    argv = run_args(tmp_path, folder, "--init_from", ck, "--keep_embeddings")
    model = lang_model([("257" if a == "50257" else a) for a in argv])     # the byte vocabulary
    head = torch.load(ck, weights_only=True)["model"]["lm_head.weight"]
    assert torch.equal(model.lm_head.weight, head)
    with pytest.raises(UserError, match=r"corpus's tokens \(gpt2, vocabulary 50,?257\)"):
        lang_model(run_args(tmp_path, make_domain(tmp_path / "web"), "--init_from", ck,
                            "--keep_embeddings"))


def fails(capsys, argv):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l.lower()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_gives_one_line(two_stage, domain, tmp_path, capsys):
    lang = MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain)]
    assert "already holds a run" in fails(capsys, lang + ["--out_dir", str(two_stage)])
    assert "stage-1 (ppt) checkpoint" in fails(capsys, lang + [
        "--out_dir", str(tmp_path / "x"), "--init_from", str(two_stage / "ckpt.pt")])
    assert "--keep_embeddings needs" in fails(capsys, lang + [
        "--out_dir", str(tmp_path / "y"), "--init_from", str(two_stage / "ppt" / "ckpt.pt"),
        "--keep_embeddings"])
    assert "is missing: run" in fails(capsys, MODEL + LANG + [
        "--stage", "lang", "--data_dir", str(tmp_path / "nowhere"), "--out_dir",
        str(tmp_path / "z")])
    assert "widen the band" in fails(capsys, MODEL + PPT + [
        "--stage", "ppt", "--filter_rules_threshold", "0.9", "--out_dir", str(tmp_path / "w")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_logs_off_a_terminal_have_no_progress_bar(domain, tmp_path, capfd):
    train.main(MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain),
                               "--out_dir", str(tmp_path), "--lang_tokens", "640"])
    out, err = capfd.readouterr()
    assert "\r" not in out + err                                  # no carriage-return updates
    steps = [l for l in out.splitlines() if l.startswith("step ") and "val_loss" not in l]
    assert [l.split()[1] for l in steps] == ["1", "2"] and all("tok/s" in l for l in steps)


def test_nonfinite_loss_stops_with_the_step(domain, tmp_path, capsys):
    msg = fails(capsys, MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain),
                                        "--out_dir", str(tmp_path), "--lr", "1e8",
                                        "--grad_clip", "0"])
    assert "at step" in msg and ("nan" in msg or "inf" in msg)


def test_two_processes_run_the_gpu_presets_stage1_from_an_empty_rule_cache(tmp_path):
    """torchrun on 2 processes (gloo) with the gpu preset's stage-1 batch (32,768 tokens of 1,024)
    and automatic micro-batch, on a tiny model. Both ranks need the same rule bank, which is not
    cached yet: rank 0 filters and writes it while rank 1 waits. Ranks see different data, keep
    identical weights and draw different dropout masks."""
    import nca
    argv = ["--preset", "gpu", "--stage", "ppt", "--no-compile", "--device", "cpu", "--dtype",
            "float32", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
            "--ppt_vocab_size", "0", "--num_colors", "2", "--band", "all", "--max_iters", "2",
            "--log_interval", "1",
            "--train_num_rules", "32", "--val_num_rules", "2", "--ppt_val_seqs", "2",
            "--rule_seed", str(10**6 + os.getpid()), "--out_dir", str(tmp_path), "--debug_ranks"]
    args = train_args(argv)
    cfg = from_flags(nca.NCAConfig, args, seq_len=args.seq_len,
                     max_vocab=args.ppt_vocab_size or PPT_VOCAB)
    bank = nca.bank_path(cfg, nca.band_from_args(args), 34, args.rule_seed)
    assert args.ppt_batch_tokens == 32768 and args.seq_len == 1024 and not bank.exists()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py")] + argv
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert bank.exists() and not list(bank.parent.glob(bank.stem + ".*.tmp.npz"))
    finally:
        bank.unlink(missing_ok=True)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["micro_batch"] * r0["accum"] * 1024 * 2 == 32768
    assert r0["first_batch"] != r1["first_batch"] and r0["weights"] == r1["weights"]
    assert r0["dropout_rng"] != r1["dropout_rng"]


def plan(argv, stage="lang", vocab=50257, world=1):
    """The micro-batch train.plan_micro_batch picks for a command, its estimate, and the
    sequences each process gets per step."""
    args = train_args(argv)
    p = plan_of(args, stage, vocab, {"rank": 0, "world": world, "device": "cpu"})
    setattr(args, stage_flag(stage, "micro_batch"), 0)
    train.plan_micro_batch(args, stage, p)
    batch = getattr(args, stage_flag(stage, "batch_tokens"))
    return getattr(args, stage_flag(stage, "micro_batch")), p.memory[stage], \
        batch // (args.seq_len * world)


def plan_of(args, stage, vocab, dist):
    """The part of train.plan_run's plan that plan_micro_batch reads."""
    return SimpleNamespace(dist=dist, configs={stage: model_config(args, vocab, stage == "ppt")},
                           steps={stage: 1}, micro={}, memory={}, flops={}, notes=[], freeze=[])


def test_micro_batch_plan_fits_memory_and_divides_the_batch():
    gpu = ["--preset", "gpu"]
    with torch.device("meta"):
        small = GPT(model_config(train_args(gpu), 50257, head_bias=False))
    usable = lambda gb: 0.9 * gb * 2**30 - 2 * 2**30
    # GPT-2 small, stage 2: the largest divisor of each process's sequences that fits
    for gb, world in ((79, 1), (139.5, 1), (79, 8), (20, 1)):
        micro, est, seqs = plan(gpu + ["--memory_gb", str(gb)], world=world)
        assert seqs % micro == 0 and est["total"] <= usable(gb)
        assert all(memory_estimate(small, m, 1024)["total"] > usable(gb)
                   for m in range(micro + 1, seqs + 1) if seqs % m == 0)
    assert plan(gpu + ["--memory_gb", "20"])[0] < plan(gpu + ["--memory_gb", "79"])[0]
    # stage 1 of the gpu preset on 1, 2 and 8 processes: 32, 16 and 4 sequences each
    for world, seqs in ((1, 32), (2, 16), (8, 4)):
        micro, _, s = plan(gpu + ["--memory_gb", "79"], stage="ppt", vocab=64000, world=world)
        assert s == seqs and micro == seqs
    # the paper's 1.6B model fits one 80 GB H100 and one 141 GB H200 (they report 79 / 140 GiB)
    for gb, want in ((79, 8), (139.5, 16)):
        for stage, vocab in (("ppt", 64000), ("lang", 50257), ("lang", 64000)):
            assert plan(gpu + ["--size", "paper", "--memory_gb", str(gb)], stage, vocab)[0] == want


def test_micro_batch_errors_are_one_line(domain, tmp_path, capsys):
    lang = MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain), "--out_dir", str(tmp_path)]
    # refused by the up-front flag checks, before any model is built
    assert "is not a multiple of --micro_batch" in fails(capsys, lang + ["--micro_batch", "3"])
    assert "is not a multiple of --micro_batch" in fails(capsys, lang + ["--batch_tokens", "100"])
    assert "needs about" in fails(capsys, lang + ["--micro_batch", "0", "--memory_gb", "1"])
    assert "not a multiple of --seq_len x processes = 80 x 1 = 80" in \
        fails(capsys, lang + ["--micro_batch", "0", "--batch_tokens", "100"])
    # the plan itself, for a micro-batch that passes the flag checks on another world size
    args = train_args(lang + ["--micro_batch", "3", "--batch_tokens", "320"])
    p = plan_of(args, "lang", 50257, CPU)
    train.plan_micro_batch(args, "lang", p)
    with pytest.raises(UserError, match="does not divide the 4 sequences"):
        guard.check_memory(args, "lang", p)


def test_gpu_check_dry_run_writes_every_figure(tmp_path):
    """DEVICE=cpu bash scripts/gpu_check.sh, in-process: every step at toy size (without compile
    here: tests/test_device.py compiles)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check
    res = gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "cpu.json"), "--no-compile"])
    assert json.loads((tmp_path / "cpu.json").read_text()) == json.loads(json.dumps(res))
    assert set(res) == {"device", "steps", "running", "nca_generation", "bit_identity", "stage1",
                        "nca_share", "stage2", "bf16_vs_fp32", "targets", "reproduce_hours",
                        "wall_s"}
    assert res["steps"]["compile_vs_eager"] == {"status": "skipped", "why": "--no-compile"}
    assert all(s["status"] == "ok" for n, s in res["steps"].items() if n != "compile_vs_eager")
    assert res["bit_identity"]["identical"] and res["bit_identity"]["rules"] >= 64
    assert res["bit_identity"]["trajectories_differing"] == 0 and res["bit_identity"]["ok"]
    for stage in ("stage1", "stage2"):
        assert res[stage]["tokens_per_s"] > 0 and res[stage]["steps_measured"] >= 1
        assert res[stage]["graph"] == {"compiled": False, "shape": [4, 256], "dynamic": None}
    assert 0 < res["nca_share"]["share"] < 1 and res["bf16_vs_fp32"]["ok"]
    assert all(t["met"] is None for t in res["targets"].values())   # targets are for a GPU


def test_arms_of_a_seed_are_paired(two_stage, domain, tmp_path):
    """Scratch and NCA arms of one seed: the same fresh embeddings and head, the same batches;
    only the body differs (the NCA body is the stage-1 one)."""
    init = ["--init_from", str(two_stage / "ppt" / "ckpt.pt")]
    outs, first = {}, {}
    for arm, extra in (("scratch", []), ("nca", init)):
        out = tmp_path / arm
        train.main(MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain), "--out_dir",
                                   str(out), "--lr", "1e-30", "--max_iters", "1", *extra])
        outs[arm] = torch.load(out / "ckpt.pt", weights_only=True)["model"]
        batches = TextBatches(domain, "train", 80, 2, "cpu", seed=0)
        first[arm] = next(batches)
    a, b = outs["scratch"], outs["nca"]
    assert a.keys() == b.keys()
    stage1 = torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)["model"]
    for k in a:
        if k.startswith(("wte", "lm_head")):
            assert torch.equal(a[k], b[k]), k                # identical fresh vocabulary tensors
        else:
            assert not torch.equal(a[k], b[k]) or "norm" in k, k  # different bodies
            assert torch.equal(b[k], stage1[k]), k           # lr ~0: the stage-1 body, untouched
    assert all(torch.equal(x, y) for x, y in zip(first["scratch"], first["nca"]))


def test_byte_level_stage2_logs_probe(tmp_path):
    from data.build import TokenWriter, write_dataset
    import numpy as np
    folder = tmp_path / "web_bytes"
    writers = {}
    for split, n in (("train", 3000), ("val", 800)):
        w = TokenWriter(folder / f"{split}.bin")
        w.write(np.random.default_rng(0).integers(0, 257, n), 1)
        writers[split] = w
    write_dataset(folder, writers, {"source": "test"}, tokenizer="bytes")
    out = tmp_path / "run"
    train.main(MODEL + ["--stage", "lang", "--data_dir", str(folder), "--out_dir", str(out),
                        "--lang_tokens", "640", "--batch_tokens", "320", "--micro_batch", "2",
                        "--eval_interval", "1", "--eval_tokens", "320"])
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["vocab"] == {"kind": "bytes", "size": 257} and ck["model_args"]["vocab_size"] == 257
    val = [r for r in lines(out / "metrics.jsonl") if r["kind"] == "val"]
    keys = {f"copy_{p}_{k}" for p in ("text", "frequent", "uniform")
            for k in ("first", "second", "gain", "gain_se")} | {"icl_score", "icl_se"}
    assert len(val) == 3 and all(keys <= set(r) for r in val)
    for p in ("text", "frequent", "uniform"):
        assert all(r[f"copy_{p}_first"] - r[f"copy_{p}_second"] ==
                   pytest.approx(r[f"copy_{p}_gain"]) for r in val)


def test_cpu_preset_is_the_cpu_scale_setting():
    args = train_args(["--preset", "cpu", "--domain", "web_bytes"])
    cfg = from_flags(nca.NCAConfig, args, seq_len=args.seq_len,
                     max_vocab=args.ppt_vocab_size or PPT_VOCAB)
    assert (cfg.num_colors, cfg.grid, cfg.patch) == (4, 8, 2) and cfg.vocab_size == 258
    assert nca.band_from_args(args) == nca.BANDS["cpu-web"] and args.vocab_size == "auto"
    assert args.ppt_tokens % args.ppt_batch_tokens == 0 and args.lang_tokens % args.batch_tokens == 0
    assert train_args(["--preset", "cpu", "--band", "cpu-code"]).band == "cpu-code"


def test_checkpoint_helpers_refuse_and_heal(tmp_path):
    """A checkpoint whose weights do not fit its model_args is one UserError, not a torch
    traceback; metrics.jsonl cut mid-line by a kill is trimmed on resume; float16 autocast is
    refused for training off CUDA but allowed for evaluation."""
    import util
    from model import model_from_checkpoint
    model = GPT(model_config(train_args(MODEL), 64, head_bias=False))
    ck = {"model": model.state_dict(), "model_args": {**model.config.__dict__, "n_layer": 3}}
    with pytest.raises(UserError, match="do not fit its model_args"):
        model_from_checkpoint(ck)
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 0}\n{"step": 4}\n{"step": 8}\n{"st')
    truncate_metrics(m, 4)
    assert m.read_text() == '{"step": 0}\n{"step": 4}\n'
    with pytest.raises(UserError, match="needs CUDA"):
        util.autocast("float16", "cpu")
    assert util.autocast("float16", "cpu", training=False)[1] == "float16"


def test_resume_past_the_budget_is_refused(two_stage, domain, tmp_path, capsys):
    """A checkpoint at step 6 cannot resume a 2-step command: one line, nothing rewritten."""
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(two_stage, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):
        train.main(MODEL + PPT + LANG + ["--stage", "both", "--data_dir", str(domain),
                                         "--out_dir", str(out), "--resume", "--max_iters", "2"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume:") and "past the 2 steps" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_documented_new_source_runs(domain, tmp_path, monkeypatch, capsys):
    """docs/method.md, 'Adding a stage-1 source': its example, executed as written, is one
    function, one dataclass of flags and one SOURCES entry; its flag reaches --help and its check
    refuses a bad value in one line; it runs as a stage 1 that transfers, and eval.py scores the
    body with the source's own score."""
    text = (ROOT / "docs" / "method.md").read_text()
    code = text.split("### Adding a stage-1 source")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.setattr(train, "SOURCES", dict(train.SOURCES))
    exec(code, vars(train).copy())
    assert set(train.SOURCES) == {"nca", "dyck", "text", "random"}
    assert "--random_vocab" in train.get_parser().format_help()
    base = MODEL + PPT + LANG + ["--ppt_source", "random", "--stage", "both", "--data_dir",
                                 str(domain), "--lang_tokens", "320"]
    assert "--random_vocab must be at least 2, got 1" in \
        fails(capsys, base + ["--random_vocab", "1", "--out_dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    train.main(base + ["--random_vocab", "64", "--out_dir", str(tmp_path / "run")])
    ppt = torch.load(tmp_path / "run" / "ppt" / "ckpt.pt", weights_only=True)
    assert ppt["vocab"] == {"kind": "random", "size": 64} and ppt["step"] == 4
    assert ppt["config"]["random_vocab"] == 64 and "train_num_rules" not in ppt["config"]
    assert "repeat_rate" in lines(tmp_path / "run" / "ppt" / "metrics.jsonl")[-1]
    lang = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert lang["config"]["arm"] == "random"
    import eval as ev
    result = ev.main([str(tmp_path / "run" / "ppt"), str(tmp_path / "run"), "--domains", "",
                      "--extra_data", str(domain), "--out", str(tmp_path / "eval")])
    body = next(r for r in result["runs"] if r["stage"] == "ppt")
    assert body["stage1"]["val_loss"] > 0 and 0 <= body["stage1"]["repeat_rate"] <= 1
    assert "repeat_rate" in (tmp_path / "eval" / "eval.md").read_text()


def test_records_say_what_ran(two_stage, domain, tmp_path, capsys):
    """config.json (and the checkpoint's config) hold the flags of the stage that ran: stage 1
    without stage-2 flags, the NCA band as the bounds applied; a transfer with its body's stage-1
    source and tokens; a scratch run with no stage-1 source or budget. The console gets one
    summary line, validation lines like the training lines, and where the body came from."""
    ppt = json.loads((two_stage / "ppt" / "config.json").read_text())
    assert ppt["stage"] == "ppt" and ppt["ppt_source"] == "nca" and ppt["num_colors"] == 10
    assert not {"domain", "data_dir", "lang_tokens", "eval_tokens", "init_from", "lr"} & set(ppt)
    assert (ppt["filter_rules_threshold"], ppt["filter_rules_upper_bound"]) == (0.5, 1.0)
    assert torch.load(two_stage / "ppt" / "ckpt.pt", weights_only=True)["config"] == ppt
    band = train.run_record(train_args(["--band", "cpu-web"]), "ppt") | \
        train.nca_source(train_args(["--band", "cpu-web"])).record
    assert band["band"] == "cpu-web" and (band["filter_rules_threshold"],
                                          band["filter_rules_upper_bound"]) == nca.BANDS["cpu-web"]
    lang = json.loads((two_stage / "config.json").read_text())
    assert lang["ppt_source"] == "nca" and lang["ppt_tokens"] == 1280      # what stage 1 trained
    assert not {"ppt_lr", "ppt_batch_tokens", "train_num_rules", "num_colors", "band"} & set(lang)
    capsys.readouterr()
    init = ["--init_from", str(two_stage / "ppt" / "ckpt.pt")]
    for arm, extra in (("scratch", []), ("nca", init)):
        train.main(MODEL + LANG + ["--stage", "lang", "--data_dir", str(domain), "--out_dir",
                                   str(tmp_path / arm), "--max_iters", "1", *extra])
    out = capsys.readouterr().out.splitlines()
    scratch = json.loads((tmp_path / "scratch" / "config.json").read_text())
    assert scratch["arm"] == "scratch" and not {"ppt_source", "ppt_tokens"} & set(scratch)
    assert scratch["eval_tokens"] == 320 and scratch["stage"] == "lang"
    assert json.loads((tmp_path / "nca" / "config.json").read_text())["ppt_tokens"] == 1280
    assert sum(line.startswith("train: stage 2") for line in out) == 2
    assert not any(line.startswith("{") for line in out)                  # no config dump
    assert any(line.startswith("lang: scratch: a freshly initialized body") for line in out)
    assert any(line.startswith("lang: body from") and "stage 1 on nca" in line and
               "1,280 tokens" in line for line in out)
    assert any(line.startswith("step 0 val_loss ") for line in out)
    assert not any(line.startswith("kind ") or "1 micro-steps" in line for line in out)
