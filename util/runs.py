"""A train.py run around its loop: the summary line it starts with, the estimate of a long run,
the run folder (config.json, metrics.jsonl, ckpt.pt: created, rewritten, cut back on resume),
the memory estimate its micro-batch plan uses, and --debug_ranks' fingerprint; and the pair of
files an evaluation writes (eval.md, eval.json: one id in both)."""
import json
import math
import os
from pathlib import Path

import torch

from util import atomic_write, duration, show
from model import load_checkpoint
from util.log import matmul_rate, peak_flops

RUN_FILES = ("config.json", "metrics.jsonl", "ckpt.pt")     # what a run folder holds

def run_summary(cfg, plan):
    """The one line train.py prints at start (the full configuration is config.json)."""
    what = {"ppt": lambda: cfg.ppt_source, "lang": lambda: show(plan.lang_data)}
    stages = " + ".join(f"stage {1 if s == 'ppt' else 2} ({what[s]()}, {plan.steps[s]:,} steps)"
                        for s in plan.stages)
    folders = ", ".join(dict.fromkeys(show(plan.out[s]) for s in plan.stages))
    return (f"train: {stages}; model {cfg.size}, seq_len {cfg.seq_len}; {plan.dist['device']} "
            f"{cfg.dtype}, seed {cfg.seed}" + (f", preset {cfg.preset}" if cfg.preset else "")
            + f" -> {folders} (every setting: config.json there)")


def body_line(init_from, body, vocab_size):
    """Where stage 2's body comes from, printed as it starts."""
    if body is None:
        return (f"lang: scratch: a freshly initialized body (no stage 1), new embeddings and "
                f"head for {vocab_size:,} tokens")
    src = body.get("config", {}).get("ppt_source", "?")
    return (f"lang: body from {show(init_from)} (stage 1 on {src}, step {body.get('step')}, "
            f"{body.get('tokens') or 0:,} tokens); new embeddings and head for {vocab_size:,} "
            "tokens")


ASSUMED_MFU = 0.4     # the GPU target (README, 'Reproduction on one GPU')
MATMUL_SHARE = 0.5    # training reaches about half of a plain matmul's rate (CPU, tiny model)


def long_run_note(cfg, plan, device, hour=3600.0):
    """A line warning that the run is estimated to take more than an hour on `device` (training
    FLOPs of the stages over an assumed or measured rate, NCA generation not counted), or
    None. The rate is only measured when even a fast device would need the hour."""
    flops = sum(plan.flops.values()) / plan.dist["world"]
    peak = peak_flops(device)
    fastest = 5e12 if str(device) == "cpu" else 2e15         # FLOP/s no such device exceeds
    if flops / (ASSUMED_MFU * peak if peak else fastest) < hour:
        return None
    if peak:
        rate = ASSUMED_MFU * peak
        how = f"an assumed {ASSUMED_MFU:.0%} MFU of {peak / 1e12:.0f} TFLOP/s (not measured)"
    else:
        measured = matmul_rate(device)
        rate = MATMUL_SHARE * measured
        how = (f"{rate / 1e9:,.0f} GFLOP/s, assumed to be half the {measured / 1e9:,.0f} "
               "GFLOP/s a float32 matmul measured here")
    if flops / rate < hour:
        return None
    scale = "; the defaults are GPU scale: --preset cpu runs in minutes" \
        if not str(device).startswith("cuda") and cfg.preset != "cpu" else ""
    return (f"note: this run is estimated to take {duration(flops / rate)} on {device} "
            f"({flops:.2e} training FLOPs per process at {how}){scale}")


def resume(out, stage, model, optimizer, batches, cfg, plan, config):
    """Restore the model, optimizer, data position and random state of out/ckpt.pt (guard.py
    checked it fits this command); the step to continue from, or None for a fresh run."""
    path, dist = out / "ckpt.pt", plan.dist
    if not path.exists():
        if dist["rank"] == 0:
            print(f"--resume: no checkpoint in {out}, starting {stage} from scratch")
        return None
    ck = load_checkpoint(path, dist["device"])
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    batches.load_state_dict(ck["data"])
    torch.set_rng_state(ck["rng"]["torch"].cpu())
    if dist["device"].startswith("cuda") and ck["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu())
    if dist["rank"] == 0:                             # the checkpoint loaded: now it is this run
        write_config(out, config)
        truncate_metrics(out / "metrics.jsonl", ck["step"])
        print(f"resumed {stage} at step {ck['step']}")
    return ck["step"]


def start_run_dir(out, cfg, stage, plan, config):
    """Create the run folder now that everything it needs has been checked: with --overwrite the
    old run's files go, and config.json is written (when resuming, only once the checkpoint has
    loaded: resume())."""
    dist = plan.dist
    if dist["rank"] == 0:
        if cfg.overwrite and not cfg.resume:
            for f in RUN_FILES:
                (out / f).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if not (cfg.resume and (out / "ckpt.pt").exists()):
            if cfg.resume:                    # lines of an attempt that left no checkpoint
                (out / "metrics.jsonl").unlink(missing_ok=True)
            write_config(out, config)
    if dist["world"] > 1:
        torch.distributed.barrier()


def restore_config(out):
    """A finished stage resumed runs nothing; if its config.json was deleted, it is written back
    from the record its checkpoint keeps (the same dict config.json was written from). Returns
    whether it was."""
    path, ckpt = Path(out) / "config.json", Path(out) / "ckpt.pt"
    if path.exists() or not ckpt.exists():
        return False
    config = load_checkpoint(ckpt, "cpu").get("config")
    if not isinstance(config, dict):
        return False
    write_config(out, config)
    print(f"--resume: wrote {show(path)} back from {show(ckpt)} (it had been deleted)")
    return True


def write_config(out, config):
    atomic_write(Path(out) / "config.json", json.dumps(config, indent=2, default=str))


def truncate_metrics(path, step):
    """Drop the metrics.jsonl lines written after `step` (the checkpoint a run resumes from)."""
    if Path(path).exists():
        lines = Path(path).read_text().splitlines()
        if lines and not lines[-1].endswith("}"):      # half a line, written as the run was killed
            lines.pop()
        keep = [line for line in lines if line and json.loads(line)["step"] <= step]
        atomic_write(path, "".join(line + "\n" for line in keep))


# -----------------------------------------------------------------------------------------------
# Memory: what train.py's micro-batch plan estimates

def micro_batch_note(stage, micro, T, accum, world, est, usable):
    """The line train.py prints for a stage's micro-batch plan and its memory estimate."""
    parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in est.items() if k != "total")
    return (f"{stage}: micro-batch {micro} x {T} tokens, {accum} accumulation step"
            f"{'s' * (accum > 1)} x {world} process{'es' * (world > 1)}; memory estimate "
            f"{est['total'] / 2**30:.1f} GiB of {usable / 2**30:.1f} GiB usable per process "
            f"(GiB: {parts})")


def memory_estimate(model, micro_batch, seq_len, act_bytes=2):
    """Bytes one training process needs, by part, for micro-batches of micro_batch x seq_len
    with activations of act_bytes (2 under bf16/fp16 autocast, 4 in float32), AdamW, and
    flash / memory-efficient attention (no T x T matrix: CUDA). Per layer and token a block
    keeps 4 float32 vectors of width d (residual stream into and out of its two RMSNorms) and
    about 8·d + 4·h in the autocast dtype (h the MLP width: q, k, v, attention output and its
    copy, norm outputs, gate, up, SiLU(gate), their product); checked against the memory
    PyTorch allocates on CPU in tests/test_model.py. Training holds the activations, the
    gradients and one loss chunk; validation holds a micro-batch of logits instead."""
    cfg = model.config
    d, h, V = cfg.n_embd, cfg.mlp_hidden or 4 * cfg.n_embd, cfg.vocab_size
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = micro_batch * seq_len
    per_layer = 16 * d + act_bytes * (8 * d + 4 * h)
    chunk = min(model.loss_chunk, tokens)
    est = {"weights": 4 * n_all,
           "autocast_copies": 2 * n_all if act_bytes < 4 else 0,
           "optimizer": 8 * n_train,
           "gradients": 4 * n_train,
           "activations": tokens * (cfg.n_layer * per_layer + 8 * d + act_bytes * d),
           "loss": tokens * d * act_bytes + 4 * V * d + chunk * V * (8 + 2 * act_bytes),
           "val_logits": tokens * V * act_bytes + min(tokens, model.loss_chunk) * V * 8}
    train = est["gradients"] + est["activations"] + est["loss"]
    est["total"] = est["weights"] + est["autocast_copies"] + est["optimizer"] + max(
        train, est["val_logits"])
    return est


def device_memory(device, world):
    """Bytes of memory one process may use: the GPU's, or the machine's RAM over the processes."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // world
    except (AttributeError, ValueError, OSError):           # no sysconf (Windows): assume 16 GiB
        return 16 * 2**30 // world


def rank_fingerprint(batches):
    """--debug_ranks: a hash of this process's first batch (read, then the data position put
    back) and of its random state, to check that ranks read different data and draw different
    dropout masks; the final weights, added at the end, must agree (gradient sync)."""
    rng, state = float(torch.get_rng_state().double().sum()), batches.state_dict()
    x, _ = next(batches)
    batches.load_state_dict(state)
    return {"first_batch": int(x.long().sum()) * 1_000_003 + int((x[:, :8] * 31).sum()),
            "dropout_rng": rng}


# An evaluation's record: eval.md and eval.json written as a pair that carries one id (eval.py)

EVAL_ID = "eval id "           # a line of eval.md: "eval id <id> (...)", as eval.json's "id"


def eval_id_line(result):
    return f"{EVAL_ID}{result['id']} (eval.json in this folder holds the same id)"


def eval_pair_mismatch(out):
    """Why eval.md in `out` is not the one of its eval.json (another id, or no eval.md), or None
    if it is (or if there is no record to check: no eval.json, or one from before ids were
    written)."""
    try:
        want = json.loads((Path(out) / "eval.json").read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    if want is None:
        return None
    try:
        lines = (Path(out) / "eval.md").read_text().splitlines()
    except OSError:
        return f"eval.md is missing beside eval.json (id {want})"
    ids = [line[len(EVAL_ID):].split(" ")[0] for line in lines if line.startswith(EVAL_ID)]
    have = ids[-1] if ids else None
    return None if have == want else \
        f"eval.md (id {have}) is not from the evaluation in eval.json (id {want})"


def diverged_at(metrics):
    """The first step whose training or validation loss in metrics.jsonl is NaN or infinite (a
    run that diverged), else None."""
    return next((m["step"] for m in metrics for k in ("loss", "val_loss")
                 if isinstance(m.get(k), float) and not math.isfinite(m[k])), None)


def finite_json(obj):
    """`obj` with every NaN or infinite number as None: eval.json stays valid JSON (a bare NaN
    is not JSON; many readers refuse it)."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def trained_folder(config, root):
    """The prepared folder a run trained on (stage 2: data_dir, else <root>/<domain>; a stage-1
    text run: ppt_data), or None (a synthetic stage-1 source)."""
    if config.get("stage") == "lang":
        return Path(config["data_dir"]) if config.get("data_dir") else \
            root / str(config.get("domain"))
    if config.get("ppt_source") == "text" and config.get("ppt_data"):
        return Path(config["ppt_data"])
    return None
