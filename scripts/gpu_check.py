"""
One prepared device check for the single-GPU reproduction: in one call (planned for 7 minutes
on an H100 or H200) it measures what the README's GPU table and the
scripts/gpu_reproduce.sh time estimate rest on, and keeps what it measured: the JSON is rewritten
(atomically) after every step, a step that fails records its error under its own key and the
next step runs, and a run killed at a time limit leaves every step it finished.

    bash scripts/gpu_check.sh                 # on a GPU -> out/gpu_check/cuda.json
    DEVICE=cpu bash scripts/gpu_check.sh      # dry run of every step at toy size -> cpu.json

Steps, in the order they run (the figures the GPU table and the time estimate need come first):
  nca_generation   NCA tokens/s at a large batch, rules sampled once on the device (as training)
  bit_identity     trajectories and tokens of 256 rules on this device against the CPU, with TF32
                   allowed globally as train.py does; how many differ, and whether each difference
                   is a near-tie draw (on CPU: the CUDA sampling path against the CPU one)
  stage1, stage2   train.py --preset gpu, compiled, for a few dozen steps after warm-up: tokens/s,
                   MFU, peak memory beside the micro-batch plan's estimate, the graph timed and
                   the graphs compiled after warm-up (must be 0). A run whose compiled attempt
                   fails is recorded and rerun without compile, marked so.
  nca_share        NCA generation time per stage-1 step over the step's time
  compile_vs_eager one micro-batch through a fresh model of each stage's shape, compiled and
                   eager, under float32 and bf16 autocast: the loss and every gradient against
                   eager float32
  bf16_vs_fp32     one validation batch through the stage-1 and stage-2 models just trained: loss
                   under bf16 autocast against full float32
  targets, reproduce_hours  the figures above against the README's targets, and the
                   scripts/gpu_reproduce.sh time at the measured rates (rewritten with each step)

The dry run keeps every step and key but shrinks the model (tiny), the sequences of the training
runs (256 tokens), the batches and the step counts.
"""
import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import util.log  # noqa: E402
import util.runs  # noqa: E402
import nca  # noqa: E402
import train  # noqa: E402
from data.common import show, text_val_batches  # noqa: E402
from model import GPT, config_for, load_checkpoint, model_from_checkpoint  # noqa: E402
from util import atomic_write, autocast  # noqa: E402

TARGETS = {"nca_tokens_per_s": 500e6, "nca_share": 0.03, "stage2_mfu": 0.40}
# scripts/gpu_reproduce.sh: 164M NCA tokens for each of 2 bands, 2.6B tokens for 6 language runs
REPRODUCE = {"ppt_tokens": 163_840_000, "ppt_runs": 2, "lang_tokens": 2_621_440_000,
             "lang_runs": 6}
# Steps in the order they run, with the seconds planned for each on one H100/H200 (--time_limit
# skips a step that would not fit; the JSON records the seconds each one took). Planned, not yet
# measured: stage 1 is 256 steps of 32,768 tokens (~24 s at 353k tokens/s) plus compile and the
# rule filter, stage 2 30 steps of 524,288 (~41 s at 386k) plus compile and one evaluation.
STEPS = {"nca_generation": 20, "bit_identity": 45, "stage1": 110, "nca_share": 15, "stage2": 130,
         "compile_vs_eager": 60, "bf16_vs_fp32": 20}       # 400 s in all: <= 7 minutes
# Largest relative difference (of the loss; of a gradient: max |g - g_ref| over max |g_ref|, per
# tensor) against eager float32 that passes: float32 is rounding noise, bf16 its 8-bit mantissa.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.05}
# At the first differing cell of a trajectory, logits of this device and of the CPU further apart
# than this are no rounding noise (float32 logits of size ~1 differ by ~1e-6; TF32 by ~1e-3).
LOGIT_NOISE = 1e-4

# Stage-1 steps come in whole NCA fills (64 micro-batches on CUDA, 4 on CPU) so that each measured
# window holds exactly one fill: log_interval = steps per fill, two windows measured.
SIZES = {
    "full": dict(gen_batch=8192, gen_repeats=3, identity_rules=256, model=[],
                 ppt=["--max_iters", "256", "--log_interval", "64", "--train_num_rules", "2048",
                      "--val_num_rules", "64", "--ppt_val_seqs", "64"],
                 lang=["--max_iters", "30", "--log_interval", "5", "--eval_tokens", "65536"],
                 compare=dict(size="small", n_layer=2, micro=8, seq_len=1024)),
    "toy": dict(gen_batch=128, gen_repeats=2, identity_rules=64,
                model=["--size", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "64",
                       "--seq_len", "256"],
                ppt=["--max_iters", "12", "--log_interval", "4", "--train_num_rules", "32",
                     "--val_num_rules", "8", "--ppt_val_seqs", "8", "--ppt_batch_tokens", "1024",
                     "--ppt_vocab_size", "0"],
                lang=["--max_iters", "4", "--log_interval", "1", "--eval_tokens", "512",
                      "--batch_tokens", "1024"],
                compare=dict(size="tiny", n_layer=1, n_head=2, n_embd=32, micro=2, seq_len=80,
                             ppt_vocab=10002, chunk=64)),
}


class CheckError(Exception):
    pass


class Killed(BaseException):
    """SIGTERM (e.g. `timeout`): the step running is recorded as killed before the check ends."""


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def error_line(e):
    """'Type: first line of the message', for the JSON."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


# ----------------------------------------------------------------------------------- NCA figures

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


@contextlib.contextmanager
def tf32_allowed():
    """TF32 allowed globally, as train.py does on CUDA (generation must not depend on it)."""
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:                # PyTorch >= 2.9 after old and new settings were mixed
        before = "highest"
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def device_rules(params):
    return nca.make_rules(params=params)


def bit_identity(device, rules, make_device_rules=device_rules):
    """Trajectories (27 frames after burn-in) and training tokens of `rules` rules: this device's
    sampling path with TF32 allowed globally, against the CPU's at default settings. Each
    differing trajectory is replayed to its first differing cell (first_differences).
    make_device_rules: how the device side builds its rules (a test perturbs its logits)."""
    cfg = nca.NCAConfig()
    seeds, traj = nca.seed_sequence(1, 0, rules), torch.arange(rules) + 12345
    ref_frames = nca.rollout(nca.make_rules(seeds), traj, cfg, cfg.frames, dense=False)
    ref_tokens, _ = nca.make_sequences(seeds, traj, cfg, "cpu")
    with tf32_allowed():
        params = nca.sample_rules(seeds, cfg.num_colors, device)
        rules_dev = make_device_rules(params)
        frames = nca.rollout(rules_dev, traj, cfg, cfg.frames, dense=True).cpu()
        first = ref_frames[:, 0]                      # logits of every rule on one common grid
        logit_diff = float((rules_dev.logits(first.to(rules_dev.device)).cpu()
                            - nca.make_rules(seeds).logits(first)).abs().max())
        if device == "cpu" or make_device_rules is not device_rules:    # tokens of these frames
            tokens = nca.inputs_and_labels(nca.tokenize(frames, cfg), cfg)[0]
        else:                   # the training path: make_sequences with the rules on the device
            tokens = nca.make_sequences(seeds, traj, cfg, device, rule_params=params)[0].cpu()
        same_traj = (frames == ref_frames).flatten(1).all(1)
        same_tok = (tokens == ref_tokens).all(1)
        differ = (~same_traj | ~same_tok).nonzero().flatten()
        diffs = first_differences(params, traj, differ, cfg, make_device_rules) if len(differ) \
            else []
    near_tie = [d for d in diffs if d["near_tie"]]
    res = {"rules": rules, "frames": cfg.frames,
           "compared": f"{device} vs cpu" if device != "cpu" else
           "cpu: the CUDA (dense) sampler vs the CPU (sparse) one",
           "trajectories_identical": int(same_traj.sum()), "tokens_identical": int(same_tok.sum()),
           "trajectories_differing": int((~same_traj).sum()),
           "token_rows_differing": int((~same_tok).sum()),
           "tokens_differing": int((tokens != ref_tokens).sum()),
           "max_logit_diff": max([logit_diff] + [d["logit_diff"] for d in diffs]),
           "near_tie_differences": len(near_tie), "differences": diffs[:8],
           "identical": bool(same_traj.all() and same_tok.all())}
    res["ok"] = res["identical"] or len(near_tie) == len(differ)
    return res


def first_differences(params, traj, rows, cfg, make_device_rules):
    """Replay the trajectories `rows` on both sides step by step from the initial grid, to the
    first update whose result differs, and explain it at its first differing cell: the device's
    and the CPU's logits there (max difference over the colours, and each against float64
    logits), the cell's draw u, and its margin (distance of u from the nearest boundary of the
    float64 cumulative distribution). A near tie: the CPU sampler given the device's logits draws
    the device's colour, the logits differ by rounding noise (<= LOGIT_NOISE), and the margin is
    within what that noise can move a boundary (4 x (|z_dev - z64| + |z_cpu - z64|) / T)."""
    sub = {k: v[rows.to(v.device)] for k, v in params.items()}
    cpu_params = {k: v.cpu() for k, v in sub.items()}
    dev_rules, cpu_rules = make_device_rules(sub), nca.make_rules(params=cpu_params)
    ref_rules = nca.make_rules(params={k: v.double() for k, v in cpu_params.items()})
    seeds = traj[rows]
    key = nca.stream_key(seeds, 3)
    s_cpu, s_dev = nca.init_state(seeds, cfg), nca.init_state(seeds, cfg, dev_rules.device)
    found = {r: {"trajectory": int(rows[r]), "step": "initial grid", "near_tie": False,
                 "logit_diff": 0.0} for r in range(len(rows))
             if not torch.equal(s_dev[r].cpu(), s_cpu[r])}
    for t in range(cfg.init_rollout_steps + (cfg.frames - 1) * cfg.dT):   # rollout's updates
        if len(found) == len(rows):
            break
        z_dev = dev_rules.logits(s_dev).cpu()
        z_cpu, z64 = cpu_rules.logits(s_cpu), ref_rules.logits(s_cpu)
        n_dev = nca.step(dev_rules, s_dev, key.to(s_dev.device), t, cfg, dense=True)
        n_cpu = nca.step(cpu_rules, s_cpu, key, t, cfg, dense=False)
        replayed = nca.step(SimpleNamespace(logits=lambda s: z_dev, n=cpu_rules.n), s_cpu, key,
                            t, cfg, dense=False)       # the CPU sampler on the device's logits
        for r in range(len(rows)):
            if r in found or torch.equal(n_dev[r].cpu(), n_cpu[r]):
                continue
            i, j = [int(v) for v in (n_dev[r].cpu() != n_cpu[r]).nonzero()[0]]
            found[r] = explain(z_dev[r, :, i, j], z_cpu[r, :, i, j], z64[r, :, i, j],
                               int(s_cpu[r, i, j]), key[r], t, i * cfg.grid + j, cfg)
            dev_colour = int(n_dev[r, i, j])
            found[r] |= {"trajectory": int(rows[r]), "step": t, "cell": [i, j],
                         "device_colour": dev_colour, "cpu_colour": int(n_cpu[r, i, j]),
                         "reproduced": int(replayed[r, i, j]) == dev_colour}
            found[r]["near_tie"] = found[r]["near_tie"] and found[r]["reproduced"]
        s_dev, s_cpu = n_dev, n_cpu         # each side goes on from its own grids
    return [found.get(r, {"trajectory": int(rows[r]), "near_tie": False, "logit_diff": 0.0,
                          "why": "frames or tokens differ but no update did on replay"})
            for r in range(len(rows))]


def explain(z_dev, z_cpu, z64, state, key, t, cell, cfg):
    """Logit differences and the draw's margin at one cell (see first_differences)."""
    bias = cfg.identity_bias * (torch.arange(len(z64)) == state)
    z = (z64 + bias).double()
    cdf = torch.exp((z - z.max()) / cfg.temperature).cumsum(0)
    cdf = cdf / cdf[-1]
    u = float(nca.uniform(key, torch.tensor(t * cfg.grid * cfg.grid + cell)))
    margin = float((cdf[:-1] - u).abs().min()) if len(cdf) > 1 else 1.0
    noise = float((z_dev.double() - z64).abs().max() + (z_cpu.double() - z64).abs().max())
    diff = float((z_dev - z_cpu).abs().max())
    return {"logit_diff": diff, "u": u, "margin": margin,
            "near_tie": diff <= LOGIT_NOISE and margin <= 4 * noise / cfg.temperature}
# ------------------------------------------------------------------------------- training runs

def run_stage(argv, out_dir, device, log_interval, compile):
    """train.py on argv, compiled if `compile`; a compiled attempt that fails is recorded
    (compile_error) and the stage reruns without compile (compiled: false)."""
    try:
        res = stage_figures(argv + ["--compile" if compile else "--no-compile"], out_dir, device,
                            log_interval)
        return res | {"compiled": compile}
    except Exception as e:
        if not compile:
            raise
        print(f"compiled run failed ({error_line(e)}): rerunning without compile", flush=True)
        res = stage_figures(argv + ["--no-compile"], out_dir.with_name(out_dir.name + "-eager"),
                            device, log_interval)
        return res | {"compiled": False, "compile_error": error_line(e)}


def stage_figures(argv, out_dir, device, log_interval):
    """train.main on argv; figures from its metrics.jsonl, skipping the first two log windows
    (compile, warm-up) as train.py's own mean does. "graph" says what was timed: the training
    micro-batch's shape, compiled with static shapes (util.wrap_model), and how many graphs were
    compiled after the warm-up windows (from the log lines' `graphs`; 0 = none)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    main = getattr(train.main, "__wrapped__", train.main)    # a refusal raises, with its message
    _, wall = timed(lambda: main(argv + ["--out_dir", str(out_dir)]), device)
    metrics = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out_dir / "config.json").read_text())
    plan = next(m for m in metrics if m["kind"] == "info" and "micro_batch" in m)
    lines = [m for m in metrics if m["kind"] == "train"]
    windows = [m for m in lines if m["step"] > 2 * log_interval]
    if not windows:
        raise CheckError(f"{out_dir}: no log window after warm-up")
    warm = [m for m in lines if m["step"] <= 2 * log_interval][-1]
    tok_s = float(np.mean([m["tok_s"] for m in windows]))
    mfu = [m["mfu"] for m in windows if m["mfu"] is not None]
    mem = [m["mem_gb"] for m in windows if m["mem_gb"] is not None]
    graph = {"compiled": bool(cfg["compile"]), "shape": [plan["micro_batch"], cfg["seq_len"]],
             "dynamic": False if cfg["compile"] else None}
    if cfg["compile"] and windows[-1].get("graphs") is not None:
        graph |= {"graphs_compiled": windows[-1]["graphs"],
                  "recompiles_after_warmup": windows[-1]["graphs"] - warm["graphs"]}
        graph["no_recompiles_after_warmup"] = graph["recompiles_after_warmup"] == 0
    return {"tokens_per_s": tok_s, "mfu": float(np.mean(mfu)) if mfu else None,
            "peak_mem_gb": max(mem) if mem else None, "mem_estimate_gb": plan["mem_estimate_gb"],
            "micro_batch": plan["micro_batch"], "accum": plan["accum"], "graph": graph,
            "steps_measured": windows[-1]["step"] - 2 * log_interval,
            "step_s": float(np.mean([m["ms"] for m in windows])) / 1000, "wall_s": wall,
            "run_dir": str(out_dir)}


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


# ------------------------------------------------------------------------------------ numerics

def loss_and_grads(fn, model, x, y, ctx):
    model.zero_grad(set_to_none=True)
    with ctx:
        _, loss = fn(x, y)
    loss.backward()
    return float(loss.detach()), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def rel_diffs(loss, grads, ref_loss, ref_grads):
    """Relative loss difference, and the largest gradient difference: max |g - g_ref| over
    max |g_ref| of each tensor, the worst tensor named."""
    per = {n: float((g - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-30))
           for n, g in grads.items()}
    worst = max(per, key=per.get)
    return {"loss": loss, "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss),
            "grad_max_rel_diff": per[worst], "worst_tensor": worst}


def compile_vs_eager(device, spec, dtypes):
    """Compiled equals eager: one micro-batch (a quarter of its labels ignored, as stage 1's first
    grid) through a fresh model of each stage's shape (stage 1: its vocabulary and head bias;
    stage 2: GPT-2's 50,257, no bias), dropout off. Reference: eager float32 at full matmul
    precision; against it the compiled model (train.py's torch.compile, static shapes) under each
    of `dtypes`, and eager under the others. The loss is chunked over several chunks (the
    autograd.Function of model.py, the pattern of a known torch.compile correctness issue)."""
    out, ok = {}, True
    for stage, vocab, bias in (("stage1", spec.get("ppt_vocab", 64000), True),
                               ("stage2", 50257, False)):
        torch.manual_seed(0)
        shape = {k: spec[k] for k in ("n_layer", "n_head", "n_embd") if k in spec}
        model = GPT(config_for(spec["size"], vocab_size=vocab, head_bias=bias,
                               block_size=spec["seq_len"], attn_dropout=0.0, **shape)).to(device)
        rows = spec["micro"] * spec["seq_len"]
        model.loss_chunk = spec.get("chunk", rows // 4)
        x = torch.randint(0, vocab, (spec["micro"], spec["seq_len"]), device=device)
        y = x.roll(-1, 1)
        y[:, :spec["seq_len"] // 4] = -100
        with nca.full_precision():
            ref = loss_and_grads(model, model, x, y, contextlib.nullcontext())
        torch.compiler.reset()
        compiled = torch.compile(model, dynamic=False)
        res = {"loss_chunks": -(-rows // model.loss_chunk)}
        for dtype in dtypes:
            ctx = autocast(dtype, device)[0]
            for name, fn in (("compiled", compiled), ("eager", model)):
                if name == "eager" and dtype == "float32":
                    continue
                with nca.full_precision() if dtype == "float32" else contextlib.nullcontext():
                    got = rel_diffs(*loss_and_grads(fn, model, x, y, ctx), *ref)
                got["ok"] = max(got["loss_rel_diff"], got["grad_max_rel_diff"]) \
                    <= TOLERANCE[dtype]
                res[f"{name}_{dtype}"], ok = got, ok and got["ok"]
        out[stage] = res
        torch.compiler.reset()
    return out | {"tolerance": TOLERANCE, "ok": ok}


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


def trained_losses(device, dirs, data):
    out = {}
    ck1 = load_checkpoint(dirs["stage1"] / "ckpt.pt")
    cfg1 = nca.NCAConfig(**ck1["nca"]["config"])
    out["stage1"] = bf16_vs_fp32(device, dirs["stage1"] / "ckpt.pt", nca.val_batches(
        cfg1, ck1["nca"]["val_seeds"], 8, 8, device)[0])
    seq_len = load_checkpoint(dirs["stage2"] / "ckpt.pt")["model_args"]["block_size"]
    out["stage2"] = bf16_vs_fp32(device, dirs["stage2"] / "ckpt.pt", text_val_batches(
        data, seq_len, 8 * seq_len, 8, device)[0])
    out["ok"] = all(v["rel_diff"] < 0.01 for v in out.values())
    return out


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


def summary(res, real):
    """targets and reproduce_hours from whatever steps have figures so far (None where not)."""
    fig = lambda step, key: (res.get(step) or {}).get(key)
    gen, share = fig("nca_generation", "tokens_per_s"), fig("nca_share", "share")
    mfu, ppt, lang = fig("stage2", "mfu"), fig("stage1", "tokens_per_s"), \
        fig("stage2", "tokens_per_s")
    met = lambda v, ok: ok(v) if real and v is not None else None       # targets: the GPU run
    res["targets"] = {
        "nca_tokens_per_s": {"target": TARGETS["nca_tokens_per_s"], "measured": gen,
                             "met": met(gen, lambda v: v >= TARGETS["nca_tokens_per_s"])},
        "nca_share": {"target": TARGETS["nca_share"], "measured": share,
                      "met": met(share, lambda v: v < TARGETS["nca_share"])},
        "stage2_mfu": {"target": TARGETS["stage2_mfu"], "measured": mfu,
                       "met": met(mfu, lambda v: v >= TARGETS["stage2_mfu"])}}
    res["reproduce_hours"] = reproduce_hours(ppt, lang) if real and ppt and lang else None


# ------------------------------------------------------------------------------------ the check

def step_plan(device, size, work, compile):
    """{step: (function, the steps whose figures it needs)}, in STEPS order."""
    s, dirs = SIZES[size], {}
    # No checkpoint but the last (-1): a step-0 save of ~2.7 GB (weights and Adam) would only
    # spend the time limit; the last one is what bf16_vs_fp32 reads.
    base = ["--preset", "gpu", "--device", device, "--seed", "0", "--ppt_ckpt_interval", "-1",
            "--ckpt_interval", "-1"] + s["model"]
    log1 = int(s["ppt"][s["ppt"].index("--log_interval") + 1])
    log2 = int(s["lang"][s["lang"].index("--log_interval") + 1])
    data = ROOT / "data" / "web"
    real_data = (data / "meta.json").exists()

    def stage(name, argv, folder, log):
        res = run_stage(base + argv, work / folder, device, log, compile)
        dirs[name] = Path(res.pop("run_dir"))
        return res

    def stage2():
        lang = data if real_data else synthetic_corpus(work / "web")
        return stage("stage2", ["--stage", "lang", "--data_dir", str(lang), "--eval_interval",
                                "1000000"] + s["lang"], "lang", log2) | \
            {"data": show(lang) if real_data else "synthetic GPT-2 ids"}
    dtypes = ["float32", "bfloat16"] if device.startswith("cuda") else ["float32"]
    return {
        "nca_generation": (lambda r: nca_generation(device, s["gen_batch"], s["gen_repeats"]), []),
        "bit_identity": (lambda r: bit_identity(device, s["identity_rules"]), []),
        "stage1": (lambda r: stage("stage1", ["--stage", "ppt", "--ppt_eval_interval",
                                              "1000000"] + s["ppt"], "ppt", log1), []),
        "nca_share": (lambda r: nca_share(device, dirs["stage1"], r["stage1"]), ["stage1"]),
        "stage2": (lambda r: stage2(), []),
        "compile_vs_eager": (lambda r: compile_vs_eager(device, s["compare"], dtypes), []),
        "bf16_vs_fp32": (lambda r: trained_losses(device, dirs, data if real_data else
                                                  work / "web"), ["stage1", "stage2"]),
    }


def check(device, size, work, out, steps, compile, time_limit):
    """Run `steps` in order, writing `out` before the first and after every one."""
    res, t0 = {}, time.perf_counter()
    res["device"] = {"name": torch.cuda.get_device_name(device) if device.startswith("cuda")
                     else "cpu", "torch": torch.__version__, "python": sys.version.split()[0],
                     "peak_flops": util.log.peak_flops(device), "size": size, "compile": compile,
                     "memory_gb": util.runs.device_memory(device, 1) / 2**30}
    res["steps"] = {}
    real = size == "full" and device.startswith("cuda")

    def write(running=None):
        res["running"], res["wall_s"] = running, time.perf_counter() - t0
        summary(res, real)
        atomic_write(out, json.dumps(res, indent=2) + "\n")
    plan = step_plan(device, size, work, compile)
    for name in [n for n in STEPS if n in steps]:
        fn, needs = plan[name]
        missing = [n for n in needs if "error" in res.get(n, {"error": "not run"})]
        elapsed = time.perf_counter() - t0
        late = time_limit and size == "full" and elapsed + STEPS[name] > time_limit
        if missing or late or (name == "compile_vs_eager" and not compile):
            why = f"needs {', '.join(missing)}" if missing else "--no-compile" if not late else \
                f"{STEPS[name]} s planned, {time_limit - elapsed:.0f} s of --time_limit left"
            res["steps"][name] = {"status": "skipped", "why": why}
            print(f"== {name}: skipped ({why})", flush=True)
            write()
            continue
        print(f"== {name}", flush=True)
        write(running=name)
        t = time.perf_counter()
        try:
            res[name], status = fn(res), "ok"
        except (Exception, SystemExit, Killed) as e:
            res[name], status = {"error": error_line(e)}, "error"
            print(f"== {name} failed: {res[name]['error']}", flush=True)
            if isinstance(e, Killed):
                res["steps"][name] = {"status": "killed", "s": time.perf_counter() - t}
                write()
                raise
        res["steps"][name] = {"status": status, "s": time.perf_counter() - t}
        write()
    return res


def on_sigterm(signum, frame):
    raise Killed(f"killed by signal {signum}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto",
                   help="auto (the GPU; an error without one), cuda, cuda:1, or cpu (dry run)")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="full (the gpu preset) or toy; default full on a GPU, toy on CPU")
    p.add_argument("--out", default=None, help="JSON file (default out/gpu_check/<device>.json): "
                   "put it where the caller collects results, e.g. a folder that outlives a "
                   "lent machine")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--steps", default=",".join(STEPS),
                   help="comma list of the steps to run (always in the order of this default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the training runs and run compile_vs_eager")
    p.add_argument("--time_limit", type=float, default=0,
                   help="seconds: at full size, skip a step whose planned time would not fit "
                   "(0 = run every step)")
    args = p.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"error: unknown --steps {','.join(unknown)}: choose from "
                         f"{','.join(STEPS)}")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
            res = check(device, size, Path(work), out, steps, args.compile, args.time_limit)
    except Killed as e:
        print(f"{e}: {show(out)} keeps every step finished before it", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(res, indent=2))
    skipped = [n for n, s in res["steps"].items() if s["status"] == "skipped"]
    failed = [n for n, s in res["steps"].items() if s["status"] not in ("ok", "skipped")]
    print(f"wrote {show(out)} ({res['wall_s']:.0f} s)"
          + (f"; skipped: {', '.join(skipped)}" if skipped else "")
          + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return res


if __name__ == "__main__":
    main()
