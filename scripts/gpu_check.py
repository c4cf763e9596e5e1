"""
One prepared device check for the single-GPU reproduction: in one call (planned for about 5
minutes, at most 8, on an H100 or H200) it measures what the README's GPU table and the
scripts/gpu_reproduce.sh time estimate rest on, prints it and writes it as JSON.

    bash scripts/gpu_check.sh                 # on a GPU -> out/gpu_check/cuda.json
    DEVICE=cpu bash scripts/gpu_check.sh      # dry run of every step at toy size -> cpu.json

  nca_generation  NCA tokens/s at a large batch, rules sampled once on the device (as training)
  bit_identity    trajectories and tokens of 256 rules on this device against the CPU, with TF32
                  allowed globally as train.py does (on CPU: the CUDA sampling path against the
                  CPU one)
  stage1, stage2  train.py --preset gpu, compiled, for a few dozen steps after warm-up: tokens/s,
                  MFU, peak memory beside the micro-batch plan's estimate
  nca_share       NCA generation time per stage-1 step over the step's time
  bf16_vs_fp32    one validation batch through the stage-1 and stage-2 models just trained: loss
                  under bf16 autocast against full float32
  targets         the figures above against the README's targets
  reproduce_hours the scripts/gpu_reproduce.sh time at the measured rates

The dry run keeps every step and key but shrinks the model (tiny), the sequences of the training
runs (256 tokens), the batches and the step counts, and does not compile.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import guard  # noqa: E402
import report  # noqa: E402
import nca  # noqa: E402
import train  # noqa: E402
from data.common import show, text_val_batches  # noqa: E402
from model import GPT, config_for, load_checkpoint, model_from_checkpoint  # noqa: E402
from util import atomic_write  # noqa: E402

TARGETS = {"nca_tokens_per_s": 500e6, "nca_share": 0.03, "stage2_mfu": 0.40}
# scripts/gpu_reproduce.sh: 164M NCA tokens for each of 2 bands, 2.6B tokens for 6 language runs
REPRODUCE = {"ppt_tokens": 163_840_000, "ppt_runs": 2, "lang_tokens": 2_621_440_000,
             "lang_runs": 6}

# Stage-1 steps come in whole NCA fills (64 micro-batches on CUDA, 4 on CPU) so that each measured
# window holds exactly one fill: log_interval = steps per fill, two windows measured.
SIZES = {
    "full": dict(gen_batch=8192, gen_repeats=3, identity_rules=256, model=[],
                 ppt=["--max_iters", "256", "--log_interval", "64", "--train_num_rules", "2048",
                      "--val_num_rules", "64", "--ppt_val_seqs", "64"],
                 lang=["--max_iters", "40", "--log_interval", "5", "--eval_tokens", "65536"]),
    "toy": dict(gen_batch=128, gen_repeats=2, identity_rules=64,
                model=["--size", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "64",
                       "--seq_len", "256", "--no-compile"],
                ppt=["--max_iters", "12", "--log_interval", "4", "--train_num_rules", "32",
                     "--val_num_rules", "8", "--ppt_val_seqs", "8", "--ppt_batch_tokens", "1024",
                     "--ppt_vocab_size", "0"],
                lang=["--max_iters", "4", "--log_interval", "1", "--eval_tokens", "1024",
                      "--batch_tokens", "1024"]),
}


class CheckError(Exception):
    pass


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def nca_generation(device, batch, repeats):
    """Tokens/s of make_sequences on `batch` rules whose parameters are already on the device."""
    cfg = nca.NCAConfig()
    seeds = nca.seed_sequence(0, 0, batch)
    params = nca.sample_rules(seeds, cfg.num_colors, device)
    run = lambda i: nca.make_sequences(seeds, torch.arange(batch) + i * batch, cfg, device,
                                       rule_params=params)
    timed(lambda: run(0), device)                                        # warm-up
    _, dt = timed(lambda: [run(i + 1) for i in range(repeats)], device)
    n = repeats * batch
    return {"batch_seqs": batch, "seq_len": cfg.seq_len, "seqs_per_s": n / dt,
            "tokens_per_s": n * cfg.seq_len / dt}


def bit_identity(device, rules):
    """Trajectories (27 frames after burn-in) and training tokens of `rules` rules: this device's
    sampling path with TF32 allowed globally, against the CPU's at default settings."""
    cfg = nca.NCAConfig()
    seeds, traj = nca.seed_sequence(1, 0, rules), torch.arange(rules) + 12345
    ref_frames = nca.rollout(nca.make_rules(seeds), traj, cfg, cfg.frames,
                             dense=False)
    ref_tokens, _ = nca.make_sequences(seeds, traj, cfg, "cpu")
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:                # PyTorch >= 2.9 after old and new settings were mixed
        before = "highest"
    torch.set_float32_matmul_precision("high")                           # TF32 on, as train.py
    try:
        params = nca.sample_rules(seeds, cfg.num_colors, device)
        frames = nca.rollout(nca.make_rules(params=params), traj, cfg, cfg.frames, dense=True).cpu()
        if device == "cpu":     # make_sequences here is the reference: tokenize the dense frames
            tokens = nca.inputs_and_labels(nca.tokenize(frames, cfg), cfg)[0]
        else:                   # the training path: make_sequences with the rules on the device
            tokens = nca.make_sequences(seeds, traj, cfg, device, rule_params=params)[0].cpu()
    finally:
        torch.set_float32_matmul_precision(before)
    same_traj = (frames == ref_frames).flatten(1).all(1)
    same_tok = (tokens == ref_tokens).all(1)
    return {"rules": rules, "frames": cfg.frames,
            "compared": f"{device} vs cpu" if device != "cpu" else
            "cpu: the CUDA (dense) sampler vs the CPU (sparse) one",
            "trajectories_identical": int(same_traj.sum()), "tokens_identical": int(same_tok.sum()),
            "identical": bool(same_traj.all() and same_tok.all())}


def run_stage(argv, out_dir, device, log_interval):
    """train.main on argv; figures from its metrics.jsonl, skipping the first two log windows
    (compile, warm-up) as train.py's own mean does."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _, wall = timed(lambda: train.main(argv + ["--out_dir", str(out_dir)]), device)
    metrics = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    plan = next(m for m in metrics if m["kind"] == "info" and "micro_batch" in m)
    windows = [m for m in metrics if m["kind"] == "train" and m["step"] > 2 * log_interval]
    if not windows:
        raise CheckError(f"{out_dir}: no log window after warm-up")
    tok_s = float(np.mean([m["tok_s"] for m in windows]))
    mfu = [m["mfu"] for m in windows if m["mfu"] is not None]
    mem = [m["mem_gb"] for m in windows if m["mem_gb"] is not None]
    return {"tokens_per_s": tok_s, "mfu": float(np.mean(mfu)) if mfu else None,
            "peak_mem_gb": max(mem) if mem else None, "mem_estimate_gb": plan["mem_estimate_gb"],
            "micro_batch": plan["micro_batch"], "accum": plan["accum"],
            "steps_measured": windows[-1]["step"] - 2 * log_interval,
            "step_s": float(np.mean([m["ms"] for m in windows])) / 1000, "wall_s": wall}


def nca_share(device, run_dir, stage1):
    """Seconds of NCA generation per stage-1 step (one fill of the training stream, timed alone,
    per micro-batch, times the micro-batches of a step) over the measured step time."""
    cfg_run = json.loads((run_dir / "config.json").read_text())
    cfg = nca.NCAConfig(seq_len=cfg_run["seq_len"])
    bank = nca.RuleBank(nca.seed_sequence(2, 0, cfg_run["train_num_rules"]).numpy(),
                        np.zeros(cfg_run["train_num_rules"]), (0.0, 1.0))
    stream = nca.NCABatches(cfg, bank, stage1["micro_batch"], device)
    fill = min(stream.chunk, stream.per_epoch() // stream.B)  # micro-batches made per fill
    for _ in range(fill):                                     # warm-up, and the bank's sampling
        next(stream)
    _, dt = timed(lambda: next(stream), device)               # the second fill
    per_step = dt / fill * stage1["accum"]
    return {"gen_s_per_step": per_step, "step_s": stage1["step_s"],
            "share": per_step / stage1["step_s"]}


def bf16_vs_fp32(device, ckpt_path, batch):
    model = model_from_checkpoint(load_checkpoint(ckpt_path, device), device).eval()
    x, y = batch
    with torch.no_grad():
        with nca.full_precision():                                        # no TF32 either
            _, full = model(x, y)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            _, low = model(x, y)
    full, low = float(full), float(low)
    return {"loss_fp32": full, "loss_bf16": low, "rel_diff": abs(low - full) / abs(full)}


def synthetic_corpus(folder, tokens=2_000_000):
    """Random GPT-2 ids in the prepared layout: throughput does not depend on the text."""
    from data.build import TokenWriter, write_dataset
    from data.common import VOCAB_SIZE
    rng = np.random.default_rng(0)
    writers = {}
    for split, n in (("train", tokens), ("val", tokens // 10)):
        w = TokenWriter(Path(folder) / f"{split}.bin")
        w.write(rng.integers(0, VOCAB_SIZE - 1, n), 1)
        writers[split] = w
    write_dataset(folder, writers, {"source": "synthetic (gpu_check)", "domain": "web"})
    return Path(folder)


def reproduce_hours(ppt_tok_s, lang_tok_s):
    """Hours of scripts/gpu_reproduce.sh's training at these rates. Stage 2 was measured on web
    (vocabulary 50,257); the math and code runs (64,000) are slower by their FLOPs per token."""
    with torch.device("meta"):
        web, big = (GPT(config_for("small", vocab_size=v)).flops_per_token(1024)
                    for v in (50257, 64000))
    r = REPRODUCE
    per_domain = r["lang_runs"] // 3                # the scratch and NCA arms of web, math, code
    lang = per_domain * r["lang_tokens"] / lang_tok_s * (1 + 2 * big / web)
    return (r["ppt_runs"] * r["ppt_tokens"] / ppt_tok_s + lang) / 3600


def check(device, size, work):
    s, res, t0 = SIZES[size], {}, time.perf_counter()
    peak = report.peak_flops(device)
    res["device"] = {"name": torch.cuda.get_device_name(device) if device.startswith("cuda")
                     else "cpu", "torch": torch.__version__, "peak_flops": peak,
                     "memory_gb": guard.device_memory(device, 1) / 2**30, "size": size}

    def step(name, fn):
        print(f"== {name}", flush=True)
        res[name] = fn()
    step("nca_generation", lambda: nca_generation(device, s["gen_batch"], s["gen_repeats"]))
    step("bit_identity", lambda: bit_identity(device, s["identity_rules"]))
    base = ["--preset", "gpu", "--device", device, "--seed", "0"] + s["model"]
    log1 = int(s["ppt"][s["ppt"].index("--log_interval") + 1])
    log2 = int(s["lang"][s["lang"].index("--log_interval") + 1])
    step("stage1", lambda: run_stage(base + ["--stage", "ppt", "--ppt_eval_interval", "1000000"]
                                     + s["ppt"], work / "ppt", device, log1))
    step("nca_share", lambda: nca_share(device, work / "ppt", res["stage1"]))
    data = ROOT / "data" / "web"
    res["lang_data"] = show(data) if (data / "meta.json").exists() else "synthetic GPT-2 ids"
    if not (data / "meta.json").exists():
        data = synthetic_corpus(work / "web")
    step("stage2", lambda: run_stage(base + ["--stage", "lang", "--data_dir", str(data),
                                             "--eval_interval", "1000000"] + s["lang"],
                                     work / "lang", device, log2))

    def losses():
        out = {}
        ck1 = load_checkpoint(work / "ppt" / "ckpt.pt")
        cfg1 = nca.NCAConfig(**ck1["nca"]["config"])
        out["stage1"] = bf16_vs_fp32(device, work / "ppt" / "ckpt.pt", nca.val_batches(
            cfg1, ck1["nca"]["val_seeds"], 8, 8, device)[0])
        seq_len = load_checkpoint(work / "lang" / "ckpt.pt")["model_args"]["block_size"]
        out["stage2"] = bf16_vs_fp32(device, work / "lang" / "ckpt.pt", text_val_batches(
            data, seq_len, 8 * seq_len, 8, device)[0])
        out["ok"] = all(v["rel_diff"] < 0.01 for v in out.values())
        return out
    step("bf16_vs_fp32", losses)
    real = size == "full" and device.startswith("cuda")       # targets are for the GPU run
    gen, share, mfu = (res["nca_generation"]["tokens_per_s"], res["nca_share"]["share"],
                       res["stage2"]["mfu"])
    res["targets"] = {
        "nca_tokens_per_s": {"target": TARGETS["nca_tokens_per_s"], "measured": gen,
                             "met": gen >= TARGETS["nca_tokens_per_s"] if real else None},
        "nca_share": {"target": TARGETS["nca_share"], "measured": share,
                      "met": share < TARGETS["nca_share"] if real else None},
        "stage2_mfu": {"target": TARGETS["stage2_mfu"], "measured": mfu,
                       "met": mfu >= TARGETS["stage2_mfu"] if real and mfu else None}}
    res["reproduce_hours"] = reproduce_hours(res["stage1"]["tokens_per_s"],
                                             res["stage2"]["tokens_per_s"]) if real else None
    res["wall_s"] = time.perf_counter() - t0
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto",
                   help="auto (the GPU; an error without one), cuda, cuda:1, or cpu (dry run)")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="full (the gpu preset) or toy; default full on a GPU, toy on CPU")
    p.add_argument("--out", default=None, help="JSON file (default out/gpu_check/<device>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device: this check is for a GPU; "
                             "DEVICE=cpu bash scripts/gpu_check.sh is its dry run")
        device = "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but CUDA is not available: use cpu")
    size = args.size or ("toy" if device == "cpu" else "full")
    out = Path(args.out or ROOT / "out" / "gpu_check" / f"{device.split(':')[0]}.json")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {show(out)} exists: pass --overwrite or another --out")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        try:
            res = check(device, size, Path(work))
        except CheckError as e:
            raise SystemExit(f"error: {e}")
    text = json.dumps(res, indent=2)
    print(text)
    atomic_write(out, text + "\n")
    print(f"wrote {show(out)} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
